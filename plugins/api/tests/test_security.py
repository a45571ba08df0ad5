"""Authentication, scopes, CORS, rate limits and the exposure check, against a real server."""

from __future__ import annotations

import asyncio

import pytest

from vibekit_telemetry import ConfigError
from vibekit_telemetry_api.config import APIConfig, AuthConfig, CorsConfig
from vibekit_telemetry_api.security import RateLimiter

FULL = "full-access-key-123"
READER = "read-only-key-456"
INGESTER = "ingest-only-key-789"
TOKEN = "bearer-token-abcdef"


@pytest.fixture
def secured(make_server, exporter):
    return make_server(
        service_options={"security": {"audit": {"enabled": True}}, "plugins": [exporter]},
        auth={"api_keys": [{"key": FULL, "name": "ci-bot"}, {"key": READER, "name": "grafana", "scopes": ["read"]},
                           {"key": INGESTER, "scopes": "ingest"}],
              "bearer_tokens": [TOKEN]},
    )


def test_credentials_are_required_except_for_health(secured):
    _, _, client = secured
    assert client.get("/health").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    missing = client.get("/api/events")
    assert missing.status_code == 401 and "X-API-Key" in missing.json()["message"]
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/api/events", headers={"x-api-key": "wrong-key-000"}).status_code == 401
    assert client.get("/metrics").status_code == 401
    assert client.get("/api/events", headers={"x-api-key": FULL}).status_code == 200
    assert client.get("/api/events", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.get("/api/events", headers={"authorization": f"Basic {TOKEN}"}).status_code == 401


def test_scopes_separate_readers_from_ingesters(secured):
    _, _, client = secured
    event = {"category": "x", "action": "a"}
    forbidden = client.post("/api/events", json=event, headers={"x-api-key": READER})
    assert forbidden.status_code == 403 and forbidden.json()["error"] == "Forbidden"
    assert client.get("/api/events", headers={"x-api-key": READER}).status_code == 200
    assert client.post("/api/events", json=event, headers={"x-api-key": INGESTER}).status_code == 202
    assert client.get("/api/events", headers={"x-api-key": INGESTER}).status_code == 403
    assert client.post("/v1/traces", json={}, headers={"x-api-key": READER}).status_code == 403


def test_the_audit_trail_names_the_key_not_the_secret(secured):
    service, _, client = secured
    client.post("/api/events", json=[{"category": "x"}] * 3, headers={"x-api-key": FULL})
    service.flush()
    response = client.get("/api/export", params={"format": "jsonl"}, headers={"x-api-key": FULL})
    assert response.status_code == 200 and len(response.content.splitlines()) == 3
    entry = service.get_audit_logs(action="export")[0]
    assert entry["actor"] == "ci-bot"
    assert FULL not in str(service.get_audit_logs())


def test_keys_from_the_environment(make_server, monkeypatch):
    monkeypatch.setenv("TELEMETRY_API_KEYS", "env-key-11111111,env-key-22222222")
    monkeypatch.setenv("TELEMETRY_API_READ_KEYS", "env-reader-3333333")
    _, _, client = make_server()
    assert client.get("/api/events").status_code == 401
    assert client.get("/api/events", headers={"x-api-key": "env-key-22222222"}).status_code == 200
    assert client.post("/api/events", json={"category": "x"},
                       headers={"x-api-key": "env-reader-3333333"}).status_code == 403


def test_cors_allows_only_configured_origins(make_server, monkeypatch):
    monkeypatch.setenv("TELEMETRY_ALLOWED_ORIGINS", "https://dash.example.com")
    _, _, client = make_server(cors={"origins": ["https://app.example.com"]})
    allowed = client.get("/api/events", headers={"origin": "https://app.example.com"})
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    from_env = client.get("/api/events", headers={"origin": "https://dash.example.com"})
    assert from_env.headers["access-control-allow-origin"] == "https://dash.example.com"
    other = client.get("/api/events", headers={"origin": "https://evil.example.com"})
    assert "access-control-allow-origin" not in other.headers
    preflight = client.options("/api/events", headers={"origin": "https://app.example.com",
                                                       "access-control-request-method": "POST",
                                                       "access-control-request-headers": "x-api-key"})
    assert preflight.status_code == 200
    assert "POST" in preflight.headers["access-control-allow-methods"]


def test_a_wildcard_origin_with_credentials_is_refused():
    with pytest.raises(ConfigError, match="cannot be combined with credentials"):
        CorsConfig(origins=["*"], credentials=True).allowed_origins({})


def test_rate_limit_answers_429_with_retry_after_and_ingest_has_its_own_budget(make_server):
    _, _, client = make_server(rate_limit={"max": 3, "window_ms": 60_000, "ingest_max": 2, "ingest_window_ms": 60_000})
    codes = [client.get("/api/events").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    limited = client.get("/api/events")
    assert int(limited.headers["retry-after"]) >= 1 and limited.json()["error"] == "Too Many Requests"
    ingest = [client.post("/api/events", json={"category": "x"}).status_code for _ in range(3)]
    assert ingest == [202, 202, 429]
    assert client.get("/health").status_code == 200  # never limited


def test_rate_limiter_windows_reset_and_expired_windows_are_forgotten():
    limiter = RateLimiter({"api": (2, 1.0)})

    async def run():
        assert await limiter.hit("api", "a") is None
        assert await limiter.hit("api", "a") is None
        retry = await limiter.hit("api", "a")
        assert retry is not None and 0 < retry <= 1.0
        assert await limiter.hit("api", "b") is None  # another client, another budget
        for i in range(1000):
            await limiter.hit("api", f"client-{i}")
        await asyncio.sleep(1.1)
        assert await limiter.hit("api", "a") is None  # a new window
        await asyncio.sleep(0.1)  # the library drops expired windows on a timer

    asyncio.run(run())
    counters = limiter._strategy.storage.storage
    assert len(counters) == 1, "expired windows are still held"


def test_an_unauthenticated_public_bind_is_refused_and_auth_without_keys_too():
    config = APIConfig(host="0.0.0.0")
    with pytest.raises(ConfigError, match="reachable from other machines"):
        config.check_exposure([])
    APIConfig(host="0.0.0.0", allow_unauthenticated=True).check_exposure([])
    keys = AuthConfig(api_keys=["some-long-key"]).credentials({})
    config.check_exposure(keys)
    with pytest.raises(ConfigError, match="no key is configured"):
        APIConfig(auth=AuthConfig(enabled=True)).check_exposure([])
    with pytest.raises(ConfigError, match="at least 8 characters"):
        AuthConfig(api_keys=["short"]).credentials({})
    with pytest.raises(ConfigError, match="scopes"):
        AuthConfig(api_keys=[{"key": "long-enough-key", "scopes": ["admin"]}]).credentials({})


def test_bad_api_options_name_the_key(make_server):
    with pytest.raises(ConfigError, match="colour"):
        make_server(colour="blue")
