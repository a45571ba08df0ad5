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
