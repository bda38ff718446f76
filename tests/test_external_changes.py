"""Rows written straight into the database by another program reach every tier."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from agent_core import ConversationCache, store_from_url
from agent_core.store import decode_token_counts

from ._poll import eventually


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


async def run_sql(store_url: str, sqlite_sql: str, postgres_sql: str, *args: Any) -> None:
    """Execute a statement as another program would: on a plain connection of its own."""
    if store_url.startswith("sqlite"):
        path = store_url.removeprefix("sqlite:///")

        def execute() -> None:
            connection = sqlite3.connect(path, isolation_level=None)
            try:
                connection.execute(sqlite_sql, args)
            finally:
                connection.close()

        await asyncio.to_thread(execute)
        return
    connection = await asyncpg.connect(store_url)
    try:
        await connection.execute(postgres_sql, *args)
    finally:
        await connection.close()


async def visible_within(check: Callable[[], Awaitable[bool]], limit: float = 30.0) -> float:
    """Seconds until ``check`` holds (fails after ``limit``, generous for a loaded machine)."""
    started = time.perf_counter()
    async with asyncio.timeout(limit):
        while not await check():
            await asyncio.sleep(0.001)
    return time.perf_counter() - started


async def test_external_insert_update_delete_reach_every_tier(
    store_url: str, redis_url: str, namespace: str
) -> None:
    async with (
        ConversationCache.from_urls(store=store_url, redis=redis_url, namespace=namespace) as a,
        ConversationCache.from_urls(store=store_url, redis=redis_url, namespace=namespace) as b,
    ):

        async def seen() -> list[list[dict[str, Any]]]:
            return [(await cache.get("t")).to_list() for cache in (a, b)]

        await a.append("t", [user("one"), user("two")])
        assert await seen() == [[user("one"), user("two")]] * 2  # in both L1s, and in L2

        reply = {"role": "assistant", "content": "from another program"}
        await run_sql(
            store_url,
            "INSERT INTO messages (namespace, thread_id, seq, payload, created_at)"
            " VALUES (?, 't', 3, ?, 0)",
            "INSERT INTO agent_core.messages (namespace, thread_id, seq, payload)"
            " VALUES ($1, 't', 3, $2::json)",
            namespace,
            '{"role": "assistant", "content": "from another program"}',
        )
        expected = [user("one"), user("two"), reply]

        async def inserted() -> bool:
            return await seen() == [expected] * 2

        elapsed = await visible_within(inserted)
        print(f"external insert seen by both instances after {elapsed * 1000:.1f} ms")
        assert a.stats().external_changes >= 1
        assert (await a.get("t")).version == 3
        # L2 was fenced, so a cold instance cannot be served the old version from Redis.
        async with ConversationCache.from_urls(
            store=store_url, redis=redis_url, namespace=namespace
        ) as cold:
            assert (await cold.get("t")).to_list() == expected

        await run_sql(
            store_url,
            "UPDATE messages SET payload = ? WHERE namespace = ? AND seq = 1",
            "UPDATE agent_core.messages SET payload = $1::json WHERE namespace = $2 AND seq = 1",
            '{"role":"user","content":"edited"}',
            namespace,
        )

        async def updated() -> bool:
            return await seen() == [[user("edited"), user("two"), reply]] * 2

        await visible_within(updated)

        await run_sql(
            store_url,
            "DELETE FROM messages WHERE namespace = ? AND thread_id = 't'",
            "DELETE FROM agent_core.messages WHERE namespace = $1 AND thread_id = 't'",
            namespace,
        )

        async def deleted() -> bool:
            return await seen() == [[], []]

        await visible_within(deleted)
        # Versions moved forward, so the next append continues after them.
        assert await a.append("t", [user("after")]) > 3
        assert (await a.get("t")).to_list() == [user("after")]


async def test_our_own_writes_are_not_reported_as_external(store_url: str, namespace: str) -> None:
    async with ConversationCache.from_urls(store=store_url, namespace=namespace) as cache:
        for i in range(5):
            await cache.append("t", [user(str(i)), user(str(i))])
        await cache.delete("t")
        await cache.append("t", [user("x")])
        # A marker: one change by another program, reported after any of ours would be.
        await run_sql(
            store_url,
            "INSERT INTO messages (namespace, thread_id, seq, payload, created_at)"
            " VALUES (?, 'marker', 1, ?, 0)",
            "INSERT INTO agent_core.messages (namespace, thread_id, seq, payload)"
            " VALUES ($1, 'marker', 1, $2::json)",
            namespace,
            '{"role": "user", "content": "marker"}',
        )
        await eventually(lambda: cache.stats().external_changes >= 1, within=30)
        assert cache.stats().external_changes == 1  # the marker alone
        assert (await cache.store.read(namespace, "t")).version == 12


async def test_set_tokens_is_not_an_external_change(store_url: str, namespace: str) -> None:
    events: list[tuple[str, str, int] | str] = []

    class Recorder:
        def changed(self, namespace: str, thread_id: str, version: int) -> None:
            events.append((namespace, thread_id, version))

        def reset(self) -> None:
            events.append("reset")

    # Counts recorded by another store are what the watcher would report, if anything.
    watched, other = store_from_url(store_url), store_from_url(store_url)
    await watched.open()
    await other.open()
    try:
        await watched.watch(Recorder())
        await other.append(namespace, "t", [b'{"role":"user","content":"a"}'] * 3)
        assert await other.set_tokens(namespace, "t", "o200k_base", {1: 1, 2: 2, 3: 3}) == 3
        assert await other.set_tokens(namespace, "t", "cl100k_base", {2: 2}) == 1
        assert await other.version(namespace, "t") == 3
        # The watcher is live: an edited payload is reported, and it is the first report
        # (changes are reported in commit order, so the counts' would come before it).
        await run_sql(
            store_url,
            "UPDATE messages SET payload = ? WHERE namespace = ? AND seq = 1",
            "UPDATE agent_core.messages SET payload = $1::json WHERE namespace = $2 AND seq = 1",
            '{"role":"user","content":"edited"}',
            namespace,
        )

        async def reported() -> bool:
            return bool(events)

        await visible_within(reported)
        assert events == [(namespace, "t", 4)]
    finally:
        await watched.close()
        await other.close()


async def test_set_tokens_replaces_counts_another_program_mangled(
    store_url: str, namespace: str
) -> None:
    store = store_from_url(store_url)
    await store.open()
    try:
        await store.append(namespace, "t", [b'{"role":"user","content":"a"}'] * 2)
        # PostgreSQL's jsonb holds only valid JSON; SQLite's TEXT holds anything.
        mangled = {1: "[1]", 2: '"text"' if store_url.startswith("postgres") else "not json"}
        for seq, value in mangled.items():
            await run_sql(
                store_url,
                "UPDATE messages SET tokens = ? WHERE namespace = ? AND seq = ?",
                "UPDATE agent_core.messages SET tokens = $1::jsonb"
                " WHERE namespace = $2 AND seq = $3",
                value,
                namespace,
                seq,
            )
        assert [decode_token_counts(t) for t in (await store.read(namespace, "t")).tokens] == [
            {},
            {},
        ]
        assert await store.set_tokens(namespace, "t", "o200k_base", {1: 1, 2: 2}) == 2
        records = await store.read(namespace, "t")
        assert [decode_token_counts(t) for t in records.tokens] == [
            {"o200k_base": 1},
            {"o200k_base": 2},
        ]
    finally:
        await store.close()
