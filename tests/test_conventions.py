"""Messages in every shape the conventions and SDKs write them come out as role, content, tool calls and results."""

from __future__ import annotations

from vibekit_telemetry.conventions import normalise_messages


def test_tool_results_keep_their_text_and_the_call_they_answer():
    semconv = [{"role": "assistant", "parts": [{"type": "tool_call", "id": "call_1", "name": "get_weather",
                                                "arguments": {"city": "Paris"}}]},
               {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_1", "response": '{"t": 21}'}]}]
    anthropic = [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                               "content": [{"type": "text", "text": '{"t": 21}'}]}]}]
    openai = [{"role": "tool", "tool_call_id": "call_9", "content": '{"t": 21}'}]
    call, result = normalise_messages(semconv)
    assert call["tool_calls"] == [{"id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}]
    assert result == {"role": "tool", "content": '{"t": 21}', "tool_call_id": "call_1"}
    assert normalise_messages(anthropic) == [{"role": "tool", "content": '{"t": 21}', "tool_call_id": "toolu_1"}]
    assert normalise_messages(openai) == [{"role": "tool", "content": '{"t": 21}', "tool_call_id": "call_9"}]
    # a user's own words stay the user's
    assert normalise_messages([{"role": "user", "content": [{"type": "text", "text": "hi"}]}]) == [
        {"role": "user", "content": "hi"}]


def test_a_prompt_that_is_json_stays_the_prompt():
    assert normalise_messages([{"role": "user", "content": '{"invoice": 42}'}]) == [
        {"role": "user", "content": '{"invoice": 42}'}]
    assert normalise_messages([{"role": "user", "content": "[1, 2, 3] sorted?"}])[0]["content"] == "[1, 2, 3] sorted?"
    # JSON that is a part list is read as one
    assert normalise_messages([{"role": "user", "content": '[{"type": "text", "text": "hi"}]'}])[0]["content"] == "hi"
