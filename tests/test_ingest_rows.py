"""The lean ingest path: rows queued instead of event objects, folded into sessions as rows."""

from __future__ import annotations

import gc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vibekit_telemetry import PluginError, TelemetryEvent, TelemetryService, hookimpl
from vibekit_telemetry.model import ROW_FIELDS, checked_row, event_from_row, fold_session_rows
from vibekit_telemetry_sqlite import SQLiteStorage


def _sqlite(tmp_path, **overrides):
    return TelemetryService(storage=[{"type": "sqlite", "options": {"path": str(tmp_path / "t.db")}}],
                            data_dir=str(tmp_path), stream_flush_interval=3_600_000, stream_batch_size=10**6,
                            **overrides)


def test_plain_events_are_queued_as_rows_the_collector_stops_tracking(tmp_path):
    with _sqlite(tmp_path) as t:
        t.track({"category": "c", "session_id": "s1", "event_type": "stream", "stream_data": "chunk",
                 "metadata": {"model": "m", "chunk": 1}})
        (row,) = list(t._pipeline._queue)
        assert type(row) is tuple and len(row) == len(ROW_FIELDS)
        gc.collect()  # the collector's first look at a tuple of atoms untracks it
        assert not gc.is_tracked(row)  # a backlog of rows costs full collections nothing
        t.flush()
        assert t.query(session_id="s1")[0].metadata == {"model": "m", "chunk": 1}


def test_a_before_track_hook_gets_events_and_its_result_is_queued(tmp_path):
    seen = []

    class Tagger:
        @hookimpl
        def before_track(self, event):
            seen.append(type(event))
            return TelemetryEvent.from_dict({**event.to_dict(), "label": "tagged"})

    with _sqlite(tmp_path, plugins=[Tagger()]) as t:
        t.track({"category": "c"})
        assert type(t._pipeline._queue[0]) is TelemetryEvent
        t.flush()
        assert seen == [TelemetryEvent] and t.query()[0].label == "tagged"


def test_after_track_after_store_and_live_streams_still_get_events(tmp_path):
    got: dict[str, list] = {"after_track": [], "after_store": []}

    class Watcher:
        @hookimpl
        def after_track(self, event):
            got["after_track"].append(event)

        @hookimpl
        def after_store(self, events):
            got["after_store"].extend(events)

    with _sqlite(tmp_path, plugins=[Watcher()]) as t:
        stream = t.create_event_stream()
        ids = [t.track({"category": "c", "value": i}) for i in range(3)]
        assert all(type(item) is tuple for item in t._pipeline._queue)  # neither hook runs before the queue
        t.flush()
        live = stream.get_nowait() if hasattr(stream, "get_nowait") else None
        for name in ("after_track", "after_store"):
            assert [type(e) for e in got[name]] == [TelemetryEvent] * 3
            assert [e.id for e in got[name]] == ids
        if live is not None:
            assert isinstance(live, TelemetryEvent)


def test_a_subclass_that_overrides_store_sees_every_batch(tmp_path):
    calls = []

    class Counting(SQLiteStorage):
        name = "counting"

        @hookimpl
        def store(self, events):
            calls.append(len(events))
            super().store(events)

    with TelemetryService(storage=[], plugins=[Counting(SQLiteStorage.Config(path=str(tmp_path / "c.db")))],
                          data_dir=str(tmp_path)) as t:
        for i in range(10):
            t.track({"category": "c", "value": i})
        t.flush()
        assert sum(calls) == 10 and len(t.query()) == 10


def test_store_rows_without_store_is_an_error(tmp_path):
    class RowsOnly:
        name = "rows-only"

        @hookimpl
        def store_rows(self, rows):
            pass

    with pytest.raises(PluginError, match="store_rows but not store"):
        TelemetryService(storage=[], plugins=[RowsOnly()], data_dir=str(tmp_path))


def test_track_validated_takes_what_the_gate_returned_and_nothing_else(tmp_path):
    with _sqlite(tmp_path) as t:
        row = checked_row({"category": "row"})
        event = TelemetryEvent.from_dict({"category": "event"})
        assert t.track_validated(row) == row[0]
        assert t.track_validated(event) == event.id
        with pytest.raises(ValueError):
            t.track_validated({"category": "dict"})
        t.flush()
        assert sorted(e.category for e in t.query()) == ["event", "row"]


_events = st.lists(
    st.fixed_dictionaries({
        "event_type": st.sampled_from(["start", "stream", "end", "error", "custom"]),
        "session_id": st.sampled_from(["a", "b", "c"]),
        "timestamp": st.integers(1_700_000_000_000, 1_700_000_100_000),
        "metadata": st.dictionaries(st.sampled_from(["model", "input_tokens", "output_tokens", "kind", "x"]),
                                    st.one_of(st.integers(0, 1000), st.sampled_from(["llm", "gpt", "tool"])),
                                    max_size=3),
        "status": st.sampled_from([None, "completed", "failed"]),
        "prompt": st.sampled_from([None, "hello"]),
        "error_message": st.sampled_from([None, "boom"]),
    }),
    min_size=1, max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(_events, st.integers(1, 5))
def test_folding_rows_in_batches_equals_folding_them_at_once(items, parts):
    rows = [checked_row({"category": "agent", **item}) for item in items]
    whole = fold_session_rows(rows, {})
    folded: dict = {}
    size = max(1, len(rows) // parts)
    for start in range(0, len(rows), size):
        folded.update(fold_session_rows(rows[start:start + size], folded))
    assert folded.keys() == whole.keys()
    for sid in whole:
        expected, got = whole[sid], folded[sid]
        # everything but the merged metadata, whose key order may differ, is exactly the same
        assert got[:14] == expected[:14] and got[15:] == expected[15:]
        assert got[14] == expected[14]


@settings(max_examples=25, deadline=None)
@given(_events)
def test_sqlite_rows_path_and_the_memory_store_agree_on_sessions(tmp_path_factory, items):
    tmp = tmp_path_factory.mktemp("agree")
    events = [event_from_row(checked_row({"category": "agent", **item})) for item in items]
    stores = [{"type": "sqlite", "options": {"path": str(tmp / "a.db")}}, {"type": "memory"}]
    sessions = []
    for storage in stores:
        with TelemetryService(storage=[storage], data_dir=str(tmp)) as t:
            for event in events:
                t.track(event)
            t.flush()
            sessions.append({s.id: s for s in t.get_sessions(limit=10)})
    assert sessions[0] == sessions[1]


_varied_events = st.lists(
    st.fixed_dictionaries({
        "event_type": st.sampled_from(["start", "stream", "end", "error", "custom"]),
        "session_id": st.sampled_from(["a", "b", "c"]),
        "category": st.sampled_from(["cat-1", "cat-2"]),
        "timestamp": st.integers(1_700_000_000_000, 1_700_000_000_020),  # few values: ties between ends
        "agent": st.sampled_from([None, "agent-1", "agent-2"]),
        "mode": st.sampled_from([None, "code", "chat"]),
        "parent_session_id": st.sampled_from([None, "p1"]),
        "metadata": st.dictionaries(st.sampled_from(["model", "input_tokens", "output_tokens", "kind", "x",
                                                     "user_id"]),
                                    st.one_of(st.integers(0, 1000), st.sampled_from(["llm", "gpt", "tool"])),
                                    max_size=3),
        "status": st.sampled_from([None, "completed", "failed"]),
        "prompt": st.sampled_from([None, "hello", "again"]),
        "error_message": st.sampled_from([None, "boom", ""]),
        "error_type": st.sampled_from([None, "Timeout"]),
    }),
    min_size=1, max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(_varied_events, st.data())
def test_a_delta_folded_apart_and_merged_into_the_stored_rows_equals_folding_it_in(items, data):
    """What the SQLite writer process (the parent folds, the child merges) and PostgreSQL (merged in SQL)
    rely on: merge_session_rows(fold_session_deltas(later), stored) == fold_session_rows(later, stored)."""
    from vibekit_telemetry.model import fold_session_deltas, merge_session_rows

    rows = [checked_row({k: v for k, v in item.items() if v is not None or k == "metadata"}, pack=data.draw(
        st.booleans())) for item in items]
    cut = data.draw(st.integers(0, len(rows)))
    stored = fold_session_rows(rows[:cut], {})
    expected = fold_session_rows(rows[cut:], stored)
    got = merge_session_rows(fold_session_deltas(rows[cut:]), stored)
    assert got.keys() == expected.keys()
    for sid in expected:
        assert got[sid][:14] == expected[sid][:14] and got[sid][15:] == expected[sid][15:], sid
        assert got[sid][14] == expected[sid][14] and list(got[sid][14]) == list(expected[sid][14])


def test_a_later_batch_s_end_at_the_same_millisecond_decides_the_status_as_folding_does():
    from vibekit_telemetry.model import fold_session_deltas, merge_session_rows

    first = [checked_row({"category": "c", "session_id": "s", "event_type": "end", "status": "completed",
                          "timestamp": 1_700_000_000_000})]
    later = [checked_row({"category": "c", "session_id": "s", "event_type": "end", "status": "failed",
                          "timestamp": 1_700_000_000_000})]
    stored = fold_session_rows(first, {})
    assert fold_session_rows(later, stored)["s"][4] == "failed"
    assert merge_session_rows(fold_session_deltas(later), stored)["s"][4] == "failed"
