"""`ConversationCache`: the API every caller uses to append and read threads."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
import uuid
from array import array
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from types import TracebackType
from typing import Any, Final, Literal, Self

from .._quote import quote
from .._redis import RedisClient, redis_client
from .._tasks import raise_if_cancelling
from .._token_counts import from_stored, to_stored
from .._validation import check_count, check_namespace, check_thread_id
from ..errors import CacheClosed, ConfigurationError, InvalidArgument
from ..messages import (
    DEFAULT_MAX_BATCH_MESSAGES,
    DEFAULT_MAX_MESSAGE_BYTES,
    Conversation,
    Message,
    encode_batch,
    messages_from_raw,
)
from ..observe import MemoryMonitor
from ..store import ThreadPage, ThreadStore, store_from_url
from ..tokens import TokenCounter, Window
from ..tokens._window import complete_counts, select_window
from ._bus import EVERYTHING, FILL, RESET, InvalidationBus
from ._freshness import Flight, Flights, Ticks
from ._l1 import L1Tier
from ._policy import EvictionPolicy, LRUPolicy
from ._redis_tier import DEFAULT_MAX_VALUE_BYTES, L2Entry, RedisTier
from ._stats import CacheStats, Counters
from ._tinylfu import WTinyLFUPolicy

__all__ = ["ConversationCache"]

DEFAULT_STORE_URL: Final = "sqlite:///agent-core.db"
Consistency = Literal["bounded", "strong"]
_CONSISTENCY: Final = ("bounded", "strong")
_MAX_WINDOW_MODELS: Final = 64
# Below these sizes, counting and decoding stored counts run on the loop: a thread
# hop would cost more than the work.
_INLINE_COUNT_BYTES: Final = 64 << 10
_INLINE_DECODE_MESSAGES: Final = 2_000
_MIN_SIGNING_KEY_BYTES: Final = 16
_FINGERPRINT: Final = re.compile(r"[A-Za-z0-9]{1,64}")
_POLICIES: Final[dict[str, type[EvictionPolicy]]] = {"tinylfu": WTinyLFUPolicy, "lru": LRUPolicy}


class ConversationCache:
    """Append to and read conversations of one namespace, through two cache tiers.

    Reads try the in-process L1, then Redis (L2, shared by every instance), then
    the store, and fill the tiers on the way back. Writes go to the store first,
    then extend both tiers in place and announce the new version on the
    invalidation bus. Use it as an async context manager.
    """

    def __init__(
        self,
        store: ThreadStore,
        *,
        redis_client: RedisClient | None = None,
        namespace: str = "default",
        consistency: Consistency = "bounded",
        max_staleness: float = 1.0,
        l1_max_bytes: int = 64 << 20,
        l1_ttl: float = 300.0,
        l1_policy: str = "tinylfu",
        l2_ttl: float = 86_400.0,
        redis_timeout: float = 0.05,
        compress_min_bytes: int = 1 << 20,
        lease_ttl: float = 1.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_batch_messages: int = DEFAULT_MAX_BATCH_MESSAGES,
        watch_external: bool = True,
        memory_limit: int | None = None,
        memory_check_interval: float = 1.0,
        token_models: Sequence[str] = ("gpt-4o",),
        l2_max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        l2_signing_key: bytes | str | None = None,
    ) -> None:
        if not isinstance(store, ThreadStore):
            raise ConfigurationError(
                f"store must implement ThreadStore, got {type(store).__name__}; "
                "use ConversationCache.from_urls(store='sqlite:///agent-core.db')"
            )
        if consistency not in _CONSISTENCY:
            raise ConfigurationError(
                f"consistency must be 'bounded' or 'strong', got {quote(consistency)}"
            )
        if l1_policy not in _POLICIES:
            raise ConfigurationError(
                f"l1_policy must be one of {sorted(_POLICIES)}, got {quote(l1_policy)}"
            )
        for name, value in (
            ("l1_ttl", l1_ttl),
            ("l2_ttl", l2_ttl),
            ("redis_timeout", redis_timeout),
        ):
            if not isinstance(value, int | float) or value <= 0:
                raise ConfigurationError(
                    f"{name} must be a number of seconds > 0, got {quote(value)}"
                )
        if (
            not isinstance(max_staleness, int | float)
            or isinstance(max_staleness, bool)
            or not 0 <= max_staleness <= 3600
        ):
            raise ConfigurationError(
                "max_staleness must be 0-3600 seconds (bounded mode's bound), "
                f"got {quote(max_staleness)}"
            )
        if not isinstance(lease_ttl, int | float) or lease_ttl < 0:
            raise ConfigurationError(
                f"lease_ttl must be >= 0 seconds (0 disables), got {quote(lease_ttl)}"
            )
        self._append_counters = _counters_for(token_models)
        self.store = store
        self.namespace = check_namespace(namespace)
        self.consistency: Consistency = consistency
        #: Bounded mode: a read reflects every append acknowledged this many seconds
        #: before it began (strong mode: every append acknowledged before it began).
        self.max_staleness = float(max_staleness) if consistency == "bounded" else 0.0
        self._staleness_ticks = int(self.max_staleness * 1e9)
        self.max_message_bytes = check_count("max_message_bytes", max_message_bytes, minimum=2)
        self.max_batch_messages = check_count("max_batch_messages", max_batch_messages, minimum=1)
        check_count("l1_max_bytes", l1_max_bytes, minimum=0)
        check_count("compress_min_bytes", compress_min_bytes, minimum=0)
        check_count("l2_max_value_bytes", l2_max_value_bytes, minimum=1024)
        signing_key = _signing_key(l2_signing_key)
        self._l1 = L1Tier(l1_max_bytes, ttl=l1_ttl, policy=_POLICIES[l1_policy])
        self._origin = uuid.uuid4().hex
        self._redis = redis_client
        self._owns_redis = False
        self._l2: RedisTier | None = None
        self._bus: InvalidationBus | None = None
        if redis_client is not None:
            self._l2 = RedisTier(
                redis_client,
                self.namespace,
                ttl=l2_ttl,
                timeout=redis_timeout,
                compress_min_bytes=compress_min_bytes,
                origin=self._origin,
                on_degraded=self._stop_waiting_for_fills,
                on_recover=self._forget_unannounced,
                max_value_bytes=l2_max_value_bytes,
                signing_key=signing_key,
            )
            self._bus = InvalidationBus(
                redis_client,
                self.namespace,
                origin=self._origin,
                timeout=redis_timeout,
                on_event=self._on_event,
                on_subscribed=self._forget_unannounced,
                on_lost=self._l2.fail,
            )
        self._lease_ttl = float(lease_ttl)
        self._ticks = Ticks()
        self._loads: Flights[Conversation] = Flights(self._ticks, exclusive=True)
        self._checks: Flights[tuple[int, int]] = Flights(self._ticks, exclusive=False)
        # While a thread loads: the newest version announced meanwhile. A load that
        # comes back older than this must not be cached.
        self._floors: dict[str, int] = {}
        self._fill_waiters: dict[str, asyncio.Event] = {}
        self._counters = Counters()
        self._open = False
        self._watch_external = bool(watch_external)
        # Above 80 % of the memory limit (cgroup, or ``memory_limit``) the L1 budget
        # shrinks a step per check; below 60 % it grows back to ``l1_max_bytes``.
        self._memory = MemoryMonitor(
            lambda: self._l1.max_bytes,
            self._l1.resize,
            l1_max_bytes,
            limit_bytes=memory_limit,
            interval=memory_check_interval,
            min_budget=max(1, min(l1_max_bytes, 1 << 20)),
        )
        self._background: set[asyncio.Task[None]] = set()
        # Test hooks: named points on the miss path where tests inject delays to
        # drive races ("loaded": store read done, before the L2 fill; "l1_fill":
        # before the L1 put).
        self._hooks: dict[str, Callable[[str], Awaitable[None]]] = {}
        self._window_counters: dict[str, TokenCounter] = {}

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
        unknown = sorted(set(options) - _OPTIONS)
        if unknown:
            raise ConfigurationError(
                f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(_OPTIONS))}"
            )
        client = None
        if redis is not None:
            client = redis_client(redis)
        cache = cls(store_from_url(store), redis_client=client, namespace=namespace, **options)
        cache._owns_redis = client is not None
        return cache

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        await self.store.open()
        if self._l2 is not None:
            fingerprint = _fingerprint(self.store)
            self._l2.bind(fingerprint)
            if self._bus is not None:
                self._bus.bind(fingerprint)
            await self._l2.warm_up()
        if self._watch_external:
            await self.store.watch(_ExternalChanges(self))
        if self._bus is not None:
            await self._bus.start(wait=1.0)
        self._memory.start()
        self._open = True

    async def close(self) -> None:
        self._open = False
        await self._memory.stop()
        if self._bus is not None:
            await self._bus.close()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._l2 is not None:
            await self._l2.close()
        if self._redis is not None and self._owns_redis:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
        self._l1.clear("closed")
        await self.store.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
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
        if not self._open:
            self._check_open()
        # Appends acknowledged before this tick must be seen.
        since = self._ticks() - self._staleness_ticks
        # Only valid ids enter L1, so a hit needs no validation: the hot path stays short.
        held = self._l1.get(thread_id) if type(thread_id) is str else None
        if held is not None:
            conversation, confirmed = held
            if confirmed > since:
                self._counters.l1_hits += 1
                return conversation
            version, checked = await self._checks.run(
                thread_id, since, partial(self._store_version, thread_id)
            )
            if version == conversation.version:
                self._l1.confirm(conversation, checked)
                self._counters.l1_hits += 1
                return conversation
            self._l1.drop(thread_id, "stale")
            # The load builds on the version just learned, so it starts when that was asked.
            return await self._loads.run(
                thread_id, since, partial(self._fetch, thread_id, version), started=checked
            )
        check_thread_id(thread_id)
        return await self._loads.run(thread_id, since, partial(self._fetch, thread_id, None))

    get_or_load = get

    async def _store_version(
        self, thread_id: str, flight: Flight[tuple[int, int]]
    ) -> tuple[int, int]:
        """The store's version of the thread, and the tick taken before asking
        (concurrent readers share a query that started late enough for them)."""
        self._counters.version_checks += 1
        return await self.store.version(self.namespace, thread_id), flight.started

    async def _fetch(
        self, thread_id: str, version: int | None, flight: Flight[Conversation]
    ) -> Conversation:
        """Load a thread, and keep it in L1 unless a newer version was announced meanwhile.

        ``version``: the store's version, if asked at ``flight.started``.
        """
        self._floors[thread_id] = 0
        try:
            conversation = await self._fetch_uncached(thread_id, version)
            if "l1_fill" in self._hooks:
                await self._hooks["l1_fill"](thread_id)
            if conversation.version >= self._floors[thread_id]:
                self._l1.put(conversation, confirmed=flight.started)
            else:
                self._counters.fills_dropped += 1
            return conversation
        finally:
            del self._floors[thread_id]

    async def _fetch_uncached(self, thread_id: str, version: int | None) -> Conversation:
        """From L2 if it holds the version the store confirms (asked beside the L2 read
        unless known), else from the store; the lease keeps other instances' misses off
        the store."""
        lease = ""
        seen: int | None = None  # the version L2 held, if it held one
        if self._l2 is not None:
            if version is None:
                check = asyncio.ensure_future(self.store.version(self.namespace, thread_id))
                try:
                    entry = await self._l2.get(thread_id)
                except BaseException:
                    check.cancel()
                    raise
                version = await check
                self._counters.version_checks += 1
            else:
                entry = await self._l2.get(thread_id)
            if _holds(entry, version):
                return self._served_by_l2(thread_id, entry)
            seen = None if entry is None else entry.version
            if self._lease_ttl > 0:
                token = uuid.uuid4().hex
                acquired = await self._l2.acquire(thread_id, token, self._lease_ttl)
                if isinstance(acquired, L2Entry) and _holds(acquired, version):
                    return self._served_by_l2(thread_id, acquired)  # filled meanwhile
                if acquired is True:
                    lease = token
                elif acquired is False:
                    conversation = await self._await_fill(thread_id, version)
                    if conversation is not None:
                        return conversation
        try:
            records = await self.store.read(self.namespace, thread_id)
        except BaseException:
            if lease and self._l2 is not None:
                await self._l2.release_lease(thread_id, lease)
            raise
        self._counters.store_loads += 1
        self._counters.misses += 1
        if "loaded" in self._hooks:
            await self._hooks["loaded"](thread_id)
        if len(records.tokens) > _INLINE_DECODE_MESSAGES:
            counts = await asyncio.to_thread(from_stored, records.tokens)
        else:
            counts = from_stored(records.tokens)
        if self._l2 is not None:
            # Also releases the lease and wakes the instances waiting on it. A version L2
            # held beyond what the store then had was never written: it is replaced.
            bogus = seen if seen is not None and seen > records.version else None
            await self._l2.fill(
                thread_id, records.version, records.payloads, counts, lease=lease, bogus=bogus
            )
        return Conversation._from_payloads(thread_id, records.version, records.payloads, counts)

    def _served_by_l2(self, thread_id: str, entry: L2Entry | None) -> Conversation:
        assert entry is not None
        assert entry.payloads is not None
        self._counters.l2_hits += 1
        return Conversation._from_payloads(thread_id, entry.version, entry.payloads, entry.counts)

    async def _await_fill(self, thread_id: str, version: int) -> Conversation | None:
        """Another instance holds the load lease: wait to be woken by its fill.

        Its fill event may come before we listen, so L2 is read once after listening
        starts; and whatever ends the wait (the event, a resubscription or Redis
        trouble, the lease running out), L2 is read again before going to the store.
        """
        assert self._l2 is not None
        self._counters.lease_waits += 1
        event = self._fill_waiters[thread_id] = asyncio.Event()
        try:
            entry = await self._l2.get(thread_id)
            if not _holds(entry, version):
                try:
                    async with asyncio.timeout(self._lease_ttl):
                        await event.wait()
                except TimeoutError:
                    raise_if_cancelling()
                entry = await self._l2.get(thread_id)
        finally:
            self._fill_waiters.pop(thread_id, None)
        if not _holds(entry, version):
            return None
        return self._served_by_l2(thread_id, entry)

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
        counts = await self._count(messages, payloads)
        # Every append acknowledged before this tick is committed before ours.
        sent = self._ticks()
        result = await self.store.append(
            self.namespace,
            thread_id,
            payloads,
            tokens=to_stored(counts, len(payloads)),
            expected_version=expected_version,
            idempotency_key=idempotency_key,
        )
        self._counters.appends += 1
        if not result.applied:
            return result.version
        version = result.version
        base = version - len(payloads)
        added = tuple(payloads)
        self._raise_floor(thread_id, version)
        if base == 0:
            # A brand-new thread: the batch is the whole conversation.
            self._l1.put(
                Conversation._from_payloads(thread_id, version, added, counts), confirmed=sent
            )
        else:
            self._l1.extend(thread_id, base, added, counts, version, confirmed=sent)
        if self._l2 is not None:
            if base == 0:
                await self._l2.fill(thread_id, version, payloads, counts, written=True)
            else:
                await self._l2.append(thread_id, base, version, payloads, counts)
        return version

    async def _count(
        self, messages: Sequence[dict[str, Any] | Message], payloads: list[bytes]
    ) -> dict[str, array[int]]:
        """Each message's tokens under every key counted at append."""
        if not self._append_counters:
            return {}
        if sum(map(len, payloads)) <= _INLINE_COUNT_BYTES:
            return _count_each(self._append_counters, messages)
        # Counted from the encoded bytes: the caller may change its dicts meanwhile.
        wrapped = messages_from_raw(payloads)
        return await asyncio.to_thread(_count_each, self._append_counters, wrapped)

    async def delete(self, thread_id: str) -> int:
        """Delete the thread's messages; returns its new version (versions never go back)."""
        self._check_open()
        check_thread_id(thread_id)
        sent = self._ticks()
        version = await self.store.delete(self.namespace, thread_id)
        self._counters.deletes += 1
        self._raise_floor(thread_id, version)
        # An empty snapshot at the delete's version is the tombstone: a racing
        # fill of older history is refused by both tiers.
        self._l1.put(Conversation(thread_id, version, ()), confirmed=sent)
        if self._l2 is not None:
            await self._l2.fill(thread_id, version, (), {}, written=True)
        return version

    async def invalidate(self, thread_id: str) -> None:
        """Drop every cached copy of the thread, here and in every other instance."""
        self._check_open()
        check_thread_id(thread_id)
        self._raise_floor(thread_id, EVERYTHING)
        self._l1.drop(thread_id, "invalidation")
        if self._l2 is not None:
            await self._l2.fence(thread_id, None, announce=EVERYTHING)

    def _raise_floor(self, thread_id: str, version: int) -> None:
        if thread_id in self._floors and self._floors[thread_id] < version:
            self._floors[thread_id] = version

    # -- events ----------------------------------------------------------------------

    def _on_event(self, kind: str, thread_id: str, version: int, origin: str) -> None:
        if kind == FILL:
            event = self._fill_waiters.get(thread_id)
            if event is not None:
                event.set()
            return
        if origin == self._origin:
            return
        if kind == RESET:
            self._forget_unannounced()
            return
        self._counters.invalidations_received += 1
        self._raise_floor(thread_id, version)
        if self._l1.drop_older(thread_id, version, "invalidation"):
            self._counters.invalidations_applied += 1

    def _external_change(self, namespace: str, thread_id: str, version: int) -> None:
        if namespace != self.namespace:
            return
        self._counters.external_changes += 1
        self._raise_floor(thread_id, version)
        self._l1.drop_older(thread_id, version, "external")
        if self._l2 is not None:
            task = asyncio.get_running_loop().create_task(self._l2.fence(thread_id, version))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _stop_waiting_for_fills(self) -> None:
        """Redis is unreachable: a fill event may never come, so waiters go to the store."""
        for event in self._fill_waiters.values():
            event.set()

    def _forget_unannounced(self) -> None:
        """Events may have been missed: nothing in L1 or loading now can be trusted."""
        self._l1.clear("reconnect")
        self._stop_waiting_for_fills()
        for thread_id in self._floors:
            self._floors[thread_id] = EVERYTHING

    # -- token windows ---------------------------------------------------------------

    async def window(
        self,
        thread_id: str,
        *,
        max_tokens: int,
        model: str,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> Window:
        """The newest messages of the thread that fit ``max_tokens`` for ``model``.

        System and developer messages are always kept; a tool call is never split
        from its results; the budget covers chat overhead, reply priming and the
        ``tools`` definitions. Counts come from those stored at append: messages
        without one for the model's encoding are counted once, and their counts
        stored. Raises `TokenBudgetExceeded` if the newest message does not fit.
        """
        check_count("max_tokens", max_tokens, minimum=1)
        counter = self._window_counter(model)
        tools_tokens = (
            0 if tools is None else counter.count_messages([], tools) - counter.reply_priming
        )
        conversation = await self.get(thread_id)
        index, built, counted = await complete_counts(conversation, counter)
        if built:
            self._l1.reweigh(conversation)
        if counted:
            await self._store_counts(conversation, counter.key, index.counts, counted)
        return select_window(conversation, index, counter, max_tokens, tools_tokens)

    def _window_counter(self, model: str) -> TokenCounter:
        counter = self._window_counters.get(model) if type(model) is str else None
        if counter is None:
            counter = TokenCounter.for_model(model)
            if len(self._window_counters) >= _MAX_WINDOW_MODELS:
                self._window_counters.clear()
            self._window_counters[model] = counter
        return counter

    async def _store_counts(
        self, conversation: Conversation, key: str, counts: array[int], counted: list[int]
    ) -> None:
        """Store counts made for a snapshot, so no instance counts those messages again.

        The store is keyed by seq, which snapshots don't hold: it is read once more,
        and nothing is written if the thread moved on meanwhile.
        """
        thread_id = conversation.thread_id
        records = await self.store.read(self.namespace, thread_id)
        if records.version != conversation.version or len(records.seqs) != len(counts):
            return
        seqs = records.seqs
        await self.store.set_tokens(
            self.namespace, thread_id, key, {seqs[i]: counts[i] for i in counted}
        )
        self._counters.late_counts += len(counted)
        if self._l2 is not None:
            await self._l2.annotate(thread_id, conversation.version, {key: counts})

    # -- other -----------------------------------------------------------------------

    async def list_threads(self, *, limit: int = 100, after: str | None = None) -> ThreadPage:
        """Non-empty threads of this namespace in id order; page with ``next_cursor``."""
        self._check_open()
        return await self.store.list_threads(self.namespace, limit=limit, after=after)

    async def purge_namespace(self) -> int:
        """Remove every thread of this namespace from the store and L2, keeping nothing.

        IRREVERSIBLE, and only for a namespace that will never be used again (a
        benchmark's or a test's own): unlike `delete` it keeps no versions, so other
        instances still holding the namespace's threads would not see them change.
        Returns the number of threads removed from the store.
        """
        self._check_open()
        purge = getattr(self.store, "purge_namespace", None)
        if purge is None:
            raise ConfigurationError(
                f"{type(self.store).__name__} has no purge_namespace(); "
                "agent-core's SQLite and PostgreSQL stores do"
            )
        removed: int = await purge(self.namespace)
        self._l1.clear("purge")
        if self._l2 is not None:
            await self._l2.drop_all()
        return removed

    def stats(self) -> CacheStats:
        c = self._counters
        l2 = self._l2.counters if self._l2 is not None else None
        return CacheStats(
            l1_hits=c.l1_hits,
            l2_hits=c.l2_hits,
            misses=c.misses,
            store_loads=c.store_loads,
            appends=c.appends,
            deletes=c.deletes,
            evictions=dict(self._l1.evictions),
            invalidations_received=c.invalidations_received,
            invalidations_applied=c.invalidations_applied,
            fills_dropped=c.fills_dropped,
            external_changes=c.external_changes,
            l2_fills_refused=l2.fills_refused if l2 else 0,
            lease_waits=c.lease_waits,
            redis_errors=l2.errors if l2 else 0,
            redis_last_error=l2.last_error if l2 else "",
            bus_subscriptions=self._bus.subscriptions if self._bus else 0,
            bus_corrupt=self._bus.corrupt if self._bus else 0,
            l2_corrupt=l2.corrupt if l2 else 0,
            degraded=self._l2 is not None
            and (self._l2.degraded or not (self._bus is not None and self._bus.subscribed)),
            l1_bytes=self._l1.used_bytes,
            l1_max_bytes=self._l1.max_bytes,
            l1_entries=len(self._l1),
            memory=self._memory.snapshot(),
            consistency=self.consistency,
            late_counts=c.late_counts,
            version_checks=c.version_checks,
        )


# Keyword options of ConversationCache that from_urls passes through.
_OPTIONS: Final = frozenset(
    name
    for name in inspect.signature(ConversationCache.__init__).parameters
    if name not in ("self", "store", "redis_client", "namespace")
)


class _ExternalChanges:
    """Hears the store's watcher on behalf of a cache."""

    def __init__(self, cache: ConversationCache) -> None:
        self._cache = cache

    def changed(self, namespace: str, thread_id: str, version: int) -> None:
        self._cache._external_change(namespace, thread_id, version)

    def reset(self) -> None:
        self._cache._forget_unannounced()


def _holds(entry: L2Entry | None, version: int) -> bool:
    """The L2 entry holds the messages of exactly the version the store confirmed."""
    return entry is not None and entry.payloads is not None and entry.version == version


def _signing_key(key: object) -> bytes | None:
    """``l2_signing_key`` as bytes: at least 16 bytes (a str is UTF-8 encoded), or None."""
    if key is None:
        return None
    raw = key.encode() if isinstance(key, str) else key
    if not isinstance(raw, bytes) or len(raw) < _MIN_SIGNING_KEY_BYTES:
        raise ConfigurationError(
            f"l2_signing_key must be bytes or a str of at least {_MIN_SIGNING_KEY_BYTES} "
            "bytes, e.g. secrets.token_hex(32), or None (values are not signed)"
        )
    return raw


def _fingerprint(store: ThreadStore) -> str:
    fingerprint = store.fingerprint
    if not isinstance(fingerprint, str) or not _FINGERPRINT.fullmatch(fingerprint):
        raise ConfigurationError(
            f"{type(store).__name__}.fingerprint must be 1-64 characters of A-Z a-z 0-9 "
            f"once the store is open, got {quote(fingerprint)}"
        )
    return fingerprint


def _counters_for(models: object) -> tuple[TokenCounter, ...]:
    """One counter per distinct count key among ``models``."""
    if isinstance(models, str) or not isinstance(models, Sequence):
        raise ConfigurationError(
            "token_models must be a sequence of model names such as ('gpt-4o',), "
            f"got {quote(models)}"
        )
    counters: dict[str, TokenCounter] = {}
    for model in models:
        try:
            counter = TokenCounter.for_model(model)
        except InvalidArgument as exc:
            raise ConfigurationError(f"token_models: {exc}") from None
        counters.setdefault(counter.key, counter)
    return tuple(counters.values())


def _count_each(
    counters: Sequence[TokenCounter], messages: Sequence[Mapping[str, Any] | Message]
) -> dict[str, array[int]]:
    return {counter.key: array("i", map(counter.count_message, messages)) for counter in counters}
