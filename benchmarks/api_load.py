"""HTTP API throughput and a sustained load test against ``telemetry api`` running as its own process.

    uv run python -m benchmarks.api_load                  # batched, single-event and a 60 s load test (4 clients)
    uv run python -m benchmarks.api_load --duration 10    # a shorter load test

One client process posts to the server over keep-alive connections (httpx).
The load test runs four concurrent clients (threads with their own connections) and checks what matters
besides speed: no 5xx answer, and every
event the server acknowledged (202) is in the database after the server was
stopped with SIGTERM.  The server's peak RSS is sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil

from vibekit_telemetry import TelemetryService, now_ms


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank quantile of unsorted values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class Server:
    """``telemetry api`` in a fresh directory, as a subprocess."""

    def __init__(self, workdir: Path, config: str = "") -> None:
        """``config``: more of ``telemetry.toml`` (a storage plugin), after the data directory and name."""
        self.workdir = workdir
        (workdir / "telemetry.toml").write_text('data_dir = "data"\nservice_name = "api-bench"\n' + config)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_")}
        self.proc = subprocess.Popen([sys.executable, "-m", "vibekit_telemetry", "api", "--port", "0", "--no-rate-limit"],
                                     cwd=workdir, env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            match = re.search(r"listening on (http://\S+)", line)
            if match:
                self.url = match.group(1)
                self.ps = psutil.Process(self.proc.pid)
                # keep reading what it logs: a full stderr pipe would stop the server mid-test
                self.log: list[str] = []
                threading.Thread(target=self._drain_log, daemon=True).start()
                return
            if self.proc.poll() is not None:
                break
        self.proc.kill()
        raise RuntimeError("telemetry api did not start: " + self.proc.stderr.read())

    def _drain_log(self) -> None:
        for line in self.proc.stderr:
            self.log = [*self.log[-49:], line]

    def stop(self) -> float:
        """SIGTERM, then wait for the drain (everything accepted is written before the server exits); its seconds."""
        started = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(900)
        return time.perf_counter() - started

    def stored_ids(self) -> set[str]:
        with TelemetryService(data_dir=str(self.workdir / "data")) as service:
            return {e.id for e in service.iter_events(order="asc")}


def _batches(batch: int, session_every: int = 12, prefix: str = "s") -> Any:
    """Realistic event dicts: sessions of a start, ten chunks and an end, sent ``batch`` at a time (the session
    ids start with ``prefix``: each client has sessions of its own)."""
    n = 0
    while True:
        out = []
        for _ in range(batch):
            sid = f"{prefix}{n // session_every}"
            kind = n % session_every
            event = {"category": "claude", "session_id": sid, "timestamp": now_ms()}
            if kind == 0:
                event.update(event_type="start", agent="claude", mode="chat", prompt="Summarise the release notes",
                             metadata={"model": "claude-sonnet-4-5"})
            elif kind == session_every - 1:
                event.update(event_type="end", status="completed",
                             metadata={"model": "claude-sonnet-4-5", "input_tokens": 900, "output_tokens": 300})
            else:
                event.update(event_type="stream", stream_data="Here is part of the answer, streamed. " * 2)
            out.append(event)
            n += 1
        yield orjson.dumps(out)


def post_batches(url: str, seconds: float, batch: int = 100, sample: Any = None, prefix: str = "s"
                 ) -> dict[str, Any]:
    """Post batches for ``seconds``; events/s, request latency, status counts and the acknowledged ids."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    acked: list[str] = []
    source = _batches(batch, prefix=prefix)
    with httpx.Client(base_url=url, timeout=30, headers={"content-type": "application/json"}) as client:
        started = time.perf_counter()
        last_sample = 0.0
        while (now := time.perf_counter()) - started < seconds:
            body = next(source)
            t0 = time.perf_counter()
            response = client.post("/api/events", content=body)
            latencies.append((time.perf_counter() - t0) * 1000)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code == 202:
                acked.extend(response.json()["ids"])
            elif response.status_code == 429:  # shed by an overloaded server: wait as it asks, like a real client
                time.sleep(float(response.headers.get("retry-after", "1")))
            if sample is not None and now - last_sample > 0.2:
                sample()
                last_sample = now
        elapsed = time.perf_counter() - started
    return {"events_per_s": len(acked) / elapsed, "requests": len(latencies), "p50_ms": percentile(latencies, 0.5),
            "p99_ms": percentile(latencies, 0.99), "statuses": statuses, "acked": acked}


def post_concurrently(url: str | list[str], seconds: float, clients: int, sample: Any = None) -> dict[str, Any]:
    """``clients`` threads, each with its own connection, posting batches for ``seconds``; merged figures.

    With several ``url``s the clients take them in turn (client ``i`` posts to ``url[i % len(url)]``), as a
    load balancer in front of several servers would share them out.
    """
    urls = [url] if isinstance(url, str) else url
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        result = post_batches(urls[index % len(urls)], seconds, sample=sample if index == 0 else None,
                              prefix=f"c{index}-s")
        with lock:
            results.append(result)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    statuses: dict[int, int] = {}
    for result in results:
        for status, count in result["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    acked = [event_id for result in results for event_id in result["acked"]]
    latencies = [result["p99_ms"] for result in results]
    return {"events_per_s": len(acked) / elapsed, "requests": sum(r["requests"] for r in results),
            "p50_ms": statistics.median(r["p50_ms"] for r in results), "p99_ms": max(latencies),
            "statuses": statuses, "acked": acked, "clients": clients}


def post_single(url: str, seconds: float) -> dict[str, Any]:
    """One event per request for ``seconds``."""
    source = _batches(1)
    count = 0
    with httpx.Client(base_url=url, timeout=30, headers={"content-type": "application/json"}) as client:
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            if client.post("/api/events", content=next(source)).status_code == 202:
                count += 1
        elapsed = time.perf_counter() - started
    return {"requests_per_s": count / elapsed}


def run(duration: float, throughput_s: float = 10.0) -> dict[str, Any]:
    """Throughput figures and the load test, each on a fresh server."""
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="vibekit-api-bench-") as tmp:
        workdir = Path(tmp) / "throughput"
        workdir.mkdir()
        server = Server(workdir)
        try:
            post_batches(server.url, 1.0)  # warm up
            batched = post_batches(server.url, throughput_s)
            single = post_single(server.url, throughput_s / 2)
        finally:
            server.stop()
        results["batched"] = {k: v for k, v in batched.items() if k != "acked"}
        results["single"] = single

        workdir = Path(tmp) / "load"
        workdir.mkdir()
        server = Server(workdir)
        peak = [0]

        def sample() -> None:
            try:
                rss = server.ps.memory_info().rss
            except psutil.Error:
                return
            peak[0] = max(peak[0], rss)

        drain_s = None
        try:
            load = post_concurrently(server.url, duration, clients=4, sample=sample)
        finally:
            drain_s = server.stop()  # the backlog the load left (queue and spill journal) is written first
        stored = server.stored_ids()
        lost = len(set(load["acked"]) - stored)
        errors = sum(count for status, count in load["statuses"].items() if status >= 500)
        results["load"] = {"duration_s": duration, "clients": load["clients"], "events_per_s": load["events_per_s"], "p50_ms": load["p50_ms"],
                           "p99_ms": load["p99_ms"], "requests": load["requests"], "acked": len(load["acked"]),
                           "stored": len(stored), "lost": lost, "server_errors": errors,
                           "peak_rss_mb": peak[0] / 2**20, "statuses": load["statuses"], "shutdown_drain_s": drain_s}
    return results


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.api_load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of the load test (default 60)")
    args = parser.parse_args(argv)
    results = run(args.duration)
    print(json.dumps(results, indent=2))
    load = results["load"]
    ok = load["lost"] == 0 and load["server_errors"] == 0
    print(f"HTTP ingest batched: {results['batched']['events_per_s']:,.0f} events/s; "
          f"single-event POSTs: {results['single']['requests_per_s']:,.0f}/s; "
          f"load test: {load['events_per_s']:,.0f} events/s over {load['duration_s']:.0f} s, p99 {load['p99_ms']:.1f} ms, "
          f"peak RSS {load['peak_rss_mb']:.0f} MB, 5xx {load['server_errors']}, lost {load['lost']} -> "
          f"{'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
