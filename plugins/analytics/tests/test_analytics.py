"""The analytics plugin against brute force over the stored events, on real SQLite files."""

from __future__ import annotations

import json
import math
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from vibekit_telemetry import Anomaly, ConfigError, TelemetryService, hookimpl, new_id, now_ms
from vibekit_telemetry_analytics import AnalyticsPlugin
from vibekit_telemetry_analytics.detectors import LikelihoodDetector, scores
from vibekit_telemetry_analytics.prices import Price, PriceTable
from vibekit_telemetry_analytics.rollup import Rollups

NAB = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "nab"
MODELS = ["claude-3-5-sonnet-20241022", "gpt-4o-mini", "my-local-model"]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _service(**options):
    options.setdefault("analytics", {"enabled": True})
    return TelemetryService(**options)


def _caught_up(t):
    """``t`` once its analytics rollups count every stored event (a start over an existing store counts them in)."""
    assert t.host.meta["analytics"]["object"].wait_for_catch_up(60), "the analytics recount never finished"
    return t


def _workload(t, n_sessions=300, seed=7, span_ms=3 * 3_600_000):
    """Sessions over the last few hours: random durations, chunks, tokens, failures, errors, open sessions."""
    rng = random.Random(seed)
    end = now_ms() - 60_000
    for i in range(n_sessions):
        start = end - rng.randrange(span_ms)
        agent = rng.choice(["claude", "codex", "gemini"])
        model = rng.choice(MODELS)
        sid = t.track_start(agent, "code", f"prompt {i}", metadata={"model": model}, timestamp=start)
        offset = rng.randrange(50, 2000)
        for c in range(rng.randrange(0, 6)):
            t.track_stream(sid, f"chunk {c}", timestamp=start + offset + c * 10)
        if rng.random() < 0.1:
            t.track_error(sid, RuntimeError(rng.choice(["timeout", "rate limited"])), timestamp=start + offset + 80)
        if rng.random() < 0.05:
            continue  # never ends
        status = "failed" if rng.random() < 0.15 else "completed"
        t.track_end(sid, status, timestamp=start + offset + rng.randrange(100, 30_000),
                    metadata={"input_tokens": rng.randrange(100, 5000), "output_tokens": rng.randrange(10, 800),
                              "cache_read_tokens": rng.randrange(0, 50)})
    for i in range(40):
        t.track({"category": "clicks", "action": "button", "value": i, "timestamp": end - rng.randrange(span_ms)})


def _brute(t, start, end):
    """The same figures computed the slow way: every stored event and session in the window."""
    events = [e for e in t.query(since=start, until=end - 1, limit=1_000_000)]
    ends = [e for e in events if e.event_type == "end"]
    durations, ttfts, failed = [], [], 0
    for e in ends:
        session = t.get_session(e.session_id)
        if e.status == "failed":
            failed += 1
        if session.has_start:
            durations.append(e.timestamp - session.started_at)
            if session.first_stream_at is not None:
                ttfts.append(session.first_stream_at - session.started_at)
    return {
        "events": len(events), "errors": sum(e.event_type == "error" for e in events),
        "started": sum(e.event_type == "start" for e in events), "ended": len(ends), "failed": failed,
        "durations": sorted(durations), "ttfts": sorted(ttfts),
        "input": sum(e.metadata.get("input_tokens", 0) for e in ends),
    }


def _quantile(values, q):
    return values[max(0, math.ceil(q * len(values)) - 1)]


def _assert_matches(metrics, brute):
    assert metrics.events.total == brute["events"]
    assert metrics.errors.total == brute["errors"]
    assert metrics.sessions.started == brute["started"]
    assert metrics.sessions.ended == brute["ended"] and metrics.sessions.failed == brute["failed"]
    assert metrics.tokens.input == brute["input"]
    durations = brute["durations"]
    assert metrics.performance.avg_latency == pytest.approx(sum(durations) / len(durations), rel=1e-6)
    for q, got in ((0.5, metrics.performance.p50_latency), (0.95, metrics.performance.p95_latency),
                   (0.99, metrics.performance.p99_latency)):
        assert got == pytest.approx(_quantile(durations, q), rel=0.025)  # 2% histogram bins
    assert metrics.performance.avg_ttft == pytest.approx(sum(brute["ttfts"]) / len(brute["ttfts"]), rel=1e-6)


def test_metrics_match_brute_force_across_restart_clean_and_rebuild(in_tmp):
    now = now_ms()
    window = (now - now % 60_000 - 4 * 3_600_000, now - now % 60_000 + 60_000)
    with _service() as t:
        _workload(t)
        metrics = t.get_metrics(window)
        _assert_matches(metrics, _brute(t, *window))
        assert metrics.sessions.failed > 0 and metrics.errors.total > 0
        assert set(metrics.by_model) == set(MODELS)
        assert metrics.events.per_minute == pytest.approx(metrics.events.total / 241, rel=1e-3)
        assert sum(b.events for b in metrics.by_category.values()) == metrics.events.total
    # restart: the rollup file brings back the same figures
    with _service() as t:
        assert t.get_metrics(window) == metrics
        # retention cleaning: what was deleted leaves the rollups too, the straddling hour is recounted
        t.clean(retention_days=(90 * 60_000) / 86_400_000)
        cleaned = t.get_metrics(window)
        _assert_matches(cleaned, _brute(t, *window))
        assert cleaned.events.total < metrics.events.total
    # a new rollup file over the existing database counts it in at the first start
    (in_tmp / ".vibekit" / "analytics.db").unlink()
    with _service() as t:
        assert _caught_up(t).get_metrics(window).events.total == cleaned.events.total


def test_windows_inside_an_hour_and_across_hours_agree_with_brute_force(in_tmp):
    with _service() as t:
        _workload(t, n_sessions=200, seed=3)
        now = now_ms()
        for window in ((now - 17 * 60_000, now), (now - 2 * 3_600_000 - 7 * 60_000, now - 23 * 60_000)):
            metrics = t.get_metrics(window)
            assert (metrics.start, metrics.end) == (window[0] - window[0] % 60_000, window[1] + (-window[1] % 60_000))
            brute = _brute(t, metrics.start, metrics.end)  # windows are resolved to whole minutes
            assert metrics.events.total == brute["events"]
            assert metrics.sessions.ended == brute["ended"]


def test_tokens_and_cost_per_model_price_cached_and_failed_calls_right(in_tmp):
    with _service(analytics={"enabled": True, "prices": {"my-local-model": {"input": 1.0, "output": 2.0}}}) as t:
        for status in ("completed", "failed"):
            sid = t.track_start("a", "chat", "p", metadata={"model": "claude-3-5-sonnet-20241022"})
            t.track_end(sid, status, metadata={"input_tokens": 1_000_000, "output_tokens": 100_000,
                                               "cache_read_tokens": 400_000, "cache_creation_tokens": 100_000})
        sid = t.track_start("b", "chat", "p", metadata={"model": "my-local-model"})
        t.track_end(sid, metadata={"gen_ai.usage.input_tokens": 2_000_000, "gen_ai.usage.output_tokens": 500_000})
        sid = t.track_start("c", "chat", "p", metadata={"model": "unpriced-model"})
        t.track_end(sid, metadata={"input_tokens": 10})
        metrics = t.get_metrics("1h")
    sonnet = metrics.by_model["claude-3-5-sonnet-20241022"].tokens
    # 500k uncached x $3 + 400k cache reads x $0.30 + 100k cache writes x $3.75 + 100k output x $15; failed call free
    assert sonnet.cost == pytest.approx(1.5 + 0.12 + 0.375 + 1.5)
    assert sonnet.input == 2_000_000 and sonnet.total == 2_200_000
    assert metrics.by_model["my-local-model"].tokens.cost == pytest.approx(2.0 + 1.0)
    assert metrics.by_model["unpriced-model"].tokens.cost is None
    assert metrics.cost == pytest.approx(3.495 + 3.0)


def test_price_table_lookup_and_subsets():
    table = PriceTable({"acme-1": {"input": 1.0, "output": 1.0}})
    assert table.lookup("anthropic/claude-3-5-sonnet-20241022") == table.lookup("claude-3-5-sonnet")
    assert table.lookup("gpt-4o-mini-2024-07-18").input == 0.15  # the longest prefix wins over gpt-4o
    assert table.lookup("ACME-1").input == 1.0 and table.lookup("nothing-like-it") is None
    price = Price(input=10, output=20, cache_read=1, cache_write=12, reasoning=30)
    # 1M input of which 300k cache reads and 100k writes; 1M output of which 200k reasoning
    assert price.cost([1_000_000, 1_000_000, 300_000, 100_000, 200_000]) == pytest.approx(6 + 0.3 + 1.2 + 16 + 6)
    assert PriceTable(bill_failed=True).cost("gpt-4o", [1_000_000, 0, 0, 0, 0], [1_000_000, 0, 0, 0, 0]) == 2.5
    assert PriceTable().cost("gpt-4o", [1_000_000, 0, 0, 0, 0], [1_000_000, 0, 0, 0, 0]) == 0


def test_custom_metrics_counter_gauge_histogram(in_tmp):
    with _service() as t:
        t.define_metric("jobs_done", "counter", "jobs", "finished jobs")
        t.define_metric("queue_depth", type="gauge", unit="jobs")
        t.define_metric("request_ms", type="histogram", unit="ms")
        base = now_ms() - 5000
        for i, value in enumerate([1, 2, 3, 4]):
            t.track({"category": "metrics", "action": "jobs_done", "value": value, "timestamp": base + i})
            t.track({"category": "metrics", "action": "queue_depth", "value": 10 - value, "timestamp": base + i})
        for i in range(1, 101):
            t.track({"category": "metrics", "action": "request_ms", "value": i, "timestamp": base + i})
        custom = t.get_metrics("1h").custom
        series = t.metric_series("jobs_done", "10m")
    assert (custom["jobs_done"].value, custom["jobs_done"].unit) == (10, "jobs")
    assert (custom["queue_depth"].value, custom["queue_depth"].min, custom["queue_depth"].max) == (6, 6, 9)
    assert custom["request_ms"].avg == pytest.approx(50.5)
    assert custom["request_ms"].p95 == pytest.approx(95, rel=0.03)
    assert sum(v for _, v in series) == 10
    with _service() as t:  # definitions survive a restart
        assert t.get_metrics("1h").custom["queue_depth"].type == "gauge"
        with pytest.raises(ValueError, match="counter, gauge or histogram"):
            t.define_metric("x", "summary")


def test_insights_name_hot_spots_unfinished_sessions_and_changes(in_tmp):
    with _service() as t:
        now = now_ms()
        for i in range(10):  # previous hour: quiet and healthy
            sid = t.track_start("codex", "code", "p", timestamp=now - 90 * 60_000 + i)
            t.track_end(sid, timestamp=now - 90 * 60_000 + 1000 + i)
        for i in range(30):  # this hour: busier, slower, failing
            sid = t.track_start("claude", "code", "p", metadata={"model": "gpt-4o"}, timestamp=now - 50 * 60_000 + i)
            t.track_error(sid, "upstream timeout", timestamp=now - 50 * 60_000 + 500 + i)
            t.track_end(sid, "failed", timestamp=now - 50 * 60_000 + 9000 + i)
        stuck = t.track_start("gemini", "chat", "p", timestamp=now - 45 * 60_000)
        insights = t.get_insights("1h")
        only_codex = t.get_insights("1h", categories=["codex"])
    assert insights.busiest_agents[0].subject == "claude"
    assert insights.error_hot_spots[0].subject == "claude"
    assert insights.error_hot_spots[0].details["top_messages"][0] == ("upstream timeout", 30)
    assert [f.subject for f in insights.unfinished_sessions] == [stuck]
    assert insights.changes["events"]["previous"] == 20 and insights.changes["events"]["current"] == 91
    assert any("never ended" in line for line in insights.summary)
    assert only_codex.error_hot_spots == [] and only_codex.unfinished_sessions == []


def test_detector_never_looks_ahead_and_finds_a_spike():
    rng = random.Random(1)
    values = [10 + rng.gauss(0, 1) for _ in range(600)]
    changed = values[:400] + [v * 3 for v in values[400:]]
    assert scores(values)[:400] == scores(changed)[:400]
    spiked = values[:500] + [40.0] + values[501:]
    detector = LikelihoodDetector()
    flagged = [i for i, v in enumerate(spiked) if detector.update(v) >= 0.95]
    assert 500 in flagged and len([i for i in flagged if i < 500]) <= 5  # noise alone rarely reaches the threshold


def _traffic(t, start, minutes, *, burst_at, burst=60, seed=5):
    """Four to six events a minute for ``minutes`` minutes from ``start``, and ``burst`` of them in minute ``burst_at``."""
    rng = random.Random(seed)
    for minute in range(minutes):
        for i in range(burst if minute == burst_at else rng.randrange(4, 7)):
            t.track({"category": "c", "timestamp": start + minute * 60_000 + i})


def test_detect_anomalies_over_stored_history_and_on_anomaly(in_tmp):
    with _service() as t:
        clock = now_ms()  # read once: two reads can straddle a minute boundary
        now = clock - clock % 60_000
        _traffic(t, now - 120 * 60_000, 120, burst_at=110)
        seen = []
        t.on("anomaly", seen.append)
        found = t.detect_anomalies(["throughput"], (now - 120 * 60_000, now), sensitivity="medium")
        assert seen == [], "looking at the history announces nothing (the alerts would repeat at every look)"
        assert t.detect_anomalies(["throughput"], (now - 120 * 60_000, now), emit=True) == found
    assert [a.timestamp for a in found] == [now - 10 * 60_000]
    assert found[0].value == 60 and found[0].expected_high < 60 and "throughput" in found[0].description
    assert seen == found


class _Hook(BaseHTTPRequestHandler):
    received: list = []
    status = 200

    def do_POST(self):  # noqa: N802 - the http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).received.append((self.path, body, self.headers.get("X-Token")))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_alerts_reach_a_real_webhook_deduplicated_and_a_failing_channel_breaks_nothing(in_tmp):
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    _Hook.received = []
    alerts = {"enabled": True, "dedupe_window": "10m", "channels": [
        {"type": "webhook", "url": f"{url}/hook", "headers": {"X-Token": "t0k"}},
        {"type": "slack", "url": f"{url}/slack"},
        {"type": "webhook", "url": "http://127.0.0.1:9/unreachable", "max_attempts": 2, "timeout_ms": 200},
    ]}
    try:
        with _service(analytics={"enabled": True, "alerts": alerts}) as t:
            plugin = t.host.meta["analytics"]["object"]
            ts = now_ms()
            for offset in (0, 60_000):  # the second is a repeat within the dedupe window
                t.emit("anomaly", Anomaly(metric="error_rate", timestamp=ts + offset, value=40.0, expected_low=0,
                                          expected_high=5, score=0.999, severity="high", description="error rate 40%"))
            t.track({"category": "still-tracking"})
            plugin.alerts.flush()
            stats = plugin.alerts.stats()
            assert len(t.query(category="still-tracking")) == 1
            assert t.get_health_status().components["analytics"]["alerts"] == stats
    finally:
        server.shutdown()
    paths = sorted(path for path, _, _ in _Hook.received)
    assert paths == ["/hook", "/slack"]
    hook = next(body for path, body, _ in _Hook.received if path == "/hook")
    assert hook["metric"] == "error_rate" and hook["severity"] == "high" and hook["expected"] == [0, 5]
    assert next(token for path, _, token in _Hook.received if path == "/hook") == "t0k"
    assert "error_rate" in next(body for path, body, _ in _Hook.received if path == "/slack")["text"]
    assert stats == {"sent": 2, "failed": 1, "deduplicated": 1, "dropped": 0}


def _telemetry(*args, cwd=None):
    """The real ``telemetry`` command (plugin commands come from entry points, as for a user)."""
    return subprocess.run([sys.executable, "-m", "vibekit_telemetry", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_metrics_and_analytics_commands(in_tmp):
    with TelemetryService() as t:  # recorded without analytics: the commands count the database in
        _workload(t, n_sessions=60, seed=11)
    result = _telemetry("metrics", "--since", "6h", "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["sessions"]["started"] == 60 and data["performance"]["p95_latency"] > 0
    for args, expected in ((["analytics", "performance", "--since", "6h"], "p95"),
                           (["analytics", "insights", "--since", "6h"], "busiest agents"),
                           (["analytics", "anomalies", "--since", "6h", "--sensitivity", "high"], ""),
                           (["analytics", "dashboard", "--once"], "events per minute"),
                           (["metrics"], "latency ms")):
        result = _telemetry(*args)
        assert result.returncode == 0, (args, result.stderr)
        assert expected in result.stdout


def test_looking_at_anomalies_sends_no_alerts(in_tmp):
    """The history found again at every look (CLI, API, dashboard) must not reach the alert channels again."""
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hook.received = []
    (in_tmp / "telemetry.toml").write_text(
        "[analytics.alerts]\nenabled = true\n[[analytics.alerts.channels]]\n"
        f'type = "webhook"\nurl = "http://127.0.0.1:{server.server_port}/hook"\n')
    try:
        clock = now_ms()
        now = clock - clock % 60_000
        with TelemetryService() as t:
            _traffic(t, now - 120 * 60_000, 120, burst_at=110)
        looked = _telemetry("analytics", "anomalies", "--since", "3h", "--metric", "throughput", "--format", "json")
        assert looked.returncode == 0, looked.stderr
        assert [a["timestamp"] for a in json.loads(looked.stdout)] == [now - 10 * 60_000]
        with TelemetryService(analytics={"enabled": True}) as t:  # as the CLI starts it; announced, it is sent
            t.emit("anomaly", Anomaly(metric="throughput", timestamp=now, value=60.0, severity="high"))
    finally:
        server.shutdown()
    assert [(path, body["timestamp"]) for path, body, _ in _Hook.received] == [("/hook", now)]


def test_nab_scorer_on_a_hand_made_series(tmp_path):
    from vibekit_telemetry_analytics import nab

    import datetime as dt

    times = [dt.datetime(2020, 1, 1) + dt.timedelta(minutes=i) for i in range(1000)]
    windows = [(times[600], times[699])]
    # a detection at the window's left edge is worth the full A_TP; a miss costs A_FN
    assert nab.score_series(times, [600], windows)[0] == pytest.approx(1.0)
    assert nab.score_series(times, [], windows)[0] == -1.0
    # detections in probation (first 15%) do not count; one false positive before any window costs A_FP
    assert nab.score_series(times, [10, 300, 600], windows)[0] == pytest.approx(1.0 - 0.11)
    raw, hits, fp = nab.score_series(times, [650, 800, 801, 900], windows)
    assert hits == 1 and fp == 2 and raw < 1.0


@pytest.mark.skipif(not (NAB / "labels" / "combined_windows.json").exists(),
                    reason="the NAB corpus is not at ../shared/data/nab (see ../shared/data/README.md)")
def test_nab_evaluator_meets_the_floor():
    result = _telemetry("analytics", "evaluate", "--nab", str(NAB))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1].startswith("NAB standard score: ")
    assert float(lines[-1].split(": ")[1]) >= 40
    noise = next(line for line in lines if line.startswith("artificialNoAnomaly"))
    assert float(noise.split(", ")[-1].split()[0]) <= 2.0


def test_continuous_detection_fires_on_anomaly_for_new_minutes(in_tmp, monkeypatch):
    import vibekit_telemetry_analytics as module

    real_now = now_ms()
    base = real_now - real_now % 60_000 - 200 * 60_000
    with _service(analytics={"enabled": True, "anomaly": {"enabled": True, "metrics": ["throughput"],
                                                         "interval": 3_600_000}}) as t:
        _traffic(t, base, 121, burst_at=110, seed=9)
        t.flush()
        seen = []
        t.on("anomaly", seen.append)
        plugin = t.host.meta["analytics"]["object"]
        monkeypatch.setattr(module, "now_ms", lambda: base + 100 * 60_000 + 5)  # the clock is the one thing faked
        plugin._watch()  # primes the detector on the last hour, reports nothing old
        assert seen == []
        monkeypatch.setattr(module, "now_ms", lambda: base + 121 * 60_000 + 5)
        plugin._watch()
    assert [(a.metric, a.timestamp, a.value) for a in seen] == [("throughput", base + 110 * 60_000, 60.0)]


def test_the_first_traffic_of_a_new_installation_is_no_anomaly(in_tmp, monkeypatch):
    """Minutes before anything was recorded are no history: steady traffic that starts is not flagged."""
    import vibekit_telemetry_analytics as module

    real_now = now_ms()
    base = real_now - real_now % 60_000 - 200 * 60_000
    rng = random.Random(3)
    with _service(analytics={"enabled": True, "anomaly": {"enabled": True, "metrics": ["throughput", "tokens"],
                                                         "interval": 3_600_000}}) as t:
        seen = []
        t.on("anomaly", seen.append)
        plugin = t.host.meta["analytics"]["object"]
        monkeypatch.setattr(module, "now_ms", lambda: base + 100 * 60_000 + 5)
        plugin._watch()  # an hour of nothing: the installation is new
        for minute in range(100, 160):
            for i in range(rng.randrange(4, 7)):
                t.track({"category": "c", "timestamp": base + minute * 60_000 + i,
                         "metadata": {"input_tokens": rng.randrange(90, 110)}})
        t.flush()
        monkeypatch.setattr(module, "now_ms", lambda: base + 160 * 60_000 + 5)
        plugin._watch()
        assert seen == [], "the live watcher judged the first traffic from the silence before it"
        history = t.detect_anomalies(["throughput", "tokens"], (base, base + 160 * 60_000))
        assert history == [], "the stored history was judged from the silence before it"
        # a burst after the traffic began is still found, live and in the history
        for i in range(80):
            t.track({"category": "c", "timestamp": base + 160 * 60_000 + i})
        t.flush()
        monkeypatch.setattr(module, "now_ms", lambda: base + 161 * 60_000 + 5)
        plugin._watch()
        assert [a.timestamp for a in seen if a.metric == "throughput"] == [base + 160 * 60_000]
        later = t.detect_anomalies(["throughput"], (base, base + 161 * 60_000))
        assert [a.timestamp for a in later] == [base + 160 * 60_000]


def test_the_anomalies_page_finds_what_was_announced_live(in_tmp, monkeypatch):
    """Forty minutes of history, then a burst: the live watcher and an on-demand check agree on it."""
    import vibekit_telemetry_analytics as module

    real_now = now_ms()
    base = real_now - real_now % 60_000 - 100 * 60_000
    with _service(analytics={"enabled": True, "anomaly": {"enabled": True, "metrics": ["throughput"]}}) as t:
        _traffic(t, base, 41, burst_at=40, burst=50, seed=8)
        t.flush()
        seen = []
        t.on("anomaly", seen.append)
        plugin = t.host.meta["analytics"]["object"]
        monkeypatch.setattr(module, "now_ms", lambda: base + 40 * 60_000 + 5)
        plugin._watch()
        monkeypatch.setattr(module, "now_ms", lambda: base + 41 * 60_000 + 5)
        plugin._watch()
        found = t.detect_anomalies(["throughput"], (base - 60 * 60_000, base + 41 * 60_000))
    assert [a.timestamp for a in seen] == [base + 40 * 60_000]
    assert [a.timestamp for a in found] == [base + 40 * 60_000]


def test_rollups_left_by_a_crash_are_recounted_at_the_next_start(in_tmp):
    script = in_tmp / "crash.py"
    script.write_text(
        "import os\n"
        "from vibekit_telemetry import TelemetryService\n"
        "t = TelemetryService(analytics={'enabled': True})\n"
        "for i in range(50):\n"
        "    t.track({'category': 'crash', 'value': i})\n"
        "t.flush()\n"
        "os._exit(0)  # no shutdown: the rollups of these events were never written\n"
    )
    subprocess.run([sys.executable, str(script)], check=True, cwd=in_tmp)
    with _service() as t:
        assert _caught_up(t).get_metrics("1h").by_category["crash"].events == 50


def test_cleaning_while_another_thread_tracks_neither_deadlocks_nor_miscounts(in_tmp):
    stop = threading.Event()
    with _service(stream_batch_size=20, stream_flush_interval=10) as t:
        base = now_ms()
        for i in range(200):
            t.track({"category": "old", "timestamp": base - 3 * 86_400_000 + i})

        def produce():
            i = 0
            while not stop.is_set():
                t.track({"category": "live", "timestamp": base - 30 * 60_000 + i})
                i += 1
                if i % 20 == 0:
                    time.sleep(0.002)  # a busy app, not an overload (that is the reliability tests' business)

        worker = threading.Thread(target=produce)
        worker.start()
        try:
            for _ in range(5):
                cleaner = threading.Thread(target=t.clean, args=(1,))
                cleaner.start()
                cleaner.join(timeout=30)
                assert not cleaner.is_alive(), "clean deadlocked against the flusher"
        finally:
            stop.set()
            worker.join()
        t.flush()
        metrics = t.get_metrics("2h")
        stored = len(t.query(category="live", limit=1_000_000))
    assert "old" not in metrics.by_category
    assert metrics.by_category["live"].events == stored


def test_an_event_after_a_session_ended_does_not_make_it_active_again(in_tmp):
    with _service() as t:
        sid = t.track_start("claude", "chat", "p")
        t.track_end(sid)
        t.track({"category": "feedback", "session_id": sid, "action": "thumbs-up", "value": 1})
        open_sid = t.track_start("claude", "chat", "still going")
        metrics = t.get_metrics("1h")
    assert metrics.sessions.active == 1 and open_sid


def test_thousands_of_client_chosen_names_fold_into_other_and_totals_stay_exact(in_tmp):
    """5,000 categories and 5,000 models (ingest clients choose them): capped groups plus ``other``, exact totals."""
    n = 5000
    cap = AnalyticsPlugin.Config().max_categories
    assert cap == AnalyticsPlugin.Config().max_models < n
    base = now_ms() - 20 * 60_000
    stamps = [base + i * 100 for i in range(n)]
    window = (base - 60_000, stamps[-1] + 120_000)
    expected_cost = 0.0
    with _service() as t:
        # a new rollup file starts with a recount of the (empty) store: done before the burst, so every
        # event is counted live in arrival order, which decides the names each minute bucket keeps
        _caught_up(t)
        for i, ts in enumerate(stamps):
            model = f"gpt-4o-{i}" if i % 2 else f"acme-{i}"  # half at gpt-4o's list price, half unpriced
            failed = i % 10 == 1  # priced, and failed: free
            sid = t.track_start(f"agent-{i}", "code", "p", metadata={"model": model}, timestamp=ts)
            t.track_end(sid, "failed" if failed else "completed", timestamp=ts + 50,
                        metadata={"input_tokens": 1000 + i, "output_tokens": 100})
            if i % 2 and not failed:
                expected_cost += ((1000 + i) * 2.50 + 100 * 10.0) / 1_000_000
        sid = t.track_start("other", "code", "p", timestamp=base)  # a category really named "other"
        t.track_end(sid, timestamp=base + 10)
        metrics = t.get_metrics(window)
        folded_hours = t.get_health_status().components["analytics"]["folded_events"]
        assert not metrics.catching_up

        cats, models = metrics.by_category, metrics.by_model
        assert len(cats) == cap + 1 and len(models) == cap + 1 and "other" in cats and "other" in models
        # totals count every event, kept or folded
        assert metrics.events.total == 2 * n + 2 and metrics.sessions.ended == n + 1
        assert metrics.tokens.input == sum(1000 + i for i in range(n))
        assert metrics.cost == pytest.approx(expected_cost, rel=1e-9)
        assert sum(b.events for b in cats.values()) == metrics.events.total
        assert sum(b.events for b in models.values()) == 2 * n  # the "other" category's session names no model
        assert sum(b.sessions.ended for b in cats.values()) == n + 1
        for groups in (cats, models):
            assert sum(b.tokens.input for b in groups.values()) == metrics.tokens.input
            # each group's cost is rounded to a millionth of a dollar
            assert sum(b.tokens.cost or 0 for b in groups.values()) == pytest.approx(expected_cost, abs=len(groups) * 5e-7)
        # the folding is counted; the real "other" category is in the bucket, not in the count
        assert metrics.folded_events == {"category": cats["other"].events - 2, "model": models["other"].events}
        assert metrics.folded_events["category"] >= 2 * (n - cap)
        assert folded_hours["category"] > 0 and folded_hours["model"] > 0
        # a name that kept its own group has its own exact figures
        kept = next(name for name in cats if name != "other")
        i = int(kept.removeprefix("agent-"))
        assert (cats[kept].events, cats[kept].tokens.input) == (2, 1000 + i)

    with _service() as t:  # the rollup file brings back the same figures, and its buckets are still full
        # closed cleanly: nothing to recount, the figures come from the file itself
        assert t.host.meta["analytics"]["object"].wait_for_catch_up(0)
        assert t.get_metrics(window) == metrics
        assert t.get_health_status().components["analytics"]["folded_events"] == folded_hours
        # the hour of the middle event holds at least n / 2 names: a newcomer there is folded at once
        t.track({"category": "newcomer", "timestamp": stamps[n // 2] + 1})
        t.flush()
        after = t.get_health_status().components["analytics"]["folded_events"]
    assert after == {"category": folded_hours["category"] + 1, "model": folded_hours["model"]}


def test_a_window_keeps_its_busiest_names_and_folds_the_rest(in_tmp):
    minute, hour = 60_000, 3_600_000
    now = now_ms()
    m0 = now - now % hour + 5 * minute
    if m0 + 2 * minute > now:  # the first minutes of an hour: use the previous hour
        m0 -= hour
    with _service(analytics={"enabled": True, "max_categories": 2, "max_models": 2}) as t:
        events = [("a", 5, m0), ("b", 1, m0), ("c", 4, m0 + minute), ("d", 1, m0 + minute)]
        for category, count, ts in events:
            for i in range(count):
                t.track({"category": category, "timestamp": ts + i})
        # two minutes: each minute bucket kept its two names, the window has four and keeps the busiest two
        minutes = t.get_metrics((m0, m0 + 2 * minute))
        # the whole hour: the hour bucket kept the first two names it saw (a, b) and folded c and d as they came
        whole_hour = t.get_metrics((m0 - m0 % hour, m0 - m0 % hour + hour))
        health = t.get_health_status().components["analytics"]
    assert {k: b.events for k, b in minutes.by_category.items()} == {"a": 5, "c": 4, "other": 2}
    assert minutes.folded_events["category"] == 2
    assert {k: b.events for k, b in whole_hour.by_category.items()} == {"a": 5, "b": 1, "other": 5}
    assert whole_hour.folded_events["category"] == 5 and health["folded_events"]["category"] == 5
    assert minutes.events.total == whole_hour.events.total == 11
    with pytest.raises(ConfigError, match="max_categories: expected at least 1, got 0"):
        _service(analytics={"enabled": True, "max_categories": 0})


def test_category_cost_is_its_own_models_and_a_price_change_reprices_the_rollups(in_tmp):
    with _service() as t:
        sid = t.track_start("a", "chat", "p", metadata={"model": "gpt-4o"})
        t.track_end(sid, metadata={"input_tokens": 1_000_000, "output_tokens": 0})
        sid = t.track_start("b", "chat", "p", metadata={"model": "my-model"})
        t.track_end(sid, metadata={"input_tokens": 1_000_000, "output_tokens": 0})
        before = t.get_metrics("1h")
    # each category is priced at the models its own events named, not at a share of every model
    assert before.by_category["a"].tokens.cost == pytest.approx(2.5) and before.by_category["b"].tokens.cost is None
    assert before.cost == pytest.approx(2.5)
    with _service(analytics={"enabled": True, "prices": {"my-model": {"input": 1.0, "output": 1.0}}}) as t:
        after = _caught_up(t).get_metrics("1h")
    # the rollups hold dollars: counted under the old table, they are recounted from storage at the start
    assert after.by_category["b"].tokens.cost == pytest.approx(1.0)
    assert after.by_model["my-model"].tokens.cost == pytest.approx(1.0)
    assert after.cost == pytest.approx(3.5) and after.events.total == before.events.total


# -- a store analytics has not counted yet: the recount runs in the background ------------------------------

HOUR = 3_600_000
RECOUNT_THREAD = "vibekit-telemetry-analytics-recount"
_COLUMNS = ("id", "session_id", "event_type", "category", "timestamp", "agent", "mode", "prompt", "stream_data",
            "status", "error_type", "error_message", "metadata")


def _fill(path, n, *, hours, seed=11, long=0.2):
    """About ``n`` events over the ``hours`` hours before the last minute, inserted with plain sqlite3.

    Straight into the schema the sqlite plugin made, so a big store is quick to build, and without session
    rows: analytics has to follow every session from its events.  A share ``long`` of the sessions last half
    an hour to two hours, so they straddle the hours a recount cuts at; some never end.  Returns (start, end).
    """
    TelemetryService(storage=[{"type": "sqlite", "options": {"path": str(path)}}],
                     data_dir=str(path.parent / "setup")).shutdown()
    rng = random.Random(seed)
    end = now_ms() - 60_000
    start = end - hours * HOUR
    rows = []

    def add(sid, kind, ts, category, metadata=None, **fields):
        values = {"id": new_id(ts), "session_id": sid, "event_type": kind, "category": category, "timestamp": ts,
                  **fields}
        rows.append((*(values.get(name) for name in _COLUMNS[:-1]), json.dumps(metadata or {})))

    while len(rows) < n:
        agent, model = rng.choice(["claude", "codex", "gemini"]), rng.choice(MODELS)
        began = start + rng.randrange((hours - 2) * HOUR)
        length = rng.randrange(30 * 60_000, 2 * HOUR) if rng.random() < long else rng.randrange(200, 60_000)
        sid = new_id(began)
        add(sid, "start", began, agent, {"model": model}, agent=agent, mode="code", prompt="p")
        chunks = rng.randrange(0, 8)
        for c in range(chunks):
            add(sid, "stream", began + 1 + c * length // (chunks + 1), agent, {"model": model}, stream_data="x")
        if rng.random() < 0.08:
            add(sid, "error", began + length // 2, agent, error_type="RuntimeError",
                error_message=rng.choice(["timeout", "rate limited"]))
        if rng.random() < 0.05:
            continue  # never ends
        add(sid, "end", began + length, agent,
            {"model": model, "input_tokens": rng.randrange(100, 5000), "output_tokens": rng.randrange(10, 800)},
            status="failed" if rng.random() < 0.15 else "completed")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany(f"INSERT INTO events ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})", rows)
    conn.execute("COMMIT")
    conn.close()
    return start, end


class _Gate:
    """Holds the analytics recount at the first page it reads from ``at`` (epoch ms) on, until released."""

    name = "gate"

    def __init__(self, at):
        self.at = at
        self.reached = threading.Event()
        self.release = threading.Event()

    @hookimpl
    def after_read(self, events):
        if (threading.current_thread().name == RECOUNT_THREAD and not self.release.is_set() and events
                and events[0].timestamp >= self.at):
            self.reached.set()
            self.release.wait(60)
        return None


def _rounded(value):
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {key: _rounded(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def _buckets(rollups):
    return {(level, bucket): {dim: _rounded(agg.to_json()) for dim, agg in by_dim.items()}
            for level, buckets in rollups.levels.items() for bucket, by_dim in buckets.items() if by_dim}


def _assert_exact(t):
    """The live rollups equal a fresh full recount (every stored event through one Rollups, oldest first),
    bucket by bucket and dimension by dimension, and so do the open sessions; events match a plain count."""
    plugin = t.host.meta["analytics"]["object"]
    t.flush()
    reference = Rollups(plugin.config.max_open_sessions, prices=plugin.prices)
    reference.add(list(t.iter_events()), t.get_session)
    with plugin._lock:
        mine, open_now = _buckets(plugin.rollups), set(plugin.rollups.open)
    theirs = _buckets(reference)
    assert sorted(mine) == sorted(theirs)
    wrong = [key for key in mine if mine[key] != theirs[key]]
    assert not wrong, [(key, dim, {f: (a[f], theirs[key][dim][f]) for f in a if a[f] != theirs[key][dim].get(f)})
                       for key in wrong[:3] for dim, a in mine[key].items() if a != theirs[key].get(dim)][:6]
    assert open_now == set(reference.open)
    now = now_ms()
    metrics = t.get_metrics((now - 48 * HOUR, now + 60_000))
    stored = _counts(t)
    assert {name: b.events for name, b in metrics.by_category.items()} == stored
    assert metrics.events.total == sum(stored.values()) and not metrics.catching_up


def _counts(t):
    """Stored events by category, counted by SQLite itself."""
    path = t.config.storage[0].options["path"]
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT category, count(*) FROM events GROUP BY category"))
    finally:
        conn.close()


def _progress(t):
    return t.get_health_status().components["analytics"]["catch_up"]


def test_a_big_store_is_counted_in_the_background_and_a_shutdown_midway_resumes(in_tmp):
    db = in_tmp / "big.db"
    start, end = _fill(db, 200_000, hours=24)
    storage = [{"type": "sqlite", "options": {"path": str(db)}}]
    with _service(storage=storage) as t:
        # the constructor returned while the store was still being counted in, and the answers say so
        metrics = t.get_metrics("48h")
        assert metrics.catching_up and metrics.events.total < 200_000
        assert metrics.to_dict()["catching_up"] is True and metrics.catch_up["since"] <= start
        health = t.get_health_status().components["analytics"]
        assert health["catching_up"] and health["healthy"]
        deadline = time.monotonic() + 120
        while _progress(t)["counted_up_to"] < start + 6 * HOUR:
            assert time.monotonic() < deadline, "the background recount made no progress"
            time.sleep(0.02)
        # tracked meanwhile: before what is counted, after it (read later), and new traffic
        for ts in (start + HOUR // 2, end - HOUR, now_ms()):
            t.track({"category": "late", "timestamp": ts})
        sid = t.track_start("claude", "code", "p", metadata={"model": MODELS[0]})
        t.track_end(sid, metadata={"input_tokens": 10, "output_tokens": 5})
        t.flush()
    assert not [th for th in threading.enumerate() if th.name == RECOUNT_THREAD]  # shutdown stopped it
    conn = sqlite3.connect(in_tmp / ".vibekit" / "analytics.db")
    saved = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'recount'").fetchone()[0])
    conn.close()
    assert start + 6 * HOUR <= saved["upto"] < end and 0 < saved["counted"] < 200_000  # stopped midway
    with _service(storage=storage) as t:
        first = t.get_metrics("48h")
        # the next start goes on from where the recount stopped, not from the beginning
        assert first.catching_up and first.catch_up["counted_up_to"] >= saved["upto"]
        assert first.catch_up["counted"] >= saved["counted"]
        _caught_up(t)
        assert first.events.total < t.get_metrics("48h").events.total
        assert t.get_metrics("48h").catch_up is None
        assert not t.get_health_status().components["analytics"]["catching_up"]
        _assert_exact(t)
        assert t.get_metrics("48h").by_category["late"].events == 3


def test_events_tracked_while_a_store_is_counted_in_are_counted_once(in_tmp):
    db = in_tmp / "store.db"
    start, end = _fill(db, 30_000, hours=6)
    conn = sqlite3.connect(db)
    unended = [sid for sid, ts in conn.execute(
        "SELECT session_id, timestamp FROM events WHERE event_type = 'start' AND session_id NOT IN "
        "(SELECT session_id FROM events WHERE event_type = 'end') ORDER BY timestamp")]
    conn.close()
    gate = _Gate(start + 2 * HOUR + HOUR // 2)
    # the recount is held in the middle of the store: the constructor must not be waiting for it
    with _service(storage=[{"type": "sqlite", "options": {"path": str(db)}}], plugins=[gate]) as t:
        assert gate.reached.wait(60)
        upto = _progress(t)["counted_up_to"]
        assert _progress(t)["running"] and start - HOUR < upto <= start + 3 * HOUR
        assert t.get_insights("48h").catching_up and t.get_metrics("48h").to_dict()["catch_up"]["counted"] > 0
        # counted hours, the hour being read (before and after where the reading is), hours still to read, now
        for ts in (upto - 30 * 60_000, upto + 1, upto + 30 * 60_000, upto + HOUR - 1, end - 10 * 60_000, now_ms()):
            t.track({"category": "late", "timestamp": ts})
        sid = t.track_start("claude", "code", "p", metadata={"model": MODELS[1]})
        t.track_stream(sid, "chunk")
        t.track_end(sid, "failed", metadata={"input_tokens": 100, "output_tokens": 10})
        t.track_end(unended[0], metadata={"model": MODELS[0], "input_tokens": 7})  # a stored session ends now
        backfilled = t.track_start("codex", "code", "p", timestamp=upto - 20 * 60_000)  # left open, in a counted hour
        done = t.track_start("codex", "code", "p", timestamp=upto - 19 * 60_000)
        t.track_end(done, timestamp=upto - 18 * 60_000)
        t.flush()
        gate.release.set()
        _caught_up(t)
        assert not t.get_insights("48h").catching_up
        _assert_exact(t)
        assert t.get_metrics("48h").by_category["late"].events == 6
        assert backfilled in t.host.meta["analytics"]["object"].rollups.open


def test_clean_and_rebuild_while_a_store_is_counted_in(in_tmp):
    db = in_tmp / "store.db"
    # sessions of a minute at most: cleaning keeps the durations of sessions whose start it deleted in the hours
    # it does not recount (as without a catch-up), which a fresh recount could not know
    start, end = _fill(db, 30_000, hours=6, seed=12, long=0)
    storage = [{"type": "sqlite", "options": {"path": str(db)}}]
    gate = _Gate(start + 3 * HOUR)
    with _service(storage=storage, plugins=[gate]) as t:
        assert gate.reached.wait(60)
        threading.Timer(0.3, gate.release.set).start()
        before = start + 2 * HOUR + 17 * 60_000  # an hour the recount has counted already
        t.clean(retention_days=(now_ms() - before) / 86_400_000)
        _caught_up(t)
        _assert_exact(t)
        assert t.get_metrics((start - HOUR, before - HOUR)).events.total == 0
    for path in (in_tmp / ".vibekit").glob("analytics.db*"):
        path.unlink()
    gate = _Gate(start + 3 * HOUR)
    with _service(storage=storage, plugins=[gate]) as t:
        assert gate.reached.wait(60)
        threading.Timer(0.3, gate.release.set).start()
        counted = t.host.meta["analytics"]["object"].rebuild()  # replaces the one under way
        assert counted == sum(_counts(t).values())
        assert not t.get_metrics("48h").catching_up
        _assert_exact(t)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_does_not_run_the_parents_recount(in_tmp):
    db = in_tmp / "store.db"
    start, _ = _fill(db, 20_000, hours=6, seed=13)
    gate = _Gate(start + 2 * HOUR)
    with _service(storage=[{"type": "sqlite", "options": {"path": str(db)}}], plugins=[gate]) as t:
        assert gate.reached.wait(60)
        pid = os.fork()
        if pid == 0:  # the child: no recount of its own, its own events counted, answers that say so
            code = 1
            try:
                for _ in range(10):
                    t.track({"category": "child"})
                t.flush()
                time.sleep(0.3)
                metrics = t.get_metrics("48h")
                recounting = [th for th in threading.enumerate() if th.name == RECOUNT_THREAD]
                plugin = t.host.meta["analytics"]["object"]
                code = 0 if (not recounting and plugin._runner is None and metrics.catching_up
                             and metrics.by_category["child"].events == 10) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        gate.release.set()
        _caught_up(t)
        _assert_exact(t)  # the child's events are in storage: the parent's recount counts them
        assert t.get_metrics("48h").by_category["child"].events == 10
