"""`Writes`: appends, splices, forks, deletes, invalidations and namespace purges,
store first, then both tiers.

The store is the source of truth: a batch goes to the tiers only once the store
applied it. L1 is extended in place if it holds exactly the batch's base version
(else dropped), L2 likewise by one Lua script that also announces the new version;
a brand-new thread is put whole into both tiers so its first read is a hit. A
splice is applied to L1 the same way, but only fences L2 (see `splice`).
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any, Final, TypeVar

from .._payload_cipher import refuse_reserved, refuse_sealed
from .._token_counts import to_stored
from ..errors import ConfigurationError, IdempotencyKeyReused
from ..messages import Conversation, Message, conversation_from_payloads, messages_from_raw
from ..store import Rewrite, SpliceResult, ThreadInfo, batch_digest, splice_digest
from ..tokens import TokenCounter
from ._bus import EVERYTHING
from ._parts import CacheParts
from ._sealing import sized

__all__ = ["Writes"]

# Below this much batch, append counts tokens on the loop: a thread hop costs more.
_INLINE_COUNT_BYTES: Final = 64 << 10
# A sweep forgets this many threads in Redis at once.
_SWEEP_CONCURRENCY: Final = 64
_R = TypeVar("_R")


class Writes:
    """The write path of one cache instance (inputs already validated)."""

    def __init__(
        self,
        parts: CacheParts,
        append_counters: Sequence[TokenCounter],
        retention: float | None = None,
    ) -> None:
        self._store = parts.store
        self._namespace = parts.namespace
        self._l1 = parts.l1
        self._l2 = parts.l2
        self._fences = parts.fences
        self._counters = parts.counters
        self._ticks = parts.ticks
        self._append_counters = append_counters
        self._retention = retention
        self._cipher = parts.cipher

    async def append(
        self,
        thread_id: str,
        messages: Sequence[Mapping[str, Any] | Message],
        payloads: list[bytes],
        expected_version: int | None,
        idempotency_key: str | None,
    ) -> int:
        refuse_reserved(payloads)
        counts = await self._count(messages, payloads)
        stored = await self._sealed(thread_id, payloads)
        # Every append acknowledged before this tick is committed before ours.
        sent = self._ticks()
        result = await self._digested(
            idempotency_key,
            partial(batch_digest, payloads),
            lambda digest: self._store.append(
                self._namespace,
                thread_id,
                stored,
                tokens=to_stored(counts, len(payloads)),
                expected_version=expected_version,
                idempotency_key=idempotency_key,
                retention=self._retention,
                digest=digest,
            ),
        )
        self._counters.appends += 1
        if not result.applied:
            return result.version
        version = result.version
        base = version - len(payloads)
        added = tuple(payloads)
        self._fences.raise_floor(thread_id, version)
        if base == 0:
            # A brand-new thread: the batch is the whole conversation.
            self._l1.put(
                conversation_from_payloads(thread_id, version, added, counts), confirmed=sent
            )
        else:
            self._l1.extend(thread_id, base, added, counts, version, confirmed=sent)
        if self._l2 is not None:
            if base == 0:
                await self._l2.fill(thread_id, version, stored, counts, written=True)
            else:
                await self._l2.append(thread_id, base, version, stored, counts)
        return version

    async def splice(
        self,
        thread_id: str,
        bounds: slice,
        messages: Sequence[Mapping[str, Any] | Message],
        payloads: list[bytes],
        expected_version: int | None,
        idempotency_key: str | None,
    ) -> SpliceResult:
        refuse_reserved(payloads)
        counts = await self._count(messages, payloads) if payloads else {}
        stored = await self._sealed(thread_id, payloads)
        # Opened inside the store's transaction: one that does not open is not removed.
        cipher = self._cipher
        removed_as: Rewrite = (
            partial(_unsealed, self._namespace, thread_id)
            if cipher is None
            else partial(cipher.open, thread_id)
        )
        sent = self._ticks()
        result = await self._digested(
            idempotency_key,
            partial(splice_digest, bounds.start, bounds.stop, payloads),
            lambda digest: self._store.splice(
                self._namespace,
                thread_id,
                bounds.start,
                bounds.stop,
                stored,
                tokens=to_stored(counts, len(payloads)),
                expected_version=expected_version,
                idempotency_key=idempotency_key,
                retention=self._retention,
                digest=digest,
                removed_as=removed_as,
            ),
        )
        if not result.applied:
            return result
        self._counters.splices += 1
        version = result.version
        self._fences.raise_floor(thread_id, version)
        self._l1.splice(
            thread_id,
            result.base_version,
            bounds,
            tuple(payloads),
            counts,
            version,
            confirmed=sent,
        )
        if self._l2 is not None:
            # Rewriting the whole value would cost the thread's length: it is fenced at
            # the new version instead, and the next read anywhere refills it.
            await self._l2.fence(thread_id, version, announce=version)
        return result

    async def fork(self, source_id: str, new_id: str, at_version: int | None) -> int:
        cipher = self._cipher
        version = await self._store.fork(
            self._namespace,
            source_id,
            new_id,
            at_version=at_version,
            retention=self._retention,
            # The copy is sealed afresh: the associated data names the thread.
            rewrite=None if cipher is None else partial(cipher.rebind, source_id, new_id),
        )
        self._counters.forks += 1
        self._fences.raise_floor(new_id, version)
        self._l1.drop_older(new_id, version, "stale")
        if self._l2 is not None:
            await self._l2.fence(new_id, version, announce=version)
        return version

    async def _sealed(self, thread_id: str, payloads: list[bytes]) -> list[bytes]:
        """The payloads as the store and L2 keep them: sealed if encryption is on."""
        if self._cipher is None or not payloads:
            return payloads
        return await sized(self._cipher.seal, thread_id, payloads)

    async def _digested(
        self,
        idempotency_key: str | None,
        digest_of: Callable[..., bytes],
        write: Callable[[bytes | None], Awaitable[_R]],
    ) -> _R:
        """``write`` with the idempotency digest of the plaintext, when encrypted (the sealed
        payloads differ on every try). It is keyed by the newest key; a retry whose first
        try was under an older key is told apart by that key's digest, tried next."""
        if self._cipher is None or idempotency_key is None:
            return await write(None)
        digests = self._cipher.digests(lambda key: digest_of(key=key))
        digest = next(digests)
        while True:
            try:
                return await write(digest)
            except IdempotencyKeyReused:
                older = next(digests, None)
                if older is None:
                    raise
                digest = older

    async def _count(
        self, messages: Sequence[Mapping[str, Any] | Message], payloads: list[bytes]
    ) -> dict[str, array[int]]:
        """Each message's tokens under every key counted at append."""
        if not self._append_counters:
            return {}
        if sum(map(len, payloads)) <= _INLINE_COUNT_BYTES:
            return _count_each(self._append_counters, messages)
        # Counted from the encoded bytes: the caller may change its dicts meanwhile.
        wrapped = messages_from_raw(payloads)
        return await asyncio.to_thread(_count_each, self._append_counters, wrapped)

    async def update_thread(
        self,
        thread_id: str,
        metadata: Mapping[str, str | None] | None,
        expires_at: float | None,
    ) -> ThreadInfo:
        sent = self._ticks()
        info = await self._store.update_thread(
            self._namespace,
            thread_id,
            metadata=metadata,
            expires_at=expires_at,
            retention=self._retention,
        )
        if expires_at is not None and expires_at <= time.time():
            # Expired at once: it reads as deleted at info.version; said like a delete.
            await self._forget(thread_id, info.version, sent, purge=False)
        return info

    async def sweep_expired(self, limit: int) -> int:
        """Delete up to ``limit`` expired threads in the store, and forget them in both
        tiers as `purge` does; returns how many."""
        sent = self._ticks()
        swept = await self._store.sweep_expired(self._namespace, limit=limit)
        self._counters.deletes += len(swept)
        for start in range(0, len(swept), _SWEEP_CONCURRENCY):
            await asyncio.gather(
                *(
                    self._forget(thread_id, version, sent, purge=True)
                    for thread_id, version in swept[start : start + _SWEEP_CONCURRENCY]
                )
            )
        return len(swept)

    async def delete(self, thread_id: str, *, purge: bool = False) -> int:
        sent = self._ticks()
        version = await self._store.delete(self._namespace, thread_id)
        self._counters.deletes += 1
        await self._forget(thread_id, version, sent, purge=purge)
        return version

    async def _forget(self, thread_id: str, version: int, sent: int, *, purge: bool) -> None:
        """The thread was deleted at ``version`` by a store call sent at tick ``sent``: a
        tombstone in L1, and in L2 either a tombstone or (``purge``) no value, announced."""
        self._fences.raise_floor(thread_id, version)
        # An empty snapshot at the delete's version is the tombstone: a racing
        # fill of older history is refused by both tiers.
        self._l1.put(Conversation(thread_id, version, ()), confirmed=sent)
        if self._l2 is not None:
            if purge:
                await self._l2.purge(thread_id, version)
            else:
                await self._l2.fill(thread_id, version, (), {}, written=True)

    async def purge_namespace(self) -> int:
        purge = getattr(self._store, "purge_namespace", None)
        if purge is None:
            raise ConfigurationError(
                f"{type(self._store).__name__} has no purge_namespace(); "
                "agent-core's SQLite and PostgreSQL stores do"
            )
        removed: int = await purge(self._namespace)
        self._l1.clear("purge")
        if self._l2 is not None:
            await self._l2.drop_all()
        return removed

    async def invalidate(self, thread_id: str) -> None:
        self._fences.raise_floor(thread_id, EVERYTHING)
        self._l1.drop(thread_id, "invalidation")
        if self._l2 is not None:
            await self._l2.fence(thread_id, None, announce=EVERYTHING)


def _unsealed(namespace: str, thread_id: str, payloads: Sequence[bytes]) -> Sequence[bytes]:
    """Removed payloads as they are, unless sealed (`EncryptionKeyMissing`: kept)."""
    refuse_sealed(namespace, thread_id, payloads)
    return payloads


def _count_each(
    counters: Sequence[TokenCounter], messages: Sequence[Mapping[str, Any] | Message]
) -> dict[str, array[int]]:
    return {counter.key: array("i", map(counter.count_message, messages)) for counter in counters}
