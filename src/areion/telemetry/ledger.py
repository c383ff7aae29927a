"""The spend ledger: every call's cost, in the store before its answer leaves.

A billed call is written with `write()`, which returns once the row is committed:
the store group-commits whatever rows arrive while a transaction is in progress, so
concurrent calls share commits, and a process killed at any moment has every row
whose answer (or whose stream's first byte) it had sent.

A stream's cost is known only when it ends, so its first byte waits for an *open*
row, priced at what the call may cost (its budget reservation, or an estimate); when
the stream ends, `close()` replaces the open row's figures with the real ones. A
crash in between leaves the open row, which overstates rather than loses the spend.

Rows that book no money (cache hits, solver answers) and the closing of open rows are
buffered instead: `record()` and `close()` only append, and a background task writes
the buffer every `interval` seconds (or sooner when it fills). `flush()` and
`aclose()` write what is pending.

When the store is down, nothing is lost: a row that cannot be written is kept, and
until a retry succeeds (every few seconds, backing off) `write()` keeps rows without
waiting for the store. `pending` says how many wait; the runtime refuses new calls
once that passes its bound, rather than serve calls it could not bill.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
from collections.abc import Coroutine, Mapping
from typing import Any

from areion.store.base import Store
from areion.types import LedgerEntry

__all__ = ["Ledger", "attribution"]

log = logging.getLogger("areion.ledger")


def attribution(annotations: Mapping[str, Any], user: str | None) -> dict[str, Any]:
    """A call's attribution fields of `LedgerEntry`, from what the request path noted
    (`Call.annotations`) and the request's own `user` field (the header's wins); none
    for a call with no attribution, whose fields keep their defaults."""
    if user is None and annotations.keys().isdisjoint(_ATTRIBUTED):
        return {}
    get = annotations.get
    return {
        "key_label": get("key") or "",
        "route": get("route") or "",
        "route_reason": get("route_reason") or "",
        "run_id": get("run_id") or "",
        "agent": get("agent") or "",
        "session": get("session") or "",
        "end_user": get("user") or user or "",
        "tags": get("tags") or (),
        "variant": get("variant") or "",
    }


# The annotations `attribution` reads.
_ATTRIBUTED = frozenset(
    ("key", "route", "route_reason", "run_id", "agent", "session", "user", "tags", "variant")
)


class Ledger:
    """The writer of `LedgerEntry` records: durable now, or buffered."""

    def __init__(self, store: Store, *, interval: float = 0.05, batch: int = 512) -> None:
        self._store = store
        self._interval = interval
        self._batch = batch
        # Rows and closings in arrival order: an open row always precedes its closing.
        self._pending: list[LedgerEntry] = []
        self._closing: list[LedgerEntry] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._failures = 0  # consecutive failed writes: the store is down while > 0

    @property
    def pending(self) -> int:
        """Rows and closings not yet written."""
        return len(self._pending) + len(self._closing)

    @property
    def down(self) -> bool:
        """Whether the last write failed (the store is unreachable)."""
        return self._failures > 0

    async def write(self, entry: LedgerEntry) -> None:
        """Write a billed call's row now; returns once it is committed.

        While the store is down the row is kept for the retries instead (the call has
        been paid for, so its answer still goes out)."""
        if self._failures:
            self.record(entry)
            return
        try:
            await self._store.append_ledger([entry])
        except Exception:
            self._failed(1)
            self.record(entry)

    def record(self, entry: LedgerEntry) -> None:
        """Buffer a row; the background task writes it within `interval` seconds."""
        self._pending.append(entry)
        self._poke()

    def close(self, entry: LedgerEntry) -> None:
        """Buffer the real figures of an open row (the same request, tenant and
        deployment), which then stops being open."""
        self._closing.append(dataclasses.replace(entry, open=False) if entry.open else entry)
        self._poke()

    def _poke(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a finalizer at exit): `flush_at_exit` writes it
        if self._task is None or self._task.get_loop() is not loop or self._task.done():
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._run())
        if self.pending >= self._batch and self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        wake = self._wake
        assert wake is not None
        while not self._stopping:
            # While the store is down, retry less and less often (up to every 5 s).
            wait = self._interval if not self._failures else min(5.0, 0.5 * 2**self._failures)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=wait)
            wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write everything pending, in one transaction per batch."""
        while self._pending or self._closing:
            rows, self._pending = self._pending, []
            closing, self._closing = self._closing, []
            try:
                await self._store.append_ledger(rows, closing=closing)
            except Exception:
                # Keep the records: a later flush retries them rather than losing spend.
                self._pending[:0] = rows
                self._closing[:0] = closing
                self._failed(len(rows) + len(closing))
                return
            if self._failures:
                log.warning("the ledger store is back; %d rows written", len(rows) + len(closing))
                self._failures = 0

    def _failed(self, rows: int) -> None:
        if not self._failures:
            log.exception("writing %d ledger rows failed; they are kept and retried", rows)
        self._failures += 1

    def flush_blocking(self) -> None:
        """Write what is pending from synchronous code (a finalizer, at exit), whether
        or not an event loop runs in this thread."""
        rows, closing = self._pending, self._closing
        self._pending, self._closing = [], []
        if not rows and not closing:
            return
        try:
            _run_blocking(self._store.append_ledger(rows, closing=closing))
        except Exception:
            log.exception("writing %d ledger rows at exit failed", len(rows) + len(closing))

    async def aclose(self) -> None:
        self._stopping = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            try:
                await self._task
            except Exception:
                log.exception("ledger writer failed")
            self._task = None
        await self.flush()


def _run_blocking(work: Coroutine[object, object, None]) -> None:
    """Run `work` to its end from synchronous code, inside a running loop or not."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(work)
        return
    # Called inside async code (a collected runtime): that loop cannot be blocked on.
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(work)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run, name="areion-ledger-flush")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
