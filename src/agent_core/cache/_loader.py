"""`Loader`: how a read that L1 could not answer alone is served.

A stale L1 entry is confirmed (or shown stale) by one store version query, shared by
concurrent readers it is fresh enough for (`Flights`). A miss is loaded once per
thread per process (single-flight): L2 is served only if it holds exactly the
version the store confirms; otherwise the load takes the thread's lease, or waits
for the instance holding it to fill L2, or reads the store and fills both tiers.
"""

from __future__ import annotations

import asyncio
import uuid
from functools import partial
from typing import Final

from .._payload_cipher import refuse_sealed
from .._tasks import raise_if_cancelling
from .._token_counts import from_stored
from .._validation import check_thread_id
from ..messages import Conversation, conversation_from_payloads
from ._freshness import Flight, Flights
from ._parts import CacheParts
from ._probe import CacheProbe
from ._read_result import ReadSource
from ._redis_tier import L2Entry, RedisTier
from ._sealing import sized

__all__ = ["Loader", "Served"]

#: A snapshot and the tier that served it.
Served = tuple[Conversation, ReadSource]
# Below this many messages, stored counts are decoded on the loop: a thread hop
# would cost more than the work.
_INLINE_DECODE_MESSAGES: Final = 2_000


class Loader:
    """Single-flight loads and shared version checks of one cache instance."""

    def __init__(self, parts: CacheParts, *, lease_ttl: float, probe: CacheProbe) -> None:
        self._store = parts.store
        self._namespace = parts.namespace
        self._l1 = parts.l1
        self._l2 = parts.l2
        self._fences = parts.fences
        self._counters = parts.counters
        self._lease_ttl = lease_ttl
        self._cipher = parts.cipher
        self._probe = probe
        self._loads: Flights[Served] = Flights(parts.ticks, exclusive=True)
        self._checks: Flights[tuple[int, int]] = Flights(parts.ticks, exclusive=False)

    async def read(
        self, thread_id: str, since: int, held: tuple[Conversation, int] | None
    ) -> Served:
        """The thread, reflecting every append acknowledged before tick ``since``.

        ``held``: L1's entry and the tick it was confirmed by, if L1 has one.
        """
        if held is None:
            check_thread_id(thread_id)
            return await self._loads.run(thread_id, since, partial(self._load, thread_id, None))
        conversation, confirmed = held
        if confirmed <= since:
            version, checked = await self._checks.run(
                thread_id, since, partial(self._store_version, thread_id)
            )
            if version != conversation.version:
                self._l1.drop(thread_id, "stale")
                # The load builds on the version just learned, so it starts when that was asked.
                return await self._loads.run(
                    thread_id, since, partial(self._load, thread_id, version), started=checked
                )
            self._l1.confirm(conversation, checked)
        self._counters.l1_hits += 1
        return conversation, "l1"

    async def _store_version(
        self, thread_id: str, flight: Flight[tuple[int, int]]
    ) -> tuple[int, int]:
        """The store's version of the thread, and the tick taken before asking."""
        self._counters.version_checks += 1
        return await self._store.version(self._namespace, thread_id), flight.started

    async def _load(self, thread_id: str, version: int | None, flight: Flight[Served]) -> Served:
        """Load a thread, and keep it in L1 unless a newer version was announced meanwhile.

        ``version``: the store's version, if asked at ``flight.started``.
        """
        self._fences.load_started(thread_id)
        try:
            served = await self._fetch(thread_id, version)
            await self._probe.l1_fill(thread_id)
            if self._fences.admits(thread_id, served[0].version):
                self._l1.put(served[0], confirmed=flight.started)
            else:
                self._counters.fills_dropped += 1
            return served
        finally:
            self._fences.load_ended(thread_id)

    async def _fetch(self, thread_id: str, version: int | None) -> Served:
        """From L2 if it holds the version the store confirms, else from the store."""
        l2 = self._l2
        if l2 is None:
            return await self._from_store(thread_id), "store"
        if version is None:
            entry, version = await self._l2_beside_version(l2, thread_id)
        else:
            entry = await l2.get(thread_id)
        if _holds(entry, version):
            return self._served_by_l2(thread_id, entry)
        lease = ""
        if self._lease_ttl > 0:
            outcome = await self._lease(l2, thread_id, version)
            if not isinstance(outcome, str):
                return outcome
            lease = outcome
        # A version L2 held beyond what the store then has was never written: replaced.
        seen = None if entry is None else entry.version
        return await self._from_store(thread_id, lease, seen), "store"

    async def _l2_beside_version(self, l2: RedisTier, thread_id: str) -> tuple[L2Entry | None, int]:
        """One L2 read and, concurrently, the store's version."""
        check = asyncio.ensure_future(self._store.version(self._namespace, thread_id))
        try:
            entry = await l2.get(thread_id)
        except BaseException:
            check.cancel()
            raise
        version = await check
        self._counters.version_checks += 1
        return entry, version

    async def _lease(self, l2: RedisTier, thread_id: str, version: int) -> Served | str:
        """Served by L2 if another instance filled it meanwhile (or does while we wait on
        its lease); else the lease token this load now holds ("" if none)."""
        token = uuid.uuid4().hex
        acquired = await l2.acquire(thread_id, token, self._lease_ttl)
        if isinstance(acquired, L2Entry):
            return self._served_by_l2(thread_id, acquired) if _holds(acquired, version) else ""
        if acquired is True:
            return token
        if acquired is False:
            served = await self._await_fill(l2, thread_id, version)
            if served is not None:
                return served
        return ""

    async def _await_fill(self, l2: RedisTier, thread_id: str, version: int) -> Served | None:
        """Another instance holds the load lease: wait to be woken by its fill.

        Its fill event may come before we listen, so L2 is read once after listening
        starts; and whatever ends the wait (the event, a resubscription or Redis
        trouble, the lease running out), L2 is read again before going to the store.
        """
        self._counters.lease_waits += 1
        with self._fences.fill_awaited(thread_id) as filled:
            entry = await l2.get(thread_id)
            if not _holds(entry, version):
                try:
                    async with asyncio.timeout(self._lease_ttl):
                        await filled.wait()
                except TimeoutError:
                    raise_if_cancelling()
                entry = await l2.get(thread_id)
        return self._served_by_l2(thread_id, entry) if _holds(entry, version) else None

    async def _from_store(
        self, thread_id: str, lease: str = "", seen: int | None = None
    ) -> Conversation:
        """Read the store and fill L2 (which also releases ``lease`` and wakes its waiters)."""
        cipher = self._cipher
        try:
            records = await self._store.read(self._namespace, thread_id)
            stored = plain = records.payloads
            if cipher is None:
                refuse_sealed(self._namespace, thread_id, stored)
            elif stored:
                # A row that does not open is the typed error, never served.
                plain = await sized(cipher.open, thread_id, stored)
                if self._l2 is not None:
                    # Rows from before encryption was turned on go to L2 sealed.
                    stored = tuple(await sized(cipher.sealed, thread_id, stored))
        except BaseException:
            if lease and self._l2 is not None:
                await self._l2.release_lease(thread_id, lease)
            raise
        self._counters.store_loads += 1
        self._counters.misses += 1
        await self._probe.loaded(thread_id)
        if len(records.tokens) > _INLINE_DECODE_MESSAGES:
            counts = await asyncio.to_thread(from_stored, records.tokens)
        else:
            counts = from_stored(records.tokens)
        if self._l2 is not None:
            bogus = seen if seen is not None and seen > records.version else None
            await self._l2.fill(
                thread_id, records.version, stored, counts, lease=lease, bogus=bogus
            )
        return conversation_from_payloads(thread_id, records.version, plain, counts)

    def _served_by_l2(self, thread_id: str, entry: L2Entry | None) -> Served:
        assert entry is not None
        assert entry.payloads is not None
        self._counters.l2_hits += 1
        return conversation_from_payloads(
            thread_id, entry.version, entry.payloads, entry.counts
        ), "l2"


def _holds(entry: L2Entry | None, version: int) -> bool:
    """The L2 entry holds the messages of exactly the version the store confirmed."""
    return entry is not None and entry.payloads is not None and entry.version == version
