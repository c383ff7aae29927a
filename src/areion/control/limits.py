"""Rate limits: requests and tokens per minute, as token buckets, per key, tenant and model.

A limit of N per minute is a bucket of N tokens refilled at N/60 per second, so a
client may spend a minute's allowance in a burst and then one call per refill.
Tokens are taken at admission from an estimate and given back (or taken further)
when the call's real usage is known.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from areion.errors import RateLimitExceededError
from areion.store.counters import BucketState, Take

__all__ = ["RateLimit", "RateReport", "refusal"]

Kind = Literal["requests", "tokens"]


@dataclass(slots=True, frozen=True, kw_only=True)
class RateLimit:
    """One per-minute limit of one scope."""

    scope: str
    """Who is limited, as errors name it: `key 'web'`, `tenant 'acme'`, `model 'fast'`."""
    kind: Kind
    """What is counted."""
    per_minute: int
    """The limit."""
    bucket: str
    """The counters key of its bucket."""
    _one: Take = field(init=False, repr=False, compare=False)

    def take(self, amount: float) -> Take:
        if amount == 1 and self.kind == "requests":
            return self._one
        return Take(
            key=self.bucket, amount=amount, rate=self.per_minute / 60.0, burst=self.per_minute
        )

    def __post_init__(self) -> None:
        # A request's take is the same for every call: made once.
        one = Take(key=self.bucket, amount=1, rate=self.per_minute / 60.0, burst=self.per_minute)
        object.__setattr__(self, "_one", one)


def _seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") + "s"


@dataclass(slots=True, frozen=True)
class RateReport:
    """The buckets a call was admitted (or refused) against, for `x-ratelimit-*` headers."""

    limits: Sequence[RateLimit]
    states: Sequence[BucketState]

    def headers(self) -> dict[str, str]:
        """OpenAI's rate-limit headers, for the limit of each kind with the least left."""
        out: dict[str, str] = {}
        for kind in ("requests", "tokens"):
            pairs = [
                (limit, state)
                for limit, state in zip(self.limits, self.states, strict=True)
                if limit.kind == kind
            ]
            if not pairs:
                continue
            limit, state = min(pairs, key=lambda pair: pair[1].remaining)  # refuses first
            out[f"x-ratelimit-limit-{kind}"] = str(limit.per_minute)
            out[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(state.remaining)))
            out[f"x-ratelimit-reset-{kind}"] = _seconds(max(0.0, state.reset))
        return out


def refusal(report: RateReport, amounts: Sequence[float]) -> RateLimitExceededError:
    """The error for a refused take: it names the limit that did not fit."""
    waits = [
        (state.retry_after, limit, amount)
        for limit, state, amount in zip(report.limits, report.states, amounts, strict=True)
    ]
    wait, limit, amount = max(waits, key=lambda item: item[0])
    unit = "RPM" if limit.kind == "requests" else "TPM"
    message = (
        f"Rate limit reached for {limit.scope} on {limit.kind} per minute ({unit}): "
        f"limit {limit.per_minute}, requested {math.ceil(amount)}. "
        f"Please try again in {_seconds(wait)}."
    )
    headers = report.headers()
    headers["retry-after"] = str(max(1, math.ceil(wait)))
    headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
    error = RateLimitExceededError(message, retry_after=wait, headers=headers)
    error.type = limit.kind  # OpenAI says which kind of limit in the error type
    return error
