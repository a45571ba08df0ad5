"""The gRPC server: OTLP/gRPC ingest from the OpenTelemetry SDK's gRPC exporter, and Subscribe with a grpcio client."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from vibekit_telemetry import ConfigError, TelemetryService
from vibekit_telemetry_grpc import subscribe


@pytest.fixture
def served(tmp_path):
    service = TelemetryService(data_dir=str(tmp_path), streaming={"enabled": True, "provider": "grpc",
                                                                  "options": {"port": 0, "api_keys": ["grpc-key-123"]}})
    plugin = service.host.meta["grpc"]["object"]
    yield service, f"127.0.0.1:{plugin.port}"
    service.shutdown()


def test_the_sdk_grpc_exporter_reports_genai_spans(served):
    service, address = served
    provider = TracerProvider(resource=Resource.create({"service.name": "grpc-app"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=address, insecure=True,
                                                                     headers=(("x-api-key", "grpc-key-123"),))))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("chat", attributes={"gen_ai.provider.name": "anthropic",
                                                          "gen_ai.operation.name": "chat",
                                                          "gen_ai.usage.output_tokens": 7}) as span:
        span.add_event("gen_ai.choice", {"message": "hi over grpc"})
    provider.shutdown()
    service.flush()
    [session] = service.get_sessions()
    assert session.agent == "anthropic" and session.status == "completed" and session.tokens.output == 7
    assert service.query(event_type="end")[0].stream_data == "hi over grpc"  # whole at the end: no chunk


def test_subscribe_streams_new_matching_events(served):
    service, address = served
    got = []
    ready = threading.Event()

    def listen():
        with grpc.insecure_channel(address) as channel:
            stream = subscribe(channel, {"category": "claude"}, timeout=10)
            ready.set()
            for event in stream:
                got.append(event)
                if len(got) == 2:
                    stream.cancel()
                    return

    # the key is required for Subscribe too
    with grpc.insecure_channel(address) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            next(iter(subscribe(channel, {}, timeout=5)))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    service.host.meta["grpc"]["object"].config.api_keys.clear()
    thread = threading.Thread(target=listen)
    thread.start()
    ready.wait(5)
    deadline = time.monotonic() + 5
    while service.get_health_status().pipeline["live_streams"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    service.track(category="gemini", action="ignored")
    sid = service.track_start("claude", "chat", "hello")
    service.track_end(sid)
    thread.join(10)
    assert [e["event_type"] for e in got] == ["start", "end"]


def test_a_bad_filter_is_invalid_argument(served):
    service, address = served
    service.host.meta["grpc"]["object"].config.api_keys.clear()
    with grpc.insecure_channel(address) as channel:
        with pytest.raises(grpc.RpcError) as bad:
            next(iter(subscribe(channel, {"colour": "red"}, timeout=5)))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_public_address_without_keys_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="api_keys"):
        TelemetryService(data_dir=str(tmp_path), plugins=[{"name": "grpc", "options": {"host": "0.0.0.0", "port": 0}}])
