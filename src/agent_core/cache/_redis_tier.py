"""The shared tier: one Redis value per thread, extended in place by appends.

A thread's value lives at ``ac:{fp/ns/tid}`` (its lease at ``ac:{fp/ns/tid}:lease``,
the version it was purged at in ``ac:{fp/ns/tid}:purged``; the shared hash tag keeps
them on one Redis Cluster slot). ``fp`` is the store's
fingerprint, so entries of another database are never seen, and ``/`` can't occur
in a namespace or thread id, so the key is unambiguous. The value starts with a
21-byte header, the version as 20 zero-padded digits and a flag: ``c`` when the
chunks that follow hold every message up to that version, ``x`` (a *fence*) when
only the version is known (an append could not extend the value, or the thread
was invalidated). A fill with an older version than the header is refused, so a
slow reader can't put back history that a writer or a delete has moved past.
A hit is one ``GETEX``.

Every call has a short timeout. A failure marks the tier degraded: callers then
skip Redis (L1 + store) until a background probe finds it again, and the owner is
told so it can clear what it may have missed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, NamedTuple, TypeVar

from redis.commands.core import AsyncScript

from .._payload_cipher import PayloadCipher, refuse_sealed
from .._redis import (
    REDIS_FAILURES,
    RedisClient,
    describe,
    is_cluster,
    ping,
    tls_misconfiguration,
)
from .._tasks import MAX_BACKOFF, Deadlines, cancel_and_wait, raise_if_cancelling
from .._token_counts import Counts
from ..errors import DecryptionFailed
from ._bus import EVERYTHING, FILL, RESET, WRITE, bus_channel, encode_event
from ._l2_format import (
    FROM_EMPTY,
    MAX_VERSION,
    CorruptEntry,
    Signer,
    decode_value,
    encode_chunks,
    encode_counts,
    header,
    seal,
)
from ._sealing import sized

_T = TypeVar("_T")
#: The default of ``l2_max_value_bytes``: larger threads are not kept in L2.
DEFAULT_MAX_VALUE_BYTES: Final = 32 << 20
log = logging.getLogger("agent_core.cache")

# Every script that records a write also announces it on the bus (ARGV[1] channel,
# ARGV[2] event; an empty event announces nothing): one round trip for both. On a
# cluster the event is empty and `_announcing` publishes it after the script. ``held``
# is the held version as 20 digits, or nil when the value is missing or its header is
# malformed or out of range (anyone may write to Redis): such a value is overwritten.
# Versions are compared as zero-padded strings: exact beyond 2^53, unlike Lua numbers.
_ANNOUNCE: Final = (
    """
if ARGV[2] ~= '' then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
local head = redis.call('GETRANGE', KEYS[1], 0, 20)
local held = nil
if string.find(head, '^%d%d%d%d%d%d%d%d%d%d%d%d%d%d%d%d%d%d%d%d[cx]$')
    and string.sub(head, 1, 20) <= '"""
    + f"{MAX_VERSION:020d}"
    + """' then
  held = string.sub(head, 1, 20)
end
"""
)
# ARGV[3] version (padded), ARGV[4] value, ARGV[5] ttl ms, ARGV[6] lease token or '',
# ARGV[7] a held version known to be bogus (padded; it was ahead of the store) or ''.
_FILL: Final = (
    _ANNOUNCE
    + """
if ARGV[6] ~= '' and redis.call('GET', KEYS[2]) == ARGV[6] then redis.call('DEL', KEYS[2]) end
local target = ARGV[3]
local purged = redis.call('GET', KEYS[3])
if purged and string.len(purged) == 20 and purged >= target then return 0 end
if held == ARGV[7] then held = nil end
if held and (held > target or (held == target and string.sub(head, 21, 21) == 'c')) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
return 1
"""
)
# ARGV[3] the base header (padded base version .. 'c'), ARGV[4] new version (padded),
# ARGV[5] chunks, ARGV[6] ttl ms, ARGV[7] the largest value (bytes after the header).
_APPEND: Final = (
    _ANNOUNCE
    + """
if head == ARGV[3]
    and redis.call('STRLEN', KEYS[1]) + string.len(ARGV[5]) <= tonumber(ARGV[7]) + 21 then
  redis.call('SETRANGE', KEYS[1], 0, ARGV[4])
  redis.call('APPEND', KEYS[1], ARGV[5])
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
  return 1
end
if not held or held < ARGV[4] then
  redis.call('SET', KEYS[1], ARGV[4] .. 'x', 'PX', ARGV[6])
end
return 0
"""
)
# ARGV[3] version (padded), or '-1' for "the held version"; ARGV[4] ttl ms.
_FENCE: Final = (
    _ANNOUNCE
    + """
local target = held or '00000000000000000000'
if ARGV[3] ~= '-1' then
  target = ARGV[3]
  if held and held >= target then return 0 end
end
redis.call('SET', KEYS[1], target .. 'x', 'PX', ARGV[4])
return 1
"""
)
# ARGV[3] the purge's version (padded), ARGV[4] ttl ms. The value goes; the version
# stays in KEYS[3], where fills of older history look before writing.
_PURGE: Final = (
    _ANNOUNCE
    + """
redis.call('DEL', KEYS[1])
local purged = redis.call('GET', KEYS[3])
if not purged or string.len(purged) ~= 20 or purged < ARGV[3] then
  redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
end
return 1
"""
)
# On a miss: the value if it appeared meanwhile, else 1 if the lease was taken, else 0.
_ACQUIRE: Final = """
local value = redis.call('GET', KEYS[1])
if value and string.sub(value, 21, 21) == 'c' then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return value
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
# ARGV[1] the header the counts belong to, ARGV[2] count chunks: added only to that
# value, and only within ARGV[3] bytes.
_ANNOTATE: Final = """
if redis.call('GETRANGE', KEYS[1], 0, 20) == ARGV[1]
    and redis.call('STRLEN', KEYS[1]) + string.len(ARGV[2]) <= tonumber(ARGV[3]) + 21 then
  redis.call('APPEND', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class L2Entry(NamedTuple):
    """What L2 knows of a thread: its version, and its messages unless fenced."""

    version: int
    payloads: tuple[bytes, ...] | None
    counts: Counts = MappingProxyType({})


@dataclass(slots=True)
class RedisTierCounters:
    errors: int = 0
    corrupt: int = 0
    fills: int = 0
    fills_refused: int = 0
    degraded_since: float | None = None
    last_error: str = ""


class RedisTier:
    """Reads and version-fenced writes of one namespace's threads in Redis."""

    def __init__(
        self,
        client: RedisClient,
        namespace: str,
        *,
        ttl: float,
        timeout: float,
        compress_min_bytes: int,
        origin: str,
        on_degraded: Callable[[], None],
        on_recover: Callable[[], None],
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        signing_key: bytes | None = None,
        cipher: PayloadCipher | None = None,
    ) -> None:
        self.client = client
        self._namespace = namespace
        self._channel = ""
        self._sharded = is_cluster(client)
        self._origin = origin
        self._prefix = ""
        self._max_value_bytes = max_value_bytes
        self._signer = None if signing_key is None else Signer(signing_key)
        # Values hold sealed payloads, as the store does; one that does not open is corrupt.
        self._cipher = cipher
        self._where = describe(client)
        self._ttl_ms = max(1, int(ttl * 1000))
        self._timeout = timeout
        self._deadlines = Deadlines()
        self._compress_min_bytes = compress_min_bytes
        self._on_degraded = on_degraded
        self._on_recover = on_recover
        self._fill_script = client.register_script(_FILL)
        self._append_script = client.register_script(_APPEND)
        self._fence_script = client.register_script(_FENCE)
        self._purge_script = client.register_script(_PURGE)
        self._acquire_script = client.register_script(_ACQUIRE)
        self._release_script = client.register_script(_RELEASE)
        self._annotate_script = client.register_script(_ANNOTATE)
        self.counters = RedisTierCounters()
        self._probe: asyncio.Task[None] | None = None
        # Threads written while Redis was unreachable, with the version written:
        # their L2 entries may be stale until fenced at that version.
        self._dirty: dict[str, int] = {}
        self._dirty_overflow = False
        self._max_dirty = 10_000

    def bind(self, fingerprint: str) -> None:
        """Use the keys and channel of the store with this fingerprint (after it opened)."""
        self._prefix = f"ac:{{{fingerprint}/{self._namespace}/"
        self._channel = bus_channel(fingerprint, self._namespace)

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
                return True, await self._deadlines.run(operation, deadline)
            except REDIS_FAILURES as exc:
                raise_if_cancelling()
                self._count_error(exc)
        self._fail()
        return False, None

    async def warm_up(self) -> None:
        """Connect and load the scripts now, so first requests don't pay for it.

        A Redis that can't be reached leaves the tier degraded, not the caller failing.
        TLS set up wrongly is no outage but a configuration error, raised: a certificate
        that fails verification, or a plain URL for a server that speaks only TLS.
        """
        try:
            await ping(self.client, max(self._timeout, 1.0))
            async with asyncio.timeout(max(self._timeout, 1.0)):
                for script in (
                    self._fill_script,
                    self._append_script,
                    self._fence_script,
                    self._purge_script,
                    self._acquire_script,
                    self._annotate_script,
                ):
                    await self.client.script_load(script.script)
        except REDIS_FAILURES as exc:
            raise_if_cancelling()
            misconfigured = await tls_misconfiguration(
                self.client, exc, within=max(self._timeout, 1.0)
            )
            if misconfigured is not None:
                raise misconfigured from exc
            self._count_error(exc)
            self._fail("at open")

    def _fail(self, when: str = "") -> None:
        if self.counters.degraded_since is None:
            log.warning(
                "Redis at %s is unreachable%s (%s): the cache runs degraded on L1 and the "
                "store until it answers again",
                self._where,
                f" {when}" if when else "",
                self.counters.last_error,
            )
            self.counters.degraded_since = time.monotonic()
            self._probe = asyncio.get_running_loop().create_task(self._reconnect())
            self._on_degraded()

    def fail(self, reason: BaseException) -> None:
        """Called by the invalidation bus when it loses its subscription."""
        self._count_error(reason)
        self._fail()

    def _count_error(self, exc: BaseException) -> None:
        self.counters.errors += 1
        self.counters.last_error = f"{type(exc).__name__}: {exc}"

    async def _reconnect(self) -> None:
        delay = 0.05
        while True:
            try:
                await ping(self.client, max(self._timeout, 0.25))
                async with asyncio.timeout(max(self._timeout, 0.25)):
                    await self._repair_dirty()
            except REDIS_FAILURES:
                raise_if_cancelling()
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)
                continue
            log.warning("Redis at %s answers again: the cache uses it once more", self._where)
            self.counters.degraded_since = None
            self._probe = None
            self._on_recover()
            return

    async def _repair_dirty(self) -> None:
        """Fence and announce the writes that missed Redis, before leaving degraded mode."""
        if self._dirty_overflow:
            # Too many to list: drop the namespace's entries and tell everyone to clear L1.
            await self._unlink_all()
            await self._publish(self._event(RESET, "", 0))
        else:
            for thread_id, version in list(self._dirty.items()):
                announced = version if version >= 0 else EVERYTHING
                await self._announcing(
                    self._fence_script,
                    thread_id,
                    self._event(WRITE, thread_id, announced),
                    "-1" if version < 0 else f"{version:020d}",
                    self._ttl_ms,
                )
                del self._dirty[thread_id]
        self._dirty.clear()
        self._dirty_overflow = False

    async def _unlink_all(self) -> None:
        # Namespaces and fingerprints hold no glob characters: the pattern is exact.
        keys = [key async for key in self.client.scan_iter(match=f"{self._prefix}*", count=1000)]
        for start in range(0, len(keys), 1000):
            await self.client.unlink(*keys[start : start + 1000])

    async def drop_all(self) -> bool:
        """Remove every key of the namespace (values, fences, leases); False if Redis
        could not be reached (the keys then expire with their TTL)."""
        ok, _ = await self._call(self._unlink_all, write=True)
        return ok

    async def _announcing(
        self, script: AsyncScript, thread_id: str, event: bytes, *args: str | bytes | int
    ) -> Any:
        """Run a write script and announce ``event`` (if any) on the bus.

        On one server the script publishes it, in the same round trip. On a cluster the
        bus is a sharded channel, in another slot than the thread's keys, which a script
        may not touch: the event is published after the script, by a second call (a
        failure of either fails the write, which is then retried or fenced later).
        """
        if not self._sharded:
            return await script(keys=self._keys(thread_id), args=[self._channel, event, *args])
        result = await script(keys=self._keys(thread_id), args=["", b"", *args])
        if event:
            await self._publish(event)
        return result

    async def _publish(self, event: bytes) -> None:
        if self._sharded:
            await self.client.spublish(self._channel, event)
        else:
            await self.client.publish(self._channel, event)

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

    def key(self, thread_id: str) -> str:
        """The Redis key of the thread's value."""
        assert self._prefix, "bind() the tier to the store's fingerprint first"
        return f"{self._prefix}{thread_id}}}"

    def _keys(self, thread_id: str) -> list[str]:
        """The value's key, its load lease's and its purge floor's (one slot)."""
        key = self.key(thread_id)
        return [key, key + ":lease", key + ":purged"]

    async def get(self, thread_id: str) -> L2Entry | None:
        """The entry, or None on a miss, a corrupt value or an unreachable Redis."""
        ok, value = await self._call(
            # GETEX without redis-py's option checks: the hot path's one command.
            lambda: self.client.execute_command("GETEX", self.key(thread_id), "PX", self._ttl_ms)
        )
        if not ok or not isinstance(value, bytes):
            return None
        return await self._entry(thread_id, value)

    async def _entry(self, thread_id: str, value: bytes) -> L2Entry | None:
        signer = self._signer
        try:
            version, payloads, counts = await decode_value(
                value,
                max_bytes=self._max_value_bytes,
                signer=signer,
                key_name=b"" if signer is None else self.key(thread_id).encode(),
            )
            if self._cipher is not None and payloads:
                payloads = await sized(self._open_strictly, thread_id, payloads)
            elif payloads:
                refuse_sealed(self._namespace, thread_id, payloads)
            return L2Entry(version, payloads, counts)
        except (CorruptEntry, DecryptionFailed) as exc:
            log.debug("corrupt L2 value of thread %r: %s", thread_id, exc)
            # A fence keeps the version but lets the next fill replace the value.
            self.counters.corrupt += 1
            await self.fence(thread_id, None)
            return None

    async def acquire(self, thread_id: str, token: str, ttl: float) -> L2Entry | bool | None:
        """On a miss: the entry if another instance filled it meanwhile, else whether
        this instance now holds the thread's load lease; None if Redis can't say."""
        ok, result = await self._call(
            lambda: self._acquire_script(
                keys=self._keys(thread_id),
                args=[token, max(1, int(ttl * 1000)), self._ttl_ms],
            )
        )
        if not ok:
            return None
        if isinstance(result, bytes):
            return await self._entry(thread_id, result)
        return bool(result)

    async def release_lease(self, thread_id: str, token: str) -> None:
        await self._call(
            lambda: self._release_script(keys=[self._keys(thread_id)[1]], args=[token])
        )

    async def fill(
        self,
        thread_id: str,
        version: int,
        payloads: Sequence[bytes],
        counts: Counts,
        *,
        written: bool = False,
        lease: str = "",
        bogus: int | None = None,
    ) -> bool:
        """Store the whole thread unless L2 already knows a newer version.

        ``written``: the fill records a write (a new thread, a delete): it is announced,
        and if it is lost L2 must be fenced at ``version`` once Redis is back.
        ``lease``: the token of the load lease to release, waking its waiters.
        A thread larger than ``max_value_bytes`` is not stored: a fence keeps its version.
        ``bogus``: a version L2 held that the store had not reached when read after it
        (versions never go back, so no writer made it): replaced if still held.
        """
        value = b"%020dx" % version  # a fence, if the thread is too large for L2
        if sum(map(len, payloads)) + len(payloads) <= self._max_value_bytes:
            chunks = await self._chunk(payloads, counts) if payloads else b""
            sealed = await self._seal(thread_id, FROM_EMPTY, version, chunks)
            if len(sealed) <= self._max_value_bytes:
                value = header(version) + sealed
        if written:
            event = self._event(WRITE, thread_id, version)
        else:
            event = self._event(FILL, thread_id, version) if lease else b""
        ok, stored = await self._call(
            lambda: self._announcing(
                self._fill_script,
                thread_id,
                event,
                f"{version:020d}",
                value,
                self._ttl_ms,
                lease,
                "" if bogus is None else f"{bogus:020d}",
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
        self,
        thread_id: str,
        base_version: int,
        version: int,
        payloads: Sequence[bytes],
        counts: Counts,
    ) -> None:
        """Extend the entry if it is exactly at ``base_version``, else fence it; announce."""
        chunk = await self._seal(
            thread_id, base_version, version, await self._chunk(payloads, counts)
        )
        event = self._event(WRITE, thread_id, version)
        ok, _ = await self._call(
            lambda: self._announcing(
                self._append_script,
                thread_id,
                event,
                header(base_version),
                f"{version:020d}",
                chunk,
                self._ttl_ms,
                self._max_value_bytes,
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
            lambda: self._announcing(
                self._fence_script,
                thread_id,
                event,
                "-1" if version is None else f"{version:020d}",
                self._ttl_ms,
            ),
            write=True,
        )
        if not ok:
            self._mark_dirty(thread_id, -1 if version is None else version)

    async def purge(self, thread_id: str, version: int) -> None:
        """Remove the value (the thread was purged at ``version``) and announce it;
        fills of older history are refused while the L2 TTL lasts."""
        ok, _ = await self._call(
            lambda: self._announcing(
                self._purge_script,
                thread_id,
                self._event(WRITE, thread_id, version),
                f"{version:020d}",
                self._ttl_ms,
            ),
            write=True,
        )
        if not ok:
            self._mark_dirty(thread_id, version)

    async def annotate(self, thread_id: str, version: int, counts: Counts) -> None:
        """Add counts of every message to the entry, if it still holds ``version``."""
        chunks = await self._seal(thread_id, version, version, encode_counts(counts))
        await self._call(
            lambda: self._annotate_script(
                keys=[self.key(thread_id)],
                args=[header(version), chunks, self._max_value_bytes],
            ),
            write=True,
        )

    def _open_strictly(self, thread_id: str, payloads: Sequence[bytes]) -> tuple[bytes, ...]:
        # Strict: a plaintext value (from before encryption, or forged) is refilled sealed.
        assert self._cipher is not None
        return self._cipher.open(thread_id, payloads, strict=True)

    async def _chunk(self, payloads: Sequence[bytes], counts: Counts) -> bytes:
        chunks = await encode_chunks(payloads, compress_min_bytes=self._compress_min_bytes)
        return chunks + encode_counts(counts)

    async def _seal(self, thread_id: str, base: int, new: int, chunks: bytes) -> bytes:
        return await seal(self._signer, self.key(thread_id).encode(), base, new, chunks)
