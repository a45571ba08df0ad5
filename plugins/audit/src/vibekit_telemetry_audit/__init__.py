"""The ``audit`` plugin: a tamper-evident record of who did what, and when.

Enable with ``[security.audit] enabled = true``.  Entries (time, actor, action,
target, details) go to ``<data_dir>/audit.db``, a SQLite file of its own whose
schema refuses updates and deletes, and each entry carries the SHA-256 of the
previous entry's hash and its own content, so changing, removing or reordering
an entry breaks the chain: ``telemetry audit verify`` walks it and names the
first entry that does not match.

What is recorded: retention cleaning (``clean``), exports (``export``), key
rotation (``rotate``), custom metric definitions (``create``), and configuration
changes (``config``: the redacted configuration is fingerprinted at each start
and a change is recorded with the keys that changed).  The actor is the API
key's name inside the API server, or else the operating-system user.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import orjson
from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from vibekit_telemetry import TelemetryError, current_actor, hookimpl, now_ms, redact_secrets

if TYPE_CHECKING:
    import click

    from vibekit_telemetry import TelemetryService

__all__ = ["AuditTrail", "verify"]

MIGRATION_SET = "vibekit_telemetry_audit"
migrations = Migrations(MIGRATION_SET)
GENESIS = "0" * 64


@migrations()
def m001_entries(db: Database) -> None:
    """Entries in order, hash-chained; updates and deletes refused by triggers."""
    db["entries"].create({"seq": int, "ts": int, "actor": str, "action": str, "target": str, "details": str,
                          "prev_hash": str, "hash": str}, pk="seq", not_null={"ts", "actor", "action", "hash"})
    db["entries"].create_index(["action", "ts"], index_name="entries_action_ts")
    db["entries"].create_index(["ts"], index_name="entries_ts")
    db.execute("CREATE TRIGGER entries_no_update BEFORE UPDATE ON entries BEGIN "
               "SELECT RAISE(ABORT, 'the audit trail is append-only'); END")
    db.execute("CREATE TRIGGER entries_no_delete BEFORE DELETE ON entries BEGIN "
               "SELECT RAISE(ABORT, 'the audit trail is append-only'); END")


def entry_hash(prev_hash: str, ts: int, actor: str, action: str, target: str, details: str) -> str:
    """The chain hash of an entry: SHA-256 over the previous hash and the entry's fields."""
    material = orjson.dumps([prev_hash, ts, actor, action, target, details])
    return hashlib.sha256(material).hexdigest()


def verify(path: Path) -> tuple[int, str | None]:
    """Walk the chain in ``path``: ``(entries checked, None)`` or ``(entries checked, the first problem)``."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        prev = GENESIS
        checked = 0
        expected_seq = 1
        for seq, ts, actor, action, target, details, prev_hash, stored in conn.execute(
                "SELECT seq, ts, actor, action, target, details, prev_hash, hash FROM entries ORDER BY seq"):
            if seq != expected_seq:
                return checked, f"entry {expected_seq} is missing (the next one is {seq})"
            if prev_hash != prev:
                return checked, f"entry {seq} does not follow entry {seq - 1} (its previous hash differs)"
            if entry_hash(prev_hash, ts, actor, action, target, details) != stored:
                return checked, f"entry {seq} was changed after it was written (its hash does not match)"
            prev = stored
            checked += 1
            expected_seq += 1
        return checked, None
    finally:
        conn.close()


class AuditTrail:
    """Append-only, hash-chained audit entries in their own SQLite file."""

    name = "audit"

    @attrs.frozen
    class Config:
        """Options of ``[security.audit]``."""

        path: str | None = None
        retention_days: int | None = None

    def __init__(self, config: AuditTrail.Config | None = None) -> None:
        self.config = config or AuditTrail.Config()
        self.path: Path | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._last_hash = GENESIS
        self.written = 0

    @hookimpl
    def startup(self, service: TelemetryService) -> None:
        """Open the trail and record a configuration change since the last start."""
        self.path = Path(self.config.path) if self.config.path else service.data_dir / "audit.db"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5)
        conn.execute("PRAGMA journal_mode=wal")
        conn.execute("BEGIN IMMEDIATE")
        try:
            migrations.apply(Database(conn, execute_plugins=False))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._conn = conn
        config = redact_secrets(service.loaded.raw)
        fingerprint = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
        last = conn.execute("SELECT details FROM entries WHERE action = 'config' ORDER BY seq DESC LIMIT 1").fetchone()
        previous = json.loads(last[0]) if last else None
        if previous is None or previous.get("fingerprint") != fingerprint:
            changed = sorted(_changed_keys(previous.get("config", {}) if previous else {}, config))
            self.audit("config", "configuration", current_actor(), {"fingerprint": fingerprint, "config": config,
                                                               "changed": changed, "sources": list(service.loaded.sources)})

    @hookimpl
    def audit(self, action: str, target: str, actor: str, details: dict[str, Any]) -> None:
        """Append one entry, chained to the one before."""
        if self._conn is None:
            raise TelemetryError("the audit trail is not open")
        text = orjson.dumps(details, default=str, option=orjson.OPT_SORT_KEYS).decode()
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")  # other processes append to the same file: read the tail under the lock
            try:
                row = conn.execute("SELECT hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
                prev = row[0] if row else GENESIS
                ts = now_ms()
                conn.execute("INSERT INTO entries (ts, actor, action, target, details, prev_hash, hash) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)",
                             [ts, actor, action, target, text, prev, entry_hash(prev, ts, actor, action, target, text)])
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self.written += 1

    @hookimpl
    def get_audit_logs(self, action: str | None, since: int | None, limit: int) -> list[dict[str, Any]]:
        """Entries newest first."""
        if self._conn is None:
            raise TelemetryError("the audit trail is not open")
        where, params = [], []
        if action is not None:
            where.append("action = ?")
            params.append(action)
        if since is not None:
            where.append("ts >= ?")
            params.append(since)
        sql = ("SELECT seq, ts, actor, action, target, details, hash FROM entries"
               + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY seq DESC LIMIT ?")
        with self._lock:
            rows = self._conn.execute(sql, [*params, limit]).fetchall()
        return [{"seq": seq, "timestamp": ts, "actor": actor, "action": act, "target": target,
                 "details": json.loads(details), "hash": digest}
                for seq, ts, actor, act, target, details, digest in rows]

    @hookimpl
    def health(self) -> dict[str, Any]:
        """Where the trail is and how many entries this process wrote."""
        return {"healthy": self._conn is not None, "issues": [] if self._conn else ["audit trail closed"],
                "path": str(self.path) if self.path else None, "written": self.written}

    @hookimpl
    def shutdown(self, service: TelemetryService) -> None:
        """Close the file."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @staticmethod
    @hookimpl
    def register_commands(cli: click.Group) -> None:
        """``telemetry audit`` and ``telemetry audit verify``."""
        from .cli import register

        register(cli)


def _changed_keys(before: Any, after: Any, prefix: str = "") -> set[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        changed: set[str] = set()
        for key in set(before) | set(after):
            changed |= _changed_keys(before.get(key), after.get(key), f"{prefix}{key}.")
        return changed
    return set() if before == after else {prefix.rstrip(".") or "(all)"}
