"""A page of a text query read from the full-text index in row order, proved to be the page in time order.

The contract orders events by ``(timestamp, seq)``.  FTS5 hands out the rows
that match (their ``rowid`` is ``events.seq``) in rowid order at no cost and
stops at a limit, whereas ordering the matches by time means looking up and
sorting every one of them: for a common word, most of the table.  Events
stored in time order have rowid order equal to time order, but nothing
promises that: batches of several processes interleave, imports and
back-filled events arrive late with old timestamps.  So :func:`text_page`
only uses rowid order as a guess that it checks, and it answers ``None``
(use the plan that sorts) whenever checking would cost more than a few
milliseconds.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Literal

from vibekit_telemetry import QueryFilter, decode_cursor

#: Pages deeper than this (offset + limit) are left to the plan that sorts every match.
MAX_PAGE = 2_000

_TOP = 2**63 - 1
_BOTTOM = -(2**63)


def _walk_budget(want: int) -> int:
    """Matching rows read from the index before giving up (each costs an event lookup, about 1 µs)."""
    return 4 * want + 2_000


def _window_budget(want: int) -> int:
    """Entries of the time index read by the check (index only, about 0.1 µs each)."""
    return 20 * want + 20_000


def _suspect_budget(want: int) -> int:
    """Events outside the walked rows that the check may have to test against the text (and look up if it matches)."""
    return 2 * want + 5_000


def _span_budget(want: int) -> int:
    """Rowids the ranges around the suspects may span (the index lists its matches in them, about 0.1 µs each)."""
    return 20 * want + 50_000


#: at most this many rowid ranges are read to test the suspects, split where they are more than _GAP rowids apart
_RANGES, _GAP = 16, 2_000


def text_page(conn: sqlite3.Connection, f: QueryFilter, match: str, where: list[str],
              params: list[Any]) -> list[int] | None:
    """The ``seq`` of the first ``offset + limit`` events of a text query in its order, or ``None`` to sort instead.

    ``match`` is the FTS5 query; ``where``/``params`` are the query's other
    conditions on ``events`` (the cursor aside: it is read from ``f`` here).
    With ``K = offset + limit`` and newest first (oldest first mirrors it):

    1. Start at ``X``, where the newest events at or before the query's upper
       time bound (``until`` or the cursor) are stored (see :func:`_start`),
       or at the top of the table.
    2. Walk the matching rowids down from ``X`` in growing chunks, keeping
       those whose events pass the other conditions, until ``K`` are kept, the
       index runs out, or the walk's budget is spent (``None``).  The walked
       rowids are an interval ``W``, and every matching event in ``W`` is kept
       (the set ``C``).
    3. Let ``T`` be the K-th of ``C`` in the query's order.  A matching event
       outside ``C`` lies outside ``W`` (or it would be in ``C``); for it to
       belong to the page it must sort ahead of ``T``, so its timestamp is at
       least ``T``'s and at most the upper bound.  The ``events_time`` index
       lists the events of that time window (with their ``seq``; the table is
       not read): those outside ``W`` and ahead of ``T`` are the suspects.
       More entries than the window's budget, or more suspects than theirs,
       is ``None``.
    4. Suspects that match the text (read from the index as a few rowid
       ranges, see :func:`_matching`) and pass the conditions join ``C``; the
       answer is the first ``K`` of the union.

    Why it is right: a matching event not in ``C`` nor a suspect is outside
    ``W`` and not ahead of ``T``, so it is behind ``T`` (``seq`` breaks ties),
    and ``K`` events of ``C`` are at or ahead of ``T``; it is not in the page.
    When ``C`` has fewer than ``K`` events there is no ``T`` and the window is
    the query's whole time range (``None`` if it has no bounds); when the walk
    started at the end of the table and ran out, ``C`` is every match.  For
    events stored in time order the window holds about the page's own events
    and there are no suspects; out-of-order events cost a few range reads, or
    the sort.
    Every read is in one read transaction, so the check and the walk see the
    same rows.
    """
    if f.limit is None:
        return None  # every match is wanted (``count()``, a full listing): sorting them is the plan
    want = f.offset + f.limit
    if want == 0:
        return []
    if want > MAX_PAGE:
        return None
    began = not conn.in_transaction
    if began:
        conn.execute("BEGIN")
    try:
        return _page(conn, f, match, list(where), list(params), want)
    finally:
        if began:
            conn.execute("COMMIT")


def _page(conn: sqlite3.Connection, f: QueryFilter, match: str, where: list[str], params: list[Any],
          want: int) -> list[int] | None:
    desc = f.order == "desc"
    op = "<" if desc else ">"
    lo, hi = f.since, f.until
    cursor_sql, cursor_params = "", []
    if f.cursor:
        ts, event_id = decode_cursor(f.cursor)
        row = conn.execute("SELECT seq FROM events WHERE id = ?", [event_id]).fetchone()
        if row is not None:
            cursor_sql, cursor_params = f"(timestamp {op} ? OR (timestamp = ? AND seq {op} ?))", [ts, ts, row[0]]
        else:
            cursor_sql, cursor_params = f"timestamp {op} ?", [ts]
        where.append(cursor_sql)
        params.extend(cursor_params)
        if desc:
            hi = ts if hi is None else min(hi, ts)
        else:
            lo = ts if lo is None else max(lo, ts)

    start = _start(conn, desc, hi if desc else lo)
    if start == "empty":
        return []  # no event at all in the time range

    keep = f"CASE WHEN {' AND '.join(where)} THEN 1 ELSE 0 END" if where else "1"
    walk_sql = (f"SELECT m.r, events.timestamp, {keep} FROM (SELECT rowid AS r FROM events_fts "
                f"WHERE events_fts MATCH ? AND rowid {'<=' if desc else '>='} ? "
                f"ORDER BY rowid {'DESC' if desc else 'ASC'} LIMIT ?) AS m LEFT JOIN events ON events.seq = m.r")
    edge = start if start is not None else (_TOP if desc else _BOTTOM)
    found: dict[int, int] = {}
    # each chunk is one MATCH, whose start (a term lookup per segment) costs as much as ~100 event lookups
    walked, chunk, budget = 0, max(want, 64), _walk_budget(want)
    exhausted = False
    while True:
        rows = conn.execute(walk_sql, [*params, match, edge, chunk]).fetchall()
        walked += len(rows)
        for seq, ts, ok in rows:
            if ok and ts is not None:
                found[seq] = ts
        if len(rows) < chunk:
            exhausted = True
            break
        edge = min(r[0] for r in rows) - 1 if desc else max(r[0] for r in rows) + 1
        if len(found) >= want:
            break
        if walked >= budget:
            return None
        chunk = min(chunk * 4, budget - walked)

    def order(seqs: dict[int, int]) -> list[int]:
        if desc:
            return sorted(seqs, key=lambda s: (seqs[s], s), reverse=True)[:want]
        return sorted(seqs, key=lambda s: (seqs[s], s))[:want]

    page = order(found)
    outside: list[str] = []
    outside_params: list[Any] = []
    if not exhausted:  # matching rows beyond the walk's end were not read
        outside.append(f"seq {'<=' if desc else '>='} ?")
        outside_params.append(edge)
    if start is not None:  # nor were those beyond its start
        outside.append(f"seq {'>' if desc else '<'} ?")
        outside_params.append(start)
    if not outside:
        return page  # the walk read every match

    suspect = [f"({' OR '.join(outside)})"]
    suspect_params = list(outside_params)
    if len(page) == want:
        threshold = page[-1]
        t_ts = found[threshold]
        suspect.append(f"(timestamp {'>' if desc else '<'} ? OR (timestamp = ? AND seq {'>' if desc else '<'} ?))")
        suspect_params.extend([t_ts, t_ts, threshold])
        if desc:
            lo = t_ts if lo is None else max(lo, t_ts)
        else:
            hi = t_ts if hi is None else min(hi, t_ts)
    if cursor_sql:
        suspect.append(cursor_sql)
        suspect_params.extend(cursor_params)
    window, window_params = [], []
    if lo is not None:
        window.append("timestamp >= ?")
        window_params.append(lo)
    if hi is not None:
        window.append("timestamp <= ?")
        window_params.append(hi)
    if not window:
        return None  # no threshold and no time range: the window would be the whole table
    cap = _window_budget(want)
    seen, listed = conn.execute(
        f"SELECT count(*), json_group_array(seq) FILTER (WHERE {' AND '.join(suspect)}) "
        f"FROM (SELECT seq, timestamp FROM events WHERE {' AND '.join(window)} LIMIT ?)",
        [*suspect_params, *window_params, cap + 1]).fetchone()
    if seen > cap:
        return None
    suspects = json.loads(listed)
    if not suspects:
        return page
    if len(suspects) > _suspect_budget(want):
        return None
    matching = _matching(conn, match, sorted(suspects), _span_budget(want))
    if matching is None:
        return None
    if matching:
        conditions = " AND ".join(["seq IN (SELECT value FROM json_each(?))", *where])
        # NOT INDEXED: look them up by rowid, never walk the index of another condition (category...) instead
        for seq, ts in conn.execute(f"SELECT seq, timestamp FROM events NOT INDEXED WHERE {conditions}",
                                    [json.dumps(matching), *params]):
            found[seq] = ts
    return order(found)


def _start(conn: sqlite3.Connection, desc: bool, bound: int | None) -> int | None | Literal["empty"]:
    """Where to start the walk: the rowid around which the first events in time order (from ``bound`` on) are stored.

    The first events by time are read from the ``events_time`` index (16 of
    them, index only), and the walk starts at the last of their rowids in the
    walk's direction that is within 64 of their median: one back-filled event
    stored long after its time must not send the walk among the other late
    rows, whose timestamps are scattered.  ``None`` when no event is stored
    beyond that rowid (the walk starts at the end of the table: when it runs
    out, it has read every match); ``"empty"`` when no event is in the range.
    """
    sign, way = ("<=", "DESC") if desc else (">=", "ASC")
    condition = f"WHERE timestamp {sign} ? " if bound is not None else ""
    seqs = sorted(r[0] for r in conn.execute(
        f"SELECT seq FROM events {condition}ORDER BY timestamp {way}, seq {way} LIMIT 16",
        [] if bound is None else [bound]))
    if not seqs:
        return "empty"
    median = seqs[len(seqs) // 2]
    start = max(s for s in seqs if s <= median + 64) if desc else min(s for s in seqs if s >= median - 64)
    beyond = conn.execute(f"SELECT 1 FROM events WHERE seq {'>' if desc else '<'} ? LIMIT 1", [start]).fetchone()
    return start if beyond else None


def _matching(conn: sqlite3.Connection, match: str, seqs: list[int], budget: int) -> list[int] | None:
    """Which of ``seqs`` (sorted) the FTS query ``match`` matches; ``None`` if their ranges span over ``budget``.

    A MATCH costs about 0.1 ms to start (a term lookup in every segment of the
    index) and little per row, whether it is asked for one rowid or for a
    range: so the suspects are read as a few ranges of rowids, split at their
    widest gaps, and ``+rowid IN`` (not a constraint FTS5 sees, which would
    start one lookup per value) keeps the suspects among the range's matches.
    """
    gaps = sorted((i for i in range(1, len(seqs)) if seqs[i] - seqs[i - 1] > _GAP),
                  key=lambda i: seqs[i] - seqs[i - 1], reverse=True)[: _RANGES - 1]
    bounds = [0, *sorted(gaps), len(seqs)]
    parts = [seqs[a:b] for a, b in zip(bounds, bounds[1:])]
    if sum(part[-1] - part[0] + 1 for part in parts) > budget:
        return None
    found: list[int] = []
    for part in parts:
        found.extend(r for (r,) in conn.execute(
            "SELECT rowid FROM events_fts WHERE events_fts MATCH ? AND rowid >= ? AND rowid <= ? "
            "AND +rowid IN (SELECT value FROM json_each(?))", [match, part[0], part[-1], json.dumps(part)]))
    return found
