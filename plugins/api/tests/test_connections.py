"""Slow clients and greedy clients, with raw sockets against a real server: deadlines and connections per client."""

from __future__ import annotations

import socket
import time

import httpx
import orjson
import pytest

HEAD = b"POST /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"


def _connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took."""
    started = time.monotonic()
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received, time.monotonic() - started


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


@pytest.fixture
def strict(make_server):
    """A server with short deadlines so the tests are quick."""
    return make_server(header_timeout_ms=600, body_timeout_ms=600)


def test_a_connection_that_sends_nothing_is_closed(strict):
    _, server, _ = strict
    with _connect(server) as sock:
        received, took = _read_until_closed(sock, 5)
    assert received == b"" and took < 2.5


def test_headers_trickled_a_byte_at_a_time_are_cut_off_with_408(strict):
    _, server, _ = strict
    with _connect(server) as sock:
        started = time.monotonic()
        request = HEAD % 2 + b"{}"
        try:
            for byte in request:  # a slowloris: every byte resets no timer
                sock.sendall(bytes([byte]))
                time.sleep(0.05)
                if time.monotonic() - started > 5:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        received, _ = _read_until_closed(sock, 5)
        took = time.monotonic() - started
    assert _status(received) == 408 and b"api.header_timeout_ms" in received
    assert took < 2.5


@pytest.mark.parametrize("trickle", [False, True])
def test_a_stalled_or_trickled_body_gets_408_and_the_connection_closes(strict, trickle):
    service, server, client = strict
    body = orjson.dumps([{"category": "slow", "label": "x" * 200}])
    with _connect(server) as sock:
        sock.sendall(HEAD % len(body) + body[:10])
        started = time.monotonic()
        if trickle:
            try:
                for byte in body[10:]:
                    sock.sendall(bytes([byte]))
                    time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                pass
        received, _ = _read_until_closed(sock, 10)
        took = time.monotonic() - started
    assert _status(received) == 408 and b"api.body_timeout_ms" in received, received
    assert took < 2.5
    service.flush()
    assert service.query(category="slow") == []
    assert client.post("/api/events", json={"category": "fast"}).status_code == 202


def test_a_body_sent_in_time_over_a_slow_start_is_accepted(strict):
    """The deadline is for the whole body, however it arrives, not per chunk: a prompt client is served."""
    service, server, _ = strict
    body = orjson.dumps([{"category": "steady"}])
    with _connect(server) as sock:
        sock.sendall(HEAD % len(body))
        time.sleep(0.3)
        sock.sendall(body)
        sock.settimeout(5)
        assert _status(sock.recv(65536)) == 202


def test_a_kept_alive_connection_gets_the_header_deadline_again(strict):
    _, server, _ = strict
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        sock.settimeout(5)
        assert _status(sock.recv(65536)) == 200
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
        received, took = _read_until_closed(sock, 5)
    assert _status(received) == 408 and took < 2.5


def test_one_client_cannot_hold_more_than_its_share_of_connections(make_server):
    _, server, client = make_server(max_connections_per_client=4)
    held = [_connect(server) for _ in range(4)]
    try:
        started = time.monotonic()
        with httpx.Client(base_url=server.url, timeout=5) as fresh:
            refused = fresh.get("/health")
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert "api.max_connections_per_client" in refused.json()["message"]
        assert time.monotonic() - started < 1.5
        # one that connects and says nothing is closed at once, not held
        with _connect(server) as silent:
            received, took = _read_until_closed(silent, 5)
        assert received == b"" and took < 2.5
        # the first ones still work
        for sock in held:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            sock.settimeout(5)
            assert _status(sock.recv(65536)) == 200
        held.pop().close()
        deadline = time.monotonic() + 5
        while True:  # the server notices the close as soon as its loop runs
            with httpx.Client(base_url=server.url, timeout=5) as again:
                if again.get("/health").status_code == 200:
                    break
            assert time.monotonic() < deadline, "a closed connection was never given back"
            time.sleep(0.05)
    finally:
        for sock in held:
            sock.close()
    assert 'vibekit_api_refused_requests_total{reason="too_many_connections"} 2.0' in client.get("/metrics").text


def test_websocket_connections_count_and_are_given_back(make_server):
    import asyncio

    import websockets

    _, server, _ = make_server(max_connections_per_client=2)
    url = server.url.replace("http://", "ws://") + "/ws/events"

    async def run():
        async with websockets.connect(url), websockets.connect(url):
            with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
                async with websockets.connect(url):
                    pass
            assert refused.value.response.status_code == 429
        deadline = time.monotonic() + 5
        while True:
            try:
                async with websockets.connect(url), websockets.connect(url):
                    return
            except websockets.exceptions.InvalidStatus:
                assert time.monotonic() < deadline, "closed WebSocket connections were never given back"
                await asyncio.sleep(0.05)

    asyncio.run(run())


def test_timeouts_and_the_limit_are_configurable_and_checked():
    from vibekit_telemetry import ConfigError
    from vibekit_telemetry_api.config import APIConfig

    with pytest.raises(ConfigError, match="api.body_timeout_ms"):
        APIConfig(body_timeout_ms=0)
    with pytest.raises(ConfigError, match="api.header_timeout_ms"):
        APIConfig(header_timeout_ms=-1)
    with pytest.raises(ConfigError, match="api.max_connections_per_client"):
        APIConfig(max_connections_per_client=-1)
    assert APIConfig(max_connections_per_client=0).max_connections_per_client == 0
