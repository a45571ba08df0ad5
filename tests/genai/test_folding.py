"""The folding rule: two spans that describe one model call are one session, and nothing else is folded.

Real OpenTelemetry SDK spans through ``telemetry.span_processor()``, shaped as the anthropic SDK 2.x
(``com.anthropic.sdk.python``) and OpenLLMetry (``opentelemetry.instrumentation.anthropic``) write them
for one request; each case changes one thing the rule looks at.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk.trace")

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402

from vibekit_telemetry import TelemetryService  # noqa: E402

SDK, OLLM = "com.anthropic.sdk.python", "opentelemetry.instrumentation.anthropic"


def _attrs(model: str | None = "claude-haiku-4-5", response_id: str | None = "msg_1", input_tokens: int = 40,
           output_tokens: int = 5, **extra: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
                             "gen_ai.usage.input_tokens": input_tokens, "gen_ai.usage.output_tokens": output_tokens}
    if model:
        attrs["gen_ai.request.model"] = model
        attrs["gen_ai.response.model"] = model
    if response_id:
        attrs["gen_ai.response.id"] = response_id
    attrs.update(extra)
    return attrs


def _spans(telemetry: TelemetryService, first: tuple[str, dict[str, Any]], second: tuple[str, dict[str, Any]], *,
           overlap: bool = True, parent: bool = False, nested: bool = False) -> list[Any]:
    """Two LLM spans (scope, attributes); the second begins inside the first unless ``overlap`` is off."""
    provider = TracerProvider()
    provider.add_span_processor(telemetry.span_processor())
    tracers = {scope: provider.get_tracer(scope) for scope in {first[0], second[0]}}
    agent_tracer = provider.get_tracer("agent")
    root = agent_tracer.start_span("invoke_agent planner", attributes={"gen_ai.operation.name": "invoke_agent",
                                                                       "gen_ai.agent.name": "planner"}) \
        if parent else None
    ctx = trace.set_span_in_context(root) if root is not None else None
    outer = tracers[first[0]].start_span("anthropic.chat", context=ctx, attributes=first[1])
    if not overlap:
        outer.end()
        time.sleep(0.005)
    inner_ctx = trace.set_span_in_context(outer) if nested else ctx
    inner = tracers[second[0]].start_span("anthropic.messages.create", context=inner_ctx, attributes=second[1])
    time.sleep(0.002)
    inner.end()
    if overlap:
        outer.end()
    if root is not None:
        root.end()
    provider.shutdown()
    telemetry.flush()
    return [s for s in telemetry.get_sessions(limit=100) if s.kind == "llm"]


@pytest.fixture
def telemetry(in_tmp):
    with TelemetryService(analytics={"enabled": True}) as service:
        yield service


@pytest.mark.parametrize("parent", [False, True], ids=["separate-roots", "siblings-in-an-agent"])
def test_two_spans_of_one_call_are_one_session_counted_once(telemetry, parent):
    text = '[{"role": "assistant", "parts": [{"type": "text", "content": "Hello."}]}]'
    [call] = _spans(telemetry, (OLLM, _attrs(**{"gen_ai.output.messages": text})), (SDK, _attrs()), parent=parent)
    assert (call.tokens.input, call.tokens.output) == (40, 5)  # once, not twice
    events = telemetry.query(session_id=call.id, order="asc")
    [duplicate] = [e for e in events if e.action == "otel.duplicate_span"]
    # the inner span ends first and makes the session; the other adds what only it had, the answer
    assert duplicate.metadata["otel.span_name"] == "anthropic.chat"
    assert duplicate.stream_data == "Hello."


def test_a_span_without_model_or_response_id_folds_by_usage_and_the_model_comes_from_the_other(telemetry):
    # OpenLLMetry's anthropic span in its events mode names neither; the SDK's names both
    [call] = _spans(telemetry, (OLLM, _attrs(model=None, response_id=None)), (SDK, _attrs()))
    assert call.model == "claude-haiku-4-5"
    assert (call.tokens.input, call.tokens.output) == (40, 5)


@pytest.mark.parametrize("change", ["same-scope", "other-response-id", "other-model", "apart-in-time",
                                    "nested", "other-usage-no-id", "neither-names-a-model"])
def test_what_is_not_one_call_stays_two_sessions(telemetry, change):
    first, second = (OLLM, _attrs()), (SDK, _attrs())
    kwargs: dict[str, Any] = {}
    if change == "same-scope":
        second = (OLLM, _attrs())  # one instrumentation never describes one call twice: two identical calls
    elif change == "other-response-id":
        second = (SDK, _attrs(response_id="msg_2"))
    elif change == "other-model":
        second = (SDK, _attrs(model="claude-sonnet-4-5", response_id=None))
        first = (OLLM, _attrs(response_id=None))
    elif change == "apart-in-time":
        kwargs["overlap"] = False
    elif change == "nested":
        kwargs["nested"] = True  # a call made while handling another's span is its child, not its double
    elif change == "other-usage-no-id":
        first, second = (OLLM, _attrs(model=None, response_id=None)), (SDK, _attrs(response_id=None, output_tokens=6))
    elif change == "neither-names-a-model":
        first, second = (OLLM, _attrs(model=None, response_id=None)), (SDK, _attrs(model=None, response_id=None))
    calls = _spans(telemetry, first, second, **kwargs)
    assert len(calls) == 2, change
    assert sum(c.tokens.input for c in calls) == 80
