"""`Shared` in Redis: what every replica must see at once (`pip install 'areion[redis]'`).

    shared = RedisShared("redis://127.0.0.1:6379/0?prefix=areion:")

Every operation is one command or one Lua script, so it is atomic across replicas.
Counters are `RedisCounters` (`store/redis_counters.py`). The rest, under the URL's
prefix:

- notices: channel `{prefix}{channel}`. One pub/sub connection per process, read by
  one task that calls the handlers in the event loop; when it breaks, the task
  connects again (backing off up to 2 s) and subscribes to every channel again.
  Redis keeps no messages: one published while a replica is cut off never reaches
  it, so notices must be hints (drop a cache entry, look at a breaker), not orders;
- load: hash `{prefix}load:{replica}` (deployment -> calls in flight) that expires
  after the report's `ttl_s`, and a sorted set `{prefix}loads` of replicas by expiry
  so `load()` finds the live ones in one script without scanning keys;
- slots: sorted set `{prefix}slots:{deployment}`, holder -> expiry; a script drops
  the expired holders and adds one if fewer than `limit` remain; the key expires
  with its last holder;
- leases: `{prefix}lease:{key}` = owner, with the lease's TTL; renew and release
  compare the owner in a script. Fencing tokens come from `{prefix}fence:{key}`:
  each is max(last + 1, Redis's clock in µs). A script takes more than a µs, so a
  token is in effect the time it was granted: tokens keep growing after the key
  expires (a day after its last lease) and after Redis restarts empty, as long as
  Redis's clock does not go back. They are near 2**51 (exact in a double until the
  year 2255): store them as 64-bit integers.

Expiries of slots, leases and load are on Redis's clock (`TIME`, `PX`), one clock for
every replica. The load script reads keys it derives from the prefix: this needs a
single Redis (or a primary with replicas), not Redis Cluster.

When Redis cannot be reached every operation raises `BackendUnavailableError`
(backend "redis") within about `connect_timeout + timeout`; the next operation after
Redis is back works, with no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Mapping
from typing import Any

from areion.errors import BackendUnavailableError
from areion.store.counters import Counters
from areion.store.redis_conn import RedisOptions, RedisPipe, Script, aioredis, unavailable
from areion.store.redis_counters import RedisCounters
from areion.store.shared import Handler

__all__ = ["RedisShared"]

logger = logging.getLogger(__name__)

DEFAULT_URL = "redis://127.0.0.1:6379/0"
# After a broken pub/sub connection, wait this long before connecting again, doubling
# up to the maximum while Redis stays away.
_RECONNECT_MIN_S = 0.05
_RECONNECT_MAX_S = 2.0
# A pub/sub connection silent this long is pinged; one that stays silent as long
# again is dead (a host gone without a reset never closes the socket).
_PING_S = 5.0
# A fence key outlives its last lease by a day: the counter matters only if Redis's
# clock stalls; the clock takes over after.
_FENCE_IDLE_MS = 86_400_000

_NOW_MS = """
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function now_ms() return math.floor(now_us() / 1000) end
local function expire_with_last(key)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if last[2] then redis.call('PEXPIREAT', key, last[2]) end
end
"""

# KEYS: the deployment's slots. ARGV: limit, holder, ttl ms. -> 1 if taken.
_ACQUIRE_SLOT = Script.of(
    _NOW_MS
    + """
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[2])
   and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], string.format('%d', now + tonumber(ARGV[3])), ARGV[2])
expire_with_last(KEYS[1])
return 1
"""
)

# KEYS: lease, fence. ARGV: owner, ttl ms, fence idle ms. -> the fencing token or nil.
_ACQUIRE_LEASE = Script.of(
    _NOW_MS
    + """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return false end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local fence = math.max(tonumber(redis.call('GET', KEYS[2]) or '0') + 1, now_us())
fence = string.format('%.0f', fence)
redis.call('SET', KEYS[2], fence, 'PX', ARGV[3])
return fence
"""
)

# KEYS: lease. ARGV: owner, ttl ms. -> 1 if the owner still held it.
_RENEW_LEASE = Script.of(
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
)

# KEYS: lease. ARGV: owner.
_RELEASE_LEASE = Script.of(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""
)

# KEYS: the replica's load, the registry. ARGV: replica, ttl ms, deployment, count, ...
_REPORT_LOAD = Script.of(
    _NOW_MS
    + """
local now = now_ms()
redis.call('DEL', KEYS[1])
if #ARGV > 2 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 3))
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
redis.call('ZADD', KEYS[2], string.format('%d', now + tonumber(ARGV[2])), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
expire_with_last(KEYS[2])
return 1
"""
)

# KEYS: the registry. ARGV: the replica to leave out, the prefix of load keys.
# -> deployment, total, deployment, total, ...
_READ_LOAD = Script.of(
    _NOW_MS
    + """
local totals, order = {}, {}
for _, replica in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now_ms(), '+inf')) do
  if replica ~= ARGV[1] then
    local flat = redis.call('HGETALL', ARGV[2] .. replica)
    for i = 1, #flat, 2 do
      if totals[flat[i]] == nil then
        order[#order + 1] = flat[i]
        totals[flat[i]] = 0
      end
      totals[flat[i]] = totals[flat[i]] + tonumber(flat[i + 1])
    end
  end
end
local out = {}
for _, name in ipairs(order) do
  out[#out + 1] = name
  out[#out + 1] = string.format('%d', totals[name])
end
return out
"""
)


def _ms(seconds: float) -> str:
    return str(max(1, math.ceil(seconds * 1000)))


class RedisShared:
    """`Shared` in one Redis, for every replica whose URL names the same prefix."""

    def __init__(self, url: str = DEFAULT_URL) -> None:
        self._options = RedisOptions.from_url(url)
        prefix = self._options.prefix
        self._pipe = RedisPipe(self._options)
        self._counters = RedisCounters(self._pipe, self._options)
        self._slots = prefix + "slots:"
        self._leases = prefix + "lease:"
        self._fences = prefix + "fence:"
        self._load = prefix + "load:"
        self._loads = prefix + "loads"
        # Notices: handlers by full channel name; `_wanted` are the channels subscribed
        # here, `_live` those Redis has confirmed on the current connection.
        self._handlers: dict[bytes, list[Handler]] = {}
        self._wanted: set[bytes] = set()
        self._live: set[bytes] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self._client: aioredis.Redis | None = None
        self._pubsub: Any = None  # redis-py's PubSub while connected and subscribed
        self._listener: asyncio.Task[None] | None = None
        self._down: str | None = None  # why the listener's last connection failed
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def counters(self) -> Counters:
        return self._counters

    @property
    def options(self) -> RedisOptions:
        """The parsed URL: prefix, timeouts."""
        return self._options

    async def ping(self) -> None:
        """Raise `BackendUnavailableError` unless Redis answers (for health checks)."""
        with unavailable(self._options):
            await self._pipe.call("PING")

    # -- notices ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the listener, and wait (briefly) for Redis to confirm the channels; a
        Redis that is down now does not stop the caller: the listener keeps trying."""
        self._start_listener()
        with contextlib.suppress(BackendUnavailableError):
            await self.listening()

    async def publish(self, channel: str, message: bytes) -> None:
        full = (self._options.prefix + channel).encode()
        if full in self._wanted and full not in self._live and self._down is None:
            # Subscribed here a moment ago: let Redis confirm it first, so this
            # replica's own handlers get the message too.
            with contextlib.suppress(BackendUnavailableError):
                await self.listening()
        with unavailable(self._options):
            await self._pipe.call("PUBLISH", full, message)

    def subscribe(self, channel: str, handler: Handler) -> None:
        full = (self._options.prefix + channel).encode()
        self._handlers.setdefault(full, []).append(handler)
        if full in self._wanted:
            return
        self._wanted.add(full)
        pubsub = self._pubsub
        if pubsub is not None:  # the listener is connected: add this channel to it
            self._spawn(self._subscribe_now(pubsub, full))
        with contextlib.suppress(RuntimeError):  # no running loop: the next await starts it
            asyncio.get_running_loop()
            self._start_listener()

    async def listening(self, timeout_s: float | None = None) -> None:
        """Wait until Redis has confirmed every channel subscribed here so far: from
        then on, messages published anywhere on them reach this replica's handlers.
        `BackendUnavailableError` at once while the listener cannot reach Redis, or if
        that takes longer than `timeout_s` (by default the URL's connect timeout plus
        timeout)."""
        self._start_listener()
        if timeout_s is None:
            timeout_s = self._options.connect_timeout_s + self._options.timeout_s
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                while not self._wanted <= self._live:
                    if self._down is not None:
                        raise BackendUnavailableError(
                            f"the limit store (Redis at {self._options.where}) is down: "
                            f"{self._down}; the pub/sub listener is trying again",
                            backend="redis",
                        )
                    waiter: asyncio.Future[None] = loop.create_future()
                    self._waiters.append(waiter)
                    await waiter
        except TimeoutError:
            raise BackendUnavailableError(
                f"the limit store (Redis at {self._options.where}) is down: its pub/sub "
                f"did not confirm the subscriptions within {timeout_s}s",
                backend="redis",
            ) from None

    def _start_listener(self) -> None:
        if self._listener is None and self._wanted:
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        delay = _RECONNECT_MIN_S
        while True:
            if self._client is None:
                self._client = self._options.client()
            pubsub = self._client.pubsub()
            try:
                await self._serve(pubsub)
            except (aioredis.RedisError, OSError) as error:
                if self._live:  # it was up: a new outage
                    delay = _RECONNECT_MIN_S
                    logger.warning("pub/sub connection to Redis lost (%s); reconnecting", error)
                elif self._down is None:
                    logger.warning("pub/sub cannot reach Redis (%s); retrying", error)
                self._down = str(error) or type(error).__name__
                self._wake()
            finally:
                self._pubsub = None
                self._live.clear()
                with contextlib.suppress(aioredis.RedisError, OSError):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RECONNECT_MAX_S)

    async def _serve(self, pubsub: Any) -> None:
        """Subscribe to every wanted channel, then deliver messages until it breaks."""
        sent: set[bytes] = set()
        while missing := self._wanted - sent:  # channels may be added meanwhile
            await pubsub.subscribe(*missing)
            sent |= missing
        self._pubsub = pubsub  # from now on `subscribe` adds channels itself
        pinged = False
        while True:
            message = await pubsub.get_message(timeout=_PING_S)
            if message is None:
                if pinged:
                    raise aioredis.ConnectionError(f"no answer to a ping within {_PING_S}s")
                await pubsub.ping()
                pinged = True
                continue
            pinged = False
            kind = message["type"]
            if kind == "message":
                self._deliver(message["channel"], message["data"])
            elif kind == "subscribe":
                self._live.add(message["channel"])
                self._down = None
                self._wake()

    async def _subscribe_now(self, pubsub: Any, channel: bytes) -> None:
        # If this fails, the connection is broken: the listener connects again and
        # subscribes to every wanted channel, this one included.
        with contextlib.suppress(aioredis.RedisError, OSError):
            await pubsub.subscribe(channel)

    def _deliver(self, channel: bytes, data: bytes) -> None:
        for handler in list(self._handlers.get(channel, ())):
            try:
                handler(data)
            except Exception:  # one bad handler must not stop the notices
                logger.exception("handler of channel %r failed", channel)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- load of deployments ----------------------------------------------------------

    async def report_load(self, replica: str, outstanding: Mapping[str, int], ttl_s: float) -> None:
        self._start_listener()  # if subscribed before the event loop ran
        args = [replica, _ms(ttl_s)]
        for deployment, count in outstanding.items():
            args += (deployment, str(int(count)))
        with unavailable(self._options):
            await self._pipe.run(_REPORT_LOAD, [self._load + replica, self._loads], args)

    async def load(self, *, excluding: str) -> dict[str, int]:
        with unavailable(self._options):
            flat = await self._pipe.run(_READ_LOAD, [self._loads], [excluding, self._load])
        return {flat[i].decode(): int(flat[i + 1]) for i in range(0, len(flat), 2)}

    # -- concurrency caps that hold across replicas -------------------------------------

    async def acquire_slot(self, deployment: str, *, limit: int, holder: str, ttl_s: float) -> bool:
        with unavailable(self._options):
            taken = await self._pipe.run(
                _ACQUIRE_SLOT, [self._slots + deployment], [str(int(limit)), holder, _ms(ttl_s)]
            )
        return bool(taken == 1)

    async def release_slot(self, deployment: str, *, holder: str) -> None:
        with unavailable(self._options):
            await self._pipe.call("ZREM", self._slots + deployment, holder)

    # -- leases on runs -----------------------------------------------------------------

    async def acquire_lease(self, key: str, *, owner: str, ttl_s: float) -> int | None:
        with unavailable(self._options):
            fence = await self._pipe.run(
                _ACQUIRE_LEASE,
                [self._leases + key, self._fences + key],
                [owner, _ms(ttl_s), str(_FENCE_IDLE_MS)],
            )
        return None if fence is None else int(fence)

    async def renew_lease(self, key: str, *, owner: str, ttl_s: float) -> bool:
        with unavailable(self._options):
            held = await self._pipe.run(_RENEW_LEASE, [self._leases + key], [owner, _ms(ttl_s)])
        return bool(held == 1)

    async def release_lease(self, key: str, *, owner: str) -> None:
        with unavailable(self._options):
            await self._pipe.run(_RELEASE_LEASE, [self._leases + key], [owner])

    # -- housekeeping -------------------------------------------------------------------

    async def delete_all(self) -> int:
        """Delete every key under this prefix (tests and benchmarks clean up with it;
        never needed in production, where keys expire). How many were deleted."""
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in self._options.prefix) + "*"
        deleted = 0
        cursor = b"0"
        with unavailable(self._options):
            while True:
                cursor, keys = await self._pipe.call("SCAN", cursor, "MATCH", pattern, "COUNT", 500)
                if keys:
                    deleted += int(await self._pipe.call("UNLINK", *keys))
                if cursor in (b"0", 0):
                    return deleted

    async def aclose(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        for task in list(self._tasks):
            task.cancel()
        self._handlers.clear()
        self._wanted.clear()
        await self._pipe.aclose()
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
