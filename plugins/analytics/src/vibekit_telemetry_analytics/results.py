"""What ``get_metrics`` and ``get_insights`` return: attrs objects in the seed's shape, snake_case.

``metrics.events.per_minute``, ``metrics.sessions.active``, ``metrics.errors.rate``,
``metrics.performance.avg_latency`` / ``p50_latency`` / ``p95_latency`` /
``p99_latency`` (milliseconds) and the rest; ``to_dict()`` gives plain JSON.
"""

from __future__ import annotations

from typing import Any

import attrs

from .rollup import Agg, percentile


@attrs.frozen
class EventMetrics:
    total: int
    per_minute: float
    by_type: dict[str, int]


@attrs.frozen
class SessionMetrics:
    started: int
    completed: int
    failed: int
    ended: int
    active: int


@attrs.frozen
class ErrorMetrics:
    total: int
    #: error events per 100 events
    rate: float
    #: failed sessions per 100 ended sessions
    session_failure_rate: float
    top_messages: list[tuple[str, int]]


@attrs.frozen
class PerformanceMetrics:
    avg_latency: float | None
    p50_latency: float | None
    p95_latency: float | None
    p99_latency: float | None
    max_latency: float | None
    avg_ttft: float | None
    p50_ttft: float | None
    p95_ttft: float | None
    avg_stream_chunks: float | None


@attrs.frozen
class TokenMetrics:
    input: int
    output: int
    cache_read: int
    cache_creation: int
    reasoning: int
    total: int
    #: estimated US dollars (``None`` when no model of these tokens is in the price table)
    cost: float | None


@attrs.frozen
class CustomMetric:
    name: str
    type: str
    unit: str | None
    description: str | None
    count: int
    value: float | None
    sum: float
    min: float | None
    max: float | None
    avg: float | None
    p50: float | None
    p95: float | None
    p99: float | None


@attrs.frozen
class Breakdown:
    """The headline figures of one agent (category) or one model."""

    events: int
    sessions: SessionMetrics
    errors: ErrorMetrics
    performance: PerformanceMetrics
    tokens: TokenMetrics


@attrs.frozen
class Metrics:
    start: int
    end: int
    events: EventMetrics
    sessions: SessionMetrics
    errors: ErrorMetrics
    performance: PerformanceMetrics
    tokens: TokenMetrics
    cost: float | None
    by_category: dict[str, Breakdown]
    by_model: dict[str, Breakdown]
    custom: dict[str, CustomMetric]
    price_table_version: str
    #: what PII redaction replaced in the window, by type (empty without the pii plugin)
    redactions: dict[str, int] = attrs.field(factory=dict)
    #: events counted under ``other`` in ``by_category`` and ``by_model`` because more distinct names were
    #: seen than ``max_categories`` / ``max_models`` keep apart: ``{"category": n, "model": n}``
    folded_events: dict[str, int] = attrs.field(factory=dict)
    #: whether analytics is still counting in events stored before it counted them (its first start over an
    #: existing store, a crash, a price change): until it is done the figures are short of what storage holds
    catching_up: bool = False
    #: how far that got: ``{"since", "counted_up_to", "counted", "running"}`` (``None`` when not catching up);
    #: buckets before ``counted_up_to`` (epoch ms) are exact, ``counted`` stored events were counted in so far
    catch_up: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return attrs.asdict(self)


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def performance(agg: Agg) -> PerformanceMetrics:
    low, high = (agg.dur_min, agg.dur_max) if agg.dur_n else (0.0, 0.0)
    tlow, thigh = (agg.ttft_min, agg.ttft_max) if agg.ttft_n else (0.0, 0.0)
    return PerformanceMetrics(
        avg_latency=_round(agg.dur_sum / agg.dur_n) if agg.dur_n else None,
        p50_latency=_round(percentile(agg.dur, agg.dur_n, 0.50, low, high)),
        p95_latency=_round(percentile(agg.dur, agg.dur_n, 0.95, low, high)),
        p99_latency=_round(percentile(agg.dur, agg.dur_n, 0.99, low, high)),
        max_latency=_round(agg.dur_max) if agg.dur_n else None,
        avg_ttft=_round(agg.ttft_sum / agg.ttft_n) if agg.ttft_n else None,
        p50_ttft=_round(percentile(agg.ttft, agg.ttft_n, 0.50, tlow, thigh)),
        p95_ttft=_round(percentile(agg.ttft, agg.ttft_n, 0.95, tlow, thigh)),
        avg_stream_chunks=_round(agg.streams / agg.ended) if agg.ended else None,
    )


def errors(agg: Agg) -> ErrorMetrics:
    top = sorted(agg.messages.items(), key=lambda item: (-item[1], item[0]))[:5]
    return ErrorMetrics(
        total=agg.errors,
        rate=round(100 * agg.errors / agg.events, 3) if agg.events else 0.0,
        session_failure_rate=round(100 * agg.failed / agg.ended, 3) if agg.ended else 0.0,
        top_messages=top,
    )


def sessions(agg: Agg, active: int) -> SessionMetrics:
    return SessionMetrics(started=agg.started, completed=agg.completed, failed=agg.failed, ended=agg.ended,
                          active=active)


def tokens(agg: Agg, cost: float | None) -> TokenMetrics:
    t = agg.tokens
    return TokenMetrics(input=t[0], output=t[1], cache_read=t[2], cache_creation=t[3], reasoning=t[4],
                        total=t[0] + t[1], cost=None if cost is None else round(cost, 6))


def custom_metric(name: str, slot: list[Any] | None, definition: dict[str, Any] | None) -> CustomMetric:
    kind = (definition or {}).get("type", "counter")
    unit = (definition or {}).get("unit")
    description = (definition or {}).get("description")
    if not slot:
        return CustomMetric(name, kind, unit, description, 0, None, 0.0, None, None, None, None, None, None)
    count, total, low, high, last, _ts, hist = slot
    value = total if kind == "counter" else last if kind == "gauge" else total / count
    quantile = (lambda q: _round(percentile(hist, count, q, abs(low), abs(high)))) if kind == "histogram" and low >= 0 \
        else (lambda q: None)
    return CustomMetric(name, kind, unit, description, count, _round(value, 6), round(total, 6), low, high,
                        _round(total / count, 6), quantile(0.5), quantile(0.95), quantile(0.99))


@attrs.frozen
class Finding:
    """One insight: what, about whom, and the figures behind it."""

    kind: str
    subject: str
    message: str
    value: float | None = None
    details: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Insights:
    start: int
    end: int
    busiest_agents: list[Finding]
    busiest_models: list[Finding]
    slowest_agents: list[Finding]
    slowest_models: list[Finding]
    error_hot_spots: list[Finding]
    unfinished_sessions: list[Finding]
    changes: dict[str, dict[str, float | None]]
    summary: list[str]
    #: as in :class:`Metrics`: the findings are about a part of the store until the catch-up is done
    catching_up: bool = False
    catch_up: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return attrs.asdict(self)
