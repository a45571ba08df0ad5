"""PostgreSQL store benchmarks (issue 17): ingest through the service next to raw ``COPY`` and row-by-row
``executemany`` of the same rows into the same schema, reads next to the same raw SQL, and the same ingest and
reads on SQLite in the same run.

    uv run python -m benchmarks --only postgres      # merged into docs/benchmarks.json and .md
    uv run python -m benchmarks.postgres_bench 20000 # a quick look, printed only

The server is ``$VIBEKIT_TEST_POSTGRES_DSN`` when set, otherwise a throwaway cluster (``initdb``, fsync off:
see ``vibekit_telemetry_postgres.cluster``).  Every measurement gets a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vibekit_telemetry import TelemetryService, now_ms
from vibekit_telemetry.model import ROW_FIELDS

from .workload import event_dicts, events

#: rows per transaction of the raw baselines: the service's ``max_batch_size`` in this benchmark
BATCH = 5000
#: ``stream_batch_size`` of the service, as in the SQLite ingest benchmark
STREAM_BATCH = 100
#: a word of every streamed chunk (10 of every 12 events), and one of the prompt (1 of 12)
COMMON_WORD = "answer"
PROMPT_WORD = "exponentially"

_COLUMNS = ", ".join(ROW_FIELDS)
_SELECT = f"SELECT {_COLUMNS} FROM events"

#: The honest baseline's session fold in PostgreSQL: one UPSERT per batch over the rows it just copied (found
#: by their time range and sequence numbers, through the (timestamp, seq) index), counts and tokens added.
_HONEST_SESSIONS = """
INSERT INTO sessions (id, agent, mode, prompt, status, started_at, ended_at, first_event_at, last_event_at,
                      first_stream_at, event_count, stream_count, error_count, input_tokens, output_tokens, has_start)
SELECT session_id, max(coalesce(agent, category)), max(mode), max(prompt),
       coalesce(max(CASE WHEN event_type = 'end' THEN status END), 'active'),
       min(timestamp) FILTER (WHERE event_type = 'start'), max(timestamp) FILTER (WHERE event_type = 'end'),
       min(timestamp), max(timestamp), min(timestamp) FILTER (WHERE event_type = 'stream'), count(*),
       count(*) FILTER (WHERE event_type = 'stream'), count(*) FILTER (WHERE event_type = 'error'),
       coalesce(sum((metadata ->> 'input_tokens')::bigint), 0), coalesce(sum((metadata ->> 'output_tokens')::bigint), 0),
       bool_or(event_type = 'start')
FROM events WHERE timestamp BETWEEN %s AND %s AND seq > %s AND session_id IS NOT NULL
GROUP BY session_id ORDER BY session_id
ON CONFLICT (id) DO UPDATE SET
    agent = coalesce(sessions.agent, excluded.agent), mode = coalesce(sessions.mode, excluded.mode),
    prompt = coalesce(sessions.prompt, excluded.prompt),
    status = CASE WHEN excluded.ended_at IS NOT NULL THEN excluded.status ELSE sessions.status END,
    started_at = least(sessions.started_at, excluded.started_at),
    ended_at = greatest(sessions.ended_at, excluded.ended_at),
    first_event_at = least(sessions.first_event_at, excluded.first_event_at),
    last_event_at = greatest(sessions.last_event_at, excluded.last_event_at),
    first_stream_at = least(sessions.first_stream_at, excluded.first_stream_at),
    event_count = sessions.event_count + excluded.event_count,
    stream_count = sessions.stream_count + excluded.stream_count,
    error_count = sessions.error_count + excluded.error_count,
    input_tokens = sessions.input_tokens + excluded.input_tokens,
    output_tokens = sessions.output_tokens + excluded.output_tokens,
    has_start = sessions.has_start OR excluded.has_start
"""


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def _paired_us(ours: Callable[[], Any], raw: Callable[[], Any], repeat: int) -> tuple[dict[str, float], ...]:
    """p50/p99 in µs of ``ours`` and ``raw``, called alternately (``benchmarks.paired_us``)."""
    from benchmarks.__main__ import paired_us

    return paired_us(ours, raw, repeat)


class Server:
    """The PostgreSQL the benchmark runs on: the one ``$VIBEKIT_TEST_POSTGRES_DSN`` names, or a throwaway one."""

    def __init__(self) -> None:
        self.cluster: Any = None
        self.dsn = os.environ.get("VIBEKIT_TEST_POSTGRES_DSN", "")
        self.kind = "the server of $VIBEKIT_TEST_POSTGRES_DSN"

    def start(self) -> str | None:
        """Connect or start one; the reason it is unavailable, or ``None``."""
        if self.dsn:
            return None
        try:
            from vibekit_telemetry_postgres.cluster import Cluster, find_bindir
        except ImportError:
            return "the postgres plugin is not installed (uv sync installs plugins/postgres)"
        if find_bindir() is None:
            return "no PostgreSQL: initdb not found (apt-get install postgresql) and $VIBEKIT_TEST_POSTGRES_DSN not set"
        self.cluster = Cluster()
        try:
            self.dsn = self.cluster.start()
        except (OSError, RuntimeError, KeyError) as exc:
            self.cluster = None
            return f"could not start a throwaway PostgreSQL: {exc}"
        self.kind = "a throwaway local cluster (initdb; fsync off, commits synchronous)"
        return None

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None

    def drop(self, schema: str) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def _fresh_schema(tag: str) -> str:
    return f"bench_{tag}_{uuid.uuid4().hex[:8]}"


def _prepared_store(dsn: str, schema: str, rows: list[tuple[Any, ...]]) -> Any:
    """A store whose migrations made the schema, with the partitions these rows fall in created (the service
    creates them on its first batch; a raw ``COPY`` into a missing partition fails)."""
    from vibekit_telemetry_postgres import PostgresStorage

    store = PostgresStorage.open(dsn, schema=schema, listen=False)
    span = store.span_ms
    store._ensure_partitions({r[7] - r[7] % span for r in rows})
    return store


def sql_rows(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Kernel rows as the store copies them: metadata and truncated as JSON text, and the tsvector of the words."""
    from vibekit_telemetry_postgres import copy_row

    return [copy_row(r) for r in rows]


def ingest_copy(server: Server, rows: list[tuple[Any, ...]], prepared: list[tuple[Any, ...]], *,
                honest: bool = False) -> float:
    """The raw limit: ``COPY`` of prebuilt rows into the plugin's own events table, ``BATCH`` rows per
    transaction (``honest``: with the sessions kept current by one UPSERT per batch, in the same transaction)."""
    import psycopg

    schema = _fresh_schema("honest" if honest else "copy")
    _prepared_store(server.dsn, schema, rows).close()
    copy_sql = f"COPY events ({_COLUMNS}, words) FROM STDIN"
    try:
        with psycopg.connect(server.dsn, options=f"-c search_path={schema}") as conn:
            gc.collect()
            start = time.perf_counter()
            for offset in range(0, len(prepared), BATCH):
                batch = prepared[offset: offset + BATCH]
                with conn.transaction():
                    if honest:
                        last, called = conn.execute("SELECT last_value, is_called FROM events_seq").fetchone()
                        before = last if called else 0
                    with conn.cursor().copy(copy_sql) as copy:
                        for row in batch:
                            copy.write_row(row)
                    if honest:
                        conn.execute(_HONEST_SESSIONS, [batch[0][7], batch[-1][7], before])
            elapsed = time.perf_counter() - start
            (stored,) = conn.execute("SELECT count(*) FROM events").fetchone()
    finally:
        server.drop(schema)
    if stored != len(rows):
        raise RuntimeError(f"raw COPY stored {stored} of {len(rows)} rows")
    return len(rows) / elapsed


def ingest_executemany(server: Server, rows: list[tuple[Any, ...]], prepared: list[tuple[Any, ...]]) -> float:
    """Row-by-row ``INSERT`` through ``executemany`` (psycopg pipelines the statements), ``BATCH`` per transaction."""
    import psycopg

    schema = _fresh_schema("insert")
    _prepared_store(server.dsn, schema, rows).close()
    insert = (f"INSERT INTO events ({_COLUMNS}, words) VALUES ({', '.join(['%s'] * (len(ROW_FIELDS) + 1))})")
    try:
        with psycopg.connect(server.dsn, options=f"-c search_path={schema}") as conn:
            gc.collect()
            start = time.perf_counter()
            for offset in range(0, len(prepared), BATCH):
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany(insert, prepared[offset: offset + BATCH])
            elapsed = time.perf_counter() - start
    finally:
        server.drop(schema)
    return len(rows) / elapsed


def _service(storage: dict[str, Any], workdir: Path, n: int) -> TelemetryService:
    # the queue holds the whole burst (as the SQLite ingest benchmark's writer-thread figure): what is measured
    # is the store's rate, not the spill journal's
    return TelemetryService(storage=[storage], data_dir=str(workdir), max_queue_size=n + 10,
                            stream_batch_size=STREAM_BATCH, max_batch_size=BATCH,
                            reliability={"startup_timeout_ms": 300_000})


def ingest_service(storage: dict[str, Any], payload: list[dict], workdir: Path, *, keep: bool = False
                   ) -> tuple[float, TelemetryService | None]:
    """Events per second from the first ``track()`` until every event is committed (the service kept open
    for the reads when ``keep``)."""
    service = _service(storage, workdir, len(payload))
    track = service.track
    gc.collect()
    start = time.perf_counter()
    for item in payload:
        track(item)
    service.flush()
    elapsed = time.perf_counter() - start
    counters = service.get_health_status().counters
    if counters["stored"] != len(payload):
        service.shutdown()
        raise RuntimeError(f"ingest lost events: {counters['stored']} of {len(payload)} stored "
                           f"({counters['dropped_by_reason']})")
    if not keep:
        service.shutdown()
        return len(payload) / elapsed, None
    return len(payload) / elapsed, service


def postgres_reads(service: TelemetryService, server: Server, schema: str, session_id: str,
                   repeat: int) -> dict[str, Any]:
    """get_session, the latest 100 of a category in the last hour and text searches, next to the same SQL."""
    import psycopg

    service.storage_plugin("postgres").optimize()  # ANALYZE, as after any bulk load
    hour_ago = now_ms() - 3_600_000
    latest_sql = f"{_SELECT} WHERE category = %s AND timestamp >= %s ORDER BY timestamp DESC, seq DESC LIMIT 100"
    text_sql = f"{_SELECT} WHERE words @@ %s::tsquery ORDER BY timestamp DESC, seq DESC LIMIT 100"
    session_sql = "SELECT * FROM sessions WHERE id = %s"
    out: dict[str, Any] = {}
    with psycopg.connect(server.dsn, options=f"-c search_path={schema}", autocommit=True) as conn:
        out["get_session"], out["get_session_raw"] = _paired_us(
            lambda: service.get_session(session_id), lambda: conn.execute(session_sql, [session_id]).fetchall(),
            repeat)
        out["latest_100"], out["latest_100_raw"] = _paired_us(
            lambda: service.query(category="gemini", since=hour_ago, limit=100),
            lambda: conn.execute(latest_sql, ["gemini", hour_ago]).fetchall(), repeat)
        for name, word in (("text_common", COMMON_WORD), ("text_prompt", PROMPT_WORD)):
            out[name], out[f"{name}_raw"] = _paired_us(
                lambda word=word: service.query(text=word, limit=100),
                lambda word=word: conn.execute(text_sql, [f"'{word}'"]).fetchall(), max(20, repeat // 5))
    assert len(service.query(text=COMMON_WORD, limit=100)) == 100
    assert service.query(category="gemini", since=hour_ago, limit=100)
    return out


def sqlite_reads(service: TelemetryService, session_id: str, repeat: int) -> dict[str, Any]:
    """The same reads through a service on SQLite (its text index caught up first)."""
    service.host.meta["sqlite"]["object"].catch_up_text_index()
    hour_ago = now_ms() - 3_600_000
    out: dict[str, Any] = {}
    out["get_session"], _ = _paired_us(lambda: service.get_session(session_id), lambda: None, repeat)
    out["latest_100"], _ = _paired_us(lambda: service.query(category="gemini", since=hour_ago, limit=100),
                                      lambda: None, repeat)
    for name, word in (("text_common", COMMON_WORD), ("text_prompt", PROMPT_WORD)):
        out[name], _ = _paired_us(lambda word=word: service.query(text=word, limit=100), lambda: None,
                                  max(20, repeat // 5))
    return out


def _load_raw(server: Server, schema: str, n: int, end: int) -> None:
    """``n`` events of the workload over the last 24 h into a new ``schema`` the quickest way there is: raw
    ``COPY`` and one sessions UPSERT per batch (the honest baseline), made in slices so memory stays small."""
    import itertools

    import psycopg
    from vibekit_telemetry.model import TelemetryEvent
    from vibekit_telemetry_postgres import copy_row

    from vibekit_telemetry_postgres import PostgresStorage

    store = PostgresStorage.open(server.dsn, schema=schema, listen=False)
    store._ensure_partitions({t - t % store.span_ms for t in (end - 24 * 3_600_000, end)})
    store.close()
    copy_sql = f"COPY events ({_COLUMNS}, words) FROM STDIN"
    source = event_dicts(n, span_ms=24 * 3_600_000, end_ms=end)
    with psycopg.connect(server.dsn, options=f"-c search_path={schema}") as conn:
        while batch := [copy_row(TelemetryEvent.from_dict(d).to_row()) for d in itertools.islice(source, BATCH)]:
            with conn.transaction():
                last, called = conn.execute("SELECT last_value, is_called FROM events_seq").fetchone()
                with conn.cursor().copy(copy_sql) as copy:
                    for row in batch:
                        copy.write_row(row)
                conn.execute(_HONEST_SESSIONS, [batch[0][7], batch[-1][7], last if called else 0])
        conn.execute("ANALYZE")


def metrics_at_scale(server: Server, n: int, repeat: int) -> dict[str, Any]:
    """Shared rollups over a store that already holds ``n`` events: how long the cluster's counter (one process,
    by ``seq``) takes to count them in, and ``get_metrics("24h")`` next to the same figures as one SQL
    aggregate over the events."""
    import psycopg

    schema = _fresh_schema("metrics")
    end = now_ms()
    try:
        started = time.perf_counter()
        _load_raw(server, schema, n, end)
        load_s = time.perf_counter() - started
        with tempfile.TemporaryDirectory(prefix="vibekit-pg-metrics-") as tmp:
            started = time.perf_counter()
            service = TelemetryService(storage=[{"type": "postgres", "options": {"dsn": server.dsn, "schema": schema}}],
                                       data_dir=tmp, analytics={"enabled": True})
            constructor_s = time.perf_counter() - started
            try:
                analytics = service.host.meta["analytics"]["object"]
                if not analytics.wait_for_catch_up(900):
                    raise RuntimeError("the shared rollups did not count the store in within 900 s")
                catch_up_s = time.perf_counter() - started
                counted = service.get_metrics("48h").events.total
                if counted != n:
                    raise RuntimeError(f"the shared rollups counted {counted:,} of {n:,} events")
                day_ago = now_ms() - 86_400_000
                scan_sql = ("SELECT category, event_type, count(*) FROM events WHERE timestamp >= %s "
                            "GROUP BY category, event_type")
                durations_sql = ("SELECT ended_at - started_at FROM sessions WHERE ended_at >= %s AND has_start "
                                 "ORDER BY ended_at - started_at")
                with psycopg.connect(server.dsn, options=f"-c search_path={schema}", autocommit=True) as conn:
                    ours, raw = _paired_us(lambda: service.get_metrics("24h"),
                                           lambda: (conn.execute(scan_sql, [day_ago]).fetchall(),
                                                    conn.execute(durations_sql, [day_ago]).fetchall()), repeat)
            finally:
                service.shutdown()
    finally:
        server.drop(schema)
    return {"n": n, "load_s": load_s, "constructor_s": constructor_s, "catch_up_s": catch_up_s,
            "catch_up_events_per_s": n / catch_up_s, "get_metrics": ours, "sql_aggregate": raw}


def _stored_ids(server: Server, schema: str) -> set[str]:
    import psycopg

    with psycopg.connect(server.dsn) as conn:
        return {r[0] for r in conn.execute(f"SELECT id FROM {schema}.events")}


def scale_out(server: Server, duration: float) -> dict[str, Any]:
    """The 4-client HTTP load test of ``benchmarks.api_load`` against one ``telemetry api`` process on a
    PostgreSQL store, then against two processes on the same database (the clients shared out between them,
    as a load balancer would): events/s, latency, and that every acknowledged event was stored."""
    import json

    from benchmarks import api_load

    out: dict[str, Any] = {"duration_s": duration, "clients": 4}
    with tempfile.TemporaryDirectory(prefix="vibekit-pg-scale-") as tmp:
        for count in (1, 2):
            print(f"  the 4-client load test on {count} API process(es), {duration:.0f} s ...", flush=True)
            schema = _fresh_schema(f"api{count}")
            config = (f'\n[[storage]]\ntype = "postgres"\n[storage.options]\ndsn = {json.dumps(server.dsn)}\n'
                      f'schema = "{schema}"\n')
            servers = []
            try:
                for index in range(count):
                    workdir = Path(tmp) / f"{count}-{index}"
                    workdir.mkdir()
                    servers.append(api_load.Server(workdir, config))
                load = api_load.post_concurrently([srv.url for srv in servers], duration, clients=4)
            finally:
                for srv in servers:
                    srv.stop()
            try:
                stored = _stored_ids(server, schema)
            finally:
                server.drop(schema)
            out[f"{count}_process"] = {
                "events_per_s": load["events_per_s"], "p50_ms": load["p50_ms"], "p99_ms": load["p99_ms"],
                "requests": load["requests"], "acked": len(load["acked"]), "lost": len(set(load["acked"]) - stored),
                "server_errors": sum(c for status, c in load["statuses"].items() if status >= 500),
                "statuses": load["statuses"]}
    out["two_vs_one"] = out["2_process"]["events_per_s"] / out["1_process"]["events_per_s"]
    return out


def run(n: int, *, runs: int = 3, repeat: int = 300, insert_n: int | None = None, metrics_n: int | None = None,
        scale_duration: float | None = None) -> dict[str, Any]:
    """Every PostgreSQL figure at ``n`` events, or ``{"skipped": reason}`` when no server is available.

    ``insert_n``: how many rows the (slow) row-by-row baseline inserts, once; its rate is what is compared.
    """
    server = Server()
    reason = server.start()
    if reason is not None:
        return {"skipped": reason}
    try:
        result = _run(server, n, runs, repeat, insert_n or n)
        if metrics_n:
            print(f"  shared rollups over {metrics_n:,} stored events: counting them in, get_metrics ...", flush=True)
            result["metrics"] = metrics_at_scale(server, metrics_n, max(20, repeat // 5))
        if scale_duration:
            result["scale_out"] = scale_out(server, scale_duration)
        return result
    finally:
        server.stop()


def _run(server: Server, n: int, runs: int, repeat: int, insert_n: int) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(server.dsn) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
    end = now_ms()
    payload = list(event_dicts(n, span_ms=24 * 3_600_000, end_ms=end))
    rows = [e.to_row() for e in events(n, span_ms=24 * 3_600_000, end_ms=end)]
    prepared = sql_rows(rows)
    session_id = payload[0]["session_id"]  # a whole session: start, 10 chunks, end
    rates: dict[str, list[float]] = {"copy": [], "honest": [], "service": [], "one_writer": [], "sqlite": []}
    result: dict[str, Any] = {"n": n, "runs": runs, "batch": BATCH, "server": server.kind, "server_version": version}
    with tempfile.TemporaryDirectory(prefix="vibekit-pg-bench-") as tmp:
        workdir = Path(tmp)
        kept: TelemetryService | None = None
        kept_schema = ""
        for run_index in range(runs):
            print(f"  PostgreSQL run {run_index + 1}/{runs}: raw COPY, COPY + sessions UPSERT, the service (two "
                  "writers, one) ...",
                  flush=True)
            rates["copy"].append(ingest_copy(server, rows, prepared))
            rates["honest"].append(ingest_copy(server, rows, prepared, honest=True))
            last = run_index == runs - 1
            # the store's default (a large batch split over two connections), and one connection per batch,
            # in turns first (neither always gets the server fresh from the raw runs)
            for writers in ((None, 1) if run_index % 2 == 0 else (1, None)):
                schema = _fresh_schema("service")
                options = {"dsn": server.dsn, "schema": schema} | ({"writers": writers} if writers else {})
                rate, service = ingest_service({"type": "postgres", "options": options}, payload, workdir,
                                               keep=last and writers is None)
                rates["one_writer" if writers else "service"].append(rate)
                if service is not None:
                    kept, kept_schema = service, schema
                else:
                    server.drop(schema)
            path = workdir / f"sqlite-{run_index}.db"
            rate, _ = ingest_service({"type": "sqlite", "options": {"path": str(path)}}, payload, workdir)
            rates["sqlite"].append(rate)
            if not last:
                path.unlink()
                for extra in workdir.glob(f"{path.name}-*"):
                    extra.unlink()
        print(f"  PostgreSQL row-by-row executemany INSERT, {insert_n:,} rows ...", flush=True)
        result["executemany_n"] = insert_n
        executemany = ingest_executemany(server, rows[:insert_n], prepared[:insert_n])
        print("  reads on PostgreSQL and on SQLite ...", flush=True)
        assert kept is not None
        try:
            pg_reads = postgres_reads(kept, server, kept_schema, session_id, repeat)
        finally:
            kept.shutdown()
            server.drop(kept_schema)
        sqlite_service = _service({"type": "sqlite", "options": {"path": str(workdir / f"sqlite-{runs - 1}.db")}},
                                  workdir, 0)
        try:
            lite_reads = sqlite_reads(sqlite_service, session_id, repeat)
        finally:
            sqlite_service.shutdown()
    result["events_per_s"] = {k: _stats(v) for k, v in rates.items()}
    result["events_per_s"]["executemany"] = _stats([executemany])
    result["ratios"] = {
        "service_vs_copy": _stats([s / c for s, c in zip(rates["service"], rates["copy"], strict=True)]),
        "service_vs_honest": _stats([s / h for s, h in zip(rates["service"], rates["honest"], strict=True)]),
        "one_writer_vs_copy": _stats([s / c for s, c in zip(rates["one_writer"], rates["copy"], strict=True)]),
        "honest_vs_copy": _stats([h / c for h, c in zip(rates["honest"], rates["copy"], strict=True)]),
        "copy_vs_executemany": _stats([c / executemany for c in rates["copy"]]),
        "service_vs_sqlite": _stats([p / s for p, s in zip(rates["service"], rates["sqlite"], strict=True)]),
    }
    result["reads"] = pg_reads
    result["sqlite_reads"] = lite_reads
    return result


def summary(result: dict[str, Any]) -> str:
    """The figures as a few printed lines."""
    if "skipped" in result:
        return f"PostgreSQL benchmarks skipped: {result['skipped']}"
    rates, ratios, reads, lite = result["events_per_s"], result["ratios"], result["reads"], result["sqlite_reads"]
    lines = [f"PostgreSQL {result['server_version']} ({result['server']}), {result['n']:,} events x {result['runs']}:"]
    for name in ("copy", "honest", "executemany", "service", "one_writer", "sqlite"):
        lines.append(f"  {name:12} {rates[name]['median']:>10,.0f} events/s")
    for name, value in ratios.items():
        lines.append(f"  {name:20} {value['median']:.2f}")
    for name in ("get_session", "latest_100", "text_common", "text_prompt"):
        lines.append(f"  {name:12} p50 {reads[name]['p50']:8.0f} µs  raw SQL {reads[name + '_raw']['p50']:8.0f} µs  "
                     f"SQLite service {lite[name]['p50']:8.0f} µs")
    metrics = result.get("metrics")
    if metrics:
        lines.append(f"  shared rollups over {metrics['n']:,} stored events: counted in {metrics['catch_up_s']:.1f} s "
                     f"({metrics['catch_up_events_per_s']:,.0f} events/s, constructor {metrics['constructor_s']:.2f} s); "
                     f"get_metrics('24h') p50 {metrics['get_metrics']['p50']:,.0f} µs, the SQL aggregate "
                     f"{metrics['sql_aggregate']['p50']:,.0f} µs")
    scale = result.get("scale_out")
    if scale:
        for count in (1, 2):
            r = scale[f"{count}_process"]
            lines.append(f"  {count} API process(es), 4 clients: {r['events_per_s']:,.0f} events/s, p50 {r['p50_ms']:.1f} ms, "
                         f"p99 {r['p99_ms']:.1f} ms, 5xx {r['server_errors']}, lost {r['lost']} of {r['acked']:,}")
        lines.append(f"  two processes / one: {scale['two_vs_one']:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    extra = sys.argv[2:] == ["--all"]
    print(summary(run(size, runs=1, repeat=100, insert_n=min(size, 10_000), metrics_n=size if extra else None,
                      scale_duration=10.0 if extra else None)))
