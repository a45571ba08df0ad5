"""The ingest pipeline: a bounded in-memory queue drained by one background flusher thread.

``put`` does no I/O while the queue has room; it appends to the queue and
wakes the flusher when a batch is ready.  When the queue is full (or the
process is over its memory limit) the configured policy decides: ``spill``
appends the event to a journal on disk, which the flusher reads back in order
once the queue is empty (events put while spilled ones wait also spill, so the
order is kept); ``block`` waits up to a bound for room and then drops;
``drop_newest`` refuses the new event; ``drop_oldest`` makes room by
discarding the oldest one.  Every event that is not written is reported
through ``on_drop`` with a reason.

With a ``stage`` (the service's write-ahead step under ``persist_buffer``), a
second thread, the journal thread, takes what is queued every half flush
interval and hands it to ``stage``, which makes it durable on disk; the flusher
then writes the staged batches.  The two are independent: while the store is
stalled and the flusher waits on it, accepted events still reach the disk.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from .journal import Journal, JournalFull, encode_event
from .model import event_from_row

log = logging.getLogger("vibekit_telemetry.pipeline")

POLICIES = ("spill", "block", "drop_newest", "drop_oldest")
_SPILL_CHUNK = 512


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
        before_drain: Callable[[], None] | None = None,
        spill_dir: Path | None = None,
        spill_limits: tuple[int, int] = (1_000_000, 2**30),
        adopt: bool = True,
        stage: Callable[[list[Any]], Any] | None = None,
        spill_fsync: bool = False,
        durable: Callable[[], int] | None = None,
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
        self._before_drain = before_drain
        self._spill_dir = spill_dir
        self._spill_limits = spill_limits
        self._spill_lock = threading.Lock()
        #: spilled events encoded for the journal, waiting to be written as one record
        self._spill_buffer: list[bytes] = []
        self._spill_buffer_bytes = 0
        self._spill: Journal | None = None
        self._orphan_spills: list[Journal] = []
        #: set while spilled events wait: new events spill too, so they stay behind them
        self._spilling = False
        #: set by the owner when memory is over its limit: events spill instead of growing the queue
        self.pressure = False
        if on_full == "spill" and spill_dir is None:
            raise ValueError("on_full='spill' needs a spill directory")
        if spill_dir is not None and adopt:
            try:
                self._orphan_spills = Journal.adopt_orphans(spill_dir, max_events=spill_limits[0],
                                                            max_bytes=spill_limits[1], fsync=False)
            except OSError as exc:
                log.error("cannot read old spill journals in %s: %s", spill_dir, exc)
        self._queue: deque[Any] = deque()
        self._room = threading.Condition()
        self._waiting = 0
        self._wake = threading.Event()
        #: put()'s hint that it set ``_wake`` already this round (``Event.is_set`` is a Python call per event)
        self._woken = False
        self._write_lock = threading.Lock()
        self._writing: int | None = None
        self._stopping = False
        self._stage = stage
        #: staged batches (what ``stage`` returned, and how many events) waiting for the flusher, oldest first
        self._staged: deque[tuple[Any, int]] = deque()
        self._staged_events = 0
        #: events that count against ``max_queue`` besides the queue: the staged ones, and what the durable
        #: journals hold besides them (batches the store refused, waiting there), so that ``put`` refuses an event
        #: while the caller can be told, rather than the journal dropping it later
        self._reserved = 0
        self._staging = 0
        self._durable = durable
        self._stage_lock = threading.Lock()
        self._staging_owner: int | None = None
        self._staged_lock = threading.Lock()
        self._spill_fsync = spill_fsync
        self._stage_wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vibekit-telemetry-flusher", daemon=True)
        self._thread.start()
        self._stage_thread: threading.Thread | None = None
        if stage is not None:
            self._stage_thread = threading.Thread(target=self._run_stage, name="vibekit-telemetry-journal",
                                                  daemon=True)
            self._stage_thread.start()

    @property
    def batch_size(self) -> int:
        """The largest batch handed to ``write``."""
        return self._batch_size

    @property
    def flush_interval(self) -> float:
        """Seconds between flushes when batches fill slowly."""
        return self._interval

    @flush_interval.setter
    def flush_interval(self, seconds: float) -> None:
        self._interval = seconds
        self._wake.set()

    @property
    def depth(self) -> int:
        """Events waiting in memory to be written (not yet staged)."""
        return len(self._queue)

    @property
    def staged(self) -> int:
        """Events the journal thread made durable that the flusher has not written yet."""
        return self._staged_events

    @property
    def spilled(self) -> int:
        """Events waiting on disk (spilled by a full queue) to be written."""
        with self._spill_lock:
            journals = [*self._orphan_spills, *([self._spill] if self._spill else [])]
            return len(self._spill_buffer) + sum(j.pending_events for j in journals)

    @property
    def saturated(self) -> bool:
        """Whether ``put`` would refuse an event now (the queue is full and so is the spill journal, if any)."""
        full = len(self._queue) + self._reserved >= self._max_queue
        if not (full or self._spilling or self.pressure):
            return False
        if self._on_full == "spill":
            with self._spill_lock:
                return not self._spill_has_room()
        return self._on_full in ("drop_newest", "block") and full

    def wake(self) -> None:
        """Have the flusher drain now (a store that just became available replays its journal)."""
        self._wake.set()

    def put(self, item: Any) -> bool:
        """Queue one event; ``False`` (and a reported drop) when the full-queue policy refused it."""
        queue = self._queue
        if len(queue) + self._reserved >= self._max_queue or self._spilling or self.pressure:
            if self._on_full == "spill":
                return self._put_spill(item)
            if len(queue) + self._reserved >= self._max_queue and not self._make_room():
                self._on_drop("queue_full", 1)
                return False
        queue.append(item)
        if len(queue) >= self._batch_size and not self._woken:
            self._woken = True
            self._wake.set()
        return True

    def _put_spill(self, item: Any) -> bool:
        with self._spill_lock:
            if (not self._spilling and len(self._queue) + self._reserved < self._max_queue
                    and not self.pressure):
                self._queue.append(item)  # the flusher caught up meanwhile
                return True
            self._spilling = True
            # encoded now, so that its exact size decides whether the journal has room for it
            try:
                part = encode_event(event_from_row(item) if type(item) is tuple else item)
            except (TypeError, orjson.JSONEncodeError) as exc:  # never for what passed the gate
                log.error("an event cannot be spilled to disk (%s); refused", exc)
                self._on_drop("spill_error", 1)
                return False
            if not self._spill_has_room(len(part) + 1):
                # refuse now, while the caller can still be told: an event accepted here must not be lost later
                self._on_drop("spill_full", 1)
                return False
            self._spill_buffer.append(part)
            self._spill_buffer_bytes += len(part) + 1
            if len(self._spill_buffer) >= _SPILL_CHUNK:
                self._write_spill_locked()
        self._wake.set()
        return True

    def _spill_has_room(self, size: int = 1024) -> bool:
        """Whether the spill journal can take the buffered chunk plus one more event of ``size`` encoded bytes
        (caller holds the lock).  Exact: the buffered events are encoded already, and what the journal holds
        it counts itself."""
        max_events, max_bytes = self._spill_limits
        pending_events = self._spill.pending_events if self._spill is not None else 0
        pending_bytes = self._spill.pending_bytes if self._spill is not None else 0
        if pending_events + len(self._spill_buffer) + 1 > max_events:
            return False
        return pending_bytes + Journal.record_bytes(self._spill_buffer_bytes + size) <= max_bytes

    def _write_spill_locked(self) -> None:
        """Move the spill buffer to the spill journal (caller holds the spill lock)."""
        chunk, self._spill_buffer = self._spill_buffer, []
        self._spill_buffer_bytes = 0
        if not chunk:
            return
        try:
            if self._spill is None:
                assert self._spill_dir is not None
                self._spill = Journal.create(self._spill_dir, max_events=self._spill_limits[0],
                                             max_bytes=self._spill_limits[1], fsync=self._spill_fsync)
            self._spill.append_encoded(chunk)
        except JournalFull as exc:
            log.error("%s; %d events lost", exc, len(chunk))
            self._on_drop("spill_full", len(chunk))
        except OSError as exc:
            log.error("cannot spill %d events to %s (%s); they are lost", len(chunk), self._spill_dir, exc)
            self._on_drop("spill_error", len(chunk))

    def _make_room(self) -> bool:
        if self._on_full == "drop_newest":
            return False
        if self._on_full == "drop_oldest":
            try:
                self._queue.popleft()
            except IndexError:
                return False  # what fills the bound is durable already (persist_buffer): nothing to drop
            self._on_drop("queue_full_oldest", 1)
            return True
        deadline = time.monotonic() + self._enqueue_timeout
        self._wake.set()
        with self._room:
            self._waiting += 1
            try:
                while len(self._queue) + self._reserved >= self._max_queue:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not self._room.wait(remaining):
                        return len(self._queue) + self._reserved < self._max_queue
            finally:
                self._waiting -= 1
        return True

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self._interval)
            # cleared before the hint: a put() that still sees the old hint queued its event before this
            # round's drain, and every later one sees the hint down and wakes the flusher itself
            self._wake.clear()
            self._woken = False
            if self._stopping:
                break
            try:
                drained = self.drain()
            except Exception:  # the flusher must outlive any fault; the next round tries again
                log.exception("draining the queue failed")
                continue
            if not drained and self._on_idle is not None and not self._queue:
                try:
                    self._on_idle()
                except Exception:
                    log.exception("idle maintenance failed")

    def _run_stage(self) -> None:
        # Twice per flush interval, so that an event waits less than one interval to be durable even
        # counting the time staging itself takes.
        while not self._stopping:
            self._stage_wake.wait(self._interval / 2)
            self._stage_wake.clear()
            if self._stopping:
                break
            try:
                self._stage_queued(len(self._queue))
                if self._spill_buffer:
                    with self._spill_lock:
                        self._write_spill_locked()
            except Exception:
                log.exception("journaling queued events failed")
            self._refresh_reserved()
            if self._staged:
                self._wake.set()

    def _stage_queued(self, limit: int) -> None:
        """Hand up to ``limit`` queued events to ``stage`` in batches, oldest first, and keep what it returns."""
        assert self._stage is not None
        with self._stage_lock:
            self._staging_owner = threading.get_ident()
            try:
                self._stage_locked(limit)
            finally:
                self._staging_owner = None

    def _stage_locked(self, limit: int) -> None:
        queue = self._queue
        popleft = queue.popleft
        while queue and limit > 0:
            # The room these events hold is reserved before they leave the queue: in between, put() must
            # not see it free (the journal could then fill past its bound with events already accepted).
            count = min(self._max_batch, len(queue), limit)
            with self._staged_lock:
                self._staging = count
                self._reserved += count
            batch = []
            try:
                for _ in range(count):
                    batch.append(popleft())
            except IndexError:
                pass
            limit -= count
            try:
                item = self._stage(batch) if batch else None
            except Exception:  # the stage reports its own losses; never let the journal thread die
                log.exception("staging a batch of %d events failed", len(batch))
                self._on_drop("stage_error", len(batch))
                item = None
            with self._staged_lock:
                self._staging = 0
                if item is not None:
                    self._staged.append((item, len(batch)))
                    self._staged_events += len(batch)
                    self._reserved += len(batch) - count
                else:
                    self._reserved -= count
            if not batch:
                break

    def _refresh_reserved(self) -> None:
        """Recount what besides the queue holds room: the staged batches and the rest of the durable journals."""
        if self._durable is None:
            with self._staged_lock:
                self._reserved = self._staged_events + self._staging
            return
        with self._staged_lock:
            try:
                held = self._durable()
            except Exception:  # never let accounting stop the journal thread; keep the last figure
                log.exception("reading the journals' backlog failed")
                return
            self._reserved = max(self._staged_events, held) + self._staging

    def _write_staged(self) -> int:
        """Write the batches staged so far, oldest first (only those: a producer that never pauses must not
        keep a drain going)."""
        written = 0
        for _ in range(len(self._staged)):
            try:
                item, count = self._staged[0]
            except IndexError:
                break
            self._write_safely(item)
            with self._staged_lock:
                self._staged.popleft()
                self._staged_events -= count
            self._refresh_reserved()
            written += count
            if self._waiting:
                with self._room:
                    self._room.notify_all()
        return written

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the flusher off writing for the block (maintenance that calls the writers itself)."""
        me = threading.get_ident()
        with self._write_lock:
            self._writing = me
            try:
                yield
            finally:
                self._writing = None

    def drain(self) -> int:
        """Write everything queued so far, in batches; return how many events were handed to ``write``.

        When this returns, every event put before the call has been written (or
        reported dropped by ``write``).
        """
        me = threading.get_ident()
        if self._writing == me or self._staging_owner == me:
            # called from inside ``write`` or ``stage`` (a hook or handler that reads): the batch in hand is
            # being written or journaled, and waiting for it here would wait for ourselves
            return 0
        with self._write_lock:
            self._writing = me
            try:
                return self._drain_locked()
            finally:
                self._writing = None

    def _drain_locked(self) -> int:
        if self._before_drain is not None:
            try:
                self._before_drain()
            except Exception:
                log.exception("replaying journaled batches failed")
        written = self._drain_orphans() if self._orphan_spills else 0
        written += self._drain_queue()
        if self._spilling:
            # what is still queued was queued before the first spilled event, and nothing joins the queue while
            # events spill: write it all before the spill journal, or spilled events would overtake it
            written += self._drain_queue(bounded=False)
            written += self._drain_spill()
        return written

    def _drain_orphans(self) -> int:
        """Write what earlier processes spilled and never wrote (older than anything queued here)."""
        written = 0
        while self._orphan_spills:
            journal = self._orphan_spills[0]
            written += self._drain_journal(journal)
            with self._spill_lock:
                self._orphan_spills.pop(0).close(remove_if_empty=True)
        return written

    def _drain_journal(self, journal: Journal, limit: int | None = None) -> int:
        written = 0
        while (limit is None or written < limit) and (item := journal.peek()) is not None:
            events, token = item
            for start in range(0, len(events), self._max_batch):
                self._write_safely(events[start:start + self._max_batch])
            journal.ack(token)
            written += len(events)
        return written

    def _drain_spill(self) -> int:
        """Write spilled events, oldest first: at least those spilled when the drain began.

        Events that keep spilling meanwhile stay for the next drain (the flag keeps new events behind them).
        """
        written = 0
        budget: int | None = None
        while True:
            with self._spill_lock:
                self._write_spill_locked()
                journal = self._spill
                if journal is None or not journal.pending_events:
                    self._spilling = False  # under the lock: no event can slip in ahead of the queue
                    return written
                if budget is None:
                    budget = journal.pending_events
            if written >= budget:
                return written
            written += self._drain_journal(journal, limit=budget - written)

    def _write_safely(self, batch: Any) -> None:
        try:
            self._write(batch)
        except Exception:  # the writer reports its own failures; never let the flusher die
            log.exception("writing a batch failed")

    def _drain_queue(self, bounded: bool = True) -> int:
        if self._stage is not None:
            self._stage_queued(len(self._queue) if bounded else self._max_queue + 1)
            return self._write_staged()
        # Only what was queued when the drain began: a producer that never pauses must not keep a flush
        # (and the reader waiting on it) going forever.
        written = 0
        queue = self._queue
        popleft = queue.popleft
        remaining = len(queue) if bounded else self._max_queue + 1
        while queue and remaining > 0:
            batch = []
            try:
                for _ in range(min(self._max_batch, len(queue), remaining)):
                    batch.append(popleft())
            except IndexError:
                pass
            if self._waiting:
                with self._room:
                    self._room.notify_all()
            if not batch:
                break
            self._write_safely(batch)
            written += len(batch)
            remaining -= len(batch)
        return written

    def close(self, timeout: float = 10.0) -> None:
        """Stop the flusher and write what is left."""
        self._stopping = True
        self._wake.set()
        self._stage_wake.set()
        for thread in (self._thread, self._stage_thread):
            if thread is not None and thread.is_alive() and threading.current_thread() is not thread:
                thread.join(timeout)
        self.drain()
        with self._spill_lock:
            self._write_spill_locked()
            for journal in [*self._orphan_spills, *([self._spill] if self._spill else [])]:
                journal.close(remove_if_empty=True)

    def after_fork(self) -> Pipeline:
        """A fresh pipeline for a forked child: same settings, empty queue, new flusher thread.

        The events queued in the parent stay the parent's, so they are not written twice.
        """
        for journal in [*self._orphan_spills, *([self._spill] if self._spill else [])]:
            journal.abandon()
        return Pipeline(
            self._write, batch_size=self._batch_size, max_batch=self._max_batch, flush_interval=self._interval,
            max_queue=self._max_queue, on_full=self._on_full, enqueue_timeout=self._enqueue_timeout,
            on_drop=self._on_drop, on_idle=self._on_idle, before_drain=self._before_drain,
            spill_dir=self._spill_dir, spill_limits=self._spill_limits, adopt=False, stage=self._stage,
            spill_fsync=self._spill_fsync, durable=self._durable,
        )
