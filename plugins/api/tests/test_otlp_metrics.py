"""OTLP/HTTP ``/v1/metrics`` with the OpenTelemetry SDK's ``OTLPMetricExporter`` and hand-made requests.

Every data point becomes a ``category="metrics"`` event that ``metric_series`` and
``get_metrics()["custom"]`` read: a histogram's value is its sum (count, sum, min,
max and buckets in metadata), a cumulative counter's its change since the last point.
"""

from __future__ import annotations

import gzip
import math
import time
from pathlib import Path

import orjson
import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

OTLP_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "otlp"
CHAT = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic", "gen_ai.request.model": "claude-sonnet-4-5"}
ANALYTICS = {"analytics": {"enabled": True}}


def _meter(url: str, temporality: str, headers=None):
    """A MeterProvider exporting to ``url`` only when flushed (the interval is an hour)."""
    preferred = {Counter: AggregationTemporality.DELTA, Histogram: AggregationTemporality.DELTA} \
        if temporality == "delta" else None
    exporter = OTLPMetricExporter(endpoint=f"{url}/v1/metrics", compression=Compression.Gzip, headers=headers,
                                  preferred_temporality=preferred)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(metric_readers=[reader], resource=Resource.create({"service.name": "chat-app"}))
    return provider, provider.get_meter("genai-test")


def _metric_events(service, name):
    return sorted(service.query(category="metrics", action=name, limit=100), key=lambda e: e.timestamp)


@pytest.mark.parametrize("temporality", ["cumulative", "delta"])
def test_the_sdk_exporter_genai_histograms_counter_and_gauge(make_server, temporality):
    """The SDK's default (cumulative) and delta temporality store the same values: what each interval added."""
    service, server, _ = make_server(service_options=ANALYTICS)
    service.define_metric("app.queue.depth", "gauge")
    provider, meter = _meter(server.url, temporality)
    tokens = meter.create_histogram("gen_ai.client.token.usage", unit="{token}",
                                    description="Measures number of input and output tokens used")
    duration = meter.create_histogram("gen_ai.client.operation.duration", unit="s")
    calls = meter.create_counter("app.llm.calls", unit="{call}")
    depth = meter.create_gauge("app.queue.depth")
    tokens.record(120, {**CHAT, "gen_ai.token.type": "input"})
    tokens.record(80, {**CHAT, "gen_ai.token.type": "input"})
    tokens.record(45, {**CHAT, "gen_ai.token.type": "output"})
    duration.record(1.25, CHAT)
    duration.record(0.75, CHAT)
    calls.add(2, {"gen_ai.request.model": "claude-sonnet-4-5"})
    depth.set(7)
    assert provider.force_flush(10_000)
    tokens.record(30, {**CHAT, "gen_ai.token.type": "input"})  # the output series does not change
    calls.add(3, {"gen_ai.request.model": "claude-sonnet-4-5"})
    depth.set(3)
    assert provider.force_flush(10_000)
    service.flush()

    usage = _metric_events(service, "gen_ai.client.token.usage")
    by_type = {}
    for event in usage:
        by_type.setdefault(event.metadata["gen_ai.token.type"], []).append(event)
    assert [e.value for e in by_type["input"]] == [200.0, 30.0] and [e.value for e in by_type["output"]] == [45.0]
    first = by_type["input"][0].metadata
    assert {k: first[k] for k in CHAT} == CHAT
    assert first["kind"] == "histogram" and first["unit"] == "{token}" and first["temporality"] == temporality
    assert (first["count"], first["sum"], first["min"], first["max"]) == (2, 200.0, 80.0, 120.0)
    assert sum(first["bucket_counts"]) == 2 and len(first["bucket_counts"]) == len(first["explicit_bounds"]) + 1
    assert first["service.name"] == "chat-app" and first["otel.scope.name"] == "genai-test"
    second = by_type["input"][1].metadata
    assert (second["count"], second["sum"], sum(second["bucket_counts"])) == (1, 30.0, 1)
    assert second["start_time"] >= first.get("start_time", 0)

    [latency] = _metric_events(service, "gen_ai.client.operation.duration")
    assert latency.value == 2.0 and latency.metadata["count"] == 2 and latency.metadata["unit"] == "s"
    assert latency.value / latency.metadata["count"] == 1.0  # the mean, from the stored sum and count

    counted = _metric_events(service, "app.llm.calls")
    assert [e.value for e in counted] == [2.0, 3.0]
    assert all(e.metadata["kind"] == "sum" and e.metadata["monotonic"] is True for e in counted)
    if temporality == "cumulative":
        assert [e.metadata["total"] for e in counted] == [2.0, 5.0]

    gauges = _metric_events(service, "app.queue.depth")
    assert [e.value for e in gauges] == [7.0, 3.0] and gauges[0].metadata["kind"] == "gauge"

    series = service.metric_series("gen_ai.client.token.usage", "1h")
    assert sum(value for _, value in series) == 275.0  # tokens per minute add up to every token recorded
    custom = service.get_metrics("1h").custom
    assert custom["gen_ai.client.token.usage"].sum == 275.0 and custom["gen_ai.client.token.usage"].count == 3
    assert custom["app.llm.calls"].value == 5.0
    assert custom["app.queue.depth"].type == "gauge" and custom["app.queue.depth"].value == 3.0
    provider.shutdown()


def _gauge_request(points, name="app.queue.depth"):
    return {"resourceMetrics": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]},
                                 "scopeMetrics": [{"scope": {"name": "hand"},
                                                   "metrics": [{"name": name, "gauge": {"dataPoints": points}}]}]}]}


def _counter_request(start_ns, time_ns, total):
    point = {"startTimeUnixNano": str(start_ns), "timeUnixNano": str(time_ns), "asInt": str(total),
             "attributes": [{"key": "route", "value": {"stringValue": "/chat"}}]}
    return {"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"name": "app.requests", "unit": "{request}", "sum": {
        "aggregationTemporality": 2, "isMonotonic": True, "dataPoints": [point]}}]}]}]}


def test_retried_exports_store_nothing_twice(api):
    service, _, client = api
    now = time.time_ns()
    gauge = _gauge_request([{"timeUnixNano": str(now), "asDouble": 4.5}])
    first = _counter_request(now, now + 10**9, 5)
    second = _counter_request(now, now + 2 * 10**9, 8)
    for request in (gauge, gauge, first, first, second, second, first):
        response = client.post("/v1/metrics", content=gzip.compress(orjson.dumps(request)),
                               headers={"content-type": "application/json", "content-encoding": "gzip"})
        assert response.status_code == 200
    # the last one came after a later point of its series: its change cannot be known, and it is said so
    assert response.json()["partialSuccess"]["rejectedDataPoints"] == "1"
    assert "older than the series' last point" in response.json()["partialSuccess"]["errorMessage"]
    service.flush()
    assert [e.value for e in _metric_events(service, "app.queue.depth")] == [4.5]
    counted = _metric_events(service, "app.requests")
    assert [(e.value, e.metadata["total"], e.metadata["route"]) for e in counted] == [(5.0, 5.0, "/chat"),
                                                                                      (3.0, 8.0, "/chat")]
    assert counted[1].metadata["start_time"] == (now + 10**9) // 10**6  # the interval since the previous point


def test_a_cumulative_series_older_than_the_server_starts_from_its_next_point(api):
    """After a restart of the server, the first point holds what was stored before it: it is only remembered."""
    service, _, client = api
    started = time.time_ns() - 3600 * 10**9  # the application has counted for an hour
    for offset, total in ((0, 500), (60, 512)):
        response = client.post("/v1/metrics", json=_counter_request(started, time.time_ns() + offset * 10**9, total))
        assert response.status_code == 200 and response.json() == {}
    service.flush()
    assert [e.value for e in _metric_events(service, "app.requests")] == [12.0]


def test_points_the_kernel_refuses_are_rejected_alone(api):
    service, _, client = api
    request = ExportMetricsServiceRequest()
    scope = request.resource_metrics.add().scope_metrics.add()
    metric = scope.metrics.add()
    metric.name = "app.queue.depth"
    now = time.time_ns()
    for time_ns, value in ((now, 1.0), (now + 1, math.nan), (2**64 - 1, 2.0), (now + 2, 3.0)):
        point = metric.gauge.data_points.add()
        point.time_unix_nano = time_ns  # the third is in the year 2554
        point.as_double = value
    response = client.post("/v1/metrics", content=request.SerializeToString(),
                           headers={"content-type": "application/x-protobuf"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-protobuf"
    partial = ExportMetricsServiceResponse.FromString(response.content).partial_success
    assert partial.rejected_data_points == 2
    assert "'app.queue.depth' data point #1: value" in partial.error_message
    assert "data point #2: timestamp" in partial.error_message
    service.flush()
    assert sorted(e.value for e in _metric_events(service, "app.queue.depth")) == [1.0, 3.0]

    unnamed = _gauge_request([{"timeUnixNano": str(now), "asDouble": 1}], name="")
    unnamed["resourceMetrics"][0]["scopeMetrics"][0]["metrics"].append(
        {"name": "no.time", "gauge": {"dataPoints": [{"asDouble": 1}]}})
    body = client.post("/v1/metrics", json=unnamed).json()["partialSuccess"]
    assert body["rejectedDataPoints"] == "2"
    assert "has no name" in body["errorMessage"] and "'no.time' data point #0: timeUnixNano" in body["errorMessage"]


def test_the_rules_of_the_other_otlp_routes_apply(make_server):
    reader, ingester = "read-only-key-456", "ingest-only-key-789"
    _, _, client = make_server(max_body_bytes=4096, auth={"api_keys": [{"key": reader, "scopes": ["read"]},
                                                                       {"key": ingester, "scopes": ["ingest"]}]})
    ok = {"x-api-key": ingester}
    assert client.post("/v1/metrics", json={}).status_code == 401
    assert client.post("/v1/metrics", json={}, headers={"x-api-key": reader}).status_code == 403
    assert client.post("/v1/metrics", json={}, headers=ok).json() == {}
    wrong = client.post("/v1/metrics", content=b"{}", headers={**ok, "content-type": "text/plain"})
    assert wrong.status_code == 415
    garbage = client.post("/v1/metrics", content=b"\xff\xff\xff", headers={**ok, "content-type": "application/x-protobuf"})
    assert garbage.status_code == 400 and b"ExportMetricsServiceRequest" in garbage.content
    large = client.post("/v1/metrics", content=b"{" + b" " * 5000 + b"}",
                        headers={**ok, "content-type": "application/json"})
    assert large.status_code == 413
    bomb = client.post("/v1/metrics", content=gzip.compress(b"{" + b" " * 50_000 + b"}"),
                       headers={**ok, "content-type": "application/json", "content-encoding": "gzip"})
    assert bomb.status_code == 413


def test_the_sdk_exporter_sends_the_api_key(make_server):
    key = "ingest-only-key-789"
    service, server, _ = make_server(auth={"api_keys": [{"key": key, "scopes": ["ingest"]}]})
    provider, meter = _meter(server.url, "cumulative", headers={"x-api-key": key})
    meter.create_counter("app.llm.calls").add(1)
    assert provider.force_flush(10_000)
    service.flush()
    assert [e.value for e in _metric_events(service, "app.llm.calls")] == [1.0]
    provider.shutdown()


@pytest.mark.skipif(not OTLP_DATA.exists(), reason="../shared/data/otlp is absent")
def test_the_specification_example_is_ingested(api):
    service, _, client = api
    response = client.post("/v1/metrics", content=(OTLP_DATA / "metrics.json").read_bytes(),
                           headers={"content-type": "application/json"})
    assert response.status_code == 200 and response.json() == {}
    service.flush()
    events = {e.action: e for e in service.query(category="metrics", limit=100)}
    assert {name: (e.value, e.metadata["kind"]) for name, e in events.items()} == {
        "my.counter": (5.0, "sum"), "my.gauge": (10.0, "gauge"), "my.histogram": (2.0, "histogram"),
        "my.exponential.histogram": (10.0, "exponential_histogram")}
    assert events["my.histogram"].metadata["bucket_counts"] == [1, 1]
    assert events["my.exponential.histogram"].metadata["positive"] == {"offset": 1, "bucket_counts": [0, 2]}
    assert all(e.metadata["service.name"] == "my.service" for e in events.values())
