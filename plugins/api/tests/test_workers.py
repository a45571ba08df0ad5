"""``telemetry api --workers N``: several real processes on one port, one SQLite file, nothing acknowledged lost."""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import httpx
import psutil

from vibekit_telemetry import TelemetryService

TOML = 'data_dir = "data"\nservice_name = "workers"\n'


def _pids(server) -> set[int]:
    match = re.search(r"(\d+) workers: ([\d, ]+);", "".join(server.lines))
    assert match, server.lines
    return {int(pid) for pid in match.group(2).split(", ")}


def _answering(url: str, tries: int = 200) -> set[int]:
    seen: set[int] = set()
    for _ in range(tries):
        # a new connection each time: the workers take turns accepting them
        seen.add(httpx.get(f"{url}/health", timeout=10, headers={"connection": "close"}).json()["pid"])
        if len(seen) > 1:
            break
    return seen


def test_two_workers_answer_on_one_port_and_sigterm_keeps_every_acknowledged_event(start_api, tmp_path):
    server = start_api(TOML, "--workers", "2", "--no-rate-limit")
    workers = _pids(server)
    assert len(workers) == 2
    assert {child.pid for child in psutil.Process(server.process.pid).children()} == workers
    assert _answering(server.url) == workers

    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def produce(worker: int) -> None:
        n = 0
        while not stop.is_set():
            batch = [{"category": "load", "action": f"w{worker}-{n + i}"} for i in range(50)]
            try:
                # a connection per batch, so both workers take a share
                response = httpx.post(f"{server.url}/api/events", json=batch, timeout=10)
            except httpx.HTTPError:
                return  # the server went away: what it did not acknowledge does not count
            if response.status_code == 202:
                with lock:
                    acked.extend(response.json()["ids"])
            else:
                assert response.status_code < 500, response.text
            n += 50

    producers = [threading.Thread(target=produce, args=(i,)) for i in range(4)]
    for thread in producers:
        thread.start()
    time.sleep(2)
    assert server.stop(signal.SIGTERM) == 0, "".join(server.lines)
    stop.set()
    for thread in producers:
        thread.join(10)
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                   for pid in workers)
    assert len(acked) >= 500
    with TelemetryService(data_dir=str(tmp_path / "data")) as service:
        stored = {e.id for e in service.iter_events(category="load")}
    assert stored >= set(acked), f"{len(set(acked) - stored)} acknowledged events were lost"
    assert "stopped; the 2 workers wrote their pending events" in "".join(server.lines)


def test_a_worker_that_dies_is_replaced_and_memory_budgets_are_warned_about(start_api):
    server = start_api(TOML + "[api]\nworkers = 2\n")
    log = "".join(server.lines)
    assert "each of the 2 workers keeps its own budget" in log and "redis://" in log
    first, second = sorted(_pids(server))
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = {child.pid for child in psutil.Process(server.process.pid).children()}
        if len(children) == 2 and first not in children:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"no replacement worker: {children}")
    replacement = (children - {second}).pop()
    seen: set[int] = set()
    deadline = time.monotonic() + 30
    while replacement not in seen and time.monotonic() < deadline:
        seen |= _answering(server.url, tries=20)
    assert replacement in seen and server.process.poll() is None
    line = ""
    while f"worker {first} exited" not in line:  # reported before the replacement started, so already written
        line = server.process.stderr.readline()
        assert line, "stderr ended before the dead worker was reported"
    assert server.stop(signal.SIGINT) == 0
