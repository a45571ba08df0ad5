"""Live streams: Server-Sent Events at ``/api/stream`` and a WebSocket at ``/ws/events``.

Each subscriber gets a kernel :class:`~vibekit_telemetry.EventStream` holding at
most ``streams.max_pending`` undelivered events.  The loop runs on the event
loop without a thread per client: it takes what is waiting, sends it, and
sleeps briefly when nothing is.  A subscriber too slow to keep up loses the
newest events (counted, and told with a ``skipped`` message); past
``streams.disconnect_after_dropped`` it is disconnected.  Memory never grows
with a slow reader.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import attrs
import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from vibekit_telemetry import EventStream, QueryFilter, TelemetryEvent, now_ms, time_range

from .validation import APIError, StreamQuery, kernel_filter, structure, validation_error

if TYPE_CHECKING:
    from .app import APIContext

_POLL_S = 0.05
_MAX_CHUNK = 200
#: seconds between two metrics messages on a stream that asked for them
METRICS_EVERY = 2.0


class Subscriptions:
    """Counts and ends live subscribers (all of them at shutdown)."""

    def __init__(self, ctx: APIContext) -> None:
        self.ctx = ctx
        self.streams: set[EventStream] = set()
        self.stopping = False

    def open(self, params: dict[str, Any]) -> tuple[EventStream, StreamQuery]:
        """A new subscription and its parameters, or 503 when the server has ``streams.max_clients`` already."""
        if self.stopping:
            raise APIError(503, "Service Unavailable", "the server is shutting down", headers={"retry-after": "5"})
        if len(self.streams) >= self.ctx.config.streams.max_clients:
            raise APIError(503, "Service Unavailable",
                           f"too many live subscribers (limit {self.ctx.config.streams.max_clients}); retry later",
                           headers={"retry-after": "5"})
        query = structure(params, StreamQuery, what="stream filter")
        flt = kernel_filter(QueryFilter, query.filter())
        if query.metrics is not None:
            try:
                time_range((query.metrics, None))
            except ValueError as exc:
                raise validation_error("Invalid stream filter", [{"field": "metrics", "message": str(exc)}]) from None
            if not self.ctx.service.host.impls("get_metrics"):
                raise validation_error("Invalid stream filter", [
                    {"field": "metrics", "message": "metrics need the analytics plugin (pip install vibekit-telemetry-analytics)"}])
        stream = self.ctx.service.create_event_stream(flt, max_pending=self.ctx.config.streams.max_pending)
        self.streams.add(stream)
        return stream, query

    def close(self, stream: EventStream) -> None:
        """End one subscription."""
        stream.close()
        self.streams.discard(stream)

    def close_all(self) -> None:
        """End every subscription (the server is stopping)."""
        self.stopping = True
        for stream in list(self.streams):
            self.close(stream)


def _take(stream: EventStream) -> list[TelemetryEvent]:
    events = []
    while len(events) < _MAX_CHUNK:
        event = stream.get(timeout=0)
        if event is None:
            break
        events.append(event)
    return events


async def _batches(ctx: APIContext, stream: EventStream, transport: str,
                   idle_s: float | None = None) -> AsyncIterator[tuple[list[TelemetryEvent], int]]:
    """Yield ``(events, newly skipped)`` as they come, and ``([], 0)`` after ``idle_s`` (the heartbeat) without any."""
    config = ctx.config.streams
    idle_s = config.heartbeat_s if idle_s is None else idle_s
    reported = 0
    last = time.monotonic()
    while not stream.closed:
        events = _take(stream)
        skipped = stream.dropped - reported
        if skipped:
            reported = stream.dropped
            ctx.metrics.stream_skipped.labels(transport).inc(skipped)
        if events or skipped:
            last = time.monotonic()
            yield events, skipped
            if config.disconnect_after_dropped and stream.dropped >= config.disconnect_after_dropped:
                ctx.metrics.stream_disconnected.labels(transport).inc()
                return
            continue
        if time.monotonic() - last >= idle_s:
            last = time.monotonic()
            yield [], 0
        await asyncio.sleep(_POLL_S)


def _event_json(event: TelemetryEvent) -> bytes:
    try:
        return orjson.dumps(event.to_dict())
    except orjson.JSONEncodeError:
        # a lone surrogate (orjson writes only valid UTF-8): escaped, rather than ending every reader's stream
        return json.dumps(event.to_dict(), ensure_ascii=True, separators=(",", ":"), default=str).encode()


#: what ends a line for some reader: the protocol's CR and LF, and what ``str.splitlines()`` also splits at (readers
#: built on it, such as httpx's ``iter_lines()``, are common); NUL makes a client ignore an id; a lone surrogate
#: cannot be written at all
_SSE_FIELD_UNSAFE = re.compile("[\r\n\x00\x0b\x0c\x1c-\x1e\x85\u2028\u2029\ud800-\udfff]")
#: the same breaks as they appear in UTF-8 JSON: CR and LF split the data into lines; NEL, LS and PS (which JSON
#: allows raw inside strings) are written as escapes instead, which mean the same to a JSON parser
_SSE_DATA_LINES = re.compile(rb"\r\n|\r|\n")
_SSE_DATA_UNICODE_BREAKS = re.compile(b"\xc2\x85|\xe2\x80[\xa8\xa9]")
_ESCAPES = {b"\xc2\x85": b"\\u0085", b"\xe2\x80\xa8": b"\\u2028", b"\xe2\x80\xa9": b"\\u2029"}


def sse_message(data: bytes, event: str | None = None, id: str | None = None) -> bytes:
    """One Server-Sent Events message (``data`` is JSON); no value can end its line and write fields of its own.

    An ``id`` or ``event`` holding a line break would let whoever chose it append
    fields, or whole messages (a forged ``event: anomaly``), to every reader's
    stream; such a field is left out (the JSON in ``data`` still carries the exact
    value).  Line breaks in ``data`` are escaped or, for CR and LF, which JSON
    only has between tokens, give one ``data:`` line each (clients join them with LF).
    """
    parts = []
    if id is not None and _SSE_FIELD_UNSAFE.search(id) is None:
        parts.append(b"id: %s\n" % id.encode())
    if event is not None and _SSE_FIELD_UNSAFE.search(event) is None:
        parts.append(b"event: %s\n" % event.encode())
    if _SSE_DATA_UNICODE_BREAKS.search(data) is not None:
        data = _SSE_DATA_UNICODE_BREAKS.sub(lambda match: _ESCAPES[match.group()], data)
    if b"\n" in data or b"\r" in data:
        parts += [b"data: %s\n" % line for line in _SSE_DATA_LINES.split(data)]
    else:
        parts.append(b"data: %s\n" % data)
    parts.append(b"\n")
    return b"".join(parts)


#: anomalies a metrics subscriber may have waiting; older ones give way
MAX_PENDING_ANOMALIES = 50


class _MetricsFeed:
    """A window's metrics and the last hour's events per minute, for a subscriber that asked (``metrics=24h``).

    Sent at most every ``METRICS_EVERY`` seconds, and only when a batch was
    written since (or a minute passed, so the window slides): a dashboard stays
    current over one connection instead of polling.  The anomalies the service
    emits meanwhile (the analytics plugin's live detectors) go along as they come.
    """

    def __init__(self, ctx: APIContext, window: str) -> None:
        self.ctx = ctx
        self.window = window
        self.sent_at = -math.inf
        self.sent_flushes = -1
        self.anomalies: deque[dict[str, Any]] = deque(maxlen=MAX_PENDING_ANOMALIES)
        ctx.service.on("anomaly", self._heard)

    def _heard(self, anomaly: Any) -> None:
        # called on whichever thread found it; deque appends are atomic
        if attrs.has(type(anomaly)):
            self.anomalies.append(attrs.asdict(anomaly))
        elif isinstance(anomaly, dict):
            self.anomalies.append(dict(anomaly))

    def close(self) -> None:
        """Stop listening for anomalies."""
        self.ctx.service.off("anomaly", self._heard)

    def _found(self) -> list[dict[str, Any]]:
        found = []
        while self.anomalies:
            found.append(self.anomalies.popleft())
        return found

    def anomalies_sse(self) -> bytes:
        """The anomalies heard since the last call, as Server-Sent Events (``event: anomaly``)."""
        return b"".join(sse_message(orjson.dumps(a, default=str), "anomaly") for a in self._found())

    def anomalies_websocket(self) -> list[str]:
        """The anomalies heard since the last call, as WebSocket messages ``{"type": "anomaly", "anomaly": {...}}``."""
        return [orjson.dumps({"type": "anomaly", "anomaly": a}, default=str).decode() for a in self._found()]

    def due(self) -> bool:
        elapsed = time.monotonic() - self.sent_at
        return elapsed >= METRICS_EVERY and (self.ctx.metrics.flushes != self.sent_flushes or elapsed >= 60)

    def _compute(self) -> dict[str, Any]:
        service = self.ctx.service
        metrics = service.get_metrics(time_range((self.window, None)))
        now = now_ms()
        hour_end = now - now % 60_000 + 60_000
        per_minute = service.metric_series("throughput", (hour_end - 3_600_000, hour_end), "1m")
        return {"window": self.window, "metrics": metrics.to_dict(), "events_per_minute": per_minute}

    async def payload(self) -> dict[str, Any]:
        """The message's content (computed on a worker thread)."""
        self.sent_flushes = self.ctx.metrics.flushes
        self.sent_at = time.monotonic()
        return await run_in_threadpool(self._compute)

    async def sse(self) -> bytes:
        """As a Server-Sent Event."""
        return sse_message(orjson.dumps(await self.payload(), option=orjson.OPT_NON_STR_KEYS), "metrics")

    async def websocket(self) -> str:
        """As a WebSocket text message."""
        return orjson.dumps({"type": "metrics", **await self.payload()}, option=orjson.OPT_NON_STR_KEYS).decode()


async def sse(request: Request) -> StreamingResponse:
    """``GET /api/stream``: new events as Server-Sent Events (``event:`` is the event type, ``id:`` its id)."""
    ctx: APIContext = request.app.state.ctx
    # in a thread: opening may wait (briefly) for a shared store to start listening for other servers' events
    stream, query = await asyncio.to_thread(ctx.live.open, dict(request.query_params))
    gauge = ctx.metrics.stream_clients.labels("sse")

    async def body() -> AsyncIterator[bytes]:
        gauge.inc()
        # made here, where the finally below ends it
        feed = _MetricsFeed(ctx, query.metrics) if query.metrics is not None else None
        try:
            yield b": connected\n\n"
            if feed is not None:
                yield await feed.sse()
            async for events, skipped in _batches(ctx, stream, "sse", METRICS_EVERY if feed is not None else None):
                if feed is not None:
                    if found := feed.anomalies_sse():
                        yield found
                    if feed.due():
                        yield await feed.sse()
                if not events and not skipped:
                    yield b": ping\n\n"
                    continue
                parts = [sse_message(_event_json(e), e.event_type, e.id) for e in events]
                if skipped:
                    parts.append(sse_message(orjson.dumps({"skipped": skipped, "total": stream.dropped}), "skipped"))
                ctx.metrics.stream_sent.labels("sse").inc(len(events))
                yield b"".join(parts)
        finally:
            gauge.dec()
            ctx.live.close(stream)
            if feed is not None:
                feed.close()

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"cache-control": "no-store", "x-accel-buffering": "no"})


async def websocket_events(websocket: WebSocket) -> None:
    """``/ws/events``: new events as JSON text messages ``{"type": "event", "event": {...}}``.

    With ``?metrics=24h``, also ``{"type": "metrics", ...}`` and ``{"type": "anomaly", "anomaly": {...}}``
    messages, as on the SSE stream.

    The client may send ``{"type": "ping"}`` (answered with ``pong``); anything
    else is ignored.  Closing either side ends the subscription.
    """
    ctx: APIContext = websocket.app.state.ctx
    try:
        stream, query = await asyncio.to_thread(ctx.live.open, dict(websocket.query_params))
    except APIError as exc:
        await websocket.close(code=1008 if exc.status < 500 else 1013, reason=exc.message[:120])
        return
    await websocket.accept()
    gauge = ctx.metrics.stream_clients.labels("websocket")
    gauge.inc()

    async def listen() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text:
                try:
                    data = orjson.loads(text)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(data, dict) and data.get("type") == "ping":
                    await websocket.send_text('{"type":"pong"}')

    listener = asyncio.create_task(listen())
    feed = _MetricsFeed(ctx, query.metrics) if query.metrics is not None else None
    try:
        if feed is not None:
            await websocket.send_text(await feed.websocket())
        async for events, skipped in _batches(ctx, stream, "websocket", METRICS_EVERY if feed is not None else None):
            if listener.done():
                break
            if feed is not None:
                for message in feed.anomalies_websocket():
                    await websocket.send_text(message)
                if feed.due():
                    await websocket.send_text(await feed.websocket())
            if not events and not skipped:
                await websocket.send_text('{"type":"ping"}')
                continue
            for event in events:
                await websocket.send_text('{"type":"event","event":%s}' % _event_json(event).decode())
            if skipped:
                await websocket.send_text(orjson.dumps({"type": "skipped", "skipped": skipped, "total": stream.dropped}).decode())
            ctx.metrics.stream_sent.labels("websocket").inc(len(events))
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
    finally:
        listener.cancel()
        gauge.dec()
        ctx.live.close(stream)
        if feed is not None:
            feed.close()
        if websocket.client_state == WebSocketState.CONNECTED:
            try:
                await websocket.close(code=1001 if ctx.live.stopping else 1008 if stream.dropped else 1000)
            except (RuntimeError, OSError):
                pass
