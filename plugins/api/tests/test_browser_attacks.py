"""What a web page the developer visits can do to a server without a key: nothing.

Three ways a page reaches a loopback server, each tried with a real client
against a real server exactly as a browser would send it: a write with no
CORS preflight, DNS rebinding (the page's own name resolved to 127.0.0.1, so
the ``Host`` header carries that name), and a WebSocket from another origin.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import orjson
import pytest
import websockets

from vibekit_telemetry_api.config import APIConfig

EVIL = "https://evil.example"


def _wait_for_subscriber(service, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not service.get_health_status().pipeline["live_streams"]:
        assert time.monotonic() < deadline, "the subscriber never registered"
        time.sleep(0.02)


def test_a_write_without_a_declared_type_is_refused(api):
    """``fetch(url, {method: "POST", body})`` from a page sends no Content-Type (or text/plain): no preflight."""
    service, _, client = api
    body = orjson.dumps({"category": "forged", "prompt": "planted by a page"})
    for headers in ({}, {"content-type": "text/plain;charset=UTF-8"}, {"content-type": "application/x-www-form-urlencoded"},
                    {"content-type": "multipart/form-data; boundary=x"}, {"content-encoding": "gzip"}):
        response = client.post("/api/events", content=body, headers=headers)
        assert response.status_code == 415, (headers, response.text)
        assert "application/json" in response.json()["message"] and "x-protobuf" in response.json()["message"]
    service.flush()
    assert service.query(category="forged") == []
    # what real clients send still passes: JSON (also +json), and a bodiless POST needs no type
    assert client.post("/api/events", content=body, headers={"content-type": "application/json"}).status_code == 202
    assert client.post("/api/events", content=body,
                       headers={"content-type": "application/vnd.vibekit+json; charset=utf-8"}).status_code == 202
    sid = client.post("/api/sessions", json={"agent": "claude"}).json()["session_id"]
    assert client.post(f"/api/sessions/{sid}/end").status_code == 202


def test_a_write_from_another_origin_is_refused_even_with_a_json_type(api):
    service, server, client = api
    body = {"category": "forged"}
    forbidden = client.post("/api/events", json=body, headers={"origin": EVIL})
    assert forbidden.status_code == 403 and EVIL in forbidden.json()["message"]
    assert client.post("/api/events", json=body, headers={"origin": "null"}).status_code == 403  # sandboxed frames
    assert client.post("/v1/logs", json={}, headers={"origin": EVIL}).status_code == 403
    service.flush()
    assert service.query(category="forged") == []
    # the server's own pages (same Host) write; reads from elsewhere stay readable only where CORS allows
    own = f"http://127.0.0.1:{server.port}"
    assert client.post("/api/events", json=body, headers={"origin": own}).status_code == 202
    assert client.get("/api/events", headers={"origin": EVIL}).status_code == 200


def test_an_origin_in_the_cors_list_may_write(make_server):
    _, _, client = make_server(cors={"origins": ["https://app.example.com"]})
    allowed = client.post("/api/events", json={"category": "x"}, headers={"origin": "https://app.example.com"})
    assert allowed.status_code == 202
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    assert client.post("/api/events", json={"category": "x"}, headers={"origin": EVIL}).status_code == 403


def test_dns_rebinding_gets_no_data(api):
    """A page at evil.example whose name now resolves to 127.0.0.1: the request says ``Host: evil.example:PORT``."""
    service, server, client = api
    service.track_start("claude", "chat", "a private prompt")
    service.flush()
    for path in ("/api/events", "/api/sessions", "/health", "/metrics", "/openapi.json", "/api/stream"):
        response = client.get(path, headers={"host": f"evil.example:{server.port}"})
        assert response.status_code == 421, (path, response.status_code)
        assert "private prompt" not in response.text and "api.allowed_hosts" in response.json()["message"]
    posted = client.post("/api/events", json={"category": "forged"}, headers={"host": "evil.example"})
    assert posted.status_code == 421
    # the names and addresses the server is reached by on this machine still work
    for host in ("127.0.0.1", "localhost", "LOCALHOST.", "[::1]", "10.1.2.3"):
        assert client.get("/api/events", headers={"host": f"{host}:{server.port}"}).status_code == 200, host


def test_allowed_hosts_adds_names_and_a_star_answers_any(make_server):
    _, server, client = make_server(allowed_hosts=["telemetry.internal"])
    assert client.get("/api/events", headers={"host": f"Telemetry.Internal:{server.port}"}).status_code == 200
    assert client.get("/api/events", headers={"host": "evil.example"}).status_code == 421
    _, _, any_host = make_server(allowed_hosts=["*"])
    assert any_host.get("/api/events", headers={"host": "evil.example"}).status_code == 200


def test_with_keys_the_host_is_not_checked_unless_asked(make_server):
    """A page that rebinds a name has no key; servers with keys sit behind proxies and in containers."""
    _, _, keyed = make_server(auth={"api_keys": ["rebinding-key-1"]})
    named = keyed.get("/api/events", headers={"host": "telemetry:3000", "x-api-key": "rebinding-key-1"})
    assert named.status_code == 200
    assert keyed.get("/api/events", headers={"host": "evil.example"}).status_code == 401
    _, _, strict = make_server(auth={"api_keys": ["rebinding-key-2"]}, allowed_hosts=["telemetry"])
    assert strict.get("/api/events", headers={"host": "evil.example", "x-api-key": "rebinding-key-2"}).status_code == 421


def test_bad_allowed_hosts_entries_name_the_entry():
    from vibekit_telemetry import ConfigError

    for bad in ("http://telemetry", "telemetry:3000", "", "a b"):
        with pytest.raises(ConfigError, match=r"api\.allowed_hosts\[1\]"):
            APIConfig(allowed_hosts=["ok.example", bad])


def test_a_websocket_from_another_origin_never_sees_an_event(api):
    service, server, _ = api
    url = server.url.replace("http://", "ws://") + "/ws/events"

    async def run():
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with websockets.connect(url, origin=EVIL) as ws:
                # on today's server the handshake succeeds: show what the page would have read
                await asyncio.to_thread(_wait_for_subscriber, service)
                service.track_start("claude", "chat", "a private prompt")
                raise AssertionError(f"the page read: {await asyncio.wait_for(ws.recv(), 5)}")
        assert refused.value.response.status_code == 403
        assert EVIL.encode() in refused.value.response.body
        # rebinding: the page's own name, now resolving to this machine (so its origin is "same-origin")
        rebound_socket = socket.create_connection(("127.0.0.1", server.port))
        with pytest.raises(websockets.exceptions.InvalidStatus) as rebound:
            async with websockets.connect(f"ws://evil.example:{server.port}/ws/events", sock=rebound_socket,
                                          origin=f"http://evil.example:{server.port}"):
                pass
        assert rebound.value.response.status_code == 421
        # the server's own origin and clients that send none (SDKs, this library) connect
        for origin in (f"http://127.0.0.1:{server.port}", None):
            async with websockets.connect(url, origin=origin) as ws:
                await ws.send(json.dumps({"type": "ping"}))
                assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "pong"}

    asyncio.run(run())


def test_refusals_are_counted(api):
    _, _, client = api
    client.get("/api/events", headers={"host": "evil.example"})
    client.post("/api/events", json={"category": "x"}, headers={"origin": EVIL})
    client.post("/api/events", content=b"{}", headers={"content-type": "text/plain"})
    text = client.get("/metrics").text
    for reason in ("misdirected", "cross_origin", "unsupported_media_type"):
        assert f'vibekit_api_refused_requests_total{{reason="{reason}"}} 1.0' in text, reason


def test_otlp_exporters_and_plain_clients_are_unaffected(api):
    """What the OpenTelemetry SDK sends: protobuf, optionally gzip, no Origin; httpx adds nothing either."""
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    service, server, _ = api
    for compression in (Compression.NoCompression, Compression.Gzip):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{server.url}/v1/traces",
                                                                         compression=compression)))
        with provider.get_tracer("t").start_as_current_span("chat", attributes={"gen_ai.provider.name": "anthropic"}):
            pass
        provider.shutdown()
    service.flush()
    assert len(service.query(category="anthropic")) == 4
    with httpx.Client() as plain:
        assert plain.post(f"{server.url}/api/events", json={"category": "plain"}).status_code == 202
