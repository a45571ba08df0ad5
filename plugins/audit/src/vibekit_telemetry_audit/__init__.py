"""The ``audit`` plugin: a tamper-evident record of who did what, and when.

Enable with ``[security.audit] enabled = true``.  Entries (time, actor, action,
target, details) go to ``<data_dir>/audit.db``, a SQLite file of its own whose
schema refuses updates and deletes, and each entry carries the SHA-256 of the
previous entry's hash and its own content, so changing, removing or reordering
an entry breaks the chain.  A one-row ``head`` table holds the number and hash
of the last entry written and may only move forward, so entries deleted from
the end (or all of them) are missed too.  ``telemetry audit verify`` reads the
file without writing to it, walks the chain, compares its end with the head and
checks that the append-only triggers are still in place.

When the service's primary store is PostgreSQL (the postgres plugin) and ``path``
is not set, the trail lives beside the events instead, in ``audit_entries`` and
``audit_head`` of the store's schema, one chain for every process and host that
writes there (see :mod:`vibekit_telemetry_audit.postgres`).  An explicit ``path``
keeps it in that file.

What is recorded: retention cleaning (``clean``), exports (``export``), key
rotation (``rotate``), custom metric definitions (``create``), and configuration
changes (``config``: the redacted configuration is fingerprinted at each start
and a change is recorded with the keys that changed), imports (``import``),
dead-letter replays (``replay``), and the compliance plugin's anonymisation
(``update``), erasure (``delete``) and access (``access``) requests.  The actor
is the API key's name inside the API server, or else the operating-system user.

``events = ["create", "update", "delete", "export"]`` (the seed's
``security.audit.events``) records only those kinds: ``create`` is create,
import and replay; ``update`` is update, rotate and config; ``delete`` is delete
and clean; ``export`` is export and access.  Action names may be listed too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import orjson
from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from vibekit_telemetry import (
    ConfigError,
    StorageUnavailableError,
    TelemetryError,
    current_actor,
    hookimpl,
    now_ms,
    redact_secrets,
)

if TYPE_CHECKING:
    import click

    from vibekit_telemetry import TelemetryService

__all__ = ["AuditTrail", "SqliteTrail", "TrailDamagedError", "TrailReport", "entry_hash", "trail_path", "verify"]

log = logging.getLogger("vibekit_telemetry.audit")

MIGRATION_SET = "vibekit_telemetry_audit"
migrations = Migrations(MIGRATION_SET)
GENESIS = "0" * 64

#: The seed's event kinds (``security.audit.events``) and the actions each stands for; ``events`` may also
#: name actions one by one.  A name that is neither is refused, so a typo cannot silently record nothing.
KINDS: dict[str, tuple[str, ...]] = {
    "create": ("create", "import", "replay"),
    "update": ("update", "rotate", "config"),
    "delete": ("delete", "clean"),
    "export": ("export", "access"),
}


#: the triggers that make the trail append-only, as SQLite keeps their text (verify compares it)
TRIGGERS = {
    "entries_no_update": "CREATE TRIGGER entries_no_update BEFORE UPDATE ON entries BEGIN "
                         "SELECT RAISE(ABORT, 'the audit trail is append-only'); END",
    "entries_no_delete": "CREATE TRIGGER entries_no_delete BEFORE DELETE ON entries BEGIN "
                         "SELECT RAISE(ABORT, 'the audit trail is append-only'); END",
    "head_no_delete": "CREATE TRIGGER head_no_delete BEFORE DELETE ON head BEGIN "
                      "SELECT RAISE(ABORT, 'the audit trail is append-only'); END",
    "head_no_rewind": "CREATE TRIGGER head_no_rewind BEFORE UPDATE ON head WHEN NEW.seq <= OLD.seq BEGIN "
                      "SELECT RAISE(ABORT, 'the audit trail is append-only'); END",
}
#: what each trigger refuses, for verify's messages
_GUARDS = {"entries_no_update": "changing an entry", "entries_no_delete": "deleting an entry",
           "head_no_delete": "deleting the head", "head_no_rewind": "moving the head back"}


@migrations()
def m001_entries(db: Database) -> None:
    """Entries in order, hash-chained; updates and deletes refused by triggers."""
    db["entries"].create({"seq": int, "ts": int, "actor": str, "action": str, "target": str, "details": str,
                          "prev_hash": str, "hash": str}, pk="seq", not_null={"ts", "actor", "action", "hash"})
    db["entries"].create_index(["action", "ts"], index_name="entries_action_ts")
    db["entries"].create_index(["ts"], index_name="entries_ts")
    db.execute(TRIGGERS["entries_no_update"])
    db.execute(TRIGGERS["entries_no_delete"])


@migrations()
def m002_head(db: Database) -> None:
    """The last entry's number and hash, which only move forward: deleting entries from the end shows."""
    db.execute("CREATE TABLE head (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash TEXT NOT NULL)")
    # a trail from before this migration: its head is its last entry as it stands now
    last = db.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
    db.execute("INSERT INTO head (id, seq, hash) VALUES (1, ?, ?)", list(last) if last else [0, GENESIS])
    db.execute(TRIGGERS["head_no_delete"])
    db.execute(TRIGGERS["head_no_rewind"])


def trail_path(path_option: str | None, data_dir: str | Path) -> Path:
    """Where the trail lives: ``path`` from ``[security.audit]``, or ``<data_dir>/audit.db``."""
    return Path(path_option) if path_option else Path(data_dir) / "audit.db"


def entry_hash(prev_hash: str, ts: int, actor: str, action: str, target: str, details: str) -> str:
    """The chain hash of an entry: SHA-256 over the previous hash and the entry's fields."""
    material = orjson.dumps([prev_hash, ts, actor, action, target, details])
    return hashlib.sha256(material).hexdigest()


class TrailDamagedError(TelemetryError):
    """The trail was changed outside the service so that no entry can follow (its head is gone)."""


@attrs.frozen
class TrailReport:
    """What :func:`verify` found: ``entries`` intact from the first one on, what the head records, the problems."""

    #: the trail's file (``None`` for a trail in PostgreSQL)
    path: Path | None
    entries: int
    #: entries the head says were written (``None`` when the trail has no head to read)
    recorded: int | None
    problems: list[str]
    #: the file, or the PostgreSQL database and schema (never with a password), for messages
    where: str = attrs.field(default=attrs.Factory(lambda self: str(self.path), takes_self=True))

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems


def verify(path: Path) -> TrailReport:
    """Check the trail in ``path`` without writing to it: the chain, its end against the head, the triggers.

    The file is opened read-only (SQLite may create its ``-shm``/``-wal`` companions, never changes the
    database).  Raises :class:`TelemetryError` when there is no trail at ``path``.
    """
    if not path.is_file():
        raise TelemetryError(f"no audit trail at {path}: it is created when the service starts with "
                             "[security.audit] enabled = true")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return _verify(conn, path)
    except sqlite3.DatabaseError as exc:
        raise TelemetryError(f"{path} cannot be read as an audit trail: {exc}") from None
    finally:
        conn.close()


def _verify(conn: sqlite3.Connection, path: Path) -> TrailReport:
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "entries" not in tables:
        return TrailReport(path, 0, None, ["the file has no entries table: it is not an audit trail, "
                                           "or the table was dropped"])
    problems = _trigger_problems(conn, head_table="head" in tables)
    checked, chain_problem = _walk(conn.execute(
        "SELECT seq, ts, actor, action, target, details, prev_hash, hash FROM entries ORDER BY seq"))
    if chain_problem is not None:
        problems.append(chain_problem)
    recorded = None
    if "head" in tables:
        head = conn.execute("SELECT seq, hash FROM head WHERE id = 1").fetchone()
        if head is None:
            problems.append("the head record was deleted: entries deleted from the end cannot be ruled out")
        else:
            recorded = head[0]
            last = conn.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
            problems += _head_problems(last, *head)
    elif "m002_head" in {m.name for m in migrations.applied(Database(conn, execute_plugins=False))}:
        problems.append("the head table was dropped: entries deleted from the end cannot be ruled out")
    else:
        problems.append("the trail was written by an older version and has no head record yet, so entries "
                        "deleted from the end cannot be ruled out: start the service once (it adds one) and verify again")
    return TrailReport(path, checked, recorded, problems)


def _trigger_problems(conn: sqlite3.Connection, *, head_table: bool) -> list[str]:
    # compared by text, not only by name: a trigger of the same name that does nothing refuses nothing
    found = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").fetchall())
    problems = []
    for name, sql in TRIGGERS.items():
        if name.startswith("head_") and not head_table:
            continue  # a missing head is reported on its own
        if name not in found:
            problems.append(f"the append-only trigger {name} is missing: {_GUARDS[name]} is no longer refused "
                            "(someone with write access to the file dropped it)")
        elif " ".join(found[name].split()) != " ".join(sql.split()):
            problems.append(f"the append-only trigger {name} was replaced: {_GUARDS[name]} may no longer be refused")
    return problems


def _walk(rows: Iterable[tuple[Any, ...]]) -> tuple[int, str | None]:
    """The chain from entry 1 (``rows`` in seq order, from either backend): ``(entries intact, the first
    problem or None)``."""
    prev = GENESIS
    checked = 0
    expected_seq = 1
    for seq, ts, actor, action, target, details, prev_hash, stored in rows:
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


def _head_problems(last: tuple[int, str] | None, head_seq: int, head_hash: str) -> list[str]:
    """The last entry (``(seq, hash)`` or ``None``) against the head."""
    if last is None:
        if head_seq:
            return [f"the trail is empty, but its head records {head_seq} entries: every entry was deleted"]
        return []
    last_seq, last_hash = last
    if last_seq < head_seq:
        deleted = f"entry {head_seq} was" if last_seq + 1 == head_seq else f"entries {last_seq + 1} to {head_seq} were"
        return [f"{deleted} deleted from the end (the head records {head_seq} entries, the last one left is {last_seq})"]
    if last_seq > head_seq:
        return [f"entries after {head_seq} were written around the service (the head records {head_seq}, "
                f"the last entry is {last_seq})"]
    if last_hash != head_hash:
        return [f"entry {last_seq} is not the one the head records (its hash differs): it was replaced"]
    return []


class SqliteTrail:
    """The trail in its own SQLite file (the default)."""

    backend = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)
        self._conn: sqlite3.Connection | None = None

    def open(self) -> None:
        """Open the file (creating it) and apply the migrations."""
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
            conn.close()
            raise
        self._conn = conn

    def append(self, action: str, target: str, actor: str, details: Callable[[str | None], str | None]) -> bool:
        """Write one entry; ``details`` gets the details of the last entry of the same action (read under the
        file's write lock) and gives this entry's, or ``None`` to write nothing."""
        conn = self._conn
        if conn is None:
            raise TelemetryError("the audit trail is not open")
        conn.execute("BEGIN IMMEDIATE")  # other processes append to the same file: read the head under the lock
        try:
            last = conn.execute("SELECT details FROM entries WHERE action = ? ORDER BY seq DESC LIMIT 1",
                                [action]).fetchone()
            text = details(last[0] if last else None)
            if text is None:
                conn.execute("ROLLBACK")
                return False
            # the head, not the last row: after entries were deleted from the end the next one still follows
            # the last one written, so the gap stays visible to verify
            try:
                head = conn.execute("SELECT seq, hash FROM head WHERE id = 1").fetchone()
            except sqlite3.OperationalError:
                head = None
            if head is None:
                raise TrailDamagedError(f"the audit trail {self.path} lost its head record (the file was changed "
                                     "outside the service): nothing more is appended; `telemetry audit verify` "
                                     "says what else changed")
            last_seq, prev = head
            ts = now_ms()
            digest = entry_hash(prev, ts, actor, action, target, text)
            conn.execute("INSERT INTO entries (seq, ts, actor, action, target, details, prev_hash, hash) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         [last_seq + 1, ts, actor, action, target, text, prev, digest])
            conn.execute("UPDATE head SET seq = ?, hash = ? WHERE id = 1", [last_seq + 1, digest])
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return True

    def read(self, *, action: str | None, since: int | None, limit: int) -> list[dict[str, Any]]:
        """Entries newest first."""
        if self._conn is None:
            raise TelemetryError("the audit trail is not open")
        return read_entries(self._conn, action=action, since=since, limit=limit)

    def close(self) -> None:
        """Close the file."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _postgres_store(service: TelemetryService) -> Any:
    """The primary store when it is the postgres plugin's (found by name: that plugin need not be installed)."""
    store = service.storage_plugin()
    if store is not None and getattr(store, "name", None) == "postgres" and hasattr(store, "connection"):
        return store
    return None


class AuditTrail:
    """Append-only, hash-chained audit entries: in their own SQLite file, or beside the events in PostgreSQL."""

    name = "audit"

    @attrs.frozen
    class Config:
        """Options of ``[security.audit]``."""

        #: the trail's SQLite file; set, it is used even when the store is PostgreSQL
        path: str | None = None
        #: refused when set: entries are never deleted (see ``__attrs_post_init__``)
        retention_days: int | None = None
        #: what to record: action names (``export``, ``clean`` ...) or the seed's kinds (``create``, ``update``,
        #: ``delete``, ``export``: see :data:`KINDS`); unset records everything
        events: tuple[str, ...] | None = None

        def __attrs_post_init__(self) -> None:
            if self.retention_days is not None:
                # accepted and not applied would be a silent no-op: say so instead
                raise ConfigError("retention_days: the audit trail is append-only and keeps every entry (a hash "
                                  "chain cannot lose its first links and still be verified); remove the option, "
                                  "and archive audit.db (or the audit tables) if the trail grows too large")
            known = set(KINDS) | {action for actions in KINDS.values() for action in actions}
            unknown = [name for name in self.events or () if name not in known]
            if unknown:
                raise ConfigError(f"events: unknown {', '.join(map(repr, unknown))}; expected the seed's kinds "
                                  f"({', '.join(KINDS)}) or actions ({', '.join(sorted(known - set(KINDS)))})")

    def __init__(self, config: AuditTrail.Config | None = None) -> None:
        self.config = config or AuditTrail.Config()
        #: the actions recorded, or ``None`` for all
        self.recorded: frozenset[str] | None = None
        if self.config.events is not None:
            self.recorded = frozenset(action for name in self.config.events for action in KINDS.get(name, (name,)))
        self.skipped = 0
        self.path: Path | None = None
        #: the open trail (:class:`SqliteTrail` or ``postgres.PostgresTrail``)
        self.trail: Any = None
        self._lock = threading.Lock()
        self.written = 0
        #: why the trail refuses appends (it was changed outside the service), reported by health
        self.damaged: str | None = None
        #: why the PostgreSQL trail could not be opened at start (it is retried at the next entry)
        self.pending: str | None = None
        #: the configuration entry of a start whose trail was not open yet
        self._config_details: Callable[[str | None], dict[str, Any] | None] | None = None

    @hookimpl
    def startup(self, service: TelemetryService) -> None:
        """Open the trail and record a configuration change since the last start."""
        store = _postgres_store(service)
        if store is not None and self.config.path is None:
            from .postgres import PostgresTrail

            self.trail = PostgresTrail(store)
            try:
                self.trail.open()
            except StorageUnavailableError as exc:
                # a degraded start: the store opens later, and so does the trail (at its next entry)
                self.pending = str(exc)
                log.warning("audit trail in PostgreSQL not open yet: %s", exc)
        else:
            self.path = trail_path(self.config.path, service.data_dir)
            if store is not None:
                log.info("audit trail in %s ([security.audit] path is set), not beside the events in PostgreSQL",
                         self.path)
            self.trail = SqliteTrail(self.path)
            self.trail.open()
        config = redact_secrets(service.loaded.raw)
        fingerprint = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()

        def config_details(last: str | None) -> dict[str, Any] | None:
            # read under the trail's lock: processes starting together with a new configuration record it once
            previous = json.loads(last) if last else None
            if previous is not None and previous.get("fingerprint") == fingerprint:
                return None
            return {"fingerprint": fingerprint, "config": config,
                    "changed": sorted(_changed_keys(previous.get("config", {}) if previous else {}, config)),
                    "sources": list(service.loaded.sources)}

        if self.recorded is not None and "config" not in self.recorded:
            self.skipped += 1  # ``events`` leaves configuration changes out
            return
        if self.pending is not None:
            self._config_details = config_details  # recorded when the trail opens, before the entry that opens it
            return
        try:
            self._append("config", "configuration", current_actor(), config_details)
        except StorageUnavailableError as exc:
            log.warning("audit trail %s: the configuration could not be recorded: %s", self.trail.where, exc)
        except (TelemetryError, sqlite3.Error) as exc:
            # a trail someone changed outside the service must not stop the application: health and the log say so
            self.damaged = str(exc)
            log.error("audit trail %s: %s", self.trail.where, exc)

    @hookimpl
    def audit(self, action: str, target: str, actor: str, details: dict[str, Any]) -> None:
        """Append one entry, chained to the one before (unless ``events`` leaves this action out)."""
        if self.trail is None:
            raise TelemetryError("the audit trail is not open")
        if self.recorded is not None and action not in self.recorded:
            self.skipped += 1
            return
        self._append(action, target, actor, lambda last: details)

    def _append(self, action: str, target: str, actor: str,
                details: Callable[[str | None], dict[str, Any] | None]) -> None:
        with self._lock:
            if self._config_details is not None:  # a start's configuration entry goes first
                self._append_locked("config", "configuration", current_actor(), self._config_details)
                self._config_details = None
            self._append_locked(action, target, actor, details)

    def _append_locked(self, action: str, target: str, actor: str,
                       details: Callable[[str | None], dict[str, Any] | None]) -> None:
        def text(last: str | None) -> str | None:
            given = details(last)
            return None if given is None else orjson.dumps(given, default=str, option=orjson.OPT_SORT_KEYS).decode()

        try:
            appended = self.trail.append(action, target, actor, text)
        except TrailDamagedError as exc:
            self.damaged = str(exc)
            raise
        self.pending = None
        if appended:
            self.written += 1

    @hookimpl
    def get_audit_logs(self, action: str | None, since: int | None, limit: int) -> list[dict[str, Any]]:
        """Entries newest first."""
        if self.trail is None:
            raise TelemetryError("the audit trail is not open")
        with self._lock:
            return self.trail.read(action=action, since=since, limit=limit)

    @hookimpl
    def health(self) -> dict[str, Any]:
        """Where the trail is, how many entries this process wrote, and whether it still accepts them."""
        issues = [] if self.trail is not None else ["audit trail closed"]
        if self.damaged:
            issues.append(self.damaged)
        if self.pending:
            issues.append(f"not open yet: {self.pending}")
        return {"healthy": not issues, "issues": issues,
                "backend": self.trail.backend if self.trail is not None else None,
                "where": self.trail.where if self.trail is not None else None,
                "path": str(self.path) if self.path else None,
                "written": self.written, "skipped": self.skipped,
                "events": sorted(self.recorded) if self.recorded is not None else "all"}

    @hookimpl
    def shutdown(self, service: TelemetryService) -> None:
        """Close the file (a PostgreSQL trail's connections are the store's)."""
        with self._lock:
            if self.trail is not None:
                self.trail.close()
                self.trail = None

    @staticmethod
    @hookimpl
    def register_commands(cli: click.Group) -> None:
        """``telemetry audit`` and ``telemetry audit verify``."""
        from .cli import register

        register(cli)


def read_entries(conn: sqlite3.Connection, *, action: str | None, since: int | None, limit: int) -> list[dict[str, Any]]:
    """Entries newest first, optionally of one action and from ``since`` (epoch ms) on."""
    sql, params = entries_sql("entries", "?", action=action, since=since, limit=limit)
    return _entry_dicts(conn.execute(sql, params).fetchall())


def entries_sql(table: str, mark: str, *, action: str | None, since: int | None, limit: int) -> tuple[str, list[Any]]:
    """The listing's query over ``table`` with ``mark`` as the placeholder (``?`` or ``%s``), and its parameters."""
    where, params = [], []
    if action is not None:
        where.append(f"action = {mark}")
        params.append(action)
    if since is not None:
        where.append(f"ts >= {mark}")
        params.append(since)
    sql = (f"SELECT seq, ts, actor, action, target, details, hash FROM {table}"
           + (f" WHERE {' AND '.join(where)}" if where else "") + f" ORDER BY seq DESC LIMIT {mark}")
    return sql, [*params, limit]


def _entry_dicts(rows: Iterable[tuple[Any, ...]]) -> list[dict[str, Any]]:
    return [{"seq": seq, "timestamp": ts, "actor": actor, "action": act, "target": target,
             "details": json.loads(details), "hash": digest}
            for seq, ts, actor, act, target, details, digest in rows]


def _changed_keys(before: Any, after: Any, prefix: str = "") -> set[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        changed: set[str] = set()
        for key in set(before) | set(after):
            changed |= _changed_keys(before.get(key), after.get(key), f"{prefix}{key}.")
        return changed
    return set() if before == after else {prefix.rstrip(".") or "(all)"}
