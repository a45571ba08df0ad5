"""A recount of the rollups from storage, an hour at a time, that can stop between two pages and go on later.

Storage is read in time order, a page at a time.  Counting is cut where a page reaches a later hour: the
hours before it are then complete (nothing older comes after), so their minute and hour buckets can
replace the live ones and ``upto`` moves past them.  That is the progress a recount keeps, in memory
while it runs and in the rollup file across a clean shutdown.  Stopping gives up only the hour in hand:
its buckets are dropped and the recount's sessions go back to what they were when the hour began, so
reading it again next time counts every event once.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from .rollup import HOUR, OpenSession, Rollups


class Recount:
    """The state of one recount of the buckets from ``start`` (to ``end``, or ``None``: the newest stored event).

    ``counter`` counts the hour in hand; its open and ended sessions are the recount's, built from the
    stored events in time order (a catch-up's replace the live ones once it is done).
    """

    def __init__(self, counter: Rollups, start: int, end: int | None = None) -> None:
        self.counter = counter
        self.start = start
        self.end = end
        #: every hour before this one is counted and in the live rollups
        self.upto = start
        #: stored events counted into those hours
        self.counted = 0
        self.done = False
        #: where the next page starts (past the last event read), ``None`` for the start of ``upto``'s hour
        self.cursor: str | None = None
        #: the hour being counted, and the ids of its events read so far
        self.hour: int | None = None
        self.read: set[str] = set()
        #: the recount's sessions as they were when the hour in hand began
        self._saved: tuple[dict[str, OpenSession], OrderedDict[str, None]] | None = None

    def count(self, hour: int, events: list[Any], session_lookup: Any) -> None:
        """Count events of ``hour`` (the hour in hand, or the first one after ``upto``) into ``counter``."""
        if self.hour is None:
            self.hour = hour
        self.counter.add(events, session_lookup)
        self.read.update(event.id for event in events)

    def take(self) -> tuple[dict[str, dict[int, Any]], set[str]]:
        """Hand over the counted hours' buckets and the ids read for them; start afresh for the next hours."""
        levels, read = self.counter.levels, self.read
        self.counter.levels = {"m": {}, "h": {}}
        self.counter.dirty = set()
        self.read = set()
        self.hour = None
        return levels, read

    def keep_sessions(self) -> None:
        """Remember the recount's sessions as they are now: a stop before the next cut returns to them."""
        self._saved = (_copy_open(self.counter.open), OrderedDict(self.counter.ended))

    def give_up(self) -> None:
        """Forget the hour in hand (stopped before it was complete): the next run reads it again from ``upto``."""
        self.take()
        self.cursor = None
        if self._saved is not None:
            self.counter.open, self.counter.ended = self._saved
            self._saved = None

    def sessions_now(self) -> tuple[dict[str, OpenSession], OrderedDict[str, None]]:
        """The recount's sessions as of ``upto`` (a run under way may have moved them past it)."""
        if self._saved is not None:
            return self._saved
        return self.counter.open, self.counter.ended

    def progress(self) -> dict[str, Any]:
        """What is counted so far: events, and the time before which every bucket is exact."""
        return {"since": self.start, "counted_up_to": self.upto, "counted": self.counted}

    def to_json(self) -> dict[str, Any]:
        """What the rollup file keeps of a recount a shutdown interrupted."""
        open_sessions, ended = self.sessions_now()
        return {"start": self.start, "upto": self.upto, "counted": self.counted,
                "open": {sid: state.to_json() for sid, state in open_sessions.items()}, "ended": list(ended)}

    @classmethod
    def from_json(cls, data: dict[str, Any], counter: Rollups) -> Recount:
        """Read back :meth:`to_json`: the recount goes on from ``upto`` with the sessions it had there."""
        job = cls(counter, int(data["start"]))
        job.upto = int(data["upto"])
        job.counted = int(data["counted"])
        counter.open = {sid: OpenSession.from_json(state) for sid, state in data["open"].items()}
        counter.ended = OrderedDict.fromkeys(data["ended"])
        return job


def by_hour(events: list[Any]) -> list[tuple[int, list[Any]]]:
    """Events in time order, cut into runs of one hour each."""
    runs: list[tuple[int, list[Any]]] = []
    current: int | None = None
    for event in events:
        ts = event.timestamp
        hour = ts - ts % HOUR
        if hour != current:
            runs.append((hour, []))
            current = hour
        runs[-1][1].append(event)
    return runs


def _copy_open(open_sessions: dict[str, OpenSession]) -> dict[str, OpenSession]:
    return {sid: OpenSession.from_json(state.to_json()) for sid, state in open_sessions.items()}
