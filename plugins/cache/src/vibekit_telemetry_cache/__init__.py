"""The ``cache`` plugin: keep answers to repeated reads for a while, drop them the moment a write changes them.

``plugins = ["cache"]`` (options ``ttl``, default ``"30s"``: a span such as
``"5m"`` or a number of milliseconds, and ``max_size``, default 1000 answers), or
as the seed writes it, ``plugins=[CachePlugin(ttl=300000, maxSize=1000)]``
(``max_entries`` is the older name of ``max_size``).  Reads flush pending events first and the kernel hands every
stored batch to ``after_store`` before the read looks here, so an answer is
dropped before it could be stale:

* a ``query`` answer when a new event matches its filter;
* a ``get_session`` answer when an event of that session arrives;
* ``get_sessions`` and ``count_sessions`` answers when any session changes;
* ``get_metrics``, ``get_insights`` and ``metric_series`` answers when an event
  falls in their window (and on ``define_metric``);
* everything on ``clean``.

Analytics windows are cached by whole minutes (their resolution), so a
dashboard polling "the last hour" hits the cache until something changes.
Hit and miss counts are in the ``cache`` component of ``get_health_status()``.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import attrs

from vibekit_telemetry import ConfigError, QueryFilter, TelemetryEvent, hookimpl, span_ms
from vibekit_telemetry.config import plugin_options

__all__ = ["CachePlugin"]

_WINDOWED = ("get_metrics", "get_insights", "metric_series")
_MINUTE = 60_000


@attrs.define
class _Entry:
    hook: str
    arguments: dict[str, Any]
    value: Any
    expires: float


class CachePlugin:
    """An LRU cache of read answers with a time to live."""

    name = "cache"

    @attrs.frozen
    class Config:
        """Options of the ``cache`` plugin.

        ``ttl`` is how long an answer is kept: ``"30s"``-style text or milliseconds (the seed's
        ``ttl: 300000`` is five minutes).  ``max_size`` is how many answers are kept at most.
        """

        ttl: Any = "30s"
        max_size: int | None = None
        max_entries: int | None = None

        def __attrs_post_init__(self) -> None:
            try:
                ttl = span_ms(self.ttl)
            except ValueError as exc:
                raise ConfigError(f"ttl: {exc}") from None
            if ttl <= 0:
                raise ConfigError(f"ttl: expected a positive duration, got {self.ttl!r}")
            if self.max_size is not None and self.max_entries is not None and self.max_size != self.max_entries:
                raise ConfigError("max_size and max_entries are one option (max_entries is its older name): give one")
            if self.size < 1:
                raise ConfigError(f"max_size: expected at least 1, got {self.size}")

        @property
        def size(self) -> int:
            """How many answers are kept at most."""
            return next((n for n in (self.max_size, self.max_entries) if n is not None), 1000)

    def __init__(self, config: CachePlugin.Config | Mapping[str, Any] | None = None, /, **options: Any) -> None:
        """``CachePlugin()``, ``CachePlugin(CachePlugin.Config(...))`` or ``CachePlugin(ttl=300000, maxSize=1000)``.

        Options (keywords, or one dict as the seed passes them) are the ``Config`` fields in snake_case or
        the seed's camelCase, checked like a configuration file (an unknown or mistyped one is a
        :class:`ConfigError`).
        """
        config = plugin_options(CachePlugin.Config, config, options, where="CachePlugin(...)")
        self.config = config or CachePlugin.Config()
        self.ttl = span_ms(self.config.ttl) / 1000
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = self.invalidations = self.evictions = 0

    @staticmethod
    def _key(hook: str, key: tuple[str, str], arguments: dict[str, Any]) -> tuple[str, str]:
        if hook in _WINDOWED:  # analytics answers are per whole minute: widen the window like the plugin does
            start, end = arguments["start"], arguments["end"]
            aligned = {**arguments, "start": start - start % _MINUTE, "end": end + (-end % _MINUTE)}
            return hook, repr(sorted(aligned.items()))
        return key

    @hookimpl
    def cache_lookup(self, hook: str, key: tuple[str, str], arguments: dict[str, Any]) -> Any | None:
        """The cached answer, if fresh."""
        key = self._key(hook, key, arguments)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.expires < time.monotonic():
                if entry is not None:
                    del self._entries[key]
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            value = entry.value
        return list(value) if isinstance(value, list) else value  # callers may change their list

    @hookimpl
    def cache_store(self, hook: str, key: tuple[str, str], arguments: dict[str, Any], value: Any) -> None:
        """Keep an answer until its time to live passes or a write changes it."""
        key = self._key(hook, key, arguments)
        with self._lock:
            self._entries[key] = _Entry(hook, arguments, list(value) if isinstance(value, list) else value,
                                        time.monotonic() + self.ttl)
            self._entries.move_to_end(key)
            while len(self._entries) > self.config.size:
                self._entries.popitem(last=False)
                self.evictions += 1

    @hookimpl
    def after_store(self, events: list[TelemetryEvent]) -> None:
        """Drop the answers this batch changes."""
        if not self._entries:
            return
        sessions = {e.session_id for e in events if e.session_id}
        low = min(e.timestamp for e in events)
        high = max(e.timestamp for e in events)
        with self._lock:
            stale = [key for key, entry in self._entries.items() if _changed(entry, events, sessions, low, high)]
            for key in stale:
                del self._entries[key]
            self.invalidations += len(stale)

    @hookimpl
    def cache_invalidate(self, hooks: list[str] | None) -> None:
        """Drop every answer of these hooks (all when ``None``)."""
        with self._lock:
            stale = [key for key, entry in self._entries.items() if hooks is None or entry.hook in hooks]
            for key in stale:
                del self._entries[key]
            self.invalidations += len(stale)

    @hookimpl
    def health(self) -> dict[str, Any]:
        """Hits, misses, invalidations and size."""
        with self._lock:
            lookups = self.hits + self.misses
            return {"healthy": True, "issues": [], "entries": len(self._entries), "max_size": self.config.size,
                    "ttl_ms": int(self.ttl * 1000), "hits": self.hits,
                    "misses": self.misses, "hit_rate": round(self.hits / lookups, 4) if lookups else None,
                    "invalidations": self.invalidations, "evictions": self.evictions}


def _changed(entry: _Entry, events: list[TelemetryEvent], sessions: set[str], low: int, high: int) -> bool:
    hook, arguments = entry.hook, entry.arguments
    if hook == "query":
        flt: QueryFilter = arguments["filter"]
        return any(flt.matches(event) for event in events)
    if hook == "get_session":
        return arguments["session_id"] in sessions
    if hook in ("get_sessions", "count_sessions"):
        return bool(sessions)
    if hook in _WINDOWED:
        start = arguments["start"] - arguments["start"] % _MINUTE
        end = arguments["end"] + (-arguments["end"] % _MINUTE)
        if hook == "get_insights":
            start -= end - start  # insights compare with the previous window too
        return low < end and high >= start
    return True
