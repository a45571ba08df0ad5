"""The audit trail beside the events in a real PostgreSQL: one chain written by many processes at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from vibekit_telemetry import TelemetryService
from vibekit_telemetry_audit import entry_hash

psycopg = pytest.importorskip("psycopg")
pytest.importorskip("vibekit_telemetry_postgres")

from vibekit_telemetry_audit.postgres import connect, verify  # noqa: E402

WORKERS = 4
ACTIONS = 50

#: one process appending: a service on the shared schema that waits for the go file, then records
#: ACTIONS entries (every tenth a real retention run, the others through the public service.audit)
WORKER = textwrap.dedent("""
    import os, sys, time
    from vibekit_telemetry import TelemetryService

    dsn, schema, data_dir, go, name, count = sys.argv[1:]
    with TelemetryService(storage=[{"type": "postgres", "options": {"dsn": dsn, "schema": schema}}],
                          security={"audit": {"enabled": True}}, data_dir=data_dir) as t:
        # under load the store may open in the background (a degraded start): clean needs it open
        while not t.get_health_status().components["postgres"]["healthy"]:
            time.sleep(0.05)
        with open(os.path.join(data_dir, f"ready-{name}"), "w"):
            pass
        while not os.path.exists(go):
            time.sleep(0.01)
        for n in range(int(count)):
            if n % 10 == 0:
                t.clean(retention_days=365)
            else:
                t.audit("export", name, {"n": n})
        audit = t.get_health_status().components["audit"]
        assert audit["healthy"] and audit["backend"] == "postgresql", audit
""")


def _service(pg_options, tmp_path, **audit):
    return TelemetryService(storage=[{"type": "postgres", "options": pg_options}],
                            security={"audit": {"enabled": True, **audit}}, data_dir=str(tmp_path / "data"))


def _cli(tmp_path, pg_options, *args, dsn=None):
    (tmp_path / "telemetry.toml").write_text(textwrap.dedent(f"""
        data_dir = "data"
        [[storage]]
        type = "postgres"
        [storage.options]
        dsn = {{ "$env" = "TELEMETRY_POSTGRES_DSN" }}
        schema = "{pg_options['schema']}"
        [security.audit]
        enabled = true
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_")}
    env["TELEMETRY_POSTGRES_DSN"] = dsn or pg_options["dsn"]
    return subprocess.run([sys.executable, "-m", "vibekit_telemetry", "audit", *args], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=120)


def _superuser(postgres_dsn, schema):
    """A connection as the test server's superuser (the fixtures' DSN), as someone bypassing the service."""
    return psycopg.connect(postgres_dsn, autocommit=True, options=f"-c search_path={schema}")


def _chain(dsn, schema):
    with psycopg.connect(dsn, options=f"-c search_path={schema}") as conn:
        return conn.execute("SELECT seq, ts, actor, action, target, details, prev_hash, hash FROM audit_entries "
                            "ORDER BY seq").fetchall()


def test_four_processes_appending_at_once_write_one_chain(pg_options, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    go = tmp_path / "go"
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, pg_options["dsn"], pg_options["schema"],
                                 str(data_dir), str(go), f"worker-{i}", str(ACTIONS)],
                                stderr=subprocess.PIPE, text=True) for i in range(WORKERS)]
    deadline = time.monotonic() + 120
    while len(list(data_dir.glob("ready-*"))) < WORKERS and time.monotonic() < deadline:
        assert all(w.poll() is None for w in workers), [w.stderr.read() for w in workers if w.poll() is not None]
        time.sleep(0.05)
    go.touch()
    for worker in workers:
        assert worker.wait(180) == 0, worker.stderr.read()

    rows = _chain(pg_options["dsn"], pg_options["schema"])
    # the four started at once with one configuration: it is recorded once, under the lock
    assert [r[3] for r in rows].count("config") == 1
    assert len(rows) == WORKERS * ACTIONS + 1
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
    prev = "0" * 64
    for seq, ts, actor, action, target, details, prev_hash, digest in rows:
        assert prev_hash == prev, f"entry {seq} does not follow entry {seq - 1}"
        assert entry_hash(prev_hash, ts, actor, action, target, details) == digest
        prev = digest
    per_worker = {f"worker-{i}": 0 for i in range(WORKERS)}
    for row in rows:
        if row[3] == "export":
            per_worker[row[4]] += 1
    assert per_worker == {name: ACTIONS - ACTIONS // 10 for name in per_worker}
    assert sum(r[3] == "clean" for r in rows) == WORKERS * (ACTIONS // 10)

    with connect(pg_options["dsn"], pg_options["schema"]) as conn:
        report = verify(conn)
    assert report.ok, report.problems
    assert report.entries == report.recorded == WORKERS * ACTIONS + 1
    ok = _cli(tmp_path, pg_options, "verify")
    assert ok.returncode == 0, ok.stderr
    assert f"{WORKERS * ACTIONS + 1} entries, chain intact" in ok.stdout
    assert f"(schema {pg_options['schema']})" in ok.stdout
    listing = _cli(tmp_path, pg_options, "--since", "1h", "--action", "clean", "--format", "json")
    assert listing.returncode == 0, listing.stderr
    assert len(json.loads(listing.stdout)) == WORKERS * (ACTIONS // 10)


def test_the_service_keeps_the_trail_in_postgresql_and_health_says_so(pg_options, tmp_path):
    with _service(pg_options, tmp_path) as t:
        t.track({"category": "c", "prompt": "p"})
        t.clean(retention_days=30)  # retention on the postgres store goes on working, and is recorded
        entries = t.get_audit_logs()
        audit = t.get_health_status().components["audit"]
    assert [e["action"] for e in entries] == ["clean", "config"]
    assert entries[0]["details"]["retention_days"] == 30
    assert audit["healthy"] and audit["backend"] == "postgresql" and audit["path"] is None
    assert f"(schema {pg_options['schema']})" in audit["where"]
    assert not (tmp_path / "data" / "audit.db").exists()
    with _service(pg_options, tmp_path) as t:  # the same configuration again: nothing new to record
        assert len(t.get_audit_logs()) == 2
    with psycopg.connect(pg_options["dsn"]) as conn:
        applied = conn.execute(f"SELECT name FROM {pg_options['schema']}.audit_migrations").fetchall()
    assert applied == [("001_entries_and_head",)]


def test_an_explicit_path_keeps_the_trail_in_its_file(pg_options, tmp_path):
    path = tmp_path / "trail.db"
    with _service(pg_options, tmp_path, path=str(path)) as t:
        t.clean(retention_days=30)
        audit = t.get_health_status().components["audit"]
    assert audit["backend"] == "sqlite" and audit["path"] == str(path) and path.is_file()
    with psycopg.connect(pg_options["dsn"]) as conn:
        assert conn.execute("SELECT to_regclass(%s)", [f"{pg_options['schema']}.audit_entries"]).fetchone()[0] is None


def test_tampering_with_the_postgresql_trail_is_refused_or_reported(pg_options, postgres_dsn, tmp_path):
    schema = pg_options["schema"]
    with _service(pg_options, tmp_path) as t:
        for days in (30, 60, 90):
            t.clean(retention_days=days)
    assert _cli(tmp_path, pg_options, "verify").returncode == 0

    conn = _superuser(postgres_dsn, schema)
    for sql in ("UPDATE audit_entries SET actor = 'someone else' WHERE seq = 2", "DELETE FROM audit_entries",
                "TRUNCATE audit_entries", "UPDATE audit_head SET seq = 2", "DELETE FROM audit_head",
                "TRUNCATE audit_head"):
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute(sql)

    # the owner of the tables disables a trigger, edits an entry and puts the trigger back: the chain shows it
    conn.execute("ALTER TABLE audit_entries DISABLE TRIGGER audit_entries_no_update")
    conn.execute("UPDATE audit_entries SET details = replace(details, '60', '6') WHERE seq = 3")
    conn.execute("ALTER TABLE audit_entries ENABLE TRIGGER audit_entries_no_update")
    broken = _cli(tmp_path, pg_options, "verify")
    assert broken.returncode == 1
    assert "entry 3 was changed after it was written (its hash does not match)" in broken.stderr
    assert "2 entries intact from the first one on" in broken.stderr
    assert "trigger" not in broken.stderr


def test_forged_entries_and_weakened_triggers_are_reported(pg_options, postgres_dsn, tmp_path):
    schema = pg_options["schema"]
    with _service(pg_options, tmp_path) as t:
        for days in (30, 60):
            t.clean(retention_days=days)
    conn = _superuser(postgres_dsn, schema)
    # a forged entry after the last one, well hashed, written around the service (the head does not move)
    seq, last = conn.execute("SELECT seq, hash FROM audit_head").fetchone()
    details = '{"deleted":0}'
    conn.execute("INSERT INTO audit_entries VALUES (%s, 1, 'mallory', 'clean', 'events', %s, %s, %s)",
                 [seq + 1, details, last, entry_hash(last, 1, "mallory", "clean", "events", details)])
    conn.execute("ALTER TABLE audit_entries DISABLE TRIGGER audit_entries_no_delete")
    conn.execute("ALTER TABLE audit_head ENABLE REPLICA TRIGGER audit_head_no_rewind")
    conn.execute("CREATE OR REPLACE FUNCTION audit_refuse() RETURNS trigger LANGUAGE plpgsql AS "
                 "$$ BEGIN RETURN NEW; END; $$")
    with connect(pg_options["dsn"], schema) as reader:
        report = verify(reader)
    assert not report.ok and report.entries == 4 and report.recorded == 3
    assert report.problems == [
        "the append-only trigger audit_entries_no_delete is disabled (ALTER TABLE ... DISABLE TRIGGER): "
        "deleting an entry is no longer refused",
        "the append-only trigger audit_head_no_rewind fires only on replicas (ENABLE REPLICA TRIGGER): "
        "moving the head back is no longer refused",
        "the function audit_refuse of the append-only triggers was replaced: the triggers may no longer refuse "
        "anything",
        "entries after 3 were written around the service (the head records 3, the last entry is 4)",
    ]
    # with the triggers gone, entries deleted from the end show against the head
    conn.execute("DELETE FROM audit_entries WHERE seq >= 2")
    broken = _cli(tmp_path, pg_options, "verify")
    assert broken.returncode == 1
    assert ("entries 2 to 3 were deleted from the end (the head records 3 entries, the last one left is 1)"
            in broken.stderr)


def test_the_cli_never_prints_the_password(pg_options, postgres_cluster, tmp_path):
    if postgres_cluster is None:
        pytest.skip("needs the throwaway cluster (trust authentication ignores the password)")
    from psycopg.conninfo import make_conninfo

    secret = "s3cret-audit-password"
    with _service(pg_options, tmp_path):
        pass
    dsn = make_conninfo(pg_options["dsn"], password=secret)
    ok = _cli(tmp_path, pg_options, "verify", dsn=dsn)
    assert ok.returncode == 0 and secret not in ok.stdout + ok.stderr
    missing = _cli(tmp_path, {**pg_options, "schema": "no_such_schema"}, "verify", dsn=dsn)
    assert missing.returncode == 1 and "no audit trail in" in missing.stderr
    assert secret not in missing.stdout + missing.stderr
    down = _cli(tmp_path, pg_options, "verify", dsn=make_conninfo(dsn, port="1"))
    assert down.returncode == 1 and "***" in down.stderr and secret not in down.stdout + down.stderr


def test_a_store_still_opening_at_start_gets_the_configuration_entry_first(pg_options, tmp_path):
    # 1 ms is less than any connection and migration takes: the store opens in the background
    with TelemetryService(storage=[{"type": "postgres", "options": pg_options}], reliability={"startup_timeout_ms": 1},
                          security={"audit": {"enabled": True}}, data_dir=str(tmp_path / "data")) as t:
        audit = t.host.meta["audit"]["object"]
        assert audit.pending is not None and not audit.trail.migrated
        t.audit("export", "events", {"n": 1})
        entries = t.get_audit_logs()
        health = t.get_health_status().components["audit"]
    assert [(e["seq"], e["action"]) for e in entries] == [(2, "export"), (1, "config")]
    assert health["healthy"] and health["backend"] == "postgresql" and audit.pending is None
