"""Full-text search over a large events table: the newest matches of a word, the new plan against the old.

    uv run python -m benchmarks.search_bench --events 1000000
    uv run python -m benchmarks.search_bench --events 3000000
    uv run python -m benchmarks.search_bench --events 1000000 --events 3000000   # one build for both sizes

The database holds LLM-stream-shaped events (``benchmarks.workload``: sessions of a prompt, streamed chunks
and an end) in time order, inserted with plain ``sqlite3`` into the schema the plugin's migrations create, then
indexed for text by the plugin itself.  One file is built for every size: it is measured at the smallest size,
then grows (with later events of the same workload) to the next.  Each query is
``SQLiteStorage.query(QueryFilter(text=word, limit=100))``, rows decoded into events, with the new plan (newest
matches read from the text index in row order, then proved to be the newest in time) and with the old one (every
match looked up, then the events walked in time order); both must return the same events.  The common word is in
every streamed chunk, an uncommon one in one event of 100, the rare one in one event of 1,000 (few enough matches
for the plan that sorts them, in both).  Figures are in ms, the median of several runs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

COMMON_WORD = "answer"
#: a word in one event of 100 (streamed text): many matches, but the newest 100 are spread over ~15,000 events
UNCOMMON_WORD, UNCOMMON_EVERY = "kestrel", 100
#: a word in one event of 1,000: few enough matches to be looked up and sorted, in either plan
RARE_WORD, RARE_EVERY = "zanzibar", 1_000
SPAN_MS = 30 * 86_400_000
LIMIT = 100


def rows(count: int, *, end_ms: int) -> Iterator[tuple[Any, ...]]:
    """``count`` rows of the ``events`` table, oldest first, in the plugin's column order."""
    from vibekit_telemetry import new_id

    from .workload import event_dicts

    dumps = orjson.dumps
    for n, e in enumerate(event_dicts(count, span_ms=SPAN_MS, end_ms=end_ms)):
        stream = e.get("stream_data")
        if stream is not None and n % UNCOMMON_EVERY == 0:
            stream = f"{stream} {UNCOMMON_WORD}"
        if stream is not None and n % RARE_EVERY == 0:
            stream = f"{stream} {RARE_WORD}"
        yield (new_id(e["timestamp"]), e["session_id"], e["event_type"], e["category"], None, None, None,
               e["timestamp"], e.get("agent"), e.get("mode"), e.get("prompt"), None, stream, e.get("status"),
               None, None, None, dumps(e["metadata"]).decode(), None)


def append(path: Path, source: Iterable[tuple[Any, ...]], count: int) -> None:
    """Insert the next ``count`` rows of ``source`` with plain executemany, then bring the text index up to date."""
    from vibekit_telemetry_sqlite import SQLiteStorage
    from vibekit_telemetry_sqlite.schema import EVENT_COLUMNS

    SQLiteStorage.open(path, integrity_check="off").close()  # the plugin's schema, indexes and triggers
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=off")
    conn.execute("PRAGMA cache_size=-262144")
    sql = f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
    source = iter(source)
    left = count
    while left:
        batch = list(itertools.islice(source, min(left, 100_000)))
        if not batch:
            break
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, batch)
        conn.execute("COMMIT")
        left -= len(batch)
    conn.close()
    store = SQLiteStorage.open(path, integrity_check="off", synchronous="off", cache_size_kb=262_144)
    try:
        store.catch_up_text_index()
    finally:
        store.close()


def _ms(fn: Any, repeat: int) -> dict[str, float]:
    timings = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        timings.append((time.perf_counter() - start) * 1000)
    return {"median": statistics.median(timings), "min": min(timings), "max": max(timings), "runs": repeat}


def measure(path: Path, repeat: int = 15) -> dict[str, Any]:
    """Old and new plan (ms) of the 100 newest events with each word."""
    from vibekit_telemetry import QueryFilter
    from vibekit_telemetry_sqlite import SQLiteStorage

    store = SQLiteStorage.open(path, integrity_check="off")
    try:
        out: dict[str, Any] = {}
        for name, word in (("common_word", COMMON_WORD), ("uncommon_word", UNCOMMON_WORD), ("rare_word", RARE_WORD)):
            flt = QueryFilter(text=word, limit=LIMIT)
            with store._reader() as conn:
                matches = conn.execute("SELECT count(*) FROM events_fts WHERE events_fts MATCH ?", [word]).fetchone()[0]
            store._text_fast_path = False
            old = [e.id for e in store.query(flt)]
            old_ms = _ms(lambda: store.query(flt), repeat)  # noqa: B023 - called before the loop moves on
            store._text_fast_path = True
            new = [e.id for e in store.query(flt)]
            new_ms = _ms(lambda: store.query(flt), repeat)  # noqa: B023
            if new != old:
                raise RuntimeError(f"the two plans disagree on {word!r}")
            out[name] = {"word": word, "matches": matches, "old_ms": old_ms, "new_ms": new_ms,
                         "speedup": old_ms["median"] / new_ms["median"]}
        return out
    finally:
        store.close()


def run(events: int | Sequence[int], repeat: int = 15, workdir: Path | None = None) -> dict[str, Any]:
    """Build one database growing through each size of ``events`` and time the text queries at each size.

    Returns ``{"build_s": ..., "sizes": {"1000000": {"common_word": {...}, "uncommon_word": ..., "rare_word": ...}}}``
    with each query's ``old_ms``/``new_ms`` (median, min, max of ``repeat`` runs) and the number of events the word
    matches.
    """
    from vibekit_telemetry import now_ms

    sizes = sorted({events} if isinstance(events, int) else set(events))
    with tempfile.TemporaryDirectory(prefix="vibekit-search-bench-", dir=workdir) as tmp:
        path = Path(tmp) / "events.db"
        source = rows(sizes[-1], end_ms=now_ms())
        result: dict[str, Any] = {"build_s": 0.0, "sizes": {}}
        stored = 0
        for size in sizes:
            started = time.perf_counter()
            append(path, source, size - stored)
            result["build_s"] += time.perf_counter() - started
            stored = size
            result["sizes"][str(size)] = measure(path, repeat)
    return result


def main(argv: list[str] | None = None) -> int:
    """Build, measure, print the figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, action="append", help="database size (repeatable; default 1,000,000)")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args(argv)
    results = run(args.events or [1_000_000], args.repeat)
    print(json.dumps(results, indent=2))
    print(f"built in {results['build_s']:.0f} s")
    for size, figures in results["sizes"].items():
        for name, r in figures.items():
            print(f"{int(size):,} events, {name} {r['word']!r} ({r['matches']:,} matches): "
                  f"old {r['old_ms']['median']:.2f} ms, new {r['new_ms']['median']:.2f} ms ({r['speedup']:.0f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
