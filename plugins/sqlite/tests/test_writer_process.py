"""``writer = "process"``: SQLite written by a child process, with the thread writer's guarantees."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from vibekit_telemetry import TelemetryService


def _service(tmp_path, **overrides):
    return TelemetryService(storage=[{"type": "sqlite", "options": {"path": str(tmp_path / "t.db"), "writer": "process"}}],
                            data_dir=str(tmp_path), **overrides)


def _writer_pid(service):
    store = service.host.meta["sqlite"]["object"]
    return store._process.pid


def test_events_and_sessions_are_written_by_another_process(tmp_path):
    with _service(tmp_path) as t:
        for i in range(300):
            sid = t.track_start("agent", "code", f"prompt {i}", metadata={"model": "m", "input_tokens": 10})
            t.track_stream(sid, "chunk")
            t.track_end(sid, metadata={"output_tokens": 4})
        t.flush()
        pid = _writer_pid(t)
        assert pid is not None and pid != os.getpid()
        session = t.get_session(sid)
        assert (session.event_count, session.stream_count, session.tokens.input, session.tokens.output) == (3, 1, 10, 4)
        assert t.get_health_status().counters["stored"] == 900
    conn = sqlite3.connect(tmp_path / "t.db")
    assert conn.execute("SELECT count(*), count(DISTINCT id) FROM events").fetchone() == (900, 900)
    assert conn.execute("SELECT count(*) FROM sessions WHERE status = 'completed'").fetchone() == (300,)


def test_a_killed_writer_process_loses_nothing(tmp_path):
    """kill -9 of the child between batches and in the middle of the run: each batch is retried with a new one."""
    with _service(tmp_path, stream_batch_size=50, reliability={"retry": {"base_delay_ms": 1, "max_delay_ms": 5}}) as t:
        for round_ in range(5):
            for i in range(200):
                t.track({"category": "k", "value": round_ * 200 + i})
            t.flush()
            os.kill(_writer_pid(t), signal.SIGKILL)
            time.sleep(0.05)
        t.flush()
        counters = t.get_health_status().counters
        assert counters["stored"] == 1000 and counters["dropped"] == 0, counters
        assert sorted(e.value for e in t.query(category="k", limit=5000)) == list(range(1000))
        assert t.host.meta["sqlite"]["object"]._process.started >= 5


def test_the_child_refuses_what_the_thread_would_and_the_parent_raises_the_same_error(tmp_path):
    """An error inside the child reaches the parent as the same exception class (the kernel's retry and
    dead-letter logic depend on it): a database file that is not ours is a StorageError at open."""
    from vibekit_telemetry import StorageError
    from vibekit_telemetry_sqlite.writer import WriterProcess

    foreign = WriterProcess(tmp_path / "other.db", {"path": str(tmp_path / "other.db")})
    (tmp_path / "other.db").write_bytes(b"not a database at all, just text" * 4)
    with pytest.raises(StorageError, match="not a SQLite database"):
        foreign.store([])
    foreign.close()


PRODUCER = textwrap.dedent(
    """
    import sys, time
    from vibekit_telemetry import TelemetryService
    t = TelemetryService(storage=[{"type": "sqlite", "options": {"path": "p.db", "writer": "process"}}],
                         stream_flush_interval=100, reliability={"persist_buffer": True})
    if sys.argv[1] == "produce":
        for i in range(5_000):
            t.track({"category": "killed", "value": i})
        print("tracked", flush=True)
        time.sleep(60)
    else:
        t.flush()
        print(len(t.query(category="killed", limit=20_000)))
        t.shutdown()
    """
)


def test_kill_9_of_the_application_with_persist_buffer_loses_nothing(tmp_path):
    (tmp_path / "producer.py").write_text(PRODUCER)
    proc = subprocess.Popen([sys.executable, "producer.py", "produce"], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert proc.stdout.readline().strip() == "tracked"
        time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        proc.stdout.close()
    out = subprocess.run([sys.executable, "producer.py", "replay"], capture_output=True, text=True, cwd=tmp_path,
                         check=True, timeout=120).stdout.split()
    assert out == ["5000"]
    conn = sqlite3.connect(tmp_path / "p.db")
    assert conn.execute("SELECT count(*), count(DISTINCT id) FROM events").fetchone() == (5000, 5000)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_writes_through_a_writer_of_its_own(tmp_path):
    with _service(tmp_path) as t:
        t.track({"category": "parent"})
        t.flush()
        parent_writer = _writer_pid(t)
        pid = os.fork()
        if pid == 0:  # the child: exit code 0 only if its events were stored by a writer that is not the parent's
            try:
                for i in range(50):
                    t.track({"category": "child", "value": i})
                t.flush()
                ok = len(t.query(category="child", limit=100)) == 50 and _writer_pid(t) not in (None, parent_writer)
                t.shutdown()
            except BaseException:
                ok = False
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        t.track({"category": "parent"})
        t.flush()
        assert _writer_pid(t) == parent_writer
        assert len(t.query(category="parent", limit=10)) == 2
        assert len(t.query(category="child", limit=100)) == 50


# -- a batch in parts: the parent encodes part k+1 while the child inserts part k ------------------------


def _rows(n, *, sessions=7, start=0):
    from vibekit_telemetry.model import checked_row

    kinds = ("start", "stream", "stream", "error", "end")
    return [checked_row({"category": "parts", "session_id": f"s{i % sessions}", "event_type": kinds[i % 5],
                         "agent": "a" if i % 5 == 0 else None, "prompt": f"p{i}" if i % 5 == 0 else None,
                         "status": "failed" if i % 10 == 4 else None, "error_message": "boom" if i % 5 == 3 else None,
                         "stream_data": f"chunk {i}", "timestamp": 1_700_000_000_000 + start + i,
                         "metadata": {"input_tokens": 3, "model": f"m{i % 3}"} if i % 5 == 4 else {"chunk": i}},
                        pack=True) for i in range(start, start + n)]


def _open_store(path, **options):
    from vibekit_telemetry_sqlite import SQLiteStorage

    store = SQLiteStorage(SQLiteStorage.Config(path=str(path), **options))
    store._open(path, integrity=False)
    return store


def _tables(path):
    conn = sqlite3.connect(path)
    try:
        return (conn.execute("SELECT * FROM events ORDER BY id").fetchall(),
                conn.execute("SELECT * FROM sessions ORDER BY id").fetchall())
    finally:
        conn.close()


@pytest.mark.parametrize("part_rows", [1, 7, 1000])
def test_batches_in_parts_store_exactly_what_the_thread_stores(tmp_path, part_rows):
    """Sessions spread over many batches and parts (the parent folds each batch, the child merges the folds
    into the stored rows), a retried batch whose rows are partly stored (the child folds the new ones itself),
    an empty batch: the file ends up row for row what the writer thread writes."""
    from vibekit_telemetry_sqlite.writer import WriterProcess

    rows = _rows(600)
    batches = [rows[:5], rows[5:230], [], rows[230:600], rows[200:260] + _rows(40, start=600)]
    thread = _open_store(tmp_path / "thread.db")
    for batch in batches:
        thread.store_rows(batch)
    thread.close()
    _open_store(tmp_path / "process.db").close()
    writer = WriterProcess(tmp_path / "process.db", {"path": str(tmp_path / "process.db")})
    writer.part_rows = part_rows
    try:
        for batch in batches:
            writer.store(batch)
        assert writer.started == 1
    finally:
        writer.close()
    thread_events, thread_sessions = _tables(tmp_path / "thread.db")
    process_events, process_sessions = _tables(tmp_path / "process.db")
    assert len(process_events) == 640
    # seq is the file's own counter and the text index its own business: everything else is the same
    assert [r[1:] for r in process_events] == [r[1:] for r in thread_events]
    assert process_sessions == thread_sessions
    assert sum(r[11] for r in process_sessions) == 640  # every event counted once, the retried ones too


def test_a_batch_the_parent_stops_sending_halfway_commits_nothing(tmp_path):
    """The parent dies between two parts of a batch: the child rolls back what it inserted of it and exits."""
    from vibekit_telemetry import writer as kernel_writer
    from vibekit_telemetry_sqlite import sql_rows
    from vibekit_telemetry_sqlite.writer import WriterProcess

    _open_store(tmp_path / "p.db").close()
    writer = WriterProcess(tmp_path / "p.db", {"path": str(tmp_path / "p.db")})
    writer.store(_rows(10))
    proc = writer._proc
    kind, payload = kernel_writer._encode(sql_rows(_rows(500, start=10)))
    kernel_writer._write_frame(proc.stdin, kind | kernel_writer._MORE, payload)  # "more follows" ... never
    time.sleep(0.3)  # the child inserts the part inside the batch's transaction
    proc.stdin.close()
    assert proc.wait(30) == 0
    proc.stdout.close()
    writer._proc = None
    events, sessions = _tables(tmp_path / "p.db")
    assert len(events) == 10 and sum(r[11] for r in sessions) == 10


def test_a_batch_refused_before_its_first_part_is_read_keeps_the_pipe_in_step(tmp_path):
    """The store fails at the start of a batch (the file is locked by another writer): the child still reads
    the batch's other parts and its summary before it answers, so the same child stores the retry."""
    from vibekit_telemetry import StorageUnavailableError
    from vibekit_telemetry_sqlite.writer import WriterProcess

    _open_store(tmp_path / "l.db").close()
    writer = WriterProcess(tmp_path / "l.db", {"path": str(tmp_path / "l.db"), "busy_timeout_ms": 50})
    writer.part_rows = 100
    rows = _rows(450)
    try:
        writer.store(rows[:10])
        other = sqlite3.connect(tmp_path / "l.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StorageUnavailableError, match="locked"):
            writer.store(rows[10:])
        other.execute("ROLLBACK")
        other.close()
        pid = writer.pid
        writer.store(rows[10:])
        assert writer.pid == pid and writer.started == 1
    finally:
        writer.close()
    events, sessions = _tables(tmp_path / "l.db")
    assert len(events) == 450 and sum(r[11] for r in sessions) == 450


def test_a_part_that_cannot_be_prepared_stops_the_child_and_nothing_of_the_batch_is_stored(tmp_path):
    """Preparing the third part raises in the parent after two went out flagged "more follows": the child is
    stopped (its transaction rolled back), so it cannot take the next batch as the rest of this one."""
    from vibekit_telemetry_sqlite import sql_rows
    from vibekit_telemetry_sqlite.writer import WriterProcess

    _open_store(tmp_path / "x.db").close()
    calls = []

    def prepare(part):
        calls.append(len(part))
        if len(calls) == 3:
            raise RuntimeError("cannot prepare this part")
        return sql_rows(part)

    writer = WriterProcess(tmp_path / "x.db", {"path": str(tmp_path / "x.db")})
    writer.prepare, writer.part_rows = prepare, 10
    try:
        with pytest.raises(RuntimeError, match="cannot prepare"):
            writer.store(_rows(50))
        assert writer.pid is None
        writer.store(_rows(20, start=100))
        assert writer.started == 2
    finally:
        writer.close()
    events, sessions = _tables(tmp_path / "x.db")
    assert len(events) == 20 and sum(r[11] for r in sessions) == 20


def test_values_marshal_refuses_travel_as_json_and_are_stored_as_the_thread_stores_them(tmp_path):
    """An enum member in metadata (a subclass of int, made here so the child could not unpickle it): the
    batch's summary goes as JSON, and the file matches the thread writer's."""
    import enum

    from vibekit_telemetry.model import checked_row
    from vibekit_telemetry_sqlite.writer import WriterProcess

    level = enum.IntEnum("Level", "LOW HIGH")
    rows = _rows(20) + [checked_row({"category": "c", "session_id": "s1", "metadata": {"level": level.HIGH,
                                                                                        "nested": {"k": [1]}}})]
    thread = _open_store(tmp_path / "thread.db")
    thread.store_rows(rows)
    thread.close()
    _open_store(tmp_path / "process.db").close()
    writer = WriterProcess(tmp_path / "process.db", {"path": str(tmp_path / "process.db")})
    try:
        writer.store(rows)
    finally:
        writer.close()
    thread_events, thread_sessions = _tables(tmp_path / "thread.db")
    process_events, process_sessions = _tables(tmp_path / "process.db")
    assert [r[1:] for r in process_events] == [r[1:] for r in thread_events] and len(process_events) == 21
    assert process_sessions == thread_sessions
    assert '"level":2' in dict((r[0], r[14]) for r in process_sessions)["s1"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_worker_does_not_keep_the_writer_child_waiting_inside_a_batch(tmp_path):
    """An application forks a worker, then dies between two parts of a batch: the worker inherited the pipe
    to the writer child, and must not hold it open (the child would sit in the batch's transaction, the file
    write-locked, for as long as the worker lives)."""
    from vibekit_telemetry import writer as kernel_writer
    from vibekit_telemetry_sqlite import sql_rows
    from vibekit_telemetry_sqlite.writer import WriterProcess

    _open_store(tmp_path / "f.db").close()
    writer = WriterProcess(tmp_path / "f.db", {"path": str(tmp_path / "f.db")})
    writer.store(_rows(5))
    worker = os.fork()
    if worker == 0:
        time.sleep(30)
        os._exit(0)
    try:
        proc = writer._proc
        kind, payload = kernel_writer._encode(sql_rows(_rows(50, start=5)))
        kernel_writer._write_frame(proc.stdin, kind | kernel_writer._MORE, payload)
        proc.stdin.close()  # as if the application died here
        assert proc.wait(10) == 0  # the child read the end of its input although the worker lives
        proc.stdout.close()
        writer._proc = None
        other = sqlite3.connect(tmp_path / "f.db", timeout=1, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # not write-locked
        other.execute("ROLLBACK")
        other.close()
        assert len(_tables(tmp_path / "f.db")[0]) == 5
    finally:
        os.kill(worker, signal.SIGKILL)
        os.waitpid(worker, 0)


def test_a_fault_while_the_child_starts_leaves_no_child_waiting_for_its_hello(tmp_path, monkeypatch):
    import threading

    from vibekit_telemetry import writer as kernel_writer
    from vibekit_telemetry_sqlite.writer import WriterProcess

    _open_store(tmp_path / "h.db").close()
    widen = kernel_writer._widen

    def interrupted(stream):  # a fault that cannot be caused from outside at this exact point
        monkeypatch.setattr(kernel_writer, "_widen", widen)
        raise KeyboardInterrupt

    monkeypatch.setattr(kernel_writer, "_widen", interrupted)
    writer = WriterProcess(tmp_path / "h.db", {"path": str(tmp_path / "h.db")})
    with pytest.raises(KeyboardInterrupt):
        writer.start()
    assert writer.pid is None
    done = threading.Thread(target=writer.store, args=(_rows(10),), daemon=True)
    done.start()
    done.join(30)
    assert not done.is_alive()
    writer.close()
    assert writer.started == 2 and len(_tables(tmp_path / "h.db")[0]) == 10


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_a_value_the_file_cannot_hold_costs_its_event_only_with_either_writer(tmp_path, writer):
    """A session whose token count overflows SQLite's INTEGER: the child reports OverflowError as such, so
    the kernel isolates the event and dead-letters it, as with the thread, and the store keeps working."""
    t = TelemetryService(storage=[{"type": "sqlite", "options": {"path": str(tmp_path / "t.db"), "writer": writer}}],
                         data_dir=str(tmp_path), reliability={"retry": {"base_delay_ms": 1, "max_delay_ms": 5}})
    with t:
        t.track({"category": "c", "session_id": "big", "metadata": {"input_tokens": 2**62}})
        t.track({"category": "c", "session_id": "big", "metadata": {"input_tokens": 2**62}})
        for i in range(100):
            t.track({"category": "later", "session_id": f"s{i % 7}", "value": i})
        t.flush()
        counters = t.get_health_status().counters
        assert counters["dead_letters"] >= 1 and counters["stored"] + counters["dead_letters"] == 102, counters
        assert len(t.query(category="later", limit=500)) == 100
