"""The event model: validation, ids, times, tokens, sessions, filters."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from vibekit_telemetry import (
    InvalidEventError,
    InvalidQueryError,
    QueryFilter,
    TelemetryEvent,
    TokenUsage,
    decode_cursor,
    encode_cursor,
    new_id,
    span_ms,
    summarize_sessions,
    to_ms,
)


def test_ids_sort_by_creation_and_are_unique():
    ids = [new_id() for _ in range(5000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 5000
    assert new_id(1_000) < new_id(2_000)


def test_from_dict_fills_id_and_timestamp_and_accepts_seed_keys():
    event = TelemetryEvent.from_dict({"eventType": "stream", "sessionId": "s", "category": "c", "streamData": "x"})
    assert (event.event_type, event.session_id, event.stream_data) == ("stream", "s", "x")
    assert len(event.id) == 32 and event.timestamp > 1_700_000_000_000
    assert TelemetryEvent.from_dict({"category": "c"}).event_type == "custom"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"category": "c", "event_type": "bogus"}, "event_type"),
        ({"event_type": "custom"}, "category"),
        ({"category": ""}, "category"),
        ({"category": "c", "value": "3"}, "value"),
        ({"category": "c", "value": float("nan")}, "value"),
        ({"category": "c", "metadata": ["not", "a", "map"]}, "metadata"),
        ({"category": "c", "metadata": {"when": dt.datetime.now()}}, "metadata.when"),
        ({"category": "c", "metadata": {"x": {"y": [1, object()]}}}, "metadata.x.y[1]"),
        ({"category": "c", "timestamp": "yesterday-ish"}, "timestamp"),
        ({"category": "c", "colour": "red"}, "colour"),
        ({"category": "c", "event_type": "stream"}, "session_id"),
        ({"category": "c", "prompt": 42}, "prompt"),
    ],
)
def test_invalid_events_name_the_field(data, field):
    with pytest.raises(InvalidEventError) as info:
        TelemetryEvent.from_dict(data)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)
    assert field in str(info.value)


def test_timestamps_accept_datetimes_and_iso():
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    expected = int(when.timestamp() * 1000)
    assert TelemetryEvent.from_dict({"category": "c", "timestamp": when}).timestamp == expected
    assert TelemetryEvent.from_dict({"category": "c", "timestamp": "2026-01-02T03:04:05Z"}).timestamp == expected
    assert to_ms("2026-01-02T03:04:05Z") == expected
    assert to_ms(when.replace(tzinfo=None)) == expected
    assert to_ms("1h", now=10_000_000) == 10_000_000 - 3_600_000
    assert to_ms("30m", now=10_000_000) == 10_000_000 - 1_800_000
    assert to_ms("2d", now=500_000_000) == 500_000_000 - 2 * 86_400_000
    assert to_ms("now", now=5) == 5
    assert span_ms("1.5s") == 1500
    with pytest.raises(ValueError, match="30m"):
        to_ms("soon")


def test_token_usage_subsets_are_never_added_twice():
    usage = TokenUsage.from_metadata({"input_tokens": 1000, "output_tokens": 200, "cache_read_tokens": 800,
                                      "cache_creation_tokens": 100, "reasoning_tokens": 150})
    assert usage.total == 1200
    otel = TokenUsage.from_metadata({"gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 5})
    assert (otel.input, otel.output) == (10, 5)
    nested = TokenUsage.from_metadata({"usage": {"prompt_tokens": 7, "completion_tokens": 3}})
    assert nested.total == 10
    assert not TokenUsage.from_metadata({"model": "x"})
    assert (usage + otel).input == 1010


def _session_events():
    sid = "s"
    return [
        TelemetryEvent(event_type="start", category="claude", session_id=sid, agent="claude", mode="code",
                       prompt="p", timestamp=1000, metadata={"model": "m"}),
        TelemetryEvent(event_type="stream", category="claude", session_id=sid, stream_data="a", timestamp=1300),
        TelemetryEvent(event_type="stream", category="claude", session_id=sid, stream_data="b", timestamp=1350),
        TelemetryEvent(event_type="error", category="claude", session_id=sid, error_message="boom", timestamp=1400),
        TelemetryEvent(event_type="end", category="claude", session_id=sid, status="failed", timestamp=2000,
                       metadata={"input_tokens": 50, "output_tokens": 9}),
    ]


def test_session_summary_does_not_depend_on_batch_order():
    events = _session_events()
    whole = summarize_sessions(events, {})["s"]
    assert (whole.status, whole.duration_ms, whole.ttft_ms, whole.stream_count, whole.error_count) == ("failed", 1000, 300, 2, 1)
    assert whole.tokens.total == 59 and whole.metadata == {"model": "m", "input_tokens": 50, "output_tokens": 9}
    rng = random.Random(3)
    for _ in range(20):
        shuffled = events[:]
        rng.shuffle(shuffled)
        state: dict = {}
        for event in shuffled:
            state.update(summarize_sessions([event], state))
        s = state["s"]
        assert (s.status, s.started_at, s.ended_at, s.first_stream_at, s.event_count, s.tokens.total) == (
            "failed", 1000, 2000, 1300, 5, 59)


def test_query_filter_builds_from_seed_shapes():
    flt = QueryFilter.build({"eventType": "stream", "timeRange": {"start": 5, "end": 9}}, limit=3)
    assert (flt.event_type, flt.since, flt.until, flt.limit) == ("stream", 5, 9, 3)
    assert QueryFilter.build(session_ids="a,b").session_ids == ("a", "b")
    with pytest.raises(InvalidQueryError, match="colour"):
        QueryFilter.build(colour="red")
    with pytest.raises(InvalidQueryError, match="order"):
        QueryFilter(order="sideways")
    with pytest.raises(InvalidQueryError, match="limit"):
        QueryFilter(limit=-1)


def test_cursor_round_trip_and_errors():
    event = TelemetryEvent(event_type="custom", category="c", timestamp=123)
    assert decode_cursor(encode_cursor(event)) == (123, event.id)
    with pytest.raises(InvalidQueryError, match="cursor"):
        QueryFilter(cursor="%%%not-a-cursor")


def test_filter_matches():
    event = TelemetryEvent(event_type="stream", category="c", session_id="s", stream_data="Hello World",
                           metadata={"model": "m", "n": 1}, timestamp=50)
    assert QueryFilter(category="c", text="hello", metadata={"model": "m"}, since=10, until=60).matches(event)
    assert not QueryFilter(metadata={"n": 2}).matches(event)
    assert not QueryFilter(since=51).matches(event)
    assert not QueryFilter(session_ids=("x",)).matches(event)
