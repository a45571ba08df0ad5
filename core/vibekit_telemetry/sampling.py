"""Client-side sampling and rate limiting that keep what matters and count what they drop.

The unit of sampling is the session: whether a session is kept is decided from
a hash of its id (so every process agrees), but a sampled-out session's events
are only held back, not dropped, until its end shows whether it failed, hit an
error or ran longer than ``slow_ms``; such sessions are kept whole.  Otherwise
the held events are dropped and the session's end event carries a
``sampled_out`` tally (events, stream chunks, first chunk time, tokens) that
:func:`~vibekit_telemetry.model.summarize_sessions` adds back, so session
counts, durations, time to first chunk and token totals stay exact.

Start, end and error events (and events outside sessions that carry an error)
and ``metrics`` events are never thinned.  The
rate limit drops thinnable events past ``max_requests`` per ``window_ms``,
with the same tally.  Every event dropped here is counted by reason
(``sampled``, ``rate_limited``); none is silent.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import attrs

from .model import TelemetryEvent, TokenUsage
from .reliability import RateLimitConfig, SamplingConfig

_ALWAYS = frozenset({"start", "end", "error"})
_OK_STATUSES = frozenset({"completed", "complete", "success", "succeeded", "ok", "done"})


def _keep_fraction(key: str) -> float:
    return zlib.crc32(key.encode()) / 2**32


@attrs.define
class _Tally:
    events: int = 0
    streams: int = 0
    errors: int = 0
    first_stream_at: int | None = None
    tokens: TokenUsage = attrs.field(factory=TokenUsage)

    def add(self, event: TelemetryEvent) -> None:
        self.events += 1
        if event.event_type == "stream":
            self.streams += 1
            if self.first_stream_at is None or event.timestamp < self.first_stream_at:
                self.first_stream_at = event.timestamp
        if event.metadata:
            self.tokens = self.tokens + TokenUsage.from_metadata(event.metadata)

    def as_metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {"events": self.events, "streams": self.streams}
        if self.first_stream_at is not None:
            out["first_stream_at"] = self.first_stream_at
        tokens = {k: v for k, v in attrs.asdict(self.tokens).items() if v}
        if tokens:
            out["tokens"] = tokens
        return out


@attrs.define
class _Held:
    started_at: int | None = None
    events: list[TelemetryEvent] = attrs.field(factory=list)
    tally: _Tally = attrs.field(factory=_Tally)
    keep: bool = False  # an error was seen: the rest of the session is kept


class Thinner:
    """Decide, per accepted event, which events go on to storage.

    :meth:`admit` returns the events to queue now (none, the event itself, or a
    held-back session released whole); ``on_thinned(reason, count)`` is called
    for every event dropped.
    """

    def __init__(self, sampling: SamplingConfig | None, rate_limit: RateLimitConfig | None,
                 on_thinned: Callable[[str, int], None]) -> None:
        self.sampling = sampling if sampling is not None and sampling.rate < 1.0 else None
        self.rate_limit = rate_limit if rate_limit is not None and rate_limit.enabled else None
        self._on_thinned = on_thinned
        self._lock = threading.Lock()
        self._held: OrderedDict[str, _Held] = OrderedDict()
        self._tallies: OrderedDict[str, _Tally] = OrderedDict()  # rate-limited session events of kept sessions
        self._window_start = 0.0
        self._window_count = 0

    @property
    def active(self) -> bool:
        """Whether any thinning is configured."""
        return self.sampling is not None or self.rate_limit is not None

    @property
    def held(self) -> int:
        """Events held back until their session ends."""
        with self._lock:
            return sum(len(h.events) for h in self._held.values())

    def _over_rate(self) -> bool:
        limit = self.rate_limit
        if limit is None:
            return False
        now = time.monotonic()
        if now - self._window_start >= limit.window_ms / 1000:
            self._window_start, self._window_count = now, 0
        self._window_count += 1
        return self._window_count > limit.max_requests

    def holds(self, event: TelemetryEvent) -> bool:
        """Whether ``event`` is held back until its session ends (so it may still be stored), not dropped."""
        with self._lock:
            held = self._held.get(event.session_id) if event.session_id else None
            # it was appended last, unless another thread tracked into the same session since
            return held is not None and any(e is event for e in reversed(held.events))

    def admit(self, event: TelemetryEvent) -> list[TelemetryEvent]:
        """The events to queue now because ``event`` was accepted."""
        with self._lock:
            return self._admit(event)

    def _admit(self, event: TelemetryEvent) -> list[TelemetryEvent]:
        kind, sid = event.event_type, event.session_id
        always = kind in _ALWAYS or event.category == "metrics" or event.error_type is not None
        sampling = self.sampling
        if not sid:
            if always:
                return [event]
            if sampling is not None and _keep_fraction(event.id) >= sampling.rate:
                self._on_thinned("sampled", 1)
                return []
            if self._over_rate():
                self._on_thinned("rate_limited", 1)
                return []
            return [event]
        sampled_out = sampling is not None and _keep_fraction(sid) >= sampling.rate
        if sampled_out:
            return self._admit_sampled_out(event, sampling)  # type: ignore[arg-type]
        if kind == "end":
            tally = self._tallies.pop(sid, None)
            return [self._with_tally(event, tally)] if tally else [event]
        if not always and self._over_rate():
            tally = self._tallies.get(sid)
            if tally is None:
                tally = self._tallies[sid] = _Tally()
                if len(self._tallies) > 10_000:
                    self._tallies.popitem(last=False)
            tally.add(event)
            self._on_thinned("rate_limited", 1)
            return []
        return [event]

    def _admit_sampled_out(self, event: TelemetryEvent, sampling: SamplingConfig) -> list[TelemetryEvent]:
        sid, kind = event.session_id, event.event_type
        held = self._held.get(sid)  # type: ignore[arg-type]
        if held is None:
            held = self._held[sid] = _Held()  # type: ignore[index]
            while len(self._held) > sampling.max_held_sessions:
                _, evicted = self._held.popitem(last=False)
                self._on_thinned("sampled", len(evicted.events))  # their end never came: decided as dropped
        else:
            self._held.move_to_end(sid)  # type: ignore[arg-type]
        if kind == "start":
            held.started_at = event.timestamp
            return [event]
        if held.keep:
            if kind == "end":
                self._held.pop(sid, None)  # type: ignore[arg-type]
                return [self._with_tally(event, held.tally) if held.tally.events else event]
            return [event]
        if kind == "error":
            held.keep = True
            released, held.events = held.events, []
            return [*released, event]
        if kind == "end":
            self._held.pop(sid, None)  # type: ignore[arg-type]
            slow = held.started_at is not None and event.timestamp - held.started_at >= sampling.slow_ms
            failed = (event.status or "completed").lower() not in _OK_STATUSES
            if slow or failed:
                return [*held.events, self._with_tally(event, held.tally) if held.tally.events else event]
            for dropped in held.events:
                held.tally.add(dropped)
            if held.events:
                self._on_thinned("sampled", len(held.events))
            return [self._with_tally(event, held.tally) if held.tally.events else event]
        if event.category == "metrics":
            return [event]
        if len(held.events) >= sampling.max_held_events:
            oldest = held.events.pop(0)
            held.tally.add(oldest)
            self._on_thinned("sampled", 1)
        held.events.append(event)
        return []

    @staticmethod
    def _with_tally(event: TelemetryEvent, tally: _Tally | None) -> TelemetryEvent:
        if tally is None or not tally.events:
            return event
        return attrs.evolve(event, metadata={**event.metadata, "sampled_out": tally.as_metadata()})

    def release_all(self) -> list[TelemetryEvent]:
        """At shutdown: the held events of sessions that never ended are kept (their outcome is unknown)."""
        with self._lock:
            events = [e for held in self._held.values() for e in held.events]
            self._held.clear()
            return events
