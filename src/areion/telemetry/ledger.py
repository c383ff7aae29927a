"""The spend ledger: every call's cost, written to the store off the hot path.

`record()` only appends to a buffer; a background task writes the buffer in one
transaction every `interval` seconds (or sooner when it fills). `flush()` and
`aclose()` write what is pending, so a clean shutdown loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from areion.store.base import Store
from areion.types import LedgerEntry

__all__ = ["Ledger"]

log = logging.getLogger("areion.ledger")


class Ledger:
    """Buffered writer of `LedgerEntry` records."""

    def __init__(self, store: Store, *, interval: float = 0.05, batch: int = 512) -> None:
        self._store = store
        self._interval = interval
        self._batch = batch
        self._pending: list[LedgerEntry] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def record(self, entry: LedgerEntry) -> None:
        self._pending.append(entry)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        if len(self._pending) >= self._batch:
            self._wake.set()

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._store.append_ledger(batch)
            except Exception:
                # Keep the records: a later flush retries them rather than losing spend.
                self._pending[:0] = batch
                log.exception("writing %d ledger entries failed; will retry", len(batch))
                return

    async def aclose(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await self._task
            except Exception:
                log.exception("ledger writer failed")
            self._task = None
        await self.flush()
