"""In-memory storage for vibekit-telemetry.

Keeps events and sessions in process memory, with the same query semantics as
the SQLite store.  Nothing survives the process: use it in tests and for
short-lived jobs.  ``max_events`` bounds memory; the oldest events are evicted
first and counted in health.
"""

from __future__ import annotations

import bisect
import threading
from typing import Any

import attrs

from vibekit_telemetry import (
    QueryFilter,
    Session,
    SessionFilter,
    TelemetryEvent,
    decode_cursor,
    hookimpl,
    summarize_sessions,
)

__version__ = "0.1.0"


class MemoryStorage:
    """The ``memory`` storage plugin."""

    name = "memory"

    @attrs.frozen
    class Config:
        """Options of ``storage = [{type = "memory", options = {...}}]``."""

        max_events: int | None = None

    def __init__(self, config: MemoryStorage.Config | None = None) -> None:
        self.config = config or MemoryStorage.Config()
        self._lock = threading.RLock()
        self._events: list[TelemetryEvent] = []
        self._keys: list[tuple[int, str]] = []
        self._ids: set[str] = set()
        self._sessions: dict[str, Session] = {}
        self.evicted = 0

    @hookimpl
    def delete(self, event_ids: list[str]) -> int:
        """Forget events by id and refold or drop their sessions."""
        with self._lock:
            gone = set(event_ids) & self._ids
            if not gone:
                return 0
            sids = {e.session_id for e in self._events if e.id in gone and e.session_id}
            keep = [(k, e) for k, e in zip(self._keys, self._events, strict=True) if e.id not in gone]
            self._keys = [k for k, _ in keep]
            self._events = [e for _, e in keep]
            self._ids -= gone
            for sid in sids:
                remaining = [e for e in self._events if e.session_id == sid]
                if remaining:
                    self._sessions.update(summarize_sessions(remaining, {}))
                else:
                    self._sessions.pop(sid, None)
            return len(gone)

    @hookimpl
    def rewrite(self, events: list[TelemetryEvent]) -> int:
        """Replace held events by id and recompute their sessions."""
        with self._lock:
            new = {e.id: e for e in events if e.id in self._ids}
            if not new:
                return 0
            self._events = [new.get(e.id, e) for e in self._events]
            sids = {e.session_id for e in new.values() if e.session_id}
            for sid in sids:
                folded = summarize_sessions([e for e in self._events if e.session_id == sid], {})
                self._sessions.update(folded)
            return len(new)

    @hookimpl
    def store(self, events: list[TelemetryEvent]) -> None:
        """Keep new events in time order; ids already held are ignored."""
        with self._lock:
            fresh = []
            for event in events:
                if event.id in self._ids:
                    continue
                self._ids.add(event.id)
                fresh.append(event)
            for event in fresh:
                key = (event.timestamp, event.id)
                if not self._keys or key >= self._keys[-1]:
                    self._keys.append(key)
                    self._events.append(event)
                else:
                    index = bisect.bisect_right(self._keys, key)
                    self._keys.insert(index, key)
                    self._events.insert(index, event)
            self._sessions.update(summarize_sessions(fresh, self._sessions))
            limit = self.config.max_events
            if limit is not None and len(self._events) > limit:
                excess = len(self._events) - limit
                for event in self._events[:excess]:
                    self._ids.discard(event.id)
                del self._events[:excess]
                del self._keys[:excess]
                self.evicted += excess

    @hookimpl
    def query(self, filter: QueryFilter) -> list[TelemetryEvent]:
        """Matching events, honouring order, offset, limit and cursor."""
        with self._lock:
            candidates = self._events if filter.order == "asc" else reversed(self._events)
            after = decode_cursor(filter.cursor) if filter.cursor else None
            out: list[TelemetryEvent] = []
            skipped = 0
            for event in candidates:
                if after is not None:
                    key = (event.timestamp, event.id)
                    if (filter.order == "asc" and key <= after) or (filter.order == "desc" and key >= after):
                        continue
                if not filter.matches(event):
                    continue
                if skipped < filter.offset:
                    skipped += 1
                    continue
                if filter.limit is not None and len(out) >= filter.limit:
                    break
                out.append(event)
            return out

    @hookimpl
    def get_session(self, session_id: str) -> Session | None:
        """The session with this id."""
        with self._lock:
            return self._sessions.get(session_id)

    @hookimpl
    def get_sessions(self, filter: SessionFilter) -> list[Session]:
        """Matching sessions in the filter's order."""
        with self._lock:
            found = [s for s in self._sessions.values() if filter.matches(s)]
        found.sort(key=filter.sort_key, reverse=filter.order == "desc")
        found = found[filter.offset :]
        return found if filter.limit is None else found[: filter.limit]

    @hookimpl
    def count_sessions(self, filter: SessionFilter) -> int:
        """How many sessions match (limit and offset aside)."""
        with self._lock:
            return sum(1 for s in self._sessions.values() if filter.matches(s))

    @hookimpl
    def clean(self, before: int) -> int:
        """Forget events older than ``before`` and sessions whose last event is older."""
        with self._lock:
            cut = bisect.bisect_left(self._keys, (before, ""))
            for event in self._events[:cut]:
                self._ids.discard(event.id)
            del self._events[:cut]
            del self._keys[:cut]
            self._sessions = {k: s for k, s in self._sessions.items()
                              if (s.started_at or 0) >= before or (s.last_event_at or 0) >= before}
            return cut

    @hookimpl
    def health(self) -> dict[str, Any]:
        """Event and session counts."""
        with self._lock:
            return {"healthy": True, "issues": [], "events": len(self._events), "sessions": len(self._sessions),
                    "evicted": self.evicted}
