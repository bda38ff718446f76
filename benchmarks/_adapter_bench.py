"""What the openai-agents and pydantic-ai adapter benchmarks share: a baseline and three
agent-core tiers, a read per (variant, size) cell, sampled in shuffled rounds.

- ``L1``: a cache of a SQLite file, no Redis, the snapshot held in process;
- ``L2``: a cache with a private ``redis-server``, the thread dropped from L1 (untimed)
  before each sample;
- ``STORE``: the ``L1`` cache, the thread dropped from L1 before each sample.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, Final

from _redis import private_redis, redis_server_version
from _support import Summary, gc_paused, local_machine, print_machine, run_benchmark, us
from agent_core import ConversationCache

SIZES: Final = (10, 100, 1_000)
L1: Final = "agent-core, L1 hit"
L2: Final = "agent-core, L2 hit"
STORE: Final = "agent-core, store"
TIERS: Final = (L1, L2, STORE)
#: Variants whose thread is dropped from L1 before each sample.
EVICTED: Final = (L2, STORE)
_SOURCES: Final = {L1: "l1", L2: "l2", STORE: "store"}

Cell = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Plan:
    samples: int
    warmup: int


FULL: Final = Plan(samples=400, warmup=20)
QUICK: Final = Plan(samples=15, warmup=2)


@dataclass(frozen=True, slots=True)
class Reader:
    """One cell's read, which returns how many items it got, and for an agent-core
    variant the cache and thread it reads."""

    read: Callable[[], Awaitable[int]]
    cache: ConversationCache | None = None
    thread: str = ""


@contextmanager
def bench_setup(*distributions: str) -> Iterator[tuple[str, str, dict[str, str]]]:
    """A private Redis, a temporary directory and the machine (printed): its URL, its
    path and the machine's description."""
    with private_redis() as redis_url, tempfile.TemporaryDirectory(prefix="ac-bench-") as directory:
        machine = {
            **local_machine(*distributions),
            "temp_dir": directory,
            "redis_server": redis_server_version(),
        }
        print_machine(machine)
        yield redis_url, directory, machine


@asynccontextmanager
async def tier_caches(
    directory: str, redis_url: str
) -> AsyncIterator[dict[str, ConversationCache]]:
    """The cache each agent-core variant reads through (L1 and store share one)."""
    async with AsyncExitStack() as stack:
        local = await stack.enter_async_context(
            ConversationCache.from_urls(store=f"sqlite:///{directory}/agent-core.db")
        )
        shared = await stack.enter_async_context(
            ConversationCache.from_urls(
                store=f"sqlite:///{directory}/agent-core-l2.db", redis=redis_url
            )
        )
        yield {L1: local, L2: shared, STORE: local}


def thread_name(variant: str, size: int, prefix: str) -> str:
    """The thread of an agent-core cell: L1 and store share a cache, not a thread."""
    return f"{'store' if variant == STORE else prefix}-{size}"


async def measure(
    readers: Mapping[Cell, Reader], plan: Plan, rng: random.Random
) -> dict[Cell, list[int]]:
    """``plan.samples`` timed reads per cell (after ``plan.warmup`` rounds), nanoseconds."""
    cells = list(readers)
    samples: dict[Cell, list[int]] = {cell: [] for cell in cells}
    clock = time.perf_counter_ns
    with gc_paused():
        for round_number in range(plan.warmup + plan.samples):
            rng.shuffle(cells)
            for cell in cells:
                reader = readers[cell]
                if cell[0] in EVICTED and reader.cache is not None:
                    reader.cache.evict_local(reader.thread)
                started = clock()
                count = await reader.read()
                elapsed = clock() - started
                if count != cell[1]:
                    raise RuntimeError(f"{cell}: read {count} items")
                if round_number >= plan.warmup:
                    samples[cell].append(elapsed)
    return samples


async def check_tiers(readers: Mapping[Cell, Reader]) -> None:
    """Each agent-core variant was served by the tier it is named for."""
    for (variant, size), reader in readers.items():
        if reader.cache is None:
            continue
        if variant in EVICTED:
            reader.cache.evict_local(reader.thread)
        source = (await reader.cache.read(reader.thread)).source
        if source != _SOURCES[variant]:
            raise RuntimeError(f"{variant}/{size}: read from {source}, not {_SOURCES[variant]}")


def p50_rows(summaries: Mapping[Cell, Summary], baseline: str) -> list[list[str]]:
    """Per size: the baseline's p50 (µs), then each tier's with its ratio to the baseline."""
    rows = []
    for size in SIZES:
        base = summaries[baseline, size].p50_us
        row = [f"{size:,}", us(base)]
        for variant in TIERS:
            p50 = summaries[variant, size].p50_us
            row.append(f"{us(p50)} ({p50 / base:.2f}x)")
        rows.append(row)
    return rows


def main(
    name: str,
    description: str | None,
    run: Callable[[Plan, str, int], Coroutine[Any, Any, dict[str, Any]]],
    argv: list[str] | None = None,
) -> int:
    parser = argparse.ArgumentParser(description=(description or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few samples; a smoke run")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    parser.add_argument("--seed", type=int, default=1, help="the visiting order's seed")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    mode = "quick" if args.quick else "full"
    document = run_benchmark(name, run(plan, mode, args.seed), args.json)
    return 1 if document is None else 0
