"""Cold-start hit rate: a new `ConversationCache` every 50 requests, one Redis, one store.

    python benchmarks/cold_start.py [--quick] [--json FILE] [--store sqlite|postgres]

Models short-lived workers (serverless invocations): each invocation builds a fresh
cache with ``ConversationCache.from_urls`` (empty L1, new connections), serves 50
reads and closes. The trace is Zipf s=1.1 over 1,000 threads of 5 to 50 ~200-byte
messages, 20,000 reads (2,000 with ``--quick``), all through ``get``. The threads it
reads are written first through a cache with Redis, so L2 holds them all. Two
variants replay the same trace:

- L2 prefilled: as written; no read should need the store.
- L2 empty: Redis flushed first, so each thread's first read goes to the store.

Hit rate is (L1 + L2 hits) / reads, summed over all invocations. The achievable
maximum is 1 - first-touch misses / reads, where a first-touch miss is a thread
whose first read in the whole run finds it in neither tier: none with L2
prefilled, every distinct thread with L2 empty. Goal: hit rate >= 99 % of it.

Redis is a private ``redis-server`` on a free port. The SQLite file lives in a
temporary directory; PostgreSQL gets a throwaway ``ac_bench_<random>`` database,
dropped at the end (exit status 3 if it cannot be reached).
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import orjson
import redis.asyncio as redis

from _redis import private_redis, redis_server_version
from _support import (
    EXIT_NO_POSTGRES,
    benchmark_parser,
    local_machine,
    machine_info,
    message_payload,
    print_machine,
    print_table,
    run_benchmark,
    temporary_database,
)
from agent_core import ConversationCache
from agent_core.cache import CacheStats
from eviction_policy import ZIPF_S, zipf

NAMESPACE: Final = "bench"
PAYLOAD_BYTES: Final = 200
MIN_MESSAGES: Final = 5
MAX_MESSAGES: Final = 50
#: The goal: hit rate >= this share of the achievable maximum.
GOAL: Final = 0.99


@dataclass(frozen=True, slots=True)
class Plan:
    threads: int
    requests: int
    per_invocation: int


FULL: Final = Plan(1000, 20_000, 50)
QUICK: Final = Plan(1000, 2_000, 50)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One variant's reads, summed over its invocations."""

    stats: CacheStats
    distinct: int
    #: Threads whose first read had to go to the store, by construction of the variant.
    first_touch_misses: int
    #: The same, as measured (differs only if a tier lost a thread it should have held).
    first_touch_misses_seen: int
    invocations: int
    degraded_invocations: int
    invocation_ms: float

    @property
    def maximum(self) -> float:
        return 1 - self.first_touch_misses / self.stats.requests

    @property
    def share_of_maximum(self) -> float:
        return self.stats.hit_rate / self.maximum


async def populate(store_url: str, redis_url: str, sizes: dict[str, int]) -> None:
    """Write the threads through a cache with Redis, so L2 holds them all."""
    message = orjson.loads(message_payload(PAYLOAD_BYTES))
    async with ConversationCache.from_urls(store_url, redis_url, NAMESPACE) as cache:
        for thread_id, size in sizes.items():
            await cache.append(thread_id, [message] * size)


async def replay(
    store_url: str,
    redis_url: str,
    trace: list[str],
    sizes: dict[str, int],
    plan: Plan,
    *,
    l2_prefilled: bool,
) -> Outcome:
    """Serve ``trace`` through a new cache per invocation, checking every read."""
    invocations: list[CacheStats] = []
    first_from_store: dict[str, bool] = {}
    started = time.perf_counter()
    for start in range(0, len(trace), plan.per_invocation):
        async with ConversationCache.from_urls(store_url, redis_url, NAMESPACE) as cache:
            for thread_id in trace[start : start + plan.per_invocation]:
                # stats() reads /proc and cgroup files: only around a thread's first read.
                first = thread_id not in first_from_store
                misses = cache.stats().misses if first else 0
                conversation = await cache.get(thread_id)
                if len(conversation) != sizes[thread_id]:
                    raise RuntimeError(f"{thread_id}: {len(conversation)} messages")
                if first:
                    first_from_store[thread_id] = cache.stats().misses > misses
            invocations.append(cache.stats())
    elapsed = time.perf_counter() - started
    return Outcome(
        stats=CacheStats(
            l1_hits=sum(stats.l1_hits for stats in invocations),
            l2_hits=sum(stats.l2_hits for stats in invocations),
            misses=sum(stats.misses for stats in invocations),
            store_loads=sum(stats.store_loads for stats in invocations),
            lease_waits=sum(stats.lease_waits for stats in invocations),
            redis_errors=sum(stats.redis_errors for stats in invocations),
        ),
        distinct=len(first_from_store),
        first_touch_misses=0 if l2_prefilled else len(first_from_store),
        first_touch_misses_seen=sum(first_from_store.values()),
        invocations=len(invocations),
        degraded_invocations=sum(stats.degraded or stats.redis_errors > 0 for stats in invocations),
        invocation_ms=1000 * elapsed / len(invocations),
    )


@asynccontextmanager
async def store_url(kind: str, admin_url: str) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """The store's URL and the machine info (with the PostgreSQL server's, if used)."""
    if kind == "postgres":
        async with temporary_database(admin_url) as url:
            yield url, await machine_info(url)
    else:
        with tempfile.TemporaryDirectory(prefix="ac-bench-") as directory:
            yield f"sqlite:///{directory}/bench.db", {**local_machine(), "temp_dir": directory}


def percent(value: float) -> str:
    return f"{100 * value:.2f}"


async def run(plan: Plan, kind: str, admin_url: str, seed: int, mode: str) -> dict[str, Any]:
    rng = random.Random(seed)
    thread_ids = [f"thread-{index:04d}" for index in range(plan.threads)]
    sizes = {thread_id: rng.randint(MIN_MESSAGES, MAX_MESSAGES) for thread_id in thread_ids}
    trace = zipf(rng, thread_ids, plan.requests)
    read = {thread_id: sizes[thread_id] for thread_id in sorted(set(trace))}
    outcomes: dict[str, Outcome] = {}
    with private_redis() as redis_url:
        async with store_url(kind, admin_url) as (url, machine):
            machine["redis_server"] = redis_server_version()
            machine["store"] = kind
            print_machine(machine)
            await populate(url, redis_url, read)
            for variant in ("L2 prefilled", "L2 empty"):
                if variant == "L2 empty":
                    client = redis.Redis.from_url(redis_url)
                    await client.flushdb()
                    await client.aclose()
                outcomes[variant] = await replay(
                    url, redis_url, trace, sizes, plan, l2_prefilled=variant == "L2 prefilled"
                )

    print(
        f"{plan.requests:,} reads, Zipf s={ZIPF_S} over {plan.threads:,} threads of "
        f"{MIN_MESSAGES}-{MAX_MESSAGES} messages, a new cache every {plan.per_invocation} reads; "
        f"store {kind}\n"
    )
    rows = []
    for variant, outcome in outcomes.items():
        stats = outcome.stats
        rows.append(
            [
                variant,
                f"{outcome.invocations:,}",
                f"{outcome.distinct:,}",
                f"{stats.l1_hits:,}",
                f"{stats.l2_hits:,}",
                f"{stats.misses:,}",
                f"{stats.redis_errors:,}",
                percent(stats.l1_hit_rate),
                percent(stats.l2_hit_rate),
                percent(stats.hit_rate),
                percent(outcome.maximum),
                percent(outcome.share_of_maximum),
                f"{outcome.invocation_ms:,.1f}",
            ]
        )
    print_table(
        "Cold-start hit rates, %",
        [
            "variant",
            "invocations",
            "threads read",
            "L1 hits",
            "L2 hits",
            "misses",
            "Redis errors",
            "L1 rate",
            "L2 rate",
            "hit rate",
            "max",
            "of max",
            "ms/invocation",
        ],
        rows,
    )
    print(
        "L1 rate = L1 hits / reads; L2 rate = L2 hits / reads that reached L2; "
        "max = 1 - first-touch misses / reads;\nRedis errors: calls that failed or passed "
        "the cache's redis_timeout (each makes that cache skip L2 until Redis answers again)"
    )
    print(f"Goal: hit rate >= {100 * GOAL:.0f} % of max")
    for variant, outcome in outcomes.items():
        verdict = "met" if outcome.share_of_maximum >= GOAL else "NOT met"
        notes = []
        if outcome.first_touch_misses_seen != outcome.first_touch_misses:
            notes.append(
                f"{outcome.first_touch_misses_seen} first-touch misses seen, "
                f"{outcome.first_touch_misses} expected"
            )
        if outcome.degraded_invocations:
            notes.append(f"Redis errors in {outcome.degraded_invocations} invocation(s)")
        print(
            f"  {variant:<13} {100 * outcome.share_of_maximum:.2f} %   goal {verdict}"
            + (f"   ({'; '.join(notes)})" if notes else "")
        )
    print()

    return {
        "benchmark": "cold_start",
        "mode": mode,
        "machine": machine,
        "plan": {
            "threads": plan.threads,
            "requests": plan.requests,
            "requests_per_invocation": plan.per_invocation,
            "zipf_s": ZIPF_S,
            "messages_per_thread": [MIN_MESSAGES, MAX_MESSAGES],
            "payload_bytes": PAYLOAD_BYTES,
            "seed": seed,
            "store": kind,
        },
        "goal_share_of_max": GOAL,
        "variants": {
            variant: {
                "invocations": outcome.invocations,
                "distinct_threads": outcome.distinct,
                "l1_hits": outcome.stats.l1_hits,
                "l2_hits": outcome.stats.l2_hits,
                "misses": outcome.stats.misses,
                "store_loads": outcome.stats.store_loads,
                "lease_waits": outcome.stats.lease_waits,
                "redis_errors": outcome.stats.redis_errors,
                "first_touch_misses": outcome.first_touch_misses,
                "first_touch_misses_seen": outcome.first_touch_misses_seen,
                "l1_hit_rate": round(outcome.stats.l1_hit_rate, 5),
                "l2_hit_rate": round(outcome.stats.l2_hit_rate, 5),
                "hit_rate": round(outcome.stats.hit_rate, 5),
                "max_hit_rate": round(outcome.maximum, 5),
                "share_of_max": round(outcome.share_of_maximum, 5),
                "goal_met": outcome.share_of_maximum >= GOAL,
                "invocations_with_redis_errors": outcome.degraded_invocations,
                "ms_per_invocation": round(outcome.invocation_ms, 2),
            }
            for variant, outcome in outcomes.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, "2,000 reads; a smoke run", default_store="sqlite")
    parser.add_argument("--seed", type=int, default=1, help="seed of the trace (default 1)")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    plan = QUICK if args.quick else FULL
    document = run_benchmark(
        "cold_start", run(plan, args.store, args.postgres_url, args.seed, mode), args.json
    )
    return EXIT_NO_POSTGRES if document is None else 0


if __name__ == "__main__":
    sys.exit(main())
