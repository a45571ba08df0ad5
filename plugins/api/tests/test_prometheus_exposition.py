"""``/metrics`` after real traffic, checked by Prometheus's own ``promtool check metrics`` and ``prometheus_client``'s parser.

promtool comes from Debian's ``prometheus`` package.  Where it is absent the test
skips with the reason, except under ``.ci/run`` (``VIBEKIT_REQUIRE_PROMTOOL=1``),
where a missing promtool is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

PROMTOOL = os.environ.get("VIBEKIT_PROMTOOL", "promtool")
MODEL = "claude-sonnet-4-5"


@pytest.fixture
def scraped(make_server):
    """The exposition text of a server that saw sessions with cache tokens, errors, custom and OTLP metrics."""
    service, _, client = make_server(service_options={"analytics": {"enabled": True}})
    service.define_metric("queue_wait", "histogram", unit="ms")
    for index in range(3):
        sid = service.track_start("claude", "chat", f"question {index}", metadata={"model": MODEL})
        service.track(category="claude", event_type="stream", session_id=sid, stream_data="chunk")
        service.track_end(sid, metadata={"model": MODEL, "input_tokens": 100, "output_tokens": 20,
                                         "cache_read_tokens": 60, "cache_creation_tokens": 15, "reasoning_tokens": 5})
    failed = service.track_start("openai", "chat", "will fail", metadata={"model": "gpt-5"})
    service.track(category="openai", event_type="error", session_id=failed, error_type="RateLimitError",
                  error_message="429 from upstream")
    service.track_end(failed, "failed", metadata={"model": "gpt-5", "input_tokens": 7})
    service.track(category="metrics", action="queue_wait", value=12.5)
    service.track(category="metrics", action="retries", value=2)
    now = time.time_ns()
    otlp = {"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"name": "gen_ai.client.token.usage", "unit": "{token}",
            "histogram": {"aggregationTemporality": 1, "dataPoints": [{
                "startTimeUnixNano": str(now - 10**9), "timeUnixNano": str(now), "count": "2", "sum": 300,
                "bucketCounts": ["1", "1"], "explicitBounds": [100],
                "attributes": [{"key": "gen_ai.token.type", "value": {"stringValue": "input"}}]}]}}]}]}]}
    assert client.post("/v1/metrics", json=otlp).json() == {}
    client.post("/api/events", json=[{"event_type": "bogus", "category": "x"}])  # a 422, counted by route
    client.get("/api/sessions/nope")
    service.flush()
    response = client.get("/metrics")
    assert response.status_code == 200
    return response.text


def _promtool() -> str:
    path = shutil.which(PROMTOOL)
    if path is None:
        message = f"no {PROMTOOL} on PATH (apt-get install prometheus, or set VIBEKIT_PROMTOOL to its path)"
        if os.environ.get("VIBEKIT_REQUIRE_PROMTOOL") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def test_promtool_accepts_the_exposition(scraped):
    result = subprocess.run([_promtool(), "check", "metrics"], input=scraped, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), \
        f"promtool check metrics:\n{result.stdout}{result.stderr}"


def test_the_parser_reads_latency_as_a_summary_and_every_token_kind(scraped):
    families = {family.name: family for family in text_string_to_metric_families(scraped)}
    for family in families.values():  # what promtool says, checked where promtool is absent too
        if family.type != "summary":
            assert not any("quantile" in s.labels for s in family.samples), family.name
    latency = families["vibekit_window_latency_seconds"]
    assert latency.type == "summary"
    assert {s.labels["quantile"] for s in latency.samples} == {"0.5", "0.95", "0.99"}
    tokens = {(s.labels["model"], s.labels["kind"]): s.value for s in families["vibekit_window_tokens"].samples}
    assert {kind: tokens[(MODEL, kind)] for kind in ("input", "output", "cache_read", "cache_creation", "reasoning")} \
        == {"input": 300, "output": 60, "cache_read": 180, "cache_creation": 45, "reasoning": 15}
    assert tokens[("gpt-5", "input")] == 7 and tokens[("gpt-5", "cache_read")] == 0
    custom = {(s.labels["metric"], s.labels["stat"]): s.value for s in families["vibekit_custom_metric"].samples}
    assert custom[("gen_ai_client_token_usage", "sum")] == 300  # from /v1/metrics
    assert custom[("queue_wait", "p95")] == 12.5 and custom[("retries", "value")] == 2
    assert families["vibekit_window_error_rate"].samples[0].value > 0
