"""How the API server serves the dashboard: mounts, headers, auth, its own port, and the commands that start it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from vibekit_telemetry import ConfigError, PluginError, TelemetryService, hookimpl


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_pages_are_static_revalidated_and_guarded_by_headers(make_server):
    _, server = make_server()
    with httpx.Client(base_url=server.url) as client:
        root = client.get("/")
        assert root.status_code == 307 and root.headers["location"] == "/dashboard/"
        bare = client.get("/dashboard")
        assert bare.status_code == 307 and bare.headers["location"].endswith("/dashboard/")
        index = client.get("/dashboard/")
        assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
        assert "app.js" in index.text and "http" not in re.sub(r"http://www\.w3\.org[^\"]*", "", index.text), \
            "no asset comes from another origin"
        csp = index.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe" not in csp
        assert index.headers["x-frame-options"] == "DENY"
        script = client.get("/dashboard/app.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert "innerHTML" not in script.text and "eval(" not in script.text
        again = client.get("/dashboard/app.js", headers={"if-none-match": script.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
        assert client.head("/dashboard/app.css").headers["content-length"] == str(len(client.get("/dashboard/app.css").content))
        assert client.get("/dashboard/nothing.js").status_code == 404
        assert client.get("/dashboard/../health").status_code in (200, 404)  # normalised by the client, never a file read
        # escaped so that no client normalises it: the server must not serve the package's source next to the pages
        assert client.get("/dashboard/%2e%2e/pages.py").status_code == 404
        assert client.get("/dashboard/..%2fpages.py").status_code == 404
        assert client.post("/dashboard/").status_code == 405


def test_a_websocket_to_the_pages_is_closed(make_server):
    # the synchronous client: Playwright's sync API keeps an event loop running in this thread
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    _, server = make_server()
    try:
        with connect(server.url.replace("http://", "ws://") + "/dashboard/", open_timeout=5) as ws:
            ws.recv(timeout=5)
        code = None
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd else None
    except InvalidStatus as exc:
        code = exc.response.status_code
    assert code in (1008, 403)


def test_pages_need_no_key_but_the_data_does(make_server):
    _, server = make_server(auth={"enabled": True, "api_keys": ["key-0001"]})
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/dashboard/").status_code == 200
        assert client.get("/api/metrics").status_code == 401
        assert client.get("/api/metrics", headers={"X-API-Key": "key-0001"}).status_code == 200


def test_the_dashboard_on_its_own_port(make_server):
    port = _free_port()
    _, server = make_server(dashboard_port=port)
    assert server.dashboard_url == f"http://127.0.0.1:{port}/dashboard/"
    with httpx.Client() as client:
        assert client.get(f"{server.url}/dashboard/").status_code == 404
        assert client.get(f"{server.url}/api/sessions").status_code == 200
        assert client.get(server.dashboard_url).status_code == 200
        # the pages call /api on their own origin: the dashboard port answers it too, behind the same guard
        assert client.get(f"http://127.0.0.1:{port}/api/sessions").status_code == 200
        assert client.get(f"http://127.0.0.1:{port}/").headers["location"] == "/dashboard/"


def test_a_dashboard_port_equal_to_the_api_port_is_refused(make_server):
    port = _free_port()
    with pytest.raises(ConfigError, match="dashboard_port"):
        make_server(port=port, dashboard_port=port)
    with pytest.raises(ConfigError, match="dashboard_port"):
        make_server(dashboard_port=0)


class _BadMount:
    name = "bad-mount"

    def __init__(self, path: str) -> None:
        self.path = path

    @hookimpl
    def api_routes(self, service, register):
        register(self.path, lambda scope, receive, send: None, name="bad")


@pytest.mark.parametrize("path", ["/api/mine", "no-slash", "/trailing/", "/dashboard"])
def test_a_plugin_cannot_take_the_apis_paths(clean_env, path):
    with TelemetryService(data_dir=str(clean_env / ".vibekit"), plugins=[_BadMount(path)]) as service:
        with pytest.raises(PluginError, match="bad-mount"):
            service.start_api_server(port=0, dashboard=path == "/dashboard")


def test_the_dashboard_plugin_loads_when_asked_for(clean_env):
    with TelemetryService(data_dir=str(clean_env / ".vibekit")) as service:
        assert "dashboard" not in service.plugin_names()
        server = service.start_api_server(port=0)
        assert server.dashboard_url is None
        assert httpx.get(f"{server.url}/").status_code == 404
        server = service.start_api_server(port=0, dashboard=True)
        assert "dashboard" in service.plugin_names()
        assert httpx.get(server.dashboard_url).status_code == 200


def _start(args: list[str], cwd: Path) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_")}
    proc = subprocess.Popen([sys.executable, "-m", "vibekit_telemetry", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    output = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        output.append(line)
        found = re.search(r"(?:Dashboard: |listening on )(http://\S+)", line)
        if found:
            return proc, found.group(1)
    proc.kill()
    raise AssertionError("no URL printed:\n" + "".join(output))


def test_telemetry_demo_ends_by_serving_the_dashboard(clean_env):
    proc, url = _start(["demo", "--port", "0", "--sessions", "8", "--seed", "1"], clean_env)
    try:
        assert url.endswith("/dashboard/")
        assert httpx.get(url).status_code == 200
        base = url.rsplit("/dashboard/", 1)[0]
        sessions = httpx.get(f"{base}/api/sessions", params={"count": "true", "limit": 1}).json()
        assert sessions["total"] >= 9
        metrics = httpx.get(f"{base}/api/metrics").json()
        assert metrics["events"]["total"] > 0, "the demo loads analytics for the dashboard"
        time.sleep(5)  # live sessions keep coming while it serves
        later = httpx.get(f"{base}/api/sessions", params={"count": "true", "limit": 1}).json()
        assert later["total"] > sessions["total"]
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, rest
    assert "stopped" in rest


def test_telemetry_demo_no_serve_returns(clean_env):
    result = subprocess.run([sys.executable, "-m", "vibekit_telemetry", "demo", "--no-serve", "--sessions", "3"],
                            cwd=clean_env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Dashboard:" not in result.stdout


def test_telemetry_api_dashboard_port(clean_env):
    port = _free_port()
    proc, url = _start(["api", "--port", "0", "--dashboard", "--dashboard-port", str(port)], clean_env)
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/dashboard/").status_code == 200
        assert httpx.get(f"{url}/dashboard/").status_code == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, "drained, then the conventional exit status of SIGTERM"
