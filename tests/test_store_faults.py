"""PostgreSQL backends terminated under load (issue 11, defect 6).

While appends and reads run, every other backend of the test's own database is killed with
pg_terminate_backend, eight times. Callers see only `StoreUnavailable` (never a raw asyncpg
error), each failed append says whether it may have committed, a retry with the same
idempotency key lands it exactly once, and the pool serves again as soon as the kills stop.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import orjson
import pytest

from agent_core import ConversationCache, StoreUnavailable

WORKERS = 6
KILLS = 8
TERMINATE = (
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
    "WHERE datname = $1 AND pid <> pg_backend_pid()"
)


async def test_terminated_backends_surface_only_as_store_unavailable(
    fresh_postgres_url: str,
) -> None:
    database = urlsplit(fresh_postgres_url).path[1:]
    errors: Counter[str] = Counter()
    acknowledged: dict[str, int] = {}  # idempotency key -> version
    stop = asyncio.Event()

    async with ConversationCache.from_urls(
        f"{fresh_postgres_url}?pool_max_size=4", namespace="faults"
    ) as cache:

        async def append_until_acknowledged(worker: int, n: int) -> None:
            key = f"w{worker}-{n}"
            message = {"role": "user", "content": key}
            while True:
                try:
                    acknowledged[key] = await cache.append(
                        f"t{worker % 3}", [message], idempotency_key=key
                    )
                    return
                except StoreUnavailable as exc:
                    errors[f"append may_have_committed={exc.may_have_committed}"] += 1
                    if ("may have committed" in str(exc)) != exc.may_have_committed:
                        errors["untyped: the message contradicts may_have_committed"] += 1
                except Exception as exc:
                    errors[f"untyped {type(exc).__module__}.{type(exc).__name__}"] += 1
                    return

        async def worker(index: int) -> None:
            n = 0
            while not stop.is_set():
                await append_until_acknowledged(index, n)
                n += 1
                try:
                    await cache.store.read(cache.namespace, f"t{index % 3}", last=5)
                except StoreUnavailable:
                    errors["read"] += 1
                except Exception as exc:
                    errors[f"untyped {type(exc).__module__}.{type(exc).__name__}"] += 1

        async def kill() -> int:
            admin = await asyncpg.connect(fresh_postgres_url)
            killed = 0
            try:
                for _ in range(KILLS):
                    await asyncio.sleep(0.15)
                    killed += await admin.fetchval(TERMINATE, database)
            finally:
                await admin.close()
                stop.set()
            return killed

        workers = [asyncio.create_task(worker(i)) for i in range(WORKERS)]
        killed = await kill()
        await asyncio.gather(*workers)

        assert killed >= KILLS
        assert not [error for error in errors if error.startswith("untyped")], errors
        # The pool is back: the next calls succeed (a few tries for connections killed
        # while idle, which the pool replaces as it meets them).
        deadline = time.monotonic() + 60
        while True:
            try:
                await cache.append("after", [{"role": "user", "content": "x"}])
                await cache.store.read(cache.namespace, "after")
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "the pool did not recover in 60 s"
                await asyncio.sleep(0.05)

        # From the store alone: every acknowledged append is in its thread exactly once,
        # at its acknowledged version.
        for thread in ("t0", "t1", "t2"):
            records = await cache.store.read(cache.namespace, thread)
            texts = [orjson.loads(payload)["content"] for payload in records.payloads]
            assert len(texts) == len(set(texts))
            for key, version in acknowledged.items():
                if f"t{int(key[1:].split('-')[0]) % 3}" == thread:
                    assert texts[version - 1] == key


async def test_a_locked_sqlite_database_is_store_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    async with ConversationCache.from_urls(
        f"sqlite:///{path}?busy_timeout_ms=50", namespace="faults"
    ) as cache:
        assert await cache.append("t", [{"role": "user", "content": "a"}]) == 1
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(StoreUnavailable, match=r"locked.*nothing was written") as caught:
                await cache.append("t", [{"role": "user", "content": "b"}])
            assert caught.value.may_have_committed is False
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert await cache.append("t", [{"role": "user", "content": "b"}]) == 2
