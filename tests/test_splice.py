"""Splice, pop, fork and purge: the store contract on both stores, and the cache."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from redis.asyncio import Redis

from agent_core import (
    ConversationCache,
    IdempotencyKeyReused,
    InvalidArgument,
    InvalidBatch,
    ThreadExists,
    ThreadStore,
    TokenCounter,
    VersionConflict,
)
from agent_core.store import SQLiteStore

from ._poll import eventually
from ._probe import Holds
from ._sqlite_bytes import file_holds
from .conftest import CacheFactory, l2_key


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def texts(conversation: Any) -> list[str]:
    return [m.to_dict()["content"] for m in conversation.messages]


async def seeded(cache: ConversationCache, thread_id: str, count: int) -> list[str]:
    words = [f"m{i}" for i in range(count)]
    await cache.append(thread_id, [user(w) for w in words])
    return words


# Every kind of bound: inside, at and past both ends, negative, mixed, reversed, None.
BOUNDS = [
    (0, 0), (0, 1), (2, 4), (0, None), (None, None), (3, None), (None, 2), (6, None),
    (9, 12), (-1, None), (-2, -1), (-3, None), (-9, 2), (1, -1), (-1, 1), (4, 2),
    (-2, -4), (5, 6), (0, 99), (-99, -98), (-99, 99), (2, -9),
]  # fmt: skip


@pytest.mark.parametrize(("start", "stop"), BOUNDS)
@pytest.mark.parametrize("inserted", [0, 1, 3])
async def test_splice_follows_python_slice_rules(
    cache: ConversationCache, start: int | None, stop: int | None, inserted: int
) -> None:
    model = await seeded(cache, "t", 6)
    new = [f"n{i}" for i in range(inserted)]
    before = (await cache.get("t")).version
    version = await cache.splice("t", start, stop, [user(w) for w in new])
    changed = bool(model[start:stop] or new)
    model[start:stop] = new
    assert texts(await cache.get("t")) == model
    # Versions move by max(1, inserted) when something changed, else not at all.
    assert version == (before + max(1, inserted) if changed else before)
    info = await cache.thread_info("t")
    assert (info.version, info.message_count) == (version, len(model))
    cache.clear_local()
    assert texts(await cache.get("t")) == model


async def test_splices_nest_at_one_spot_and_the_reads_stay_in_order(
    cache: ConversationCache,
) -> None:
    """Inserting again and again at the same places (between two neighbours, before the
    first message, at the end) keeps every message where the model says; 600 nested
    inserts at one spot respace its run once their keys pass 64 bytes."""
    model = await seeded(cache, "t", 3)
    for i in range(600):
        for position in (1, 0, len(model)) if i % 10 == 0 else (1,):
            model[position:position] = [f"x{i}-{position}"]
            await cache.splice("t", position, position, [user(model[position])])
    cache.clear_local()
    assert texts(await cache.get("t")) == model
    store = cache.store
    records = await store.read(cache.namespace, "t", last=4)
    assert [orjson.loads(p)["content"] for p in records.payloads] == model[-4:]
    if isinstance(store, SQLiteStore):
        connection = sqlite3.connect(store.path)
        try:
            (longest,) = connection.execute("SELECT max(length(frac)) FROM messages").fetchone()
        finally:
            connection.close()
        assert longest <= 64


async def test_pop(cache: ConversationCache) -> None:
    assert await cache.pop("t") is None
    assert (await cache.get("t")).version == 0  # nothing written
    await seeded(cache, "t", 3)
    popped = await cache.pop("t", expected_version=3)
    assert popped is not None
    assert popped.to_dict() == user("m2")
    assert texts(await cache.get("t")) == ["m0", "m1"]
    with pytest.raises(VersionConflict):
        await cache.pop("t", expected_version=3)
    assert texts(await cache.get("t")) == ["m0", "m1"]
    assert (await cache.get("t")).version == 4
    assert (await cache.pop("t")) is not None
    assert (await cache.pop("t")) is not None
    assert await cache.pop("t") is None
    assert (await cache.get("t")).version == 6


async def test_compare_and_splice(cache: ConversationCache) -> None:
    await seeded(cache, "t", 4)
    with pytest.raises(VersionConflict) as caught:
        await cache.splice("t", 0, 2, [user("s")], expected_version=3)
    assert caught.value.actual == 4
    assert texts(await cache.get("t")) == ["m0", "m1", "m2", "m3"]
    assert await cache.splice("t", 0, 2, [user("s")], expected_version=4) == 5
    assert texts(await cache.get("t")) == ["s", "m2", "m3"]
    # Compare-and-splice checks the version even when the splice would change nothing.
    with pytest.raises(VersionConflict):
        await cache.splice("t", 1, 1, expected_version=4)


async def test_idempotent_splice_retry(cache: ConversationCache) -> None:
    await seeded(cache, "t", 4)
    first = await cache.splice("t", 1, 3, [user("s")], idempotency_key="k1")
    await cache.append("t", [user("later")])
    assert await cache.splice("t", 1, 3, [user("s")], idempotency_key="k1") == first
    assert texts(await cache.get("t")) == ["m0", "s", "m3", "later"]
    with pytest.raises(IdempotencyKeyReused):
        await cache.splice("t", 1, 2, [user("s")], idempotency_key="k1")
    with pytest.raises(IdempotencyKeyReused):  # a splice's key is not an append's
        await cache.append("t", [user("s")], idempotency_key="k1")
    assert texts(await cache.get("t")) == ["m0", "s", "m3", "later"]


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda c: c.splice("t", 1.5, None), InvalidArgument),
        (lambda c: c.splice("t", True, None), InvalidArgument),
        (lambda c: c.splice("t", 0, "2"), InvalidArgument),
        (lambda c: c.splice("t", 0, 2**70), InvalidArgument),
        (lambda c: c.splice("t", 0, 1, {"role": "user"}), InvalidBatch),
        (lambda c: c.splice("t", 0, 1, ["not a dict"]), InvalidArgument),
        (lambda c: c.splice("bad id!", 0, 1), InvalidArgument),
        (lambda c: c.splice("t", 0, 1, expected_version=-1), InvalidArgument),
        (lambda c: c.pop("t", expected_version="3"), InvalidArgument),
        (lambda c: c.fork("t", "t"), InvalidArgument),
        (lambda c: c.fork("t", "new", at_version=99), InvalidArgument),
        (lambda c: c.fork("t", "bad id!"), InvalidArgument),
        (lambda c: c.purge("bad id!"), InvalidArgument),
    ],
)
async def test_rejected_lifecycle_calls_write_nothing(
    cache: ConversationCache, call: Any, error: type[Exception]
) -> None:
    await seeded(cache, "t", 3)
    with pytest.raises(error):
        await call(cache)
    cache.clear_local()
    conversation = await cache.get("t")
    assert (conversation.version, texts(conversation)) == (3, ["m0", "m1", "m2"])
    assert (await cache.thread_info("new")).version == 0


async def test_fork_is_independent_of_its_source(cache: ConversationCache) -> None:
    await seeded(cache, "src", 3)
    await cache.update_thread("src", metadata={"user": "u1"})
    version = await cache.fork("src", "copy")
    assert version == 3
    assert texts(await cache.get("copy")) == ["m0", "m1", "m2"]
    assert (await cache.thread_info("copy")).metadata == {"user": "u1"}
    await cache.append("copy", [user("c")])
    await cache.splice("src", 0, 1, [user("s")])
    await cache.update_thread("copy", metadata={"user": "u2"})
    cache.clear_local()
    assert texts(await cache.get("src")) == ["s", "m1", "m2"]
    assert texts(await cache.get("copy")) == ["m0", "m1", "m2", "c"]
    assert (await cache.thread_info("src")).metadata == {"user": "u1"}
    with pytest.raises(ThreadExists):
        await cache.fork("src", "copy")
    assert texts(await cache.get("copy")) == ["m0", "m1", "m2", "c"]


async def test_fork_at_a_past_version(cache: ConversationCache) -> None:
    await seeded(cache, "src", 2)
    await cache.append("src", [user("m2")])
    assert await cache.fork("src", "old", at_version=2) == 2
    assert texts(await cache.get("old")) == ["m0", "m1"]
    rewritten = await cache.splice("src", 0, 1)
    with pytest.raises(InvalidArgument, match="rewritten"):
        await cache.fork("src", "older", at_version=3)
    await cache.fork("src", "now", at_version=rewritten)
    assert texts(await cache.get("now")) == ["m1", "m2"]


async def test_a_fork_over_a_deleted_thread_moves_its_version_on(
    cache: ConversationCache,
) -> None:
    await seeded(cache, "src", 2)
    await seeded(cache, "target", 5)
    deleted = await cache.delete("target")
    version = await cache.fork("src", "target")
    assert version > deleted
    assert texts(await cache.get("target")) == ["m0", "m1"]
    assert await cache.append("target", [user("x")]) == version + 1


async def test_purge_leaves_nothing_in_the_store(cache: ConversationCache) -> None:
    await seeded(cache, "t", 3)
    await cache.append("t", [user("keyed")], idempotency_key="k")
    await cache.update_thread("t", metadata={"user": "u1"})
    version = await cache.purge("t")
    assert version == 5
    info = await cache.thread_info("t")
    assert (info.version, info.message_count, dict(info.metadata)) == (5, 0, {})
    assert (await cache.get("t")).messages == ()
    assert "t" not in (await cache.list_threads()).thread_ids
    assert (await cache.list_threads(metadata={"user": "u1"})).thread_ids == ()
    # The key is gone with the thread: it applies afresh, past the kept version.
    assert await cache.append("t", [user("keyed")], idempotency_key="k") == 6


async def test_sqlite_keeps_no_plaintext_of_a_spliced_or_purged_message(tmp_path: Path) -> None:
    path = tmp_path / "erased.db"
    spliced, purged = (f"marker-{uuid.uuid4().hex}" for _ in range(2))
    async with ConversationCache.from_urls(store=f"sqlite:///{path}") as cache:
        await cache.append("a", [user("keep"), user(spliced * 10), user("keep too")])
        await cache.append("b", [user(purged * 10)], idempotency_key=purged)
        await cache.update_thread("b", metadata={"tag": purged})
        assert file_holds(path, spliced)
        assert file_holds(path, purged)
        await cache.splice("a", 1, 2, [user("edited")])
        await cache.purge("b")
        assert not file_holds(path, spliced)
        assert not file_holds(path, purged)
        assert texts(await cache.get("a")) == ["keep", "edited", "keep too"]


async def test_splice_keeps_token_counts_and_windows_right(cache: ConversationCache) -> None:
    await cache.append("t", [user(f"message number {i} " * (i + 1)) for i in range(8)])
    await cache.window("t", max_tokens=10_000, model="gpt-4o")  # counts stored
    await cache.splice("t", 2, 6, [user("short")])
    window = await cache.window("t", max_tokens=10_000, model="gpt-4o")
    expected = [user(f"message number {i} " * (i + 1)) for i in (0, 1)] + [user("short")]
    expected += [user(f"message number {i} " * (i + 1)) for i in (6, 7)]
    assert [m.to_dict() for m in window.messages] == expected
    exact = TokenCounter.for_model("gpt-4o").count_messages(expected)
    assert window.token_count == exact
    cache.clear_local()
    again = await cache.window("t", max_tokens=10_000, model="gpt-4o")
    assert again.token_count == exact


# -- across instances ---------------------------------------------------------------


@pytest.mark.parametrize("consistency", ["strong", "bounded"])
async def test_no_instance_serves_the_content_a_splice_replaced(
    make_cache: CacheFactory, consistency: str
) -> None:
    async with (
        make_cache(consistency=consistency, max_staleness=0.5) as a,
        make_cache(consistency=consistency, max_staleness=0.5) as b,
    ):
        await seeded(a, "t", 5)
        assert len((await b.get("t")).messages) == 5  # held in b's L1 and in L2
        version = await a.splice("t", 1, 4, [user("s")])
        if consistency == "strong":
            assert texts(await b.get("t")) == ["m0", "s", "m4"]
        else:

            async def fresh() -> bool:
                return (await b.get("t")).version == version

            await eventually(fresh, within=5.0)
            assert texts(await b.get("t")) == ["m0", "s", "m4"]
        async with make_cache(consistency=consistency) as cold:
            assert texts(await cold.get("t")) == ["m0", "s", "m4"]
        popped = await b.pop("t")
        assert popped is not None
        assert popped.to_dict() == user("m4")
        if consistency == "strong":
            assert texts(await a.get("t")) == ["m0", "s"]


async def test_splice_while_redis_is_down_is_fenced_once_it_is_back(
    store_url: str, namespace: str, redis_server: Any
) -> None:
    options: dict[str, Any] = {
        "store": store_url,
        "redis": redis_server.url,
        "namespace": namespace,
        "redis_timeout": 0.2,
    }
    async with (
        ConversationCache.from_urls(**options) as a,
        ConversationCache.from_urls(**options) as b,
    ):
        await seeded(a, "t", 4)
        await b.get("t")
        redis_server.pause()
        try:
            await a.splice("t", 0, 2, [user("s")])
            # b can't hear the bus: a strong read asks the store.
            assert texts(await b.get("t")) == ["s", "m2", "m3"]
        finally:
            redis_server.resume()

        async def healed() -> bool:
            return not a.stats().degraded

        await eventually(healed, within=15.0)
        # The splice that missed Redis is fenced there at its version before L2 is used.
        redis = Redis.from_url(redis_server.url)
        try:
            value = await redis.get(l2_key(a, "t"))
            assert value is None or int(value[:20]) >= 5
        finally:
            await redis.aclose()
        async with ConversationCache.from_urls(**options) as cold:
            assert texts(await cold.get("t")) == ["s", "m2", "m3"]


async def test_purge_on_every_tier(make_cache: CacheFactory, redis_url: str) -> None:
    marker = f"marker-{uuid.uuid4().hex}"
    async with make_cache() as a, make_cache() as b:
        await a.append("t", [user(marker), user("two")])
        await b.get("t")
        key = l2_key(a, "t")
        redis = Redis.from_url(redis_url)
        try:
            assert marker.encode() in (await redis.get(key) or b"")
            version = await a.purge("t")
            assert await redis.exists(key) == 0
            # b heard the purge on the bus, or a strong read asks the store: nothing.
            assert (await b.get("t")).messages == ()
            async with make_cache() as cold:
                conversation = await cold.get("t")
                assert (conversation.version, conversation.messages) == (version, ())
            # No Redis key of the thread holds its text.
            async for name in redis.scan_iter(match=key + "*"):
                assert marker.encode() not in (await redis.get(name) or b"")
        finally:
            await redis.aclose()


async def test_a_slow_fill_cannot_put_purged_history_back(
    make_cache: CacheFactory, redis_url: str
) -> None:
    """The purge leaves its version in ``<key>:purged``: a load that read the store
    before the purge and fills L2 after it is refused."""
    holds = Holds()
    async with make_cache() as a, make_cache(probe=holds, lease_ttl=0) as slow:
        marker = f"marker-{uuid.uuid4().hex}"
        await a.append("t", [user(marker)])
        key = l2_key(a, "t")
        redis = Redis.from_url(redis_url)
        try:
            await redis.delete(key)  # a cold L2: slow's read goes to the store
            reached, release = holds.hold("loaded")
            load = asyncio.ensure_future(slow.get("t"))
            await reached.wait()
            version = await a.purge("t")
            release.set()
            await load
            assert await redis.get(key + ":purged") == b"%020d" % version
            assert await redis.exists(key) == 0
            assert (await slow.get("t")).messages == ()
        finally:
            await redis.aclose()


@pytest.mark.parametrize("change", ["delete", "update"])
async def test_external_rewrite_of_a_spliced_thread_is_detected(
    store_url: str, redis_url: str, namespace: str, change: str
) -> None:
    """Another program deletes or edits a spliced-in row with SQL: every tier drops the
    old content (bounded mode, no announcement but the store's own)."""
    options: dict[str, Any] = {
        "store": store_url,
        "redis": redis_url,
        "namespace": namespace,
        "consistency": "bounded",
        "max_staleness": 0.2,
    }
    async with ConversationCache.from_urls(**options) as cache:
        await seeded(cache, "t", 4)
        await cache.splice("t", 1, 1, [user("inserted")])
        held = await cache.get("t")
        if change == "delete":
            statement = (
                "DELETE FROM {table} WHERE namespace = {ns} AND payload::text LIKE '%inserted%'"
            )
        else:
            statement = (
                'UPDATE {table} SET payload = \'{{"role": "user", "content": "edited"}}\''
                " WHERE namespace = {ns} AND payload::text LIKE '%inserted%'"
            )
        await _run_sql(store_url, statement, namespace)

        async def seen() -> bool:
            return (await cache.get("t")).version > held.version

        await eventually(seen, within=5.0)
        expected = (
            ["m0", "m1", "m2", "m3"] if change == "delete" else ["m0", "edited", "m1", "m2", "m3"]
        )
        assert texts(await cache.get("t")) == expected
        async with ConversationCache.from_urls(**options) as cold:
            assert texts(await cold.get("t")) == expected


async def _run_sql(store_url: str, statement: str, namespace: str) -> None:
    """Run one statement as another program would: straight on the database."""
    if store_url.startswith("sqlite"):
        local = sqlite3.connect(store_url.removeprefix("sqlite:///"))
        try:
            with local:
                local.execute(
                    statement.format(table="messages", ns="?").replace("::text", ""), (namespace,)
                )
        finally:
            local.close()
        return
    remote = await asyncpg.connect(store_url)
    try:
        await remote.execute(statement.format(table="agent_core.messages", ns="$1"), namespace)
    finally:
        await remote.close()


async def test_store_splice_reports_what_it_removed(store: ThreadStore, namespace: str) -> None:
    payloads = [orjson.dumps(user(f"m{i}")) for i in range(5)]
    await store.append(namespace, "t", payloads)
    result = await store.splice(namespace, "t", -2, None, [])
    assert (result.version, result.base_version, result.applied) == (6, 5, True)
    assert result.removed == tuple(payloads[-2:])
    retry = await store.splice(namespace, "t", 7, 9, [])
    assert (retry.version, retry.applied, retry.removed) == (6, False, ())
    records = await store.read(namespace, "t", after=5)
    assert records.payloads == ()  # no message was made after version 5
    added = await store.splice(namespace, "t", 0, 0, [orjson.dumps(user("first"))])
    records = await store.read(namespace, "t", after=6)
    assert (added.version, records.seqs, records.payloads) == (
        7, (7,), (orjson.dumps(user("first")),),
    )  # fmt: skip


async def test_l1_weighs_a_spliced_entry_as_a_fresh_load_would(cache: ConversationCache) -> None:
    await cache.append("t", [user("x" * (10 * i)) for i in range(20)])
    await cache.window("t", max_tokens=10_000, model="gpt-4o")
    await cache.splice("t", 3, 9, [user("y" * 500), user("z")])
    await cache.pop("t")
    spliced = cache.stats().l1_bytes
    cache.clear_local()
    await cache.get("t")
    assert cache.stats().l1_bytes == spliced
