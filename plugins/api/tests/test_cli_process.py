"""``telemetry api`` as a real process: serve, take load, drain on SIGTERM, keep every acknowledged event."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx

from vibekit_telemetry import TelemetryService


def _start(tmp_path, *args):
    (tmp_path / "telemetry.toml").write_text('data_dir = "data"\nservice_name = "cli-api"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_")}
    proc = subprocess.Popen([sys.executable, "-m", "vibekit_telemetry", "api", "--port", "0", *args],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        match = re.search(r"listening on (http://\S+)", line)
        if match:
            return proc, match.group(1), lines
        if proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("telemetry api did not start:\n" + "".join(lines) + proc.stderr.read())


def test_sigterm_drains_and_every_acknowledged_event_is_stored(tmp_path):
    proc, url, _ = _start(tmp_path, "--no-rate-limit")
    acked: list[str] = []
    stop = threading.Event()

    def produce():
        with httpx.Client(base_url=url, timeout=10) as client:
            n = 0
            while not stop.is_set():
                batch = [{"category": "load", "action": f"e{n + i}"} for i in range(100)]
                try:
                    response = client.post("/api/events", json=batch)
                except httpx.HTTPError:
                    return  # the server went away: what it did not acknowledge does not count
                if response.status_code == 202:
                    acked.extend(response.json()["ids"])
                else:
                    assert response.status_code < 500, response.text
                n += 100

    thread = threading.Thread(target=produce)
    thread.start()
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    stop.set()
    thread.join(10)
    assert len(acked) >= 1000
    with TelemetryService(data_dir=str(tmp_path / "data")) as service:
        stored = {e.id for e in service.iter_events(category="load")}
    assert stored >= set(acked), f"{len(set(acked) - stored)} acknowledged events were lost"


def test_auth_flag_generates_a_key_and_enforces_it(tmp_path):
    proc, url, lines = _start(tmp_path, "--auth")
    try:
        key = next(re.search(r"generated API key \(shown once\): (\S+)", line).group(1)
                   for line in lines if "generated API key" in line)
        assert httpx.get(f"{url}/api/events").status_code == 401
        assert httpx.get(f"{url}/api/events", headers={"x-api-key": key}).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


def test_allowed_host_flag_adds_a_name_the_server_answers_to(tmp_path):
    proc, url, _ = _start(tmp_path, "--allowed-host", "telemetry.internal")
    try:
        assert httpx.get(f"{url}/health", headers={"host": "telemetry.internal"}).status_code == 200
        assert httpx.get(f"{url}/health", headers={"host": "evil.example"}).status_code == 421
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


def test_bad_options_fail_with_a_message(tmp_path):
    (tmp_path / "telemetry.toml").write_text('data_dir = "data"\n[api]\nport = "three thousand"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_")}
    result = subprocess.run([sys.executable, "-m", "vibekit_telemetry", "api", "--host", "0.0.0.0"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "api.port" in result.stderr or "port" in result.stderr
