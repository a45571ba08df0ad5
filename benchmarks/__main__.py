"""Run every benchmark and write docs/benchmarks.md and docs/benchmarks.json.

    uv run python -m benchmarks            # full run, a few minutes on 2 cores
    uv run python -m benchmarks --quick    # smaller sizes, under a minute

Each figure is the median of several runs, shown with its min and max; each
comparison is a ratio measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vibekit_telemetry import TelemetryService, hookimpl, now_ms

from .workload import event_dicts, events

ROOT = Path(__file__).resolve().parents[1]


def stats(values: list[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def single(value: float) -> dict[str, float]:
    """A figure measured once."""
    return {"median": value, "min": value, "max": value, "runs": 1}


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-quantile (0..1) of already sorted values, nearest rank."""
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def machine() -> dict[str, Any]:
    """What this ran on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import psutil

        memory = f"{psutil.virtual_memory().total / 2**30:.0f} GiB"
    except ImportError:
        memory = "unknown"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": memory,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _service(path: Path, **overrides: Any) -> TelemetryService:
    # a service over a big file waits for it to open (its integrity check takes about a second per GB) rather
    # than starting degraded: the reads measured next need the store open, and opening is measured elsewhere
    reliability = {"startup_timeout_ms": 300_000, **overrides.pop("reliability", {})}
    options = {"path": str(path), **({"writer": overrides.pop("writer")} if "writer" in overrides else {})}
    return TelemetryService(storage=[{"type": "sqlite", "options": options}], data_dir=str(path.parent),
                            reliability=reliability, **overrides)


def track_latency(n: int, workdir: Path, **overrides: Any) -> dict[str, float]:
    """p50/p99 of the caller's time in ``track()`` (µs), storage writing in the background."""
    payload = list(event_dicts(n, span_ms=3_600_000, end_ms=now_ms()))
    path = workdir / f"latency-{time.monotonic_ns()}.db"
    service = _service(path, max_queue_size=n + 10, **overrides)
    timings = []
    clock = time.perf_counter_ns
    track = service.track
    gc.collect()
    for item in payload:
        start = clock()
        track(item)
        timings.append(clock() - start)
    service.shutdown()
    timings.sort()
    return {"p50": percentile(timings, 0.5) / 1000, "p99": percentile(timings, 0.99) / 1000,
            "p999": percentile(timings, 0.999) / 1000}


def otel_span_latency(n: int) -> dict[str, float] | None:
    """p50/p99 (µs) of starting and ending a span with 6 attributes through BatchSpanProcessor."""
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    except ImportError:
        return None

    class DiscardExporter(SpanExporter):
        def export(self, spans):  # noqa: ARG002 - the peer's caller cost is what is measured
            return SpanExportResult.SUCCESS

    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    provider.add_span_processor(BatchSpanProcessor(DiscardExporter(), max_queue_size=n + 10))
    tracer = provider.get_tracer("bench")
    attributes = {"gen_ai.system": "anthropic", "gen_ai.request.model": "claude-sonnet-4-5", "gen_ai.operation.name": "chat",
                  "session.id": "s", "chunk": 3, "temperature": 0.2}
    timings = []
    clock = time.perf_counter_ns
    gc.collect()
    for _ in range(n):
        start = clock()
        span = tracer.start_span("stream", attributes=attributes)
        span.end()
        timings.append(clock() - start)
    provider.shutdown()
    timings.sort()
    return {"p50": percentile(timings, 0.5) / 1000, "p99": percentile(timings, 0.99) / 1000,
            "p999": percentile(timings, 0.999) / 1000}


class Gen2Counter:
    """Counts the garbage collector's full (generation 2) collections while it is active."""

    def __init__(self) -> None:
        self.count = 0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start" and info.get("generation") == 2:
            self.count += 1

    def __enter__(self) -> Gen2Counter:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: Any) -> None:
        gc.callbacks.remove(self._callback)


class _Noop:
    """A plugin with a before_track hook that changes nothing: the service then queues event objects."""

    @hookimpl
    def before_track(self, event: Any) -> Any:
        return event


def ingest_service(payload: list[dict], path: Path, batch_size: int, *, defaults: bool = False,
                   gen2: list[float] | None = None, **overrides: Any) -> float:
    """Events per second from the first ``track()`` until every event is committed.

    ``defaults``: the service's own ``max_queue_size`` (a burst beyond it spills to disk) instead of a queue
    that holds the whole burst.  ``gen2`` receives the full collections per million events of the run.
    """
    if not defaults:
        overrides.setdefault("max_queue_size", len(payload) + 10)
    service = _service(path, stream_batch_size=batch_size, max_batch_size=5000, **overrides)
    track = service.track
    gc.collect()
    with Gen2Counter() as collections:
        start = time.perf_counter()
        for item in payload:
            track(item)
        service.flush()
        elapsed = time.perf_counter() - start
    if gen2 is not None:
        gen2.append(collections.count * 1_000_000 / len(payload))
    counters = service.get_health_status().counters
    stored = counters["stored"]
    service.shutdown()
    if stored != len(payload):
        raise RuntimeError(f"ingest lost events: {stored} of {len(payload)} stored ({counters['dropped_by_reason']})")
    return len(payload) / elapsed


#: The honest baseline's session fold: one SQL UPSERT per batch over the rows it just inserted (counts added,
#: times kept at their min/max, the end's status), then the batch's text into the full-text index.
_HONEST_SESSIONS = """
INSERT INTO sessions (id, agent, mode, prompt, status, started_at, ended_at, first_event_at, last_event_at,
                      first_stream_at, event_count, stream_count, error_count, metadata, input_tokens, output_tokens,
                      has_start)
SELECT session_id, max(coalesce(agent, category)), max(mode), max(prompt),
       coalesce(max(CASE WHEN event_type = 'end' THEN status END), 'active'),
       min(CASE WHEN event_type = 'start' THEN timestamp END), max(CASE WHEN event_type = 'end' THEN timestamp END),
       min(timestamp), max(timestamp), min(CASE WHEN event_type = 'stream' THEN timestamp END), count(*),
       sum(event_type = 'stream'), sum(event_type = 'error'), '{}',
       sum(coalesce(json_extract(metadata, '$.input_tokens'), 0)),
       sum(coalesce(json_extract(metadata, '$.output_tokens'), 0)), max(event_type = 'start')
FROM events WHERE seq > ? AND session_id IS NOT NULL GROUP BY session_id
ON CONFLICT (id) DO UPDATE SET
    agent = coalesce(sessions.agent, excluded.agent), mode = coalesce(sessions.mode, excluded.mode),
    prompt = coalesce(sessions.prompt, excluded.prompt),
    status = CASE WHEN excluded.ended_at IS NOT NULL THEN excluded.status ELSE sessions.status END,
    started_at = coalesce(min(sessions.started_at, excluded.started_at), sessions.started_at, excluded.started_at),
    ended_at = coalesce(max(sessions.ended_at, excluded.ended_at), sessions.ended_at, excluded.ended_at),
    first_event_at = min(sessions.first_event_at, excluded.first_event_at),
    last_event_at = max(sessions.last_event_at, excluded.last_event_at),
    first_stream_at = coalesce(min(sessions.first_stream_at, excluded.first_stream_at), sessions.first_stream_at,
                               excluded.first_stream_at),
    event_count = sessions.event_count + excluded.event_count,
    stream_count = sessions.stream_count + excluded.stream_count,
    error_count = sessions.error_count + excluded.error_count,
    input_tokens = sessions.input_tokens + excluded.input_tokens,
    output_tokens = sessions.output_tokens + excluded.output_tokens,
    has_start = max(sessions.has_start, excluded.has_start)
"""


def ingest_honest(rows: list[tuple], path: Path, batch_size: int) -> float:
    """The honest baseline: the raw limit's inserts, plus the sessions folded by one SQL UPSERT and the text
    indexed, in the same transaction per batch (what a store that keeps sessions and search current must do)."""
    return ingest_raw(rows, path, batch_size, honest=True)


def ingest_raw(rows: list[tuple], path: Path, batch_size: int, *, honest: bool = False) -> float:
    """The raw limit: plain sqlite3 executemany of the same rows into the same schema, same batch size
    (``honest``: with the sessions and text index kept current too, :func:`ingest_honest`)."""
    from vibekit_telemetry_sqlite import SQLiteStorage
    from vibekit_telemetry_sqlite.schema import EVENT_COLUMNS

    SQLiteStorage.open(path).close()  # the same schema, indexes and triggers, made by the plugin's migrations
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("PRAGMA synchronous=normal")
    sql = f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
    gc.collect()
    start = time.perf_counter()
    for offset in range(0, len(rows), batch_size):
        conn.execute("BEGIN IMMEDIATE")
        if honest:
            (before,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
        conn.executemany(sql, rows[offset : offset + batch_size])
        if honest:
            conn.execute(_HONEST_SESSIONS, [before])
            conn.execute("INSERT INTO events_fts (rowid, prompt, stream_data) SELECT seq, prompt, stream_data "
                         "FROM events WHERE seq > ? AND (prompt IS NOT NULL OR stream_data IS NOT NULL)", [before])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return len(rows) / elapsed


def paired_us(ours: Callable[[], Any], raw: Callable[[], Any], repeat: int) -> tuple[dict[str, float], dict[str, float]]:
    """p50/p99 in µs of ``ours`` and ``raw``, called alternately so that both see the same machine load."""
    mine, theirs = [], []
    clock = time.perf_counter_ns
    for _ in range(repeat):
        start = clock()
        ours()
        middle = clock()
        raw()
        mine.append(middle - start)
        theirs.append(clock() - middle)
    result = []
    for timings in (mine, theirs):
        timings.sort()
        result.append({"p50": percentile(timings, 0.5) / 1000, "p99": percentile(timings, 0.99) / 1000})
    return result[0], result[1]


def timed_us(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    """p50/p99 in µs of calling ``fn`` ``repeat`` times."""
    return paired_us(fn, lambda: None, repeat)[0]


def read_paths(path: Path, repeat: int) -> dict[str, Any]:
    """get_session and the latest-100-of-a-category query, through the service and as raw SQL."""
    from vibekit_telemetry_sqlite.schema import EVENT_COLUMNS, SESSION_COLUMNS

    service = _service(path)
    big = service.track_start("claude", "code", "a long session")
    for i in range(98):
        service.track_stream(big, f"chunk {i}")
    service.track_end(big)
    service.flush()
    # Bring the full-text index up to date first (timed: it is a figure of its own), so that the reads below are
    # measured on a database at rest rather than next to the background indexer.
    store = service.host.meta["sqlite"]["object"]
    backlog = store.text_index_backlog()
    started = time.perf_counter()
    store.catch_up_text_index()
    catch_up = backlog / (time.perf_counter() - started) if backlog else None
    conn = sqlite3.connect(path)
    hour_ago = now_ms() - 3_600_000
    columns = ", ".join(EVENT_COLUMNS)
    latest_sql = (f"SELECT {columns} FROM events WHERE category = ? AND timestamp >= ? "
                  "ORDER BY timestamp DESC, seq DESC LIMIT 100")
    session_sql = f"SELECT {', '.join(SESSION_COLUMNS)} FROM sessions WHERE id = ?"
    events_sql = f"SELECT {columns} FROM events WHERE session_id = ? ORDER BY timestamp, seq"
    out: dict[str, Any] = {}
    out["get_session"], out["get_session_raw"] = paired_us(
        lambda: service.get_session(big), lambda: conn.execute(session_sql, [big]).fetchall(), repeat)
    out["session_events"], out["session_events_raw"] = paired_us(
        lambda: service.query(session_id=big, order="asc"), lambda: conn.execute(events_sql, [big]).fetchall(), repeat)
    out["latest_100"], out["latest_100_raw"] = paired_us(
        lambda: service.query(category="gemini", since=hour_ago, limit=100),
        lambda: conn.execute(latest_sql, ["gemini", hour_ago]).fetchall(), repeat)
    out["fts_catch_up_rows_per_s"] = catch_up
    out["text_query"] = timed_us(lambda: service.query(text="exponentially", limit=100), max(10, repeat // 10))
    assert len(service.query(session_id=big)) == 100
    assert len(service.query(category="gemini", since=hour_ago, limit=100)) == 100
    conn.close()
    service.shutdown()
    return out


def session_pages(path: Path, repeat: int) -> dict[str, Any]:
    """What the dashboard's sessions table asks for, through the service and as raw SQL: 50 rows plus the total."""
    from vibekit_telemetry import SessionFilter
    from vibekit_telemetry_sqlite import session_page_sql

    service = _service(path)
    conn = sqlite3.connect(path)
    total = service.count_sessions()
    last = max(0, total - 50)
    cases = {"first": {"limit": 50}, "last": {"limit": 50, "offset": last},
             "by_duration": {"limit": 50, "sort": "duration_ms"}}
    out: dict[str, Any] = {"sessions": total}
    for name, flt in cases.items():
        sql, params = session_page_sql(SessionFilter(**flt))  # the raw side runs the same SQL, without the service
        out[f"sessions_{name}"], out[f"sessions_{name}_raw"] = paired_us(
            lambda flt=flt: (service.get_sessions(**flt), service.count_sessions(**flt)),
            lambda sql=sql, params=params: (conn.execute(sql, params).fetchall(),
                                            conn.execute("SELECT count(*) FROM sessions").fetchone()), repeat)
    assert len(service.get_sessions(limit=50, offset=last)) == min(50, total)
    conn.close()
    service.shutdown()
    return out


def analytics_paths(path: Path, repeat: int) -> dict[str, Any] | None:
    """get_metrics() for the last 24 h from the analytics rollups, next to a full-scan SQL aggregate."""
    try:
        import vibekit_telemetry_analytics  # noqa: F401
    except ImportError:
        return None
    rollups = path.parent / "analytics.db"
    rollups.unlink(missing_ok=True)
    started = time.perf_counter()
    service = _service(path, analytics={"enabled": True, "path": str(rollups)})  # the first start counts the db in
    constructor_s = time.perf_counter() - started  # the count goes on in the background
    service.host.meta["analytics"]["object"].wait_for_catch_up()
    rebuild_s = time.perf_counter() - started
    counted = service.get_metrics("48h").events.total
    conn = sqlite3.connect(path)
    day_ago = now_ms() - 86_400_000
    scan_sql = ("SELECT category, event_type, count(*), sum(CASE WHEN event_type = 'error' THEN 1 ELSE 0 END) "
                "FROM events WHERE timestamp >= ? GROUP BY category, event_type")
    durations_sql = ("SELECT ended_at - started_at FROM sessions WHERE ended_at >= ? AND has_start "
                     "ORDER BY ended_at - started_at")
    ours, raw = paired_us(lambda: service.get_metrics("24h"),
                          lambda: (conn.execute(scan_sql, [day_ago]).fetchall(),
                                   conn.execute(durations_sql, [day_ago]).fetchall()), repeat)
    conn.close()
    service.shutdown()
    return {"get_metrics": ours, "full_scan": raw, "rebuild_s": rebuild_s, "rebuild_events_per_s": counted / rebuild_s,
            "constructor_s": constructor_s}


def run(quick: bool) -> dict[str, Any]:
    """All measurements; returns the results tree written to JSON."""
    sizes = {"latency_n": 20_000 if quick else 100_000, "ingest_n": 100_000 if quick else 1_000_000,
             "ingest_sizes": [100_000] if quick else [200_000, 1_000_000],
             "latency_runs": 3 if quick else 5, "ingest_runs": 1 if quick else 3, "read_repeat": 300 if quick else 2000,
             "batch_size": 100, "max_batch_size": 5000}
    results: dict[str, Any] = {"machine": machine(), "sizes": sizes, "figures": {}}
    figures = results["figures"]
    with tempfile.TemporaryDirectory(prefix="vibekit-bench-") as tmp:
        workdir = Path(tmp)
        latency_figures(results, quick, workdir)

        end = now_ms()
        from vibekit_telemetry_sqlite import event_row

        last_db = None
        for n in sizes["ingest_sizes"]:
            print(f"SQLite ingest, {n:,} events x {sizes['ingest_runs']} runs: raw limit, honest baseline, "
                  "thread writer, process writer, true defaults ...", flush=True)
            payload = list(event_dicts(n, span_ms=24 * 3_600_000, end_ms=end))
            rows = [event_row(e) for e in events(n, span_ms=24 * 3_600_000, end_ms=end)]
            rates: dict[str, list[float]] = {k: [] for k in ("raw", "honest", "thread", "process", "defaults")}
            gen2: dict[str, list[float]] = {"rows": [], "objects": []}
            for run_index in range(sizes["ingest_runs"]):
                for name, measure in (("raw", lambda p: ingest_raw(rows, p, sizes["max_batch_size"])),
                                      ("honest", lambda p: ingest_honest(rows, p, sizes["max_batch_size"])),
                                      ("thread", lambda p: ingest_service(payload, p, sizes["batch_size"],
                                                                          gen2=gen2["rows"])),
                                      ("process", lambda p: ingest_service(payload, p, sizes["batch_size"],
                                                                           writer="process")),
                                      ("defaults", lambda p: ingest_service(payload, p, sizes["batch_size"],
                                                                            defaults=True))):
                    path = workdir / f"{name}-{n}-{run_index}.db"
                    rates[name].append(measure(path))
                    if n == sizes["ingest_n"] and name == "thread":
                        if last_db is not None:
                            last_db.unlink()
                        last_db = path  # the reads below use one ingested database
                    else:
                        path.unlink()
            if n == sizes["ingest_n"]:
                # the same ingest with a before_track hook, so event objects are queued: gen2 collections compared
                print("SQLite ingest with a before_track hook (event objects queued) ...", flush=True)
                objects_path = workdir / "objects.db"
                objects_rate = ingest_service(payload, objects_path, sizes["batch_size"], gen2=gen2["objects"],
                                              plugins=[_Noop()])
                objects_path.unlink()
                figures["ingest_objects_events_per_s"] = single(objects_rate)
                figures["gen2_per_million_rows"] = stats(gen2["rows"])
                figures["gen2_per_million_objects"] = stats(gen2["objects"])
            tag = "" if n == sizes["ingest_n"] else f"_{n // 1000}k"
            figures[f"ingest_events_per_s{tag}"] = stats(rates["thread"])
            figures[f"raw_executemany_events_per_s{tag}"] = stats(rates["raw"])
            figures[f"honest_baseline_events_per_s{tag}"] = stats(rates["honest"])
            figures[f"ingest_process_events_per_s{tag}"] = stats(rates["process"])
            figures[f"ingest_defaults_events_per_s{tag}"] = stats(rates["defaults"])
            for name, key in (("thread", "ingest"), ("process", "ingest_process"), ("defaults", "ingest_defaults")):
                figures[f"{key}_vs_raw_ratio{tag}"] = stats([o / r for o, r in zip(rates[name], rates["raw"],
                                                                                     strict=True)])
                figures[f"{key}_vs_honest_ratio{tag}"] = stats([o / h for o, h in zip(rates[name], rates["honest"],
                                                                                        strict=True)])
            figures[f"honest_vs_raw_ratio{tag}"] = stats([h / r for h, r in zip(rates["honest"], rates["raw"],
                                                                                  strict=True)])
            del rows
            gc.collect()
        # The price of durability: the same ingest with every batch journaled (fsync) before it is stored.
        n_durable = sizes["ingest_n"] // 4
        print(f"SQLite ingest with persist_buffer, {n_durable:,} events x {sizes['ingest_runs']} runs ...", flush=True)
        durable_rates, plain_rates = [], []
        for run_index in range(sizes["ingest_runs"]):
            plain = workdir / f"plain-{run_index}.db"
            plain_rates.append(ingest_service(payload[:n_durable], plain, sizes["batch_size"]))
            plain.unlink()
            durable = workdir / f"durable-{run_index}.db"
            durable_rates.append(ingest_service(payload[:n_durable], durable, sizes["batch_size"],
                                                # the journal holds the whole burst: its bound (buffer_size,
                                                # 100,000 by default) is not what is measured here
                                                reliability={"persist_buffer": True, "buffer_size": n_durable}))
            durable.unlink()
        figures["ingest_persist_buffer_events_per_s"] = stats(durable_rates)
        figures["persist_buffer_vs_default_ratio"] = stats([d / p for d, p in zip(durable_rates, plain_rates, strict=True)])
        # Overload: a queue of 10,000 events, so most of the ingest spills to disk and is read back in order.
        print(f"SQLite ingest through the spill journal, {n_durable:,} events ...", flush=True)
        spill = workdir / "spill.db"
        spill_rate = ingest_service(payload[:n_durable], spill, sizes["batch_size"], max_queue_size=10_000,
                                    reliability={"buffer_size": n_durable})  # the spill bound is not what is measured
        spill.unlink()
        figures["ingest_spill_events_per_s"] = {"median": spill_rate, "min": spill_rate, "max": spill_rate, "runs": 1}
        del payload
        gc.collect()

        print(f"reads on a {sizes['ingest_n']:,}-event database ...", flush=True)
        assert last_db is not None
        reads = read_paths(last_db, sizes["read_repeat"])
        catch_up = reads.pop("fts_catch_up_rows_per_s")
        figures["fts_catch_up_rows_per_s"] = None if catch_up is None else {"median": catch_up, "min": catch_up,
                                                                             "max": catch_up, "runs": 1}
        for key, value in reads.items():
            figures[f"{key}_p50_us"] = {"median": value["p50"], "min": value["p50"], "max": value["p99"], "runs": 1,
                                        "p99": value["p99"]}
        for name in ("get_session", "session_events", "latest_100"):
            figures[f"{name}_vs_raw_ratio"] = {"median": reads[name]["p50"] / reads[f"{name}_raw"]["p50"]}
        pages = session_pages(last_db, max(20, sizes["read_repeat"] // 40))
        sizes["sessions"] = pages.pop("sessions")
        for key, value in pages.items():
            figures[f"{key}_p50_us"] = {"median": value["p50"], "min": value["p50"], "max": value["p99"], "runs": 1,
                                        "p99": value["p99"]}
        for name in ("sessions_first", "sessions_last", "sessions_by_duration"):
            figures[f"{name}_vs_raw_ratio"] = {"median": pages[name]["p50"] / pages[f"{name}_raw"]["p50"]}

        print(f"exports of the {sizes['ingest_n']:,}-event database (JSONL, CSV, Parquet, raw dump) ...", flush=True)
        from benchmarks import export_bench

        exports = export_bench.run(last_db, workdir)
        results["exports"] = exports
        one = single
        figures["export_raw_dump_s"] = one(exports["raw_orjson"]["seconds"])
        for fmt in ("jsonl", "csv", "parquet"):
            figures[f"export_{fmt}_s"] = one(exports[fmt]["seconds"])
            figures[f"export_{fmt}_vs_raw"] = one(exports[fmt]["seconds"] / exports["raw_orjson"]["seconds"])
        figures["export_peak_rss_mb"] = one(max(exports[f]["peak_rss_mb"] for f in ("jsonl", "csv", "parquet")))
        figures["export_peak_anon_mb"] = one(max(exports[f]["peak_anon_mb"] for f in ("jsonl", "csv", "parquet")))

        print("text search at 1M and 3M events (one database grown from 1M to 3M) ...", flush=True)
        from benchmarks import search_bench

        search_sizes = [100_000, 300_000] if quick else [1_000_000, 3_000_000]
        search = search_bench.run(search_sizes, repeat=7 if quick else 15, workdir=workdir)
        results["search"] = search
        for n, tag in zip(search_sizes, ("1m", "3m"), strict=True):
            by_word = search["sizes"][str(n)]
            for word in ("common", "rare"):
                figure = by_word[f"{word}_word"]
                figures[f"search_{word}_{tag}_ms"] = figure["new_ms"]
                figures[f"search_{word}_{tag}_old_ms"] = figure["old_ms"]

        print(f"analytics on the {sizes['ingest_n']:,}-event database ...", flush=True)
        analytics = analytics_paths(last_db, max(20, sizes["read_repeat"] // 20))
        if analytics is not None:
            figures["get_metrics_24h_ms"] = {"median": analytics["get_metrics"]["p50"] / 1000,
                                             "min": analytics["get_metrics"]["p50"] / 1000,
                                             "max": analytics["get_metrics"]["p99"] / 1000, "runs": 1}
            figures["metrics_full_scan_ms"] = {"median": analytics["full_scan"]["p50"] / 1000, "min": analytics["full_scan"]["p50"] / 1000,
                                               "max": analytics["full_scan"]["p99"] / 1000, "runs": 1}
            figures["metrics_speedup_over_scan"] = {"median": analytics["full_scan"]["p50"] / analytics["get_metrics"]["p50"]}
            figures["analytics_rebuild_events_per_s"] = {"median": analytics["rebuild_events_per_s"]}
            figures["analytics_constructor_s"] = single(analytics["constructor_s"])
    print("anomaly detection on NAB ...", flush=True)
    results["nab"] = nab_results()
    http_figures(results, quick)
    genai_figures(results, quick)
    instrument_figures(results, quick)
    postgres_figures(results, quick)
    return results


def latency_figures(results: dict[str, Any], quick: bool, workdir: Path | None = None) -> None:
    """track() latency beside an OpenTelemetry span, and with PII redaction on."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="vibekit-bench-") as tmp:
            latency_figures(results, quick, Path(tmp))
        return
    sizes = results["sizes"]
    figures = results["figures"]
    print(f"track() latency, {sizes['latency_n']:,} calls x {sizes['latency_runs']} runs ...", flush=True)
    ours, peer = [], []
    for _ in range(sizes["latency_runs"]):
        ours.append(track_latency(sizes["latency_n"], workdir))
        span = otel_span_latency(sizes["latency_n"])
        if span is not None:
            peer.append(span)
    figures["track_p50_us"] = stats([r["p50"] for r in ours])
    figures["track_p99_us"] = stats([r["p99"] for r in ours])
    figures["track_p999_us"] = stats([r["p999"] for r in ours])
    if peer:
        figures["otel_span_p50_us"] = stats([r["p50"] for r in peer])
        figures["otel_span_p99_us"] = stats([r["p99"] for r in peer])
        figures["otel_span_p999_us"] = stats([r["p999"] for r in peer])
        figures["track_vs_otel_p50_speedup"] = stats([p["p50"] / o["p50"] for o, p in zip(ours, peer, strict=True)])
    try:
        import vibekit_telemetry_pii  # noqa: F401
    except ImportError:
        pass
    else:
        print("track() latency with PII redaction ...", flush=True)
        redacted = [track_latency(sizes["latency_n"] // 2, workdir, security={"pii": {"enabled": True}})
                    for _ in range(sizes["latency_runs"])]
        figures["track_pii_p50_us"] = stats([r["p50"] for r in redacted])
        from benchmarks import pii_eval

        corpora = pii_eval.run()
        if corpora is not None:
            results["pii"] = corpora
        from vibekit_telemetry_pii import PIIRedactor

        redactor = PIIRedactor()
        figures["pii_scan_us"] = stats([pii_eval.typical_event_us(redactor.before_track, 3000) for _ in range(5)])


def http_figures(results: dict[str, Any], quick: bool) -> None:
    """HTTP ingest into `telemetry api`: batched and single-event throughput, then the load test."""
    figures = results["figures"]
    duration = 10.0 if quick else 60.0
    print(f"HTTP API: throughput, then a {duration:.0f} s load test against `telemetry api` ...", flush=True)
    from benchmarks import api_load

    http = api_load.run(duration, throughput_s=5.0 if quick else 10.0)
    results["http"] = http
    one = single
    figures["http_ingest_batched_events_per_s"] = one(http["batched"]["events_per_s"])
    figures["http_batch_p99_ms"] = one(http["batched"]["p99_ms"])
    figures["http_single_requests_per_s"] = one(http["single"]["requests_per_s"])
    load = http["load"]
    figures["http_load_events_per_s"] = one(load["events_per_s"])
    figures["http_load_p99_ms"] = one(load["p99_ms"])
    figures["http_load_peak_rss_mb"] = one(load["peak_rss_mb"])
    figures["http_load_lost"] = one(load["lost"] + load["server_errors"])
    figures["http_load_shutdown_drain_s"] = one(load["shutdown_drain_s"])


def genai_figures(results: dict[str, Any], quick: bool) -> None:
    """GenAI spans: the in-process bridge next to the SDK's own batch processor, and OTLP/HTTP ingest."""
    try:
        import opentelemetry.sdk.trace  # noqa: F401

        from benchmarks import genai_bench
    except ImportError:
        return
    spans = 5_000 if quick else 20_000
    print(f"GenAI spans: span_processor() and BatchSpanProcessor, {spans:,} spans; OTLP/HTTP ingest ...", flush=True)
    genai = genai_bench.run(spans)
    results["genai"] = genai
    figures = results["figures"]
    bridge = genai["bridge"]
    figures["genai_bridge_p50_us"] = {"median": bridge["bridge_us"]["p50"], "min": bridge["bridge_us"]["p50"],
                                      "max": bridge["bridge_us"]["p99"], "runs": 1}
    figures["genai_batch_processor_p50_us"] = {"median": bridge["batch_processor_us"]["p50"],
                                               "min": bridge["batch_processor_us"]["p50"],
                                               "max": bridge["batch_processor_us"]["p99"], "runs": 1}
    figures["genai_bridge_vs_batch_ratio"] = single(bridge["ratio_p50"])
    figures["genai_otlp_ingest_spans_per_s"] = single(genai["otlp"]["spans_per_s"])


def instrument_figures(results: dict[str, Any], quick: bool) -> None:
    """What ``telemetry.instrument("openai")`` adds to a call and to a chunk, next to openai-v2 (OTel)."""
    try:
        import openai  # noqa: F401

        from benchmarks import instrument_bench
    except ImportError:
        return
    calls = 500 if quick else 2000
    print(f"auto-instrumentation: the openai SDK bare, instrumented and under openai-v2, {calls:,} calls ...",
          flush=True)
    r = instrument_bench.run(calls)
    results["instrument"] = r
    figures = results["figures"]
    figures["instrument_call_us"] = single(r["overhead_per_call_us"])
    figures["instrument_chunk_us"] = single(r["overhead_per_chunk_us"])
    figures["instrument_call_beyond_track_us"] = single(r["direct_call_beyond_track_us"])
    figures["instrument_chunk_beyond_track_us"] = single(r["direct_chunk_beyond_track_us"])
    if "otel_v2_overhead_per_call_us" in r:
        figures["instrument_otel_v2_call_us"] = single(r["otel_v2_overhead_per_call_us"])
        figures["instrument_otel_v2_chunk_us"] = single(r["otel_v2_overhead_per_chunk_us"])


def postgres_figures(results: dict[str, Any], quick: bool) -> None:
    """The PostgreSQL store next to raw COPY, row-by-row INSERT and SQLite, in one run (skipped, with the
    reason in the results, when no PostgreSQL is available)."""
    from benchmarks import postgres_bench

    n = 50_000 if quick else 200_000
    # five paired runs: on a machine of two shared cores one run's rate strays by a quarter either way
    runs = 1 if quick else 5
    print(f"PostgreSQL: raw COPY, COPY + sessions, executemany INSERT, the service, SQLite; {n:,} events x {runs} "
          "runs; reads ...", flush=True)
    r = postgres_bench.run(n, runs=runs, repeat=100 if quick else 300, insert_n=n // 4,
                           metrics_n=100_000 if quick else 1_000_000, scale_duration=10.0 if quick else 30.0)
    results["postgres"] = r
    if "skipped" in r:
        print(f"  skipped: {r['skipped']}", flush=True)
        return
    figures = results["figures"]
    rates, ratios = r["events_per_s"], r["ratios"]
    for name in ("copy", "honest", "executemany", "service", "one_writer", "sqlite"):
        figures[f"pg_{name}_events_per_s"] = rates[name]
    for name, value in ratios.items():
        figures[f"pg_{name}_ratio"] = value
    for name in ("get_session", "latest_100", "text_common", "text_prompt"):
        ours, raw, lite = r["reads"][name], r["reads"][f"{name}_raw"], r["sqlite_reads"][name]
        figures[f"pg_{name}_p50_us"] = {"median": ours["p50"], "min": ours["p50"], "max": ours["p99"], "runs": 1}
        figures[f"pg_{name}_raw_p50_us"] = {"median": raw["p50"], "min": raw["p50"], "max": raw["p99"], "runs": 1}
        figures[f"pg_{name}_vs_raw_ratio"] = {"median": ours["p50"] / raw["p50"]}
        figures[f"pg_{name}_sqlite_p50_us"] = {"median": lite["p50"], "min": lite["p50"], "max": lite["p99"],
                                               "runs": 1}
        figures[f"pg_{name}_vs_sqlite_ratio"] = {"median": ours["p50"] / lite["p50"]}
    metrics = r.get("metrics")
    if metrics:
        figures["pg_rollups_catch_up_events_per_s"] = single(metrics["catch_up_events_per_s"])
        for name, key in (("get_metrics", "pg_get_metrics_p50_us"), ("sql_aggregate", "pg_metrics_sql_p50_us")):
            figures[key] = {"median": metrics[name]["p50"], "min": metrics[name]["p50"], "max": metrics[name]["p99"],
                            "runs": 1}
    scale = r.get("scale_out")
    if scale:
        for count in (1, 2):
            figures[f"pg_api_{count}_process_events_per_s"] = single(scale[f"{count}_process"]["events_per_s"])
        figures["pg_api_two_vs_one_ratio"] = single(scale["two_vs_one"])


GOALS = [
    ("track() p50, no plugins", "track_p50_us", "µs", "at most 3 µs", lambda v: v <= 3),
    ("track() p99, no plugins", "track_p99_us", "µs", "", None),
    ("track() p99.9, no plugins", "track_p999_us", "µs", "", None),
    ("OpenTelemetry SDK span p50 (6 attributes, BatchSpanProcessor)", "otel_span_p50_us", "µs", "peer", None),
    ("OpenTelemetry SDK span p99", "otel_span_p99_us", "µs", "peer", None),
    ("OpenTelemetry SDK span p99.9", "otel_span_p999_us", "µs", "peer", None),
    ("track() speed-up over the OTel span (p50 ratio)", "track_vs_otel_p50_speedup", "x", "at least 2x", lambda v: v >= 2),
    ("track() p50 with PII redaction (security.pii enabled)", "track_pii_p50_us", "µs", "", None),
    ("raw limit: sqlite3 executemany of prebuilt rows, the plugin's own schema (1M events)",
     "raw_executemany_events_per_s", "events/s", "raw limit", None),
    ("honest baseline: the same plus sessions folded by one SQL UPSERT and the text indexed, per transaction",
     "honest_baseline_events_per_s", "events/s", "baseline", None),
    ("  honest baseline / raw limit", "honest_vs_raw_ratio", "", "", None),
    ("ingest into SQLite, writer thread (queue holding the burst), 1M events", "ingest_events_per_s", "events/s",
     "", None),
    ("  / honest baseline", "ingest_vs_honest_ratio", "", "at least 0.9", lambda v: v >= 0.9),
    ("  / raw limit", "ingest_vs_raw_ratio", "", "", None),
    ("ingest, writer = \"process\" (SQLite in a child process)", "ingest_process_events_per_s", "events/s", "", None),
    ("  / raw limit", "ingest_process_vs_raw_ratio", "", "at least 0.7", lambda v: v >= 0.7),
    ("  / honest baseline", "ingest_process_vs_honest_ratio", "", "", None),
    ("ingest with the true defaults (100,000-event queue, the rest of the burst spills to disk)",
     "ingest_defaults_events_per_s", "events/s", "every event stored", None),
    ("  / raw limit", "ingest_defaults_vs_raw_ratio", "", "", None),
    ("ingest at 200k: writer thread / honest baseline", "ingest_vs_honest_ratio_200k", "", "", None),
    ("  writer thread / raw limit", "ingest_vs_raw_ratio_200k", "", "", None),
    ("  writer process / raw limit", "ingest_process_vs_raw_ratio_200k", "", "", None),
    ("  true defaults / raw limit", "ingest_defaults_vs_raw_ratio_200k", "", "", None),
    ("gen2 garbage collections per million events ingested (rows queued)", "gen2_per_million_rows", "", "", None),
    ("  the same with a before_track hook (event objects queued)", "gen2_per_million_objects", "", "", None),
    ("  ingest with the before_track hook", "ingest_objects_events_per_s", "events/s", "", None),
    ("ingest with persist_buffer (write-ahead journal, fsync per batch)", "ingest_persist_buffer_events_per_s",
     "events/s", "", None),
    ("  persist_buffer / default ingest", "persist_buffer_vs_default_ratio", "", "", None),
    ("ingest with a 10,000-event queue (most events spill to disk)", "ingest_spill_events_per_s", "events/s", "", None),
    ("get_session (session of 100 events) p50", "get_session_p50_us", "µs", "under 1 ms", lambda v: v < 1000),
    ("  same SQL with sqlite3", "get_session_raw_p50_us", "µs", "", None),
    ("  get_session / raw SQL", "get_session_vs_raw_ratio", "x", "within 2x", lambda v: v <= 2),
    ("the session's 100 events p50", "session_events_p50_us", "µs", "", None),
    ("  same SQL with sqlite3", "session_events_raw_p50_us", "µs", "", None),
    ("  session events / raw SQL", "session_events_vs_raw_ratio", "x", "within 2x", lambda v: v <= 2),
    ("latest 100 events of a category in the last hour p50", "latest_100_p50_us", "µs", "under 2 ms", lambda v: v < 2000),
    ("  same SQL with sqlite3", "latest_100_raw_p50_us", "µs", "", None),
    ("  latest 100 / raw SQL", "latest_100_vs_raw_ratio", "x", "within 2x", lambda v: v <= 2),
    ("sessions table: first 50 by start time, with the total (dashboard)", "sessions_first_p50_us", "µs",
     "under 10 ms", lambda v: v < 10_000),
    ("  same SQL with sqlite3", "sessions_first_raw_p50_us", "µs", "", None),
    ("  first page / raw SQL", "sessions_first_vs_raw_ratio", "x", "", None),
    ("sessions table: last page (offset to the end), with the total", "sessions_last_p50_us", "µs",
     "under 100 ms", lambda v: v < 100_000),
    ("  last page / raw SQL", "sessions_last_vs_raw_ratio", "x", "", None),
    ("sessions table: 50 longest sessions, with the total", "sessions_by_duration_p50_us", "µs",
     "under 300 ms", lambda v: v < 300_000),
    ("  longest / raw SQL", "sessions_by_duration_vs_raw_ratio", "x", "", None),
    ("full-text index catch-up after the bulk load", "fts_catch_up_rows_per_s", "rows/s", "", None),
    ("text search, 100 newest matches p50", "text_query_p50_us", "µs", "", None),
    ("text search at 1M events, a common word, 100 newest", "search_common_1m_ms", "ms", "", None),
    ("  the plan before (every match sorted)", "search_common_1m_old_ms", "ms", "", None),
    ("text search at 3M events, a common word, 100 newest", "search_common_3m_ms", "ms", "", None),
    ("  the plan before (every match sorted)", "search_common_3m_old_ms", "ms", "", None),
    ("text search at 3M events, a rare word", "search_rare_3m_ms", "ms", "", None),
    ("get_metrics() last 24 h on 1M events (from rollups)", "get_metrics_24h_ms", "ms", "under 50 ms", lambda v: v < 50),
    ("  full-scan SQL aggregate over the same window", "metrics_full_scan_ms", "ms", "", None),
    ("  get_metrics speed-up over the scan", "metrics_speedup_over_scan", "x", "", None),
    ("analytics: counting an existing database into the rollups (in the background)",
     "analytics_rebuild_events_per_s", "events/s", "", None),
    ("  the constructor on that database with analytics on (the count does not block it)",
     "analytics_constructor_s", "s", "", None),
    ("raw limit: sqlite3 rows of the whole table dumped as JSON lines with orjson", "export_raw_dump_s", "s",
     "raw limit", None),
    ("export all events to JSONL", "export_jsonl_s", "s", "under 5 s for 1M", lambda v: v < 5),
    ("  JSONL / raw dump", "export_jsonl_vs_raw", "x", "at most 1.2x", lambda v: v <= 1.2),
    ("export all events to CSV", "export_csv_s", "s", "under 8 s for 1M", lambda v: v < 8),
    ("  CSV / raw dump", "export_csv_vs_raw", "x", "at most 1.2x", lambda v: v <= 1.2),
    ("export all events to Parquet", "export_parquet_s", "s", "under 5 s for 1M", lambda v: v < 5),
    ("  Parquet / raw dump", "export_parquet_vs_raw", "x", "at most 1.2x", lambda v: v <= 1.2),
    ("export peak RSS (counts the database pages SQLite maps)", "export_peak_rss_mb", "MB", "under 300 MB",
     lambda v: v < 300),
    ("export peak anonymous memory (the exporter's own)", "export_peak_anon_mb", "MB", "", None),
    ("HTTP ingest, batches of 100, one client process", "http_ingest_batched_events_per_s", "events/s",
     "at least 20,000", lambda v: v >= 20_000),
    ("  request p99 (100 events)", "http_batch_p99_ms", "ms", "", None),
    ("HTTP ingest, one event per POST", "http_single_requests_per_s", "requests/s", "", None),
    ("HTTP load test, 4 concurrent clients (60 s; 10 s with --quick): events/s", "http_load_events_per_s", "events/s", "", None),
    ("  request p99 under load", "http_load_p99_ms", "ms", "", None),
    ("  server peak RSS", "http_load_peak_rss_mb", "MB", "", None),
    ("  5xx answers + acknowledged events not stored", "http_load_lost", "", "0", lambda v: v == 0),
    ("  SIGTERM to exit: the server writes the backlog the load left (queue and spill journal)",
     "http_load_shutdown_drain_s", "s", "", None),
    ("GenAI chat span ended into telemetry.span_processor() p50 [p50 – p99]", "genai_bridge_p50_us", "µs", "", None),
    ("  the same span into BatchSpanProcessor, discarding exporter [p50 – p99]", "genai_batch_processor_p50_us", "µs",
     "peer", None),
    ("  bridge / batch processor (p50)", "genai_bridge_vs_batch_ratio", "x", "", None),
    ("OTLP/HTTP ingest of GenAI spans (protobuf, 100 a request) into SQLite", "genai_otlp_ingest_spans_per_s",
     "spans/s", "", None),
    ("telemetry.instrument(\"openai\"): added to a chat call (instrumented minus bare, in-process transport)",
     "instrument_call_us", "µs", "", None),
    ("  added to each streamed chunk (100-chunk streams)", "instrument_chunk_us", "µs", "", None),
    ("  the wrapper's own work per call beyond its two track() calls (no SDK, track calls discarded, best of 3)",
     "instrument_call_beyond_track_us", "µs", "under 20 µs", lambda v: v < 20),
    ("  the wrapper's own work per chunk beyond its track() call (no SDK, track calls discarded, best of 3)",
     "instrument_chunk_beyond_track_us", "µs", "under 20 µs", lambda v: v < 20),
    ("opentelemetry-instrumentation-openai-v2 (discarding exporter): added to a chat call",
     "instrument_otel_v2_call_us", "µs", "peer", None),
    ("  added to each streamed chunk", "instrument_otel_v2_chunk_us", "µs", "peer", None),
    ("PII scan of a typical event (500-character prompt, 6 metadata fields)", "pii_scan_us", "µs", "under 50 µs",
     lambda v: v < 50),
    ("PostgreSQL raw limit: COPY of prebuilt rows into the plugin's own schema, 5,000 per transaction",
     "pg_copy_events_per_s", "events/s", "raw limit", None),
    ("  the same COPY plus the sessions folded by one SQL UPSERT per transaction", "pg_honest_events_per_s",
     "events/s", "baseline", None),
    ("  row-by-row executemany INSERT of the same rows (pipelined)", "pg_executemany_events_per_s", "events/s",
     "", None),
    ("  raw COPY / executemany INSERT", "pg_copy_vs_executemany_ratio", "x", "", None),
    ("ingest into PostgreSQL through the service (track() to the last commit)", "pg_service_events_per_s",
     "events/s", "", None),
    ("  / raw COPY", "pg_service_vs_copy_ratio", "", "at least 0.7", lambda v: v >= 0.7),
    ("  / COPY + sessions UPSERT", "pg_service_vs_honest_ratio", "", "", None),
    ("  the same with writers = 1 (each batch over one connection, not split over two)",
     "pg_one_writer_events_per_s", "events/s", "", None),
    ("    / raw COPY", "pg_one_writer_vs_copy_ratio", "", "", None),
    ("  the same ingest into SQLite, same run", "pg_sqlite_events_per_s", "events/s", "", None),
    ("  PostgreSQL / SQLite", "pg_service_vs_sqlite_ratio", "x", "", None),
    ("PostgreSQL get_session (12 events) p50", "pg_get_session_p50_us", "µs", "", None),
    ("  same SQL with psycopg", "pg_get_session_raw_p50_us", "µs", "", None),
    ("  get_session / raw SQL", "pg_get_session_vs_raw_ratio", "x", "within 2x", lambda v: v <= 2),
    ("  PostgreSQL / SQLite (same run)", "pg_get_session_vs_sqlite_ratio", "x", "", None),
    ("PostgreSQL latest 100 events of a category in the last hour p50", "pg_latest_100_p50_us", "µs", "", None),
    ("  same SQL with psycopg", "pg_latest_100_raw_p50_us", "µs", "", None),
    ("  latest 100 / raw SQL", "pg_latest_100_vs_raw_ratio", "x", "within 2x", lambda v: v <= 2),
    ("  PostgreSQL / SQLite (same run)", "pg_latest_100_vs_sqlite_ratio", "x", "", None),
    ("PostgreSQL text search, a word of every chunk, 100 newest p50", "pg_text_common_p50_us", "µs", "", None),
    ("  same SQL with psycopg", "pg_text_common_raw_p50_us", "µs", "", None),
    ("  text search / raw SQL", "pg_text_common_vs_raw_ratio", "x", "within 2x", lambda v: v <= 2),
    ("  PostgreSQL / SQLite (same run)", "pg_text_common_vs_sqlite_ratio", "x", "", None),
    ("PostgreSQL text search, a word of the prompts (1 event in 12), 100 newest p50", "pg_text_prompt_p50_us", "µs",
     "", None),
    ("  same SQL with psycopg", "pg_text_prompt_raw_p50_us", "µs", "", None),
    ("  text search / raw SQL", "pg_text_prompt_vs_raw_ratio", "x", "within 2x", lambda v: v <= 2),
    ("  PostgreSQL / SQLite (same run)", "pg_text_prompt_vs_sqlite_ratio", "x", "", None),
]


def _fmt(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def markdown(results: dict[str, Any], quick: bool) -> str:
    """The results as docs/benchmarks.md."""
    m = results["machine"]
    s = results["sizes"]
    lines = [
        "# Benchmarks",
        "",
        "Written by `uv run python -m benchmarks`" + (" --quick" if quick else "") + "; do not edit by hand.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, {m['os']}; Python {m['python']}, "
        f"SQLite {m['sqlite']}; run {m['date']}"
        + "".join(f"; {r['group']} figures re-run {r['date']}" for r in results.get("partial_reruns", [])) + ".",
        "",
        f"Sizes: {s['latency_n']:,} `track()` calls x {s['latency_runs']} runs; {s['ingest_n']:,} events ingested "
        f"x {s['ingest_runs']} runs (the service with its defaults: writes start at {s['batch_size']} waiting events and "
        f"grow to {s['max_batch_size']} under a backlog; the raw baseline inserts {s['max_batch_size']} rows per "
        "transaction; sessions of 12 events: start, 10 chunks, end); "
        f"reads repeated {s['read_repeat']:,} times on the ingested database"
        + (f" ({s['sessions']:,} sessions; the sessions table's pages {max(20, s['read_repeat'] // 40)} times)."
           if "sessions" in s else "."),
        "",
        "Each figure is the median of the runs, with [min – max]; read latencies show [p50 – p99] of one run, "
        "the service's call and the raw SQL alternating call by call. Ratios are computed run by run, in the same "
        "run as the figure they compare with.",
        "",
        "| figure | value | goal | met |",
        "| --- | --- | --- | --- |",
    ]
    for label, key, unit, goal, check in GOALS:
        value = results["figures"].get(key)
        if value is None:
            lines.append(f"| {label} | not available (not built yet) | {goal} | |")
            continue
        shown = _fmt(value["median"])
        if "max" in value and value.get("runs", 1) >= 1 and value["min"] != value["max"]:
            shown += f" [{_fmt(value['min'])} – {_fmt(value['max'])}]"
        met = "" if check is None else ("yes" if check(value["median"]) else "**no**")
        lines.append(f"| {label} | {shown} {unit} | {goal} | {met} |")
    figures = results["figures"]
    if "ingest_defaults_events_per_s" in figures:
        lines += ["", "## Sustained capacity", "",
                  f"With the defaults, one process stores about {_fmt(figures['ingest_defaults_events_per_s']['median'])} "
                  "events/s into SQLite with the writer thread"
                  + (f" and {_fmt(figures['ingest_process_events_per_s']['median'])} with `writer = \"process\"`"
                     if "ingest_process_events_per_s" in figures else "")
                  + " (the rates above, measured from the first `track()` to the last commit). An application "
                  "that tracks faster than that for long fills the in-memory queue (`max_queue_size`, 100,000 "
                  "events), then the spill journal on disk, bounded by `reliability.buffer_max_bytes` (512 MiB, "
                  "about 1.5 million stream events); past both, `track()` refuses events (counted as `spill_full`, "
                  "never lost once accepted). A burst of a million events is absorbed and stored in full: the "
                  "true-defaults figure is that burst."]
    lines += _postgres_section(results.get("postgres"))
    lines += _nab_section(results.get("nab"))
    lines += _pii_section(results.get("pii"))
    lines += ["", "Raw figures: [benchmarks.json](benchmarks.json).", ""]
    return "\n".join(lines)


def _postgres_section(pg: dict[str, Any] | None) -> list[str]:
    lines = ["", "## PostgreSQL", ""]
    if not pg:
        return lines + ["Not measured: `uv run python -m benchmarks --only postgres` adds these figures."]
    if "skipped" in pg:
        return lines + [f"Not measured: {pg['skipped']}."]
    rates, ratios = pg["events_per_s"], pg["ratios"]
    lines += [
        f"PostgreSQL {pg['server_version']} on {pg['server']}, on the same machine as the benchmark (a loopback "
        f"connection); {pg['n']:,} stream-shaped events x {pg['runs']} runs, {pg['batch']:,} rows per transaction "
        f"for the raw baselines (the row-by-row INSERT on {pg['executemany_n']:,} of them, once). Same command: "
        "`uv run python -m benchmarks --only postgres`; details in [postgres.md](postgres.md).",
        "",
        "| | PostgreSQL | SQLite, same run | PostgreSQL / SQLite |",
        "| --- | --- | --- | --- |",
        f"| ingest through the service, events/s | {_fmt(rates['service']['median'])} | "
        f"{_fmt(rates['sqlite']['median'])} | {ratios['service_vs_sqlite']['median']:.2f} |",
    ]
    names = {"get_session": ("get_session, p50 µs", "get_session"),
             "latest_100": ("latest 100 of a category, p50 µs", "latest 100"),
             "text_common": ("text search, common word, 100 newest, p50 µs", "search for a common word"),
             "text_prompt": ("text search, prompt word, 100 newest, p50 µs", "search for a rarer word")}
    faster, slower = [], []
    for key, (label, short) in names.items():
        ours, lite = pg["reads"][key]["p50"], pg["sqlite_reads"][key]["p50"]
        lines.append(f"| {label} | {_fmt(ours)} | {_fmt(lite)} | {ours / lite:.2f} |")
        (faster if ours < lite else slower).append(short)
    (faster if ratios["service_vs_sqlite"]["median"] > 1 else slower).insert(0, "ingest")
    metrics = pg.get("metrics")
    if metrics:
        lines.append(f"| get_metrics('24h') over {metrics['n']:,} stored events (shared rollups), p50 µs | "
                     f"{_fmt(metrics['get_metrics']['p50'])} | | the same figures as one SQL aggregate: "
                     f"{_fmt(metrics['sql_aggregate']['p50'])} µs |")
    lines += ["", f"In this run PostgreSQL was ahead on: {', '.join(faster) or 'nothing'}; SQLite on: "
              f"{', '.join(slower) or 'nothing'}. Each PostgreSQL call pays a round trip to the server, where SQLite reads "
              "pages inside the process; "
              "what PostgreSQL adds is one store that several processes and hosts write and read at once."]
    if metrics:
        lines += ["", f"Shared rollups: a service with analytics opened over {metrics['n']:,} events already stored "
                  f"(loaded by raw COPY in {metrics['load_s']:.0f} s) returned from its constructor in "
                  f"{metrics['constructor_s']:.2f} s; the cluster's counter counted the store in within "
                  f"{metrics['catch_up_s']:.0f} s ({_fmt(metrics['catch_up_events_per_s'])} events/s), in the "
                  "background."]
    scale = pg.get("scale_out")
    if scale:
        lines += ["", f"API scale-out: the {scale['clients']}-client load test of `benchmarks.api_load` "
                  f"({scale['duration_s']:.0f} s, batches of 100) against `telemetry api` processes on one database.",
                  "", "| API processes | events/s | p50 ms | p99 ms | 5xx | acknowledged, not stored |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for count in (1, 2):
            r = scale[f"{count}_process"]
            lines.append(f"| {count} | {_fmt(r['events_per_s'])} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                         f"{r['server_errors']} | {r['lost']} of {r['acked']:,} |")
        verdict = ("so a second process adds no throughput here" if scale["two_vs_one"] < 1.15 else
                   "and a second process still adds throughput")
        lines += ["", f"Two processes / one: {scale['two_vs_one']:.2f}. On this machine the database server, "
                  f"the clients and the API processes share the same {os.cpu_count()} cores, {verdict}; on separate "
                  "hosts each server brings its own cores, and the database (one COPY per batch) is what they "
                  "share."]
    return lines


def nab_results() -> dict[str, Any] | None:
    """The analytics detector on the Numenta Anomaly Benchmark (``../shared/data/nab``), if both are there."""
    nab_dir = ROOT.parent / "shared" / "data" / "nab"
    try:
        from vibekit_telemetry_analytics.nab import DEFAULT_CATEGORIES, evaluate
    except ImportError:
        return {"skipped": "the analytics plugin is not installed"}
    if not (nab_dir / "labels" / "combined_windows.json").exists():
        return {"skipped": f"the NAB corpus is not at {nab_dir.relative_to(ROOT.parent)}"}
    out = {}
    for sensitivity in ("low", "medium", "high"):
        result = evaluate(nab_dir, DEFAULT_CATEGORIES, sensitivity=sensitivity)
        result["noise"] = evaluate(nab_dir, ("artificialNoAnomaly",), sensitivity=sensitivity)["all"]
        out[sensitivity] = result
    return out


def _pii_section(pii: dict[str, Any] | None) -> list[str]:
    lines = ["", "## PII and secret redaction", ""]
    if not pii:
        return lines + ["Not measured: the PII plugin or the corpora in ../shared/data are missing."]
    lines += [
        "The PII plugin's detectors on presidio-research's 1,500 synthetic sentences (a gold span is found when a "
        "finding of its type overlaps it) and on gitleaks' rule samples. Same command: "
        "`uv run python -m benchmarks.pii_eval`.",
        "",
        "| entity | gold spans | findings | precision | recall |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, s in pii["synthetic"].items():
        lines.append(f"| {name} | {s['gold']} | {s['found']} | {s['precision']:.3f} | {s['recall']:.3f} |")
    g = pii["gitleaks"]
    lines += ["", f"gitleaks: recall {g['recall']:.3f} on the {g['true_positives']} true-positive samples of the covered "
              f"providers (OpenAI, Anthropic, AWS, GitHub, Slack, Google, Hugging Face, Stripe, JWT, private keys); "
              f"{g['flagged_share']:.1%} of all {g['false_positive_samples']} false-positive samples flagged "
              "(most of them real-shaped Google API keys that gitleaks allow-lists)."]
    return lines


def _nab_section(nab: dict[str, Any] | None) -> list[str]:
    lines = ["", "## Anomaly detection (NAB)", ""]
    if not nab or "skipped" in nab:
        return lines + [f"Not measured: {(nab or {}).get('skipped', 'not run')}."]
    lines += [
        "The analytics plugin's `LikelihoodDetector` on the Numenta Anomaly Benchmark v1.1, scored with NAB's "
        "rules (standard profile; 0 = never fires, 100 = every window hit at its left edge), one fixed threshold "
        "per sensitivity for the whole corpus. Tuned on realKnownCause and the artificial sets only; "
        "realAWSCloudwatch is held out. Same command: `telemetry analytics evaluate --nab ../shared/data/nab`.",
        "",
        "| sensitivity | category | series | windows | NAB standard score | window recall | precision | FP events / 1,000 rows |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def row(sensitivity: str, name: str, s: dict[str, Any]) -> str:
        score = "-" if s["score"] is None else f"{s['score']:.1f}"
        recall = "-" if s["recall"] is None else f"{s['recall']:.2f}"
        precision = "-" if s["precision"] is None else f"{s['precision']:.2f}"
        return (f"| {sensitivity} | {name} | {s['series']} | {s['windows']} | {score} | {recall} | {precision} | "
                f"{s['fp_events_per_1000_rows']:.2f} |")

    for sensitivity, result in nab.items():
        for name, summary in result["categories"].items():
            lines.append(row(sensitivity, name, summary))
        lines.append(row(sensitivity, "**all three**", result["all"]))
        lines.append(row(sensitivity, "artificialNoAnomaly", result["noise"]))
    lines += ["", "Published standard scores on the whole corpus, for scale: ARTime 74.9, Numenta HTM 70.1, "
              "earthgecko Skyline 58.2, relativeEntropy 54.6, windowedGaussian 39.6, null 0."]
    return lines


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, under a minute")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "benchmarks.json")
    parser.add_argument("--only", choices=["genai", "http", "instrument", "latency", "postgres"],
                        help="re-run one group and merge its figures into the existing JSON (same machine only)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.only:
        results = json.loads(args.json.read_text(encoding="utf-8"))
        if results["machine"]["cpu"] != machine()["cpu"] or results["machine"]["cores"] != machine()["cores"]:
            parser.error(f"{args.json} was measured on another machine: run every benchmark")
        {"genai": genai_figures, "http": http_figures, "instrument": instrument_figures,
         "latency": latency_figures, "postgres": postgres_figures}[args.only](results, args.quick)
        results.setdefault("partial_reruns", []).append({"group": args.only, "date": machine()["date"]})
    else:
        results = run(args.quick)
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    text = markdown(results, args.quick)
    args.output.write_text(text, encoding="utf-8")
    args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(text)
    print(f"wrote {args.output} and {args.json} in {results['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
