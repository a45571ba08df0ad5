"""The captures of real GenAI instrumentation: the saved files are valid OTLP/JSON, and the driver still runs."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf.json_format import ParseDict
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from .capture import CAPTURES, ROOT, SCENARIOS

FILES = sorted(CAPTURES.glob("*.json"))
REQUESTS = {"traces": ExportTraceServiceRequest, "logs": ExportLogsServiceRequest,
            "metrics": ExportMetricsServiceRequest}


def _base64_ids(node):
    if isinstance(node, dict):
        return {key: base64.b64encode(bytes.fromhex(value)).decode()
                if key in ("traceId", "spanId", "parentSpanId") and isinstance(value, str) else _base64_ids(value)
                for key, value in node.items()}
    if isinstance(node, list):
        return [_base64_ids(item) for item in node]
    return node


def test_every_scenario_has_captures():
    names = {path.name.rsplit("-", 1)[0] for path in FILES}
    for scenario in SCENARIOS:
        assert any(name.startswith(f"{scenario.name}-") or name == scenario.name for name in names), scenario.name


@pytest.mark.parametrize("path", FILES, ids=[path.stem for path in FILES])
def test_capture_is_valid_otlp_json(path: Path):
    capture = json.loads(path.read_text())

    assert set(capture) >= {"scenario", "traces", "logs", "metrics", "client"}
    assert capture["traces"]["resourceSpans"], "every call emitted at least one span"
    for signal, request in REQUESTS.items():
        if capture[signal] is not None:
            ParseDict(_base64_ids(capture[signal]), request())
    for resource in capture["traces"]["resourceSpans"]:
        for scope in resource["scopeSpans"]:
            for span in scope["spans"]:
                assert len(span["traceId"]) == 32 and len(span["spanId"]) == 16
    client = capture["client"]
    assert client.get("duration_ms") or client.get("calls")


def test_capture_driver_regenerates_a_scenario(tmp_path):
    done = subprocess.run([sys.executable, "-m", "tests.genai.capture", "--out", str(tmp_path),
                           "openai_v2-span_and_event"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)

    assert done.returncode == 0, done.stderr
    capture = json.loads((tmp_path / "openai_v2-span_and_event-chat.json").read_text())
    [span] = capture["traces"]["resourceSpans"][0]["scopeSpans"][0]["spans"]
    [record] = capture["logs"]["resourceLogs"][0]["scopeLogs"][0]["logRecords"]
    assert span["name"] == "chat gpt-4o-mini"
    assert record["eventName"] == "gen_ai.client.inference.operation.details"
    assert (record["traceId"], record["spanId"]) == (span["traceId"], span["spanId"])
    assert {p.name for p in tmp_path.iterdir()} >= {"openai_v2-span_and_event-agent.json",
                                                    "openai_v2-span_and_event-chat-stream.json"}
