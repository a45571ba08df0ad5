"""``GET /metrics``: the service and the server in Prometheus text format, made with ``prometheus_client``.

Counters the server keeps itself (requests, ingest, streams, rejections, the
storage write histogram fed by the service's ``flush`` event) live in a
registry of their own, so two servers in one process never share numbers.
Service state (accepted, stored, dropped by reason, queue depth, open
sessions) and, with the analytics plugin, window gauges (latency percentiles,
error rate, tokens, cost, custom metrics) are read at scrape time.

The exposition passes ``promtool check metrics`` (a test runs it): latency
percentiles are a ``summary`` (the only type a ``quantile`` label belongs to),
and every token kind the analytics plugin counts has its ``kind`` label.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

if TYPE_CHECKING:
    from vibekit_telemetry import TelemetryService

log = logging.getLogger("vibekit_telemetry.api")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: the ``kind`` label of ``vibekit_window_tokens`` for each field of the analytics plugin's token counts
TOKEN_KINDS = ("input", "output", "cache_read", "cache_creation", "reasoning")
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServerMetrics:
    """The server's own counters and histograms, plus a collector that reads the service when scraped."""

    def __init__(self, service: TelemetryService, window: str = "5m") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        #: batches written so far (live metrics feeds compare it to know whether anything changed)
        self.flushes = 0
        r = self.registry
        self.requests = Counter("vibekit_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=r)
        self.request_seconds = Histogram("vibekit_http_request_duration_seconds", "Time to answer an HTTP request",
                                         ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.ingested = Counter("vibekit_api_ingested_events", "Events accepted over HTTP", ["source"], registry=r)
        self.rejected = Counter("vibekit_api_rejected_events", "Events refused as invalid over HTTP", ["source"], registry=r)
        self.refused = Counter("vibekit_api_refused_requests", "Requests refused before a handler ran", ["reason"], registry=r)
        self.rate_limit_errors = Counter("vibekit_api_rate_limit_storage_errors",
                                         "Requests let through unlimited because the rate-limit storage failed",
                                         registry=r)
        self.storage_seconds = Histogram("vibekit_storage_write_seconds", "Time to write one batch to storage",
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self.stored_batches = Counter("vibekit_storage_batches", "Batches written to storage", registry=r)
        self.stream_clients = Gauge("vibekit_stream_clients", "Connected live-stream subscribers", ["transport"], registry=r)
        self.stream_sent = Counter("vibekit_stream_sent_events", "Events delivered to live subscribers", ["transport"], registry=r)
        self.stream_skipped = Counter("vibekit_stream_skipped_events",
                                      "Events a slow live subscriber did not receive", ["transport"], registry=r)
        self.stream_disconnected = Counter("vibekit_stream_slow_disconnects",
                                           "Live subscribers disconnected for falling behind", ["transport"], registry=r)
        ProcessCollector(registry=r)
        r.register(_ServiceCollector(service, window))

    def on_flush(self, payload: Any) -> None:
        """The service's ``flush`` event: one batch written, with its storage time."""
        if isinstance(payload, dict) and "seconds" in payload:
            self.storage_seconds.observe(payload["seconds"])
            self.stored_batches.inc()
            self.flushes += 1

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)


def _metric_name(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


class _ServiceCollector:
    """Reads the service's health (and analytics, when installed) at scrape time."""

    def __init__(self, service: TelemetryService, window: str) -> None:
        self.service = service
        self.window = window
        self.analytics = bool(service.host.impls("get_metrics"))
        self.alerts = bool(service.host.impls("get_alerts"))

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        health = self.service.get_health_status()
        counters = health.counters
        for key, help_text in (("accepted", "Events accepted by track()"),
                               ("stored", "Events written by the first storage plugin"),
                               ("rejected", "Events refused as invalid"),
                               ("filtered", "Events a before_track plugin filtered out"),
                               ("sampled_out", "Events left out by sampling or the rate limit"),
                               ("retried", "Storage writes retried")):
            yield CounterMetricFamily(f"vibekit_events_{key}", help_text, value=counters.get(key, 0))
        dropped = CounterMetricFamily("vibekit_events_dropped", "Events not stored, by reason", labels=["reason"])
        for reason, count in sorted((counters.get("dropped_by_reason") or {}).items()):
            dropped.add_metric([reason], count)
        yield dropped
        for key, help_text in (("queued", "Events waiting in memory"), ("spilled", "Events waiting in the spill journal"),
                               ("buffered", "Events waiting in the error journal"),
                               ("held", "Events held by session sampling until their session ends"),
                               ("open_sessions", "Sessions started through this service and not ended")):
            yield GaugeMetricFamily(f"vibekit_pipeline_{key}", help_text, value=counters.get(key, 0))
        up = GaugeMetricFamily("vibekit_component_healthy", "1 when a plugin reports healthy", labels=["component"])
        for name, report in health.components.items():
            up.add_metric([name], 1.0 if report.get("healthy") else 0.0)
        yield up
        yield GaugeMetricFamily("vibekit_healthy", "1 when the whole service is healthy", value=1.0 if health.healthy else 0.0)
        yield GaugeMetricFamily("vibekit_storage_used_bytes", "Bytes the storage plugins use",
                                value=health.storage.get("used_bytes", 0))
        if self.alerts:
            counts = self.service.get_alerts(limit=1).get("counts") or {}
            alerts = CounterMetricFamily("vibekit_alerts", "Anomaly alerts by outcome (sent, failed, deduplicated, dropped)",
                                         labels=["outcome"])
            for outcome, count in sorted(counts.items()):
                alerts.add_metric([outcome], count)
            yield alerts
        if self.analytics:
            try:
                yield from self._analytics()
            except Exception as exc:  # a scrape must still answer: report the failure as a gauge
                log.warning("analytics metrics failed in /metrics: %s", exc)
                yield GaugeMetricFamily("vibekit_analytics_up", "1 when analytics answered this scrape", value=0.0)

    def _analytics(self) -> Iterator[Metric]:
        metrics = self.service.get_metrics(self.window)
        yield GaugeMetricFamily("vibekit_analytics_up", "1 when analytics answered this scrape", value=1.0)
        window = f" over the last {self.window}"
        yield GaugeMetricFamily("vibekit_active_sessions", "Sessions started and not ended (analytics)",
                                value=metrics.sessions.active)
        yield GaugeMetricFamily("vibekit_window_events_per_minute", "Events per minute" + window,
                                value=metrics.events.per_minute)
        yield GaugeMetricFamily("vibekit_window_error_rate", "Error events per 100 events" + window,
                                value=metrics.errors.rate)
        # quantiles over a sliding window are what a summary holds; its _sum and _count would be counters since
        # the start, which a window's figures are not (they go down), so they are left out, as the format allows
        latency = Metric("vibekit_window_latency_seconds", "Session duration percentiles" + window, "summary")
        perf = metrics.performance
        for quantile, value in (("0.5", perf.p50_latency), ("0.95", perf.p95_latency), ("0.99", perf.p99_latency)):
            if value is not None:
                latency.add_sample("vibekit_window_latency_seconds", {"quantile": quantile}, value / 1000)
        yield latency
        ttft = GaugeMetricFamily("vibekit_window_ttft_seconds", "Average time to first chunk" + window, labels=[])
        if perf.avg_ttft is not None:
            ttft.add_metric([], perf.avg_ttft / 1000)
        yield ttft
        tokens = GaugeMetricFamily("vibekit_window_tokens", "Tokens by model and kind" + window, labels=["model", "kind"])
        cost = GaugeMetricFamily("vibekit_window_cost_usd", "Estimated cost by model" + window, labels=["model"])
        for model, breakdown in sorted(metrics.by_model.items()):
            for kind in TOKEN_KINDS:
                tokens.add_metric([model, kind], getattr(breakdown.tokens, kind))
            if breakdown.tokens.cost is not None:
                cost.add_metric([model], breakdown.tokens.cost)
        yield tokens
        yield cost
        custom = GaugeMetricFamily("vibekit_custom_metric", "Custom metrics (define_metric)" + window,
                                   labels=["metric", "type", "stat"])
        for name, metric in sorted(metrics.custom.items()):
            for stat in ("count", "sum", "value", "avg", "p95"):
                value = getattr(metric, stat)
                if value is not None:
                    custom.add_metric([_metric_name(name), metric.type, stat], float(value))
        yield custom
