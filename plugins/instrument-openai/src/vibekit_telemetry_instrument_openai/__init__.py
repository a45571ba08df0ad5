"""Auto-instrumentation of the ``openai`` SDK: ``telemetry.instrument("openai")``.

Every call of the Chat Completions API (``create``, ``parse``), the Responses API
and the Embeddings API, on sync and async clients, becomes a child session of the
current one: ``kind`` ``llm`` (``embedding`` for embeddings), the request model and
then the response model, the messages with their roles, the system prompt, the
tools offered; each streamed chunk a stream event at the moment the caller gets
it (so the session's TTFT is the caller's); at the end the usage with cached and
reasoning tokens (``prompt_tokens_details.cached_tokens``,
``completion_tokens_details.reasoning_tokens``, which ``usage.model_dump()``
users lose), finish reasons, tool calls and the response id.  An API error is a
failed session whose error type is the SDK's class (``RateLimitError``) and
whose metadata has the HTTP status.

The wrappers return exactly what the SDK returns and raise exactly what it
raises: a stream is the SDK's own ``Stream`` object, whose iterator is observed
in place; a raw or streaming response (``with_raw_response``,
``with_streaming_response``) is recorded when it is parsed.  They do no I/O:
recording is ``track()``, which only queues.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson

from vibekit_telemetry import ConfigError
from vibekit_telemetry.conventions import normalise_messages
from vibekit_telemetry.instrumentation import LLMCall, Patcher, is_raw_response, observe_parsed, observe_stream
from vibekit_telemetry.instrumentation import given as _given
from vibekit_telemetry.instrumentation import plain as _plain

log = logging.getLogger("vibekit_telemetry.instrument.openai")

PROVIDER = "openai"
_SIMPLE = frozenset({"role", "content"})
_PARAMETERS = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "max_output_tokens", "stream",
               "reasoning_effort", "seed")


def _parameters(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {key: kwargs[key] for key in _PARAMETERS if key in kwargs and _given(kwargs[key])}


def _arguments(text: Any) -> Any:
    if isinstance(text, str):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return text
    return text


def _chat_usage(usage: Any) -> dict[str, int | None] | None:
    if usage is None:
        return None
    prompt_details = getattr(usage, "prompt_tokens_details", None)
    completion_details = getattr(usage, "completion_tokens_details", None)
    return {"input": getattr(usage, "prompt_tokens", None), "output": getattr(usage, "completion_tokens", None),
            "cache_read": getattr(prompt_details, "cached_tokens", None),
            "reasoning": getattr(completion_details, "reasoning_tokens", None)}


def _responses_usage(usage: Any) -> dict[str, int | None] | None:
    if usage is None:
        return None
    input_details = getattr(usage, "input_tokens_details", None)
    output_details = getattr(usage, "output_tokens_details", None)
    return {"input": getattr(usage, "input_tokens", None), "output": getattr(usage, "output_tokens", None),
            "cache_read": getattr(input_details, "cached_tokens", None),
            "reasoning": getattr(output_details, "reasoning_tokens", None)}


class _Chat:
    """``chat.completions.create`` / ``parse``: messages in, a completion or chunks out."""

    operation = "chat"
    kind = "llm"

    @staticmethod
    def start(call: LLMCall, kwargs: Mapping[str, Any]) -> None:
        given = kwargs.get("messages")
        messages: list[dict[str, Any]] | None = None
        if type(given) is list:
            # plain text messages, already in the shape kept (the common case, and the cheap one); copied, since the
            # application goes on appending to its list while the event waits to be written
            messages = []
            for m in given:
                if type(m) is not dict or not m.keys() <= _SIMPLE or type(m.get("content")) is not str:
                    messages = None
                    break
                messages.append(dict(m))
        if messages is None:
            messages = normalise_messages(_plain(given) or [])
        system = "\n".join(m["content"] for m in messages if m.get("role") in ("system", "developer")
                           and m.get("content")) or None
        tools = kwargs.get("tools")
        call.start(_Chat.operation, kwargs.get("model"), messages=messages, system=system,
                   tools=_plain(tools) if _given(tools) else None, parameters=_parameters(kwargs))

    @staticmethod
    def finish(call: LLMCall, result: Any) -> None:
        choices = getattr(result, "choices", None) or []
        texts, tool_calls, reasons = [], [], []
        for choice in choices:
            message = getattr(choice, "message", None)
            if message is not None and getattr(message, "content", None):
                texts.append(message.content)
            for tool_call in getattr(message, "tool_calls", None) or ():
                function = getattr(tool_call, "function", None)
                tool_calls.append({"id": getattr(tool_call, "id", None), "name": getattr(function, "name", None),
                                   "arguments": _arguments(getattr(function, "arguments", None))})
            if getattr(choice, "finish_reason", None):
                reasons.append(choice.finish_reason)
        call.finish(model=getattr(result, "model", None), tokens=_chat_usage(getattr(result, "usage", None)),
                    answer="\n".join(texts) or None, finish_reasons=reasons, tool_calls=tool_calls or None,
                    response_id=getattr(result, "id", None))

    class State:
        __slots__ = ("model", "response_id", "usage", "reasons", "calls")

        def __init__(self) -> None:
            self.model = self.response_id = self.usage = None
            self.reasons: list[str] = []
            self.calls: dict[int, dict[str, Any]] = {}

    @staticmethod
    def item(call: LLMCall, state: _Chat.State, chunk: Any) -> None:
        state.model = chunk.model or state.model
        state.response_id = chunk.id or state.response_id
        if chunk.usage is not None:
            state.usage = chunk.usage
        for choice in chunk.choices:
            delta = choice.delta
            pieces = delta.tool_calls if delta is not None else None
            if delta is not None and (delta.content or pieces):
                call.chunk(delta.content)
            for piece in pieces or ():
                slot = state.calls.setdefault(piece.index, {"id": None, "name": "", "arguments": ""})
                slot["id"] = piece.id or slot["id"]
                function = piece.function
                if function is not None:
                    slot["name"] += function.name or ""
                    slot["arguments"] += function.arguments or ""
            if choice.finish_reason:
                state.reasons.append(choice.finish_reason)

    @staticmethod
    def end(call: LLMCall, state: _Chat.State) -> None:
        calls = [{"id": c["id"], "name": c["name"], "arguments": _arguments(c["arguments"])}
                 for _, c in sorted(state.calls.items())]
        call.finish(model=state.model, tokens=_chat_usage(state.usage), finish_reasons=state.reasons,
                    tool_calls=calls or None, response_id=state.response_id)


class _Responses:
    """``responses.create``: instructions and input in, a response or its events out."""

    kind = "llm"

    @staticmethod
    def start(call: LLMCall, kwargs: Mapping[str, Any]) -> None:
        given = kwargs.get("input")
        messages = normalise_messages(_plain(given)) if _given(given) else []
        instructions = kwargs.get("instructions")
        system = instructions if isinstance(instructions, str) else None
        if system:
            messages = [{"role": "system", "content": system}, *messages]
        tools = kwargs.get("tools")
        call.start("responses", kwargs.get("model"), messages=messages, system=system,
                   tools=_plain(tools) if _given(tools) else None, parameters=_parameters(kwargs))

    @staticmethod
    def finish(call: LLMCall, result: Any, *, streamed: bool = False) -> None:
        tool_calls = [{"id": getattr(item, "call_id", None), "name": getattr(item, "name", None),
                       "arguments": _arguments(getattr(item, "arguments", None))}
                      for item in getattr(result, "output", None) or () if getattr(item, "type", None) == "function_call"]
        status = getattr(result, "status", None)
        failed = status in ("failed", "incomplete") and getattr(result, "error", None) is not None
        call.finish(model=getattr(result, "model", None), tokens=_responses_usage(getattr(result, "usage", None)),
                    answer=None if streamed else (getattr(result, "output_text", None) or None),
                    finish_reasons=[status] if status else None, tool_calls=tool_calls or None,
                    response_id=getattr(result, "id", None), status="failed" if failed else "completed")

    class State:
        __slots__ = ("response",)

        def __init__(self) -> None:
            self.response = None

    @staticmethod
    def item(call: LLMCall, state: _Responses.State, event: Any) -> None:
        kind = getattr(event, "type", None)
        if kind == "response.output_text.delta":
            call.chunk(event.delta)
        elif kind == "response.function_call_arguments.delta" and not call.ended:
            call.chunk(None)
        elif kind in ("response.completed", "response.failed", "response.incomplete"):
            state.response = event.response

    @staticmethod
    def end(call: LLMCall, state: _Responses.State) -> None:
        if state.response is not None:
            _Responses.finish(call, state.response, streamed=True)
        else:
            call.finish(status="completed")


class _Embeddings:
    """``embeddings.create``: the input's tokens, no answer."""

    kind = "embedding"

    @staticmethod
    def start(call: LLMCall, kwargs: Mapping[str, Any]) -> None:
        given = kwargs.get("input")
        prompt = given if isinstance(given, str) else None
        call.start("embeddings", kwargs.get("model"), prompt=prompt,
                   parameters={k: kwargs[k] for k in ("dimensions", "encoding_format") if _given(kwargs.get(k))})

    @staticmethod
    def finish(call: LLMCall, result: Any) -> None:
        usage = getattr(result, "usage", None)
        data = getattr(result, "data", None) or []
        call.finish(model=getattr(result, "model", None),
                    tokens={"input": getattr(usage, "prompt_tokens", None)} if usage is not None else None,
                    vectors=len(data))

    State = None
    item = end = None


def _begin(service: Any, api: Any, kwargs: Mapping[str, Any]) -> LLMCall | None:
    try:
        call = LLMCall(service, PROVIDER, kind=api.kind)
        api.start(call, kwargs)
        return call
    except Exception:  # recording must never stop the call
        log.exception("openai: the call could not be recorded")
        return None


def _safely(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except Exception:
        log.exception("openai: recording failed")


class OpenAIInstrumentor:
    """Patches the openai SDK's resource classes; ``uninstrument()`` restores them exactly."""

    name = PROVIDER

    def __init__(self) -> None:
        self._patcher = Patcher()
        self._stream_types: tuple[type, ...] = ()
        self._async_stream_types: tuple[type, ...] = ()
        self._all_stream_types: tuple[type, ...] = ()

    def _handle(self, call: LLMCall, api: Any, result: Any) -> Any:
        """What the SDK returned, recorded; the same object is returned."""
        if isinstance(result, self._all_stream_types):
            if api.State is None or not observe_stream(result, call, api.State(), api.item, api.end):
                _safely(call.finish)
        elif is_raw_response(result):
            observe_parsed(result, call, lambda parsed: self._handle(call, api, parsed))
        else:
            _safely(api.finish, call, result)
        return result

    def _record(self, owner: Any, name: str, service: Any, api: Any, *, is_async: bool) -> None:
        self._patcher.record(owner, name, lambda kwargs: _begin(service, api, kwargs),
                             lambda call, result: self._handle(call, api, result), is_async=is_async)

    def instrument(self, service: Any) -> None:
        """Patch the SDK so its calls record into ``service``."""
        try:
            import openai
            from openai.resources.chat.completions import AsyncCompletions, Completions
            from openai.resources.embeddings import AsyncEmbeddings, Embeddings
        except ImportError as exc:
            raise ConfigError(f"instrument('openai'): the openai SDK is not installed ({exc}); pip install openai")
        self._stream_types = (openai.Stream,)
        self._async_stream_types = (openai.AsyncStream,)
        self._all_stream_types = (*self._stream_types, *self._async_stream_types)
        for name in ("create", "parse"):
            self._record(Completions, name, service, _Chat, is_async=False)
            self._record(AsyncCompletions, name, service, _Chat, is_async=True)
        self._record(Embeddings, "create", service, _Embeddings, is_async=False)
        self._record(AsyncEmbeddings, "create", service, _Embeddings, is_async=True)
        try:
            from openai.resources.responses import AsyncResponses, Responses
        except ImportError:  # an SDK from before the Responses API
            return
        self._record(Responses, "create", service, _Responses, is_async=False)
        self._record(AsyncResponses, "create", service, _Responses, is_async=True)

    def uninstrument(self) -> None:
        """Put every patched method back."""
        self._patcher.restore()
