"""Client-side batching for high-volume producers (the seed's ``createBatcher``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .model import TelemetryEvent
    from .service import BatchResult, TelemetryService


class Batcher:
    """Collect events and hand them to the service ``batch_size`` at a time or every ``flush_interval`` ms.

    Events the service refuses because its queue is full are offered again up to
    ``max_retries`` times with a growing pause; what is still refused after that
    is counted in ``dropped``.  Invalid events are counted in ``rejected`` and
    never retried.  Use it as a context manager or call ``close()``.
    """

    def __init__(self, service: TelemetryService, *, batch_size: int = 100, flush_interval: int = 1000,
                 max_retries: int = 3) -> None:
        if batch_size < 1 or flush_interval < 1 or max_retries < 0:
            raise ValueError("batch_size and flush_interval must be >= 1 and max_retries >= 0")
        self._service = service
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_retries = max_retries
        self.accepted = 0
        self.rejected = 0
        self.dropped = 0
        self._pending: list[TelemetryEvent | Mapping[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._timer = threading.Thread(target=self._tick, name="vibekit-telemetry-batcher", daemon=True)
        self._timer.start()

    def add(self, event: TelemetryEvent | Mapping[str, Any]) -> None:
        """Add one event; a full batch is handed over at once."""
        with self._lock:
            self._pending.append(event)
            full = len(self._pending) >= self.batch_size
        if full:
            self.flush()

    def flush(self) -> BatchResult | None:
        """Hand every pending event to the service now."""
        with self._lock:
            events, self._pending = self._pending, []
        if not events:
            return None
        result = self._service.track_batch(events)
        self.rejected += len(result.rejected)
        retry = [events[i] for i in result.dropped]
        self.accepted += len(result.accepted)
        for attempt in range(self.max_retries):
            if not retry:
                break
            time.sleep(0.01 * (2**attempt))
            again = self._service.track_batch(retry)
            self.accepted += len(again.accepted)
            retry = [retry[i] for i in again.dropped]
        self.dropped += len(retry)
        return result

    def _tick(self) -> None:
        while not self._stop.wait(self.flush_interval / 1000):
            self.flush()

    def close(self) -> None:
        """Flush what is pending and stop the interval timer."""
        self._stop.set()
        self.flush()

    def __enter__(self) -> Batcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
