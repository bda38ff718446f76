"""Retention: expires_at per thread, the namespace's retention, reading an expired thread
as deleted on every instance, writes after expiry, and the sweep, on both stores."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis.asyncio import Redis

from agent_core import ConfigurationError, ConversationCache, InvalidArgument, VersionConflict

from ._poll import eventually
from .conftest import CacheFactory, l2_key


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def texts(conversation: Any) -> list[str]:
    return [m.to_dict()["content"] for m in conversation.messages]


PAST = datetime(2001, 1, 1, tzinfo=UTC)


async def test_writes_extend_the_expiry_by_the_retention(store_url: str, namespace: str) -> None:
    async with ConversationCache.from_urls(
        store=store_url, namespace=namespace, retention=3600
    ) as cache:
        before = time.time()
        await cache.append("t", [user("a")])
        first = (await cache.thread_info("t")).expires_at
        assert first is not None
        assert before + 3600 - 5 <= first.timestamp() <= time.time() + 3600 + 5
        await cache.splice("t", 0, 0, [user("b")])
        second = (await cache.thread_info("t")).expires_at
        assert second is not None
        assert second >= first
        # An explicit expiry further out is kept by writes (they only extend it) ...
        later = datetime.now(UTC) + timedelta(days=30)
        await cache.update_thread("t", expires_at=later)
        await cache.append("t", [user("c")])
        kept = (await cache.thread_info("t")).expires_at
        assert kept is not None
        assert abs(kept.timestamp() - later.timestamp()) < 0.01
        # ... and an explicit one nearer in is set as given.
        sooner = datetime.now(UTC) + timedelta(minutes=5)
        info = await cache.update_thread("t", expires_at=sooner)
        assert info.expires_at is not None
        assert abs(info.expires_at.timestamp() - sooner.timestamp()) < 0.01


async def test_without_retention_threads_do_not_expire(cache: ConversationCache) -> None:
    await cache.append("t", [user("a")])
    assert (await cache.thread_info("t")).expires_at is None


async def test_an_expired_thread_reads_as_deleted_at_once(make_cache: CacheFactory) -> None:
    async with make_cache(consistency="strong") as a, make_cache(consistency="strong") as b:
        await a.append("t", [user("a"), user("b")])
        await a.update_thread("t", metadata={"user": "u1"})
        assert texts(await b.get("t")) == ["a", "b"]  # held in b's L1 and in L2
        await a.update_thread("t", expires_at=PAST)
        for reader in (a, b):
            conversation = await reader.get("t")
            assert (conversation.version, conversation.messages) == (3, ())
        async with make_cache() as cold:
            assert (await cold.get("t")).messages == ()
        info = await a.thread_info("t")
        assert (info.version, info.message_count, dict(info.metadata)) == (3, 0, {})
        assert (await a.list_threads()).thread_ids == ()
        assert (await a.list_threads(metadata={"user": "u1"})).thread_ids == ()


async def test_a_bounded_reader_sees_the_expiry_within_its_bound(
    make_cache: CacheFactory,
) -> None:
    async with make_cache() as a, make_cache(max_staleness=0.3) as b:
        await a.append("t", [user("a")])
        await b.get("t")
        # An expiry that comes by itself is announced by nobody: b's copy lasts at most
        # its bound past it. (One set in the past is announced at once, like a delete.)
        await a.update_thread("t", expires_at=datetime.now(UTC) + timedelta(seconds=0.5))
        expired = time.monotonic() + 0.5

        async def deleted() -> bool:
            started = time.monotonic()
            gone = (await b.get("t")).messages == ()
            assert gone or started - expired <= 0.3 + 0.05, "served beyond the bound"
            return gone

        await eventually(deleted, within=5.0)


async def test_a_write_after_expiry_starts_afresh(cache: ConversationCache) -> None:
    await cache.append("t", [user("old")], idempotency_key="k")
    await cache.update_thread("t", metadata={"user": "u1"}, expires_at=PAST)
    with pytest.raises(VersionConflict):  # the thread reads as version 2, not 1
        await cache.append("t", [user("new")], expected_version=1)
    # The key went with the thread: it applies afresh.
    assert await cache.append("t", [user("new")], expected_version=2, idempotency_key="k") == 3
    assert texts(await cache.get("t")) == ["new"]
    info = await cache.thread_info("t")
    assert (info.message_count, dict(info.metadata), info.expires_at) == (1, {}, None)


async def test_splice_pop_and_fork_of_expired_threads(cache: ConversationCache) -> None:
    await cache.append("src", [user("a"), user("b")])
    await cache.append("dst", [user("x")])
    await cache.update_thread("src", expires_at=PAST)
    await cache.update_thread("dst", expires_at=PAST)
    assert await cache.pop("src") is None  # nothing left to pop
    # A fork into an expired thread goes through: it reads as deleted.
    assert await cache.fork("src", "dst") == 3
    assert (await cache.get("dst")).messages == ()
    await cache.splice("src", 0, 0, [user("fresh")])
    assert texts(await cache.get("src")) == ["fresh"]


async def test_the_sweep_purges_expired_threads_on_every_tier(
    make_cache: CacheFactory, redis_url: str
) -> None:
    async with make_cache() as cache:
        for i in range(10):
            await cache.append(f"t{i}", [user(f"m{i}")], idempotency_key=f"k{i}")
            await cache.get(f"t{i}")
        expired = [f"t{i}" for i in range(0, 10, 3)]
        for thread_id in expired:
            await cache.update_thread(thread_id, expires_at=PAST)
        assert await cache.sweep_expired(limit=2) == 2
        assert await cache.sweep_expired(limit=100) == len(expired) - 2
        assert await cache.sweep_expired() == 0
        redis = Redis.from_url(redis_url)
        try:
            for i in range(10):
                thread_id = f"t{i}"
                held = await redis.exists(l2_key(cache, thread_id))
                info = await cache.thread_info(thread_id)
                if thread_id in expired:
                    assert held == 0
                    assert (info.version, info.message_count, info.expires_at) == (2, 0, None)
                else:
                    assert held == 1
                    assert (info.version, info.message_count) == (1, 1)
        finally:
            await redis.aclose()
        # Swept keys are gone with their threads.
        assert await cache.append("t0", [user("again")], idempotency_key="k0") == 3


async def test_retention_and_expiry_are_validated(store_url: str) -> None:
    for bad in (0, -1, float("nan"), "1h"):
        with pytest.raises(ConfigurationError, match="retention"):
            ConversationCache.from_urls(store=store_url, retention=bad)
    async with ConversationCache.from_urls(store=store_url, namespace="v") as cache:
        await cache.append("t", [user("a")])
        bad_expiries: tuple[object, ...] = (
            datetime(2030, 1, 1),  # naive, on purpose
            "2030-01-01",
            1.5e9,
            PAST.replace(year=1),
        )
        for expiry in bad_expiries:
            with pytest.raises(InvalidArgument, match="expires_at"):
                await cache.update_thread("t", expires_at=expiry)  # type: ignore[arg-type]
        for limit in (0, -1, True, 10**6):
            with pytest.raises(InvalidArgument, match="limit"):
                await cache.sweep_expired(limit=limit)
        info = await cache.thread_info("t")
        assert (info.version, info.expires_at) == (1, None)


async def test_too_many_keys_are_refused_even_on_an_expiring_update(
    cache: ConversationCache,
) -> None:
    await cache.update_thread("t", metadata={f"k{i}": "v" for i in range(10)})
    with pytest.raises(InvalidArgument, match="16"):
        await cache.update_thread("t", metadata={f"n{i}": "v" for i in range(10)}, expires_at=PAST)
    info = await cache.thread_info("t")
    assert (len(info.metadata), info.expires_at) == (10, None)


async def test_a_century_is_the_longest_retention(store_url: str) -> None:
    with pytest.raises(ConfigurationError, match="retention"):
        ConversationCache.from_urls(store=store_url, retention=1e15)
    async with ConversationCache.from_urls(
        store=store_url, namespace="century", retention=99 * 365 * 86400
    ) as cache:
        await cache.append("t", [user("a")])
        info = await cache.thread_info("t")
        assert info.expires_at is not None
        assert info.expires_at.year >= datetime.now(UTC).year + 98
