"""How many output tokens a call will produce, learned from what each model produced.

Admission reserves a call's estimated tokens and cost before the call. Reserving the
full `max_tokens` (or a blunt default when the client sets none) refuses most calls
of a small budget that they would in fact fit: answers are usually far shorter than
their cap. So each model name keeps the output lengths of its recent answers, and a
call reserves their 95th percentile per choice, capped by its own `max_tokens`.
Until a model has answered `min_samples` calls, the configured default stands in.

An answer longer than its estimate is still paid in full (settlement books what it
really cost), and a stream that outgrows what its reservation covers must grow the
reservation or stop (see `control.holds`), so an estimate can be low without a budget
ever being exceeded.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["OutputEstimate"]


class _Lengths:
    """The recent output lengths of one model, and their cached 95th percentile."""

    __slots__ = ("p95", "samples", "unsorted")

    def __init__(self, window: int) -> None:
        self.samples: deque[int] = deque(maxlen=window)
        self.p95: int | None = None
        self.unsorted = 0


class OutputEstimate:
    """Expected output tokens per choice of each model name, from its recent answers."""

    def __init__(
        self,
        default: int,
        *,
        window: int = 256,
        min_samples: int = 20,
        refresh_every: int = 16,
    ) -> None:
        self.default = default
        """Tokens per choice before a model has `min_samples` answers."""
        self._window = window
        self._min_samples = min_samples
        self._refresh_every = refresh_every
        self._models: dict[str, _Lengths] = {}

    def tokens(self, model: str, *, max_tokens: int | None, n: int = 1) -> int:
        """Output tokens to reserve for a call of `model` asking for `n` choices."""
        lengths = self._models.get(model)
        per_choice = self.default
        if lengths is not None and lengths.p95 is not None:
            per_choice = lengths.p95
        if max_tokens is not None:
            per_choice = min(per_choice, max_tokens)
        return per_choice * max(1, n)

    def observe(self, model: str, completion_tokens: int, *, n: int = 1) -> None:
        """Record what a call of `model` produced (over all its `n` choices)."""
        lengths = self._models.get(model)
        if lengths is None:
            lengths = self._models[model] = _Lengths(self._window)
        lengths.samples.append(math.ceil(completion_tokens / max(1, n)))
        lengths.unsorted += 1
        # A sort of a few hundred ints now and then, not one per call.
        if len(lengths.samples) >= self._min_samples and (
            lengths.p95 is None or lengths.unsorted >= self._refresh_every
        ):
            ordered = sorted(lengths.samples)
            lengths.p95 = max(1, ordered[math.ceil(0.95 * len(ordered)) - 1])
            lengths.unsorted = 0
