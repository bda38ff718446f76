"""The shared tier: one Redis entry per thread, extended in place by appends.

Keys of a thread share the hash tag ``{namespace:thread_id}`` (Redis Cluster keeps
them on one slot):

- ``ac:{ns:tid}:v`` holds the version: ``"7"`` when the value holds every message
  up to version 7, or ``"7x"``, a *fence*, when only the version is known (an append
  could not extend the value, or the thread was invalidated). A fill with an older
  version than the key says is refused, so a slow reader can't put back history
  that a writer or a delete has already moved past.
- ``ac:{ns:tid}:m`` holds the messages (see `_l2_format`).

Every call has a short timeout. A failure marks the tier degraded: callers then
skip Redis (L1 + store) until a background probe finds it again, and the owner is
told so it can clear what it may have missed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import redis.asyncio as redis
from redis.exceptions import RedisError

from .._tasks import MAX_BACKOFF, cancel_and_wait, raise_if_cancelling
from ._bus import EVERYTHING, RESET, WRITE, bus_channel, encode_event
from ._l2_format import (
    CorruptEntry,
    decompress,
    encode_chunk,
    join_payloads,
    split_chunks,
    split_payloads,
)

_T = TypeVar("_T")

# Every script that records a write also announces it on the bus (ARGV[1], ARGV[2];
# an empty event announces nothing): one round trip for both.
_ANNOUNCE: Final = """
if ARGV[2] ~= '' then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
"""
_FILL: Final = (
    _ANNOUNCE
    + """
local cur = redis.call('GET', KEYS[1])
local digits = cur and string.match(cur, '^%d+')
if digits then
  local v, target = tonumber(digits), tonumber(ARGV[3])
  if v > target then return 0 end
  if v == target and string.sub(cur, -1) ~= 'x' then return 0 end
end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[5])
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5])
return 1
"""
)
_APPEND: Final = (
    _ANNOUNCE
    + """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[3] and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('APPEND', KEYS[2], ARGV[5])
  redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[6])
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
  return 1
end
local digits = cur and string.match(cur, '^%d+')
local v = digits and tonumber(digits)
if not v or v < tonumber(ARGV[4]) then
  redis.call('SET', KEYS[1], ARGV[4] .. 'x', 'PX', ARGV[6])
  redis.call('DEL', KEYS[2])
end
return 0
"""
)
_FENCE: Final = (
    _ANNOUNCE
    + """
local cur = redis.call('GET', KEYS[1])
local digits = cur and string.match(cur, '^%d+')
local v = digits and tonumber(digits)
if not v or v < tonumber(ARGV[3]) or ARGV[3] == '-1' then
  local target = ARGV[3] == '-1' and (v or 0) or tonumber(ARGV[3])
  redis.call('SET', KEYS[1], string.format('%d', target) .. 'x', 'PX', ARGV[4])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
"""
)
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class L2Entry:
    """What L2 knows of a thread: its version, and its messages unless fenced."""

    version: int
    payloads: list[bytes] | None


@dataclass(slots=True)
class RedisTierCounters:
    errors: int = 0
    corrupt: int = 0
    fills: int = 0
    fills_refused: int = 0
    degraded_since: float | None = None


class RedisTier:
    """Reads and version-fenced writes of one namespace's threads in Redis."""

    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        *,
        ttl: float,
        timeout: float,
        compress_min_bytes: int,
        origin: str,
        on_recover: Callable[[], None],
    ) -> None:
        self.client = client
        self._channel = bus_channel(namespace)
        self._origin = origin
        self._prefix = f"ac:{{{namespace}:"
        self._ttl_ms = max(1, int(ttl * 1000))
        self._timeout = timeout
        self._compress_min_bytes = compress_min_bytes
        self._on_recover = on_recover
        self._fill_script = client.register_script(_FILL)
        self._append_script = client.register_script(_APPEND)
        self._fence_script = client.register_script(_FENCE)
        self._release_script = client.register_script(_RELEASE)
        self.counters = RedisTierCounters()
        self._probe: asyncio.Task[None] | None = None
        # Threads written while Redis was unreachable, with the version written:
        # their L2 entries may be stale until fenced at that version.
        self._dirty: dict[str, int] = {}
        self._dirty_overflow = False
        self._max_dirty = 10_000

    # -- health ------------------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        return self.counters.degraded_since is not None

    async def _call(
        self, operation: Callable[[], Awaitable[_T]], *, write: bool = False
    ) -> tuple[bool, _T | None]:
        """Run one Redis operation within the deadline; ``(False, None)`` if it failed.

        A failed write is tried once more with a longer deadline: a write that is
        lost leaves L2 behind the store, which a slow moment should not cause.
        """
        if self.degraded:
            return False, None
        for deadline in (self._timeout, self._timeout * 4) if write else (self._timeout,):
            try:
                async with asyncio.timeout(deadline):
                    return True, await operation()
            except (RedisError, OSError, TimeoutError):
                raise_if_cancelling()
                self.counters.errors += 1
        self._fail()
        return False, None

    async def warm_up(self) -> None:
        """Connect and load the scripts now, so first requests don't pay for it.

        A Redis that can't be reached leaves the tier degraded, not the caller failing.
        """
        try:
            async with asyncio.timeout(max(self._timeout, 1.0)):
                await self.client.ping()
                for script in (self._fill_script, self._append_script, self._fence_script):
                    await self.client.script_load(script.script)
        except (RedisError, OSError, TimeoutError):
            raise_if_cancelling()
            self.counters.errors += 1
            self._fail()

    def _fail(self) -> None:
        if self.counters.degraded_since is None:
            self.counters.degraded_since = time.monotonic()
            self._probe = asyncio.get_running_loop().create_task(self._reconnect())

    def fail(self) -> None:
        """Called by the invalidation bus when it loses its subscription."""
        self.counters.errors += 1
        self._fail()

    async def _reconnect(self) -> None:
        delay = 0.05
        while True:
            try:
                async with asyncio.timeout(max(self._timeout, 0.25)):
                    await self.client.ping()
                    await self._repair_dirty()
            except (RedisError, OSError, TimeoutError):
                raise_if_cancelling()
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)
                continue
            self.counters.degraded_since = None
            self._probe = None
            self._on_recover()
            return

    async def _repair_dirty(self) -> None:
        """Fence and announce the writes that missed Redis, before leaving degraded mode."""
        if self._dirty_overflow:
            # Too many to list: drop the namespace's entries and tell everyone to clear L1.
            async for key in self.client.scan_iter(match=f"{self._prefix}*", count=1000):
                await self.client.delete(key)
            await self.client.publish(self._channel, self._event(RESET, "", 0))
        else:
            for thread_id, version in list(self._dirty.items()):
                announced = version if version >= 0 else EVERYTHING
                await self._fence_script(
                    keys=self._keys(thread_id),
                    args=[
                        self._channel,
                        self._event(WRITE, thread_id, announced),
                        version,
                        self._ttl_ms,
                    ],
                )
                del self._dirty[thread_id]
        self._dirty.clear()
        self._dirty_overflow = False

    def _event(self, kind: str, thread_id: str, version: int) -> bytes:
        return encode_event(kind, thread_id, version, self._origin)

    def _mark_dirty(self, thread_id: str, version: int) -> None:
        if len(self._dirty) >= self._max_dirty:
            self._dirty_overflow = True
        else:
            self._dirty[thread_id] = max(version, self._dirty.get(thread_id, -1))

    async def close(self) -> None:
        probe, self._probe = self._probe, None
        await cancel_and_wait(probe)

    # -- operations --------------------------------------------------------------------

    def _keys(self, thread_id: str) -> list[str]:
        prefix = f"{self._prefix}{thread_id}}}:"
        return [prefix + "v", prefix + "m"]

    def _lease_key(self, thread_id: str) -> str:
        return f"{self._prefix}{thread_id}}}:lease"

    async def acquire_lease(self, thread_id: str, token: str, ttl: float) -> bool | None:
        """Try to become the one loader of a thread; None if Redis can't say."""
        ok, acquired = await self._call(
            lambda: self.client.set(
                self._lease_key(thread_id), token, nx=True, px=max(1, int(ttl * 1000))
            )
        )
        return bool(acquired) if ok else None

    async def release_lease(self, thread_id: str, token: str) -> None:
        await self._call(
            lambda: self._release_script(keys=[self._lease_key(thread_id)], args=[token])
        )

    async def get(self, thread_id: str) -> L2Entry | None:
        """The entry, or None on a miss, a corrupt value or an unreachable Redis."""
        version_key, messages_key = self._keys(thread_id)

        async def read() -> list[Any]:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.getex(version_key, px=self._ttl_ms)
                pipe.getex(messages_key, px=self._ttl_ms)
                result: list[Any] = await pipe.execute()
                return result

        ok, result = await self._call(read)
        if not ok or result is None or result[0] is None:
            return None
        raw_version, value = result
        try:
            fenced = raw_version.endswith(b"x")
            version = int(raw_version[:-1] if fenced else raw_version)
            if fenced or value is None:
                return L2Entry(version, None)
            return L2Entry(version, await self._decode(value))
        except (ValueError, CorruptEntry):
            # A fence keeps the version but lets the next fill replace the value.
            self.counters.corrupt += 1
            await self.fence(thread_id, None)
            return None

    async def _decode(self, value: bytes) -> list[bytes]:
        payloads: list[bytes] = []
        for compressed, data in split_chunks(value):
            joined = await asyncio.to_thread(decompress, data) if compressed else data
            payloads.extend(split_payloads(joined))
        return payloads

    async def version(self, thread_id: str) -> int | None:
        """The version L2 knows (fenced or not); None if unknown or unreachable."""
        ok, raw = await self._call(lambda: self.client.get(self._keys(thread_id)[0]))
        if not ok or not isinstance(raw, bytes):
            return None
        try:
            return int(raw.rstrip(b"x"))
        except ValueError:
            self.counters.corrupt += 1
            return None

    async def fill(
        self, thread_id: str, version: int, payloads: Sequence[bytes], *, written: bool = False
    ) -> bool:
        """Store the whole thread unless L2 already knows a newer version.

        ``written``: the fill records a write (a new thread, a delete), so if it is
        lost L2 must be fenced at ``version`` once Redis is back.
        """
        value = await self._chunk(payloads) if payloads else b""
        event = self._event(WRITE, thread_id, version) if written else b""
        ok, stored = await self._call(
            lambda: self._fill_script(
                keys=self._keys(thread_id),
                args=[self._channel, event, version, value, self._ttl_ms],
            ),
            write=True,
        )
        if ok and stored:
            self.counters.fills += 1
            return True
        if ok:
            self.counters.fills_refused += 1
        elif written:
            self._mark_dirty(thread_id, version)
        return False

    async def append(
        self, thread_id: str, base_version: int, version: int, payloads: Sequence[bytes]
    ) -> None:
        """Extend the entry if it is exactly at ``base_version``, else fence it; announce."""
        chunk = await self._chunk(payloads)
        event = self._event(WRITE, thread_id, version)
        ok, _ = await self._call(
            lambda: self._append_script(
                keys=self._keys(thread_id),
                args=[self._channel, event, base_version, version, chunk, self._ttl_ms],
            ),
            write=True,
        )
        if not ok:
            self._mark_dirty(thread_id, version)

    async def fence(
        self, thread_id: str, version: int | None, *, announce: int | None = None
    ) -> None:
        """Forget the messages and keep only the version (or the held one, if None).

        ``announce``: also tell other instances to drop entries older than that version.
        """
        event = b"" if announce is None else self._event(WRITE, thread_id, announce)
        ok, _ = await self._call(
            lambda: self._fence_script(
                keys=self._keys(thread_id),
                args=[self._channel, event, -1 if version is None else version, self._ttl_ms],
            ),
            write=True,
        )
        if not ok:
            self._mark_dirty(thread_id, -1 if version is None else version)

    async def _chunk(self, payloads: Sequence[bytes]) -> bytes:
        joined = join_payloads(payloads)
        if len(joined) >= self._compress_min_bytes:
            return await asyncio.to_thread(encode_chunk, joined, compress=True)
        return encode_chunk(joined, compress=False)
