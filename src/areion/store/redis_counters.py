"""`Counters` in Redis: one Lua script per operation, atomic across replicas.

Each operation is one script, so Redis runs its check and its update with nothing
in between, whichever replica sent it: N replicas enforce one limit, not N. A call
costs two round trips: `admit` (its takes and reservations) and `release` (its
refunds and settlements), each one script built from the same pieces as the others. The
arithmetic is `MemoryCounters`' step for step on the same doubles (values travel as
`repr` / `%.17g`, both exact), so both give the same answers to the same calls.

Time. The protocol passes `now` from the caller (Unix time), so buckets refill by
the caller's clock, as in memory. Replicas' clocks differ a little: a bucket keeps
the latest time any replica wrote, and a caller whose clock is behind it refills
nothing and never moves it back, so no interval is refilled twice. Expiry (below)
is on Redis's own clock.

Layout (`prefix` from the URL, `areion:` by default):

- `{prefix}bucket:{key}`: "tokens time" (the time they were counted at); it
  expires once the bucket would be full again, plus a margin for clock skew: a
  missing bucket is a full one, so nothing is lost;
- `{prefix}budget:{key}`: "spent reserved"; it expires `window_idle_s` (40 days)
  after it was last written. Windows are at most a month
  long and their keys name their period, so a window in use never expires, and one
  that has ended goes between 9 and 40 days after its end.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any

from areion.store.counters import Admit, BucketState, BudgetState, Reservation, Settle, Take
from areion.store.redis_conn import RedisOptions, RedisPipe, Script, number, unavailable

__all__ = ["RedisCounters"]

_DAY_S = 86_400.0

# Helpers every script starts with. A bucket or window is one string of two numbers
# ("tokens time", "spent reserved") set with its TTL in the same command. `f`: a
# double as text that reads back exactly; `ms`: a TTL in whole milliseconds, capped
# (a tiny rate would overflow it; Lua would write a big number as 1e+12).
_LUA_COMMON = """
local function f(x) return string.format('%.17g', x) end
local function get(key)
  local stored = redis.call('GET', key)
  if not stored then return nil end
  local a, b = string.match(stored, '^(%S+) (%S+)$')
  return tonumber(a), tonumber(b)
end
local function put(key, a, b, seconds)
  local ms = math.ceil(math.min(seconds, 400 * 86400) * 1000)
  if ms ~= ms or ms < 1 then ms = 1 end
  redis.call('SET', key, f(a) .. ' ' .. f(b), 'PX', string.format('%d', ms))
end
local function level(tokens, updated, now, rate, burst)
  if now > updated then return math.min(burst, tokens + (now - updated) * rate) end
  return tokens
end
"""

# The pieces the scripts are made of. Each reads its arguments from KEYS and ARGV at
# the offsets it is given, so one script can run several in turn.
#
# The epoch says when this Redis started keeping Areion's counters, and how: `start`
# (the first replica found it empty) or `restart` (a replica that had seen the epoch
# found it gone: Redis restarted without its data). A bucket Redis does not know starts
# full after a start; after a restart it starts as if emptied at the restart, refilling
# since: buckets that were drained before the restart are not full again at once, so a
# restart does not let a second burst through within the same minute.
_LUA_PARTS = """
local function epoch(key, now, seen)
  local found = redis.call('GET', key)
  if found then
    local kind, at = string.match(found, '^(%S+) (%S+)$')
    if kind == 'restart' then return tonumber(at) end
    return nil
  elseif seen then
    redis.call('SET', key, 'restart ' .. f(now))
    return now
  end
  redis.call('SET', key, 'start ' .. f(now))
  return nil
end

-- Buckets KEYS[k0+1 .. k0+n], each with amount, rate, burst at ARGV[a0+3i-2 ..].
local function check_take(k0, a0, n, now, restarted)
  local b = {fits = true}
  for i = 1, n do
    local amount, rate, burst = tonumber(ARGV[a0+3*i-2]), tonumber(ARGV[a0+3*i-1]),
      tonumber(ARGV[a0+3*i])
    local tokens, updated = get(KEYS[k0+i])
    local known = tokens ~= nil
    if not known then
      tokens, updated = burst, now
      if restarted then tokens = math.min(burst, math.max(0, now - restarted) * rate) end
    end
    local lv = level(tokens, updated, now, rate, burst)
    b[i] = {amount = amount, rate = rate, burst = burst, level = lv,
            stamp = math.max(now, updated), known = known}
    if not (lv >= amount) then b.fits = false end
  end
  return b
end

local function do_take(k0, n, b, commit, now, margin, out)
  for i = 1, n do
    local x = b[i]
    local remaining, wait = x.level, 0
    if commit then
      remaining = remaining - x.amount
      put(KEYS[k0+i], remaining, x.stamp, (x.burst - remaining) / x.rate + margin)
    else
      wait = math.max(0, (x.amount - remaining) / x.rate)
      if not x.known then
        put(KEYS[k0+i], remaining, now, (x.burst - remaining) / x.rate + margin)
      end
    end
    out[#out + 1] = f(remaining)
    out[#out + 1] = f(wait)
    out[#out + 1] = f((x.burst - remaining) / x.rate)
  end
end

-- Windows KEYS[k0+1 .. k0+n], each with amount, limit at ARGV[a0+2i-1 ..]. An unknown
-- window (never seeded, or forgotten by a restart) reserves nothing and is not made.
local function check_reserve(k0, a0, n)
  local r = {fits = true, windows = {}}
  for i = 1, n do
    local key = KEYS[k0+i]
    if r.windows[key] == nil then
      local spent, reserved = get(key)
      if spent == nil then r.fits = false end
      r.windows[key] = {spent or 0, reserved or 0, spent ~= nil}
    end
    local w = r.windows[key]
    r[i] = tonumber(ARGV[a0+2*i-1])
    if not (w[1] + w[2] + r[i] <= tonumber(ARGV[a0+2*i])) then r.fits = false end
  end
  return r
end

local function do_reserve(k0, n, r, commit, idle, out)
  for i = 1, n do
    local w = r.windows[KEYS[k0+i]]
    if commit then w[2] = w[2] + r[i] end
    out[#out + 1] = f(w[1])
    out[#out + 1] = f(w[2])
    out[#out + 1] = w[3] and 1 or 0
  end
  if commit then
    for key, w in pairs(r.windows) do put(key, w[1], w[2], idle) end
  end
end

-- The bucket KEYS[k]; amount, rate, burst at ARGV[a+1 ..].
local function give(k, a, now, margin)
  local amount, rate, burst = tonumber(ARGV[a+1]), tonumber(ARGV[a+2]), tonumber(ARGV[a+3])
  local tokens, updated = get(KEYS[k])
  if tokens == nil then return 0 end  -- forgotten (a restart): the next take starts it
  tokens = math.min(burst, level(tokens, updated, now, rate, burst) + amount)
  put(KEYS[k], tokens, math.max(now, updated), (burst - tokens) / rate + margin)
  return 1
end

-- The window KEYS[k]; reserved to release and spent to add at ARGV[a+1 ..]. Nothing for
-- an unknown window (forgotten by a restart): the ledger seeds it with this spend in it.
local function settle(k, a, idle)
  local spent, reserved = get(KEYS[k])
  if spent == nil then return 0 end
  put(KEYS[k], spent + tonumber(ARGV[a+2]), math.max(0, reserved - tonumber(ARGV[a+1])), idle)
  return 1
end
"""


def _script(body: str) -> Script:
    return Script.of(_LUA_COMMON + _LUA_PARTS + body)


# KEYS: the epoch, then buckets. ARGV: now, margin (s), whether this process has seen
# the epoch, then amount, rate, burst for each bucket.
# -> {1 if taken else 0, then remaining, retry_after, reset for each bucket}
_TAKE = _script(
    """
local now, margin = tonumber(ARGV[1]), tonumber(ARGV[2])
local n = #KEYS - 1
local b = check_take(1, 3, n, now, epoch(KEYS[1], now, ARGV[3] == '1'))
local out = {b.fits and 1 or 0}
do_take(1, n, b, b.fits, now, margin, out)
return out
"""
)

# KEYS: the bucket. ARGV: now, margin, amount, rate, burst.
_GIVE = _script("return give(1, 2, tonumber(ARGV[1]), tonumber(ARGV[2]))")

# KEYS: windows. ARGV: idle TTL (s), then amount, limit for each window.
# -> {1 if reserved else 0, then spent, reserved, known for each window}.
_RESERVE = _script(
    """
local r = check_reserve(0, 1, #KEYS)
local out = {r.fits and 1 or 0}
do_reserve(0, #KEYS, r, r.fits, tonumber(ARGV[1]), out)
return out
"""
)

# KEYS: the window. ARGV: idle TTL, reserved to release, spent to add.
_SETTLE = _script("return settle(1, 1, tonumber(ARGV[1]))")

# KEYS: the window. ARGV: idle TTL, spent. Nothing if the window is known.
_SEED = _script(
    """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
put(KEYS[1], tonumber(ARGV[2]), 0, tonumber(ARGV[1]))
return 1
"""
)

# `take` and `reserve` as one step, both or neither. KEYS: the epoch, buckets, windows.
# ARGV: now, margin, seen, idle, the number of buckets, then each bucket's amount, rate,
# burst, then each window's amount, limit.
# -> {taken, reserved (1/0), then each bucket's 3 values, then each window's 3 values}
_ADMIT = _script(
    """
local now, margin, idle = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
local nb = tonumber(ARGV[5])
local nw = #KEYS - 1 - nb
local b = check_take(1, 5, nb, now, epoch(KEYS[1], now, ARGV[3] == '1'))
local r = check_reserve(1 + nb, 5 + 3 * nb, nw)
local commit = b.fits and r.fits
local out = {b.fits and 1 or 0, r.fits and 1 or 0}
do_take(1, nb, b, commit, now, margin, out)
do_reserve(1 + nb, nw, r, commit, idle, out)
return out
"""
)

# `give` and `settle` as one step. KEYS: buckets, then windows. ARGV: now, margin, idle,
# the number of buckets, then each bucket's amount, rate, burst, then each window's
# reserved, spent.
_RELEASE = _script(
    """
local now, margin, idle = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local nb = tonumber(ARGV[4])
for i = 1, nb do give(i, 4 + 3 * (i - 1), now, margin) end
for i = nb + 1, #KEYS do settle(i, 4 + 3 * nb + 2 * (i - nb - 1), idle) end
return 1
"""
)


class RedisCounters:
    """`Counters` in Redis, shared by every replica that uses the same prefix."""

    def __init__(
        self,
        pipe: RedisPipe,
        options: RedisOptions,
        *,
        window_idle_s: float = 40 * _DAY_S,
        skew_margin_s: float = 5.0,
    ) -> None:
        self._options = options
        self._pipe = pipe
        self._buckets = options.prefix + "bucket:"
        self._epoch = options.prefix + "epoch"
        self._seen_epoch = False
        self._windows = options.prefix + "budget:"
        self._idle = number(window_idle_s)
        # A bucket outlives the moment it is full again by this much, so a replica whose
        # clock is this far behind still finds it instead of a fresh, full one.
        self._margin = number(skew_margin_s)

    @classmethod
    def from_url(cls, url: str) -> RedisCounters:
        """Counters alone (no pub/sub, slots, leases): for tools and benchmarks."""
        options = RedisOptions.from_url(url)
        return cls(RedisPipe(options), options)

    async def take(self, takes: Sequence[Take], now: float) -> tuple[bool, list[BucketState]]:
        args = [number(now), self._margin, "1" if self._seen_epoch else "0"]
        for take in takes:
            args += (number(take.amount), number(take.rate), number(take.burst))
        keys = [self._epoch, *(self._buckets + t.key for t in takes)]
        with unavailable(self._options):
            reply = await self._pipe.run(_TAKE, keys, args)
        self._seen_epoch = True
        return reply[0] == 1, _buckets(reply, 1, len(reply))

    async def give(self, take: Take, amount: float, now: float) -> None:
        args = [number(now), self._margin, number(amount), number(take.rate), number(take.burst)]
        with unavailable(self._options):
            await self._pipe.run(_GIVE, [self._buckets + take.key], args)

    async def reserve(self, reservations: Sequence[Reservation]) -> tuple[bool, list[BudgetState]]:
        args = [self._idle]
        for r in reservations:
            args += (number(r.amount), number(r.limit))
        with unavailable(self._options):
            reply = await self._pipe.run(
                _RESERVE, [self._windows + r.key for r in reservations], args
            )
        return reply[0] == 1, _budgets(reply, 1, len(reply))

    async def settle(self, key: str, reserved: float, spent: float) -> None:
        with unavailable(self._options):
            await self._pipe.run(
                _SETTLE, [self._windows + key], [self._idle, number(reserved), number(spent)]
            )

    async def seed(self, key: str, spent: float) -> None:
        with unavailable(self._options):
            await self._pipe.run(_SEED, [self._windows + key], [self._idle, number(spent)])

    async def admit(
        self, takes: Sequence[Take], reservations: Sequence[Reservation], now: float
    ) -> Admit:
        args = [number(now), self._margin, "1" if self._seen_epoch else "0", self._idle]
        args.append(str(len(takes)))
        for take in takes:
            args += (number(take.amount), number(take.rate), number(take.burst))
        for r in reservations:
            args += (number(r.amount), number(r.limit))
        keys = [
            self._epoch,
            *(self._buckets + t.key for t in takes),
            *(self._windows + r.key for r in reservations),
        ]
        with unavailable(self._options):
            reply = await self._pipe.run(_ADMIT, keys, args)
        self._seen_epoch = True
        split = 2 + 3 * len(takes)
        return Admit(
            taken=reply[0] == 1,
            buckets=_buckets(reply, 2, split),
            reserved=reply[1] == 1,
            budgets=_budgets(reply, split, len(reply)),
        )

    def release(
        self, gives: Sequence[tuple[Take, float]], settles: Sequence[Settle], now: float
    ) -> Awaitable[None] | None:
        if not gives and not settles:
            return None
        args = [number(now), self._margin, self._idle, str(len(gives))]
        for take, amount in gives:
            args += (number(amount), number(take.rate), number(take.burst))
        for settle in settles:
            args += (number(settle.reserved), number(settle.spent))
        keys = [
            *(self._buckets + take.key for take, _ in gives),
            *(self._windows + settle.key for settle in settles),
        ]
        with unavailable(self._options):
            sent = self._pipe.start(_RELEASE, keys, args)
        return self._acknowledged(sent)

    async def _acknowledged(self, sent: Awaitable[Any]) -> None:
        with unavailable(self._options):
            await sent

    async def spent(self, key: str) -> float:
        """Settled spend of a window (for tests and reports)."""
        with unavailable(self._options):
            value = await self._pipe.call("GET", self._windows + key)
        return float(value.split()[0]) if value is not None else 0.0


def _buckets(reply: Sequence[Any], start: int, end: int) -> list[BucketState]:
    return [
        BucketState(
            remaining=float(reply[i]),
            retry_after=float(reply[i + 1]),
            reset=float(reply[i + 2]),
        )
        for i in range(start, end, 3)
    ]


def _budgets(reply: Sequence[Any], start: int, end: int) -> list[BudgetState]:
    return [
        BudgetState(
            spent=float(reply[i]),
            reserved=float(reply[i + 1]),
            known=reply[i + 2] == 1,
        )
        for i in range(start, end, 3)
    ]
