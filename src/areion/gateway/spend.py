"""What the gateway may spend on a call with a budget, and the guard on a stream's output.

Admission hands a budgeted call a hold on its tenant's budget (`control.holds.Hold`);
the gateway sees it through the two small protocols here. Before each model group it
tries, the gateway covers that group's dearest price for the call's estimate, so a
fallback to a dearer group is paid for before it is called, or refused. A stream's
`OutputGuard` covers its output as it grows past the estimate and stops the stream
when the budget cannot cover more, or when the upstream ignores `max_tokens`.
"""

from __future__ import annotations

import math
from typing import Protocol

from areion.errors import BudgetExceededError
from areion.pricing import Price
from areion.tokenizer import count_tokens
from areion.types import StreamChunk

__all__ = ["Claim", "OutputGuard", "SpendHold"]

# An upstream's tokenizer may count the same text differently from ours (cl100k): a
# stream stops for ignoring max_tokens only well past it.
_CAP_SLACK = 1.25
_CAP_EXTRA = 16
# A stream stops before a chunk could take it past what is covered; chunks are a few
# tokens, and a larger one (rare) is booked in full.
_MAX_MARGIN = 64


class Claim(Protocol):
    """One gateway call's share of a hold."""

    amount: float

    async def cover(self, usd: float) -> bool:
        """Make sure this call may cost up to `usd`; False if the budget cannot hold it."""
        ...

    async def release(self) -> None:
        """What this call covered will not be spent (an attempt failed): give it back."""
        ...

    def refusal(self, usd: float, what: str) -> BudgetExceededError:
        """The error for a `cover(usd)` that failed; `what` says what it was for."""
        ...


class SpendHold(Protocol):
    """A budgeted call's hold, as the gateway uses it."""

    prompt_tokens: int
    output_tokens: int
    max_output_tokens: int | None

    def claim(self) -> Claim: ...


class OutputGuard:
    """Watches a budgeted stream's output: what is read next must be covered first.

    Before the output can outgrow what the claim covers (the output so far plus the
    largest chunk seen), more is covered; when the budget cannot cover more, the stream
    stops before the next chunk is read. Up to the client's `max_tokens` nothing more is
    asked of a hold that covers it (a well-behaved upstream stops there); past it the
    upstream is ignoring it, and it is read only up to `max_tokens` x 1.25 + 16 (our
    tokenizer may count its text differently), covered as it goes.

    Counting tokens on every chunk would cost a BPE encode each; instead the text's
    size bounds its tokens (a token is at least one UTF-8 byte), and the new text is
    counted only when that bound could pass what is covered.
    """

    __slots__ = (
        "_bound",
        "_cap",
        "_claim",
        "_margin",
        "_pending",
        "_price",
        "_prompt",
        "covered",
        "tokens",
    )

    def __init__(self, claim: Claim, price: Price, *, prompt_tokens: int, cap: int | None) -> None:
        self._claim = claim
        self._price = price
        self._prompt = prompt_tokens
        self._cap = cap
        self._pending: list[str] = []
        self._bound = 0
        self._margin = 1
        self.tokens = 0
        """Output tokens counted so far."""
        left = claim.amount * 1_000_000 - prompt_tokens * price.input
        self.covered = max(0, math.floor(left / price.output))
        """Output tokens the claim covers."""

    def _need(self, tokens: int) -> int:
        """Output tokens that must be covered before reading on after `tokens`."""
        need = tokens + self._margin
        if self._cap is not None and tokens <= self._cap:
            need = min(need, self._cap)
        return need

    def passes(self, chunk: StreamChunk) -> bool:
        """Add `chunk`'s output; True when more must be covered before reading on."""
        pieces = self._pending
        bound = 0
        if chunk.content:
            pieces.append(chunk.content)
            bound += _max_tokens(chunk.content)
            self._margin = max(self._margin, _likely_tokens(chunk.content))
        for call in chunk.tool_calls or ():
            for text in (call.name, call.arguments):
                if text:
                    pieces.append(text)
                    bound += _max_tokens(text)
                    self._margin = max(self._margin, _likely_tokens(text))
        self._bound += bound
        if self._need(self.tokens + self._bound) <= self.covered:
            return False
        if pieces:
            self.tokens += count_tokens("".join(pieces))
            pieces.clear()
        self._bound = 0
        return self._need(self.tokens) > self.covered

    @property
    def past_cap(self) -> bool:
        """Whether the output is past the client's max_tokens (a stop then says the
        upstream ignores it, rather than that the budget ran out)."""
        return self._cap is not None and self.tokens > self._cap

    def _cap_limit(self) -> int:
        assert self._cap is not None
        return math.ceil(self._cap * _CAP_SLACK) + _CAP_EXTRA

    async def extend(self) -> bool:
        """Cover more output (half again what was produced); False: stop reading."""
        need = self._need(self.tokens)
        target = max(need, self.tokens + 64, self.tokens * 3 // 2)
        if self._cap is not None:
            limit = self._cap_limit()
            if need > limit:
                return False  # the upstream ignores max_tokens
            target = min(target, limit)
        usd = (self._prompt * self._price.input + target * self._price.output) / 1_000_000
        if not await self._claim.cover(usd):
            return False
        self.covered = max(self.covered, target)
        return True


def _max_tokens(text: str) -> int:
    """An upper bound of `text`'s tokens: its UTF-8 length, without encoding it."""
    return len(text) if text.isascii() else 4 * len(text)


def _likely_tokens(text: str) -> int:
    """About as many tokens as `text` may have, on the high side (three characters a
    token for ASCII): the size of a chunk to leave room for."""
    if not text.isascii():
        return min(_MAX_MARGIN, 4 * len(text))
    return min(_MAX_MARGIN, -(-len(text) // 3))
