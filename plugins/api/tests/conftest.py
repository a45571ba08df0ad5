"""Fixtures: a real uvicorn server on a random 127.0.0.1 port, serving a service on a real SQLite file."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest

from vibekit_telemetry import TelemetryService, hookimpl


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
