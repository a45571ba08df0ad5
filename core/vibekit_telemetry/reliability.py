"""Retries, circuit breaking and the error journal around every storage plugin.

The pipeline's flusher hands each batch to one :class:`GuardedSink` per
storage plugin.  A sink tries the plugin's ``store`` (retrying with backoff
while its circuit is closed); a batch it cannot store goes to the sink's
on-disk :class:`~vibekit_telemetry.journal.Journal` and is replayed, in order and
before newer batches, once the plugin accepts writes again, or by the next
process started on the same configuration.  With ``persist_buffer`` every batch
is journaled before the plugin sees it, so an event is durable within one flush
interval of ``track()`` returning even if the process is then killed.

Settings are the ``reliability`` section of the configuration; a storage
entry's own options may override the buffer settings and ``retry`` /
``circuit_breaker`` for that plugin.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import attrs

from .deadletter import DeadLetters
from .errors import ConfigError, EventsRejectedError, StorageError, StorageUnavailableError
from .journal import Journal, JournalFull, UnencodableEvent, ensure_encodable
from .model import TelemetryEvent, event_from_row, events_of

log = logging.getLogger("vibekit_telemetry.reliability")

#: Options a storage entry may carry for its sink rather than for its plugin.
SINK_OPTION_KEYS = ("buffer_on_error", "buffer_size", "buffer_max_bytes", "persist_buffer", "buffer_path",
                    "retry", "circuit_breaker")


def _positive(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and value < (0 if attribute.name.endswith("_ms") else 1):
        raise ConfigError(f"{attribute.name}: out of range ({value!r})")


@attrs.frozen
class RetryConfig:
    """``reliability.retry``: how often, and how patiently, a failed write is tried again."""

    enabled: bool = True
    max_attempts: int = attrs.field(default=3, validator=_positive)
    backoff: Literal["linear", "exponential"] = "exponential"
    base_delay_ms: int = attrs.field(default=50, validator=_positive)
    max_delay_ms: int = attrs.field(default=2000, validator=_positive)
    jitter: bool = True

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        step = self.base_delay_ms * (attempt if self.backoff == "linear" else 2 ** (attempt - 1))
        capped = min(step, self.max_delay_ms) / 1000
        return capped * (0.5 + random.random() / 2) if self.jitter else capped


@attrs.frozen
class CircuitBreakerConfig:
    """``reliability.circuit_breaker``: stop calling a failing plugin for ``timeout`` ms after ``threshold`` failures."""

    enabled: bool = True
    threshold: int = attrs.field(default=5, validator=_positive)
    timeout: int = attrs.field(default=30_000, validator=_positive)


@attrs.frozen
class RateLimitConfig:
    """``reliability.rate_limit``: at most ``max_requests`` events per ``window_ms`` (errors and session ends exempt)."""

    enabled: bool = True
    max_requests: int = attrs.field(default=1000, validator=_positive)
    window_ms: int = attrs.field(default=1000, validator=_positive)


@attrs.frozen
class SamplingConfig:
    """``sampling``: keep ``rate`` of sessions (and of events outside sessions).

    Failed sessions, sessions with an error, sessions longer than ``slow_ms``,
    errors and ``metrics`` events are always kept.  A sampled-out session keeps
    its start and end events, and its end event carries a ``sampled_out`` tally,
    so session counts, durations and tokens stay exact.
    """

    rate: float = 1.0
    slow_ms: int = attrs.field(default=30_000, validator=_positive)
    max_held_sessions: int = attrs.field(default=10_000, validator=_positive)
    max_held_events: int = attrs.field(default=1000, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ConfigError(f"rate: expected a number from 0 to 1, got {self.rate!r}")


@attrs.frozen
class ReliabilityConfig:
    """The ``reliability`` section (names as in the seed, snake_case or camelCase)."""

    retry: RetryConfig = RetryConfig()
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()
    rate_limit: RateLimitConfig | None = None
    sampling: SamplingConfig | None = None
    buffer_on_error: bool = True
    buffer_size: int = attrs.field(default=100_000, validator=_positive)
    buffer_max_bytes: int = attrs.field(default=512 * 2**20, validator=_positive)
    persist_buffer: bool = False
    buffer_path: str | None = None
    memory_limit: int | None = attrs.field(default=None, validator=_positive)
    gc_interval: int = attrs.field(default=1000, validator=_positive)
    #: what a storage plugin that cannot open at start-up (locked, not reachable) does: ``degrade`` starts without
    #: it, journals events and keeps trying in the background; ``fail`` raises from the constructor
    startup: Literal["degrade", "fail"] = "degrade"
    startup_timeout_ms: int = attrs.field(default=1000, validator=_positive)
    #: a journaled batch that fails this many times in a row, for the same reason that is not the store being
    #: unavailable, is searched for the events at fault, which go to the dead-letter file
    dead_letter_after: int = attrs.field(default=3, validator=_positive)


@attrs.define
class SinkStats:
    """What one sink did, for health and metrics."""

    attempts: int = 0
    retried: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    replayed: int = 0
    lost: int = 0
    dead_lettered: int = 0
    stored_batches: int = 0
    last_error: str | None = None
    last_error_at: float = 0.0
    last_success_at: float = 0.0


def is_content_error(exc: BaseException) -> bool:
    """Whether a plugin's failure is about the events it was given rather than about the store.

    :class:`EventsRejectedError` says so explicitly; ``TypeError``, ``ValueError``, ``OverflowError`` and
    ``UnicodeError`` (a value the driver cannot bind or encode) are taken the same way.  Any other
    :class:`StorageError` is the store's.
    """
    if isinstance(exc, EventsRejectedError):
        return True
    if isinstance(exc, StorageError):
        return False
    return isinstance(exc, (TypeError, ValueError, OverflowError, UnicodeError))


def is_transient(exc: BaseException) -> bool:
    """Whether retrying later may succeed without any change: the store is unavailable, not the events bad.

    :class:`StorageUnavailableError` (locked, full, not reachable) and ``OSError`` are; a plain
    :class:`StorageError` is a refusal that retrying cannot fix, so a batch failing with it again and
    again is searched for the events at fault (``dead_letter_after``).
    """
    return isinstance(exc, (OSError, StorageUnavailableError))


class GuardedSink:
    """One storage plugin behind retries, a circuit breaker, an error journal and a dead-letter file.

    ``store`` calls the plugin; ``report`` receives ``("stored", n)`` (replays
    included) and ``("lost", n, reason)``;
    ``emit`` publishes the service events (``connection:error``,
    ``circuit:open``, ``circuit:half_open``, ``circuit:close``).  Only the
    flusher thread calls :meth:`write`, :meth:`write_staged` and :meth:`replay`;
    with ``persist_buffer`` the pipeline's journal thread calls :meth:`stage`.
    """

    def __init__(self, name: str, store: Callable[[list[TelemetryEvent]], None], policy: ReliabilityConfig,
                 journal_dir: Path, *, report: Callable[..., None], emit: Callable[[str, Any], None],
                 dead_letters: DeadLetters | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.name = name
        self.policy = policy
        self.journal_dir = journal_dir
        self.dead_letters = dead_letters if dead_letters is not None else DeadLetters(journal_dir.parent / "dead-letter")
        self._store = store
        self._report = report
        self._emit = emit
        self._sleep = sleep
        self.stats = SinkStats()
        self.state: Literal["closed", "open", "half_open"] = "closed"
        #: why the plugin cannot be called at all yet (it failed to open at start-up and is retried), or None
        self.unavailable: str | None = None
        self._opened_at = 0.0
        self._journal: Journal | None = None
        self._orphans: list[Journal] = []
        #: tokens of journaled batches the flusher holds in memory and will write itself, in turn
        self._inflight: set[int] = set()
        #: ids already stored (or dead-lettered) of a journaled batch that was stored only in part, by batch
        self._partial: dict[tuple[str, int], set[str]] = {}
        #: (journal, token, reason, count): the head batch's run of failures, for dead_letter_after
        self._head_failures: tuple[str, int, str, int] | None = None
        self._last_exc: BaseException | None = None
        self._journal_options = {"max_events": policy.buffer_size, "max_bytes": policy.buffer_max_bytes,
                                 "fsync": True}
        if policy.buffer_on_error or policy.persist_buffer:
            try:
                self._orphans = Journal.adopt_orphans(journal_dir, **self._journal_options)
            except OSError as exc:
                log.error("sink %s: cannot read old journals in %s: %s", name, journal_dir, exc)
            if self._orphans:
                log.warning("sink %s: %d events left by an earlier process will be replayed",
                            name, sum(j.pending_events for j in self._orphans))
        if policy.persist_buffer:
            self._journal = self._new_journal()

    # -- state ---------------------------------------------------------------------------------

    @property
    def has_backlog(self) -> bool:
        """A cheap test of whether :attr:`backlog` may be non-zero."""
        return bool(self._orphans) or (self._journal is not None and self._journal.pending_events > 0)

    @property
    def backlog(self) -> int:
        """Events waiting in journals for this plugin (with ``persist_buffer``, those not yet stored).

        A journaled batch stored in part counts only its events still waiting.
        """
        own = self._journal.pending_events if self._journal is not None else 0
        done = sum(len(ids) for ids in self._partial.values()) if self._partial else 0
        return own + sum(j.pending_events for j in self._orphans) - done

    @property
    def healthy(self) -> bool:
        """Open, circuit closed, and storing again since its last failure."""
        return (self.unavailable is None and self.state == "closed"
                and (not self.stats.last_error_at or self.stats.last_success_at >= self.stats.last_error_at))

    def _new_journal(self) -> Journal:
        return Journal.create(self.journal_dir, **self._journal_options)

    def _allowed(self) -> bool:
        """Whether the plugin may be called now (moving an open circuit to half-open when its timeout passed)."""
        if self.unavailable is not None:
            return False
        if self.state != "open":
            return True
        if time.monotonic() - self._opened_at >= self.policy.circuit_breaker.timeout / 1000:
            self.state = "half_open"
            log.info("sink %s: circuit half-open, probing", self.name)
            self._emit("circuit:half_open", {"plugin": self.name})
            return True
        return False

    def _succeeded(self) -> None:
        self.stats.stored_batches += 1
        self.stats.consecutive_failures = 0
        self.stats.last_success_at = time.monotonic()
        if self.state != "closed":
            self.state = "closed"
            log.warning("sink %s: circuit closed, the plugin accepts writes again", self.name)
            self._emit("circuit:close", {"plugin": self.name})

    def _failed(self, exc: BaseException) -> None:
        self._last_exc = exc
        self.stats.failures += 1
        self.stats.consecutive_failures += 1
        self.stats.last_error = f"{type(exc).__name__}: {exc}"
        self.stats.last_error_at = time.monotonic()
        breaker = self.policy.circuit_breaker
        if self.state == "half_open" or (
            breaker.enabled and self.state == "closed" and self.stats.consecutive_failures >= breaker.threshold
        ):
            self.state = "open"
            self._opened_at = time.monotonic()
            log.error("sink %s: circuit open after %d failures (%s); retrying in %d ms",
                      self.name, self.stats.consecutive_failures, self.stats.last_error, breaker.timeout)
            self._emit("circuit:open", {"plugin": self.name, "failures": self.stats.consecutive_failures,
                                        "error": self.stats.last_error})

    def mark_unavailable(self, reason: str) -> None:
        """The plugin could not open yet: journal what arrives, call nothing, until :meth:`mark_available`."""
        self.unavailable = reason
        self.stats.last_error = reason
        self.stats.last_error_at = time.monotonic()

    def mark_available(self) -> None:
        """The plugin opened: the next drain replays what was journaled meanwhile."""
        self.unavailable = None
        self.stats.last_success_at = time.monotonic()

    def _deliver(self, batch: list[TelemetryEvent], *, retries: bool) -> tuple[int, list[TelemetryEvent]]:
        """Call the plugin, retrying with backoff while allowed; return how many it stored and what is left.

        A content error isolates the events at fault (:meth:`_isolate`) instead of failing the batch.
        """
        retry = self.policy.retry
        attempts = retry.max_attempts if retries and retry.enabled and self.state == "closed" else 1
        for attempt in range(1, attempts + 1):
            self.stats.attempts += 1
            if attempt > 1:
                self.stats.retried += 1
            try:
                self._store(batch)
            except Exception as exc:
                if is_content_error(exc):
                    stored, culprits, rest = self._isolate(batch, exc, suspect=False)
                    self._dead_letter(culprits)
                    return stored, rest
                self._attempt_failed(exc, len(batch), attempt, attempts)
                if self.state == "open" or attempt == attempts:
                    return 0, batch
                self._sleep(retry.delay(attempt))
                continue
            self._succeeded()
            return len(batch), []
        return 0, batch

    def _attempt_failed(self, exc: BaseException, count: int, attempt: int, attempts: int) -> None:
        self._failed(exc)
        log.warning("sink %s: attempt %d/%d to store %d events failed: %s",
                    self.name, attempt, attempts, count, self.stats.last_error)
        self._emit("connection:error", StorageError(
            f"storage plugin {self.name!r} failed to store {count} events: {type(exc).__name__}: {exc}"))

    def _isolate(self, batch: list[TelemetryEvent], error: BaseException | None, *, suspect: bool
                 ) -> tuple[int, list[tuple[TelemetryEvent, BaseException]], list[TelemetryEvent]]:
        """Store a batch that failed for what it holds: halve the failing parts until the events at fault are alone.

        The others are stored, in order.  ``error`` is how the whole batch failed (``None``: not tried yet).
        ``suspect`` also takes errors that are not the store being unavailable as the events' fault (a batch
        that kept failing the same way), unless most events fail alone too, which means the plugin is
        broken, not the events.  Returns how many events were stored, the events at fault with their
        errors, and what is left untried because the store itself failed meanwhile.
        """
        stored = 0
        # whether the plugin was storing until this batch: without that, a batch none of whose events can be
        # stored says nothing about the events (a broken plugin refuses everything)
        was_storing = self.stats.consecutive_failures == 0 and self.stats.stored_batches > 0
        culprits: list[tuple[TelemetryEvent, BaseException]] = []
        stack: list[tuple[list[TelemetryEvent], BaseException | None]] = [(batch, error)]
        while stack:
            part, failure = stack.pop()
            if failure is None:
                self.stats.attempts += 1
                try:
                    self._store(part)
                except Exception as exc:
                    failure = exc
                else:
                    stored += len(part)
                    continue
            if is_content_error(failure) or (suspect and not is_transient(failure)):
                if len(part) > 1:
                    middle = len(part) // 2
                    stack.append((part[middle:], None))
                    stack.append((part[:middle], None))
                    continue
                culprits.append((part[0], failure))
                if not was_storing and not stored and len(culprits) >= 2:
                    # two events refused alone and none stored, by a plugin not seen storing: the plugin, not them
                    rest = [event for event, _ in culprits] + [e for p, _ in reversed(stack) for e in p]
                    self._failed(failure)
                    return 0, [], rest
                if suspect and len(culprits) > max(1, len(batch) // 2):
                    # most events fail alone as well: the plugin is broken, not the events
                    rest = [event for event, _ in culprits] + [e for p, _ in reversed(stack) for e in p]
                    self._failed(failure)
                    if stored:
                        self.stats.last_success_at = time.monotonic()
                    return stored, [], rest
                continue
            # the store itself failed meanwhile: what was stored stays stored, the rest waits
            self._attempt_failed(failure, len(part), 1, 1)
            return stored, culprits, part + [e for p, _ in reversed(stack) for e in p]
        if stored:
            self._succeeded()
        elif culprits and not was_storing:
            self._failed(culprits[0][1])
            return 0, [], [event for event, _ in culprits]
        return stored, culprits, []

    def _dead_letter(self, culprits: list[tuple[TelemetryEvent, BaseException]]) -> None:
        """Move events the plugin refused for their content to the dead-letter file; count them as dropped."""
        if not culprits:
            return
        by_error: dict[str, list[TelemetryEvent]] = {}
        for item, exc in culprits:
            event = event_from_row(item) if type(item) is tuple else item  # the queue's rows, as events
            by_error.setdefault(f"{type(exc).__name__}: {exc}"[:2000], []).append(event)
        for error, events in by_error.items():
            log.error("sink %s: %d events refused for their content (%s) go to the dead-letter file %s: %s",
                      self.name, len(events), error, self.dead_letters.path(self.name),
                      ", ".join(e.id for e in events[:10]) + (" ..." if len(events) > 10 else ""))
            try:
                self.dead_letters.add(self.name, events, error)
            except OSError as exc:
                log.error("sink %s: cannot write the dead-letter file (%s); events %s are lost",
                          self.name, exc, ", ".join(e.id for e in events))
        self.stats.dead_lettered += len(culprits)
        self.lose(len(culprits), "invalid_at_store")

    def replay_dead_letters(self) -> tuple[int, list[str]]:
        """Try the plugin again with what it refused before; return how many it stored now and the errors left.

        Stored events leave the dead-letter file; the others stay as they were.  Called by
        ``TelemetryService.replay_dead_letters`` (``telemetry dead-letter replay``) once the cause is fixed.
        """
        # The events are in their stored form (encrypted, perhaps), which the gate is not for: the plugin
        # decides, and what it still refuses stays.
        records = self.dead_letters.records(self.name)
        events, errors = [], []
        for record in records:
            if record.event is None:
                errors.append(f"a record of {record.at} is not an event any more")
                continue
            events.append(record.event)
        if not events or not self._allowed():
            return 0, errors
        stored, culprits, rest = self._isolate(events, None, suspect=False)
        failed = {event.id for event, _ in culprits} | {event.id for event in rest}
        errors.extend(f"event {event.id}: {type(exc).__name__}: {exc}" for event, exc in culprits)
        if rest:
            errors.append(f"{len(rest)} events not tried: {self.stats.last_error}")
        done = {event.id for event in events} - failed
        self.dead_letters.take(self.name, lambda record: record.event is None or record.event.id not in done)
        return stored, errors

    # -- the flusher's side ----------------------------------------------------------------------

    def write(self, batch: list[TelemetryEvent]) -> None:
        """Store a batch, or journal it when the plugin is failing; report what happened."""
        if self.has_backlog and self.backlog:
            # Older batches wait in the journal: this one goes behind them, so replay keeps the order.
            if self._journal_or_lose(batch) is not None:
                self.replay()
            return
        if self.policy.persist_buffer:
            # Write-ahead (a batch the journal thread did not stage): durable in the journal first.
            kept = self._journal_or_lose(batch)
            if kept is not None:
                self.write_staged(*kept)
            return
        if not self._allowed():
            self._journal_or_lose(batch)
            return
        stored, rest = self._deliver(batch, retries=True)
        if stored:
            self._report("stored", stored)
        if rest:
            self._journal_or_lose(rest)

    def stage(self, batch: list[TelemetryEvent]) -> tuple[list[TelemetryEvent], int] | None:
        """With ``persist_buffer``: journal a batch ahead of storing it (on the journal thread).

        Returns what was journaled and its token, for :meth:`write_staged`; ``None`` when nothing could
        be kept (counted as lost).
        """
        kept = self._journal_or_lose(batch)
        if kept is not None:
            self._inflight.add(kept[1])
        return kept

    def write_staged(self, batch: list[TelemetryEvent], token: int) -> None:
        """Store a batch :meth:`stage` journaled, in its turn, and acknowledge it; it stays journaled if not stored."""
        try:
            journal = self._journal
            if journal is None or not journal.is_pending(token):
                return  # a replay already stored it
            if self._orphans or journal.head() != token:
                self._inflight.discard(token)
                self.replay()  # older batches first: the replay reaches this one, in order
                return
            if not self._allowed():
                return
            self._store_journaled(journal, token, batch, retries=True)
        finally:
            # whatever happened, the flusher no longer holds it: a replay from the journal takes it from here
            self._inflight.discard(token)

    def _store_journaled(self, journal: Journal, token: int, events: list[TelemetryEvent], *,
                         retries: bool) -> bool:
        """Store the journal's head batch and acknowledge it; ``False`` when some of it must wait."""
        key = (str(journal.directory), token)
        done = self._partial.get(key)
        todo = [e for e in events if e.id not in done] if done else events
        stored, rest = self._deliver(todo, retries=retries) if todo else (0, [])
        if stored:
            self._report("stored", stored)
        if rest and self._last_exc is not None and not is_transient(self._last_exc):
            stored_more, rest = self._after_repeated_failure(journal, token, rest, self._last_exc)
            stored += stored_more
        if not rest:
            journal.ack(token)
            self._partial.pop(key, None)
            self._head_failures = None
            return True
        if len(rest) < len(todo):
            left = {e.id for e in rest}
            self._partial[key] = (done or set()) | {e.id for e in todo if e.id not in left}
        return False

    def _after_repeated_failure(self, journal: Journal, token: int, rest: list[TelemetryEvent],
                                exc: BaseException) -> tuple[int, list[TelemetryEvent]]:
        """Count the head batch's failures; at ``dead_letter_after`` of the same kind, look for events at fault."""
        reason = f"{type(exc).__name__}: {exc}"
        where = str(journal.directory)
        previous = self._head_failures
        count = previous[3] + 1 if previous and previous[:3] == (where, token, reason) else 1
        self._head_failures = (where, token, reason, count)
        if count < self.policy.dead_letter_after:
            return 0, rest
        log.warning("sink %s: a journaled batch of %d events failed %d times with %s; looking for the events at fault",
                    self.name, len(rest), count, reason)
        self._head_failures = None
        stored, culprits, rest = self._isolate(rest, exc, suspect=True)
        if not stored and rest and self._probe_next(journal):
            # nothing of this batch stores, yet the plugin stores the next one: these events are at fault
            culprits, rest = culprits + [(event, self._last_exc or exc) for event in rest], []
        self._dead_letter(culprits)
        if stored:
            self._report("stored", stored)
        return stored, rest

    def _probe_next(self, journal: Journal) -> bool:
        """Store the batch after the journal's head, out of turn, to tell a broken plugin from a poisoned batch.

        Its ids are remembered (``_partial``), so when its turn comes it is acknowledged without being stored or
        counted again.  ``False`` when there is no next batch or the plugin refuses it too.
        """
        item = journal.peek(1)
        if item is None:
            return False
        events, token = item
        key = (str(journal.directory), token)
        done = self._partial.get(key, set())
        todo = [e for e in events if e.id not in done]
        self.stats.attempts += 1
        try:
            self._store(todo)
        except Exception as exc:
            self._failed(exc)
            return False
        self._succeeded()
        self._report("stored", len(todo))
        self._partial[key] = done | {e.id for e in todo}
        return True

    def _journal_or_lose(self, batch: list[TelemetryEvent]) -> tuple[list[TelemetryEvent], int] | None:
        """Append ``batch`` (or the part of it that fits) to the journal; return what was kept and its token."""
        policy = self.policy
        if not (policy.buffer_on_error or policy.persist_buffer):
            self.lose(len(batch), "storage_error")
            return None
        batch = events_of(batch)  # the journal holds events (the queue may have handed rows)
        try:
            if self._journal is None:
                self._journal = self._new_journal()
            room = policy.buffer_size - self.backlog
            if room < len(batch):
                # keep the oldest events that fit; the rest are counted as lost
                log.error("sink %s: the journal holds %d events (buffer_size %d); %d events lost",
                          self.name, self.backlog, policy.buffer_size, len(batch) - max(room, 0))
                self.lose(len(batch) - max(room, 0), "buffer_full")
                batch = batch[:max(room, 0)]
                if not batch:
                    return None
            try:
                token = self._journal.append(batch)
            except UnencodableEvent:
                # something no encoder can write: it goes to the dead-letter file (as text), the rest is kept
                writable = []
                for event in batch:
                    try:
                        ensure_encodable(event)
                    except UnencodableEvent as exc:
                        self._dead_letter([(event, exc)])
                        continue
                    writable.append(event)
                if not writable:
                    return None
                batch = writable
                token = self._journal.append(batch)
        except JournalFull as exc:
            log.error("sink %s: %s; %d events lost", self.name, exc, len(batch))
            self.lose(len(batch), "buffer_full")
            return None
        except OSError as exc:
            log.error("sink %s: cannot write the journal in %s (%s); %d events lost",
                      self.name, self.journal_dir, exc, len(batch))
            self.lose(len(batch), "buffer_error")
            return None
        return batch, token

    def lose(self, count: int, reason: str) -> None:
        """Count events this sink will never store, with the reason (reported as dropped for the primary)."""
        self.stats.lost += count
        self._report("lost", count, reason)

    def replay(self) -> bool:
        """Store journaled batches, oldest first, while the plugin accepts them; ``True`` when none is left.

        Stops at a batch the flusher holds in memory (``persist_buffer``): it writes that one itself, in turn.
        """
        while True:
            journal = self._orphans[0] if self._orphans else self._journal
            if journal is None:
                return True
            head = journal.head()
            if head is None:
                if journal is self._journal:
                    return True
                self._orphans.pop(0).close(remove_if_empty=True)
                continue
            if journal is self._journal and head in self._inflight:
                return True
            if not self._allowed():
                return False
            item = journal.peek()
            if item is None:
                continue
            events, token = item
            before = self.stats.replayed
            if not self._store_journaled(journal, token, events, retries=False):
                return False
            self.stats.replayed = before + len(events)

    def close(self) -> None:
        """Sync and release the journals; what they still hold is replayed by the next process."""
        for journal in [*self._orphans, *([self._journal] if self._journal else [])]:
            try:
                journal.close(remove_if_empty=True)
            except OSError as exc:
                log.error("sink %s: closing the journal %s failed: %s", self.name, journal.directory, exc)
        left = self.backlog
        if left:
            log.warning("sink %s: %d events stay in the journal under %s until a later start can store them",
                        self.name, left, self.journal_dir)

    def abandon(self) -> None:
        """Forget the journals without touching them (a forked child: the parent still owns them)."""
        for journal in [*self._orphans, *([self._journal] if self._journal else [])]:
            journal.abandon()
        self._orphans = []
        self._journal = None
        self._inflight = set()
        self._partial = {}
        if self.policy.persist_buffer:
            self._journal = self._new_journal()

    def _waiting_for_recovery(self) -> bool:
        """Whether journaled batches wait because storing them failed (not just their turn under persist_buffer)."""
        if not self.has_backlog or not self.backlog:
            return False
        if self._orphans or not self.policy.persist_buffer or self._journal is None:
            return True
        head = self._journal.head()
        return head is not None and head not in self._inflight

    def health(self) -> dict[str, Any]:
        """The sink's state for ``get_health_status``."""
        report: dict[str, Any] = {
            "circuit": self.state,
            "consecutive_failures": self.stats.consecutive_failures,
            "retried": self.stats.retried,
            "buffered": self.backlog,
            "replayed": self.stats.replayed,
            "lost": self.stats.lost,
            "dead_lettered": self.stats.dead_lettered,
        }
        issues = []
        if self.unavailable is not None:
            report["degraded"] = True
            issues.append(f"not open yet, retrying in the background: {self.unavailable}")
        if self.state != "closed":
            issues.append(f"circuit {self.state.replace('_', '-')}: {self.stats.last_error}")
        if self._waiting_for_recovery():
            issues.append(f"{self.backlog} events wait in the journal for the plugin to recover")
        report["issues"] = issues
        return report
