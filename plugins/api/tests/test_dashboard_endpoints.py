"""What the dashboard reads: sessions sorted, searched and counted; metric series; metrics over the live stream."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

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
    for params, field in (({"limit": 0}, "limit"), ({"offset": -1}, "offset")):  # class-level checks name their field
        assert client.get("/api/sessions", params=params).json()["details"][0]["field"] == field


def test_series_endpoint(make_server):
    service, _, client = make_server(service_options={"plugins": ["analytics"]})
    _seed(service)
    body = client.get("/api/series", params={"metric": "throughput", "since": "1h"}).json()
    assert body["metric"] == "throughput" and body["step"] == "1m"
    assert sum(v for _, v in body["points"]) == 6
    assert [p[0] for p in body["points"]] == sorted(p[0] for p in body["points"])
    assert client.get("/api/series", params={"metric": "nope"}).json()["details"][0]["field"] == "metric"
    too_many = client.get("/api/series", params={"since": "2000-01-01", "step": "1m"})
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


class _Receiver(BaseHTTPRequestHandler):
    """A webhook that answers 200 on /ok/... and 500 elsewhere."""

    posted: list = []

    def do_POST(self):  # noqa: N802 - the http.server API
        type(self).posted.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
        self.send_response(200 if self.path.startswith("/ok/") else 500)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_alerts_endpoint_reports_channels_and_deliveries_without_secrets(make_server):
    receiver = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    _Receiver.posted = []
    base = f"http://127.0.0.1:{receiver.server_port}"
    alerts = {"enabled": True, "channels": [
        {"type": "webhook", "url": f"{base}/ok/T0PSECRET"},
        {"type": "slack", "url": f"{base}/services/T0PSECRET2", "max_attempts": 2, "min_severity": "medium"}]}
    try:
        service, _, client = make_server(service_options={"plugins": ["analytics"],
                                                          "analytics": {"enabled": True, "alerts": alerts}})
        assert "/api/alerts" in client.get("/openapi.json").json()["paths"]
        quiet = client.get("/api/alerts").json()
        assert quiet["enabled"] and quiet["recent"] == [] and quiet["counts"]["sent"] == 0
        assert [(c["type"], c["target"], c["min_severity"]) for c in quiet["channels"]] == [
            ("webhook", base, "low"), ("slack", base, "medium")]
        service.emit("anomaly", _anomaly(61.0))
        service.emit("anomaly", _anomaly(62.0))  # the same metric and severity within the window: deduplicated
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            body = client.get("/api/alerts", params={"limit": 10}).json()
            if body["counts"]["sent"] + body["counts"]["failed"] == 2:
                break
            time.sleep(0.05)
    finally:
        receiver.shutdown()
    assert body["counts"] == {"sent": 1, "failed": 1, "deduplicated": 1, "dropped": 0}
    outcomes = [(d["channel"], d["outcome"], d["error"]) for d in body["recent"]]
    assert len(outcomes) == 3 and set(outcomes) == {(None, "deduplicated", None), ("webhook", "sent", None),
                                                    ("slack", "failed", "HTTP 500 after 2 attempts")}
    assert all(d["metric"] == "throughput" and d["severity"] == "high" for d in body["recent"])
    assert [d["at"] for d in body["recent"]] == sorted((d["at"] for d in body["recent"]), reverse=True), "newest first"
    assert body["recent"][-1]["outcome"] == "deduplicated", "refused at once, before any delivery"
    assert "SECRET" not in json.dumps(body), "a webhook URL's path is its key: never shown"
    assert len(_Receiver.posted) == 3  # one to the webhook, two attempts at the failing one
    assert client.get("/api/alerts", params={"limit": 0}).json()["details"][0]["field"] == "limit"


def test_alerts_endpoint_when_alerts_are_off(make_server):
    _, _, client = make_server(service_options={"plugins": ["analytics"]})
    assert client.get("/api/alerts").json() == {"enabled": False, "channels": [], "counts": {}, "recent": []}
