"""The database schema, as numbered sqlite-utils migrations.

Migrations only ever append: a released migration is never edited, a change
to the schema is a new function.  ``apply`` runs them under an exclusive write
lock, so two processes opening a new file at once agree on one schema.
"""

from __future__ import annotations

import sqlite3

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from .schema import APPLICATION_ID, MIGRATION_SET

migrations = Migrations(MIGRATION_SET)


@migrations()
def m001_events_and_sessions(db: Database) -> None:
    """Events (one row each, FTS over prompts and streamed text) and their session summaries."""
    db["events"].create(
        {
            "seq": int, "id": str, "session_id": str, "event_type": str, "category": str, "action": str,
            "label": str, "value": float, "timestamp": int, "agent": str, "mode": str, "prompt": str,
            "parent_session_id": str, "stream_data": str, "status": str, "error_type": str,
            "error_message": str, "error_stack": str, "metadata": str, "truncated": str,
        },
        pk="seq",
        not_null={"id", "event_type", "category", "timestamp", "metadata"},
        defaults={"metadata": "{}"},
    )
    events = db["events"]
    events.create_index(["id"], unique=True, index_name="events_id")
    events.create_index(["session_id", "timestamp"], index_name="events_session_time")
    events.create_index(["category", "timestamp"], index_name="events_category_time")
    events.create_index(["event_type", "timestamp"], index_name="events_type_time")
    events.create_index(["timestamp"], index_name="events_time")
    # Full-text search is filled in chunks by INSERT ... SELECT when the writer is idle or before a text query
    # (about ten times cheaper than a per-row trigger, and off the ingest path); fts_state.indexed_seq says how
    # far it got. Only rows that carry text are indexed.
    db.execute(
        "CREATE VIRTUAL TABLE events_fts USING fts5(prompt, stream_data, content='events', content_rowid='seq', "
        "detail=none)"
    )
    db["fts_state"].create({"id": int, "indexed_seq": int}, pk="id", not_null={"indexed_seq"})
    db["fts_state"].insert({"id": 1, "indexed_seq": 0})
    db.execute(
        "CREATE TRIGGER events_fts_ad AFTER DELETE ON events "
        "WHEN (old.prompt IS NOT NULL OR old.stream_data IS NOT NULL) "
        "AND old.seq <= (SELECT indexed_seq FROM fts_state WHERE id = 1) BEGIN "
        "INSERT INTO events_fts (events_fts, rowid, prompt, stream_data) "
        "VALUES ('delete', old.seq, old.prompt, old.stream_data); END"
    )
    db["sessions"].create(
        {
            "id": str, "agent": str, "mode": str, "prompt": str, "status": str, "parent_id": str,
            "started_at": int, "ended_at": int, "first_event_at": int, "last_event_at": int,
            "first_stream_at": int, "event_count": int, "stream_count": int, "error_count": int,
            "metadata": str, "input_tokens": int, "output_tokens": int, "cache_read_tokens": int,
            "cache_creation_tokens": int, "reasoning_tokens": int, "last_error": str, "has_start": int,
        },
        pk="id",
        not_null={"status"},
    )
    sessions = db["sessions"]
    sessions.create_index(["started_at", "id"], index_name="sessions_started")
    sessions.create_index(["status", "started_at", "id"], index_name="sessions_status_started")
    sessions.create_index(["agent", "started_at", "id"], index_name="sessions_agent_started")
    sessions.create_index(["parent_id", "started_at"], index_name="sessions_parent")


@migrations()
def m002_session_labels(db: Database) -> None:
    """What a session is and whose: kind, model, conversation and user, as columns with indexes for filters.

    Filled for existing sessions from the metadata keys the summaries already held.
    """
    sessions = db["sessions"]
    for column in ("kind", "model", "conversation_id", "user_id"):
        sessions.add_column(column, str)
        db.execute(f"UPDATE sessions SET {column} = json_extract(metadata, '$.{column}') "
                   f"WHERE json_valid(metadata) AND json_type(metadata, '$.{column}') IN ('text', 'integer')")
    sessions.create_index(["conversation_id", "started_at"], index_name="sessions_conversation")
    sessions.create_index(["user_id", "started_at"], index_name="sessions_user")
    sessions.create_index(["kind", "started_at"], index_name="sessions_kind")


def apply(conn: sqlite3.Connection) -> int:
    """Bring the schema up to date; return how many migrations ran.

    Whether any migration is pending is read first, without a write lock: an up-to-date database opens
    even while another process holds a long write transaction (a backup, the ``sqlite3`` shell).
    """
    db = Database(conn, execute_plugins=False)
    if "_sqlite_migrations" in db.table_names() and not migrations.pending(db):
        return 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        pending = migrations.pending(db)
        if pending:
            migrations.apply(db)
            if not conn.execute("PRAGMA application_id").fetchone()[0]:
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return len(pending)


def applied(conn: sqlite3.Connection) -> list[str]:
    """Names of the migrations already applied to this database."""
    return [m.name for m in migrations.applied(Database(conn, execute_plugins=False))]
