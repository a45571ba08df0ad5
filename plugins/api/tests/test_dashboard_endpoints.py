"""What the dashboard reads: sessions sorted, searched and counted; metric series; metrics over the live stream."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import websockets
from httpx_sse import connect_sse

from vibekit_telemetry import Anomaly, now_ms


def _seed(service):
    base = now_ms() - 600_000
    ids = []
    for i, (prompt, length) in enumerate([("Fix the parser", 3_000), ("Write docs", 9_000), ("parser bench", 1_000)]):
        sid = service.track_start("claude" if i else "codex", "chat", prompt, timestamp=base + i * 1000)
        service.track_end(sid, timestamp=base + i * 1000 + length, metadata={"input_tokens": 10 * (i + 1)})
        ids.append(sid)
    service.flush()
    return ids


def test_sessions_sort_search_and_total(make_server):
    service, _, client = make_server(service_options={"plugins": ["analytics"]})
    ids = _seed(service)
    body = client.get("/api/sessions", params={"sort": "duration_ms", "limit": 2, "count": "true"}).json()
    assert [s["id"] for s in body["sessions"]] == [ids[1], ids[0]]
    assert body["total"] == 3 and body["next_offset"] == 2
    last = client.get("/api/sessions", params={"sort": "duration_ms", "limit": 2, "offset": 2, "count": "true"}).json()
    assert [s["id"] for s in last["sessions"]] == [ids[2]] and last["next_offset"] is None
    found = client.get("/api/sessions", params={"text": "PARSER", "count": "true", "order": "asc"}).json()
    assert [s["id"] for s in found["sessions"]] == [ids[0], ids[2]] and found["total"] == 2
    assert "total" not in client.get("/api/sessions").json()
    bad = client.get("/api/sessions", params={"sort": "prompt; DROP TABLE sessions"})
    assert bad.status_code == 400 and bad.json()["details"][0]["field"] == "sort"


def test_series_endpoint(make_server):
    service, _, client = make_server(service_options={"plugins": ["analytics"]})
    _seed(service)
    body = client.get("/api/series", params={"metric": "throughput", "since": "1h"}).json()
    assert body["metric"] == "throughput" and body["step"] == "1m"
    assert sum(v for _, v in body["points"]) == 6
    assert [p[0] for p in body["points"]] == sorted(p[0] for p in body["points"])
    assert client.get("/api/series", params={"metric": "nope"}).json()["details"][0]["field"] == "metric"
    too_many = client.get("/api/series", params={"since": "1", "step": "1m"})
    assert too_many.status_code == 400 and "steps" in too_many.json()["details"][0]["message"]


def test_the_live_stream_carries_metrics_when_asked(make_server):
    service, server, _ = make_server(service_options={"plugins": ["analytics"]})
    _seed(service)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        with connect_sse(client, "GET", "/api/stream", params={"metrics": "24h"}) as source:
            messages = source.iter_sse()
            first = next(messages)
            assert first.event == "metrics"
            payload = first.json()
            assert payload["metrics"] == service.get_metrics("24h").to_dict() | {"start": payload["metrics"]["start"],
                                                                                 "end": payload["metrics"]["end"]}
            assert len(payload["events_per_minute"]) >= 60
            service.track_start("codex", "chat", "one more")
            kinds = []
            for message in messages:
                kinds.append(message.event)
                if message.event == "metrics":
                    assert message.json()["metrics"]["sessions"]["started"] == 4
                    break
            assert "start" in kinds


def test_the_websocket_carries_metrics_too(make_server):
    service, server, _ = make_server(service_options={"plugins": ["analytics"]})
    _seed(service)

    async def listen():
        url = server.url.replace("http://", "ws://") + "/ws/events?metrics=1h"
        async with websockets.connect(url) as ws:
            first = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert first["type"] == "metrics" and first["window"] == "1h"
            assert first["metrics"]["sessions"]["started"] == 3
            service.track_start("codex", "chat", "over the socket")
            seen = []
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), 10))
                seen.append(message["type"])
                if message["type"] == "metrics":
                    assert message["metrics"]["sessions"]["started"] == 4
                    return seen

    assert "event" in asyncio.run(listen())


def test_a_bad_metrics_window_is_a_400(make_server):
    _, _, client = make_server(service_options={"plugins": ["analytics"]})
    response = client.get("/api/stream", params={"metrics": "soon"})
    assert response.status_code == 400 and response.json()["details"][0]["field"] == "metrics"


def test_metrics_on_the_stream_need_analytics(make_server):
    _, _, client = make_server()
    response = client.get("/api/stream", params={"metrics": "24h"})
    assert response.status_code == 400 and "analytics" in response.json()["details"][0]["message"]


def _anomaly(value):
    return Anomaly(metric="throughput", timestamp=now_ms() - 60_000, value=value, expected_low=2.0, expected_high=9.0,
                   score=0.999, severity="high", description=f"throughput {value}/min", detector="likelihood")


def _anomaly_listeners(service):
    return len(service._handlers.get("anomaly", ()))


def test_the_live_stream_pushes_anomalies_as_they_are_found(make_server):
    service, server, _ = make_server(service_options={"plugins": ["analytics"]})
    _seed(service)
    before = _anomaly_listeners(service)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        with connect_sse(client, "GET", "/api/stream", params={"metrics": "24h"}) as source:
            messages = source.iter_sse()
            assert next(messages).event == "metrics"
            assert _anomaly_listeners(service) == before + 1
            service.emit("anomaly", _anomaly(60.0))  # what the analytics watcher does when a minute is anomalous
            service.emit("anomaly", {"metric": "cost", "timestamp": now_ms(), "value": 9.5})  # a plugin's plain dict
            found = []
            for message in messages:
                if message.event == "anomaly":
                    found.append(message.json())
                    if len(found) == 2:
                        break
    assert found[0] == {"metric": "throughput", "timestamp": found[0]["timestamp"], "value": 60.0, "expected_low": 2.0,
                        "expected_high": 9.0, "score": 0.999, "severity": "high",
                        "description": "throughput 60.0/min", "detector": "likelihood"}
    assert found[1]["metric"] == "cost"
    deadline = now_ms() + 5_000
    while _anomaly_listeners(service) != before and now_ms() < deadline:  # the server notices the close on its next write
        time.sleep(0.05)
    assert _anomaly_listeners(service) == before, "a closed stream stops listening"


def test_a_stream_without_metrics_gets_no_anomalies(make_server):
    service, server, _ = make_server(service_options={"plugins": ["analytics"]})
    before = _anomaly_listeners(service)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        with connect_sse(client, "GET", "/api/stream") as source:
            messages = source.iter_sse()
            service.emit("anomaly", _anomaly(60.0))
            assert _anomaly_listeners(service) == before
            service.track_start("codex", "chat", "after the anomaly")
            assert next(messages).event == "start"


def test_the_websocket_pushes_anomalies_too(make_server):
    service, server, _ = make_server(service_options={"plugins": ["analytics"]})

    async def listen():
        url = server.url.replace("http://", "ws://") + "/ws/events?metrics=1h"
        async with websockets.connect(url) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "metrics"
            service.emit("anomaly", _anomaly(42.0))
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if message["type"] == "anomaly":
                    return message["anomaly"]

    anomaly = asyncio.run(listen())
    assert anomaly["value"] == 42.0 and anomaly["severity"] == "high"
