"""The cache and the rate limiter on a real 6-node Redis Cluster, and a primary's failover.

The cluster starts once for the module. The cache contract, freshness and shared-limit
tests of other modules run here again, unchanged, against it: importing a test function
collects it in this module, where ``redis_url`` names the cluster and ``store_url`` is
SQLite (the store is not what these tests vary).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection

from agent_core import AgentCoreError, ConversationCache, RateLimiter, RateLimits
from agent_core._redis import redis_client

from ._poll import eventually
from ._redis_cluster import LocalRedisCluster
from ._redis_server import free_port
from .conftest import CacheFactory
from .test_cache_tiers import (
    test_cold_starts_hit_l2,
    test_concurrent_misses_make_one_store_load,
    test_fill_racing_a_delete_cannot_resurrect,
    test_fill_racing_an_append_leaves_no_stale_entry,
    test_first_read_of_an_uncached_thread_fills_both_tiers,
    test_invalidate_drops_every_tier,
    test_invalidation_before_the_l1_fill_drops_the_fill,
    test_other_instances_see_appends_and_deletes,
    test_own_appends_extend_both_tiers_without_reloading,
    test_strong_mode_reads_your_writes_across_instances,
    user,
)
from .test_linearizable import (
    test_a_read_never_joins_a_load_that_began_before_it,
    test_a_stale_l1_entry_costs_one_version_check,
    test_a_writer_that_bypasses_redis_is_seen,
    test_concurrent_bounded_reads_share_a_version_check,
)
from .test_multiprocess_cache import test_freshness_across_processes
from .test_ratelimit import (
    test_a_cancelled_shared_waiter_gives_its_reservation_back,
    test_namespace_and_model_never_share_a_budget_through_a_colon,
)

# A 6-node cluster of redis-servers is this module's subject.
pytestmark = pytest.mark.integration

__all__ = [
    "test_a_cancelled_shared_waiter_gives_its_reservation_back",
    "test_a_read_never_joins_a_load_that_began_before_it",
    "test_a_stale_l1_entry_costs_one_version_check",
    "test_a_writer_that_bypasses_redis_is_seen",
    "test_cold_starts_hit_l2",
    "test_concurrent_bounded_reads_share_a_version_check",
    "test_concurrent_misses_make_one_store_load",
    "test_fill_racing_a_delete_cannot_resurrect",
    "test_fill_racing_an_append_leaves_no_stale_entry",
    "test_first_read_of_an_uncached_thread_fills_both_tiers",
    "test_freshness_across_processes",
    "test_invalidate_drops_every_tier",
    "test_invalidation_before_the_l1_fill_drops_the_fill",
    "test_namespace_and_model_never_share_a_budget_through_a_colon",
    "test_other_instances_see_appends_and_deletes",
    "test_own_appends_extend_both_tiers_without_reloading",
    "test_strong_mode_reads_your_writes_across_instances",
]

#: How long a failover may take: the node timeout, an election, a slot-map refresh.
FAILOVER_WITHIN = 30.0


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    cluster = LocalRedisCluster(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def redis_url(redis_cluster: LocalRedisCluster) -> str:
    return redis_cluster.url


@pytest.fixture
def store_url(sqlite_url: str) -> str:
    return sqlite_url


async def test_the_bus_is_a_sharded_channel(
    make_cache: CacheFactory, redis_cluster: LocalRedisCluster, namespace: str
) -> None:
    async with make_cache() as cache:
        assert not cache.stats().degraded

        def channels() -> list[bytes]:
            pattern = f"ac:bus:*/{namespace}"
            return [
                name
                for node in redis_cluster.nodes
                for name in node.info_list("PUBSUB SHARDCHANNELS", pattern)
            ]

        assert len(channels()) == 1  # one shard holds it (the primary; replicas don't count)


async def test_limiters_share_one_budget_on_a_cluster(redis_url: str) -> None:
    limits = RateLimits(requests_per_minute=2, max_wait=0)
    namespace = f"rl-{uuid.uuid4().hex[:8]}"
    async with (
        # A generous deadline: a starved machine must not make these decisions local.
        RateLimiter(limits, redis=redis_url, namespace=namespace, redis_timeout=2.0) as first,
        RateLimiter(limits, redis=redis_url, namespace=namespace, redis_timeout=2.0) as second,
    ):
        await first.acquire("gpt-4o", 1)
        await second.acquire("gpt-4o", 1)
        with pytest.raises(AgentCoreError):
            await first.acquire("gpt-4o", 1)
        assert not first.stats().degraded
        assert first.stats().local_decisions == 0


async def test_purge_and_windows_work_across_slots(make_cache: CacheFactory) -> None:
    async with make_cache() as cache:
        for index in range(20):  # threads hash to slots on every primary
            await cache.append(f"t{index}", [user("hello there")])
        window = await cache.window("t3", model="gpt-4o", max_tokens=100)
        assert len(window.messages) == 1
        assert await cache.purge_namespace() == 20
        assert cache.stats().redis_errors == 0


def key_holder(cluster: LocalRedisCluster, pattern: str) -> int:
    """The port of the primary that holds a key matching ``pattern``."""
    for node in cluster.nodes:
        if node.process is None or node.info("INFO replication").get("role") != "master":
            continue
        with node.client() as client:
            if client.keys(pattern):
                return node.port
    raise AssertionError(f"no primary holds {pattern}")


async def test_a_primary_failover_keeps_the_cache_correct(
    redis_cluster: LocalRedisCluster, sqlite_url: str, namespace: str
) -> None:
    """SIGKILL the primary of a thread's slot while two strong caches append and read.

    No strong read may miss an acknowledged append, nothing acknowledged may be lost,
    and the only failures allowed are typed ones (degraded mode serves the rest).
    """
    options = {"consistency": "strong", "redis_timeout": 0.25}

    def opened() -> ConversationCache:
        return ConversationCache.from_urls(
            sqlite_url, redis=redis_cluster.url, namespace=namespace, **options
        )

    acked: list[str] = []
    unsure: set[str] = set()  # appends that raised a typed error: stored or not
    typed: list[AgentCoreError] = []  # any other exception fails the test where it is raised

    async def turn(writer: ConversationCache, reader: ConversationCache, index: int) -> None:
        text = f"m{index}"
        try:
            await writer.append("t", [user(text)])
            acked.append(text)
        except AgentCoreError as exc:
            typed.append(exc)
            unsure.add(text)
        try:
            seen = [message.to_dict()["content"] for message in (await reader.get("t")).messages]
        except AgentCoreError as exc:
            typed.append(exc)
            return
        # Every acknowledged append shows, in order; only unsure ones may be missing.
        assert [text for text in seen if text not in unsure] == acked

    async with opened() as a, opened() as b:
        await turn(a, b, 0)
        victim = redis_cluster.node_at(key_holder(redis_cluster, f"ac:{{*/{namespace}/t}}"))
        victim.kill()
        index = 1

        async def keep_going_until(condition: Callable[[], bool], within: float) -> None:
            nonlocal index
            deadline = time.monotonic() + within
            while not condition():
                assert time.monotonic() < deadline, "the cache did not recover"
                await turn(*((a, b) if index % 2 else (b, a)), index)
                index += 1
                await asyncio.sleep(0.01)  # pace the loop, not a wait for a condition

        def promoted() -> bool:
            try:
                return key_holder(redis_cluster, f"ac:{{*/{namespace}/t}}") != victim.port
            except AssertionError:  # no running primary holds it yet
                return False

        # Until a replica is promoted: the cluster is down for that slot (typed errors,
        # degraded mode); afterwards both caches must leave degraded mode on their own.
        await keep_going_until(promoted, FAILOVER_WITHIN)
        await keep_going_until(
            lambda: not a.stats().degraded and not b.stats().degraded, FAILOVER_WITHIN
        )
        for _ in range(5):  # and keep serving, through Redis again
            await turn(a, b, index)
            index += 1
        assert not a.stats().degraded
        assert not b.stats().degraded
        assert a.stats().redis_errors + b.stats().redis_errors > 0  # the kill was felt

    async with opened() as fresh:
        seen = [message.to_dict()["content"] for message in (await fresh.get("t")).messages]
        assert [text for text in seen if text not in unsure] == acked

    victim.start()  # it rejoins as a replica of the promoted one: the next test has 6 nodes
    redis_cluster.wait_healthy()


async def test_a_cluster_url_reaches_every_node(redis_cluster: LocalRedisCluster) -> None:
    client = redis_client(redis_cluster.url)
    try:
        assert await client.ping()
        key = f"k{uuid.uuid4().hex}"
        await client.set(key, b"v", px=10_000)
        assert await client.get(key) == b"v"
    finally:
        await client.aclose()


def test_cluster_urls_name_every_listed_node() -> None:
    """Parsed, not connected: the scheme picks TLS, the list gives the startup nodes."""
    client = redis_client(
        "rediss+cluster://ann:s3cret@10.0.0.1:7000,[::1]:7001/0?ssl_cert_reqs=none"
    )
    assert isinstance(client, RedisCluster)
    nodes = {(node.host, node.port) for node in client.startup_nodes}
    assert nodes == {("10.0.0.1", 7000), ("::1", 7001)}
    assert client.connection_kwargs["connection_class"] is SSLConnection
    assert client.connection_kwargs["password"] == "s3cret"
    plain = redis_client("redis+cluster://127.0.0.1:7000")
    assert isinstance(plain, RedisCluster)
    assert plain.connection_kwargs["connection_class"] is not SSLConnection


async def test_an_unreachable_cluster_is_degraded_mode_not_an_error(
    sqlite_url: str, namespace: str
) -> None:
    dead = f"redis+cluster://127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    async with ConversationCache.from_urls(sqlite_url, redis=dead, namespace=namespace) as cache:
        await cache.append("t", [user("hello")])
        assert len(await cache.get("t")) == 1
        assert cache.stats().degraded
    limits = RateLimits(requests_per_minute=10, max_wait=0)
    async with RateLimiter(limits, redis=dead, namespace=namespace) as limiter:
        await limiter.acquire("gpt-4o", 1)
        assert limiter.stats().degraded


async def test_the_bus_follows_its_channel_to_another_node(
    make_cache: CacheFactory, redis_cluster: LocalRedisCluster, namespace: str
) -> None:
    """Resharding the channel's slot unsubscribes the bus (SUNSUBSCRIBE from the server):
    it resubscribes on the new owner, and events flow again."""
    async with make_cache() as reader, make_cache() as writer:
        await writer.append("t", [user("one")])
        await reader.get("t")
        (channel,) = [
            name
            for node in redis_cluster.nodes
            for name in node.info_list("PUBSUB SHARDCHANNELS", f"ac:bus:*/{namespace}")
        ]
        slot = redis_cluster.slot_of(channel.decode())
        owner = redis_cluster.owner_of(slot)
        target = next(node for node in redis_cluster.primaries() if node is not owner)
        redis_cluster.move_slot(slot, target)
        await eventually(lambda: reader.stats().bus_subscriptions == 2)
        await eventually(lambda: not reader.stats().degraded)
        received = reader.stats().invalidations_received
        await writer.append("t", [user("two")])
        await eventually(lambda: reader.stats().invalidations_received > received)
