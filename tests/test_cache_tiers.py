"""The two tiers over real Redis and real stores: cold starts, fills, fences, herds."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis.asyncio as redis

from agent_core import CacheClosed, ConfigurationError, ConversationCache, InvalidThreadId

from ._poll import eventually
from ._probe import Holds
from .conftest import CacheFactory, l2_key, read_until_fresh


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


async def test_cold_starts_hit_l2(make_cache: CacheFactory) -> None:
    async with make_cache() as writer:
        await writer.append("t", [user("a"), user("b")])
        await writer.append("t", [user("c")])
    for _ in range(5):
        async with make_cache() as invocation:
            conversation = await invocation.get("t")
            assert conversation.to_list() == [user("a"), user("b"), user("c")]
            stats = invocation.stats()
            assert (stats.l2_hits, stats.misses, stats.store_loads) == (1, 0, 0)
            assert (await invocation.get("t")) is conversation
            assert invocation.stats().l1_hits == 1


async def test_first_read_of_an_uncached_thread_fills_both_tiers(
    make_cache: CacheFactory, namespace: str, store_url: str
) -> None:
    async with ConversationCache.from_urls(store=store_url, namespace=namespace) as plain:
        await plain.append("t", [user("a")])  # written without Redis: L2 knows nothing
    async with make_cache() as first:
        assert (await first.get("t")).version == 1
        assert first.stats().store_loads == 1
    async with make_cache() as second:
        assert (await second.get("t")).version == 1
        assert (second.stats().l2_hits, second.stats().store_loads) == (1, 0)


async def test_own_appends_extend_both_tiers_without_reloading(make_cache: CacheFactory) -> None:
    async with make_cache() as cache:
        await cache.append("t", [user("0")])
        for i in range(1, 20):
            await cache.append("t", [user(str(i))])
            assert (await cache.get("t")).version == i + 1
        stats = cache.stats()
        assert (stats.store_loads, stats.l2_hits, stats.l1_hits) == (0, 0, 19)
    async with make_cache() as other:
        conversation = await other.get("t")
        assert conversation.to_list() == [user(str(i)) for i in range(20)]
        assert other.stats().l2_hits == 1


async def test_other_instances_see_appends_and_deletes(make_cache: CacheFactory) -> None:
    async with make_cache() as a, make_cache() as b:
        await a.append("t", [user("a")])
        assert (await b.get("t")).version == 1
        await a.append("t", [user("b")])

        async def b_sees_2() -> bool:
            return (await b.get("t")).version == 2

        await eventually(b_sees_2)
        assert b.stats().invalidations_applied >= 1
        assert (await b.get("t")).to_list() == [user("a"), user("b")]
        await a.delete("t")

        async def b_sees_empty() -> bool:
            return (await b.get("t")).messages == ()

        await eventually(b_sees_empty)


async def test_strong_mode_reads_your_writes_across_instances(make_cache: CacheFactory) -> None:
    async with make_cache(consistency="strong") as a, make_cache(consistency="strong") as b:
        for i in range(20):
            version = await a.append("t", [user(str(i))])
            # No waiting: the very next read elsewhere sees the write.
            assert (await b.get("t")).version == version
        await a.delete("t")
        assert (await b.get("t")).messages == ()


async def test_strong_mode_without_redis_checks_the_store(store_url: str, namespace: str) -> None:
    async with (
        ConversationCache.from_urls(store=store_url, namespace=namespace) as a,
        ConversationCache.from_urls(
            store=store_url, namespace=namespace, consistency="strong"
        ) as b,
    ):
        await a.append("t", [user("a")])
        assert (await b.get("t")).version == 1
        await a.append("t", [user("b")])
        assert (await b.get("t")).version == 2
        assert b.stats().l1_hits == 0
        assert (await b.get("t")).version == 2
        assert b.stats().l1_hits == 1
        assert b.stats().version_checks == 2  # one per L1 hit


async def test_bounded_mode_without_redis_is_stale_at_most_max_staleness(
    store_url: str, namespace: str
) -> None:
    async with (
        ConversationCache.from_urls(store=store_url, namespace=namespace) as a,
        ConversationCache.from_urls(store=store_url, namespace=namespace, max_staleness=0.2) as b,
    ):
        await a.append("t", [user("a")])
        assert (await b.get("t")).version == 1
        await a.append("t", [user("b")])
        await read_until_fresh(b, "t", 2, acknowledged=time.monotonic())
        assert b.stats().version_checks >= 1


async def test_concurrent_misses_make_one_store_load(make_cache: CacheFactory) -> None:
    async with make_cache() as writer:
        await writer.append("t", [user(str(i)) for i in range(100)])
        await writer.invalidate("t")
    async with make_cache() as cold:
        results = await asyncio.gather(*(cold.get("t") for _ in range(1000)))
        assert {r.version for r in results} == {100}
        stats = cold.stats()
        assert stats.store_loads == 1
        assert stats.misses + stats.l1_hits == 1000 or stats.store_loads == 1


async def test_invalidate_drops_every_tier(make_cache: CacheFactory) -> None:
    async with make_cache() as a, make_cache() as b:
        await a.append("t", [user("a")])
        await b.get("t")
        await a.invalidate("t")

        async def b_dropped() -> bool:
            return b.stats().invalidations_applied == 1

        await eventually(b_dropped)
        assert (await b.get("t")).version == 1
        assert b.stats().store_loads == 1


async def test_corrupt_l2_bytes_are_a_miss_and_a_metric(
    make_cache: CacheFactory, redis_url: str, namespace: str
) -> None:
    async with make_cache() as writer:
        await writer.append("t", [user("a"), user("b")])
    key = l2_key(writer, "t")
    client = redis.Redis.from_url(redis_url)
    try:
        good = await client.get(key)
        assert isinstance(good, bytes)
        # The first message's "{" (after the header and a 5-byte chunk header) made "z":
        # not a JSON object.
        flipped = good[:26] + b"z" + good[27:]
        for garbage in (b"garbage", good[:21] + b"\x10\x05\x00\x00\x00hello", flipped):
            await client.set(key, garbage)
            async with make_cache() as reader:
                conversation = await reader.get("t")
                assert conversation.to_list() == [user("a"), user("b")]
                stats = reader.stats()
                assert (stats.l2_corrupt, stats.store_loads) == (1, 1)
            async with make_cache() as repaired:  # the load put the right bytes back
                assert (await repaired.get("t")).version == 2
                assert repaired.stats().l2_hits == 1
    finally:
        await client.aclose()


async def test_large_conversations_are_compressed_in_l2(
    make_cache: CacheFactory, redis_url: str, namespace: str
) -> None:
    batch = [user("word " * 5000) for _ in range(40)]
    async with make_cache(compress_min_bytes=1024) as writer:
        await writer.append("big", batch)
        await writer.append("big", [user("small")])
        key = l2_key(writer, "big")
    client = redis.Redis.from_url(redis_url)
    try:
        stored = await client.strlen(key)
    finally:
        await client.aclose()
    assert stored < sum(len(m["content"]) for m in batch) / 10
    async with make_cache() as reader:
        assert (await reader.get("big")).to_list() == [*batch, user("small")]


# -- races, driven by a probe that holds a load at a chosen point -----------------------------


async def test_fill_racing_an_append_leaves_no_stale_entry(make_cache: CacheFactory) -> None:
    probe = Holds()
    async with make_cache() as writer, make_cache(probe=probe) as reader:
        await writer.append("t", [user("a")])
        await writer.invalidate("t")
        reached, release = probe.hold("loaded")
        load = asyncio.create_task(reader.get("t"))
        await reached.wait()  # the reader has version 1 from the store, not yet cached
        heard = reader.stats().invalidations_received
        await writer.append("t", [user("b")])
        # the invalidation reaches the reader meanwhile
        await eventually(lambda: reader.stats().invalidations_received > heard)
        release.set()
        assert (await load).version == 1  # it started before the append returned
        stats = reader.stats()
        assert stats.l2_fills_refused == 1  # L2 already knew version 2
        assert stats.fills_dropped == 1  # and so did L1
        probe.clear()
        assert (await reader.get("t")).version == 2
    async with make_cache() as fresh:
        assert (await fresh.get("t")).to_list() == [user("a"), user("b")]


async def test_fill_racing_a_delete_cannot_resurrect(make_cache: CacheFactory) -> None:
    probe = Holds()
    async with make_cache() as writer, make_cache(probe=probe) as reader:
        await writer.append("t", [user("secret")])
        await writer.invalidate("t")
        reached, release = probe.hold("loaded")
        load = asyncio.create_task(reader.get("t"))
        await reached.wait()
        heard = reader.stats().invalidations_received
        await writer.delete("t")
        await eventually(lambda: reader.stats().invalidations_received > heard)
        release.set()
        await load
        probe.clear()
        assert (await reader.get("t")).messages == ()
    async with make_cache() as fresh:
        assert (await fresh.get("t")).messages == ()
        assert fresh.stats().l2_hits == 1  # served by the tombstone, not the store


async def test_invalidation_before_the_l1_fill_drops_the_fill(make_cache: CacheFactory) -> None:
    probe = Holds()
    async with make_cache() as writer, make_cache(probe=probe) as reader:
        await writer.append("t", [user("a")])
        await writer.invalidate("t")
        reached, release = probe.hold("l1_fill")
        load = asyncio.create_task(reader.get("t"))
        await reached.wait()  # loaded and filled L2 at version 1; L1 not yet
        heard = reader.stats().invalidations_received
        await writer.append("t", [user("b")])
        await eventually(lambda: reader.stats().invalidations_received > heard)
        release.set()
        await load
        assert reader.stats().fills_dropped == 1
        assert reader.stats().l1_entries == 0
        probe.clear()
        assert (await reader.get("t")).version == 2


async def test_bad_options_are_refused(store_url: str) -> None:
    with pytest.raises(ConfigurationError, match="Redis URL"):
        ConversationCache.from_urls(store=store_url, redis="localhost:6379")
    with pytest.raises(ConfigurationError, match="consistency"):
        ConversationCache.from_urls(store=store_url, consistency="eventual")
    with pytest.raises(ConfigurationError, match="lease_ttl"):
        ConversationCache.from_urls(store=store_url, lease_ttl=-1)
    with pytest.raises(ConfigurationError, match="l1_ttl"):
        ConversationCache.from_urls(store=store_url, l1_ttl=0)
    with pytest.raises(ConfigurationError, match=r"unknown option.*l1_size.*known: .*l1_max_bytes"):
        ConversationCache.from_urls(store=store_url, l1_size=10)


async def test_reads_say_which_tier_served_them(make_cache: CacheFactory) -> None:
    async with make_cache() as writer:
        await writer.append("t", [user("a"), user("b")])
    async with make_cache() as cache:
        first = await cache.read("t")
        assert (first.source, first.value.to_list()) == ("l2", [user("a"), user("b")])
        again = await cache.read("t")
        assert (again.source, again.value) == ("l1", first.value)
        assert cache.evict_local("t") is True
        assert cache.evict_local("t") is False  # no longer held
        window = await cache.read_window("t", max_tokens=1000, model="gpt-4o")
        assert (window.source, window.value.to_list()) == ("l2", [user("a"), user("b")])
        assert (await cache.read_window("t", max_tokens=1000, model="gpt-4o")).source == "l1"
        await cache.invalidate("t")
        assert (await cache.read("t")).source == "store"
        assert (await cache.read("new")).source == "store"
        cache.clear_local()
        assert cache.stats().l1_entries == 0
        assert cache.stats().evictions["evict_local"] == 3
        with pytest.raises(InvalidThreadId):
            cache.evict_local("bad id")
        with pytest.raises(InvalidThreadId):
            await cache.read(123)  # type: ignore[arg-type]
    with pytest.raises(CacheClosed):
        cache.evict_local("t")
    with pytest.raises(CacheClosed):
        await cache.read("t")
