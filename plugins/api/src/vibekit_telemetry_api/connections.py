"""What bounds a connection: deadlines for a request's headers and body, and connections per client.

uvicorn closes an idle kept-alive connection, but nothing else: a client that
connects and sends nothing, trickles its headers a byte at a time, or stalls
halfway through a body holds its connection (and, until the body arrives, a
handler) for as long as it likes, and one client may open as many as the
process has file descriptors.  The checks live in the protocol, below the
application, because a stalled request never reaches it; the protocol classes
here are uvicorn's own with these deadlines and the count added.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

#: how long a connection past the per-client limit may take to send its headers before it is closed unanswered
REFUSAL_GRACE_S = 1.0


class ConnectionLimits:
    """Deadlines and the per-client count shared by one server's connections (used on its event loop only)."""

    def __init__(self, header_timeout_s: float, body_timeout_s: float, max_per_client: int,
                 on_refuse: Callable[[str], None] | None = None) -> None:
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.max_per_client = max_per_client
        self.on_refuse = on_refuse or (lambda reason: None)
        self._open: dict[str, int] = {}
        self._holders: dict[Any, str] = {}

    def acquire(self, transport: Any, client: str) -> bool:
        """Count a new connection from ``client``; ``False`` (not counted) when it has the most it may have."""
        if self.max_per_client and self._open.get(client, 0) >= self.max_per_client:
            return False
        self._open[client] = self._open.get(client, 0) + 1
        self._holders[transport] = client
        return True

    def release(self, transport: Any) -> None:
        """A counted connection closed (idempotent: an upgraded connection is released by its WebSocket side)."""
        client = self._holders.pop(transport, None)
        if client is None:
            return
        left = self._open[client] - 1
        if left:
            self._open[client] = left
        else:
            del self._open[client]


def _response(status: int, phrase: str, message: str, extra: bytes = b"") -> bytes:
    body = orjson.dumps({"error": phrase, "message": message})
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"x-content-type-options: nosniff\r\n%sconnection: close\r\n\r\n%s"
            % (status, phrase.encode(), len(body), extra, body))


def protocols(limits: ConnectionLimits) -> tuple[type[asyncio.Protocol], type[asyncio.Protocol]]:
    """uvicorn's HTTP and WebSocket protocol classes, bound by ``limits``."""

    class BoundedHTTP(HttpToolsProtocol):
        """httptools' protocol with a header deadline, a body deadline and the per-client count."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._deadline: asyncio.TimerHandle | None = None
            self._request_begun = False
            self._refused = not limits.acquire(transport, self.client[0] if self.client else "")
            if self._refused:
                limits.on_refuse("too_many_connections")
            self._arm(REFUSAL_GRACE_S if self._refused else limits.header_timeout_s, "headers")

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            limits.release(self.transport)
            super().connection_lost(exc)

        def _arm(self, seconds: float, phase: str) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._expired, phase)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._request_begun = True
            if self._deadline is None:  # the next request on a kept-alive connection
                self._arm(limits.header_timeout_s, "headers")

        def on_headers_complete(self) -> None:
            self._disarm()
            if self._refused:
                # uvicorn answers with whatever self.app is when the headers complete, as for limit_concurrency
                app, self.app = self.app, _too_many_connections(limits.max_per_client)
                try:
                    super().on_headers_complete()
                finally:
                    self.app = app
                return
            super().on_headers_complete()
            if not (self.parser.should_upgrade() and self._should_upgrade()):
                self._arm(limits.body_timeout_s, "body")

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._disarm()
            self._request_begun = False

        def handle_websocket_upgrade(self) -> None:
            self._disarm()
            if self._refused:
                self.transport.write(_response(429, "Too Many Requests", _too_many(limits.max_per_client),
                                               b"retry-after: 1\r\n"))
                self.transport.close()
                return
            super().handle_websocket_upgrade()

        def _expired(self, phase: str) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            cycle = self.cycle if phase == "body" else None
            if (phase == "headers" and not self._request_begun) or self._refused:
                self.transport.close()  # nothing asked, nothing to answer
                return
            limits.on_refuse("timed_out")
            if cycle is None or not cycle.response_started:
                timeout = limits.header_timeout_s if phase == "headers" else limits.body_timeout_s
                key = "header_timeout_ms" if phase == "headers" else "body_timeout_ms"
                self.transport.write(_response(408, "Request Timeout", f"the request {phase} did not arrive within "
                                               f"{timeout:g} s (api.{key}); the connection is closed"))
            if cycle is not None:  # the handler waiting for the body hears that the client is gone
                cycle.disconnected = True
                cycle.message_event.set()
            self.transport.close()

    class BoundedWebSocket(WebSocketsSansIOProtocol):
        """The WebSocket protocol, giving back the per-client count its HTTP side took."""

        def connection_lost(self, exc: Exception | None) -> None:
            limits.release(self.transport)
            super().connection_lost(exc)

    return BoundedHTTP, BoundedWebSocket


def _too_many(limit: int) -> str:
    return (f"this client has {limit} connections open already (api.max_connections_per_client); "
            "close one or retry in a second")


def _too_many_connections(limit: int) -> Callable[..., Any]:
    body = orjson.dumps({"error": "Too Many Requests", "message": _too_many(limit)})

    async def refuse(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 429, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"retry-after", b"1"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    return refuse
