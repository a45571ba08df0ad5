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
