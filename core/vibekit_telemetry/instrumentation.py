"""Recording calls as sessions without hand-feeding: ``telemetry.observe()`` and ``telemetry.instrument()``.

``observe(kind=..., name=...)`` wraps a function (sync, async, generator, async
generator) or a block in a child session of the current ``contextvars`` tree.
``instrument("openai", "anthropic")`` loads auto-instrumentation plugins by
entry point (group ``vibekit_telemetry.instrumentors``) that patch an SDK so
every model call becomes a session; :class:`LLMCall` is what such a plugin uses
to record one call (start, chunks as they reach the caller, usage at the end,
errors), so every instrumentor writes the same session shape the GenAI mapping
of ``/v1/traces`` writes: ``kind``, ``model`` (the response model once known),
messages with roles, tool calls, and the canonical token keys on the end event.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from .errors import ConfigError, TelemetryError

if TYPE_CHECKING:
    from .service import TelemetryService

log = logging.getLogger("vibekit_telemetry.instrumentation")

#: entry points of auto-instrumentation plugins, by the name ``instrument()`` takes
INSTRUMENTOR_GROUP = "vibekit_telemetry.instrumentors"
#: the kinds a session made by ``observe()`` may have
OBSERVE_KINDS = ("agent", "llm", "tool", "chain", "retrieval", "embedding", "workflow")
#: how much of an argument list or a return value is kept as text
MAX_CONTENT_CHARS = 16_000

_TOKEN_KEYS = {"input": "input_tokens", "output": "output_tokens", "cache_read": "cache_read_tokens",
               "cache_creation": "cache_creation_tokens", "reasoning": "reasoning_tokens"}


def _text(value: Any) -> str | None:
    """A value as the text a person would read: strings as they are, anything else as JSON (or repr)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value
    else:
        try:
            text = orjson.dumps(value, default=_default, option=orjson.OPT_NON_STR_KEYS).decode()
        except (TypeError, orjson.JSONEncodeError):
            text = repr(value)
    return text[:MAX_CONTENT_CHARS]


def _default(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)  # pydantic models (SDK responses)
    if callable(dump):
        return dump()
    return repr(value)


def _arguments(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str | None:
    """A call's arguments by name (``self``/``cls`` left out), as text."""
    try:
        bound = inspect.signature(fn).bind_partial(*args, **kwargs)
    except (TypeError, ValueError):
        return _text({"args": list(args), "kwargs": dict(kwargs)})
    named = {k: v for k, v in bound.arguments.items() if k not in ("self", "cls")}
    if not named:
        return None
    if len(named) == 1:
        (value,) = named.values()
        if isinstance(value, str):
            return value[:MAX_CONTENT_CHARS]
    return _text(named)


class Observer:
    """What ``telemetry.observe(kind=..., name=...)`` returns: a decorator, and a context manager.

    As a decorator, each call of the function is a session (agent = ``name`` or the
    function's qualified name, mode = ``kind``) whose prompt is the arguments and
    whose answer (the end event's text) is the return value; an exception fails the
    session and propagates unchanged.  A generator's session lasts until it is
    exhausted or closed, its items being the answer.  Sessions made inside become
    children.  As a context manager (``with telemetry.observe(kind="chain", name="plan"):``)
    it is ``telemetry.session(name, kind, kind=kind)``.
    """

    def __init__(self, service: TelemetryService, kind: str | None, name: str | None,
                 capture: bool = True, metadata: Mapping[str, Any] | None = None) -> None:
        if kind is not None and kind not in OBSERVE_KINDS:
            raise ConfigError(f"observe(kind={kind!r}): the kinds are {', '.join(OBSERVE_KINDS)}")
        self.service = service
        self.kind = kind or "chain"
        self.name = name
        self.capture = capture
        self.metadata = dict(metadata or {})
        self._scope: Any = None

    def _open(self, name: str, prompt: str | None) -> Any:
        return self.service.session(name, self.kind, prompt if self.capture else None, kind=self.kind,
                                    metadata=self.metadata)

    @staticmethod
    def _finish(scope: Any, output: Any, capture: bool) -> None:
        text = _text(output) if capture else None
        scope.end("completed", stream_data=text)

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        name = self.name or getattr(fn, "__qualname__", None) or getattr(fn, "__name__", "function")
        capture = self.capture

        if inspect.isasyncgenfunction(fn):
            @functools.wraps(fn)
            async def agen_wrapper(*args: Any, **kwargs: Any) -> Any:
                with self._open(name, _arguments(fn, args, kwargs) if capture else None) as scope:
                    items = []
                    try:
                        async for item in fn(*args, **kwargs):
                            items.append(item)
                            yield item
                    except GeneratorExit:  # the consumer stopped early: not a failure
                        scope.end("cancelled")
                        raise
                    self._finish(scope, items, capture)
            return agen_wrapper

        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
                with self._open(name, _arguments(fn, args, kwargs) if capture else None) as scope:
                    items = []
                    try:
                        for item in fn(*args, **kwargs):
                            items.append(item)
                            yield item
                    except GeneratorExit:  # the consumer stopped early: not a failure
                        scope.end("cancelled")
                        raise
                    self._finish(scope, items, capture)
            return gen_wrapper

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with self._open(name, _arguments(fn, args, kwargs) if capture else None) as scope:
                    result = await fn(*args, **kwargs)
                    self._finish(scope, result, capture)
                    return result
            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self._open(name, _arguments(fn, args, kwargs) if capture else None) as scope:
                result = fn(*args, **kwargs)
                self._finish(scope, result, capture)
                return result
        return wrapper

    def __enter__(self) -> Any:
        if self._scope is not None:
            raise TelemetryError("an observe() block is already open: call telemetry.observe(...) once per block")
        self._scope = self._open(self.name or self.kind, None)
        return self._scope.__enter__()

    def __exit__(self, *exc: Any) -> None:
        scope, self._scope = self._scope, None
        scope.__exit__(*exc)

    async def __aenter__(self) -> Any:
        return self.__enter__()

    async def __aexit__(self, *exc: Any) -> None:
        self.__exit__(*exc)


class LLMCall:
    """One model call being recorded: what an instrumentor calls as the SDK call goes.

    ``start()`` opens the session (a child of the current one), ``chunk()`` records a
    streamed piece as it reaches the caller (so the first one gives the time to first
    token), ``finish()`` ends it with the usage and the answer, ``fail()`` records the
    exception and ends it failed.  Each is safe to call once; after the end, further
    calls do nothing.  None of them raises into the application: a failure to record
    is logged.
    """

    __slots__ = ("service", "session_id", "provider", "kind", "capture", "_ended", "_streamed", "_lock")

    def __init__(self, service: TelemetryService, provider: str, *, kind: str = "llm") -> None:
        self.service = service
        self.provider = provider
        self.kind = kind
        self.capture = bool(service.config.capture_content)
        self.session_id: str | None = None
        self._ended = False
        self._streamed = False
        self._lock = threading.Lock()

    def start(self, operation: str, model: str | None, *, messages: list[dict[str, Any]] | None = None,
              system: str | None = None, tools: Any = None, prompt: str | None = None,
              parameters: Mapping[str, Any] | None = None) -> LLMCall:
        """Open the call's session: the request model, the messages with their roles, the tools offered."""
        metadata: dict[str, Any] = {}
        if messages and self.capture:
            metadata["messages"] = messages
        if system and self.capture:
            metadata["system_prompt"] = system
        if tools and self.capture:
            metadata["tools"] = tools
        for key, value in (parameters or {}).items():
            if value is not None and isinstance(value, (str, int, float, bool)):
                metadata[f"request.{key}"] = value
        if prompt is None and messages:
            prompt = next((m.get("content") for m in reversed(messages)
                           if m.get("role") == "user" and m.get("content")), None)
        try:
            self.session_id = self.service.track_start(self.provider, operation, prompt, kind=self.kind, model=model,
                                                       metadata=metadata)
        except Exception:  # recording must never break the call
            log.exception("%s: the call's session could not be started", self.provider)
        return self

    def chunk(self, text: str | None, **metadata: Any) -> None:
        """A streamed piece of the answer, recorded now (its time is the caller's)."""
        if self.session_id is None or self._ended:
            return
        self._streamed = True
        try:
            self.service.track_stream(self.session_id, text or "", metadata=metadata or None)
        except Exception:
            log.exception("%s: a chunk could not be recorded", self.provider)

    def finish(self, *, model: str | None = None, tokens: Mapping[str, int | None] | None = None,
               answer: str | None = None, finish_reasons: Iterable[str] | None = None,
               tool_calls: list[dict[str, Any]] | None = None, response_id: str | None = None,
               status: str = "completed", **extra: Any) -> None:
        """End the call with what the response said: its model, usage (``input`` includes the cache counts),
        answer text (kept on the end event unless it was streamed), finish reasons and tool calls."""
        with self._lock:
            if self.session_id is None or self._ended:
                return
            self._ended = True
        metadata: dict[str, Any] = {}
        if model:
            metadata["model"] = model
        for field, count in (tokens or {}).items():
            if count is not None and field in _TOKEN_KEYS:
                metadata[_TOKEN_KEYS[field]] = int(count)
        reasons = [str(r) for r in finish_reasons or () if r]
        if reasons:
            metadata["finish_reasons"] = reasons
        if tool_calls:
            metadata["tool_calls"] = tool_calls
        if response_id:
            metadata["response_id"] = response_id
        metadata.update({k: v for k, v in extra.items() if v is not None})
        event: dict[str, Any] = {"event_type": "end", "session_id": self.session_id, "category": self.provider,
                                 "status": status, "metadata": metadata}
        if answer and not self._streamed:
            event["stream_data"] = answer
        try:
            self.service.track(event)
        except Exception:
            log.exception("%s: the call's end could not be recorded", self.provider)

    def fail(self, exc: BaseException, **metadata: Any) -> None:
        """The call raised: record the exception (its class name as the type) and end the session failed."""
        with self._lock:
            if self.session_id is None or self._ended:
                return
            self._ended = True
        status = getattr(exc, "status_code", None)
        if isinstance(status, int):
            metadata["http.status_code"] = status
        try:
            self.service.track_error(self.session_id, exc, metadata=metadata or None)
            self.service.track({"event_type": "end", "session_id": self.session_id, "category": self.provider,
                                "status": "failed"})
        except Exception:
            log.exception("%s: the call's failure could not be recorded", self.provider)

    @property
    def ended(self) -> bool:
        """Whether the call has been finished or failed."""
        return self._ended


def plain(value: Any) -> Any:
    """An SDK value (pydantic models, mappings and lists of them) as plain data, for metadata."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(exclude_none=True)
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def given(value: Any) -> bool:
    """Whether an SDK argument was given (the Stainless SDKs' ``NOT_GIVEN``/``omit`` sentinels are not)."""
    return value is not None and type(value).__name__ not in ("NotGiven", "Omit")


def observe_stream(stream: Any, call: LLMCall, state: Any, on_item: Callable[[LLMCall, Any, Any], None],
                   on_end: Callable[[LLMCall, Any], None]) -> bool:
    """Observe an SDK stream in place (the Stainless SDKs' ``Stream``/``AsyncStream``: ``_iterator``).

    Each item goes to ``on_item(call, state, item)`` as the caller takes it; the end of the stream,
    an early ``close()`` or the consumer abandoning it calls ``on_end(call, state)``; an exception
    from the stream fails the call and propagates unchanged.  The stream object stays the SDK's.
    Returns ``False`` when the object has no iterator to observe.
    """
    inner = getattr(stream, "_iterator", None)
    if inner is None:
        return False

    def item(value: Any) -> None:
        try:
            on_item(call, state, value)
        except Exception:
            log.exception("%s: a streamed item could not be recorded", call.provider)

    def end() -> None:
        try:
            on_end(call, state)
        except Exception:
            log.exception("%s: the end of a stream could not be recorded", call.provider)

    # a stream dropped without being read to its end (or never started) still ends its session
    weakref.finalize(stream, end).atexit = False
    close = getattr(stream, "close", None)
    if hasattr(inner, "__anext__"):
        async def observed_async() -> Any:
            try:
                async for value in inner:
                    item(value)
                    yield value
            except GeneratorExit:
                end()
                raise
            except BaseException as exc:
                call.fail(exc)
                raise
            end()

        stream._iterator = observed_async()
        if close is not None:
            async def close_async() -> None:
                try:
                    await close()
                finally:
                    end()  # closed before its end: what came is recorded
            stream.close = close_async
        return True

    def observed() -> Any:
        try:
            for value in inner:
                item(value)
                yield value
        except GeneratorExit:
            end()
            raise
        except BaseException as exc:
            call.fail(exc)
            raise
        end()

    stream._iterator = observed()
    if close is not None:
        def close_sync() -> None:
            try:
                close()
            finally:
                end()
        stream.close = close_sync
    return True


class Patcher:
    """Replaces attributes of SDK classes and puts the originals back exactly (``uninstrument``)."""

    def __init__(self) -> None:
        self._originals: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        """Set ``owner.name`` to ``make(original)``; a missing attribute is skipped (an older SDK)."""
        original = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name, None)
        if original is None:
            log.debug("%s has no %s: not instrumented", owner, name)
            return
        wrapped = make(original)
        functools.update_wrapper(wrapped, original)
        wrapped.__vibekit_original__ = original  # type: ignore[attr-defined]
        self._originals.append((owner, name, original))
        setattr(owner, name, wrapped)

    def restore(self) -> None:
        """Every wrapped attribute back to the object it was."""
        while self._originals:
            owner, name, original = self._originals.pop()
            setattr(owner, name, original)


def installed_instrumentors() -> dict[str, importlib.metadata.EntryPoint]:
    """The auto-instrumentation plugins installed, by name."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=INSTRUMENTOR_GROUP)}


#: what is instrumented in this process: name -> (instrumentor, service); one SDK is patched once
_ACTIVE: dict[str, tuple[Any, Any]] = {}
_ACTIVE_LOCK = threading.Lock()


def instrument(service: TelemetryService, names: Iterable[str]) -> list[str]:
    """Load the named instrumentors and patch their SDKs to record into ``service``; returns what was instrumented.

    An SDK already instrumented for this service is left as it is (and not returned again); one
    instrumented for another service is an error, as is an unknown name (the message lists the
    installed instrumentors and the package to install) or an SDK that is not installed.
    """
    available = installed_instrumentors()
    done: list[str] = []
    for name in names:
        key = name.strip().lower()
        if key not in available:
            installed = ", ".join(sorted(available)) or "none"
            raise ConfigError(f"no instrumentor named {name!r} (installed: {installed}); "
                              f"install it with: pip install vibekit-telemetry-instrument-{key}")
        with _ACTIVE_LOCK:
            active = _ACTIVE.get(key)
            if active is not None:
                if active[1] is service:
                    continue
                raise TelemetryError(f"{key} is already instrumented for another TelemetryService "
                                     f"({active[1].service_name!r}): call its uninstrument() first")
            try:
                factory = available[key].load()
            except Exception as exc:
                raise ConfigError(f"the {key} instrumentor could not be loaded: {exc}") from exc
            instrumentor = factory()
            instrumentor.instrument(service)
            _ACTIVE[key] = (instrumentor, service)
        done.append(key)
        log.debug("instrumented %s for %s", key, service.service_name)
    return done


def uninstrument(service: TelemetryService, names: Iterable[str] | None = None) -> list[str]:
    """Undo :func:`instrument` for ``service`` (every SDK it instrumented, or the named ones)."""
    wanted = None if names is None else {n.strip().lower() for n in names}
    undone = []
    with _ACTIVE_LOCK:
        for key, (instrumentor, owner) in list(_ACTIVE.items()):
            if owner is not service or (wanted is not None and key not in wanted):
                continue
            instrumentor.uninstrument()
            del _ACTIVE[key]
            undone.append(key)
    return undone
