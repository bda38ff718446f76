"""The GCRA of ``_gcra`` as one Lua script, so every instance draws on one budget.

A (namespace, model) pair has a hash ``ac:rl:{ns/model}`` (fields ``r`` and ``t``: the
theoretical arrival times of requests and tokens, in microseconds of Redis TIME; ``o``
the latest reservation's ticket, ``pr``/``pt`` the times before it) and a sorted set
``…/i`` of the instances that used it within the last period. A namespace
never holds ``/``, so the first one ends it, and only instance sets end in
``/i`` (a hash's name ends in ``}``): no two pairs share a key. Both expire once the
budget has refilled (a missing key is a full budget). A reservation is one round trip,
checks and takes both limits atomically, and uses the server's clock, so the
instances' clocks don't matter. The shared hash tag keeps both keys on one Redis
Cluster slot.
"""

from __future__ import annotations

from typing import Final

from .._redis import RedisClient
from ._gcra import LIMITS, Decision
from ._limits import RateLimits

# ARGV: [1] period µs, [2] requests per period (0: unlimited), [3] tokens per period
# (0: unlimited), [4] the request's tokens, [5] max wait µs, [6] instance id, [7] ticket.
# Returns {admitted, wait µs, limit or '', request debt µs, token debt µs (-1:
# unlimited), instances, now µs}. Lua numbers come back as integers, hence the rounding.
_RESERVE: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local period = tonumber(ARGV[1])
redis.call('ZADD', KEYS[2], now, ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - period)
redis.call('PEXPIRE', KEYS[2], math.ceil(period / 1000) + 1)
local instances = redis.call('ZCARD', KEYS[2])
local fields = {'r', 't'}
local names = {'requests', 'tokens'}
local rates = {tonumber(ARGV[2]), tonumber(ARGV[3])}
local costs = {1, tonumber(ARGV[4])}
local held = redis.call('HMGET', KEYS[1], 'r', 't')
local tats = {}
local start, limit = now, ''
for i = 1, 2 do
  if rates[i] > 0 then
    tats[i] = tonumber(held[i]) or now
    local earliest = tats[i] + (costs[i] - rates[i]) * (period / rates[i])
    if earliest > start + 1 then start, limit = earliest, names[i] end
  end
end
local wait = start - now
if wait > tonumber(ARGV[5]) then
  return {0, math.ceil(wait), limit, 0, 0, instances, now}
end
redis.call('HSET', KEYS[1], 'o', ARGV[7], 'pr', held[1] or '', 'pt', held[2] or '')
local debts = {-1, -1}
local ttl = 0
for i = 1, 2 do
  if tats[i] then
    local tat = math.max(tats[i], start) + costs[i] * (period / rates[i])
    redis.call('HSET', KEYS[1], fields[i], string.format('%.17g', tat))
    debts[i] = math.floor(tat - now)
    ttl = math.max(ttl, debts[i])
  end
end
redis.call('PEXPIRE', KEYS[1], math.ceil(ttl / 1000) + 1)
return {1, math.ceil(wait), limit, debts[1], debts[2], instances, now}
"""
# ARGV[1] ticket: puts back the state before that reservation if it is still the latest.
_CANCEL: Final = """
local held = redis.call('HMGET', KEYS[1], 'o', 'pr', 'pt')
if held[1] ~= ARGV[1] then return 0 end
local fields = {'r', 't'}
for i = 1, 2 do
  if held[i + 1] == '' then
    redis.call('HDEL', KEYS[1], fields[i])
  else
    redis.call('HSET', KEYS[1], fields[i], held[i + 1])
  end
end
redis.call('HDEL', KEYS[1], 'o', 'pr', 'pt')
return 1
"""


class SharedGcra:
    """Reservations of one namespace's budgets in Redis."""

    def __init__(self, client: RedisClient, namespace: str, instance: str) -> None:
        self.client = client
        self._namespace = namespace
        self._instance = instance
        self._reserve = client.register_script(_RESERVE)
        self._cancel = client.register_script(_CANCEL)

    def _key(self, model: str) -> str:
        return f"ac:rl:{{{self._namespace}/{model}}}"

    async def reserve(
        self, model: str, limits: RateLimits, tokens: int, max_wait: float, ticket: str
    ) -> Decision:
        key = self._key(model)
        reply = await self._reserve(
            keys=[key, f"{key}/i"],
            args=[
                _micros(limits.period),
                limits.requests_per_minute or 0,
                limits.tokens_per_minute or 0,
                tokens,
                _micros(max_wait),
                self._instance,
                ticket,
            ],
        )
        admitted, wait, limit, debt_r, debt_t, instances, now = reply
        # A caller's client may decode replies itself.
        name = limit.decode() if isinstance(limit, bytes) else limit
        return Decision(
            admitted=admitted == 1,
            wait=wait / 1e6,
            limit=next((known for known in LIMITS if known == name), None),
            at=(now + wait) / 1e6,
            shared=True,
            ticket=ticket,
            debts=(_debt(debt_r), _debt(debt_t)),
            instances=max(1, int(instances)),
        )

    async def cancel(self, model: str, ticket: str) -> bool:
        return bool(await self._cancel(keys=[self._key(model)], args=[ticket]))


def _micros(seconds: float) -> str:
    # repr keeps every digit; the script parses it with tonumber.
    return repr(seconds * 1e6)


def _debt(micros: int) -> float | None:
    return None if micros < 0 else micros / 1e6
