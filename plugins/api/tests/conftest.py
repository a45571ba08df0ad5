"""Fixtures: a real uvicorn server on a random 127.0.0.1 port, serving a service on a real SQLite file,
and a real Redis for shared rate limits."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from vibekit_telemetry import TelemetryService, hookimpl

try:  # a real PostgreSQL for the scale-out tests, where the postgres plugin is installed
    from vibekit_telemetry_postgres.testing import pg_options, pg_schema, postgres_cluster, postgres_dsn  # noqa: F401
except ImportError:
    pass

REDIS_SERVER = os.environ.get("VIBEKIT_REDIS_SERVER", "redis-server")


class JsonLinesExporter:
    """A minimal exporter plugin (one JSON object per line) so export paths can be tested here."""

    name = "test-jsonl"

    @hookimpl
    def export_formats(self) -> list[str]:
        return ["jsonl"]

    @hookimpl
    def export(self, format, events, output, options):
        if format != "jsonl":
            return None
        count = 0
        for event in events:
            output.write(orjson.dumps(event.to_dict()) + b"\n")
            count += 1
        return count


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    """An empty working directory and no TELEMETRY_* variables."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("TELEMETRY_"):
            monkeypatch.delenv(name)
    return tmp_path


@pytest.fixture
def make_server(clean_env) -> Iterator[Callable[..., tuple[TelemetryService, Any, httpx.Client]]]:
    """``make_server(service_options=..., **api_options)``: a started service, its server and a client."""
    started: list[tuple[TelemetryService, httpx.Client]] = []

    def make(service_options: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
             **api_options: Any) -> tuple[TelemetryService, Any, httpx.Client]:
        options = {"data_dir": str(clean_env / ".vibekit"), "service_name": "api-test", **(service_options or {})}
        service = TelemetryService(**options)
        api_options.setdefault("rate_limit", {"enabled": False})
        server = service.start_api_server(port=0, **api_options)
        client = httpx.Client(base_url=server.url, headers=headers or {}, timeout=30)
        started.append((service, client))
        return service, server, client

    yield make
    for service, client in started:
        client.close()
        service.shutdown()


@pytest.fixture
def exporter():
    """A JSON-lines exporter plugin object."""
    return JsonLinesExporter()


@pytest.fixture
def api(make_server, exporter):
    """A server with default options (rate limiting off) and an exporter plugin."""
    return make_server(service_options={"plugins": [exporter]})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A throwaway ``redis-server`` on a free 127.0.0.1 port, its files in a temporary directory."""

    def __init__(self, directory: Path) -> None:
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                if self.process.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        """Stop the server (a test may do it early, to see the API carry on without it)."""
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    """A real Redis for rate limits shared between servers.

    Debian's ``redis-server`` (``VIBEKIT_REDIS_SERVER`` names another binary).  Where it is not installed the
    tests skip, except with ``VIBEKIT_REQUIRE_REDIS=1`` (as ``.ci/run`` sets it), where that is a failure.
    """
    if not shutil.which(REDIS_SERVER):
        message = "redis-server not installed (apt-get install redis-server, or set VIBEKIT_REDIS_SERVER)"
        if os.environ.get("VIBEKIT_REQUIRE_REDIS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


class CLIServer:
    """A ``telemetry api`` process started by :func:`start_api`."""

    def __init__(self, process: subprocess.Popen, url: str, lines: list[str]) -> None:
        self.process = process
        self.url = url
        self.lines = lines

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal the process and wait for it; its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout)
        self.lines.append(self.process.stderr.read())
        return code


@pytest.fixture
def start_api(tmp_path) -> Iterator[Callable[..., CLIServer]]:
    """``start_api(toml, *args, cwd=...)``: ``telemetry api --port 0`` as a real process, once it listens.

    ``toml`` is written to ``telemetry.toml`` in ``cwd`` (``tmp_path`` by default); every process still
    running at the end of the test is stopped with SIGTERM.
    """
    started: list[CLIServer] = []

    def start(toml: str, *args: str, cwd: Path | None = None) -> CLIServer:
        directory = cwd or tmp_path
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "telemetry.toml").write_text(toml)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_")}
        process = subprocess.Popen([sys.executable, "-m", "vibekit_telemetry", "api", "--port", "0", *args],
                                   cwd=directory, env=env, stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            lines.append(line)
            match = re.search(r"listening on (http://\S+)", line)
            if match:
                server = CLIServer(process, match.group(1), lines)
                started.append(server)
                return server
            if process.poll() is not None:
                break
        process.kill()
        raise AssertionError("telemetry api did not start:\n" + "".join(lines) + process.stderr.read())

    yield start
    for server in started:
        if server.process.poll() is None:
            server.stop()
