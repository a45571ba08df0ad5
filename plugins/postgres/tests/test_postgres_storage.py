"""The PostgreSQL store beyond the contract: it agrees with SQLite, shares sessions between writer processes,
drops whole partitions, survives a killed writer and a restarted server, and explains what it refuses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import attrs
import psycopg
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from vibekit_telemetry import ConfigError, EventsRejectedError, StorageError, TelemetryService
from vibekit_telemetry.model import checked_row
from vibekit_telemetry_postgres import DAY_MS, PostgresStorage, redact_dsn, tsvector_text
from vibekit_telemetry_postgres.cluster import Cluster, find_bindir
from vibekit_telemetry_sqlite import SQLiteStorage


def _service(tmp_path, options, **overrides):
    return TelemetryService(storage=[{"type": "postgres", "options": options}], data_dir=str(tmp_path), **overrides)


def _drop(dsn, schema):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


# --- agreement with SQLite --------------------------------------------------------------------------------

_events = st.lists(
    st.fixed_dictionaries({
        "event_type": st.sampled_from(["start", "stream", "end", "error", "custom"]),
        "session_id": st.sampled_from(["a", "b", "c", None]),
        "category": st.sampled_from(["claude", "gpt"]),
        "timestamp": st.integers(1_700_000_000_000, 1_700_000_000_000 + 3 * DAY_MS),
        "metadata": st.dictionaries(
            st.sampled_from(["model", "input_tokens", "output_tokens", "cache_read_tokens", "kind", "x", "user_id"]),
            st.one_of(st.integers(0, 1000), st.sampled_from(["llm", "gpt", "tool", "ünï"])), max_size=3),
        "status": st.sampled_from([None, "completed", "failed"]),
        "prompt": st.sampled_from([None, "hello world", "Fix the parser", "naïve café"]),
        "stream_data": st.sampled_from([None, "chunk of the answer", "parser fixed", "café au lait"]),
        "error_message": st.sampled_from([None, "boom"]),
        "agent": st.sampled_from([None, "planner"]),
    }),
    min_size=1, max_size=40,
)


# no shrinking: every step is two databases' worth of round trips (the failing example is printed whole)
@settings(max_examples=30, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(_events, st.integers(1, 6))
def test_sessions_and_queries_agree_with_sqlite_whatever_the_batches(tmp_path_factory, postgres_dsn, items, parts):
    for item in items:
        if item["event_type"] != "custom" and item["session_id"] is None:
            item["session_id"] = "a"
    rows = [checked_row({k: v for k, v in item.items() if v is not None or k == "metadata"}) for item in items]
    schema = f"h_{uuid.uuid4().hex[:12]}"
    lite = SQLiteStorage.open(tmp_path_factory.mktemp("agree") / "t.db")
    pg = PostgresStorage.open(postgres_dsn, schema=schema)
    try:
        size = max(1, len(rows) // parts)
        for start in range(0, len(rows), size):
            lite.store_rows(rows[start:start + size])
            pg.store_rows(rows[start:start + size])
        pg.store_rows(rows[:size])  # a retried batch changes nothing
        from vibekit_telemetry import QueryFilter, SessionFilter

        for sort in ("started_at", "tokens", "duration_ms", "ttft_ms", "agent"):
            for order in ("asc", "desc"):
                f = SessionFilter(sort=sort, order=order, limit=100)
                got, want = pg.get_sessions(f), lite.get_sessions(f)
                assert [s.id for s in got] == [s.id for s in want], (sort, order)
                for g, w in zip(got, want, strict=True):
                    assert attrs.asdict(g) == attrs.asdict(w), (sort, order, g.id)
        filters = [QueryFilter(), QueryFilter(order="asc"), QueryFilter(text="parser"), QueryFilter(text="cafe"),
                   QueryFilter(text="café"), QueryFilter(text="hello WORLD"), QueryFilter(metadata={"kind": "llm"}),
                   QueryFilter(metadata={"input_tokens": 5}), QueryFilter(category="gpt", event_type="stream"),
                   QueryFilter(since=1_700_000_000_000 + DAY_MS, until=1_700_000_000_000 + 2 * DAY_MS),
                   QueryFilter(limit=3, offset=2), QueryFilter(session_ids=("a", "c"))]
        for f in filters:
            assert [e.to_dict() for e in pg.query(f)] == [e.to_dict() for e in lite.query(f)], f
        assert pg.count() == lite.count() == len({r[0] for r in rows})
    finally:
        lite.close()
        pg.close()
        _drop(postgres_dsn, schema)


def test_words_are_split_as_the_sqlite_tokenizer_splits_them():
    assert set(tsvector_text("Hello, wörld! e-mail: a.b@example.com", None).split()) == {
        "'hello'", "'world'", "'e'", "'mail'", "'a'", "'b'", "'example'", "'com'"}
    assert tsvector_text(None, "  ,;  ") is None
    assert tsvector_text("x" * 5000 + " short", None) == "'short'"  # a word too long for a tsvector is skipped


def test_a_word_said_twice_is_merged_by_the_server(postgres_dsn):
    literal = tsvector_text("The cat and the dog", "the CAT")
    assert literal.count("'the'") == 3  # left to the server, which sorts and merges the words anyway
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SELECT %s::tsvector::text", [literal]).fetchone()[0] == "'and' 'cat' 'dog' 'the'"


# --- several writers, one store ---------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys
    from vibekit_telemetry import TelemetryService
    dsn, schema, me = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with TelemetryService(storage=[{"type": "postgres", "options": {"dsn": dsn, "schema": schema}}],
                          data_dir=f"w{me}", stream_flush_interval=5) as t:
        for round in range(25):
            for s in range(20):
                sid = f"shared-{s}"
                t.track({"event_type": "stream", "session_id": sid, "category": "agent", "stream_data": "x",
                         "timestamp": 1_800_000_000_000 + round * 1000 + me,
                         "metadata": {"input_tokens": 3, "output_tokens": me + 1}})
            if round == 0 and me == 0:
                for s in range(20):
                    t.track({"event_type": "start", "session_id": f"shared-{s}", "category": "agent",
                             "prompt": "go", "timestamp": 1_799_999_999_000})
    print("done")
    """
)


def test_four_writer_processes_adding_to_the_same_sessions_lose_no_update(tmp_path, pg_options):
    (tmp_path / "writer.py").write_text(WRITER)
    with _service(tmp_path, pg_options) as t:  # migrate first: the writers then race only on the sessions
        pass
    procs = [subprocess.Popen([sys.executable, "writer.py", pg_options["dsn"], pg_options["schema"], str(me)],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for me in range(4)]
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0 and out.strip() == "done", err[-2000:]
    with _service(tmp_path, pg_options) as t:
        sessions = {s.id: s for s in t.get_sessions(limit=100)}
        assert len(sessions) == 20
        for s in sessions.values():
            assert (s.event_count, s.stream_count) == (4 * 25 + 1, 4 * 25)
            assert s.tokens.input == 4 * 25 * 3 and s.tokens.output == 25 * (1 + 2 + 3 + 4)
            assert (s.started_at, s.prompt, s.has_start) == (1_799_999_999_000, "go", True)
            assert (s.first_event_at, s.last_event_at) == (1_799_999_999_000, 1_800_000_000_000 + 24_000 + 3)
        assert len(t.query(limit=10_000)) == 4 * 25 * 20 + 20


def _big_batch(sessions=60, per_session=50):
    """Sessions of a start, streamed chunks with tokens and an end (distinct milliseconds), and session-less
    custom events: a batch large enough to be split over two connections."""
    items = []
    for s in range(sessions):
        sid, base = f"big-{s:03}", 1_800_000_000_000 + s * 100_000
        items.append({"event_type": "start", "session_id": sid, "category": "agent", "prompt": f"task {s}",
                      "timestamp": base})
        items += [{"event_type": "stream", "session_id": sid, "category": "agent", "stream_data": f"part {i}",
                   "timestamp": base + 1 + i, "metadata": {"input_tokens": 2, "output_tokens": i % 3}}
                  for i in range(per_session - 2)]
        items.append({"event_type": "end", "session_id": sid, "category": "agent", "status": "completed",
                      "timestamp": base + per_session})
    items += [{"event_type": "custom", "category": "note", "timestamp": 1_800_000_000_000 + i} for i in range(100)]
    return [checked_row(item) for item in items]


def _tables(dsn, schema):
    """The sessions as stored, and the stored events' ids."""
    with psycopg.connect(dsn) as conn:
        sessions = conn.execute(f"SELECT * FROM {schema}.sessions ORDER BY id").fetchall()
        ids = {r[0] for r in conn.execute(f"SELECT id FROM {schema}.events")}
    return sessions, ids


def test_a_large_batch_is_copied_over_two_connections_at_once_split_by_session(postgres_dsn):
    rows = _big_batch()
    one, two = f"w1_{uuid.uuid4().hex[:10]}", f"w2_{uuid.uuid4().hex[:10]}"
    single = PostgresStorage.open(postgres_dsn, schema=one, listen=False, writers=1)
    split = PostgresStorage.open(postgres_dsn, schema=two, listen=False)
    assert (single.writers, split.writers) == (1, 2)
    parts, active, most = [], [0], [0]
    lock = threading.Lock()
    store_part = split._store_part

    def watched(part, starts):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            store_part(part, starts)
        finally:
            with lock:
                active[0] -= 1
            parts.append({r[1] for r in part})

    split._store_part = watched
    try:
        single.store_rows(rows)
        split.store_rows(rows)
        # two parts, in flight at once, a session's events all in one of them
        assert len(parts) == 2 and most[0] == 2 and not (parts[0] & parts[1] - {None})
        with psycopg.connect(postgres_dsn) as conn:
            # each part is a transaction of its own (of its events and its sessions); one connection, one
            xacts = f"SELECT count(DISTINCT xmin::text) FROM {{}}.events"
            assert conn.execute(xacts.format(two)).fetchone()[0] == 2
            assert conn.execute(xacts.format(one)).fetchone()[0] == 1
            assert conn.execute(f"SELECT count(*) FROM (SELECT session_id FROM {two}.events GROUP BY session_id "
                                "HAVING count(DISTINCT xmin::text) > 1) AS s").fetchone()[0] == 0
        want = _tables(postgres_dsn, one)
        assert len(want[0]) == 60 and len(want[1]) == len(rows)
        assert _tables(postgres_dsn, two) == want
        split.store_rows(rows)  # retried: every id is stored already, in both parts
        assert _tables(postgres_dsn, two) == want
    finally:
        single.close()
        split.close()
        _drop(postgres_dsn, one)
        _drop(postgres_dsn, two)


def test_a_part_that_fails_leaves_the_others_committed_and_the_retry_adds_only_the_rest(postgres_dsn):
    rows = _big_batch()
    bad = checked_row({"event_type": "stream", "session_id": "big-007", "category": "agent",
                       "stream_data": "a NUL \x00 inside", "timestamp": 1_800_000_700_049})
    one, two = f"w1_{uuid.uuid4().hex[:10]}", f"w2_{uuid.uuid4().hex[:10]}"
    reference = PostgresStorage.open(postgres_dsn, schema=one, listen=False, writers=1)
    split = PostgresStorage.open(postgres_dsn, schema=two, listen=False, writers=2)
    try:
        reference.store_rows(rows)
        with pytest.raises(EventsRejectedError, match="0x00"):
            split.store_rows([*rows, bad])
        sessions, ids = _tables(postgres_dsn, two)
        # the part without the bad event committed: its events, each counted in its session
        assert 0 < len(ids) < len(rows) and "big-007" not in {s[0] for s in sessions}
        with psycopg.connect(postgres_dsn) as conn:
            stored, counted = conn.execute(f"SELECT (SELECT count(*) FROM {two}.events WHERE session_id IS NOT NULL), "
                                           f"(SELECT sum(event_count) FROM {two}.sessions)").fetchone()
        assert stored == counted
        split.store_rows(rows)  # the kernel's retry without the event it dead-lettered
        assert _tables(postgres_dsn, two) == _tables(postgres_dsn, one)
    finally:
        reference.close()
        split.close()
        _drop(postgres_dsn, one)
        _drop(postgres_dsn, two)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_copies_split_batches_on_threads_of_its_own(tmp_path, pg_options):
    rows = _big_batch(sessions=40)
    with _service(tmp_path, pg_options) as t:
        store = t.storage_plugin("postgres")
        store.store_rows(rows[:1000])  # the parent's copy thread exists now
        pid = os.fork()
        if pid == 0:  # the child: the parent's thread is not here, a split batch must not wait for it
            code = 1
            try:
                signal.alarm(60)
                store.store_rows(rows[1000:])
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        store.store_rows(rows[1000:])  # the parent's thread still works (and the ids are stored already)
        assert store.count() == len(rows)
        assert sum(s.event_count for s in t.get_sessions(limit=100)) == 40 * 50


EXITING = textwrap.dedent(
    """
    import sys
    from vibekit_telemetry import TelemetryService
    t = TelemetryService(storage=[{"type": "postgres", "options": {"dsn": sys.argv[1], "schema": sys.argv[2]}}],
                         data_dir="exiting", stream_batch_size=100_000, stream_flush_interval=600_000,
                         max_batch_size=5000)
    for s in range(40):
        for i in range(75):
            t.track(event_type="stream", session_id=f"s{s}", category="agent", stream_data=f"chunk {i}")
    print("tracked")  # and exits with the events queued, no shutdown(): the kernel's atexit drain writes them
    """
)


def test_a_split_batch_drained_as_the_interpreter_exits_is_stored(tmp_path, pg_options):
    (tmp_path / "exiting.py").write_text(EXITING)
    done = subprocess.run([sys.executable, "exiting.py", pg_options["dsn"], pg_options["schema"]], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "tracked", done.stderr[-2000:]
    assert "failed" not in done.stderr, done.stderr[-2000:]
    with psycopg.connect(pg_options["dsn"]) as conn:
        stored, counted = conn.execute(
            f"SELECT (SELECT count(*) FROM {pg_options['schema']}.events), "
            f"(SELECT sum(event_count) FROM {pg_options['schema']}.sessions)").fetchone()
    assert stored == counted == 3000  # stored by the exiting process, not left in its journal for a later start


def test_writers_cannot_outnumber_the_pool(tmp_path, pg_options):
    with pytest.raises(ConfigError, match="writers: 3 connections per batch need pool_size >= 3"):
        _service(tmp_path, {**pg_options, "writers": 3, "pool_size": 2})
    with pytest.raises(ConfigError, match="writers: expected a positive integer"):
        _service(tmp_path, {**pg_options, "writers": 0})
    with _service(tmp_path, {**pg_options, "pool_size": 1}) as t:  # unset: as many as the pool allows
        assert t.get_health_status().components["postgres"]["writers"] == 1


def test_two_processes_starting_at_once_migrate_once(tmp_path, postgres_dsn, pg_schema):
    script = textwrap.dedent(
        """
        import sys
        from vibekit_telemetry_postgres import PostgresStorage
        PostgresStorage.open(sys.argv[1], schema=sys.argv[2]).close()
        print("ok")
        """)
    (tmp_path / "open.py").write_text(script)
    procs = [subprocess.Popen([sys.executable, "open.py", postgres_dsn, pg_schema], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert out.strip() == "ok", err[-2000:]
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute(f"SELECT name FROM {pg_schema}.vibekit_migrations ORDER BY name").fetchall() == [
            ("001_events_and_sessions",), ("002_events_by_seq",), ("003_settings",), ("004_partial_label_indexes",),
            ("005_binary_collation",)]


# --- partitions and retention -----------------------------------------------------------------------------

def test_clean_drops_whole_partitions_and_deletes_only_the_remainder(tmp_path, pg_options):
    day0 = (int(time.time() * 1000) // DAY_MS - 10) * DAY_MS
    with _service(tmp_path, pg_options) as t:
        for day in range(5):
            sid = t.track_start("agent", "chat", f"day {day}", timestamp=day0 + day * DAY_MS + 1000)
            for hour in range(0, 24, 6):
                t.track_stream(sid, "tick", timestamp=day0 + day * DAY_MS + hour * 3_600_000 + 2000)
            t.track_end(sid, timestamp=day0 + day * DAY_MS + 23 * 3_600_000)
        t.flush()
        store = t.host.pm.get_plugin("postgres")
        assert isinstance(store, PostgresStorage)
        names = [p[0] for p in store.partitions()]
        days = [time.strftime("%Y%m%d", time.gmtime((day0 + d * DAY_MS) / 1000)) for d in range(5)]
        assert all(f"events_{d}" in names for d in days)
        # up to the middle of day 2: days 0 and 1 are dropped whole, day 2 loses its first 12 hours
        before = day0 + 2 * DAY_MS + 12 * 3_600_000
        assert store.clean(before) == 6 + 6 + 3
        names = [p[0] for p in store.partitions()]
        assert f"events_{days[0]}" not in names and f"events_{days[1]}" not in names
        assert f"events_{days[2]}" in names
        left = t.query(limit=1000)
        assert len(left) == 3 + 6 + 6 and min(e.timestamp for e in left) >= before
        assert {s.prompt for s in t.get_sessions(limit=10)} == {"day 2", "day 3", "day 4"}
        # an event older than the retention can still arrive: its partition is made again
        t.track({"category": "late", "timestamp": day0 + 5000})
        t.flush()
        assert [e.category for e in t.query(category="late")] == ["late"]


# --- failures -----------------------------------------------------------------------------------------------

PRODUCER = textwrap.dedent(
    """
    import sys, time
    from vibekit_telemetry import TelemetryService
    dsn, schema = sys.argv[2], sys.argv[3]
    t = TelemetryService(storage=[{"type": "postgres", "options": {"dsn": dsn, "schema": schema}}],
                         stream_flush_interval=50, reliability={"persist_buffer": True})
    if sys.argv[1] == "produce":
        for i in range(20_000):
            t.track({"event_type": "stream", "session_id": f"s{i % 50}", "category": "killed",
                     "stream_data": "some words", "value": i, "metadata": {"output_tokens": 1}})
        print("tracked", flush=True)
        time.sleep(60)
    else:
        t.flush()
        print(len(t.query(category="killed", limit=50_000)), sum(s.event_count for s in t.get_sessions(limit=100)),
              sum(s.tokens.output for s in t.get_sessions(limit=100)))
        t.shutdown()
    """
)


def test_kill_9_mid_copy_leaves_nothing_half_written_and_the_journal_replays(tmp_path, pg_options):
    (tmp_path / "producer.py").write_text(PRODUCER)
    args = [pg_options["dsn"], pg_options["schema"]]
    proc = subprocess.Popen([sys.executable, "producer.py", "produce", *args], stdout=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    try:
        assert proc.stdout.readline().strip() == "tracked"
        time.sleep(0.3)  # batches are being copied in
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    with psycopg.connect(pg_options["dsn"]) as conn:
        # what was committed is whole: every stored event is counted in its session, in the same transaction
        stored, counted = conn.execute(
            f"SELECT (SELECT count(*) FROM {pg_options['schema']}.events), "
            f"(SELECT coalesce(sum(event_count), 0) FROM {pg_options['schema']}.sessions)").fetchone()
        assert stored == counted
    out = subprocess.run([sys.executable, "producer.py", "replay", *args], capture_output=True, text=True,
                         cwd=tmp_path, check=True, timeout=180).stdout.split()
    assert out == ["20000", "20000", "20000"]


@pytest.fixture
def own_cluster():
    """A cluster of this test's own, to stop and start under load."""
    if find_bindir() is None:
        if os.environ.get("VIBEKIT_REQUIRE_POSTGRES") == "1":
            pytest.fail("VIBEKIT_REQUIRE_POSTGRES=1 but initdb is not installed", pytrace=False)
        pytest.skip("initdb is not installed: cannot restart a server of the test's own")
    cluster = Cluster()
    cluster.start()
    yield cluster
    cluster.stop()


def test_a_server_restarted_under_load_loses_nothing(tmp_path, own_cluster):
    options = {"dsn": own_cluster.dsn, "connect_timeout_ms": 2000}
    with _service(tmp_path, options, stream_flush_interval=20,
                  reliability={"retry": {"max_delay_ms": 500}, "circuit_breaker": {"timeout": 500}}) as t:
        stop = threading.Event()
        sent = [0]

        def produce():
            while not stop.is_set():
                i = sent[0]
                t.track({"event_type": "stream", "session_id": f"s{i % 10}", "category": "load",
                         "stream_data": "w", "value": i, "metadata": {"input_tokens": 2}})
                sent[0] += 1
                if i % 200 == 0:
                    time.sleep(0.005)

        producer = threading.Thread(target=produce)
        producer.start()
        time.sleep(0.8)
        own_cluster.restart("immediate")  # as a crash: every connection dies mid-transaction
        time.sleep(1.5)
        stop.set()
        producer.join()
        t.flush()
        assert len(t.query(category="load", limit=200_000)) == sent[0]
        sessions = t.get_sessions(limit=20)
        assert sum(s.event_count for s in sessions) == sent[0]
        assert sum(s.tokens.input for s in sessions) == 2 * sent[0]


def test_a_server_that_is_down_at_start_is_waited_for_with_the_events_journaled(tmp_path, own_cluster):
    dsn = own_cluster.dsn
    own_cluster.stop_server()
    with _service(tmp_path, {"dsn": dsn, "connect_timeout_ms": 1000},
                  reliability={"startup_timeout_ms": 500}) as t:
        ids = [t.track({"category": "early", "value": i}) for i in range(50)]
        assert t.get_health_status().components["postgres"]["healthy"] is False
        assert own_cluster.start_server()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if len(t.query(category="early")) == 50:
                    break
            except StorageError:
                pass
            time.sleep(0.25)
        assert sorted(e.id for e in t.query(category="early")) == sorted(ids)


def test_a_wrong_database_or_password_is_a_clear_error_at_start(tmp_path, postgres_dsn):
    missing = postgres_dsn.rsplit("/", 1)[0] + "/no_such_database"
    with pytest.raises(StorageError, match="no_such_database.*does not exist"):
        _service(tmp_path, {"dsn": missing})
    with pytest.raises(ConfigError, match="TELEMETRY_POSTGRES_DSN"):
        env = os.environ.pop("TELEMETRY_POSTGRES_DSN", None)
        try:
            _service(tmp_path, {})
        finally:
            if env is not None:
                os.environ["TELEMETRY_POSTGRES_DSN"] = env
    with pytest.raises(ConfigError, match="schema"):
        _service(tmp_path, {"dsn": postgres_dsn, "schema": "Robert'); DROP TABLE students;--"})
    with pytest.raises(ConfigError, match="pool_size"):
        _service(tmp_path, {"dsn": postgres_dsn, "pool_size": 0})


def test_the_partition_width_of_a_schema_cannot_change(tmp_path, pg_options):
    with _service(tmp_path, pg_options) as t:
        t.track({"category": "one day"})
    with pytest.raises(ConfigError, match="made with partitions of 1 day"):
        _service(tmp_path, {**pg_options, "partition_days": 7})
    with _service(tmp_path, pg_options) as t:
        assert [e.category for e in t.query()] == ["one day"]


def test_tables_of_another_application_are_refused_and_left_alone(tmp_path, postgres_dsn, pg_schema):
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {pg_schema}")
        conn.execute(f"CREATE TABLE {pg_schema}.events (x int)")
        conn.execute(f"INSERT INTO {pg_schema}.events VALUES (42)")
    with pytest.raises(StorageError, match="did not create"):
        _service(tmp_path, {"dsn": postgres_dsn, "schema": pg_schema})
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute(f"SELECT x FROM {pg_schema}.events").fetchall() == [(42,)]


def test_an_event_postgresql_cannot_hold_is_dead_lettered_and_the_batch_is_stored(tmp_path, pg_options):
    with _service(tmp_path, pg_options) as t:
        sid = t.track_start("agent", "chat", "fine")
        bad = t.track_stream(sid, "a NUL \x00 inside")  # valid text, but PostgreSQL's text type refuses NUL
        t.track_end(sid)
        t.flush()
        assert [e.event_type for e in t.query(session_id=sid, order="asc")] == ["start", "end"]
        [dead] = t.dead_letters.records("postgres")
        assert dead.event.id == bad and "0x00" in dead.error


def test_the_password_of_a_dsn_is_never_printed(tmp_path, pg_options):
    assert redact_dsn("postgresql://telemetry:s3cret@db.internal:5432/t") == "postgresql://telemetry:***@db.internal:5432/t"
    assert redact_dsn("host=db user=t password='s3 cret' dbname=t") == "host=db user=t password=*** dbname=t"
    assert redact_dsn("postgresql://telemetry@db/t") == "postgresql://telemetry@db/t"
    with _service(tmp_path, pg_options) as t:
        report = t.get_health_status().components["postgres"]
        assert report["healthy"] and report["dsn"] == redact_dsn(pg_options["dsn"])
        assert report["migrations"] == ["001_events_and_sessions", "002_events_by_seq", "003_settings", "004_partial_label_indexes",
                                     "005_binary_collation"] and report["partitions"] >= 3


def test_a_live_stream_hears_other_processes_from_the_moment_it_is_open(tmp_path, pg_options):
    """Opening the first stream waits until this process LISTENs: what another service stores right after
    reaches it (no gap while the listener wakes up and connects), once, and its own events only once too."""
    storage = [{"type": "postgres", "options": pg_options}]
    with TelemetryService(storage=storage, data_dir=str(tmp_path / "a")) as a, \
            TelemetryService(storage=storage, data_dir=str(tmp_path / "b")) as b:
        for attempt in range(3):  # the first open connects; later ones find the listener lingering
            stream = b.create_event_stream(category="live")
            try:
                a.track({"category": "live", "value": attempt})  # at once: no time for a polling listener
                a.flush()
                b.track({"category": "live", "value": 100 + attempt})
                b.flush()
                got = [stream.get(timeout=5), stream.get(timeout=5)]
                assert sorted(e.value for e in got if e is not None) == [attempt, 100 + attempt]
                assert stream.get(timeout=0.5) is None  # nothing twice
            finally:
                stream.close()


def test_reads_run_in_autocommit_and_give_the_connection_back_as_a_transaction_block(tmp_path, pg_options):
    """A read is one round trip (no BEGIN/COMMIT around it), and the connection it used goes back to the pool
    as it came: the next ``connection()`` block (the audit trail's, the shared rollups') is one transaction."""
    with _service(tmp_path, {**pg_options, "pool_size": 1}) as t:
        sid = t.track_start("agent", "chat", "p")
        t.track_end(sid)
        t.flush()
        store = t.storage_plugin("postgres")
        with store._reading() as conn:
            assert conn.autocommit
        assert t.get_session(sid).status == "completed"
        with pytest.raises(StorageError):
            t.get_session("nul \x00 in an id")  # refused (psycopg's text dumper): a read that fails gives its connection back too
        with store.connection() as conn:
            assert not conn.autocommit
            conn.execute("CREATE TABLE in_one_block (x int)")
            conn.execute("INSERT INTO in_one_block VALUES (1)")
            conn.rollback()  # both statements were one transaction: both undone
            assert conn.execute("SELECT to_regclass('in_one_block')").fetchone() == (None,)
