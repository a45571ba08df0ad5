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

from .errors import ConfigError, StorageError
from .journal import Journal, JournalFull
from .model import TelemetryEvent

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


@attrs.define
class SinkStats:
    """What one sink did, for health and metrics."""

    attempts: int = 0
    retried: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    replayed: int = 0
    lost: int = 0
    last_error: str | None = None


class GuardedSink:
    """One storage plugin behind retries, a circuit breaker and an error journal.

    ``store`` calls the plugin; ``report`` receives ``("stored", n)`` (replays
    included) and ``("lost", n, reason)``;
    ``emit`` publishes the service events (``connection:error``,
    ``circuit:open``, ``circuit:half_open``, ``circuit:close``).  Only the
    flusher thread calls :meth:`write` and :meth:`replay`.
    """

    def __init__(self, name: str, store: Callable[[list[TelemetryEvent]], None], policy: ReliabilityConfig,
                 journal_dir: Path, *, report: Callable[..., None], emit: Callable[[str, Any], None],
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.name = name
        self.policy = policy
        self.journal_dir = journal_dir
        self._store = store
        self._report = report
        self._emit = emit
        self._sleep = sleep
        self.stats = SinkStats()
        self.state: Literal["closed", "open", "half_open"] = "closed"
        self._opened_at = 0.0
        self._journal: Journal | None = None
        self._orphans: list[Journal] = []
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
        """Events waiting in journals for this plugin."""
        own = self._journal.pending_events if self._journal is not None else 0
        return own + sum(j.pending_events for j in self._orphans)

    def _new_journal(self) -> Journal:
        return Journal.create(self.journal_dir, **self._journal_options)

    def _allowed(self) -> bool:
        """Whether the plugin may be called now (moving an open circuit to half-open when its timeout passed)."""
        if self.state != "open":
            return True
        if time.monotonic() - self._opened_at >= self.policy.circuit_breaker.timeout / 1000:
            self.state = "half_open"
            log.info("sink %s: circuit half-open, probing", self.name)
            self._emit("circuit:half_open", {"plugin": self.name})
            return True
        return False

    def _succeeded(self) -> None:
        self.stats.consecutive_failures = 0
        if self.state != "closed":
            self.state = "closed"
            log.warning("sink %s: circuit closed, the plugin accepts writes again", self.name)
            self._emit("circuit:close", {"plugin": self.name})

    def _failed(self, exc: Exception) -> None:
        self.stats.failures += 1
        self.stats.consecutive_failures += 1
        self.stats.last_error = f"{type(exc).__name__}: {exc}"
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

    def _attempt(self, batch: list[TelemetryEvent], *, retries: bool) -> bool:
        """Call the plugin, retrying with backoff while allowed; ``True`` once it stored the batch."""
        retry = self.policy.retry
        attempts = retry.max_attempts if retries and retry.enabled and self.state == "closed" else 1
        for attempt in range(1, attempts + 1):
            self.stats.attempts += 1
            if attempt > 1:
                self.stats.retried += 1
            try:
                self._store(batch)
            except Exception as exc:
                self._failed(exc)
                log.warning("sink %s: attempt %d/%d to store %d events failed: %s",
                            self.name, attempt, attempts, len(batch), self.stats.last_error)
                self._emit("connection:error", StorageError(
                    f"storage plugin {self.name!r} failed to store {len(batch)} events: {type(exc).__name__}: {exc}"))
                if self.state == "open" or attempt == attempts:
                    return False
                self._sleep(retry.delay(attempt))
                continue
            self._succeeded()
            return True
        return False

    # -- the flusher's side ----------------------------------------------------------------------

    def write(self, batch: list[TelemetryEvent]) -> None:
        """Store a batch, or journal it when the plugin is failing; report what happened."""
        if self.backlog:
            # Older batches wait in the journal: this one goes behind them, so replay keeps the order.
            if self._journal_or_lose(batch) is not None:
                self.replay()
            return
        if self.policy.persist_buffer:
            # Write-ahead: durable in the journal first, then stored and acknowledged.
            kept = self._journal_or_lose(batch)
            if kept is None:
                return
            batch, token = kept
            if self._allowed() and self._attempt(batch, retries=True):
                assert self._journal is not None
                self._journal.ack(token)
                self._report("stored", len(batch))
            return
        if self._allowed() and self._attempt(batch, retries=True):
            self._report("stored", len(batch))
            return
        self._journal_or_lose(batch)

    def _journal_or_lose(self, batch: list[TelemetryEvent]) -> tuple[list[TelemetryEvent], int] | None:
        """Append ``batch`` (or the part of it that fits) to the journal; return what was kept and its token."""
        policy = self.policy
        if not (policy.buffer_on_error or policy.persist_buffer):
            self._lose(len(batch), "storage_error")
            return None
        try:
            if self._journal is None:
                self._journal = self._new_journal()
            room = policy.buffer_size - self.backlog
            if room < len(batch):
                # keep the oldest events that fit; the rest are counted as lost
                log.error("sink %s: the journal holds %d events (buffer_size %d); %d events lost",
                          self.name, self.backlog, policy.buffer_size, len(batch) - max(room, 0))
                self._lose(len(batch) - max(room, 0), "buffer_full")
                batch = batch[:max(room, 0)]
                if not batch:
                    return None
            token = self._journal.append(batch)
        except JournalFull as exc:
            log.error("sink %s: %s; %d events lost", self.name, exc, len(batch))
            self._lose(len(batch), "buffer_full")
            return None
        except OSError as exc:
            log.error("sink %s: cannot write the journal in %s (%s); %d events lost",
                      self.name, self.journal_dir, exc, len(batch))
            self._lose(len(batch), "buffer_error")
            return None
        return batch, token

    def _lose(self, count: int, reason: str) -> None:
        self.stats.lost += count
        self._report("lost", count, reason)

    def replay(self) -> bool:
        """Store journaled batches, oldest first, while the plugin accepts them; ``True`` when none is left."""
        while True:
            journal = self._orphans[0] if self._orphans else self._journal
            if journal is None:
                return True
            item = journal.peek()
            if item is None:
                if journal is self._journal:
                    return True
                self._orphans.pop(0).close(remove_if_empty=True)
                continue
            if not self._allowed():
                return False
            events, token = item
            if not self._attempt(events, retries=False):
                return False
            journal.ack(token)
            self.stats.replayed += len(events)
            self._report("stored", len(events))

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
        if self.policy.persist_buffer:
            self._journal = self._new_journal()

    def health(self) -> dict[str, Any]:
        """The sink's state for ``get_health_status``."""
        report: dict[str, Any] = {
            "circuit": self.state,
            "consecutive_failures": self.stats.consecutive_failures,
            "retried": self.stats.retried,
            "buffered": self.backlog,
            "replayed": self.stats.replayed,
            "lost": self.stats.lost,
        }
        issues = []
        if self.state != "closed":
            issues.append(f"circuit {self.state.replace('_', '-')}: {self.stats.last_error}")
        if self.backlog:
            issues.append(f"{self.backlog} events wait in the journal for the plugin to recover")
        report["issues"] = issues
        return report
