"""What the SQLite plugin's ``PRAGMA quick_check`` on open costs, on a database of a given size.

    uv run python -m benchmarks.integrity            # a 1 GB database
    uv run python -m benchmarks.integrity --mb 100

The database is filled with the benchmark workload through the plugin's own
schema (raw ``executemany``, so building it is quick), then opened the way the
plugin opens it: ``quick_check`` first with the file just written (warm page
cache), then after ``posix_fadvise(DONTNEED)`` asks the kernel to drop its
cached pages (cold, as after a reboot; best effort).  The comparison is a
plain sequential read of the same file.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from vibekit_telemetry import now_ms

from .workload import events


def build(path: Path, target_bytes: int) -> int:
    """Fill a telemetry database until it holds ``target_bytes``; return how many events it holds."""
    from vibekit_telemetry_sqlite import SQLiteStorage, event_row
    from vibekit_telemetry_sqlite.schema import EVENT_COLUMNS

    SQLiteStorage.open(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("PRAGMA synchronous=off")
    sql = f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
    total = 0
    chunk = 50_000
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    while conn.execute("PRAGMA page_count").fetchone()[0] * page_size < target_bytes:
        rows = [event_row(e) for e in events(chunk, span_ms=24 * 3_600_000, end_ms=now_ms(), seed=total)]
        conn.execute("BEGIN")
        conn.executemany(sql, rows)
        conn.execute("COMMIT")
        total += chunk
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return total


def _drop_cache(path: Path) -> bool:
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def _quick_check(path: Path) -> float:
    conn = sqlite3.connect(path)
    start = time.perf_counter()
    result = conn.execute("PRAGMA quick_check(5)").fetchall()
    elapsed = time.perf_counter() - start
    conn.close()
    if result != [("ok",)]:
        raise RuntimeError(f"quick_check on a fresh database answered {result}")
    return elapsed


def _read(path: Path) -> float:
    start = time.perf_counter()
    with path.open("rb") as fh:
        while fh.read(8 * 2**20):
            pass
    return time.perf_counter() - start


def run(megabytes: int = 1024, workdir: Path | None = None) -> dict[str, Any]:
    """Build the database and time quick_check, warm and cold, against a sequential read."""
    with tempfile.TemporaryDirectory(prefix="vibekit-integrity-", dir=workdir) as tmp:
        path = Path(tmp) / "big.db"
        count = build(path, megabytes * 2**20)
        size = path.stat().st_size
        warm = min(_quick_check(path) for _ in range(3))
        warm_read = min(_read(path) for _ in range(3))
        cold = cold_read = None
        if _drop_cache(path):
            cold = _quick_check(path)
            _drop_cache(path)
            cold_read = _read(path)
        return {"bytes": size, "events": count, "quick_check_warm_s": warm, "read_warm_s": warm_read,
                "quick_check_cold_s": cold, "read_cold_s": cold_read}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.integrity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=1024, help="database size in MiB (default 1024)")
    args = parser.parse_args()
    result = run(args.mb)
    gb = result["bytes"] / 2**30
    print(f"database: {result['bytes'] / 2**20:,.0f} MiB, {result['events']:,} events")
    print(f"quick_check, warm cache: {result['quick_check_warm_s']:.2f} s ({gb / result['quick_check_warm_s']:.2f} GiB/s); "
          f"sequential read {result['read_warm_s']:.2f} s; ratio {result['quick_check_warm_s'] / result['read_warm_s']:.1f}x")
    if result["quick_check_cold_s"] is not None:
        print(f"quick_check, cold cache: {result['quick_check_cold_s']:.2f} s; sequential read {result['read_cold_s']:.2f} s")


if __name__ == "__main__":
    main()
