"""Alert channels for anomalies: log, webhook (JSON POST) and Slack-compatible webhooks.

``analytics.alerts``::

    [analytics.alerts]
    enabled = true
    dedupe_window = "10m"            # the same metric and severity alerts once per window
    [[analytics.alerts.channels]]
    type = "webhook"                 # or "slack", "log"
    url = "https://example.com/hook"
    headers = { Authorization = { "$env" = "HOOK_TOKEN" } }
    timeout_ms = 5000
    max_attempts = 3

Alerts are sent from one background thread through a bounded queue, so a slow
or failing channel never delays tracking; failures are retried with backoff,
then logged and counted (see the analytics component in health).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

from vibekit_telemetry import Anomaly, ConfigError, format_ms, now_ms, span_ms

log = logging.getLogger("vibekit_telemetry.alerts")


@attrs.frozen
class Channel:
    """One destination."""

    type: str
    url: str | None = None
    headers: dict[str, str] = attrs.field(factory=dict)
    timeout_ms: int = 5000
    max_attempts: int = 3
    min_severity: str = "low"


_SEVERITY = {"low": 0, "medium": 1, "high": 2}

#: deliveries remembered for ``status()`` (the dashboard's alerts panel)
RECENT = 100


def _target(channel: Channel) -> str | None:
    """Where a channel sends, without what may be secret: a webhook URL's path and query often are the key."""
    if not channel.url:
        return None
    parts = urlsplit(channel.url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def payload(anomaly: Anomaly) -> dict[str, Any]:
    """The JSON body a webhook receives."""
    return {
        "type": "anomaly", "metric": anomaly.metric, "timestamp": anomaly.timestamp,
        "time": format_ms(anomaly.timestamp), "value": anomaly.value,
        "expected": [anomaly.expected_low, anomaly.expected_high], "severity": anomaly.severity,
        "score": anomaly.score, "description": anomaly.description, "detector": anomaly.detector,
    }


def slack_payload(anomaly: Anomaly) -> dict[str, Any]:
    """A Slack incoming-webhook message."""
    return {"text": f":rotating_light: *{anomaly.severity}* anomaly in `{anomaly.metric}` at "
                    f"{format_ms(anomaly.timestamp)}: {anomaly.description}"}


class AlertManager:
    """Deduplicate anomalies and deliver them to every channel from a background thread."""

    def __init__(self, channels: list[Channel], *, dedupe_window_ms: int = 600_000, queue_size: int = 1000) -> None:
        self.channels = channels
        self.dedupe_window_ms = dedupe_window_ms
        self._last: dict[tuple[str, str], int] = {}
        self._queue: queue.Queue[Anomaly | None] = queue.Queue(maxsize=queue_size)
        self.sent = 0
        self.failed = 0
        self.deduplicated = 0
        self.dropped = 0
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._recent_lock = threading.Lock()  # appended to by the tracking and the delivery threads
        self._thread = threading.Thread(target=self._run, name="vibekit-telemetry-alerts", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> AlertManager:
        """Build from the ``analytics.alerts`` table; a bad channel is a :class:`ConfigError`."""
        channels = []
        for index, raw in enumerate(config.get("channels") or [{"type": "log"}]):
            if not isinstance(raw, Mapping) or raw.get("type") not in ("log", "webhook", "slack"):
                raise ConfigError(f"analytics.alerts.channels[{index}]: type must be log, webhook or slack, got {raw!r}")
            unknown = set(raw) - {f.name for f in attrs.fields(Channel)}
            if unknown:
                raise ConfigError(f"analytics.alerts.channels[{index}]: unknown keys {sorted(unknown)}")
            channel = Channel(**raw)
            if channel.type != "log" and not channel.url:
                raise ConfigError(f"analytics.alerts.channels[{index}]: a {channel.type} channel needs a url")
            channels.append(channel)
        return cls(channels, dedupe_window_ms=span_ms(config.get("dedupe_window", "10m")))

    def send(self, anomaly: Anomaly) -> None:
        """Queue an anomaly for delivery unless the same metric and severity alerted within the window."""
        key = (anomaly.metric, anomaly.severity)
        last = self._last.get(key)
        if last is not None and abs(anomaly.timestamp - last) < self.dedupe_window_ms:
            self.deduplicated += 1
            self._remember(anomaly, None, "deduplicated")
            return
        self._last[key] = anomaly.timestamp
        try:
            self._queue.put_nowait(anomaly)
        except queue.Full:
            self.dropped += 1
            self._remember(anomaly, None, "dropped", "the alert queue was full")
            log.error("alert queue full: anomaly in %s not delivered", anomaly.metric)

    def _remember(self, anomaly: Anomaly, channel: Channel | None, outcome: str, error: str | None = None) -> None:
        entry = {"at": now_ms(), "metric": anomaly.metric, "timestamp": anomaly.timestamp,
                 "severity": anomaly.severity, "description": anomaly.description,
                 "channel": channel.type if channel else None, "outcome": outcome, "error": error}
        with self._recent_lock:
            self.recent.append(entry)

    def _run(self) -> None:
        import httpx

        with httpx.Client() as client:
            while True:
                anomaly = self._queue.get()
                if anomaly is None:
                    self._queue.task_done()
                    return
                try:
                    for channel in self.channels:
                        if _SEVERITY.get(anomaly.severity, 0) < _SEVERITY.get(channel.min_severity, 0):
                            continue
                        error = self._deliver(client, channel, anomaly)
                        if error is None:
                            self.sent += 1
                        else:
                            self.failed += 1
                        self._remember(anomaly, channel, "sent" if error is None else "failed", error)
                finally:
                    self._queue.task_done()

    def _deliver(self, client: Any, channel: Channel, anomaly: Anomaly) -> str | None:
        """``None`` when delivered, else why not (no URL in it: the URL may hold the key)."""
        if channel.type == "log":
            log.warning("anomaly: %s", anomaly.description)
            return None
        body = slack_payload(anomaly) if channel.type == "slack" else payload(anomaly)
        for attempt in range(1, channel.max_attempts + 1):
            try:
                response = client.post(channel.url, json=body, headers=channel.headers, timeout=channel.timeout_ms / 1000)
                if response.status_code < 300:
                    return None
                error = detail = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code != 429:
                    break  # a client error will not go away by retrying
            except Exception as exc:  # network errors, timeouts
                error, detail = type(exc).__name__, f"{type(exc).__name__}: {exc}"
            if attempt < channel.max_attempts:
                time.sleep(min(0.2 * 2 ** (attempt - 1), 5.0))
        error = f"{error} after {attempt} attempt{'s' if attempt > 1 else ''}"
        log.error("alert to %s channel %s failed: %s", channel.type, _target(channel), detail)
        return error

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until queued alerts were delivered (or given up)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def stats(self) -> dict[str, int]:
        """Counters for health."""
        return {"sent": self.sent, "failed": self.failed, "deduplicated": self.deduplicated, "dropped": self.dropped}

    def status(self, limit: int = 50) -> dict[str, Any]:
        """The channels (type, minimum severity and host only), the counters, and the latest deliveries, newest first."""
        with self._recent_lock:
            recent = list(self.recent)[::-1][:limit]
        return {"enabled": True, "dedupe_window_ms": self.dedupe_window_ms,
                "channels": [{"type": c.type, "target": _target(c), "min_severity": c.min_severity} for c in self.channels],
                "counts": self.stats(), "recent": recent}

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued, then stop the thread."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)
