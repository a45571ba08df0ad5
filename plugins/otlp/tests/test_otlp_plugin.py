"""OTLP export files read back, the live storage provider against a receiver that decodes with opentelemetry-proto,
and a round trip through this project's own OTLP ingest (the api plugin)."""

from __future__ import annotations

import gzip
import http.server
import io
import threading
import time
from collections import Counter

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from vibekit_telemetry import TelemetryService


def _workload(service: TelemetryService) -> None:
    parent = service.track_start("planner", "invoke_agent", "Plan the release", metadata={"team": "core"})
    child = service.track_start("anthropic", "chat", "Summarise the changelog — résumé",
                                metadata={"model": "claude-sonnet-4-5", "temperature": 0.2, "tags": ["a", "b"]},
                                parent_session_id=parent)
    for i in range(3):
        service.track_stream(child, f"part {i} ")
    service.track({"event_type": "custom", "session_id": child, "category": "anthropic", "action": "tool_call",
                   "label": "search", "value": 2.0, "metadata": {"query": "changelog"}})
    service.track_end(child, metadata={"model": "claude-sonnet-4-5", "input_tokens": 120, "output_tokens": 40})
    failing = service.track_start("openai", "chat", "Translate", metadata={"model": "gpt-5"})
    service.track_error(failing, error_type="TimeoutError", message="upstream timed out", stack="Traceback ...")
    service.track_end(failing, "failed")
    service.track_end(parent)
    service.track({"event_type": "custom", "category": "user-action", "action": "click", "label": "submit",
                   "value": 1, "metadata": {"page": {"path": "/home"}}})


def _shape(service: TelemetryService) -> dict:
    events = list(service.iter_events())
    return {
        "types": Counter(e.event_type for e in events),
        "chunks": sorted(e.stream_data for e in events if e.event_type == "stream"),
        "errors": sorted((e.error_type, e.error_message) for e in events if e.event_type == "error"),
        "statuses": sorted(s.status for s in service.get_sessions()),
        "prompts": sorted(s.prompt for s in service.get_sessions() if s.prompt),
        "custom": sorted((e.category, e.action, e.label, e.value) for e in events if e.event_type == "custom"),
        "loose": [e.metadata for e in events if e.session_id is None],
        "tokens": sorted((s.tokens.input, s.tokens.output) for s in service.get_sessions()),
        "tree": sorted((s.agent, s.parent_id is not None) for s in service.get_sessions()),
    }


@pytest.mark.parametrize("fmt", ["otlp", "otlp-proto"])
def test_an_otlp_export_reads_back_with_every_event(tmp_path, fmt):
    with TelemetryService(data_dir=str(tmp_path / "a"), service_name="chat-app") as source:
        _workload(source)
        path = tmp_path / f"events.{fmt}.gz"
        assert source.export(fmt, output=path, compression="gzip") == 12
        expected = _shape(source)
    with TelemetryService(data_dir=str(tmp_path / "b")) as target:
        result = target.import_events(path, fmt)
        assert result.rejected == 0
        assert _shape(target) == expected
        child = next(s for s in target.get_sessions() if s.agent == "anthropic")
        start = target.query(session_id=child.id, event_type="start")[0]
        assert start.metadata["temperature"] == 0.2 and start.metadata["tags"] == ["a", "b"]


def test_the_export_follows_the_genai_conventions(tmp_path):
    import orjson

    with TelemetryService(data_dir=str(tmp_path), service_name="chat-app", service_version="2.0.0") as source:
        _workload(source)
        lines = [orjson.loads(line) for line in source.export("otlp").splitlines()]
    spans = [s for line in lines if "resourceSpans" in line for r in line["resourceSpans"]
             for scope in r["scopeSpans"] for s in scope["spans"]]
    assert len(spans) == 3
    resource = {a["key"]: a["value"] for a in lines[0]["resourceSpans"][0]["resource"]["attributes"]}
    assert resource["service.name"] == {"stringValue": "chat-app"}
    assert resource["service.version"] == {"stringValue": "2.0.0"}
    chat = next(s for s in spans if s["name"] == "chat claude-sonnet-4-5")
    attrs = {a["key"]: a["value"] for a in chat["attributes"]}
    assert attrs["gen_ai.operation.name"] == {"stringValue": "chat"}
    assert attrs["gen_ai.provider.name"] == {"stringValue": "anthropic"}
    assert attrs["gen_ai.request.model"] == {"stringValue": "claude-sonnet-4-5"}
    assert attrs["gen_ai.usage.input_tokens"] == {"intValue": "120"}
    assert [e["name"] for e in chat["events"]] == ["gen_ai.choice"] * 3 + ["tool_call"]
    planner = next(s for s in spans if s["name"] == "invoke_agent")
    assert chat["parentSpanId"] == planner["spanId"] and chat["traceId"] == planner["traceId"]
    failed = next(s for s in spans if s["name"] == "chat gpt-5")
    assert failed["status"]["code"] == 2 and failed["events"][0]["name"] == "exception"


class _Receiver(http.server.ThreadingHTTPServer):
    """A local OTLP/HTTP receiver decoding with the official protobuf messages; scripted answers go first."""

    def __init__(self) -> None:
        self.spans: list = []
        self.logs: list = []
        self.answers: list[tuple[int, dict]] = []
        self.requests = 0
        self.headers_seen: list[dict] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status, headers=None):
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("content-length", "0")
                self.end_headers()

            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.requests += 1
                receiver.headers_seen.append(dict(self.headers))
                if receiver.answers:
                    self._answer(*receiver.answers.pop(0))
                    return
                if self.path == "/v1/traces":
                    request = ExportTraceServiceRequest.FromString(body)
                    receiver.spans += [s for r in request.resource_spans for ss in r.scope_spans for s in ss.spans]
                else:
                    request = ExportLogsServiceRequest.FromString(body)
                    receiver.logs += [x for r in request.resource_logs for sl in r.scope_logs for x in sl.log_records]
                self._answer(200, {"content-type": "application/x-protobuf"})

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def receiver():
    server = _Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def test_the_storage_provider_sends_sessions_as_spans_and_retries_after_503(receiver, tmp_path, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=collector-key")
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}"
    receiver.answers.append((503, {"retry-after": "1"}))
    with TelemetryService(data_dir=str(tmp_path), storage=[
            {"type": "sqlite"},
            {"type": "otlp", "options": {"endpoint": endpoint, "resource_attributes": {"deployment.environment": "ci"}}}],
            reliability={"retry": {"max_attempts": 5, "base_delay_ms": 10}}) as service:
        _workload(service)
        service.flush()
        health = service.get_health_status().components["otlp"]
    assert sorted(s.name for s in receiver.spans) == ["chat claude-sonnet-4-5", "chat gpt-5", "invoke_agent"]
    assert len(receiver.logs) == 1
    assert health["retried"] >= 1 or receiver.requests >= 3
    assert receiver.headers_seen[0]["x-api-key"] == "collector-key"


def test_a_round_trip_through_the_api_ingest_keeps_every_event(tmp_path):
    pytest.importorskip("vibekit_telemetry_api")
    with TelemetryService(data_dir=str(tmp_path / "collector")) as collector:
        server = collector.start_api_server(port=0, rate_limit={"enabled": False})
        with TelemetryService(data_dir=str(tmp_path / "app"), storage=[
                {"type": "sqlite"}, {"type": "otlp", "options": {"endpoint": server.url, "protocol": "http/json"}}]) as app:
            _workload(app)
            app.flush()
            expected = _shape(app)
        deadline = time.monotonic() + 10
        while sum(1 for _ in collector.iter_events()) < 12:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert _shape(collector) == expected


def test_the_grpc_protocol_round_trips_through_the_grpc_plugin(tmp_path):
    pytest.importorskip("vibekit_telemetry_grpc")
    with TelemetryService(data_dir=str(tmp_path / "collector"),
                          streaming={"enabled": True, "provider": "grpc", "options": {"port": 0}}) as collector:
        port = collector.host.meta["grpc"]["object"].port
        with TelemetryService(data_dir=str(tmp_path / "app"), storage=[
                {"type": "sqlite"}, {"type": "otlp", "options": {"endpoint": f"http://127.0.0.1:{port}",
                                                                 "protocol": "grpc"}}]) as app:
            _workload(app)
            app.flush()
            expected = _shape(app)
        assert _shape(collector) == expected


def test_an_unknown_protocol_is_a_clear_error(tmp_path):
    from vibekit_telemetry import ConfigError

    with pytest.raises(ConfigError, match="protocol"):
        TelemetryService(data_dir=str(tmp_path), storage=[{"type": "otlp", "options": {"protocol": "carrier-pigeon"}}])


def test_unreadable_records_name_their_position(tmp_path):
    with TelemetryService(data_dir=str(tmp_path)) as service:
        with pytest.raises(ValueError, match="line 1"):
            service.import_events(io.BytesIO(b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"spanId": "x"}]}]}]}\n'),
                                  "otlp")
        with pytest.raises(ValueError, match="record 1"):
            service.import_events(io.BytesIO(b"X\x00\x00\x00\x01a"), "otlp-proto")
