"""Counters: the atomic operations behind rate limits and budgets.

Every operation is one atomic step over the counters it names: it checks and
updates all of them, or none. `MemoryCounters` is the embedded implementation:
atomic because its methods never await between the check and the update, so no
other task can run in between. A shared backend (Redis) implements the same
protocol with one Lua script per operation, so replicas share one set of
buckets and budgets instead of each enforcing the limit on its own.

Token buckets hold `burst` tokens and refill at `rate` tokens per second; a take
that does not fit takes nothing and says how long until it would fit. A budget
window counts what was spent and what calls in flight have reserved; a
reservation fits only if spent + reserved + amount stays within the limit.

A budget window must be seeded (`seed`, with the spend the ledger holds for it)
before anything is reserved in it: a reservation in a window the counters do not
know reserves nothing and says which windows are unknown, and a settlement of one is
dropped. So a backend that forgot its windows (a Redis restarted without persistence)
never starts a budget again from zero: admission seeds it from the ledger first.

A call's admission and its release are each one step too (`admit`, `release`): the
takes and reservations of one call, or its refunds and settlements, in one atomic
operation, so a shared backend answers each with one round trip. A release is sent
when it is called, before anything sent after it, but its acknowledgement may be
awaited later: the answer to a call need not wait for it.

Buckets refill by the `now` their callers pass. A bucket remembers the latest `now`
it was counted at and never goes back: a caller whose clock is behind (another
replica's, or this one's after a step back) refills nothing, so no interval is
refilled twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple, Protocol, TypeVar, runtime_checkable

from areion.errors import BackendUnavailableError

T = TypeVar("T")

__all__ = [
    "Admit",
    "BucketState",
    "BudgetState",
    "Counters",
    "FailOpenCounters",
    "MemoryCounters",
    "Reservation",
    "Settle",
    "Take",
]


class Take(NamedTuple):
    """Take `amount` tokens from the bucket `key`."""

    key: str
    """The bucket (for example `rpm:tenant:acme`)."""
    amount: float
    """Tokens to take."""
    rate: float
    """Refill, tokens per second."""
    burst: float
    """Capacity: a bucket starts full."""


class BucketState(NamedTuple):
    """A bucket right after a take (or a refused take)."""

    remaining: float
    """Tokens left (negative: a debt from usage beyond a reservation)."""
    retry_after: float
    """Seconds until the take would fit; 0 when it was taken."""
    reset: float
    """Seconds until the bucket is full again."""


class Reservation(NamedTuple):
    """Reserve `amount` of the budget window `key`, whose limit is `limit`."""

    key: str
    """The budget window (for example `usd:day:acme:2025-01-31`)."""
    amount: float
    """What the call may cost, at most (the estimate)."""
    limit: float
    """The window's limit."""


class BudgetState(NamedTuple):
    """A budget window as a reservation found it."""

    spent: float
    """Settled spend in the window."""
    reserved: float
    """Held by calls in flight (including this one, if it fit)."""
    known: bool = True
    """False: the window was never seeded; nothing was reserved (seed it, then retry)."""


class Admit(NamedTuple):
    """What `admit` found: both parts fit, and then both were done, or neither was."""

    taken: bool
    """Every bucket had the tokens."""
    buckets: list[BucketState]
    """The buckets, in order (after the take, if it was done)."""
    reserved: bool
    """Every window could hold the reservation (and was known); with `taken`, it was
    reserved."""
    budgets: list[BudgetState]
    """The windows, in order (after the reservation, if it was done)."""

    @property
    def done(self) -> bool:
        """Both were done."""
        return self.taken and self.reserved


class Settle(NamedTuple):
    """Release `reserved` of the budget window `key` and add `spent` to it."""

    key: str
    reserved: float
    spent: float


@runtime_checkable
class Counters(Protocol):
    """Atomic token buckets and budget windows, shared by every replica of a backend."""

    async def take(self, takes: Sequence[Take], now: float) -> tuple[bool, list[BucketState]]:
        """Take from every bucket, or (if one lacks tokens) from none; states in order."""
        ...

    async def give(self, take: Take, amount: float, now: float) -> None:
        """Return `amount` tokens to a bucket (negative: take them even into debt);
        nothing for a bucket never taken from (or forgotten by a restart)."""
        ...

    async def reserve(self, reservations: Sequence[Reservation]) -> tuple[bool, list[BudgetState]]:
        """Reserve in every window, or (if one would exceed its limit, or one is unknown:
        see `BudgetState.known`) in none."""
        ...

    async def settle(self, key: str, reserved: float, spent: float) -> None:
        """Release a reservation of a window and add what the call really cost (nothing
        for a window the counters do not know: the ledger will seed it)."""
        ...

    async def seed(self, key: str, spent: float) -> None:
        """Start a window's spend at `spent` (from the ledger) unless it is already known."""
        ...

    async def admit(
        self, takes: Sequence[Take], reservations: Sequence[Reservation], now: float
    ) -> Admit:
        """`take` and `reserve` as one step: both if both fit, else neither."""
        ...

    def release(
        self, gives: Sequence[tuple[Take, float]], settles: Sequence[Settle], now: float
    ) -> Awaitable[None] | None:
        """`give` (take, amount) and `settle` as one step, done (in memory: None) or sent
        (shared: the awaitable of its acknowledgement) before this returns, so it comes
        before any operation called after it."""
        ...


def _fits(levels: list[float], takes: Sequence[Take]) -> bool:
    return all(level >= take.amount for level, take in zip(levels, takes, strict=True))


def _level(bucket: list[float], take: Take, now: float) -> float:
    tokens, updated = bucket
    if now > updated:
        tokens = min(take.burst, tokens + (now - updated) * take.rate)
    return tokens


class MemoryCounters:
    """`Counters` in this process's memory (the embedded mode)."""

    def __init__(self) -> None:
        self._buckets: dict[str, list[float]] = {}  # key -> [tokens, updated]
        self._budgets: dict[str, list[float]] = {}  # key -> [spent, reserved]

    def _bucket(self, take: Take, now: float) -> list[float]:
        bucket = self._buckets.get(take.key)
        if bucket is None:
            bucket = self._buckets[take.key] = [take.burst, now]
        return bucket

    async def take(self, takes: Sequence[Take], now: float) -> tuple[bool, list[BucketState]]:
        # No await in here: the check and the update are one step for the event loop.
        levels = self._levels(takes, now)
        ok = _fits(levels, takes)
        return ok, self._take(takes, levels, now, commit=ok)

    def _levels(self, takes: Sequence[Take], now: float) -> list[float]:
        return [_level(self._bucket(take, now), take, now) for take in takes]

    def _take(
        self, takes: Sequence[Take], levels: list[float], now: float, *, commit: bool
    ) -> list[BucketState]:
        states: list[BucketState] = []
        for level, take in zip(levels, takes, strict=True):
            if commit:
                level -= take.amount
                self._buckets[take.key] = [level, max(now, self._buckets[take.key][1])]
                wait = 0.0
            else:
                wait = max(0.0, (take.amount - level) / take.rate)
            states.append(
                BucketState(
                    remaining=level, retry_after=wait, reset=(take.burst - level) / take.rate
                )
            )
        return states

    async def give(self, take: Take, amount: float, now: float) -> None:
        bucket = self._buckets.get(take.key)
        if bucket is None:
            return  # nothing was taken from it
        level = _level(bucket, take, now)
        bucket[0] = min(take.burst, level + amount)
        bucket[1] = max(now, bucket[1])

    async def reserve(self, reservations: Sequence[Reservation]) -> tuple[bool, list[BudgetState]]:
        ok, windows = self._fit(reservations)
        return ok, self._reserve(reservations, windows, commit=ok)

    def _fit(self, reservations: Sequence[Reservation]) -> tuple[bool, list[list[float] | None]]:
        """Whether every reservation fits (its window known), and the windows."""
        found = [self._budgets.get(r.key) for r in reservations]
        ok = all(
            window is not None and window[0] + window[1] + r.amount <= r.limit
            for window, r in zip(found, reservations, strict=True)
        )
        return ok, found

    @staticmethod
    def _reserve(
        reservations: Sequence[Reservation], windows: list[list[float] | None], *, commit: bool
    ) -> list[BudgetState]:
        if commit:
            for window, r in zip(windows, reservations, strict=True):
                assert window is not None
                window[1] += r.amount
        return [
            BudgetState(spent=0.0, reserved=0.0, known=False)
            if window is None
            else BudgetState(spent=window[0], reserved=window[1])
            for window in windows
        ]

    async def settle(self, key: str, reserved: float, spent: float) -> None:
        window = self._budgets.get(key)
        if window is None:
            return
        window[1] = max(0.0, window[1] - reserved)
        window[0] += spent

    async def seed(self, key: str, spent: float) -> None:
        self._budgets.setdefault(key, [spent, 0.0])

    async def admit(
        self, takes: Sequence[Take], reservations: Sequence[Reservation], now: float
    ) -> Admit:
        levels = self._levels(takes, now)
        taken = _fits(levels, takes)
        reserved, windows = self._fit(reservations)
        done = taken and reserved
        return Admit(
            taken=taken,
            buckets=self._take(takes, levels, now, commit=done),
            reserved=reserved,
            budgets=self._reserve(reservations, windows, commit=done),
        )

    def release(
        self, gives: Sequence[tuple[Take, float]], settles: Sequence[Settle], now: float
    ) -> None:
        for take, amount in gives:
            bucket = self._buckets.get(take.key)
            if bucket is not None:
                bucket[0] = min(take.burst, _level(bucket, take, now) + amount)
                bucket[1] = max(now, bucket[1])
        for settle in settles:
            window = self._budgets.get(settle.key)
            if window is not None:
                window[1] = max(0.0, window[1] - settle.reserved)
                window[0] += settle.spent

    def spent(self, key: str) -> float:
        """Settled spend of a window (for tests and reports)."""
        return self._budgets.get(key, [0.0, 0.0])[0]


class FailOpenCounters:
    """Counters that, while the shared backend is down, fall back to this process's own.

    For a deployment that prefers serving to refusing when Redis is unreachable: each
    replica then enforces the limits on its own (N replicas may let N times through),
    and `on_fallback` is told (a metric, a warning), so it is never silent. Without
    this wrapper a call is refused with 503 instead (fail closed)."""

    def __init__(self, primary: Counters, *, on_fallback: Callable[[str], None]) -> None:
        self._primary = primary
        self._local = MemoryCounters()
        self._on_fallback = on_fallback

    async def _either(
        self, operation: str, primary: Awaitable[T], local: Callable[[], Awaitable[T]]
    ) -> T:
        try:
            return await primary
        except BackendUnavailableError:
            self._on_fallback(operation)
            return await local()

    async def take(self, takes: Sequence[Take], now: float) -> tuple[bool, list[BucketState]]:
        return await self._either(
            "take", self._primary.take(takes, now), lambda: self._local.take(takes, now)
        )

    async def give(self, take: Take, amount: float, now: float) -> None:
        await self._either(
            "give",
            self._primary.give(take, amount, now),
            lambda: self._local.give(take, amount, now),
        )

    async def reserve(self, reservations: Sequence[Reservation]) -> tuple[bool, list[BudgetState]]:
        return await self._either(
            "reserve",
            self._primary.reserve(reservations),
            lambda: self._local.reserve(reservations),
        )

    async def settle(self, key: str, reserved: float, spent: float) -> None:
        await self._either(
            "settle",
            self._primary.settle(key, reserved, spent),
            lambda: self._local.settle(key, reserved, spent),
        )

    async def seed(self, key: str, spent: float) -> None:
        await self._either(
            "seed", self._primary.seed(key, spent), lambda: self._local.seed(key, spent)
        )

    async def admit(
        self, takes: Sequence[Take], reservations: Sequence[Reservation], now: float
    ) -> Admit:
        return await self._either(
            "admit",
            self._primary.admit(takes, reservations, now),
            lambda: self._local.admit(takes, reservations, now),
        )

    def release(
        self, gives: Sequence[tuple[Take, float]], settles: Sequence[Settle], now: float
    ) -> Awaitable[None] | None:
        try:
            pending = self._primary.release(gives, settles, now)
        except BackendUnavailableError:
            self._on_fallback("release")
            self._local.release(gives, settles, now)
            return None
        if pending is None:
            return None

        async def local() -> None:
            self._local.release(gives, settles, now)

        return self._either("release", pending, local)
