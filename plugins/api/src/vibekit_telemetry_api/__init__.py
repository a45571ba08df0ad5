"""The ``api`` plugin: an HTTP API for vibekit-telemetry on Starlette and uvicorn.

Start it with ``telemetry api --port 3000``, ``telemetry.start_api_server(port=3000)``
or ``[api] enabled = true`` in the configuration (then it serves in the
background for as long as the service runs).  See ``docs/api.md``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from vibekit_telemetry import hookimpl
from vibekit_telemetry.config import converter, deep_merge, structure

from .config import APIConfig

if TYPE_CHECKING:
    import click

    from vibekit_telemetry import TelemetryService

    from .app import build_app
    from .server import APIServer

__all__ = ["APIConfig", "APIPlugin", "APIServer", "build_app", "merged_config"]

log = logging.getLogger("vibekit_telemetry.api")


def __getattr__(name: str) -> Any:
    # Starlette and uvicorn load when a server starts, not when the CLI lists plugin commands.
    if name == "APIServer":
        from .server import APIServer

        return APIServer
    if name == "build_app":
        from .app import build_app

        return build_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def merged_config(base: APIConfig, overrides: dict[str, Any], where: str) -> APIConfig:
    """``base`` with ``overrides`` (plain data, as in the ``[api]`` section) applied and validated."""
    if not overrides:
        return base
    return structure(deep_merge(converter.unstructure(base), overrides), APIConfig, where=where, path="api")


class APIPlugin:
    """Serves the service over HTTP when the configuration enables ``[api]``; answers ``start_api_server``."""

    name = "api"
    Config = APIConfig

    def __init__(self, config: APIConfig | None = None) -> None:
        self.config = config or APIConfig()
        self.servers: list[APIServer] = []

    @hookimpl
    def startup(self, service: TelemetryService) -> None:
        """Loaded by the configuration (``[api] enabled = true``): start serving in the background."""
        from .server import APIServer

        if self.config.workers > 1:
            log.warning("api.workers = %d is for `telemetry api`; the server inside this process is one process",
                        self.config.workers)
        self.servers.append(APIServer(service, self.config).start())

    @hookimpl
    def start_api_server(self, service: TelemetryService, options: dict[str, Any]) -> APIServer:
        """Start another server with ``options`` over the configured ``[api]`` section."""
        from .server import APIServer

        server = APIServer(service, merged_config(self.config, options, "start_api_server()")).start()
        self.servers.append(server)
        return server

    @hookimpl
    def before_shutdown(self, service: TelemetryService) -> None:
        """Stop listening before the service drains, so every accepted event is written."""
        for server in self.servers:
            server.stop()
        self.servers.clear()

    @hookimpl
    def health(self) -> dict[str, Any]:
        """The servers' addresses and live subscribers."""
        return {"healthy": True, "issues": [], "servers": [
            {"url": s.url, "dashboard": s.dashboard_url, "running": s.running,
             "live_clients": len(s.app.state.ctx.live.streams)} for s in self.servers]}

    @hookimpl
    @staticmethod
    def register_commands(cli: click.Group) -> None:
        """``telemetry api``."""
        from .cli import api

        cli.add_command(api)
