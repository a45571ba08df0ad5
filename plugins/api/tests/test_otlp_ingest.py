"""OTLP/HTTP ingest with the real OpenTelemetry SDK exporters and the spec's JSON examples."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import orjson
import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode

OTLP_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "otlp"


def _tracer(url: str, compression=Compression.NoCompression, headers=None):
    provider = TracerProvider(resource=Resource.create({"service.name": "chat-app", "service.version": "2.1.0"}))
    exporter = OTLPSpanExporter(endpoint=f"{url}/v1/traces", compression=compression, headers=headers)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, provider.get_tracer("test")


def test_genai_spans_from_the_sdk_become_sessions(api):
    service, server, _ = api
    provider, tracer = _tracer(server.url)
    with tracer.start_as_current_span("invoke_agent planner", attributes={
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "planner"}) as agent:
        with tracer.start_as_current_span("chat claude-sonnet-4-5", attributes={
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
                "gen_ai.request.model": "claude-sonnet-4-5", "gen_ai.usage.input_tokens": 120,
                "gen_ai.usage.output_tokens": 45,
                "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [{"type": "text", "content": "Fix the bug"}]}]),
        }) as chat:
            chat.add_event("gen_ai.choice", {"message": "Here is the fix", "index": 0})
        with tracer.start_as_current_span("chat gpt-5", attributes={
                "gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.request.model": "gpt-5"}) as failing:
            failing.record_exception(TimeoutError("upstream timed out"))
            failing.set_status(Status(StatusCode.ERROR, "timeout"))
    provider.shutdown()
    service.flush()
    agent_sid = f"{agent.get_span_context().trace_id:032x}-{agent.get_span_context().span_id:016x}"
    chat_sid = f"{chat.get_span_context().trace_id:032x}-{chat.get_span_context().span_id:016x}"
    fail_sid = f"{failing.get_span_context().trace_id:032x}-{failing.get_span_context().span_id:016x}"
    chat_session = service.get_session(chat_sid)
    assert chat_session.agent == "anthropic" and chat_session.mode == "chat"
    assert chat_session.prompt == "Fix the bug"
    assert chat_session.status == "completed" and chat_session.parent_id == agent_sid
    assert chat_session.tokens.input == 120 and chat_session.tokens.output == 45
    # the answer came whole at the end (no chunk arrived before it): it is the end event's text, and the call
    # has no time to first token (never its whole duration)
    assert service.query(session_id=chat_sid, event_type="stream") == []
    assert service.query(session_id=chat_sid, event_type="end")[0].stream_data == "Here is the fix"
    assert chat_session.ttft_ms is None and chat_session.kind == "llm" and chat_session.model == "claude-sonnet-4-5"
    start = service.query(session_id=chat_sid, event_type="start")[0]
    assert start.metadata["model"] == "claude-sonnet-4-5" and start.metadata["service.name"] == "chat-app"
    failed = service.get_session(fail_sid)
    assert failed.status == "failed" and failed.agent == "openai"
    error = service.query(session_id=fail_sid, event_type="error")[0]
    assert error.error_type == "TimeoutError" and error.error_message == "upstream timed out"
    assert service.get_session(agent_sid).agent == "planner" and service.get_session(agent_sid).kind == "agent"


def test_gzip_protobuf_and_retries_store_nothing_twice(api):
    service, server, client = api
    provider, tracer = _tracer(server.url, compression=Compression.Gzip)
    with tracer.start_as_current_span("chat", attributes={"gen_ai.provider.name": "anthropic"}):
        pass
    provider.shutdown()
    service.flush()
    first = len(service.query(limit=100))
    assert first == 2  # start and end
    request = json.loads((OTLP_DATA / "trace.json").read_text()) if OTLP_DATA.exists() else None
    if request is not None:  # the same JSON request twice: ids come from the trace, so nothing doubles
        for _ in range(2):
            assert client.post("/v1/traces", json=request).status_code == 200
        service.flush()
        assert len(service.query(limit=100)) == first + 2


def test_logs_from_the_sdk_become_events(api):
    from opentelemetry._logs import SeverityNumber
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor

    service, server, _ = api
    provider = LoggerProvider(resource=Resource.create({"service.name": "chat-app"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=f"{server.url}/v1/logs")))
    logger = provider.get_logger("otlp-test")
    logger.emit(body="cache miss for user-7", severity_text="WARN", severity_number=SeverityNumber.WARN,
                attributes={"gen_ai.provider.name": "anthropic"}, event_name="cache.miss")
    provider.shutdown()
    service.flush()
    [event] = service.query(category="anthropic")
    assert event.event_type == "custom" and event.label == "WARN" and event.action == "cache.miss"
    assert event.metadata["body"] == "cache miss for user-7"
    assert event.metadata["severity_number"] == SeverityNumber.WARN.value


@pytest.mark.skipif(not OTLP_DATA.exists(), reason="../shared/data/otlp is absent")
@pytest.mark.parametrize(("name", "path", "count"), [("trace.json", "/v1/traces", 2), ("logs.json", "/v1/logs", 1),
                                                     ("events.json", "/v1/logs", 1)])
def test_the_specification_examples_are_ingested(api, name, path, count):
    service, _, client = api
    body = (OTLP_DATA / name).read_bytes()
    response = client.post(path, content=gzip.compress(body),
                           headers={"content-type": "application/json", "content-encoding": "gzip"})
    assert response.status_code == 200 and response.json() == {}
    service.flush()
    events = service.query(limit=100)
    assert len(events) == count
    assert all(e.metadata.get("service.name") == "my.service" for e in events)


def test_partial_success_names_the_rejected_spans(api):
    service, _, client = api
    good = {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "ok",
            "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": "1544712661000000000"}
    bad = {**good, "spanId": "zz", "name": "broken"}
    request = {"resourceSpans": [{"resource": {"attributes": []}, "scopeSpans": [{"spans": [good, bad]}]}]}
    response = client.post("/v1/traces", json=request)
    assert response.status_code == 200
    partial = response.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "1" and "spanId" in partial["errorMessage"]
    service.flush()
    assert len(service.query()) == 2


def test_protobuf_partial_success_and_errors_use_protobuf(api):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    _, _, client = api
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id = bytes(16)  # all zeros: invalid
    span.span_id = b"\x01" * 8
    span.start_time_unix_nano = 1
    response = client.post("/v1/traces", content=request.SerializeToString(),
                           headers={"content-type": "application/x-protobuf"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-protobuf"
    assert ExportTraceServiceResponse.FromString(response.content).partial_success.rejected_spans == 1
    garbage = client.post("/v1/traces", content=b"\xff\xff\xff", headers={"content-type": "application/x-protobuf"})
    assert garbage.status_code == 400 and garbage.headers["content-type"] == "application/x-protobuf"
    assert b"ExportTraceServiceRequest" in garbage.content
    wrong_type = client.post("/v1/logs", content=b"{}", headers={"content-type": "text/plain"})
    assert wrong_type.status_code == 415
    bad_json = client.post("/v1/logs", content=b"[1, 2", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and "message" in orjson.loads(bad_json.content)


def test_one_out_of_range_log_record_is_rejected_alone(api):
    """Needs the kernel's gate: a record whose time no store can hold is named in partialSuccess; the rest is stored."""
    service, _, client = api
    record = {"timeUnixNano": "1544712660300000000", "body": {"stringValue": "fine"},
              "attributes": [{"key": "gen_ai.provider.name", "value": {"stringValue": "anthropic"}}]}
    bad = {**record, "timeUnixNano": "99999999999999999999", "body": {"stringValue": "from the year 5138"}}
    request = {"resourceLogs": [{"scopeLogs": [{"logRecords": [record, bad, {**record, "body": {"stringValue": "2"}}]}]}]}
    response = client.post("/v1/logs", json=request)
    assert response.status_code == 200
    partial = response.json()["partialSuccess"]
    assert partial["rejectedLogRecords"] == "1" and "#1" in partial["errorMessage"]
    assert "timestamp" in partial["errorMessage"]
    service.flush()
    assert sorted(e.metadata["body"] for e in service.query(category="anthropic")) == ["2", "fine"]


def test_one_out_of_range_span_is_rejected_whole(api):
    """Needs the kernel's gate: the span is refused with all its events (no session left open), the others stored."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    service, _, client = api
    request = ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add().spans
    for index, end in enumerate((1_544_712_661_000_000_000, 2**64 - 1, 1_544_712_662_000_000_000)):
        span = spans.add()
        span.trace_id = bytes([index + 1]) * 16
        span.span_id = bytes([index + 1]) * 8
        span.name = f"span-{index}"
        span.start_time_unix_nano = 1_544_712_660_000_000_000
        span.end_time_unix_nano = end  # the second ends in the year 2554
    response = client.post("/v1/traces", content=request.SerializeToString(),
                           headers={"content-type": "application/x-protobuf"})
    assert response.status_code == 200
    partial = ExportTraceServiceResponse.FromString(response.content).partial_success
    assert partial.rejected_spans == 1 and "span-1" in partial.error_message
    service.flush()
    stored = service.query(limit=100)
    assert sorted((e.metadata["otel.span_name"], e.event_type) for e in stored) == [
        ("span-0", "end"), ("span-0", "start"), ("span-2", "end"), ("span-2", "start")]
