"""Estimated cost per model: a versioned table of list prices, extended or overridden in configuration.

Prices are US dollars per million tokens: ``input`` (uncached prompt tokens),
``output``, ``cache_read`` and ``cache_write`` (prompt tokens read from or
written to the provider's prompt cache) and optionally ``reasoning`` (when a
provider bills reasoning tokens differently from other output).  Token counts
follow :class:`vibekit_telemetry.TokenUsage`: cache reads and writes are subsets
of input, reasoning is a subset of output, so each token is priced once.

The table is an estimate from the providers' published list prices on
``PRICE_TABLE_VERSION``; batch, regional and long-context surcharges are not
modelled.  Override or add models with ``analytics.prices``::

    [analytics.prices."my-finetune"]
    input = 3.0
    output = 12.0
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import attrs

PRICE_TABLE_VERSION = "2026-11-01"


@attrs.frozen
class Price:
    """USD per million tokens."""

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None
    reasoning: float | None = None

    def cost(self, tokens: list[int] | tuple[int, ...]) -> float:
        """Dollars for ``[input, output, cache_read, cache_creation, reasoning]`` token counts."""
        inp, out, cache_read, cache_creation, reasoning = tokens
        uncached = max(0, inp - cache_read - cache_creation)
        dollars = uncached * self.input
        dollars += cache_read * (self.cache_read if self.cache_read is not None else self.input)
        dollars += cache_creation * (self.cache_write if self.cache_write is not None else self.input)
        if self.reasoning is not None:
            dollars += max(0, out - reasoning) * self.output + reasoning * self.reasoning
        else:
            dollars += out * self.output
        return dollars / 1_000_000


def _p(inp: float, out: float, cache_read: float | None = None, cache_write: float | None = None) -> Price:
    return Price(inp, out, cache_read, cache_write)


#: Model name prefixes (lower case) and their list prices on PRICE_TABLE_VERSION.
DEFAULT_PRICES: dict[str, Price] = {
    # OpenAI (cached input at the published discount; no cache-write charge)
    "gpt-5": _p(1.25, 10.0, 0.125),
    "gpt-5-mini": _p(0.25, 2.0, 0.025),
    "gpt-5-nano": _p(0.05, 0.40, 0.005),
    "gpt-4.1": _p(2.0, 8.0, 0.50),
    "gpt-4.1-mini": _p(0.40, 1.60, 0.10),
    "gpt-4.1-nano": _p(0.10, 0.40, 0.025),
    "gpt-4o": _p(2.50, 10.0, 1.25),
    "gpt-4o-mini": _p(0.15, 0.60, 0.075),
    "o3": _p(2.0, 8.0, 0.50),
    "o3-mini": _p(1.10, 4.40, 0.55),
    "o4-mini": _p(1.10, 4.40, 0.275),
    "o1": _p(15.0, 60.0, 7.50),
    # Anthropic (cache writes at 1.25x input, cache reads at 0.1x input)
    "claude-opus-4-5": _p(5.0, 25.0, 0.50, 6.25),
    "claude-opus-4": _p(15.0, 75.0, 1.50, 18.75),
    "claude-sonnet-4": _p(3.0, 15.0, 0.30, 3.75),
    "claude-haiku-4": _p(1.0, 5.0, 0.10, 1.25),
    "claude-3-7-sonnet": _p(3.0, 15.0, 0.30, 3.75),
    "claude-3-5-sonnet": _p(3.0, 15.0, 0.30, 3.75),
    "claude-3-5-haiku": _p(0.80, 4.0, 0.08, 1.0),
    "claude-3-opus": _p(15.0, 75.0, 1.50, 18.75),
    "claude-3-sonnet": _p(3.0, 15.0, 0.30, 3.75),
    "claude-3-haiku": _p(0.25, 1.25, 0.03, 0.30),
    # Google (prompts up to 200k tokens)
    "gemini-2.5-pro": _p(1.25, 10.0, 0.31),
    "gemini-2.5-flash": _p(0.30, 2.50, 0.075),
    "gemini-2.5-flash-lite": _p(0.10, 0.40, 0.025),
    "gemini-2.0-flash": _p(0.10, 0.40, 0.025),
    # Mistral, DeepSeek
    "mistral-large": _p(2.0, 6.0),
    "mistral-small": _p(0.10, 0.30),
    "deepseek-chat": _p(0.27, 1.10, 0.07),
    "deepseek-reasoner": _p(0.55, 2.19, 0.14),
}

#: model names whose price lookup is remembered: model names come from ingest clients, so the memory is bounded
_LOOKUP_CACHE_SIZE = 4096
_UNSEEN = object()

_PREFIXES = ("anthropic/", "openai/", "google/", "models/", "mistral/", "deepseek/", "vertex_ai/", "bedrock/")


class PriceTable:
    """Look up a model's price by its name: exact match first, then the longest matching prefix."""

    def __init__(self, overrides: Mapping[str, Any] | None = None, *, bill_failed: bool = False) -> None:
        self.prices: dict[str, Price] = dict(DEFAULT_PRICES)
        for name, value in (overrides or {}).items():
            self.prices[name.lower()] = value if isinstance(value, Price) else Price(**value)
        self.bill_failed = bill_failed
        self._keys = sorted(self.prices, key=len, reverse=True)
        self._cache: dict[str, Price | None] = {}
        #: identifies these prices: the rollups store dollars, so rollups counted under other prices are recounted
        self.fingerprint = hashlib.sha256(repr(sorted(self.prices.items())).encode()).hexdigest()[:16]

    def lookup(self, model: str) -> Price | None:
        """The price of ``model`` (``claude-3-5-sonnet-20241022`` finds ``claude-3-5-sonnet``), or ``None``."""
        # one read: the flusher and readers share the cache, and it may be cleared between two
        cached = self._cache.get(model, _UNSEEN)
        if cached is not _UNSEEN:
            return cached  # type: ignore[return-value]
        name = model.lower()
        for prefix in _PREFIXES:
            name = name.removeprefix(prefix)
        name = name.replace("claude-sonnet-3", "claude-3-sonnet")
        found = self.prices.get(name)
        if found is None:
            found = next((self.prices[k] for k in self._keys if name.startswith(k)), None)
        if len(self._cache) >= _LOOKUP_CACHE_SIZE:
            self._cache.clear()
        self._cache[model] = found
        return found

    def cost(self, model: str, tokens: list[int], failed_tokens: list[int]) -> float | None:
        """Estimated dollars for a model's tokens; failed calls are free unless ``bill_failed``."""
        price = self.lookup(model)
        if price is None:
            return None
        billable = tokens if self.bill_failed else [max(0, a - b) for a, b in zip(tokens, failed_tokens, strict=True)]
        return price.cost(billable)
