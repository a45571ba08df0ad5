"""What GenAI instrumentations write on their spans, read into one view of a call.

Five conventions describe the same things under different names: the
OpenTelemetry GenAI semantic conventions (current and deprecated names, used by
``opentelemetry-instrumentation-openai-v2`` and others), OpenInference
(Arize Phoenix: ``llm.*``, ``input.value``, ``openinference.span.kind``),
OpenLLMetry / Traceloop (``gen_ai.prompt.<i>.*``, ``traceloop.*``), Langfuse
(``langfuse.observation.*``) and this project's own round trip (``vibekit.*``).
:func:`read_call` reads a span's attributes and events, whichever convention
wrote them, into a :class:`Call`: its kind, model, token usage (cache and
reasoning counts included, as subsets of input and output), messages with their
roles, the prompt and the response, tool calls, when the first chunk came, and
the conversation and user it belongs to.  ``docs/opentelemetry.md`` has the
table of which attribute feeds which field.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

#: ``openinference.span.kind`` / ``traceloop.span.kind`` / ``langfuse.observation.type`` / operation names -> kind
_KINDS = {
    "llm": "llm", "chat": "llm", "text_completion": "llm", "completion": "llm", "generate_content": "llm",
    "generation": "llm", "responses": "llm", "embedding": "embedding", "embeddings": "embedding",
    "agent": "agent", "invoke_agent": "agent", "create_agent": "agent", "tool": "tool", "execute_tool": "tool",
    "chain": "chain", "workflow": "chain", "task": "chain", "span": "chain", "retriever": "retriever",
    "reranker": "reranker", "guardrail": "guardrail", "evaluator": "evaluator", "event": "event",
}

_TOKEN_NAMES: dict[str, tuple[str, ...]] = {
    "input": ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt",
              "llm.usage.prompt_tokens"),
    "output": ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.token_count.completion",
               "llm.usage.completion_tokens"),
    "cache_read": ("gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens",
                   "llm.token_count.prompt_details.cache_read", "gen_ai.usage.cached_tokens"),
    "cache_creation": ("gen_ai.usage.cache_creation.input_tokens", "gen_ai.usage.cache_creation_input_tokens",
                       "gen_ai.usage.cache_write.input_tokens", "llm.token_count.prompt_details.cache_write"),
    "reasoning": ("gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.reasoning_tokens",
                  "llm.token_count.completion_details.reasoning"),
}
#: Langfuse's usage_details keys, by our field
_LANGFUSE_USAGE = {
    "input": ("input", "prompt_tokens", "input_tokens"),
    "output": ("output", "completion_tokens", "output_tokens"),
    "cache_read": ("cache_read_input_tokens", "input_cached_tokens", "cached_tokens", "input_cache_read"),
    "cache_creation": ("cache_creation_input_tokens", "input_cache_creation", "cache_write_input_tokens"),
    "reasoning": ("reasoning_tokens", "output_reasoning_tokens", "output_reasoning"),
}
#: every attribute a Call is read from: left out of the session's metadata (they are its fields)
CONSUMED_PREFIXES = (
    "gen_ai.usage.", "llm.token_count.", "llm.usage.", "gen_ai.prompt", "gen_ai.completion", "gen_ai.input.messages",
    "gen_ai.output.messages", "gen_ai.system_instructions", "llm.input_messages", "llm.output_messages",
    "input.value", "output.value", "langfuse.observation.input", "langfuse.observation.output",
    "langfuse.observation.usage_details", "langfuse.observation.usage", "langfuse.observation.cost_details",
    "llm.tools", "gen_ai.tool.definitions",
)
#: span events (and log records) that are a chunk of the answer arriving, or mark the first one
FIRST_CHUNK_EVENTS = frozenset({"First Token Stream Event", "gen_ai.content.completion.chunk", "llm.content.completion.chunk",
                                "gen_ai.first_token", "first_token"})
#: span events and log records that carry input messages, and output messages
INPUT_EVENTS = frozenset({"gen_ai.user.message", "gen_ai.system.message", "gen_ai.tool.message", "gen_ai.content.prompt",
                          "gen_ai.assistant.message"})
OUTPUT_EVENTS = frozenset({"gen_ai.choice", "gen_ai.content.completion"})
DETAILS_EVENT = "gen_ai.client.inference.operation.details"
_ROLE_OF_EVENT = {"gen_ai.user.message": "user", "gen_ai.system.message": "system", "gen_ai.tool.message": "tool",
                  "gen_ai.assistant.message": "assistant", "gen_ai.content.prompt": "user"}
_INDEXED = re.compile(r"^(gen_ai\.prompt|gen_ai\.completion|llm\.input_messages|llm\.output_messages)\.(\d+)\.(.+)$")


class Call:
    """One span read whatever convention wrote it.  Every field may be ``None`` (unknown)."""

    __slots__ = ("kind", "provider", "agent_name", "operation", "request_model", "response_model", "tokens",
                 "messages", "output_messages", "tool_calls", "tools", "system", "finish_reasons", "ttft_ms",
                 "first_chunk_at", "conversation_id", "user_id", "response_id", "cost_usd")

    def __init__(self) -> None:
        self.kind: str | None = None
        self.provider: str | None = None
        self.agent_name: str | None = None
        self.operation: str | None = None
        self.request_model: str | None = None
        self.response_model: str | None = None
        #: input, output, cache_read, cache_creation, reasoning (input includes the cache counts)
        self.tokens: dict[str, int] = {}
        self.messages: list[dict[str, Any]] = []
        self.output_messages: list[dict[str, Any]] = []
        self.tool_calls: list[dict[str, Any]] = []
        self.tools: Any = None
        self.system: str | None = None
        self.finish_reasons: list[str] = []
        self.ttft_ms: float | None = None
        self.first_chunk_at: int | None = None
        self.conversation_id: str | None = None
        self.user_id: str | None = None
        self.response_id: str | None = None
        self.cost_usd: float | None = None

    @property
    def model(self) -> str | None:
        """The model that answered when it is known, else the one asked for."""
        return self.response_model or self.request_model

    @property
    def prompt(self) -> str | None:
        """The last user message: what a person reads as the question."""
        for message in reversed(self.messages):
            if message.get("role") in ("user", None) and message.get("content"):
                return message["content"]
        return None

    @property
    def response(self) -> str | None:
        """The assistant's answer text."""
        texts = [m["content"] for m in self.output_messages if m.get("content")]
        return "\n".join(texts) if texts else None


def _json(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and value >= 0:
        return int(value)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def text_of(value: Any) -> str | None:
    """Text out of a message value: a string, a part list (``parts``/``content``), or JSON of one.

    A string that reads as JSON but holds no message parts (a user asking about ``{"a": 1}``) is the text.
    """
    found = _text_of(value)
    if found is None and isinstance(value, str) and value:
        return value
    return found


def _text_of(value: Any) -> str | None:
    value = _json(value)
    if value is None:
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, list):
        texts = [t for t in (text_of(v) for v in value) if t]
        return "\n".join(texts) if texts else None
    if isinstance(value, Mapping):
        kind = value.get("type")
        if kind in ("tool_call", "tool_use", "function_call", "tool_call_request"):
            return None
        if kind in ("tool_call_response", "tool_result", "function_call_output"):
            # a tool's output is kept as it was written, JSON text included
            result = value.get("response", value.get("content", value.get("output")))
            return result if isinstance(result, str) else text_of(result)
        if kind == "text" and isinstance(value.get("text"), str):
            return value["text"] or None  # a text block's text is a leaf, even when it reads like JSON
        for key in ("content", "text", "message", "parts", "value", "output"):
            if key in value:
                return text_of(value[key])
    return None


def _tool_calls_of(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Tool calls named in one message, in any of the shapes the conventions use."""
    calls = []
    for call in message.get("tool_calls") or ():
        if isinstance(call, Mapping):
            function = call.get("function") if isinstance(call.get("function"), Mapping) else call
            calls.append({"id": call.get("id"), "name": function.get("name"), "arguments": _json(function.get("arguments"))})
    parts = message.get("parts") or message.get("content")
    if isinstance(parts, list):
        for part in parts:
            if isinstance(part, Mapping) and part.get("type") in ("tool_call", "tool_use", "function_call"):
                calls.append({"id": part.get("id"), "name": part.get("name"),
                              "arguments": _json(part.get("arguments", part.get("input")))})
    return [{k: v for k, v in c.items() if v is not None} for c in calls if c.get("name")]


def _tool_result_id(message: Mapping[str, Any]) -> str | None:
    """The id of the tool call a message answers, or ``None`` for a message that is not a tool's result."""
    if message.get("tool_call_id"):
        return str(message["tool_call_id"])
    parts = message.get("parts") or message.get("content")
    if isinstance(parts, list) and parts and all(
            isinstance(p, Mapping) and p.get("type") in ("tool_call_response", "tool_result", "function_call_output")
            for p in parts):
        first = parts[0]
        found = first.get("id") or first.get("tool_use_id") or first.get("call_id")
        return str(found) if found else None
    if message.get("role") == "tool" and message.get("id"):
        return str(message["id"])
    return None


def normalise_messages(value: Any) -> list[dict[str, Any]]:
    """Messages (``gen_ai.input.messages``, OpenAI/Anthropic request shapes, Langfuse input) as
    ``{"role", "content", "tool_calls"?}`` dicts."""
    value = _json(value)
    if isinstance(value, Mapping):
        for key in ("messages", "input", "contents"):
            if isinstance(value.get(key), (list, str)):
                system = value.get("system") or value.get("instructions")
                found = normalise_messages(value[key])
                return ([{"role": "system", "content": text_of(system)}] if system else []) + found
        if "role" in value or "content" in value or "parts" in value:
            value = [value]
        else:
            return []
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    out = []
    for message in value if isinstance(value, list) else ():
        if not isinstance(message, Mapping):
            continue
        entry: dict[str, Any] = {"role": _str(message.get("role")) or "user",
                                 "content": text_of(message.get("content", message.get("parts")))}
        calls = _tool_calls_of(message)
        if calls:
            entry["tool_calls"] = calls
        answered = _tool_result_id(message)
        if answered:
            # a tool's result, whichever way it is written (OpenAI's tool role, the semconv's
            # tool_call_response part, Anthropic's tool_result block in a user message)
            entry["role"] = "tool"
            entry["tool_call_id"] = answered
            if isinstance(message.get("content"), str):
                entry["content"] = message["content"] or None  # a tool's JSON output is its text
        out.append(entry)
    return out


def _indexed_messages(attrs: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    """``gen_ai.prompt.0.role`` / ``llm.input_messages.0.message.content`` ... as a message list."""
    by_index: dict[int, dict[str, Any]] = {}
    for key, value in attrs.items():
        match = _INDEXED.match(key)
        if not match or match.group(1) != prefix:
            continue
        slot = by_index.setdefault(int(match.group(2)), {})
        rest = match.group(3).removeprefix("message.")
        if rest in ("role", "content", "finish_reason", "tool_call_id", "name"):
            slot[rest] = value
        elif rest.startswith(("tool_calls.", "function_call.")):
            # tool_calls.0.name / tool_calls.0.tool_call.function.arguments / tool_calls.0.id
            parts = rest.split(".")
            index = int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else 0
            leaf = parts[-1]
            call = slot.setdefault("_calls", {}).setdefault(index, {})
            call[leaf] = value
        elif rest.startswith("contents.") and rest.endswith("message_content.text"):
            slot["content"] = (slot.get("content") or "") + str(value)
    out = []
    for index in sorted(by_index):
        slot = by_index[index]
        entry: dict[str, Any] = {"role": _str(slot.get("role")) or ("assistant" if "completion" in prefix
                                                                         or "output" in prefix else "user"),
                                 "content": text_of(slot.get("content"))}
        calls = [{k: (_json(v) if k == "arguments" else v) for k, v in c.items()}
                 for _, c in sorted(slot.get("_calls", {}).items()) if c.get("name")]
        if calls:
            entry["tool_calls"] = calls
        if slot.get("finish_reason"):
            entry["finish_reason"] = slot["finish_reason"]
        if slot.get("tool_call_id"):
            entry["tool_call_id"] = slot["tool_call_id"]
        out.append(entry)
    return out


def _first(attrs: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        value = attrs.get(key)
        if value is not None and value != "":
            return value
    return None


def _iso_ms(value: Any) -> int | None:
    if isinstance(value, str) and len(value) > 1 and value[0] == value[-1] == '"':
        value = value[1:-1]  # Langfuse writes its attribute values as JSON, strings included
    if isinstance(value, str):
        try:
            parsed = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=_dt.timezone.utc)
        return int(parsed.timestamp() * 1000)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value // 1_000_000) if value > 10**15 else int(value)
    return None


def read_call(attrs: Mapping[str, Any], events: Iterable[tuple[str, int, Mapping[str, Any]]], *, name: str,
              start_ms: int, resource: Mapping[str, Any] | None = None) -> Call:
    """What a span says about its call, whichever convention wrote it.

    ``events`` are the span's events as ``(name, timestamp ms, attributes)``.
    """
    call = Call()
    kind = _first(attrs, "openinference.span.kind", "traceloop.span.kind", "langfuse.observation.type")
    operation = _str(_first(attrs, "gen_ai.operation.name", "llm.request.type"))
    call.operation = operation
    call.provider = _str(_first(attrs, "gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system"))
    call.agent_name = _str(_first(attrs, "gen_ai.agent.name", "gen_ai.tool.name", "traceloop.entity.name")
                           if kind not in (None, "llm", "LLM")
                           or operation in ("invoke_agent", "create_agent", "execute_tool")
                           else attrs.get("gen_ai.agent.name"))
    call.request_model = _str(_first(attrs, "gen_ai.request.model", "langfuse.observation.model.name",
                                     "llm.request.model"))
    call.response_model = _str(_first(attrs, "gen_ai.response.model", "llm.response.model", "llm.model_name",
                                      "embedding.model_name"))
    if call.request_model is None:
        parameters = _json(_first(attrs, "llm.invocation_parameters", "langfuse.observation.model.parameters"))
        if isinstance(parameters, Mapping):
            call.request_model = _str(parameters.get("model"))
    _read_tokens(call, attrs)
    _read_messages(call, attrs, events)
    call.finish_reasons = [str(r) for r in _list(_first(attrs, "gen_ai.response.finish_reasons",
                                                        "langfuse.observation.metadata.finish_reason")) if r]
    call.finish_reasons = [r[1:-1] if len(r) > 1 and r[0] == r[-1] == '"' else r for r in call.finish_reasons]
    if not call.finish_reasons:
        call.finish_reasons = [m["finish_reason"] for m in call.output_messages if m.get("finish_reason")]
    call.response_id = _str(_first(attrs, "gen_ai.response.id", "llm.response.id"))
    call.conversation_id = _label(_first(attrs, "gen_ai.conversation.id", "session.id", "langfuse.session.id",
                                         "traceloop.association.properties.session_id",
                                         "langfuse.trace.metadata.session_id", "thread.id"))
    call.user_id = _label(_first(attrs, "user.id", "enduser.id", "langfuse.user.id",
                                 "traceloop.association.properties.user_id", "gen_ai.user.id"))
    call.tools = _json(_first(attrs, "gen_ai.tool.definitions", "llm.tools"))
    cost = _json(attrs.get("langfuse.observation.cost_details"))
    if isinstance(cost, Mapping) and isinstance(cost.get("total"), (int, float)):
        call.cost_usd = float(cost["total"])
    # time to first chunk: an event that marks it, an attribute that says it, or Langfuse's completion start
    for event_name, ts, _ in events:
        if event_name in FIRST_CHUNK_EVENTS and ts is not None:
            call.first_chunk_at = ts if call.first_chunk_at is None else min(call.first_chunk_at, ts)
    ttfc = _first(attrs, "gen_ai.response.time_to_first_chunk", "gen_ai.server.time_to_first_token",
                  "llm.time_to_first_token")
    if isinstance(ttfc, (int, float)) and not isinstance(ttfc, bool) and call.first_chunk_at is None:
        call.first_chunk_at = start_ms + int(ttfc * 1000)  # seconds, as the conventions measure durations
    completion_start = _iso_ms(attrs.get("langfuse.observation.completion_start_time"))
    if completion_start is not None and call.first_chunk_at is None and completion_start >= start_ms:
        call.first_chunk_at = completion_start
    call.kind = _kind(kind, operation, call, name)
    if call.agent_name is None and call.kind in ("agent", "tool", "chain") and name:
        # Langfuse names an agent or tool observation by its span's name only; a semconv span name is
        # "{operation} {name}", and a bare operation ("invoke_agent") names nothing
        rest = name[len(operation):].strip() if operation and name.startswith(operation) else name
        call.agent_name = rest or None
    if call.provider is None and call.kind in ("llm", "embedding"):
        call.provider = provider_of(call.model)
    return call


#: model name prefixes and the provider that serves them, for spans that name only the model (Langfuse)
_PROVIDERS = (("gpt-", "openai"), ("o1", "openai"), ("o3", "openai"), ("o4", "openai"), ("text-embedding", "openai"),
              ("chatgpt", "openai"), ("claude", "anthropic"), ("gemini", "google"), ("mistral", "mistral"),
              ("deepseek", "deepseek"), ("llama", "meta"), ("command", "cohere"))


def provider_of(model: str | None) -> str | None:
    """The provider a model name belongs to, when the name says it (``gpt-4o`` is OpenAI's)."""
    if not model:
        return None
    name = model.lower().rsplit("/", 1)[-1]
    return next((provider for prefix, provider in _PROVIDERS if name.startswith(prefix)), None)


def _label(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    return _str(value)


def _list(value: Any) -> list[Any]:
    value = _json(value)
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value] if value is not None else []


def _kind(marker: Any, operation: str | None, call: Call, name: str) -> str | None:
    if isinstance(marker, str) and marker.lower() in _KINDS:
        return _KINDS[marker.lower()]
    if operation and operation.lower() in _KINDS:
        return _KINDS[operation.lower()]
    if call.tokens or call.model or call.messages:
        return "llm"
    if name.startswith(("invoke_agent", "agent")):
        return "agent"
    if name.startswith("execute_tool"):
        return "tool"
    return None


def _read_tokens(call: Call, attrs: Mapping[str, Any]) -> None:
    tokens: dict[str, int] = {}
    for field, names in _TOKEN_NAMES.items():
        for key in names:
            count = _int(attrs.get(key))
            if count is not None:
                tokens[field] = count
                break
    usage = _json(_first(attrs, "langfuse.observation.usage_details", "langfuse.observation.usage"))
    if isinstance(usage, Mapping):
        usage = _flat_usage(usage)
        for field, names in _LANGFUSE_USAGE.items():
            if field in tokens:
                continue
            for key in names:
                count = _int(usage.get(key))
                if count is not None:
                    tokens[field] = count
                    break
        if "cache_creation_input_tokens" in usage or "cache_read_input_tokens" in usage:
            # Anthropic's usage as the SDK returned it: its input_tokens leave the cache out
            tokens["input"] = tokens.get("input", 0) + tokens.get("cache_read", 0) + tokens.get("cache_creation", 0)
            call.tokens = {k: v for k, v in tokens.items() if v}
            return
    cache = tokens.get("cache_read", 0) + tokens.get("cache_creation", 0)
    if cache and "input" in tokens and _input_excludes_cache(attrs, call.provider, tokens["input"], cache):
        # here cache counts are subsets of input (TokenUsage), so the input is the sum
        tokens["input"] += cache
    call.tokens = {k: v for k, v in tokens.items() if v}


def _flat_usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    """A provider's usage object with its nested details lifted (``prompt_tokens_details.cached_tokens`` ...)."""
    flat = dict(usage)
    for outer, inner, name in (("prompt_tokens_details", "cached_tokens", "cached_tokens"),
                               ("input_tokens_details", "cached_tokens", "cached_tokens"),
                               ("completion_tokens_details", "reasoning_tokens", "reasoning_tokens"),
                               ("output_tokens_details", "reasoning_tokens", "reasoning_tokens")):
        details = usage.get(outer)
        if isinstance(details, Mapping) and details.get(inner) is not None and name not in flat:
            flat[name] = details[inner]
    return flat


def _input_excludes_cache(attrs: Mapping[str, Any], provider: str | None, input_tokens: int, cache: int) -> bool:
    """Whether a span's input count leaves the prompt cache out.

    The GenAI conventions count cached tokens in ``gen_ai.usage.input_tokens``; Anthropic's API does not
    (``input_tokens`` beside ``cache_read_input_tokens`` and ``cache_creation_input_tokens``), and
    instrumentations that pass its figures on use its names for the cache counts too.
    """
    if input_tokens < cache:
        return True
    if (provider or "").lower() not in ("anthropic", "aws.bedrock", "gcp.vertex_ai"):
        return False
    # the current conventions' names (``gen_ai.usage.cache_read.input_tokens``, ``...cache_write...``) come with an
    # input that includes the cache; Anthropic's own names come with Anthropic's figure, which does not
    return any(key in attrs for key in ("gen_ai.usage.cache_read_input_tokens", "gen_ai.usage.cache_creation_input_tokens"))


def _read_messages(call: Call, attrs: Mapping[str, Any], events: Iterable[tuple[str, int, Mapping[str, Any]]]) -> None:
    messages = normalise_messages(attrs.get("gen_ai.input.messages"))
    if not messages:
        messages = _indexed_messages(attrs, "gen_ai.prompt") or _indexed_messages(attrs, "llm.input_messages")
    if not messages:
        messages = normalise_messages(_first(attrs, "input.value", "langfuse.observation.input", "gen_ai.prompt"))
    output = normalise_messages(attrs.get("gen_ai.output.messages"))
    if not output:
        output = _indexed_messages(attrs, "gen_ai.completion") or _indexed_messages(attrs, "llm.output_messages")
    if not output:
        output = _output_of(_first(attrs, "output.value", "langfuse.observation.output", "gen_ai.completion"))
    for event_name, _, ev_attrs in events:
        if event_name in INPUT_EVENTS and not attrs.get("gen_ai.input.messages"):
            content = text_of(ev_attrs.get("content") or ev_attrs.get("gen_ai.prompt") or ev_attrs.get("body"))
            if content:
                messages.append({"role": _ROLE_OF_EVENT.get(event_name, "user"), "content": content})
        elif event_name in OUTPUT_EVENTS and not output:
            message = _json(ev_attrs.get("message") or ev_attrs.get("body"))
            content = text_of(ev_attrs.get("gen_ai.completion") or message or ev_attrs.get("content"))
            entry: dict[str, Any] = {"role": "assistant", "content": content}
            if isinstance(message, Mapping):
                calls = _tool_calls_of(message)
                if calls:
                    entry["tool_calls"] = calls
            if content or entry.get("tool_calls"):
                output.append(entry)
    system = _first(attrs, "gen_ai.system_instructions")
    if system is not None:
        call.system = text_of(system)
    elif messages and messages[0].get("role") in ("system", "developer"):
        call.system = messages[0].get("content")
    call.messages = messages
    call.output_messages = [m for m in output if m.get("role") in ("assistant", None, "model") or m.get("tool_calls")]
    call.tool_calls = [c for m in call.output_messages for c in m.get("tool_calls", ())]


def _output_of(value: Any) -> list[dict[str, Any]]:
    """An answer as output messages: a response object (OpenAI choices, Anthropic content), messages or text."""
    value = _json(value)
    if isinstance(value, Mapping):
        choices = value.get("choices")
        if isinstance(choices, list):
            out = []
            for choice in choices:
                if isinstance(choice, Mapping):
                    message = choice.get("message") or choice.get("delta") or {}
                    entry = {"role": "assistant", "content": text_of(message.get("content") or choice.get("text"))}
                    calls = _tool_calls_of(message) if isinstance(message, Mapping) else []
                    if calls:
                        entry["tool_calls"] = calls
                    if choice.get("finish_reason"):
                        entry["finish_reason"] = choice["finish_reason"]
                    out.append(entry)
            return out
        if isinstance(value.get("content"), list) and value.get("role") in ("assistant", None):
            return [{"role": "assistant", "content": text_of(value["content"]), **(
                {"tool_calls": _tool_calls_of(value)} if _tool_calls_of(value) else {})}]
        if isinstance(value.get("output"), list):  # the Responses API
            texts, calls = [], []
            for item in value["output"]:
                if isinstance(item, Mapping):
                    if item.get("type") == "function_call":
                        calls.append({"id": item.get("call_id"), "name": item.get("name"),
                                      "arguments": _json(item.get("arguments"))})
                    else:
                        text = text_of(item.get("content"))
                        if text:
                            texts.append(text)
            entry = {"role": "assistant", "content": "\n".join(texts) or None}
            if calls:
                entry["tool_calls"] = calls
            return [entry]
    messages = normalise_messages(value)
    for message in messages:
        if message.get("role") == "user":
            message["role"] = "assistant"  # a bare output text
    return messages
