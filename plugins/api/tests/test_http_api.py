"""Ingest, queries, sessions, export and health over a real uvicorn server with httpx."""

from __future__ import annotations

import gzip

import orjson
import pytest

from vibekit_telemetry import TelemetryService


def _events(n: int, category: str = "claude", **extra):
    return [{"category": category, "event_type": "custom", "action": f"a{i}", "value": i, **extra} for i in range(n)]


def test_ingest_a_batch_stores_every_event(api):
    service, _, client = api
    response = client.post("/api/events", json={"events": _events(50)})
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 50 and len(body["ids"]) == 50 and body["not_accepted"] == []
    service.flush()
    stored = {e.id for e in service.query(limit=1000)}
    assert stored == set(body["ids"])


def test_ingest_accepts_one_event_a_list_and_camel_case(api):
    service, _, client = api
    assert client.post("/api/events", json={"category": "x", "eventType": "custom", "action": "one"}).status_code == 202
    assert client.post("/api/events", json=_events(2)).status_code == 202
    service.flush()
    assert len(service.query()) == 3


def test_an_invalid_event_is_rejected_alone_and_named(api):
    service, _, client = api
    batch = _events(4)
    batch[1] = {"category": "x", "event_type": "bogus"}
    batch[2] = {"category": "x", "timestamp": "not a time"}
    response = client.post("/api/events", json=batch)
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 2 and body["not_accepted"] == []
    assert [(r["index"], r["field"]) for r in body["rejected"]] == [(1, "events[1].event_type"),
                                                                   (2, "events[2].timestamp")]
    service.flush()
    assert {e.id for e in service.query()} == set(body["ids"])
    # nothing valid: nothing accepted, and the answer says so
    none = client.post("/api/events", json=[batch[1], batch[2]])
    assert none.status_code == 422 and none.json()["error"] == "Validation Error"
    assert {d["field"] for d in none.json()["details"]} == {"events[0].event_type", "events[1].timestamp"}


@pytest.mark.parametrize(("content", "headers", "status"), [
    (b"{not json", {"content-type": "application/json"}, 400),
    (b"", {"content-type": "application/json"}, 400),
    (b"[]", {"content-type": "application/json"}, 422),
    (b"42", {"content-type": "application/json"}, 422),
    (b'{"category": "x"}', {"content-type": "text/plain"}, 415),
    (b'{"category": "x"}', {"content-type": "application/json", "content-encoding": "br"}, 415),
    (b"not gzip", {"content-type": "application/json", "content-encoding": "gzip"}, 400),
])
def test_malformed_bodies_get_clear_errors(api, content, headers, status):
    _, _, client = api
    response = client.post("/api/events", content=content, headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["message"]


def test_gzip_bodies_are_accepted(api):
    service, _, client = api
    response = client.post("/api/events", content=gzip.compress(orjson.dumps(_events(10))),
                           headers={"content-type": "application/json", "content-encoding": "gzip"})
    assert response.status_code == 202
    service.flush()
    assert len(service.query()) == 10


def test_bodies_and_batches_are_bounded(make_server):
    service, _, client = make_server(max_body_bytes=4096, max_batch=5)
    assert client.post("/api/events", json=_events(6)).status_code == 413
    big = [{"category": "x", "label": "y" * 5000}]
    assert client.post("/api/events", json=big).status_code == 413
    # a small gzip body that inflates past the limit is refused too
    bomb = gzip.compress(orjson.dumps([{"category": "x", "label": "z" * 100_000}]))
    assert len(bomb) < 4096
    response = client.post("/api/events", content=bomb,
                           headers={"content-type": "application/json", "content-encoding": "gzip"})
    assert response.status_code == 413
    service.flush()
    assert service.query() == []


def test_query_filters_and_cursor_paging_return_every_event_once(api):
    service, _, client = api
    client.post("/api/events", json=_events(25, "claude") + _events(5, "gemini", metadata={"model": "g1", "n": 3}))
    service.flush()
    seen, cursor = [], None
    while True:
        params = {"category": "claude", "limit": 10, **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/events", params=params).json()
        seen += [e["id"] for e in page["events"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == 25
    meta = client.get("/api/events", params={"meta.model": "g1", "meta.n": "3"}).json()
    assert meta["count"] == 5


def test_bad_query_parameters_list_every_field(api):
    _, _, client = api
    response = client.get("/api/events", params={"limit": "lots", "order": "sideways", "colour": "red"})
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "Validation Error"
    assert {d["field"] for d in body["details"]} == {"limit", "order", "colour"}
    assert client.get("/api/events", params={"limit": 5000}).json()["details"][0]["message"] == \
        "Number must be between 1 and 1000"
    assert client.get("/api/events", params={"cursor": "%%%"}).status_code == 400
    assert client.get("/api/events", params={"since": "last tuesday"}).status_code == 400


def test_sessions_from_another_language(api):
    service, _, client = api
    started = client.post("/api/sessions", json={"agent": "claude", "mode": "chat", "prompt": "Hello",
                                                  "metadata": {"model": "claude-sonnet-4-5"}})
    assert started.status_code == 201
    sid = started.json()["session_id"]
    assert started.headers["location"] == f"/api/sessions/{sid}"
    client.post("/api/events", json={"event_type": "stream", "session_id": sid, "category": "claude",
                                     "stream_data": "Hi there"})
    assert client.post(f"/api/sessions/{sid}/end", json={"status": "completed",
                                                          "metadata": {"input_tokens": 10}}).status_code == 202
    service.flush()
    session = client.get(f"/api/sessions/{sid}", params={"with_events": "true"}).json()
    assert session["status"] == "completed" and session["prompt"] == "Hello"
    assert [e["event_type"] for e in session["events"]] == ["start", "stream", "end"]
    listed = client.get("/api/sessions", params={"agent": "claude", "status": "completed"}).json()
    assert [s["id"] for s in listed["sessions"]] == [sid]
    assert client.get("/api/sessions/nope").status_code == 404
    bad = client.post("/api/sessions", json={"mode": "chat", "colour": 1})
    assert bad.status_code == 422
    assert {d["field"] for d in bad.json()["details"]} == {"agent", "colour"}
    assert client.post(f"/api/sessions/{sid}/end", json={"status": "exploded"}).status_code == 422


def test_export_streams_and_writes_only_inside_the_export_directory(api, clean_env):
    service, _, client = api
    client.post("/api/events", json=_events(30))
    service.flush()
    with client.stream("GET", "/api/export", params={"format": "jsonl", "category": "claude"}) as response:
        assert response.status_code == 200
        assert "attachment" in response.headers["content-disposition"]
        lines = b"".join(response.iter_bytes()).splitlines()
    assert len(lines) == 30
    written = client.get("/api/export", params={"format": "jsonl", "path": "daily/events.jsonl"})
    assert written.status_code == 201 and written.json()["count"] == 30
    assert (service.data_dir / "exports" / "daily" / "events.jsonl").exists()
    assert client.get("/api/export", params={"format": "jsonl", "path": "daily/events.jsonl"}).status_code == 409
    for escape in ("../outside.jsonl", "/tmp/abs.jsonl", "a/../../b.jsonl"):
        response = client.get("/api/export", params={"format": "jsonl", "path": escape})
        assert response.status_code == 400, escape
        assert response.json()["details"][0]["field"] == "path"
    assert not (clean_env / "outside.jsonl").exists()
    unknown = client.get("/api/export", params={"format": "xlsx"})
    assert unknown.status_code == 400 and "jsonl" in unknown.json()["details"][0]["message"]


def test_health_is_open_and_reports_components(api):
    _, _, client = api
    body = client.get("/health").json()
    assert body["status"] == "healthy"
    assert "sqlite" in body["components"] and "api" in body["components"]


def test_security_headers_on_every_response(api):
    _, _, client = api
    for response in (client.get("/health"), client.get("/api/events"), client.get("/missing")):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert "default-src 'self'" in response.headers["content-security-policy"]
        assert "strict-transport-security" not in response.headers


def test_hsts_behind_a_trusted_tls_proxy(make_server):
    _, _, client = make_server(trust_proxy=True)
    response = client.get("/health", headers={"x-forwarded-proto": "https"})
    assert response.headers["strict-transport-security"].startswith("max-age=")


def test_unknown_routes_and_methods_answer_json(api):
    _, _, client = api
    assert client.get("/nope").json()["error"] == "Not Found"
    response = client.delete("/api/events")
    assert response.status_code == 405 and response.json()["error"] == "Method Not Allowed"


def test_analytics_endpoints_match_the_service(make_server):
    service, _, client = make_server(service_options={"analytics": {"enabled": True}})
    sid = service.track_start("claude", "chat", "hi", metadata={"model": "claude-sonnet-4-5"})
    service.track_stream(sid, "hello")
    service.track_end(sid, metadata={"model": "claude-sonnet-4-5", "input_tokens": 100, "output_tokens": 20})
    service.flush()
    over_http = client.get("/api/metrics", params={"since": "1h"}).json()
    direct = service.get_metrics("1h").to_dict()
    assert over_http["events"] == direct["events"] and over_http["tokens"] == direct["tokens"]
    assert over_http["sessions"]["completed"] == 1
    assert client.get("/api/insights", params={"since": "1h"}).status_code == 200
    anomalies = client.get("/api/anomalies", params={"since": "1h", "metrics": "throughput"})
    assert anomalies.status_code == 200 and "anomalies" in anomalies.json()
    assert client.get("/api/metrics", params={"since": "yesterday-ish"}).status_code == 400


def test_analytics_routes_say_what_is_missing_without_analytics(api):
    _, _, client = api
    for path in ("/api/metrics", "/api/insights", "/api/series", "/api/anomalies"):
        answer = client.get(path)
        assert answer.status_code == 501, path  # not a 404 that reads as a wrong URL
        assert "vibekit-telemetry-analytics" in answer.json()["message"]
    assert "/api/metrics" not in client.get("/openapi.json").json()["paths"]


def test_config_section_starts_the_server_and_shutdown_stops_it_after_draining(clean_env):
    import httpx

    service = TelemetryService(data_dir=str(clean_env / "d"), api={"enabled": True, "port": 0,
                                                                    "rate_limit": {"enabled": False}})
    server = service.host.meta["api"]["object"].servers[0]
    url = server.url
    response = httpx.post(f"{url}/api/events", json=_events(200))
    ids = response.json()["ids"]
    service.shutdown()
    assert not server.running
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=2)
    reopened = TelemetryService(data_dir=str(clean_env / "d"))
    try:
        assert {e.id for e in reopened.query(limit=1000)} == set(ids)
    finally:
        reopened.shutdown()


def test_a_busy_port_is_a_clear_error(make_server):
    service, server, _ = make_server()
    with pytest.raises(OSError, match="cannot listen on 127.0.0.1"):
        service.start_api_server(port=server.port)


class _GatedStore:
    """A storage plugin that holds every write until the test opens the gate, so the pipeline fills up."""

    name = "gated"

    def __init__(self):
        import threading

        self.ids = set()
        self.gate = threading.Event()

    from vibekit_telemetry import hookimpl as _hookimpl

    @_hookimpl
    def store(self, events):
        self.gate.wait(30)
        self.ids.update(e.id for e in events)


def test_an_overloaded_pipeline_sheds_load_with_429_and_loses_nothing_acknowledged(make_server):
    store = _GatedStore()
    service, _, client = make_server(service_options={"storage": [{"type": "memory"}], "plugins": [store],
                                                      "max_queue_size": 200, "reliability": {"buffer_max_bytes": 100_000},
                                                      "stream_batch_size": 50, "max_batch_size": 50})
    acked, shed = [], None
    for _ in range(100):
        response = client.post("/api/events", json=_events(100))
        if response.status_code == 429:
            shed = response
            break
        assert response.status_code == 202
        acked += response.json()["ids"]
    assert shed is not None and shed.headers["retry-after"] == "1" and "full" in shed.json()["message"]
    assert client.post("/v1/logs", json={}, headers={"content-type": "application/json"}).status_code == 429
    store.gate.set()
    service.flush()
    assert acked and set(acked) <= store.ids


def test_export_names_the_file_system_refuses_are_400_not_500(api):
    service, _, client = api
    client.post("/api/events", json=_events(3))
    service.flush()
    exports = service.data_dir / "exports"
    assert client.get("/api/export", params={"format": "jsonl", "path": "daily/a.jsonl"}).status_code == 201
    cases = {
        "x" * 300 + ".jsonl": "at most",                        # ENAMETOOLONG
        "y" * 250: "at most",                                   # fits, but <name>.partial would not
        "/".join(["d" * 200] * 30) + "/e.jsonl": "cannot",      # the whole path too long
        "daily": "is a directory",                              # EISDIR
        "daily/": "is a directory",
        "daily/a.jsonl/b.jsonl": "is a file, not a directory",  # a parent that is a file
    }
    for name, message in cases.items():
        response = client.get("/api/export", params={"format": "jsonl", "path": name})
        assert response.status_code == 400, (name[:40], response.status_code, response.text[:200])
        [detail] = response.json()["details"]
        assert detail["field"] == "path" and message in detail["message"], (name[:40], detail)
    # a missing parent is made; nothing was left behind by the refusals
    assert client.get("/api/export", params={"format": "jsonl", "path": "new/deeper/b.jsonl"}).status_code == 201
    assert sorted(str(p.relative_to(exports)) for p in exports.rglob("*") if p.is_file()) == \
        ["daily/a.jsonl", "new/deeper/b.jsonl"]


def test_an_out_of_range_value_costs_only_its_own_event(api):
    """Issue 14 item 1 over HTTP (needs the kernel's gate): 300 good, one evil, 300 good -> 600 stored, 1 named."""
    service, _, client = api
    alone = client.post("/api/events", json={"category": "evil", "timestamp": 1e20})
    assert alone.status_code == 422
    assert [d["field"] for d in alone.json()["details"]] == ["events[0].timestamp"]
    batch = _events(300) + [{"category": "evil", "timestamp": 1e20}] + _events(300, "gemini")
    response = client.post("/api/events", json=batch)
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 600 and [(r["index"], r["field"]) for r in body["rejected"]] == \
        [(300, "events[300].timestamp")]
    # a timestamp JSON can carry but SQLite cannot (2^63) must not stop storage for what follows
    stopper = client.post("/api/events", json={"category": "evil", "timestamp": 9223372036854775808})
    assert stopper.status_code == 422 and stopper.json()["details"][0]["field"] == "events[0].timestamp"
    later = client.post("/api/events", json={"category": "later"}).json()["ids"]
    service.flush()
    assert {e.id for e in service.query(limit=1000)} == set(body["ids"]) | set(later)
    health = service.get_health_status()
    assert health.pipeline.get("dropped", 0) == 0, health.pipeline
