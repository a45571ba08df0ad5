"""Live event streams: iterate (or async-iterate) over events as they are stored."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import QueryFilter, TelemetryEvent

_CLOSED = object()


class EventStream:
    """A subscription to the events a service stores from now on, optionally filtered.

    Iterate it (``for event in stream``) or async-iterate it (``async for``).
    It holds at most ``max_pending`` undelivered events: a consumer that falls
    further behind loses the newest events, counted in ``dropped``, so a slow
    reader can never grow memory without bound.  ``close()`` (or leaving a
    ``with`` block) ends the iteration.
    """

    def __init__(self, filter: QueryFilter, *, max_pending: int = 10_000,
                 on_close: Callable[[EventStream], None] | None = None) -> None:
        self.filter = filter
        self.dropped = 0
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._on_close = on_close
        self._closed = threading.Event()

    def offer(self, events: list[TelemetryEvent]) -> None:
        """Deliver the matching events of a stored batch (called by the service's flusher)."""
        if self._closed.is_set():
            return
        for event in events:
            if self.filter.matches(event):
                try:
                    self._queue.put_nowait(event)
                except queue.Full:
                    self.dropped += 1

    def get(self, timeout: float | None = None) -> TelemetryEvent | None:
        """The next event, waiting up to ``timeout`` seconds; ``None`` on timeout or when closed."""
        if self._closed.is_set() and self._queue.empty():
            return None
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is _CLOSED:
            self._queue.put_nowait(_CLOSED)
            return None
        return item

    def close(self) -> None:
        """Stop the stream; iteration ends after the events already delivered."""
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            self._queue.put_nowait(_CLOSED)
        except queue.Full:
            pass
        if self._on_close is not None:
            self._on_close(self)

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._closed.is_set()

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> TelemetryEvent:
        while True:
            event = self.get(timeout=0.5)
            if event is not None:
                return event
            if self._closed.is_set():
                raise StopIteration

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> TelemetryEvent:
        while True:
            event = await asyncio.to_thread(self.get, 0.25)
            if event is not None:
                return event
            if self._closed.is_set():
                raise StopAsyncIteration

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
