"""Live streams: SSE with httpx-sse and WebSocket with websockets, against a real server."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import httpx
import pytest
import websockets
from httpx_sse import connect_sse
from prometheus_client.parser import text_string_to_metric_families


def _wait_for_subscriber(service, count=1, timeout=5.0):
    deadline = time.monotonic() + timeout
    while service.get_health_status().pipeline["live_streams"] < count:
        assert time.monotonic() < deadline, "the subscriber never registered"
        time.sleep(0.02)


def test_sse_delivers_new_matching_events_promptly(api):
    service, server, _ = api
    received, latencies = [], []

    def listen():
        with httpx.Client(base_url=server.url, timeout=10) as client:
            with connect_sse(client, "GET", "/api/stream", params={"category": "claude"}) as source:
                for sse in source.iter_sse():
                    event = json.loads(sse.data)
                    received.append((sse.event, sse.id, event))
                    latencies.append(time.time() * 1000 - event["timestamp"])
                    if len(received) == 3:
                        return

    thread = threading.Thread(target=listen)
    thread.start()
    _wait_for_subscriber(service)
    service.track(category="gemini", action="not for this subscriber")
    sid = service.track_start("claude", "chat", "hi")
    service.track_stream(sid, "hello")
    service.track_end(sid)
    thread.join(10)
    assert [r[0] for r in received] == ["start", "stream", "end"]
    assert all(r[1] == r[2]["id"] for r in received)
    assert max(latencies) < 1000, f"delivered after {max(latencies):.0f} ms"


def test_sse_rejects_bad_filters(api):
    _, _, client = api
    response = client.get("/api/stream", params={"event_type": "nonsense"})
    assert response.status_code == 400 and response.json()["details"][0]["field"] == "event_type"


def test_websocket_delivers_events_and_answers_pings(api):
    service, server, _ = api
    url = server.url.replace("http://", "ws://") + "/ws/events?event_type=stream"

    async def run():
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "pong"}
            await asyncio.to_thread(_wait_for_subscriber, service)
            sid = service.track_start("claude", "chat", "hi")
            for i in range(5):
                service.track_stream(sid, f"chunk {i}")
            service.track_end(sid)
            got = []
            while len(got) < 5:
                message = json.loads(await asyncio.wait_for(ws.recv(), 5))
                if message["type"] == "event":
                    got.append(message["event"]["stream_data"])
            return got

    assert asyncio.run(run()) == [f"chunk {i}" for i in range(5)]


def test_websocket_needs_a_key_when_auth_is_on(make_server):
    service, server, _ = make_server(auth={"api_keys": ["websocket-key-1"]})
    base = server.url.replace("http://", "ws://") + "/ws/events"

    async def run():
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with websockets.connect(base):
                pass
        assert refused.value.response.status_code == 401
        async with websockets.connect(base, additional_headers={"x-api-key": "websocket-key-1"}) as ws:
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "pong"
        async with websockets.connect(base + "?api_key=websocket-key-1") as ws:  # browsers cannot set headers
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "pong"

    asyncio.run(run())


def _scrape(client) -> dict[str, float]:
    values = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            label = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{label}}}"] = sample.value
    return values


def test_a_subscriber_that_stops_reading_is_skipped_then_disconnected(make_server):
    service, server, client = make_server(streams={"max_pending": 20, "disconnect_after_dropped": 500})
    raw = socket.create_connection(("127.0.0.1", server.port))
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.sendall(b"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
    _wait_for_subscriber(service)
    payload = "x" * 8000
    sid = service.track_start("claude", "chat", "flood")
    for _ in range(6):  # about 24 MB in total, far more than the socket buffers hold
        for _ in range(500):
            service.track_stream(sid, payload)
        service.flush()
    deadline = time.monotonic() + 20
    while True:
        metrics = _scrape(client)
        skipped = metrics.get("vibekit_stream_skipped_events_total{transport=sse}", 0)
        disconnected = metrics.get("vibekit_stream_slow_disconnects_total{transport=sse}", 0)
        if disconnected >= 1:
            break
        assert time.monotonic() < deadline, f"slow subscriber still connected (skipped {skipped})"
        time.sleep(0.2)
    assert skipped >= 500
    raw.close()
    deadline = time.monotonic() + 5
    while service.get_health_status().pipeline["live_streams"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_too_many_subscribers_are_turned_away(make_server):
    service, server, client = make_server(streams={"max_clients": 1})
    with httpx.Client(base_url=server.url, timeout=10) as first:
        with first.stream("GET", "/api/stream") as open_stream:
            assert open_stream.status_code == 200
            second = client.get("/api/stream")
            assert second.status_code == 503 and "retry-after" in second.headers


@pytest.mark.parametrize("breaks", ["\n", "\r", "\r\n", "\u2028", "\x85"])
def test_no_field_value_can_forge_a_message_on_the_sse_stream(api, breaks):
    """An id holding ``<break>event: anomaly<break>data: {...}<break><break>`` must not become an anomaly message.

    The kernel's gate refuses such ids, so the hostile event is handed to the
    subscriber's stream directly, as the flusher does once a batch is stored.
    """
    from vibekit_telemetry import TelemetryEvent

    service, server, _ = api
    forged = f'{breaks}event: anomaly{breaks}data: {{"metric": "error_rate", "severity": "critical"}}{breaks}{breaks}'
    hostile = [
        TelemetryEvent.restore({**TelemetryEvent(event_type="custom", category="x").__dict__, "id": "evt-1" + forged}),
        TelemetryEvent.restore({**TelemetryEvent(event_type="custom", category="x").__dict__,
                                "event_type": "custom" + forged}),
        TelemetryEvent.restore({**TelemetryEvent(event_type="custom", category="x").__dict__,
                                "label": forged, "metadata": {"note": forged}}),
    ]
    sentinel = TelemetryEvent(event_type="custom", category="x", action="sentinel")
    received = []

    def listen():
        with httpx.Client(base_url=server.url, timeout=10) as client:
            with connect_sse(client, "GET", "/api/stream") as source:
                for message in source.iter_sse():
                    received.append(message)
                    if message.data and json.loads(message.data).get("action") == "sentinel":
                        return

    thread = threading.Thread(target=listen)
    thread.start()
    _wait_for_subscriber(service)
    [stream] = server.app.state.ctx.live.streams
    stream.offer([*hostile, sentinel])
    thread.join(10)
    assert [m.event for m in received if m.event == "anomaly"] == []
    assert len(received) == 4, [(m.event, m.id, m.data[:60]) for m in received]
    first, second, third, _ = received
    assert json.loads(first.data)["id"] == hostile[0].id and first.id == "" and first.event == "custom"
    assert json.loads(second.data)["event_type"] == hostile[1].event_type and second.event == "message"
    assert json.loads(third.data)["label"] == forged and third.id == hostile[2].id
    # a reader that splits lines as str.splitlines() does (httpx's iter_lines) sees no forged field either
    with httpx.Client(base_url=server.url, timeout=10) as client:
        with client.stream("GET", "/api/stream") as response:
            _wait_for_subscriber(service)
            [stream] = server.app.state.ctx.live.streams
            stream.offer([*hostile, sentinel])
            lines = []
            for line in response.iter_lines():
                lines.append(line)
                if "sentinel" in line:
                    break
    assert not [line for line in lines if line.startswith("event: anomaly")], lines
    assert all(line.startswith(("id: ", "event: ", "data: ", ": ")) or line == "" for line in lines), lines
