"""Capture what real GenAI instrumentation libraries emit, as OTLP/JSON fixture files.

    uv run python -m tests.genai.capture                       # every scenario
    uv run python -m tests.genai.capture openai_v2-default     # some, by name
    uv run python -m tests.genai.capture --list

Each scenario (one library in one mode) runs in a subprocess of its own, with
its environment variables set before anything is imported, so instrumentation
never leaks from one into the next.  There the real SDK (``openai``,
``anthropic``) talks to :class:`~tests.genai.fake_llm.FakeLLM`, instrumented
into OpenTelemetry SDK providers registered globally (as an application would)
with in-memory exporters: a ``TracerProvider``, a ``LoggerProvider`` and a
``MeterProvider`` whose reader asks for delta temporality, so each call's
metrics are its own.  The Langfuse SDK brings its own provider and exports
over OTLP/HTTP: there the capture is what :class:`~tests.genai.otlp_receiver.OTLPReceiver`
received.

Each call becomes ``captures/<library>-<mode>-<call>.json``::

    {"scenario": {...what ran: library, mode, env, versions},
     "traces": ExportTraceServiceRequest | null,    # OTLP/JSON: hex ids, integer enums
     "logs": ExportLogsServiceRequest | null,
     "metrics": ExportMetricsServiceRequest | null,
     "client": {...what the calling code measured and knew}}

and the Langfuse files also ``received``: each OTLP/HTTP request's method,
path, content type and encoding, and size, as the receiver saw them.

``client`` holds ``model``, ``stream``, ``start_time_unix_nano`` /
``first_token_time_unix_nano`` / ``end_time_unix_nano`` and ``ttft_ms`` /
``duration_ms`` (``perf_counter`` around the SDK call; TTFT to the first chunk
with content or a tool call, ``None`` when not streamed), ``usage`` as the SDK
parsed it (``model_dump(exclude_none=True)``), ``tokens`` (the same counts in
neutral names: ``input`` is the provider's own input count — OpenAI's includes
the cached tokens, Anthropic's excludes cache reads and writes — ``output``,
``cache_read``, ``cache_creation``, ``reasoning``, ``total`` where the provider
gives one), ``system``, ``prompt`` (the last user text), ``completion`` (the
assistant text), ``tool_calls`` and ``error``.  Agent scenarios have
``calls`` (one such object per LLM call) and their sum in ``tokens``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .otlp_json import logs_json, metrics_json, spans_json

CAPTURES = Path(__file__).parent / "captures"
ROOT = Path(__file__).resolve().parents[2]

OPENAI_MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-haiku-4-5"
EMBEDDING_MODEL = "text-embedding-3-small"
SYSTEM = "You are terse."
QUESTION = "Say hello"
WEATHER_QUESTION = "Weather in Paris?"
TOOL_RESULT = '{"temp_c": 21}'
SESSION_ID = "sess-42"
USER_ID = "user-7"
CONVERSATION_ID = "conv-42"

OPENAI_TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
RESPONSES_TOOLS = [{"type": "function", "name": "get_weather", "description": "Current weather for a city.",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
ANTHROPIC_TOOLS = [{"name": "get_weather", "description": "Current weather for a city.",
                    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]

OPENAI_CHAT = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
OPENAI_TOOL_ASK = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": WEATHER_QUESTION}]
OPENAI_TOOL_ANSWERED = OPENAI_TOOL_ASK + [
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_fake_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_fake_1", "content": TOOL_RESULT},
]
ANTHROPIC_CHAT = [{"role": "user", "content": QUESTION}]
ANTHROPIC_TOOL_ASK = [{"role": "user", "content": WEATHER_QUESTION}]
ANTHROPIC_TOOL_ANSWERED = ANTHROPIC_TOOL_ASK + [
    {"role": "assistant", "content": [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_fake_1", "name": "get_weather", "input": {"city": "Paris"}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_fake_1", "content": TOOL_RESULT}]},
]

LIBRARY_DISTRIBUTIONS = ("openai", "anthropic", "opentelemetry-sdk", "opentelemetry-instrumentation-openai-v2",
                         "opentelemetry-util-genai", "openinference-instrumentation-openai",
                         "opentelemetry-instrumentation-openai", "opentelemetry-instrumentation-anthropic", "langfuse")


class ClientCall:
    """What the calling code measured around one SDK call; ``as_dict()`` is the capture's ``client``."""

    def __init__(self, model: str, *, stream: bool, messages: list[dict[str, Any]] | None = None,
                 system: str | None = None) -> None:
        self.data: dict[str, Any] = {
            "model": model, "stream": stream, "system": system, "prompt": _last_user_text(messages or []),
            "completion": None, "tool_calls": None, "usage": None, "tokens": None, "error": None,
            "response_model": None,
        }
        self._t0 = time.perf_counter()
        self._t0_ns = time.time_ns()
        self._first: float | None = None
        self._first_ns: int | None = None

    def first_token(self) -> None:
        """Mark the first chunk with content (only the first mark counts)."""
        if self._first is None:
            self._first = time.perf_counter()
            self._first_ns = time.time_ns()

    def done(self) -> dict[str, Any]:
        end, end_ns = time.perf_counter(), time.time_ns()
        self.data.update({
            "start_time_unix_nano": self._t0_ns,
            "first_token_time_unix_nano": self._first_ns if self.data["stream"] else None,
            "end_time_unix_nano": end_ns,
            "ttft_ms": round((self._first - self._t0) * 1000, 3) if self.data["stream"] and self._first else None,
            "duration_ms": round((end - self._t0) * 1000, 3),
        })
        return self.data


def _last_user_text(messages: list[dict[str, Any]]) -> str | None:
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        texts = [part.get("text") for part in content or [] if isinstance(part, dict) and part.get("type") == "text"]
        if texts:
            return "".join(texts)
    return None


def _openai_tokens(usage: Any) -> dict[str, int | None] | None:
    if usage is None:
        return None
    prompt_details = getattr(usage, "prompt_tokens_details", None) or getattr(usage, "input_tokens_details", None)
    completion_details = (getattr(usage, "completion_tokens_details", None)
                          or getattr(usage, "output_tokens_details", None))
    return {
        "input": getattr(usage, "prompt_tokens", None) or getattr(usage, "input_tokens", None),
        "output": getattr(usage, "completion_tokens", None) or getattr(usage, "output_tokens", None),
        "total": getattr(usage, "total_tokens", None),
        "cache_read": getattr(prompt_details, "cached_tokens", None),
        "cache_creation": None,
        "reasoning": getattr(completion_details, "reasoning_tokens", None),
    }


def _anthropic_tokens(usage: Any) -> dict[str, int | None] | None:
    if usage is None:
        return None
    return {"input": usage.input_tokens, "output": usage.output_tokens, "total": None,
            "cache_read": usage.cache_read_input_tokens, "cache_creation": usage.cache_creation_input_tokens,
            "reasoning": None}


def _error(call: ClientCall, exc: Exception) -> dict[str, Any]:
    call.data["error"] = {"type": type(exc).__name__, "status": getattr(exc, "status_code", None),
                          "message": str(exc)}
    return call.done()


def openai_chat(client: Any, messages: list[dict[str, Any]], *, model: str = OPENAI_MODEL, stream: bool = False,
                tools: list[dict[str, Any]] | None = None, include_usage: bool = True) -> dict[str, Any]:
    """One chat completion, plain or streamed, and what the client saw of it."""
    import openai

    system = next((m["content"] for m in messages if m["role"] == "system"), None)
    call = ClientCall(model, stream=stream, messages=messages, system=system)
    kwargs: dict[str, Any] = {"model": model, "messages": messages}
    if tools:
        kwargs["tools"] = tools
    try:
        if not stream:
            response = client.chat.completions.create(**kwargs)
            choice = response.choices[0]
            call.data["completion"] = choice.message.content
            if choice.message.tool_calls:
                call.data["tool_calls"] = [c.model_dump() for c in choice.message.tool_calls]
            usage = response.usage
            call.data["response_model"] = response.model
        else:
            if include_usage:
                kwargs["stream_options"] = {"include_usage": True}
            text, calls, usage = [], {}, None
            for chunk in client.chat.completions.create(stream=True, **kwargs):
                call.data["response_model"] = chunk.model
                if chunk.usage is not None:
                    usage = chunk.usage
                if not chunk.choices:
                    continue
                delta = chunk.choices[0].delta
                if delta.content or delta.tool_calls:
                    call.first_token()
                if delta.content:
                    text.append(delta.content)
                for piece in delta.tool_calls or []:
                    slot = calls.setdefault(piece.index, {"id": None, "type": "function",
                                                          "function": {"name": "", "arguments": ""}})
                    slot["id"] = piece.id or slot["id"]
                    if piece.function and piece.function.name:
                        slot["function"]["name"] += piece.function.name
                    if piece.function and piece.function.arguments:
                        slot["function"]["arguments"] += piece.function.arguments
            call.data["completion"] = "".join(text) or None
            call.data["tool_calls"] = [calls[i] for i in sorted(calls)] or None
    except openai.APIStatusError as exc:
        return _error(call, exc)
    call.data["usage"] = usage.model_dump(exclude_none=True) if usage is not None else None
    call.data["tokens"] = _openai_tokens(usage)
    return call.done()


def openai_responses(client: Any, *, stream: bool = False, model: str = OPENAI_MODEL) -> dict[str, Any]:
    """One Responses API call (instructions + input), plain or streamed."""
    call = ClientCall(model, stream=stream, messages=[{"role": "user", "content": QUESTION}], system=SYSTEM)
    if not stream:
        response = client.responses.create(model=model, instructions=SYSTEM, input=QUESTION)
    else:
        response = None
        for event in client.responses.create(model=model, instructions=SYSTEM, input=QUESTION, stream=True):
            if event.type == "response.output_text.delta":
                call.first_token()
            elif event.type == "response.completed":
                response = event.response
    call.data.update(completion=response.output_text, response_model=response.model,
                     usage=response.usage.model_dump(exclude_none=True), tokens=_openai_tokens(response.usage))
    return call.done()


def openai_embeddings(client: Any) -> dict[str, Any]:
    """One embeddings call."""
    call = ClientCall(EMBEDDING_MODEL, stream=False, messages=[{"role": "user", "content": QUESTION}])
    response = client.embeddings.create(model=EMBEDDING_MODEL, input=QUESTION)
    call.data.update(response_model=response.model, usage=response.usage.model_dump(exclude_none=True),
                     tokens={"input": response.usage.prompt_tokens, "output": None,
                             "total": response.usage.total_tokens, "cache_read": None, "cache_creation": None,
                             "reasoning": None},
                     completion=f"{len(response.data)} vector(s) of {len(response.data[0].embedding)}")
    return call.done()


def anthropic_messages(client: Any, messages: list[dict[str, Any]], *, model: str = ANTHROPIC_MODEL,
                       stream: str | None = None, tools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One Messages call: plain, ``stream="create"`` (``create(stream=True)``) or ``stream="helper"`` (``.stream()``)."""
    import anthropic

    call = ClientCall(model, stream=stream is not None, messages=messages, system=SYSTEM)
    kwargs: dict[str, Any] = {"model": model, "max_tokens": 64, "system": SYSTEM, "messages": messages}
    if tools:
        kwargs["tools"] = tools
    try:
        if stream is None:
            message = client.messages.create(**kwargs)
        elif stream == "create":
            message, blocks = None, {}
            for event in client.messages.create(stream=True, **kwargs):
                if event.type == "message_start":
                    message = event.message
                elif event.type == "content_block_start":
                    blocks[event.index] = event.content_block.model_dump()
                    blocks[event.index].setdefault("partial", "")
                elif event.type == "content_block_delta":
                    call.first_token()
                    if event.delta.type == "text_delta":
                        blocks[event.index]["text"] += event.delta.text
                    elif event.delta.type == "input_json_delta":
                        blocks[event.index]["partial"] += event.delta.partial_json
                elif event.type == "message_delta":
                    message.usage.output_tokens = event.usage.output_tokens
            content = []
            for index in sorted(blocks):
                block = blocks[index]
                partial = block.pop("partial")
                if block["type"] == "tool_use":
                    block["input"] = json.loads(partial or "{}")
                content.append(block)
            call.data["completion"] = "".join(b["text"] for b in content if b["type"] == "text") or None
            uses = [b for b in content if b["type"] == "tool_use"]
            call.data["tool_calls"] = [{"id": b["id"], "name": b["name"], "input": b["input"]} for b in uses] or None
            call.data.update(response_model=message.model, usage=message.usage.model_dump(exclude_none=True),
                             tokens=_anthropic_tokens(message.usage))
            return call.done()
        else:
            with client.messages.stream(**kwargs) as events:
                for event in events:
                    if event.type == "content_block_delta":
                        call.first_token()
                message = events.get_final_message()
    except anthropic.APIStatusError as exc:
        return _error(call, exc)
    call.data["completion"] = "".join(b.text for b in message.content if b.type == "text") or None
    uses = [b for b in message.content if b.type == "tool_use"]
    call.data["tool_calls"] = [{"id": b.id, "name": b.name, "input": b.input} for b in uses] or None
    call.data.update(response_model=message.model, usage=message.usage.model_dump(exclude_none=True),
                     tokens=_anthropic_tokens(message.usage))
    return call.done()


def _sum_tokens(calls: list[dict[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for call in calls:
        for key, value in (call.get("tokens") or {}).items():
            if value is not None:
                total[key] = total.get(key, 0) + value
    return total


@dataclass
class Recorder:
    """Global OpenTelemetry SDK providers with in-memory exporters; ``call()`` saves one capture file."""

    scenario: dict[str, Any]
    out: Path = CAPTURES
    spans: Any = None
    logs: Any = None
    metrics: Any = None
    tracer_provider: Any = None
    logger_provider: Any = None
    meter_provider: Any = None
    receiver: Any = None
    written: list[Path] = field(default_factory=list)

    @classmethod
    def in_memory(cls, scenario: dict[str, Any], out: Path = CAPTURES) -> Recorder:
        from opentelemetry import _logs, metrics, trace
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
        from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider, UpDownCounter
        from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        resource = Resource.create({"service.name": "genai-capture"})
        recorder = cls(scenario, out)
        recorder.spans = InMemorySpanExporter()
        recorder.tracer_provider = TracerProvider(resource=resource)
        recorder.tracer_provider.add_span_processor(SimpleSpanProcessor(recorder.spans))
        trace.set_tracer_provider(recorder.tracer_provider)
        recorder.logs = InMemoryLogRecordExporter()
        recorder.logger_provider = LoggerProvider(resource=resource)
        recorder.logger_provider.add_log_record_processor(SimpleLogRecordProcessor(recorder.logs))
        _logs.set_logger_provider(recorder.logger_provider)
        delta = AggregationTemporality.DELTA
        recorder.metrics = InMemoryMetricReader(preferred_temporality={
            Counter: delta, UpDownCounter: delta, Histogram: delta})
        recorder.meter_provider = MeterProvider(resource=resource, metric_readers=[recorder.metrics])
        metrics.set_meter_provider(recorder.meter_provider)
        return recorder

    @property
    def providers(self) -> dict[str, Any]:
        """The keyword arguments an instrumentor's ``instrument()`` takes for these providers."""
        return {"tracer_provider": self.tracer_provider, "logger_provider": self.logger_provider,
                "meter_provider": self.meter_provider}

    def call(self, name: str, run: Callable[[], dict[str, Any]], *, flush: Callable[[], None] | None = None) -> None:
        """Run one call and save what it emitted as ``<library>-<mode>-<name>.json``."""
        if self.receiver is not None:
            self.receiver.clear()
        else:
            self.spans.clear()
            self.logs.clear()
            self.metrics.get_metrics_data()  # delta temporality: what the next collection sees starts now
        client = run()
        if flush is not None:
            flush()
        if self.receiver is not None:
            exports = self.receiver.traces()
            traces = {"resourceSpans": [rs for export in exports for rs in export.get("resourceSpans", [])]}
            capture = {"scenario": self.scenario, "traces": traces if traces["resourceSpans"] else None,
                       "logs": None, "metrics": None, "client": client,
                       "received": [{"method": r["method"], "path": r["path"],
                                     "content_type": r["headers"].get("content-type"),
                                     "content_encoding": r["headers"].get("content-encoding"),
                                     "bytes": len(r["body"])} for r in self.receiver.requests]}
        else:
            capture = {"scenario": self.scenario, "traces": spans_json(self.spans.get_finished_spans()),
                       "logs": logs_json(self.logs.get_finished_logs()),
                       "metrics": metrics_json(self.metrics.get_metrics_data()), "client": client}
        path = self.out / f"{self.scenario['library']}-{self.scenario['mode']}-{name}.json"
        path.write_text(_dumps(capture) + "\n")
        self.written.append(path)


_SCALAR = r'(?:-?[\d.e+-]+|true|false|null|"[^"\n]*")'
_SITE_PACKAGES = re.compile(r'(?:/[^/"\\\s]+)+/site-packages/')
_SCALAR_LIST = re.compile(rf"\[\s*({_SCALAR}(?:,\s*{_SCALAR})*)\s*\]")


def _dumps(capture: dict[str, Any]) -> str:
    """Indented JSON with each list of scalars (histogram bounds and counts, finish reasons) on one line."""
    text = json.dumps(capture, indent=1, ensure_ascii=False)
    # stack traces name this machine's paths: keep them relative to the installed packages
    text = _SITE_PACKAGES.sub("<site-packages>/", text)
    return _SCALAR_LIST.sub(lambda m: "[" + ", ".join(part.strip() for part in m.group(1).split(",\n")) + "]", text)


@contextmanager
def _span(name: str, attributes: dict[str, Any]) -> Iterator[Any]:
    from opentelemetry import trace

    tracer = trace.get_tracer("tests.genai.capture")
    with tracer.start_as_current_span(name, kind=trace.SpanKind.INTERNAL, attributes=attributes) as span:
        yield span


def _execute_tool(call_id: str, arguments: str) -> None:
    """A manual ``execute_tool`` span, as an agent framework writes one around running the tool."""
    with _span("execute_tool get_weather", {
        "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "get_weather", "gen_ai.tool.type": "function",
        "gen_ai.tool.call.id": call_id, "gen_ai.tool.call.arguments": arguments,
        "gen_ai.tool.call.result": TOOL_RESULT,
    }):
        time.sleep(0.005)


def _agent_attributes(provider: str) -> dict[str, Any]:
    return {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "planner", "gen_ai.agent.id": "agent-1",
            "gen_ai.provider.name": provider, "gen_ai.conversation.id": CONVERSATION_ID}


def _agent_client(calls: list[dict[str, Any]]) -> dict[str, Any]:
    return {"agent": "planner", "calls": calls, "tokens": _sum_tokens(calls),
            "prompt": calls[0]["prompt"], "completion": calls[-1]["completion"],
            "start_time_unix_nano": calls[0]["start_time_unix_nano"],
            "end_time_unix_nano": calls[-1]["end_time_unix_nano"]}


def _openai_client(fake: Any, module: Any = None) -> Any:
    if module is None:
        import openai as module
    return module.OpenAI(base_url=fake.openai_url, api_key="sk-fake", max_retries=0)


def _anthropic_client(fake: Any, **options: Any) -> Any:
    import anthropic

    return anthropic.Anthropic(base_url=fake.anthropic_url, api_key="sk-ant-fake", max_retries=0, **options)


def _warm_up(fake: Any) -> None:
    """One uninstrumented call of each API first, so that lazy imports and the first connection skew no timing."""
    import anthropic
    import openai

    client = openai.OpenAI(base_url=fake.openai_url, api_key="sk-fake", max_retries=0)
    for _ in client.chat.completions.create(model=OPENAI_MODEL, messages=OPENAI_CHAT, stream=True):
        pass
    openai_chat(client, OPENAI_TOOL_ASK, tools=OPENAI_TOOLS, stream=True)
    openai_responses(client)
    openai_responses(client, stream=True)
    openai_embeddings(client)
    quiet = anthropic.Anthropic(base_url=fake.anthropic_url, api_key="k", max_retries=0, open_telemetry=False)
    anthropic_messages(quiet, ANTHROPIC_TOOL_ASK, tools=ANTHROPIC_TOOLS, stream="create")
    anthropic_messages(quiet, ANTHROPIC_CHAT, stream="helper")
    openai_chat(client, OPENAI_CHAT, model="fail-429")
    anthropic_messages(quiet, ANTHROPIC_CHAT, model="fail-429")


def _openai_calls(recorder: Recorder, client: Any, extra: tuple[str, ...] = ()) -> None:
    recorder.call("chat", lambda: openai_chat(client, OPENAI_CHAT))
    recorder.call("chat-stream", lambda: openai_chat(client, OPENAI_CHAT, stream=True))
    recorder.call("tool-call", lambda: openai_chat(client, OPENAI_TOOL_ASK, tools=OPENAI_TOOLS))
    recorder.call("tool-result", lambda: openai_chat(client, OPENAI_TOOL_ANSWERED, tools=OPENAI_TOOLS))
    recorder.call("error-429", lambda: openai_chat(client, OPENAI_CHAT, model="fail-429"))
    if "error-500" in extra:
        recorder.call("error-500", lambda: openai_chat(client, OPENAI_CHAT, model="fail-500"))
    if "chat-stream-no-usage" in extra:
        recorder.call("chat-stream-no-usage", lambda: openai_chat(client, OPENAI_CHAT, stream=True,
                                                                  include_usage=False))
    if "tool-call-stream" in extra:
        recorder.call("tool-call-stream", lambda: openai_chat(client, OPENAI_TOOL_ASK, tools=OPENAI_TOOLS,
                                                              stream=True))
    if "responses" in extra:
        recorder.call("responses", lambda: openai_responses(client))
        recorder.call("responses-stream", lambda: openai_responses(client, stream=True))
    if "embeddings" in extra:
        recorder.call("embeddings", lambda: openai_embeddings(client))


def _openai_agent(recorder: Recorder, client: Any) -> None:
    def run() -> dict[str, Any]:
        with _span("invoke_agent planner", _agent_attributes("openai")):
            first = openai_chat(client, OPENAI_TOOL_ASK, tools=OPENAI_TOOLS)
            _execute_tool(first["tool_calls"][0]["id"], first["tool_calls"][0]["function"]["arguments"])
            second = openai_chat(client, OPENAI_TOOL_ANSWERED, tools=OPENAI_TOOLS, stream=True)
        return _agent_client([first, second])

    recorder.call("agent", run)


def run_openai_v2(recorder: Recorder, fake: Any) -> None:
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(**recorder.providers)
    client = _openai_client(fake)
    extra = ("error-500", "chat-stream-no-usage", "tool-call-stream", "embeddings") \
        if recorder.scenario["mode"] == "default" else ()
    _openai_calls(recorder, client, extra)
    if recorder.scenario["mode"] in ("span_only", "span_and_event"):
        _openai_agent(recorder, client)
    instrumentor.uninstrument()


def run_openinference(recorder: Recorder, fake: Any) -> None:
    from openinference.instrumentation import using_attributes
    from openinference.instrumentation.openai import OpenAIInstrumentor

    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=recorder.tracer_provider)
    client = _openai_client(fake)
    _openai_calls(recorder, client, ("tool-call-stream", "responses", "embeddings"))

    def session() -> dict[str, Any]:
        with using_attributes(session_id=SESSION_ID, user_id=USER_ID, metadata={"tenant": "acme"}, tags=["demo"]):
            return openai_chat(client, OPENAI_CHAT, stream=True)

    recorder.call("chat-session", session)
    instrumentor.uninstrument()


def run_openllmetry_openai(recorder: Recorder, fake: Any) -> None:
    from opentelemetry.instrumentation.openai import OpenAIInstrumentor

    instrumentor = OpenAIInstrumentor(use_attributes=recorder.scenario["mode"] == "attributes")
    instrumentor.instrument(**recorder.providers)
    client = _openai_client(fake)
    extra = ("tool-call-stream", "responses", "embeddings") if recorder.scenario["mode"] == "attributes" else ()
    _openai_calls(recorder, client, extra)
    instrumentor.uninstrument()


def _anthropic_calls(recorder: Recorder, client: Any, *, full: bool) -> None:
    recorder.call("messages", lambda: anthropic_messages(client, ANTHROPIC_CHAT))
    recorder.call("messages-stream", lambda: anthropic_messages(client, ANTHROPIC_CHAT, stream="create"))
    recorder.call("messages-stream-helper", lambda: anthropic_messages(client, ANTHROPIC_CHAT, stream="helper"))
    recorder.call("tool-use", lambda: anthropic_messages(client, ANTHROPIC_TOOL_ASK, tools=ANTHROPIC_TOOLS))
    if full:
        recorder.call("tool-use-stream", lambda: anthropic_messages(client, ANTHROPIC_TOOL_ASK, tools=ANTHROPIC_TOOLS,
                                                                    stream="create"))
        recorder.call("tool-result", lambda: anthropic_messages(client, ANTHROPIC_TOOL_ANSWERED, tools=ANTHROPIC_TOOLS))
        recorder.call("error-429", lambda: anthropic_messages(client, ANTHROPIC_CHAT, model="fail-429"))


def _anthropic_agent(recorder: Recorder, client: Any) -> None:
    def run() -> dict[str, Any]:
        with _span("invoke_agent planner", _agent_attributes("anthropic")):
            first = anthropic_messages(client, ANTHROPIC_TOOL_ASK, tools=ANTHROPIC_TOOLS)
            _execute_tool(first["tool_calls"][0]["id"], json.dumps(first["tool_calls"][0]["input"]))
            second = anthropic_messages(client, ANTHROPIC_TOOL_ANSWERED, tools=ANTHROPIC_TOOLS, stream="create")
        return _agent_client([first, second])

    recorder.call("agent", run)


def run_anthropic_sdk(recorder: Recorder, fake: Any) -> None:
    client = _anthropic_client(fake)
    _anthropic_calls(recorder, client, full=True)
    if recorder.scenario["mode"] == "content":
        conversation = client.with_options(open_telemetry={**client.open_telemetry, "conversation_id": CONVERSATION_ID})
        recorder.call("messages-conversation", lambda: anthropic_messages(conversation, ANTHROPIC_CHAT))
        _anthropic_agent(recorder, client)


def run_openllmetry_anthropic(recorder: Recorder, fake: Any) -> None:
    from opentelemetry.instrumentation.anthropic import AnthropicInstrumentor

    instrumentor = AnthropicInstrumentor(use_attributes=recorder.scenario["mode"] == "attributes")
    instrumentor.instrument(**recorder.providers)
    client = _anthropic_client(fake)
    full = recorder.scenario["mode"] == "attributes"
    _anthropic_calls(recorder, client, full=full)
    if full:
        _anthropic_agent(recorder, client)
    instrumentor.uninstrument()


def run_langfuse(recorder: Recorder, fake: Any) -> None:
    from .otlp_receiver import OTLPReceiver

    # a live run (tests/genai/live.py) points Langfuse at a real ``telemetry api``; a capture at a receiver
    base_url = getattr(recorder, "langfuse_base_url", None)
    receiver = None
    if base_url is None:
        receiver = OTLPReceiver().start()
        recorder.receiver = receiver
        base_url = receiver.url
    from langfuse import Langfuse, observe, propagate_attributes

    langfuse = Langfuse(public_key="pk-lf-fake", secret_key="sk-lf-fake", base_url=base_url,
                        flush_at=1000, flush_interval=60)
    from langfuse.openai import openai as langfuse_openai

    client = _openai_client(fake, langfuse_openai)

    def observed(messages: list[dict[str, Any]], **options: Any) -> Callable[[], dict[str, Any]]:
        seen: dict[str, Any] = {}

        @observe(name="answer")
        def answer(question: str) -> str | None:
            with propagate_attributes(session_id=SESSION_ID, user_id=USER_ID, tags=["demo"]):
                seen.update(openai_chat(client, messages, **options))
                return seen["completion"]

        def run() -> dict[str, Any]:
            answer(_last_user_text(messages))
            return seen

        return run

    @observe(name="get_weather", as_type="tool")
    def get_weather(city: str) -> str:
        time.sleep(0.005)
        return TOOL_RESULT

    def agent() -> dict[str, Any]:
        calls: list[dict[str, Any]] = []

        @observe(name="planner", as_type="agent")
        def planner(question: str) -> str | None:
            with propagate_attributes(session_id=SESSION_ID, user_id=USER_ID):
                calls.append(openai_chat(client, OPENAI_TOOL_ASK, tools=OPENAI_TOOLS))
                get_weather(**json.loads(calls[0]["tool_calls"][0]["function"]["arguments"]))
                calls.append(openai_chat(client, OPENAI_TOOL_ANSWERED, tools=OPENAI_TOOLS, stream=True))
                return calls[-1]["completion"]

        planner(WEATHER_QUESTION)
        return _agent_client(calls)

    recorder.call("chat", observed(OPENAI_CHAT), flush=langfuse.flush)
    recorder.call("chat-stream", observed(OPENAI_CHAT, stream=True), flush=langfuse.flush)
    recorder.call("tool-call", observed(OPENAI_TOOL_ASK, tools=OPENAI_TOOLS), flush=langfuse.flush)
    recorder.call("error-429", observed(OPENAI_CHAT, model="fail-429"), flush=langfuse.flush)
    recorder.call("agent", agent, flush=langfuse.flush)
    langfuse.shutdown()
    if receiver is not None:
        receiver.stop()


OPENAI_V2_ENV = {"OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental"}


@dataclass(frozen=True)
class Scenario:
    """One library in one mode: the environment it runs with and the function that makes its calls."""

    library: str
    mode: str
    run: Callable[[Recorder, Any], None]
    env: dict[str, str]
    note: str

    @property
    def name(self) -> str:
        return f"{self.library}-{self.mode}"


SCENARIOS = [
    Scenario("openai_v2", "default", run_openai_v2, OPENAI_V2_ENV,
             "opentelemetry-instrumentation-openai-v2, no message content (the default)"),
    *[Scenario("openai_v2", mode.lower(), run_openai_v2,
               {**OPENAI_V2_ENV, "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": mode},
               f"opentelemetry-instrumentation-openai-v2, OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT={mode}")
      for mode in ("SPAN_ONLY", "SPAN_AND_EVENT", "EVENT_ONLY")],
    Scenario("openinference", "default", run_openinference, {},
             "openinference-instrumentation-openai, defaults (content captured)"),
    Scenario("openllmetry_openai", "attributes", run_openllmetry_openai, {"TRACELOOP_TRACE_CONTENT": "true"},
             "OpenLLMetry opentelemetry-instrumentation-openai, use_attributes=True (the default)"),
    Scenario("openllmetry_openai", "events", run_openllmetry_openai, {"TRACELOOP_TRACE_CONTENT": "true"},
             "OpenLLMetry opentelemetry-instrumentation-openai, use_attributes=False (log events)"),
    Scenario("anthropic_sdk", "metadata", run_anthropic_sdk, {},
             "the anthropic SDK's own spans alone, content_mode metadata_only (the default)"),
    Scenario("anthropic_sdk", "content", run_anthropic_sdk, {"ANTHROPIC_OPEN_TELEMETRY_TRACES_CONTENT_MODE": "content"},
             "the anthropic SDK's own spans alone, ANTHROPIC_OPEN_TELEMETRY_TRACES_CONTENT_MODE=content"),
    Scenario("openllmetry_anthropic", "attributes", run_openllmetry_anthropic, {"TRACELOOP_TRACE_CONTENT": "true"},
             "OpenLLMetry opentelemetry-instrumentation-anthropic (use_attributes=True, the default) "
             "beside the anthropic SDK's own spans (left on, as they are by default)"),
    Scenario("openllmetry_anthropic", "events", run_openllmetry_anthropic, {"TRACELOOP_TRACE_CONTENT": "true"},
             "OpenLLMetry opentelemetry-instrumentation-anthropic, use_attributes=False (log events), "
             "beside the anthropic SDK's own spans"),
    Scenario("langfuse", "otlp", run_langfuse, {},
             "Langfuse SDK: @observe around `from langfuse.openai import openai`, session and user propagated, "
             "exported by the SDK over OTLP/HTTP to a local receiver"),
]


def _versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARY_DISTRIBUTIONS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def run_scenario(scenario: Scenario, out: Path = CAPTURES) -> list[Path]:
    """Run one scenario in this process (its environment must already be set) and write its captures to ``out``."""
    from .fake_llm import FakeLLM

    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"{scenario.name}-*.json"):
        old.unlink()
    described = {"library": scenario.library, "mode": scenario.mode, "note": scenario.note,
                 "env": scenario.env, "versions": _versions()}
    with FakeLLM() as fake:
        _warm_up(fake)
        recorder = Recorder(described, out) if scenario.library == "langfuse" else Recorder.in_memory(described, out)
        scenario.run(recorder, fake)
    return recorder.written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.genai.capture", description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", help="scenario names (library-mode); all when none is given")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--here", action="store_true", help="run the one scenario named in this process")
    parser.add_argument("--out", type=Path, default=CAPTURES,
                        help=f"where the files go (default {CAPTURES.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    by_name = {s.name: s for s in SCENARIOS}
    if args.list:
        for scenario in SCENARIOS:
            print(f"{scenario.name:34} {scenario.note}")
        return 0
    unknown = [name for name in args.scenarios if name not in by_name]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; --list shows them")
    if args.here:
        if len(args.scenarios) != 1:
            parser.error("--here runs exactly one scenario")
        for path in run_scenario(by_name[args.scenarios[0]], args.out.resolve()):
            print(f"  {path}")
        return 0
    failed = []
    for scenario in [by_name[name] for name in args.scenarios] or SCENARIOS:
        print(f"{scenario.name}: {scenario.note}", flush=True)
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("OTEL_", "TRACELOOP_", "ANTHROPIC_", "LANGFUSE_", "OPENAI_", "OPENINFERENCE_"))}
        env.update(scenario.env)
        done = subprocess.run([sys.executable, "-m", "tests.genai.capture", "--here", "--out", str(args.out.resolve()),
                               scenario.name], cwd=ROOT, env=env, timeout=300, check=False)
        if done.returncode:
            failed.append(scenario.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
