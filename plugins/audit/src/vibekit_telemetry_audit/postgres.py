"""The audit trail in PostgreSQL, beside the events, when the service's primary store is the postgres plugin.

Many processes on many hosts write one trail there, so it must stay one chain: an append is one transaction
that takes a transaction-level advisory lock of the schema, reads the head, computes the entry's hash
(:func:`vibekit_telemetry_audit.entry_hash`, the same as in the SQLite file), inserts the entry and moves the
head.  Appenders of one schema therefore queue on the lock, and each entry follows the one committed before
it.  The tables (``audit_entries``, ``audit_head``) come from this module's own numbered migrations, recorded
in ``audit_migrations`` and applied under the same lock; triggers refuse ``UPDATE``, ``DELETE`` and
``TRUNCATE`` as the SQLite file's do.

Only :mod:`psycopg` is needed here, imported when a PostgreSQL trail is used: the audit plugin does not depend
on the postgres plugin.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from vibekit_telemetry import StorageUnavailableError, TelemetryError, now_ms
from vibekit_telemetry.config import redact_url

from . import GENESIS, TrailDamagedError, TrailReport, _entry_dicts, _head_problems, _walk, entries_sql, entry_hash

#: the advisory lock of one schema's trail (appends and migrations): a 64-bit key derived from the schema's
#: name, so trails in different schemas of one database do not wait on each other
LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended('vibekit_telemetry_audit:' || current_schema(), 0))"

#: how long an entry waits for a store still opening in the background (its start took longer than
#: ``reliability.startup_timeout_ms``) before it is given up as a failure
OPEN_WAIT_S = 15.0

_REFUSE_BODY = " BEGIN RAISE EXCEPTION 'the audit trail is append-only'; END; "

#: the triggers that make the trail append-only: ``name: (table, what pg_get_triggerdef shows after ON)``
TRIGGERS = {
    "audit_entries_no_update": ("audit_entries", "BEFORE UPDATE ON audit_entries FOR EACH ROW "
                                "EXECUTE FUNCTION audit_refuse()"),
    "audit_entries_no_delete": ("audit_entries", "BEFORE DELETE ON audit_entries FOR EACH ROW "
                                "EXECUTE FUNCTION audit_refuse()"),
    "audit_entries_no_truncate": ("audit_entries", "BEFORE TRUNCATE ON audit_entries FOR EACH STATEMENT "
                                  "EXECUTE FUNCTION audit_refuse()"),
    "audit_head_no_delete": ("audit_head", "BEFORE DELETE ON audit_head FOR EACH ROW "
                             "EXECUTE FUNCTION audit_refuse()"),
    "audit_head_no_rewind": ("audit_head", "BEFORE UPDATE ON audit_head FOR EACH ROW "
                             "WHEN ((new.seq <= old.seq)) EXECUTE FUNCTION audit_refuse()"),
    "audit_head_no_truncate": ("audit_head", "BEFORE TRUNCATE ON audit_head FOR EACH STATEMENT "
                               "EXECUTE FUNCTION audit_refuse()"),
}
_GUARDS = {"audit_entries_no_update": "changing an entry", "audit_entries_no_delete": "deleting an entry",
           "audit_entries_no_truncate": "emptying the entries table", "audit_head_no_delete": "deleting the head",
           "audit_head_no_rewind": "moving the head back", "audit_head_no_truncate": "emptying the head table"}

#: ``(name, SQL)`` in order; a released migration is never edited, a change is a new entry
MIGRATIONS: list[tuple[str, str]] = [
    ("001_entries_and_head", f"""
-- details is kept as the exact text that was hashed (jsonb would reorder its keys)
CREATE TABLE audit_entries (
    seq bigint PRIMARY KEY,
    ts bigint NOT NULL,
    actor text NOT NULL,
    action text NOT NULL,
    target text,
    details text,
    prev_hash text,
    hash text NOT NULL
);
CREATE INDEX audit_entries_action_ts ON audit_entries (action, ts);
CREATE INDEX audit_entries_ts ON audit_entries (ts);
CREATE TABLE audit_head (id integer PRIMARY KEY CHECK (id = 1), seq bigint NOT NULL, hash text NOT NULL);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '{GENESIS}');
CREATE FUNCTION audit_refuse() RETURNS trigger LANGUAGE plpgsql AS $${_REFUSE_BODY}$$;
""" + "".join(f"CREATE TRIGGER {name} {definition};\n" for name, (_, definition) in TRIGGERS.items())),
]

_MIGRATIONS_TABLE = "audit_migrations"

#: the action of the entry that records a move of a SQLite trail into this one (``telemetry migrate``)
MOVE_ACTION = "migrate"
#: the newest entry of an action written here, not copied in by a move: a service's configuration entry is
#: compared with its own last one, never with the one of a laptop whose trail was moved after it
_LAST_OWN_ENTRY = (
    "SELECT details FROM audit_entries e WHERE action = %s AND NOT EXISTS (SELECT 1 FROM audit_entries m "
    f"WHERE m.action = '{MOVE_ACTION}' AND m.target LIKE 'audit:%%' AND e.seq > m.seq "
    "AND e.seq <= m.seq + (m.details::jsonb ->> 'entries')::bigint) ORDER BY seq DESC LIMIT 1")
#: the oid of the connection's schema (the store's), in catalog queries
_HERE = "(SELECT oid FROM pg_namespace WHERE nspname = current_schema())"
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def migrate(conn: Any) -> list[str]:
    """Bring the trail in ``conn``'s current schema up to date, under the trail's lock; the migrations run."""
    with conn.transaction():
        conn.execute(LOCK_SQL)
        conn.execute(f"CREATE TABLE IF NOT EXISTS {_MIGRATIONS_TABLE} (name text PRIMARY KEY, "
                     "applied_at timestamptz NOT NULL DEFAULT now())")
        done = {name for (name,) in conn.execute(f"SELECT name FROM {_MIGRATIONS_TABLE}")}
        ran = []
        for name, sql in MIGRATIONS:
            if name not in done:
                conn.execute(sql)
                conn.execute(f"INSERT INTO {_MIGRATIONS_TABLE} (name) VALUES (%s)", [name])
                ran.append(name)
    return ran


def describe(conn: Any) -> str:
    """Where ``conn`` points, without a password: ``PostgreSQL postgresql://user@host:port/db (schema s)``."""
    info = conn.info
    schema = conn.execute("SELECT current_schema()").fetchone()[0]
    host = info.host if not info.host.startswith("/") else f"[{info.host}]"
    return f"PostgreSQL postgresql://{info.user}@{host}:{info.port}/{info.dbname} (schema {schema})"


class PostgresTrail:
    """The trail in the store's database and schema, through ``store.connection()``."""

    backend = "postgresql"

    def __init__(self, store: Any) -> None:
        self.store = store
        #: where the trail is (no password), known once a connection was made
        self.where = "PostgreSQL (not connected yet)"
        self.migrated = False

    def open(self) -> None:
        """Apply the trail's migrations (the store already made the schema)."""
        with self.store.connection() as conn:
            self.where = describe(conn)
            migrate(conn)
        self.migrated = True

    def open_when_ready(self, timeout: float = OPEN_WAIT_S) -> None:
        """Open, waiting up to ``timeout`` seconds for a store that is still opening (a degraded start)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.open()
            except StorageUnavailableError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)

    def append(self, action: str, target: str, actor: str, details: Callable[[str | None], str | None]) -> bool:
        """Write one entry in one transaction under the trail's lock; ``details`` gets the details of the last
        entry of the same action (read under the lock) and gives this entry's, or ``None`` to write nothing."""
        if not self.migrated:
            self.open_when_ready()
        with self.store.connection() as conn, conn.transaction():
            conn.execute(LOCK_SQL)
            last = conn.execute(_LAST_OWN_ENTRY, [action]).fetchone()
            text = details(last[0] if last else None)
            if text is None:
                return False
            head = conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
            if head is None:
                raise TrailDamagedError(f"the audit trail in {self.where} lost its head record (it was changed "
                                        "outside the service): nothing more is appended; `telemetry audit verify` "
                                        "says what else changed")
            seq, prev = head[0] + 1, head[1]
            ts = now_ms()
            digest = entry_hash(prev, ts, actor, action, target, text)
            conn.execute("INSERT INTO audit_entries (seq, ts, actor, action, target, details, prev_hash, hash) "
                         "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                         [seq, ts, actor, action, target, text, prev, digest])
            conn.execute("UPDATE audit_head SET seq = %s, hash = %s WHERE id = 1", [seq, digest])
        return True

    def read(self, *, action: str | None, since: int | None, limit: int) -> list[dict[str, Any]]:
        """Entries newest first."""
        with self.store.connection() as conn:
            return read_entries(conn, action=action, since=since, limit=limit)

    def close(self) -> None:
        """Nothing to close: the connections are the store's."""


def read_entries(conn: Any, *, action: str | None, since: int | None, limit: int) -> list[dict[str, Any]]:
    """Entries newest first, optionally of one action and from ``since`` (epoch ms) on."""
    sql, params = entries_sql("audit_entries", "%s", action=action, since=since, limit=limit)
    return _entry_dicts(conn.execute(sql, params).fetchall())


def connect(dsn: str, schema: str) -> Any:
    """A read-only connection to the trail in ``schema`` (one snapshot: REPEATABLE READ), for the CLI."""
    import psycopg

    if not _SCHEMA_NAME.fullmatch(schema):
        raise TelemetryError(f"schema: expected a lower-case SQL name (letters, digits, _), got {schema!r}")
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10, application_name="vibekit-telemetry audit",
                               options=f"-c search_path={schema} -c default_transaction_read_only=on")
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TelemetryError(f"PostgreSQL {redact_url(dsn)} (schema {schema}): {redact_url(first)}") from None
    conn.read_only = True
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    return conn


def has_trail(conn: Any) -> bool:
    """Whether the connection's schema holds an audit trail (its entries table)."""
    return conn.execute("SELECT to_regclass('audit_entries') IS NOT NULL").fetchone()[0]


def verify(conn: Any) -> TrailReport:
    """Check the trail in ``conn``'s schema without writing to it: the chain, its end against the head, the
    triggers and their function.  Reads one snapshot, so appenders running meanwhile are no problem.

    Raises :class:`TelemetryError` when the schema holds no trail.
    """
    where = describe(conn)
    with conn.transaction():
        tables = {name for (name,) in conn.execute(
            f"SELECT relname FROM pg_class WHERE relnamespace = {_HERE} "
            "AND relname IN ('audit_entries', 'audit_head', %s)", [_MIGRATIONS_TABLE])}
        if _MIGRATIONS_TABLE not in tables and "audit_entries" not in tables:
            raise TelemetryError(f"no audit trail in {where}: it is created when the service starts with "
                                 "[security.audit] enabled = true and this store")
        if "audit_entries" not in tables:
            return TrailReport(None, 0, None, ["the audit_entries table was dropped"], where=where)
        problems = _trigger_problems(conn, head_table="audit_head" in tables)
        with conn.cursor(name="vibekit_audit_verify") as cursor:
            cursor.itersize = 5000
            cursor.execute("SELECT seq, ts, actor, action, target, details, prev_hash, hash FROM audit_entries "
                           "ORDER BY seq")
            checked, chain_problem = _walk(cursor)
        if chain_problem is not None:
            problems.append(chain_problem)
        recorded = None
        if "audit_head" not in tables:
            problems.append("the head table was dropped: entries deleted from the end cannot be ruled out")
        else:
            head = conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
            if head is None:
                problems.append("the head record was deleted: entries deleted from the end cannot be ruled out")
            else:
                recorded = head[0]
                last = conn.execute("SELECT seq, hash FROM audit_entries ORDER BY seq DESC LIMIT 1").fetchone()
                problems += _head_problems(last, *head)
    return TrailReport(None, checked, recorded, problems, where=where)


def _trigger_problems(conn: Any, *, head_table: bool) -> list[str]:
    # compared by definition, not only by name, and the function they call by its body: a trigger or a
    # function of the same name that does nothing refuses nothing
    found = {name: (enabled, definition) for name, enabled, definition in conn.execute(
        "SELECT t.tgname, t.tgenabled, pg_get_triggerdef(t.oid) FROM pg_trigger t "
        f"JOIN pg_class c ON c.oid = t.tgrelid WHERE c.relnamespace = {_HERE} "
        "AND c.relname IN ('audit_entries', 'audit_head') AND NOT t.tgisinternal")}
    schema = conn.execute("SELECT current_schema()").fetchone()[0]
    problems = []
    for name, (table, definition) in TRIGGERS.items():
        if table == "audit_head" and not head_table:
            continue  # a missing head is reported on its own
        if name not in found:
            problems.append(f"the append-only trigger {name} is missing: {_GUARDS[name]} is no longer refused "
                            "(someone who owns the tables dropped it)")
            continue
        enabled, shown = found[name]
        shown = " ".join(shown.replace(f"{schema}.", "").replace(f'"{schema}".', "").split())
        if shown != f"CREATE TRIGGER {name} {definition}":
            problems.append(f"the append-only trigger {name} was replaced: {_GUARDS[name]} may no longer be refused")
        elif enabled == "D":
            problems.append(f"the append-only trigger {name} is disabled (ALTER TABLE ... DISABLE TRIGGER): "
                            f"{_GUARDS[name]} is no longer refused")
        elif enabled == "R":
            problems.append(f"the append-only trigger {name} fires only on replicas (ENABLE REPLICA TRIGGER): "
                            f"{_GUARDS[name]} is no longer refused")
    body = conn.execute(f"SELECT prosrc FROM pg_proc WHERE pronamespace = {_HERE} AND proname = 'audit_refuse'"
                        ).fetchall()
    if not body:
        problems.append("the function audit_refuse of the append-only triggers is missing")
    elif len(body) > 1 or " ".join(body[0][0].split()) != " ".join(_REFUSE_BODY.split()):
        problems.append("the function audit_refuse of the append-only triggers was replaced: the triggers may "
                        "no longer refuse anything")
    return problems




def move_trail(path: Path, conn: Any, actor: str = "telemetry migrate") -> tuple[int, int]:
    """Append the entries of the SQLite trail at ``path`` to the trail in ``conn``'s schema; return ``(entries
    moved now, entries moved by earlier runs)``.

    The file must verify first (a damaged trail is refused, nothing is written).  Its entries keep their time,
    actor, action, target and details, and are chained anew after the entries already here (services on this
    database may have written some), so this trail stays one chain that ``verify`` checks; a ``migrate`` entry
    before them records the source, the range of its entries and its own head hash, which ties the copies to
    the file's chain.  One transaction under the trail's lock: all of a run's entries or none.  Runs again
    move only the entries the file gained since (the ``migrate`` entries say how far earlier runs got).
    """
    from . import verify as verify_file

    report = verify_file(path)
    if not report.ok:
        raise TrailDamagedError(f"the audit trail {path} does not verify ({'; '.join(report.problems)}): it is "
                                "not moved")
    verified = report.recorded or 0  # entries a service appends from now on wait for the next run
    source = str(path.resolve())
    migrate(conn)
    with conn.transaction():
        conn.execute(LOCK_SQL)
        markers = [orjson.loads(text) for (text,) in conn.execute(
            "SELECT details FROM audit_entries WHERE action = %s AND target = %s", [MOVE_ACTION, f"audit:{source}"])]
        lite = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            # the earlier runs that moved *this* trail: the entry each ended on is still in the file as it was
            # (another trail at that path since, a laptop's store made anew, has other entries there)
            ours = [m for m in markers if lite.execute("SELECT hash FROM entries WHERE seq = ?",
                                                       [m["through_seq"]]).fetchone() == (m["source_head_hash"],)]
            earlier = sum(m["entries"] for m in ours)
            through = max((m["through_seq"] for m in ours), default=0)
            rows = lite.execute("SELECT seq, ts, actor, action, target, details, hash FROM entries "
                                "WHERE seq > ? AND seq <= ? ORDER BY seq", [through, verified]).fetchall()
        finally:
            lite.close()
        if not rows:
            return 0, earlier
        head = conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        if head is None:
            raise TrailDamagedError(f"the audit trail in {describe(conn)} lost its head record: nothing is moved "
                                    "into it; `telemetry audit verify` says what else changed")
        seq, prev = head
        marker = orjson.dumps({"source": source, "from_seq": rows[0][0], "through_seq": rows[-1][0],
                               "entries": len(rows), "source_head_hash": rows[-1][6]},
                              option=orjson.OPT_SORT_KEYS).decode()
        entries = [(now_ms(), actor, MOVE_ACTION, f"audit:{source}", marker)]
        entries += [(ts, who, action, target, details) for _, ts, who, action, target, details, _ in rows]
        values = []
        for ts, who, action, target, details in entries:
            seq += 1
            digest = entry_hash(prev, ts, who, action, target, details)
            values.append((seq, ts, who, action, target, details, prev, digest))
            prev = digest
        with conn.cursor() as cursor:
            cursor.executemany("INSERT INTO audit_entries (seq, ts, actor, action, target, details, prev_hash, hash) "
                               "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", values)
        conn.execute("UPDATE audit_head SET seq = %s, hash = %s WHERE id = 1", [seq, prev])
    return len(rows), earlier
