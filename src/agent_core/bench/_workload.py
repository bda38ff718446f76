"""The success-metrics workload: agent turns on Zipf-distributed threads, with cold starts.

Each "instance" is what one serverless worker lives through: a new `ConversationCache`
(empty L1, new connections) and a `BaseAgent` with `EchoModel`, serving
``per_instance`` turns one after another, as a worker does one request at a time, and
then closing. Instances follow one another over one store (and one Redis, if given),
as cold starts do. Turn ``i`` talks on the thread drawn ``i``-th from a Zipf(s)
distribution over ``threads`` threads; a few large threads (``large_thread_bytes``
each) sit at random ranks, so the loop-lag figure covers multi-MB conversations.

Before the turns, the threads are written, and with Redis every thread is read once
through a cache so that L2 holds it, as a shared Redis does after warm-up.

After them (``baseline``, the default), the same trace runs once more, each turn twice in
a row: by agent-core (the same agents, caches and cold starts) and by the Phase-1
baseline of `._baseline` on the very same threads, which side goes first alternating.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from .._quote import quote
from .._validation import check_count
from ..agent import BaseAgent, EchoModel
from ..cache import ConversationCache
from ..errors import InvalidArgument
from ..observe import LoopLagMonitor, memory_limit, process_rss
from ._baseline import Comparison, Phase1Turns, baseline_namespace
from ._samples import Samples, Timeline

__all__ = ["BenchConfig", "BenchRun", "run_bench"]

MIB: Final = 1 << 20
#: Messages of the ordinary threads: a few to a few dozen, of about 200 bytes each.
_SMALL_THREAD_MESSAGES: Final = (5, 50)
_MESSAGE_CHARS: Final = 200
#: Large threads are written in messages of this size, in batches of this many.
_LARGE_MESSAGE_CHARS: Final = 4_000
_LARGE_BATCH: Final = 250
_DEFAULT_MEMORY_LIMIT: Final = 1024 * MIB
#: The model whose tokens bound the prompts (the agent's and the baseline's), counted exactly.
TOKEN_MODEL: Final = "gpt-4o"
#: How often the timeline samples memory, hit counts and loop lag.
_SAMPLE_EVERY: Final = 0.25
_WORDS: Final = (
    *("agent", "memory", "cache", "thread", "window", "token", "budget", "tool", "call"),
    *("reply", "user", "model", "context", "latency", "redis", "store", "invoice"),
    *("weather", "summary", "schedule", "review", "deploy"),
)


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """What `run_bench` runs; `quick` is a run of about 15 seconds.

    ``store`` None means a SQLite file in a temporary directory (the embedded default),
    ``redis`` None means no L2. ``memory_limit`` is handed to every cache's memory
    monitor, which shrinks L1 above 80 % of it; None means the process's own limit (its
    cgroup's, else physical RAM), at most 1 GiB. ``baseline`` runs the trace a second
    time, agent-core and the Phase-1 baseline turn by turn (see the module's docs).
    """

    store: str | None = None
    redis: str | None = None
    threads: int = 1_000
    requests: int = 20_000
    per_instance: int = 50
    zipf_s: float = 1.1
    large_threads: int = 2
    large_thread_bytes: int = 5 * MIB
    l1_max_bytes: int = 64 * MIB
    memory_limit: int | None = None
    seed: int = 1
    baseline: bool = True

    def __post_init__(self) -> None:
        check_count("threads", self.threads, minimum=1)
        check_count("requests", self.requests, minimum=1)
        check_count("per_instance", self.per_instance, minimum=1)
        check_count("large_threads", self.large_threads, minimum=0, maximum=self.threads)
        check_count("large_thread_bytes", self.large_thread_bytes, minimum=_LARGE_MESSAGE_CHARS)
        check_count("l1_max_bytes", self.l1_max_bytes, minimum=MIB)
        if self.memory_limit is not None:
            check_count("memory_limit", self.memory_limit, minimum=64 * MIB)
        check_count("seed", self.seed, minimum=0)
        if isinstance(self.zipf_s, bool) or not isinstance(self.zipf_s, int | float):
            raise InvalidArgument(f"zipf_s must be a number, got {quote(self.zipf_s)}")
        if not 0 < self.zipf_s <= 10:
            raise InvalidArgument(f"zipf_s must be in (0, 10], got {self.zipf_s}")
        if not isinstance(self.baseline, bool):
            raise InvalidArgument(f"baseline must be a bool, got {quote(self.baseline)}")
        for name in ("store", "redis"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise InvalidArgument(f"{name} must be a URL or None, got {quote(value)}")

    @classmethod
    def quick(cls, **overrides: object) -> BenchConfig:
        """200 threads, 1,000 turns, one 1 MB thread: about 15 s (5 s without the baseline)."""
        base = cls(threads=200, requests=1_000, large_threads=1, large_thread_bytes=MIB)
        return replace(base, **overrides)  # type: ignore[arg-type]


@dataclass(slots=True)
class BenchRun:
    """What one run measured: totals, distributions and the timeline."""

    config: BenchConfig
    store: str
    namespace: str
    #: ``config.memory_limit``, or the process's limit (at most 1 GiB) if that is None.
    memory_limit: int
    #: Reads by the tier that served them, summed over the instances' `stats()`.
    l1_hits: int = 0
    l2_hits: int = 0
    misses: int = 0
    #: Reads each tier could have served at best (see `achievable`).
    l1_max_hits: int = 0
    l2_max_hits: int = 0
    instances: int = 0
    conflicts: int = 0
    seed_seconds: float = 0.0
    turn_seconds: float = 0.0
    peak_rss: int = 0
    peak_l1_bytes: int = 0
    l1_budget: int = 0
    samples: Samples = field(default_factory=Samples)
    timeline: Timeline = field(default_factory=Timeline)
    lag_p50: float = 0.0
    lag_p99: float = 0.0
    lag_max: float = 0.0
    #: The second pass over the trace: agent-core and the Phase-1 baseline side by side.
    comparison: Comparison = field(default_factory=Comparison)

    @property
    def reads(self) -> int:
        return self.l1_hits + self.l2_hits + self.misses


Progress = Callable[[int], None]


async def run_bench(config: BenchConfig, progress: Progress | None = None) -> BenchRun:
    """Seed the threads, run the turns (and the comparison with the baseline), clean up;
    ``progress(n)`` after every n turns (a paired turn of the comparison counts once)."""
    if not isinstance(config, BenchConfig):
        raise InvalidArgument(f"config must be a BenchConfig, got {type(config).__name__}")
    rng = random.Random(config.seed)
    threads = [f"bench-{i:05d}" for i in range(config.threads)]
    trace = _zipf_trace(rng, threads, config.requests, config.zipf_s)
    large = set(rng.sample(threads, config.large_threads))
    with tempfile.TemporaryDirectory(prefix="agent-core-bench-") as tmp:
        store = config.store or f"sqlite:///{Path(tmp) / 'bench.db'}"
        limit = config.memory_limit or min(_DEFAULT_MEMORY_LIMIT, memory_limit())
        run = BenchRun(config, store, f"bench-{secrets.token_hex(4)}", limit)
        _, l1_max, l2_max = achievable(trace, config.per_instance, l2=config.redis is not None)
        run.l1_max_hits, run.l2_max_hits = l1_max, l2_max
        try:
            started = time.perf_counter()
            await _seed(run, threads, large, rng)
            run.seed_seconds = time.perf_counter() - started
            await _turns(run, trace, progress)
            if config.baseline:
                await _compare(run, trace, progress)
        finally:
            await _clean_up(run)
    return run


def achievable(trace: Sequence[str], per_instance: int, *, l2: bool) -> tuple[int, int, int]:
    """Reads: in all, that L1 could serve at best, and that L2 could serve at best.

    L1 misses at least each thread's first read in every instance; with L2 warmed up,
    L2 can serve all of those; without Redis, none.
    """
    first_reads = sum(
        len(set(trace[start : start + per_instance]))
        for start in range(0, len(trace), per_instance)
    )
    return len(trace), len(trace) - first_reads, first_reads if l2 else 0


def _zipf_trace(rng: random.Random, threads: list[str], n: int, s: float) -> list[str]:
    ranked = threads[:]
    rng.shuffle(ranked)  # rank is random, so the large threads land anywhere
    weights = list(itertools.accumulate(1.0 / rank**s for rank in range(1, len(ranked) + 1)))
    return rng.choices(ranked, cum_weights=weights, k=n)


def _text(rng: random.Random, chars: int) -> str:
    words: list[str] = []
    length = 0
    while length < chars:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)


async def _seed(run: BenchRun, threads: list[str], large: set[str], rng: random.Random) -> None:
    config = run.config
    async with _cache(run) as cache:
        for thread_id in threads:
            if thread_id in large:
                count = config.large_thread_bytes // _LARGE_MESSAGE_CHARS
                for start in range(0, count, _LARGE_BATCH):
                    batch = [
                        _message(start + i, _text(rng, _LARGE_MESSAGE_CHARS))
                        for i in range(min(_LARGE_BATCH, count - start))
                    ]
                    await cache.append(thread_id, batch)
            else:
                count = rng.randint(*_SMALL_THREAD_MESSAGES)
                await cache.append(
                    thread_id, [_message(i, _text(rng, _MESSAGE_CHARS)) for i in range(count)]
                )
    if config.redis is not None:
        # A shared Redis in production holds the hot threads already: warm L2 up the same way.
        async with _cache(run) as cache:
            for thread_id in threads:
                await cache.get(thread_id)


def _message(index: int, text: str) -> dict[str, str]:
    return {"role": "user" if index % 2 == 0 else "assistant", "content": text}


@contextlib.asynccontextmanager
async def _cache(run: BenchRun) -> AsyncIterator[ConversationCache]:
    config = run.config
    cache = ConversationCache.from_urls(
        run.store,
        config.redis,
        namespace=run.namespace,
        l1_max_bytes=config.l1_max_bytes,
        memory_limit=run.memory_limit,
    )
    async with cache:
        yield cache


async def _turns(run: BenchRun, trace: list[str], progress: Progress | None) -> None:
    per_instance = run.config.per_instance
    current: list[ConversationCache] = []
    async with LoopLagMonitor() as lag, LoopLagMonitor() as window_lag:
        sampler = asyncio.create_task(_sample(run, current, window_lag))
        started = time.perf_counter()
        try:
            for start in range(0, len(trace), per_instance):
                await _instance(run, trace[start : start + per_instance], current, progress)
        finally:
            run.turn_seconds = time.perf_counter() - started
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        snapshot = lag.snapshot()
    run.lag_p50, run.lag_p99, run.lag_max = snapshot.p50, snapshot.p99, snapshot.max


async def _instance(
    run: BenchRun, threads: list[str], current: list[ConversationCache], progress: Progress | None
) -> None:
    samples = run.samples
    opened = time.perf_counter()
    async with _cache(run) as cache:
        samples.cold_start.append(time.perf_counter() - opened)
        current[:] = [cache]
        agent = _agent(cache)
        for n, thread_id in enumerate(threads):
            started = time.perf_counter()
            reply = await agent.run(thread_id, f"turn {n} of instance {run.instances}")
            samples.record(reply.history_tier, reply.timings["history"], started)
            run.conflicts += reply.conflicted
            if progress is not None:
                progress(1)
        stats = cache.stats()
        current.clear()
    run.instances += 1
    run.l1_hits += stats.l1_hits
    run.l2_hits += stats.l2_hits
    run.misses += stats.misses
    run.l1_budget = max(run.l1_budget, stats.l1_max_bytes)
    # L1 is fullest at the end of an instance: the timeline's samples may fall between.
    run.peak_l1_bytes = max(run.peak_l1_bytes, stats.l1_bytes)


def _agent(cache: ConversationCache) -> BaseAgent:
    return BaseAgent(EchoModel(), cache, token_model=TOKEN_MODEL)


async def _compare(run: BenchRun, trace: list[str], progress: Progress | None) -> None:
    """The trace once more, each turn by agent-core and by the baseline, back to back.

    Instances and cold starts are the first pass's; the baseline opens its own store
    connection with each instance's cache, as a worker of its own would. Which side
    goes first alternates from turn to turn, so neither always finds the store (or the
    machine) as the other left it. Nothing here touches the first pass's figures.
    """
    per_instance = run.config.per_instance
    versions: dict[str, int] = {}
    started = time.perf_counter()
    try:
        for index, start in enumerate(range(0, len(trace), per_instance)):
            threads = trace[start : start + per_instance]
            await _paired_instance(run, threads, start, index, versions, progress)
    finally:
        run.comparison.seconds = time.perf_counter() - started


async def _paired_instance(
    run: BenchRun,
    threads: list[str],
    first: int,
    index: int,
    versions: dict[str, int],
    progress: Progress | None,
) -> None:
    comparison = run.comparison
    async with _cache(run) as cache:
        agent = _agent(cache)
        async with Phase1Turns(run.store, run.namespace, agent, versions) as baseline:
            for n, thread_id in enumerate(threads):
                text = f"turn {n} of paired instance {index}"
                if (first + n) % 2 == 0:
                    await baseline.turn(thread_id, text, comparison)
                    await _agent_turn(agent, thread_id, text, comparison)
                else:
                    await _agent_turn(agent, thread_id, text, comparison)
                    await baseline.turn(thread_id, text, comparison)
                if progress is not None:
                    progress(1)


async def _agent_turn(agent: BaseAgent, thread_id: str, text: str, into: Comparison) -> None:
    """`BaseAgent.run`, timed as the first pass times it, less the model call."""
    started = time.perf_counter()
    reply = await agent.run(thread_id, text)
    into.agent_core.append(time.perf_counter() - started - reply.timings["model"])
    into.agent_history.append(reply.timings["history"])
    into.agent_persist.append(reply.timings["persist"])
    into.agent_sent.append(reply.history_messages)


async def _sample(run: BenchRun, current: list[ConversationCache], lag: LoopLagMonitor) -> None:
    """Every 250 ms: RSS, L1 bytes, and the loop lag since the last sample."""
    timeline = run.timeline
    started = time.perf_counter()
    while True:
        await asyncio.sleep(_SAMPLE_EVERY)
        rss = process_rss()
        l1_bytes = current[0].stats().l1_bytes if current else 0
        run.peak_rss = max(run.peak_rss, rss)
        run.peak_l1_bytes = max(run.peak_l1_bytes, l1_bytes)
        snapshot = lag.snapshot()
        lag.histogram.reset()
        timeline.add(time.perf_counter() - started, rss, l1_bytes, snapshot.p99, snapshot.max)


async def _clean_up(run: BenchRun) -> None:
    """Remove all that the run wrote: the store may be someone's database, Redis shared.

    The run's namespace is its own (a random name) and never used again, so it is purged:
    no thread row (delete would keep one) and no Redis key (delete would write a tombstone
    that lives for the L2 TTL) is left behind.
    """
    try:
        async with ConversationCache.from_urls(
            run.store, run.config.redis, namespace=run.namespace, watch_external=False
        ) as cache:
            await cache.purge_namespace()
    finally:
        # The baseline's appends: in the store only (it never touches Redis).
        async with ConversationCache.from_urls(
            run.store, namespace=baseline_namespace(run.namespace), watch_external=False
        ) as cache:
            await cache.purge_namespace()
