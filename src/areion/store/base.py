"""The store seam: every piece of state that must outlive a process goes through it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from areion.types import LedgerEntry

__all__ = ["Store"]


@runtime_checkable
class Store(Protocol):
    """Durable state shared by every replica that points at the same backend."""

    async def append_ledger(self, entries: Sequence[LedgerEntry]) -> None:
        """Write spend records; all or none of them land."""
        ...

    async def ledger(
        self, *, tenant: str | None = None, request_id: str | None = None, limit: int = 1000
    ) -> list[LedgerEntry]:
        """Recent spend records, newest first, filtered by tenant or request."""
        ...

    async def aclose(self) -> None:
        """Flush and release the backend."""
        ...
