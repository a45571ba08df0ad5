"""The ``dashboard`` plugin: a web dashboard served by the API server.

``telemetry api --dashboard`` serves it at ``/dashboard/`` (``--dashboard-port
3001`` on a port of its own); ``telemetry demo`` ends by serving it.  The pages
are static files shipped in this package (no CDN, no build step at run time);
every number and event on them comes from the guarded ``/api/`` endpoints and
the ``/api/stream`` live feed, so the API's keys, scopes and rate limits apply.
See ``docs/dashboard.md``.
"""

from __future__ import annotations

from importlib.resources import files
from typing import TYPE_CHECKING, Any

import attrs

from vibekit_telemetry import hookimpl

if TYPE_CHECKING:
    from collections.abc import Callable

    from vibekit_telemetry import TelemetryService

__all__ = ["DashboardConfig", "DashboardPlugin", "static_files"]


@attrs.frozen
class DashboardConfig:
    """Options of ``plugins = [{name = "dashboard", options = {...}}]``."""

    #: the URL prefix the pages are served under
    path: str = "/dashboard"


def static_files() -> Any:
    """The directory of the dashboard's assets (HTML, JavaScript, CSS, icon) inside the package."""
    return files(__name__) / "static"


class DashboardPlugin:
    """Registers the dashboard's pages with the API server (the ``api_routes`` hook)."""

    name = "dashboard"
    Config = DashboardConfig

    def __init__(self, config: DashboardConfig | None = None) -> None:
        self.config = config or DashboardConfig()

    @hookimpl
    def api_routes(self, service: TelemetryService, register: Callable[..., None]) -> None:
        """Mount the static pages, public: their data come from ``/api/`` with the visitor's key."""
        from .pages import Pages

        register(self.config.path, Pages(static_files()), name="dashboard", public=True)
