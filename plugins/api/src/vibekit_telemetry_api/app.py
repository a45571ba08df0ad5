"""The Starlette application: routes, error handling, request metrics and the guard.

Handlers never block the event loop on storage: reads run in Starlette's
thread pool; ``track()`` does no I/O and runs inline.  Every error is JSON
(``{"error", "message", "details"?}``) with a 4xx status, or 503 when storage
or the service is unavailable; an unexpected exception is logged and answered
500 (the schemathesis fuzz test makes sure none is reachable).
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import io
import logging
import os
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from urllib.parse import quote
from typing import Any

import attrs
import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Match, Mount, Route, WebSocketRoute

from vibekit_telemetry import (
    ConfigError,
    InvalidEventError,
    InvalidQueryError,
    PluginError,
    QueryFilter,
    ServiceClosedError,
    SessionFilter,
    StorageError,
    TelemetryService,
    time_range,
)
from vibekit_telemetry.model import checked_row
from vibekit_telemetry.transfer import is_filter_key

from . import otlp
from .config import APIConfig
from .live import Subscriptions, sse, websocket_events
from .openapi import openapi_document
from .prom import CONTENT_TYPE, ServerMetrics
from .security import Authenticator, Guard, Provenance, RateLimiter
from .validation import (
    AlertsQuery,
    AnomalyQuery,
    APIError,
    EventsQuery,
    ExportQuery,
    SessionEnd,
    SessionQuery,
    SessionsQuery,
    SeriesQuery,
    SessionStart,
    WindowQuery,
    from_telemetry_error,
    kernel_filter,
    structure,
    validation_error,
)

log = logging.getLogger("vibekit_telemetry.api")

_JSON_TYPES = ("application/json",)
_OTLP_TYPES = {"application/x-protobuf": "application/x-protobuf", "application/protobuf": "application/x-protobuf",
               "application/json": "application/json"}
_EXPORT_CHUNK = 64 * 1024


@attrs.define
class APIContext:
    """What the handlers share: the service, the configuration, the metrics and the live subscribers."""

    service: TelemetryService
    config: APIConfig
    metrics: ServerMetrics
    export_dir: Path
    live: Subscriptions = attrs.field(init=False)
    #: the last cumulative point of each metric series, so ``/v1/metrics`` stores the change since it
    metric_deltas: otlp.MetricDeltas = attrs.field(init=False, factory=otlp.MetricDeltas)

    def __attrs_post_init__(self) -> None:
        self.live = Subscriptions(self)


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """A JSON response serialised with orjson (non-string keys and dataclasses allowed)."""
    return Response(orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS), status_code=status,
                    media_type="application/json", headers=dict(headers or {}))


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, gunzipped if it says so; 413 past ``limit`` bytes (compressed or not)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise APIError(400, "Bad Request", "Content-Length is not a number")
        if int(declared) > limit:
            raise APIError(413, "Payload Too Large", f"the body is larger than {limit} bytes")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise APIError(413, "Payload Too Large", f"the body is larger than {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        # gone, or cut off by the server's body deadline (which answered 408): nobody reads this answer
        raise APIError(400, "Bad Request", "the client disconnected before sending the whole body") from None
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("identity", ""):
        return body
    if encoding != "gzip":
        raise APIError(415, "Unsupported Media Type", f"Content-Encoding {encoding!r} is not supported (gzip is)")
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise APIError(400, "Bad Request", f"the body is not valid gzip: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise APIError(413, "Payload Too Large", f"the decompressed body is larger than {limit} bytes")
    if not inflater.eof:
        raise APIError(400, "Bad Request", "the gzip body is truncated")
    return out


def _json_body(body: bytes) -> Any:
    if not body:
        raise validation_error("Invalid request body", [{"field": "body", "message": "required"}])
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise validation_error("Invalid request body", [{"field": "body", "message": f"not valid JSON: {exc}"}]) from None


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _require_json(request: Request) -> None:
    media = _media_type(request)
    if media and media not in _JSON_TYPES and not (media.startswith("application/") and media.endswith("+json")):
        raise APIError(415, "Unsupported Media Type", f"send application/json, not {media}")


def _params(request: Request, *, multi: tuple[str, ...] = ()) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, value in request.query_params.multi_items():
        if key in params and key not in multi:
            raise validation_error("Invalid query parameters", [{"field": key, "message": "given more than once"}])
        params[key] = value
    return params


def _window(since: int | str, until: int | str | None) -> tuple[int, int]:
    try:
        # a span ("24h") counts back from now; no end means now; both ends range-checked by the kernel
        return time_range((since, until), names=("since", "until"))
    except InvalidQueryError as exc:
        raise from_telemetry_error(exc, "query parameters") from None
    except ValueError as exc:
        raise validation_error("Invalid query parameters", [{"field": "since", "message": str(exc)}]) from None


def _ctx(request: Request) -> APIContext:
    return request.app.state.ctx


def _page_limit(ctx: APIContext, limit: int) -> None:
    if limit > ctx.config.max_page:
        raise validation_error("Invalid query parameters",
                               [{"field": "limit", "message": f"Number must be between 1 and {ctx.config.max_page}"}])


def _shed_load(ctx: APIContext) -> None:
    """429 before reading the body when the pipeline would refuse events anyway (cheap under overload).

    429 rather than 503: the client sends too much for now and should wait ``Retry-After`` (OTLP clients retry it).
    """
    if ctx.service.saturated:
        ctx.metrics.refused.labels("overloaded").inc()
        raise APIError(429, "Too Many Requests", "the telemetry pipeline is full; retry after a second",
                       headers={"retry-after": "1"})


async def post_events(request: Request) -> Response:
    """Accept one event, a list, or ``{"events": [...]}``: the valid ones are taken, the invalid ones named.

    422 when no event is valid; otherwise 202, with ``rejected`` listing the invalid
    events (not worth sending again) apart from ``not_accepted`` (refused for now: send again).
    """
    ctx = _ctx(request)
    _require_json(request)
    _shed_load(ctx)
    data = _json_body(await read_body(request, ctx.config.max_body_bytes))
    if isinstance(data, dict) and set(data) == {"events"}:
        data = data["events"]
    items = data if isinstance(data, list) else [data]
    if not items:
        raise validation_error("Invalid request body", [{"field": "events", "message": "no events given"}], 422)
    if len(items) > ctx.config.max_batch:
        raise APIError(413, "Payload Too Large", f"{len(items)} events in one request; at most {ctx.config.max_batch}")
    # one bad value costs only its own event: a client that drops a refused batch would lose the good ones with it
    events, details = [], []
    for index, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise InvalidEventError("event", f"expected a mapping, got {type(item).__name__}")
            # checked once, in the queue's form: the service takes it as it is
            events.append((index, checked_row(item, pack=True)))
        except InvalidEventError as exc:
            details.append({"index": index, "field": f"events[{index}].{exc.field}",
                            "message": str(exc).split(": ", 2)[-1]})
    if details:
        ctx.metrics.rejected.labels("api").inc(len(details))
    if not events:
        raise validation_error(f"{len(details)} of {len(items)} events are invalid; none was accepted", details, 422)
    ids, not_stored = [], []
    track = ctx.service.track_validated
    for index, event in events:
        event_id = track(event)
        if event_id is None:
            not_stored.append(index)
        else:
            ids.append(event_id)
    ctx.metrics.ingested.labels("api").inc(len(ids))
    # events refused by an overloaded pipeline (or filtered by a plugin): the client may send those again
    headers = {"retry-after": "1"} if not_stored else None
    body: dict[str, Any] = {"accepted": len(ids), "ids": ids, "not_accepted": not_stored}
    if details:
        body["rejected"] = details
    return json_response(body, 202, headers)


async def get_events(request: Request) -> Response:
    """A page of events matching the filter, newest first, with ``next_cursor``."""
    ctx = _ctx(request)
    params = _params(request)
    metadata = {}
    for key in [k for k in params if k.startswith("meta.")]:
        raw = params.pop(key)
        try:
            value = orjson.loads(raw)
            if isinstance(value, (dict, list)):
                value = raw
        except orjson.JSONDecodeError:
            value = raw
        metadata[key[5:]] = value
    query = structure(params, EventsQuery, what="query parameters")
    _page_limit(ctx, query.limit)
    page = await run_in_threadpool(ctx.service.query_page, kernel_filter(QueryFilter, query.filter(metadata)))
    return json_response({"events": [e.to_dict() for e in page.events], "count": len(page.events),
                          "next_cursor": page.next_cursor})


async def get_sessions(request: Request) -> Response:
    """Sessions matching the filter, newest first, with ``next_offset`` while more may follow."""
    ctx = _ctx(request)
    query = structure(_params(request), SessionsQuery, what="query parameters")
    _page_limit(ctx, query.limit)
    flt = kernel_filter(SessionFilter, query.filter())
    sessions = await run_in_threadpool(ctx.service.get_sessions, flt)
    more = len(sessions) == query.limit
    out: dict[str, Any] = {"sessions": [s.to_dict() for s in sessions], "count": len(sessions),
                           "next_offset": query.offset + query.limit if more else None}
    if query.count:
        out["total"] = await run_in_threadpool(ctx.service.count_sessions, flt)
        if out["next_offset"] is not None and out["next_offset"] >= out["total"]:
            out["next_offset"] = None
    return json_response(out)


def _session_dict(session: Any) -> dict[str, Any]:
    out = session.to_dict()
    children = getattr(session, "children", None)
    if children:
        out["children"] = [_session_dict(c) for c in children]
    return out


async def get_session(request: Request) -> Response:
    """One session (``?with_events=true`` adds its events, oldest first; ``?tree=true`` its children)."""
    ctx = _ctx(request)
    query = structure(_params(request), SessionQuery, what="query parameters")
    session_id = request.path_params["session_id"]
    session = await run_in_threadpool(ctx.service.get_session, session_id, tree=query.tree)
    if session is None:
        raise APIError(404, "Not Found", f"no session {session_id!r}")
    out = _session_dict(session)
    if query.with_events:
        limit = 10_000
        events = await run_in_threadpool(ctx.service.query, session_id=session_id, order="asc", limit=limit + 1)
        out["events"] = [e.to_dict() for e in events[:limit]]
        out["events_truncated"] = len(events) > limit
    return json_response(out)


def _present(data: dict[str, Any]) -> dict[str, Any]:
    """The fields a body sets: ``null`` means absent, in session bodies as in events (and so says the schema)."""
    return {key: value for key, value in data.items() if value is not None}


async def post_session(request: Request) -> Response:
    """Start a session; answers 201 with its id."""
    ctx = _ctx(request)
    _require_json(request)
    data = _json_body(await read_body(request, ctx.config.max_body_bytes))
    if not isinstance(data, dict):
        raise validation_error("Invalid request body", [{"field": "body", "message": "expected an object"}], 422)
    start = structure(_present(data), SessionStart, what="request body", status=422)
    try:
        session_id = ctx.service.track_start(start.agent, start.mode, start.prompt, metadata=start.metadata,
                                             session_id=start.session_id, parent_session_id=start.parent_session_id,
                                             timestamp=start.timestamp, kind=start.kind, model=start.model,
                                             conversation_id=start.conversation_id, user_id=start.user_id)
    except InvalidEventError as exc:
        raise from_telemetry_error(exc, "request body", 422) from None
    ctx.metrics.ingested.labels("api").inc()
    return json_response({"session_id": session_id}, 201, {"location": f"/api/sessions/{quote(session_id, safe='')}"})


async def end_session(request: Request) -> Response:
    """End a session with a status."""
    ctx = _ctx(request)
    _require_json(request)
    body = await read_body(request, ctx.config.max_body_bytes)
    data = _json_body(body) if body else {}
    if not isinstance(data, dict):
        raise validation_error("Invalid request body", [{"field": "body", "message": "expected an object"}], 422)
    end = structure(_present(data), SessionEnd, what="request body", status=422)
    try:
        event_id = ctx.service.track_end(request.path_params["session_id"], end.status, metadata=end.metadata,
                                         timestamp=end.timestamp)
    except InvalidEventError as exc:
        raise from_telemetry_error(exc, "request body", 422) from None
    ctx.metrics.ingested.labels("api").inc()
    return json_response({"id": event_id, "session_id": request.path_params["session_id"]}, 202)


async def get_metrics(request: Request) -> Response:
    """Live metrics of a window (analytics)."""
    ctx = _ctx(request)
    query = structure(_params(request), WindowQuery, what="query parameters")
    window = _window(query.since, query.until)
    metrics = await run_in_threadpool(ctx.service.get_metrics, window)
    return json_response(metrics.to_dict())


async def get_insights(request: Request) -> Response:
    """Findings about a window (analytics)."""
    ctx = _ctx(request)
    query = structure(_params(request), WindowQuery, what="query parameters")
    window = _window(query.since, query.until)
    categories = [c for c in (query.categories or "").split(",") if c] or None
    insights = await run_in_threadpool(ctx.service.get_insights, window, categories)
    return json_response(insights.to_dict())


async def get_series(request: Request) -> Response:
    """One metric per step over a window (analytics): ``{"metric", "step", "points": [[ms, value], ...]}``."""
    ctx = _ctx(request)
    query = structure(_params(request), SeriesQuery, what="query parameters")
    window = _window(query.since, query.until)
    try:
        points = await run_in_threadpool(ctx.service.metric_series, query.metric, window, query.step)
    except ValueError as exc:  # an unknown metric is an InvalidQueryError naming it; the rest are about the step
        field = getattr(exc, "field", "step")
        raise validation_error("Invalid query parameters", [{"field": field, "message": str(exc)}]) from None
    return json_response({"metric": query.metric, "step": query.step, "points": points})


async def get_anomalies(request: Request) -> Response:
    """Anomalies the installed detectors find in the stored metric history."""
    ctx = _ctx(request)
    query = structure(_params(request), AnomalyQuery, what="query parameters")
    window = _window(query.since, query.until)
    metrics = [m for m in query.metrics.split(",") if m]
    try:
        found = await run_in_threadpool(ctx.service.detect_anomalies, metrics, window, query.sensitivity, query.step)
    except ValueError as exc:
        raise validation_error("Invalid query parameters", [{"field": "metrics", "message": str(exc)}]) from None
    return json_response({"anomalies": [attrs.asdict(a) for a in found], "count": len(found)})


async def get_alerts(request: Request) -> Response:
    """Where anomaly alerts go and how their delivery went (no URL paths, no headers: they may hold keys)."""
    ctx = _ctx(request)
    query = structure(_params(request), AlertsQuery, what="query parameters")
    return json_response(await run_in_threadpool(ctx.service.get_alerts, query.limit))


#: what the file system answers about a name (rather than about the server): the client chose badly
_NAME_ERRORS = frozenset({errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ELOOP, errno.EINVAL,
                          errno.EILSEQ})
#: the export is written next to its target as ``<name>.partial`` first, so names must leave room for that
_PARTIAL_SUFFIX = ".partial"


def _path_error(message: str) -> APIError:
    return validation_error("Invalid query parameters", [{"field": "path", "message": message}])


def _export_target(ctx: APIContext, name: str) -> Path:
    root = ctx.export_dir.resolve()
    candidate = Path(name)
    if candidate.is_absolute() or not name.strip() or "\x00" in name:
        raise _path_error("must be a relative file name")
    try:
        name_max = os.pathconf(root if root.exists() else root.parent, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):  # no pathconf on Windows; 255 is NTFS's limit too
        name_max = 255
    for part in candidate.parts:
        if len(os.fsencode(part)) + len(_PARTIAL_SUFFIX) > name_max:
            raise _path_error(f"each part of the name may be at most {name_max - len(_PARTIAL_SUFFIX)} bytes long; "
                              f"{part[:40]!r}... is {len(os.fsencode(part))}")
    try:
        target = (root / candidate).resolve()
        if not target.is_relative_to(root) or target == root:
            raise _path_error("must stay inside the export directory")
        if target.is_dir():
            raise _path_error(f"{name} is a directory in the export directory; name a file")
        if target.exists():
            raise APIError(409, "Conflict", f"{name} already exists in the export directory")
    except OSError as exc:
        raise _path_error(f"cannot be used as a file name: {exc.strerror}") from None
    return target


class _PipeWriter(io.RawIOBase):
    """A write-only binary file for the export thread; chunks reach the response through a bounded queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes | BaseException | None]) -> None:
        super().__init__()
        self.loop = loop
        self.queue = queue
        self.buffer = bytearray()
        self.position = 0
        self.cancelled = threading.Event()

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def write(self, data: Any) -> int:
        size = len(memoryview(data).cast("B"))
        self.buffer += data
        self.position += size
        if len(self.buffer) >= _EXPORT_CHUNK:
            self.push(bytes(self.buffer))
            self.buffer.clear()
        return size

    def push(self, item: bytes | BaseException | None) -> None:
        future = asyncio.run_coroutine_threadsafe(self.queue.put(item), self.loop)
        while True:  # wait for room, giving up when the client went away
            try:
                future.result(timeout=0.5)
                return
            except TimeoutError:
                if self.cancelled.is_set():
                    future.cancel()
                    raise OSError("the client stopped reading the export") from None


def _export_arguments(request: Request) -> tuple[ExportQuery, dict[str, Any]]:
    """The documented parameters, validated, and every parameter in ``export()``'s vocabulary.

    Parameters ``ExportQuery`` does not list go to ``export()`` too (an exporter's own options), read as JSON
    when they parse (``row_group_size=1000``, ``header=false``); filter keys stay text, but for ``limit`` and
    ``offset``.  ``export()`` refuses a key that neither a filter nor the exporter takes.
    """
    params = _params(request)
    known = attrs.fields_dict(ExportQuery)
    query = structure({k: v for k, v in params.items() if k in known}, ExportQuery, what="query parameters")
    arguments = query.arguments()
    for key, text in params.items():
        if key in known:
            continue
        if key == "progress":  # a callback of the Python API, not something a URL can carry
            raise validation_error("Invalid query parameters", [{"field": key, "message": "unknown parameter"}])
        if is_filter_key(key) and key not in ("limit", "offset"):
            arguments[key] = text
            continue
        try:
            arguments[key] = orjson.loads(text)
        except orjson.JSONDecodeError:
            arguments[key] = text
    return query, arguments


def _export_refused(exc: BaseException) -> APIError | None:
    """An export error that is the request's fault, as a 400 (``None`` for the server's own failures)."""
    if isinstance(exc, InvalidQueryError):
        return from_telemetry_error(exc, "query parameters")
    if isinstance(exc, ValueError):  # an exporter refusing an option value (a two-character delimiter ...)
        return validation_error("Invalid query parameters", [{"field": "options", "message": str(exc)}])
    return None


async def get_export(request: Request) -> Response:
    """Stream an export (never built in memory), or write it to a file inside the export directory.

    Options are checked before the response starts: a bad one is a 400, not a cut-off 200.
    """
    ctx = _ctx(request)
    query, arguments = _export_arguments(request)
    formats = ctx.service.export_formats()
    if query.format not in formats:
        raise validation_error("Invalid query parameters", [{
            "field": "format", "message": f"must be one of {', '.join(formats)}" if formats
            else "no export plugin is installed (pip install vibekit-telemetry-json)"}])
    kernel_filter(QueryFilter, query.filter())  # a bad time or event type is a 400 naming it, before any work
    if query.path is not None:
        target = _export_target(ctx, query.path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            count = await run_in_threadpool(ctx.service.export, query.format, arguments, output=target)
        except OSError as exc:
            if exc.errno not in _NAME_ERRORS:
                raise  # the server's problem (permissions, a full disk): logged, 500
            blocked = " (a part of it is a file, not a directory)" if exc.errno in (errno.ENOTDIR, errno.EEXIST) else ""
            raise _path_error(f"cannot be written: {exc.strerror}{blocked}") from None
        except ValueError as exc:
            refused = _export_refused(exc)
            if refused is None:
                raise
            raise refused from None
        return json_response({"path": str(target.relative_to(ctx.export_dir.resolve())), "count": count}, 201)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(maxsize=8)
    pipe = _PipeWriter(loop, queue)
    # settled when the kernel has checked the options and begins writing (progress(0)), or with the error
    started: asyncio.Future[None] = loop.create_future()
    began = threading.Event()

    def settle(error: BaseException | None) -> None:
        if started.done():
            return
        if error is None:
            started.set_result(None)
        else:
            started.set_exception(error)

    def progress(count: int) -> None:
        if not began.is_set():
            began.set()
            loop.call_soon_threadsafe(settle, None)

    def produce() -> None:
        try:
            ctx.service.export(query.format, arguments, output=pipe, progress=progress)  # type: ignore[arg-type]
            if pipe.buffer:
                pipe.push(bytes(pipe.buffer))
            pipe.push(None)
        except OSError:
            return
        except BaseException as exc:
            if not began.is_set():  # nothing sent yet: the handler answers with the error
                loop.call_soon_threadsafe(settle, exc)
                return
            log.error("export failed while streaming: %s", exc)  # the response is under way: end it, and log why
            try:
                pipe.push(exc)
            except OSError:
                pass

    context = contextvars.copy_context()  # the audit trail names the API key as the actor
    threading.Thread(target=context.run, args=(produce,), name="vibekit-api-export", daemon=True).start()
    try:
        await started
    except Exception as exc:
        refused = _export_refused(exc)
        if refused is None:
            raise
        raise refused from None

    async def body() -> AsyncIterator[bytes]:
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    return
                yield item
        finally:
            pipe.cancelled.set()

    compression = arguments.get("compression", arguments.get("compress"))
    native = "compression" in (ctx.service.export_options(query.format) or ())
    suffix = "" if native else {"gzip": ".gz", "zstd": ".zst", True: ".gz"}.get(compression, "")
    media = "application/octet-stream"
    return StreamingResponse(body(), media_type=media,
                             headers={"content-disposition": f'attachment; filename="events.{query.format}{suffix}"'})


async def health(request: Request) -> Response:
    """Liveness (200 while the service runs), each component's health and the answering process's ``pid``."""
    ctx = _ctx(request)
    status = await run_in_threadpool(ctx.service.get_health_status)
    body = status.to_dict()
    body["status"] = "healthy" if status.healthy else "degraded"
    # which process answered: the workers of `telemetry api --workers N` share one port
    body["pid"] = os.getpid()
    return json_response(body)


async def prometheus(request: Request) -> Response:
    """Prometheus exposition text."""
    ctx = _ctx(request)
    text = await run_in_threadpool(ctx.metrics.render)
    return Response(text, media_type=CONTENT_TYPE)


async def openapi(request: Request) -> Response:
    """The OpenAPI document of this server."""
    return json_response(request.app.state.openapi)


def _otlp_handler(signal: str) -> Callable[[Request], Any]:
    async def handler(request: Request) -> Response:
        ctx = _ctx(request)
        media = _media_type(request)
        content_type = _OTLP_TYPES.get(media)
        if content_type is None:
            return Response(otlp.encode_status("application/json", 3, f"unsupported Content-Type {media!r}: "
                                               "send application/x-protobuf or application/json"),
                            status_code=415, media_type="application/json")
        if ctx.service.saturated:
            ctx.metrics.refused.labels("overloaded").inc()
            return Response(otlp.encode_status(content_type, 8, "the telemetry pipeline is full"), status_code=429,
                            media_type=content_type, headers={"retry-after": "1"})
        try:
            body = await read_body(request, ctx.config.max_body_bytes)
            data = otlp.decode(signal, body, content_type)
            if signal == "traces":
                events, rejected, reasons = otlp.trace_request_events(data, ctx.service.call_folder)
            elif signal == "metrics":
                events, rejected, reasons = otlp.metric_request_events(data, ctx.metric_deltas)
            else:
                events, rejected, reasons = otlp.log_request_events(data)
        except otlp.OTLPDecodeError as exc:
            return Response(otlp.encode_status(content_type, 3, str(exc)), status_code=400, media_type=content_type)
        except APIError as exc:
            return Response(otlp.encode_status(content_type, 3, exc.message), status_code=exc.status,
                            media_type=content_type)
        refused = 0
        track = ctx.service.track
        for event in events:
            try:
                if track(event) is None:
                    refused += 1
            except InvalidEventError as exc:
                rejected += 1
                reasons.append(str(exc))
        ctx.metrics.ingested.labels("otlp").inc(len(events) - refused)
        if rejected:
            ctx.metrics.rejected.labels("otlp").inc(rejected)
        if refused and refused == len(events):
            return Response(otlp.encode_status(content_type, 14, "the telemetry pipeline is not accepting events"),
                            status_code=503, media_type=content_type, headers={"retry-after": "5"})
        message = "; ".join(reasons[:5]) + (f" (and {len(reasons) - 5} more)" if len(reasons) > 5 else "")
        return Response(otlp.encode_response(signal, content_type, rejected, message), media_type=content_type)

    handler.__name__ = f"otlp_{signal}"
    handler.__doc__ = f"OTLP/HTTP {signal} ingest (protobuf or JSON, gzip accepted)."
    return handler


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return json_response(exc.body(), exc.status, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    from http import HTTPStatus

    name = HTTPStatus(exc.status_code).phrase
    return json_response({"error": name, "message": exc.detail if exc.detail != name else f"{request.url.path}: {name}"},
                         exc.status_code, exc.headers)


async def _telemetry_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, InvalidQueryError):
        return json_response(from_telemetry_error(exc, "query parameters").body(), 400)
    if isinstance(exc, InvalidEventError):
        return json_response(from_telemetry_error(exc, "request body", 422).body(), 422)
    if isinstance(exc, (ServiceClosedError, StorageError)):
        return json_response({"error": "Service Unavailable", "message": str(exc)}, 503, {"retry-after": "5"})
    if isinstance(exc, PluginError):
        return json_response({"error": "Not Implemented", "message": str(exc)}, 501)
    log.exception("unexpected error answering %s %s", request.method, request.url.path, exc_info=exc)
    return json_response({"error": "Internal Server Error", "message": "unexpected error; see the server log"}, 500)


class _RequestMetrics:
    """ASGI middleware counting requests by route template and status, and timing them."""

    def __init__(self, app: Any, metrics: ServerMetrics, routes: list[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    def _route(self, scope: Any) -> str:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return getattr(route, "path", "other")
        return "other"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def record(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            route = self._route(scope)
            self.metrics.requests.labels(scope["method"], route, str(status[0])).inc()
            self.metrics.request_seconds.labels(route).observe(time.perf_counter() - started)


@attrs.frozen
class Mounted:
    """An application a plugin registered through the ``api_routes`` hook."""

    path: str
    app: Any
    name: str
    plugin: str
    public: bool = False


def plugin_mounts(service: TelemetryService, config: APIConfig) -> list[Mounted]:
    """What the ``api_routes`` hook registers; loads the dashboard plugin when the configuration asks for it."""
    if config.dashboard or config.dashboard_port:
        try:
            service.require_plugin("dashboard", where="[api] dashboard")
        except PluginError as exc:
            raise ConfigError(f"the dashboard is not installed (pip install vibekit-telemetry-dashboard): {exc}") from None
    mounts: list[Mounted] = []
    for impl in service.host.impls("api_routes"):
        def register(path: str, app: Any, *, name: str, public: bool = False, _plugin: str = impl.plugin) -> None:
            if not path.startswith("/") or path.endswith("/") or path.startswith(("/api", "/v1", "/ws", "/health")):
                raise PluginError(f"plugin {_plugin!r} registered {path!r}: a mount path starts with '/', "
                                  "does not end with one, and stays out of /api, /v1, /ws and /health")
            taken = next((m for m in mounts if m.path == path), None)
            if taken is not None:
                raise PluginError(f"plugins {taken.plugin!r} and {_plugin!r} both registered {path!r}")
            mounts.append(Mounted(path, app, name, _plugin, public))

        impl(service=service, register=register)
    if (config.dashboard or config.dashboard_port) and not any(m.name == "dashboard" for m in mounts):
        raise ConfigError("no installed plugin registered the dashboard; pip install vibekit-telemetry-dashboard")
    return mounts


class _OnlyOnPort:
    """Serve an application on one listening port only (the dashboard on ``dashboard_port``)."""

    def __init__(self, app: Any, port: int) -> None:
        self.app = app
        self.port = port

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        server = scope.get("server")
        if scope["type"] == "http" and server is not None and server[1] != self.port:
            await Response("Not Found", 404, media_type="text/plain")(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _home(target: str) -> Callable[[Request], Any]:
    async def home(request: Request) -> Response:
        return RedirectResponse(target, 307)

    return home


def build_app(service: TelemetryService, config: APIConfig, *, extra_routes: list[BaseRoute] | None = None) -> Starlette:
    """The ASGI application serving ``service`` with ``config`` (and what plugins mount through ``api_routes``)."""
    mounts = plugin_mounts(service, config)
    credentials = config.auth.credentials() if config.auth.enabled is not False else []
    config.check_exposure(credentials)
    origins = config.cors.allowed_origins()
    export_dir = Path(config.export_dir) if config.export_dir else service.data_dir / "exports"
    metrics = ServerMetrics(service, config.metrics.window)
    service.on("flush", metrics.on_flush)
    ctx = APIContext(service=service, config=config, metrics=metrics, export_dir=export_dir)
    analytics = bool(service.host.impls("get_metrics"))
    routes: list[BaseRoute] = [
        Route("/health", health, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/api/events", post_events, methods=["POST"]),
        Route("/api/events", get_events, methods=["GET"]),
        Route("/api/sessions", get_sessions, methods=["GET"]),
        Route("/api/sessions", post_session, methods=["POST"]),
        Route("/api/sessions/{session_id}", get_session, methods=["GET"]),
        Route("/api/sessions/{session_id}/end", end_session, methods=["POST"]),
        Route("/api/export", get_export, methods=["GET"]),
        Route("/api/stream", sse, methods=["GET"]),
        WebSocketRoute("/ws/events", websocket_events),
        Route("/v1/traces", _otlp_handler("traces"), methods=["POST"]),
        Route("/v1/logs", _otlp_handler("logs"), methods=["POST"]),
        Route("/v1/metrics", _otlp_handler("metrics"), methods=["POST"]),
    ]
    if analytics:
        routes += [
            Route("/api/metrics", get_metrics, methods=["GET"]),
            Route("/api/insights", get_insights, methods=["GET"]),
            Route("/api/series", get_series, methods=["GET"]),
            Route("/api/anomalies", get_anomalies, methods=["GET"]),
        ]
    else:
        # the analytics endpoints exist without the plugin, to say what is missing (a 404 would read as a wrong URL)
        async def analytics_missing(request: Request) -> Response:
            raise APIError(501, "Not Implemented",
                           f"{request.url.path} needs the analytics plugin: pip install vibekit-telemetry-analytics "
                           "and set [analytics] enabled = true (telemetry api loads it when it is installed)")

        routes += [Route(path, analytics_missing, methods=["GET"])
                   for path in ("/api/metrics", "/api/insights", "/api/series", "/api/anomalies")]
    if service.host.impls("get_alerts"):
        routes.append(Route("/api/alerts", get_alerts, methods=["GET"]))
    if config.metrics.prometheus:
        routes.append(Route(config.metrics.endpoint, prometheus, methods=["GET"]))
    routes += extra_routes or []
    for mount in mounts:
        app_ = _OnlyOnPort(mount.app, config.dashboard_port) if mount.name == "dashboard" and config.dashboard_port \
            else mount.app
        routes.append(Mount(mount.path, app=app_, name=mount.name))
    dashboard = next((m for m in mounts if m.name == "dashboard"), None)
    if dashboard is not None:
        routes.append(Route("/", _home(f"{dashboard.path}/"), methods=["GET"]))
    limiter = RateLimiter({"api": (config.rate_limit.max, config.rate_limit.window_ms / 1000),
                           "ingest": (config.rate_limit.ingest_max, config.rate_limit.ingest_window_ms / 1000)},
                          config.rate_limit.storage, on_error=lambda exc: metrics.rate_limit_errors.inc(),
                          store=service.storage_plugin() if config.rate_limit.storage == "store" else None)
    auth = Authenticator(credentials)
    provenance = Provenance(config.host_names(credentials), origins)
    middleware = [
        Middleware(_RequestMetrics, metrics=metrics, routes=routes),
        Middleware(Guard, config=config, auth=auth, limiter=limiter,
                   on_reject=lambda reason: metrics.refused.labels(reason).inc(),
                   public=tuple(m.path for m in mounts if m.public), provenance=provenance),
    ]
    if origins:
        middleware.insert(1, Middleware(CORSMiddleware, allow_origins=origins, allow_credentials=config.cors.credentials,
                                        allow_methods=config.cors.methods, allow_headers=config.cors.headers,
                                        max_age=config.cors.max_age))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={APIError: _api_error, HTTPException: _http_error, InvalidQueryError: _telemetry_error,
                            InvalidEventError: _telemetry_error, ServiceClosedError: _telemetry_error,
                            StorageError: _telemetry_error, PluginError: _telemetry_error, Exception: _telemetry_error},
    )
    app.state.ctx = ctx
    app.state.auth = auth
    app.state.limiter = limiter
    app.state.openapi = openapi_document(service, config, analytics=analytics)
    return app
