"""``telemetry api``: serve the configured storage over HTTP in the foreground, in one process or several.

With ``--workers N`` (or ``[api] workers = N``) this process binds the port,
starts N worker processes that all accept on that one socket, and supervises
them: a worker that dies is replaced, SIGTERM or Ctrl-C stops them all, and
each worker writes its pending events before it exits.  A worker is this same
command started with a private ``--worker-fd``: a socket to its parent over
which it receives its configuration (keys included, so none travels in an
argument or the environment), reports that it listens, and learns that the
parent has gone (end of file), whereupon it stops as if sent SIGTERM.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import click

from vibekit_telemetry import TelemetryError

if TYPE_CHECKING:
    from vibekit_telemetry import TelemetryService

    from .server import APIServer

#: how long a worker may take to open its service and listen before the start counts as failed
WORKER_START_S = 60.0
#: how long stopping workers may take to finish requests and write their pending events before they are killed
WORKER_STOP_S = 120.0


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
@click.option("--workers", type=click.IntRange(min=1),
              help="Server processes sharing the port (default 1, or [api] workers).")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              help="Server log level (default warning).")
@click.option("--worker-fd", type=int, hidden=True, help="Internal: run as a worker of a parent `telemetry api`.")
@click.pass_context
def api(ctx: click.Context, port: int | None, host: str | None, auth: bool, api_keys: tuple[str, ...],
        bearer_tokens: tuple[str, ...], origins: tuple[str, ...], allowed_hosts: tuple[str, ...],
        rate_limit: int | None, no_rate_limit: bool, dashboard: bool, dashboard_port: int | None,
        workers: int | None, log_level: str | None, worker_fd: int | None) -> None:
    """Serve the HTTP API (ingest, queries, live streams, OTLP, /metrics) until Ctrl-C or SIGTERM.

    Pending events are written before the command exits (by every worker with --workers).
    """
    from . import APIConfig, merged_config
    from .server import APIServer

    state = ctx.find_root().obj
    config_path = getattr(state, "config_path", None)
    if worker_fd is not None:
        _work(ctx, config_path, worker_fd)
        return
    overrides: dict[str, Any] = {}
    for key, value in (("port", port), ("host", host), ("log_level", log_level), ("dashboard_port", dashboard_port),
                       ("workers", workers)):
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
    service = _open_service(ctx, config_path)
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
        if config.workers > 1 and os.name != "posix":
            raise TelemetryError("--workers (api.workers) above 1 needs a POSIX system; run one server per port")
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
    if config.workers > 1:
        _supervise(service, server, config_path, auth_state)
        return

    def ready(url: str) -> None:
        click.echo(f"telemetry API for {service.service_name} listening on {url} "
                   f"({auth_state}; Ctrl-C to stop)", err=True)
        if server.dashboard_url:
            click.echo(f"dashboard: {server.dashboard_url}", err=True)

    _serve(server, ready)
    click.echo("stopped; writing pending events", err=True)


def _open_service(ctx: click.Context, config_path: str | None, *, worker: bool = False) -> TelemetryService:
    """The configured service (exit 2 on a bad configuration), with analytics when it is installed.

    A worker of ``--workers`` on a store of one machine keeps its analytics rollups in memory: the workers
    would otherwise all rewrite the one rollup file, each with its own counts (on PostgreSQL the rollups are
    the cluster's, shared)."""
    from vibekit_telemetry import TelemetryService
    from vibekit_telemetry.plugins import installed_plugins

    try:
        # the [api] section configures this server; it must not start a second one in the background
        service = TelemetryService(config_path, api={"enabled": False})
    except TelemetryError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    ctx.call_on_close(service.shutdown)
    # /api/metrics, insights and anomalies come from analytics: served whenever it is installed, unless the
    # configuration turns it off
    analytics = service.config.analytics or {}
    if analytics.get("enabled") is not False and "analytics" not in service.host.order \
            and "analytics" in {plugin.name for plugin in installed_plugins()}:
        options = {k: v for k, v in analytics.items() if k != "enabled"}
        if worker and getattr(service.storage_plugin(), "name", None) != "postgres" and not options.get("path"):
            options["metrics"] = {**options.get("metrics", {}), "persistence": False}
        service.require_plugin("analytics", where="telemetry api", options=options)
    return service


def _serve(server: APIServer, ready: Any, sockets: list[socket.socket] | None = None) -> None:
    """Serve until a signal; a listening or rate-limit storage failure is a message and exit status 1."""
    try:
        server.serve(ready, sockets=sockets)
    except (OSError, TelemetryError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the Ctrl-C it has already handled by shutting down: that is a clean stop


def _work(ctx: click.Context, config_path: str | None, fd: int) -> None:
    """A worker: read the configuration and listening sockets from the parent, serve on them, report ready."""
    import orjson

    from vibekit_telemetry.config import structure

    from . import APIConfig
    from .server import APIServer

    parent = socket.socket(fileno=fd)
    reader = parent.makefile("rb")
    orders = orjson.loads(reader.readline() or b"null")
    if not isinstance(orders, dict):
        click.echo("error: --worker-fd is for the workers `telemetry api --workers N` starts", err=True)
        sys.exit(2)
    service = _open_service(ctx, config_path, worker=True)
    try:
        config = structure(orders["config"], APIConfig, where="telemetry api", path="api")
        server = APIServer(service, config)
    except (TelemetryError, ValueError) as exc:
        click.echo(f"error: worker {os.getpid()}: {exc}", err=True)
        sys.exit(2)

    def orphaned() -> None:
        reader.read()  # returns at end of file: the parent has exited, however it went
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=orphaned, name="vibekit-api-parent", daemon=True).start()
    sockets = [socket.socket(fileno=n) for n in orders["fds"]]
    _serve(server, lambda url: parent.sendall(b"ready\n"), sockets)


class _Worker:
    """One worker process and the parent's end of its socket."""

    def __init__(self, config_path: str | None, orders: bytes, fds: list[int]) -> None:
        ours, theirs = socket.socketpair()
        command = [sys.executable, "-m", "vibekit_telemetry", *(["--config", config_path] if config_path else []),
                   "api", "--worker-fd", str(theirs.fileno())]
        # its own session: Ctrl-C in a terminal reaches the parent only, which stops the workers once, in order
        self.process = subprocess.Popen(command, pass_fds=[theirs.fileno(), *fds], start_new_session=True)
        theirs.close()
        self.channel = ours
        self.channel.sendall(orders)

    def wait_ready(self, timeout: float) -> bool:
        """Whether the worker reported that it serves within ``timeout`` seconds."""
        self.channel.settimeout(timeout)
        try:
            return self.channel.makefile("rb").readline() == b"ready\n"
        except OSError:
            return False
        finally:
            self.channel.settimeout(None)

    def stop(self) -> None:
        """Ask the worker to finish its requests and write its pending events."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def close(self) -> None:
        self.channel.close()


def _supervise(service: TelemetryService, server: APIServer, config_path: str | None, auth_state: str) -> None:
    """Bind, start the workers, replace one that dies, and on SIGTERM/Ctrl-C stop them all and wait for them."""
    import orjson

    from vibekit_telemetry.config import converter

    config = server.config
    try:
        server.check()
        sockets = server.bind()
    except (OSError, TelemetryError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    url, dashboard_url = server.url, server.dashboard_url
    # this process only checked the configuration (and opened the storage once, so its schema is current
    # before several processes open it); the workers each have their own service
    service.shutdown()
    if "analytics" in service.host.order and getattr(service.storage_plugin(), "name", None) != "postgres":
        click.echo("note: analytics rollups (/api/metrics, /api/insights, anomalies) are kept by each worker, in "
                   "memory: each counts only what it stores itself from its start (with a PostgreSQL store they are the "
                   "cluster's, shared)", err=True)
    if config.rate_limit.enabled and not config.rate_limit.shared:
        click.echo(f"warning: api.rate_limit.storage is \"memory://\": each of the {config.workers} workers keeps "
                   f"its own budget, so a client may make up to {config.workers} times rate_limit.max requests; "
                   "set api.rate_limit.storage = \"redis://...\" for one budget", err=True)
    fds = [sock.fileno() for sock in sockets]
    orders = orjson.dumps({"config": converter.unstructure(config), "fds": fds}) + b"\n"
    stopping = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    workers: list[_Worker] = []

    def start_one() -> _Worker | None:
        worker = _Worker(config_path, orders, fds)
        if worker.wait_ready(WORKER_START_S):
            return worker
        worker.stop()
        worker.process.wait(WORKER_STOP_S)
        worker.close()
        return None

    status = 0
    try:
        for _ in range(config.workers):
            if stopping.is_set():
                break
            worker = start_one()
            if worker is None:
                click.echo("error: a worker did not start (its message is above); stopping", err=True)
                status = 1
                break
            workers.append(worker)
        if status == 0 and not stopping.is_set():
            pids = ", ".join(str(w.process.pid) for w in workers)
            click.echo(f"telemetry API for {service.service_name} listening on {url} "
                       f"({config.workers} workers: {pids}; {auth_state}; Ctrl-C to stop)", err=True)
            if dashboard_url:
                click.echo(f"dashboard: {dashboard_url}", err=True)
        while status == 0 and not stopping.wait(0.5):
            for index, worker in enumerate(workers):
                code = worker.process.poll()
                if code is None or stopping.is_set():
                    continue
                click.echo(f"worker {worker.process.pid} exited with status {code}; starting another", err=True)
                worker.close()
                replacement = start_one()
                if replacement is None:
                    click.echo("error: the replacement worker did not start; stopping", err=True)
                    status = 1
                    break
                workers[index] = replacement
    finally:
        for worker in workers:
            worker.stop()
        deadline = time.monotonic() + WORKER_STOP_S
        for worker in workers:
            try:
                code = worker.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                click.echo(f"error: worker {worker.process.pid} did not stop within {WORKER_STOP_S:.0f} s; killed",
                           err=True)
                worker.process.kill()
                code = worker.process.wait()
            # 128 + SIGTERM: the kernel's SIGTERM handler ends a worker with that once it has drained
            if code not in (0, 128 + signal.SIGTERM, -signal.SIGTERM):
                click.echo(f"error: worker {worker.process.pid} ended with status {code}", err=True)
                status = status or 1
            worker.close()
        for sock in sockets:
            sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if status:
        sys.exit(status)
    click.echo(f"stopped; the {config.workers} workers wrote their pending events", err=True)
