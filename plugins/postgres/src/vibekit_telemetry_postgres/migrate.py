"""Moving a local SQLite store into PostgreSQL, resumably (``telemetry migrate``; the command is in ``cli.py``).

The events are read from the SQLite file in ``seq`` order, a batch at a time, and written with
:meth:`PostgresStorage.store_rows`, which copies them in and adds them to their sessions.  ``seq`` order is
the order the SQLite store received (and folded) them: a session's "last one wins" fields (metadata keys,
the last error, the prompt of several starts) depend on that order, so reading by time instead would give
other sessions wherever events arrived out of time order (late events, imports, client clocks).  Events of
the same millisecond keep their relative order in PostgreSQL's ``seq`` too (the target writes each batch over
one connection, ``writers = 1``), so both stores list them alike.

After each batch the position reached (the last event's ``seq``, id and timestamp) is recorded in
``vibekit_migrate_progress`` in the target schema, keyed by the source file's absolute path.  A run killed
between the two steps replays its last batch on the next run, which changes nothing: ``store_rows`` skips
ids already stored and adds only the events it inserts to the sessions, so the sessions stay exact.  The
progress is only trusted while the source still holds the event it ends on (same ``seq``, id and time):
otherwise (another file at that path, its newest events deleted) the next run reads it from the start.

Afterwards every session of the source is compared with the target's: where they differ (a source whose
retention or deletes removed events its sessions still count), the target's row is set to the source's,
since a move carries the sessions as they were.  Writers already adding to the same sessions in the target
would lose those additions: migrate before switching them over.

The SQLite file is validated by the sqlite plugin itself (loaded through its entry point, as the kernel loads
any plugin), which refuses files that are not telemetry databases; the events are then read through a
read-only connection of this module's own, whose columns are the kernel's ``ROW_FIELDS`` plus ``seq``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import orjson

from vibekit_telemetry import Session, SessionFilter, StorageError
from vibekit_telemetry.model import ROW_FIELDS, session_to_row

if TYPE_CHECKING:
    from . import PostgresStorage

PROGRESS_TABLE = "vibekit_migrate_progress"
_CREATE_PROGRESS = f"""
CREATE TABLE IF NOT EXISTS {PROGRESS_TABLE} (
    source text PRIMARY KEY,
    last_timestamp bigint,
    last_seq bigint,
    last_id text,
    events bigint NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
)"""
_SAVE_PROGRESS = f"""
INSERT INTO {PROGRESS_TABLE} AS p (source, last_timestamp, last_seq, last_id, events)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (source) DO UPDATE SET last_timestamp = excluded.last_timestamp, last_seq = excluded.last_seq,
    last_id = excluded.last_id, events = excluded.events, updated_at = now(), finished_at = NULL
"""
_SELECT_ROWS = f"SELECT seq, {', '.join(ROW_FIELDS)} FROM events"
#: sessions compared per round trip
_SESSION_PAGE = 1000


@attrs.frozen
class Mark:
    """How far a source was migrated: its last event moved, how many were moved, and whether a run finished."""

    timestamp: int | None = None
    seq: int | None = None
    event_id: str | None = None
    events: int = 0
    finished: bool = False


def open_source(path: Path) -> Any:
    """The sqlite plugin's store on ``path``; :class:`StorageError` if it is missing or not a telemetry file."""
    from vibekit_telemetry.plugins import resolve_entry_points

    if not path.is_file():
        raise StorageError(f"--from {path}: no such file (expected a SQLite telemetry database such as "
                           ".vibekit/telemetry.db)")
    sqlite_plugin = resolve_entry_points(["sqlite"])["sqlite"]
    return sqlite_plugin.open(path)


class Source:
    """The events of a SQLite telemetry database, read through a read-only connection."""

    def __init__(self, path: Path) -> None:
        self.path = path.resolve()
        self._conn = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True)

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def _after(self, mark: Mark) -> tuple[str, list[Any]]:
        if mark.seq is None:
            return "", []
        return " WHERE seq > ?", [mark.seq]

    def count_after(self, mark: Mark) -> int:
        """How many events come after ``mark`` (all of them from an empty mark)."""
        where, params = self._after(mark)
        return self._conn.execute(f"SELECT count(*) FROM events{where}", params).fetchone()[0]

    def holds(self, mark: Mark) -> bool:
        """Whether the event ``mark`` ends on is still where it was: otherwise the file is not the one migrated."""
        return self._conn.execute("SELECT 1 FROM events WHERE seq = ? AND id = ? AND timestamp = ?",
                                  [mark.seq, mark.event_id, mark.timestamp]).fetchone() is not None

    def batches(self, mark: Mark, size: int) -> Iterator[tuple[list[tuple[Any, ...]], Mark]]:
        """Kernel rows (``ROW_FIELDS`` order) after ``mark`` in ``seq`` order, ``size`` at a time, each batch
        with the mark it ends on."""
        while True:
            where, params = self._after(mark)
            found = self._conn.execute(f"{_SELECT_ROWS}{where} ORDER BY seq LIMIT ?",
                                       [*params, size]).fetchall()
            if not found:
                return
            rows = [_kernel_row(r[1:]) for r in found]
            last = found[-1]
            mark = Mark(timestamp=last[8], seq=last[0], event_id=last[1], events=mark.events + len(rows))
            yield rows, mark


def _kernel_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A SQLite ``events`` row as the kernel has it: metadata a dict, truncated a tuple of field names."""
    metadata, truncated = row[17], row[18]
    return (*row[:17], orjson.loads(metadata) if metadata and metadata != "{}" else {},
            tuple(orjson.loads(truncated)) if truncated and truncated != "[]" else ())


class Progress:
    """The ``vibekit_migrate_progress`` row of one source, on a connection of its own that also holds an
    advisory lock on the source for the run (so two runs of one migration cannot interleave)."""

    def __init__(self, target: PostgresStorage, source: str) -> None:
        import psycopg

        self.source = source
        self._conn = psycopg.connect(target.dsn, autocommit=True, **target._connect_kwargs())
        try:
            self._conn.execute(_CREATE_PROGRESS)
            self.locked = self._conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                                             [f"{PROGRESS_TABLE}:{source}"]).fetchone()[0]
        except BaseException:
            self._conn.close()
            raise

    def load(self) -> Mark:
        """Where the last run of this source got to (an empty mark if none ran)."""
        row = self._conn.execute(f"SELECT last_timestamp, last_seq, last_id, events, finished_at IS NOT NULL "
                                 f"FROM {PROGRESS_TABLE} WHERE source = %s", [self.source]).fetchone()
        return Mark(*row) if row else Mark()

    def save(self, mark: Mark) -> None:
        """Record that the events up to ``mark`` are stored."""
        self._conn.execute(_SAVE_PROGRESS, [self.source, mark.timestamp, mark.seq, mark.event_id, mark.events])

    def finish(self) -> None:
        """Record that a run went through to the end of the source."""
        self._conn.execute(f"UPDATE {PROGRESS_TABLE} SET finished_at = now(), updated_at = now() WHERE source = %s",
                           [self.source])

    def forget(self) -> None:
        """Drop the recorded progress (``--restart``)."""
        self._conn.execute(f"DELETE FROM {PROGRESS_TABLE} WHERE source = %s", [self.source])

    def close(self) -> None:
        """Close the connection, releasing the lock."""
        self._conn.close()


def differing_sessions(source: Any, target: PostgresStorage) -> tuple[int, list[Session]]:
    """Every session of the source against the target's row of the same id: ``(sessions compared, the
    source's sessions the target does not hold as they are)``."""
    from . import _SELECT_SESSION, _session_from_sql

    compared = 0
    differ: list[Session] = []
    while page := source.get_sessions(SessionFilter(limit=_SESSION_PAGE, offset=compared)):
        with target._connection() as conn:
            theirs = {s.id: s for s in map(_session_from_sql, conn.execute(
                f"{_SELECT_SESSION} WHERE id = ANY(%s)", [[s.id for s in page]]))}
        differ.extend(s for s in page if theirs.get(s.id) != s)
        compared += len(page)
    return compared, differ


def take_sessions(target: PostgresStorage, sessions: list[Session]) -> None:
    """Set the target's rows of these sessions to the source's (locked in id order, one transaction).

    What a move needs where the events alone give other sessions: a source whose retention (or a delete)
    removed events that its sessions still count, as its ``clean`` keeps a session that started before the
    cut-off but goes on after it.
    """
    from . import _REPLACE_SESSION, _sql_session_row

    ordered = sorted(sessions, key=lambda s: s.id)
    with target._connection() as conn, conn.transaction():
        conn.execute("SELECT 1 FROM sessions WHERE id = ANY(%s) ORDER BY id FOR UPDATE", [[s.id for s in ordered]])
        with conn.cursor() as cur:
            cur.executemany(_REPLACE_SESSION, [_sql_session_row(session_to_row(s)) for s in ordered])

