"""/metrics parsed with prometheus_client's parser, and the OpenAPI document fuzzed with schemathesis."""

from __future__ import annotations

import pytest
import schemathesis
from prometheus_client.parser import text_string_to_metric_families
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_expose_ingest_storage_http_and_analytics(make_server):
    service, _, client = make_server(service_options={"analytics": {"enabled": True}})
    service.define_metric("queue_wait", "histogram", unit="ms")
    client.post("/api/events", json=[{"category": "claude", "action": "x"}] * 40)
    sid = service.track_start("claude", "chat", "hi", metadata={"model": "claude-sonnet-4-5"})
    service.track_end(sid, metadata={"model": "claude-sonnet-4-5", "input_tokens": 10, "output_tokens": 5})
    service.track(category="metrics", action="queue_wait", value=12.5)
    client.post("/api/events", json=[{"event_type": "bogus", "category": "x"}])
    service.flush()
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)
    assert samples[("vibekit_events_accepted_total", ())] == 43
    assert samples[("vibekit_events_stored_total", ())] == 43
    assert samples[("vibekit_api_ingested_events_total", (("source", "api"),))] == 40
    assert samples[("vibekit_api_rejected_events_total", (("source", "api"),))] == 1
    assert samples[("vibekit_storage_write_seconds_count", ())] >= 1
    assert samples[("vibekit_http_requests_total", (("method", "POST"), ("route", "/api/events"), ("status", "202")))] == 1
    assert samples[("vibekit_http_requests_total", (("method", "POST"), ("route", "/api/events"), ("status", "422")))] == 1
    assert samples[("vibekit_pipeline_queued", ())] == 0
    assert samples[("vibekit_component_healthy", (("component", "sqlite"),))] == 1
    assert samples[("vibekit_window_tokens", (("kind", "input"), ("model", "claude-sonnet-4-5")))] == 10
    assert samples[("vibekit_custom_metric", (("metric", "queue_wait"), ("stat", "sum"), ("type", "histogram")))] == 12.5
    assert ("process_resident_memory_bytes", ()) in samples
    assert ("vibekit_alerts_total", (("outcome", "sent"),)) not in samples, "alerts are off: no counts"


def test_metrics_count_alerts_by_outcome(make_server):
    from vibekit_telemetry import Anomaly

    alerts = {"enabled": True, "channels": [{"type": "log"}]}
    service, _, client = make_server(service_options={"analytics": {"enabled": True, "alerts": alerts}})
    for value in (50.0, 51.0):  # the second repeats the first within the dedupe window
        service.emit("anomaly", Anomaly(metric="error_rate", timestamp=1_800_000_000_000, value=value, severity="high"))
    service.host.meta["analytics"]["object"].alerts.flush()
    samples = _samples(client.get("/metrics").text)
    assert samples[("vibekit_alerts_total", (("outcome", "sent"),))] == 1
    assert samples[("vibekit_alerts_total", (("outcome", "deduplicated"),))] == 1
    assert samples[("vibekit_alerts_total", (("outcome", "failed"),))] == 0


def test_metrics_endpoint_can_move_or_turn_off(make_server):
    _, _, moved = make_server(metrics={"endpoint": "/prometheus"})
    assert moved.get("/prometheus").status_code == 200 and moved.get("/metrics").status_code == 404
    _, _, off = make_server(metrics={"prometheus": False})
    assert off.get("/metrics").status_code == 404


@pytest.fixture
def fuzz_target(make_server, exporter):
    service, server, _ = make_server(service_options={"analytics": {"enabled": True}, "plugins": [exporter]})
    sid = service.track_start("claude", "chat", "seed session")
    service.track_end(sid)
    service.flush()
    return server


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_request_makes_the_server_answer_500(fuzz_target, mode):
    """Whatever the OpenAPI document allows, and what schemathesis makes to break it: never a 5xx."""
    api_schema = schemathesis.openapi.from_url(f"{fuzz_target.url}/openapi.json")
    failures = []
    tested = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/api/stream":  # an endless response; covered in test_live.py
            continue
        strategy = operation.as_strategy(generation_mode=GenerationMode(mode))

        @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                  phases=[Phase.generate])
        @given(case=strategy)
        def run(case):
            response = case.call(base_url=fuzz_target.url, timeout=30)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} {case.query} -> {response.status_code}: "
                                f"{response.text[:200]}")

        try:
            run()
        except Unsatisfiable:  # an operation without parameters or body has no invalid form
            assert mode == "negative"
            continue
        tested += 1
    assert tested >= (12 if mode == "positive" else 8)
    assert not failures, "\n".join(failures[:10])
