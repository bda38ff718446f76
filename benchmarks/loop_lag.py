"""Event-loop lag while ~5 MB conversations are loaded and appended (issue goal: p99 <= 5 ms).

    python benchmarks/loop_lag.py [--quick] [--json FILE] [--store sqlite|postgres]
                                  [--postgres-url URL]

Setup: a private ``redis-server`` and a store (a temporary SQLite file, or a
throwaway ``ac_bench_<random>`` PostgreSQL database), four conversations of ~5 MB
(three of 2,500 messages of ~2 KB, one of 5 messages of ~1 MB; random words, so
zstd compresses them as it would prose) and 50 small ones (20 messages of ~200 B).

For 20 s (3 s with ``--quick``), on one event loop pinned to at most 2 CPUs:

- a task makes 200 ``get`` calls per second on the small conversations, timing each;
- a task, every 100 ms, loads a 5 MB conversation cold and appends a ~2 KB message
  to it. Cold means dropped from L1 (so it comes from Redis) and, every 4th time,
  invalidated everywhere (so it comes from the store and is written back to Redis);
- a ``LoopLagMonitor(interval=0.001)`` samples the loop's lag.

Then the same workload runs against NAIVE, a cache that keeps each conversation in
Redis as one JSON array of messages: a load is ``orjson.loads`` of the whole array on
the loop, an append re-encodes the whole array with ``orjson.dumps``. Both write
through to the same store. Their lag side by side shows what the design buys. An
idle loop is measured first, as the floor the machine allows.

Also reported: agent-core's cache counters (a Redis call that misses its deadline
degrades L2 and clears L1 on reconnect), the garbage collector's pauses, and CPU
time: of the process, of the loop thread, and how long the loop thread was runnable
but waiting for a CPU (Linux schedstat), which shows up as lag whatever the code does.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import orjson
import redis.asyncio as redis

from _redis import private_redis, redis_server_version
from _support import (
    EXIT_NO_POSTGRES,
    benchmark_parser,
    machine_info,
    percentile,
    print_machine,
    print_table,
    run_benchmark,
    temporary_database,
)
from agent_core import ConversationCache, ThreadStore
from agent_core.observe import LoopLagMonitor, LoopLagSnapshot

LAG_GOAL_P99_MS: Final = 5.0
CPUS: Final = 2
LAG_INTERVAL: Final = 0.001
SMALL_THREADS: Final = 50
SMALL_MESSAGES: Final = 20
SMALL_MESSAGE_CHARS: Final = 170
BIG_THREADS: Final = 3
BIG_MESSAGES: Final = 2_500
BIG_MESSAGE_CHARS: Final = 2_000
HUGE_MESSAGES: Final = 5
HUGE_MESSAGE_CHARS: Final = 1_000_000
PREFILL_BATCH: Final = 500
HEAVY_EVERY: Final = 0.1
STORE_LOAD_EVERY: Final = 4
GETS_PER_SECOND: Final = 200
APPROACHES: Final = ("agent-core", "naive")

Item = dict[str, Any]
Source = Literal["redis", "store"]


@dataclass(frozen=True, slots=True)
class Plan:
    seconds: float
    idle_seconds: float


FULL: Final = Plan(seconds=20.0, idle_seconds=5.0)
QUICK: Final = Plan(seconds=3.0, idle_seconds=1.0)


class Text:
    """Random words from a fixed vocabulary: compresses about as well as prose."""

    def __init__(self, rng: random.Random) -> None:
        letters = "etaoinshrdlucmfwypvbgkjqxz"
        self._rng = rng
        self._words = ["".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(5_000)]

    def __call__(self, chars: int) -> str:
        words = self._rng.choices(self._words, k=chars // 5 + 8)
        return " ".join(words)[:chars]


def conversation(text: Text, count: int, chars: int) -> list[Item]:
    roles = ("user", "assistant")
    return [{"role": roles[i % 2], "content": text(chars)} for i in range(count)]


@dataclass(frozen=True, slots=True)
class Corpus:
    big: dict[str, list[Item]]
    small: dict[str, list[Item]]
    appended: Item

    @classmethod
    def build(cls, rng: random.Random) -> Corpus:
        text = Text(rng)
        big = {
            f"big-{i}": conversation(text, BIG_MESSAGES, BIG_MESSAGE_CHARS)
            for i in range(BIG_THREADS)
        }
        big["huge"] = conversation(text, HUGE_MESSAGES, HUGE_MESSAGE_CHARS)
        small = {
            f"small-{i}": conversation(text, SMALL_MESSAGES, SMALL_MESSAGE_CHARS)
            for i in range(SMALL_THREADS)
        }
        appended = {"role": "user", "content": text(BIG_MESSAGE_CHARS)}
        return cls(big, small, appended)


class Approach(ABC):
    """What the workload drives: agent-core's cache, or the naive one."""

    name: str

    @abstractmethod
    async def append(self, thread_id: str, messages: Sequence[Item]) -> int:
        """Append durably; returns the thread's new version."""

    @abstractmethod
    async def get(self, thread_id: str) -> int:
        """Serve the thread; returns its message count."""

    @abstractmethod
    async def drop(self, thread_id: str, source: Source) -> None:
        """Make the next ``get`` of the thread come from ``source``."""

    def counters(self) -> dict[str, int]:
        """Running counts worth reporting (none by default)."""
        return {}


class AgentCore(Approach):
    name = "agent-core"

    def __init__(self, cache: ConversationCache) -> None:
        self.cache = cache

    async def append(self, thread_id: str, messages: Sequence[Item]) -> int:
        return await self.cache.append(thread_id, messages)

    async def get(self, thread_id: str) -> int:
        return len(await self.cache.get(thread_id))

    async def drop(self, thread_id: str, source: Source) -> None:
        if source == "store":
            await self.cache.invalidate(thread_id)
        else:
            # L1 only, as if evicted or read by a cold instance: the next get reads Redis.
            self.cache.evict_local(thread_id)

    def counters(self) -> dict[str, int]:
        stats = self.cache.stats()
        return {
            "l1_hits": stats.l1_hits,
            "l2_hits": stats.l2_hits,
            "store_loads": stats.store_loads,
            "redis_errors": stats.redis_errors,
            "l1_cleared_on_reconnect": stats.evictions.get("reconnect", 0),
        }


class Naive(Approach):
    """One JSON array per thread in Redis, decoded and re-encoded whole, on the loop."""

    name = "naive"

    def __init__(self, store: ThreadStore, client: redis.Redis, namespace: str) -> None:
        self._store = store
        self._client = client
        self._namespace = namespace
        self._held: dict[str, list[Item]] = {}

    def _key(self, thread_id: str) -> str:
        return f"naive:{self._namespace}:{thread_id}"

    async def _load(self, thread_id: str) -> list[Item]:
        if thread_id in self._held:
            return self._held[thread_id]
        raw = await self._client.get(self._key(thread_id))
        if raw is None:
            records = await self._store.read(self._namespace, thread_id)
            raw = b"[" + b",".join(records.payloads) + b"]"
            held: list[Item] = orjson.loads(raw)
            await self._client.set(self._key(thread_id), orjson.dumps(held))
        else:
            held = orjson.loads(raw)
        self._held[thread_id] = held
        return held

    async def append(self, thread_id: str, messages: Sequence[Item]) -> int:
        held = await self._load(thread_id)
        payloads = [orjson.dumps(message) for message in messages]
        result = await self._store.append(self._namespace, thread_id, payloads)
        held.extend(messages)
        await self._client.set(self._key(thread_id), orjson.dumps(held))
        return result.version

    async def get(self, thread_id: str) -> int:
        return len(await self._load(thread_id))

    async def drop(self, thread_id: str, source: Source) -> None:
        self._held.pop(thread_id, None)
        if source == "store":
            await self._client.delete(self._key(thread_id))


async def prefill(approach: Approach, corpus: Corpus) -> None:
    for thread_id, messages in (*corpus.big.items(), *corpus.small.items()):
        batch = 1 if thread_id == "huge" else PREFILL_BATCH
        for start in range(0, len(messages), batch):
            await approach.append(thread_id, messages[start : start + batch])


class GcPauses:
    """Times every collection of the cyclic garbage collector while installed."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._started = 0.0

    def _callback(self, stage: str, info: dict[str, int]) -> None:
        if stage == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self._started))

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *_: object) -> None:
        gc.callbacks.remove(self._callback)


@dataclass(slots=True)
class Phase:
    """What one run recorded, durations in seconds."""

    lag: LoopLagSnapshot
    gc: list[tuple[int, float]]
    gets: list[float] = field(default_factory=list)
    loads: dict[Source, list[float]] = field(default_factory=lambda: {"redis": [], "store": []})
    appends: list[float] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)


class CpuClock:
    """CPU seconds of the process and of the loop thread, and how long the loop thread
    waited for a CPU while runnable (Linux ``schedstat``; 0.0 where unavailable)."""

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> dict[str, float]:
        try:
            fields = Path("/proc/thread-self/schedstat").read_text().split()
            waiting = int(fields[1]) / 1e9
        except (OSError, IndexError, ValueError):
            waiting = 0.0
        return {
            "wall": time.perf_counter(),
            "process_cpu": time.process_time(),
            "loop_thread_cpu": time.thread_time(),
            "loop_thread_waiting_for_cpu": waiting,
        }

    def elapsed(self) -> dict[str, float]:
        now = self._read()
        return {key: round(now[key] - self._start[key], 2) for key in now}


async def small_gets(approach: Approach, ids: Sequence[str], stop_at: float, phase: Phase) -> None:
    rng = random.Random(1)
    clock = time.perf_counter
    next_at = clock()
    while next_at < stop_at:
        delay = next_at - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        started = clock()
        await approach.get(rng.choice(ids))
        phase.gets.append(clock() - started)
        next_at += 1 / GETS_PER_SECOND


async def heavy(
    approach: Approach, corpus: Corpus, stop_at: float, phase: Phase, expected: dict[str, int]
) -> None:
    clock = time.perf_counter
    ids = list(corpus.big)
    rounds = 0
    next_at = clock()
    while next_at < stop_at:
        delay = next_at - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        thread_id = ids[rounds % len(ids)]
        # Every 4th load from the store, rotating over the threads.
        turn = (rounds + rounds // len(ids)) % STORE_LOAD_EVERY
        source: Source = "store" if turn == STORE_LOAD_EVERY - 1 else "redis"
        await approach.drop(thread_id, source)
        started = clock()
        count = await approach.get(thread_id)
        phase.loads[source].append(clock() - started)
        if count != expected[thread_id]:
            raise RuntimeError(
                f"{approach.name}: {thread_id} has {count} messages, not {expected[thread_id]}"
            )
        started = clock()
        await approach.append(thread_id, [corpus.appended])
        phase.appends.append(clock() - started)
        expected[thread_id] += 1
        rounds += 1
        next_at += HEAVY_EVERY


async def measure(approach: Approach | None, corpus: Corpus, seconds: float) -> Phase:
    """Run the workload on ``approach`` (None: an idle loop) while sampling the lag."""
    expected = {thread_id: len(messages) for thread_id, messages in corpus.big.items()}
    before: dict[str, int] = {}
    if approach is not None:
        for thread_id in corpus.big:  # warm the code paths and connections
            await approach.get(thread_id)
        before = approach.counters()
    with GcPauses() as collections:
        async with LoopLagMonitor(interval=LAG_INTERVAL) as monitor:
            phase = Phase(monitor.snapshot(), collections.pauses)
            clock = CpuClock()
            stop_at = time.perf_counter() + seconds
            if approach is None:
                await asyncio.sleep(seconds)
            else:
                await asyncio.gather(
                    small_gets(approach, list(corpus.small), stop_at, phase),
                    heavy(approach, corpus, stop_at, phase, expected),
                )
            phase.cpu = clock.elapsed()
    phase.lag = monitor.snapshot()
    if approach is not None:
        phase.counters = {k: v - before[k] for k, v in approach.counters().items()}
    return phase


def pin_cpus() -> str:
    """Keep this process (and the redis-server it starts) on at most ``CPUS`` CPUs."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) > CPUS:
        os.sched_setaffinity(0, available[:CPUS])
    return ",".join(str(cpu) for cpu in sorted(os.sched_getaffinity(0)))


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def spread(samples: Sequence[float]) -> dict[str, Any]:
    """Count, p50, p99 and max of durations in seconds, as milliseconds."""
    ordered = sorted(samples)
    if not ordered:
        return {"count": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    return {
        "count": len(ordered),
        "p50_ms": ms(percentile(ordered, 0.50)),
        "p99_ms": ms(percentile(ordered, 0.99)),
        "max_ms": ms(ordered[-1]),
    }


async def run(plan: Plan, admin_url: str, store_kind: str, mode: str) -> dict[str, Any]:
    cpus = pin_cpus()
    corpus = Corpus.build(random.Random(7))
    phases: dict[str, Phase] = {}
    with (
        tempfile.TemporaryDirectory(prefix="ac-bench-") as directory,
        private_redis() as redis_url,
    ):
        async with temporary_database(admin_url) as postgres_url:
            machine = await machine_info(postgres_url, temp_dir=directory)
            machine["cpus_used"] = cpus
            machine["redis_server"] = redis_server_version()
            print_machine(machine)
            sqlite_url = f"sqlite:///{Path(directory) / 'bench.db'}"
            async with ConversationCache.from_urls(
                store=sqlite_url if store_kind == "sqlite" else postgres_url,
                redis=redis_url,
                namespace="design",
            ) as cache:
                phases["idle"] = await measure(None, corpus, plan.idle_seconds)
                # Naive first, and gone before agent-core runs: neither approach's
                # objects weigh on the other's garbage collections.
                client = redis.Redis.from_url(redis_url)
                try:
                    naive = Naive(cache.store, client, "naive")
                    await prefill(naive, corpus)
                    phases["naive"] = await measure(naive, corpus, plan.seconds)
                    del naive
                finally:
                    await client.aclose()
                design = AgentCore(cache)
                await prefill(design, corpus)
                phases["agent-core"] = await measure(design, corpus, plan.seconds)
    return report(plan, corpus, store_kind, mode, machine, phases)


def gc_summary(pauses: Sequence[tuple[int, float]], seconds: float) -> dict[str, Any]:
    young = [pause for generation, pause in pauses if generation < 2]
    full = [pause for generation, pause in pauses if generation == 2]
    return {
        "young_per_s": round(len(young) / seconds, 1),
        "young_max_ms": ms(max(young, default=0.0)),
        "full": len(full),
        "full_max_ms": ms(max(full, default=0.0)),
        "total_ms": ms(sum(pause for _, pause in pauses)),
    }


def report(
    plan: Plan,
    corpus: Corpus,
    store_kind: str,
    mode: str,
    machine: dict[str, str],
    phases: dict[str, Phase],
) -> dict[str, Any]:
    sizes = {thread_id: len(orjson.dumps(messages)) for thread_id, messages in corpus.big.items()}
    print("Workload")
    for thread_id, messages in corpus.big.items():
        print(f"  {thread_id:<8} {len(messages):>5,} messages, {sizes[thread_id] / 1e6:.1f} MB")
    print(
        f"  {SMALL_THREADS} small threads of {SMALL_MESSAGES} messages; "
        f"{GETS_PER_SECOND} gets/s on them"
    )
    print(
        f"  every {HEAVY_EVERY * 1000:.0f} ms: one cold load of a big thread "
        f"(every {STORE_LOAD_EVERY}th from the {store_kind} store, else from Redis) "
        "and one ~2 KB append to it"
    )
    print(
        f"  {plan.seconds:g} s per approach ({plan.idle_seconds:g} s idle first), "
        f"one asyncio loop, CPUs {machine['cpus_used']}"
    )
    print()

    lag = {name: phases[name].lag for name in ("idle", *APPROACHES)}
    print_table(
        f"Event-loop lag, ms (LoopLagMonitor interval {LAG_INTERVAL * 1000:g} ms)",
        ["run", "samples", "p50", "p90", "p99", "max"],
        [
            [
                "idle (no workload)" if name == "idle" else name,
                f"{snap.count:,}",
                *(f"{value * 1000:.2f}" for value in (snap.p50, snap.p90, snap.p99, snap.max)),
            ]
            for name, snap in lag.items()
        ],
    )
    design, naive = lag["agent-core"], lag["naive"]
    ratios = {
        "p99": naive.p99 / design.p99 if design.p99 else float("inf"),
        "max": naive.max / design.max if design.max else float("inf"),
    }
    goal_met = design.p99 * 1000 <= LAG_GOAL_P99_MS
    print(f"Lag ratio naive / agent-core: p99 {ratios['p99']:.2f}x, max {ratios['max']:.2f}x")
    print(
        f"Goal p99 <= {LAG_GOAL_P99_MS:g} ms (agent-core): "
        f"{design.p99 * 1000:.2f} ms, {'met' if goal_met else 'NOT met'}"
    )
    print()

    gets = {name: spread(phases[name].gets) for name in APPROACHES}
    print_table(
        f"Small gets, ms ({GETS_PER_SECOND}/s scheduled)",
        ["approach", "gets", "per s", "p50", "p99", "max"],
        [
            [
                name,
                f"{cell['count']:,}",
                f"{cell['count'] / plan.seconds:.0f}",
                f"{cell['p50_ms']:.3f}",
                f"{cell['p99_ms']:.3f}",
                f"{cell['max_ms']:.2f}",
            ]
            for name, cell in gets.items()
        ],
    )

    heavy_ops: dict[str, dict[str, dict[str, Any]]] = {
        name: {
            "load_from_redis": spread(phases[name].loads["redis"]),
            "load_from_store": spread(phases[name].loads["store"]),
            "append": spread(phases[name].appends),
        }
        for name in APPROACHES
    }
    print_table(
        "Big-thread operations, ms (wall time of the awaited call)",
        ["approach", "operation", "count", "p50", "p99", "max"],
        [
            [
                name,
                operation,
                f"{cell['count']:,}",
                f"{cell['p50_ms']:.2f}",
                f"{cell['p99_ms']:.2f}",
                f"{cell['max_ms']:.2f}",
            ]
            for name, operations in heavy_ops.items()
            for operation, cell in operations.items()
        ],
    )

    counters = phases["agent-core"].counters
    print("agent-core cache during its run")
    for key, value in counters.items():
        print(f"  {key:<24} {value:>8,}")
    if counters["l1_cleared_on_reconnect"]:
        print(
            "  (a Redis call that misses its deadline marks L2 degraded until a probe"
            " succeeds, and the reconnect clears L1)"
        )
    print()

    cpu = {name: phases[name].cpu for name in lag}
    print_table(
        "CPU during each run, s (2 CPUs shared with redis-server, PostgreSQL, other processes)",
        ["run", "wall", "process CPU", "loop thread CPU", "loop thread waiting for a CPU"],
        [
            [
                name,
                f"{cell['wall']:.1f}",
                f"{cell['process_cpu']:.2f}",
                f"{cell['loop_thread_cpu']:.2f}",
                f"{cell['loop_thread_waiting_for_cpu']:.2f}",
            ]
            for name, cell in cpu.items()
        ],
    )
    print(
        "  waiting for a CPU: runnable but not running (schedstat); each such wait shows up "
        "as loop lag, whatever the loop's own code does"
    )
    print()

    collections = {
        name: gc_summary(phases[name].gc, plan.idle_seconds if name == "idle" else plan.seconds)
        for name in lag
    }
    print_table(
        "Garbage-collector pauses on the loop thread, ms",
        ["run", "gen 0/1 per s", "gen 0/1 max", "gen 2 count", "gen 2 max", "total"],
        [
            [
                name,
                f"{cell['young_per_s']:.1f}",
                f"{cell['young_max_ms']:.2f}",
                str(cell["full"]),
                f"{cell['full_max_ms']:.2f}",
                f"{cell['total_ms']:.1f}",
            ]
            for name, cell in collections.items()
        ],
    )
    return {
        "benchmark": "loop_lag",
        "mode": mode,
        "store": store_kind,
        "machine": machine,
        "plan": {
            "seconds": plan.seconds,
            "idle_seconds": plan.idle_seconds,
            "lag_interval_s": LAG_INTERVAL,
            "big_thread_bytes": sizes,
            "small_threads": SMALL_THREADS,
            "small_messages": SMALL_MESSAGES,
            "gets_per_second": GETS_PER_SECOND,
            "heavy_every_s": HEAVY_EVERY,
            "store_load_every": STORE_LOAD_EVERY,
        },
        "lag_ms": {
            name: {
                "samples": snap.count,
                "p50": ms(snap.p50),
                "p90": ms(snap.p90),
                "p99": ms(snap.p99),
                "max": ms(snap.max),
            }
            for name, snap in lag.items()
        },
        "lag_ratio_naive_over_agent_core": {k: round(v, 2) for k, v in ratios.items()},
        "goal": {"p99_ms": LAG_GOAL_P99_MS, "met": goal_met},
        "small_gets": gets,
        "big_thread_operations": heavy_ops,
        "agent_core_counters": counters,
        "cpu_s": cpu,
        "gc": collections,
    }


def main(argv: list[str] | None = None) -> int:
    args = benchmark_parser(
        __doc__, "3 s per approach; a smoke run", default_store="postgres"
    ).parse_args(argv)
    mode = "quick" if args.quick else "full"
    plan = QUICK if args.quick else FULL
    document = run_benchmark("loop_lag", run(plan, args.postgres_url, args.store, mode), args.json)
    if document is None:
        return EXIT_NO_POSTGRES
    return 0


if __name__ == "__main__":
    sys.exit(main())
