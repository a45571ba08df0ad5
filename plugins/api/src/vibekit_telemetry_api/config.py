"""The ``[api]`` section: where the server listens and how it protects itself.

Everything is optional.  Secrets may come from the environment instead of the
file: ``TELEMETRY_API_KEYS`` and ``TELEMETRY_BEARER_TOKENS`` (comma-separated,
full access), ``TELEMETRY_API_READ_KEYS`` and ``TELEMETRY_API_INGEST_KEYS``
(one scope each), and ``TELEMETRY_ALLOWED_ORIGINS`` for CORS.  ``TELEMETRY_AUTH_ENABLED`` is
``api.auth.enabled`` (the kernel's configuration reads it).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Mapping
from typing import Any

import attrs

from vibekit_telemetry import ConfigError
from vibekit_telemetry.config import redact_url

SCOPES = ("read", "ingest")
#: the schemes ``api.rate_limit.storage`` takes besides ``memory://``: a Redis (or Valkey) server
REDIS_SCHEMES = ("redis://", "rediss://", "redis+unix://")
#: ``api.rate_limit.storage`` naming the service's own (PostgreSQL) store
STORE = "store"


@attrs.frozen
class Credential:
    """One accepted API key or bearer token, with a display name (the audit actor) and its scopes."""

    secret: str = attrs.field(repr=False)
    name: str
    scopes: frozenset[str]
    kind: str = "api_key"


def _credential(entry: Any, kind: str, index: int) -> Credential:
    where = f"auth.{kind}s[{index}]"
    if isinstance(entry, str):
        entry = {"key": entry}
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: expected a key string or {{key, name, scopes}}, got {entry!r}")
    unknown = set(entry) - {"key", "name", "scopes"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; an entry has key, name and scopes")
    secret = entry.get("key")
    if not isinstance(secret, str) or len(secret) < 8:
        raise ConfigError(f"{where}.key: expected a secret of at least 8 characters")
    scopes = entry.get("scopes", SCOPES)
    if isinstance(scopes, str):
        scopes = [scopes]
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise ConfigError(f"{where}.scopes: expected a list of {', '.join(SCOPES)}, got {scopes!r}")
    name = entry.get("name") or f"{kind}:{hashlib.sha256(secret.encode()).hexdigest()[:8]}"
    if not isinstance(name, str):
        raise ConfigError(f"{where}.name: expected a string")
    return Credential(secret=secret, name=name, scopes=frozenset(scopes), kind=kind)


@attrs.frozen
class AuthConfig:
    """``api.auth``: off unless keys exist (then on); ``enabled = true`` (the seed's ``TELEMETRY_AUTH_ENABLED=true``)
    with no key refuses to start (``telemetry api`` generates one and prints it instead)."""

    enabled: bool | None = None
    api_keys: list[Any] = attrs.field(factory=list)
    bearer_tokens: list[Any] = attrs.field(factory=list)

    def credentials(self, environ: Mapping[str, str] | None = None) -> list[Credential]:
        """Every accepted credential: the configured ones, then those from the environment."""
        env = os.environ if environ is None else environ
        found = [_credential(e, "api_key", i) for i, e in enumerate(self.api_keys)]
        found += [_credential(e, "bearer_token", i) for i, e in enumerate(self.bearer_tokens)]
        for variable, kind, scopes in (
            ("TELEMETRY_API_KEYS", "api_key", SCOPES),
            ("TELEMETRY_BEARER_TOKENS", "bearer_token", SCOPES),
            ("TELEMETRY_API_READ_KEYS", "api_key", ("read",)),
            ("TELEMETRY_API_INGEST_KEYS", "api_key", ("ingest",)),
        ):
            for i, secret in enumerate(s.strip() for s in env.get(variable, "").split(",")):
                if secret:
                    try:
                        found.append(_credential({"key": secret, "scopes": list(scopes)}, kind, i))
                    except ConfigError as exc:
                        raise ConfigError(f"{variable}: {exc}") from None
        return found


@attrs.frozen
class CorsConfig:
    """``api.cors``: browser origins allowed to call the API (none by default: same origin only)."""

    origins: list[str] = attrs.field(factory=list)
    credentials: bool = False
    methods: list[str] = attrs.field(factory=lambda: ["GET", "POST", "OPTIONS"])
    headers: list[str] = attrs.field(factory=lambda: ["Content-Type", "Content-Encoding", "X-API-Key", "Authorization"])
    max_age: int = 600

    def allowed_origins(self, environ: Mapping[str, str] | None = None) -> list[str]:
        """The configured origins plus ``TELEMETRY_ALLOWED_ORIGINS``; a wildcard with credentials is refused."""
        env = os.environ if environ is None else environ
        origins = [*self.origins, *(o.strip() for o in env.get("TELEMETRY_ALLOWED_ORIGINS", "").split(",") if o.strip())]
        if "*" in origins and self.credentials:
            raise ConfigError("api.cors: origins '*' cannot be combined with credentials = true; list the origins")
        return origins


@attrs.frozen
class RateLimitConfig:
    """``api.rate_limit``: requests per client IP and window; ingest has its own, larger budget.

    ``storage`` is where the counts live: ``memory://`` (this process only), a Redis URI
    (``redis://[:password@]host:port/db``, ``rediss://`` for TLS, ``redis+unix:///path.sock``), or ``store``:
    the service's PostgreSQL store (a table beside the events); every server pointed at the same Redis or
    database shares them, so several servers (or ``--workers``) give a client one budget.
    Windows are whole seconds (a ``window_ms`` that is not is rounded up).
    """

    enabled: bool = True
    window_ms: int = 15 * 60 * 1000
    max: int = 100
    ingest_window_ms: int = 60 * 1000
    ingest_max: int = 6000
    storage: str = attrs.field(default="memory://", repr=lambda uri: repr(redact_url(uri)))

    def __attrs_post_init__(self) -> None:
        for key in ("window_ms", "max", "ingest_window_ms", "ingest_max"):
            if getattr(self, key) < 1:
                raise ConfigError(f"api.rate_limit.{key}: expected a positive integer")
        if self.storage not in ("memory://", STORE) and not (self.storage.startswith(REDIS_SCHEMES)
                                                             and len(self.storage) > self.storage.index("://") + 3):
            raise ConfigError(f"api.rate_limit.storage: expected 'memory://' (this process only), a Redis URI "
                              f"such as 'redis://localhost:6379/0' ({', '.join(REDIS_SCHEMES)}) or 'store' (the "
                              f"PostgreSQL store), got {redact_url(self.storage)!r}")

    @property
    def shared(self) -> bool:
        """Whether the budgets live outside this process (Redis, the database), so other processes share them."""
        return self.storage != "memory://"


@attrs.frozen
class PrometheusConfig:
    """``api.metrics``: the Prometheus endpoint (the seed's ``metrics = {prometheus, endpoint}``)."""

    prometheus: bool = True
    endpoint: str = "/metrics"
    #: the window of the analytics gauges (latency percentiles, error rate...) in the scrape
    window: str = "5m"


@attrs.frozen
class StreamConfig:
    """``api.streams``: live SSE and WebSocket subscribers."""

    max_clients: int = 100
    #: undelivered events held per subscriber; beyond it the newest are skipped and counted
    max_pending: int = 1000
    #: a subscriber that has skipped this many events is disconnected (0 never disconnects)
    disconnect_after_dropped: int = 10_000
    heartbeat_s: float = 15.0


@attrs.frozen
class APIConfig:
    """Options of the ``[api]`` section (and of ``start_api_server(...)`` / ``telemetry api``)."""

    host: str = "127.0.0.1"
    port: int = 3000
    cors: CorsConfig = CorsConfig()
    auth: AuthConfig = AuthConfig()
    rate_limit: RateLimitConfig = RateLimitConfig()
    metrics: PrometheusConfig = PrometheusConfig()
    streams: StreamConfig = StreamConfig()
    #: largest request body accepted, after decompression (413 beyond)
    max_body_bytes: int = 8 * 2**20
    #: most events in one POST /api/events
    max_batch: int = 1000
    #: most items a query may ask for per page
    max_page: int = 1000
    #: server-side export files are written below this directory (default ``<data_dir>/exports``)
    export_dir: str | None = None
    #: host names the server answers to besides ``localhost``, ``127.0.0.1``, ``[::1]``, ``host`` and IP addresses;
    #: ``["*"]`` answers any.  Unset, the ``Host`` check applies only while no key is required (DNS rebinding)
    allowed_hosts: list[str] | None = None
    #: how long a client has to send a request's headers, from connecting (or from the request's first byte on a
    #: kept-alive connection); then 408 and the connection closes
    header_timeout_ms: int = 10_000
    #: how long a client has to send a request's whole body once its headers arrived; then 408 and the connection closes
    body_timeout_ms: int = 10_000
    #: open connections one client address may hold (0: no limit); more are answered 429 and closed
    max_connections_per_client: int = 64
    #: trust X-Forwarded-For / X-Forwarded-Proto from a reverse proxy (client IP, HSTS)
    trust_proxy: bool = False
    hsts_max_age: int = 31_536_000
    #: serving on a non-loopback address without authentication must be asked for explicitly
    allow_unauthenticated: bool = False
    #: serve the web dashboard (the dashboard plugin) at /dashboard/
    dashboard: bool = False
    #: serve the dashboard on this port instead (it answers the dashboard's /api calls there too)
    dashboard_port: int | None = None
    log_level: str = "warning"
    access_log: bool = False
    #: server processes ``telemetry api`` runs on the one port (each with its own service on the same storage)
    workers: int = 1

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"api.port: expected 0..65535, got {self.port}")
        if self.workers < 1:
            raise ConfigError(f"api.workers: expected 1 or more server processes, got {self.workers}")
        if self.max_body_bytes < 1024 or self.max_batch < 1 or self.max_page < 1:
            raise ConfigError("api.max_body_bytes must be at least 1024, api.max_batch and api.max_page at least 1")
        if self.dashboard_port is not None and (not 1 <= self.dashboard_port <= 65535 or self.dashboard_port == self.port):
            raise ConfigError(f"api.dashboard_port: expected 1..65535 and not the API's port, got {self.dashboard_port}")
        for key in ("header_timeout_ms", "body_timeout_ms"):
            if getattr(self, key) < 1:
                raise ConfigError(f"api.{key}: expected a positive number of milliseconds, got {getattr(self, key)}")
        if self.max_connections_per_client < 0:
            raise ConfigError(f"api.max_connections_per_client: expected 0 (no limit) or more, "
                              f"got {self.max_connections_per_client}")
        for index, name in enumerate(self.allowed_hosts or ()):
            # a port or a scheme would never match: Host names are compared without them
            plain = name.strip().lower().strip("[]").rstrip(".")
            if name != "*" and (not plain or host_name(name) != plain or any(c in name for c in "/@ \t")):
                raise ConfigError(f"api.allowed_hosts[{index}]: expected a host name such as 'telemetry.example.com' "
                                  f"(no scheme, port or path) or '*', got {name!r}")

    def host_names(self, credentials: list[Credential]) -> frozenset[str] | None:
        """The ``Host`` names requests may carry (IP addresses always pass), or ``None`` when any may.

        Without ``allowed_hosts`` the check applies only to a server that takes requests without a key: a page
        that rebinds its own name to this address has no key to present, and a server behind a proxy or in a
        container is reached by names it cannot know.
        """
        if self.allowed_hosts is None and credentials:
            return None
        if "*" in (self.allowed_hosts or ()):
            return None
        return frozenset({"localhost", "127.0.0.1", "::1", host_name(self.host),
                          *(host_name(name) for name in self.allowed_hosts or ())})

    def check_exposure(self, credentials: list[Credential]) -> None:
        """Refuse an unauthenticated server on a public address, and ``auth.enabled`` without keys."""
        if self.auth.enabled and not credentials:
            raise ConfigError("api.auth.enabled is true but no key is configured: set api.auth.api_keys, "
                              "TELEMETRY_API_KEYS or TELEMETRY_BEARER_TOKENS")
        if credentials and self.auth.enabled is not False or self.allow_unauthenticated or _loopback(self.host):
            return
        raise ConfigError(f"api.host {self.host!r} is reachable from other machines and no API key is configured; "
                          "add keys (--auth --api-key KEY or TELEMETRY_API_KEYS) or set api.allow_unauthenticated = true")


def host_name(value: str) -> str:
    """The name part of a ``Host`` header or host setting: lower case, without port, brackets or final dot."""
    value = value.strip().lower()
    if value.startswith("["):
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
