"""The ``analytics`` plugin: live metrics from rollups, insights, custom metrics and anomaly detection.

Enable it with ``[analytics] enabled = true`` (or ``plugins = ["analytics"]``).
Every stored batch updates per-minute and per-hour aggregates by agent
(category) and by model (``after_store``); ``telemetry.get_metrics()`` merges at
most a few hundred of them, so it answers in milliseconds however many events
are stored.  Each bucket keeps at most ``max_categories`` categories and
``max_models`` models of its own, whatever names clients send; the rest are
counted under ``other``.  Rollups live in ``<data_dir>/analytics.db`` and
survive restarts; ``telemetry.clean()`` drops what it deletes from them too.

A new rollup file over a store that already holds events (or one a crash or a
price change left wrong) is recounted from storage by a background thread, an
hour at a time, so the service starts at once whatever the store's size; until
it is done ``get_metrics()``, ``get_insights()`` and the health report say
``catching_up``.
"""

from __future__ import annotations

import heapq
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import attrs
import orjson

from vibekit_telemetry import (
    Anomaly,
    ConfigError,
    ServiceClosedError,
    StorageUnavailableError,
    TelemetryError,
    hookimpl,
    now_ms,
    span_ms,
)

from . import results
from .detectors import THRESHOLDS, LikelihoodDetector
from .persist import RollupFile
from .prices import PRICE_TABLE_VERSION, PriceTable
from .recount import Recount, by_hour
from .rollup import ALL, FOLDED, HOUR, MINUTE, OTHER, Agg, Rollups

if TYPE_CHECKING:
    import click

    from vibekit_telemetry import TelemetryService

__all__ = ["AnalyticsPlugin", "LikelihoodDetector", "PriceTable"]

log = logging.getLogger("vibekit_telemetry.analytics")

_HEADLINES = ("events", "error_rate", "p95_latency", "avg_ttft", "cost")

#: how long start-up waits for the recount of an existing store: a small one is counted before the
#: constructor returns (so its first answers are whole), a big one goes on in the background
STARTUP_WAIT_S = 0.25
#: how long shutdown waits for the background recount to stop (it checks between two pages)
STOP_WAIT_S = 10.0
#: seconds `telemetry analytics rebuild` waits for shared rollups to be counted again before it gives up waiting
REBUILD_WAIT_S = 600.0
#: events a recount reads per page
_PAGE = 2000
#: what a recount changes, for the read caches
_READS = ["get_metrics", "get_insights", "metric_series"]


@attrs.frozen
class AnomalyConfig:
    """``analytics.anomaly``: detectors running continuously on the live metrics."""

    enabled: bool = False
    sensitivity: Literal["low", "medium", "high"] = "medium"
    metrics: tuple[str, ...] = ("response_time", "error_rate", "throughput")
    interval: int = 60_000


@attrs.frozen
class MetricsConfig:
    """``analytics.metrics`` (the seed's shape): ``persistence`` keeps rollups in a file."""

    enabled: bool = True
    interval: int = 60_000
    persistence: bool = True


#: connections a forked child inherited from its parent (the counter's lock): kept referenced, never closed here
_inherited: list[Any] = []


class AnalyticsPlugin:
    """Rollups, metrics, insights, custom metrics and the default anomaly detector."""

    name = "analytics"

    @attrs.frozen
    class Config:
        """Options of the ``[analytics]`` section."""

        path: str | None = None
        minute_retention: str = "2d"
        hour_retention: str = "90d"
        active_timeout: str = "30m"
        stale_after: str = "30m"
        prices: dict[str, dict[str, float]] = attrs.field(factory=dict)
        bill_failed: bool = False
        max_open_sessions: int = 100_000
        #: distinct categories and models a bucket (and a get_metrics answer) keeps apart; the rest are "other"
        max_categories: int = 500
        max_models: int = 500
        metrics: MetricsConfig = MetricsConfig()
        anomaly: AnomalyConfig = AnomalyConfig()
        alerts: dict[str, Any] = attrs.field(factory=dict)

    def __init__(self, config: AnalyticsPlugin.Config | None = None) -> None:
        self.config = config or AnalyticsPlugin.Config()
        for key in ("max_categories", "max_models", "max_open_sessions"):
            if getattr(self.config, key) < 1:
                raise ConfigError(f"{key}: expected at least 1, got {getattr(self.config, key)!r}")
        self.prices = PriceTable(self.config.prices, bill_failed=self.config.bill_failed)
        self.rollups = self._new_rollups()
        self.definitions: dict[str, dict[str, Any]] = {}
        self.service: TelemetryService | None = None
        self.file: RollupFile | None = None
        self._lock = threading.RLock()
        self._minute_keep = span_ms(self.config.minute_retention)
        self._hour_keep = span_ms(self.config.hour_retention)
        self._last_trim = float("-inf")  # monotonic times (the clock may start near 0 at boot): due at once
        self._last_watch = float("-inf")
        self._watchers: dict[str, LikelihoodDetector] = {}
        self._watched_until: int | None = None
        #: batches stored while a recount reads storage, counted at its next cut (see _run)
        self._held_aside: list[Any] | None = None
        #: the recount reading storage now, if any
        self._reading: Recount | None = None
        #: the recount that brings the rollups up to what storage holds (``None``: they count all of it)
        self._catch_up: Recount | None = None
        self._caught_up = threading.Event()
        self._caught_up.set()
        self._runner: threading.Thread | None = None
        self._runner_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._closing = False
        self._recount_error: str | None = None
        self._store = ""
        self._pid = os.getpid()
        self._persist_messages = True
        self.alerts: Any = None
        #: with a PostgreSQL store: the cluster's rollups (see shared.py); ``None`` with a local file
        self.shared: Any = None
        #: set once startup has chosen the rollups' backend and loaded them
        self._ready = False

    def _new_rollups(self) -> Rollups:
        return Rollups(self.config.max_open_sessions, prices=self.prices, max_categories=self.config.max_categories,
                       max_models=self.config.max_models)

    # -- lifecycle -----------------------------------------------------------------------------

    @hookimpl
    def startup(self, service: TelemetryService) -> None:
        """Open the rollup file and load what it keeps."""
        self.service = service
        # With storage encrypted (a before_store plugin), error messages are not written to the rollup file,
        # which is not encrypted: they stay in memory for the life of the process.
        self._persist_messages = not service.host.impls("before_store")
        store = service.storage_plugin()
        if getattr(store, "name", None) == "postgres" and hasattr(store, "connection") and self.config.path is None:
            # every process of the store shares one set of rollups, counted by one of them (shared.py)
            from .shared import SharedRollups

            self.shared = SharedRollups(store, self)
            self.shared.load()
            if self.shared.try_lead():
                self.shared.catch_up(STARTUP_WAIT_S)
        elif self.config.metrics.persistence and self.config.path != ":memory:":
            path = Path(self.config.path) if self.config.path else service.data_dir / "analytics.db"
            self.file = RollupFile(path)
            now = now_ms()
            self.definitions = self.file.load(self.rollups, minutes_from=now - self._minute_keep,
                                              hours_from=now - self._hour_keep)
            built = self.file.get_meta("built_at") is not None
            crashed = self.file.get_meta("closed_cleanly") != "1"
            # the rollups hold dollars: priced under another table (or by a version that kept none), they are wrong
            repriced = self.file.get_meta("prices") != self.prices.fingerprint
            # the rollups count one store: a service of the same project on another database file (a dev
            # config beside the default one) must not read or add to the other's numbers
            store = self._store = _store_identity(service)
            moved = built and self.file.get_meta("store") not in (None, store)
            if moved:
                log.info("the rollups in %s counted another store: recounting them from this one", path)
            self.file.set_meta("store", store)
            # a recount a clean shutdown interrupted goes on where it stopped (a crash voids it: the rollup
            # file may lack what was counted after its last save)
            job = None if crashed else self._pending()
            if job is not None:
                log.info("going on with the recount of the rollups in %s (%d events counted so far)", path,
                         job.counted)
            elif not built or crashed or repriced or moved:
                # a new rollup file over a database that may already hold events, one a crash left behind
                # storage, or one priced differently: count the stored events in again
                if built and crashed:
                    log.warning("the rollups in %s were not closed cleanly: recounting them from storage", path)
                elif built:
                    log.info("the price table changed since the rollups in %s were counted: recounting them", path)
                job = self._new_catch_up(now - self._hour_keep)
            self.file.delete_meta("recount")  # kept in memory now; written again by a clean shutdown
            self.file.set_meta("closed_cleanly", "0")
            if job is not None:
                # counted by a background thread, so a big store never keeps the application from starting
                # (nor does one that starts degraded: the thread waits for it to open)
                service.on("storage:available", self._rebuild_when_open)
                with self._lock:
                    self._catch_up = job
                    self._caught_up.clear()
                self._resume()
                self._caught_up.wait(STARTUP_WAIT_S)
        if self.config.alerts.get("enabled", bool(self.config.alerts.get("channels"))):
            from .alerts import AlertManager

            self.alerts = AlertManager.from_config(self.config.alerts)
            service.on("anomaly", self.alerts.send)
        self._ready = True

    @hookimpl
    def before_shutdown(self, service: TelemetryService) -> None:
        """Stop the background recount while storage is still open (the next start goes on from there)."""
        self._closing = True
        self._pause(STOP_WAIT_S)

    @hookimpl
    def shutdown(self, service: TelemetryService) -> None:
        """Stop the background recount, write the changed rollups and how far the recount got, close the file."""
        self._closing = True
        self._pause(STOP_WAIT_S)
        service.off("storage:available", self._rebuild_when_open)
        if self.shared is not None:
            self.shared.close()
        with self._lock:
            self._save()
            if self.file is not None:
                job = self._catch_up
                # a recount that did not stop in time holds batches aside: the next start recounts from scratch
                if job is not None and self._reading is None and os.getpid() == self._pid:
                    self.file.set_meta("recount", orjson.dumps(
                        {**job.to_json(), "store": self._store, "prices": self.prices.fingerprint}).decode())
                self.file.set_meta("closed_cleanly", "1")
                self.file.close()
                self.file = None
        if self.alerts is not None:
            self.alerts.close()

    @hookimpl
    def after_fork(self, service: TelemetryService) -> None:
        """In a forked child: the parent's background recount stays the parent's (the child never runs it).

        The child gets locks of its own (the parent's thread may have held them at the fork) and forgets
        the batches held aside and the hour the parent was reading.
        """
        self._lock = threading.RLock()
        self._runner_lock = threading.Lock()
        self._runner = None
        self._stop, self._wake = threading.Event(), threading.Event()
        self._held_aside = None
        if self._reading is not None:
            self._reading.give_up()
            self._reading = None
        self._caught_up = threading.Event()
        if self._catch_up is None:
            self._caught_up.set()
        if self.shared is not None:
            # the parent's lock connection (and the lead it holds) stays the parent's
            _inherited.append(self.shared._lock_conn)
            self.shared.after_fork()

    def _save(self) -> None:
        if self.file is None or not (self.rollups.dirty or self.rollups.open_dirty):
            return
        dirty, self.rollups.dirty = self.rollups.dirty, set()
        try:
            self.file.save(self.rollups, dirty, sessions=self.rollups.open_dirty, messages=self._persist_messages)
            self.rollups.open_dirty = False
        except Exception:
            self.rollups.dirty |= dirty
            raise

    # -- ingest side ---------------------------------------------------------------------------

    @hookimpl
    def after_store(self, events: list[Any]) -> None:
        """Fold a stored batch into the rollups (held aside while a recount reads storage).

        With shared rollups the cluster's counter reads the store itself: nothing is counted here."""
        if self.shared is not None:
            return
        with self._lock:
            if self._held_aside is not None:
                self._held_aside.extend(events)
                return
            self._fold(events)

    def _fold(self, events: list[Any]) -> None:
        """Count stored events into the live rollups (the lock held).

        During a catch-up, events its reading has not reached yet (at or after ``upto``) are counted as
        usual and counted again when it gets there, whose buckets replace these.  Events before ``upto``
        are counted for good: they follow the recount's sessions, which become the live ones once it is done.
        """
        job = self._catch_up
        if job is None:
            self.rollups.add(events, self._lookup_session)
            return
        ahead = [event for event in events if event.timestamp >= job.upto]
        if ahead:
            self.rollups.add(ahead, self._lookup_session)
        behind = [event for event in events if event.timestamp < job.upto]
        if behind:
            live = self.rollups
            own = live.open, live.ended
            live.open, live.ended = job.counter.open, job.counter.ended
            try:
                live.add(behind, self._lookup_session)
            finally:
                live.open, live.ended = own

    def _lookup_session(self, session_id: str) -> Any:
        if self.service is None:
            return None
        for impl in self.service.host.impls("get_session"):
            found = impl(session_id=session_id)
            if found is not None:
                return found
        return None

    @hookimpl
    def idle(self) -> None:
        """Persist changed buckets, trim old ones, and run the live detectors.

        With shared rollups: count what the store holds beyond the watermark when this process leads (taking
        the lead when nobody holds it); only the leader trims and watches, so an anomaly is alerted once."""
        if not self._ready:
            return  # the flusher may be idle while this plugin is still starting
        if self.shared is not None:
            if not self.shared.try_lead():
                return
            started = time.monotonic()
            while self.shared.step() and time.monotonic() - started < 0.2:
                pass
            with self._lock:
                if time.monotonic() - self._last_trim > 60:
                    self._trim()
        else:
            with self._lock:
                self._save()
                if time.monotonic() - self._last_trim > 60:
                    self._trim()
        if self.config.anomaly.enabled and time.monotonic() - self._last_watch >= self.config.anomaly.interval / 1000:
            self._watch()

    def _trim(self) -> None:
        self._last_trim = time.monotonic()
        now = now_ms()
        self.rollups.drop_before("m", now - self._minute_keep)
        self.rollups.drop_before("h", now - self._hour_keep)
        for target in (self.file, self.shared):
            if target is not None:
                target.delete_before("m", now - self._minute_keep)
                target.delete_before("h", now - self._hour_keep)

    @hookimpl
    def clean(self, before: int) -> int | None:
        """Forget what retention cleaning deleted: drop older buckets, recount the hour that straddles ``before``.

        With shared rollups the older buckets go for the whole cluster, and the straddling hour is counted again
        under the state row's lock, so the cluster's counter neither runs meanwhile nor goes on from the
        buckets it had (:meth:`SharedRollups.recount_hour`)."""
        if self.shared is not None:
            with self._lock:
                for level, width in (("m", MINUTE), ("h", HOUR)):
                    cutoff = before - before % width
                    self.rollups.drop_before(level, cutoff)
                    self.shared.delete_before(level, cutoff)
            self.shared.recount_hour(before - before % HOUR)
            return None
        paused = self._pause()  # a catch-up under way goes on afterwards, reading what storage still holds
        try:
            with self._lock:
                for level, width in (("m", MINUTE), ("h", HOUR)):
                    cutoff = before - before % width
                    self.rollups.drop_before(level, cutoff)
                    if self.file is not None:
                        self.file.delete_before(level, cutoff)
                if self._catch_up is not None:
                    # the catch-up counts what storage holds, and the sessions that started before went with it
                    counter = self._catch_up.counter
                    for sid in [sid for sid, state in counter.open.items()
                                if state.started_at is not None and state.started_at < before]:
                        del counter.open[sid]
            self._recount(before - before % HOUR, before - before % HOUR + HOUR)
            with self._lock:
                self._save()
        finally:
            if paused:
                self._resume()
        return None

    def _rebuild_when_open(self, payload: Any) -> None:
        """``storage:available``: a catch-up waiting for storage to open (a degraded start) goes on now."""
        self._wake.set()

    def rebuild(self, since: int | None = None) -> int:
        """Recount the rollups from what storage holds (over ``hour_retention``, or from ``since``), here and now.

        ``telemetry analytics rebuild`` calls it; a catch-up under way in the background is replaced by
        this one.  Events tracked meanwhile are counted once.  Returns how many stored events were counted.
        With shared rollups the whole cluster's are counted again from the store's first event (``since`` is
        not used: the counter follows the store in write order, not by time).
        """
        if self.shared is not None:
            if since is not None:
                raise TelemetryError("shared rollups (a PostgreSQL store) are counted again from the store's first "
                                     "event: rebuild them without a start time")
            self.shared.reset()
            if not self.shared.catch_up(REBUILD_WAIT_S):
                raise TelemetryError(f"the shared rollups were reset, and the counter had not counted the whole "
                                     f"store after {REBUILD_WAIT_S:.0f} s; it goes on in the background (health "
                                     "shows its lag)")
            return self.shared.counted_events
        self._pause()
        now = now_ms()
        job = self._new_catch_up(now - self._hour_keep if since is None else since)
        with self._lock:
            self._catch_up = job
            self._caught_up.clear()
        try:
            self._run(job, threading.Event())
        finally:
            if not job.done:
                self._resume()  # failed (storage not open, say): the background thread takes it from there
        return job.counted

    def wait_for_catch_up(self, timeout: float | None = None) -> bool:
        """Wait until the rollups count every stored event (``True``) or ``timeout`` seconds pass (``False``).

        Only a start over a store analytics has not counted yet (or a crash, a price change) has to wait.
        With shared rollups: until the cluster's counter has counted what the store holds now.
        """
        if self.shared is not None:
            return self.shared.catch_up(timeout)
        return self._caught_up.wait(timeout)

    def _new_catch_up(self, start: int) -> Recount:
        return Recount(self._new_rollups(), start - start % HOUR)

    def _pending(self) -> Recount | None:
        """The catch-up a clean shutdown interrupted, if it counted this store at these prices."""
        assert self.file is not None
        raw = self.file.get_meta("recount")
        if raw is None:
            return None
        try:
            data = orjson.loads(raw)
            if data.get("store") != self._store or data.get("prices") != self.prices.fingerprint:
                return None
            job = Recount.from_json(data, self._new_rollups())
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
            log.warning("the interrupted recount recorded in %s cannot be read: recounting from the start",
                        self.file.path)
            return None
        oldest = now_ms() - self._hour_keep
        job.upto = max(job.upto, oldest - oldest % HOUR)  # hours past retention since the shutdown are not read
        return job

    def _resume(self) -> None:
        """Have a daemon thread go on with the catch-up, unless it is done, already going, or not this process's."""
        with self._runner_lock:
            if (self._catch_up is None or self._closing or os.getpid() != self._pid
                    or (self._runner is not None and self._runner.is_alive())):
                return
            self._stop, self._wake = threading.Event(), threading.Event()
            self._runner = threading.Thread(target=self._catch_up_in_background,
                                            args=(self._catch_up, self._stop, self._wake),
                                            name="vibekit-telemetry-analytics-recount", daemon=True)
            self._runner.start()

    def _pause(self, timeout: float | None = None) -> bool:
        """Stop the background catch-up and wait for it (it gives up the hour in hand); whether it was running."""
        with self._runner_lock:
            runner = self._runner
            self._stop.set()
            self._wake.set()
            if runner is None or not runner.is_alive():
                self._runner = None
                return False
            runner.join(timeout)
            if runner.is_alive():
                log.warning("the analytics recount did not stop within %s s", timeout)
            else:
                self._runner = None
            return True

    def _catch_up_in_background(self, job: Recount, stop: threading.Event, wake: threading.Event) -> None:
        """The background thread: count ``job`` on until it is done or stopped; wait for storage that is not open."""
        delay = 0.25
        while not stop.is_set():
            try:
                self._run(job, stop)
                return
            except StorageUnavailableError as exc:
                # the store starts degraded (locked by a backup, say): count it in once it opens
                if delay == 0.25:
                    log.info("storage is not open yet (%s): the rollups are recounted once it opens", exc)
            except ServiceClosedError:
                return
            except Exception as exc:
                with self._lock:
                    self._recount_error = f"{type(exc).__name__}: {exc}"
                log.exception("counting the stored events into the analytics rollups failed; the next start "
                              "goes on with it")
                return
            wake.wait(delay)  # storage:available wakes it at once
            wake.clear()
            delay = min(delay * 2, 30.0)

    def _recount(self, start: int, end: int) -> int:
        """Rebuild the buckets of ``[start, end)`` from what storage holds now; return the events counted."""
        job = Recount(self._new_rollups(), start, end)
        self._run(job, threading.Event())
        return job.counted

    def _run(self, job: Recount, stop: threading.Event) -> bool:
        """Count ``job`` on from storage, cutting at each new hour, until it is done (``True``) or ``stop`` is set.

        Storage is read without holding the rollup lock (a read flushes, and the flusher needs that lock).
        Batches stored meanwhile are held aside and counted at the next cut, except the events the recount
        read.  Stopped or failed, the recount gives up the hour in hand, and what was held aside is counted.
        """
        assert self.service is not None
        from vibekit_telemetry import QueryFilter, encode_cursor

        with self._lock:
            if self._held_aside is not None:
                raise TelemetryError("a recount of the analytics rollups is already running")
            self._held_aside = []
            self._reading = job
            job.keep_sessions()
        try:
            readable = bool(self.service.host.impls("query"))
            while not stop.is_set():
                flt = QueryFilter(since=job.upto, until=None if job.end is None else job.end - 1, order="asc",
                                  limit=_PAGE, cursor=job.cursor)
                # through the service, so what storage holds transformed (encrypted) comes back as tracked
                batch = self.service.query(flt) if readable else []
                flushed = False
                for hour, events in by_hour(batch):
                    if job.hour is not None and hour != job.hour:
                        if not flushed:
                            # a batch this page read may still be on its way to after_store: held aside after this
                            self.service.flush()
                            flushed = True
                        self._commit(job, hour)
                    job.count(hour, events, self._lookup_session)
                if batch:
                    job.cursor = encode_cursor(batch[-1])
                if len(batch) < _PAGE:
                    if not flushed:
                        self.service.flush()
                    self._commit(job, job.end)
                    return True
            return False
        finally:
            with self._lock:
                if self._reading is job:
                    held, self._held_aside, self._reading = self._held_aside, None, None
                    job.give_up()
                    self._fold(held or [])

    def _commit(self, job: Recount, until: int | None) -> None:
        """Put the hours ``job`` counted, from ``upto`` to ``until``, in place of the live ones.

        ``until`` is the hour where counting goes on (``job.end`` when it is done).  Then what was held
        aside is counted, except the events the recount read for these hours.
        """
        final = until is None or (job.end is not None and until >= job.end)
        minutes_from = now_ms() - self._minute_keep
        with self._lock:
            levels, read = job.take()
            for level in ("m", "h"):
                live = self.rollups.levels[level]
                for bucket in [b for b in live if b >= job.upto and (until is None or b < until)]:
                    del live[bucket]
                    self.rollups.dirty.add((level, bucket))
                for bucket, by_dim in levels[level].items():
                    if level == "h" or bucket >= minutes_from:  # minutes past retention would only be trimmed
                        live[bucket] = by_dim
                        self.rollups.dirty.add((level, bucket))
            job.counted += len(read)
            held = self._held_aside or []
            if final:
                job.done = True
                self._held_aside = self._reading = None
                self._finish(job)
            else:
                assert until is not None
                job.upto = until
                self._held_aside = []
            self._fold([event for event in held if event.id not in read])
            if final:
                self._save()
            else:
                job.keep_sessions()
        assert self.service is not None
        self.service.host.each("cache_invalidate", lambda name, exc: log.warning("%s: %s", name, exc), hooks=_READS)

    def _finish(self, job: Recount) -> None:
        """A catch-up is done (the lock held): its sessions become the live ones, the rollup file says so."""
        if job is not self._catch_up:
            return
        live = self.rollups
        live.open.clear()
        live.open.update(job.counter.open)
        live.ended = job.counter.ended
        live.open_dirty = True
        self._catch_up = None
        self._recount_error = None
        if self.file is not None:
            self.file.set_meta("built_at", str(now_ms()))
            self.file.set_meta("prices", self.prices.fingerprint)
            self.file.delete_meta("recount")
        self._caught_up.set()

    def _progress(self) -> dict[str, Any] | None:
        """How far the catch-up got (``None`` when there is none), for answers and health."""
        with self._lock:
            job = self._catch_up
            if job is None:
                return None
            return {**job.progress(), "running": self._reading is job}

    # -- metrics -------------------------------------------------------------------------------

    def _refresh(self) -> None:
        """With shared rollups, a follower reads the cluster's buckets (at most a second old) first."""
        if self.shared is not None:
            with self._lock:
                self.shared.refresh()

    def _window(self, start: int, end: int) -> dict[Any, Agg]:
        self._refresh()
        with self._lock:
            return self.rollups.window(start, end, minutes_from=now_ms() - self._minute_keep)

    def _active(self, end: int) -> dict[tuple[str, str], int]:
        timeout = span_ms(self.config.active_timeout)
        counts: dict[tuple[str, str], int] = {}
        with self._lock:
            for state in self.rollups.open.values():
                if end - timeout <= state.last_at <= end:
                    for dim in (ALL, ("category", state.category), ("model", state.model or "")):
                        counts[dim] = counts.get(dim, 0) + 1
        return counts

    @hookimpl
    def get_metrics(self, start: int, end: int) -> results.Metrics:
        """Metrics of ``[start, end)`` from the rollups, widened to whole minutes (the rollups' resolution).

        ``by_category`` and ``by_model`` hold at most ``max_categories`` and ``max_models`` names (the ones
        with the most events) plus ``other``; ``folded_events`` says how many events ``other`` holds because
        of those limits.  Totals count every event.
        """
        start, end = start - start % MINUTE, end + (-end % MINUTE)
        progress = self._progress()
        window = self._window(start, end)
        active = self._active(end)
        total = window.get(ALL) or Agg()
        by_category, category_folded = _capped(window, "category", self.config.max_categories, active)
        by_model, model_folded = _capped(window, "model", self.config.max_models, active)

        def breakdown(agg: Agg, kind: str, name: str) -> results.Breakdown:
            return results.Breakdown(
                events=agg.events, sessions=results.sessions(agg, active.get((kind, name), 0)),
                errors=results.errors(agg), performance=results.performance(agg),
                tokens=results.tokens(agg, self._cost(agg, name if kind == "model" else None)))

        cost = self._cost(total)
        if cost is None and any(self.prices.lookup(model) is not None for model in by_model if model != OTHER):
            cost = 0.0  # priced models whose tokens were all zero: the cost is known, and nothing
        minutes = max((end - start) / MINUTE, 1 / 60)
        names = set(self.definitions) | set(total.custom)
        custom = {name: results.custom_metric(name, total.custom.get(name), self.definitions.get(name)) for name in sorted(names)}
        return results.Metrics(
            start=start, end=end,
            events=results.EventMetrics(total=total.events, per_minute=round(total.events / minutes, 3),
                                        by_type=dict(total.types)),
            sessions=results.sessions(total, active.get(ALL, 0)),
            errors=results.errors(total),
            performance=results.performance(total),
            tokens=results.tokens(total, cost),
            cost=cost,
            by_category={name: breakdown(agg, "category", name) for name, agg in sorted(by_category.items())},
            by_model={name: breakdown(agg, "model", name) for name, agg in sorted(by_model.items())},
            custom=custom,
            price_table_version=PRICE_TABLE_VERSION,
            redactions=dict(sorted(total.redactions.items())),
            folded_events={"category": category_folded, "model": model_folded},
            catching_up=progress is not None,
            catch_up=progress,
        )

    def _cost(self, agg: Agg, model: str | None = None) -> float | None:
        """Estimated dollars of an aggregate: its tokens were priced when counted (``None``: nothing was priced).

        A named model in the price table costs 0.0 rather than ``None`` when it has no billable tokens.
        """
        dollars, failed_dollars, priced = agg.cost
        if not priced:
            return 0.0 if model is not None and model != OTHER and self.prices.lookup(model) is not None else None
        billed = dollars if self.prices.bill_failed else dollars - failed_dollars
        return round(max(0.0, billed), 6)

    @hookimpl
    def get_insights(self, start: int, end: int, categories: list[str] | None) -> results.Insights:
        """Findings about ``[start, end)``: leaders, laggards, error hot spots, unfinished sessions, changes."""
        current = self.get_metrics(start, end)
        previous = self.get_metrics(start - (end - start), start)
        wanted = set(categories) if categories else None
        cats = {k: v for k, v in current.by_category.items() if wanted is None or k in wanted}
        models = current.by_model

        def ranked(items: dict[str, results.Breakdown], kind: str, key: Any, label: str, minimum: int = 0) -> list[results.Finding]:
            rows = [(name, b) for name, b in items.items() if key(b) is not None and b.sessions.ended >= minimum]
            rows.sort(key=lambda item: -key(item[1]))
            return [results.Finding(kind=kind, subject=name, value=key(b), message=label.format(name=name, value=key(b)))
                    for name, b in rows[:5]]

        busiest_agents = ranked(cats, "busiest_agent", lambda b: b.events, "{name}: {value} events")
        busiest_models = ranked(models, "busiest_model", lambda b: b.sessions.ended + b.sessions.started,
                                "{name}: {value} session starts and ends")
        slowest_agents = ranked(cats, "slowest_agent", lambda b: b.performance.p95_latency, "{name}: p95 latency {value} ms", 1)
        slowest_models = ranked(models, "slowest_model", lambda b: b.performance.p95_latency, "{name}: p95 latency {value} ms", 1)
        hot = []
        for name, b in sorted(cats.items(), key=lambda item: -(item[1].errors.total + item[1].sessions.failed)):
            if b.errors.total + b.sessions.failed == 0:
                break
            hot.append(results.Finding(
                kind="error_hot_spot", subject=name, value=b.errors.rate,
                message=f"{name}: {b.errors.total} errors ({b.errors.rate}% of events), {b.sessions.failed} failed sessions",
                details={"top_messages": b.errors.top_messages}))
        stale = span_ms(self.config.stale_after)
        unfinished = []
        with self._lock:
            open_sessions = sorted(self.rollups.open.items(), key=lambda item: item[1].last_at)
        for sid, state in open_sessions:
            if state.last_at < end - stale and state.last_at >= start and (wanted is None or state.category in wanted):
                unfinished.append(results.Finding(
                    kind="unfinished_session", subject=sid, value=float(end - state.last_at),
                    message=f"session {sid} ({state.category}) has had no event for {(end - state.last_at) // 60000} min",
                    details={"agent": state.category, "started_at": state.started_at, "last_event_at": state.last_at}))
        changes = {name: _change(_headline(previous, name, wanted), _headline(current, name, wanted))
                   for name in _HEADLINES}
        if wanted is None:
            summary = [f"{current.events.total} events, {current.sessions.started} sessions started, "
                       f"error rate {current.errors.rate}%"]
        else:  # the summary is about the categories asked for, as every finding above is
            summary = [f"{int(_headline(current, 'events', wanted) or 0)} events in {', '.join(sorted(wanted))}, "
                       f"{sum(b.sessions.started for b in cats.values())} sessions started, "
                       f"error rate {_headline(current, 'error_rate', wanted)}%"]
        for name, change in changes.items():
            if change["change_pct"] is not None and abs(change["change_pct"]) >= 20:
                summary.append(f"{name} {'up' if change['change_pct'] > 0 else 'down'} {abs(change['change_pct']):.0f}% "
                               f"against the previous window")
        if unfinished:
            summary.append(f"{len(unfinished)} sessions never ended")
        if current.catching_up:
            summary.append(f"still counting stored events in ({current.catch_up['counted']:,} so far): "
                           "these figures are incomplete")
        return results.Insights(
            start=start, end=end, busiest_agents=busiest_agents, busiest_models=busiest_models,
            slowest_agents=slowest_agents, slowest_models=slowest_models, error_hot_spots=hot[:5],
            unfinished_sessions=unfinished[:20], changes=changes, summary=summary,
            catching_up=current.catching_up, catch_up=current.catch_up)

    @hookimpl
    def annotate_sessions(self, sessions: list[Any]) -> list[Any]:
        """Each session's estimated cost (``cost_usd``) from its model and tokens, cache discounts included.

        A failed session is free unless ``bill_failed``, as in the metrics; a model the price table does not
        know leaves ``cost_usd`` unset rather than zero.
        """
        out = []
        for session in sessions:
            tokens = session.tokens
            if not session.model or not tokens:
                out.append(session)
                continue
            counts = [tokens.input, tokens.output, tokens.cache_read, tokens.cache_creation, tokens.reasoning]
            failed = counts if session.status not in ("active", "completed") else [0, 0, 0, 0, 0]
            cost = self.prices.cost(session.model, counts, failed)
            out.append(session if cost is None else attrs.evolve(session, cost_usd=round(cost, 8)))
        return out

    @hookimpl
    def get_alerts(self, limit: int) -> dict[str, Any] | None:
        """The alert channels, their counters and latest deliveries (``None`` without ``[analytics.alerts]``)."""
        return self.alerts.status(limit) if self.alerts is not None else None

    @hookimpl
    def define_metric(self, name: str, type: str, unit: str | None, description: str | None) -> dict[str, Any]:
        """Remember a custom metric's type, unit and description."""
        definition = {"type": type, "unit": unit, "description": description}
        with self._lock:
            self.definitions[name] = definition
            for target in (self.file, self.shared):
                if target is not None:
                    target.save_definition(name, type, unit, description)
        return {"name": name, **definition}

    @hookimpl
    def metric_series(self, metric: str, start: int, end: int, step: int) -> list[tuple[int, float]] | None:
        """A metric per ``step``: throughput, response_time, error_rate, ttft, tokens, cost or a custom metric."""
        self._refresh()
        with self._lock:
            points = self.rollups.series(ALL, start, end, step)
        return _series(metric, points, self.definitions)

    # -- anomaly detection ---------------------------------------------------------------------

    @hookimpl
    def detect(self, metric: str, points: list[tuple[int, float]], sensitivity: str) -> list[Anomaly]:
        """The likelihood detector over a series, judging each point from the ones before it."""
        detector = LikelihoodDetector(warmup=SERIES_WARMUP)
        threshold = THRESHOLDS[sensitivity]
        found: list[Anomaly] = []
        quiet_until = -1
        if self._zero_filled(metric):
            points = _from_first_activity(points)
        for index, (ts, value) in enumerate(points):
            low, high = detector.expected()
            score = detector.update(value)
            if index > quiet_until and score >= threshold:
                found.append(_anomaly(metric, ts, value, low, high, score, threshold))
                quiet_until = index + 30
        return found

    def _zero_filled(self, metric: str) -> bool:
        """Whether a minute without events reads 0 in this metric's series (rather than being left out)."""
        return metric in ("throughput", "tokens") or (
            metric not in _AVERAGED and self.definitions.get(metric, {}).get("type") in (None, "counter"))

    def _watch(self) -> None:
        """Feed the live detectors the minutes completed since the last look; emit what they find."""
        assert self.service is not None
        self._last_watch = time.monotonic()
        now = now_ms()
        end = now - now % MINUTE
        start = self._watched_until if self._watched_until is not None else end - 60 * MINUTE
        if start >= end:
            return
        threshold = THRESHOLDS[self.config.anomaly.sensitivity]
        for metric in self.config.anomaly.metrics:
            with self._lock:
                points = _series(metric, self.rollups.series(ALL, start, end, MINUTE), self.definitions) or []
            detector = self._watchers.setdefault(metric, LikelihoodDetector(warmup=SERIES_WARMUP))
            if detector.n == 0 and self._zero_filled(metric):
                points = _from_first_activity(points)
            for ts, value in points:
                low, high = detector.expected()
                score = detector.update(value)
                if score >= threshold and self._watched_until is not None:
                    self.service.emit("anomaly", _anomaly(metric, ts, value, low, high, score, threshold))
        self._watched_until = end

    @hookimpl
    def health(self) -> dict[str, Any]:
        """Rollup sizes, the sessions still open, and whether the rollups are still catching up with storage."""
        progress = self._progress()
        self._refresh()
        shared = self.shared.status() if self.shared is not None else None
        with self._lock:
            error = self._recount_error
            return {
                "rollups": shared or {"backend": "file" if self.file is not None else "memory"},
                "healthy": error is None,
                "issues": [] if error is None else [f"counting the stored events into the rollups failed: {error}"],
                "catching_up": progress is not None, "catch_up": progress,
                "minute_buckets": len(self.rollups.levels["m"]), "hour_buckets": len(self.rollups.levels["h"]),
                "open_sessions": len(self.rollups.open), "abandoned_sessions": self.rollups.abandoned,
                # events of the kept hours counted under "other" because their hour already had as many names
                # as max_categories / max_models allow
                "folded_events": {kind: sum(agg.events for by_dim in self.rollups.levels["h"].values()
                                            if (agg := by_dim.get((FOLDED, kind))) is not None)
                                  for kind in ("category", "model")},
                "max_categories": self.config.max_categories, "max_models": self.config.max_models,
                "path": str(self.file.path) if self.file is not None else None,
                "alerts": self.alerts.stats() if self.alerts is not None else None,
            }

    @staticmethod
    @hookimpl
    def register_commands(cli: click.Group) -> None:
        """``telemetry metrics`` and ``telemetry analytics ...``."""
        from .cli import register

        register(cli)


def _capped(window: dict[Any, Agg], kind: str, limit: int, active: dict[tuple[str, str], int]) -> tuple[dict[str, Agg], int]:
    """A window's aggregates of ``kind`` (category or model) by name: at most ``limit`` names, plus ``other``.

    Buckets fold the names past their limit as they come; a window merges many buckets and can see more
    names than one bucket keeps, so it keeps the ``limit`` with the most events and folds the rest too.
    Returns the aggregates and how many events ``other`` holds because of folding (an actual name
    ``other`` is not counted).  ``active`` gains ``other``'s active sessions: those of every name not shown.
    """
    named = {dim[1]: agg for dim, agg in window.items() if dim[0] == kind}
    folded_agg = window.get((FOLDED, kind))
    folded = folded_agg.events if folded_agg is not None else 0
    other = named.pop(OTHER, None)
    if len(named) > limit:
        kept = set(heapq.nlargest(limit, named, key=lambda name: (named[name].events, name)))
        other = other or Agg()
        for name in [name for name in named if name not in kept]:
            agg = named.pop(name)
            other.merge(agg)
            folded += agg.events
    if other is not None:
        named[OTHER] = other
        hidden = sum(n for (k, name), n in active.items() if k == kind and name and name not in named)
        active[(kind, OTHER)] = active.get((kind, OTHER), 0) + hidden
    return named, folded


def _headline(metrics: results.Metrics, name: str, categories: set[str] | None = None) -> float | None:
    if categories is not None:
        picked = [b for k, b in metrics.by_category.items() if k in categories]
        events = sum(b.events for b in picked)
        if name == "events":
            return float(events)
        if name == "error_rate":
            return round(100 * sum(b.errors.total for b in picked) / events, 3) if events else 0.0
        if len(picked) == 1 and name in ("p95_latency", "avg_ttft"):
            return getattr(picked[0].performance, name)
        return None  # percentiles of several categories do not combine, and cost is not kept per category
    return {
        "events": float(metrics.events.total), "error_rate": metrics.errors.rate,
        "p95_latency": metrics.performance.p95_latency, "avg_ttft": metrics.performance.avg_ttft,
        "cost": metrics.cost,
    }[name]


def _change(before: float | None, after: float | None) -> dict[str, float | None]:
    pct = None
    if before is not None and after is not None and before:
        pct = round(100 * (after - before) / before, 2)
    return {"previous": before, "current": after, "change_pct": pct}


#: points of a per-minute series a detector learns from before it may report: half an hour, the same for the
#: continuous detectors and for on-demand checks, so the anomalies page finds what was announced live
SERIES_WARMUP = 30

#: built-in metrics whose series skip the minutes without data
_AVERAGED = ("response_time", "ttft", "error_rate")


def _from_first_activity(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """The series from its first non-zero point on.

    For a zero-filled metric (throughput, tokens, counters) the minutes before
    anything was recorded are no history: judged from that silence, the first
    traffic of a new installation would look like an anomaly.
    """
    for index, (_, value) in enumerate(points):
        if value:
            return points[index:]
    return []


def _series(metric: str, points: list[tuple[int, Agg | None]], definitions: dict[str, Any]) -> list[tuple[int, float]] | None:
    if metric == "throughput":
        return [(t, float(a.events if a else 0)) for t, a in points]
    if metric == "response_time":
        return [(t, a.dur_sum / a.dur_n) for t, a in points if a and a.dur_n]
    if metric == "ttft":
        return [(t, a.ttft_sum / a.ttft_n) for t, a in points if a and a.ttft_n]
    if metric == "error_rate":
        return [(t, 100 * a.errors / a.events) for t, a in points if a and a.events]
    if metric == "tokens":
        return [(t, float(a.tokens[0] + a.tokens[1]) if a else 0.0) for t, a in points]
    kind = definitions.get(metric, {}).get("type")
    seen = any(a is not None and metric in a.custom for _, a in points)
    if kind is None and not seen:
        return None
    out = []
    for t, a in points:
        slot = a.custom.get(metric) if a else None
        if slot is None:
            if kind in (None, "counter"):
                out.append((t, 0.0))
            continue
        out.append((t, slot[1] if kind in (None, "counter") else slot[4] if kind == "gauge" else slot[1] / slot[0]))
    return out


def _anomaly(metric: str, ts: int, value: float, low: float, high: float, score: float, threshold: float) -> Anomaly:
    severity = "high" if score >= 0.999 else "medium" if score >= 0.99 else "low"
    direction = "above" if value > high else "below" if value < low else "outside the recent pattern of"
    return Anomaly(metric=metric, timestamp=ts, value=value, expected_low=round(low, 6), expected_high=round(high, 6),
                   score=round(score, 6), severity=severity, detector="likelihood",
                   description=f"{metric} = {value:.4g} is {direction} the expected range "
                               f"{low:.4g}..{high:.4g} (score {score:.4f}, threshold {threshold})")


def _store_identity(service: TelemetryService) -> str:
    """Which store the rollups count: the enabled storage entries, with their files resolved."""
    import json
    import os

    entries = []
    for entry in service.config.storage:
        if not entry.enabled:
            continue
        path = entry.options.get("path")
        entries.append([entry.type, os.path.abspath(path) if isinstance(path, str) and path != ":memory:" else path])
    return json.dumps(entries)
