"""Cache latency: L1 and L2 hits, misses and write-through appends, SQLite beside PostgreSQL.

    python benchmarks/cache_latency.py [--quick] [--l2-only] [--json FILE] [--postgres-url URL]

Four measurements, each timing one awaited call with ``time.perf_counter_ns``; each
round visits every cell of a measurement once, in a shuffled order, so drift and
noise on the machine spread over all cells. Messages are distinct 200-byte user
messages of pseudo-words (zstd shrinks them ~3 times, as it does chat text).

1. L1 hit: ``get`` of a thread of 10, 1,000 and 10,000 messages held in L1.
   Goal: p50 <= 5 µs, p99 <= 20 µs, flat in length.
2. L2 hit, at 10, 100 and 1,000 messages of ~200 and ~840 bytes, two ways: the L2
   read path alone (``RedisTier.get``: ``GETEX``, the checks, the payloads cut out at
   their lengths) and ``cache.get`` right after the thread was dropped from L1 (the
   untimed ``evict_local``), which also
   asks ``store.version()`` beside the L2 read and fills L1. Beside them a raw
   ``GET`` (same client) of the conversation stored as one JSON array +
   ``msgspec.json.decode`` (the naive baseline, the floor of the goal), and a raw
   ``GET`` of the messages joined by newlines + ``split`` (the tightest). Each also
   cold: a fresh instance per sample (opened, one untimed ``get`` of another thread
   so its connections are up), its first read: the serverless cold start; the cold
   naive baseline is the raw ``GET`` + decode as that same fresh instance's first read
   (on its own client), so both sides pay what opening an instance leaves behind
   (young garbage, cold caches); a bare fresh client after one ``PING`` (*cold bare
   naive*) is reported beside it. Goal: L2 read path / naive <= 1.3 at every size,
   warm and cold.
3. Append of one message: ``cache.append`` (store, then L1, L2 and the bus) beside
   ``store.append`` alone, on threads that start at 100 and 1,000 messages.
4. ``get`` served by L1, by L2 and by the store (a miss, after the untimed
   ``invalidate``), beside ``store.read`` alone, at 100 and 1,000 messages.

A cache read whose `ReadResult` says another tier served it than its
cell stands for (say, by L2 right after a Redis timeout cleared L1) is left out and
counted. Caches use the defaults (bounded consistency, W-TinyLFU L1 of 64 MiB, zstd
for L2 values of 64 KiB and more) and share one ``redis.asyncio`` client, built as
``from_urls`` builds it, with the baselines. Redis is a private ``redis-server`` on a
free port; the SQLite file lives in a temporary directory (WAL, synchronous=full);
PostgreSQL gets a throwaway ``ac_bench_<random>`` database, dropped at the end (exit
status 3 if it cannot be reached).
"""

from __future__ import annotations

import asyncio
import functools
import random
import string
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Generic, TypeVar, cast

import msgspec
import orjson
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from _redis import private_redis, redis_server_version
from _support import (
    EXIT_NO_POSTGRES,
    _version,
    benchmark_parser,
    gc_paused,
    machine_info,
    percentile,
    print_machine,
    print_table,
    run_benchmark,
    summarize,
    temporary_database,
    us,
)
from agent_core import (
    ConversationCache,
    PostgresStore,
    ReadResult,
    ReadSource,
    SQLiteStore,
    ThreadStore,
)
from agent_core._redis import redis_client

PAYLOAD_BYTES: Final = 200
#: Message sizes of the L2 measurement: short chat turns and long ones.
L2_PAYLOAD_BYTES: Final = (200, 840)
BATCH: Final = 1000
L1_GOAL_P50_US: Final = 5.0
L1_GOAL_P99_US: Final = 20.0
#: "Flat in length": p50 at the longest thread within this factor of p50 at the shortest.
L1_FLAT_GOAL: Final = 1.3
L2_RATIO_GOAL: Final = 1.3
PATHS: Final = ("L1 hit", "L2 hit", "miss", "store.read")

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Plan:
    l1_sizes: tuple[int, ...]
    l2_sizes: tuple[int, ...]
    sizes: tuple[int, ...]
    l1_samples: int
    l2_samples: int
    l2_cold_samples: int
    append_samples: int
    read_samples: int
    warmup: int


FULL: Final = Plan(
    (10, 1_000, 10_000), (10, 100, 1_000), (100, 1_000), 20_000, 3_000, 150, 400, 500, 20
)
QUICK: Final = Plan((10, 1_000, 10_000), (10, 100, 1_000), (100, 1_000), 2_000, 100, 4, 20, 20, 3)


@dataclass(frozen=True, slots=True)
class Cell:
    """One timed call, ``call(arg)``, after an untimed ``prepare`` (if any).

    ``source``, for a cache read (``cache.read``), is the tier the cell stands for: a
    sample whose `ReadResult` names another took another path and is left out. ``served``,
    for a read below the cache (the L2 tier's own), counts that tier's reads: a sample that
    did not add one to it is left out too.
    """

    call: Callable[[str], Awaitable[object]]
    arg: str
    prepare: Callable[[], Awaitable[object]] | None = None
    source: ReadSource | None = None
    served: Callable[[], int] | None = None


@dataclass(frozen=True, slots=True)
class Timings(Generic[K]):
    samples: dict[K, list[int]]
    #: Samples left out per cell: the read took another path (e.g. after a Redis timeout).
    off_path: dict[K, int]


async def measure(
    cells: dict[K, Cell], samples: int, warmup: int, rng: random.Random
) -> Timings[K]:
    """``samples`` rounds (ns) after ``warmup`` rounds, cells shuffled in each round."""
    keys = list(cells)
    timings = Timings({key: [] for key in keys}, dict.fromkeys(keys, 0))
    clock = time.perf_counter_ns
    with gc_paused():
        for index in range(warmup + samples):
            rng.shuffle(keys)
            for key in keys:
                cell = cells[key]
                if cell.prepare is not None:
                    await cell.prepare()
                served = cell.served() if cell.served is not None else 0
                call, arg = cell.call, cell.arg
                started = clock()
                result = await call(arg)
                elapsed = clock() - started
                if index < warmup:
                    continue
                if (
                    cell.source is not None and cast(ReadResult[Any], result).source != cell.source
                ) or (cell.served is not None and cell.served() != served + 1):
                    timings.off_path[key] += 1
                else:
                    timings.samples[key].append(elapsed)
            # Let the bus, the store's watcher and the monitors run, as they would.
            await asyncio.sleep(0)
    return timings


def timer_overhead_ns() -> float:
    """p50 of two back-to-back ``perf_counter_ns`` calls: the floor of every sample."""
    clock = time.perf_counter_ns
    deltas = []
    for _ in range(10_000):
        started = clock()
        deltas.append(clock() - started)
    return percentile(sorted(deltas), 0.5)


def tail(samples_ns: list[int]) -> dict[str, float]:
    """p50, p95, p99, p99.9 and max in µs, to 0.01 µs (for the L1 cells)."""
    ordered = sorted(value / 1000 for value in samples_ns)
    points = {"p50": 0.5, "p95": 0.95, "p99": 0.99, "p99.9": 0.999}
    result = {name: round(percentile(ordered, fraction), 2) for name, fraction in points.items()}
    result["max"] = round(ordered[-1], 2)
    return result


def chat_payloads(rng: random.Random, count: int, size: int = PAYLOAD_BYTES) -> list[bytes]:
    """``count`` distinct user messages of pseudo-words, zstd ratio ~3 like chat text.

    (``message_payload`` repeats one sentence, which zstd shrinks ~2,000 times: L2
    would move almost no bytes and look faster than it is.)
    """
    vocabulary = [
        "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(2000)
    ]
    room = size - len(orjson.dumps({"role": "user", "content": ""}))
    payloads = []
    for _ in range(count):
        words: list[str] = []
        while sum(map(len, words)) + len(words) <= room:
            words.append(rng.choice(vocabulary))
        payloads.append(orjson.dumps({"role": "user", "content": " ".join(words)[:room]}))
    return payloads


async def prefill(
    store: ThreadStore, namespace: str, thread_id: str, payloads: list[bytes]
) -> None:
    for start in range(0, len(payloads), BATCH):
        await store.append(namespace, thread_id, payloads[start : start + BATCH])


_SOURCES: dict[str, ReadSource] = {"L1 hit": "l1", "L2 hit": "l2", "miss": "store"}


def read_cell(cache: ConversationCache, thread_id: str, path: str) -> Cell:
    """``cache.read(thread_id)`` (``get`` that also says which tier served it), made to
    take ``path`` by an untimed step before it."""
    prepare = {
        "L1 hit": None,
        "L2 hit": functools.partial(_drop_from_l1, cache, thread_id),
        "miss": functools.partial(cache.invalidate, thread_id),
    }[path]
    return Cell(cache.read, thread_id, prepare, _SOURCES[path])


# -- the four measurements ----------------------------------------------------------


async def l1_hits(
    cache: ConversationCache, pool: list[bytes], plan: Plan, rng: random.Random
) -> Timings[int]:
    for size in plan.l1_sizes:
        await prefill(cache.store, cache.namespace, f"l1-{size}", pool[:size])
        await cache.get(f"l1-{size}")
    cells = {size: read_cell(cache, f"l1-{size}", "L1 hit") for size in plan.l1_sizes}
    return await measure(cells, plan.l1_samples, plan.warmup, rng)


L2Cell = tuple[str, int, int]  # (case, message bytes, messages)
WARM_CASES: Final = ("tier", "cache", "version", "naive", "tightest")
COLD_CASES: Final = ("cold tier", "cold cache", "cold naive", "cold bare naive")


def new_client(url: str, read_size: int | None = None) -> redis.Redis:
    """A client as ``ConversationCache.from_urls`` builds it, or with ``read_size``."""
    if read_size is None:
        return cast(redis.Redis, redis_client(url))
    return redis.Redis.from_url(
        url, socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0), socket_read_size=read_size
    )


def read_size(client: redis.Redis) -> int:
    return int(client.connection_pool.connection_kwargs.get("socket_read_size", 65536))


class Fresh:
    """A fresh instance per cold sample: opened (with connections up) in an untimed
    step, closed in the next one. ``hits`` counts the timed reads L2 served."""

    def __init__(self, store_url: str, redis_url: str, namespace: str) -> None:
        self._store_url, self._redis_url, self._namespace = store_url, redis_url, namespace
        self.cache: ConversationCache | None = None
        self.client: redis.Redis | None = None
        self.hits = 0

    async def close(self) -> None:
        if self.cache is not None:
            await self.cache.close()
        if self.client is not None:
            await self.client.aclose()
        self.cache = self.client = None

    async def open_cache(self) -> None:
        await self.close()
        self.cache = ConversationCache.from_urls(
            self._store_url, self._redis_url, self._namespace, watch_external=False
        )
        await self.cache.open()
        await self.cache.get("primer")  # connections up, the way a served request leaves them

    async def open_client(self) -> None:
        await self.close()
        self.client = new_client(self._redis_url)
        await self.client.ping()

    def served(self) -> int:
        return self.hits


async def l2_hits(
    cache: ConversationCache,
    client: redis.Redis,
    urls: tuple[str, str],
    plan: Plan,
    rng: random.Random,
) -> tuple[Timings[L2Cell], Timings[L2Cell]]:
    """The L2 read path and the cache's L2 hit beside the raw-Redis baselines,
    warm and cold: ``(warm, cold)``."""
    decode = msgspec.json.decode
    tier = cache._l2
    assert tier is not None
    fresh = Fresh(urls[0], urls[1], cache.namespace)
    await prefill(cache.store, cache.namespace, "primer", [b'{"role":"user","content":"hi"}'])
    await cache.get("primer")

    async def naive(key: str) -> None:
        decode(cast(bytes, await client.get(key)))

    async def tightest(key: str) -> None:
        cast(bytes, await client.get(key)).split(b"\n")

    async def version(thread_id: str) -> None:
        await cache.store.version(cache.namespace, thread_id)

    tier_hits = [0]

    async def tier_get(thread_id: str) -> None:
        tier_hits[0] += (await tier.get(thread_id)) is not None

    async def cold_tier(thread_id: str) -> None:
        assert fresh.cache is not None
        assert fresh.cache._l2 is not None
        fresh.hits += (await fresh.cache._l2.get(thread_id)) is not None

    async def cold_cache(thread_id: str) -> None:
        assert fresh.cache is not None
        before = fresh.cache.stats().l2_hits
        await fresh.cache.get(thread_id)
        fresh.hits += fresh.cache.stats().l2_hits - before

    async def cold_naive(key: str) -> None:
        assert fresh.cache is not None
        assert fresh.cache._l2 is not None
        decode(cast(bytes, await fresh.cache._l2.client.get(key)))
        fresh.hits += 1

    async def cold_bare_naive(key: str) -> None:
        assert fresh.client is not None
        decode(cast(bytes, await fresh.client.get(key)))
        fresh.hits += 1

    warm: dict[L2Cell, Cell] = {}
    cold: dict[L2Cell, Cell] = {}
    for message_bytes in L2_PAYLOAD_BYTES:
        pool = chat_payloads(rng, max(plan.l2_sizes), message_bytes)
        for size in plan.l2_sizes:
            thread_id = f"l2-{message_bytes}-{size}"
            naive_key, tightest_key = f"naive-{thread_id}", f"tightest-{thread_id}"
            await prefill(cache.store, cache.namespace, thread_id, pool[:size])
            await cache.get(thread_id)
            await client.set(naive_key, b"[" + b",".join(pool[:size]) + b"]")
            await client.set(tightest_key, b"\n".join(pool[:size]))
            cell: L2Cell = ("tier", message_bytes, size)
            warm[cell] = Cell(tier_get, thread_id, served=lambda: tier_hits[0])
            warm["cache", message_bytes, size] = read_cell(cache, thread_id, "L2 hit")
            warm["naive", message_bytes, size] = Cell(naive, naive_key)
            warm["tightest", message_bytes, size] = Cell(tightest, tightest_key)
            warm["version", message_bytes, size] = Cell(version, thread_id)
            cold["cold tier", message_bytes, size] = Cell(
                cold_tier, thread_id, fresh.open_cache, served=fresh.served
            )
            cold["cold cache", message_bytes, size] = Cell(
                cold_cache, thread_id, fresh.open_cache, served=fresh.served
            )
            cold["cold naive", message_bytes, size] = Cell(
                cold_naive, naive_key, fresh.open_cache, served=fresh.served
            )
            cold["cold bare naive", message_bytes, size] = Cell(
                cold_bare_naive, naive_key, fresh.open_client, served=fresh.served
            )
    try:
        warm_timings = await measure(warm, plan.l2_samples, plan.warmup, rng)
        cold_timings = await measure(cold, plan.l2_cold_samples, 1, rng)
    finally:
        await fresh.close()
    return warm_timings, cold_timings


async def _drop_from_l1(cache: ConversationCache, thread_id: str) -> None:
    """Before an L2-hit sample: forget the thread in this instance's L1 only."""
    cache.evict_local(thread_id)


async def appends(
    caches: dict[str, ConversationCache], pool: list[bytes], plan: Plan, rng: random.Random
) -> tuple[Timings[tuple[str, str, int]], dict[tuple[str, str, int], int]]:
    """Write-through ``cache.append`` beside ``store.append``; also the final thread sizes."""
    payload = pool[-1]
    message = orjson.loads(payload)
    cells: dict[tuple[str, str, int], Cell] = {}
    threads: dict[tuple[str, str, int], str] = {}
    for name, cache in caches.items():
        store, namespace = cache.store, cache.namespace

        async def through(thread_id: str, cache: ConversationCache = cache) -> None:
            await cache.append(thread_id, [message])

        async def alone(
            thread_id: str, store: ThreadStore = store, namespace: str = namespace
        ) -> None:
            await store.append(namespace, thread_id, [payload])

        for size in plan.sizes:
            for mode, call in (("write-through", through), ("store only", alone)):
                thread_id = threads[name, mode, size] = f"append-{mode.split()[0]}-{size}"
                await prefill(store, namespace, thread_id, pool[:size])
                cells[name, mode, size] = Cell(call, thread_id)
            await cache.get(threads[name, "write-through", size])  # into L1 and L2
    timings = await measure(cells, plan.append_samples, plan.warmup, rng)
    final = {}
    for (name, mode, size), thread_id in threads.items():
        cache = caches[name]
        final[name, mode, size] = await cache.store.version(cache.namespace, thread_id)
        if mode == "write-through":
            held = await cache.read(thread_id)
            if (held.source, held.value.version) != ("l1", final[name, mode, size]):
                raise RuntimeError(f"{name}: L1 holds {thread_id} at {held}, not extended")
    return timings, final


async def read_paths(
    caches: dict[str, ConversationCache], pool: list[bytes], plan: Plan, rng: random.Random
) -> Timings[tuple[str, int, str]]:
    """``get`` by L1, by L2 and from the store, beside ``store.read``."""
    cells: dict[tuple[str, int, str], Cell] = {}
    for name, cache in caches.items():
        read = functools.partial(cache.store.read, cache.namespace)
        for size in plan.sizes:
            for path in PATHS:
                thread_id = f"read-{path.split()[0].replace('.', '-')}-{size}"
                await prefill(cache.store, cache.namespace, thread_id, pool[:size])
                if path == "store.read":
                    cells[name, size, path] = Cell(read, thread_id)
                    continue
                await cache.get(thread_id)
                cells[name, size, path] = read_cell(cache, thread_id, path)
    return await measure(cells, plan.read_samples, plan.warmup, rng)


# -- the run ------------------------------------------------------------------------


def ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}"


def left_out(timings: Timings[Any]) -> dict[str, int]:
    """Print and return the samples left out per cell, if any."""
    counts = {
        " ".join(map(str, key)) if isinstance(key, tuple) else str(key): count
        for key, count in timings.off_path.items()
        if count
    }
    if counts:
        cells = ", ".join(f"{cell}: {count}" for cell, count in counts.items())
        print(f"left out, the read took another path (e.g. after a Redis timeout): {cells}")
    return counts


def report_l1(timings: Timings[int], plan: Plan, overhead_ns: float) -> dict[str, Any]:
    figures = {size: tail(timings.samples[size]) for size in plan.l1_sizes}
    print_table(
        f"L1 hit: await cache.get(), µs ({plan.l1_samples:,} samples per size, interleaved)",
        ["thread messages", "p50", "p95", "p99", "p99.9", "max"],
        [
            [f"{size:,}", *(f"{value:.2f}" for value in figures[size].values())]
            for size in plan.l1_sizes
        ],
    )
    small, large = plan.l1_sizes[0], plan.l1_sizes[-1]
    flat = figures[large]["p50"] / figures[small]["p50"]
    worst_p50 = max(figure["p50"] for figure in figures.values())
    worst_p99 = max(figure["p99"] for figure in figures.values())
    print(f"timer overhead (back-to-back perf_counter_ns, p50): {overhead_ns:.0f} ns, included")
    print(
        f"goal p50 <= {L1_GOAL_P50_US:g} µs: worst {worst_p50:.2f}  "
        f"{'met' if worst_p50 <= L1_GOAL_P50_US else 'NOT met'}"
    )
    print(
        f"goal p99 <= {L1_GOAL_P99_US:g} µs: worst {worst_p99:.2f}  "
        f"{'met' if worst_p99 <= L1_GOAL_P99_US else 'NOT met'}"
    )
    print(
        f"flat in length, p50({large:,}) / p50({small:,}) <= {L1_FLAT_GOAL}: {flat:.2f}  "
        f"{'met' if flat <= L1_FLAT_GOAL else 'NOT met'}"
    )
    off_path = left_out(timings)
    print()
    return {
        "samples_per_size": plan.l1_samples,
        "left_out": off_path,
        "timer_overhead_ns": round(overhead_ns),
        "us": {str(size): figures[size] for size in plan.l1_sizes},
        "flat_ratio_p50": round(flat, 3),
        "goal_met": worst_p50 <= L1_GOAL_P50_US
        and worst_p99 <= L1_GOAL_P99_US
        and flat <= L1_FLAT_GOAL,
    }


def report_l2(warm: Timings[L2Cell], cold: Timings[L2Cell], plan: Plan) -> dict[str, Any]:
    summaries = {
        cell: summarize(values)
        for timings in (warm, cold)
        for cell, values in timings.samples.items()
    }
    p50 = {cell: summary.p50_us for cell, summary in summaries.items()}
    rows = []
    ratios: dict[str, dict[str, float]] = {}
    met = True
    for message_bytes in L2_PAYLOAD_BYTES:
        for size in plan.l2_sizes:
            figure = {case: p50[case, message_bytes, size] for case in WARM_CASES + COLD_CASES}
            cell_ratios = {
                "tier/naive": figure["tier"] / figure["naive"],
                "cache/naive": figure["cache"] / figure["naive"],
                "tightest/naive": figure["tightest"] / figure["naive"],
                "cold tier/cold naive": figure["cold tier"] / figure["cold naive"],
                "cold cache/cold naive": figure["cold cache"] / figure["cold naive"],
                "cold tier/cold bare naive": figure["cold tier"] / figure["cold bare naive"],
            }
            ratios[f"{message_bytes}B x {size}"] = {k: round(v, 3) for k, v in cell_ratios.items()}
            met &= max(cell_ratios["tier/naive"], cell_ratios["cold tier/cold naive"]) <= (
                L2_RATIO_GOAL
            )
            rows.append(
                [
                    f"{message_bytes}",
                    f"{size:,}",
                    *(us(figure[case]) for case in WARM_CASES + COLD_CASES),
                    *(f"{value:.2f}" for value in cell_ratios.values()),
                ]
            )
    print_table(
        f"L2 hit vs raw Redis, µs p50 ({plan.l2_samples:,} warm and "
        f"{plan.l2_cold_samples:,} cold samples per cell, interleaved)",
        [
            "msg B",
            "msgs",
            *WARM_CASES,
            *COLD_CASES,
            "tier/naive",
            "cache/naive",
            "tightest/naive",
            "cold tier/naive",
            "cold cache/naive",
            "cold tier/bare",
        ],
        rows,
        left=2,
    )
    print(
        "tier: RedisTier.get (GETEX, checks, payloads cut): the L2 read path; cache: get() right "
        "after dropping the thread from L1 (the L2 read beside store.version(), L1 fill); "
        "version: store.version() alone (SQLite)\n"
        "naive: GET of one JSON array + msgspec.json.decode; tightest: GET of "
        "newline-joined messages + split; same client\ncold: a fresh instance per sample "
        "with its connections up, its first read; cold naive on that instance's own client; "
        "cold bare naive on a bare fresh client after one PING (no instance: none of its "
        "start-up's garbage and cache pollution)"
    )
    verdict = "met" if met else "NOT met"
    print(
        f"goal: L2 read path / naive p50 <= {L2_RATIO_GOAL}, warm and cold, every size: {verdict}"
    )
    off_path = {**left_out(warm), **left_out(cold)}
    print()
    return {
        "samples_per_cell": plan.l2_samples,
        "cold_samples_per_cell": plan.l2_cold_samples,
        "left_out": off_path,
        "us": {" ".join(map(str, cell)): asdict(summary) for cell, summary in summaries.items()},
        "ratios_p50": ratios,
        "goal_met": met,
    }


def report_appends(
    timings: Timings[tuple[str, str, int]],
    final: dict[tuple[str, str, int], int],
    names: list[str],
    plan: Plan,
) -> dict[str, Any]:
    summaries = {cell: summarize(values) for cell, values in timings.samples.items()}
    rows = []
    for name in names:
        for size in plan.sizes:
            through = summaries[name, "write-through", size]
            alone = summaries[name, "store only", size]
            rows.append(
                [
                    name,
                    f"{size:,}",
                    us(through.p50_us),
                    us(through.p95_us),
                    us(alone.p50_us),
                    us(alone.p95_us),
                    ratio(through.p50_us, alone.p50_us),
                    us(through.p50_us - alone.p50_us),
                    f"{final[name, 'write-through', size]:,}",
                ]
            )
    print_table(
        f"Append one message, µs ({plan.append_samples:,} samples per cell, interleaved)",
        [
            "store",
            "thread messages",
            "write-through p50",
            "p95",
            "store only p50",
            "p95",
            "ratio p50",
            "added p50",
            "final",
        ],
        rows,
        left=2,
    )
    print(
        "write-through: cache.append() of a dict (encode, store, L1 extend, L2 APPEND script, "
        "bus publish); store only: store.append() of the encoded bytes; "
        "'final' = thread size after the run\n"
    )
    return {
        "samples_per_cell": plan.append_samples,
        "us": {
            name: {
                mode: {
                    str(size): {
                        **asdict(summaries[name, mode, size]),
                        "final_size": final[name, mode, size],
                    }
                    for size in plan.sizes
                }
                for mode in ("write-through", "store only")
            }
            for name in names
        },
    }


def report_reads(
    timings: Timings[tuple[str, int, str]], names: list[str], plan: Plan
) -> dict[str, Any]:
    summaries = {cell: summarize(values) for cell, values in timings.samples.items()}
    rows = []
    for name in names:
        for size in plan.sizes:
            cells = [summaries[name, size, path] for path in PATHS]
            rows.append(
                [
                    name,
                    f"{size:,}",
                    *(us(value) for s in cells for value in (s.p50_us, s.p95_us)),
                    ratio(cells[2].p50_us, cells[3].p50_us),
                ]
            )
    print_table(
        f"get() by path vs store.read(), µs ({plan.read_samples:,} samples per cell, interleaved)",
        [
            "store",
            "thread messages",
            *(f"{path} {p}" for path in PATHS for p in ("p50", "p95")),
            "miss/store.read",
        ],
        rows,
        left=2,
    )
    print(
        "L2 hit: after dropping the thread from L1; miss: after cache.invalidate() (untimed), "
        "so the get takes the load lease, reads the store, fills L2 and announces the fill"
    )
    off_path = left_out(timings)
    print()
    return {
        "samples_per_cell": plan.read_samples,
        "left_out": off_path,
        "us": {
            name: {
                path: {str(size): asdict(summaries[name, size, path]) for size in plan.sizes}
                for path in PATHS
            }
            for name in names
        },
    }


async def run(plan: Plan, admin_url: str, mode: str, l2_only: bool = False) -> dict[str, Any]:
    rng = random.Random(5)
    pool = chat_payloads(rng, max(plan.l1_sizes + plan.l2_sizes + plan.sizes))
    with private_redis() as redis_url, tempfile.TemporaryDirectory(prefix="ac-bench-") as directory:
        async with temporary_database(admin_url) as postgres_url:
            machine = await machine_info(postgres_url, temp_dir=directory)
            machine["redis_server"] = redis_server_version()
            machine["redis_py"] = _version("redis")
            machine["hiredis"] = _version("hiredis")
            client = new_client(redis_url)
            machine["redis_read_size"] = str(read_size(client))
            print_machine(machine)
            sqlite_url = f"sqlite:///{Path(directory) / 'bench.db'}"
            stores: dict[str, ThreadStore] = {
                "sqlite": SQLiteStore(Path(directory) / "bench.db"),
                "postgres": PostgresStore(postgres_url),
            }
            caches = {
                name: ConversationCache(store, redis_client=client, namespace=f"bench-{name}")
                for name, store in stores.items()
            }
            try:
                for cache in caches.values():
                    await cache.open()
                started = time.perf_counter()
                overhead = timer_overhead_ns()
                l1 = None if l2_only else await l1_hits(caches["sqlite"], pool, plan, rng)
                l2 = await l2_hits(caches["sqlite"], client, (sqlite_url, redis_url), plan, rng)
                if not l2_only:
                    append_timings, final = await appends(caches, pool, plan, rng)
                    reads = await read_paths(caches, pool, plan, rng)
                elapsed = time.perf_counter() - started
                errors = {name: cache.stats().redis_errors for name, cache in caches.items()}
            finally:
                for cache in caches.values():
                    await cache.close()
                await client.aclose()

    names = list(caches)
    document: dict[str, Any] = {
        "benchmark": "cache_latency",
        "mode": mode,
        "machine": machine,
        "plan": {**asdict(plan), "payload_bytes": PAYLOAD_BYTES, "prefill_batch": BATCH},
        "redis_errors": errors,
        "elapsed_s": round(elapsed, 2),
    }
    if l1 is not None:
        document["l1_hit"] = report_l1(l1, plan, overhead)
    document["l2_hit"] = report_l2(*l2, plan)
    if not l2_only:
        document["append"] = report_appends(append_timings, final, names, plan)
        document["get_paths"] = report_reads(reads, names, plan)
    counts = ", ".join(f"{name} {count}" for name, count in errors.items())
    print(f"measured in {elapsed:.1f} s; Redis errors (failed, or over redis_timeout): {counts}")
    return document


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, "few samples; a smoke run")
    parser.add_argument("--l2-only", action="store_true", help="measure the L2 hits alone")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    plan = QUICK if args.quick else FULL
    document = run_benchmark(
        "cache_latency", run(plan, args.postgres_url, mode, args.l2_only), args.json
    )
    if document is None:
        return EXIT_NO_POSTGRES
    return 0


if __name__ == "__main__":
    sys.exit(main())
