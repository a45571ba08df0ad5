"""``telemetry api``: serve the configured storage over HTTP in the foreground."""

from __future__ import annotations

import secrets
import sys
from typing import Any

import click

from vibekit_telemetry import TelemetryError


@click.command()
@click.option("--port", type=click.IntRange(0, 65535), help="Port to listen on (default 3000; 0 picks a free one).")
@click.option("--host", help="Address to bind (default 127.0.0.1, this machine only).")
@click.option("--auth", is_flag=True, help="Require an API key (one is generated and printed if none is given).")
@click.option("--api-key", "api_keys", multiple=True, help="Accept this API key (repeatable; implies --auth).")
@click.option("--bearer-token", "bearer_tokens", multiple=True, help="Accept this bearer token (repeatable).")
@click.option("--cors-origin", "origins", multiple=True, help="Allow this browser origin (repeatable).")
@click.option("--allowed-host", "allowed_hosts", multiple=True,
              help="Answer requests for this host name too, e.g. behind a proxy (repeatable; '*' for any).")
@click.option("--rate-limit", type=click.IntRange(min=1), help="Requests per client IP per window on /api/.")
@click.option("--no-rate-limit", is_flag=True, help="Turn rate limiting off (for trusted local use).")
@click.option("--dashboard", is_flag=True, help="Serve the web dashboard too (needs the dashboard plugin).")
@click.option("--dashboard-port", type=click.IntRange(1, 65535), help="Serve the dashboard on its own port.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              help="Server log level (default warning).")
@click.pass_context
def api(ctx: click.Context, port: int | None, host: str | None, auth: bool, api_keys: tuple[str, ...],
        bearer_tokens: tuple[str, ...], origins: tuple[str, ...], allowed_hosts: tuple[str, ...],
        rate_limit: int | None, no_rate_limit: bool, dashboard: bool, dashboard_port: int | None,
        log_level: str | None) -> None:
    """Serve the HTTP API (ingest, queries, live streams, OTLP, /metrics) until Ctrl-C or SIGTERM.

    Pending events are written before the command exits.
    """
    from vibekit_telemetry import TelemetryService
    from vibekit_telemetry.plugins import installed_plugins

    from . import APIConfig, merged_config
    from .server import APIServer

    state = ctx.find_root().obj
    overrides: dict[str, Any] = {}
    for key, value in (("port", port), ("host", host), ("log_level", log_level), ("dashboard_port", dashboard_port)):
        if value is not None:
            overrides[key] = value
    if dashboard or dashboard_port:
        overrides["dashboard"] = True
    auth_section: dict[str, Any] = {}
    if api_keys:
        auth_section["api_keys"] = list(api_keys)
    if bearer_tokens:
        auth_section["bearer_tokens"] = list(bearer_tokens)
    if auth or api_keys or bearer_tokens:
        auth_section["enabled"] = True
    if origins:
        overrides["cors"] = {"origins": list(origins)}
    if allowed_hosts:
        overrides["allowed_hosts"] = list(allowed_hosts)
    if rate_limit is not None or no_rate_limit:
        overrides["rate_limit"] = {"enabled": not no_rate_limit, **({"max": rate_limit} if rate_limit else {})}
    try:
        # the [api] section configures this server; it must not start a second one in the background
        service = TelemetryService(getattr(state, "config_path", None), api={"enabled": False})
    except TelemetryError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    ctx.call_on_close(service.shutdown)
    # /api/metrics, insights and anomalies come from analytics: served whenever it is installed, unless the
    # configuration turns it off
    analytics = service.config.analytics or {}
    if analytics.get("enabled") is not False and "analytics" not in service.host.order \
            and "analytics" in {plugin.name for plugin in installed_plugins()}:
        service.require_plugin("analytics", where="telemetry api",
                               options={k: v for k, v in analytics.items() if k != "enabled"})
    section = {k: v for k, v in (service.config.api or {}).items() if k != "enabled"}
    try:
        sources = " + ".join(service.loaded.sources) or "configuration"
        config = merged_config(merged_config(APIConfig(), section, sources), overrides, "command line")
        # --auth, api.auth.enabled or TELEMETRY_AUTH_ENABLED=true with no key anywhere: never serve open
        wants_auth = auth_section.get("enabled") or (config.auth.enabled and "enabled" not in auth_section)
        if wants_auth and not auth_section.get("api_keys") and not auth_section.get("bearer_tokens") \
                and not config.auth.credentials():
            generated = secrets.token_urlsafe(24)
            auth_section["api_keys"] = [generated]
            why = "--auth" if auth_section.get("enabled") else "api.auth.enabled (or TELEMETRY_AUTH_ENABLED)"
            click.echo(f"{why} is on and no key is configured; generated API key (shown once): {generated}", err=True)
        if auth_section:
            config = merged_config(config, {"auth": auth_section}, "command line")
        server = APIServer(service, config)
    except (TelemetryError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    keys = len(server.app.state.auth.credentials)
    if keys:
        auth_state = f"auth on, {keys} key(s)"
    elif server.config.auth.enabled is False:
        auth_state = "auth off: api.auth.enabled is false"
    else:
        auth_state = "auth off: no API key configured (--auth, api.auth or TELEMETRY_AUTH_ENABLED=true to require one)"

    def ready(url: str) -> None:
        click.echo(f"telemetry API for {service.service_name} listening on {url} "
                   f"({auth_state}; Ctrl-C to stop)", err=True)
        if server.dashboard_url:
            click.echo(f"dashboard: {server.dashboard_url}", err=True)

    try:
        server.serve(ready)
    except OSError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the Ctrl-C it has already handled by shutting down: that is a clean stop
    click.echo("stopped; writing pending events", err=True)
