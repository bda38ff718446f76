"""Redis failures: killed, restarted, paused. Callers never see an error or lose a message."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from agent_core import ConversationCache

from ._poll import eventually
from ._redis_server import RedisServer, free_port
from .conftest import read_until_fresh


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


async def mixed_load(
    caches: list[ConversationCache],
    threads: int,
    stop: asyncio.Event,
    seed: int,
    calls: list[int],
) -> tuple[dict[str, list[str]], list[tuple[float, str]]]:
    """Appends and reads until ``stop``, counting each call in ``calls[0]``; returns what
    was appended and every call's latency."""
    rng = random.Random(seed)
    written: dict[str, list[str]] = {f"t{i}": [] for i in range(threads)}
    latencies: list[tuple[float, str]] = []
    counter = 0
    while not stop.is_set():
        cache = rng.choice(caches)
        thread_id = f"t{rng.randrange(threads)}"
        started = time.perf_counter()
        operation = "append"
        if rng.random() < 0.3:
            counter += 1
            text = f"{seed}-{counter}"
            await cache.append(thread_id, [user(text)])
            written[thread_id].append(text)
        else:
            operation = "get"
            conversation = await cache.get(thread_id)
            contents = [m["content"] for m in conversation.to_list()]
            mine = [c for c in contents if c.startswith(f"{seed}-")]
            # Whatever it serves, it never serves one of our writes twice or out of order.
            assert mine == sorted(set(mine), key=lambda c: int(c.split("-")[1]))
        latencies.append((time.perf_counter() - started, f"{operation} {thread_id}"))
        calls[0] += 1
        await asyncio.sleep(0.002)
    return written, latencies


async def recovered(*caches: ConversationCache) -> None:
    """Wait until every cache is back on Redis."""
    await eventually(lambda: not any(cache.stats().degraded for cache in caches), within=30)


async def more_calls(calls: list[int], count: int = 50) -> None:
    """Wait until the load has made ``count`` more calls: each phase is exercised."""
    target = calls[0] + count
    await eventually(lambda: calls[0] >= target, within=60)


async def degraded(*caches: ConversationCache) -> None:
    """Wait until every cache has noticed that Redis is gone."""
    await eventually(lambda: all(cache.stats().degraded for cache in caches), within=30)


async def test_kill_restart_and_pause(
    redis_server: RedisServer, store_url: str, namespace: str
) -> None:
    async with (
        ConversationCache.from_urls(
            store=store_url, redis=redis_server.url, namespace=namespace
        ) as a,
        ConversationCache.from_urls(
            store=store_url, redis=redis_server.url, namespace=namespace
        ) as b,
    ):
        stop = asyncio.Event()
        calls = [0]
        workers = [
            asyncio.create_task(mixed_load([a, b], threads=8, stop=stop, seed=seed, calls=calls))
            for seed in range(3)
        ]
        await more_calls(calls)
        redis_server.kill()
        await degraded(a, b)
        await more_calls(calls)  # the load goes on without Redis
        redis_server.start()
        await recovered(a, b)
        redis_server.pause()
        await degraded(a)
        paused = time.monotonic()
        await more_calls(calls)
        # The pause must outlast every deadline: a call without one would wait all this out.
        await eventually(lambda: time.monotonic() - paused >= 4.0, within=60)
        redis_server.resume()
        await recovered(a, b)
        await more_calls(calls)
        stop.set()
        results = await asyncio.gather(*workers)  # a caller error would raise here

        assert not a.stats().degraded
        assert not b.stats().degraded
        assert a.stats().redis_errors > 0
        assert a.stats().evictions.get("reconnect", 0) > 0
        latencies = [latency for _, lat in results for latency in lat]
        # No call waited out the pause (over 4 s): each Redis call has a short deadline.
        # The longest wait meant is a load lease whose holder lost Redis (lease_ttl, 1 s);
        # the bound leaves a loaded machine room above that.
        assert max(latencies)[0] < 3.0, sorted(latencies)[-3:]

        # Nothing lost or duplicated, and both instances now serve the store's truth.
        expected: dict[str, list[str]] = {}
        for written, _ in results:
            for thread_id, texts in written.items():
                expected.setdefault(thread_id, []).extend(texts)
        for thread_id, texts in expected.items():
            records = await a.store.read(namespace, thread_id)
            stored = [m["content"] for m in (await a.get(thread_id)).to_list()]
            assert sorted(stored) == sorted(texts)
            assert len(records.payloads) == len(texts)
            for cache in (a, b):
                assert (await cache.get(thread_id)).version == records.version


async def test_stale_l1_is_cleared_when_redis_comes_back(
    redis_server: RedisServer, store_url: str, namespace: str
) -> None:
    async with (
        ConversationCache.from_urls(
            store=store_url, redis=redis_server.url, namespace=namespace
        ) as a,
        ConversationCache.from_urls(
            store=store_url, redis=redis_server.url, namespace=namespace, max_staleness=0.2
        ) as b,
    ):
        await a.append("t", [user("a")])
        assert (await b.get("t")).version == 1
        redis_server.kill()
        await degraded(b)
        await a.append("t", [user("b")])  # b cannot hear of this
        # Bounded mode confirms L1 entries older than max_staleness with the store.
        await read_until_fresh(b, "t", 2, acknowledged=time.monotonic())
        redis_server.start()
        await recovered(a, b)
        assert (await b.get("t")).version == 2
        assert (await a.get("t")).to_list() == [user("a"), user("b")]


@pytest.mark.integration
async def test_no_redis_at_all_is_degraded_not_an_error(store_url: str, namespace: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    async with ConversationCache.from_urls(
        store=store_url, redis=url, namespace=namespace
    ) as cache:
        await cache.append("t", [user("a")])
        assert (await cache.get("t")).to_list() == [user("a")]
        assert cache.stats().degraded
