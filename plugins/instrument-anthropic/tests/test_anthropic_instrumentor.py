"""The anthropic instrumentor alone: the entry point, the cache rule for input, patching and restoring.

The calls themselves, against a fake server with the real SDK, are tested in tests/genai/test_instrument.py.
"""

from __future__ import annotations

import pytest

anthropic = pytest.importorskip("anthropic")

from anthropic.resources.messages import AsyncMessages, Messages  # noqa: E402
from anthropic.types import Usage  # noqa: E402

from vibekit_telemetry import TelemetryService  # noqa: E402
from vibekit_telemetry.instrumentation import installed_instrumentors  # noqa: E402
from vibekit_telemetry_instrument_anthropic import AnthropicInstrumentor, tokens_of  # noqa: E402


def test_the_entry_point_names_the_instrumentor():
    assert installed_instrumentors()["anthropic"].load() is AnthropicInstrumentor


def test_input_includes_the_cache_counts_anthropic_leaves_out():
    usage = Usage(input_tokens=15, output_tokens=5, cache_read_input_tokens=16, cache_creation_input_tokens=8)
    assert tokens_of(usage) == {"input": 39, "output": 5, "cache_read": 16, "cache_creation": 8}
    assert tokens_of({"input_tokens": 3, "output_tokens": 1}) == {"input": 3, "output": 1, "cache_read": 0,
                                                                  "cache_creation": 0}


def test_instrument_and_uninstrument_put_the_same_functions_back(tmp_path):
    originals = {(cls, name): cls.__dict__[name] for cls in (Messages, AsyncMessages) for name in ("create", "stream")}
    with TelemetryService(storage=[{"type": "memory"}], data_dir=str(tmp_path)) as telemetry:
        instrumentor = AnthropicInstrumentor()
        instrumentor.instrument(telemetry)
        assert all(cls.__dict__[name] is not fn for (cls, name), fn in originals.items())
        instrumentor.uninstrument()
    assert all(cls.__dict__[name] is fn for (cls, name), fn in originals.items())
