"""The fake LLM server answers the real ``openai`` and ``anthropic`` SDKs as the real APIs would."""

from __future__ import annotations

import time

import anthropic
import httpx
import openai
import pytest

from .fake_llm import (
    CACHE_CREATION_TOKENS,
    CACHE_READ_TOKENS,
    CACHED_TOKENS,
    CHUNK_INTERVAL_S,
    FIRST_CHUNK_DELAY_S,
    PROMPT_OVERHEAD,
    REASONING_TOKENS,
    REPLY,
    REPLY_CHUNKS,
    TOOL_ARGUMENTS,
    TOOL_NAME,
)

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello"}]
PROMPT_TOKENS = 5 + PROMPT_OVERHEAD  # five words
TOOLS = [{"type": "function", "function": {"name": TOOL_NAME, "parameters": {"type": "object", "properties": {}}}}]


@pytest.fixture
def client(fake_llm):
    with openai.OpenAI(base_url=fake_llm.openai_url, api_key="sk-fake", max_retries=0) as client:
        yield client


@pytest.fixture
def claude(fake_llm):
    with anthropic.Anthropic(base_url=fake_llm.anthropic_url, api_key="sk-ant-fake", max_retries=0,
                             open_telemetry=False) as client:
        yield client


def test_chat_completion_reports_cached_and_reasoning_tokens(client):
    response = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert response.choices[0].message.content == REPLY
    assert response.choices[0].finish_reason == "stop"
    usage = response.usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (PROMPT_TOKENS, len(REPLY_CHUNKS) + REASONING_TOKENS)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details.cached_tokens == CACHED_TOKENS
    assert usage.completion_tokens_details.reasoning_tokens == REASONING_TOKENS


def test_streamed_chat_spaces_its_chunks_and_ends_with_usage(client):
    started = time.perf_counter()
    arrivals, text, usage = [], [], None
    for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                                stream_options={"include_usage": True}):
        if chunk.usage is not None:
            assert chunk.choices == []
            usage = chunk.usage
        elif chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter() - started)
            text.append(chunk.choices[0].delta.content)

    assert "".join(text) == REPLY
    assert arrivals[0] >= FIRST_CHUNK_DELAY_S
    # the server waits CHUNK_INTERVAL_S between chunks; a client that reads one late (a first parse, a busy
    # machine) sees the next ones closer together, but the stream as a whole cannot arrive at once
    assert arrivals[-1] - arrivals[0] >= (len(arrivals) - 1) * CHUNK_INTERVAL_S * 0.5
    assert usage.prompt_tokens == PROMPT_TOKENS
    assert usage.prompt_tokens_details.cached_tokens == CACHED_TOKENS


def test_streamed_chat_without_include_usage_has_no_usage_chunk(client):
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))

    assert all(chunk.usage is None and chunk.choices for chunk in chunks)


def test_tools_get_a_tool_call_and_a_tool_result_gets_text(client):
    asked = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, tools=TOOLS)
    call = asked.choices[0].message.tool_calls[0]
    answered = client.chat.completions.create(model="gpt-4o-mini", tools=TOOLS, messages=[
        *MESSAGES, asked.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "21 C"}])

    assert asked.choices[0].finish_reason == "tool_calls"
    assert (call.function.name, call.function.arguments) == (TOOL_NAME, '{"city": "Paris"}')
    assert answered.choices[0].message.content == REPLY


def test_streamed_tool_call_assembles(client):
    arguments = ""
    for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, tools=TOOLS, stream=True):
        for piece in chunk.choices[0].delta.tool_calls or []:
            arguments += piece.function.arguments or ""

    assert arguments == '{"city": "Paris"}'


def test_responses_plain_and_streamed(client):
    plain = client.responses.create(model="gpt-4o-mini", instructions="You are terse.", input="Say hello")
    with client.responses.stream(model="gpt-4o-mini", input="Say hello") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()

    assert plain.output_text == REPLY == "".join(deltas) == final.output_text
    assert plain.usage.input_tokens_details.cached_tokens == CACHED_TOKENS
    assert final.usage.output_tokens_details.reasoning_tokens == REASONING_TOKENS


def test_embeddings_as_floats_and_base64(client):
    floats = client.embeddings.create(model="text-embedding-3-small", input=["a b", "c"])
    packed = client.embeddings.create(model="text-embedding-3-small", input="a b", encoding_format="base64")

    assert [len(item.embedding) for item in floats.data] == [4, 4]
    assert floats.usage.prompt_tokens == 3
    assert isinstance(packed.data[0].embedding, str)


@pytest.mark.parametrize(("model", "error", "status"), [
    ("fail-429", openai.RateLimitError, 429), ("fail-500", openai.InternalServerError, 500)])
def test_openai_errors_chosen_by_model(client, fake_llm, model, error, status):
    with pytest.raises(error) as raised:
        client.chat.completions.create(model=model, messages=MESSAGES)

    assert raised.value.status_code == status
    if status == 429:
        assert raised.value.response.headers["retry-after"] == "1"
    assert sum(r["body"].get("model") == model for r in fake_llm.requests) >= 1


def test_anthropic_message_reports_cache_reads_and_writes(claude):
    message = claude.messages.create(model="claude-haiku-4-5", max_tokens=64, system="You are terse.",
                                     messages=[{"role": "user", "content": "Say hello"}])

    assert message.content[0].text == REPLY
    assert message.usage.input_tokens == PROMPT_TOKENS
    assert message.usage.cache_read_input_tokens == CACHE_READ_TOKENS
    assert message.usage.cache_creation_input_tokens == CACHE_CREATION_TOKENS


def test_anthropic_stream_sends_every_event_type(claude):
    kinds, started, first = [], time.perf_counter(), None
    for event in claude.messages.create(model="claude-haiku-4-5", max_tokens=64, stream=True,
                                        messages=[{"role": "user", "content": "Say hello"}]):
        kinds.append(event.type)
        if event.type == "content_block_delta" and first is None:
            first = time.perf_counter() - started

    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert {"content_block_start", "content_block_delta", "content_block_stop"} <= set(kinds)
    assert first >= FIRST_CHUNK_DELAY_S
    with claude.messages.stream(model="claude-haiku-4-5", max_tokens=64,
                                messages=[{"role": "user", "content": "Say hello"}]) as stream:
        final = stream.get_final_message()
    assert final.usage.output_tokens == len(REPLY_CHUNKS)
    assert final.usage.cache_read_input_tokens == CACHE_READ_TOKENS


def test_anthropic_tool_use_plain_and_streamed(claude):
    tools = [{"name": TOOL_NAME, "input_schema": {"type": "object"}}]
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    plain = claude.messages.create(model="claude-haiku-4-5", max_tokens=64, tools=tools, messages=messages)
    with claude.messages.stream(model="claude-haiku-4-5", max_tokens=64, tools=tools, messages=messages) as stream:
        streamed = stream.get_final_message()

    for message in (plain, streamed):
        assert message.stop_reason == "tool_use"
        assert [(b.name, b.input) for b in message.content if b.type == "tool_use"] == [(TOOL_NAME, TOOL_ARGUMENTS)]


def test_anthropic_errors_chosen_by_model(claude):
    with pytest.raises(anthropic.RateLimitError):
        claude.messages.create(model="fail-429", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.InternalServerError):
        claude.messages.create(model="fail-500", max_tokens=8, messages=[{"role": "user", "content": "x"}])


def test_otlp_receiver_records_gzip_protobuf(otlp_receiver):
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(
        endpoint=f"{otlp_receiver.url}/api/public/otel/v1/traces", compression=Compression.Gzip)))
    with provider.get_tracer("test").start_as_current_span("hello") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
    provider.shutdown()

    assert otlp_receiver.requests[0]["headers"]["content-encoding"] == "gzip"
    spans = otlp_receiver.traces()[0]["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert [(s["name"], s["traceId"]) for s in spans] == [("hello", trace_id)]
    assert httpx.post(f"{otlp_receiver.url}/anything", content=b"{}").status_code == 200
