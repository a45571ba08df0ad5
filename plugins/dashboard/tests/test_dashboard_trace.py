"""The trace view in a real headless Chromium against a real server: a session tree as a waterfall, and a span's
messages as a conversation.

The trees are built through the Python API (``telemetry.session(...)`` with child sessions) and through the
OTLP endpoints with captures of ``opentelemetry-instrumentation-openai-v2`` (``tests/data/``, copied from
``tests/genai/captures/``).  Screenshots go to a temporary directory (``VIBEKIT_TEST_ARTIFACTS``/dashboard
when that is set); their paths are recorded as the tests' ``screenshot`` properties and listed at the end of
the run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from vibekit_telemetry import now_ms

DATA = Path(__file__).parent / "data"
XSS = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">Fix </b>this & "that"'


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    """Where the screenshots go."""
    if os.environ.get("VIBEKIT_TEST_ARTIFACTS"):
        path = Path(os.environ["VIBEKIT_TEST_ARTIFACTS"]) / "dashboard"
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("trace-screenshots")


@pytest.fixture
def screenshot(shots, record_property):
    """``screenshot(tab, name)``: a full-page screenshot, its path attached to the test's report."""

    def take(tab: Any, name: str) -> Path:
        path = shots / f"{name}.png"
        tab.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 10_000, "the screenshot is (nearly) empty"
        record_property("screenshot", str(path))
        print(f"screenshot: {path}")
        return path

    return take


def ready(tab: Any, timeout: float = 10_000) -> None:
    """Wait until the page shown has loaded its data."""
    tab.wait_for_selector("main[data-ready='true']", timeout=timeout)


def conversation_of(tab: Any, span_id: str) -> list[dict[str, Any]]:
    """The bubbles of the selected span's conversation, once loaded."""
    tab.wait_for_selector(f"#conversation[data-ready='true'][data-span='{span_id}']")
    return tab.eval_on_selector_all("#conversation .bubble", """bubbles => bubbles.map(b => ({
        role: b.dataset.role, who: b.querySelector('.who').textContent,
        name: b.querySelector('.tool-name')?.textContent ?? null,
        text: b.querySelector('.text')?.textContent ?? null, args: b.querySelector('pre.args')?.textContent ?? null }))""")


def rows_of(tab: Any) -> list[dict[str, Any]]:
    """The waterfall's rows: their data, and where their bars are drawn on the track (fractions of its width)."""
    return tab.eval_on_selector_all("#waterfall li.span-row[data-id]", """rows => rows.map(r => {
        const track = r.querySelector('.track').getBoundingClientRect();
        const bar = r.querySelector('.bar').getBoundingClientRect();
        const mark = r.querySelector('.bar .ttft');
        return { ...r.dataset, failed: r.classList.contains('failed'), barFailed: r.querySelector('.bar').classList.contains('failed'),
          failedMark: Boolean(r.querySelector('.failed-mark')), label: r.querySelector('.span-label').textContent,
          kindBadge: r.querySelector('.badge.kind')?.textContent ?? null, nums: r.querySelector('.span-nums').textContent,
          indent: r.querySelector('.span-label .name').getBoundingClientRect().left - r.getBoundingClientRect().left,
          left: (bar.left - track.left) / track.width, width: bar.width / track.width,
          ttft: mark ? (mark.getBoundingClientRect().left + mark.getBoundingClientRect().width / 2 - bar.left) / bar.width : null };
    })""")


def _build_tree(service) -> dict[str, str]:
    """An agent with two model calls, a tool call (with an embedding inside it) and a failed model call.

    The children's times are given (milliseconds after the agent started), so that the bars' places are known.
    """
    ids: dict[str, str] = {}
    t0 = now_ms()
    with service.session("planner", "agent", "Fix the failing test", kind="agent") as root:
        ids["root"] = root.id
        call = {"id": "call_1", "name": "search_code", "arguments": {"query": "failing test"}}
        ids["llm1"] = sid = service.track_start(
            "openai", "chat", "Find the failing test", kind="llm", model="gpt-4o-mini", timestamp=t0 + 100,
            metadata={"messages": [{"role": "system", "content": "You are a planner."},
                                   {"role": "user", "content": "Find the failing test"}]})
        service.track_stream(sid, "I will search", timestamp=t0 + 350)
        service.track_stream(sid, " the code.", timestamp=t0 + 600)
        service.track_end(sid, timestamp=t0 + 900, metadata={"input_tokens": 1200, "output_tokens": 80,
                                                             "cache_read_tokens": 400, "tool_calls": [call]})
        ids["tool"] = sid = service.track_start("search_code", "tool", '{"query": "failing test"}', kind="tool",
                                                timestamp=t0 + 950)
        ids["embed"] = emb = service.track_start("openai", "embeddings", "failing test", kind="embedding",
                                                 model="text-embedding-3-small", parent_session_id=sid,
                                                 timestamp=t0 + 980)
        service.track_end(emb, timestamp=t0 + 1080, metadata={"input_tokens": 12})
        service.track_end(sid, timestamp=t0 + 1250, stream_data="tests/test_x.py:12 test_parse")
        ids["llm2"] = sid = service.track_start(
            "openai", "chat", "Find the failing test", kind="llm", model="gpt-4o", timestamp=t0 + 1300,
            metadata={"system_prompt": "You are a planner.", "messages": [
                {"role": "user", "content": "Find the failing test"},
                {"role": "assistant", "content": "Let me search.", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "tests/test_x.py:12 test_parse"}]})
        service.track_stream(sid, "The failing test is ", timestamp=t0 + 1500)
        service.track_stream(sid, "test_parse.", timestamp=t0 + 2000)
        service.track_end(sid, timestamp=t0 + 2900, metadata={"input_tokens": 2000, "output_tokens": 150,
                                                              "reasoning_tokens": 50})
        ids["failed"] = sid = service.track_start(
            "anthropic", "chat", "Summarise the fix", kind="llm", model="claude-3-5-haiku", timestamp=t0 + 3000,
            metadata={"messages": [{"role": "user", "content": "Summarise the fix"}]})
        service.track_error(sid, error_type="RateLimitError", message="429 Too Many Requests", timestamp=t0 + 3350)
        service.track_end(sid, "failed", timestamp=t0 + 3400, metadata={"input_tokens": 30})
        root.end(timestamp=t0 + 3600)
    service.flush()
    return ids


def _walk(node) -> list[Any]:
    return [node, *(x for child in node.children for x in _walk(child))]


def test_the_waterfall_draws_the_tree_on_one_time_axis(make_server, page, screenshot):
    service, server = make_server({"analytics": {"enabled": True}})
    ids = _build_tree(service)
    tree = service.get_session(ids["root"], tree=True)
    spans = {s.id: s for s in _walk(tree)}
    page.goto(f"{server.dashboard_url}#/trace/{ids['root']}")
    ready(page)
    rows = rows_of(page)
    order = ["root", "llm1", "tool", "embed", "llm2", "failed"]
    assert [r["id"] for r in rows] == [ids[name] for name in order], "depth first, each span's children by start"
    assert [int(r["depth"]) for r in rows] == [0, 1, 1, 2, 1, 1]
    assert rows[3]["indent"] > rows[2]["indent"] > rows[0]["indent"], "indented by depth"
    assert [r["kind"] for r in rows] == ["agent", "llm", "tool", "embedding", "llm", "llm"]
    assert [r["kindBadge"] for r in rows] == ["agent", "llm", "tool", "embedding", "llm", "llm"]
    assert [r["model"] for r in rows] == ["", "gpt-4o-mini", "", "text-embedding-3-small", "gpt-4o", "claude-3-5-haiku"]
    for row in rows:
        if row["model"]:
            assert row["model"] in row["label"]
    assert rows[0]["label"].startswith("planner")

    # one time axis: each bar starts at its offset from the root's start and is as wide as it lasted
    start = tree.started_at
    total = max(s.ended_at for s in spans.values()) - start
    planned = {"llm1": 800, "tool": 300, "embed": 100, "llm2": 1600, "failed": 400}
    for row in rows:
        span = spans[row["id"]]
        assert int(row["offset"]) == span.started_at - start
        assert int(row["duration"]) == span.duration_ms
        assert row["left"] == pytest.approx((span.started_at - start) / total, abs=0.004), row["id"]
        assert row["width"] == pytest.approx(span.duration_ms / total, abs=0.004), row["id"]
    by_name = {name: rows[i] for i, name in enumerate(order)}
    for name, duration in planned.items():
        assert int(by_name[name]["duration"]) == duration
    assert by_name["llm2"]["width"] / by_name["llm1"]["width"] == pytest.approx(2.0, rel=0.02)
    assert by_name["llm1"]["width"] / by_name["failed"]["width"] == pytest.approx(2.0, rel=0.02)
    assert by_name["tool"]["left"] + by_name["tool"]["width"] < by_name["llm2"]["left"], "one after the other"
    assert by_name["root"]["width"] == pytest.approx(1.0, abs=0.01)
    # the time to first token, inside the model calls' bars
    assert by_name["llm1"]["ttft"] == pytest.approx(250 / 800, abs=0.02)
    assert by_name["llm2"]["ttft"] == pytest.approx(200 / 1600, abs=0.02)
    assert by_name["tool"]["ttft"] is None and by_name["failed"]["ttft"] is None

    # the failed call, and only it, is marked
    assert [r["failed"] for r in rows] == [False, False, False, False, False, True]
    assert by_name["failed"]["barFailed"] and by_name["failed"]["failedMark"]
    assert page.locator("#waterfall .bar.failed").count() == 1

    # the root row and the summary carry the tree's tokens and cost
    assert tree.tree_tokens.total == sum(s.tokens.total for s in spans.values()) == 1280 + 12 + 2150 + 30
    assert tree.tree_cost_usd == pytest.approx(sum(s.cost_usd or 0 for s in spans.values())) and tree.tree_cost_usd > 0
    assert spans[ids["llm2"]].cost_usd > spans[ids["llm1"]].cost_usd > 0
    assert int(by_name["root"]["tokens"]) == tree.tree_tokens.total
    assert float(by_name["root"]["cost"]) == pytest.approx(tree.tree_cost_usd)
    assert f"Σ {tree.tree_tokens.total:,} tok" in by_name["root"]["nums"]
    assert int(by_name["tool"]["tokens"]) == 12, "a span with descendants shows their sum"
    assert int(by_name["llm2"]["tokens"]) == 2150 and float(by_name["llm2"]["cost"]) == pytest.approx(spans[ids["llm2"]].cost_usd)
    assert "1.6 s" in by_name["llm2"]["nums"] or "1,600 ms" in by_name["llm2"]["nums"]
    assert int(page.get_attribute("#trace-tokens", "data-value")) == tree.tree_tokens.total
    assert float(page.get_attribute("#trace-cost", "data-value")) == pytest.approx(tree.tree_cost_usd)
    assert "Failed spans1" in page.inner_text("#trace-summary").replace("\n", "")
    assert page.get_attribute("nav a[data-nav='sessions']", "aria-current") == "page"
    screenshot(page, "trace-waterfall")


def test_clicking_a_span_shows_its_details_and_conversation(make_server, page, screenshot):
    service, server = make_server({"analytics": {"enabled": True}})
    ids = _build_tree(service)
    page.goto(f"{server.dashboard_url}#/trace/{ids['root']}")
    ready(page)
    assert page.get_attribute(f"#waterfall li[data-id='{ids['root']}']", "aria-current") == "true", "the root first"

    page.click(f"#waterfall li[data-id='{ids['llm2']}'] .bar")
    bubbles = conversation_of(page, ids["llm2"])
    assert [b["role"] for b in bubbles] == ["system", "user", "assistant", "tool_call", "tool", "assistant"]
    assert [b["who"].split(" ")[0] for b in bubbles][:3] == ["System", "User", "Assistant"]
    system, user, thinking, call, result, answer = bubbles
    assert system["text"] == "You are a planner." and user["text"] == "Find the failing test"
    assert thinking["text"] == "Let me search."
    assert call["name"] == "search_code" and json.loads(call["args"]) == {"query": "failing test"}
    assert result["name"] == "search_code", "a tool result is named after the call it answers"
    assert result["text"] == "tests/test_x.py:12 test_parse"
    assert answer["text"] == "The failing test is test_parse.", "the streamed chunks, reassembled"
    assert page.get_attribute(f"#waterfall li[data-id='{ids['llm2']}']", "aria-current") == "true"
    assert page.locator("#waterfall li.selected").count() == 1
    details = page.inner_text("#span-details")
    assert "gpt-4o" in details and "2,000 in / 150 out" in details and "50" in details
    assert page.evaluate("location.hash") == f"#/trace/{ids['root']}?span={ids['llm2']}"
    screenshot(page, "trace-conversation")

    # the first call: its answer, then the tool call its end event reported
    page.click(f"#waterfall li[data-id='{ids['llm1']}'] .bar")
    bubbles = conversation_of(page, ids["llm1"])
    assert [b["role"] for b in bubbles] == ["system", "user", "assistant", "tool_call"]
    assert bubbles[2]["text"] == "I will search the code." and bubbles[3]["name"] == "search_code"
    assert "400 read" in page.inner_text("#span-details"), "cache reads shown"

    # the tool: its arguments and its return value
    page.click(f"#waterfall li[data-id='{ids['tool']}'] .bar")
    bubbles = conversation_of(page, ids["tool"])
    assert [(b["role"], b["text"]) for b in bubbles] == [("input", '{"query": "failing test"}'),
                                                         ("output", "tests/test_x.py:12 test_parse")]

    # the failed call: what it was asked, and its error
    page.click(f"#waterfall li[data-id='{ids['failed']}'] .bar")
    bubbles = conversation_of(page, ids["failed"])
    assert [b["role"] for b in bubbles] == ["user", "error"]
    assert bubbles[1]["text"] == "RateLimitError: 429 Too Many Requests"
    assert "429 Too Many Requests" in page.inner_text("#span-details")
    screenshot(page, "trace-failed-span")

    # the keyboard moves the selection; the selection survives a reload (it is in the address)
    page.focus(f"#waterfall li[data-id='{ids['llm1']}'] button")
    page.keyboard.press("ArrowDown")
    conversation_of(page, ids["tool"])
    page.keyboard.press("ArrowDown")
    conversation_of(page, ids["embed"])
    page.reload()
    ready(page)
    assert page.get_attribute(f"#waterfall li[data-id='{ids['embed']}']", "aria-current") == "true"
    assert [b["role"] for b in conversation_of(page, ids["embed"])] == ["input"]
    page.click("#theme")
    page.click(f"#waterfall li[data-id='{ids['llm2']}'] .span-label")
    conversation_of(page, ids["llm2"])
    screenshot(page, "trace-dark")


def test_the_session_page_links_to_the_trace_of_its_tree(make_server, page, screenshot):
    service, server = make_server({"analytics": {"enabled": True}})
    ids = _build_tree(service)
    lone = service.track_start("claude", "chat", "on its own")
    service.track_end(lone)
    service.flush()
    page.goto(f"{server.dashboard_url}#/session/{lone}")
    ready(page)
    assert page.locator("#trace-link").count() == 0, "a session without parent or children has no trace"
    page.goto(f"{server.dashboard_url}#/session/{ids['llm2']}")
    ready(page)
    page.click("#trace-link")
    page.wait_for_function(f"() => location.hash === '#/trace/{ids['root']}?span={ids['llm2']}'")
    ready(page)
    assert page.evaluate("document.body.dataset.page") == "trace"
    assert page.locator("#waterfall li.span-row[data-id]").count() == 6, "the whole tree, from its root"
    assert page.get_attribute(f"#waterfall li[data-id='{ids['llm2']}']", "aria-current") == "true"
    assert "tool_call" in [b["role"] for b in conversation_of(page, ids["llm2"])]
    # from a grandchild too; and from the root's own session page
    page.goto(f"{server.dashboard_url}#/trace/{ids['embed']}")
    page.wait_for_function(f"() => location.hash === '#/trace/{ids['root']}?span={ids['embed']}'")
    ready(page)
    page.goto(f"{server.dashboard_url}#/session/{ids['root']}")
    ready(page)
    page.click("#trace-link")
    page.wait_for_function(f"() => location.hash === '#/trace/{ids['root']}'")
    ready(page)
    page.wait_for_selector(f"#conversation[data-ready='true'][data-span='{ids['root']}']")
    page.click(f"#span-details a[href='#/session/{ids['root']}']")
    ready(page)
    assert page.evaluate("document.body.dataset.page") == "session"


def test_the_trace_follows_a_live_tree(make_server, page):
    service, server = make_server()
    root = service.track_start("planner", "agent", "still working", kind="agent")
    first = service.track_start("openai", "chat", "step one", kind="llm", model="gpt-4o-mini", parent_session_id=root)
    service.track_end(first, metadata={"input_tokens": 10, "output_tokens": 5})
    service.flush()
    page.goto(f"{server.dashboard_url}#/trace/{root}")
    ready(page)
    page.wait_for_selector("#live[data-state='live']")
    assert page.locator("#waterfall li.span-row[data-id]").count() == 2
    assert "open" in page.get_attribute(f"#waterfall li[data-id='{root}'] .bar", "class"), "still running"
    page.click(f"#waterfall li[data-id='{first}'] .bar")
    conversation_of(page, first)
    second = service.track_start("openai", "chat", "step two", kind="llm", model="gpt-4o", parent_session_id=root)
    page.wait_for_selector(f"#waterfall li[data-id='{second}']", timeout=5_000)
    assert page.get_attribute(f"#waterfall li[data-id='{first}']", "aria-current") == "true", "the selection stays"
    service.track_end(second, metadata={"input_tokens": 20, "output_tokens": 7})
    service.track_end(root)
    page.wait_for_function(f"() => !document.querySelector(\"#waterfall li[data-id='{root}'] .bar\").classList.contains('open')",
                           timeout=5_000)
    page.wait_for_selector("#trace-tokens[data-value='42']", timeout=5_000)


def test_message_text_is_shown_as_text_never_run(make_server, page, screenshot):
    service, server = make_server()
    call = {"id": XSS, "name": XSS, "arguments": XSS}
    with service.session(XSS, "agent", XSS, kind="agent") as root:
        sid = service.track_start(XSS, "chat", XSS, kind="llm", model=XSS, metadata={
            "system_prompt": XSS, "messages": [{"role": "user", "content": XSS},
                                               {"role": "assistant", "content": XSS, "tool_calls": [call]},
                                               {"role": "tool", "tool_call_id": XSS, "content": XSS},
                                               {"role": XSS, "content": XSS}]})
        service.track_stream(sid, XSS)
        service.track_error(sid, error_type="Boom", message=XSS)
        service.track_end(sid, "failed", metadata={"tool_calls": [call]})
    service.flush()
    page.goto(f"{server.dashboard_url}#/trace/{root.id}")
    ready(page)
    page.click(f"#waterfall li[data-id='{sid}'] .bar")
    bubbles = conversation_of(page, sid)
    assert [b["role"] for b in bubbles] == ["system", "user", "assistant", "tool_call", "tool", XSS, "assistant",
                                            "tool_call", "error"]
    assert all(b["text"] == XSS for b in bubbles if b["role"] not in ("tool_call", "error"))
    assert [b["name"] for b in bubbles if b["role"] == "tool_call"] == [XSS, XSS]
    assert bubbles[-1]["text"] == f"Boom: {XSS}"
    assert XSS in page.inner_text("#waterfall") and XSS in page.inner_text("#trace-summary")
    page.wait_for_timeout(300)  # an injected <img onerror> would have fired by now
    assert page.evaluate("window.__xss") is None
    assert page.locator("main script, main img[src='x']").count() == 0
    screenshot(page, "trace-xss-as-text")


def _post_capture(server, name: str) -> dict[str, Any]:
    capture = json.loads((DATA / name).read_text())
    for signal in ("traces", "logs"):
        if capture.get(signal):
            response = httpx.post(f"{server.url}/v1/{signal}", json=capture[signal])
            assert response.status_code == 200 and not response.json().get("partialSuccess"), response.text
    return capture


def test_a_genai_trace_over_otlp(make_server, page, screenshot):
    """An agent traced by opentelemetry-instrumentation-openai-v2: spans with content, and log records repeating it."""
    service, server = make_server()
    _post_capture(server, "openai_v2-span_and_event-agent.json")
    service.flush()
    (root,) = service.get_sessions(root_only=True)
    tree = service.get_session(root.id, tree=True)
    page.goto(f"{server.dashboard_url}#/trace/{root.id}")
    ready(page)
    rows = rows_of(page)
    children = sorted(tree.children, key=lambda c: c.started_at)
    assert [r["id"] for r in rows] == [tree.id, *(c.id for c in children)]
    assert [r["kind"] for r in rows] == ["agent", "llm", "tool", "llm"]
    assert rows[0]["label"].startswith("planner")
    assert int(page.get_attribute("#trace-tokens", "data-value")) == tree.tree_tokens.total > 0
    first, tool, second = children
    page.click(f"#waterfall li[data-id='{first.id}'] .bar")
    bubbles = conversation_of(page, first.id)
    # the span and the log record tell the same messages: each is shown once
    assert [b["role"] for b in bubbles] == ["system", "user", "tool_call"]
    assert bubbles[2]["name"] == "get_weather" and json.loads(bubbles[2]["args"]) == {"city": "Paris"}
    page.click(f"#waterfall li[data-id='{second.id}'] .bar")
    bubbles = conversation_of(page, second.id)
    assert [b["role"] for b in bubbles] == ["system", "user", "tool_call", "tool", "assistant"]
    assert bubbles[0]["text"] == "You are terse." and bubbles[1]["text"] == "Weather in Paris?"
    assert bubbles[3]["name"] == "get_weather"
    assert bubbles[-1]["text"] == "Hello from the fake model."
    screenshot(page, "trace-otlp-agent")


def test_messages_sent_as_log_records_only(make_server, page, screenshot):
    """Content in the ``gen_ai.client.inference.operation.details`` log record only (EVENT_ONLY): shown as well."""
    service, server = make_server()
    _post_capture(server, "openai_v2-event_only-tool-result.json")
    service.flush()
    (call,) = service.get_sessions()
    events = service.query(session_id=call.id, order="asc")
    start = next(e for e in events if e.event_type == "start")
    assert not (start.metadata or {}).get("messages"), "the span itself carries no content"
    page.goto(f"{server.dashboard_url}#/trace/{call.id}")
    ready(page)
    assert page.locator("#waterfall li.span-row[data-id]").count() == 1
    bubbles = conversation_of(page, call.id)
    assert [b["role"] for b in bubbles] == ["system", "user", "tool_call", "tool", "assistant"]
    assert bubbles[-1]["text"] == "Hello from the fake model."
    assert bubbles[2]["name"] == "get_weather"


def test_the_trace_on_a_phone(make_server, browser, screenshot):
    service, server = make_server({"analytics": {"enabled": True}})
    ids = _build_tree(service)
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    tab = context.new_page()
    tab.goto(f"{server.dashboard_url}#/trace/{ids['root']}?span={ids['llm2']}")
    ready(tab)
    conversation_of(tab, ids["llm2"])
    tab.wait_for_timeout(200)
    overflow = tab.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the trace scrolls sideways by {overflow}px on a phone"
    rows = rows_of(tab)
    assert rows[4]["width"] / rows[1]["width"] == pytest.approx(2.0, rel=0.05)
    screenshot(tab, "trace-narrow")
    context.close()


def test_a_span_whose_parent_was_never_stored_is_the_root(make_server, browser):
    service, server = make_server()
    orphan = service.track_start("openai", "chat", "my parent span was not exported", kind="llm",
                                 parent_session_id="never-stored")
    child = service.track_start("search", "tool", "q", kind="tool", parent_session_id=orphan)
    service.track_end(child)
    service.track_end(orphan)
    service.flush()
    context = browser.new_context(viewport={"width": 1280, "height": 900})  # the missing parent's 404 is expected
    tab = context.new_page()
    tab.goto(f"{server.dashboard_url}#/trace/{child}")
    ready(tab)
    assert tab.eval_on_selector_all("#waterfall li.span-row[data-id]", "rows => rows.map(r => r.dataset.id)") == [orphan, child]
    assert tab.evaluate("location.hash") == f"#/trace/{orphan}?span={child}"
    context.close()
