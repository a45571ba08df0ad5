"""The dashboard in a real headless Chromium against a real server: numbers, sessions, live updates, escaping, auth.

Each test saves screenshots under ``test-artifacts/dashboard/``.
"""

from __future__ import annotations

import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from vibekit_telemetry import Anomaly, now_ms
from vibekit_telemetry.demo import run_demo

ARTIFACTS = Path(os.environ.get("VIBEKIT_TEST_ARTIFACTS", Path(__file__).parents[3] / "test-artifacts")) / "dashboard"
XSS = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">Fix </b>this & "that"'


def screenshot(tab: Any, name: str) -> Path:
    """Save a full-page screenshot as a test artifact."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    tab.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000, "the screenshot is (nearly) empty"
    return path


def ready(tab: Any, timeout: float = 10_000) -> None:
    """Wait until the page shown has loaded its data."""
    tab.wait_for_selector("main[data-ready='true']", timeout=timeout)


def pick(data: dict[str, Any], path: str) -> Any:
    for key in path.split("."):
        data = data[key]
    return data


def test_overview_numbers_are_get_metrics(make_server, page):
    service, server = make_server()
    run_demo(service, sessions=40, seed=11)
    page.goto(server.dashboard_url)
    ready(page)
    page.wait_for_selector("#cards .card")
    assert page.inner_text("#service-name") == "dashboard-test"
    expected = service.get_metrics("24h").to_dict()
    cards = page.eval_on_selector_all("#cards .card", "els => els.map(e => [e.dataset.metric, e.dataset.value])")
    assert {metric for metric, _ in cards} >= {"events.total", "sessions.active", "errors.rate", "performance.p50_latency",
                                               "performance.p95_latency", "performance.p99_latency",
                                               "performance.p50_ttft", "tokens.total", "tokens.cost"}
    for metric, shown in cards:
        want = pick(expected, metric)
        assert (shown == "") if want is None else float(shown) == pytest.approx(want), metric
    assert expected["errors"]["total"] > 0 and expected["tokens"]["cost"] > 0, "the demo data has errors and prices"
    # what a person reads: the formatted text agrees too
    assert page.inner_text("[data-metric='events.total'] .value") == f"{expected['events']['total']:,}"
    assert page.inner_text("[data-metric='errors.rate'] .value") == f"{expected['errors']['rate']:.2f}".rstrip("0").rstrip(".") + "%"
    models = page.eval_on_selector_all("#models tbody tr", "els => els.map(e => [e.dataset.model, Number(e.dataset.tokens)])")
    assert dict(models) == {model: b["tokens"]["total"] for model, b in expected["by_model"].items()}
    assert page.locator("#events-chart rect.bar").count() >= 59, "one bar per minute of the last hour"
    latest = [e.id for e in service.query(limit=25, order="desc")]
    page.wait_for_selector("#feed li")
    assert page.eval_on_selector_all("#feed li", "items => items.map(i => i.dataset.id)") == latest
    screenshot(page, "overview-light")
    page.click("#theme")
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(17, 18, 25)", background
    screenshot(page, "overview-dark")


def test_a_new_event_appears_live_within_two_seconds(make_server, page):
    service, server = make_server()
    run_demo(service, sessions=6, seed=2)
    page.goto(server.dashboard_url)
    ready(page)
    page.wait_for_selector("#live[data-state='live']")
    page.wait_for_selector("[data-metric='sessions.active']")
    active = int(page.get_attribute("[data-metric='sessions.active']", "data-value"))
    service.track_start("claude", "chat", "live check 7f3a")
    page.locator("#feed li", has_text="live check 7f3a").wait_for(timeout=2_000)
    # the numbers follow without a reload (the metrics message comes every two seconds after a write)
    page.wait_for_selector(f"[data-metric='sessions.active'][data-value='{active + 1}']", timeout=5_000)
    screenshot(page, "overview-live")


def test_sessions_filter_sort_page_and_detail(make_server, page):
    service, server = make_server()
    run_demo(service, sessions=70, seed=5)
    total = service.count_sessions()
    page.goto(f"{server.dashboard_url}#/sessions")
    ready(page)
    assert page.get_attribute("#page-info", "data-total") == str(total)
    assert page.locator("#sessions tbody tr").count() == 50
    page.click("#sessions button[data-sort='duration_ms']")
    page.wait_for_function("() => location.hash.includes('sort=duration_ms')")
    ready(page)
    longest = service.get_sessions(sort="duration_ms", limit=1)[0]
    assert page.get_attribute("#sessions tbody tr >> nth=0", "data-id") == longest.id
    assert page.get_attribute("th:has(button[data-sort='duration_ms'])", "aria-sort") == "descending"
    page.click("button[data-page='next']")
    page.wait_for_function("() => location.hash.includes('page=1')")
    ready(page)
    second = [s.id for s in service.get_sessions(sort="duration_ms", limit=50, offset=50)]
    assert page.eval_on_selector_all("#sessions tbody tr", "rows => rows.map(r => r.dataset.id)") == second
    page.check("input[name='root_only']")
    page.wait_for_function("() => location.hash.includes('root_only=true')")
    ready(page)
    top_level = service.count_sessions(root_only=True)
    assert top_level < total, "the demo's tool calls are child sessions"
    assert page.get_attribute("#page-info", "data-total") == str(top_level)
    page.uncheck("input[name='root_only']")
    page.wait_for_function("() => !location.hash.includes('root_only')")
    ready(page)
    page.fill("input[name='text']", "websocket")
    page.wait_for_function("() => location.hash.includes('text=websocket')")
    ready(page)
    matching = service.count_sessions(text="websocket")
    assert 0 < matching < total
    assert page.get_attribute("#page-info", "data-total") == str(matching)
    for prompt in page.eval_on_selector_all("#sessions span.prompt-cell", "cells => cells.map(c => c.textContent)"):
        assert "websocket" in prompt.lower()
    page.select_option("select[name='status']", "failed")
    page.wait_for_function("() => location.hash.includes('status=failed')")
    ready(page)
    assert page.get_attribute("#page-info", "data-total") == str(service.count_sessions(text="websocket", status="failed"))
    screenshot(page, "sessions")

    failed = service.get_sessions(status="failed", limit=1)[0]
    events = service.query(session_id=failed.id, limit=1000, order="asc")
    page.goto(f"{server.dashboard_url}#/session/{failed.id}")
    ready(page)
    assert page.inner_text("#prompt") == failed.prompt
    assert page.locator("#timeline tr").count() == len(events)
    streamed = "".join(e.stream_data or "" for e in events if e.event_type == "stream")
    assert page.eval_on_selector("#response", "el => el.textContent") == streamed
    error = next(e for e in events if e.event_type == "error")
    assert error.error_message in page.inner_text("#errors")
    assert "Traceback (most recent call last)" in page.inner_text("#errors pre")
    assert '"model"' in page.inner_text("#metadata")
    assert "\nnull\n" not in f"\n{page.inner_text('main')}\n", "an empty section must leave nothing behind"
    screenshot(page, "session-detail")


def test_session_detail_shows_redaction_counts_and_follows_the_session_live(make_server, page):
    service, server = make_server({"plugins": ["analytics", "pii"]})
    sid = service.track_start("claude", "chat", "Mail jane.doe@example.com about the invoice")
    service.track_stream(sid, "Sure, I will write to ")
    service.flush()
    page.goto(f"{server.dashboard_url}#/session/{sid}")
    ready(page)
    assert "jane.doe@example.com" not in page.inner_text("main")
    assert page.locator("#redactions tr[data-kind]").count() >= 1
    page.wait_for_selector("#live[data-state='live']")
    service.track_stream(sid, "the customer now.")
    page.wait_for_function("() => document.querySelector('#response').textContent.includes('the customer')", timeout=2_000)
    screenshot(page, "session-redactions")


def test_event_text_is_shown_as_text_never_run(make_server, page):
    service, server = make_server()
    sid = service.track_start(XSS, "chat", XSS, metadata={"model": XSS})
    service.track_stream(sid, XSS)
    service.track_error(sid, error_type="Boom<b>", message=XSS, stack=XSS)
    service.track_end(sid, "failed")
    service.flush()
    response = page.goto(server.dashboard_url)
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    ready(page)
    page.goto(f"{server.dashboard_url}#/sessions")
    ready(page)
    assert len(XSS) < 120, "shown whole in the table"
    assert page.eval_on_selector("#sessions span.prompt-cell", "el => el.textContent") == XSS
    page.goto(f"{server.dashboard_url}#/session/{sid}")
    ready(page)
    assert page.inner_text("#prompt") == XSS
    assert page.eval_on_selector("#response", "el => el.textContent") == XSS
    assert XSS in page.inner_text("#errors")
    page.wait_for_timeout(300)  # an injected <img onerror> would have fired by now
    assert page.evaluate("window.__xss") is None
    assert page.locator("main script, main img[src='x']").count() == 0
    screenshot(page, "xss-as-text")


def test_auth_asks_for_a_key_and_keeps_it_for_the_tab_only(make_server, browser):
    service, server = make_server(auth={"enabled": True, "api_keys": ["dash-key-123"]})
    run_demo(service, sessions=5, seed=3)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.goto(server.dashboard_url)
    tab.wait_for_selector("#key-dialog[open]")
    screenshot(tab, "auth-prompt")
    tab.fill("#key-input", "wrong-key")
    tab.click("#key-form button[type='submit']")
    tab.wait_for_selector("#key-error:not([hidden])")
    tab.fill("#key-input", "dash-key-123")
    tab.click("#key-form button[type='submit']")
    ready(tab)
    tab.wait_for_selector("#cards .card")
    tab.wait_for_selector("#live[data-state='live']")
    assert tab.evaluate("sessionStorage.getItem('vibekit.apiKey')") == "dash-key-123"
    assert tab.evaluate("localStorage.getItem('vibekit.apiKey')") is None, "the key must not outlive the tab"
    tab.click("#forget-key")
    assert tab.evaluate("sessionStorage.getItem('vibekit.apiKey')") is None
    context.close()
    # a new browser session asks again
    context = browser.new_context()
    tab = context.new_page()
    tab.goto(server.dashboard_url)
    tab.wait_for_selector("#key-dialog[open]")
    context.close()


def test_narrow_window(make_server, browser):
    service, server = make_server()
    run_demo(service, sessions=20, seed=4)
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    tab = context.new_page()
    for name, fragment in (("overview", ""), ("sessions", "#/sessions")):
        tab.goto(f"{server.dashboard_url}{fragment}")
        ready(tab)
        tab.wait_for_timeout(300)
        overflow = tab.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{name} scrolls sideways by {overflow}px on a phone"
        screenshot(tab, f"narrow-{name}")
    context.close()


def _spiky_history(service) -> None:
    """Three hours of steady traffic (about ten sessions a minute) with a burst twenty minutes ago."""
    clock = now_ms()  # read once: two reads can straddle a minute boundary
    end = clock - clock % 60_000
    events = []
    for minute in range(180, 0, -1):
        t = end - minute * 60_000
        burst = 25 if minute == 20 else 1
        for i in range(10 * burst):
            sid = f"h{minute}-{i}"
            events.append({"event_type": "start", "category": "claude", "action": "chat", "session_id": sid,
                           "prompt": "steady work", "timestamp": t + i * 50})
            events.append({"event_type": "end", "category": "claude", "action": "chat", "session_id": sid,
                           "status": "completed", "timestamp": t + i * 50 + 1_000 + (i % 5) * 100})
    result = service.track_batch(events)
    assert not result.rejected and not result.dropped
    service.flush()


def test_anomalies_page_charts_each_anomaly(make_server, page):
    service, server = make_server()
    _spiky_history(service)
    found = service.detect_anomalies(["throughput"], "6h")
    assert found, "the burst is an anomaly"
    page.goto(f"{server.dashboard_url}#/anomalies?since=6h")
    ready(page, timeout=20_000)
    cards = page.locator("#anomalies section.anomaly")
    assert cards.count() == len(service.detect_anomalies(time_range="6h"))
    burst = page.locator("#anomalies section.anomaly[data-metric='throughput']").first
    assert burst.locator("svg.chart polyline.line").count() == 1
    assert burst.locator("svg.chart circle.mark").count() == 1
    assert burst.locator("svg.chart rect.band").count() == 1
    # finding the history again announces nothing: no "found live" notice, no count on the link
    page.wait_for_selector("#live[data-state='live']")
    page.wait_for_timeout(2_500)
    assert page.is_hidden("#new-anomalies") and page.is_hidden("#anomaly-count")
    assert page.get_attribute("#alerts", "data-enabled") == "false"
    assert "Alerts are off" in page.inner_text("#alerts")
    screenshot(page, "anomalies")


def _anomaly(metric: str, minutes_ago: int, value: float) -> Anomaly:
    """An anomaly as the analytics plugin's live watcher emits it (``service.emit("anomaly", ...)``)."""
    clock = now_ms()
    return Anomaly(metric=metric, timestamp=clock - clock % 60_000 - minutes_ago * 60_000, value=value,
                   expected_low=3.0, expected_high=12.0, score=0.9995, severity="high",
                   description=f"{metric} was {value:g}, expected 3 to 12", detector="likelihood")


def test_anomalies_found_live_reach_the_open_pages(make_server, page):
    service, server = make_server()
    service.track_end(service.track_start("claude", "chat", "quiet so far"))
    service.flush()
    page.goto(server.dashboard_url)
    ready(page)
    page.wait_for_selector("#live[data-state='live']")
    page.locator("#recent-anomalies", has_text="No anomalies in the last 6 hours").wait_for()
    assert page.is_hidden("#anomaly-count")
    service.emit("anomaly", _anomaly("throughput", 1, 61))
    item = page.locator("#recent-anomalies li[data-metric='throughput']")
    item.wait_for(timeout=3_000)  # pushed over the open stream, no reload
    assert "throughput was 61" in item.inner_text() and "fresh" in item.get_attribute("class")
    page.wait_for_selector("#anomaly-count:not([hidden])")
    assert page.inner_text("#anomaly-count") == "1"
    service.emit("anomaly", _anomaly("error_rate", 2, 40))
    page.wait_for_function("() => document.querySelector('#anomaly-count').textContent === '2'", timeout=3_000)
    metrics = page.eval_on_selector_all("#recent-anomalies li", "items => items.map(i => i.dataset.metric)")
    assert metrics[:2] == ["throughput", "error_rate"], "newest first"
    screenshot(page, "overview-live-anomaly")
    page.click("nav a[data-nav='anomalies']")
    ready(page, timeout=20_000)
    assert page.is_hidden("#anomaly-count"), "opening the page marks them seen"
    assert page.is_hidden("#new-anomalies")
    service.emit("anomaly", _anomaly("cost", 0, 9))
    page.wait_for_selector("#new-anomalies:not([hidden])", timeout=3_000)
    assert "1 new anomaly found live (latest: cost" in page.inner_text("#new-anomalies")
    assert page.is_hidden("#anomaly-count")


class _Webhook(BaseHTTPRequestHandler):
    """Answers 200 on /ok/..., 503 elsewhere."""

    def do_POST(self):  # noqa: N802 - the http.server API
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200 if self.path.startswith("/ok/") else 503)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_the_anomalies_page_shows_where_alerts_went(make_server, page):
    receiver = HTTPServer(("127.0.0.1", 0), _Webhook)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{receiver.server_port}"
    alerts = {"enabled": True, "channels": [{"type": "webhook", "url": f"{base}/ok/KEY-IN-THE-PATH"},
                                            {"type": "slack", "url": f"{base}/down/KEY2", "max_attempts": 1}]}
    try:
        service, server = make_server({"analytics": {"enabled": True, "alerts": alerts}, "plugins": []})
        service.emit("anomaly", _anomaly("error_rate", 3, 40))
        service.emit("anomaly", _anomaly("error_rate", 2, 41))  # a repeat: deduplicated
        deadline = now_ms() + 10_000
        while now_ms() < deadline and sum(service.get_alerts()["counts"].get(k, 0) for k in ("sent", "failed")) < 2:
            page.wait_for_timeout(50)
    finally:
        receiver.shutdown()
    page.goto(f"{server.dashboard_url}#/anomalies")
    page.wait_for_selector("#alerts[data-enabled='true']")
    counts = dict(page.eval_on_selector_all("#alert-counts .card", "cards => cards.map(c => [c.dataset.count, Number(c.dataset.value)])"))
    assert counts == {"sent": 1, "failed": 1, "deduplicated": 1, "dropped": 0}
    rows = page.eval_on_selector_all("#alert-log tbody tr", "rows => rows.map(r => [r.dataset.channel, r.dataset.outcome])")
    assert sorted(rows) == [["", "deduplicated"], ["slack", "failed"], ["webhook", "sent"]]
    assert "HTTP 503 after 1 attempt" in page.inner_text("#alert-log")
    channels = page.inner_text("#alert-channels")
    assert f"webhook → {base}" in channels and "KEY" not in page.inner_text("main"), "a webhook's path is its secret"
    screenshot(page, "anomalies-alerts")


def test_sessions_in_a_custom_time_range(make_server, page):
    service, server = make_server({"plugins": [], "service_name": "unknown_service"})
    clock = now_ms()
    hour = 3_600_000
    for i in range(48):  # one session every half hour over the last day
        sid = service.track_start("claude", "chat", f"task {i}", timestamp=clock - i * hour // 2 - 60_000)
        service.track_end(sid, timestamp=clock - i * hour // 2 - 30_000)
    service.flush()
    page.goto(f"{server.dashboard_url}#/sessions")
    ready(page)
    assert page.inner_text("#service-name") == "vibekit telemetry", "OpenTelemetry's placeholder name is not shown"
    assert page.is_hidden("input[name='from']")
    page.select_option("select[name='since']", "custom")
    page.wait_for_function("() => /since=\\d+/.test(location.hash)")
    ready(page)
    assert page.input_value("select[name='since']") == "custom"
    assert page.is_visible("input[name='from']") and page.input_value("input[name='to']") == ""

    def shown_range() -> dict[str, int | None]:
        return page.evaluate("""() => {
            const q = new URLSearchParams(location.hash.split('?')[1]);
            return { since: q.get('since') && Number(q.get('since')), until: q.get('until') && Number(q.get('until')) };
        }""")

    got = shown_range()
    assert abs(got["since"] - (now_ms() - 24 * hour)) < 120_000 and got["until"] is None, "custom starts as the last 24 h"
    assert page.get_attribute("#page-info", "data-total") == str(service.count_sessions(since=got["since"]))
    # from 10 hours ago to 4 hours ago, typed into the inputs (the browser's local time)
    for name, hours in (("from", 10), ("to", 4)):
        value = page.evaluate("(t) => { const d = new Date(t); d.setSeconds(0, 0); "
                              "return new Date(d - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16); }",
                              clock - hours * hour)
        page.fill(f"input[name='{name}']", value)
        page.wait_for_function("(v) => document.querySelector(`input[name='${v[0]}']`).value === v[1] && "
                               "document.querySelector('main').dataset.ready === 'true'", arg=[name, value])
    page.wait_for_function("() => location.hash.includes('until=')")
    ready(page)
    got = shown_range()
    assert 5.9 * hour < got["until"] - got["since"] <= 6 * hour
    expected = service.count_sessions(since=got["since"], until=got["until"])
    assert expected in (11, 12, 13)
    assert page.get_attribute("#page-info", "data-total") == str(expected)
    shown = page.eval_on_selector_all("#sessions tbody tr", "rows => rows.map(r => r.dataset.id)")
    assert shown == [x.id for x in service.get_sessions(since=got["since"], until=got["until"], limit=50)]
    screenshot(page, "sessions-custom-range")
    page.select_option("select[name='since']", "7d")
    page.wait_for_function("() => location.hash.includes('since=7d') && !location.hash.includes('until')")
    ready(page)
    assert page.is_hidden("input[name='from']")
    assert page.get_attribute("#page-info", "data-total") == "48"


def test_paging_over_100k_sessions(make_server, page):
    service, server = make_server({"plugins": []})  # storage only: no analytics to feed
    base = now_ms() - 3_600_000
    for chunk in range(10):
        events = []
        for i in range(chunk * 10_000, (chunk + 1) * 10_000):
            events.append({"event_type": "start", "category": ("claude", "codex", "gemini")[i % 3], "action": "chat",
                           "session_id": f"s{i:06d}", "prompt": f"task number {i}", "timestamp": base + i * 30})
            if i % 2:
                events.append({"event_type": "end", "category": "x", "session_id": f"s{i:06d}", "status": "completed",
                               "timestamp": base + i * 30 + (i % 997) * 10})
        service.track_batch(events)
    service.flush()
    assert service.count_sessions() == 100_000
    page.goto(f"{server.dashboard_url}#/sessions")
    ready(page, timeout=20_000)
    assert page.inner_text("#page-info") == "1–50 of 100,000"
    page.click("button[data-page='last']")
    page.wait_for_function("() => location.hash.includes('page=1999')")
    ready(page, timeout=20_000)
    assert page.inner_text("#page-info") == "99,951–100,000 of 100,000"
    assert page.get_attribute("#sessions tbody tr >> nth=-1", "data-id") == "s000000"
    page.click("#sessions button[data-sort='duration_ms']")
    ready(page, timeout=20_000)
    longest = service.get_sessions(sort="duration_ms", limit=1)[0]
    assert page.get_attribute("#sessions tbody tr >> nth=0", "data-id") == longest.id
    page.select_option("select[name='status']", "active")
    page.wait_for_function("() => location.hash.includes('status=active')")
    ready(page, timeout=20_000)
    assert page.inner_text("#page-info") == "1–50 of 50,000"
    screenshot(page, "sessions-100k")
