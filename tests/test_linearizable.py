"""Strong mode is linearizable: a read that begins after any append was acknowledged
sees it, whatever path the append took to the store and whatever reads are in flight."""

from __future__ import annotations

import asyncio
import time

import pytest

from agent_core import ConversationCache

from ._probe import Holds
from .conftest import CacheFactory


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


async def test_a_read_never_joins_a_load_that_began_before_it(
    store_url: str, redis_url: str, namespace: str
) -> None:
    # The defect: a strong read joined a single-flight load that had read the store
    # before an append was acknowledged, and returned the older version.
    probe = Holds()
    loaded, release = probe.hold("loaded")  # the first load; released, later ones pass
    async with (
        ConversationCache.from_urls(store=store_url, namespace=namespace) as writer,
        ConversationCache.from_urls(
            store=store_url, redis=redis_url, namespace=namespace, consistency="strong", probe=probe
        ) as reader,
    ):
        await writer.append("t", [user("a")])
        early = asyncio.create_task(reader.get("t"))
        await asyncio.wait_for(loaded.wait(), 10)
        await writer.append("t", [user("b")])  # acknowledged while the load is held
        late = asyncio.create_task(reader.get("t"))
        await asyncio.sleep(0)
        release.set()
        assert (await early).version == 1  # began before the append: either is right
        assert (await late).version == 2


@pytest.mark.parametrize("consistency", ["strong", "bounded"])
async def test_a_writer_that_bypasses_redis_is_seen(
    make_cache: CacheFactory, store_url: str, namespace: str, consistency: str
) -> None:
    # A writer cut off from Redis (here: configured without it, as a partitioned
    # instance is after its timeouts) moves the store and not L2 or the bus. Strong
    # reads must not trust L2's version for that; bounded reads within their bound.
    async with (
        make_cache(consistency=consistency, max_staleness=0.0) as reader,
        ConversationCache.from_urls(store=store_url, namespace=namespace) as cut_off,
    ):
        await reader.append("t", [user("a")])
        assert (await reader.get("t")).version == 1
        await cut_off.append("t", [user("b")])
        assert (await reader.get("t")).to_list() == [user("a"), user("b")]
        # A cold instance must not take L2's older value either.
        async with make_cache(consistency=consistency, max_staleness=0.0) as cold:
            assert (await cold.get("t")).version == 2


async def test_concurrent_bounded_reads_share_a_version_check(make_cache: CacheFactory) -> None:
    async with make_cache(max_staleness=0.05) as cache:
        await cache.append("t", [user("a")])
        written = time.monotonic()
        while time.monotonic() < written + 0.1:  # let the entry age past the bound
            await asyncio.sleep(0.01)
        before = cache.stats().version_checks
        results = await asyncio.gather(*(cache.get("t") for _ in range(50)))
        assert {r.version for r in results} == {1}
        assert cache.stats().version_checks - before == 1


async def test_a_stale_l1_entry_costs_one_version_check(make_cache: CacheFactory) -> None:
    async with make_cache(consistency="strong") as reader, make_cache() as writer:
        await writer.append("t", [user("a")])
        assert (await reader.get("t")).version == 1
        await writer.append("t", [user("b")])
        before = reader.stats()
        assert (await reader.get("t")).version == 2
        after = reader.stats()
        # The L1 check learns version 2; L2 (extended by the writer) serves it.
        assert after.version_checks - before.version_checks == 1
        assert after.l2_hits - before.l2_hits == 1
