"""Auto-instrumentation of the ``anthropic`` SDK: ``telemetry.instrument("anthropic")``.

Every ``messages.create`` (plain or ``stream=True``) and ``messages.stream(...)``
call, on sync and async clients, becomes a child session of the current one:
``kind`` ``llm``, the model, the messages with their roles and the system
prompt, the tools offered; each text or tool-input delta a stream event at the
moment the caller gets it (the session's TTFT is the caller's); at the end the
usage, stop reason, tool uses (structured, with their input) and the message id.

Anthropic's ``input_tokens`` leave the cache out; here cache counts are subsets
of input, so the session's input is ``input_tokens + cache_read_input_tokens +
cache_creation_input_tokens``, with the two cache counts beside it (cost prices
each part at its own rate).  An API error is a failed session whose error type
is the SDK's class (``RateLimitError``).  What the SDK returns and raises is
unchanged: a stream stays the SDK's ``Stream``/``MessageStream``, observed in place.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from vibekit_telemetry import ConfigError
from vibekit_telemetry.conventions import normalise_messages, text_of
from vibekit_telemetry.instrumentation import LLMCall, Patcher, is_raw_response, observe_parsed, observe_stream
from vibekit_telemetry.instrumentation import given as _given
from vibekit_telemetry.instrumentation import plain as _plain

log = logging.getLogger("vibekit_telemetry.instrument.anthropic")

PROVIDER = "anthropic"
_PARAMETERS = ("max_tokens", "temperature", "top_p", "top_k", "stream")


def tokens_of(usage: Any) -> dict[str, int | None] | None:
    """Anthropic usage with cache counts as subsets of input (``input`` = uncached + cache read + cache write)."""
    if usage is None:
        return None
    get = usage.get if isinstance(usage, Mapping) else lambda key: getattr(usage, key, None)
    uncached = get("input_tokens") or 0
    read = get("cache_read_input_tokens") or 0
    written = get("cache_creation_input_tokens") or 0
    return {"input": uncached + read + written, "output": get("output_tokens"),
            "cache_read": read, "cache_creation": written}


def _start(call: LLMCall, kwargs: Mapping[str, Any]) -> None:
    system = kwargs.get("system")
    system_text = text_of(_plain(system)) if _given(system) else None
    messages = normalise_messages(_plain(kwargs.get("messages")) or [])
    if system_text:
        messages = [{"role": "system", "content": system_text}, *messages]
    tools = kwargs.get("tools")
    call.start("chat", kwargs.get("model"), messages=messages, system=system_text,
               tools=_plain(tools) if _given(tools) else None,
               parameters={k: kwargs[k] for k in _PARAMETERS if k in kwargs and _given(kwargs[k])})


def _finish(call: LLMCall, message: Any, *, streamed: bool = False) -> None:
    texts, uses = [], []
    for block in getattr(message, "content", None) or ():
        kind = getattr(block, "type", None)
        if kind == "text":
            texts.append(block.text)
        elif kind == "tool_use":
            uses.append({"id": block.id, "name": block.name, "arguments": _plain(block.input)})
    reason = getattr(message, "stop_reason", None)
    call.finish(model=getattr(message, "model", None), tokens=tokens_of(getattr(message, "usage", None)),
                answer=None if streamed else ("".join(texts) or None), finish_reasons=[reason] if reason else None,
                tool_calls=uses or None, response_id=getattr(message, "id", None))


class _State:
    __slots__ = ("model", "message_id", "usage", "reason", "blocks")

    def __init__(self) -> None:
        self.model = self.message_id = self.reason = None
        self.usage: dict[str, int] = {}
        self.blocks: dict[int, dict[str, Any]] = {}


def _usage_into(state: _State, usage: Any) -> None:
    for key in ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
        value = getattr(usage, key, None)
        if value is not None:
            state.usage[key] = value


def _item(call: LLMCall, state: _State, event: Any) -> None:
    kind = event.type
    if kind == "content_block_delta":
        delta = event.delta
        if delta.type == "text_delta":
            call.chunk(delta.text)
        elif delta.type == "input_json_delta":
            call.chunk(None)
            block = state.blocks.get(event.index)
            if block is not None:
                block["partial"] += delta.partial_json
    elif kind == "content_block_start":
        block = event.content_block
        if getattr(block, "type", None) == "tool_use":
            state.blocks[event.index] = {"id": block.id, "name": block.name, "partial": ""}
    elif kind == "message_start":
        message = event.message
        state.model, state.message_id = message.model, message.id
        _usage_into(state, message.usage)
    elif kind == "message_delta":
        if getattr(event, "usage", None) is not None:
            _usage_into(state, event.usage)
        state.reason = getattr(event.delta, "stop_reason", None) or state.reason


def _end(call: LLMCall, state: _State) -> None:
    import json

    uses = []
    for _, block in sorted(state.blocks.items()):
        try:
            arguments = json.loads(block["partial"] or "{}")
        except ValueError:
            arguments = block["partial"]
        uses.append({"id": block["id"], "name": block["name"], "arguments": arguments})

    call.finish(model=state.model, tokens=tokens_of(state.usage) if state.usage else None, finish_reasons=[state.reason] if state.reason else None,
                tool_calls=uses or None, response_id=state.message_id)


def _begin(service: Any, kwargs: Mapping[str, Any]) -> LLMCall | None:
    try:
        call = LLMCall(service, PROVIDER)
        _start(call, kwargs)
        return call
    except Exception:
        log.exception("anthropic: the call could not be recorded")
        return None


class AnthropicInstrumentor:
    """Patches the anthropic SDK's ``Messages`` resources; ``uninstrument()`` restores them exactly."""

    name = PROVIDER

    def __init__(self) -> None:
        self._patcher = Patcher()
        self._streams: tuple[type, ...] = ()

    def _handle(self, call: LLMCall, result: Any) -> Any:
        if isinstance(result, self._streams):
            if not observe_stream(result, call, _State(), _item, _end):
                call.finish()
        elif is_raw_response(result):  # with_raw_response / with_streaming_response: recorded when parsed
            observe_parsed(result, call, lambda parsed: self._handle(call, parsed))
        else:
            try:
                _finish(call, result)
            except Exception:
                log.exception("anthropic: recording failed")
        return result

    def _stream(self, service: Any, attribute: str, is_async: bool) -> Any:
        """``messages.stream(...)``: the request is made when the manager is entered; observe it there."""
        def instrumentor_active() -> bool:
            return self._patcher.active

        def make(original: Any) -> Any:
            def stream(resource: Any, *args: Any, **kwargs: Any) -> Any:
                manager = original(resource, *args, **kwargs)
                if not instrumentor_active():
                    return manager
                request = getattr(manager, attribute, None)
                if request is None:
                    log.warning("anthropic: this SDK's stream manager is not known here; the call is not recorded")
                    return manager
                instrumentor = self

                if is_async:
                    async def observed_request() -> Any:
                        call = _begin(service, kwargs)
                        try:
                            raw = await request
                        except BaseException as exc:
                            if call is not None:
                                call.fail(exc)
                            raise
                        return instrumentor._handle(call, raw) if call is not None else raw
                    setattr(manager, attribute, observed_request())
                else:
                    def observed_request_sync() -> Any:
                        call = _begin(service, kwargs)
                        try:
                            raw = request()
                        except BaseException as exc:
                            if call is not None:
                                call.fail(exc)
                            raise
                        return instrumentor._handle(call, raw) if call is not None else raw
                    setattr(manager, attribute, observed_request_sync)
                return manager
            return stream
        return make

    def instrument(self, service: Any) -> None:
        """Patch the SDK so its calls record into ``service``."""
        try:
            import anthropic
            from anthropic.resources.messages import AsyncMessages, Messages
        except ImportError as exc:
            raise ConfigError(f"instrument('anthropic'): the anthropic SDK is not installed ({exc}); "
                              "pip install anthropic")
        self._streams = (anthropic.Stream, anthropic.AsyncStream)
        for owner, is_async in ((Messages, False), (AsyncMessages, True)):
            self._patcher.record(owner, "create", lambda kwargs: _begin(service, kwargs), self._handle,
                                 is_async=is_async)
        # the managers keep the request as a name-mangled attribute (`__api_request`)
        self._patcher.wrap(Messages, "stream", self._stream(service, "_MessageStreamManager__api_request", False))
        self._patcher.wrap(AsyncMessages, "stream",
                           self._stream(service, "_AsyncMessageStreamManager__api_request", True))

    def uninstrument(self) -> None:
        """Put every patched method back."""
        self._patcher.restore()
