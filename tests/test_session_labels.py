"""The richer session: kind, model, conversation and user, filters on them, cost and roll-ups over a tree."""

from __future__ import annotations

import sqlite3

import pytest

from vibekit_telemetry import TelemetryService


def test_labels_from_track_start_and_the_enclosing_block(telemetry):
    with telemetry.session("planner", "agent", "Ship the release", kind="agent", conversation_id="conv-7",
                           user_id="u-1") as agent:
        llm = telemetry.track_start("openai", "chat", "Summarise", kind="llm", model="gpt-4o-mini")
        telemetry.track_end(llm, metadata={"model": "gpt-4o-mini-2024-07-18", "input_tokens": 100,
                                           "output_tokens": 20})
        with telemetry.session("search", "tool", kind="tool") as tool:
            pass
    other = telemetry.track_start("openai", "chat", "unrelated", kind="llm", conversation_id="conv-8")
    telemetry.track_end(other)
    root = telemetry.get_session(agent.id)
    assert (root.kind, root.conversation_id, root.user_id) == ("agent", "conv-7", "u-1")
    call = telemetry.get_session(llm)
    # the response model (reported at the end) wins over the requested one; children share the conversation
    assert (call.kind, call.model, call.conversation_id, call.user_id) == ("llm", "gpt-4o-mini-2024-07-18",
                                                                         "conv-7", "u-1")
    assert telemetry.get_session(tool.id).kind == "tool"
    assert {s.id for s in telemetry.get_sessions(conversation_id="conv-7")} == {agent.id, llm, tool.id}
    assert [s.id for s in telemetry.get_sessions(kind="llm", conversation_id="conv-8")] == [other]
    assert [s.id for s in telemetry.get_sessions(user_id="u-1", kind="tool")] == [tool.id]
    assert [s.id for s in telemetry.get_sessions(model="gpt-4o-mini-2024-07-18")] == [llm]
    assert telemetry.count_sessions(conversation_id="conv-7") == 3


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_a_tree_rolls_up_tokens_and_cost(in_tmp, store):
    with TelemetryService(storage=[{"type": store}], analytics={"enabled": True}) as telemetry:
        with telemetry.session("planner", "agent", kind="agent") as agent:
            for model, tokens in (("gpt-4o", (1000, 200)), ("claude-sonnet-4-5", (2000, 100))):
                sid = telemetry.track_start("llm", "chat", kind="llm", model=model)
                telemetry.track_end(sid, metadata={"input_tokens": tokens[0], "output_tokens": tokens[1],
                                                   "cache_read_tokens": 500 if model == "gpt-4o" else 0})
        tree = telemetry.get_session(agent.id, tree=True)
        flat = telemetry.get_session(agent.id)
    by_model = {child.model: child for child in tree.children}
    gpt, claude = by_model["gpt-4o"], by_model["claude-sonnet-4-5"]
    # gpt-4o: 500 uncached at 2.50/M, 500 cached at 1.25/M, 200 out at 10/M
    assert gpt.cost_usd == pytest.approx((500 * 2.5 + 500 * 1.25 + 200 * 10) / 1e6)
    assert claude.cost_usd == pytest.approx((2000 * 3 + 100 * 15) / 1e6)
    assert tree.tree_tokens.input == 3000 and tree.tree_tokens.output == 300 and tree.tree_tokens.cache_read == 500
    assert tree.tree_cost_usd == pytest.approx(gpt.cost_usd + claude.cost_usd)
    assert flat.tree_tokens is None  # only asked-for trees carry roll-ups
    assert tree.to_dict()["tree_tokens"]["total"] == 3300


def test_the_labels_migration_fills_existing_sessions(in_tmp):
    path = in_tmp / "old.db"
    with TelemetryService(storage=[{"type": "sqlite", "options": {"path": str(path)}}]) as telemetry:
        sid = telemetry.track_start("openai", "chat", metadata={"kind": "llm", "model": "gpt-4o", "user_id": 42})
        telemetry.track_end(sid)
    conn = sqlite3.connect(path)
    # as a database written before the migration: no label columns, no record of the migration
    for index in ("sessions_conversation", "sessions_user", "sessions_kind"):
        conn.execute(f"DROP INDEX IF EXISTS {index}")
    for column in ("kind", "model", "conversation_id", "user_id"):
        conn.execute(f"ALTER TABLE sessions DROP COLUMN {column}")
    conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm002_session_labels'")
    conn.commit()
    conn.close()
    with TelemetryService(storage=[{"type": "sqlite", "options": {"path": str(path)}}]) as telemetry:
        session = telemetry.get_session(sid)
        assert (session.kind, session.model, session.user_id) == ("llm", "gpt-4o", "42")
        assert [s.id for s in telemetry.get_sessions(user_id="42")] == [sid]
