"""The WHERE clauses of the kernel's filters, for storage plugins on SQL databases.

``QueryFilter`` and ``SessionFilter`` mean the same on every store; the SQL that says so differs only in
the parameter mark (``?`` for sqlite3, ``%s`` for psycopg) and in how a substring is found.  Column names
here are fixed strings, never user text: every value goes in as a parameter.
"""

from __future__ import annotations

from typing import Any

#: ``QueryFilter`` fields compared for equality with the ``events`` column of the same name
EVENT_EQUAL_COLUMNS = ("category", "event_type", "session_id", "action", "label")
#: ``SessionFilter`` fields compared for equality with the ``sessions`` column of the same name
SESSION_EQUAL_COLUMNS = ("status", "agent", "mode", "parent_id", "kind", "model", "conversation_id", "user_id")


def equal_and_range(f: Any, columns: tuple[str, ...], time_column: str, where: list[str], params: list[Any],
                    mark: str = "?") -> None:
    """Add ``column = mark`` for each set filter field, and the ``since``/``until`` range on ``time_column``."""
    for column in columns:
        value = getattr(f, column)
        if value is not None:
            where.append(f"{column} = {mark}")
            params.append(value)
    if f.since is not None:
        where.append(f"{time_column} >= {mark}")
        params.append(f.since)
    if f.until is not None:
        where.append(f"{time_column} <= {mark}")
        params.append(f.until)


def session_where(f: Any, *, mark: str = "?", contains: str = "instr(lower(prompt), lower(?)) > 0"
                  ) -> tuple[list[str], list[Any]]:
    """The conditions (and parameters) of a ``SessionFilter`` over the ``sessions`` table.

    ``contains`` is the SQL of "the prompt holds the filter's text", case-insensitively, with one parameter
    (encrypted prompts never match)."""
    where: list[str] = []
    params: list[Any] = []
    equal_and_range(f, SESSION_EQUAL_COLUMNS, "started_at", where, params, mark)
    if f.root_only:
        where.append("parent_id IS NULL")
    if f.text:
        where.append(contains)
        params.append(f.text)
    return where, params
