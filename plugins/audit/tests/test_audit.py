"""The audit trail through the service, on real SQLite files."""

from __future__ import annotations

import secrets
import sqlite3
import subprocess
import sys

import pytest

from vibekit_telemetry import TelemetryService, acting_as, current_actor


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _service(**extra):
    return TelemetryService(security={"audit": {"enabled": True}, **extra})


def _telemetry(*args, cwd):
    return subprocess.run([sys.executable, "-m", "vibekit_telemetry", *args], capture_output=True, text=True, cwd=cwd)


def test_actions_are_recorded_with_actor_target_and_details(in_tmp):
    key = secrets.token_hex(32)
    with _service(encryption={"enabled": True, "key": key}) as t:
        t.track({"category": "c", "prompt": "p"})
        with acting_as("api-key:ci-bot"):
            assert current_actor() == "api-key:ci-bot"
            t.clean(retention_days=30)
        t.host.meta["encryption"]["object"].rotate(t)
        entries = t.get_audit_logs()
        config_entries = t.get_audit_logs(action="config")
    actions = [e["action"] for e in entries]
    assert actions[:3] == ["rotate", "clean", "config"]
    delete = entries[1]
    assert delete["actor"] == "api-key:ci-bot" and delete["target"] == "events"
    assert delete["details"]["retention_days"] == 30 and delete["details"]["deleted"] == 0
    assert entries[0]["details"]["rewritten"] == 0 and entries[0]["actor"] == current_actor()
    assert len(config_entries) == 1 and key not in str(config_entries[0])  # secrets are redacted


def test_configuration_changes_are_recorded_once_per_change(in_tmp):
    with _service():
        pass
    with _service():
        pass
    with _service(pii={"enabled": True}) as t:
        configs = t.get_audit_logs(action="config")
    assert len(configs) == 2
    assert configs[0]["details"]["changed"] == ["security.pii"]


def test_the_trail_is_append_only_and_tampering_is_detected(in_tmp):
    with _service() as t:
        for days in (30, 60, 90):
            t.clean(retention_days=days)
    ok = _telemetry("audit", "verify", cwd=in_tmp)
    assert ok.returncode == 0 and "4 entries, chain intact" in ok.stdout
    conn = sqlite3.connect(in_tmp / ".vibekit" / "audit.db")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE entries SET actor = 'someone else' WHERE seq = 2")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM entries WHERE seq = 2")
    # someone with write access to the file drops the trigger and edits an entry: the chain shows it
    conn.execute("DROP TRIGGER entries_no_update")
    conn.execute("UPDATE entries SET details = replace(details, '60', '6') WHERE seq = 3")
    conn.commit()
    conn.close()
    broken = _telemetry("audit", "verify", cwd=in_tmp)
    assert broken.returncode == 1 and "entry 3 was changed after it was written" in broken.stderr
    listing = _telemetry("audit", "--since", "1h", "--action", "clean", cwd=in_tmp)
    assert listing.returncode == 0 and listing.stdout.count(" clean ") == 3


def test_verify_writes_nothing_and_reports_a_trail_emptied_behind_its_back(in_tmp):
    with _service() as t:
        for days in (30, 60):
            t.clean(retention_days=days)
    db = in_tmp / ".vibekit" / "audit.db"
    wal = db.with_name("audit.db-wal")
    before = db.read_bytes()
    for _ in range(2):  # verifying twice: the second run sees no entry the first one added
        ok = _telemetry("audit", "verify", cwd=in_tmp)
        assert ok.returncode == 0 and "3 entries, chain intact" in ok.stdout, ok.stderr
    assert db.read_bytes() == before and (not wal.exists() or wal.stat().st_size == 0)

    # every entry deleted with plain sqlite3, after dropping the trigger that refuses it
    conn = sqlite3.connect(db)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM entries")
    conn.execute("DROP TRIGGER entries_no_delete")
    conn.execute("DELETE FROM entries")
    conn.commit()
    conn.close()
    emptied = db.read_bytes()
    broken = _telemetry("audit", "verify", cwd=in_tmp)
    assert broken.returncode == 1 and "chain intact" not in broken.stdout
    assert "the trail is empty, but its head records 3 entries: every entry was deleted" in broken.stderr
    assert "the append-only trigger entries_no_delete is missing: deleting an entry is no longer refused" in broken.stderr
    assert db.read_bytes() == emptied and (not wal.exists() or wal.stat().st_size == 0)

    # the application still starts on the damaged trail; its next entry follows the head, so the gap stays visible
    with _service() as t:
        assert [e["seq"] for e in t.get_audit_logs()] == [4]
    again = _telemetry("audit", "verify", cwd=in_tmp)
    assert again.returncode == 1 and "entry 1 is missing (the next one is 4)" in again.stderr


def test_verify_reports_entries_cut_from_the_end_and_triggers_dropped_or_replaced(in_tmp):
    with _service() as t:
        for days in (30, 60, 90):
            t.clean(retention_days=days)
    db = in_tmp / ".vibekit" / "audit.db"
    conn = sqlite3.connect(db)
    for sql in ("UPDATE head SET seq = 2", "DELETE FROM head"):  # the head only moves forward
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(sql)
    conn.execute("DROP TRIGGER entries_no_delete")
    conn.execute("DELETE FROM entries WHERE seq >= 3")
    conn.execute("DROP TRIGGER entries_no_update")  # and put back one of the same name that refuses nothing
    conn.execute("CREATE TRIGGER entries_no_update BEFORE UPDATE ON entries BEGIN SELECT 1; END")
    conn.commit()
    conn.close()
    copy = in_tmp / "copy-of-trail.db"
    copy.write_bytes(db.read_bytes())
    broken = _telemetry("audit", "verify", "--path", str(copy), cwd=in_tmp)
    assert broken.returncode == 1
    assert "entries 3 to 4 were deleted from the end (the head records 4 entries, the last one left is 2)" in broken.stderr
    assert "the append-only trigger entries_no_update was replaced" in broken.stderr
    assert "the append-only trigger entries_no_delete is missing" in broken.stderr
    assert "2 entries intact from the first one on" in broken.stderr

    conn = sqlite3.connect(copy)  # whoever drops the head's own triggers and the head itself is named too
    conn.executescript("DROP TRIGGER head_no_delete; DROP TRIGGER head_no_rewind; DROP TABLE head;")
    conn.close()
    headless = _telemetry("audit", "verify", "--path", str(copy), cwd=in_tmp)
    assert headless.returncode == 1 and "the head table was dropped" in headless.stderr
    missing = _telemetry("audit", "verify", "--path", str(in_tmp / "nowhere.db"), cwd=in_tmp)
    assert missing.returncode == 1 and "no audit trail at" in missing.stderr and not (in_tmp / "nowhere.db").exists()


def test_a_trail_from_before_head_records_gets_one_at_the_next_start(in_tmp):
    from sqlite_utils import Database

    from vibekit_telemetry_audit import GENESIS, entry_hash, migrations

    db_path = in_tmp / ".vibekit" / "audit.db"
    db_path.parent.mkdir()
    db = Database(db_path)
    migrations.apply(db, stop_before="m002_head")
    prev = GENESIS
    for seq in (1, 2):
        digest = entry_hash(prev, seq, "me", "clean", "events", "{}")
        db.execute("INSERT INTO entries VALUES (?, ?, 'me', 'clean', 'events', '{}', ?, ?)", [seq, seq, prev, digest])
        prev = digest
    db.conn.commit()
    db.close()
    old = _telemetry("audit", "verify", cwd=in_tmp)
    assert old.returncode == 1 and "written by an older version" in old.stderr
    with _service():
        pass
    upgraded = _telemetry("audit", "verify", cwd=in_tmp)
    assert upgraded.returncode == 0 and "3 entries, chain intact" in upgraded.stdout, upgraded.stderr


def test_a_retention_for_the_append_only_trail_is_refused_not_ignored(tmp_path):
    from vibekit_telemetry import ConfigError

    with pytest.raises(ConfigError, match="append-only"):
        TelemetryService(data_dir=str(tmp_path), security={"audit": {"enabled": True, "retention_days": 30}})
