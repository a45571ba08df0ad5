"""A fake LLM server for the tests: enough of the OpenAI and Anthropic HTTP APIs for their real SDKs.

``FakeLLM().start()`` serves a Starlette app with uvicorn on 127.0.0.1 (a free
port) on a background thread (:class:`BackgroundServer`); ``url`` is its base
URL, ``openai_url`` the one to give ``openai.OpenAI(base_url=...)`` and
``anthropic_url`` the one for ``anthropic.Anthropic(base_url=...)``.  Every
request it answered is kept in ``requests`` (path, JSON body and headers), so a
test can see what the SDK sent.

What it answers is chosen by the request, never at random:

* the model ``"fail-429"`` gets a 429 with ``retry-after: 1`` and
  ``"fail-500"`` a 500, in each API's error shape (give the SDK
  ``max_retries=0`` so the test sees the first answer);
* the model ``"fail-midstream"``, streamed, breaks the connection off after two chunks;
* a request that offers tools and whose last message is not a tool result gets
  a tool call (``get_weather`` with ``{"city": "Paris"}``), anything else the
  text :data:`REPLY`;
* ``stream: true`` gets server-sent events, the first content chunk
  :data:`FIRST_CHUNK_DELAY_S` after the request and each next one
  :data:`CHUNK_INTERVAL_S` later, so time-to-first-token is measurable.

Token counts are deterministic (see :func:`usage_for`): the prompt counts one
token per whitespace-separated word of its text plus :data:`PROMPT_OVERHEAD`;
the completion one per chunk of the answer (a tool call counts one).  OpenAI usage always reports
:data:`CACHED_TOKENS` cached prompt tokens and :data:`REASONING_TOKENS`
reasoning tokens (counted inside ``completion_tokens``, as OpenAI does);
Anthropic usage :data:`CACHE_READ_TOKENS` cache reads and
:data:`CACHE_CREATION_TOKENS` cache writes (outside ``input_tokens``, as
Anthropic does).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any, Self

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

#: numbers the answers' ids (two spans of one call are told apart from two calls by them)
_RESPONSE_IDS = itertools.count(1)

REPLY_CHUNKS = ("Hello", " from", " the", " fake", " model.")
REPLY = "".join(REPLY_CHUNKS)
TOOL_NAME = "get_weather"
TOOL_ARGUMENTS = {"city": "Paris"}
PROMPT_OVERHEAD = 10
CACHED_TOKENS = 4
REASONING_TOKENS = 2
CACHE_READ_TOKENS = 16
CACHE_CREATION_TOKENS = 8
EMBEDDING_DIMENSIONS = 4
FIRST_CHUNK_DELAY_S = 0.030
CHUNK_INTERVAL_S = 0.010
CREATED = 1_700_000_000


def _texts(node: Any) -> Iterable[str]:
    """Every text string in a message list, system prompt or input (OpenAI and Anthropic content shapes)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from _texts(item)
    elif isinstance(node, dict):
        for key in ("content", "text", "input"):
            if key in node and not (key == "input" and node.get("type") == "tool_use"):
                yield from _texts(node[key])


def prompt_tokens(body: dict[str, Any]) -> int:
    """The prompt's token count: its words plus :data:`PROMPT_OVERHEAD`."""
    words = sum(len(text.split()) for key in ("messages", "system", "input") for text in _texts(body.get(key)))
    return words + PROMPT_OVERHEAD


def usage_for(body: dict[str, Any], *, tool_call: bool = False) -> dict[str, int]:
    """The counts one answer reports, in neutral names: ``input``, ``output``, and the cache and reasoning counts."""
    output = 1 if tool_call else len(REPLY_CHUNKS)
    return {
        "input": prompt_tokens(body),
        "output": output,
        "cached": CACHED_TOKENS,
        "reasoning": REASONING_TOKENS,
        "cache_read": CACHE_READ_TOKENS,
        "cache_creation": CACHE_CREATION_TOKENS,
    }


def _wants_tool_call(body: dict[str, Any], messages: list[Any]) -> bool:
    """Offered tools, and the last message is not a tool's result (OpenAI chat, Responses or Anthropic shape)."""
    if not body.get("tools") or not messages or not isinstance(messages[-1], dict):
        return False
    last = messages[-1]
    if last.get("role") == "tool" or last.get("type") == "function_call_output":
        return False
    content = last.get("content")
    return not (isinstance(content, list)
                and any(isinstance(c, dict) and c.get("type") == "tool_result" for c in content))


def assert_ttft_bracketed(ttft_ms: float, client_ttft_ms: float, where: Any) -> None:
    """A recorded time to first chunk lies between the server sending the first chunk and the client receiving it.

    Every instrumentation stamps the first chunk inside the SDK's stream, before the calling code gets it, so it
    is never later than what the client measured; and this server sends nothing before ``FIRST_CHUNK_DELAY_S``.
    A two-sided "within 20 %" test failed on a loaded 2-core CI runner: the thread was descheduled for 12 ms
    between the SDK's stamp and the client's. 2 ms cover whole-millisecond rounding and the span starting a
    little after the client's clock.
    """
    low, high = FIRST_CHUNK_DELAY_S * 1000 - 2, client_ttft_ms + 2
    assert low <= ttft_ms <= high, (where, ttft_ms, f"expected between {low} and {high} ms")


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"{head}data: {payload}\n\n".encode()


async def _paced(frames: list[list[bytes]], break_after: int | None = None) -> AsyncIterator[bytes]:
    """Send each group of frames at once: the first after the first-chunk delay, the next ones a chunk interval apart.

    With ``break_after``, the connection drops after that many groups (the client sees a truncated body).
    """
    for index, group in enumerate(frames):
        if break_after is not None and index == break_after:
            raise ConnectionAbortedError("fake LLM: the stream breaks off here (model fail-midstream)")
        await asyncio.sleep(FIRST_CHUNK_DELAY_S if index == 0 else CHUNK_INTERVAL_S)
        yield b"".join(group)


def _stream(frames: list[list[bytes]], break_after: int | None = None) -> StreamingResponse:
    return StreamingResponse(_paced(frames, break_after), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-request-id": "req_fake_stream"})


def _failure(model: str, api: str) -> Response | None:
    if model == "fail-429":
        status, kind, message = 429, "rate_limit_error", "Rate limit reached for requests (fake)."
        headers = {"retry-after": "1", "x-request-id": "req_fake_429"}
    elif model == "fail-500":
        status, kind, message = 500, "api_error" if api == "anthropic" else "server_error", "The server had an error (fake)."
        headers = {"x-request-id": "req_fake_500"}
    else:
        return None
    if api == "anthropic":
        body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": headers["x-request-id"]}
        headers["request-id"] = headers.pop("x-request-id")
    else:
        body = {"error": {"message": message, "type": "requests" if status == 429 else kind, "param": None,
                          "code": "rate_limit_exceeded" if status == 429 else None}}
    return JSONResponse(body, status_code=status, headers=headers)


def _openai_usage(usage: dict[str, int]) -> dict[str, Any]:
    completion = usage["output"] + usage["reasoning"]
    return {
        "prompt_tokens": usage["input"],
        "completion_tokens": completion,
        "total_tokens": usage["input"] + completion,
        "prompt_tokens_details": {"cached_tokens": usage["cached"], "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": usage["reasoning"], "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    }


def _tool_call(index: int | None = None) -> dict[str, Any]:
    call: dict[str, Any] = {"id": "call_fake_1", "type": "function",
                            "function": {"name": TOOL_NAME, "arguments": json.dumps(TOOL_ARGUMENTS)}}
    if index is not None:
        call["index"] = index
    return call


class BackgroundServer:
    """A Starlette app served by uvicorn on 127.0.0.1 (a free port) on a background thread.

    ``start()`` returns once the socket listens; ``stop()`` (or leaving a ``with`` block) ends it.
    """

    def __init__(self, app: Starlette, name: str) -> None:
        self.app = app
        self.name = name
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        """Serve on a background thread; returns once the socket listens."""
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # accepted connections inherit it: without it a streamed chunk can wait on a delayed ACK (40 ms)
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(128)
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name=self.name, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the {self.name} server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        if self._socket is not None:
            self._socket.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FakeLLM(BackgroundServer):
    """The fake LLM server: ``start()``, then ``openai_url``/``anthropic_url``; ``stop()`` (or ``with``) ends it."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        super().__init__(Starlette(routes=[
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/responses", self._responses, methods=["POST"]),
            Route("/v1/embeddings", self._embeddings, methods=["POST"]),
            Route("/v1/messages", self._messages, methods=["POST"]),
        ]), "fake-llm")

    @property
    def openai_url(self) -> str:
        """The ``base_url`` for ``openai.OpenAI``."""
        return f"{self.url}/v1"

    @property
    def anthropic_url(self) -> str:
        """The ``base_url`` for ``anthropic.Anthropic``."""
        return self.url

    async def _body(self, request: Request) -> dict[str, Any]:
        body = await request.json()
        self.requests.append({"path": request.url.path, "body": body, "headers": dict(request.headers)})
        return body

    async def _chat(self, request: Request) -> Response:
        body = await self._body(request)
        model = body.get("model", "")
        if (failed := _failure(model, "openai")) is not None:
            return failed
        tool_call = _wants_tool_call(body, body.get("messages") or [])
        usage = _openai_usage(usage_for(body, tool_call=tool_call))
        ident = f"chatcmpl-fake-{next(_RESPONSE_IDS)}"  # unique per answer, as a real provider's ids are
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": None if tool_call else REPLY, "refusal": None}
            if tool_call:
                message["tool_calls"] = [_tool_call()]
            return JSONResponse({
                "id": ident, "object": "chat.completion", "created": CREATED, "model": model,
                "system_fingerprint": "fp_fake",
                "service_tier": "default",
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": "tool_calls" if tool_call else "stop"}],
                "usage": usage,
            })

        def chunk(delta: dict[str, Any], finish: str | None = None, *, choices: bool = True,
                  chunk_usage: dict[str, Any] | None = None) -> bytes:
            data: dict[str, Any] = {
                "id": ident, "object": "chat.completion.chunk", "created": CREATED, "model": model,
                "system_fingerprint": "fp_fake", "service_tier": "default",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else [],
            }
            if chunk_usage is not None or (body.get("stream_options") or {}).get("include_usage"):
                data["usage"] = chunk_usage
            return _sse(data)

        if tool_call:
            call = _tool_call(0)
            arguments = call["function"]["arguments"]
            frames = [[chunk({"role": "assistant", "content": None,
                              "tool_calls": [{**call, "function": {"name": TOOL_NAME, "arguments": ""}}]})],
                      [chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]})],
                      [chunk({}, "tool_calls")]]
        else:
            frames = [[chunk({"role": "assistant", "content": "", "refusal": None}), chunk({"content": REPLY_CHUNKS[0]})]]
            frames += [[chunk({"content": piece})] for piece in REPLY_CHUNKS[1:]]
            frames.append([chunk({}, "stop")])
        if (body.get("stream_options") or {}).get("include_usage"):
            frames[-1].append(chunk({}, choices=False, chunk_usage=usage))
        frames[-1].append(_sse("[DONE]"))
        return _stream(frames, break_after=2 if model == "fail-midstream" else None)

    async def _responses(self, request: Request) -> Response:
        body = await self._body(request)
        model = body.get("model", "")
        if (failed := _failure(model, "openai")) is not None:
            return failed
        raw_input = body.get("input")
        messages = raw_input if isinstance(raw_input, list) else [{"role": "user", "content": raw_input}]
        tool_call = _wants_tool_call(body, messages)
        counts = usage_for(body, tool_call=tool_call)
        usage = {
            "input_tokens": counts["input"],
            "input_tokens_details": {"cached_tokens": counts["cached"]},
            "output_tokens": counts["output"] + counts["reasoning"],
            "output_tokens_details": {"reasoning_tokens": counts["reasoning"]},
            "total_tokens": counts["input"] + counts["output"] + counts["reasoning"],
        }
        number = next(_RESPONSE_IDS)
        message_id, response_id = f"msg_fake_{number}", f"resp_fake_{number}"
        if tool_call:
            item: dict[str, Any] = {"type": "function_call", "id": "fc_fake", "call_id": "call_fake_1",
                                    "name": TOOL_NAME, "arguments": json.dumps(TOOL_ARGUMENTS), "status": "completed"}
        else:
            item = {"type": "message", "id": message_id, "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": REPLY, "annotations": [], "logprobs": []}]}

        def response(status: str, output: list[Any], with_usage: bool) -> dict[str, Any]:
            return {
                "id": response_id, "object": "response", "created_at": CREATED, "status": status, "model": model,
                "output": output, "usage": usage if with_usage else None, "error": None, "incomplete_details": None,
                "instructions": body.get("instructions"), "metadata": {}, "parallel_tool_calls": True,
                "temperature": body.get("temperature", 1.0), "top_p": 1.0, "tool_choice": "auto",
                "tools": body.get("tools") or [], "text": {"format": {"type": "text"}},
                "previous_response_id": None, "reasoning": {"effort": None, "summary": None},
                "store": True, "truncation": "disabled", "max_output_tokens": None, "user": None,
                "background": False, "service_tier": "default",
            }

        if not body.get("stream"):
            return JSONResponse(response("completed", [item], True))
        seq = iter(range(1_000))

        def event(kind: str, **data: Any) -> bytes:
            return _sse({"type": kind, "sequence_number": next(seq), **data}, event=kind)

        if tool_call:
            frames = [[event("response.created", response=response("in_progress", [], False)),
                       event("response.in_progress", response=response("in_progress", [], False)),
                       event("response.output_item.added", output_index=0,
                             item={**item, "arguments": "", "status": "in_progress"}),
                       event("response.function_call_arguments.delta", item_id=item["id"], output_index=0,
                             delta=item["arguments"])],
                      [event("response.function_call_arguments.done", item_id=item["id"], output_index=0,
                             arguments=item["arguments"]),
                       event("response.output_item.done", output_index=0, item=item),
                       event("response.completed", response=response("completed", [item], True))]]
            return _stream(frames)
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        common = {"item_id": message_id, "output_index": 0, "content_index": 0}
        frames = [[event("response.created", response=response("in_progress", [], False)),
                   event("response.in_progress", response=response("in_progress", [], False)),
                   event("response.output_item.added", output_index=0,
                         item={**item, "status": "in_progress", "content": []}),
                   event("response.content_part.added", part=part, **common),
                   event("response.output_text.delta", delta=REPLY_CHUNKS[0], logprobs=[], **common)]]
        frames += [[event("response.output_text.delta", delta=piece, logprobs=[], **common)] for piece in REPLY_CHUNKS[1:]]
        frames.append([event("response.output_text.done", text=REPLY, logprobs=[], **common),
                       event("response.content_part.done", part={**part, "text": REPLY}, **common),
                       event("response.output_item.done", output_index=0, item=item),
                       event("response.completed", response=response("completed", [item], True))])
        return _stream(frames)

    async def _embeddings(self, request: Request) -> Response:
        body = await self._body(request)
        model = body.get("model", "")
        if (failed := _failure(model, "openai")) is not None:
            return failed
        inputs = body.get("input")
        inputs = inputs if isinstance(inputs, list) else [inputs]
        data = []
        for index, text in enumerate(inputs):
            vector = [round(0.1 * (index + 1) * (d + 1), 3) for d in range(EMBEDDING_DIMENSIONS)]
            encoded: Any = vector
            if body.get("encoding_format") == "base64":
                encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(len(str(text).split()) for text in inputs)
        return JSONResponse({"object": "list", "data": data, "model": model,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def _messages(self, request: Request) -> Response:
        body = await self._body(request)
        model = body.get("model", "")
        if (failed := _failure(model, "anthropic")) is not None:
            return failed
        tool_call = _wants_tool_call(body, body.get("messages") or [])
        counts = usage_for(body, tool_call=tool_call)
        usage = {
            "input_tokens": counts["input"],
            "output_tokens": counts["output"],
            "cache_creation_input_tokens": counts["cache_creation"],
            "cache_read_input_tokens": counts["cache_read"],
            "cache_creation": {"ephemeral_5m_input_tokens": counts["cache_creation"], "ephemeral_1h_input_tokens": 0},
            "server_tool_use": None,
            "service_tier": "standard",
        }
        blocks: list[dict[str, Any]] = [{"type": "text", "text": "Let me check." if tool_call else REPLY}]
        if tool_call:
            blocks.append({"type": "tool_use", "id": "toolu_fake_1", "name": TOOL_NAME, "input": TOOL_ARGUMENTS})
        message = {"id": f"msg_fake_{next(_RESPONSE_IDS)}", "type": "message", "role": "assistant", "model": model,
                   "content": blocks,
                   "stop_reason": "tool_use" if tool_call else "end_turn", "stop_sequence": None, "usage": usage}
        headers = {"request-id": "req_fake_msg"}
        if not body.get("stream"):
            return JSONResponse(message, headers=headers)

        def event(kind: str, **data: Any) -> bytes:
            return _sse({"type": kind, **data}, event=kind)

        start_usage = {**usage, "output_tokens": 1}
        head = [event("message_start", message={**message, "content": [], "stop_reason": None, "usage": start_usage}),
                event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
                event("ping")]
        if tool_call:
            frames = [head + [event("content_block_delta", index=0, delta={"type": "text_delta", "text": "Let me check."})],
                      [event("content_block_stop", index=0),
                       event("content_block_start", index=1,
                             content_block={"type": "tool_use", "id": "toolu_fake_1", "name": TOOL_NAME, "input": {}}),
                       event("content_block_delta", index=1,
                             delta={"type": "input_json_delta", "partial_json": json.dumps(TOOL_ARGUMENTS)})],
                      [event("content_block_stop", index=1)]]
        else:
            frames = [head + [event("content_block_delta", index=0, delta={"type": "text_delta", "text": REPLY_CHUNKS[0]})]]
            frames += [[event("content_block_delta", index=0, delta={"type": "text_delta", "text": piece})]
                       for piece in REPLY_CHUNKS[1:]]
            frames.append([event("content_block_stop", index=0)])
        frames[-1] += [event("message_delta", delta={"stop_reason": message["stop_reason"], "stop_sequence": None},
                             usage={"input_tokens": counts["input"], "output_tokens": counts["output"],
                                    "cache_creation_input_tokens": counts["cache_creation"],
                                    "cache_read_input_tokens": counts["cache_read"]}),
                       event("message_stop")]
        return _stream(frames)
