"""What guards every request: security headers, where it comes from, rate limits, API keys and its body type.

"Where it comes from" is what keeps web pages out of a server that needs no key:
the ``Host`` (DNS rebinding) and, on writes and WebSocket handshakes, the
``Origin``; a ``POST``/``PUT`` body must also declare a type a page cannot send
without a CORS preflight.

One pure ASGI middleware (so WebSocket handshakes are guarded too).  Routes
fall into classes: open (``/health``, ``/openapi.json``), read (``/api/...``
queries, live streams, ``/metrics``) and ingest (``POST /api/events``,
``/api/sessions``, OTLP ``/v1/...``).  Read and ingest have separate rate-limit
budgets and separate key scopes.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import attrs
import orjson

from vibekit_telemetry import ConfigError, TelemetryError, acting_as
from vibekit_telemetry.config import redact_url

from .config import APIConfig, Credential, host_name

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

log = logging.getLogger("vibekit_telemetry.api")

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
_OPEN = frozenset({"/", "/health", "/openapi.json", "/favicon.ico"})
#: methods that change something: a browser sends them cross-origin without asking first (POST) or after a
#: preflight the CORS list answers; either way the Origin they carry must be one the server trusts
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: the body types some route reads; anything else (a form, text/plain, no type at all) is what a page can
#: send without a CORS preflight, so refusing it keeps cross-origin writes behind one
_BODY_TYPES = frozenset({"application/json", "application/x-protobuf", "application/protobuf", "application/gzip"})
_BODY_TYPES_TEXT = ("application/json (or application/*+json), application/x-protobuf (or application/protobuf), "
                    "either of them with Content-Encoding: gzip, or application/gzip")
#: paths where a browser cannot send headers (EventSource, WebSocket): a key may come as ?api_key=
_QUERY_KEY_PATHS = ("/api/stream", "/ws/")


def route_class(method: str, path: str, metrics_path: str, public: tuple[str, ...] = ()) -> str:
    """``open``, ``ingest`` or ``read``: which rate-limit budget and key scope a request needs.

    ``public`` are the path prefixes plugins mounted as public (the dashboard's static pages).
    """
    if path in _OPEN or any(path == p or path.startswith(p + "/") for p in public):
        return "open"
    if path.startswith("/v1/") or method == "POST" and (path == "/api/events" or path.startswith("/api/sessions")):
        return "ingest"
    if path.startswith(("/api/", "/ws/")) or path == metrics_path:
        return "read"
    return "open"


class RateLimitStorageError(TelemetryError):
    """The configured ``api.rate_limit.storage`` cannot be reached when the server starts."""


class RateLimiter:
    """Fixed-window request budgets per (budget, client) on the ``limits`` library.

    ``storage`` is ``memory://`` (this process; expired windows are dropped by
    the library) or a Redis URI, whose counters every server using it shares.
    Fixed windows (each starts at a client's first request and resets whole)
    cost one counter per client and budget, and are what the budgets meant
    before they could be shared.  A Redis that fails during a request lets it
    through (fail open: a limiter outage must not become an API outage); each
    such request calls ``on_error``, a warning is logged once per outage, and
    the storage is left alone for :attr:`RETRY_S` before it is asked again.
    """

    #: seconds a failed Redis is left alone: requests pass meanwhile, instead of each waiting for its timeout
    RETRY_S = 1.0
    #: connect and read timeout for Redis: a stuck server costs a request at most this
    TIMEOUT_S = 1.0
    KEY_PREFIX = "vibekit-telemetry"

    def __init__(self, budgets: dict[str, tuple[int, float]], storage: str = "memory://",
                 on_error: Callable[[BaseException], None] | None = None, store: Any = None) -> None:
        from limits import RateLimitItemPerSecond

        self.budgets = budgets
        self.storage_uri = storage
        self.on_error = on_error or (lambda exc: None)
        #: whole seconds, as every limits storage counts them (Redis expiries are seconds)
        self._items = {name: RateLimitItemPerSecond(limit, max(1, math.ceil(window)))
                       for name, (limit, window) in budgets.items()}
        self._down_until = 0.0
        self._outage = False
        if storage == "store":
            # the service's PostgreSQL store: a counter table beside the events (limits has no such storage)
            if store is None or getattr(store, "name", None) != "postgres" or not hasattr(store, "connection"):
                raise ConfigError("api.rate_limit.storage = \"store\" keeps the budgets in the service's store, "
                                  "which must be PostgreSQL (the postgres storage plugin); this one is "
                                  f"{getattr(store, 'name', None) or 'not configured'}: use 'memory://' or a Redis URI")
            self._strategy = StoreWindows(store)
            self._async = True
        elif storage == "memory://":
            # the synchronous memory storage: no I/O, only short thread locks, and not tied to one event loop
            from limits.storage import MemoryStorage
            from limits.strategies import FixedWindowRateLimiter

            self._strategy: Any = FixedWindowRateLimiter(MemoryStorage())
            self._async = False
        else:
            from limits.aio.strategies import FixedWindowRateLimiter as AsyncFixedWindowRateLimiter
            from limits.storage import storage_from_string

            self._strategy = AsyncFixedWindowRateLimiter(storage_from_string(
                f"async+{storage}", implementation="redispy", wrap_exceptions=True, key_prefix=self.KEY_PREFIX,
                socket_timeout=self.TIMEOUT_S, socket_connect_timeout=self.TIMEOUT_S))
            self._async = True

    @property
    def shared(self) -> bool:
        """Whether other processes using the same storage share these budgets."""
        return self.storage_uri != "memory://"

    def check(self) -> None:
        """Raise :class:`RateLimitStorageError` unless the storage answers (a no-op for ``memory://``)."""
        if not self.shared:
            return
        if isinstance(self._strategy, StoreWindows):
            try:
                self._strategy.create()
                return
            except Exception as exc:  # noqa: BLE001 - any failure means the budgets cannot be kept there
                raise RateLimitStorageError(f"api.rate_limit.storage = \"store\": cannot keep the budgets in "
                                            f"the store ({redact_url(str(exc))})") from None
        from limits.storage import storage_from_string

        shown = redact_url(self.storage_uri)
        try:
            storage = storage_from_string(self.storage_uri, key_prefix=self.KEY_PREFIX,
                                          socket_timeout=self.TIMEOUT_S * 3, socket_connect_timeout=self.TIMEOUT_S * 3)
            if storage.check():
                return
            storage.get_connection().ping()  # check() hides why; this raises it
            reason = "it did not answer PING"
        except Exception as exc:  # the library, the client or the network: all mean "not usable"
            reason = redact_url(str(exc)) or type(exc).__name__
        raise RateLimitStorageError(
            f"api.rate_limit.storage: cannot reach {shown} ({reason}); start that server, fix the URI, "
            "or set api.rate_limit.storage = \"memory://\" for budgets kept by each process")

    async def hit(self, budget: str, client: str) -> float | None:
        """Count a request; ``None`` when allowed (or when the storage fails), else seconds until the window resets."""
        if self._async and time.monotonic() < self._down_until:
            self.on_error(RuntimeError("rate-limit storage unavailable"))
            return None
        item = self._items[budget]
        try:
            allowed = self._strategy.hit(item, budget, client)
            if self._async:
                allowed = await allowed
            if allowed:
                self._recovered()
                return None
            stats = self._strategy.get_window_stats(item, budget, client)
            if self._async:
                stats = await stats
        except Exception as exc:  # fail open: a limiter outage must not turn into 500s for every client
            self._failed(exc)
            return None
        self._recovered()
        return max(1.0, stats.reset_time - time.time())

    def _failed(self, exc: BaseException) -> None:
        self._down_until = time.monotonic() + self.RETRY_S
        self.on_error(exc)
        if not self._outage:
            self._outage = True
            log.warning("rate-limit storage %s failed (%s); requests pass unlimited until it answers again",
                        redact_url(self.storage_uri), redact_url(str(exc.__cause__ or exc)))

    def _recovered(self) -> None:
        if self._outage:
            self._outage = False
            log.warning("rate-limit storage %s answers again; limits apply", redact_url(self.storage_uri))


class StoreWindows:
    """Fixed windows kept in the PostgreSQL store, with the ``hit``/``get_window_stats`` of a ``limits``
    strategy: one upsert per request counts it (a window that ended starts again at 1), on the database's
    clock so every host agrees; windows older than a day are pruned now and then.

    The counts go through a connection of their own (requests take turns on it), never the store's pool, so
    a burst of requests cannot starve ingest of connections; a statement slower than :attr:`TIMEOUT_MS` fails
    (and the request passes: the limiter fails open) instead of holding the request up.
    """

    TABLE = "api_rate_limits"
    TIMEOUT_MS = 500
    _HIT = (f"INSERT INTO {TABLE} AS r (key, window_start, hits) VALUES (%(key)s, extract(epoch FROM "
            "clock_timestamp()), 1) ON CONFLICT (key) DO UPDATE SET "
            "hits = CASE WHEN r.window_start + %(seconds)s <= excluded.window_start THEN 1 ELSE r.hits + 1 END, "
            "window_start = CASE WHEN r.window_start + %(seconds)s <= excluded.window_start "
            "THEN excluded.window_start ELSE r.window_start END "
            "RETURNING hits, window_start + %(seconds)s - extract(epoch FROM clock_timestamp())")

    def __init__(self, store: Any) -> None:
        import threading

        self.store = store
        self._conn: Any = None
        self._lock = threading.Lock()
        self._pruned = 0.0
        self._last: dict[str, float] = {}

    def _connection(self) -> Any:
        import psycopg

        if self._conn is None or self._conn.closed:
            kwargs = self.store._connect_kwargs()
            kwargs["options"] = f"{kwargs.get('options', '')} -c statement_timeout={self.TIMEOUT_MS}".strip()
            self._conn = psycopg.connect(self.store._conninfo(), autocommit=True, **kwargs)
        return self._conn

    def create(self) -> None:
        """Make the table (concurrent creators are serialised by an advisory lock)."""
        with self._lock:
            conn = self._connection()
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('vibekit_telemetry_api_rate_limits:' "
                             "|| current_schema(), 0))")
                conn.execute(f"CREATE TABLE IF NOT EXISTS {self.TABLE} (key text PRIMARY KEY, "
                             "window_start double precision NOT NULL, hits bigint NOT NULL)")

    def _hit(self, key: str, limit: int, seconds: int) -> tuple[bool, float]:
        with self._lock:
            try:
                conn = self._connection()
                hits, left = conn.execute(self._HIT, {"key": key, "seconds": seconds}).fetchone()
                if time.monotonic() - self._pruned > 60:
                    self._pruned = time.monotonic()
                    conn.execute(f"DELETE FROM {self.TABLE} WHERE window_start < "
                                 "extract(epoch FROM clock_timestamp()) - 86400")
            except Exception:
                if self._conn is not None:
                    self._conn.close()  # a new one next time
                raise
        return hits <= limit, left

    async def hit(self, item: Any, budget: str, client: str) -> bool:
        key = f"{budget}/{client}/{item.get_expiry()}"
        allowed, left = await asyncio.to_thread(self._hit, key, item.amount, item.get_expiry())
        if not allowed:
            self._last[key] = left  # read by get_window_stats right after, for the Retry-After
        return allowed

    async def get_window_stats(self, item: Any, budget: str, client: str) -> Any:
        left = self._last.pop(f"{budget}/{client}/{item.get_expiry()}", float(item.get_expiry()))
        return _WindowStats(time.time() + max(0.0, left))


@attrs.frozen
class _WindowStats:
    reset_time: float


class Authenticator:
    """Checks a presented secret against every credential in constant time."""

    def __init__(self, credentials: list[Credential]) -> None:
        self.credentials = credentials

    @property
    def enabled(self) -> bool:
        """Whether any credential is configured (then every guarded route needs one)."""
        return bool(self.credentials)

    def match(self, secret: str) -> Credential | None:
        """The credential ``secret`` belongs to, comparing against all of them so timing says nothing."""
        given = secret.encode()
        found = None
        for credential in self.credentials:
            if hmac.compare_digest(given, credential.secret.encode()):
                found = credential
        return found


def presented_secret(scope: Scope) -> str | None:
    """The key a request presents: ``X-API-Key``, ``Authorization: Bearer``, or ``?api_key=`` on stream paths."""
    for name, value in scope.get("headers", ()):
        if name == b"x-api-key":
            return value.decode("latin-1").strip()
        if name == b"authorization":
            kind, _, token = value.decode("latin-1").partition(" ")
            if kind.lower() == "bearer" and token.strip():
                return token.strip()
    if scope["path"].startswith(_QUERY_KEY_PATHS):
        from urllib.parse import parse_qs

        values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("api_key")
        if values:
            return values[0]
    return None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def client_ip(scope: Scope, trust_proxy: bool) -> str:
    """The client's address (the first ``X-Forwarded-For`` hop when behind a trusted proxy)."""
    if trust_proxy:
        forwarded = _header(scope, b"x-forwarded-for")
        if forwarded:
            return forwarded.split(",")[0].strip()
    client = scope.get("client")
    return client[0] if client else "unknown"


class Provenance:
    """Where a request may come from: the ``Host`` names the server answers to, and the ``Origin`` of writes.

    A web page the developer visits can reach a loopback server two ways without
    any key: by sending requests there (the browser adds the page's ``Origin``),
    and by rebinding its own name to 127.0.0.1 (then the ``Host`` header carries
    that name).  ``hosts`` is ``None`` when any name is answered.
    """

    def __init__(self, hosts: frozenset[str] | None, origins: list[str]) -> None:
        self.hosts = hosts
        self.any_origin = "*" in origins
        self.origins = frozenset(o.rstrip("/").lower() for o in origins)

    def host_refusal(self, scope: Scope) -> str | None:
        """Why the ``Host`` header is not one this server answers to, or ``None``."""
        if self.hosts is None:
            return None
        value = _header(scope, b"host")
        if value is None:  # not a browser: every browser sends Host
            return None
        name = host_name(value)
        if name in self.hosts or _is_ip(name):  # an address literal involves no DNS, so it cannot be rebound
            return None
        return (f"this server does not answer to the host {value[:100]!r}; if that name is meant to reach it, "
                "add it to api.allowed_hosts")

    def origin_refusal(self, scope: Scope) -> str | None:
        """Why the ``Origin`` of a WebSocket handshake or a write is not trusted, or ``None``.

        No ``Origin`` passes (curl, SDKs and exporters send none); the server's own
        origin (same ``Host``) and the CORS list pass.
        """
        if scope["type"] == "http" and scope.get("method") not in _UNSAFE:
            return None
        origin = _header(scope, b"origin")
        if origin is None or self.any_origin:
            return None
        normalized = origin.strip().rstrip("/").lower()
        host = (_header(scope, b"host") or "").strip().lower()
        if (host and normalized.partition("://")[2] == host) or normalized in self.origins:
            return None
        what = "WebSocket connections" if scope["type"] == "websocket" else f"{scope.get('method')} requests"
        return (f"{what} from the origin {origin[:100]!r} are refused: only this server's own pages and "
                "the origins in api.cors.origins may make them")


def body_type_refusal(scope: Scope) -> str | None:
    """Why a ``POST``/``PUT`` body's declared type is not accepted, or ``None`` (bodiless requests pass)."""
    if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT"):
        return None
    length = _header(scope, b"content-length")
    if _header(scope, b"transfer-encoding") is None and (length is None or length.strip() == "0"):
        return None
    declared = _header(scope, b"content-type") or ""
    media = declared.split(";")[0].strip().lower()
    if media in _BODY_TYPES or (media.startswith("application/") and media.endswith("+json")):
        return None
    got = f"Content-Type {declared[:100]!r}" if declared else "no Content-Type"
    return f"send the body as {_BODY_TYPES_TEXT}; got {got}"


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class Guard:
    """ASGI middleware: security headers, then the ``Host`` and ``Origin``, rate limits, keys, the body's type."""

    def __init__(self, app: Callable[..., Awaitable[None]], config: APIConfig, auth: Authenticator,
                 limiter: RateLimiter | None, on_reject: Callable[[str], None] | None = None,
                 public: tuple[str, ...] = (), provenance: Provenance | None = None) -> None:
        self.app = app
        self.public = public
        self.config = config
        self.auth = auth
        self.limiter = limiter
        self.on_reject = on_reject or (lambda reason: None)
        self.metrics_path = config.metrics.endpoint
        self.provenance = provenance or Provenance(None, ["*"])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        secure = scope.get("scheme") in ("https", "wss") or (
            self.config.trust_proxy and _header(scope, b"x-forwarded-proto") == "https")
        send = self._with_headers(send, secure) if scope["type"] == "http" else send
        refusal = self.provenance.host_refusal(scope)
        if refusal is not None:
            self.on_reject("misdirected")
            await _reject(scope, receive, send, 421, "Misdirected Request", refusal)
            return
        refusal = self.provenance.origin_refusal(scope)
        if refusal is not None:
            self.on_reject("cross_origin")
            await _reject(scope, receive, send, 403, "Forbidden", refusal)
            return
        method = scope.get("method", "GET")
        kind = route_class(method, scope["path"], self.metrics_path, self.public)
        if kind == "open" or method == "OPTIONS":
            await self._forward(scope, receive, send)
            return
        if self.limiter is not None and self.config.rate_limit.enabled and scope["path"] != self.metrics_path:
            budget = "ingest" if kind == "ingest" else "api"
            retry = await self.limiter.hit(budget, client_ip(scope, self.config.trust_proxy))
            if retry is not None:
                self.on_reject("rate_limited")
                await _reject(scope, receive, send, 429, "Too Many Requests",
                              f"rate limit of {self.limiter.budgets[budget][0]} requests exceeded; retry later",
                              {"retry-after": str(int(retry + 0.999))})
                return
        if not self.auth.enabled:
            await self._forward(scope, receive, send)
            return
        secret = presented_secret(scope)
        if secret is None:
            self.on_reject("unauthenticated")
            await _reject(scope, receive, send, 401, "Unauthorized",
                          "credentials required: send X-API-Key or Authorization: Bearer",
                          {"www-authenticate": 'Bearer realm="telemetry"'})
            return
        credential = self.auth.match(secret)
        if credential is None:
            self.on_reject("unauthenticated")
            await _reject(scope, receive, send, 401, "Unauthorized", "invalid API key or token",
                          {"www-authenticate": 'Bearer realm="telemetry", error="invalid_token"'})
            return
        if kind not in credential.scopes:
            self.on_reject("forbidden")
            await _reject(scope, receive, send, 403, "Forbidden",
                          f"this key may {' and '.join(sorted(credential.scopes))} but not {kind}")
            return
        scope.setdefault("state", {})["actor"] = credential.name
        with acting_as(credential.name):
            await self._forward(scope, receive, send)

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, unless its body has a type no route reads (checked after who is asking)."""
        refusal = body_type_refusal(scope)
        if refusal is not None:
            self.on_reject("unsupported_media_type")
            await _reject(scope, receive, send, 415, "Unsupported Media Type", refusal)
            return
        await self.app(scope, receive, send)

    def _with_headers(self, send: Send, secure: bool) -> Send:
        extra = [
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"),
            (b"cross-origin-opener-policy", b"same-origin"),
            (b"content-security-policy", CSP.encode()),
        ]
        if secure:
            extra.append((b"strict-transport-security", f"max-age={self.config.hsts_max_age}; includeSubDomains".encode()))

        async def send_with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", ())}
                message["headers"] = [*message.get("headers", ()), *(h for h in extra if h[0] not in present)]
            await send(message)

        return send_with_headers


async def _reject(scope: Scope, receive: Receive, send: Send, status: int, error: str, message: str,
                  headers: dict[str, str] | None = None) -> None:
    if scope["type"] == "websocket":
        # refuse the handshake: an HTTP response where the client supports it, else a policy close
        await receive()
        if "websocket.http.response" in scope.get("extensions", {}):
            await _http_response(send, status, error, message, headers, prefix="websocket.")
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": f"{status} {error}"})
        return
    await _http_response(send, status, error, message, headers)


async def _http_response(send: Send, status: int, error: str, message: str, headers: dict[str, str] | None,
                         prefix: str = "") -> None:
    body = orjson.dumps({"error": error, "message": message})
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    if prefix:
        await send({"type": "websocket.http.response.start", "status": status, "headers": raw})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})
