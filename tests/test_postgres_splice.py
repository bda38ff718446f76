"""PostgreSQL's side of splices and forks: the migration from the schema before them,
the order index, the row lock, and the external-change trigger."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import asyncpg
import pytest

from agent_core import InvalidArgument
from agent_core.store import PostgresStore
from agent_core.store import _postgres_schema as sql

#: The schema version just before splices (anchor, frac, rewritten_at).
_BEFORE_SPLICES = 6


def message(text: str) -> bytes:
    return b'{"role":"user","content":"%s"}' % text.encode()


def texts(payloads: tuple[bytes, ...]) -> list[str]:
    return [p.decode().rpartition(':"')[2].rstrip('"}') for p in payloads]


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[PostgresStore]:
    opened = PostgresStore(postgres_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def test_migration_keeps_threads_in_order(fresh_postgres_url: str) -> None:
    server = await asyncpg.connect(fresh_postgres_url)
    try:
        await server.execute(sql.CREATE_SCHEMA)
        for version, script in enumerate(sql.MIGRATIONS[:_BEFORE_SPLICES], 1):
            await server.execute(script)
            await server.execute(sql.RECORD_VERSION, version)
        for thread_id, words in (("t", "abcde"), ("gone", "xy")):
            await server.execute(
                "SELECT agent_core.append('old', $1, $2::json[], NULL, NULL, NULL, NULL, 60)",
                thread_id,
                [message(w).decode() for w in words],
            )
        await server.execute("SELECT agent_core.delete_thread('old', 'gone')")
    finally:
        await server.close()
    store = PostgresStore(fresh_postgres_url)
    await store.open()
    try:
        records = await store.read("old", "t")
        assert (records.version, texts(records.payloads)) == (5, list("abcde"))
        assert texts((await store.read("old", "t", last=2)).payloads) == ["d", "e"]
        # The delete (version 3) rewrote the history before it; "t" was never rewritten.
        with pytest.raises(InvalidArgument, match="fork at version 3 or later"):
            await store.fork("old", "gone", "gone-copy", at_version=2)
        assert await store.fork("old", "gone", "gone-copy", at_version=3) == 3
        assert await store.fork("old", "t", "t-copy", at_version=2) == 2
        assert texts((await store.read("old", "t-copy")).payloads) == ["a", "b"]
        result = await store.splice("old", "t", 1, 3, [message("B"), message("C"), message("D")])
        assert (result.version, texts(result.removed)) == (8, ["b", "c"])
        assert texts((await store.read("old", "t")).payloads) == list("aBCDde")
        assert texts((await store.read("old", "t", last=4)).payloads) == list("CDde")
    finally:
        await store.close()


async def test_reads_and_splices_walk_the_order_index(
    store: PostgresStore, postgres_url: str, namespace: str
) -> None:
    await store.append(namespace, "t", [message(str(i)) for i in range(50)])
    await store.splice(namespace, "t", 10, 12, [message("x"), message("y"), message("z")])
    server = await asyncpg.connect(postgres_url)
    try:
        # With sorts priced out, a plan that still needs none reads along the index.
        await server.execute("SET enable_sort = off")
        await server.execute("SET enable_seqscan = off")
        plans = [
            "\n".join(
                row[0] for row in await server.fetch(f"EXPLAIN {query}", namespace, "t", *args)
            )
            for query, args in (
                (sql.READ_LAST, (0, 5)),
                (
                    "SELECT seq FROM agent_core.messages WHERE namespace = $1 AND thread_id = $2"
                    " ORDER BY coalesce(anchor, seq), frac OFFSET $3 LIMIT $4",
                    (9, 5),
                ),
                (
                    "SELECT seq FROM agent_core.messages WHERE namespace = $1 AND thread_id = $2"
                    " ORDER BY coalesce(anchor, seq) DESC, frac DESC OFFSET $3 LIMIT $4",
                    (0, 3),
                ),
            )
        ]
    finally:
        await server.close()
    assert "Index Scan Backward using messages_order" in plans[0], plans[0]
    assert "Index Scan using messages_order" in plans[1], plans[1]
    assert "Index Scan Backward using messages_order" in plans[2], plans[2]
    assert all("Sort  (" not in plan.partition("->")[2] for plan in plans), plans


async def test_a_splice_that_writes_nothing_makes_no_thread(
    store: PostgresStore, namespace: str
) -> None:
    result = await store.splice(namespace, "new", 0, None, [])
    assert (result.version, result.applied) == (0, False)
    info = await store.thread_info(namespace, "new")
    assert (info.version, info.created_at) == (0, None)


async def test_concurrent_writers_take_turns(store: PostgresStore, namespace: str) -> None:
    """Splices and appends on one thread, all at once: each version step belongs to
    exactly one of them, and the rows add up."""
    await store.append(namespace, "t", [message("seed")])
    steps: list[tuple[int, int]] = [(0, 1)]
    net = 1

    async def writer(n: int) -> None:
        nonlocal net
        for i in range(8):
            kind = (n + i) % 3
            if kind == 0:
                appended = await store.append(namespace, "t", [message(f"a{n}.{i}")] * 2)
                steps.append((appended.version - 2, appended.version))
                net += 2
            else:
                start, stop = (0, 1) if kind == 1 else (-2, None)
                result = await store.splice(namespace, "t", start, stop, [message(f"s{n}.{i}")])
                assert result.applied
                steps.append((result.base_version, result.version))
                net += 1 - len(result.removed)

    await asyncio.gather(*(writer(n) for n in range(8)))
    steps.sort()
    assert all(a[1] == b[0] for a, b in itertools.pairwise(steps)), steps
    records = await store.read(namespace, "t")
    assert records.version == steps[-1][1]
    assert len(records.payloads) == net


async def test_only_other_programs_rewrites_are_announced(
    store: PostgresStore, postgres_url: str, namespace: str
) -> None:
    heard: list[str] = []
    listener = await asyncpg.connect(postgres_url)
    try:
        await listener.add_listener(sql.CHANGES_CHANNEL, lambda *args: heard.append(args[3]))
        await store.append(namespace, "t", [message(w) for w in "abcd"])
        await store.splice(namespace, "t", 1, 2, [message("B")])
        await store.splice(namespace, "t", -1, None, [])
        assert await store.fork(namespace, "t", "copy") == 6
        await store.delete(namespace, "copy")
        await listener.execute("SELECT 1")  # a round trip: notifications sent by now arrive
        assert heard == []
        # Another program's insert appends to history: older versions can still be forked.
        await listener.execute(
            "INSERT INTO agent_core.messages (namespace, thread_id, seq, payload)"
            " VALUES ($1, 't', 7, $2::json)",
            namespace,
            message("e").decode(),
        )
        assert await store.fork(namespace, "t", "f1", at_version=6) == 6
        # Its update or delete rewrites it.
        await listener.execute(
            "UPDATE agent_core.messages SET payload = $2::json"
            " WHERE namespace = $1 AND thread_id = 't' AND seq = 7",
            namespace,
            message("E").decode(),
        )
        with pytest.raises(InvalidArgument, match="fork at version 8 or later"):
            await store.fork(namespace, "t", "f2", at_version=7)
        await listener.execute(
            "DELETE FROM agent_core.messages WHERE namespace = $1 AND thread_id = 't' AND seq = 1",
            namespace,
        )
        with pytest.raises(InvalidArgument, match="fork at version 9 or later"):
            await store.fork(namespace, "t", "f2", at_version=8)
        assert texts((await store.read(namespace, "t")).payloads) == ["B", "c", "E"]
        await listener.execute("SELECT 1")
        assert len(heard) == 3
    finally:
        await listener.close()
