"""Prices per model and the cost of a call.

Prices are USD per one million tokens. Cached input tokens are billed at the
cached rate (the input rate when the provider has none); the rest of the prompt
at the input rate; every output token, reasoning included, at the output rate.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from areion.types import Usage

__all__ = ["Price", "PriceBound", "cost", "default_price", "price_bound", "round_usd", "usd_text"]


@dataclass(slots=True, frozen=True, kw_only=True)
class Price:
    """USD per one million tokens."""

    input: float
    """Uncached prompt tokens."""
    output: float
    """Completion tokens."""
    cached_input: float | None = None
    """Prompt tokens served from the provider's cache; None bills them as input."""
    batch: float = 0.5
    """What the provider's batch API bills, as a fraction of these prices."""


# List prices of models Areion's own providers and data sets use. A deployment's
# configured `price` always wins over this table.
_LIST_PRICES: dict[str, Price] = {
    "sim-fast": Price(input=0.15, output=0.60, cached_input=0.075),
    "sim-strong": Price(input=2.50, output=10.00, cached_input=1.25),
    "gpt-4o-mini": Price(input=0.15, output=0.60, cached_input=0.075),
    "gpt-4o": Price(input=2.50, output=10.00, cached_input=1.25),
    "gpt-4-1106-preview": Price(input=10.00, output=30.00),
    "gpt-3.5-turbo-1106": Price(input=1.00, output=2.00),
    "mixtral-8x7b-instruct-v0.1": Price(input=0.60, output=0.60),
    "claude-3-5-haiku-latest": Price(input=0.80, output=4.00, cached_input=0.08),
    "claude-sonnet-4-5": Price(input=3.00, output=15.00, cached_input=0.30),
}

_FREE = Price(input=0.0, output=0.0)


def default_price(model: str) -> Price:
    """The list price of a known upstream model id, or zero for an unknown one."""
    return _LIST_PRICES.get(model, _FREE)


def round_usd(amount: float) -> float:
    """Money as it is shown: to 1e-10 USD (a token at the cheapest list price is 1e-8),
    so the float noise of a sum (7.300000000000001e-05) does not show. Sums are kept
    exact; only what leaves for a person or a client is rounded."""
    return round(amount, 10)


def usd_text(amount: float) -> str:
    """Money as a plain decimal string for headers and text: `0.000073`, never `7.3e-05`."""
    return f"{round_usd(amount):.10f}".rstrip("0").rstrip(".")


def cost(usage: Usage, price: Price) -> float:
    """USD cost of `usage` at `price`."""
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    cached_rate = price.input if price.cached_input is None else price.cached_input
    total = (
        (usage.prompt_tokens - cached) * price.input
        + cached * cached_rate
        + usage.completion_tokens * price.output
    )
    return total / 1_000_000


@dataclass(slots=True, frozen=True)
class PriceBound:
    """The highest input and output price (USD per 1M tokens) a model name can bill."""

    input: float
    output: float

    def cost(self, prompt_tokens: int, output_tokens: int) -> float:
        return (prompt_tokens * self.input + output_tokens * self.output) / 1_000_000

    def __add__(self, other: PriceBound) -> PriceBound:
        """The bound of a call that may bill both (a cascade's attempts)."""
        return PriceBound(self.input + other.input, self.output + other.output)


def price_bound(prices: Iterable[Price | PriceBound]) -> PriceBound:
    """An upper bound of `prices`, input and output taken separately (zero if empty)."""
    listed = list(prices)
    return PriceBound(
        max((p.input for p in listed), default=0.0), max((p.output for p in listed), default=0.0)
    )
