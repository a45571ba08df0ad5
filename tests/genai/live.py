"""Run a capture scenario live into vibekit-telemetry, both ways at once: in process and over OTLP/HTTP.

    uv run python -m tests.genai.live openinference-default --out /tmp/run

The scenario's real SDK calls (``tests.genai.capture``) go to the fake LLM server,
instrumented into OpenTelemetry SDK providers that hold two things side by side:
``telemetry.span_processor()`` / ``telemetry.log_processor()`` of one service
(``<out>/inprocess/telemetry.db``), and the SDK's own OTLP/HTTP exporters posting to a
real ``telemetry api`` server of another (``<out>/otlp/telemetry.db``).  Both see the
same spans, so the test can ask that they give the same sessions.  Langfuse brings
its own provider and exporter, so it goes over OTLP only.  What the client saw of
each call is written to ``<out>/calls.json``.

Each run is a subprocess of its own (``tests/genai/test_sessions.py`` starts it):
instrumentors patch the SDKs globally.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .capture import SCENARIOS, _warm_up

ANALYTICS = {"enabled": True}


class LiveRecorder:
    """The recorder interface of ``tests.genai.capture`` (``providers``, ``call``), writing into two services."""

    def __init__(self, scenario: dict[str, Any], inprocess: Any, api_url: str) -> None:
        from opentelemetry import _logs, metrics, trace
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        self.scenario = scenario
        self.receiver = None
        self.langfuse_base_url = api_url
        self.calls: list[dict[str, Any]] = []
        resource = Resource.create({"service.name": "genai-live"})
        self.tracer_provider = TracerProvider(resource=resource)
        self.tracer_provider.add_span_processor(inprocess.span_processor())
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{api_url}/v1/traces")))
        trace.set_tracer_provider(self.tracer_provider)
        self.logger_provider = LoggerProvider(resource=resource)
        self.logger_provider.add_log_record_processor(inprocess.log_processor())
        self.logger_provider.add_log_record_processor(
            SimpleLogRecordProcessor(OTLPLogExporter(endpoint=f"{api_url}/v1/logs")))
        _logs.set_logger_provider(self.logger_provider)
        self.meter_provider = MeterProvider(resource=resource)
        metrics.set_meter_provider(self.meter_provider)

    @property
    def providers(self) -> dict[str, Any]:
        """The keyword arguments an instrumentor's ``instrument()`` takes for these providers."""
        return {"tracer_provider": self.tracer_provider, "logger_provider": self.logger_provider,
                "meter_provider": self.meter_provider}

    def call(self, name: str, run: Callable[[], dict[str, Any]], *, flush: Callable[[], None] | None = None) -> None:
        """Run one call and keep what the client saw of it."""
        client = run()
        if flush is not None:
            flush()
        self.calls.append({"name": name, "client": client})


def run(name: str, out: Path) -> None:
    """Run scenario ``name`` live; write the two databases and ``calls.json`` under ``out``."""
    from vibekit_telemetry import TelemetryService

    from .fake_llm import FakeLLM

    scenario = next(s for s in SCENARIOS if s.name == name)
    described = {"library": scenario.library, "mode": scenario.mode}
    inprocess = TelemetryService(service_name="genai-live", data_dir=str(out / "inprocess"), analytics=ANALYTICS)
    remote = TelemetryService(service_name="genai-live", data_dir=str(out / "otlp"), analytics=ANALYTICS)
    server = remote.start_api_server(port=0, rate_limit={"enabled": False})
    try:
        with FakeLLM() as fake:
            _warm_up(fake)
            recorder = LiveRecorder(described, inprocess, server.url)
            scenario.run(recorder, fake)
            recorder.tracer_provider.force_flush()
            recorder.logger_provider.force_flush()
    finally:
        inprocess.shutdown()
        remote.shutdown()
    (out / "calls.json").write_text(json.dumps({"scenario": described, "calls": recorder.calls}, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.genai.live", description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("LANGFUSE_OTEL_TRACES_EXPORT_PATH", "v1/traces")  # Langfuse posts to our OTLP route
    run(args.scenario, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
