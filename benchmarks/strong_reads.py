"""Price of strong reads: the read path before and after linearizable strong mode, side by side.

    python benchmarks/strong_reads.py [--quick] [--json FILE] [--postgres-url URL]
                                      [--baseline-src DIR] [--candidate-src DIR]

Two trees are measured in one run: the baseline (``--baseline-src``, default
/work/wt-base/src, the code before strong reads were made linearizable) and the
candidate (``--candidate-src``, default this checkout's src). Each runs in its own
child process with ``PYTHONPATH`` set to its tree, so it imports that tree's
``agent_core``, and uses the public API only (``ConversationCache.from_urls``, ``get``,
``append``, ``invalidate``, ``stats``). The run is split over fresh pairs of child
processes (one per tree; 5 pairs in the full run), each running 2 rounds per tree in
the order old, new, new, old; inside a round every cell takes its samples in a shuffled
order. So drift on the machine, and whatever makes one process faster than another
(an A/A run, this tree against itself with one process per tree for the whole run, put
one of the two 5-15 % ahead in every cell), spreads over both trees and every cell.
Ratios come with a 95 % bootstrap interval and the range of the per-pair ratios.

Cells: consistency (strong, bounded) x store (SQLite, PostgreSQL) x path, on a
thread of 100 messages of 200 bytes, with a private ``redis-server``. Each child has,
per store, a strong and a bounded reader, a writer with Redis and a writer without
it (all ``from_urls`` instances of one namespace; the writers don't watch the store).

- ``L1 hit``: ``get`` of a thread the reader holds (warm, never written).
- ``after append (Redis writer)`` / ``after append (no-Redis writer)``: the reader
  holds the thread (untimed ``invalidate`` and ``get``), the writer appends one
  message (untimed), then the reader's ``get`` is timed. A read that returns an older
  version than the acknowledged append is *stale*: a defect in strong mode, allowed
  in bounded mode within its bound.
- ``L2 cold``: a fresh instance per sample (opened, and one untimed ``get`` of another
  thread so its connections are warm); its first ``get`` of a thread that L2 holds.
- ``append``: the reader appends one message to a thread it holds (the write path did
  not change: a control, the ratio should be about 1).

Reads that took another path than their cell's (an ``L1 hit`` not served by L1, an
``L2 cold`` read not served by L2) are left out and counted. Also, per round, a
*probe*: each reader holds a thread, the writer without Redis appends to it, and the
reader reads it again at least ``max_staleness`` + 0.1 s later (default
``max_staleness``, 1 s): no mode may be stale then.

The SQLite files live in a temporary directory; each tree gets its own throwaway
``ac_bench_<random>`` PostgreSQL database, dropped at the end (exit status 3 if
PostgreSQL cannot be reached). ``--quick`` takes a few samples per cell, and skips the
baseline (saying so) if ``--baseline-src`` does not exist.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from _ab import (
    TREES,
    Plan,
    Record,
    Results,
    add_tree_arguments,
    imported_from,
    measure_trees,
    ratio_cell,
    serve_child,
    tree_sources,
)
from _support import (
    EXIT_NO_POSTGRES,
    benchmark_parser,
    gc_paused,
    message_payload,
    print_table,
    run_benchmark,
    us,
)
from agent_core import ConversationCache

HERE: Final = Path(__file__).resolve()
DEFAULT_BASELINE: Final = Path("/work/wt-base/src")
DEFAULT_CANDIDATE: Final = HERE.parent.parent / "src"
MODES: Final = ("strong", "bounded")
STORES: Final = ("sqlite", "postgres")
L1_HIT: Final = "L1 hit"
AFTER_REDIS: Final = "after append (Redis writer)"
AFTER_PLAIN: Final = "after append (no-Redis writer)"
L2_COLD: Final = "L2 cold"
APPEND: Final = "append"
PATHS: Final = (L1_HIT, AFTER_REDIS, AFTER_PLAIN, L2_COLD, APPEND)
#: The tier each read path must be served by; a sample served otherwise is left out.
EXPECTED: Final = {L1_HIT: "L1", L2_COLD: "L2"}
THREAD_MESSAGES: Final = 100
#: The candidate's default ``max_staleness``; the probe reads this much later, plus a margin.
MAX_STALENESS: Final = 1.0
PROBE_MARGIN: Final = 0.1


FULL: Final = Plan(generations=5, rounds=2, samples_per_round=30, warmup=3)
QUICK: Final = Plan(generations=1, rounds=2, samples_per_round=3, warmup=1)


def cell_name(mode: str, store: str, path: str) -> str:
    return f"{mode}/{store}/{path}"


CELLS: Final = tuple(
    cell_name(mode, store, path) for mode in MODES for store in STORES for path in PATHS
)


# -- the child: one tree's instances --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Served:
    l1: int
    l2: int
    store: int
    checks: int | None

    @classmethod
    def of(cls, cache: ConversationCache) -> Served:
        stats = cache.stats()
        checks = getattr(stats, "version_checks", None)
        return cls(stats.l1_hits, stats.l2_hits, stats.misses, checks)

    def since(self, before: Served) -> tuple[str, int | None]:
        """The tier that served the one read made since ``before``, and its version checks."""
        tier = "L1" if self.l1 > before.l1 else "L2" if self.l2 > before.l2 else "store"
        if self.checks is None or before.checks is None:
            return tier, None
        return tier, self.checks - before.checks


@dataclass(slots=True)
class Instances:
    """One store's instances in one tree: a reader per mode, and two writers."""

    store_url: str
    redis_url: str
    namespace: str
    readers: dict[str, ConversationCache]
    writer_redis: ConversationCache
    writer_plain: ConversationCache
    #: Per round: the thread each (mode, path) cell writes to.
    threads: dict[tuple[str, str], str] = field(default_factory=dict)
    #: Per mode: the probe thread, its acknowledged version and when (perf_counter).
    probes: dict[str, tuple[str, int, float]] = field(default_factory=dict)


class TreeBench:
    """The cells of one tree, run inside its child process."""

    def __init__(self, stores: dict[str, Instances], seed: int) -> None:
        self._stores = stores
        self._rng = random.Random(seed)
        self._message = orjson.loads(message_payload(200))
        self._round = 0

    async def setup(self) -> None:
        """The threads that are never written: the L1-hit, L2-cold and primer threads."""
        for instances in self._stores.values():
            for thread in ("hot", "cold", "primer"):
                await self._new_thread(instances, thread)
            for reader in instances.readers.values():
                await reader.get("hot")

    async def _new_thread(self, instances: Instances, thread: str) -> None:
        """A thread of ``THREAD_MESSAGES`` messages, in L2 (filled by a reader's load)."""
        await instances.writer_plain.append(thread, [self._message] * THREAD_MESSAGES)
        await instances.readers["strong"].get(thread)

    async def round(self, samples: int) -> dict[str, Any]:
        self._round += 1
        probes = await self._check_probes()
        cells: dict[str, Callable[[Record], Awaitable[None]]] = {}
        for store, instances in self._stores.items():
            for mode in MODES:
                for path in (AFTER_REDIS, AFTER_PLAIN, APPEND):
                    thread = instances.threads[mode, path] = (
                        f"r{self._round}-{mode}-{PATHS.index(path)}"
                    )
                    await self._new_thread(instances, thread)
                    await instances.readers[mode].get(thread)
                for path in PATHS:
                    cells[cell_name(mode, store, path)] = self._cell(instances, mode, path)
        records = {name: Record() for name in cells}
        names = list(cells)
        with gc_paused():
            for _ in range(samples):
                self._rng.shuffle(names)
                for name in names:
                    await cells[name](records[name])
                # Let the bus, the store's watcher and the monitors run, as they would.
                await asyncio.sleep(0)
        await self._start_probes()
        return {"cells": {name: record.as_json() for name, record in records.items()}, **probes}

    def _cell(
        self, instances: Instances, mode: str, path: str
    ) -> Callable[[Record], Awaitable[None]]:
        reader = instances.readers[mode]

        async def l1_hit(record: Record) -> None:
            await self._timed_read(reader, "hot", record, EXPECTED[L1_HIT])

        async def after_append(record: Record) -> None:
            writer = instances.writer_redis if path == AFTER_REDIS else instances.writer_plain
            thread = instances.threads[mode, path]
            await reader.invalidate(thread)
            await reader.get(thread)
            acknowledged = await writer.append(thread, [self._message])
            await self._timed_read(reader, thread, record, None, acknowledged)

        async def l2_cold(record: Record) -> None:
            cache = ConversationCache.from_urls(
                store=instances.store_url,
                redis=instances.redis_url,
                namespace=instances.namespace,
                consistency=mode,
                watch_external=False,
            )
            async with cache:
                await cache.get("primer")
                await self._timed_read(cache, "cold", record, EXPECTED[L2_COLD])

        async def append(record: Record) -> None:
            thread = instances.threads[mode, APPEND]
            clock = time.perf_counter_ns
            started = clock()
            await reader.append(thread, [self._message])
            record.ns.append(clock() - started)

        return {
            L1_HIT: l1_hit,
            AFTER_REDIS: after_append,
            AFTER_PLAIN: after_append,
            L2_COLD: l2_cold,
            APPEND: append,
        }[path]

    @staticmethod
    async def _timed_read(
        cache: ConversationCache,
        thread: str,
        record: Record,
        expected: str | None,
        acknowledged: int = 0,
    ) -> None:
        before = Served.of(cache)
        clock = time.perf_counter_ns
        started = clock()
        conversation = await cache.get(thread)
        elapsed = clock() - started
        tier, checks = Served.of(cache).since(before)
        if expected is not None and tier != expected:
            record.left_out += 1
            return
        record.ns.append(elapsed)
        record.served[tier] += 1
        record.stale += conversation.version < acknowledged
        if checks is not None:
            record.queries.append(checks)

    async def _start_probes(self) -> None:
        """Each reader holds its probe thread; the writer without Redis appends to it."""
        for instances in self._stores.values():
            for mode, reader in instances.readers.items():
                thread = f"probe-{mode}"
                if thread not in instances.probes:
                    await self._new_thread(instances, thread)
                await reader.invalidate(thread)
                await reader.get(thread)
                version = await instances.writer_plain.append(thread, [self._message])
                instances.probes[mode] = (thread, version, time.perf_counter())

    async def _check_probes(self) -> dict[str, Any]:
        """Read each probe thread ``max_staleness`` + margin after its append, or later."""
        results: dict[str, dict[str, float | bool]] = {}
        for store, instances in self._stores.items():
            for mode, (thread, version, appended) in instances.probes.items():
                wait = appended + MAX_STALENESS + PROBE_MARGIN - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                started = time.perf_counter()
                conversation = await instances.readers[mode].get(thread)
                results[f"{mode}/{store}"] = {
                    "stale": conversation.version < version,
                    "after_s": round(started - appended, 3),
                }
            instances.probes.clear()
        return {"probes": results}

    async def finish(self) -> dict[str, Any]:
        return await self._check_probes()


@asynccontextmanager
async def open_instances(config: dict[str, Any]) -> AsyncIterator[dict[str, Instances]]:
    """Every store's instances of this tree, opened; closed on exit."""
    async with AsyncExitStack() as stack:
        stores: dict[str, Instances] = {}
        for store, url in config["stores"].items():
            namespace = f"{config['tree']}-{store}-{config['generation']}"

            async def opened(
                redis: str | None, url: str = url, namespace: str = namespace, **options: Any
            ) -> ConversationCache:
                cache = ConversationCache.from_urls(
                    store=url, redis=redis, namespace=namespace, **options
                )
                return await stack.enter_async_context(cache)

            redis_url = config["redis"]
            stores[store] = Instances(
                store_url=url,
                redis_url=redis_url,
                namespace=namespace,
                readers={mode: await opened(redis_url, consistency=mode) for mode in MODES},
                writer_redis=await opened(redis_url, watch_external=False),
                writer_plain=await opened(None, watch_external=False),
            )
        yield stores


async def child(config: dict[str, Any]) -> None:
    async with open_instances(config) as stores:
        bench = TreeBench(stores, seed=config["seed"])
        await serve_child(config, bench, lambda: bench.round(config["warmup"]))


# -- the parent -------------------------------------------------------------------------


async def run(
    args: argparse.Namespace, plan: Plan, sources: dict[str, Path], skipped: str | None
) -> dict[str, Any]:
    if skipped:
        print(skipped)
    trees = list(sources)
    results, machine, elapsed = await measure_trees(HERE, args.postgres_url, plan, sources)
    document = report(results, trees, plan, skipped)
    document.update(
        benchmark="strong_reads",
        mode="quick" if args.quick else "full",
        machine=machine,
        plan={**asdict(plan), "thread_messages": THREAD_MESSAGES, "payload_bytes": 200},
        elapsed_s=round(elapsed, 1),
    )
    print(f"measured in {elapsed:.1f} s; load average at the end: {machine['loadavg_at_end']}")
    return document


# -- report -----------------------------------------------------------------------------


def report(results: Results, trees: list[str], plan: Plan, skipped: str | None) -> dict[str, Any]:
    both = len(trees) == 2
    rows, cells = [], {}
    for name in CELLS:
        by_tree = results.cells[name]
        mode, store, path = name.split("/")
        summaries = {tree: by_tree[tree].summary() for tree in trees}
        cells[name] = dict(summaries)
        figures = []
        for tree in TREES:
            summary = summaries.get(tree)
            figures += [us(summary["p50_us"]), us(summary["p99_us"])] if summary else ["-", "-"]
        ratio_texts = ["-", "-"]
        if both:
            ratio_texts, cells[name]["ratio_new_over_old"] = ratio_cell(results, name)
        stale = [
            f"{summaries[tree]['stale']}/{summaries[tree]['samples']}"
            if tree in summaries and path in (AFTER_REDIS, AFTER_PLAIN)
            else "-"
            for tree in TREES
        ]
        rows.append([mode, store, path, *figures, *ratio_texts, *stale])
    print_table(
        f"Price of strong reads: µs per call, old vs new ({plan.samples} samples per cell and "
        f"tree; {plan.generations} process pairs x {plan.rounds} interleaved rounds)",
        [
            "mode",
            "store",
            "path",
            "old p50",
            "old p99",
            "new p50",
            "new p99",
            "new/old p50 (95% CI)",
            "per pair",
            "stale old",
            "stale new",
        ],
        rows,
        left=3,
    )
    if skipped:
        print(f"{skipped}: only the new tree was measured")
        print()
    print_served(results, trees)
    probes = print_probes(results, trees)
    return {"trees": trees, "baseline_skipped": skipped, "cells": cells, "probes": probes}


def print_served(results: Results, trees: list[str]) -> None:
    rows = []
    for name in CELLS:
        by_tree = results.cells[name]
        row = name.split("/")
        if row[2] == APPEND:
            continue
        for tree in TREES:
            if tree not in trees:
                row += ["-", "-"]
                continue
            summary = by_tree[tree].summary()
            served = summary["served"]
            row.append(" / ".join(str(served.get(tier, 0)) for tier in ("L1", "L2", "store")))
            checks = summary["version_queries_per_read"]
            row.append("-" if checks is None else f"{checks:.2f}")
        split = by_tree["new"].by_queries()
        row.append(
            ", ".join(
                f"{q}: {us(cell['p50_us'])} ({cell['reads']:.0f})" for q, cell in split.items()
            )
        )
        rows.append(row)
    print_table(
        "Stale reads and paths: reads served by L1 / L2 / store, store version queries per read",
        [
            "mode",
            "store",
            "path",
            "old served",
            "old queries",
            "new served",
            "new queries",
            "new p50 µs by queries (reads)",
        ],
        rows,
        left=3,
    )
    print(
        "(the old tree does not count its version checks; its strong L1 check was one Redis "
        "GETRANGE of L2's header)"
    )
    print()


def print_probes(results: Results, trees: list[str]) -> dict[str, Any]:
    rows, figures = [], {}
    for mode in MODES:
        for store in STORES:
            row = [mode, store]
            for tree in TREES:
                probes = results.probes.get(f"{tree}/{mode}/{store}", [])
                if tree not in trees or not probes:
                    row.append("-")
                    continue
                stale = sum(bool(probe["stale"]) for probe in probes)
                row.append(f"{stale}/{len(probes)}")
                figures[f"{tree}/{mode}/{store}"] = {
                    "stale": stale,
                    "reads": len(probes),
                    "min_after_s": min(probe["after_s"] for probe in probes),
                    "max_after_s": max(probe["after_s"] for probe in probes),
                }
            rows.append(row)
    print_table(
        f"Stale reads {MAX_STALENESS + PROBE_MARGIN:g} s or more after an append by an "
        "instance without Redis",
        ["mode", "store", "old stale/reads", "new stale/reads"],
        rows,
        left=2,
    )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, "a few samples per cell, < 20 s; a smoke run")
    add_tree_arguments(parser, DEFAULT_BASELINE, DEFAULT_CANDIDATE)
    args = parser.parse_args(argv)
    if args.child is not None:
        config = orjson.loads(args.child)
        imported_from(config)
        asyncio.run(child(config))
        return 0
    try:
        sources, skipped = tree_sources(args, DEFAULT_BASELINE)
    except ValueError as exc:
        parser.error(str(exc))
    plan = QUICK if args.quick else FULL
    document = run_benchmark("strong_reads", run(args, plan, sources, skipped), args.json)
    return EXIT_NO_POSTGRES if document is None else 0


if __name__ == "__main__":
    sys.exit(main())
