"""Running the application with uvicorn: in the foreground (``telemetry api``) or on a background thread.

The listening socket is bound before uvicorn starts, so a busy port is a clear
``OSError`` here rather than a ``sys.exit`` inside uvicorn; ``serve(sockets=...)``
takes sockets bound by another process instead (the workers of
``telemetry api --workers N`` all accept on their parent's).  A shared
rate-limit storage is checked before anything listens.  Connections are
bounded by :mod:`.connections` (header and body deadlines, connections per
client).  Stopping ends the live streams first (they would otherwise hold the
graceful shutdown open), then lets uvicorn finish the requests in flight.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn

from .app import build_app
from .connections import ConnectionLimits, protocols

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from vibekit_telemetry import TelemetryService

    from .config import APIConfig

log = logging.getLogger("vibekit_telemetry.api")


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, ending the live streams as soon as a stop is asked for (signal or ``stop()``)."""

    def __init__(self, config: uvicorn.Config, on_exit: Any) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)


class APIServer:
    """The HTTP API of one :class:`~vibekit_telemetry.TelemetryService`.

    ``start()`` serves on a background thread and returns once the socket
    listens; ``serve()`` serves in the calling thread until SIGINT/SIGTERM.
    ``stop()`` (or leaving a ``with`` block) shuts it down.
    """

    def __init__(self, service: TelemetryService, config: APIConfig, *,
                 extra_routes: list[BaseRoute] | None = None) -> None:
        self.service = service
        self.config = config
        self.app = build_app(service, config, extra_routes=extra_routes)
        self._socket: socket.socket | None = None
        self._dashboard_socket: socket.socket | None = None
        self._port: int | None = None
        self._server: _Uvicorn | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port listened on (the chosen one when the configuration says 0)."""
        return self._port if self._port is not None else self.config.port

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:3000``."""
        host = self.config.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def dashboard_url(self) -> str | None:
        """Where the dashboard is served (``None`` without it): its own port, or ``/dashboard/`` here."""
        mount = next((r for r in self.app.routes if getattr(r, "name", None) == "dashboard"), None)
        if mount is None:
            return None
        base = self.url if not self.config.dashboard_port else self.url.rsplit(":", 1)[0] + f":{self.config.dashboard_port}"
        return f"{base}{mount.path}/"

    def _listen(self, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # accepted connections inherit this: without it a response's head and body wait on delayed ACKs (40 ms)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((self.config.host, port))
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"cannot listen on {self.config.host}:{port}: {exc.strerror}") from None
        sock.listen(2048)
        sock.set_inheritable(True)
        return sock

    def check(self) -> None:
        """Raise :class:`~.security.RateLimitStorageError` when the shared rate-limit storage does not answer."""
        if self.config.rate_limit.enabled:
            self.app.state.limiter.check()

    def bind(self) -> list[socket.socket]:
        """The API's listening socket, and the dashboard's when it has its own port."""
        self._socket = self._listen(self.config.port)
        self._port = self._socket.getsockname()[1]
        if self.config.dashboard_port:
            try:
                self._dashboard_socket = self._listen(self.config.dashboard_port)
            except OSError:
                self._socket.close()
                raise
            return [self._socket, self._dashboard_socket]
        return [self._socket]

    def _uvicorn(self) -> _Uvicorn:
        metrics = self.app.state.ctx.metrics
        limits = ConnectionLimits(
            self.config.header_timeout_ms / 1000, self.config.body_timeout_ms / 1000,
            # behind a proxy every connection comes from the proxy: limiting them is the proxy's job
            0 if self.config.trust_proxy else self.config.max_connections_per_client,
            on_refuse=lambda reason: metrics.refused.labels(reason).inc())
        http, ws = protocols(limits)
        config = uvicorn.Config(
            self.app, log_level=self.config.log_level, access_log=self.config.access_log, lifespan="off",
            http=http, ws=ws, timeout_graceful_shutdown=5, server_header=False, proxy_headers=self.config.trust_proxy,
            ws_max_size=1 << 20,
        )
        self._server = _Uvicorn(config, self._end_streams)
        return self._server

    def _end_streams(self) -> None:
        self.app.state.ctx.live.close_all()

    def start(self, timeout: float = 10.0) -> APIServer:
        """Serve on a background thread; returns once the server accepts connections."""
        if self._thread is not None:
            raise RuntimeError("the API server is already running")
        self.check()
        sockets = self.bind()
        server = self._uvicorn()
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": sockets},
                                        name=f"vibekit-api-{self.port}", daemon=True)
        self._thread.start()
        deadline = threading.Event()
        for _ in range(int(timeout / 0.01)):
            if server.started or not self._thread.is_alive():
                break
            deadline.wait(0.01)
        if not server.started:
            self.stop()
            raise RuntimeError(f"the API server did not start within {timeout} s")
        log.info("API server listening on %s", self.url)
        return self

    def serve(self, ready: Callable[[str], None] | None = None, sockets: list[socket.socket] | None = None) -> None:
        """Serve in this thread until SIGINT or SIGTERM (then finish the requests in flight).

        ``ready`` is called with the URL once the socket listens.  ``sockets`` (the API's, then the
        dashboard's when it has its own port) are listening sockets to accept on instead of binding.
        """
        self.check()
        if sockets is None:
            sockets = self.bind()
        else:
            self._socket = sockets[0]
            self._port = sockets[0].getsockname()[1]
            self._dashboard_socket = sockets[1] if len(sockets) > 1 else None
        if ready is not None:
            ready(self.url)
        try:
            self._uvicorn().run(sockets=sockets)
        finally:
            for sock in sockets:
                sock.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving: live streams end, requests in flight finish (up to ``timeout`` seconds)."""
        self._end_streams()
        self.service.off("flush", self.app.state.ctx.metrics.on_flush)
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for sock in (self._socket, self._dashboard_socket):
            if sock is not None:
                sock.close()

    @property
    def running(self) -> bool:
        """Whether the background thread is serving."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> APIServer:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<APIServer {self.url} {'running' if self.running else 'stopped'}>"
