"""Realistic event streams for the benchmarks: agent sessions with a start, streamed chunks and an end."""

from __future__ import annotations

import random
from collections.abc import Iterator

from vibekit_telemetry import TelemetryEvent, new_id

AGENTS = ("claude", "codex", "gemini", "copilot", "cursor")
MODELS = {"claude": "claude-sonnet-4-5", "codex": "gpt-4.1", "gemini": "gemini-2.5-pro", "copilot": "gpt-4o",
          "cursor": "claude-haiku-4-5"}
CHUNK = "Here is the next part of the answer, with a little code: `return sorted(items, key=len)` "
PROMPT = "Refactor the retry logic in the payments client so that it backs off exponentially " * 3


def event_dicts(count: int, *, span_ms: int, end_ms: int, seed: int = 1, session_events: int = 12) -> Iterator[dict]:
    """``count`` event mappings forming sessions of ``session_events`` events, spread over ``span_ms`` up to ``end_ms``."""
    rng = random.Random(seed)
    start = end_ms - span_ms
    step = span_ms / max(1, count)
    produced = 0
    while produced < count:
        agent = rng.choice(AGENTS)
        sid = new_id()
        n = min(session_events, count - produced)
        for i in range(n):
            ts = int(start + step * (produced + i))
            if i == 0:
                yield {"event_type": "start", "session_id": sid, "category": agent, "agent": agent, "mode": "code",
                       "prompt": PROMPT, "timestamp": ts, "metadata": {"model": MODELS[agent], "temperature": 0.2}}
            elif i == n - 1:
                yield {"event_type": "end", "session_id": sid, "category": agent, "status": "completed", "timestamp": ts,
                       "metadata": {"model": MODELS[agent], "input_tokens": 1200, "output_tokens": 300}}
            else:
                yield {"event_type": "stream", "session_id": sid, "category": agent, "stream_data": CHUNK,
                       "timestamp": ts, "metadata": {"model": MODELS[agent], "chunk": i}}
        produced += n


def events(count: int, **kwargs) -> list[TelemetryEvent]:
    """The same workload as validated event objects (what the raw baseline inserts)."""
    return [TelemetryEvent.from_dict(d) for d in event_dicts(count, **kwargs)]
