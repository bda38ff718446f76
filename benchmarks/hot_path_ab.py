"""The hot paths before and after a change, side by side: L1 hit, append, window, agent turn.

    python benchmarks/hot_path_ab.py [--quick] [--json FILE] [--postgres-url URL]
                                     [--baseline-src DIR] [--candidate-src DIR]

Two trees are measured in one run (``benchmarks/_ab.py``): the baseline
(``--baseline-src``, default /work/wt-base/src) and the candidate (``--candidate-src``,
default this checkout's src), each in its own child processes, 10 fresh pairs in the full
run, each pair running rounds in the order old, new, new, old; inside a round every cell
takes its samples in a shuffled order. The children use the public API that both trees
have (``ConversationCache.from_urls``, ``get``, ``append``, ``window``, ``stats``;
``BaseAgent.run`` with an ``EchoModel``), with the defaults (bounded reads, a private
``redis-server`` as L2), on SQLite and on PostgreSQL. Threads hold 100 messages of 200
bytes.

- ``L1 hit``: ``get`` of a thread the instance holds.
- ``append``: one message appended to a thread the instance holds.
- ``window``: ``window(max_tokens=2000, model="gpt-4o")`` of a thread the instance holds.
- ``agent turn``: ``BaseAgent.run`` of one user message on a thread the instance holds
  (history, window, the echo model, persisting both messages).
- ``L2 cold``: a fresh instance per sample (opened, and one untimed ``get`` of another
  thread so its connections are up), its first ``get`` of a thread L2 holds: the
  serverless cold start.

A read served by another tier than its cell's is left out and counted.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict
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
from agent_core import BaseAgent, ConversationCache, EchoModel

HERE: Final = Path(__file__).resolve()
DEFAULT_BASELINE: Final = Path("/work/wt-base/src")
DEFAULT_CANDIDATE: Final = HERE.parent.parent / "src"
STORES: Final = ("sqlite", "postgres")
L1_HIT: Final = "L1 hit"
APPEND: Final = "append"
WINDOW: Final = "window"
TURN: Final = "agent turn"
L2_COLD: Final = "L2 cold"
PATHS: Final = (L1_HIT, APPEND, WINDOW, TURN, L2_COLD)
THREAD_MESSAGES: Final = 100
WINDOW_TOKENS: Final = 2_000
MODEL: Final = "gpt-4o"


FULL: Final = Plan(generations=10, rounds=2, samples_per_round=20, warmup=5)
QUICK: Final = Plan(generations=1, rounds=2, samples_per_round=3, warmup=1)
CELLS: Final = tuple(f"{store}/{path}" for store in STORES for path in PATHS)


def namespace(config: dict[str, Any]) -> str:
    """The child's own namespace: its tree and generation."""
    return f"ab-{config['tree']}-{config['generation']}"


def tier_counts(cache: ConversationCache) -> tuple[int, int, int]:
    stats = cache.stats()
    return stats.l1_hits, stats.l2_hits, stats.misses


def tier_since(before: tuple[int, int, int], after: tuple[int, int, int]) -> str:
    return "L1" if after[0] > before[0] else "L2" if after[1] > before[1] else "store"


class HotPaths:
    """The cells of one tree, run inside its child process."""

    def __init__(self, caches: dict[str, ConversationCache], config: dict[str, Any]) -> None:
        self._caches = caches
        self._config = config
        self._rng = random.Random(config["seed"])
        self._message = orjson.loads(message_payload(200))
        self._agents = {
            store: BaseAgent(EchoModel(), cache, token_model=MODEL)
            for store, cache in caches.items()
        }
        self._round = 0
        self._namespace = namespace(config)

    async def setup(self) -> None:
        for cache in self._caches.values():
            for thread in ("hot", "cold", "primer"):
                await cache.append(thread, [self._message] * THREAD_MESSAGES)
            await cache.get("hot")
            await cache.window("hot", max_tokens=WINDOW_TOKENS, model=MODEL)

    async def round(self, samples: int) -> dict[str, Any]:
        self._round += 1
        cells: dict[str, Callable[[Record], Awaitable[None]]] = {}
        for store, cache in self._caches.items():
            for path in (APPEND, TURN):
                thread = f"r{self._round}-{PATHS.index(path)}"
                await cache.append(thread, [self._message] * THREAD_MESSAGES)
                await cache.get(thread)
            for path in PATHS:
                cells[f"{store}/{path}"] = self._cell(store, cache, path)
        records = {name: Record() for name in cells}
        names = list(cells)
        with gc_paused():
            for _ in range(samples):
                self._rng.shuffle(names)
                for name in names:
                    await cells[name](records[name])
                await asyncio.sleep(0)
        return {"cells": {name: record.as_json() for name, record in records.items()}}

    async def finish(self) -> dict[str, Any]:
        return {}

    def _cell(
        self, store: str, cache: ConversationCache, path: str
    ) -> Callable[[Record], Awaitable[None]]:
        clock = time.perf_counter_ns

        async def l1_hit(record: Record) -> None:
            await self._timed_read(cache, "hot", record, "L1")

        async def append(record: Record) -> None:
            started = clock()
            await cache.append(f"r{self._round}-{PATHS.index(APPEND)}", [self._message])
            record.ns.append(clock() - started)

        async def window(record: Record) -> None:
            started = clock()
            await cache.window("hot", max_tokens=WINDOW_TOKENS, model=MODEL)
            record.ns.append(clock() - started)

        async def turn(record: Record) -> None:
            started = clock()
            reply = await self._agents[store].run(
                f"r{self._round}-{PATHS.index(TURN)}", "What did we decide about the cache?"
            )
            elapsed = clock() - started
            if reply.history_tier != "l1":
                record.left_out += 1
                return
            record.ns.append(elapsed)
            record.served["L1"] += 1

        async def l2_cold(record: Record) -> None:
            fresh = ConversationCache.from_urls(
                store=self._config["stores"][store],
                redis=self._config["redis"],
                namespace=self._namespace,
                watch_external=False,
            )
            async with fresh:
                await fresh.get("primer")
                await self._timed_read(fresh, "cold", record, "L2")

        return {L1_HIT: l1_hit, APPEND: append, WINDOW: window, TURN: turn, L2_COLD: l2_cold}[path]

    @staticmethod
    async def _timed_read(
        cache: ConversationCache, thread: str, record: Record, expected: str
    ) -> None:
        before = tier_counts(cache)
        clock = time.perf_counter_ns
        started = clock()
        await cache.get(thread)
        elapsed = clock() - started
        tier = tier_since(before, tier_counts(cache))
        if tier != expected:
            record.left_out += 1
            return
        record.ns.append(elapsed)
        record.served[tier] += 1


@asynccontextmanager
async def opened_caches(config: dict[str, Any]) -> AsyncIterator[dict[str, ConversationCache]]:
    async with AsyncExitStack() as stack:
        caches = {}
        for store, url in config["stores"].items():
            cache = ConversationCache.from_urls(
                store=url, redis=config["redis"], namespace=namespace(config)
            )
            caches[store] = await stack.enter_async_context(cache)
        yield caches


async def child(config: dict[str, Any]) -> None:
    async with opened_caches(config) as caches:
        bench = HotPaths(caches, config)
        await serve_child(config, bench, lambda: bench.round(config["warmup"]))


async def run(
    args: argparse.Namespace, plan: Plan, sources: dict[str, Path], skipped: str | None
) -> dict[str, Any]:
    if skipped:
        print(skipped)
    trees = list(sources)
    results, machine, elapsed = await measure_trees(HERE, args.postgres_url, plan, sources)
    document = report(results, trees, plan, skipped)
    document.update(
        benchmark="hot_path_ab",
        mode="quick" if args.quick else "full",
        machine=machine,
        plan={**asdict(plan), "thread_messages": THREAD_MESSAGES, "payload_bytes": 200},
        elapsed_s=round(elapsed, 1),
    )
    print(f"measured in {elapsed:.1f} s; load average at the end: {machine['loadavg_at_end']}")
    return document


def report(results: Results, trees: list[str], plan: Plan, skipped: str | None) -> dict[str, Any]:
    rows, cells = [], {}
    for name in CELLS:
        by_tree = results.cells[name]
        summaries = {tree: by_tree[tree].summary() for tree in trees}
        cells[name] = dict(summaries)
        figures = []
        for tree in TREES:
            summary = summaries.get(tree)
            figures += [us(summary["p50_us"]), us(summary["p99_us"])] if summary else ["-", "-"]
        ratio_texts = ["-", "-"]
        if len(trees) == 2:
            ratio_texts, cells[name]["ratio_new_over_old"] = ratio_cell(results, name)
        left_out = "/".join(str(summaries[tree]["left_out"]) for tree in trees)
        rows.append([*name.split("/"), *figures, *ratio_texts, left_out])
    print_table(
        f"Hot paths: µs per call, old vs new ({plan.samples} samples per cell and tree; "
        f"{plan.generations} process pairs x {plan.rounds} interleaved rounds)",
        [
            "store",
            "path",
            "old p50",
            "old p99",
            "new p50",
            "new p99",
            "new/old p50 (95% CI)",
            "per pair",
            "left out",
        ],
        rows,
        left=2,
    )
    if skipped:
        print(f"{skipped}: only the new tree was measured")
        print()
    return {"trees": trees, "baseline_skipped": skipped, "cells": cells}


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, "a few samples per cell, < 30 s; a smoke run")
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
    document = run_benchmark("hot_path_ab", run(args, plan, sources, skipped), args.json)
    return EXIT_NO_POSTGRES if document is None else 0


if __name__ == "__main__":
    sys.exit(main())
