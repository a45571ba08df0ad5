"""GDPR/CCPA duties through the service, on real SQLite files (with encryption and audit where it matters)."""

from __future__ import annotations

import io
import json
import secrets
import subprocess
import sys
import time

import pytest

from vibekit_telemetry import ConfigError, TelemetryService, now_ms
from vibekit_telemetry_compliance import CompliancePlugin

DAY = 86_400_000


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _session(t, user, *, age_days=0.0, text="help me with my tax return"):
    ts = now_ms() - int(age_days * DAY)
    sid = t.track_start("claude", "chat", text, metadata={"user_id": user, "plan": "pro"}, timestamp=ts)
    t.track_stream(sid, f"sure, {user}", timestamp=ts + 10)
    t.track_end(sid, timestamp=ts + 20)
    return sid


def test_erasure_and_access_by_user_id_are_complete_and_audited(in_tmp):
    key = secrets.token_hex(32)
    security = {"audit": {"enabled": True}, "encryption": {"enabled": True, "key": key}}
    with TelemetryService(security=security, compliance={"enabled": True, "regulations": ["gdpr", "ccpa"]}) as t:
        alice = [_session(t, "alice") for _ in range(3)]
        bob = _session(t, "bob")
        plugin = t.host.meta["compliance"]["object"]
        out = io.BytesIO()
        assert plugin.export_user("alice", out) == {"events": 9, "sessions": 3}
        records = [json.loads(line) for line in out.getvalue().splitlines()]
        assert {r["type"] for r in records} == {"session", "event"}
        assert all(r["prompt"] == "help me with my tax return" for r in records if r.get("event_type") == "start")
        assert plugin.erase_user("alice") == {"events": 9, "sessions": 3}
        assert all(t.get_session(sid) is None for sid in alice) and t.query(session_id=alice[0]) == []
        assert t.get_session(bob).event_count == 3
        actions = [(e["action"], e["target"]) for e in t.get_audit_logs()]
    assert ("delete", "user:alice") in actions and ("access", "user:alice") in actions
    raw = b"".join(p.read_bytes() for p in (in_tmp / ".vibekit").glob("telemetry.db*"))
    assert b"alice" not in raw


def test_the_first_check_runs_at_once_on_a_machine_up_for_seconds(in_tmp, monkeypatch):
    import vibekit_telemetry_compliance as compliance

    # the monotonic clock counts from boot on Linux: a machine started a minute ago reads about 60 s
    monkeypatch.setattr(compliance, "monotonic", lambda: 5.0)
    plugin = CompliancePlugin(regulations=["gdpr"], retention_days=90, check_interval="1h")
    with TelemetryService(plugins=[plugin]) as t:
        old = _session(t, "carol", age_days=100)
        t.flush()
        plugin.idle()  # (or the flusher's idle moment before it: either starts the check)
        deadline = now_ms() + 10_000
        while plugin.stats["retention_runs"] == 0 and now_ms() < deadline:
            time.sleep(0.01)
        assert plugin.stats["retention_runs"] == 1 and t.get_session(old) is None
        plugin.idle()  # within the hour: no second run
        assert plugin.stats["retention_runs"] == 1


def test_retention_and_anonymisation_on_schedule(in_tmp):
    plugin = CompliancePlugin(regulations=["gdpr", "ccpa"], retention_days=90, anonymize_after=30)
    with TelemetryService(plugins=[plugin]) as t:
        old = _session(t, "carol", age_days=100)
        middle = _session(t, "dave", age_days=40)
        recent = _session(t, "erin", age_days=1)
        done = plugin.run_schedule()
        assert done == {"deleted": 3, "anonymised": 2}  # dave's start and stream; his end carries nothing to strip
        assert t.get_session(old) is None
        stripped = t.query(session_id=middle, order="asc")
        assert [e.prompt for e in stripped] == [None, None, None] and stripped[1].stream_data is None
        assert all("user_id" not in e.metadata and e.metadata.get("plan", "pro") == "pro" for e in stripped)
        assert t.get_session(middle).event_count == 3  # counts and times stay for analytics
        assert t.query(session_id=recent, event_type="start")[0].prompt == "help me with my tax return"
        assert t.get_health_status().components["compliance"]["anonymised"] == 2


def test_minimisation_drops_fields_before_storage(in_tmp):
    with TelemetryService(compliance={"enabled": True, "exclude_fields": ["prompt", "metadata.ip"],
                                      "include_only": ["model", "user_id"]}) as t:
        t.track({"category": "c", "prompt": "secret prompt", "metadata": {"model": "m", "ip": "1.2.3.4",
                                                                            "browser": "x", "user_id": "u"}})
        [event] = t.query()
    assert event.prompt is None and event.metadata == {"model": "m", "user_id": "u"}
    with pytest.raises(ConfigError, match="not a droppable field"):
        TelemetryService(compliance={"enabled": True, "exclude_fields": ["timestamp"]})
    with pytest.raises(ConfigError, match="shorter than retention_days"):
        TelemetryService(compliance={"enabled": True, "retention_days": 30, "anonymize_after": 60})


def test_compliance_cli(in_tmp):
    with TelemetryService() as t:
        _session(t, "frank")
        _session(t, "grace")
    run = lambda *args: subprocess.run([sys.executable, "-m", "vibekit_telemetry", "compliance", *args],  # noqa: E731
                                       capture_output=True, text=True, cwd=in_tmp)
    exported = run("export", "--user-id", "frank")
    assert exported.returncode == 0, exported.stderr
    assert len(exported.stdout.splitlines()) == 4  # the session and its three events
    erased = run("erase", "--user-id", "frank", "--yes")
    assert erased.returncode == 0 and "erased 3 events in 1 sessions" in erased.stdout
    with TelemetryService() as t:
        assert {e.metadata.get("user_id") for e in t.query(event_type="start")} == {"grace"}


def test_seed_keywords_and_regulation_sections(in_tmp):
    plugin = CompliancePlugin({"regulations": ["gdpr", "ccpa"], "retentionDays": 90,
                               "gdpr": {"anonymizeAfter": 30, "deleteAfter": 60}})
    assert (plugin.retention_days, plugin.anonymize_after) == (60, 30)  # the shortest period is the one that holds
    with TelemetryService(plugins=[plugin]) as t:
        gone, stripped = _session(t, "hal", age_days=70), _session(t, "ivy", age_days=45)
        assert plugin.run_schedule() == {"deleted": 3, "anonymised": 2}
        assert t.get_session(gone) is None and t.query(session_id=stripped, event_type="start")[0].prompt is None
    with pytest.raises(ConfigError, match="retention_dayz: unknown key"):
        CompliancePlugin(retentionDayz=90)
    with pytest.raises(ConfigError, match="must be one of|expected one of"):
        CompliancePlugin(regulations=["hipaa"])
