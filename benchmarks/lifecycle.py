"""Thread lifecycle costs (issue 13): pop and splice on short and long threads, fork, list.

    python benchmarks/lifecycle.py [--quick] [--json FILE] [--postgres-url URL]

Every figure is a `ConversationCache` call (strong mode, with a private
``redis-server`` as L2), SQLite beside PostgreSQL, timed with ``perf_counter_ns``;
each round visits every cell once in a shuffled order, so drift on the machine
spreads over all of them.

- ``pop``: ``cache.pop`` on a thread of 10 and of 10,000 messages (~200 bytes each)
  that the cache holds; an untimed ``append`` of one message puts the size back
  before the next sample. Goal: p50(10,000) / p50(10) <= 1.5 on both stores, the
  store transaction, the L1 update and the fenced, announced L2 update included.
- ``splice``: ``cache.splice(t, k, k + 2, [one message])`` with ``k`` a random
  position in the newer half (so the walk from the nearer end is up to half the
  thread), then an untimed append: the cost of an edit inside a long thread.
- ``fork``: ``cache.fork`` of a thread of 10, 1,000 and 10,000 messages to a new id
  (the rows are copied inside the database; nothing passes through Python).
- ``list``: ``cache.list_threads(limit=100, metadata={"user": ...})`` among N threads
  (100,000 in the full run), each with one message and ``user`` (1 of 1,000 values) and
  ``team`` metadata; the filter matches ~N/1,000 threads.
- ``sweep``: 5 % of those N threads are given an expiry in the past, then
  ``cache.sweep_expired(limit=1000)`` runs until it finds none: threads purged per second
  (store rows, L2 values and bus events included).

Files live in a temporary directory; PostgreSQL gets a throwaway ``ac_bench_<random>``
database, dropped at the end (exit status 3 if it cannot be reached).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from _redis import private_redis, redis_server_version
from _support import (
    EXIT_NO_POSTGRES,
    benchmark_parser,
    gc_paused,
    machine_info,
    message_payload,
    print_machine,
    print_table,
    ratio_interval,
    run_benchmark,
    summarize,
    temporary_database,
    us,
)
from agent_core import ConversationCache, Message

POP_RATIO_GOAL: Final = 1.5
BATCH: Final = 1000


@dataclass(frozen=True, slots=True)
class Plan:
    sizes: tuple[int, int]
    fork_sizes: tuple[int, ...]
    samples: int
    fork_samples: int
    list_threads: int
    list_samples: int
    warmup: int


FULL: Final = Plan((10, 10_000), (10, 1_000, 10_000), 400, 40, 100_000, 300, 20)
QUICK: Final = Plan((10, 10_000), (10, 1_000), 12, 2, 400, 10, 2)


async def prefill(cache: ConversationCache, thread_id: str, count: int, item: Message) -> None:
    done = 0
    while done < count:
        batch = min(BATCH, count - done)
        await cache.append(thread_id, [item] * batch)
        done += batch


async def measure_rewrites(
    caches: dict[str, ConversationCache], plan: Plan, item: Message, rng: random.Random
) -> dict[tuple[str, str, int], list[int]]:
    cells = [(name, op, size) for name in caches for op in ("pop", "splice") for size in plan.sizes]
    for name, op, size in cells:
        await prefill(caches[name], f"{op}-{size}", size, item)
        await caches[name].get(f"{op}-{size}")
    samples: dict[tuple[str, str, int], list[int]] = {cell: [] for cell in cells}
    clock = time.perf_counter_ns
    with gc_paused():
        for round_number in range(plan.warmup + plan.samples):
            rng.shuffle(cells)
            for name, op, size in cells:
                cache, thread_id = caches[name], f"{op}-{size}"
                if op == "pop":
                    started = clock()
                    popped = await cache.pop(thread_id)
                    elapsed = clock() - started
                    if popped is None:
                        raise RuntimeError(f"{name}: {thread_id} was empty")
                else:
                    at = rng.randrange(size // 2, size - 2)
                    started = clock()
                    await cache.splice(thread_id, at, at + 2, [item])
                    elapsed = clock() - started
                await cache.append(thread_id, [item])
                if round_number >= plan.warmup:
                    samples[name, op, size].append(elapsed)
    for name, op, size in cells:
        held = len((await caches[name].get(f"{op}-{size}")).payloads)
        if held != size:
            raise RuntimeError(f"{name}: {op}-{size} holds {held} messages")
    return samples


async def measure_forks(
    caches: dict[str, ConversationCache], plan: Plan, item: Message, rng: random.Random
) -> dict[tuple[str, int], list[int]]:
    cells = [(name, size) for name in caches for size in plan.fork_sizes]
    for name, size in cells:
        await prefill(caches[name], f"source-{size}", size, item)
    samples: dict[tuple[str, int], list[int]] = {cell: [] for cell in cells}
    clock = time.perf_counter_ns
    for sample in range(plan.fork_samples):
        rng.shuffle(cells)
        for name, size in cells:
            started = clock()
            await caches[name].fork(f"source-{size}", f"fork-{size}-{sample}")
            samples[name, size].append(clock() - started)
    return samples


USERS: Final = 1000
SEED_CONCURRENCY: Final = 16


async def seed_listed(cache: ConversationCache, count: int, item: Message) -> None:
    async def one(index: int) -> None:
        thread_id = f"listed-{index:06d}"
        await cache.append(thread_id, [item])
        await cache.update_thread(
            thread_id, metadata={"user": f"u{index % USERS}", "team": f"team{index % 7}"}
        )

    for start in range(0, count, SEED_CONCURRENCY):
        await asyncio.gather(*map(one, range(start, min(count, start + SEED_CONCURRENCY))))


async def measure_list(
    caches: dict[str, ConversationCache], plan: Plan, item: Message, rng: random.Random
) -> tuple[dict[str, list[int]], dict[str, int]]:
    users = USERS
    for cache in caches.values():
        await seed_listed(cache, plan.list_threads, item)
    samples: dict[str, list[int]] = {name: [] for name in caches}
    found: dict[str, int] = {}
    clock = time.perf_counter_ns
    names = list(caches)
    for _ in range(plan.list_samples):
        rng.shuffle(names)
        user = f"u{rng.randrange(users)}"
        for name in names:
            started = clock()
            page = await caches[name].list_threads(limit=100, metadata={"user": user})
            samples[name].append(clock() - started)
            found[name] = len(page.thread_ids)
    return samples, found


async def measure_sweep(
    caches: dict[str, ConversationCache], plan: Plan, rng: random.Random
) -> dict[str, dict[str, float]]:
    expired = rng.sample(range(plan.list_threads), plan.list_threads // 20)
    past = datetime(2001, 1, 1, tzinfo=UTC)
    results = {}
    for name, cache in caches.items():
        for start in range(0, len(expired), SEED_CONCURRENCY):
            await asyncio.gather(
                *(
                    cache.update_thread(f"listed-{index:06d}", expires_at=past)
                    for index in expired[start : start + SEED_CONCURRENCY]
                )
            )
        swept = 0
        started = time.perf_counter()
        while found := await cache.sweep_expired(limit=1000):
            swept += found
        elapsed = time.perf_counter() - started
        if swept != len(expired):
            raise RuntimeError(f"{name}: swept {swept} of {len(expired)} expired threads")
        results[name] = {
            "swept": swept,
            "seconds": round(elapsed, 3),
            "threads_per_s": round(swept / elapsed, 1),
        }
    return results


async def run(plan: Plan, admin_url: str, mode: str) -> dict[str, Any]:
    item = Message.from_dict({"role": "user", "content": message_payload(200).decode()[:180]})
    rng = random.Random(13)
    with tempfile.TemporaryDirectory(prefix="ac-bench-") as directory, private_redis() as redis:
        async with temporary_database(admin_url) as postgres_url, AsyncExitStack() as stack:
            machine = await machine_info(postgres_url, temp_dir=directory)
            machine["redis_server"] = redis_server_version()
            print_machine(machine)
            urls = {"sqlite": f"sqlite:///{Path(directory) / 'bench.db'}", "postgres": postgres_url}
            caches = {
                name: await stack.enter_async_context(
                    ConversationCache.from_urls(store=url, redis=redis, namespace="bench")
                )
                for name, url in urls.items()
            }
            started = time.perf_counter()
            rewrites = await measure_rewrites(caches, plan, item, rng)
            forks = await measure_forks(caches, plan, item, rng)
            lists, found = await measure_list(caches, plan, item, rng)
            sweeps = await measure_sweep(caches, plan, rng)
            elapsed = time.perf_counter() - started

    names = list(caches)
    small, large = plan.sizes
    print_table(
        f"Pop and splice latency, µs (cache call, strong mode, Redis L2; "
        f"{plan.samples} samples per cell, cells interleaved)",
        ["operation", "messages", *(f"{n} {p}" for n in names for p in ("p50", "p95"))],
        [
            [op, f"{size:,}"]
            + [
                us(getattr(summarize(rewrites[name, op, size]), field))
                for name in names
                for field in ("p50_us", "p95_us")
            ]
            for op in ("pop", "splice")
            for size in plan.sizes
        ],
    )
    ratios: dict[str, dict[str, Any]] = {}
    print(f"Ratio p50({large:,}) / p50({small:,}) (95% bootstrap interval); pop goal <= 1.5")
    for op in ("pop", "splice"):
        for name in names:
            ratio = statistics.median(rewrites[name, op, large]) / statistics.median(
                rewrites[name, op, small]
            )
            low, high = ratio_interval(rewrites[name, op, large], rewrites[name, op, small])
            verdict = ""
            if op == "pop":
                verdict = "  goal " + ("met" if ratio <= POP_RATIO_GOAL else "NOT met")
            print(f"  {op:<6} {name:<9} {ratio:.2f} [{low:.2f}-{high:.2f}]{verdict}")
            ratios.setdefault(op, {})[name] = {
                "ratio": round(ratio, 3),
                "interval_95": [round(low, 3), round(high, 3)],
            }
    print()
    print_table(
        f"Fork latency, µs (copy to a new id; {plan.fork_samples} samples per cell)",
        ["messages", *(f"{n} p50" for n in names)],
        [
            [f"{size:,}", *(us(summarize(forks[name, size]).p50_us) for name in names)]
            for size in plan.fork_sizes
        ],
    )
    print()
    print_table(
        f"list_threads by metadata among {plan.list_threads:,} threads, µs "
        f"({plan.list_samples} samples)",
        ["store", "p50", "p95", "threads per page"],
        [
            [name, us(summarize(lists[name]).p50_us), us(summarize(lists[name]).p95_us),
             str(found[name])]
            for name in names
        ],
    )  # fmt: skip
    print()
    print_table(
        f"Sweep of expired threads ({plan.list_threads // 20:,} of {plan.list_threads:,}, "
        "limit=1000 per call, Redis L2)",
        ["store", "swept", "seconds", "threads/s"],
        [
            [name, f"{r['swept']:,}", f"{r['seconds']:.2f}", f"{r['threads_per_s']:,.0f}"]
            for name, r in sweeps.items()
        ],
    )
    print(f"measured in {elapsed:.1f} s")
    return {
        "benchmark": "lifecycle",
        "mode": mode,
        "machine": machine,
        "plan": asdict(plan),
        "rewrites": {
            f"{op}/{name}/{size}": asdict(summarize(values))
            for (name, op, size), values in rewrites.items()
        },
        "ratio_p50": {**ratios, "goal_pop": POP_RATIO_GOAL},
        "fork": {
            f"{name}/{size}": asdict(summarize(values)) for (name, size), values in forks.items()
        },
        "list_threads": {name: asdict(summarize(values)) for name, values in lists.items()},
        "sweep": sweeps,
        "elapsed_s": round(elapsed, 2),
    }


def main(argv: list[str] | None = None) -> int:
    args = benchmark_parser(__doc__, "few samples, 400 listed threads; a smoke run").parse_args(
        argv
    )
    mode = "quick" if args.quick else "full"
    plan = QUICK if args.quick else FULL
    document = run_benchmark("lifecycle", run(plan, args.postgres_url, mode), args.json)
    if document is None:
        return EXIT_NO_POSTGRES
    return 0


if __name__ == "__main__":
    sys.exit(main())
