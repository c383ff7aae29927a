"""A call's hold on its tenant's budget windows: reserved before the call, grown while
it may cost more, settled when it ends.

Admission reserves the call's estimate (prompt tokens plus expected output, at the
dearest price its model name bills) and hands the call a `Hold`. Each part of the
call that reaches a model (one per gateway call: a cascade makes several) takes a
`Claim` on it and says, before spending, how much it may cost:

- the gateway, before each model group it tries: the group's dearest price for the
  estimate, so a fallback to a dearer group is covered before it is called;
- a stream, as its output outgrows the estimate.

Claims that fit in what is reserved cost nothing more. A claim beyond it reserves the
difference, atomically, in every window; when that does not fit, `cover` says no and
the caller does not spend (it fails the fallback with 402, or stops the stream). So
the sum of what calls can be billed never passes a window's limit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from areion.control.budgets import BudgetWindow, exceeded
from areion.errors import BudgetExceededError
from areion.store.counters import BudgetState, Counters, Settle

__all__ = ["Claim", "Hold"]

Reserve = Callable[[float, float], Awaitable[tuple[bool, list[BudgetState]]]]
"""Reserve an amount in the hold's windows for a call already holding the second
argument: (reserved?, the windows as found)."""

# Costs are sums of float products: claims within a rounding error of the reservation fit.
_EPSILON = 1e-12


class Claim:
    """One part of a call (one gateway call) and what it may cost, at most."""

    __slots__ = ("_hold", "amount")

    def __init__(self, hold: Hold) -> None:
        self._hold = hold
        self.amount = 0.0
        """USD this part of the call may cost, as last covered."""

    async def cover(self, usd: float) -> bool:
        """Make sure this part may cost up to `usd`; False (and nothing taken) if the
        budget cannot hold it."""
        if usd <= self.amount:
            return True
        hold = self._hold
        more = usd - self.amount
        short = hold.claimed + more - hold.reserved
        if short > _EPSILON and not await hold.grow(short):
            return False
        hold.claimed += more
        self.amount = usd
        return True

    async def release(self) -> None:
        """This part will not spend what it covered (its model failed, and failures are
        not billed): give it back, so a call waiting for budget is not held up by it."""
        hold = self._hold
        hold.claimed -= self.amount
        self.amount = 0.0
        await hold.trim()

    def refusal(self, usd: float, what: str) -> BudgetExceededError:
        """The error for a `cover(usd)` that failed; `what` says what it was for."""
        hold = self._hold
        short = hold.claimed + usd - self.amount - hold.reserved
        return exceeded(
            hold.windows,
            hold.refused,
            short,
            hold.clock(),
            clause=f"{what} may cost ${short:.6f} more than this call reserved",
        )


class Hold:
    """What one admitted call holds of its tenant's budget windows."""

    __slots__ = (
        "_counters",
        "_notify",
        "_reserve",
        "_unsettled",
        "booked",
        "claimed",
        "clock",
        "max_output_tokens",
        "output_tokens",
        "prompt_tokens",
        "refused",
        "reserved",
        "windows",
    )

    def __init__(
        self,
        counters: Counters,
        windows: tuple[BudgetWindow, ...],
        *,
        reserve: Reserve,
        reserved: float,
        prompt_tokens: int,
        output_tokens: int,
        max_output_tokens: int | None,
        clock: Callable[[], float],
        notify: Callable[[], None] | None = None,
    ) -> None:
        self._counters = counters
        self._reserve = reserve
        self._notify = notify
        self.clock = clock
        self.windows = windows
        self._unsettled = list(windows)
        self.reserved = reserved
        """USD reserved in every window."""
        self.claimed = 0.0
        """USD the call's parts may cost, together (never above `reserved`)."""
        self.prompt_tokens = prompt_tokens
        """The prompt's tokens, as estimated at admission."""
        self.output_tokens = output_tokens
        """Output tokens the reservation was made for (all choices)."""
        self.max_output_tokens = max_output_tokens
        """The client's cap on output tokens (`max_tokens` times `n`), if it set one."""
        self.booked = 0.0
        """USD accounting has booked in the ledger for the call so far (all its parts)."""
        self.refused: list[BudgetState] = []
        """The windows as the last refused `grow` found them."""

    def claim(self) -> Claim:
        """A new part of the call, which may cost nothing until it covers an amount."""
        return Claim(self)

    async def grow(self, usd: float) -> bool:
        """Reserve `usd` more in every window (waiting, like admission, while only calls
        in flight stand in the way), or nothing if one cannot hold it."""
        ok, states = await self._reserve(usd, self.reserved)
        if ok:
            self.reserved += usd
        else:
            self.refused = states
        return ok

    async def trim(self) -> None:
        """Give back what is reserved beyond what the call's parts have claimed."""
        spare = self.reserved - self.claimed
        if spare <= _EPSILON:
            return
        for window in self.windows:
            await self._counters.settle(window.key, spare, 0.0)
        self.reserved -= spare
        if self._notify is not None:
            self._notify()

    def book(self, usd: float) -> None:
        """Count what accounting booked in the ledger for a part of the call."""
        self.booked += usd

    def settlements(self) -> list[Settle]:
        """What settling the hold does to each window not settled yet: release the
        reservation, keep what the ledger booked for the call (for `Counters.release`;
        then `settled`)."""
        return [
            Settle(key=w.key, reserved=self.reserved, spent=self.booked) for w in self._unsettled
        ]

    def settled(self) -> None:
        """The `settlements` were made."""
        self._unsettled.clear()
        self.reserved = self.claimed = 0.0
        if self._notify is not None:
            self._notify()

    async def settle(self) -> None:
        """Release the reservation; the windows keep what the ledger booked for the call.

        If the counters fail part way, calling it again settles only the windows left."""
        while self._unsettled:
            await self._counters.settle(self._unsettled[0].key, self.reserved, self.booked)
            self._unsettled.pop(0)
        self.settled()
