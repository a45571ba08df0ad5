"""Hostile input and a failing environment: nothing accepted is lost, nothing breaks the application.

Each test reproduces a defect a hostile test found (issue 14) against real parts: real SQLite files, a
second process holding the database, a producer killed with SIGKILL, a journal left by a dead process.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vibekit_telemetry import InvalidEventError, StorageError, StorageUnavailableError, TelemetryService, hookimpl, now_ms
from vibekit_telemetry.cli import cli
from vibekit_telemetry.journal import Journal
from vibekit_telemetry.model import TelemetryEvent

FAST = {"retry": {"base_delay_ms": 1, "max_delay_ms": 5}, "circuit_breaker": {"threshold": 3, "timeout": 50}}


def _balanced(counters: dict) -> bool:
    parts = ("stored", "queued", "spilled", "buffered", "held", "sampled_out", "dropped")
    return counters["accepted"] == sum(counters[p] for p in parts)


# -- 1. the gate: what no store can hold is refused at track(), naming the field ------------------

HOSTILE = [
    ({"timestamp": 10**20}, "timestamp"),
    ({"timestamp": 1e20}, "timestamp"),
    ({"timestamp": 9223372036854775808}, "timestamp"),
    ({"timestamp": 1000}, "timestamp"),  # seconds or garbage, not epoch milliseconds
    ({"timestamp": float("inf")}, "timestamp"),
    ({"value": 10**20}, "value"),
    ({"value": float("nan")}, "value"),
    ({"metadata": {"n": 2**64}}, "metadata.n"),
    ({"metadata": {"deep": [1, {"x": -(2**63) - 1}]}}, "metadata.deep[1].x"),
    ({"metadata": {"f": float("inf")}}, "metadata.f"),
    ({"prompt": "\ud800"}, "prompt"),
    ({"metadata": {"note": "ok \udfff"}}, "metadata.note"),
    ({"metadata": {"\ud800": 1}}, "metadata.\\ud800"),
    ({"id": "x\nevent: anomaly\ndata: {}\n\n"}, "id"),
    ({"id": "x" * 300}, "id"),
    ({"session_id": "s\r\nforged"}, "session_id"),
    ({"category": "line\nbreak"}, "category"),
    ({"action": "a\u2028b"}, "action"),
]


@pytest.mark.parametrize(("fields", "field"), HOSTILE, ids=[f for _, f in HOSTILE])
def test_the_gate_refuses_what_no_store_can_hold_and_nothing_else_is_affected(telemetry, fields, field):
    good = [telemetry.track({"category": "good", "value": i}) for i in range(300)]
    with pytest.raises(InvalidEventError) as caught:
        telemetry.track({"category": "evil", **fields})
    assert caught.value.field == field
    good += [telemetry.track({"category": "good", "value": i}) for i in range(300)]
    telemetry.flush()
    assert sorted(e.id for e in telemetry.query(category="good", limit=1000)) == sorted(good)
    counters = telemetry.get_health_status().counters
    assert counters["rejected"] == 1 and counters["dropped"] == 0 and _balanced(counters)


def test_track_batch_keeps_the_good_events_around_values_out_of_range(telemetry):
    result = telemetry.track_batch([{"category": "ok", "value": 1}, {"category": "x", "timestamp": 10**20},
                                    {"category": "ok", "value": 2}, {"category": "x", "prompt": "\ud800"},
                                    {"category": "ok", "value": 3}])
    assert [(index, exc.field) for index, exc in result.rejected] == [(1, "timestamp"), (3, "prompt")]
    assert sorted(e.value for e in telemetry.query(category="ok")) == [1, 2, 3]


def test_a_before_track_plugin_cannot_smuggle_in_what_the_gate_refuses(in_tmp):
    class Overflowing:
        name = "overflowing"

        @hookimpl
        def before_track(self, event):
            import attrs

            return attrs.evolve(event, value=10**30) if event.category == "poison" else event

    with TelemetryService(plugins=[Overflowing()]) as t:
        ids = [t.track({"category": "fine"}) for _ in range(5)]
        assert t.track({"category": "poison"}) is None
        t.flush()
        counters = t.get_health_status().counters
        assert sorted(e.id for e in t.query(category="fine")) == sorted(ids)
    assert counters["dropped_by_reason"] == {"before_track_error": 1} and _balanced(counters)


# -- 1. defence in depth: a batch a store refuses is split, the culprits dead-lettered ----------------


def _poison_trigger(db_path):
    """A real SQLite constraint that refuses some content: events whose category is 'poison'."""
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TRIGGER refuse_poison BEFORE INSERT ON events WHEN NEW.category = 'poison' "
                 "BEGIN SELECT RAISE(ABORT, 'poison refused'); END")
    conn.commit()
    conn.close()


def test_a_batch_the_store_refuses_is_split_the_culprits_dead_lettered_the_rest_stored(in_tmp):
    db = in_tmp / "t.db"
    config = {"storage": [{"type": "sqlite", "options": {"path": str(db)}}], "stream_batch_size": 1000}
    with TelemetryService(**config) as t:
        t.track({"category": "warmup"})
    _poison_trigger(db)
    drops = []
    with TelemetryService(**config) as t:
        t.on("drop", drops.append)
        good, poison = [], []
        for i in range(600):
            if i in (7, 300, 301, 599):
                poison.append(t.track({"category": "poison", "value": i}))
            else:
                good.append(t.track({"category": "good", "value": i}))
        # past the gate on purpose: a value only the SQLite driver refuses (it cannot bind a 2**70 integer)
        smuggled = TelemetryEvent(event_type="custom", category="good", value=2**70)
        t._pipeline.put(smuggled)
        t.flush()
        stored = {e.id for e in t.query(category="good", limit=1000)}
        counters = t.get_health_status().counters
        health = t.get_health_status().components["sqlite"]
    assert stored == set(good)
    assert counters["dropped_by_reason"] == {"invalid_at_store": 5}
    assert counters["stored"] == 596 and counters["dead_letters"] == 5 and health["circuit"] == "closed"
    assert sum(d["count"] for d in drops if d["reason"] == "invalid_at_store") == 5
    letters = (in_tmp / ".vibekit" / "buffer" / "dead-letter" / "sqlite.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in letters]
    assert {r["event"]["id"] for r in records} == {*poison, smuggled.id}
    assert any("poison refused" in r["error"] for r in records)
    assert any(r["event"]["value"] == 2**70 for r in records)  # kept exactly, though no 64-bit encoder can


def test_dead_letter_list_replay_and_purge(in_tmp):
    db = in_tmp / ".vibekit" / "telemetry.db"
    with TelemetryService() as t:
        t.track({"category": "warmup"})
    _poison_trigger(db)
    with TelemetryService() as t:
        t.track({"category": "fine"})
        t.flush()  # the store is seen storing: what it refuses next is the events' fault
        ids = [t.track({"category": "poison", "value": i}) for i in range(3)]
    runner = CliRunner()
    listed = runner.invoke(cli, ["dead-letter", "list", "--format", "json"])
    assert listed.exit_code == 0, listed.output
    assert sorted(r["event"]["id"] for r in json.loads(listed.output)) == sorted(ids)
    table = runner.invoke(cli, ["dead-letter", "list"])
    assert "SQLite refused a value" in table.output and "Dead letters (3)" in table.output
    still = runner.invoke(cli, ["dead-letter", "replay"])  # the cause is still there: nothing moves
    assert still.exit_code == 1 and "stored 0, 3 left" in still.output
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER refuse_poison")
    conn.commit()
    conn.close()
    replayed = runner.invoke(cli, ["dead-letter", "replay"])
    assert replayed.exit_code == 0 and "sqlite: stored 3, 0 left" in replayed.output, replayed.output
    with TelemetryService() as t:
        assert sorted(e.id for e in t.query(category="poison")) == sorted(ids)
    assert runner.invoke(cli, ["dead-letter", "list", "--format", "json"]).output.strip() == "[]"
    with TelemetryService() as t:  # purge
        t._sinks["sqlite"].dead_letters.add("sqlite", [TelemetryEvent(event_type="custom", category="x")], "test")
    assert "1 dead letters" in runner.invoke(cli, ["dead-letter", "purge", "--yes"]).output
    assert runner.invoke(cli, ["dead-letter", "purge", "--yes"]).output.strip() == "no dead letters"


def test_a_journal_record_that_can_never_be_stored_no_longer_blocks_the_queue(in_tmp):
    """A dead process's journal holding a timestamp in [2**63, 2**64): orjson wrote it, SQLite can never store it."""
    parent = in_tmp / ".vibekit" / "buffer" / "sqlite"
    journal = Journal.create(parent, max_events=1000, max_bytes=10**7)
    now = int(time.time() * 1000)
    fine = [TelemetryEvent(event_type="custom", category="left", value=i, timestamp=now) for i in range(20)]
    evil = TelemetryEvent(event_type="custom", category="left", timestamp=2**63)
    # wider than 64 bits: orjson cannot write it, so the journal's standard-library path does (and must read it
    # back as the same integer, not a float)
    wide = TelemetryEvent(event_type="custom", category="left", metadata={"n": 2**70})
    journal.append(fine[:10])
    journal.append([*fine[10:15], evil, wide, *fine[15:]])
    journal.close(remove_if_empty=False)  # the owner is gone; its lock is free
    with TelemetryService() as t:
        later = [t.track({"category": "later", "value": i}) for i in range(10)]
        t.flush()
        left = {e.id for e in t.query(category="left", limit=100)}
        assert left == {e.id for e in fine}
        assert sorted(e.id for e in t.query(category="later")) == sorted(later)
        health = t.get_health_status()
        assert health.components["sqlite"]["circuit"] == "closed" and health.counters["buffered"] == 0
    assert not any(p.glob("seg-*") for p in parent.iterdir())
    letters = (in_tmp / ".vibekit" / "buffer" / "dead-letter" / "sqlite.jsonl").read_text()
    assert "9223372036854775808" in letters and str(2**70) in letters


class PickyStore:
    """A third-party store with a bug: it fails on one particular event, every time, with a RuntimeError."""

    name = "picky"

    def __init__(self):
        self.rows: dict[str, TelemetryEvent] = {}
        self.down = False

    @hookimpl
    def store(self, events):
        if self.down:
            raise ConnectionError("unreachable")
        if any(e.label == "cursed" for e in events):
            raise RuntimeError("KeyError in the plugin's own code")
        for event in events:
            self.rows.setdefault(event.id, event)

    @hookimpl
    def query(self, filter):
        return list(self.rows.values())


def test_a_batch_failing_the_same_way_again_and_again_is_searched_for_its_culprit(in_tmp):
    store = PickyStore()
    reliability = {**FAST, "circuit_breaker": {"threshold": 100, "timeout": 50}, "dead_letter_after": 3}
    with TelemetryService(storage=[], plugins=[store], reliability=reliability, stream_batch_size=1000) as t:
        ids = [t.track({"category": "c", "value": i, "label": "cursed" if i == 41 else None}) for i in range(100)]
        for _ in range(4):
            t.flush()  # the batch fails, is journaled, and is replayed at each drain
            if len(store.rows) == 99:
                break
        more = [t.track({"category": "c", "value": i}) for i in range(10)]
        t.flush()
        counters = t.get_health_status().counters
    assert set(store.rows) == set(ids[:41] + ids[42:] + more)
    assert counters["dropped_by_reason"] == {"invalid_at_store": 1} and _balanced(counters)


def test_a_broken_plugin_is_not_mistaken_for_bad_events(in_tmp):
    """Every event fails alone too: the plugin is at fault, so the batch stays journaled, nothing is dead-lettered."""

    class Broken(PickyStore):
        @hookimpl
        def store(self, events):
            if self.down:
                raise RuntimeError("the plugin's own bug")
            super().store(events)

    store = Broken()
    store.down = True
    reliability = {**FAST, "circuit_breaker": {"threshold": 100, "timeout": 50}, "dead_letter_after": 2}
    with TelemetryService(storage=[], plugins=[store], reliability=reliability) as t:
        ids = [t.track({"category": "c", "value": i}) for i in range(50)]
        for _ in range(4):
            t.flush()
        counters = t.get_health_status().counters
        assert counters["dropped"] == 0 and counters["buffered"] == 50
        store.down = False
        t.flush()
        assert set(store.rows) == set(ids)


# -- 1. a property: whatever is thrown at track(), the books balance --------------------------------

_anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(st.characters(codec=None), max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
_out_of_range = st.sampled_from([10**20, 2**63, 2**64, -(2**63) - 1, 1e20, 1e300, float("nan"), float("inf"),
                                 "\ud800", "a\udfffb", "x\nevent: anomaly", "", "1h", {"k": 2**64}, [1, {"f": 1e400}]])
# well-formed events carrying zero to two hostile fields: most reach the pipeline, some carry what no store holds
_base = st.fixed_dictionaries(
    {"category": st.sampled_from(["prop", "agent"]), "value": st.integers(-(2**40), 2**40) | st.floats(-1e9, 1e9)},
    optional={"metadata": st.dictionaries(st.text(max_size=4), st.integers() | st.text(), max_size=3),
              "prompt": st.text(st.characters(codec=None), max_size=30),
              "timestamp": st.integers(1_700_000_000_000, 1_800_000_000_000)},
)
_events = st.builds(
    lambda base, hostile: {**base, **hostile}, _base,
    st.dictionaries(st.sampled_from(["category", "event_type", "value", "timestamp", "metadata", "prompt", "label",
                                     "session_id", "id", "action", "sessionId", "bogus"]),
                    _anything | _out_of_range, max_size=2),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(_events, min_size=1, max_size=25))
def test_any_json_like_input_leaves_the_identity_intact_and_good_events_stored_once(tmp_path_factory, batch):
    path = tmp_path_factory.mktemp("prop")
    with TelemetryService(storage=[{"type": "sqlite", "options": {"path": str(path / "p.db")}}],
                          data_dir=str(path / "data")) as t:
        good = []
        for event in batch:
            try:
                event_id = t.track(event)
            except InvalidEventError:
                continue
            if event_id is not None:
                good.append(event_id)
        result = t.track_batch(batch)
        t.flush()
        counters = t.get_health_status().counters
        stored = [e.id for e in t.iter_events()]
    assert _balanced(counters), counters
    assert counters["dropped"] == 0
    assert len(stored) == len(set(stored))  # exactly once
    # an event given twice with the same id is the same event: stored once
    assert set(good) | set(result.accepted) == set(stored)


# -- 2. persist_buffer while the store is stalled: accepted events reach the journal regardless --------

LOCKER = textwrap.dedent(
    """
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
    conn.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    conn.execute("COMMIT")
    """
)

STALLED_PRODUCER = textwrap.dedent(
    """
    import sys, time
    from vibekit_telemetry import TelemetryService
    rate = float(sys.argv[2])
    t = TelemetryService(storage=[{"type": "sqlite", "options": {"path": sys.argv[1], "busy_timeout_ms": 1000}}],
                         stream_flush_interval=200, reliability={"persist_buffer": True})
    log = open("accepted.log", "w", buffering=1)
    print("started", flush=True)
    i = 0
    while True:
        event_id = t.track({"category": "stalled", "value": i})
        log.write(f"{event_id} {time.time()}\\n")
        i += 1
        if rate:
            time.sleep(1 / rate)
    """
)


@pytest.mark.parametrize("rate", [500, 0], ids=["500-per-s", "flat-out"])
def test_persist_buffer_loses_nothing_when_killed_while_the_store_is_stalled(in_tmp, rate):
    db = in_tmp / "stall.db"
    with TelemetryService(storage=[{"type": "sqlite", "options": {"path": str(db)}}]) as t:
        t.track({"category": "setup"})
    (in_tmp / "locker.py").write_text(LOCKER)
    (in_tmp / "producer.py").write_text(STALLED_PRODUCER)
    # the lock first: a producer writing flat out could otherwise keep the locker waiting (SQLite has no fair queue)
    locker = subprocess.Popen([sys.executable, "locker.py", str(db), "8"], stdout=subprocess.PIPE, text=True,
                              cwd=in_tmp)
    assert locker.stdout.readline().strip() == "locked"
    producer = subprocess.Popen([sys.executable, "producer.py", str(db), str(rate)], stdout=subprocess.PIPE,
                                text=True, cwd=in_tmp)
    try:
        assert producer.stdout.readline().strip() == "started"
        time.sleep(4)  # the store is stalled all along: the locker holds it for 8 s
        killed_at = time.time()
        producer.send_signal(signal.SIGKILL)
    finally:
        producer.kill()
        producer.wait()
        locker.wait(timeout=30)
    lines = [line.split() for line in (in_tmp / "accepted.log").read_text().splitlines() if line.count(" ") == 1]
    # accepted (track() returned an id; a flat-out producer is refused some once memory and spill are full)
    # more than one flush interval before the kill
    due = {event_id for event_id, at in lines if event_id != "None" and float(at) < killed_at - 0.2}
    assert len(due) > 500
    with TelemetryService(storage=[{"type": "sqlite", "options": {"path": str(db)}}]) as t:
        t.flush()
    conn = sqlite3.connect(db)
    rows = [r[0] for r in conn.execute("SELECT id FROM events WHERE category = 'stalled'")]
    assert len(rows) == len(set(rows))  # no duplicates
    assert due <= set(rows), f"{len(due - set(rows))} of {len(due)} accepted events lost"


# -- 3. a locked database at start-up: the application starts, telemetry catches up --------------------


def test_a_database_held_by_another_process_does_not_stop_the_application_from_starting(in_tmp):
    db = in_tmp / "held.db"
    options = {"path": str(db), "journal_mode": "delete", "busy_timeout_ms": 300}
    with TelemetryService(storage=[{"type": "sqlite", "options": options}]) as t:
        t.track({"category": "setup"})
    (in_tmp / "locker.py").write_text(LOCKER)
    locker = subprocess.Popen([sys.executable, "locker.py", str(db), "3"], stdout=subprocess.PIPE, text=True,
                              cwd=in_tmp)
    assert locker.stdout.readline().strip() == "locked"
    started = time.monotonic()
    t = TelemetryService(storage=[{"type": "sqlite", "options": options}], reliability={"startup_timeout_ms": 500})
    try:
        assert time.monotonic() - started < 1.5
        health = t.get_health_status()
        assert not health.healthy and health.components["sqlite"]["degraded"]
        assert any("not open yet" in issue for issue in health.issues)
        ids = [t.track({"category": "while-held", "value": i}) for i in range(100)]
        with pytest.raises(StorageUnavailableError, match="not open yet"):
            t.query()  # waits for the attempt in progress (busy_timeout_ms), which the lock still fails
        locker.wait(timeout=30)
        deadline = time.monotonic() + 15
        while t._sinks["sqlite"].unavailable is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        t.flush()
        assert sorted(e.id for e in t.query(category="while-held", limit=1000)) == sorted(ids)
        health = t.get_health_status()
        assert health.healthy, health.issues
        assert health.counters["buffered"] == 0 and _balanced(health.counters)
    finally:
        t.shutdown()
    assert not list((in_tmp / ".vibekit" / "buffer" / "sqlite").glob("*"))


def test_startup_fail_mode_and_permanent_errors_still_fail_at_once(in_tmp):
    db = in_tmp / "held.db"
    options = {"path": str(db), "journal_mode": "delete", "busy_timeout_ms": 200}
    with TelemetryService(storage=[{"type": "sqlite", "options": options}]) as t:
        t.track({"category": "setup"})
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StorageError, match="locked"):
            TelemetryService(storage=[{"type": "sqlite", "options": options}], reliability={"startup": "fail"})
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    (in_tmp / "notes.txt").write_text("not a database")
    started = time.monotonic()
    with pytest.raises(StorageError, match="not a SQLite database"):
        TelemetryService(storage=[{"type": "sqlite", "options": {"path": "notes.txt"}}],
                         reliability={"persist_buffer": True})
    assert time.monotonic() - started < 1
    assert not list((in_tmp / ".vibekit" / "buffer" / "sqlite").glob("*"))  # no orphan journal directory


def test_a_wal_database_held_by_a_writer_opens_at_once_and_catches_up(in_tmp):
    db = in_tmp / "wal.db"
    with TelemetryService(storage=[{"type": "sqlite", "options": {"path": str(db)}}]) as t:
        t.track({"category": "setup"})
    blocker = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")
    released = threading.Timer(1.0, lambda: blocker.execute("COMMIT"))
    started = time.monotonic()
    options = {"path": str(db), "busy_timeout_ms": 200}
    with TelemetryService(storage=[{"type": "sqlite", "options": options}], reliability=FAST) as t:
        assert time.monotonic() - started < 0.5
        released.start()
        ids = [t.track({"category": "held", "value": i}) for i in range(50)]
        released.join()
        time.sleep(0.1)
        t.flush()
        assert sorted(e.id for e in t.query(category="held")) == sorted(ids)
    blocker.close()


# -- 7. health recovers with the store ---------------------------------------------------------------


def test_health_is_good_again_once_the_store_recovered(in_tmp):
    db = in_tmp / "h.db"
    with TelemetryService(storage=[{"type": "sqlite", "options": {"path": str(db), "busy_timeout_ms": 50}}],
                          reliability={**FAST, "circuit_breaker": {"threshold": 2, "timeout": 100}}) as t:
        t.track({"category": "before"})
        t.flush()
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        t.track({"category": "during"})
        t.flush()
        sick = t.get_health_status()
        assert not sick.healthy
        blocker.execute("COMMIT")
        blocker.close()
        time.sleep(0.15)
        t.track({"category": "after"})
        t.flush()
        health = t.get_health_status()
    assert health.healthy, health.issues
    assert "last_error" in health.components["sqlite"]  # the history is still told
    assert len({e for e in ("before", "during", "after")}) == 3 and health.counters["stored"] == 3


# -- what a hostile review of the first version found ------------------------------------------------


def test_a_handler_that_reads_from_the_journal_thread_does_not_deadlock(in_tmp):
    class FailingTransform:  # an encryption-like before_store that cannot process one event
        name = "failing-transform"

        @hookimpl
        def before_store(self, events):
            if any(e.label == "cannot-encrypt" for e in events):
                raise ValueError("cannot encrypt this one")
            return events

    t = TelemetryService(plugins=[FailingTransform()], reliability={"persist_buffer": True},
                         stream_flush_interval=1000)
    try:
        seen = []
        t.on("error", lambda exc: seen.append(len(t.query(limit=5))))  # e.g. attach the latest events to an alert
        t.track({"category": "a"})
        t.track({"category": "b", "label": "cannot-encrypt"})
        time.sleep(0.8)  # the journal thread (every half interval) meets the failure before the flusher runs
        done = threading.Event()
        threading.Thread(target=lambda: (t.flush(), done.set()), daemon=True).start()
        assert done.wait(10), "flush() hung: the journal thread deadlocked on its own lock"
        assert seen
    finally:
        t.shutdown()


class ValueErrorStore(PickyStore):
    """A broken plugin whose every call fails with a ValueError (a closed file, pyarrow's ArrowInvalid)."""

    name = "value-error-store"

    @hookimpl
    def store(self, events):
        if self.down:
            raise ValueError("I/O operation on closed file")
        for event in events:
            self.rows.setdefault(event.id, event)


@pytest.mark.parametrize("batch_size", [1, 100])
def test_a_plugin_that_refuses_everything_with_value_error_is_not_taken_for_bad_events(in_tmp, batch_size):
    store = ValueErrorStore()
    store.down = True
    reliability = {**FAST, "circuit_breaker": {"threshold": 1000, "timeout": 50}, "dead_letter_after": 2}
    with TelemetryService(storage=[], plugins=[store], reliability=reliability, stream_batch_size=batch_size) as t:
        ids = []
        for i in range(6):
            ids.append(t.track({"category": "c", "value": i}))
            t.flush()
        counters = t.get_health_status().counters
        assert counters["dropped"] == 0 and counters["buffered"] == 6, counters
        store.down = False
        t.flush()
        assert set(store.rows) == set(ids)


def test_a_permanent_refusal_as_plain_storage_error_no_longer_blocks_the_queue(in_tmp):
    class Refusing(PickyStore):
        name = "refusing"

        @hookimpl
        def store(self, events):
            if any(e.label == "cursed" for e in events):
                raise StorageError("the collector answered 400 Bad Request")
            super().store(events)

    store = Refusing()
    reliability = {**FAST, "circuit_breaker": {"threshold": 1000, "timeout": 50}, "dead_letter_after": 3}
    with TelemetryService(storage=[], plugins=[store], reliability=reliability, stream_batch_size=1) as t:
        t.track({"category": "c"})
        t.flush()
        cursed = t.track({"category": "c", "label": "cursed"})
        t.flush()
        later = []
        for i in range(6):
            later.append(t.track({"category": "c", "value": i}))
            t.flush()
        counters = t.get_health_status().counters
    assert set(later) <= set(store.rows) and cursed not in store.rows
    assert counters["dropped_by_reason"] == {"invalid_at_store": 1} and _balanced(counters)


def test_values_the_encoders_refuse_as_they_are_are_converted_at_the_gate(telemetry):
    import collections
    import types

    class Precise(float):  # what numpy.float64 is
        pass

    point = collections.namedtuple("Point", "x y")
    event_id = telemetry.track({"category": "plain", "value": Precise(2.5),
                                "metadata": {"f": Precise(1.5), "m": types.MappingProxyType({"a": 1}),
                                             "p": point(1, 2)}})
    [event] = telemetry.query(category="plain")
    assert event.id == event_id and event.value == 2.5
    assert event.metadata == {"f": 1.5, "m": {"a": 1}, "p": [1, 2]}
    assert telemetry.get_health_status().counters["dropped"] == 0
    with pytest.raises(InvalidEventError, match="truncated"):
        telemetry.track({"category": "x", "truncated": ["\ud800"]})


def test_drop_oldest_with_persist_buffer_never_accepts_what_the_journal_cannot_hold(in_tmp):
    store = PickyStore()
    store.down = True
    reliability = {**FAST, "persist_buffer": True, "buffer_size": 200}
    with TelemetryService(storage=[], plugins=[store], reliability=reliability, on_full="drop_oldest",
                          stream_flush_interval=50) as t:
        for i in range(1000):
            t.track({"category": "c", "value": i})
        time.sleep(0.2)
        counters = t.get_health_status().counters
        assert "buffer_full" not in counters["dropped_by_reason"], counters["dropped_by_reason"]
        store.down = False
        t.flush()
        counters = t.get_health_status().counters
    assert _balanced(counters) and "buffer_full" not in counters["dropped_by_reason"]


def test_a_forked_child_of_a_degraded_parent_stores_its_events(in_tmp):
    db = in_tmp / "held.db"
    options = {"path": str(db), "journal_mode": "delete", "busy_timeout_ms": 200}
    with TelemetryService(storage=[{"type": "sqlite", "options": options}]) as t:
        t.track({"category": "setup"})
    (in_tmp / "locker.py").write_text(LOCKER)
    locker = subprocess.Popen([sys.executable, "locker.py", str(db), "1.5"], stdout=subprocess.PIPE, text=True,
                              cwd=in_tmp)
    assert locker.stdout.readline().strip() == "locked"
    t = TelemetryService(storage=[{"type": "sqlite", "options": options}], reliability={"startup_timeout_ms": 300})
    try:
        assert t._sinks["sqlite"].unavailable is not None
        pid = os.fork()
        if pid == 0:  # the child: its events must reach the file once the lock goes
            code = 1
            try:
                for i in range(20):
                    t.track({"category": "child", "value": i})
                deadline = time.monotonic() + 15
                while t._sinks["sqlite"].unavailable is not None and time.monotonic() < deadline:
                    time.sleep(0.05)
                t.shutdown(timeout=5)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        locker.wait(timeout=30)
        t.shutdown()
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM events WHERE category = 'child'").fetchone() == (20,)


def test_a_fork_during_a_dead_letter_append_does_not_leave_the_file_locked(in_tmp):
    from vibekit_telemetry.deadletter import DeadLetters

    letters = DeadLetters(in_tmp / "dead-letter")
    event = TelemetryEvent(event_type="custom", category="x")
    holding = threading.Event()

    def slow_append():
        with letters._locked("p", create=True):
            holding.set()
            time.sleep(0.3)

    worker = threading.Thread(target=slow_append)
    worker.start()
    holding.wait()
    pid = os.fork()  # waits for the append in progress to finish (it holds the file's flock)
    if pid == 0:
        time.sleep(3)  # a long-lived child (a worker process)
        os._exit(0)
    try:
        worker.join()
        done = threading.Event()
        threading.Thread(target=lambda: (letters.add("p", [event], "test"), done.set()), daemon=True).start()
        assert done.wait(2), "the child kept the dead-letter file's lock"
    finally:
        os.waitpid(pid, 0)


def test_analytics_does_not_stop_a_degraded_start_and_counts_once_storage_opens(in_tmp):
    db = in_tmp / "held.db"
    options = {"path": str(db), "journal_mode": "delete", "busy_timeout_ms": 200}
    with TelemetryService(storage=[{"type": "sqlite", "options": options}]) as t:
        t.track({"category": "before", "event_type": "custom"})
    (in_tmp / "locker.py").write_text(LOCKER)
    locker = subprocess.Popen([sys.executable, "locker.py", str(db), "1.5"], stdout=subprocess.PIPE, text=True,
                              cwd=in_tmp)
    assert locker.stdout.readline().strip() == "locked"
    with TelemetryService(storage=[{"type": "sqlite", "options": options}], analytics={"enabled": True},
                          reliability={"startup_timeout_ms": 300}) as t:
        for _ in range(5):
            t.track({"category": "during"})
        locker.wait(timeout=30)
        deadline = time.monotonic() + 15
        while t._sinks["sqlite"].unavailable is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert t.get_metrics("1h").events.total == 6


def test_a_store_whose_start_hangs_neither_blocks_reads_for_ever_nor_outlives_shutdown(in_tmp, monkeypatch):
    import vibekit_telemetry.service as service_module

    monkeypatch.setattr(service_module, "READ_WAIT_S", 0.5)
    release = threading.Event()
    log = []

    class Hanging(PickyStore):
        name = "hanging"

        @hookimpl
        def startup(self, service):
            log.append("startup")
            release.wait(10)  # a server that never answers

        @hookimpl
        def shutdown(self, service):
            log.append("shutdown")

    t = TelemetryService(storage=[], plugins=[Hanging()], reliability={"startup_timeout_ms": 200})
    t.track({"category": "c"})
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError):
        t.query()
    assert time.monotonic() - started < 3
    t.shutdown(timeout=0.5)
    release.set()
    time.sleep(0.3)
    assert log.count("shutdown") >= 1 and log[-1] == "shutdown"  # closed after it finally opened
    assert t._sinks["hanging"].unavailable is not None


def _slow_sqlite(path, delay_s):
    from vibekit_telemetry_sqlite import SQLiteStorage

    class SlowToOpen(SQLiteStorage):
        name = "slow-sqlite"

        @hookimpl
        def startup(self, service):
            time.sleep(delay_s)  # a large file being checked on a loaded machine
            super().startup(service)

    return SlowToOpen(SQLiteStorage.Config(path=str(path)))


def test_clean_and_reads_wait_for_a_store_still_opening_and_see_what_was_journaled(in_tmp):
    day = 86_400_000
    with TelemetryService(storage=[], plugins=[_slow_sqlite(in_tmp / "slow.db", 0.6)],
                          reliability={"startup_timeout_ms": 50}) as t:
        assert t._sinks["slow-sqlite"].unavailable is not None  # started degraded: still opening
        old = t.track({"category": "old", "timestamp": now_ms() - 100 * day})
        recent = t.track({"category": "recent"})
        assert t.clean(90) == 1  # waited for the opening, stored the journal, then cleaned
        assert [e.id for e in t.query()] == [recent] and old != recent


def test_clean_on_a_store_that_does_not_open_in_time_is_a_clear_error_not_a_crash_inside_it(in_tmp, monkeypatch):
    import vibekit_telemetry.service as service_module

    monkeypatch.setattr(service_module, "READ_WAIT_S", 0.2)
    with TelemetryService(storage=[], plugins=[_slow_sqlite(in_tmp / "slow.db", 1.5)],
                          reliability={"startup_timeout_ms": 50}) as t:
        t.track({"category": "c"})
        with pytest.raises(StorageUnavailableError, match="cannot clean now: storage 'slow-sqlite'.*not open yet"):
            t.clean(90)
        with pytest.raises(StorageUnavailableError, match="not open yet"):
            t.optimize()
        deadline = time.monotonic() + 10
        while t._sinks["slow-sqlite"].unavailable is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert t.clean(90) == 0 and len(t.query()) == 1  # the event journaled meanwhile was stored


def test_scans_and_exports_of_a_store_that_does_not_open_in_time_are_a_clear_error(in_tmp, monkeypatch):
    import vibekit_telemetry.service as service_module

    monkeypatch.setattr(service_module, "READ_WAIT_S", 0.2)
    with TelemetryService(storage=[], plugins=[_slow_sqlite(in_tmp / "slow.db", 1.5)],
                          reliability={"startup_timeout_ms": 50}) as t:
        t.track({"category": "c"})
        with pytest.raises(StorageUnavailableError, match="'slow-sqlite' is not open yet"):
            list(t.iter_events())
        deadline = time.monotonic() + 10
        while t._sinks["slow-sqlite"].unavailable is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [e.category for e in t.iter_events()] == ["c"]
