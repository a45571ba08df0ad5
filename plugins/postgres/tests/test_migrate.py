"""``telemetry migrate``: a real SQLite store into a real PostgreSQL through the real command line."""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from vibekit_telemetry import QueryFilter, SessionFilter
from vibekit_telemetry.model import checked_row
from vibekit_telemetry_postgres import DAY_MS, PostgresStorage
from vibekit_telemetry_postgres.cluster import Cluster, find_bindir
from vibekit_telemetry_sqlite import SQLiteStorage

TELEMETRY = shutil.which("telemetry", path=str(Path(sys.executable).parent)) or "telemetry"
T0 = 1_700_000_000_000


def migrate(cwd, *args, env=None, wait=True, timeout=120):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_")}
    environment.update(env or {})
    argv = [TELEMETRY, "migrate", *args]
    if not wait:
        return subprocess.Popen(argv, cwd=cwd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(argv, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)


def make_store(path: Path, n: int, seed: int = 7) -> None:
    """A SQLite store of ``n`` events over three days: sessions with starts, streams, errors and ends, tokens,
    labels, text, ties on the same millisecond, a truncated field and a few events without a session."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        sid = f"s{rng.randrange(40)}" if i % 17 else None
        kind = "custom" if sid is None else rng.choice(["start", "stream", "stream", "stream", "end", "error"])
        item = {"event_type": kind, "session_id": sid, "category": rng.choice(["claude", "gpt"]),
                "timestamp": T0 + rng.randrange(3 * DAY_MS) if i % 50 else T0 + DAY_MS,  # some share a ms
                "metadata": {"model": rng.choice(["m1", "m2"]), "input_tokens": rng.randrange(100),
                             "output_tokens": rng.randrange(100), "kind": "llm", "user_id": f"u{i % 3}"}}
        if kind == "start":
            item.update(prompt=f"fix the parser number {i}", agent="planner", mode="plan")
        elif kind == "stream":
            item["stream_data"] = f"chunk {i} café"
        elif kind == "end":
            item["status"] = rng.choice(["completed", "failed"])
        elif kind == "error":
            item.update(error_type="Boom", error_message=f"boom {i}", error_stack="trace")
        row = checked_row(item)
        if i == 3:
            row = (*row[:18], ("prompt",))
        rows.append(row)
    store = SQLiteStorage.open(path)
    try:
        for start in range(0, n, 1000):
            store.store_rows(rows[start:start + 1000])
    finally:
        store.close()


def assert_same_store(db: Path, dsn: str, schema: str) -> None:
    """Every event field by field in the same order, and every session, equal in both stores."""
    lite = SQLiteStorage.open(db)
    pg = PostgresStorage.open(dsn, schema=schema)
    try:
        ours = [e.to_dict() for e in lite.scan(QueryFilter())]
        theirs = [e.to_dict() for e in pg.scan(QueryFilter())]
        assert len(theirs) == len(ours)
        assert theirs == ours
        every = SessionFilter(limit=None)
        assert pg.get_sessions(every) == lite.get_sessions(every)
        assert pg.count_sessions(every) == lite.count_sessions(every) > 0
    finally:
        lite.close()
        pg.close()


def progress_rows(dsn: str, schema: str) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        table = f"{schema}.vibekit_migrate_progress"
        if not conn.execute("SELECT to_regclass(%s) IS NOT NULL", [table]).fetchone()[0]:
            return []
        return conn.execute(f"SELECT source, last_seq, events, finished_at IS NOT NULL "
                            f"FROM {schema}.vibekit_migrate_progress").fetchall()


def test_round_trip_then_a_second_run_does_nothing(tmp_path, postgres_dsn, pg_schema):
    db = tmp_path / ".vibekit" / "telemetry.db"
    db.parent.mkdir()
    make_store(db, 1200)
    first = migrate(tmp_path, "--from", ".vibekit/telemetry.db", "--to", postgres_dsn, "--schema", pg_schema,
                    "--batch", "500")
    assert first.returncode == 0, first.stderr
    assert "events: 1,200 moved" in first.stdout
    assert "sessions: 40, equal to the source's" in first.stdout
    assert "analytics rollups: not copied" in first.stdout and "recounts them" in first.stdout
    assert "audit trail: none beside the source" in first.stdout
    assert_same_store(db, postgres_dsn, pg_schema)
    [(source, _seq, events, finished)] = progress_rows(postgres_dsn, pg_schema)
    assert source == str(db.resolve()) and events == 1200 and finished

    again = migrate(tmp_path, "--from", str(db), "--schema", pg_schema, env={"TELEMETRY_POSTGRES_DSN": postgres_dsn})
    assert again.returncode == 0, again.stderr
    assert "events: nothing to do, all 1,200 were migrated by an earlier run" in again.stdout
    assert_same_store(db, postgres_dsn, pg_schema)

    # the crash window: a batch stored but its progress not recorded is replayed, and changes nothing
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"UPDATE {pg_schema}.vibekit_migrate_progress SET last_timestamp = NULL, last_seq = NULL, "
                     "last_id = NULL, events = 0")
    replay = migrate(tmp_path, "--from", str(db), "--to", postgres_dsn, "--schema", pg_schema, "--quiet")
    assert replay.returncode == 0, replay.stderr
    assert "events: 1,200 moved" in replay.stdout and replay.stderr == ""
    assert_same_store(db, postgres_dsn, pg_schema)

    # events added to the source later are moved by the next run, and only they
    store = SQLiteStorage.open(db)
    store.store_rows([checked_row({"event_type": "stream", "session_id": "s1", "category": "gpt",
                                   "timestamp": T0 + 4 * DAY_MS, "stream_data": "late"})])
    store.close()
    more = migrate(tmp_path, "--from", str(db), "--to", postgres_dsn, "--schema", pg_schema)
    assert more.returncode == 0, more.stderr
    assert "events: 1 moved, resuming after 1,200 moved by an earlier run (1,201 in all)" in more.stdout
    assert_same_store(db, postgres_dsn, pg_schema)


def test_a_run_killed_half_way_resumes_to_the_same_store(tmp_path, postgres_dsn, pg_schema):
    db = tmp_path / "telemetry.db"
    make_store(db, 4000, seed=3)
    proc = migrate(tmp_path, "--from", str(db), "--to", postgres_dsn, "--schema", pg_schema, "--batch", "40",
                   wait=False)
    deadline = time.monotonic() + 60
    moved = 0
    while time.monotonic() < deadline and proc.poll() is None:
        rows = progress_rows(postgres_dsn, pg_schema)
        moved = rows[0][2] if rows else 0
        if moved >= 400:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the migration ended before it could be killed: {proc.communicate()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    [(_source, _seq, events, finished)] = progress_rows(postgres_dsn, pg_schema)
    assert 400 <= events < 4000 and not finished

    resumed = migrate(tmp_path, "--from", str(db), "--to", postgres_dsn, "--schema", pg_schema, "--batch", "1000")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after {events:,} moved by an earlier run (4,000 in all)" in resumed.stdout
    assert "sessions: 40, equal to the source's" in resumed.stdout
    assert_same_store(db, postgres_dsn, pg_schema)


def test_sessions_that_outlived_their_events_are_moved_as_the_source_has_them(tmp_path, postgres_dsn, pg_schema):
    db = tmp_path / "telemetry.db"
    make_store(db, 1200, seed=5)
    store = SQLiteStorage.open(db)
    first = next(iter(store.scan(QueryFilter(session_id="s5"))))
    assert store.delete([first.id]) == 1  # refolds s5 from what is left, in time order
    assert store.clean(T0 + DAY_MS) > 0  # sessions that go on past the cut-off keep counting what it removed
    store.close()
    result = migrate(tmp_path, "--from", str(db), "--to", postgres_dsn, "--schema", pg_schema, "--quiet")
    assert result.returncode == 0, result.stderr
    assert "set to the source's rows" in result.stdout and "retention or deletes" in result.stdout
    assert_same_store(db, postgres_dsn, pg_schema)
    again = migrate(tmp_path, "--from", str(db), "--to", postgres_dsn, "--schema", pg_schema, "--quiet")
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout and "set to the source's" not in again.stdout


def test_two_runs_of_one_migration_do_not_interleave(tmp_path, postgres_dsn, pg_schema):
    db = tmp_path / "telemetry.db"
    make_store(db, 30)
    with psycopg.connect(postgres_dsn, autocommit=True) as other:  # as a run in progress holds it
        other.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))",
                      [f"vibekit_migrate_progress:{db.resolve()}"])
        busy = migrate(tmp_path, "--from", str(db), "--to", postgres_dsn, "--schema", pg_schema)
    assert busy.returncode == 2 and "is running" in busy.stderr
    done = migrate(tmp_path, "--from", str(db), "--to", postgres_dsn, "--schema", pg_schema)
    assert done.returncode == 0 and "events: 30 moved" in done.stdout


@pytest.fixture
def own_cluster():
    """A cluster of this test's own, to crash under a migration."""
    if find_bindir() is None:
        if os.environ.get("VIBEKIT_REQUIRE_POSTGRES") == "1":
            pytest.fail("VIBEKIT_REQUIRE_POSTGRES=1 but initdb is not installed", pytrace=False)
        pytest.skip("initdb is not installed: cannot crash a server of the test's own")
    cluster = Cluster()
    cluster.start()
    yield cluster
    cluster.stop()


def test_a_server_that_goes_away_mid_run_exits_1_and_the_next_run_resumes(tmp_path, own_cluster):
    db = tmp_path / "telemetry.db"
    make_store(db, 3000, seed=11)
    args = ("--from", str(db), "--to", own_cluster.dsn, "--schema", "moved")
    proc = migrate(tmp_path, *args, "--batch", "20", wait=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        rows = progress_rows(own_cluster.dsn, "moved")
        if rows and rows[0][2] >= 200:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the migration ended before the server went away: {proc.communicate()}"
    own_cluster.stop_server("immediate")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    assert "the target became unavailable after" in err and "run the same command again to resume" in err
    assert "Traceback" not in err

    down = migrate(tmp_path, *args)
    assert down.returncode == 1 and "the target is unavailable" in down.stderr and "Traceback" not in down.stderr

    assert own_cluster.start_server()
    resumed = migrate(tmp_path, *args)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after" in resumed.stdout and "(3,000 in all)" in resumed.stdout
    assert_same_store(db, own_cluster.dsn, "moved")


def test_a_file_that_is_not_a_telemetry_store_is_refused(tmp_path, postgres_dsn, pg_schema):
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n")
    result = migrate(tmp_path, "--from", str(text), "--to", postgres_dsn, "--schema", pg_schema)
    assert result.returncode == 2 and "not a SQLite database" in result.stderr
    assert "Traceback" not in result.stderr

    foreign = tmp_path / "other.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE recipes (name text)")
    conn.commit()
    conn.close()
    before = foreign.read_bytes()
    result = migrate(tmp_path, "--from", str(foreign), "--to", postgres_dsn, "--schema", pg_schema)
    assert result.returncode == 2 and "not a vibekit-telemetry one" in result.stderr
    assert foreign.read_bytes() == before

    missing = migrate(tmp_path, "--from", str(tmp_path / "nope.db"), "--to", postgres_dsn)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    assert not (tmp_path / "nope.db").exists()
    assert progress_rows(postgres_dsn, pg_schema) == []


def test_usage_errors_exit_2_and_the_password_is_never_printed(tmp_path, postgres_dsn, pg_schema):
    db = tmp_path / "telemetry.db"
    make_store(db, 50)
    no_target = migrate(tmp_path, "--from", str(db))
    assert no_target.returncode == 2 and "TELEMETRY_POSTGRES_DSN" in no_target.stderr
    bad_schema = migrate(tmp_path, "--from", str(db), "--to", postgres_dsn, "--schema", "Robert'); DROP")
    assert bad_schema.returncode == 2 and "--schema" in bad_schema.stderr
    garbled = migrate(tmp_path, "--from", str(db), "--to", "host=x password=hunter2-secret oops")
    assert garbled.returncode == 2 and "hunter2-secret" not in garbled.stderr + garbled.stdout

    # the throwaway cluster trusts local connections: libpq ignores a password the server does not ask for
    with_password = postgres_dsn.replace("postgresql://postgres@", "postgresql://postgres:hunter2-secret@")
    assert with_password != postgres_dsn
    ok = migrate(tmp_path, "--from", str(db), "--to", with_password, "--schema", pg_schema)
    assert ok.returncode == 0, ok.stderr
    assert "***" in ok.stdout and "hunter2-secret" not in ok.stdout + ok.stderr

    with socket_without_server() as port:
        down = migrate(tmp_path, "--from", str(db), "--to", f"postgresql://postgres:hunter2-secret@127.0.0.1:{port}/x",
                       "--schema", pg_schema)
    assert down.returncode == 1 and "unavailable" in down.stderr
    assert "hunter2-secret" not in down.stdout + down.stderr and "Traceback" not in down.stderr


class socket_without_server:
    """A local port nobody listens on, for a target that is down."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        return self._sock.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


@pytest.fixture(autouse=True)
def _no_configured_dsn(monkeypatch):
    monkeypatch.delenv("TELEMETRY_POSTGRES_DSN", raising=False)


def _file_entries(path: Path) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT ts, actor, action, target, details, hash FROM entries ORDER BY seq").fetchall()
    finally:
        conn.close()


def _pg_entries(dsn: str, schema: str) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(f"SELECT ts, actor, action, target, details, hash FROM {schema}.audit_entries "
                            "ORDER BY seq").fetchall()


def test_the_audit_trail_moves_into_one_verified_chain_after_the_targets_own_entries(tmp_path, postgres_dsn,
                                                                                      pg_schema):
    import json

    from vibekit_telemetry import TelemetryService
    from vibekit_telemetry_audit.postgres import connect, verify

    data = tmp_path / ".vibekit"
    with TelemetryService(data_dir=str(data), security={"audit": {"enabled": True}}) as t:
        sid = t.track_start("planner", "plan", "ship it")
        t.track_end(sid)
        t.audit("access", "user:alice", {"why": "support ticket"})
    trail = data / "audit.db"
    local = _file_entries(trail)
    assert len(local) >= 2
    # services already run on the target: its trail has entries of its own, which the move must not disturb
    pg_storage = [{"type": "postgres", "options": {"dsn": postgres_dsn, "schema": pg_schema}}]
    with TelemetryService(storage=pg_storage, data_dir=str(tmp_path / "team"), security={"audit": {"enabled": True}}) as t:
        t.audit("access", "user:bob", {"why": "the team's own"})
    own = _pg_entries(postgres_dsn, pg_schema)
    assert own

    first = migrate(tmp_path, "--from", ".vibekit/telemetry.db", "--to", postgres_dsn, "--schema", pg_schema)
    assert first.returncode == 0, first.stderr
    assert f"audit trail: {len(local)} entries of {trail.resolve()} moved into" in first.stdout
    after = _pg_entries(postgres_dsn, pg_schema)
    assert after[:len(own)] == own  # the target's entries are untouched
    marker, copies = after[len(own)], after[len(own) + 1:]
    assert [c[:5] for c in copies] == [e[:5] for e in local]  # time, actor, action, target and details kept
    assert marker[2] == "migrate" and marker[3] == f"audit:{trail.resolve()}"
    details = json.loads(marker[4])
    assert details["entries"] == len(local) and details["source_head_hash"] == local[-1][5]
    with connect(postgres_dsn, pg_schema) as conn:
        report = verify(conn)
    assert report.ok, report.problems
    assert report.entries == len(after)

    again = migrate(tmp_path, "--from", str(data / "telemetry.db"), "--to", postgres_dsn, "--schema", pg_schema)
    assert again.returncode == 0, again.stderr
    assert f"audit trail: nothing to do, the {len(local)} entries of" in again.stdout
    assert _pg_entries(postgres_dsn, pg_schema) == after

    with TelemetryService(data_dir=str(data), security={"audit": {"enabled": True}}) as t:
        t.audit("delete", "user:carol", {"why": "erasure request"})
    grown = _file_entries(trail)
    more = migrate(tmp_path, "--from", str(data / "telemetry.db"), "--to", postgres_dsn, "--schema", pg_schema)
    assert more.returncode == 0, more.stderr
    added = len(grown) - len(local)
    assert f"audit trail: {added} entries of" in more.stdout
    assert [c[:5] for c in _pg_entries(postgres_dsn, pg_schema)[-added:]] == [e[:5] for e in grown[-added:]]
    with connect(postgres_dsn, pg_schema) as conn:
        assert verify(conn).ok

    # a trail changed outside the service is refused, and nothing of it is written
    conn = sqlite3.connect(trail)
    conn.execute("DROP TRIGGER entries_no_update")
    conn.execute("UPDATE entries SET details = '{\"why\": \"nothing to see\"}' WHERE seq = 1")
    conn.commit()
    conn.close()
    before = _pg_entries(postgres_dsn, pg_schema)
    refused = migrate(tmp_path, "--from", str(data / "telemetry.db"), "--to", postgres_dsn, "--schema", pg_schema)
    assert refused.returncode == 1
    assert "does not verify" in refused.stderr and "it is not moved" in refused.stderr
    assert _pg_entries(postgres_dsn, pg_schema) == before


def test_an_audit_trail_named_but_missing_is_a_usage_error(tmp_path, postgres_dsn, pg_schema):
    db = tmp_path / "telemetry.db"
    make_store(db, 10)
    result = migrate(tmp_path, "--from", str(db), "--to", postgres_dsn, "--schema", pg_schema,
                     "--audit-trail", str(tmp_path / "nope.db"))
    assert result.returncode == 2 and "--audit-trail" in result.stderr and "does not exist" in result.stderr
    assert progress_rows(postgres_dsn, pg_schema) == []  # refused before anything was moved


def test_a_trail_made_anew_at_the_same_path_is_moved_once_and_a_service_keeps_its_own_configuration_entry(
        tmp_path, postgres_dsn, pg_schema):
    from vibekit_telemetry import TelemetryService

    pg_storage = [{"type": "postgres", "options": {"dsn": postgres_dsn, "schema": pg_schema}}]
    security = {"audit": {"enabled": True}}
    with TelemetryService(storage=pg_storage, data_dir=str(tmp_path / "team"), security=security) as t:
        t.audit("access", "user:bob", {})
    data = tmp_path / ".vibekit"
    with TelemetryService(data_dir=str(data), security=security, service_name="laptop") as t:
        for i in range(5):
            t.audit("access", f"user:{i}", {})
    db = str(data / "telemetry.db")
    first = migrate(tmp_path, "--from", db, "--to", postgres_dsn, "--schema", pg_schema)
    assert first.returncode == 0, first.stderr
    # the laptop's store is made anew: a shorter trail at the same path
    shutil.rmtree(data)
    with TelemetryService(data_dir=str(data), security=security, service_name="laptop") as t:
        t.audit("access", "user:new", {})
    fresh = len(_file_entries(data / "audit.db"))
    second = migrate(tmp_path, "--from", db, "--to", postgres_dsn, "--schema", pg_schema)
    assert second.returncode == 0, second.stderr
    assert f"audit trail: {fresh} entries of" in second.stdout
    moved = len(_pg_entries(postgres_dsn, pg_schema))
    third = migrate(tmp_path, "--from", db, "--to", postgres_dsn, "--schema", pg_schema)
    assert third.returncode == 0, third.stderr
    assert f"audit trail: nothing to do, the {fresh} entries of" in third.stdout
    assert len(_pg_entries(postgres_dsn, pg_schema)) == moved  # nothing moved twice
    # the team's service starts again with its configuration unchanged: no configuration entry is written,
    # though the newest configuration entry in the trail is now the laptop's
    with TelemetryService(storage=pg_storage, data_dir=str(tmp_path / "team"), security=security):
        pass
    assert len(_pg_entries(postgres_dsn, pg_schema)) == moved

    skipped = migrate(tmp_path, "--from", db, "--to", postgres_dsn, "--schema", pg_schema, "--no-audit-trail")
    assert skipped.returncode == 0 and "audit trail: left where it is (--no-audit-trail)" in skipped.stdout
