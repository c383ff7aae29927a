"""One semantic tier's entries, shared by every replica: stored once, mirrored in each.

The store holds the entries of the answer cache and the plan cache (`tier` semantic
or plan): text, vector, payload, expiry, and a threshold lifted by feedback. Each
process keeps its own copy for lookups (the vector index and the decoded entries)
and keeps it in step:

- at start, it loads every live entry;
- an entry stored by any replica is announced on the tier's channel (`Shared`), and
  every replica fetches it at once; a catch-up every `sync_every_s` fetches whatever
  an announcement missed (a replica that was briefly cut off);
- a drop (invalidation) and feedback on a hit are announced, and every replica
  applies them to its copy; the store applies them once, for replicas that start later.

With no store (a cache used on its own, in tests) the mirror only numbers entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import Callable
from typing import Any

import orjson

from areion.store.base import Store
from areion.store.records import CacheEntryRecord, CacheTier
from areion.store.shared import Shared

__all__ = ["Copy", "TierMirror"]

log = logging.getLogger(__name__)


class Copy:
    """What a cache does to its own copy when the tier changes (its callbacks)."""

    def __init__(
        self,
        *,
        add: Callable[[CacheEntryRecord], None],
        drop: Callable[[int], None],
        feedback: Callable[[int, float, bool], None],
        has: Callable[[int], bool],
        hit: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.add = add
        """Add an entry (with its id) to the copy, if it is not there yet."""
        self.drop = drop
        """Remove an entry by id (nothing if it is not there)."""
        self.feedback = feedback
        """Apply a judged hit: entry id, the hit's score, whether it was right."""
        self.has = has
        """Whether the copy holds an entry."""
        self.hit = hit
        """Remember a hit another replica served (so feedback on it may come here)."""


class TierMirror:
    """Keeps a cache's copy of one tier in step with the store and the other replicas."""

    def __init__(
        self,
        tier: CacheTier,
        copy: Copy,
        *,
        store: Store | None = None,
        shared: Shared | None = None,
        sync_every_s: float = 1.0,
    ) -> None:
        self.tier = tier
        self._copy = copy
        self._store = store
        self._shared = shared
        self._channel = f"cache:{tier}"
        self._sync_every_s = sync_every_s
        self._local_ids = itertools.count(1)
        self._me = os.urandom(8).hex()  # tells this mirror's own notices from others'

        self._high = 0  # every id up to here has been fetched by a catch-up
        self._ready: asyncio.Task[None] | None = None
        self._follower: asyncio.Task[None] | None = None
        self._fetches: set[asyncio.Task[None]] = set()

    def provisional_id(self) -> int:
        """An id for an entry kept before the store has numbered it: negative (the
        store's are positive), or, with no store, the entry's id for good."""
        n = next(self._local_ids)
        return -n if self._store is not None else n

    @property
    def shared(self) -> bool:
        """Whether entries live in a store (and other replicas see them)."""
        return self._store is not None

    async def ready(self) -> None:
        """Load the tier once (every live entry), then follow it; later calls return at once."""
        if self._store is None:
            return
        if self._ready is None:
            self._ready = asyncio.get_running_loop().create_task(self._start())
        await asyncio.shield(self._ready)

    async def _start(self) -> None:
        if self._shared is not None:
            self._shared.subscribe(self._channel, self._notice)
        await self._catch_up()
        self._follower = asyncio.get_running_loop().create_task(self._follow())

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self._sync_every_s)
            try:
                await self._catch_up()
            except Exception:  # the store is down: the next round tries again
                log.warning("cache %s: catching up with the store failed", self.tier, exc_info=True)

    async def _catch_up(self) -> None:
        assert self._store is not None
        while True:
            records = await self._store.cache_entries(self.tier, after=self._high, limit=1000)
            for record in records:
                self._copy.add(record)
                self._high = max(self._high, record.id)
            if len(records) < 1000:
                return

    # -- changes made here ------------------------------------------------------------

    async def add(self, record: CacheEntryRecord) -> int:
        """Store `record` and announce it; returns its id (the caller adds it to its copy)."""
        if self._store is None:
            return record.id if record.id > 0 else next(self._local_ids)
        entry = await self._store.add_cache_entry(record)
        await self._announce({"op": "add", "id": entry})
        return entry

    async def drop(
        self,
        tenant: str,
        *,
        model: str | None = None,
        created_before: float | None = None,
        entry: int | None = None,
    ) -> list[int]:
        """Delete `tenant`'s entries from the store (narrowed as `Store.drop_cache_entries`)
        and from every replica's copy; returns the ids dropped."""
        assert self._store is not None
        ids = await self._store.drop_cache_entries(
            self.tier, tenant, model=model, created_before=created_before, entry=entry
        )
        for dropped in ids:
            self._copy.drop(dropped)
        if ids:
            await self._announce({"op": "drop", "ids": ids})
        return ids

    async def feedback(self, entry: int, score: float, correct: bool, threshold: float) -> None:
        """Share a judged hit (already applied to this copy, which now holds `threshold`
        for the entry) with the other replicas and the store."""
        if self._store is None:
            return
        await self._store.set_cache_threshold(self.tier, entry, threshold)
        await self._announce({"op": "feedback", "id": entry, "score": score, "correct": correct})

    async def hit(self, notice: dict[str, Any]) -> None:
        """Tell the other replicas of a hit served here (feedback on it may reach them)."""
        if self._store is not None:
            await self._announce({**notice, "op": "hit"})

    async def _announce(self, notice: dict[str, Any]) -> None:
        if self._shared is None:
            return
        try:
            await self._shared.publish(self._channel, orjson.dumps({**notice, "from": self._me}))
        except Exception:  # the catch-up brings additions; a lost drop waits for expiry
            log.warning("cache %s: announcing a change failed", self.tier, exc_info=True)

    # -- changes made elsewhere -------------------------------------------------------

    def _notice(self, message: bytes) -> None:
        try:
            notice = orjson.loads(message)
        except orjson.JSONDecodeError:
            return
        if notice.get("from") == self._me:
            return  # this replica's own change: already applied
        op = notice.get("op")
        if op == "add" and isinstance(notice.get("id"), int):
            if not self._copy.has(notice["id"]):
                self._fetch(notice["id"])
        elif op == "drop":
            for dropped in notice.get("ids") or ():
                self._copy.drop(int(dropped))
        elif op == "feedback":
            self._copy.feedback(int(notice["id"]), float(notice["score"]), bool(notice["correct"]))
        elif op == "hit" and self._copy.hit is not None:
            self._copy.hit(notice)

    def _fetch(self, entry: int) -> None:
        """Fetch one announced entry (ids may commit out of order: the catch-up alone,
        which moves past ids it has seen, could miss it)."""

        async def fetch() -> None:
            assert self._store is not None
            for record in await self._store.cache_entries(self.tier, after=entry - 1, limit=1):
                if record.id == entry:
                    self._copy.add(record)

        task = asyncio.get_running_loop().create_task(fetch())
        self._fetches.add(task)
        task.add_done_callback(self._fetches.discard)

    async def aclose(self) -> None:
        for task in (self._follower, self._ready, *self._fetches):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
