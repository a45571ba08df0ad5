"""Fixtures: a service on a real SQLite file served by a real uvicorn server, and a real headless Chromium.

The browser is Debian's ``chromium`` driven by Playwright.  Where it is not
installed the browser tests skip with the reason, except under ``.ci/run``
(``VIBEKIT_REQUIRE_BROWSER=1``), where a missing browser is a failure.
Screenshots go to ``test-artifacts/dashboard/`` (``VIBEKIT_TEST_ARTIFACTS`` moves it).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from vibekit_telemetry import TelemetryService

CHROMIUM = os.environ.get("VIBEKIT_CHROMIUM", "/usr/bin/chromium")
#: flags for a closed network: without them Chromium keeps trying to reach Google's services
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    """An empty working directory and no TELEMETRY_* variables."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("TELEMETRY_"):
            monkeypatch.delenv(name)
    return tmp_path


@pytest.fixture
def make_server(clean_env) -> Iterator[Callable[..., tuple[TelemetryService, Any]]]:
    """``make_server(service_options=..., **api_options)``: a service with analytics and a server with the dashboard."""
    started: list[TelemetryService] = []

    def make(service_options: dict[str, Any] | None = None, **api_options: Any) -> tuple[TelemetryService, Any]:
        options = {"data_dir": str(clean_env / ".vibekit"), "service_name": "dashboard-test",
                   "plugins": ["analytics"], **(service_options or {})}
        service = TelemetryService(**options)
        started.append(service)
        api_options.setdefault("rate_limit", {"enabled": False})
        api_options.setdefault("dashboard", True)
        api_options.setdefault("port", 0)
        return service, service.start_api_server(**api_options)

    yield make
    for service in started:
        service.shutdown()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per test module.

    Not per session: Playwright's sync API keeps an asyncio loop running in
    this thread while it lives, and other plugins' tests call ``asyncio.run``.
    """
    if not shutil.which(CHROMIUM):
        message = f"no Chromium at {CHROMIUM} (apt-get install chromium, or set VIBEKIT_CHROMIUM)"
        if os.environ.get("VIBEKIT_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser) -> Iterator[Any]:
    """A fresh browser tab (its own storage), failing the test on any JavaScript error or console error."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    tab.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    tab.problems = problems
    yield tab
    context.close()
    allowed = [p for p in problems if "401" not in p and "Unauthorized" not in p]
    assert not allowed, allowed



def pytest_terminal_summary(terminalreporter) -> None:
    """List the screenshots tests attached (their ``screenshot`` properties) at the end of the run."""
    shots = [(report.nodeid, value) for reports in terminalreporter.stats.values() for report in reports
             if getattr(report, "when", None) == "call"
             for name, value in getattr(report, "user_properties", ()) if name == "screenshot"]
    if shots:
        terminalreporter.section("dashboard screenshots")
        for nodeid, path in shots:
            terminalreporter.write_line(f"{path}  ({nodeid.rsplit('::', 1)[-1]})")
