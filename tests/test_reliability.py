"""Fault injection: every accepted event is stored exactly once, or counted as lost with a reason.

Faults come from real parts where they can be caused (a full SQLite file, a
lock held by another connection, a killed process, a slow sink); a storage
plugin that raises stands in for a remote sink that is down.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from vibekit_telemetry import StorageError, TelemetryService, hookimpl
from vibekit_telemetry.journal import Journal, JournalFull
from vibekit_telemetry.model import TelemetryEvent

FAST = {"retry": {"base_delay_ms": 1, "max_delay_ms": 5}, "circuit_breaker": {"threshold": 3, "timeout": 50}}


class RecordingStore:
    """A storage plugin that keeps rows by id, remembers every call, and fails while ``failing`` says so."""

    name = "recording"

    def __init__(self, fail_times: int = 0, delay: float = 0.0):
        self.fail_times = fail_times
        self.down = False
        self.delay = delay
        self.calls: list[list[str]] = []
        self.rows: dict[str, TelemetryEvent] = {}
        self.order: list[str] = []
        self.lock = threading.Lock()

    @hookimpl
    def store(self, events):
        with self.lock:
            self.calls.append([e.id for e in events])
            if self.down:
                raise ConnectionError("sink is down")
            if self.fail_times > 0:
                self.fail_times -= 1
                raise ConnectionError("transient failure")
        if self.delay:
            time.sleep(self.delay)
        with self.lock:
            for event in events:
                if event.id not in self.rows:
                    self.rows[event.id] = event
                    self.order.append(event.id)

    @hookimpl
    def query(self, filter):
        return list(self.rows.values())


def _service(store, **options):
    options.setdefault("reliability", FAST)
    return TelemetryService(storage=[], plugins=[store], **options)


def test_a_sink_that_fails_then_recovers_gets_every_event_exactly_once(in_tmp):
    store = RecordingStore(fail_times=2)
    with _service(store, stream_batch_size=10) as t:
        ids = [t.track({"category": "c", "value": i}) for i in range(100)]
        t.flush()
        health = t.get_health_status()
    assert sorted(store.rows) == sorted(ids)
    assert health.counters["retried"] == 2
    assert health.counters["stored"] == 100 and health.counters["dropped"] == 0


def test_circuit_opens_journals_in_order_and_replays_when_the_sink_recovers(in_tmp):
    store = RecordingStore()
    store.down = True
    seen: dict[str, list] = {}
    reliability = {**FAST, "circuit_breaker": {"threshold": 3, "timeout": 300}}
    with _service(store, stream_batch_size=5, reliability=reliability) as t:
        for name in ("circuit:open", "circuit:half_open", "circuit:close", "connection:error"):
            t.on(name, lambda payload, name=name: seen.setdefault(name, []).append(payload))
        ids = []
        for i in range(40):
            ids.append(t.track({"category": "c", "value": i}))
            if i % 5 == 4:
                t.flush()
        health = t.get_health_status()
        assert health.components["recording"]["circuit"] == "open"
        assert not health.healthy and any("circuit open" in issue for issue in health.issues)
        assert health.counters["buffered"] == 40 and health.counters["stored"] == 0
        calls_while_open = len(store.calls)
        t.flush()
        assert len(store.calls) == calls_while_open  # an open circuit is not called
        store.down = False
        time.sleep(0.35)  # past the breaker's timeout: the next drain probes, succeeds and replays
        t.flush()
        health = t.get_health_status()
    assert store.order == ids  # replayed in the order tracked, nothing doubled
    assert health.components["recording"]["circuit"] == "closed"
    assert health.counters["stored"] == 40 and health.counters["buffered"] == 0
    assert seen["circuit:open"][0]["plugin"] == "recording"
    assert seen["circuit:half_open"] and seen["circuit:close"]
    assert isinstance(seen["connection:error"][0], StorageError)
    assert not list((in_tmp / ".vibekit" / "buffer" / "recording").iterdir())  # the empty journal was removed


def test_linear_and_exponential_backoff_are_capped_and_jittered():
    from vibekit_telemetry.reliability import RetryConfig

    linear = RetryConfig(backoff="linear", base_delay_ms=100, max_delay_ms=250, jitter=False)
    assert [linear.delay(n) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.25, 0.25]
    exp = RetryConfig(backoff="exponential", base_delay_ms=100, max_delay_ms=1000, jitter=False)
    assert [exp.delay(n) for n in (1, 2, 3, 4, 5)] == [0.1, 0.2, 0.4, 0.8, 1.0]
    jittered = RetryConfig(base_delay_ms=100, max_delay_ms=1000)
    samples = {jittered.delay(3) for _ in range(50)}
    assert all(0.2 <= d <= 0.4 for d in samples) and len(samples) > 1


def test_without_buffering_a_failed_batch_is_reported_lost(in_tmp):
    store = RecordingStore()
    store.down = True
    with _service(store, reliability={**FAST, "buffer_on_error": False}) as t:
        for _ in range(7):
            t.track({"category": "c"})
        t.flush()
        assert t.get_health_status().counters["dropped_by_reason"] == {"storage_error": 7}


def test_a_storage_entry_overrides_the_buffer_settings(in_tmp):
    with TelemetryService(storage=[{"type": "sqlite", "options": {"buffer_size": 10, "persist_buffer": True,
                                                                   "retry": {"max_attempts": 5}}}]) as t:
        sink = t._sinks["sqlite"]
        assert sink.policy.buffer_size == 10 and sink.policy.persist_buffer
        assert sink.policy.retry.max_attempts == 5 and sink.policy.circuit_breaker.threshold == 5
        t.track({"category": "c"})
        assert len(t.query()) == 1
    from vibekit_telemetry import ConfigError

    with pytest.raises(ConfigError, match=r"storage\[0\]\.options\.retry\.max_attempts"):
        TelemetryService(storage=[{"type": "sqlite", "options": {"retry": {"max_attempts": "many"}}}])


# -- the journal itself ---------------------------------------------------------------------------


def _events(n, start=0):
    return [TelemetryEvent(event_type="custom", category="j", value=float(i), metadata={"i": i, "s": "ü"}) for i in range(start, start + n)]


def test_journal_round_trip_bounds_and_torn_tail(tmp_path):
    journal = Journal.create(tmp_path, max_events=25, max_bytes=10**6, segment_bytes=2000)
    batches = [_events(10, 0), _events(10, 10)]
    for batch in batches:
        journal.append(batch)
    with pytest.raises(JournalFull, match="full"):
        journal.append(_events(10, 20))
    assert journal.pending_events == 20
    events, token = journal.peek()
    assert [e.to_dict() for e in events] == [e.to_dict() for e in batches[0]]
    journal.ack(token)
    journal.append(_events(3, 20))
    directory = journal.directory
    journal.abandon()  # as if the process died: files stay, lock goes with the process

    # cut the last record in half, as a crash in the middle of a write would
    last = sorted(directory.glob("seg-*.log"))[-1]
    data = last.read_bytes()
    last.write_bytes(data[: len(data) - 40])
    os.close(os.open(directory / "lock", os.O_RDONLY))
    [adopted] = Journal.adopt_orphans(tmp_path, max_events=100, max_bytes=10**6)
    got = [e.metadata["i"] for batch in adopted.batches() for e in batch]
    assert got == list(range(10, 20))  # the acknowledged batch is not replayed, the torn one is cut
    adopted.close()
    assert not directory.exists()


def test_a_live_process_keeps_its_journal(tmp_path):
    script = tmp_path / "hold.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1] / 'core')!r})
        from vibekit_telemetry.journal import Journal
        from vibekit_telemetry.model import TelemetryEvent
        j = Journal.create(__import__('pathlib').Path(sys.argv[1]), max_events=10, max_bytes=10**6)
        j.append([TelemetryEvent(event_type="custom", category="held")])
        print("ready", flush=True)
        time.sleep(60)
    """))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "j")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert Journal.adopt_orphans(tmp_path / "j", max_events=10, max_bytes=10**6) == []
    finally:
        proc.kill()
        proc.wait()
    [orphan] = Journal.adopt_orphans(tmp_path / "j", max_events=10, max_bytes=10**6)
    assert [e.category for batch in orphan.batches() for e in batch] == ["held"]
    orphan.close()


# -- real processes, real files -------------------------------------------------------------------

PRODUCER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from vibekit_telemetry import TelemetryService, hookimpl
    from vibekit_telemetry_sqlite import SQLiteStorage

    class SwitchableSQLite(SQLiteStorage):
        '''SQLite behind a switch file: while ``down`` exists every write fails, like an unreachable sink.'''
        name = "switchable"

        @hookimpl
        def store(self, events):
            if Path("down").exists():
                raise ConnectionError("sink unreachable")
            super().store(events)

    def service(**extra):
        return TelemetryService(storage=[], plugins=[SwitchableSQLite(SQLiteStorage.Config(path="shared.db"))],
                                stream_flush_interval=100, reliability={"persist_buffer": True}, **extra)

    if sys.argv[1] == "produce":
        t = service()
        for i in range(10_000):
            t.track({"category": "killed", "value": i})
        print("tracked", flush=True)
        time.sleep(60)
    else:
        with service() as t:
            t.flush()
            print(len(t.query(category="killed", limit=20_000)), t.get_health_status().counters["stored"])
    """
)


def test_kill_9_with_persist_buffer_loses_nothing(in_tmp):
    (in_tmp / "producer.py").write_text(PRODUCER)
    (in_tmp / "down").touch()
    proc = subprocess.Popen([sys.executable, "producer.py", "produce"], stdout=subprocess.PIPE, text=True, cwd=in_tmp)
    try:
        assert proc.stdout.readline().strip() == "tracked"
        time.sleep(1.0)  # the documented durability point: one flush interval (100 ms) after track(), plus margin
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    (in_tmp / "down").unlink()
    out = subprocess.run([sys.executable, "producer.py", "replay"], capture_output=True, text=True, cwd=in_tmp,
                         check=True).stdout.split()
    assert out == ["10000", "10000"]
    conn = sqlite3.connect(in_tmp / "shared.db")
    assert conn.execute("SELECT count(*), count(DISTINCT id) FROM events").fetchone() == (10_000, 10_000)
    assert not [p for p in (in_tmp / ".vibekit" / "buffer" / "switchable").iterdir() if any(p.glob("seg-*"))]


FOUR_WRITERS = textwrap.dedent(
    """
    import sys
    from vibekit_telemetry import TelemetryService
    path, tag, writer = sys.argv[1], sys.argv[2], sys.argv[3]
    with TelemetryService(storage=[{"type": "sqlite", "options": {"path": path, "writer": writer}}],
                          stream_batch_size=50) as t:
        for i in range(500):
            sid = t.track_start(tag, "m", f"prompt {i}")
            t.track_stream(sid, "chunk")
            t.track_end(sid)
        counters = t.get_health_status().counters
        assert counters["dropped"] == 0 and counters["accepted"] == 1500, counters
    """
)


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_four_processes_into_one_sqlite_file(in_tmp, writer):
    (in_tmp / "writer.py").write_text(FOUR_WRITERS)
    procs = [subprocess.Popen([sys.executable, "writer.py", "four.db", f"p{n}", writer], cwd=in_tmp) for n in range(4)]
    assert [p.wait(timeout=180) for p in procs] == [0, 0, 0, 0]
    conn = sqlite3.connect(in_tmp / "four.db")
    assert conn.execute("SELECT count(*), count(DISTINCT id) FROM events").fetchone() == (6000, 6000)
    assert conn.execute("SELECT count(*) FROM sessions WHERE status = 'completed'").fetchone() == (2000,)


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_disk_full_keeps_what_was_stored_journals_up_to_the_bound_and_counts_the_rest(in_tmp, caplog, writer):
    options = {"path": "full.db", "max_page_count": 64, "writer": writer}
    reliability = {**FAST, "buffer_size": 300}
    with TelemetryService(storage=[{"type": "sqlite", "options": options}], reliability=reliability,
                          stream_batch_size=50, max_batch_size=50) as t:
        for i in range(3000):
            t.track({"category": "full", "prompt": f"prompt number {i} " + "x" * 200})
        t.flush()
        health = t.get_health_status()
        counters = health.counters
        stored = len(t.query(category="full", limit=10_000))
    buffered = counters["buffered"]
    assert 0 < stored < 3000 and counters["stored"] == stored
    assert 0 < buffered <= 300
    assert counters["dropped_by_reason"] == {"buffer_full": 3000 - stored - buffered}
    assert counters["stored"] + counters["buffered"] + counters["dropped"] == counters["accepted"] == 3000
    assert "full" in health.components["sqlite"]["last_error"]
    assert any("disk holding" in r.getMessage() and "is full" in r.getMessage() for r in caplog.records)
    conn = sqlite3.connect(in_tmp / "full.db")
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert conn.execute("SELECT count(*) FROM events").fetchone() == (stored,)
    # with room again, the next start replays the journal
    with TelemetryService(storage=[{"type": "sqlite", "options": {"path": "full.db"}}]) as t:
        assert len(t.query(category="full", limit=10_000)) == stored + buffered


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_a_database_locked_for_seconds_loses_nothing(in_tmp, writer):
    db = in_tmp / "locked.db"
    reliability = {"retry": {"base_delay_ms": 20, "max_delay_ms": 50}, "circuit_breaker": {"threshold": 3, "timeout": 200}}
    with TelemetryService(storage=[{"type": "sqlite", "options": {"path": str(db), "busy_timeout_ms": 100,
                                                                  "writer": writer}}],
                          reliability=reliability, stream_batch_size=20) as t:
        t.track({"category": "before"})
        t.flush()
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        ids = [t.track({"category": "during", "value": i}) for i in range(200)]
        t.flush()
        assert t.get_health_status().counters["buffered"] > 0
        time.sleep(1.5)
        blocker.execute("COMMIT")
        blocker.close()
        time.sleep(0.25)
        t.flush()
        assert sorted(e.id for e in t.query(category="during", limit=1000)) == sorted(ids)
        assert t.get_health_status().counters["buffered"] == 0


def test_a_slow_sink_spills_to_disk_instead_of_growing_memory(in_tmp):
    store = RecordingStore(delay=0.02)
    high = []
    with _service(store, stream_batch_size=100, max_batch_size=100, max_queue_size=500) as t:
        t.on("memory:high", high.append)
        worst_depth = 0
        for i in range(20_000):
            t.track({"category": "slow", "value": i})
            worst_depth = max(worst_depth, t._pipeline.depth)
        counters = t.get_health_status().counters
        assert counters["spilled"] > 0
        assert worst_depth <= 500  # the in-memory queue never grew past its bound
        t.flush()
        assert len(store.rows) == 20_000
        assert list(store.order) == sorted(store.order, key=lambda i: store.rows[i].value)  # order kept
        assert t.get_health_status().counters["spilled"] == 0
    assert not high


def test_a_full_spill_journal_refuses_events_and_never_loses_an_accepted_one(in_tmp):
    store = RecordingStore(delay=0.05)
    with _service(store, stream_batch_size=100, max_batch_size=100, max_queue_size=300,
                  reliability={"buffer_max_bytes": 200_000}) as t:  # the spill journal is bounded by its bytes
        ids = [t.track({"category": "flood", "value": i}) for i in range(5000)]
        accepted = [i for i in ids if i is not None]
        assert 600 <= len(accepted) < 5000  # queue + spill journal held what they could; the rest was refused
        counters = t.get_health_status().counters
        assert counters["dropped_by_reason"] == {"spill_full": 5000 - len(accepted)}
    assert {e.id for e in store.rows.values()} == set(accepted)


def test_memory_limit_fires_memory_high_and_spills(in_tmp):
    store = RecordingStore()
    seen = []
    with _service(store, reliability={**FAST, "memory_limit": 1, "gc_interval": 1}, stream_flush_interval=20) as t:
        t.on("memory:high", seen.append)
        t.track({"category": "first"})
        t.flush()
        assert seen and seen[0]["limit"] == 1 and seen[0]["rss"] > 1
        assert t.get_health_status().pipeline["memory_high"]
        for i in range(1000):
            t.track({"category": "m", "value": i})
        assert t._pipeline.depth == 0 and t._pipeline.spilled > 0
        t.flush()
        assert len(store.rows) == 1001


def test_malformed_events_in_a_batch_are_rejected_with_reasons_the_rest_stored(telemetry):
    result = telemetry.track_batch([
        {"category": "ok", "value": 1},
        {"category": "", "value": 2},
        {"category": "ok", "value": "not a number"},
        "not an event",
        {"category": "ok", "value": 3},
    ])
    assert len(result.accepted) == 2
    assert [(index, exc.field) for index, exc in result.rejected] == [(1, "category"), (2, "value"), (3, "event")]
    assert sorted(e.value for e in telemetry.query(category="ok")) == [1, 3]


# -- sampling and rate limits ---------------------------------------------------------------------


def _sessions(t, n, *, status="completed", chunks=3, error=False, duration_ms=100):
    base = int(time.time() * 1000) - 10 * 60_000
    for i in range(n):
        sid = t.track_start("agent", "chat", f"p{i}", timestamp=base)
        for c in range(chunks):
            t.track_stream(sid, f"chunk {c}", timestamp=base + 10 + c, metadata={"output_tokens": 5})
        if error:
            t.track_error(sid, RuntimeError("boom"), timestamp=base + 50)
        t.track_end(sid, status, timestamp=base + duration_ms)


def test_sampling_keeps_failed_erroring_and_slow_sessions_whole_and_tallies_the_rest(in_tmp):
    with TelemetryService(storage=[{"type": "memory"}], sampling={"rate": 0.0, "slow_ms": 5000}) as t:
        _sessions(t, 10)
        _sessions(t, 2, status="failed")
        _sessions(t, 2, error=True)
        _sessions(t, 2, duration_ms=10_000)
        sessions = t.get_sessions(limit=100)
        counters = t.get_health_status().counters
        streams = t.query(event_type="stream", limit=1000)
    assert len(sessions) == 16
    assert all(s.stream_count == 3 and s.event_count >= 5 and s.tokens.output == 15 for s in sessions)
    assert all(s.ttft_ms == 10 for s in sessions)
    assert len(streams) == 6 * 3  # only the failed, erroring and slow sessions kept their chunks
    assert counters["sampled_out_by_reason"] == {"sampled": 30}
    assert counters["accepted"] == counters["stored"] + counters["sampled_out"]


def test_sampling_is_by_session_and_counts_standalone_events(in_tmp):
    with TelemetryService(storage=[{"type": "memory"}], sampling={"rate": 0.5}) as t:
        _sessions(t, 200, chunks=2)
        for i in range(400):
            t.track({"category": "click", "value": i})
            t.track({"category": "metrics", "action": "latency", "value": i})
        kept_streams = t.query(event_type="stream", limit=10_000)
        by_session = {}
        for event in kept_streams:
            by_session[event.session_id] = by_session.get(event.session_id, 0) + 1
        counters = t.get_health_status().counters
        clicks = len(t.query(category="click", limit=1000))
        metrics = len(t.query(category="metrics", limit=1000))
    assert set(by_session.values()) == {2}  # a session is kept or thinned whole
    assert 50 < len(by_session) < 150 and 100 < clicks < 300
    assert metrics == 400  # metrics events are never sampled
    assert counters["sampled_out"] == (200 - len(by_session)) * 2 + 400 - clicks


def test_rate_limit_exempts_errors_and_session_edges_and_counts_the_rest(in_tmp):
    limit = {"rate_limit": {"max_requests": 10, "window_ms": 60_000}}
    with TelemetryService(storage=[{"type": "memory"}], reliability=limit) as t:
        for i in range(30):
            t.track({"category": "click", "value": i})
        t.track_error(None, "a standalone error")
        sid = t.track_start("agent", "chat", "p")
        for c in range(20):
            t.track_stream(sid, f"c{c}")
        t.track_end(sid)
        session = t.get_session(sid)
        counters = t.get_health_status().counters
        assert len(t.query(category="click")) == 10
        assert len(t.query(action="error")) == 1
    assert session.stream_count == 20 and session.event_count == 22  # exact, though 20 chunks were dropped
    assert counters["sampled_out_by_reason"] == {"rate_limited": 40}


# -- processes: fork and signals ------------------------------------------------------------------


class FileStore:
    """Appends every id it is given to a file, duplicates included (so a double write shows)."""

    name = "file-store"

    def __init__(self, path):
        self.path = path

    @hookimpl
    def store(self, events):
        with open(self.path, "a") as fh:
            fh.write("".join(f"{os.getpid()} {e.id}\n" for e in events))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_gets_a_fresh_pipeline_and_the_parent_queue_is_written_once(in_tmp):
    log_path = in_tmp / "ids.log"
    t = TelemetryService(storage=[], plugins=[FileStore(log_path)], stream_flush_interval=60_000,
                         stream_batch_size=10_000)
    parent_ids = [t.track({"category": "parent", "value": i}) for i in range(50)]
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            child_ids = [t.track({"category": "child", "value": i}) for i in range(20)]
            t.shutdown()
            code = 0 if len(set(child_ids)) == 20 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    t.shutdown()
    lines = [line.split() for line in log_path.read_text().splitlines()]
    ids = [event_id for _, event_id in lines]
    assert len(ids) == len(set(ids)) == 70  # nothing written twice
    assert {event_id for owner, event_id in lines if int(owner) == os.getpid()} == set(parent_ids)


SIGTERM_SCRIPT = textwrap.dedent(
    """
    import time
    from vibekit_telemetry import TelemetryService, install_signal_handlers
    install_signal_handlers()
    t = TelemetryService(stream_flush_interval=600_000, stream_batch_size=100_000)
    for i in range(1000):
        t.track({"category": "term", "value": i})
    print("ready", flush=True)
    time.sleep(60)
    """
)


def test_sigterm_drains_pending_events(in_tmp):
    (in_tmp / "term.py").write_text(SIGTERM_SCRIPT)
    proc = subprocess.Popen([sys.executable, "term.py"], stdout=subprocess.PIPE, text=True, cwd=in_tmp)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    conn = sqlite3.connect(in_tmp / ".vibekit" / "telemetry.db")
    assert conn.execute("SELECT count(*) FROM events WHERE category = 'term'").fetchone() == (1000,)
