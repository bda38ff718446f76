"""`ConversationCache`: the API every caller uses; a thin front that validates calls
over `Loader`, `Writes`, `Windows`, `Fences` and the tiers (docs/DESIGN.md)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Final

from .._closing import AsyncClosing
from .._redis import RedisClient, redis_client
from .._tasks import TaskGroup
from .._validation import (
    check_namespace,
    check_thread_id,
)
from ..errors import CacheClosed, ConfigurationError
from ..messages import Conversation, Message, encode_batch
from ..observe import MemoryMonitor
from ..store import ThreadStore, store_from_url
from ..tokens import DEFAULT_RETAIN_RATIO, Window, WindowStrategy
from ._bus import InvalidationBus
from ._fences import Fences
from ._freshness import Ticks
from ._l1 import L1Tier
from ._lifecycle import ThreadLifecycle
from ._loader import Loader, Served
from ._options import POLICIES, CacheOptions
from ._parts import CacheParts, redis_parts, store_fingerprint
from ._read_result import ReadResult
from ._redis_tier import RedisTier
from ._stats import CacheStats, Counters, build_stats
from ._windows import Windows
from ._writes import Writes

__all__ = ["ConversationCache"]


DEFAULT_STORE_URL: Final = "sqlite:///agent-core.db"


class ConversationCache(ThreadLifecycle, AsyncClosing):
    """Append to and read conversations of one namespace, through two cache tiers.

    Reads try the in-process L1, then Redis (L2, shared by every instance), then
    the store, and fill the tiers on the way back. Writes go to the store first,
    then extend both tiers in place and announce the new version on the
    invalidation bus. Use it as an async context manager. Keyword ``options`` are
    those of `CacheOptions`.
    """

    def __init__(
        self,
        store: ThreadStore,
        *,
        redis_client: RedisClient | None = None,
        namespace: str = "default",
        **options: Any,
    ) -> None:
        if not isinstance(store, ThreadStore):
            raise ConfigurationError(
                f"store must implement ThreadStore, got {type(store).__name__}; "
                "use ConversationCache.from_urls(store='sqlite:///agent-core.db')"
            )
        self.options = settings = CacheOptions.of(options)
        self._option_values = dict(options)  # for_namespace's siblings take the same
        self.store = store
        self.namespace = check_namespace(namespace)
        self.consistency = settings.consistency
        #: Bounded mode: a read reflects every append acknowledged this many seconds
        #: before it began (strong mode: every append acknowledged before it began).
        self.max_staleness = settings.max_staleness
        self._staleness_ticks = int(self.max_staleness * 1e9)
        self.max_message_bytes = settings.max_message_bytes
        self.max_batch_messages = settings.max_batch_messages
        self._l1 = L1Tier(
            settings.l1_max_bytes, ttl=settings.l1_ttl, policy=POLICIES[settings.l1_policy]
        )
        self._counters = Counters()
        self._background = TaskGroup()
        origin = uuid.uuid4().hex
        self._fences = Fences(self.namespace, origin, self._l1, self._counters, self._background)
        self._redis = redis_client
        self._owns_redis = False
        self._owns_store = True
        self._l2: RedisTier | None = None
        self._bus: InvalidationBus | None = None
        # Each namespace seals under data keys of its own (derived once per namespace).
        keys = settings.encryption_keys
        cipher = None if keys is None else keys.cipher(self.namespace)
        if redis_client is not None:
            self._l2, self._bus = redis_parts(
                redis_client, self.namespace, settings, self._fences, origin, cipher
            )
        self._ticks = Ticks()
        parts = CacheParts(
            store,
            self.namespace,
            self._l1,
            self._l2,
            self._fences,
            self._counters,
            self._ticks,
            cipher,
        )
        self._loader = Loader(parts, lease_ttl=settings.lease_ttl, probe=settings.probe)
        self._writes = Writes(parts, settings.append_counters, settings.retention)
        self._windows = Windows(parts, self._fresh_l1_hit, self._load, self._background)
        self._open = False
        # Above 80 % of the memory limit (cgroup, or ``memory_limit``) the L1 budget
        # shrinks a step per check; below 60 % it grows back to ``l1_max_bytes``.
        l1_max_bytes = settings.l1_max_bytes
        self._memory = MemoryMonitor(
            lambda: self._l1.max_bytes,
            self._l1.resize,
            l1_max_bytes,
            limit_bytes=settings.memory_limit,
            interval=settings.memory_check_interval,
            min_budget=max(1, min(l1_max_bytes, 1 << 20)),
        )

    @classmethod
    def from_urls(
        cls,
        store: str = DEFAULT_STORE_URL,
        redis: str | None = None,
        namespace: str = "default",
        **options: Any,
    ) -> ConversationCache:
        """Build a cache from a store URL and an optional Redis URL (None: no L2)."""
        check_namespace(namespace)
        CacheOptions.of(options)  # refused before any connection is made
        client = None if redis is None else redis_client(redis)
        cache = cls(store_from_url(store), redis_client=client, namespace=namespace, **options)
        cache._owns_redis = client is not None
        return cache

    def for_namespace(self, namespace: str) -> ConversationCache:
        """A cache of ``namespace`` (own L1, fences and bus) sharing this one's store, Redis
        client and options; open it after this one and close it before (it leaves both open)."""
        sibling = ConversationCache(
            self.store, redis_client=self._redis, namespace=namespace, **self._option_values
        )
        sibling._owns_store = False
        return sibling

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        if self._owns_store:
            await self.store.open()
        try:
            await self._open_tiers()
        except BaseException:
            # A failed open (Redis TLS set up wrongly, say) releases what close() would.
            await self.close()
            raise

    async def _open_tiers(self) -> None:
        if self._l2 is not None:
            fingerprint = store_fingerprint(self.store)
            self._l2.bind(fingerprint)
            if self._bus is not None:
                self._bus.bind(fingerprint)
            await self._l2.warm_up()
        if self.options.watch_external:
            await self.store.watch(self._fences)
        if self._bus is not None:
            await self._bus.start(wait=1.0)
        self._memory.start()
        self._open = True

    async def close(self) -> None:
        self._open = False
        await self._memory.stop()
        if self._bus is not None:
            await self._bus.close()
        await self._background.wait()
        if self._l2 is not None:
            await self._l2.close()
        if self._redis is not None and self._owns_redis:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
        self._l1.clear("closed")
        if self._owns_store:
            await self.store.close()

    async def _enter(self) -> None:
        await self.open()

    async def aclose(self) -> None:
        """`close`, under the name ``async with`` and `contextlib.aclosing` call."""
        await self.close()

    def _check_open(self) -> None:
        if not self._open:
            raise CacheClosed("the cache is not open: use 'async with ConversationCache...'")

    # -- reads -----------------------------------------------------------------------

    async def get(self, thread_id: str) -> Conversation:
        """The thread as an immutable snapshot (version 0 and no messages if new).

        Strong mode: the snapshot holds every append acknowledged (by any instance)
        before the call began. Bounded mode: every append acknowledged more than
        ``max_staleness`` seconds before it began.
        """
        hit = self._fresh_l1_hit(thread_id)
        if hit is not None:
            return hit
        return (await self._load(thread_id))[0]

    get_or_load = get

    async def read(self, thread_id: str) -> ReadResult[Conversation]:
        """`get`, and which tier served it (``"l1"``, ``"l2"`` or ``"store"``)."""
        conversation, source = await self._read(thread_id)
        return ReadResult(conversation, source)

    async def _read(self, thread_id: str) -> Served:
        hit = self._fresh_l1_hit(thread_id)
        if hit is not None:
            return hit, "l1"
        return await self._load(thread_id)

    def _fresh_l1_hit(self, thread_id: str) -> Conversation | None:
        """The hot path, awaiting nothing: L1's snapshot if confirmed recently enough
        (only valid ids enter L1, so a hit needs no validation)."""
        held = self._l1.get(thread_id) if self._open and type(thread_id) is str else None
        # Appends acknowledged before this tick must be seen.
        if held is not None and held[1] > self._ticks() - self._staleness_ticks:
            self._counters.l1_hits += 1
            return held[0]
        return None

    async def _load(self, thread_id: str) -> Served:
        self._check_open()  # past L1: confirm its snapshot, or load through L2 and the store
        held = self._l1.get(thread_id) if type(thread_id) is str else None
        return await self._loader.read(thread_id, self._ticks() - self._staleness_ticks, held)

    async def window(
        self,
        thread_id: str,
        *,
        max_tokens: int,
        model: str,
        tools: Sequence[Mapping[str, Any]] | None = None,
        strategy: WindowStrategy = "sliding",
        retain_ratio: float = DEFAULT_RETAIN_RATIO,
        pending_tokens: int = 0,
    ) -> Window:
        """The newest messages of the thread that fit ``max_tokens`` for ``model``.

        System and developer messages are always kept; a tool call is never split
        from its results; the budget covers chat overhead, reply priming, the
        ``tools`` definitions and ``pending_tokens`` (what the request sends after the
        window, such as a new user message). ``strategy="stable"`` keeps the window's
        start while the thread fits from there, and on an overflow moves it so that
        ``retain_ratio`` of the budget is used: turns then share a prefix that
        providers cache (docs/DESIGN.md, "Cache-stable windows"); keep ``max_tokens``
        and ``tools`` the same from turn to turn. Counts come from those stored at
        append: messages without one for the model's encoding are counted once, and
        their counts stored (in the background). Raises `TokenBudgetExceeded` if the
        newest message does not fit.
        """
        return (
            await self.read_window(
                thread_id,
                max_tokens=max_tokens,
                model=model,
                tools=tools,
                strategy=strategy,
                retain_ratio=retain_ratio,
                pending_tokens=pending_tokens,
            )
        ).value

    async def read_window(
        self,
        thread_id: str,
        *,
        max_tokens: int,
        model: str,
        tools: Sequence[Mapping[str, Any]] | None = None,
        strategy: WindowStrategy = "sliding",
        retain_ratio: float = DEFAULT_RETAIN_RATIO,
        pending_tokens: int = 0,
    ) -> ReadResult[Window]:
        """`window`, and which tier served the snapshot it was cut from."""
        window, source = await self._windows.window(
            thread_id, max_tokens, model, tools, strategy, retain_ratio, pending_tokens
        )
        return ReadResult(window, source)

    # -- writes ----------------------------------------------------------------------

    async def append(
        self,
        thread_id: str,
        messages: Sequence[dict[str, Any] | Message],
        *,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        """Append a batch of messages; returns the thread's new version.

        With ``expected_version`` it is compare-and-append (`VersionConflict` on a
        mismatch). A repeated ``idempotency_key`` writes nothing and returns the
        version its first use produced.
        """
        self._check_open()
        check_thread_id(thread_id)
        payloads = encode_batch(
            messages,
            max_message_bytes=self.max_message_bytes,
            max_batch_messages=self.max_batch_messages,
        )
        return await self._writes.append(
            thread_id, messages, payloads, expected_version, idempotency_key
        )

    async def delete(self, thread_id: str) -> int:
        """Delete the thread's messages; returns its new version (versions never go back)."""
        self._check_open()
        check_thread_id(thread_id)
        return await self._writes.delete(thread_id)

    async def invalidate(self, thread_id: str) -> None:
        """Drop every cached copy of the thread, here and in every other instance."""
        self._check_open()
        check_thread_id(thread_id)
        await self._writes.invalidate(thread_id)

    def evict_local(self, thread_id: str) -> bool:
        """Drop the thread from this instance's L1 only (L2 and other instances keep it);
        True if it was held."""
        self._check_open()
        check_thread_id(thread_id)
        return self._l1.drop(thread_id, "evict_local")

    def clear_local(self) -> None:
        """Drop every thread from this instance's L1 only (L2 and other instances keep them)."""
        self._check_open()
        self._l1.clear("evict_local")

    # -- other -----------------------------------------------------------------------

    async def purge_namespace(self) -> int:
        """Remove every thread of this namespace from the store and L2; returns how many.

        IRREVERSIBLE, for a namespace never used again (a benchmark's or a test's own):
        it keeps no versions, so other instances holding its threads would not see them
        change."""
        self._check_open()
        return await self._writes.purge_namespace()

    def stats(self) -> CacheStats:
        return build_stats(
            self._counters, self._l1, self._l2, self._bus, self._memory, self.consistency
        )
