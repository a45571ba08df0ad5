"""Export rows straight from the ``events`` table (the ``scan_rows`` hook), without an event object per row.

The columns already hold what exporters write: text and numbers as events carry them, metadata and the
truncated field names as JSON text that orjson wrote (on every way in: ``store``, ``store_rows``, ``rewrite``),
so parsing and dumping it again gives it back unchanged.  Only the empty forms differ from the event path's,
and SQL maps them to ``NULL`` as ``_event_from_row`` maps them to ``{}`` and ``()``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .schema import EVENT_COLUMNS

if TYPE_CHECKING:
    from vibekit_telemetry import QueryFilter

    from . import SQLiteStorage

#: what ``_event_sql`` starts its statements with, swapped for the requested columns
_SELECT_EVENT = f"SELECT {', '.join(EVENT_COLUMNS)} FROM events"
#: rows per batch: large enough that the per-batch work vanishes, small enough to keep memory flat
BATCH = 5000
_EXPRESSIONS = {
    **{name: name for name in EVENT_COLUMNS},
    "metadata": "NULLIF(NULLIF(metadata, '{}'), '')",
    "truncated": "NULLIF(NULLIF(truncated, '[]'), '')",
}


def scan_rows(storage: SQLiteStorage, filter: QueryFilter,
              columns: tuple[str, ...]) -> Iterator[list[tuple[Any, ...]]] | None:
    """Batches of ``columns`` of every event matching ``filter``, oldest first; ``None`` where ``scan`` refuses too."""
    if filter.limit is not None or filter.offset or filter.cursor or filter.text:
        return None
    if not columns or any(name not in _EXPRESSIONS for name in columns):
        return None
    sql, params = storage._event_sql(filter)
    if not sql.startswith(_SELECT_EVENT):
        return None
    select = f"SELECT {', '.join(_EXPRESSIONS[name] for name in columns)} FROM events"
    return _batches(storage, select + sql[len(_SELECT_EVENT):], params)


def _batches(storage: SQLiteStorage, sql: str, params: list[Any]) -> Iterator[list[tuple[Any, ...]]]:
    conn = storage._connect(read_only=True)  # a long read must not hold the thread's shared reader
    try:
        cursor = conn.execute(sql, params)
        while rows := cursor.fetchmany(BATCH):
            yield rows
    except sqlite3.Error as exc:
        raise storage._explain(exc) from exc
    finally:
        conn.close()
