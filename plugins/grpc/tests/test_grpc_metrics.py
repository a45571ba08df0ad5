"""OTLP/gRPC ``MetricsService/Export`` from the OpenTelemetry SDK's gRPC ``OTLPMetricExporter``.

The same mapping as ``/v1/metrics`` (:mod:`vibekit_telemetry.otlp_metrics`): each
data point is a ``category="metrics"`` event, a histogram's value its sum.
"""

from __future__ import annotations

import math
import time

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from vibekit_telemetry import TelemetryService

KEY = "grpc-key-123"
CHAT = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-5"}


@pytest.fixture
def served(tmp_path):
    service = TelemetryService(data_dir=str(tmp_path), analytics={"enabled": True},
                               streaming={"enabled": True, "provider": "grpc",
                                          "options": {"port": 0, "api_keys": [KEY]}})
    plugin = service.host.meta["grpc"]["object"]
    yield service, f"127.0.0.1:{plugin.port}"
    service.shutdown()


def _events(service, name):
    return sorted(service.query(category="metrics", action=name, limit=100), key=lambda e: e.timestamp)


def test_the_sdk_grpc_exporter_reports_genai_metrics(served):
    service, address = served
    service.define_metric("app.queue.depth", "gauge")
    exporter = OTLPMetricExporter(endpoint=address, insecure=True, headers=(("x-api-key", KEY),))
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(metric_readers=[reader], resource=Resource.create({"service.name": "grpc-app"}))
    meter = provider.get_meter("genai-grpc")
    tokens = meter.create_histogram("gen_ai.client.token.usage", unit="{token}")
    duration = meter.create_histogram("gen_ai.client.operation.duration", unit="s")
    calls = meter.create_counter("app.llm.calls")
    depth = meter.create_gauge("app.queue.depth")
    tokens.record(50, {**CHAT, "gen_ai.token.type": "input"})
    tokens.record(9, {**CHAT, "gen_ai.token.type": "output"})
    duration.record(0.5, CHAT)
    calls.add(1)
    depth.set(4)
    assert provider.force_flush(10_000)
    tokens.record(25, {**CHAT, "gen_ai.token.type": "input"})
    calls.add(2)
    assert provider.force_flush(10_000)
    service.flush()

    usage = _events(service, "gen_ai.client.token.usage")
    assert sorted((e.metadata["gen_ai.token.type"], e.value) for e in usage) == [
        ("input", 25.0), ("input", 50.0), ("output", 9.0)]
    assert all(e.metadata["gen_ai.request.model"] == "gpt-5" and e.metadata["kind"] == "histogram" for e in usage)
    assert all(e.metadata["service.name"] == "grpc-app" for e in usage)
    [latency] = _events(service, "gen_ai.client.operation.duration")
    assert (latency.value, latency.metadata["count"], latency.metadata["unit"]) == (0.5, 1, "s")
    assert [e.value for e in _events(service, "app.llm.calls")] == [1.0, 2.0]  # cumulative 1, 3: the changes
    assert sum(v for _, v in service.metric_series("gen_ai.client.token.usage", "1h")) == 84.0
    custom = service.get_metrics("1h").custom
    assert custom["app.llm.calls"].value == 3.0 and custom["app.queue.depth"].value == 4.0
    provider.shutdown()


def test_partial_success_and_the_key_over_grpc(served):
    service, address = served
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    metric = request.resource_metrics.add().scope_metrics.add().metrics.add()
    metric.name = "app.queue.depth"
    for time_ns, value in ((time.time_ns(), 2.0), (time.time_ns(), math.inf)):
        point = metric.gauge.data_points.add()
        point.time_unix_nano = time_ns
        point.as_double = value
    with grpc.insecure_channel(address) as channel:
        export = metrics_service_pb2_grpc.MetricsServiceStub(channel).Export
        with pytest.raises(grpc.RpcError) as refused:
            export(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        response = export(request, metadata=(("x-api-key", KEY),), timeout=10)
        again = export(request, metadata=(("x-api-key", KEY),), timeout=10)  # a retry stores nothing twice
    assert response.partial_success.rejected_data_points == 1 == again.partial_success.rejected_data_points
    assert "data point #1: value" in response.partial_success.error_message
    service.flush()
    assert [e.value for e in _events(service, "app.queue.depth")] == [2.0]
