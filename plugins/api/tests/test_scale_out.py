"""Two ``telemetry api`` processes on one PostgreSQL store: the same answers, and an event ingested through one
reaches the live subscribers of the other (LISTEN/NOTIFY)."""

from __future__ import annotations

import threading
import time

import httpx
import orjson
import pytest

pytest.importorskip("vibekit_telemetry_postgres")


def _toml(dsn: str, schema: str) -> str:
    return (f'data_dir = "data"\n[[storage]]\ntype = "postgres"\n[storage.options]\ndsn = "{dsn}"\n'
            f'schema = "{schema}"\n[api.rate_limit]\nenabled = false\n[analytics]\nenabled = false\n')


def test_two_servers_on_one_database_answer_alike_and_share_live_events(start_api, tmp_path, pg_options):
    toml = _toml(pg_options["dsn"], pg_options["schema"])
    a = start_api(toml, cwd=tmp_path / "a")
    b = start_api(toml, cwd=tmp_path / "b")
    heard: list[tuple[float, dict]] = []
    subscribed = threading.Event()

    def listen() -> None:
        with httpx.stream("GET", f"{b.url}/api/stream", params={"category": "crossing"}, timeout=30) as response:
            assert response.status_code == 200
            subscribed.set()
            for line in response.iter_lines():
                if line.startswith("data: "):
                    data = orjson.loads(line[6:])
                    if isinstance(data, dict) and data.get("category") == "crossing":
                        heard.append((time.monotonic(), data))
                        if len(heard) == 3:
                            return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert subscribed.wait(30)  # B answers once its stream is open, and it opens once B listens on the channel
    sent_at = time.monotonic()
    batch = [{"category": "crossing", "action": f"step {i}", "value": i} for i in range(3)]
    assert httpx.post(f"{a.url}/api/events", json=batch, timeout=10).status_code == 202
    listener.join(15)
    assert [d["action"] for _, d in heard] == ["step 0", "step 1", "step 2"]
    assert heard[-1][0] - sent_at < 1.0 + 0.25  # A flushes at once for a request; B within a second of the commit
    # both servers answer the same queries from the one store
    for url in (a.url, b.url):
        page = httpx.get(f"{url}/api/events", params={"category": "crossing", "order": "asc"}, timeout=10).json()
        assert [e["action"] for e in page["events"]] == ["step 0", "step 1", "step 2"]


def test_two_servers_keep_one_rate_limit_budget_in_the_postgresql_store(start_api, tmp_path, pg_options):
    toml = _toml(pg_options["dsn"], pg_options["schema"]).replace(
        "[api.rate_limit]\nenabled = false\n", '[api.rate_limit]\nmax = 5\nwindow_ms = 60000\nstorage = "store"\n')
    a = start_api(toml, cwd=tmp_path / "a")
    b = start_api(toml, cwd=tmp_path / "b")
    statuses = [httpx.get(f"{url}/api/sessions", timeout=10).status_code for url in (a.url, b.url) * 3]
    assert statuses == [200] * 5 + [429]  # 3 + 3 requests, one budget of 5
    refused = httpx.get(f"{a.url}/api/sessions", timeout=10)
    assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 60


def test_keeping_the_budget_in_a_store_that_is_not_postgresql_is_refused_at_start(start_api, tmp_path):
    with pytest.raises(AssertionError, match="must be PostgreSQL"):
        start_api('data_dir = "data"\n[api.rate_limit]\nstorage = "store"\n', cwd=tmp_path / "lite")
