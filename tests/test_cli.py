"""The `telemetry` command line, run as a real subprocess against real SQLite files."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vibekit_telemetry import TelemetryService

TELEMETRY = shutil.which("telemetry", path=str(Path(sys.executable).parent)) or "telemetry"


def run(cwd, *args, check=True, env=None, timeout=60):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_")}
    environment.update(env or {})
    result = subprocess.run([TELEMETRY, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env=environment)
    if check and result.returncode != 0:
        raise AssertionError(f"telemetry {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("demo")
    result = run(cwd, "demo", "--seed", "11", "--sessions", "30", "--no-serve")
    assert "Recorded 31 agent sessions" in result.stdout
    assert ".vibekit/telemetry.db" in result.stdout
    return cwd


def test_demo_records_a_multi_agent_workload(demo_dir):
    with TelemetryService(data_dir=str(demo_dir / ".vibekit")) as t:
        sessions = t.get_sessions()
        assert {s.agent for s in sessions} >= {"claude", "codex", "gemini"}
        assert {s.status for s in sessions} >= {"completed", "failed", "active"}
        assert any(s.parent_id for s in sessions), "tool calls are child sessions"
        assert sum(s.tokens.total for s in sessions) > 0
        assert t.query(event_type="error")
        models = {e.metadata.get("model") for e in t.query(event_type="stream")}
        assert len(models) >= 3


def test_sessions_and_session_with_events(demo_dir):
    listed = json.loads(run(demo_dir, "sessions", "--format", "json", "--limit", "5").stdout)
    assert len(listed) == 5 and listed[0]["started_at"] >= listed[-1]["started_at"]
    failed = json.loads(run(demo_dir, "sessions", "--status", "failed", "--format", "json").stdout)
    assert failed and all(s["status"] == "failed" for s in failed)
    sid = listed[1]["id"]
    detail = json.loads(run(demo_dir, "session", sid, "--with-events", "--format", "json").stdout)[0]
    assert detail["id"] == sid and detail["events"][0]["event_type"] == "start"
    assert len(detail["events"]) == detail["event_count"]
    table = run(demo_dir, "session", sid, "--with-events").stdout
    assert sid[:12] in table and "start" in table
    missing = run(demo_dir, "session", "nope", check=False)
    assert missing.returncode == 1 and "no session 'nope'" in missing.stderr


def test_query_formats(demo_dir):
    table = run(demo_dir, "query", "--category", "claude", "--since", "1h", "--format", "table").stdout
    assert "claude" in table and "events" in table
    rows = json.loads(run(demo_dir, "query", "--category", "claude", "--type", "stream", "--since", "1h",
                          "--format", "json").stdout)
    assert rows and all(r["category"] == "claude" and r["event_type"] == "stream" for r in rows)
    lines = run(demo_dir, "query", "--limit", "7", "--format", "jsonl").stdout.splitlines()
    assert len(lines) == 7 and all(json.loads(line)["id"] for line in lines)
    parsed = list(csv.DictReader(io.StringIO(run(demo_dir, "query", "--limit", "4", "--format", "csv").stdout)))
    assert len(parsed) == 4 and {"id", "category", "timestamp"} <= set(parsed[0])
    found = json.loads(run(demo_dir, "query", "-q", "regression test", "--format", "json").stdout)
    assert found and all("regression" in ((r.get("stream_data") or "") + (r.get("prompt") or "")).lower() for r in found)
    bad = run(demo_dir, "query", "--since", "yesterday-ish", check=False)
    assert bad.returncode == 2 and "30m" in bad.stderr


def test_tail_follows_events_written_by_another_process(tmp_path):
    run(tmp_path, "config", "init")
    # --since a moment ago, so the result does not depend on whether tail is up before the first write.
    since = str(int(time.time() * 1000) - 1000)
    proc = subprocess.Popen([TELEMETRY, "tail", "--since", since, "--count", "3", "--timeout", "30", "--interval", "0.1"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    with TelemetryService(config=str(tmp_path / "telemetry.toml"), data_dir=str(tmp_path / ".vibekit")) as t:
        for i in range(3):
            t.track({"category": "tailed", "value": i})
    out, err = proc.communicate(timeout=40)
    assert proc.returncode == 0, err
    assert [json.loads(line)["value"] for line in out.splitlines()] == [0, 1, 2]


def test_plugins_command(tmp_path):
    data = json.loads(run(tmp_path, "plugins", "--json").stdout)
    by_name = {p["name"]: p for p in data["plugins"]}
    assert by_name["sqlite"]["loaded"] and "store" in by_name["sqlite"]["hooks"]
    assert by_name["sqlite"]["distribution"] == "vibekit-telemetry-sqlite"
    assert not by_name["memory"]["loaded"]
    assert "hostname" in by_name
    assert "sqlite" in run(tmp_path, "plugins").stdout


def test_config_init_show_validate(tmp_path):
    assert "wrote telemetry.toml" in run(tmp_path, "config", "init").stdout
    again = run(tmp_path, "config", "init", check=False)
    assert again.returncode == 1 and "--force" in again.stderr
    assert run(tmp_path, "config", "validate").stdout.startswith("configuration OK")
    config = tmp_path / "telemetry.toml"
    config.write_text(config.read_text() + '\n[api.auth]\napi_keys = ["hunter2-key"]\ntoken = {"$env" = "T"}\n')
    shown = run(tmp_path, "config", "show", env={"T": "tok-value"}).stdout
    assert "hunter2-key" not in shown and "tok-value" not in shown and '"$env": "T"' in shown
    config.write_text('stream_batch_sise = 5\n')
    bad = run(tmp_path, "config", "validate", check=False)
    assert bad.returncode == 1 and "telemetry.toml" in bad.stderr and "stream_batch_sise: unknown key" in bad.stderr
    config.write_text('plugins = ["nonesuch"]\n')
    bad = run(tmp_path, "config", "validate", check=False)
    assert bad.returncode == 1 and "unknown plugin 'nonesuch'" in bad.stderr


def test_clean_optimize_health(tmp_path):
    with TelemetryService(data_dir=str(tmp_path / ".vibekit")) as t:
        t.track({"category": "old", "timestamp": "2020-01-01"})
        t.track({"category": "new"})
    assert "deleted 1 events" in run(tmp_path, "clean", "--days", "30").stdout
    assert "optimized" in run(tmp_path, "optimize").stdout
    health = run(tmp_path, "health", "--detailed").stdout
    assert "healthy: yes" in health and "[sqlite]" in health
    data = json.loads(run(tmp_path, "health", "--format", "json").stdout)[0]
    assert data["healthy"] is True and data["counters"]["dropped"] == 0


def test_a_broken_database_is_a_one_line_error(tmp_path):
    (tmp_path / ".vibekit").mkdir()
    (tmp_path / ".vibekit" / "telemetry.db").write_text("not a database at all")
    result = run(tmp_path, "sessions", check=False)
    assert result.returncode == 1 and "not a SQLite database" in result.stderr and "Traceback" not in result.stderr


def test_python_dash_m(tmp_path):
    result = subprocess.run([sys.executable, "-m", "vibekit_telemetry", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "0.1.0" in result.stdout


def test_validate_and_plugins_do_not_open_storage(tmp_path):
    run(tmp_path, "config", "validate")
    run(tmp_path, "plugins", "--json")
    assert not (tmp_path / ".vibekit").exists()


def test_export_and_import_round_trip_through_the_cli(demo_dir, tmp_path):
    out = tmp_path / "claude.csv.gz"
    result = run(demo_dir, "export", "--output", str(out), "--category", "claude", "--since", "7d", "--delimiter", ";")
    assert "exported" in result.stderr and out.exists()
    refused = run(demo_dir, "export", "--output", str(out), "--category", "claude", check=False)
    assert refused.returncode == 2 and "--force" in refused.stderr
    run(demo_dir, "export", "--output", str(out), "--category", "claude", "--since", "7d", "--force")
    target = tmp_path / "target"
    target.mkdir()
    imported = run(target, "import", str(out))
    with TelemetryService(data_dir=str(demo_dir / ".vibekit")) as source:
        expected = sum(1 for e in source.iter_events(category="claude"))
    assert f"imported {expected:,} of {expected:,} events" in imported.stdout
    piped = run(demo_dir, "export", "--format", "jsonl", "--output", "-", "--type", "start")
    assert all(json.loads(line)["event_type"] == "start" for line in piped.stdout.splitlines())
    unknown = run(demo_dir, "export", "--format", "xlsx", "--output", str(tmp_path / "x.xlsx"), check=False)
    assert unknown.returncode == 2 and "available:" in unknown.stderr
