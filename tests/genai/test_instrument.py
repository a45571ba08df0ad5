"""``telemetry.instrument("openai", "anthropic")`` and ``telemetry.observe()``: every call a session, field by field.

The real ``openai`` and ``anthropic`` SDKs call the fake LLM server (``tests.genai.fake_llm``) through the
helpers of ``tests.genai.capture``, which measure what the client saw (tokens, model, the first chunk's time);
each call's session must say the same: tokens with cache and reasoning counts (Anthropic's input includes its
cache counts here), the response model, a TTFT between the server's first send and the client's first chunk
for streams and none otherwise, the chunk count, the status and the error type, the prompt and the answer,
tool calls, cost; nested under ``telemetry.session(...)`` and ``observe()`` blocks in threads and asyncio tasks.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Any

import pytest

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")
pytest.importorskip("vibekit_telemetry_instrument_openai")
pytest.importorskip("vibekit_telemetry_instrument_anthropic")

import httpx  # noqa: E402
from openai.resources.chat.completions import AsyncCompletions, Completions  # noqa: E402

from vibekit_telemetry import ConfigError, TelemetryService  # noqa: E402

from .capture import (  # noqa: E402
    ANTHROPIC_CHAT,
    ANTHROPIC_TOOL_ASK,
    ANTHROPIC_TOOLS,
    OPENAI_CHAT,
    OPENAI_TOOL_ANSWERED,
    OPENAI_TOOL_ASK,
    OPENAI_TOOLS,
    anthropic_messages,
    openai_chat,
    openai_embeddings,
    openai_responses,
)
from .fake_llm import REPLY, REPLY_CHUNKS, assert_ttft_bracketed  # noqa: E402


@pytest.fixture
def telemetry(in_tmp):
    with TelemetryService(service_name="instrumented", analytics={"enabled": True}) as service:
        yield service
        service.uninstrument()


def _openai(fake: Any) -> Any:
    return openai.OpenAI(base_url=fake.openai_url, api_key="sk-fake", max_retries=0)


def _anthropic(fake: Any) -> Any:
    return anthropic.Anthropic(base_url=fake.anthropic_url, api_key="sk-ant-fake", max_retries=0,
                               open_telemetry=False)


def _children(telemetry: TelemetryService, root_id: str) -> list[Any]:
    tree = telemetry.get_session(root_id, tree=True)
    return sorted(tree.children, key=lambda s: s.started_at)


def _check(telemetry: TelemetryService, session: Any, seen: dict[str, Any], *, provider: str) -> None:
    """One call's session against what the client saw."""
    where = (seen.get("model"), seen.get("stream"))
    assert session.kind == ("embedding" if "embedding" in (seen["model"] or "") else "llm"), where
    assert session.agent == provider
    if seen.get("error"):
        assert session.status == "failed", where
        [error] = telemetry.query(session_id=session.id, event_type="error")
        assert error.error_type == seen["error"]["type"], where  # the SDK's class: RateLimitError
        assert error.metadata.get("http.status_code") == seen["error"]["status"]
        assert session.ttft_ms is None and session.tokens.total == 0
        return
    assert session.status == "completed", where
    tokens = {k: v or 0 for k, v in (seen.get("tokens") or {}).items()}
    expected_input = tokens.get("input", 0)
    if provider == "anthropic":
        expected_input += tokens.get("cache_read", 0) + tokens.get("cache_creation", 0)
    got = session.tokens
    assert (got.input, got.output, got.cache_read, got.cache_creation, got.reasoning) == (
        expected_input, tokens.get("output", 0), tokens.get("cache_read", 0), tokens.get("cache_creation", 0),
        tokens.get("reasoning", 0)), where
    assert session.model == seen["response_model"], where
    if seen["stream"]:
        assert session.ttft_ms is not None, where
        assert_ttft_bracketed(session.ttft_ms, seen["ttft_ms"], where)
    else:
        assert session.ttft_ms is None, where
    if session.kind == "llm":
        assert session.prompt == seen["prompt"], where
        events = telemetry.query(session_id=session.id, order="asc", limit=1000)
        streamed = [e for e in events if e.event_type == "stream"]
        [end] = [e for e in events if e.event_type == "end"]
        if seen["stream"]:
            answer = "".join(e.stream_data or "" for e in streamed)
            if seen.get("completion"):
                assert answer == seen["completion"], where
                if seen["completion"] == REPLY:  # one stream event per chunk the client got
                    assert [e.stream_data for e in streamed if e.stream_data] == list(REPLY_CHUNKS), where
        else:
            assert not streamed
            assert (end.stream_data or None) == (seen.get("completion") or None), where
        if seen.get("tool_calls"):
            assert [c["name"] for c in end.metadata["tool_calls"]] == ["get_weather"], where
            assert end.metadata["tool_calls"][0]["arguments"] == {"city": "Paris"}
        start = next(e for e in events if e.event_type == "start")
        assert any(m.get("role") == "system" for m in start.metadata["messages"]), where
    if session.tokens.total and seen["model"] in ("gpt-4o-mini", "claude-haiku-4-5"):
        assert session.cost_usd and session.cost_usd > 0, where


def test_openai_calls_become_child_sessions_with_what_the_client_saw(telemetry, fake_llm):
    assert telemetry.instrument("openai") == ["openai"]
    client = _openai(fake_llm)
    with telemetry.session("planner", "agent", "Ship the release", kind="agent") as agent:
        seen = [
            openai_chat(client, OPENAI_CHAT),
            openai_chat(client, OPENAI_CHAT, stream=True),
            openai_chat(client, OPENAI_CHAT, stream=True, include_usage=False),
            openai_chat(client, OPENAI_TOOL_ASK, tools=OPENAI_TOOLS),
            openai_chat(client, OPENAI_TOOL_ASK, tools=OPENAI_TOOLS, stream=True),
            openai_chat(client, OPENAI_TOOL_ANSWERED, tools=OPENAI_TOOLS),
            openai_chat(client, OPENAI_CHAT, model="fail-429"),
            openai_chat(client, OPENAI_CHAT, model="fail-500"),
            openai_embeddings(client),
            openai_responses(client),
            openai_responses(client, stream=True),
        ]
    children = _children(telemetry, agent.id)
    assert len(children) == len(seen)
    for session, call in zip(children, seen, strict=True):
        _check(telemetry, session, call, provider="openai")
    # the responses API's answer and the tool call arguments, structured
    root = telemetry.get_session(agent.id, tree=True)
    assert root.tree_tokens.input == sum(c.tokens.input for c in children)
    assert root.tree_cost_usd == pytest.approx(sum(c.cost_usd or 0 for c in children))
    errors = [c for c in children if c.status == "failed"]
    assert [telemetry.query(session_id=c.id, event_type="error")[0].error_type for c in errors] == [
        "RateLimitError", "InternalServerError"]


def test_anthropic_calls_count_the_cache_inside_input(telemetry, fake_llm):
    assert telemetry.instrument("anthropic") == ["anthropic"]
    client = _anthropic(fake_llm)
    with telemetry.session("planner", "agent", kind="agent") as agent:
        seen = [
            anthropic_messages(client, ANTHROPIC_CHAT),
            anthropic_messages(client, ANTHROPIC_CHAT, stream="create"),
            anthropic_messages(client, ANTHROPIC_CHAT, stream="helper"),
            anthropic_messages(client, ANTHROPIC_TOOL_ASK, tools=ANTHROPIC_TOOLS),
            anthropic_messages(client, ANTHROPIC_TOOL_ASK, tools=ANTHROPIC_TOOLS, stream="create"),
            anthropic_messages(client, ANTHROPIC_CHAT, model="fail-429"),
        ]
    children = _children(telemetry, agent.id)
    assert len(children) == len(seen)
    for session, call in zip(children, seen, strict=True):
        for tool_call in call.get("tool_calls") or ():
            tool_call["arguments"] = tool_call["input"]
        _check(telemetry, session, call, provider="anthropic")
    plain = children[0]
    assert plain.tokens.cache_read == 16 and plain.tokens.cache_creation == 8


def test_async_clients_in_tasks_and_threads_nest_under_their_own_blocks(telemetry, fake_llm):
    telemetry.instrument("openai", "anthropic")
    aclient = openai.AsyncOpenAI(base_url=fake_llm.openai_url, api_key="sk-fake", max_retries=0)
    aanthropic = anthropic.AsyncAnthropic(base_url=fake_llm.anthropic_url, api_key="k", max_retries=0,
                                          open_telemetry=False)

    @telemetry.observe(kind="agent", name="researcher")
    async def research(topic: str) -> str:
        stream = await aclient.chat.completions.create(model="gpt-4o-mini", messages=OPENAI_CHAT, stream=True,
                                                       stream_options={"include_usage": True})
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        message = await aanthropic.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=ANTHROPIC_CHAT)
        async with aanthropic.messages.stream(model="claude-haiku-4-5", max_tokens=64,
                                              messages=ANTHROPIC_CHAT) as events:
            final = await events.get_final_message()
        return text + message.content[0].text + final.content[0].text

    async def both() -> list[str]:
        return await asyncio.gather(research("a"), research("b"))

    answers = asyncio.run(both())
    assert answers == [REPLY * 3, REPLY * 3]
    roots = [s for s in telemetry.get_sessions(limit=100) if s.agent == "researcher"]
    assert len(roots) == 2
    for root in roots:
        kids = _children(telemetry, root.id)
        assert [(k.agent, k.kind) for k in kids] == [("openai", "llm"), ("anthropic", "llm"), ("anthropic", "llm")]
        assert kids[0].ttft_ms is not None and kids[0].tokens.cache_read == 4
        helper = kids[2].tokens  # messages.stream(): the uncached prompt plus the cache read (16) and write (8)
        assert kids[2].ttft_ms is not None and helper.input > helper.cache_read + helper.cache_creation == 24
        assert root.status == "completed" and root.prompt in ("a", "b")

    client = _openai(fake_llm)
    done: dict[str, str] = {}

    def worker(name: str) -> None:
        with telemetry.session(name, "agent", kind="agent") as block:
            done[name] = block.id
            openai_chat(client, OPENAI_CHAT)

    threads = [threading.Thread(target=contextvars.copy_context().run, args=(worker, f"w{i}")) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for block_id in done.values():
        [child] = _children(telemetry, block_id)
        assert child.kind == "llm" and child.tokens.input > 0


def test_raw_and_streaming_responses_are_recorded_when_parsed(telemetry, fake_llm):
    telemetry.instrument("openai")
    client = _openai(fake_llm)
    with telemetry.session("raw", "agent") as block:
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=OPENAI_CHAT)
        assert raw.parse().choices[0].message.content == REPLY
        with client.chat.completions.with_streaming_response.create(
                model="gpt-4o-mini", messages=OPENAI_CHAT, stream=True,
                stream_options={"include_usage": True}) as response:
            text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
    assert text == REPLY
    plain, streamed = _children(telemetry, block.id)
    assert plain.tokens.input > 0 and plain.ttft_ms is None
    assert streamed.tokens.input > 0 and streamed.ttft_ms is not None and streamed.status == "completed"


def test_a_stream_that_breaks_raises_the_same_exception_and_fails_the_session(telemetry, fake_llm):
    client = _openai(fake_llm)

    def consume() -> type[BaseException]:
        with pytest.raises(Exception) as caught:
            for _ in client.chat.completions.create(model="fail-midstream", messages=OPENAI_CHAT, stream=True):
                pass
        return type(caught.value)

    bare = consume()
    assert issubclass(bare, httpx.HTTPError)
    telemetry.instrument("openai")
    with telemetry.session("caller", "agent") as block:
        assert consume() is bare
    [call] = _children(telemetry, block.id)
    assert call.status == "failed" and call.ttft_ms is not None  # it got its first chunks before the break
    [error] = telemetry.query(session_id=call.id, event_type="error")
    assert error.error_type == bare.__name__


def test_uninstrument_restores_the_sdk_exactly_and_names_are_checked(telemetry, fake_llm):
    originals = (Completions.__dict__["create"], AsyncCompletions.__dict__["create"],
                 anthropic.resources.messages.Messages.__dict__["stream"])
    assert telemetry.instrument("openai", "anthropic") == ["openai", "anthropic"]
    assert Completions.__dict__["create"] is not originals[0]
    assert telemetry.instrument("openai") == []  # already instrumented for this service
    with TelemetryService(storage=[{"type": "memory"}]) as other:
        with pytest.raises(Exception, match="already instrumented"):
            other.instrument("openai")
    with pytest.raises(ConfigError, match="installed: anthropic, openai.*vibekit-telemetry-instrument-gemini"):
        telemetry.instrument("gemini")
    assert sorted(telemetry.uninstrument()) == ["anthropic", "openai"]
    assert (Completions.__dict__["create"], AsyncCompletions.__dict__["create"],
            anthropic.resources.messages.Messages.__dict__["stream"]) == originals
    before = telemetry.count_sessions()
    openai_chat(_openai(fake_llm), OPENAI_CHAT)
    assert telemetry.count_sessions() == before  # nothing recorded once restored


def test_shutdown_uninstruments(in_tmp, fake_llm):
    original = Completions.__dict__["create"]
    with TelemetryService(storage=[{"type": "memory"}]) as service:
        service.instrument("openai")
    assert Completions.__dict__["create"] is original


def test_capture_content_false_keeps_messages_out(in_tmp, fake_llm):
    with TelemetryService(capture_content=False) as telemetry:
        telemetry.instrument("openai")
        openai_chat(_openai(fake_llm), OPENAI_TOOL_ASK, tools=OPENAI_TOOLS)
        openai_chat(_openai(fake_llm), OPENAI_CHAT, stream=True)
        telemetry.uninstrument()
        events = telemetry.query(limit=1000)
        assert events
        for event in events:
            assert event.prompt is None and event.stream_data is None
            assert not {"messages", "system_prompt", "tools"} & set(event.metadata or {})
            for call in (event.metadata or {}).get("tool_calls") or ():
                assert "arguments" not in call
        streamed = [s for s in telemetry.get_sessions() if s.ttft_ms is not None]
        assert len(streamed) == 1 and streamed[0].tokens.input > 0  # figures stay, words go


def test_observe_records_functions_of_every_shape(telemetry):
    @telemetry.observe(kind="tool")
    def search_code(query: str) -> list[str]:
        return [f"{query}.py"]

    @telemetry.observe(kind="retrieval", name="fetch")
    def fetch(ids: list[int], limit: int = 2):
        yield from ids[:limit]

    @telemetry.observe(kind="chain")
    async def plan(goal: str) -> str:
        return goal.upper()

    @telemetry.observe(kind="tool", name="broken")
    def broken() -> None:
        raise KeyError("missing")

    with telemetry.observe(kind="agent", name="planner") as agent:
        assert search_code("parser") == ["parser.py"]
        assert list(fetch([1, 2, 3])) == [1, 2]
        assert asyncio.run(plan("ship")) == "SHIP"
        with pytest.raises(KeyError):
            broken()
        stopped = fetch([7, 8, 9], limit=3)
        assert next(stopped) == 7
        stopped.close()
    kids = {k.agent: k for k in _children(telemetry, agent.id)}
    assert set(kids) == {"test_observe_records_functions_of_every_shape.<locals>.search_code", "fetch",
                         "test_observe_records_functions_of_every_shape.<locals>.plan", "broken"}
    by_kind = {k.kind: k for k in kids.values() if k.agent != "broken"}
    search = by_kind["tool"]
    assert search.prompt == "parser" and search.status == "completed"
    [end] = telemetry.query(session_id=search.id, event_type="end")
    assert end.stream_data == '["parser.py"]'
    assert telemetry.get_session(agent.id).kind == "agent"
    assert kids["broken"].status == "failed"
    fetches = [s for s in telemetry.get_sessions(limit=100) if s.agent == "fetch"]
    assert sorted(s.status for s in fetches) == ["cancelled", "completed"]
    with pytest.raises(ConfigError, match="the kinds are"):
        telemetry.observe(kind="nonsense")


def test_observe_keeps_arguments_out_when_asked(in_tmp):
    with TelemetryService(capture_content=False) as telemetry:
        @telemetry.observe(kind="tool")
        def secret(password: str) -> str:
            return password[::-1]

        assert secret("hunter2") == "2retnuh"
        events = telemetry.query(limit=10)
        assert all("hunter2" not in (e.prompt or "") and "2retnuh" not in (e.stream_data or "") for e in events)


def test_the_instrument_config_key_instruments_at_start(in_tmp, fake_llm):
    (in_tmp / "telemetry.toml").write_text('instrument = ["openai"]\n[[storage]]\ntype = "memory"\n')
    original = Completions.__dict__["create"]
    with TelemetryService() as telemetry:
        assert Completions.__dict__["create"] is not original
        openai_chat(_openai(fake_llm), OPENAI_CHAT)
        [call] = telemetry.get_sessions()
        assert call.kind == "llm" and call.tokens.input > 0
    assert Completions.__dict__["create"] is original
    with pytest.raises(ConfigError, match="no instrumentor named 'gemini'"):
        TelemetryService(storage=[{"type": "memory"}], instrument=["gemini"])


def test_a_stream_dropped_unread_still_ends_its_session(telemetry, fake_llm):
    import gc

    telemetry.instrument("openai")
    stream = _openai(fake_llm).chat.completions.create(model="gpt-4o-mini", messages=OPENAI_CHAT, stream=True)
    assert isinstance(stream, openai.Stream)  # the SDK's own object, not a proxy
    del stream
    gc.collect()
    [call] = telemetry.get_sessions()
    assert call.ended_at is not None


def test_a_dropped_anthropic_stream_is_freed_at_once_and_ends_its_session(telemetry, fake_llm):
    import weakref

    telemetry.instrument("anthropic")
    stream = _anthropic(fake_llm).messages.create(model="claude-haiku-4-5", max_tokens=64, messages=ANTHROPIC_CHAT,
                                                  stream=True)
    alive = weakref.ref(stream)
    del stream  # no garbage collection: the SDK frees a dropped stream by reference counting, so must we
    assert alive() is None
    [call] = telemetry.get_sessions()
    assert call.ended_at is not None


def test_recorded_calls_leave_the_open_session_table(telemetry, fake_llm):
    telemetry.instrument("openai")
    client = _openai(fake_llm)
    for _ in range(3):
        openai_chat(client, OPENAI_CHAT)
    openai_chat(client, OPENAI_CHAT, model="fail-429")
    # the service keeps each open session's category until its end: ended calls must not stay there (it is
    # bounded, and a real open session pushed out of it would lose its category)
    assert len(telemetry._open_sessions) == 0


def test_a_raw_client_cached_while_instrumented_records_nothing_after_uninstrument(telemetry, fake_llm):
    telemetry.instrument("openai", "anthropic")
    client, aclient = _openai(fake_llm), _anthropic(fake_llm)
    raw, araw = client.chat.completions.with_raw_response, aclient.messages.with_raw_response  # cached per client
    message = araw.create(model="claude-haiku-4-5", max_tokens=64, messages=ANTHROPIC_CHAT).parse()
    [anthropic_call] = telemetry.get_sessions()
    assert anthropic_call.tokens.input == message.usage.input_tokens + 16 + 8  # recorded when parsed
    telemetry.uninstrument()
    raw.create(model="gpt-4o-mini", messages=OPENAI_CHAT).parse()
    assert telemetry.count_sessions() == 1


def test_an_observed_generator_is_not_the_consumers_session(telemetry):
    @telemetry.observe(kind="retrieval", name="docs")
    def docs():
        yield "a"
        yield "b"

    with telemetry.session("agent", "run") as agent:
        for _ in docs():
            with telemetry.session("consumer", "step"):  # the consumer's work belongs to the agent
                pass
    kids = {k.agent for k in _children(telemetry, agent.id)}
    assert kids == {"docs", "consumer"}


def test_observe_never_breaks_the_function_it_records(telemetry):
    @telemetry.observe(kind="tool")
    def echo(path: str) -> str:
        return path

    odd = "bad \udc80 path"  # what os.fsdecode gives for an undecodable file name
    assert echo(odd) == odd
    [call] = [s for s in telemetry.get_sessions() if s.kind == "tool"]
    assert call.status == "completed" and "bad" in call.prompt


def test_the_messages_recorded_are_those_of_the_call_not_of_the_list_later(telemetry, fake_llm):
    telemetry.instrument("openai")
    client = _openai(fake_llm)
    history = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello"}]
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=history)
    history.append({"role": "assistant", "content": reply.choices[0].message.content})  # the next turn
    history[1]["content"] = "changed afterwards"
    [call] = telemetry.get_sessions()
    [start] = telemetry.query(session_id=call.id, event_type="start")
    assert start.metadata["messages"] == [{"role": "system", "content": "You are terse."},
                                          {"role": "user", "content": "Say hello"}]
