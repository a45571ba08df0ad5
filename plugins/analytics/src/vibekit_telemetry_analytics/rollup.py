"""Rollups: per-minute and per-hour aggregates of events, by category and by model.

Every stored batch updates the aggregates of the minutes and hours its events
fall in (``Rollups.add``); a window's metrics merge at most a few hundred of
them (whole hours in the middle, minutes at the edges), so answering does not
depend on how many events are stored.  Durations are kept in log-spaced
histograms (2% wide bins) so percentiles merge exactly across buckets, within
2% of the true value.

Categories and models are chosen by whoever ingests, so a bucket keeps an
aggregate of its own for at most ``max_categories`` categories and
``max_models`` models (the first ones it sees); the events of any further name
are counted under ``other``, and once more under ``("folded", kind)`` so how
much was folded is known.  Totals are unaffected: the ``("all", "")`` aggregate
counts every event.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

from vibekit_telemetry import TelemetryEvent, TokenUsage

from .prices import Price, PriceTable

log = logging.getLogger("vibekit_telemetry.analytics")

MINUTE = 60_000
HOUR = 3_600_000
_LOG_BASE = math.log(1.02)
_TOKEN_FIELDS = ("input", "output", "cache_read", "cache_creation", "reasoning")
_MAX_MESSAGES = 20
_FAILED = frozenset({"failed", "error", "errored", "timeout", "cancelled", "canceled", "aborted"})

#: dimension keys: ("all", ""), ("category", name), ("model", name), ("folded", "category"|"model")
Dim = tuple[str, str]
ALL: Dim = ("all", "")
#: the name under which a bucket counts the categories or models past its limit
OTHER = "other"
#: the dimension kind of the aggregates that count only what was folded into OTHER
FOLDED = "folded"


def model_of(metadata: dict[str, Any]) -> str | None:
    """The model an event names in its metadata (plain or OpenTelemetry GenAI keys)."""
    if not metadata:
        return None
    for key in ("model", "gen_ai.request.model", "gen_ai.response.model", "model_name"):
        value = metadata.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def hist_bin(value: float) -> int:
    """The histogram bin of a non-negative value (bin 0 holds everything under 1)."""
    return int(math.log(value) / _LOG_BASE) + 1 if value >= 1 else 0


def bin_value(index: int) -> float:
    """A representative value of a bin (its geometric middle)."""
    return math.exp((index - 0.5) * _LOG_BASE) if index else 0.5


def percentile(hist: dict[int, int], count: int, q: float, low: float, high: float) -> float | None:
    """The ``q`` quantile of a histogram holding ``count`` values between ``low`` and ``high``."""
    if not count:
        return None
    rank = q * count
    seen = 0
    for index in sorted(hist):
        seen += hist[index]
        if seen >= rank:
            return min(max(bin_value(index), low), high)
    return high


def is_failed(status: str | None) -> bool:
    """Whether a session's end status means it failed."""
    return bool(status) and status.lower() in _FAILED  # type: ignore[union-attr]


class Agg:
    """The aggregate of one bucket (a minute or an hour) for one dimension."""

    __slots__ = ("events", "types", "started", "completed", "failed", "ended", "errors", "messages",
                 "dur", "dur_n", "dur_sum", "dur_min", "dur_max", "ttft", "ttft_n", "ttft_sum", "ttft_min", "ttft_max",
                 "streams", "tokens", "failed_tokens", "cost", "custom", "redactions")

    def __init__(self) -> None:
        self.events = 0
        self.types: dict[str, int] = {}
        self.started = self.completed = self.failed = self.ended = self.errors = 0
        self.messages: dict[str, int] = {}
        self.dur: dict[int, int] = {}
        self.dur_n = 0
        self.dur_sum = 0.0
        self.dur_min = math.inf
        self.dur_max = 0.0
        self.ttft: dict[int, int] = {}
        self.ttft_n = 0
        self.ttft_sum = 0.0
        self.ttft_min = math.inf
        self.ttft_max = 0.0
        self.streams = 0  # stream chunks of the sessions that ended here
        self.tokens = [0, 0, 0, 0, 0]
        self.failed_tokens = [0, 0, 0, 0, 0]
        #: [US dollars of the tokens, dollars of the tokens of failed sessions, events whose tokens were priced]:
        #: priced when counted, so a category's or folded bucket's cost is a sum, not a search over models
        self.cost = [0.0, 0.0, 0]
        #: custom metric name -> [count, sum, min, max, last value, last timestamp, histogram]
        self.custom: dict[str, list[Any]] = {}
        #: what PII redaction replaced, by type (from the events' ``pii_redacted`` metadata)
        self.redactions: dict[str, int] = {}

    def add_duration(self, ms: float) -> None:
        b = hist_bin(ms)
        self.dur[b] = self.dur.get(b, 0) + 1
        self.dur_n += 1
        self.dur_sum += ms
        self.dur_min = min(self.dur_min, ms)
        self.dur_max = max(self.dur_max, ms)

    def add_ttft(self, ms: float) -> None:
        b = hist_bin(ms)
        self.ttft[b] = self.ttft.get(b, 0) + 1
        self.ttft_n += 1
        self.ttft_sum += ms
        self.ttft_min = min(self.ttft_min, ms)
        self.ttft_max = max(self.ttft_max, ms)

    def add_message(self, message: str) -> None:
        message = message[:200]
        if message in self.messages or len(self.messages) < _MAX_MESSAGES:
            self.messages[message] = self.messages.get(message, 0) + 1

    def add_custom(self, name: str, value: float, timestamp: int) -> None:
        slot = self.custom.get(name)
        if slot is None:
            slot = self.custom[name] = [0, 0.0, math.inf, -math.inf, value, timestamp, {}]
        slot[0] += 1
        slot[1] += value
        slot[2] = min(slot[2], value)
        slot[3] = max(slot[3], value)
        if timestamp >= slot[5]:
            slot[4], slot[5] = value, timestamp
        b = hist_bin(abs(value))
        slot[6][b] = slot[6].get(b, 0) + 1

    def merge(self, other: Agg) -> None:
        """Add ``other`` into this aggregate."""
        self.events += other.events
        for key, n in other.types.items():
            self.types[key] = self.types.get(key, 0) + n
        self.started += other.started
        self.completed += other.completed
        self.failed += other.failed
        self.ended += other.ended
        self.errors += other.errors
        for msg, n in other.messages.items():
            if msg in self.messages or len(self.messages) < _MAX_MESSAGES * 5:
                self.messages[msg] = self.messages.get(msg, 0) + n
        if other.dur_n:
            for b, n in other.dur.items():
                self.dur[b] = self.dur.get(b, 0) + n
            self.dur_n += other.dur_n
            self.dur_sum += other.dur_sum
            self.dur_min = min(self.dur_min, other.dur_min)
            self.dur_max = max(self.dur_max, other.dur_max)
        if other.ttft_n:
            for b, n in other.ttft.items():
                self.ttft[b] = self.ttft.get(b, 0) + n
            self.ttft_n += other.ttft_n
            self.ttft_sum += other.ttft_sum
            self.ttft_min = min(self.ttft_min, other.ttft_min)
            self.ttft_max = max(self.ttft_max, other.ttft_max)
        self.streams += other.streams
        for kind, n in other.redactions.items():
            self.redactions[kind] = self.redactions.get(kind, 0) + n
        mine, theirs = self.tokens, other.tokens
        for i in range(5):
            mine[i] += theirs[i]
        mine, theirs = self.failed_tokens, other.failed_tokens
        for i in range(5):
            mine[i] += theirs[i]
        cost, their_cost = self.cost, other.cost
        cost[0] += their_cost[0]
        cost[1] += their_cost[1]
        cost[2] += their_cost[2]
        for name, slot in other.custom.items():
            have = self.custom.get(name)
            if have is None:
                self.custom[name] = [slot[0], slot[1], slot[2], slot[3], slot[4], slot[5], dict(slot[6])]
                continue
            have[0] += slot[0]
            have[1] += slot[1]
            have[2] = min(have[2], slot[2])
            have[3] = max(have[3], slot[3])
            if slot[5] >= have[5]:
                have[4], have[5] = slot[4], slot[5]
            for b, n in slot[6].items():
                have[6][b] = have[6].get(b, 0) + n

    def to_json(self, *, messages: bool = True) -> dict[str, Any]:
        """A JSON-ready form (for the rollup file); ``messages=False`` leaves error messages out."""
        out = {name: getattr(self, name) for name in self.__slots__}
        if not messages:
            out["messages"] = {}
        for key in ("dur", "ttft"):
            out[key] = {str(b): n for b, n in out[key].items()}
        for key in ("dur_min", "ttft_min"):
            out[key] = None if math.isinf(out[key]) else out[key]
        out["custom"] = {name: [*slot[:6], {str(b): n for b, n in slot[6].items()}] for name, slot in self.custom.items()}
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Agg:
        """Read back :meth:`to_json`."""
        agg = cls()
        for name in cls.__slots__:
            if name in data:
                setattr(agg, name, data[name])
        agg.dur = {int(b): n for b, n in agg.dur.items()}
        agg.ttft = {int(b): n for b, n in agg.ttft.items()}
        agg.dur_min = math.inf if agg.dur_min is None else agg.dur_min
        agg.ttft_min = math.inf if agg.ttft_min is None else agg.ttft_min
        agg.custom = {name: [*slot[:6], {int(b): n for b, n in slot[6].items()}] for name, slot in agg.custom.items()}
        return agg


class OpenSession:
    """What analytics remembers of a session until it ends."""

    __slots__ = ("started_at", "category", "model", "first_stream_at", "streams", "tokens", "last_at", "errors")

    def __init__(self, started_at: int | None, category: str, model: str | None, last_at: int) -> None:
        self.started_at = started_at
        self.category = category
        self.model = model
        self.first_stream_at: int | None = None
        self.streams = 0
        self.tokens = [0, 0, 0, 0, 0]
        self.last_at = last_at
        self.errors = 0

    def to_json(self) -> list[Any]:
        return [self.started_at, self.category, self.model, self.first_stream_at, self.streams, self.tokens,
                self.last_at, self.errors]

    @classmethod
    def from_json(cls, data: list[Any]) -> OpenSession:
        state = cls(data[0], data[1], data[2], data[6])
        state.first_stream_at, state.streams, state.tokens, state.errors = data[3], data[4], list(data[5]), data[7]
        return state


class Bucket(dict[Dim, Agg]):
    """The aggregates of one minute or one hour by dimension, counting the names that have one of their own."""

    __slots__ = ("named",)

    def __init__(self) -> None:
        super().__init__()
        #: dimension kind -> how many names of that kind have an aggregate here (OTHER not included)
        self.named = {"category": 0, "model": 0}

    def __setitem__(self, dim: Dim, agg: Agg) -> None:
        # every insertion goes through here (the rollup file's loader too), so the count cannot drift
        if dim[0] in self.named and dim[1] != OTHER and dim not in self:
            self.named[dim[0]] += 1
        super().__setitem__(dim, agg)


class Rollups:
    """Minute and hour aggregates for every dimension, plus the sessions still open.

    ``prices`` prices tokens as they are counted; ``max_categories`` and ``max_models`` bound the names a
    bucket keeps an aggregate for (the rest are counted under :data:`OTHER`).  Not thread-safe by itself:
    the plugin serialises access.
    """

    def __init__(self, max_open_sessions: int = 100_000, *, prices: PriceTable | None = None,
                 max_categories: int = 500, max_models: int = 500) -> None:
        #: level ("m" or "h") -> bucket start -> dimension -> aggregate
        self.levels: dict[str, dict[int, Bucket]] = {"m": {}, "h": {}}
        self.prices = prices
        self.limits = {"category": max_categories, "model": max_models}
        #: kinds whose folding was already logged (once per process is enough to point at the setting)
        self._warned: set[str] = set()
        self.dirty: set[tuple[str, int]] = set()
        self.open: dict[str, OpenSession] = {}
        #: sessions that ended lately: an event that arrives after the end does not reopen them
        self.ended: OrderedDict[str, None] = OrderedDict()
        self.open_dirty = False
        self.max_open_sessions = max_open_sessions
        self.abandoned = 0

    def _aggs(self, ts: int, dims: Iterable[Dim]) -> Iterator[Agg]:
        for level, width in (("m", MINUTE), ("h", HOUR)):
            bucket = ts - ts % width
            by_dim = self.levels[level].get(bucket)
            if by_dim is None:
                by_dim = self.levels[level][bucket] = Bucket()
            self.dirty.add((level, bucket))
            for dim in dims:
                agg = by_dim.get(dim)
                if agg is None:
                    kind = dim[0]
                    limit = self.limits.get(kind)
                    if limit is not None and dim[1] != OTHER and by_dim.named[kind] >= limit:
                        dim = (kind, OTHER)
                        yield self._agg(by_dim, (FOLDED, kind))
                        self._warn(kind, level)
                    agg = self._agg(by_dim, dim)
                yield agg

    @staticmethod
    def _agg(by_dim: Bucket, dim: Dim) -> Agg:
        agg = by_dim.get(dim)
        if agg is None:
            agg = by_dim[dim] = Agg()
        return agg

    def _warn(self, kind: str, level: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning("more than %d distinct %s names in one %s: the rest are counted under %r "
                        "(analytics.max_%s raises the limit)", self.limits[kind], kind,
                        "minute" if level == "m" else "hour", OTHER, "categories" if kind == "category" else "models")

    def add(self, events: Iterable[TelemetryEvent], session_lookup: Any = None) -> None:
        """Fold stored events into the aggregates.

        ``session_lookup(session_id)`` returns a stored session (or ``None``) for
        ends of sessions that started before analytics saw them.
        """
        open_sessions = self.open
        for event in events:
            e = event.__dict__
            ts = e["timestamp"]
            kind = e["event_type"]
            category = e["category"]
            metadata = e["metadata"]
            sid = e["session_id"]
            state = open_sessions.get(sid) if sid else None
            model = model_of(metadata) or (state.model if state is not None else None)
            dims = [ALL, ("category", category)]
            if model:
                dims.append(("model", model))
            usage = TokenUsage.from_metadata(metadata) if metadata else None
            has_tokens = usage is not None and (usage.input or usage.output)
            price = self.prices.lookup(model) if model and self.prices is not None and (has_tokens or kind == "end") \
                else None
            dollars = None
            if has_tokens and price is not None:
                dollars = price.cost([usage.input, usage.output, usage.cache_read,  # type: ignore[union-attr]
                                      usage.cache_creation, usage.reasoning])  # type: ignore[union-attr]
            if kind == "start" and sid:
                if state is None:
                    state = open_sessions[sid] = OpenSession(ts, category, model, ts)
                    self._bound_open()
                else:
                    state.started_at = ts if state.started_at is None else min(state.started_at, ts)
                    state.model = state.model or model
                self.open_dirty = True
            elif sid and state is None and kind != "end" and sid not in self.ended:
                state = open_sessions[sid] = OpenSession(None, category, model, ts)
                self._bound_open()
            if state is not None:
                state.last_at = max(state.last_at, ts)
                if model and not state.model:
                    state.model = model
                self.open_dirty = True
            tally = metadata.get("sampled_out") if kind == "end" and metadata else None
            redacted = metadata.get("pii_redacted") if metadata else None
            for agg in self._aggs(ts, dims):
                agg.events += 1
                agg.types[kind] = agg.types.get(kind, 0) + 1
                if kind == "start":
                    agg.started += 1
                elif kind == "error":
                    agg.errors += 1
                    agg.add_message(e["error_message"] or e["error_type"] or "error")
                elif kind == "custom" and e["error_type"]:
                    agg.errors += 1
                    agg.add_message(e["error_message"] or e["error_type"])
                if has_tokens:
                    tokens = agg.tokens
                    tokens[0] += usage.input  # type: ignore[union-attr]
                    tokens[1] += usage.output  # type: ignore[union-attr]
                    tokens[2] += usage.cache_read  # type: ignore[union-attr]
                    tokens[3] += usage.cache_creation  # type: ignore[union-attr]
                    tokens[4] += usage.reasoning  # type: ignore[union-attr]
                    if dollars is not None:
                        cost = agg.cost
                        cost[0] += dollars
                        cost[2] += 1
                if isinstance(redacted, dict):
                    for rkind, n in redacted.items():
                        if isinstance(n, int):
                            agg.redactions[rkind] = agg.redactions.get(rkind, 0) + n
                if category == "metrics" and e["action"] and e["value"] is not None:
                    agg.add_custom(e["action"], float(e["value"]), ts)
            if state is not None:
                if kind == "stream":
                    state.streams += 1
                    if state.first_stream_at is None or ts < state.first_stream_at:
                        state.first_stream_at = ts
                elif kind == "error":
                    state.errors += 1
                if has_tokens:
                    for i, name in enumerate(_TOKEN_FIELDS):
                        state.tokens[i] += getattr(usage, name)
            if kind == "end" and sid:
                self._end(sid, e, ts, dims, state, tally, session_lookup, price)

    def _end(self, sid: str, e: dict[str, Any], ts: int, dims: list[Dim], state: OpenSession | None,
             tally: Any, session_lookup: Any, price: Price | None) -> None:
        self.open.pop(sid, None)
        self.open_dirty = True
        self.ended[sid] = None
        if len(self.ended) > self.max_open_sessions:
            self.ended.popitem(last=False)
        started = first_stream = None
        streams = 0
        tokens = [0, 0, 0, 0, 0]
        if state is not None:
            started, first_stream, streams, tokens = state.started_at, state.first_stream_at, state.streams, state.tokens
        elif session_lookup is not None:
            stored = session_lookup(sid)
            if stored is not None and stored.has_start:
                started, first_stream, streams = stored.started_at, stored.first_stream_at, stored.stream_count
                tokens = [getattr(stored.tokens, name) for name in _TOKEN_FIELDS]
        if isinstance(tally, dict):  # events sampling dropped from this session, counted back
            streams += int(tally.get("streams", 0))
            tally_first = tally.get("first_stream_at")
            if isinstance(tally_first, int) and (first_stream is None or tally_first < first_stream):
                first_stream = tally_first
        failed = is_failed(e["status"])
        # a failed session's tokens are priced once more here, so they can be left out of its cost at reading
        failed_dollars = price.cost(tokens) if failed and price is not None and any(tokens) else 0.0
        for agg in self._aggs(ts, dims):
            agg.ended += 1
            if failed:
                agg.failed += 1
                failed_tokens = agg.failed_tokens
                for i in range(5):
                    failed_tokens[i] += tokens[i]
                agg.cost[1] += failed_dollars
            else:
                agg.completed += 1
            agg.streams += streams
            if started is not None:
                agg.add_duration(max(0, ts - started))
                if first_stream is not None:
                    agg.add_ttft(max(0, first_stream - started))

    def _bound_open(self) -> None:
        if len(self.open) > self.max_open_sessions:
            oldest = min(self.open, key=lambda sid: self.open[sid].last_at)
            del self.open[oldest]
            self.abandoned += 1

    # -- reading ---------------------------------------------------------------------------------

    def window(self, start: int, end: int, *, minutes_from: int | None = None) -> dict[Dim, Agg]:
        """Every dimension's aggregate over ``[start, end)``: whole hours from the hour level, edges from minutes.

        ``minutes_from`` is the oldest minute still kept; an edge older than that is widened to its whole hour.
        """
        out: dict[Dim, Agg] = {}
        left_minutes = minutes_from is None or start >= minutes_from
        right_minutes = minutes_from is None or end - end % HOUR >= minutes_from
        first_hour = start + (-start % HOUR) if left_minutes else start - start % HOUR
        last_hour = end - end % HOUR if right_minutes else end + (-end % HOUR)
        if first_hour >= last_hour:
            if left_minutes and right_minutes:
                self._merge_level(out, "m", start - start % MINUTE, end, MINUTE)
            else:
                self._merge_level(out, "h", start - start % HOUR, end + (-end % HOUR), HOUR)
            return out
        if left_minutes:
            self._merge_level(out, "m", start - start % MINUTE, first_hour, MINUTE)
        self._merge_level(out, "h", first_hour, last_hour, HOUR)
        if right_minutes:
            self._merge_level(out, "m", last_hour, end, MINUTE)
        return out

    def _merge_level(self, out: dict[Dim, Agg], level: str, lo: int, hi: int, width: int) -> None:
        buckets = self.levels[level]
        if (hi - lo) // width > len(buckets):
            keys = [b for b in buckets if lo <= b < hi]
        else:
            keys = [b for b in range(lo, hi, width) if b in buckets]
        for bucket in keys:
            for dim, agg in buckets[bucket].items():
                have = out.get(dim)
                if have is None:
                    have = out[dim] = Agg()
                have.merge(agg)

    def series(self, dim: Dim, start: int, end: int, step: int) -> list[tuple[int, Agg | None]]:
        """Per-step aggregates of one dimension (``None`` where nothing happened)."""
        level, width = ("h", HOUR) if step % HOUR == 0 and not self._has_minutes(start) else ("m", MINUTE)
        buckets = self.levels[level]
        points: list[tuple[int, Agg | None]] = []
        for t in range(start, end, step):
            merged: Agg | None = None
            for b in range(t, min(t + step, end), width):
                agg = buckets.get(b, {}).get(dim)
                if agg is not None:
                    if merged is None:
                        merged = Agg()
                    merged.merge(agg)
            points.append((t, merged))
        return points

    def _has_minutes(self, since: int) -> bool:
        minutes = self.levels["m"]
        return bool(minutes) and min(minutes) <= since

    def drop_before(self, level: str, cutoff: int) -> list[int]:
        """Forget buckets of ``level`` that start before ``cutoff``; return their starts."""
        gone = [b for b in self.levels[level] if b < cutoff]
        for bucket in gone:
            del self.levels[level][bucket]
            self.dirty.discard((level, bucket))
        return gone
