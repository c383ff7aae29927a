"""`Counters` in Redis: one Lua script per operation, atomic across replicas.

Each operation is one script, so Redis runs its check and its update with nothing
in between, whichever replica sent it: N replicas enforce one limit, not N. The
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

from collections.abc import Sequence

from areion.store.counters import BucketState, BudgetState, Reservation, Take
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

# KEYS: the epoch, then buckets. ARGV: now, margin (s), whether this process has seen
# the epoch, then amount, rate, burst for each bucket.
# -> {1 if taken else 0, then remaining, retry_after, reset for each bucket}
#
# The epoch says when this Redis started keeping Areion's counters, and how: `start`
# (the first replica found it empty) or `restart` (a replica that had seen the epoch
# found it gone: Redis restarted without its data). A bucket Redis does not know starts
# full after a start; after a restart it starts as if emptied at the restart, refilling
# since: buckets that were drained before the restart are not full again at once, so a
# restart does not let a second burst through within the same minute.
_TAKE = Script.of(
    _LUA_COMMON
    + """
local now, margin, seen = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3] == '1'
local restarted = nil
local epoch = redis.call('GET', KEYS[1])
if epoch then
  local kind, at = string.match(epoch, '^(%S+) (%S+)$')
  if kind == 'restart' then restarted = tonumber(at) end
elseif seen then
  redis.call('SET', KEYS[1], 'restart ' .. f(now))
  restarted = now
else
  redis.call('SET', KEYS[1], 'start ' .. f(now))
end
local levels, stamps, known, fits = {}, {}, {}, true
for i = 2, #KEYS do
  local amount, rate, burst = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  local tokens, updated = get(KEYS[i])
  known[i] = tokens ~= nil
  if not known[i] then
    tokens, updated = burst, now
    if restarted then tokens = math.min(burst, math.max(0, now - restarted) * rate) end
  end
  levels[i] = level(tokens, updated, now, rate, burst)
  stamps[i] = math.max(now, updated)
  if not (levels[i] >= amount) then fits = false end
end
local out = {fits and 1 or 0}
for i = 2, #KEYS do
  local amount, rate, burst = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  local remaining, wait = levels[i], 0
  if fits then
    remaining = remaining - amount
    put(KEYS[i], remaining, stamps[i], (burst - remaining) / rate + margin)
  else
    wait = math.max(0, (amount - remaining) / rate)
    if not known[i] then put(KEYS[i], remaining, now, (burst - remaining) / rate + margin) end
  end
  out[#out + 1] = f(remaining)
  out[#out + 1] = f(wait)
  out[#out + 1] = f((burst - remaining) / rate)
end
return out
"""
)

# KEYS: the bucket. ARGV: now, margin, amount, rate, burst.
_GIVE = Script.of(
    _LUA_COMMON
    + """
local now, margin = tonumber(ARGV[1]), tonumber(ARGV[2])
local amount, rate, burst = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local tokens, updated = get(KEYS[1])
if tokens == nil then return 0 end  -- forgotten (a restart): the next take starts it
tokens = math.min(burst, level(tokens, updated, now, rate, burst) + amount)
put(KEYS[1], tokens, math.max(now, updated), (burst - tokens) / rate + margin)
return 1
"""
)

# KEYS: windows. ARGV: idle TTL (s), then amount, limit for each window.
# -> {1 if reserved else 0, then spent, reserved, known for each window}. An unknown
# window (never seeded, or forgotten by a restart) reserves nothing and is not made.
_RESERVE = Script.of(
    _LUA_COMMON
    + """
local idle = tonumber(ARGV[1])
local windows, fits, unknown = {}, true, false
for i = 1, #KEYS do
  local key = KEYS[i]
  if windows[key] == nil then
    local spent, reserved = get(key)
    if spent == nil then unknown = true end
    windows[key] = {spent or 0, reserved or 0, spent ~= nil}
  end
  local w = windows[key]
  if not (w[1] + w[2] + tonumber(ARGV[2*i]) <= tonumber(ARGV[2*i+1])) then fits = false end
end
if unknown then fits = false end
local out = {fits and 1 or 0}
for i = 1, #KEYS do
  local w = windows[KEYS[i]]
  if fits then w[2] = w[2] + tonumber(ARGV[2*i]) end
  out[#out + 1] = f(w[1])
  out[#out + 1] = f(w[2])
  out[#out + 1] = w[3] and 1 or 0
end
if fits then
  for key, w in pairs(windows) do put(key, w[1], w[2], idle) end
end
return out
"""
)

# KEYS: the window. ARGV: idle TTL, reserved to release, spent to add. Nothing for an
# unknown window (forgotten by a restart): the ledger seeds it with this spend in it.
_SETTLE = Script.of(
    _LUA_COMMON
    + """
local spent, reserved = get(KEYS[1])
if spent == nil then return 0 end
put(KEYS[1], spent + tonumber(ARGV[3]), math.max(0, reserved - tonumber(ARGV[2])),
    tonumber(ARGV[1]))
return 1
"""
)

# KEYS: the window. ARGV: idle TTL, spent. Nothing if the window is known.
_SEED = Script.of(
    _LUA_COMMON
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
put(KEYS[1], tonumber(ARGV[2]), 0, tonumber(ARGV[1]))
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
        states = [
            BucketState(
                remaining=float(reply[i]),
                retry_after=float(reply[i + 1]),
                reset=float(reply[i + 2]),
            )
            for i in range(1, len(reply), 3)
        ]
        return reply[0] == 1, states

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
        states = [
            BudgetState(
                spent=float(reply[i]), reserved=float(reply[i + 1]), known=reply[i + 2] == 1
            )
            for i in range(1, len(reply), 3)
        ]
        return reply[0] == 1, states

    async def settle(self, key: str, reserved: float, spent: float) -> None:
        with unavailable(self._options):
            await self._pipe.run(
                _SETTLE, [self._windows + key], [self._idle, number(reserved), number(spent)]
            )

    async def seed(self, key: str, spent: float) -> None:
        with unavailable(self._options):
            await self._pipe.run(_SEED, [self._windows + key], [self._idle, number(spent)])

    async def spent(self, key: str) -> float:
        """Settled spend of a window (for tests and reports)."""
        with unavailable(self._options):
            value = await self._pipe.call("GET", self._windows + key)
        return float(value.split()[0]) if value is not None else 0.0
