"""A realistic multi-agent workload for ``telemetry demo``.

Agents call models, stream their answers chunk by chunk with the timing real
providers show (time to first token, then steady chunks), use tools in child
sessions, report token usage, and now and then fail.  Timestamps are laid over
the last half hour so the data looks live without making the user wait.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from typing import Any

import attrs

from .service import TelemetryService
from .times import now_ms

AGENTS = (
    ("claude", "anthropic", ("claude-sonnet-4-5", "claude-haiku-4-5")),
    ("codex", "openai", ("gpt-4.1", "gpt-4o-mini")),
    ("gemini", "google", ("gemini-2.5-pro", "gemini-2.5-flash")),
)
MODES = ("code", "chat", "review")
PROMPTS = (
    "Fix the failing test in the payments module",
    "Explain why this SQL query is slow and suggest an index",
    "Refactor the retry logic into a decorator",
    "Write a migration that adds a status column to orders",
    "Summarise the last 20 commits for the release notes",
    "Why does the websocket reconnect loop never back off?",
    "Add type hints to the billing client",
    "Review this pull request for race conditions",
)
ANSWER = ("Here's what I found. The failing assertion compares a timezone-aware datetime with a naive one; "
          "normalise both to UTC before comparing. I also added a regression test and tightened the fixture "
          "so it no longer depends on the machine's local time zone. ")
TOOLS = ("read_file", "run_tests", "search_code", "apply_patch")
ERRORS = (("RateLimitError", "429 Too Many Requests: rate limit exceeded, retry after 20s"),
          ("APITimeoutError", "request timed out after 60s"),
          ("ContextLengthError", "prompt is too long: 210034 tokens > 200000 maximum"))


@attrs.frozen
class DemoSummary:
    """What ``run_demo`` recorded."""

    sessions: int
    tool_calls: int
    events: int
    by_agent: dict[str, int]
    by_status: dict[str, int]
    tokens: int


def run_demo(telemetry: TelemetryService, *, sessions: int = 24, seed: int | None = 7,
             span_ms: int = 30 * 60_000) -> DemoSummary:
    """Record ``sessions`` agent sessions (with tool-call children) into ``telemetry``."""
    rng = random.Random(seed)
    start = now_ms() - span_ms
    counts: Counter[str] = Counter()
    by_agent: Counter[str] = Counter()
    by_status: Counter[str] = Counter()
    tokens = 0
    for index in range(sessions):
        agent, mode, prompt, meta = _choose(rng)
        model = meta["model"]
        t = start + int(span_ms * index / max(1, sessions)) + rng.randint(0, 20_000)
        sid = telemetry.track_start(agent, mode, prompt, metadata=meta, timestamp=t)
        counts["events"] += 1
        by_agent[agent] += 1
        t += rng.randint(250, 1800)  # time to first token
        if rng.random() < 0.3:
            t = _tool_call(telemetry, rng, sid, agent, t, counts)
        failed = rng.random() < 0.12
        chunks = rng.randint(4, 14) if not failed else rng.randint(0, 3)
        words = ANSWER.split(" ")
        per_chunk = max(1, len(words) // max(1, chunks))
        for chunk in range(chunks):
            text = " ".join(words[chunk * per_chunk : (chunk + 1) * per_chunk]) + " "
            telemetry.track_stream(sid, text, metadata={"chunk": chunk, "model": model}, timestamp=t)
            counts["events"] += 1
            t += rng.randint(20, 140)
        usage = _usage(rng, model, failed)
        if failed:
            error_type, message = rng.choice(ERRORS)
            telemetry.track_error(sid, error_type=error_type, message=message, stack=_stack(agent, error_type, message),
                                  timestamp=t, metadata={"model": model})
            telemetry.track_end(sid, "failed", metadata=usage, timestamp=t + 1)
            by_status["failed"] += 1
            counts["events"] += 2
        else:
            telemetry.track_end(sid, "completed", metadata=usage, timestamp=t)
            by_status["completed"] += 1
            counts["events"] += 1
        tokens += usage["input_tokens"] + usage["output_tokens"]
        if rng.random() < 0.5:
            telemetry.track({"event_type": "custom", "category": "user-action", "action": rng.choice(("accept", "copy", "retry")),
                             "session_id": sid, "value": 1, "timestamp": t + rng.randint(500, 5000)})
            counts["events"] += 1
    active = telemetry.track_start("claude", "chat", "Draft the incident postmortem", metadata={"model": "claude-sonnet-4-5"})
    telemetry.track_stream(active, "Timeline: at 09:12 the queue depth alarm fired ", metadata={"model": "claude-sonnet-4-5"})
    counts["events"] += 2
    by_agent["claude"] += 1
    by_status["active"] += 1
    telemetry.flush()
    return DemoSummary(sessions=sessions + 1, tool_calls=counts["tool_sessions"], events=counts["events"],
                       by_agent=dict(by_agent), by_status=dict(by_status), tokens=tokens)


def _choose(rng: random.Random) -> tuple[str, str, str, dict[str, Any]]:
    """An agent, a mode, a prompt and the start metadata (model, provider, temperature)."""
    agent, provider, models = rng.choice(AGENTS)
    meta = {"model": rng.choice(models), "provider": provider, "temperature": rng.choice((0.0, 0.2, 0.7))}
    return agent, rng.choice(MODES), rng.choice(PROMPTS), meta


def _stack(agent: str, error_type: str, message: str) -> str:
    """A traceback shaped like the one a provider's client raises."""
    return ("Traceback (most recent call last):\n"
            f'  File "agents/{agent}.py", line 88, in run\n    reply = self.client.stream(messages)\n'
            '  File "agents/client.py", line 214, in stream\n    raise _error_for(response)\n'
            f"{error_type}: {message}\n")


def _usage(rng: random.Random, model: str, failed: bool) -> dict[str, Any]:
    input_tokens = rng.randint(400, 6000)
    return {"model": model, "input_tokens": input_tokens, "output_tokens": rng.randint(80, 1200) if not failed else 0,
            "cache_read_tokens": rng.randint(0, input_tokens // 2)}


def run_live(telemetry: TelemetryService, stop: threading.Event, *, seed: int | None = None,
             pause: tuple[float, float] = (1.0, 4.0)) -> int:
    """Record sessions in real time (first chunk after a pause, then chunks as they stream) until ``stop`` is set.

    What ``telemetry demo`` runs while it serves the dashboard, so the pages have something live
    to show.  Returns how many sessions it recorded.
    """
    rng = random.Random(seed)
    words = ANSWER.split(" ")
    recorded = 0
    while not stop.is_set():
        agent, mode, prompt, meta = _choose(rng)
        with telemetry.session(agent, mode, prompt, metadata=meta) as session:
            if stop.wait(rng.uniform(0.25, 1.5)):
                break
            failed = rng.random() < 0.1
            for chunk in range(rng.randint(1, 3) if failed else rng.randint(4, 12)):
                session.stream(" ".join(words[chunk * 4 : chunk * 4 + 4]) + " ", metadata={"chunk": chunk})
                if stop.wait(rng.uniform(0.03, 0.2)):
                    break
            if failed:
                error_type, message = rng.choice(ERRORS)
                session.error(message, error_type=error_type, stack=_stack(agent, error_type, message))
                session.end("failed", metadata=_usage(rng, meta["model"], True))
            else:
                session.end("completed", metadata=_usage(rng, meta["model"], False))
        recorded += 1
        stop.wait(rng.uniform(*pause))
    return recorded


def _tool_call(telemetry: TelemetryService, rng: random.Random, parent: str, agent: str, t: int, counts: Counter[str]) -> int:
    tool = rng.choice(TOOLS)
    child = telemetry.track_start(agent, "tool", f"{tool}()", parent_session_id=parent, metadata={"tool": tool}, timestamp=t)
    t += rng.randint(40, 900)
    telemetry.track_end(child, "completed", timestamp=t)
    counts["events"] += 2
    counts["tool_sessions"] += 1
    return t + rng.randint(100, 600)


def describe(summary: DemoSummary) -> list[str]:
    """Lines a person reads after the demo."""
    agents = ", ".join(f"{agent} {n}" for agent, n in sorted(summary.by_agent.items()))
    status = ", ".join(f"{status} {n}" for status, n in sorted(summary.by_status.items()))
    return [
        f"Recorded {summary.sessions} agent sessions, {summary.tool_calls} tool calls (child sessions) "
        f"and {summary.events} events.",
        f"  agents: {agents}",
        f"  status: {status}",
        f"  tokens: {summary.tokens:,}",
    ]
