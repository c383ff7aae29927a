"""The shared seam: state every replica must see at once, fast.

The `Store` keeps what must last (ledger, runs, keys, cache entries). `Shared` keeps
what replicas must agree on within milliseconds: the rate-limit buckets and budget
windows (`Counters`), notices of changes (a breaker that opened, an entry stored or
dropped), each replica's load on each deployment, concurrency slots of deployments
whose cap holds across replicas, and leases on runs.

`LocalShared` is the embedded implementation: one process, everything in memory. A
Redis implementation (`areion[redis]`) gives the same operations one atomic script
each, so N replicas enforce one limit instead of N.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

from areion.errors import ConfigError
from areion.store.counters import Counters, MemoryCounters

__all__ = ["Handler", "LocalShared", "Shared", "open_shared"]

Handler = Callable[[bytes], None]
"""Called with each message published on a channel (in the event loop's thread)."""


@runtime_checkable
class Shared(Protocol):
    """State shared by every replica of one deployment of Areion."""

    @property
    def counters(self) -> Counters:
        """The atomic rate-limit buckets and budget windows."""
        ...

    # -- notices ----------------------------------------------------------------------

    async def start(self) -> None:
        """Begin delivering notices of the channels subscribed to (in the running loop),
        so a replica hears what others announce before it has done anything itself."""
        ...

    async def publish(self, channel: str, message: bytes) -> None:
        """Send `message` to every replica's handlers of `channel`, this one's included."""
        ...

    def subscribe(self, channel: str, handler: Handler) -> None:
        """Call `handler` with every message published on `channel` from now on."""
        ...

    # -- load of deployments ----------------------------------------------------------

    async def report_load(self, replica: str, outstanding: Mapping[str, int], ttl_s: float) -> None:
        """This replica's calls in flight per deployment; forgotten after `ttl_s`
        unless reported again (a dead replica's load fades)."""
        ...

    async def load(self, *, excluding: str) -> dict[str, int]:
        """Calls in flight per deployment, summed over the live replicas but `excluding`."""
        ...

    # -- concurrency caps that hold across replicas -------------------------------------

    async def acquire_slot(self, deployment: str, *, limit: int, holder: str, ttl_s: float) -> bool:
        """Take one of `deployment`'s `limit` slots for `holder` (a call), or nothing if
        all are taken; a slot not released within `ttl_s` (its replica died) frees itself."""
        ...

    async def release_slot(self, deployment: str, *, holder: str) -> None:
        """Give a slot back."""
        ...

    # -- leases on runs -----------------------------------------------------------------

    async def acquire_lease(self, key: str, *, owner: str, ttl_s: float) -> int | None:
        """Lease `key` to `owner` for `ttl_s` unless another owner holds it; a fencing
        token (higher than any this key gave before) when it was granted, else None."""
        ...

    async def renew_lease(self, key: str, *, owner: str, ttl_s: float) -> bool:
        """Extend `owner`'s lease; False if it lost it (expired, taken over)."""
        ...

    async def release_lease(self, key: str, *, owner: str) -> None:
        """Give up `owner`'s lease (nothing if it no longer holds it)."""
        ...

    async def aclose(self) -> None:
        """Stop listening and release connections."""
        ...


class LocalShared:
    """`Shared` in this process's memory: the embedded mode (one process, one replica)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] | None = None,
        wall: Callable[[], float] | None = None,
    ) -> None:
        import time

        self._clock = clock or time.monotonic
        self._wall = wall or time.time
        self._counters = MemoryCounters()
        self._handlers: dict[str, list[Handler]] = {}
        self._slots: dict[str, dict[str, float]] = {}  # deployment -> holder -> expires
        self._leases: dict[str, tuple[str, float]] = {}  # key -> (owner, expires)
        self._fences: dict[str, int] = {}

    @property
    def counters(self) -> Counters:
        return self._counters

    async def start(self) -> None:
        return None  # handlers are called as messages are published

    async def publish(self, channel: str, message: bytes) -> None:
        for handler in list(self._handlers.get(channel, ())):
            handler(message)

    def subscribe(self, channel: str, handler: Handler) -> None:
        self._handlers.setdefault(channel, []).append(handler)

    async def report_load(self, replica: str, outstanding: Mapping[str, int], ttl_s: float) -> None:
        return None  # one replica: there is nobody else to tell

    async def load(self, *, excluding: str) -> dict[str, int]:
        return {}

    async def acquire_slot(self, deployment: str, *, limit: int, holder: str, ttl_s: float) -> bool:
        now = self._clock()
        held = self._slots.setdefault(deployment, {})
        for expired in [h for h, until in held.items() if until <= now]:
            del held[expired]
        if len(held) >= limit and holder not in held:
            return False
        held[holder] = now + ttl_s
        return True

    async def release_slot(self, deployment: str, *, holder: str) -> None:
        self._slots.get(deployment, {}).pop(holder, None)

    async def acquire_lease(self, key: str, *, owner: str, ttl_s: float) -> int | None:
        now = self._clock()
        held = self._leases.get(key)
        if held is not None and held[0] != owner and held[1] > now:
            return None
        self._leases[key] = (owner, now + ttl_s)
        # Fences also outlive this process: microseconds of the Unix clock at least (as
        # Redis's), so a run's stored fence from before a restart is below the next one.
        fence = max(self._fences.get(key, 0) + 1, int(self._wall() * 1_000_000))
        self._fences[key] = fence
        return fence

    async def renew_lease(self, key: str, *, owner: str, ttl_s: float) -> bool:
        now = self._clock()
        held = self._leases.get(key)
        if held is None or held[0] != owner or held[1] <= now:
            return False
        self._leases[key] = (owner, now + ttl_s)
        return True

    async def release_lease(self, key: str, *, owner: str) -> None:
        held = self._leases.get(key)
        if held is not None and held[0] == owner:
            del self._leases[key]

    async def aclose(self) -> None:
        self._handlers.clear()


def open_shared(url: str | None) -> Shared:
    """The shared state a URL names: None -> `LocalShared` (one process), or
    `redis://host:port/db?prefix=areion:` -> `RedisShared` (needs `areion[redis]`)."""
    if url is None:
        return LocalShared()
    if url.startswith(("redis://", "rediss://")):
        from areion.store.redis import RedisShared  # redis-py only when asked for

        return RedisShared(url)
    raise ConfigError(
        f"shared: unsupported URL '{url}'; use redis://host:port/db (or none: one process)"
    )
