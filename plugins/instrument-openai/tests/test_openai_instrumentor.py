"""The openai instrumentor alone: found by entry point, patches and restores the SDK, reads usage details.

The calls themselves, against a fake server with the real SDK, are tested in tests/genai/test_instrument.py.
"""

from __future__ import annotations

import pytest

openai = pytest.importorskip("openai")

from openai.resources.chat.completions import Completions  # noqa: E402
from openai.types.completion_usage import CompletionTokensDetails, CompletionUsage, PromptTokensDetails  # noqa: E402

from vibekit_telemetry import TelemetryService  # noqa: E402
from vibekit_telemetry.instrumentation import installed_instrumentors  # noqa: E402
from vibekit_telemetry_instrument_openai import OpenAIInstrumentor, _chat_usage  # noqa: E402


def test_the_entry_point_names_the_instrumentor():
    assert installed_instrumentors()["openai"].load() is OpenAIInstrumentor


def test_usage_keeps_cached_and_reasoning_tokens():
    usage = CompletionUsage(prompt_tokens=1200, completion_tokens=80, total_tokens=1280,
                            prompt_tokens_details=PromptTokensDetails(cached_tokens=1000),
                            completion_tokens_details=CompletionTokensDetails(reasoning_tokens=16))
    assert _chat_usage(usage) == {"input": 1200, "output": 80, "cache_read": 1000, "reasoning": 16}


def test_instrument_and_uninstrument_put_the_same_function_back(tmp_path):
    original = Completions.__dict__["create"]
    with TelemetryService(storage=[{"type": "memory"}], data_dir=str(tmp_path)) as telemetry:
        instrumentor = OpenAIInstrumentor()
        instrumentor.instrument(telemetry)
        wrapped = Completions.__dict__["create"]
        assert wrapped is not original and wrapped.__wrapped__ is original  # functools.wraps: same name and doc
        assert wrapped.__name__ == original.__name__
        instrumentor.uninstrument()
    assert Completions.__dict__["create"] is original
