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


TOML = 'data_dir = "data"\nservice_name = "cli-api"\n'


def test_sigterm_drains_and_every_acknowledged_event_is_stored(tmp_path, start_api):
    server = start_api(TOML, "--no-rate-limit")
    url = server.url
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
    server.stop(signal.SIGTERM, timeout=30)
    stop.set()
    thread.join(10)
    assert len(acked) >= 1000
    with TelemetryService(data_dir=str(tmp_path / "data")) as service:
        stored = {e.id for e in service.iter_events(category="load")}
    assert stored >= set(acked), f"{len(set(acked) - stored)} acknowledged events were lost"


def test_auth_flag_generates_a_key_and_enforces_it(start_api):
    server = start_api(TOML, "--auth")
    key = next(re.search(r"generated API key \(shown once\): (\S+)", line).group(1)
               for line in server.lines if "generated API key" in line)
    assert httpx.get(f"{server.url}/api/events").status_code == 401
    assert httpx.get(f"{server.url}/api/events", headers={"x-api-key": key}).status_code == 200
    server.stop(signal.SIGINT, timeout=30)


def test_allowed_host_flag_adds_a_name_the_server_answers_to(start_api):
    server = start_api(TOML, "--allowed-host", "telemetry.internal")
    assert httpx.get(f"{server.url}/health", headers={"host": "telemetry.internal"}).status_code == 200
    assert httpx.get(f"{server.url}/health", headers={"host": "evil.example"}).status_code == 421
    server.stop(signal.SIGINT, timeout=30)


def test_bad_options_fail_with_a_message(tmp_path):
    (tmp_path / "telemetry.toml").write_text('data_dir = "data"\n[api]\nport = "three thousand"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_")}
    result = subprocess.run([sys.executable, "-m", "vibekit_telemetry", "api", "--host", "0.0.0.0"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "api.port" in result.stderr or "port" in result.stderr
