"""What GenAI spans cost: the in-process bridge per span against the OpenTelemetry SDK's own batch processor,
and OTLP/HTTP ingest of GenAI spans per second.

    uv run python -m benchmarks.genai_bench            # 20,000 spans per figure
    uv run python -m benchmarks.genai_bench --spans 5000

Both span figures time the application's side only: ending a chat span with the attributes an OTel GenAI
instrumentation sets (model, usage with cache and reasoning counts, messages, a first-token event), p50 and
p99 of ``span.end()`` plus the span's creation.  The peer is ``BatchSpanProcessor`` with an exporter that
discards, the cheapest thing the SDK does with a span; ours is ``telemetry.span_processor()`` mapping the
span into a session (validation, queueing; storage runs on the flusher).  The ingest figure posts
``ExportTraceServiceRequest`` protobufs of 100 such spans to a real ``telemetry api`` server on 127.0.0.1
and counts sessions stored per second, end to end.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path
from typing import Any

_MESSAGES = json.dumps([{"role": "system", "parts": [{"type": "text", "content": "You are terse."}]},
                        {"role": "user", "parts": [{"type": "text", "content": "Summarise the changelog"}]}])
_OUTPUT = json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": "Three fixes and a feature."}],
                       "finish_reason": "stop"}])
ATTRIBUTES = {
    "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.response.model": "gpt-4o-mini-2024-07-18", "gen_ai.usage.input_tokens": 1200,
    "gen_ai.usage.output_tokens": 80, "gen_ai.usage.cache_read.input_tokens": 1000,
    "gen_ai.usage.reasoning.output_tokens": 16, "gen_ai.response.finish_reasons": ("stop",),
    "gen_ai.input.messages": _MESSAGES, "gen_ai.output.messages": _OUTPUT, "gen_ai.conversation.id": "conv-1",
}


def _percentiles(timings: list[int]) -> dict[str, float]:
    timings.sort()
    return {"p50": timings[len(timings) // 2] / 1000, "p99": timings[int(len(timings) * 0.99)] / 1000}


def _time_spans(provider: Any, n: int) -> dict[str, float]:
    tracer = provider.get_tracer("bench")
    clock = time.perf_counter_ns
    timings = []
    gc.collect()
    for _ in range(n):
        start = clock()
        span = tracer.start_span("chat gpt-4o-mini", attributes=ATTRIBUTES)
        span.add_event("gen_ai.content.completion.chunk")
        span.end()
        timings.append(clock() - start)
    return _percentiles(timings)


def bridge_vs_batch(n: int, workdir: Path) -> dict[str, Any]:
    """Per-span cost of ``telemetry.span_processor()`` and of ``BatchSpanProcessor`` (discarding), same spans."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from vibekit_telemetry import TelemetryService

    class Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:  # noqa: ARG002 - the caller's cost is measured
            return SpanExportResult.SUCCESS

    peer = TracerProvider()
    peer.add_span_processor(BatchSpanProcessor(Discard(), max_queue_size=n + 10))
    batch = _time_spans(peer, n)
    peer.shutdown()
    service = TelemetryService(storage=[{"type": "sqlite", "options": {"path": str(workdir / "bridge.db")}}],
                               data_dir=str(workdir), max_queue_size=4 * n + 10)
    ours = TracerProvider()
    ours.add_span_processor(service.span_processor())
    bridge = _time_spans(ours, n)
    service.flush()
    sessions = service.count_sessions()
    service.shutdown()
    if sessions != n:
        raise RuntimeError(f"the bridge stored {sessions} sessions of {n} spans")
    return {"bridge_us": bridge, "batch_processor_us": batch, "ratio_p50": bridge["p50"] / batch["p50"]}


def otlp_ingest(n: int, workdir: Path) -> dict[str, Any]:
    """Sessions per second through ``POST /v1/traces`` (protobuf, 100 spans a request) into SQLite."""
    import httpx
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from vibekit_telemetry import TelemetryService

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    _time_spans(provider, n)
    spans = memory.get_finished_spans()
    bodies = [encode_spans(spans[i:i + 100]).SerializeToString() for i in range(0, len(spans), 100)]
    service = TelemetryService(storage=[{"type": "sqlite", "options": {"path": str(workdir / "ingest.db")}}],
                               data_dir=str(workdir), max_queue_size=4 * n + 10)
    server = service.start_api_server(port=0, rate_limit={"enabled": False})
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            started = time.perf_counter()
            for body in bodies:
                answer = client.post("/v1/traces", content=body, headers={"content-type": "application/x-protobuf"})
                answer.raise_for_status()
            service.flush()
            elapsed = time.perf_counter() - started
        stored = service.count_sessions()
    finally:
        service.shutdown()
    if stored != n:
        raise RuntimeError(f"OTLP ingest stored {stored} sessions of {n} spans")
    return {"spans_per_s": n / elapsed, "spans": n}


def run(spans: int = 20_000) -> dict[str, Any]:
    """Both measurements, in one run."""
    with tempfile.TemporaryDirectory(prefix="vibekit-genai-") as tmp:
        workdir = Path(tmp)
        (workdir / "a").mkdir()
        (workdir / "b").mkdir()
        return {"bridge": bridge_vs_batch(spans, workdir / "a"), "otlp": otlp_ingest(spans // 2, workdir / "b")}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.genai_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=20_000)
    args = parser.parse_args()
    result = run(args.spans)
    bridge = result["bridge"]
    print(f"span_processor(): p50 {bridge['bridge_us']['p50']:.1f} µs, p99 {bridge['bridge_us']['p99']:.1f} µs per span")
    print(f"BatchSpanProcessor (discarding): p50 {bridge['batch_processor_us']['p50']:.1f} µs, "
          f"p99 {bridge['batch_processor_us']['p99']:.1f} µs per span")
    print(f"bridge / batch processor (p50): {bridge['ratio_p50']:.2f}x")
    print(f"OTLP/HTTP ingest of GenAI spans: {result['otlp']['spans_per_s']:,.0f} spans/s into SQLite")


if __name__ == "__main__":
    main()
