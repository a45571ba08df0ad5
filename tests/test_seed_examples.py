"""Every example of the TypeScript seed's README, translated to Python, run against the real thing.

The README claims that code and configuration written like the seed's work
unchanged.  This file checks that claim block by block, top to bottom of the
seed README (``../shared/seed/000_9493a8405f15124e.txt``): each test names the
seed section it translates, keeps the seed's camelCase keys, single-dict call
forms, option names and plugin class names, and asserts what the seed promises
(the prompt is not in the database file, the email is not stored, the export
holds the session's events ...), never just "no exception".

Translation rules: ``trackStart`` is ``track_start`` and ``await x()`` is
``x()`` (the ``a``-prefixed forms are checked once, for asyncio users);
``Date.now()`` is ``now_ms()``; ports the seed fixes (3000, 3001) become free
ones, because a fixed port collides with other runs on the same machine; paths
outside the project (``/var/lib/...``) move below the test's temporary directory.

Only ``test_every_seed_block_and_cli_line_is_translated`` reads the seed file
(and skips without it); the translations themselves live here.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import gzip
import io
import json
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from click.testing import CliRunner

from vibekit_telemetry import EventBuilder, InvalidEventError, TelemetryError, TelemetryService, now_ms

REPO = Path(__file__).resolve().parents[1]
SEED_README = REPO.parent / "shared" / "seed" / "000_9493a8405f15124e.txt"
TELEMETRY = shutil.which("telemetry", path=str(Path(sys.executable).parent)) or "telemetry"
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
#: 48 characters after "sk-": what the seed's custom detector /sk-[a-zA-Z0-9]{48}/g matches
API_KEY = "sk-" + "abc123" * 8


# -- helpers -----------------------------------------------------------------------------------


def files_holding(root: Path, needle: bytes) -> list[str]:
    """The files below ``root`` whose bytes contain ``needle`` (database, WAL, journals ...)."""
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def db_bytes(path: Path) -> bytes:
    """A SQLite file with its write-ahead log, where recent pages live until a checkpoint."""
    return b"".join(Path(f"{path}{suffix}").read_bytes() for suffix in ("", "-wal")
                    if Path(f"{path}{suffix}").exists())


def _rows(data: bytes) -> list[dict]:
    """The events of a ``json`` export: a JSON array, or one object per line."""
    text = data.decode()
    return json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in text.splitlines()]


def free_port() -> int:
    """A port nothing listens on right now (for options that cannot take 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a subprocess: no TELEMETRY_* from the caller, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_") and k != "DEBUG"}
    env.update(extra or {})
    return env


def api_url(service: TelemetryService) -> str:
    """The address of the server an ``api = {enabled = true}`` section started in the background."""
    servers = service.get_health_status().components["api"]["servers"]
    assert servers, "the api section is enabled but no server runs"
    return servers[0]["url"]


def seed_store(root: Path) -> dict[str, str]:
    """The data the seed's CLI lines read, in ``root/.vibekit/telemetry.db`` (10 events).

    Sessions session-1 (completed) and session-2 (failed) of claude, an active claude session, codex's
    session-3, and a custom event; returns the ids the tests look for.
    """
    ids = {}
    path = str(root / ".vibekit" / "telemetry.db")
    with TelemetryService(service_name="my-ai-app", storage=[{"type": "sqlite", "options": {"path": path}}]) as t:
        for sid, status in (("session-1", "completed"), ("session-2", "failed")):
            t.track_start("claude", "code", f"prompt of {sid}", session_id=sid, metadata={"model": "claude-3-sonnet"})
            t.track_stream(sid, f"stream of {sid}")
            t.track_end(sid, status, metadata={"input_tokens": 100, "output_tokens": 20})
        ids["active"] = t.track_start("claude", "chat", "still running")
        t.track_start("codex", "code", "prompt of session-3", session_id="session-3")
        t.track_end("session-3", "completed")
        ids["custom"] = t.track({"eventType": "custom", "category": "user-action", "action": "button-click", "value": 1})
    return ids


@pytest.fixture(scope="module")
def telemetry_cli():
    """The ``telemetry`` group with the installed plugins' commands, as ``main()`` builds it.

    ``main()`` itself ends in ``sys.exit``, so the group it fills in is what CliRunner invokes.
    """
    from vibekit_telemetry import cli

    cli._add_plugin_commands()
    return cli.cli


@pytest.fixture
def run_cli(telemetry_cli, in_tmp):
    """Run one seed CLI line in-process in the test's directory; returns click's result."""

    def run(line: str, env: dict[str, str] | None = None):
        args = line.split()
        assert args[0] == "telemetry"
        return CliRunner().invoke(telemetry_cli, args[1:], env=env, catch_exceptions=True)

    return run


def ok(result) -> str:
    """The output of a CLI run that must have exited 0."""
    assert result.exit_code == 0, f"exit {result.exit_code}:\n{result.output}\n{result.exception!r}"
    return result.stdout


class Serving:
    """A long-running ``telemetry ...`` subprocess (``api``, ``analytics dashboard``) and what it printed."""

    def __init__(self, cwd: Path, line: str, env: dict[str, str] | None = None) -> None:
        args = line.split()
        assert args[0] == "telemetry"
        self.proc = subprocess.Popen([TELEMETRY, *args[1:]], cwd=cwd, env=clean_env(env), text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.returncode: int | None = None
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        self.stdout: list[str] = []
        for stream, sink in ((self.proc.stderr, self.stderr), (self.proc.stdout, self.stdout)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()

    def _pump(self, stream, sink: list[str]) -> None:
        for line in stream:
            sink.append(line)
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        """The first output line matching ``pattern``; fails with the output when the process ends first."""
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    time.sleep(0.2)
                    raise AssertionError(f"exited {self.proc.returncode} before printing {pattern!r}:\n"
                                         + "".join(self.stdout + self.stderr))
                continue
            seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"no line matching {pattern!r} within {timeout}s:\n" + "".join(seen))

    def stop(self, sig: int = signal.SIGINT) -> int:
        """Ctrl-C (or ``sig``), then the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("did not stop within 30 s of Ctrl-C")

    @property
    def output(self) -> str:
        return "".join(self.stdout + self.stderr)


@contextlib.contextmanager
def serving(cwd: Path, line: str, env: dict[str, str] | None = None):
    """Run ``telemetry api ...`` until the block ends (then Ctrl-C); yields the process and the API's address.

    The exit status is left in ``returncode`` for :func:`stopped_cleanly`, so a test checks what the server did
    before it checks how it stopped.
    """
    server = Serving(cwd, line, env)
    try:
        url = server.wait_for(r"listening on (http://\S+)").group(1)
        yield server, url
    finally:
        server.returncode = server.stop()


def stopped_cleanly(server: Serving) -> None:
    """Ctrl-C is how the seed stops ``telemetry api``: a normal end (0, or the shell's 130), no traceback."""
    assert server.returncode in (0, 130) and "Traceback" not in server.output, (
        f"exited {server.returncode} on Ctrl-C:\n{server.output}")


@pytest.fixture(scope="module")
def s3_endpoint():
    """A real S3-compatible server (moto's, on 127.0.0.1) for the seed's S3ExportPlugin."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def receiver(tmp_path):
    """A second service with its API server, playing the OpenTelemetry collector the seed sends to."""
    service = TelemetryService(storage=[{"type": "sqlite", "options": {"path": str(tmp_path / "collector.db")}}])
    server = service.start_api_server(port=0, rate_limit={"enabled": False})
    yield service, server.url
    service.shutdown()


# -- Overview > Architecture (mermaid) and Installation (npm install ...) ------------------------


def test_installation_and_architecture_components_are_installed():
    """Seed "Architecture" and "Installation": the packages the seed installs, here as installed plugins.

    npm's ``@vibe-kit/db``/``better-sqlite3`` are the sqlite plugin, ``@opentelemetry/api`` the otlp plugin and
    ``ws`` the api plugin's WebSocket stream; the diagram's SQLite/OTLP/Memory providers, analytics (metrics,
    anomaly detector, alert manager), API server, CLI and dashboard are each an installed plugin or the kernel.
    """
    from vibekit_telemetry.plugins import installed_plugins

    names = {p.name for p in installed_plugins()}
    assert {"sqlite", "otlp", "memory", "analytics", "api", "dashboard", "pii", "encryption", "audit"} <= names
    assert Path(TELEMETRY).exists(), "the `telemetry` command (seed: npm install -g) is installed"
    import websockets  # noqa: F401  (the seed's `ws`, for the api plugin's WebSocket stream)


# -- Quick Start ---------------------------------------------------------------------------------


def test_quick_start_basic_setup(in_tmp):
    """Seed "Quick Start > Basic Setup": the seed's constructor config, then ``await telemetry.initialize()``."""
    telemetry = TelemetryService(**{
        "serviceName": "my-ai-app",
        "serviceVersion": "1.0.0",
        "storage": [{
            "type": "sqlite",
            "enabled": True,
            "options": {
                "path": ".vibekit/telemetry.db",
                "streamBatchSize": 100,
                "streamFlushInterval": 1000,
            },
        }],
        "analytics": {
            "enabled": True,
            "metrics": {"enabled": True},
            "anomaly": {"enabled": True},
        },
        "api": {
            "enabled": True,
            "port": 0,  # seed: 3000
        },
    })
    try:
        assert telemetry.initialize() is telemetry
        assert telemetry.initialize() is telemetry  # idempotent
        assert (telemetry.service_name, telemetry.config.service_version) == ("my-ai-app", "1.0.0")
        pipeline = telemetry.get_health_status().pipeline
        assert (pipeline["batch_size"], pipeline["flush_interval_ms"]) == (100, 1000)
        telemetry.track({"eventType": "custom", "category": "setup", "action": "ready"})
        assert telemetry.get_metrics().events.total == 1  # analytics is on
        health = httpx.get(api_url(telemetry) + "/health", timeout=10)
        assert health.status_code == 200  # the api section serves
    finally:
        telemetry.shutdown()
    assert (in_tmp / ".vibekit" / "telemetry.db").is_file()
    with pytest.raises(TelemetryError):
        telemetry.initialize()  # a shut-down service says so instead of pretending to start


def _tracking_events(telemetry: TelemetryService) -> str:
    """Seed "Quick Start > Tracking Events", line by line."""
    # Start a session
    session_id = telemetry.track_start("claude", "code", "Fix this bug")
    # Track streaming data
    telemetry.track_stream({
        "sessionId": session_id,
        "eventType": "stream",
        "category": "claude",
        "action": "code",
        "streamData": "Here's the fix for your bug...",
        "metadata": {
            "model": "claude-3-sonnet",
            "temperature": 0.7,
        },
    })
    # Track completion
    telemetry.track_end(session_id, "completed")
    # Track custom events
    telemetry.track({
        "eventType": "custom",
        "category": "user-action",
        "action": "button-click",
        "label": "submit-form",
        "value": 1,
        "metadata": {
            "formId": "user-preferences",
            "duration": 1500,
        },
    })
    return session_id


def _check_tracked(telemetry: TelemetryService, session_id: str) -> None:
    start, stream, end = sorted(telemetry.query(session_id=session_id),
                                key=lambda e: ("start", "stream", "end").index(e.event_type))
    assert (start.event_type, start.prompt, start.category) == ("start", "Fix this bug", "claude")
    assert (stream.event_type, stream.category, stream.action) == ("stream", "claude", "code")
    assert stream.stream_data == "Here's the fix for your bug..."
    assert stream.metadata == {"model": "claude-3-sonnet", "temperature": 0.7}
    assert (end.event_type, end.status) == ("end", "completed")
    [custom] = telemetry.query(category="user-action")
    assert (custom.event_type, custom.action, custom.label, custom.value) == ("custom", "button-click", "submit-form", 1)
    assert custom.metadata == {"formId": "user-preferences", "duration": 1500}
    assert telemetry.get_session(session_id).status == "completed"


def test_quick_start_tracking_events(in_tmp):
    """Seed "Quick Start > Tracking Events": a session with a streamed chunk, and a custom event."""
    with TelemetryService(service_name="my-ai-app") as telemetry:
        session_id = _tracking_events(telemetry)
        _check_tracked(telemetry, session_id)


def test_quick_start_with_asyncio(in_tmp):
    """Seed "Quick Start" as written, with ``await``: ``ainitialize`` and the ``a``-prefixed track forms."""

    async def main() -> None:
        telemetry = TelemetryService(serviceName="my-ai-app", analytics={"enabled": True})
        assert await telemetry.ainitialize() is telemetry
        session_id = await telemetry.atrack_start("claude", "code", "Fix this bug")
        await telemetry.atrack_stream({"sessionId": session_id, "eventType": "stream", "category": "claude",
                                       "action": "code", "streamData": "Here's the fix for your bug...",
                                       "metadata": {"model": "claude-3-sonnet", "temperature": 0.7}})
        await telemetry.atrack_end(session_id, "completed")
        await telemetry.atrack_error({"sessionId": session_id, "error": "late failure"})
        await telemetry.atrack({"eventType": "custom", "category": "user-action", "action": "button-click",
                                "label": "submit-form", "value": 1,
                                "metadata": {"formId": "user-preferences", "duration": 1500}})
        metrics = await telemetry.aget_metrics()
        insights = await telemetry.aget_insights({"timeRange": {"start": now_ms() - DAY_MS}, "categories": ["claude"]})
        exported = await telemetry.aexport("json", {"sessionId": session_id})
        await telemetry.ashutdown()
        assert metrics.events.total == 5 and insights is not None
        assert b"Here's the fix for your bug..." in exported

    asyncio.run(main())


def test_quick_start_querying_data(in_tmp):
    """Seed "Quick Start > Querying Data": query with a timeRange, getSession, getInsights with categories."""
    with TelemetryService(service_name="my-ai-app", analytics={"enabled": True}) as telemetry:
        session_id = _tracking_events(telemetry)
        old = telemetry.track_start("claude", "code", "yesterday's bug", timestamp=now_ms() - 2 * HOUR_MS)
        telemetry.track_stream(old, "too old for the last hour", timestamp=now_ms() - 2 * HOUR_MS + 10)
        other = telemetry.track_start("codex", "code", "another agent")
        for i in range(10):
            telemetry.track_stream(other, f"codex chunk {i}")

        # Query events
        events = telemetry.query({
            "category": "claude",
            "eventType": "stream",
            "timeRange": {
                "start": now_ms() - 3600000,  # Last hour
                "end": now_ms(),
            },
            "limit": 100,
        })
        # Get session details
        session = telemetry.get_session(session_id)
        # Get analytics
        analytics = telemetry.get_insights({
            "timeRange": {"start": now_ms() - 86400000},  # Last 24 hours
            "categories": ["claude", "gpt-4"],
        })

    assert [e.stream_data for e in events] == ["Here's the fix for your bug..."]
    assert session.status == "completed" and session.stream_count == 1 and session.prompt == "Fix this bug"
    subjects = {f.subject for findings in (analytics.busiest_agents, analytics.slowest_agents) for f in findings}
    assert "codex" not in subjects
    # categories keep claude's events of the window: this session's start/stream/end and the older session's two
    claude_events = 3 + 2
    assert analytics.summary and analytics.summary[0].startswith(f"{claude_events} events"), analytics.summary


# -- Core Concepts -------------------------------------------------------------------------------


def test_core_concepts_events(in_tmp):
    """Seed "Core Concepts > Events": every field of the TelemetryEvent interface, camelCase, round-trips."""
    timestamp = now_ms() - 5000
    with TelemetryService() as telemetry:
        telemetry.track_start("claude", "code", "p", session_id="session-123")
        event_id = telemetry.track({
            "sessionId": "session-123",
            "eventType": "custom",
            "category": "claude",
            "action": "code-generation",
            "label": "react-component",
            "value": 150,
            "timestamp": timestamp,
            "metadata": {"language": "typescript"},
        })
        [event] = [e for e in telemetry.query(session_id="session-123") if e.id == event_id]
    assert (event.session_id, event.event_type, event.category, event.action, event.label, event.value,
            event.timestamp, event.metadata) == ("session-123", "custom", "claude", "code-generation",
                                                 "react-component", 150, timestamp, {"language": "typescript"})


def test_core_concepts_sessions(in_tmp):
    """Seed "Core Concepts > Sessions": trackStart ... events ... trackEnd groups the events in one session."""
    with TelemetryService() as telemetry:
        # Session lifecycle
        session_id = telemetry.track_start("agent", "mode", "prompt")
        telemetry.track({"sessionId": session_id, "eventType": "custom", "category": "agent", "action": "step"})
        telemetry.track_end(session_id, "completed")
        session = telemetry.get_session(session_id)
    assert (session.agent, session.mode, session.prompt, session.status) == ("agent", "mode", "prompt", "completed")
    assert session.event_count == 3 and session.ended_at >= session.started_at


def test_core_concepts_storage_providers_sqlite_and_memory(in_tmp):
    """Seed "Core Concepts > Storage Providers": the SQLite entry (a file) and the in-memory one (no file)."""
    # SQLite (recommended for local development)
    with TelemetryService(storage=[{"type": "sqlite", "enabled": True, "options": {"path": ".vibekit/telemetry.db"}}]) as t:
        event_id = t.track({"eventType": "custom", "category": "sqlite", "action": "stored"})
    with TelemetryService(storage=[{"type": "sqlite", "options": {"path": ".vibekit/telemetry.db"}}]) as t:
        assert [e.id for e in t.query(category="sqlite")] == [event_id]  # in the file, read by the next process
    # In-memory (for testing)
    os.mkdir("memory")
    os.chdir("memory")
    with TelemetryService(storage=[{"type": "memory", "enabled": True}]) as t:
        t.track({"eventType": "custom", "category": "memory", "action": "kept"})
        assert [e.action for e in t.query(category="memory")] == ["kept"]
        assert t.get_health_status().healthy
    assert not list(Path(".").rglob("*.db")), "the memory store writes no database file"


def test_core_concepts_storage_providers_otlp(in_tmp, receiver):
    """Seed "Core Concepts > Storage Providers": the OpenTelemetry entry sends sessions to a collector."""
    collector, endpoint = receiver
    with TelemetryService(storage=[{
        "type": "otlp",
        "enabled": True,
        "options": {
            "endpoint": endpoint,  # seed: http://localhost:4318
            "headers": {"api-key": "your-key"},
        },
    }]) as telemetry:
        session_id = telemetry.track_start("claude", "code", "sent over OTLP")
        telemetry.track_end(session_id, "completed")
    [session] = collector.get_sessions(agent="claude")
    assert (session.prompt, session.status) == ("sent over OTLP", "completed")


# -- Configuration -------------------------------------------------------------------------------


def complete_config(port: int = 0) -> dict:
    """Seed "Configuration > Complete Configuration Options": every key of the TelemetryConfig interface."""
    return {
        # Service identification
        "serviceName": "my-ai-app",
        "serviceVersion": "1.0.0",
        "environment": "production",
        # Storage providers (multiple supported)
        "storage": [{"type": "sqlite", "enabled": True, "options": {"path": ".vibekit/telemetry.db"}}],
        # Streaming configuration
        "streaming": {"enabled": True, "provider": "websocket", "options": {}},
        # Security settings
        "security": {
            "encryption": {"enabled": True, "algorithm": "aes-256-gcm", "keyDerivation": "pbkdf2"},
            "pii": {"enabled": True, "patterns": ["email", "phone", "ssn", "credit_card"], "customDetectors": []},
            "redaction": {"enabled": True, "fields": ["metadata.customer_note"]},
        },
        # Reliability features
        "reliability": {
            "circuitBreaker": {"enabled": True, "threshold": 5, "timeout": 30000},
            "retry": {"enabled": True, "maxAttempts": 3, "backoff": "exponential"},
            "rateLimit": {"enabled": True, "maxRequests": 1000, "windowMs": 1000},
        },
        # Analytics configuration
        "analytics": {
            "enabled": True,
            "metrics": {"enabled": True, "interval": 5000, "persistence": True},
            "anomaly": {"enabled": True, "sensitivity": "medium", "metrics": ["response_time", "error_rate"]},
            "alerts": {"enabled": True, "channels": []},
        },
        # API server configuration
        "api": {
            "enabled": True,
            "port": port,
            "host": "127.0.0.1",
            "cors": {"origins": ["https://app.example.com"], "credentials": True},
            "auth": {"enabled": True, "apiKeys": ["your-api-key-1"], "bearerTokens": ["bearer-token-1"]},
            "dashboard": True,
        },
        # Plugin configuration
        "plugins": [],
    }


def test_configuration_complete_options_all_work(in_tmp, monkeypatch):
    """Seed "Configuration > Complete Configuration Options": a config using every key, each one in effect."""
    monkeypatch.setenv("TELEMETRY_ENCRYPTION_KEY", secrets.token_hex(32))
    telemetry = TelemetryService(**complete_config())
    try:
        loaded = set(telemetry.plugin_names())
        assert {"sqlite", "encryption", "pii", "analytics", "api"} <= loaded
        session_id = telemetry.track_start("claude", "chat", "write to jane@example.com about the invoice",
                                           metadata={"customer_note": "prefers calls after 6pm"})
        telemetry.track_end(session_id, "completed")
        [start] = telemetry.query(session_id=session_id, event_type="start")
        url = api_url(telemetry)
        open_request = httpx.get(f"{url}/api/events", timeout=10)
        keyed = httpx.get(f"{url}/api/events", headers={"X-API-Key": "your-api-key-1"}, timeout=10)
        bearer = httpx.get(f"{url}/api/events", headers={"Authorization": "Bearer bearer-token-1"}, timeout=10)
        preflight = httpx.options(f"{url}/api/events", timeout=10, headers={
            "Origin": "https://app.example.com", "Access-Control-Request-Method": "GET"})
        dashboard = httpx.get(f"{url}/dashboard/", headers={"X-API-Key": "your-api-key-1"}, timeout=10)
        assert telemetry.get_metrics().sessions.started == 1
    finally:
        telemetry.shutdown()
    assert "jane@example.com" not in start.prompt  # pii
    assert start.metadata["customer_note"] != "prefers calls after 6pm"  # redaction.fields
    raw = db_bytes(in_tmp / ".vibekit" / "telemetry.db")
    assert b"the invoice" not in raw and b"after 6pm" not in raw  # encryption (and redaction)
    assert open_request.status_code == 401 and keyed.status_code == 200 and bearer.status_code == 200  # api.auth
    assert preflight.headers.get("access-control-allow-origin") == "https://app.example.com"  # api.cors
    assert preflight.headers.get("access-control-allow-credentials") == "true"
    assert dashboard.status_code == 200  # api.dashboard


def test_configuration_complete_options_redaction_fields(in_tmp):
    """Seed "Complete Configuration Options", ``security.redaction = {enabled, fields}``: the field is not stored."""
    with TelemetryService(security={"redaction": {"enabled": True, "fields": ["metadata.customer_note"]}}) as t:
        t.track({"eventType": "custom", "category": "support", "action": "ticket",
                 "metadata": {"customer_note": "prefers calls after 6pm", "ticket": 42}})
        [event] = t.query(category="support")
    assert event.metadata["ticket"] == 42
    assert event.metadata.get("customer_note") != "prefers calls after 6pm"
    assert not files_holding(in_tmp, b"after 6pm")


def test_configuration_complete_options_reliability_rate_limit(in_tmp):
    """Seed "Complete Configuration Options", ``reliability.rateLimit``: events past the limit are refused, visibly."""
    with TelemetryService(reliability={"rateLimit": {"enabled": True, "maxRequests": 5, "windowMs": 60000}}) as t:
        ids = [t.track({"eventType": "custom", "category": "burst", "action": f"a{i}"}) for i in range(10)]
        stored = {e.id for e in t.query(category="burst")}
    accepted = [i for i in ids if i is not None]
    assert len(stored) == 5
    assert set(accepted) == stored, "track() returns an id only for an event that is stored"


def test_configuration_complete_options_file_validates(run_cli, monkeypatch):
    """Seed "Complete Configuration Options" written as telemetry.toml: `telemetry config validate` accepts it."""
    monkeypatch.setenv("TELEMETRY_ENCRYPTION_KEY", secrets.token_hex(32))
    config = complete_config(port=free_port())
    lines = []

    def emit(table: str, values: dict) -> None:
        scalars = {k: v for k, v in values.items() if not isinstance(v, dict) and k not in ("storage", "plugins")}
        if table:
            lines.append(f"[{table}]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in scalars.items())
        for key, value in values.items():
            if isinstance(value, dict):
                emit(f"{table}.{key}" if table else key, value)

    emit("", config)
    lines += ["[[storage]]", 'type = "sqlite"', "enabled = true", "[storage.options]",
              'path = ".vibekit/telemetry.db"']
    Path("telemetry.toml").write_text("\n".join(lines) + "\n")
    result = run_cli("telemetry config validate")
    assert result.exit_code == 0, result.output
    assert "ok" in result.output.lower()


def test_configuration_environment_specific_development(in_tmp):
    """Seed "Configuration > Environment-Specific Configurations": ``devConfig``, its own store and its own numbers."""
    with TelemetryService(analytics={"enabled": True}) as default:  # the Basic Setup's store, in the same project
        for i in range(3):
            default.track({"eventType": "custom", "category": "default", "action": f"a{i}"})
        assert default.get_metrics().events.total == 3
    # Development
    dev_config = {
        "environment": "development",
        "storage": [{
            "type": "sqlite",
            "enabled": True,
            "options": {
                "path": "./dev-telemetry.db",
                "streamBatchSize": 25,
            },
        }],
        "analytics": {
            "enabled": True,
            "metrics": {"enabled": True, "interval": 5000},
        },
    }
    with TelemetryService(**dev_config) as telemetry:
        assert telemetry.config.environment == "development"
        assert telemetry.get_health_status().pipeline["batch_size"] == 25
        telemetry.track({"eventType": "custom", "category": "dev", "action": "run"})
        assert telemetry.get_metrics().events.total == 1, "the metrics of dev-telemetry.db, not of another store"
    assert Path("dev-telemetry.db").is_file()
    with TelemetryService(analytics={"enabled": True}) as default:
        assert default.get_metrics().events.total == 3 and len(default.query()) == 3


def test_configuration_environment_specific_production(in_tmp, monkeypatch, receiver):
    """Seed "Configuration > Environment-Specific Configurations": ``prodConfig`` (SQLite + OTLP, encrypted, PII)."""
    collector, endpoint = receiver
    monkeypatch.setenv("OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTLP_API_KEY", "otlp-api-key")
    monkeypatch.setenv("TELEMETRY_ENCRYPTION_KEY", secrets.token_hex(32))
    db = in_tmp / "var" / "lib" / "vibekit" / "telemetry.db"  # seed: /var/lib/vibekit/telemetry.db
    # Production
    prod_config = {
        "environment": "production",
        "storage": [
            {
                "type": "sqlite",
                "enabled": True,
                "options": {
                    "path": str(db),
                    "streamBatchSize": 200,
                },
            },
            {
                "type": "otlp",
                "enabled": True,
                "options": {
                    "endpoint": os.environ["OTLP_ENDPOINT"],
                    "headers": {"api-key": os.environ["OTLP_API_KEY"]},
                },
            },
        ],
        "security": {
            "encryption": {"enabled": True},
            "pii": {"enabled": True},
        },
        "reliability": {
            "circuitBreaker": {"enabled": True},
            "retry": {"enabled": True},
        },
    }
    with TelemetryService(**prod_config) as telemetry:
        assert telemetry.get_health_status().pipeline["batch_size"] == 200
        session_id = telemetry.track_start("claude", "chat", "confidential roadmap, cc jane@example.com")
        telemetry.track_end(session_id, "completed")
        [start] = telemetry.query(event_type="start")
    assert start.prompt.startswith("confidential roadmap") and "jane@example.com" not in start.prompt
    raw = db_bytes(db)
    assert b"confidential roadmap" not in raw and b"jane@example.com" not in raw
    assert [s.agent for s in collector.get_sessions()] == ["claude"]


# -- API Reference -------------------------------------------------------------------------------


def test_api_reference_telemetry_service_methods(in_tmp):
    """Seed "API Reference > TelemetryService": every method of the class listing, called in order."""
    errors = []
    telemetry = TelemetryService(analytics={"enabled": True})
    # Lifecycle
    assert telemetry.initialize() is telemetry
    telemetry.on("error", errors.append)
    # Session tracking
    session_id = telemetry.track_start("claude", "code", "Fix this bug")
    telemetry.track_stream({"sessionId": session_id, "streamData": "a chunk"})
    telemetry.track_end(session_id, "completed")
    failing = telemetry.track_start("claude", "code", "Fix another bug")
    telemetry.track_error({"sessionId": failing, "error": "model timed out"})
    # Event tracking
    telemetry.track({"eventType": "custom", "category": "user-action", "action": "click"})
    batch = telemetry.track_batch([{"eventType": "custom", "category": "batch", "action": f"b{i}"} for i in range(3)])
    assert len(batch.accepted) == 3
    # Querying
    assert len(telemetry.query()) == 9
    assert telemetry.get_session(session_id).status == "completed"
    assert {s.id for s in telemetry.get_sessions()} == {session_id, failing}
    # Analytics
    assert telemetry.get_metrics().errors.total == 1
    assert telemetry.get_insights() is not None
    assert telemetry.get_health_status().healthy
    # Export
    exported = telemetry.export("json")
    assert b"model timed out" in exported
    # API server
    server = telemetry.start_api_server(port=0)
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200
    # Utilities
    assert telemetry.clean(30) == 0
    [error] = telemetry.query(event_type="error")
    assert (error.session_id, error.error_message) == (failing, "model timed out")
    telemetry.shutdown()
    assert errors == []


def test_api_reference_event_builder(in_tmp):
    """Seed "API Reference > Event Builder": the fluent builder, then ``track(event)``."""
    with TelemetryService() as telemetry:
        event = (EventBuilder()
                 .with_session_id("session-123")
                 .with_category("claude")
                 .with_action("code-generation")
                 .with_label("react-component")
                 .with_value(150)
                 .with_metadata({
                     "language": "typescript",
                     "framework": "react",
                     "complexity": "medium",
                 })
                 .build())
        telemetry.track(event)
        [stored] = telemetry.query(category="claude")
    assert (stored.session_id, stored.action, stored.label, stored.value) == (
        "session-123", "code-generation", "react-component", 150)
    assert stored.metadata == {"language": "typescript", "framework": "react", "complexity": "medium"}


# -- CLI Usage > Commands ------------------------------------------------------------------------
# Short commands run in-process through click's CliRunner; `telemetry api` and the live dashboard run
# until Ctrl-C, so they are real subprocesses stopped with SIGINT.


def test_cli_api_server(in_tmp):
    """Seed "CLI Usage > API Server": ``telemetry api --port 3000`` serves ingest and queries until Ctrl-C."""
    with serving(in_tmp, "telemetry api --port 0") as (server, url):  # seed: --port 3000
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        posted = httpx.post(f"{url}/api/events", json={"eventType": "custom", "category": "http", "action": "ingest"},
                            timeout=10)
        assert posted.status_code == 202, posted.text
        assert httpx.get(f"{url}/api/events", params={"category": "http"}, timeout=10).status_code == 200
        metrics = httpx.get(f"{url}/api/metrics", timeout=10)  # analytics is installed, so the API has it
    assert metrics.status_code == 200, metrics.text
    assert metrics.json()["events"]["total"] == 1  # the event ingested while serving is counted
    with TelemetryService() as telemetry:
        assert [e.action for e in telemetry.query(category="http")] == ["ingest"]  # in the SQLite file
    stopped_cleanly(server)


def test_cli_api_server_with_authentication(in_tmp):
    """Seed "CLI Usage > API Server": ``telemetry api --port 3000 --auth --api-key your-secret-key``."""
    with serving(in_tmp, "telemetry api --port 0 --auth --api-key your-secret-key") as (server, url):
        assert httpx.get(f"{url}/api/events", timeout=10).status_code == 401
        assert httpx.get(f"{url}/api/events", headers={"X-API-Key": "your-secret-key"}, timeout=10).status_code == 200
    assert "auth on" in server.output
    stopped_cleanly(server)


def test_cli_api_server_with_dashboard(in_tmp):
    """Seed "CLI Usage > API Server": ``telemetry api --port 3000 --dashboard``, with analytics (it is installed)."""
    seed_store(in_tmp)
    with serving(in_tmp, "telemetry api --port 0 --dashboard") as (server, url):
        page = httpx.get(f"{url}/dashboard/", timeout=10)
        metrics = httpx.get(f"{url}/api/metrics", timeout=10)
        insights = httpx.get(f"{url}/api/insights", timeout=10)
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert "install vibekit-telemetry-analytics" not in page.text
    assert metrics.status_code == 200, metrics.text
    assert metrics.json()["events"]["total"] == 10  # the events stored before the server started are counted
    assert insights.status_code == 200
    stopped_cleanly(server)


def test_cli_query_by_category_as_table(run_cli):
    """Seed "CLI Usage > Querying": ``telemetry query --category claude --limit 100 --format table``."""
    seed_store(Path.cwd())
    out = ok(run_cli("telemetry query --category claude --limit 100 --format table"))
    assert "claude" in out and "codex" not in out and "stream" in out


def test_cli_query_with_time_range_as_json(run_cli):
    """Seed "CLI Usage > Querying": ``telemetry query --since 1h --until now --format json``."""
    seed_store(Path.cwd())
    rows = json.loads(ok(run_cli("telemetry query --since 1h --until now --format json")))
    assert len(rows) == 10 and {r.get("session_id") for r in rows} >= {"session-1", "session-2", "session-3"}


def test_cli_sessions_active_for_an_agent(run_cli):
    """Seed "CLI Usage > Querying": ``telemetry sessions --status active --agent claude``."""
    ids = seed_store(Path.cwd())
    out = ok(run_cli("telemetry sessions --status active --agent claude --format json"))
    assert [s["id"] for s in json.loads(out)] == [ids["active"]]
    table = ok(run_cli("telemetry sessions --status active --agent claude"))  # the seed's line, as a table
    assert ids["active"][:8] in table and "session-1" not in table


def test_cli_session_with_events(run_cli):
    """Seed "CLI Usage > Querying": ``telemetry session <session-id> --with-events``."""
    seed_store(Path.cwd())
    out = ok(run_cli("telemetry session session-1 --with-events"))
    assert "session-1" in out and "stream of session-1" in out and "completed" in out


def test_cli_metrics_as_json(run_cli):
    """Seed "CLI Usage > Analytics": ``telemetry metrics --format json``."""
    seed_store(Path.cwd())
    metrics = json.loads(ok(run_cli("telemetry metrics --format json")))
    assert metrics["events"]["total"] == 10 and metrics["sessions"]["active"] == 1


def test_cli_analytics_dashboard(in_tmp):
    """Seed "CLI Usage > Analytics": ``telemetry analytics dashboard``, a live view until Ctrl-C."""
    seed_store(in_tmp)
    dashboard = Serving(in_tmp, "telemetry analytics dashboard")
    # it draws to a terminal and prints its last frame when stopped: Ctrl-C once it idles between refreshes
    process = psutil.Process(dashboard.proc.pid)
    deadline, used, quiet = time.monotonic() + 30, -1.0, 0
    while time.monotonic() < deadline and dashboard.proc.poll() is None and quiet < 3:
        time.sleep(0.3)
        now = sum(process.cpu_times()[:2])
        quiet = quiet + 1 if now - used < 0.02 else 0
        used = now
    code = dashboard.stop()
    assert code == 0, dashboard.output
    assert re.search(r"active sessions\s+1\b", dashboard.output), dashboard.output
    assert "claude-3-sonnet" in dashboard.output and "240" in dashboard.output  # its model and tokens


def test_cli_analytics_performance(run_cli):
    """Seed "CLI Usage > Analytics": ``telemetry analytics performance --since 24h``."""
    seed_store(Path.cwd())
    out = ok(run_cli("telemetry analytics performance --since 24h"))
    assert "claude" in out


def test_cli_analytics_anomalies(run_cli):
    """Seed "CLI Usage > Analytics": ``telemetry analytics anomalies --sensitivity high``."""
    seed_store(Path.cwd())
    result = run_cli("telemetry analytics anomalies --sensitivity high")
    assert result.exit_code == 0, result.output
    assert result.output.strip()


def test_cli_export_json(run_cli):
    """Seed "CLI Usage > Export": ``telemetry export --format json --output events.json``."""
    seed_store(Path.cwd())
    ok(run_cli("telemetry export --format json --output events.json"))
    rows = _rows(Path("events.json").read_bytes())
    assert len(rows) == 10 and {r["session_id"] for r in rows if r.get("session_id")} >= {"session-1", "session-2"}


def test_cli_export_csv_with_delimiter(run_cli):
    """Seed "CLI Usage > Export": ``telemetry export --format csv --output events.csv --delimiter ","``."""
    seed_store(Path.cwd())
    ok(run_cli('telemetry export --format csv --output events.csv --delimiter ,'))
    rows = list(csv.DictReader(Path("events.csv").open(newline=""), delimiter=","))
    assert len(rows) == 10 and {"id", "category", "event_type"} <= set(rows[0])


def test_cli_export_otlp_for_sessions(run_cli):
    """Seed "CLI Usage > Export": ``telemetry export --format otlp --sessions session-1,session-2`` (no --output)."""
    seed_store(Path.cwd())
    before = set(os.listdir())
    result = run_cli("telemetry export --format otlp --sessions session-1,session-2")
    assert result.exit_code == 0, result.output
    written = sorted(set(os.listdir()) - before)
    text = Path(written[0]).read_text() if written else result.stdout  # a default file (named) or stdout
    if written:
        assert written[0] in result.output, "the default file's name is printed"
    assert "session-1" in text and "session-2" in text and "session-3" not in text
    assert all("resourceSpans" in json.loads(line) or "resourceLogs" in json.loads(line)
               for line in text.splitlines() if line.strip())


def test_cli_export_with_compression(run_cli):
    """Seed "CLI Usage > Export": ``telemetry export --format json --compress gzip --output events.json.gz``."""
    seed_store(Path.cwd())
    ok(run_cli("telemetry export --format json --compress gzip --output events.json.gz"))
    data = Path("events.json.gz").read_bytes()
    assert data[:2] == b"\x1f\x8b"
    assert len(_rows(gzip.decompress(data))) == 10
    # the gzip header may name the original file (FNAME, flag 0x08): the final name, never a temporary one
    header_name = data[10:data.index(b"\0", 10)] if data[3] & 0x08 else b""
    assert not header_name.endswith(b".partial"), header_name


def test_cli_clean_old_data(run_cli):
    """Seed "CLI Usage > Maintenance": ``telemetry clean --days 30``."""
    with TelemetryService() as t:
        t.track({"eventType": "custom", "category": "old", "action": "a", "timestamp": now_ms() - 40 * DAY_MS})
        t.track({"eventType": "custom", "category": "new", "action": "b"})
    ok(run_cli("telemetry clean --days 30"))
    with TelemetryService() as t:
        assert [e.category for e in t.query()] == ["new"]


def test_cli_optimize(run_cli):
    """Seed "CLI Usage > Maintenance": ``telemetry optimize``."""
    seed_store(Path.cwd())
    ok(run_cli("telemetry optimize"))
    with TelemetryService() as t:
        assert len(t.query()) == 10  # nothing lost


def test_cli_health_detailed(run_cli):
    """Seed "CLI Usage > Maintenance" and "Troubleshooting > Health Checks": ``telemetry health --detailed``."""
    seed_store(Path.cwd())
    out = ok(run_cli("telemetry health --detailed"))
    assert "sqlite" in out and "healthy" in out.lower()


# -- Analytics & Monitoring ----------------------------------------------------------------------


def test_analytics_real_time_metrics(in_tmp):
    """Seed "Analytics & Monitoring > Real-time Analytics": the four numbers the seed prints."""
    with TelemetryService(analytics={"enabled": True}) as telemetry:
        start = now_ms() - 10_000
        for i, status in enumerate(("completed", "completed", "failed")):
            sid = telemetry.track_start("claude", "chat", "hi", timestamp=start + i)
            telemetry.track_end(sid, status, timestamp=start + i + 1000)
        telemetry.track_start("claude", "chat", "still going")
        telemetry.track_error(None, "disk full")
        # Get real-time metrics
        metrics = telemetry.get_metrics()
    summary = (f"Events per minute: {metrics.events.per_minute}\n"
               f"Active sessions: {metrics.sessions.active}\n"
               f"Error rate: {metrics.errors.rate}%\n"
               f"Average response time: {metrics.performance.avg_latency}ms\n")
    assert metrics.sessions.active == 1 and metrics.performance.avg_latency == 1000, summary
    assert metrics.events.per_minute > 0 and metrics.errors.rate > 0, summary


def test_analytics_anomaly_detection(in_tmp):
    """Seed "Analytics & Monitoring > Anomaly Detection": ``on('anomaly')`` and ``detectAnomalies([...])``."""
    heard = []
    with TelemetryService(analytics={"enabled": True}) as telemetry:
        # Configure anomaly detection
        telemetry.on("anomaly", heard.append)
        minute = now_ms() - now_ms() % 60_000 - 90 * 60_000
        for m in range(90):  # an hour and a half of steady 1 s responses, then one minute at 60 s
            latency = 60_000 if m == 89 else 1000
            for k in range(3):
                t0 = minute + m * 60_000 + k * 1000
                sid = telemetry.track_start("claude", "chat", "q", timestamp=t0)
                telemetry.track_end(sid, "completed", timestamp=t0 + latency)
        # Manual anomaly check
        anomalies = telemetry.detect_anomalies([
            "response_time",
            "error_rate",
            "throughput",
        ])
    found = [a for a in anomalies if a.metric == "response_time"]
    assert found, anomalies
    assert all(a.severity and a.description for a in found)


def test_analytics_custom_metrics(in_tmp):
    """Seed "Analytics & Monitoring > Custom Metrics": ``defineMetric({...})`` fed by ``track``."""
    with TelemetryService(analytics={"enabled": True}) as telemetry:
        # Define custom metrics
        telemetry.define_metric({
            "name": "token_usage",
            "type": "counter",
            "unit": "tokens",
            "description": "Total tokens consumed",
        })
        # Track custom metric
        telemetry.track({
            "eventType": "custom",
            "category": "metrics",
            "action": "token_usage",
            "value": 1500,
        })
        custom = telemetry.get_metrics().custom
    assert custom["token_usage"].value == 1500 and custom["token_usage"].unit == "tokens"


# -- Security Features ---------------------------------------------------------------------------


def test_security_quick_setup_environment_encryption(in_tmp, monkeypatch):
    """Seed "Quick Security Setup" step 2: TELEMETRY_ENCRYPTION_ENABLED / TELEMETRY_ENCRYPTION_KEY encrypt at rest."""
    monkeypatch.setenv("TELEMETRY_ENCRYPTION_ENABLED", "true")
    monkeypatch.setenv("TELEMETRY_ENCRYPTION_KEY", secrets.token_hex(32))  # seed: openssl rand -hex 32
    with TelemetryService() as telemetry:
        session_id = telemetry.track_start("claude", "code", "the launch date is March 3rd")
        telemetry.track_end(session_id, "completed")
        assert telemetry.get_session(session_id).prompt == "the launch date is March 3rd"  # reads decrypt
    assert b"launch date" not in db_bytes(in_tmp / ".vibekit" / "telemetry.db")


def test_security_quick_setup_environment_auth_and_cors(in_tmp, monkeypatch):
    """Seed "Quick Security Setup" step 2: TELEMETRY_AUTH_ENABLED, _API_KEYS, _BEARER_TOKENS, _ALLOWED_ORIGINS."""
    api_keys = [secrets.token_hex(32), secrets.token_hex(32)]  # seed: openssl rand -hex 32, twice
    tokens = [secrets.token_hex(16), secrets.token_hex(16)]
    monkeypatch.setenv("TELEMETRY_ALLOWED_ORIGINS", "https://app.example.com,https://dashboard.example.com")
    monkeypatch.setenv("TELEMETRY_AUTH_ENABLED", "true")
    monkeypatch.setenv("TELEMETRY_API_KEYS", ",".join(api_keys))
    monkeypatch.setenv("TELEMETRY_BEARER_TOKENS", ",".join(tokens))
    with TelemetryService() as telemetry:
        url = telemetry.start_api_server(port=0).url
        assert httpx.get(f"{url}/api/events", timeout=10).status_code == 401
        assert httpx.get(f"{url}/api/events", headers={"X-API-Key": api_keys[1]}, timeout=10).status_code == 200
        assert httpx.get(f"{url}/api/events", headers={"Authorization": f"Bearer {tokens[0]}"},
                         timeout=10).status_code == 200
        preflight = httpx.options(f"{url}/api/events", timeout=10, headers={
            "Origin": "https://dashboard.example.com", "Access-Control-Request-Method": "GET"})
        assert preflight.headers.get("access-control-allow-origin") == "https://dashboard.example.com"


def test_security_quick_setup_environment_auth_for_the_cli(in_tmp):
    """Seed "Quick Security Setup" step 2 with ``telemetry api``: TELEMETRY_AUTH_ENABLED=true never serves open."""
    key = secrets.token_hex(32)
    with serving(in_tmp, "telemetry api --port 0", env={"TELEMETRY_AUTH_ENABLED": "true",
                                                         "TELEMETRY_API_KEYS": key}) as (server, url):
        assert httpx.get(f"{url}/api/events", timeout=10).status_code == 401
        assert httpx.get(f"{url}/api/events", headers={"X-API-Key": key}, timeout=10).status_code == 200
    assert "auth off" not in server.output
    stopped_cleanly(server)
    # the switch without a key: refuse to start, or generate a key and print it; never serve open
    alone = Serving(in_tmp, "telemetry api --port 0", env={"TELEMETRY_AUTH_ENABLED": "true"})
    try:
        url = alone.wait_for(r"listening on (http://\S+)").group(1)
    except AssertionError:
        assert alone.proc.wait(30) != 0 and "key" in alone.output.lower(), alone.output
    else:
        assert httpx.get(f"{url}/api/events", timeout=10).status_code == 401
        assert "generated API key" in alone.output or "auth on" in alone.output
    finally:
        alone.stop()


def test_security_cors_protection(in_tmp):
    """Seed "Security Features > CORS Protection": ``api.cors = {origins, credentials}``."""
    # Configure CORS
    telemetry = TelemetryService(**{
        "api": {
            "cors": {
                "origins": ["https://app.example.com", "https://dashboard.example.com"],
                "credentials": True,
            },
        },
    })
    with telemetry:
        url = telemetry.start_api_server(port=0).url

        def preflight(origin: str) -> httpx.Response:
            return httpx.options(f"{url}/api/events", timeout=10,
                                 headers={"Origin": origin, "Access-Control-Request-Method": "GET"})

        allowed, other = preflight("https://app.example.com"), preflight("https://evil.example.net")
    assert allowed.headers.get("access-control-allow-origin") == "https://app.example.com"
    assert allowed.headers.get("access-control-allow-credentials") == "true"
    assert "access-control-allow-origin" not in other.headers


def test_security_api_authentication(in_tmp):
    """Seed "Security Features > API Authentication": ``api.auth = {enabled, apiKeys, bearerTokens}``."""
    # Configure authentication
    telemetry = TelemetryService(**{
        "api": {
            "auth": {
                "enabled": True,
                "apiKeys": ["your-api-key-1", "your-api-key-2"],
                "bearerTokens": ["bearer-token-1", "bearer-token-2"],
            },
        },
    })
    with telemetry:
        url = telemetry.start_api_server(port=0).url
        anonymous = httpx.get(f"{url}/api/events", timeout=10)
        # Use in requests
        api_key = httpx.get(f"{url}/api/events", headers={"X-API-Key": "your-api-key-1"}, timeout=10)
        bearer = httpx.get(f"{url}/api/events", headers={"Authorization": "Bearer bearer-token-1"}, timeout=10)
    assert anonymous.status_code == 401
    assert api_key.status_code == 200 and bearer.status_code == 200


def test_security_pii_detection_and_redaction(in_tmp):
    """Seed "Security Features > PII Detection & Redaction": the seed's patterns and custom detector."""
    # Configure PII detection
    telemetry = TelemetryService(**{
        "security": {
            "pii": {
                "enabled": True,
                "patterns": [
                    "email",
                    "phone",
                    "ssn",
                    "credit_card",
                ],
                "customDetectors": [{
                    "name": "api_key",
                    "pattern": re.compile(r"sk-[a-zA-Z0-9]{48}"),
                    "replacement": "[REDACTED_API_KEY]",
                }],
            },
        },
    })
    with telemetry:
        # Events are automatically scanned and redacted
        telemetry.track({
            "category": "user",
            "action": "update",
            "metadata": {
                "email": "user@example.com",  # Automatically redacted to '[REDACTED_EMAIL]'
                "apiKey": API_KEY,  # Custom redaction to '[REDACTED_API_KEY]'
            },
        })
        [event] = telemetry.query(category="user")
    assert (event.metadata["email"], event.metadata["apiKey"]) == ("[REDACTED_EMAIL]", "[REDACTED_API_KEY]")
    assert not files_holding(in_tmp, b"user@example.com") and not files_holding(in_tmp, API_KEY.encode())


def test_security_data_encryption(in_tmp, monkeypatch):
    """Seed "Security Features > Data Encryption": ``algorithm: 'aes-256-ctr'`` works or says what to write."""
    monkeypatch.setenv("TELEMETRY_ENCRYPTION_KEY", secrets.token_hex(32))
    seed_config = {"security": {"encryption": {"enabled": True, "algorithm": "aes-256-ctr", "keyDerivation": "pbkdf2"}}}
    try:
        # Enable encryption at rest
        telemetry = TelemetryService(**seed_config)
    except TelemetryError as exc:
        # GCM stays (it is authenticated); the refusal says why and what to write
        assert "aes-256-gcm" in str(exc) and re.search(r"authenticat|integrity", str(exc)), str(exc)
        seed_config["security"]["encryption"]["algorithm"] = "aes-256-gcm"
        telemetry = TelemetryService(**seed_config)
    with telemetry:
        # All sensitive data is encrypted before storage
        session_id = telemetry.track_start("claude", "code", "rotate the production database password")
        telemetry.track_stream(session_id, "step one: revoke the old credentials")
        telemetry.track_end(session_id, "completed")
        assert telemetry.get_session(session_id).prompt == "rotate the production database password"
    raw = db_bytes(in_tmp / ".vibekit" / "telemetry.db")
    assert b"production database password" not in raw and b"revoke the old credentials" not in raw


def test_security_rate_limiting(in_tmp):
    """Seed "Security Features > Rate Limiting": ``api.rateLimit = {windowMs: 15 min, max: 100}``, then 429."""
    # Custom rate limiting
    telemetry = TelemetryService(**{
        "api": {
            "rateLimit": {
                "windowMs": 15 * 60 * 1000,  # 15 minutes
                "max": 100,  # limit each IP to 100 requests per windowMs
            },
        },
    })
    with telemetry:
        url = telemetry.start_api_server(port=0).url
        with httpx.Client(base_url=url, timeout=10) as client:
            codes = [client.get("/api/events", params={"limit": 1}).status_code for _ in range(101)]
            health = client.get("/health").status_code
    assert codes[:100] == [200] * 100 and codes[100] == 429
    assert health == 200  # applied to /api/ endpoints only


def test_security_input_validation(in_tmp):
    """Seed "Security Features > Input Validation": the seed's error body for a limit out of range."""
    with TelemetryService() as telemetry:
        url = telemetry.start_api_server(port=0).url
        answer = httpx.get(f"{url}/api/events", params={"limit": 5000}, timeout=10)
    assert answer.status_code == 400
    body = answer.json()
    assert body["error"] == "Validation Error" and body["message"]
    assert [d["field"] for d in body["details"]] == ["limit"] and body["details"][0]["message"]


def test_security_audit_trail(in_tmp):
    """Seed "Security Features > Audit Trail": ``security.audit`` and ``getAuditLogs({action, since})``."""
    # Enable audit logging
    telemetry = TelemetryService(**{
        "security": {
            "audit": {
                "enabled": True,
                "events": ["create", "update", "delete", "export"],
            },
        },
    })
    with telemetry:
        telemetry.track({"eventType": "custom", "category": "claude", "action": "a"})
        telemetry.export("json", output="events.json")
        telemetry.clean(30)
        # Query audit logs
        audit_logs = telemetry.get_audit_logs({
            "action": "export",
            "since": now_ms() - 86400000,
        })
        everything = {entry["action"] for entry in telemetry.get_audit_logs()}
    assert [entry["action"] for entry in audit_logs] == ["export"]
    assert {"export", "clean"} <= everything


def test_security_audit_trail_events_list_is_honoured(in_tmp):
    """Seed "Security Features > Audit Trail": ``events`` names what is audited; a shorter list records less."""
    with TelemetryService(security={"audit": {"enabled": True, "events": ["export"]}}) as telemetry:
        telemetry.track({"eventType": "custom", "category": "claude", "action": "a"})
        telemetry.export("json", output="events.json")
        telemetry.import_events("events.json")
        telemetry.clean(30)
        recorded = {entry["action"] for entry in telemetry.get_audit_logs()}
    assert "export" in recorded
    assert not recorded & {"import", "clean", "delete"}, f"only the listed events are audited: {recorded}"


# -- Plugin System -------------------------------------------------------------------------------


class CustomStoragePlugin:
    """Seed "Plugin System > Creating Plugins", with plain methods (no ``@hookimpl``), as a porting user writes it."""

    name = "custom-storage"
    version = "1.0.0"

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def initialize(self, context):
        # Plugin initialization
        self.calls.append(("initialize", context is not None))

    def before_track(self, event):
        # Modify event before tracking
        self.calls.append(("before_track", event.action))
        return event

    def after_track(self, event):
        # Post-processing after tracking
        self.calls.append(("after_track", event.action))

    def shutdown(self):
        # Cleanup
        self.calls.append(("shutdown",))


class AsyncCustomStoragePlugin(CustomStoragePlugin):
    """The same plugin with the seed's ``async`` methods."""

    name = "custom-storage-async"

    async def initialize(self, context):
        self.calls.append(("initialize", context is not None))

    async def before_track(self, event):
        self.calls.append(("before_track", event.action))
        return event

    async def after_track(self, event):
        self.calls.append(("after_track", event.action))

    async def shutdown(self):
        self.calls.append(("shutdown",))


def test_plugin_system_creating_plugins(in_tmp):
    """Seed "Plugin System > Creating Plugins": initialize, beforeTrack, afterTrack and shutdown all run."""
    plugin = CustomStoragePlugin()
    # Register plugin
    telemetry = TelemetryService(**{"plugins": [plugin]})
    with telemetry:
        telemetry.track({"eventType": "custom", "category": "plugin", "action": "seen"})
        telemetry.flush()
        stored = [e.action for e in telemetry.query(category="plugin")]
    assert stored == ["seen"]
    assert plugin.calls == [("initialize", True), ("before_track", "seen"), ("after_track", "seen"), ("shutdown",)]


def test_plugin_system_creating_plugins_async(in_tmp):
    """Seed "Plugin System > Creating Plugins" with ``async`` methods: run to completion, or refused clearly."""
    plugin = AsyncCustomStoragePlugin()
    try:
        telemetry = TelemetryService(plugins=[plugin])
    except TelemetryError as exc:
        assert "async" in str(exc), f"a refusal must say that async hooks are the problem: {exc}"
        return
    with telemetry:
        event_id = telemetry.track({"eventType": "custom", "category": "plugin", "action": "seen"})
        telemetry.flush()
        stored = [e.id for e in telemetry.query(category="plugin")]
        drops = telemetry.get_health_status().counters["dropped"]
    assert event_id is not None and stored == [event_id] and drops == 0
    assert plugin.calls == [("initialize", True), ("before_track", "seen"), ("after_track", "seen"), ("shutdown",)]


def test_plugin_system_built_in_plugins(in_tmp, monkeypatch, s3_endpoint):
    """Seed "Plugin System > Built-in Plugins": the classes from one module, with the seed's keyword names."""
    import boto3

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_ENDPOINT_URL_S3": s3_endpoint}.items():
        monkeypatch.setenv(name, value)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="telemetry-exports")

    from vibekit_telemetry.plugins import CachePlugin, CompliancePlugin, EncryptionPlugin, S3ExportPlugin

    assert EncryptionPlugin.__name__ == "EncryptionPlugin"
    cache = CachePlugin(
        ttl=300000,  # 5 minutes
        maxSize=1000,
    )
    exporter = S3ExportPlugin(
        bucket="telemetry-exports",
        region="us-east-1",
    )
    compliance = CompliancePlugin(
        regulations=["gdpr", "ccpa"],
        retentionDays=90,
    )
    telemetry = TelemetryService(plugins=[
        # Cache frequently accessed data
        cache,
        # Export to S3
        exporter,
        # GDPR compliance
        compliance,
    ])
    with telemetry:
        telemetry.track({"eventType": "custom", "category": "ancient", "action": "a", "timestamp": now_ms() - 100 * DAY_MS})
        telemetry.track({"eventType": "custom", "category": "recent", "action": "b"})
        telemetry.query(category="recent")
        telemetry.query(category="recent")
        hits = telemetry.get_health_status().components["cache"]["hits"]
        for i in range(1000):  # with the query above: one answer more than maxSize
            telemetry.query(category=f"c{i}")
        evictions = telemetry.get_health_status().components["cache"]["evictions"]
        url, count = exporter.export_now(since=now_ms() - HOUR_MS)
        compliance.run_schedule()
        left = [e.category for e in telemetry.query()]
    assert cache.ttl == 300  # seconds: the seed's ttl is in milliseconds
    assert hits == 1 and evictions == 1  # maxSize 1000
    assert url.startswith("s3://telemetry-exports/") and count == 1
    assert s3.list_objects_v2(Bucket="telemetry-exports")["KeyCount"] == 1
    assert left == ["recent"]  # retentionDays 90


# -- Export & Integration ------------------------------------------------------------------------


def _export_data(telemetry: TelemetryService) -> None:
    for sid, agent in (("session-123", "claude"), ("session-1", "claude"), ("session-2", "gpt-4"), ("session-3", "codex")):
        telemetry.track_start(agent, "code", f"prompt of {sid}", session_id=sid)
        telemetry.track_stream(sid, f"chunk of {sid}")
        telemetry.track_end(sid, "completed")


def test_export_formats_json_compressed(in_tmp):
    """Seed "Export & Integration > Export Formats": ``export('json', {sessionId, compress: true})``."""
    with TelemetryService() as telemetry:
        _export_data(telemetry)
        # JSON export
        json_data = telemetry.export("json", {
            "sessionId": "session-123",
            "compress": True,
        })
    assert json_data[:2] == b"\x1f\x8b", "compress: true gives gzip"
    rows = _rows(gzip.decompress(json_data))
    assert [r["event_type"] for r in rows] == ["start", "stream", "end"]
    assert {r["session_id"] for r in rows} == {"session-123"}


def test_export_formats_csv_with_options(in_tmp):
    """Seed "Export & Integration > Export Formats": ``export('csv', {category, delimiter, headers})``."""
    with TelemetryService() as telemetry:
        _export_data(telemetry)
        # CSV export
        csv_data = telemetry.export("csv", {
            "category": "claude",
            "delimiter": ",",
            "headers": True,
        })
    rows = list(csv.DictReader(io.StringIO(csv_data.decode()), delimiter=","))
    assert len(rows) == 6 and {r["category"] for r in rows} == {"claude"}
    assert {"id", "event_type", "session_id"} <= set(rows[0])


def test_export_formats_otlp_for_sessions(in_tmp):
    """Seed "Export & Integration > Export Formats": ``export('otlp', {sessions: [...]})``."""
    with TelemetryService() as telemetry:
        _export_data(telemetry)
        # OpenTelemetry format
        otlp_data = telemetry.export("otlp", {
            "sessions": ["session-1", "session-2"],
        })
    text = otlp_data.decode()
    assert "session-1" in text and "session-2" in text
    assert "session-3" not in text and "session-123" not in text
    assert all("resourceSpans" in json.loads(line) or "resourceLogs" in json.loads(line)
               for line in text.splitlines() if line.strip())


def test_export_formats_parquet(in_tmp):
    """Seed "Export & Integration > Export Formats": ``export('parquet', {schema: 'events', compression: 'snappy'})``."""
    import pyarrow.parquet as pq

    with TelemetryService() as telemetry:
        _export_data(telemetry)
        # Parquet format (requires optional dependency)
        parquet_data = telemetry.export("parquet", {
            "schema": "events",
            "compression": "snappy",
        })
    parquet = pq.ParquetFile(io.BytesIO(parquet_data))
    assert parquet.metadata.num_rows == 12 and "event_type" in parquet.schema_arrow.names
    assert parquet.metadata.row_group(0).column(0).compression == "SNAPPY"


def test_integration_opentelemetry_collector(in_tmp, receiver, monkeypatch):
    """Seed "Integration Examples > OpenTelemetry Collector": endpoint, headers and resourceAttributes."""
    collector, endpoint = receiver
    monkeypatch.setenv("OTLP_API_KEY", "otlp-api-key")
    telemetry = TelemetryService(**{
        "storage": [{
            "type": "otlp",
            "enabled": True,
            "options": {
                "endpoint": endpoint,  # seed: http://otel-collector:4318
                "headers": {
                    "api-key": os.environ["OTLP_API_KEY"],
                },
                "resourceAttributes": {
                    "service.name": "my-app",
                    "service.version": "1.0.0",
                },
            },
        }],
    })
    with telemetry:
        session_id = telemetry.track_start("claude", "code", "traced")
        telemetry.track_end(session_id, "completed")
    [session] = collector.get_sessions()
    assert session.metadata["service.name"] == "my-app" and session.prompt == "traced"


def test_integration_prometheus_metrics(in_tmp):
    """Seed "Integration Examples > Prometheus Metrics": ``startAPIServer({port, metrics: {prometheus, endpoint}})``."""
    with TelemetryService(analytics={"enabled": True}) as telemetry:
        telemetry.track({"eventType": "custom", "category": "claude", "action": "a"})
        # Expose Prometheus metrics endpoint
        api_server = telemetry.start_api_server({
            "port": 0,  # seed: 3000
            "metrics": {
                "prometheus": True,
                "endpoint": "/metrics",
            },
        })
        scrape = httpx.get(api_server.url + "/metrics", timeout=10)
    assert scrape.status_code == 200 and "# TYPE" in scrape.text


# -- Performance ---------------------------------------------------------------------------------


def test_performance_batching(in_tmp):
    """Seed "Performance > Optimization Strategies": ``createBatcher({batchSize, flushInterval, maxRetries})``."""
    with TelemetryService() as telemetry:
        # Batch processing
        batcher = telemetry.create_batcher({
            "batchSize": 100,
            "flushInterval": 1000,
            "maxRetries": 3,
        })
        # Use batcher for high-volume events
        for i in range(250):
            batcher.add({"eventType": "custom", "category": "volume", "action": "tick", "value": i})
        assert (batcher.batch_size, batcher.flush_interval, batcher.max_retries) == (100, 1000, 3)
        assert batcher.accepted == 200  # two full batches went at once
        batcher.close()
        assert len(telemetry.query(category="volume", limit=1000)) == 250


def test_performance_event_stream(in_tmp):
    """Seed "Performance > Optimization Strategies": ``createEventStream()`` (Node's ``pipe`` is iteration here)."""
    with TelemetryService() as telemetry:
        # Stream processing
        stream = telemetry.create_event_stream()
        telemetry.track({"eventType": "custom", "category": "live", "action": "first"})
        telemetry.track({"eventType": "custom", "category": "live", "action": "second"})
        received = [stream.get(timeout=10), stream.get(timeout=10)]
        stream.close()
    assert [e.action for e in received] == ["first", "second"]


def test_performance_connection_pooling(in_tmp):
    """Seed "Performance > Optimization Strategies": sqlite ``poolSize``/``idleTimeout`` are accepted and work."""
    # Connection pooling
    telemetry = TelemetryService(**{
        "storage": [{
            "type": "sqlite",
            "options": {
                "poolSize": 10,
                "idleTimeout": 30000,
            },
        }],
    })
    with telemetry:
        results = []

        def reader() -> None:
            results.append(len(telemetry.query(category="pooled")))

        telemetry.track({"eventType": "custom", "category": "pooled", "action": "a"})
        telemetry.flush()
        threads = [threading.Thread(target=reader) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert results == [1] * 10


def test_performance_resource_usage(in_tmp):
    """Seed "Performance > Resource Usage": memory, CPU, storage (GB) and connections, as the seed prints them."""
    with TelemetryService() as telemetry:
        for i in range(2000):
            telemetry.track({"eventType": "custom", "category": "load", "action": "a", "value": i})
        telemetry.flush()
        # Monitor resource usage
        health = telemetry.get_health_status()
    report = (f"Memory: {health.memory['used']}/{health.memory['total']} MB\n"
              f"CPU: {health.cpu['usage']}%\n"
              f"Storage: {health.storage['used']}/{health.storage['total']} GB\n"
              f"Connections: {health.connections['active']}/{health.connections['max']}\n")
    assert 0 < health.memory["used"] < health.memory["total"], report
    assert health.cpu["usage"] > 0, f"the first call measures the CPU used so far:\n{report}"
    assert 0 <= health.storage["used"] <= health.storage["total"] < 1_000_000, f"storage in GB:\n{report}"
    assert 0 <= health.connections["active"] <= health.connections["max"], report


# -- Troubleshooting -----------------------------------------------------------------------------


def test_troubleshooting_high_memory_usage(in_tmp):
    """Seed "Troubleshooting > High Memory Usage": ``memoryLimit``/``gcInterval`` and ``on('memory:high')``."""
    # Enable memory limits
    with TelemetryService(**{"reliability": {"memoryLimit": 512 * 1024 * 1024, "gcInterval": 60000}}) as telemetry:
        assert telemetry.config.reliability.memory_limit == 512 * 2**20
        assert telemetry.config.reliability.gc_interval == 60000
    # the seed's handler, with a limit this process is over (512 MB is more than a test uses)
    heard = []
    with TelemetryService(reliability={"memoryLimit": 16 * 1024 * 1024, "gcInterval": 10}) as telemetry:
        # Monitor memory
        telemetry.on("memory:high", heard.append)
        time.sleep(0.05)
        telemetry.track({"eventType": "custom", "category": "memory", "action": "kept"})
        telemetry.flush()
        assert [e.action for e in telemetry.query(category="memory")] == ["kept"]
    assert heard and heard[0]["percentage"] > 100


def test_troubleshooting_connection_issues(in_tmp):
    """Seed "Troubleshooting > Connection Issues": ``retry = {maxAttempts: 5, backoff}`` and ``on('connection:error')``."""
    closed = free_port()  # a collector that is not there: the connection fault the seed's handler is for
    errors = []
    telemetry = TelemetryService(**{
        "storage": [{"type": "sqlite"}, {"type": "otlp", "options": {"endpoint": f"http://127.0.0.1:{closed}",
                                                                      "timeoutMs": 1000}}],
        # Enable connection retry
        "reliability": {
            "retry": {
                "enabled": True,
                "maxAttempts": 5,
                "backoff": "exponential",
            },
        },
    })
    with telemetry:
        # Monitor connection health
        telemetry.on("connection:error", errors.append)
        telemetry.track({"eventType": "custom", "category": "net", "action": "a"})
        telemetry.flush()
        stored = [e.action for e in telemetry.query(category="net")]
    assert len(errors) == 5 and all("otlp" in str(e) for e in errors)
    assert stored == ["a"]  # the failing collector costs nothing in the local store


def test_troubleshooting_data_loss_prevention(in_tmp):
    """Seed "Troubleshooting > Data Loss Prevention": with ``persistBuffer`` an event survives ``kill -9``."""
    script = in_tmp / "app.py"
    script.write_text(textwrap.dedent("""
        import os, signal, sys, time
        from vibekit_telemetry import TelemetryService
        # Enable local buffering
        telemetry = TelemetryService(**{
            "storage": [{
                "type": "sqlite",
                "options": {
                    "bufferOnError": True,
                    "bufferSize": 10000,
                    "persistBuffer": True,
                },
            }],
        })
        telemetry.track({"eventType": "custom", "category": "durable", "action": "survives"})
        time.sleep(1.5)  # one flush interval
        print("tracked", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """))
    result = subprocess.run([sys.executable, str(script)], cwd=in_tmp, env=clean_env(), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == -signal.SIGKILL and "tracked" in result.stdout, result.stderr
    with TelemetryService(storage=[{"type": "sqlite", "options": {"persistBuffer": True}}]) as telemetry:
        assert [e.action for e in telemetry.query(category="durable")] == ["survives"]


def _debug_run(cwd: Path, code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    program = "from vibekit_telemetry import TelemetryService\n" + textwrap.dedent(code) + textwrap.dedent("""
        telemetry.track({"eventType": "custom", "category": "debug", "action": "a"})
        telemetry.flush()
        telemetry.shutdown()
    """)
    return subprocess.run([sys.executable, "-c", program], cwd=cwd, env=clean_env(env), capture_output=True,
                          text=True, timeout=60)


def test_troubleshooting_debug_mode(in_tmp):
    """Seed "Troubleshooting > Debug Mode": ``debug: true, logLevel: 'debug'`` prints the debug log to stderr."""
    result = _debug_run(in_tmp, """
        # Enable debug logging
        telemetry = TelemetryService(**{
            "debug": True,
            "logLevel": "debug",
        })
    """)
    assert result.returncode == 0, result.stderr
    assert "debug" in result.stderr.lower() or "vibekit" in result.stderr.lower(), "nothing was logged"


def test_troubleshooting_debug_mode_environment(in_tmp):
    """Seed "Troubleshooting > Debug Mode": ``DEBUG=vibekit:telemetry:*`` turns the debug log on."""
    result = _debug_run(in_tmp, """
        # Or use environment variable
        telemetry = TelemetryService()
    """, env={"DEBUG": "vibekit:telemetry:*"})
    assert result.returncode == 0, result.stderr
    assert "debug" in result.stderr.lower() or "vibekit" in result.stderr.lower(), "nothing was logged"


def test_troubleshooting_health_checks(in_tmp, run_cli):
    """Seed "Troubleshooting > Health Checks": the CLI, ``curl /health`` and ``getHealthStatus()``."""
    # CLI health check
    assert "sqlite" in ok(run_cli("telemetry health --detailed"))
    with TelemetryService() as telemetry:
        # API health endpoint
        url = telemetry.start_api_server(port=0).url
        answer = httpx.get(f"{url}/health", timeout=10)
        # Programmatic health check
        health = telemetry.get_health_status()
    assert answer.status_code == 200
    assert health.healthy and health.issues == []


# -- Best Practices ------------------------------------------------------------------------------


def test_best_practices_session_management(in_tmp):
    """Seed "Best Practices > 1. Session Management": try/finally ends the session even when the work fails."""

    def process_with_ai(prompt: str) -> None:
        raise TimeoutError("the model did not answer")

    with TelemetryService() as telemetry:
        prompt = "Summarise the changelog"
        # Always use try-finally for session cleanup
        session_id = telemetry.track_start("claude", "chat", prompt)
        with pytest.raises(TimeoutError):
            try:
                # Your application logic
                process_with_ai(prompt)
            finally:
                # Ensure session is ended
                telemetry.track_end(session_id, "completed")
        session = telemetry.get_session(session_id)
    assert session.status == "completed" and session.ended_at is not None


def test_best_practices_error_handling(in_tmp, capsys):
    """Seed "Best Practices > 2. Error Handling": a wrapper that logs telemetry errors instead of raising."""

    class TelemetryWrapper:
        def __init__(self, telemetry: TelemetryService) -> None:
            self.telemetry = telemetry

        def track_safe(self, event) -> None:
            try:
                self.telemetry.track(event)
            except Exception as error:
                # Log but don't throw - telemetry shouldn't break app
                print("Telemetry error:", error, file=sys.stderr)

    with TelemetryService() as telemetry:
        wrapper = TelemetryWrapper(telemetry)
        wrapper.track_safe({"eventType": "no-such-type", "category": "app"})
        wrapper.track_safe({"eventType": "custom", "category": "app", "action": "fine"})
        stored = [e.action for e in telemetry.query(category="app")]
    assert stored == ["fine"]
    assert "Telemetry error:" in capsys.readouterr().err
    with TelemetryService() as telemetry, pytest.raises(InvalidEventError):
        telemetry.track({"eventType": "no-such-type", "category": "app"})  # what the wrapper caught


def test_best_practices_batching_for_performance(in_tmp):
    """Seed "Best Practices > 3. Batching for Performance": an event buffer flushed with ``trackBatch``."""
    with TelemetryService() as telemetry:
        # Collect events in batches
        event_buffer: list[dict] = []
        BATCH_SIZE = 100

        def track_event(event: dict) -> None:
            event_buffer.append(event)
            if len(event_buffer) >= BATCH_SIZE:
                flush_events()

        def flush_events() -> None:
            if not event_buffer:
                return
            events = event_buffer[:]
            event_buffer.clear()
            telemetry.track_batch(events)

        for i in range(250):
            track_event({"eventType": "custom", "category": "buffered", "action": "tick", "value": i})
        assert len(event_buffer) == 50
        flush_events()  # the periodic flush
        values = sorted(e.value for e in telemetry.query(category="buffered", limit=1000))
    assert values == list(range(250))


def test_best_practices_metadata_standards(in_tmp, monkeypatch):
    """Seed "Best Practices > 4. Metadata Standards": a helper that adds environment and version to every event."""
    monkeypatch.setenv("NODE_ENV", "production")
    monkeypatch.setenv("APP_VERSION", "2.3.1")

    def create_event(type: str, action: str, metadata: dict | None = None) -> dict:
        return {
            "eventType": "custom",
            "category": type,
            "action": action,
            "metadata": {
                "environment": os.environ.get("NODE_ENV"),
                "version": os.environ.get("APP_VERSION"),
                **(metadata or {}),
            },
        }

    with TelemetryService() as telemetry:
        telemetry.track(create_event("billing", "checkout", {"userId": "u-1", "feature": "cart"}))
        [event] = telemetry.query(category="billing")
    assert event.metadata == {"environment": "production", "version": "2.3.1", "userId": "u-1", "feature": "cart"}


def test_best_practices_privacy_data_minimization(in_tmp):
    """Seed "Best Practices > 5. Privacy & Compliance": ``security.dataMinimization``."""
    # Implement data minimization
    telemetry = TelemetryService(**{
        "security": {
            "pii": {"enabled": True},
            "dataMinimization": {
                "enabled": True,
                "excludeFields": ["password", "token", "secret"],
                "includeOnly": ["necessary", "fields"],
            },
        },
    })
    with telemetry:
        telemetry.track({"eventType": "custom", "category": "signup", "action": "submit", "metadata": {
            "password": "hunter2-hunter2", "token": "tok-123456", "secret": "s3cr3t-value",
            "necessary": "yes", "fields": "kept", "favourite_colour": "teal"}})
        [event] = telemetry.query(category="signup")
    assert event.metadata == {"necessary": "yes", "fields": "kept"}
    assert not files_holding(in_tmp, b"hunter2-hunter2") and not files_holding(in_tmp, b"teal")


def test_best_practices_privacy_gdpr_retention(in_tmp):
    """Seed "Best Practices > 5. Privacy & Compliance": ``compliance.gdpr = {enabled, anonymizeAfter, deleteAfter}``."""
    telemetry = TelemetryService(**{
        "compliance": {
            "gdpr": {
                "enabled": True,
                "anonymizeAfter": 30,  # days
                "deleteAfter": 90,  # days
            },
        },
    })
    with telemetry:
        for age, name in ((100, "expired"), (40, "old"), (1, "fresh")):
            telemetry.track({"eventType": "custom", "category": name, "action": "a", "label": f"text of {name}",
                             "metadata": {"user_id": f"user-{name}"}, "timestamp": now_ms() - age * DAY_MS})
        telemetry.flush()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # the compliance schedule runs in the background
            by_category = {e.category: e for e in telemetry.query()}
            if "expired" not in by_category and by_category.get("old") and by_category["old"].label is None:
                break
            time.sleep(0.2)
    assert set(by_category) == {"old", "fresh"}, "deleteAfter: 90 removed the 100-day-old event"
    assert by_category["old"].label is None and "user_id" not in by_category["old"].metadata, "anonymizeAfter: 30"
    assert by_category["fresh"].label == "text of fresh" and by_category["fresh"].metadata["user_id"] == "user-fresh"


# -- Dashboard Integration -----------------------------------------------------------------------


def test_dashboard_integration_built_in_dashboard(in_tmp):
    """Seed "Dashboard Integration": ``telemetry api --port 3000 --dashboard --dashboard-port 3001``."""
    seed_store(in_tmp)
    port = free_port()  # seed: 3001
    with serving(in_tmp, f"telemetry api --port 0 --dashboard --dashboard-port {port}") as (server, url):
        dashboard_url = server.wait_for(r"dashboard: (http://\S+)", timeout=10).group(1)
        page = httpx.get(dashboard_url, timeout=10)
        metrics = httpx.get(f"http://127.0.0.1:{port}/api/metrics", timeout=10)
    assert f":{port}" in dashboard_url and page.status_code == 200
    assert metrics.status_code == 200, metrics.text
    stopped_cleanly(server)


# -- the seed README itself ----------------------------------------------------------------------

#: Every code block of the seed README in order: (heading, language) -> the tests that translate it, or why none.
SEED_BLOCKS: list[tuple[str, str, tuple[str, ...] | str]] = [
    ("Architecture", "mermaid", ("test_installation_and_architecture_components_are_installed",)),
    ("Installation", "bash", ("test_installation_and_architecture_components_are_installed",)),
    ("Basic Setup", "typescript", ("test_quick_start_basic_setup", "test_quick_start_with_asyncio")),
    ("Tracking Events", "typescript", ("test_quick_start_tracking_events", "test_quick_start_with_asyncio")),
    ("Querying Data", "typescript", ("test_quick_start_querying_data",)),
    ("Events", "typescript", ("test_core_concepts_events",)),
    ("Sessions", "typescript", ("test_core_concepts_sessions",)),
    ("Storage Providers", "typescript", ("test_core_concepts_storage_providers_sqlite_and_memory",
                                         "test_core_concepts_storage_providers_otlp")),
    ("Complete Configuration Options", "typescript", (
        "test_configuration_complete_options_all_work", "test_configuration_complete_options_redaction_fields",
        "test_configuration_complete_options_reliability_rate_limit",
        "test_configuration_complete_options_file_validates")),
    ("Environment-Specific Configurations", "typescript", ("test_configuration_environment_specific_development",
                                                           "test_configuration_environment_specific_production")),
    ("TelemetryService", "typescript", ("test_api_reference_telemetry_service_methods",)),
    ("Event Builder", "typescript", ("test_api_reference_event_builder",)),
    ("Installation", "bash", ("test_installation_and_architecture_components_are_installed",)),
    ("API Server", "bash", ("test_cli_api_server", "test_cli_api_server_with_authentication",
                            "test_cli_api_server_with_dashboard")),
    ("Querying", "bash", ("test_cli_query_by_category_as_table", "test_cli_query_with_time_range_as_json",
                          "test_cli_sessions_active_for_an_agent", "test_cli_session_with_events")),
    ("Analytics", "bash", ("test_cli_metrics_as_json", "test_cli_analytics_dashboard",
                           "test_cli_analytics_performance", "test_cli_analytics_anomalies")),
    ("Export", "bash", ("test_cli_export_json", "test_cli_export_csv_with_delimiter",
                        "test_cli_export_otlp_for_sessions", "test_cli_export_with_compression")),
    ("Maintenance", "bash", ("test_cli_clean_old_data", "test_cli_optimize", "test_cli_health_detailed")),
    ("Real-time Analytics", "typescript", ("test_analytics_real_time_metrics",)),
    ("Anomaly Detection", "typescript", ("test_analytics_anomaly_detection",)),
    ("Custom Metrics", "typescript", ("test_analytics_custom_metrics",)),
    ("Quick Security Setup", "bash", ("test_security_quick_setup_environment_encryption",
                                      "test_security_quick_setup_environment_auth_and_cors")),
    ("Quick Security Setup", "env", ("test_security_quick_setup_environment_encryption",
                                     "test_security_quick_setup_environment_auth_and_cors",
                                     "test_security_quick_setup_environment_auth_for_the_cli")),
    ("CORS Protection", "typescript", ("test_security_cors_protection",)),
    ("API Authentication", "typescript", ("test_security_api_authentication",)),
    ("PII Detection & Redaction", "typescript", ("test_security_pii_detection_and_redaction",)),
    ("Data Encryption", "typescript", ("test_security_data_encryption",)),
    ("Rate Limiting", "typescript", ("test_security_rate_limiting",)),
    ("Input Validation", "typescript", ("test_security_input_validation",)),
    ("Audit Trail", "typescript", ("test_security_audit_trail", "test_security_audit_trail_events_list_is_honoured")),
    ("Creating Plugins", "typescript", ("test_plugin_system_creating_plugins",
                                        "test_plugin_system_creating_plugins_async")),
    ("Built-in Plugins", "typescript", ("test_plugin_system_built_in_plugins",)),
    ("Export Formats", "typescript", ("test_export_formats_json_compressed", "test_export_formats_csv_with_options",
                                      "test_export_formats_otlp_for_sessions", "test_export_formats_parquet")),
    ("OpenTelemetry Collector", "typescript", ("test_integration_opentelemetry_collector",)),
    ("Prometheus Metrics", "typescript", ("test_integration_prometheus_metrics",)),
    ("Grafana Dashboard", "yaml", "a docker-compose file for the seed's container images; its Prometheus "
                                  "scrape target is test_integration_prometheus_metrics"),
    ("Optimization Strategies", "typescript", ("test_performance_batching", "test_performance_event_stream",
                                               "test_performance_connection_pooling")),
    ("Resource Usage", "typescript", ("test_performance_resource_usage",)),
    ("High Memory Usage", "typescript", ("test_troubleshooting_high_memory_usage",)),
    ("Connection Issues", "typescript", ("test_troubleshooting_connection_issues",)),
    ("Data Loss Prevention", "typescript", ("test_troubleshooting_data_loss_prevention",)),
    ("Debug Mode", "typescript", ("test_troubleshooting_debug_mode", "test_troubleshooting_debug_mode_environment")),
    ("Health Checks", "bash", ("test_troubleshooting_health_checks", "test_cli_health_detailed")),
    ("1. Session Management", "typescript", ("test_best_practices_session_management",)),
    ("2. Error Handling", "typescript", ("test_best_practices_error_handling",)),
    ("3. Batching for Performance", "typescript", ("test_best_practices_batching_for_performance",)),
    ("4. Metadata Standards", "typescript", ("test_best_practices_metadata_standards",)),
    ("5. Privacy & Compliance", "typescript", ("test_best_practices_privacy_data_minimization",
                                               "test_best_practices_privacy_gdpr_retention")),
    ("Dashboard Integration", "bash", ("test_cli_api_server",)),  # `vibekit-dashboard` is the seed's npm app
    ("Dashboard Integration", "bash", ("test_dashboard_integration_built_in_dashboard",)),
]

#: Every `telemetry ...` line of the seed README -> the test that runs it.
SEED_CLI_LINES: dict[str, str] = {
    "telemetry api --port 3000": "test_cli_api_server",
    "telemetry api --port 3000 --auth --api-key your-secret-key": "test_cli_api_server_with_authentication",
    "telemetry api --port 3000 --dashboard": "test_cli_api_server_with_dashboard",
    "telemetry query --category claude --limit 100 --format table": "test_cli_query_by_category_as_table",
    "telemetry query --since 1h --until now --format json": "test_cli_query_with_time_range_as_json",
    "telemetry sessions --status active --agent claude": "test_cli_sessions_active_for_an_agent",
    "telemetry session <session-id> --with-events": "test_cli_session_with_events",
    "telemetry metrics --format json": "test_cli_metrics_as_json",
    "telemetry analytics dashboard": "test_cli_analytics_dashboard",
    "telemetry analytics performance --since 24h": "test_cli_analytics_performance",
    "telemetry analytics anomalies --sensitivity high": "test_cli_analytics_anomalies",
    "telemetry export --format json --output events.json": "test_cli_export_json",
    'telemetry export --format csv --output events.csv --delimiter ","': "test_cli_export_csv_with_delimiter",
    "telemetry export --format otlp --sessions session-1,session-2": "test_cli_export_otlp_for_sessions",
    "telemetry export --format json --compress gzip --output events.json.gz": "test_cli_export_with_compression",
    "telemetry clean --days 30": "test_cli_clean_old_data",
    "telemetry optimize": "test_cli_optimize",
    "telemetry health --detailed": "test_cli_health_detailed",
    "telemetry api --port 3000 --dashboard --dashboard-port 3001": "test_dashboard_integration_built_in_dashboard",
}


def _seed_blocks(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """The README's code blocks as (heading, language), and the `telemetry` lines of its bash blocks."""
    blocks, lines = [], []
    heading, language = "", None
    for line in text.splitlines():
        if line.startswith("```"):
            if language is None:
                language = line[3:].strip()
            else:
                blocks.append((heading, language))
                language = None
        elif language is None and line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif language == "bash" and line.startswith("telemetry "):
            lines.append(line.split(" #")[0].strip())
    return blocks, lines


def test_every_seed_block_and_cli_line_is_translated():
    """The lists above match the seed README: a new or changed example there fails here until it is translated."""
    if not SEED_README.is_file():
        pytest.skip(f"the seed README is not here ({SEED_README}); the translations above still run")
    blocks, lines = _seed_blocks(SEED_README.read_text(encoding="utf-8", errors="replace"))
    assert blocks == [(heading, language) for heading, language, _ in SEED_BLOCKS]
    assert sorted(set(lines)) == sorted(SEED_CLI_LINES)
    defined = {name for name, value in globals().items() if name.startswith("test_") and callable(value)}
    for _, _, tests in SEED_BLOCKS:
        assert isinstance(tests, str) or set(tests) <= defined, tests
    assert set(SEED_CLI_LINES.values()) <= defined
