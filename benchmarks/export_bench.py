"""Export speed and memory: JSONL, CSV and Parquet from a SQLite database, against the raw limit.

    uv run python -m benchmarks.export_bench            # builds a 1,000,000-event database first
    uv run python -m benchmarks.export_bench --events 200000

Each export runs in its own process so its peak memory is its own: peak RSS (which counts the pages of
the database file SQLite maps into memory) and the peak of anonymous memory (the process's own
allocations, sampled every 50 ms), which is what a streaming export keeps bounded. The raw limit
is plain ``sqlite3``: every row of the same table, oldest first, dumped as JSON
lines with orjson.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

#: what both measured scripts start with: a sampler of anonymous memory and the process's own peak RSS
_PRELUDE = """import json, sys, time
import threading
peak_anon = [0]
def _sample():
    while True:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                peak_anon[0] = max(peak_anon[0], int(line.split()[1]))
        time.sleep(0.05)
threading.Thread(target=_sample, daemon=True).start()
def peak_rss():  # VmHWM belongs to this process image (ru_maxrss would carry the parent's peak across fork)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""

_EXPORT = _PRELUDE + """

from vibekit_telemetry import TelemetryService
db, out, fmt = sys.argv[1], sys.argv[2], sys.argv[3]
service = TelemetryService(storage=[{"type": "sqlite", "options": {"path": db}}], data_dir=sys.argv[4])
started = time.perf_counter()
count = service.export(fmt, output=out)
seconds = time.perf_counter() - started
service.shutdown()
print(json.dumps({"count": count, "seconds": seconds, "peak_rss_mb": peak_rss(),
                  "peak_anon_mb": peak_anon[0] / 1024}))
"""

_RAW = _PRELUDE + """
import sqlite3

import orjson
db, out = sys.argv[1], sys.argv[2]
started = time.perf_counter()
conn = sqlite3.connect(db)
cursor = conn.execute("SELECT * FROM events ORDER BY timestamp, id")
names = [d[0] for d in cursor.description]
count = 0
dumps = orjson.dumps
with open(out, "wb") as fh:
    while rows := cursor.fetchmany(5000):
        fh.write(b"".join(dumps(dict(zip(names, row))) + b"\\n" for row in rows))
        count += len(rows)
seconds = time.perf_counter() - started
print(json.dumps({"count": count, "seconds": seconds, "peak_rss_mb": peak_rss(),
                  "peak_anon_mb": peak_anon[0] / 1024}))
"""


def _run(script: str, *args: str) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"export benchmark failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(db: Path, workdir: Path) -> dict[str, Any]:
    """Export ``db`` to each format (and the raw dump) once; seconds, counts and peak RSS."""
    results: dict[str, Any] = {"raw_orjson": _run(_RAW, str(db), str(workdir / "raw.jsonl"))}
    (workdir / "raw.jsonl").unlink()
    for fmt in ("jsonl", "csv", "parquet"):
        out = workdir / f"export.{fmt}"
        results[fmt] = _run(_EXPORT, str(db), str(out), fmt, str(workdir / "svc"))
        results[fmt]["bytes"] = out.stat().st_size
        out.unlink()
    return results


def main(argv: list[str] | None = None) -> int:
    """Build a database of ``--events`` events, export it, print the figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.export_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    from vibekit_telemetry import now_ms

    from .__main__ import ingest_service
    from .workload import event_dicts

    with tempfile.TemporaryDirectory(prefix="vibekit-export-bench-") as tmp:
        workdir = Path(tmp)
        db = workdir / "events.db"
        ingest_service(list(event_dicts(args.events, span_ms=24 * 3_600_000, end_ms=now_ms())), db, 100)
        results = run(db, workdir)
    print(json.dumps(results, indent=2))
    raw = results["raw_orjson"]["seconds"]
    for fmt in ("jsonl", "csv", "parquet"):
        r = results[fmt]
        print(f"{fmt}: {r['count']:,} events in {r['seconds']:.2f} s ({r['seconds'] / raw:.2f}x the raw dump), "
              f"peak RSS {r['peak_rss_mb']:.0f} MB (anonymous {r['peak_anon_mb']:.0f} MB), {r['bytes'] / 2**20:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
