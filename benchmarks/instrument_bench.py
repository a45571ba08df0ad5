"""What auto-instrumentation costs: the openai SDK's calls bare, under ``telemetry.instrument("openai")``, and under
``opentelemetry-instrumentation-openai-v2`` with a discarding exporter, in one run.

    uv run python -m benchmarks.instrument_bench              # 2,000 calls of each kind
    uv run python -m benchmarks.instrument_bench --calls 500

The SDK talks to an in-process transport (``httpx.MockTransport``) that answers at once with canned bodies,
so what is timed is the SDK's own work plus the wrapper's, not a network: a plain chat completion, and a
streamed one of 100 chunks (per-chunk figures divide the difference by 100).  "Beyond track()" subtracts what
the recording's ``track()`` calls cost by themselves (one start and one end per call, one per chunk), measured
in the same run: that part is the service's, the rest the wrapper's.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

CHUNKS = 100
_MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello"}]


def _completion() -> bytes:
    return json.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14,
                  "prompt_tokens_details": {"cached_tokens": 4}, "completion_tokens_details": {"reasoning_tokens": 0}},
    }).encode()


def _stream_body() -> bytes:
    frames = []
    for index in range(CHUNKS):
        frames.append({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
                       "choices": [{"index": 0, "delta": {"content": f" w{index}"}, "finish_reason": None}]})
    frames.append({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 12, "completion_tokens": CHUNKS, "total_tokens": 12 + CHUNKS}})
    return b"".join(b"data: " + json.dumps(f).encode() + b"\n\n" for f in frames) + b"data: [DONE]\n\n"


def _client() -> Any:
    import httpx
    import openai

    plain, streamed = _completion(), _stream_body()

    def answer(request: httpx.Request) -> httpx.Response:
        if b'"stream":true' in request.content:
            return httpx.Response(200, content=streamed, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, content=plain, headers={"content-type": "application/json"})

    return openai.OpenAI(api_key="sk-bench", base_url="http://bench.invalid/v1", max_retries=0,
                         http_client=httpx.Client(transport=httpx.MockTransport(answer)))


def _time(fn: Any, n: int) -> float:
    """Median µs of ``fn()`` over n calls (after a warm-up)."""
    for _ in range(min(50, n)):
        fn()
    gc.collect()
    clock = time.perf_counter_ns
    timings = []
    for _ in range(n):
        start = clock()
        fn()
        timings.append(clock() - start)
    return statistics.median(timings) / 1000


def _calls(client: Any) -> tuple[Any, Any]:
    def chat() -> None:
        client.chat.completions.create(model="gpt-4o-mini", messages=_MESSAGES)

    def stream() -> None:
        for _ in client.chat.completions.create(model="gpt-4o-mini", messages=_MESSAGES, stream=True,
                                                stream_options={"include_usage": True}):
            pass
    return chat, stream


def run(calls: int = 2000) -> dict[str, Any]:
    """Every figure, in one run."""
    from vibekit_telemetry import TelemetryService

    client = _client()
    chat, stream = _calls(client)
    stream_calls = max(50, calls // 10)
    bare = {"chat_us": _time(chat, calls), "stream_us": _time(stream, stream_calls)}
    with tempfile.TemporaryDirectory(prefix="vibekit-instrument-") as tmp:
        telemetry = TelemetryService(storage=[{"type": "sqlite", "options": {"path": str(Path(tmp) / "t.db")}}],
                                     data_dir=tmp, max_queue_size=10_000_000)
        telemetry.instrument("openai")
        ours = {"chat_us": _time(chat, calls), "stream_us": _time(stream, stream_calls)}
        telemetry.uninstrument()
        # what the recording's own track() calls cost: a start, an end (with usage) and the chunks
        sid = telemetry.track_start("openai", "chat", "Say hello", kind="llm", model="gpt-4o-mini")
        track_us = _time(lambda: telemetry.track_stream(sid, " w1"), calls)
        telemetry.shutdown()
    otel = _otel_v2(chat, stream, calls, stream_calls)
    out: dict[str, Any] = {
        "calls": calls, "chunks": CHUNKS, "bare": bare, "instrumented": ours, "track_us": track_us,
        "overhead_per_call_us": ours["chat_us"] - bare["chat_us"],
        "overhead_per_chunk_us": (ours["stream_us"] - bare["stream_us"]) / CHUNKS,
    }
    # a call records 2 events (start, end), a streamed call 2 + one per chunk
    out["beyond_track_per_call_us"] = out["overhead_per_call_us"] - 2 * track_us
    out["beyond_track_per_chunk_us"] = out["overhead_per_chunk_us"] - track_us
    if otel is not None:
        out["otel_v2"] = otel
        out["otel_v2_overhead_per_call_us"] = otel["chat_us"] - bare["chat_us"]
        out["otel_v2_overhead_per_chunk_us"] = (otel["stream_us"] - bare["stream_us"]) / CHUNKS
    return out


def _otel_v2(chat: Any, stream: Any, calls: int, stream_calls: int) -> dict[str, float] | None:
    """The same calls under opentelemetry-instrumentation-openai-v2, spans to a discarding exporter."""
    try:
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    except ImportError:
        return None

    class Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:  # noqa: ARG002 - the caller's cost is measured
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        return {"chat_us": _time(chat, calls), "stream_us": _time(stream, stream_calls)}
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instrument_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    r = run(args.calls)
    print(f"chat call: bare {r['bare']['chat_us']:.1f} µs, instrumented {r['instrumented']['chat_us']:.1f} µs "
          f"(+{r['overhead_per_call_us']:.1f} µs, {r['beyond_track_per_call_us']:.1f} µs beyond track())")
    print(f"streamed call of {CHUNKS} chunks: bare {r['bare']['stream_us']:.0f} µs, instrumented "
          f"{r['instrumented']['stream_us']:.0f} µs (+{r['overhead_per_chunk_us']:.1f} µs a chunk, "
          f"{r['beyond_track_per_chunk_us']:.1f} µs beyond track()); track() {r['track_us']:.1f} µs")
    if "otel_v2" in r:
        print(f"openai-v2 (OTel, discarding exporter): chat +{r['otel_v2_overhead_per_call_us']:.1f} µs, "
              f"+{r['otel_v2_overhead_per_chunk_us']:.1f} µs a chunk")


if __name__ == "__main__":
    main()
