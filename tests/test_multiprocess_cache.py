"""Several OS processes sharing a store and Redis: freshness, no loss, herds."""

from __future__ import annotations

import asyncio
import io
import multiprocessing
import random
import time
import traceback
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from agent_core import ConversationCache, VersionConflict

PROCESSES = 4
_T = TypeVar("_T")
_spawn = multiprocessing.get_context("spawn")


def _freshness_worker(
    index: int,
    store_url: str,
    redis_url: str,
    namespace: str,
    consistency: str,
    seconds: float,
    threads: int,
    start: Any,
    results: Any,
) -> None:
    async def run() -> dict[str, Any]:
        rng = random.Random(index)
        appends: list[tuple[str, int, float]] = []
        reads: list[tuple[str, int, float]] = []
        async with ConversationCache.from_urls(
            store=store_url, redis=redis_url, namespace=namespace, consistency=consistency
        ) as cache:
            start.wait()
            deadline = time.monotonic() + seconds
            sequence = 0
            while time.monotonic() < deadline:
                thread_id = f"t{rng.randrange(threads)}"
                if rng.random() < 0.2:
                    sequence += 1
                    version = await cache.append(
                        thread_id, [{"role": "user", "content": f"{index}:{sequence}"}]
                    )
                    appends.append((thread_id, version, time.monotonic()))
                else:
                    began = time.monotonic()
                    conversation = await cache.get(thread_id)
                    reads.append((thread_id, conversation.version, began))
                await asyncio.sleep(rng.random() * 0.002)
            return {"appends": appends, "reads": reads, "written": sequence}

    try:
        # Generous: the limit also covers the barrier, which waits for the slowest process
        # to import and open (a loaded 2-core machine once took over 20 s).
        results.put((index, asyncio.run(watchdog(run(), seconds + 60))))
    except BaseException:
        results.put((index, {"error": traceback.format_exc()}))


async def watchdog(work: Coroutine[Any, Any, _T], limit: float) -> _T:
    """Run ``work``; if it hangs, fail with the stack of every task instead of hanging."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait([task], timeout=limit)
    if task in done:
        return task.result()
    stacks = io.StringIO()
    for pending in asyncio.all_tasks():
        pending.print_stack(file=stacks)
    task.cancel()
    raise RuntimeError(f"worker hung for {limit} s; tasks:\n{stacks.getvalue()}")


def run_freshness(
    store_url: str, redis_url: str, namespace: str, consistency: str, seconds: float
) -> list[dict[str, Any]]:
    start = _spawn.Barrier(PROCESSES)
    results = _spawn.Queue()
    workers = [
        _spawn.Process(
            target=_freshness_worker,
            args=(i, store_url, redis_url, namespace, consistency, seconds, 20, start, results),
        )
        for i in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    collected = [results.get(timeout=seconds + 120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    errors = [result["error"] for _, result in collected if "error" in result]
    assert not errors, "\n".join(errors)
    return [result for _, result in sorted(collected, key=lambda pair: pair[0])]


def staleness(results: list[dict[str, Any]]) -> list[float]:
    """For each read, how long after some append of a newer version had returned it began.

    A read that began before any newer append returned is fresh (0).
    """
    returned: dict[str, list[tuple[float, int]]] = {}
    for result in results:
        for thread_id, version, at in result["appends"]:
            returned.setdefault(thread_id, []).append((at, version))
    for events in returned.values():
        events.sort()
    lags = []
    for result in results:
        for thread_id, version, began in result["reads"]:
            lag = 0.0
            for at, newer in returned.get(thread_id, ()):
                if at >= began:
                    break
                if newer > version:
                    lag = began - at
                    break
            lags.append(lag)
    return lags


@pytest.mark.parametrize("consistency", ["bounded", "strong"])
def test_freshness_across_processes(
    store_url: str, redis_url: str, namespace: str, consistency: str
) -> None:
    results = run_freshness(store_url, redis_url, namespace, consistency, seconds=4.0)
    lags = sorted(staleness(results))
    stale = [lag for lag in lags if lag > 0]
    print(
        f"{consistency}: {len(lags)} reads, {len(stale)} stale, "
        f"p99 lag {lags[int(len(lags) * 0.99)] * 1000:.2f} ms, max {lags[-1] * 1000:.2f} ms"
    )
    if consistency == "strong":
        assert stale == []
    else:
        # Propagation over the bus; the goal (<= 50 ms) is measured by benchmarks/freshness.py.
        assert lags[-1] < 1.0

    # No message lost or duplicated.
    async def check() -> None:
        async with ConversationCache.from_urls(store=store_url, namespace=namespace) as cache:
            seen: list[str] = []
            for i in range(20):
                seen += [m["content"] for m in (await cache.get(f"t{i}")).to_list()]
            expected = [
                f"{r}:{s}" for r in range(PROCESSES) for s in range(1, results[r]["written"] + 1)
            ]
            assert sorted(seen) == sorted(expected)

    asyncio.run(check())


def _herd_worker(store_url: str, redis_url: str, namespace: str, start: Any, results: Any) -> None:
    async def run() -> tuple[int, str, int, int]:
        # Generous deadlines: this is about the lease, not about surviving a Redis call or
        # a load that a starved 2-core machine could not finish in time (a Redis timeout
        # rightly sends that process to the store, see test_degraded.py; a lease that runs
        # out lets a waiter load too, which is the lease's purpose). At load ~11 a
        # lease_ttl of 2 s with a redis_timeout of 0.5 s once let a second load in.
        async with ConversationCache.from_urls(
            store=store_url,
            redis=redis_url,
            namespace=namespace,
            lease_ttl=30.0,
            redis_timeout=10.0,
        ) as cache:
            start.wait()
            conversations = await asyncio.gather(*(cache.get("hot") for _ in range(250)))
            assert {c.version for c in conversations} == {50}
            stats = cache.stats()
            return stats.store_loads, stats.redis_last_error, stats.lease_waits, stats.l2_hits

    results.put(asyncio.run(watchdog(run(), 90)))


def test_lease_keeps_a_herd_of_processes_off_the_store(
    store_url: str, redis_url: str, namespace: str
) -> None:
    async def prepare() -> None:
        async with ConversationCache.from_urls(
            store=store_url, redis=redis_url, namespace=namespace
        ) as cache:
            await cache.append("hot", [{"role": "user", "content": str(i)} for i in range(50)])
            await cache.invalidate("hot")  # in the store only: every instance misses

    asyncio.run(prepare())
    start = _spawn.Barrier(PROCESSES)
    results = _spawn.Queue()
    workers = [
        _spawn.Process(target=_herd_worker, args=(store_url, redis_url, namespace, start, results))
        for _ in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=150) for _ in workers]
    loads = [outcome[0] for outcome in outcomes]
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    # 4 processes x 250 concurrent gets, one lease period: one store load in all.
    assert sum(loads) == 1, f"(loads, redis errors, lease waits, L2 hits): {outcomes}"


def test_compare_and_append_never_loses_a_turn(
    store_url: str, redis_url: str, namespace: str
) -> None:
    async def agent(cache: ConversationCache, name: str, turns: int) -> None:
        for turn in range(turns):
            while True:
                version = (await cache.get("shared")).version
                try:
                    await cache.append(
                        "shared",
                        [{"role": "user", "content": f"{name}{turn}"}],
                        expected_version=version,
                    )
                    break
                except VersionConflict:
                    continue

    async def run() -> None:
        async with (
            ConversationCache.from_urls(store=store_url, redis=redis_url, namespace=namespace) as a,
            ConversationCache.from_urls(store=store_url, redis=redis_url, namespace=namespace) as b,
        ):
            await asyncio.gather(agent(a, "a", 30), agent(b, "b", 30))
            contents = [m["content"] for m in (await a.get("shared")).to_list()]
            assert sorted(contents) == sorted(
                [f"a{i}" for i in range(30)] + [f"b{i}" for i in range(30)]
            )

    asyncio.run(run())


def _splice_worker(
    index: int,
    store_url: str,
    redis_url: str,
    namespace: str,
    operations: int,
    start: Any,
    results: Any,
) -> None:
    async def run() -> list[tuple[int, str, int | None, int | None, list[str]]]:
        rng = random.Random(index)
        acknowledged: list[tuple[int, str, int | None, int | None, list[str]]] = []

        def bound() -> int | None:
            return None if rng.random() < 0.3 else rng.randint(-6, 6)

        async with ConversationCache.from_urls(
            store=store_url, redis=redis_url, namespace=namespace
        ) as cache:
            start.wait()
            for n in range(operations):
                # Every operation inserts: none is a no-op, so each takes its own version.
                words = [f"{index}:{n}:{j}" for j in range(rng.randint(1, 2))]
                batch = [{"role": "user", "content": w} for w in words]
                if rng.random() < 0.5:
                    version = await cache.append("t", batch)
                    acknowledged.append((version, "append", None, None, words))
                else:
                    first, last = bound(), bound()
                    version = await cache.splice("t", first, last, batch)
                    acknowledged.append((version, "splice", first, last, words))
        return acknowledged

    try:
        results.put((index, asyncio.run(watchdog(run(), 120))))
    except BaseException:
        results.put((index, {"error": traceback.format_exc()}))


def test_concurrent_appends_and_splices_replay_serially(
    store_url: str, redis_url: str, namespace: str
) -> None:
    """4 processes mix appends and splices on one thread; the final thread is the serial
    replay of every acknowledged operation in version order."""
    start = _spawn.Barrier(PROCESSES)
    results = _spawn.Queue()
    workers = [
        _spawn.Process(
            target=_splice_worker,
            args=(i, store_url, redis_url, namespace, 40, start, results),
        )
        for i in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    collected = [results.get(timeout=240) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    errors = [result["error"] for _, result in collected if isinstance(result, dict)]
    assert not errors, "\n".join(errors)
    operations = sorted(op for _, result in collected for op in result)
    assert len({op[0] for op in operations}) == len(operations), "two writes took one version"
    replayed: list[str] = []
    version = 0
    for acknowledged, kind, first, last, words in operations:
        assert acknowledged == version + len(words), "a version was skipped or reused"
        if kind == "append":
            replayed += words
        else:
            replayed[first:last] = words
        version = acknowledged

    async def check() -> None:
        async with ConversationCache.from_urls(
            store=store_url, redis=redis_url, namespace=namespace
        ) as cache:
            conversation = await cache.get("t")
            assert conversation.version == version
            assert [m["content"] for m in conversation.to_list()] == replayed

    asyncio.run(check())
