"""``api.rate_limit.storage``: the key's checks, one budget across servers through a real Redis, and its failures."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import httpx
import pytest

from vibekit_telemetry import ConfigError
from vibekit_telemetry_api import APIConfig, merged_config
from vibekit_telemetry_api.config import RateLimitConfig



def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _toml(storage: str, max_requests: int = 5) -> str:
    return (f'data_dir = "data"\nservice_name = "shared-limits"\n[api.rate_limit]\nmax = {max_requests}\n'
            f'window_ms = 60000\nstorage = "{storage}"\n')


@pytest.mark.parametrize("storage", ["memory://", "redis://localhost:6379/0", "redis://:secret@db.internal:6380/2",
                                     "rediss://user:secret@db.internal:6380", "redis+unix:///run/redis.sock?db=1"])
def test_the_storage_key_takes_memory_and_redis_uris(storage):
    assert merged_config(APIConfig(), {"rate_limit": {"storage": storage}}, "test").rate_limit.storage == storage
    assert RateLimitConfig().storage == "memory://"


@pytest.mark.parametrize("storage", ["memcached://localhost:11211", "memory", "redis://", "postgresql://db/x", ""])
def test_any_other_storage_is_a_config_error_naming_the_key(storage):
    with pytest.raises(ConfigError, match=r"api\.rate_limit\.storage.*expected 'memory://'"):
        merged_config(APIConfig(), {"rate_limit": {"storage": storage}}, "test")


def test_a_refused_uri_and_the_config_repr_never_show_its_password():
    with pytest.raises(ConfigError) as refused:
        RateLimitConfig(storage="mongodb://admin:hunter2pass@db.internal")
    assert "hunter2pass" not in str(refused.value) and "admin:***@db.internal" in str(refused.value)
    assert "hunter2pass" not in repr(APIConfig(rate_limit=RateLimitConfig(storage="redis://:hunter2pass@db:6379")))


def test_workers_must_be_positive_and_misspelt_keys_are_refused():
    assert merged_config(APIConfig(), {"workers": 4}, "test").workers == 4
    with pytest.raises(ConfigError, match="api.workers"):
        merged_config(APIConfig(), {"workers": 0}, "test")
    with pytest.raises(ConfigError, match="storag"):
        merged_config(APIConfig(), {"rate_limit": {"storag": "redis://localhost"}}, "test")


def test_config_show_redacts_the_password_of_the_storage_uri(tmp_path):
    (tmp_path / "telemetry.toml").write_text(_toml("redis://:hunter2pass@db.internal:6379/0"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_")}
    shown = subprocess.run([sys.executable, "-m", "vibekit_telemetry", "config", "show"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "hunter2pass" not in shown.stdout + shown.stderr
    assert "redis://:***@db.internal:6379/0" in shown.stdout


def _statuses(url: str, count: int) -> list[int]:
    with httpx.Client(base_url=url, timeout=10) as client:
        return [client.get("/api/events").status_code for _ in range(count)]


def test_two_servers_on_one_redis_share_one_budget(redis_server, start_api, tmp_path):
    toml = _toml(redis_server.url)
    first = start_api(toml, cwd=tmp_path / "a")
    second = start_api(toml, cwd=tmp_path / "b")
    assert _statuses(first.url, 3) == [200, 200, 200]
    assert _statuses(second.url, 3) == [200, 200, 429]
    with httpx.Client(base_url=first.url) as client:
        limited = client.get("/api/events")
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1


def test_two_servers_with_memory_storage_keep_a_budget_each(start_api, tmp_path):
    toml = _toml("memory://")
    first = start_api(toml, cwd=tmp_path / "a")
    second = start_api(toml, cwd=tmp_path / "b")
    assert _statuses(first.url, 3) + _statuses(second.url, 3) == [200] * 6
    assert _statuses(first.url, 3) == [200, 200, 429]


def test_an_unreachable_storage_stops_the_server_from_starting_with_a_clear_message(tmp_path):
    port = _free_port()  # nothing listens there
    (tmp_path / "telemetry.toml").write_text(_toml(f"redis://:hunter2pass@127.0.0.1:{port}/0"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_")}
    result = subprocess.run([sys.executable, "-m", "vibekit_telemetry", "api", "--port", "0"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "api.rate_limit.storage: cannot reach" in result.stderr
    assert f"redis://:***@127.0.0.1:{port}/0" in result.stderr and "hunter2pass" not in result.stderr
    assert "listening on" not in result.stderr


def test_start_api_server_refuses_an_unreachable_storage(make_server):
    from vibekit_telemetry_api.security import RateLimitStorageError

    with pytest.raises(RateLimitStorageError, match="cannot reach"):
        make_server(rate_limit={"storage": f"redis://127.0.0.1:{_free_port()}/0"})


def test_a_storage_that_fails_mid_request_lets_requests_through_and_counts_them(redis_server, make_server):
    _, server, client = make_server(rate_limit={"storage": redis_server.url, "max": 2, "window_ms": 60_000})
    assert [client.get("/api/events").status_code for _ in range(3)] == [200, 200, 429]
    redis_server.stop()
    # fail open: the limiter's outage is not the API's, and never a 500
    assert [client.get("/api/events").status_code for _ in range(3)] == [200, 200, 200]
    metrics = client.get(server.config.metrics.endpoint).text
    line = next(l for l in metrics.splitlines() if l.startswith("vibekit_api_rate_limit_storage_errors_total"))
    assert float(line.split()[-1]) >= 3
