"""The ingest pipeline: a bounded in-memory queue drained by one background flusher thread.

``put`` never does I/O; it appends to the queue and wakes the flusher when a
batch is ready.  When the queue is full the configured policy decides:
``block`` waits up to a bound for room and then drops, ``drop_newest`` refuses
the new event, ``drop_oldest`` makes room by discarding the oldest one.  Every
event that is not written is reported through ``on_drop`` with a reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("vibekit_telemetry.pipeline")

POLICIES = ("block", "drop_newest", "drop_oldest")


class Pipeline:
    """Queue events and write them in batches from a background thread.

    A flush starts when ``batch_size`` events wait or ``flush_interval`` seconds
    pass.  ``write`` receives lists of events in the order they were put, never
    concurrently with itself: ``batch_size`` at a time normally, and up to
    ``max_batch`` at a time when a backlog has built up, so a busy writer
    spends less per event on transactions.
    """

    def __init__(
        self,
        write: Callable[[list[Any]], None],
        *,
        batch_size: int,
        max_batch: int | None = None,
        flush_interval: float,
        max_queue: int,
        on_full: str = "block",
        enqueue_timeout: float = 0.1,
        on_drop: Callable[[str, int], None],
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        if on_full not in POLICIES:
            raise ValueError(f"on_full must be one of {', '.join(POLICIES)}, got {on_full!r}")
        self._write = write
        self._batch_size = batch_size
        self._max_batch = max(batch_size, max_batch or batch_size)
        self._interval = flush_interval
        self._max_queue = max_queue
        self._on_full = on_full
        self._enqueue_timeout = enqueue_timeout
        self._on_drop = on_drop
        self._on_idle = on_idle
        self._queue: deque[Any] = deque()
        self._room = threading.Condition()
        self._waiting = 0
        self._wake = threading.Event()
        self._write_lock = threading.Lock()
        self._writing: int | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="vibekit-telemetry-flusher", daemon=True)
        self._thread.start()

    @property
    def batch_size(self) -> int:
        """The largest batch handed to ``write``."""
        return self._batch_size

    @property
    def flush_interval(self) -> float:
        """Seconds between flushes when batches fill slowly."""
        return self._interval

    @property
    def depth(self) -> int:
        """Events waiting to be written."""
        return len(self._queue)

    def put(self, item: Any) -> bool:
        """Queue one event; ``False`` (and a reported drop) when the full-queue policy refused it."""
        queue = self._queue
        if len(queue) >= self._max_queue and not self._make_room():
            self._on_drop("queue_full", 1)
            return False
        queue.append(item)
        if len(queue) >= self._batch_size and not self._wake.is_set():
            self._wake.set()
        return True

    def _make_room(self) -> bool:
        if self._on_full == "drop_newest":
            return False
        if self._on_full == "drop_oldest":
            try:
                self._queue.popleft()
            except IndexError:
                return True
            self._on_drop("queue_full_oldest", 1)
            return True
        deadline = time.monotonic() + self._enqueue_timeout
        self._wake.set()
        with self._room:
            self._waiting += 1
            try:
                while len(self._queue) >= self._max_queue:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not self._room.wait(remaining):
                        return len(self._queue) < self._max_queue
            finally:
                self._waiting -= 1
        return True

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stopping:
                break
            if not self.drain() and self._on_idle is not None and not self._queue:
                try:
                    self._on_idle()
                except Exception:
                    log.exception("idle maintenance failed")

    def drain(self) -> int:
        """Write everything queued so far, in batches; return how many events were handed to ``write``.

        When this returns, every event put before the call has been written (or
        reported dropped by ``write``).
        """
        if self._writing == threading.get_ident():
            return 0  # called from inside ``write`` (a hook that reads): the batch in hand is being written
        with self._write_lock:
            self._writing = threading.get_ident()
            try:
                return self._drain_locked()
            finally:
                self._writing = None

    def _drain_locked(self) -> int:
        written = 0
        queue = self._queue
        popleft = queue.popleft
        while queue:
            batch = []
            try:
                for _ in range(min(self._max_batch, len(queue))):
                    batch.append(popleft())
            except IndexError:
                pass
            if self._waiting:
                with self._room:
                    self._room.notify_all()
            if not batch:
                break
            try:
                self._write(batch)
            except Exception:  # the writer reports its own failures; never let the flusher die
                log.exception("writing a batch of %d events failed", len(batch))
            written += len(batch)
        return written

    def close(self, timeout: float = 10.0) -> None:
        """Stop the flusher and write what is left."""
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        self.drain()
