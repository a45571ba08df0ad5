"""OTLP metrics to telemetry events: each data point of an ``ExportMetricsServiceRequest`` becomes one metric event.

Plain dicts in the OTLP/JSON shape, as in :mod:`vibekit_telemetry.genai`, so the
HTTP (``/v1/metrics``) and gRPC (``MetricsService/Export``) receivers share one
mapping and the kernel needs no OpenTelemetry package.  A point of the metric
``name`` becomes the custom metric event that ``define_metric``,
``metric_series`` and ``get_metrics()["custom"]`` already read::

    {"category": "metrics", "action": name, "value": <number>, "timestamp": <point time, ms>,
     "metadata": {<point attributes>, "kind": ..., "unit": ..., ...}}

``kind`` is ``gauge``, ``sum``, ``histogram``, ``exponential_histogram`` or
``summary``; metadata also holds ``temporality`` (``delta`` or ``cumulative``, as
sent), ``start_time`` (ms: where the interval the value covers begins),
``service.name`` and ``otel.scope.name``.  The value:

* **gauge**: the point's value.
* **sum**: a delta sum's value; a *cumulative monotonic* sum (a counter with the
  SDK's default temporality) is stored as its **change since the series'
  previous point** (metadata ``total`` keeps the running total), so values add
  up across points and minutes like deltas; a cumulative *non-monotonic* sum
  (an UpDownCounter) is a level and is stored as it is.
* **histogram**: the **sum** of the measurements in the interval, with
  ``count``, ``sum``, ``min``, ``max``, ``bucket_counts`` and ``explicit_bounds`` in
  metadata.  The sum, not the mean, because it adds up: with the default
  metric type (counter) ``metric_series("gen_ai.client.token.usage")`` is tokens
  per minute and ``get_metrics()["custom"][...].value`` the window's total; the
  mean is ``sum(value) / sum(metadata["count"])``.  Cumulative histograms are
  turned into deltas like sums (count, sum and buckets; ``min``/``max`` cover the
  whole series then and are left out of the converted points).
* **exponential_histogram**: as a histogram, with ``scale``, ``zero_count`` and
  the ``positive``/``negative`` buckets (left out of points converted from
  cumulative, whose scale may change from one point to the next).
* **summary**: the sum, with ``count`` and ``quantiles``; its count and sum are
  cumulative by definition and converted like a counter's.

The change since the previous point needs that point: :class:`MetricDeltas`
keeps the last one of each series in memory.  The first point of a series
counts whole when the series started after the receiver did (its
``startTimeUnixNano`` is later), and is only remembered otherwise: it then holds
everything since the application started, part of which a receiver that was
restarted has already stored.  A point of a cumulative series with no change is
not stored (it says nothing happened); nor is a point flagged
``NO_RECORDED_VALUE``.  Gauges are always stored; declare them with
``define_metric(name, "gauge")`` so series and windows show the last value
rather than the sum.

Event ids derive from the resource, scope, metric, attributes and the point's
times, so a retried export stores nothing twice (storage ignores a known id;
:class:`MetricDeltas` answers a repeated cumulative point with the change it
gave the first time).  A point that cannot be read, or that the kernel refuses
(a time outside 2000-2200, a value that is not finite), is rejected alone and
counted for ``partialSuccess.rejectedDataPoints``.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import attrs
import orjson

from .genai import attributes
from .model import _ANY_TOKEN_KEY, TelemetryEvent

__all__ = ["CATEGORY", "Change", "MetricDeltas", "metric_request_events"]

#: the category of metric events (what ``define_metric`` and the analytics plugin read)
CATEGORY = "metrics"
#: the OTLP ``Metric`` field of each data kind, and the kind's name in event metadata
_KINDS = (("gauge", "gauge"), ("sum", "sum"), ("histogram", "histogram"),
          ("exponentialHistogram", "exponential_histogram"), ("summary", "summary"))
_DELTA, _CUMULATIVE = 1, 2
_TEMPORALITY = {_DELTA: "delta", _CUMULATIVE: "cumulative"}
#: ``DataPointFlags.FLAG_NO_RECORDED_VALUE``: a staleness marker, not a measurement
_NO_RECORDED_VALUE = 1

T = TypeVar("T")


@attrs.frozen
class Change:
    """What a cumulative point adds to its series: ``values`` since ``since_ns``; ``whole`` when nothing came before."""

    values: tuple[float, ...]
    since_ns: int
    whole: bool


@attrs.define
class _Last:
    start_ns: int
    time_ns: int
    totals: tuple[float, ...]
    change: Change | None


class MetricDeltas:
    """The last cumulative point of each series, so the next one is stored as the change since it.

    One per receiver, shared by its threads; at most ``max_series`` series are kept (the least
    recently seen is forgotten, and its next point is then treated as a first one).
    ``started_ns`` is when the receiver started: a first point whose series started earlier is
    only remembered, since what it counts may be stored already.
    """

    def __init__(self, max_series: int = 10_000, started_ns: int | None = None) -> None:
        self.max_series = max_series
        self.started_ns = time.time_ns() if started_ns is None else started_ns
        self._series: OrderedDict[bytes, _Last] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._series)

    def advance(self, series: bytes, start_ns: int, time_ns: int, totals: tuple[float, ...],
                build: Callable[[Change | None], T]) -> T:
        """``build(change)`` for the point ``totals`` at ``time_ns``; the point is remembered only if ``build``
        returns (so a point the kernel refuses leaves the series as it was).

        ``change`` is ``None`` for a first point that is only remembered.  The first of ``totals``
        (a sum's value, a histogram's count) tells a reset: when it goes down, or the start time
        moves, the source restarted and the point counts whole.  Raises ``ValueError`` for a point
        older than the series' last one (the change cannot be known).
        """
        with self._lock:
            last = self._series.get(series)
            if last is not None and last.start_ns == start_ns and last.time_ns == time_ns \
                    and len(last.totals) == len(totals):
                return build(last.change)  # a retried export: the same change, so the same event
            if last is None:
                change = Change(totals, start_ns, True) if start_ns and start_ns >= self.started_ns else None
            elif start_ns == last.start_ns and time_ns < last.time_ns:
                raise ValueError(f"timeUnixNano {time_ns} is older than the series' last point ({last.time_ns}): "
                                 "a cumulative point is read in order")
            elif start_ns != last.start_ns or len(totals) != len(last.totals) or totals[0] < last.totals[0]:
                change = Change(totals, start_ns, True)
            else:
                change = Change(tuple(now - before for now, before in zip(totals, last.totals)), last.time_ns, False)
            result = build(change)
            self._series[series] = _Last(start_ns, time_ns, totals, change)
            self._series.move_to_end(series)
            while len(self._series) > self.max_series:
                self._series.popitem(last=False)
            return result


def metric_request_events(data: Mapping[str, Any], deltas: MetricDeltas
                          ) -> tuple[list[TelemetryEvent], int, list[str]]:
    """The validated events of an ``ExportMetricsServiceRequest``, the number of rejected data points and why.

    ``deltas`` turns cumulative points into changes (one :class:`MetricDeltas` per receiver).
    The reasons name the metric, the point and the field.
    """
    events: list[TelemetryEvent] = []
    rejected, reasons = 0, []
    for resource_metrics in _items(data.get("resourceMetrics")):
        resource = attributes((resource_metrics.get("resource") or {}).get("attributes"))
        for scope_metrics in _items(resource_metrics.get("scopeMetrics")):
            given = scope_metrics.get("scope")
            given = given if isinstance(given, Mapping) else {}
            scope = {"name": str(given.get("name") or ""), "version": str(given.get("version") or "")}
            for metric in _items(scope_metrics.get("metrics")):
                found = next(((kind, metric[field]) for field, kind in _KINDS
                              if isinstance(metric.get(field), Mapping)), None)
                if found is None:
                    continue  # a metric with no data (or a kind newer than this mapping): nothing was measured
                kind, body = found
                points = list(_items(body.get("dataPoints")))
                name = metric.get("name")
                if not isinstance(name, str) or not name.strip():
                    rejected += len(points)
                    reasons.append(f"a {kind} metric with {len(points)} data points has no name")
                    continue
                unit = metric.get("unit") if isinstance(metric.get("unit"), str) else ""
                for index, point in enumerate(points):
                    try:
                        event = _point_event(kind, name, unit, body, point, resource, scope, deltas)
                    except (ValueError, TypeError) as exc:  # InvalidEventError is a ValueError
                        rejected += 1
                        reasons.append(f"metric {name!r} data point #{index}: {_reason(exc)}")
                        continue
                    if event is not None:
                        events.append(event)
    return events, rejected, reasons


def _point_event(kind: str, name: str, unit: str, body: Mapping[str, Any], point: Mapping[str, Any],
                 resource: dict[str, Any], scope: dict[str, str], deltas: MetricDeltas) -> TelemetryEvent | None:
    """The event of one data point, ``None`` when it adds nothing; raises ``ValueError`` naming the field."""
    if _int(point.get("flags"), "flags") & _NO_RECORDED_VALUE:
        return None
    time_ns = _int(point.get("timeUnixNano"), "timeUnixNano")
    if time_ns <= 0:
        raise ValueError("timeUnixNano is required (nanoseconds since the epoch)")
    start_ns = _int(point.get("startTimeUnixNano"), "startTimeUnixNano")
    # token counts under their usage names would be added to sessions and rollups a second time
    labels = {k: v for k, v in attributes(point.get("attributes")).items() if v is not None and k not in _ANY_TOKEN_KEY}
    temporality = _TEMPORALITY.get(_int(body.get("aggregationTemporality"), "aggregationTemporality"))
    metadata: dict[str, Any] = dict(labels)
    metadata["kind"] = kind
    if unit:
        metadata["unit"] = unit
    if resource.get("service.name") is not None:
        metadata["service.name"] = resource["service.name"]
    if scope["name"]:
        metadata["otel.scope.name"] = scope["name"]
    identity: list[Any] = [resource, scope, name, kind, labels]
    totals: tuple[float, ...] | None = None  # what a cumulative point accumulates, first the one that tells a reset
    value: float | None
    if kind in ("gauge", "sum"):
        value = _number(point)
        if kind == "sum":
            metadata["monotonic"] = bool(body.get("isMonotonic"))
            if temporality == "cumulative" and metadata["monotonic"]:
                metadata["total"] = value
                totals = (value,)
    elif kind == "summary":
        temporality = "cumulative"  # a summary's count and sum always run from its start time
        metadata["count"] = count = _int(point.get("count"), "count")
        metadata["sum"] = value = _float(point.get("sum"), "sum", 0.0)
        metadata["quantiles"] = {_quantile(q.get("quantile")): _float(q.get("value"), "quantileValues.value")
                                 for q in _items(point.get("quantileValues"))}
        totals = (count, value)
    else:
        metadata["count"] = count = _int(point.get("count"), "count")
        value = _float(point.get("sum"), "sum")
        if value is not None:
            metadata["sum"] = value
        for key in ("min", "max"):
            if point.get(key) is not None:
                metadata[key] = _float(point[key], key)
        if kind == "histogram":
            metadata["explicit_bounds"] = bounds = [_float(b, "explicitBounds") for b in point.get("explicitBounds") or []]
            metadata["bucket_counts"] = buckets = [_int(n, "bucketCounts") for n in point.get("bucketCounts") or []]
            identity.append(bounds)  # other bounds, other buckets: another series
            extra: tuple[int, ...] = tuple(buckets)
        else:
            metadata["scale"] = _int(point.get("scale"), "scale")
            metadata["zero_count"] = _int(point.get("zeroCount"), "zeroCount")
            for side in ("positive", "negative"):
                part = point.get(side)
                if isinstance(part, Mapping) and part.get("bucketCounts"):
                    metadata[side] = {"offset": _int(part.get("offset"), f"{side}.offset"),
                                      "bucket_counts": [_int(n, f"{side}.bucketCounts") for n in part["bucketCounts"]]}
            extra = (metadata["zero_count"],)
        if temporality == "cumulative":
            totals = (count, value or 0.0, *extra)
    if temporality:
        metadata["temporality"] = temporality
    series = hashlib.blake2b(orjson.dumps(identity, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()
    event_id = hashlib.blake2b(series + f"\x1f{start_ns}\x1f{time_ns}".encode(), digest_size=16).hexdigest()

    def event(value: float | None, metadata: dict[str, Any], since_ns: int) -> TelemetryEvent:
        if since_ns:
            metadata["start_time"] = since_ns // 1_000_000
        return TelemetryEvent.from_dict({"id": event_id, "event_type": "custom", "category": CATEGORY, "action": name,
                                         "value": value, "timestamp": time_ns // 1_000_000, "metadata": metadata})

    if totals is None:
        return event(value, metadata, start_ns)

    def build(change: Change | None) -> TelemetryEvent | None:
        if change is None:
            return None  # the first point of a series older than the receiver: only remembered
        if change.whole:
            return event(value, dict(metadata), change.since_ns)
        if not change.values[0]:
            return None  # nothing happened in the interval
        out = dict(metadata)
        return event(_interval(kind, change.values, out), out, change.since_ns)

    return deltas.advance(series, start_ns, time_ns, totals, build)


def _interval(kind: str, values: tuple[float, ...], metadata: dict[str, Any]) -> float | None:
    """In place: a cumulative point's metadata for the interval since the series' previous point; its value."""
    if kind == "sum":
        return values[0]
    metadata["count"] = int(values[0])
    value = values[1] if "sum" in metadata or kind == "summary" else None
    if value is not None:
        metadata["sum"] = value
    if kind == "histogram":
        metadata["bucket_counts"] = [int(n) for n in values[2:]]
    elif kind == "exponential_histogram":
        metadata["zero_count"] = int(values[2])
        metadata.pop("positive", None)
        metadata.pop("negative", None)
    # the cumulative minimum and maximum cover the whole series, not the interval
    metadata.pop("min", None)
    metadata.pop("max", None)
    return value


def _number(point: Mapping[str, Any]) -> float:
    if point.get("asDouble") is not None:
        return _float(point["asDouble"], "asDouble")
    if point.get("asInt") is not None:
        return float(_int(point["asInt"], "asInt"))
    raise ValueError("a number data point needs asDouble or asInt")


def _int(value: Any, field: str) -> int:
    """An OTLP/JSON integer: a number, or a decimal string for 64-bit ones; absent is 0."""
    if value is None or value == "":
        return 0
    if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{field} must be an integer, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{field} must be an integer, got {value!r}") from None


def _float(value: Any, field: str, default: float | None = None) -> float | None:
    """An OTLP/JSON double: a number, or ``"NaN"``/``"Infinity"`` as protobuf's JSON writes them.

    Those two are read, not refused here: the kernel refuses a value that is not finite, naming the field.
    """
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{field} must be a number, got {value!r}")
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{field} must be a number, got {value!r}") from None


def _quantile(quantile: Any) -> str:
    number = _float(quantile, "quantileValues.quantile", 0.0)
    if not 0.0 <= number <= 1.0 or math.isnan(number):
        raise ValueError(f"quantileValues.quantile must be between 0 and 1, got {quantile!r}")
    return repr(number)


def _reason(exc: Exception) -> str:
    return str(exc).removeprefix("invalid event: ")


def _items(value: Any) -> Iterator[Mapping[str, Any]]:
    if isinstance(value, list):
        yield from (item for item in value if isinstance(item, Mapping))
