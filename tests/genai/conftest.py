"""Fixtures for the GenAI tests: the fake LLM server and the OTLP receiver, each a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .fake_llm import FakeLLM
from .otlp_receiver import OTLPReceiver


@pytest.fixture(scope="module")
def fake_llm() -> Iterator[FakeLLM]:
    """The fake OpenAI/Anthropic server, shared by a module's tests (it keeps no state but ``requests``)."""
    with FakeLLM() as server:
        yield server


@pytest.fixture
def otlp_receiver() -> Iterator[OTLPReceiver]:
    """A server that records every OTLP/HTTP request it receives."""
    with OTLPReceiver() as server:
        yield server
