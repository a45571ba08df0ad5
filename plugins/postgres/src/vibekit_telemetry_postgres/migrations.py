"""The PostgreSQL schema, as numbered migrations run under an advisory lock.

Migrations only ever append: a released one is never edited, a change to the schema is a new entry.  ``apply``
takes a transaction-level advisory lock before it reads what is applied, so two processes starting at once
against a new database migrate it once: the second waits, then finds nothing to do.  DDL is transactional in
PostgreSQL, so a migration that fails leaves nothing half-made.
"""

from __future__ import annotations

from typing import Any

#: ``pg_advisory_xact_lock`` key of the migrations (any 64-bit number; this one is "vibekit" in ASCII)
MIGRATION_LOCK = 0x76_69_62_65_6B_69_74
#: key of partition creation and removal (another lock, so ingest never waits on a migration)
PARTITION_LOCK = MIGRATION_LOCK + 1

#: ``(name, SQL)`` in order; ``{schema}`` is the configured schema, already quoted
MIGRATIONS: list[tuple[str, str]] = [
    ("001_events_and_sessions", """
CREATE SEQUENCE events_seq;
-- One row per event, partitioned by time (epoch ms) so retention drops whole partitions. (id, timestamp) is
-- the key: a replayed event has the same id and timestamp, and a partitioned table's unique keys must hold
-- the partition column. seq breaks ties between events of the same millisecond, as rowid does in SQLite.
CREATE TABLE events (
    seq bigint NOT NULL DEFAULT nextval('events_seq'),
    id text NOT NULL,
    session_id text,
    event_type text NOT NULL,
    category text NOT NULL,
    action text,
    label text,
    value double precision,
    timestamp bigint NOT NULL,
    agent text,
    mode text,
    prompt text,
    parent_session_id text,
    stream_data text,
    status text,
    error_type text,
    error_message text,
    error_stack text,
    metadata jsonb NOT NULL DEFAULT '{}',
    truncated jsonb,
    -- the words of prompt and stream_data as vibekit_telemetry.search_words splits them (what SQLite's
    -- unicode61 tokenizer indexes), so text search matches what the SQLite store matches
    words tsvector,
    PRIMARY KEY (id, timestamp)
) PARTITION BY RANGE (timestamp);
CREATE INDEX events_time ON events (timestamp, seq);
CREATE INDEX events_session_time ON events (session_id, timestamp);
CREATE INDEX events_category_time ON events (category, timestamp);
CREATE INDEX events_type_time ON events (event_type, timestamp);
CREATE INDEX events_words ON events USING gin (words);

CREATE TABLE sessions (
    id text PRIMARY KEY,
    agent text,
    mode text,
    prompt text,
    status text NOT NULL,
    parent_id text,
    started_at bigint,
    ended_at bigint,
    first_event_at bigint,
    last_event_at bigint,
    first_stream_at bigint,
    event_count bigint NOT NULL DEFAULT 0,
    stream_count bigint NOT NULL DEFAULT 0,
    error_count bigint NOT NULL DEFAULT 0,
    metadata jsonb NOT NULL DEFAULT '{}',
    input_tokens bigint NOT NULL DEFAULT 0,
    output_tokens bigint NOT NULL DEFAULT 0,
    cache_read_tokens bigint NOT NULL DEFAULT 0,
    cache_creation_tokens bigint NOT NULL DEFAULT 0,
    reasoning_tokens bigint NOT NULL DEFAULT 0,
    last_error text,
    has_start boolean NOT NULL DEFAULT false,
    kind text,
    model text,
    conversation_id text,
    user_id text
);
CREATE INDEX sessions_started ON sessions (started_at, id);
CREATE INDEX sessions_status_started ON sessions (status, started_at, id);
CREATE INDEX sessions_agent_started ON sessions (agent, started_at, id);
CREATE INDEX sessions_parent ON sessions (parent_id, started_at);
CREATE INDEX sessions_conversation ON sessions (conversation_id, started_at);
CREATE INDEX sessions_user ON sessions (user_id, started_at);
CREATE INDEX sessions_kind ON sessions (kind, started_at);
"""),
    ("002_events_by_seq", """
-- Readers that follow the store in the order events were written (the analytics rollups: one process of the
-- cluster counts every stored event once, by seq) need seq alone.
CREATE INDEX events_by_seq ON events (seq);
"""),
    ("003_settings", """
-- Settings the schema was made with that a later start must not change (the partitions' width).
CREATE TABLE vibekit_settings (key text PRIMARY KEY, value text NOT NULL);
"""),
    ("004_partial_label_indexes", """
-- Most sessions have no parent, conversation, user or kind: those indexes hold only the sessions that do (a
-- filter on a value implies it is set; roots are found through sessions_started), so writing a new session
-- touches four indexes fewer.
DROP INDEX sessions_parent;
DROP INDEX sessions_conversation;
DROP INDEX sessions_user;
DROP INDEX sessions_kind;
CREATE INDEX sessions_parent ON sessions (parent_id, started_at) WHERE parent_id IS NOT NULL;
CREATE INDEX sessions_conversation ON sessions (conversation_id, started_at) WHERE conversation_id IS NOT NULL;
CREATE INDEX sessions_user ON sessions (user_id, started_at) WHERE user_id IS NOT NULL;
CREATE INDEX sessions_kind ON sessions (kind, started_at) WHERE kind IS NOT NULL;
"""),
    ("005_binary_collation", """
-- Ids, names and labels compare and sort by their bytes, as SQLite's BINARY collation has them: the same
-- order in every store whatever the database's locale, and index comparisons without the locale's rules.
-- (Rewrites the indexes on these columns: on a large existing table, run it at a quiet hour.)
ALTER TABLE events
    ALTER COLUMN id TYPE text COLLATE "C", ALTER COLUMN session_id TYPE text COLLATE "C",
    ALTER COLUMN event_type TYPE text COLLATE "C", ALTER COLUMN category TYPE text COLLATE "C",
    ALTER COLUMN agent TYPE text COLLATE "C", ALTER COLUMN mode TYPE text COLLATE "C",
    ALTER COLUMN status TYPE text COLLATE "C";
ALTER TABLE sessions
    ALTER COLUMN id TYPE text COLLATE "C", ALTER COLUMN agent TYPE text COLLATE "C",
    ALTER COLUMN mode TYPE text COLLATE "C", ALTER COLUMN status TYPE text COLLATE "C",
    ALTER COLUMN parent_id TYPE text COLLATE "C", ALTER COLUMN kind TYPE text COLLATE "C",
    ALTER COLUMN model TYPE text COLLATE "C", ALTER COLUMN conversation_id TYPE text COLLATE "C",
    ALTER COLUMN user_id TYPE text COLLATE "C";
"""),
]

_TABLE = "vibekit_migrations"


def apply(conn: Any, schema: str) -> list[str]:
    """Bring ``schema`` up to date on ``conn`` (not in a transaction); return the names of the migrations run."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATION_LOCK])
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        conn.execute(f"SET LOCAL search_path TO {schema}")
        ours = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [f"{schema}.{_TABLE}"]).fetchone()[0]
        if not ours:
            foreign = [r[0] for r in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname IN ('events', 'sessions') LIMIT 2",
                [schema.strip('"')])]
            if foreign:
                raise ForeignSchemaError(foreign)
            conn.execute(f"CREATE TABLE {_TABLE} (name text PRIMARY KEY, applied_at timestamptz NOT NULL "
                         "DEFAULT now())")
        done = {r[0] for r in conn.execute(f"SELECT name FROM {_TABLE}")}
        ran = []
        for name, sql in MIGRATIONS:
            if name in done:
                continue
            conn.execute(sql)
            conn.execute(f"INSERT INTO {_TABLE} (name) VALUES (%s)", [name])
            ran.append(name)
    return ran


def applied(conn: Any, schema: str) -> list[str]:
    """Names of the migrations applied to ``schema``."""
    return [r[0] for r in conn.execute(f"SELECT name FROM {schema}.{_TABLE} ORDER BY name")]


class ForeignSchemaError(Exception):
    """The schema holds tables of these names that our migrations did not make."""

    def __init__(self, tables: list[str]) -> None:
        super().__init__(", ".join(tables))
        self.tables = tables
