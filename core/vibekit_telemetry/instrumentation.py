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
#: how many of a generator's items are kept for its answer (the rest pass through unrecorded)
MAX_ITEMS_KEPT = 100

_TOKEN_KEYS = {"input": "input_tokens", "output": "output_tokens", "cache_read": "cache_read_tokens",
               "cache_creation": "cache_creation_tokens", "reasoning": "reasoning_tokens"}


def _clean(text: str) -> str:
    """Text the gate accepts: cut to :data:`MAX_CONTENT_CHARS`, lone surrogates (an undecodable file name) replaced."""
    text = text[:MAX_CONTENT_CHARS]
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _text(value: Any) -> str | None:
    """A value as the text a person would read: strings as they are, anything else as JSON (or repr)."""
    if value is None:
        return None
    if isinstance(value, str):
        return _clean(value)
    try:
        text = orjson.dumps(value, default=_default, option=orjson.OPT_NON_STR_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        text = repr(value)
    return _clean(text)


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
            return _clean(value)
    return _text(named)


class Observer:
    """What ``telemetry.observe(kind=..., name=...)`` returns: a decorator, and a context manager.

    As a decorator, each call of the function is a session (agent = ``name`` or the
    function's qualified name, mode = ``kind``) whose prompt is the arguments and
    whose answer (the end event's text) is the return value; an exception fails the
    session and propagates unchanged.  A generator's session lasts until it is
    exhausted or closed (``cancelled`` when closed early), its first
    :data:`MAX_ITEMS_KEPT` items being the answer; it is the current session only
    while the generator runs, never while its consumer does.  Sessions made inside
    become children.  Recording never changes what the function does: an event the
    gate refuses is logged and the function runs unrecorded.  As a context manager
    (``with telemetry.observe(kind="chain", name="plan"):``) it is
    ``telemetry.session(name, kind, kind=kind)``.
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

    def _session_name(self, fn: Callable[..., Any]) -> str:
        name = self.name or getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or "function"
        return _clean(" ".join(str(name).split()))[:256]

    def _start(self, name: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        """The call's session, entered; ``None`` when it could not be recorded (the call still runs)."""
        try:
            prompt = _arguments(fn, args, kwargs) if self.capture else None
            scope = self.service.session(name, self.kind, prompt, kind=self.kind, metadata=self.metadata)
            scope.__enter__()
            return scope
        except Exception:
            log.exception("observe(%s): the call could not be recorded", name)
            return None

    def _end(self, scope: Any, output: Any = None, *, status: str = "completed",
             exc: BaseException | None = None) -> None:
        if scope is None:
            return
        try:
            if exc is None:
                scope.end(status, stream_data=_text(output) if self.capture and output is not None else None)
            # the scope stops being the current session (and, given an exception, records it and fails)
            scope.__exit__(type(exc) if exc is not None else None, exc, exc.__traceback__ if exc is not None else None)
        except Exception:
            log.exception("observe(%s): the end of the call could not be recorded", scope.agent)

    @staticmethod
    def _leave(scope: Any) -> None:
        """Stop being the current session (a generator's session is current only while it runs)."""
        if scope is not None and scope._token is not None:
            try:
                _current_session_var().reset(scope._token)
            except ValueError:
                pass
            scope._token = None
            if scope._labels_token is not None:
                try:
                    _current_labels_var().reset(scope._labels_token)
                except ValueError:
                    pass
                scope._labels_token = None

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        name = self._session_name(fn)
        observer = self

        if inspect.isasyncgenfunction(fn):
            @functools.wraps(fn)
            async def agen_wrapper(*args: Any, **kwargs: Any) -> Any:
                scope = observer._start(name, fn, args, kwargs)
                sid = scope.id if scope is not None else None
                observer._leave(scope)
                items: list[Any] = []
                inner = fn(*args, **kwargs)
                sent: Any = None
                try:
                    while True:
                        token = _current_session_var().set(sid) if sid else None
                        try:
                            item = await inner.asend(sent)
                        except StopAsyncIteration:
                            break
                        finally:
                            if token is not None:
                                _current_session_var().reset(token)
                        if len(items) < MAX_ITEMS_KEPT:
                            items.append(item)
                        sent = yield item
                except GeneratorExit:
                    await inner.aclose()
                    observer._end(scope, status="cancelled")
                    raise
                except BaseException as exc:
                    observer._end(scope, exc=exc)
                    raise
                observer._end(scope, items)
            return agen_wrapper

        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
                scope = observer._start(name, fn, args, kwargs)
                sid = scope.id if scope is not None else None
                observer._leave(scope)
                items: list[Any] = []
                inner = fn(*args, **kwargs)
                sent: Any = None
                try:
                    while True:
                        token = _current_session_var().set(sid) if sid else None
                        try:
                            item = inner.send(sent)
                        except StopIteration as stop:
                            result = stop.value
                            break
                        finally:
                            if token is not None:
                                _current_session_var().reset(token)
                        if len(items) < MAX_ITEMS_KEPT:
                            items.append(item)
                        sent = yield item
                except GeneratorExit:
                    inner.close()
                    observer._end(scope, status="cancelled")
                    raise
                except BaseException as exc:
                    observer._end(scope, exc=exc)
                    raise
                observer._end(scope, items)
                return result
            return gen_wrapper

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                scope = observer._start(name, fn, args, kwargs)
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as exc:
                    observer._end(scope, exc=exc)
                    raise
                observer._end(scope, result)
                return result
            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            scope = observer._start(name, fn, args, kwargs)
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                observer._end(scope, exc=exc)
                raise
            observer._end(scope, result)
            return result
        return wrapper

    def __enter__(self) -> Any:
        if self._scope is not None:
            raise TelemetryError("an observe() block is already open: call telemetry.observe(...) once per block")
        name = _clean(" ".join(str(self.name or self.kind).split()))[:256]
        self._scope = self.service.session(name, self.kind, None, kind=self.kind, metadata=self.metadata)
        return self._scope.__enter__()

    def __exit__(self, *exc: Any) -> None:
        scope, self._scope = self._scope, None
        scope.__exit__(*exc)

    async def __aenter__(self) -> Any:
        return self.__enter__()

    async def __aexit__(self, *exc: Any) -> None:
        self.__exit__(*exc)


def _current_session_var() -> Any:
    from .service import _current_session

    return _current_session


def _current_labels_var() -> Any:
    from .service import _current_labels

    return _current_labels


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
        if parameters:
            for key, value in parameters.items():
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
        if finish_reasons:
            reasons = [str(r) for r in finish_reasons if r]
            if reasons:
                metadata["finish_reasons"] = reasons
        if tool_calls:
            metadata["tool_calls"] = tool_calls
        if response_id:
            metadata["response_id"] = response_id
        if extra:
            metadata.update({k: v for k, v in extra.items() if v is not None})
        try:
            self.service.track_end(self.session_id, status, metadata=metadata, category=self.provider,
                                   stream_data=answer if answer and not self._streamed else None)
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
            self.service.track_end(self.session_id, "failed", category=self.provider)
        except Exception:
            log.exception("%s: the call's failure could not be recorded", self.provider)

    @property
    def ended(self) -> bool:
        """Whether the call has been finished or failed."""
        return self._ended


def plain(value: Any) -> Any:
    """An SDK value (pydantic models, mappings and lists of them) as plain data, for metadata."""
    if type(value) is list and all(type(item) is dict for item in value):
        return [dict(item) for item in value]  # messages as dicts, copied: the caller appends to its list next
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
    # closing hooks hold the stream and its response weakly: a reference from the stream to itself would keep
    # a dropped stream (and its connection) alive until a garbage collection, where the SDK frees it at once
    stream_ref = weakref.ref(stream)
    response = getattr(stream, "response", None)
    response_ref = weakref.ref(response) if response is not None else None
    is_async = hasattr(inner, "__anext__")
    #: whether the SDK is inside its iterator: a response it closes there (on an error) is not an early close
    reading = [False]

    def closed_early() -> None:
        if not reading[0]:
            end()

    if response is not None:
        # the SDKs' stream helpers (chat.completions.stream(), responses.stream()) close the response directly
        closer = "aclose" if is_async and hasattr(type(response), "aclose") else "close"
        original_close = getattr(type(response), closer, None)
        if original_close is not None:
            if closer == "aclose":
                async def response_aclose() -> None:
                    target = response_ref() if response_ref is not None else None
                    try:
                        if target is not None:
                            await original_close(target)
                    finally:
                        closed_early()
                setattr(response, closer, response_aclose)
            else:
                def response_close() -> None:
                    target = response_ref() if response_ref is not None else None
                    try:
                        if target is not None:
                            original_close(target)
                    finally:
                        closed_early()
                setattr(response, closer, response_close)
    close = getattr(type(stream), "close", None)
    if is_async:
        async def observed_async() -> Any:
            try:
                while True:
                    reading[0] = True
                    try:
                        value = await inner.__anext__()
                    except StopAsyncIteration:
                        break
                    finally:
                        reading[0] = False
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
                target = stream_ref()
                try:
                    if target is not None:
                        await close(target)
                finally:
                    closed_early()  # closed before its end: what came is recorded
            stream.close = close_async
        return True

    def observed() -> Any:
        source = iter(inner)
        try:
            while True:
                reading[0] = True
                try:
                    value = next(source)
                except StopIteration:
                    break
                finally:
                    reading[0] = False
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
            target = stream_ref()
            try:
                if target is not None:
                    close(target)
            finally:
                closed_early()
        stream.close = close_sync
    return True


def observe_parsed(response: Any, call: LLMCall, handle: Callable[[Any], Any]) -> None:
    """A raw SDK response (``with_raw_response``, ``with_streaming_response``): record what ``parse()`` gives.

    ``handle(parsed)`` records the parsed result (a message, or a stream to observe) the first time
    ``parse()`` returns; a response dropped unparsed ends the call with ``unparsed = true``.
    """
    original = response.parse
    finalizer = weakref.finalize(response, _abandoned, call)
    finalizer.atexit = False

    if inspect.iscoroutinefunction(original):
        async def parse_async(*args: Any, **kwargs: Any) -> Any:
            parsed = await original(*args, **kwargs)
            if finalizer.detach() is not None:
                handle(parsed)
            return parsed
        response.parse = parse_async
    else:
        def parse(*args: Any, **kwargs: Any) -> Any:
            parsed = original(*args, **kwargs)
            if finalizer.detach() is not None:
                handle(parsed)
            return parsed
        response.parse = parse


def is_raw_response(value: Any) -> bool:
    """Whether an SDK call returned its raw response (the Stainless SDKs' ``APIResponse``) instead of a result."""
    kind = type(value)
    known = _RAW_TYPES.get(kind)
    if known is None:
        # decided once per type: a result is a pydantic model, whose missing attributes are slow to miss on
        # every call; the raw responses have ``parse`` on their class and an ``http_response``
        known = _RAW_TYPES[kind] = callable(getattr(kind, "parse", None)) and hasattr(value, "http_response")
    return known


#: response types seen by :func:`is_raw_response`, and whether each is an SDK's raw response
_RAW_TYPES: dict[type, bool] = {}


def _abandoned(call: LLMCall) -> None:
    try:
        call.finish(status="completed", unparsed=True)
    except Exception:
        log.exception("%s: an unparsed response could not be recorded", call.provider)


class Patcher:
    """Replaces attributes of SDK classes and puts the originals back exactly (``uninstrument``)."""

    def __init__(self) -> None:
        self._originals: list[tuple[Any, str, Any]] = []
        #: off once restored: a wrapper something still holds (a client's cached ``with_raw_response``,
        #: another instrumentation's wrapper around ours) calls the SDK without recording
        self.active = True

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

    def record(self, owner: Any, name: str, begin: Callable[[Mapping[str, Any]], LLMCall | None],
               handle: Callable[[LLMCall, Any], Any], *, is_async: bool) -> None:
        """Wrap the SDK method ``owner.name`` so that each call is recorded.

        ``begin(kwargs)`` opens the call (``None``: not recorded) before the SDK runs; ``handle(call, result)``
        records what it returned and returns it; what it raised fails the call and propagates unchanged.
        ``is_async`` is said rather than inspected: the SDKs wrap their ``async def`` methods in plain
        functions.  Once restored, a wrapper something still holds calls the SDK without recording.
        """
        patcher = self

        def make(original: Any) -> Any:
            if is_async:
                async def recorded_async(resource: Any, *args: Any, **kwargs: Any) -> Any:
                    call = begin(kwargs) if patcher.active else None
                    if call is None:
                        return await original(resource, *args, **kwargs)
                    try:
                        result = await original(resource, *args, **kwargs)
                    except BaseException as exc:
                        call.fail(exc)
                        raise
                    return handle(call, result)
                return recorded_async

            def recorded(resource: Any, *args: Any, **kwargs: Any) -> Any:
                call = begin(kwargs) if patcher.active else None
                if call is None:
                    return original(resource, *args, **kwargs)
                try:
                    result = original(resource, *args, **kwargs)
                except BaseException as exc:
                    call.fail(exc)
                    raise
                return handle(call, result)
            return recorded

        self.wrap(owner, name, make)

    def restore(self) -> None:
        """Every wrapped attribute back to the object it was.

        One that another instrumentation wrapped after us is left to it (removing its wrapper would
        silently uninstrument it); ours then passes calls through untouched, since ``active`` is off.
        """
        self.active = False
        while self._originals:
            owner, name, original = self._originals.pop()
            current = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name, None)
            if getattr(current, "__vibekit_original__", None) is original:
                setattr(owner, name, original)
            else:
                log.warning("%s.%s was wrapped again after instrument(): left as it is, recording off", owner, name)


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
