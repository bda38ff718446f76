"""Adapter overhead, openai-agents (issue 16): ``get_items`` of `AgentCoreSession` beside
the SDK's own ``SQLiteSession`` (file-backed), at 10, 100 and 1,000 items.

    python benchmarks/adapter_openai_agents.py [--quick] [--json FILE]

Each session holds the same Responses API items (user messages, assistant output
messages, and a function call with its output every tenth turn; ~230 bytes each on
average), written once through its own ``add_items``. A sample is one
``await session.get_items()``, timed with ``perf_counter_ns``; each round visits every
(session, size) cell once in a shuffled order, so drift spreads over all of them.

- ``SQLiteSession``: the SDK's session on a file in a temporary directory (its default
  settings: WAL, one SELECT in a worker thread, ``json.loads`` per row).
- ``agent-core, L1 hit``: `AgentCoreSession` over a cache of a SQLite file in the same
  directory, no Redis: the snapshot held in process (the read of a session that this
  process served or wrote last), decoded in one ``orjson.loads``.
- ``agent-core, L2 hit``: the same over a cache with a private ``redis-server`` as L2;
  before each sample the thread is dropped from L1 (``evict_local``, untimed), so the
  read is one Redis round trip and a version check in the store.
- ``agent-core, store``: no Redis, L1 dropped before each sample: the read the first
  call of a process pays (version and rows from SQLite, in its reader thread).

Every agent-core cache is in the default bounded mode (``max_staleness`` 1 s).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from agents import SQLiteSession
from agents.items import TResponseInputItem
from agents.memory import Session

from _redis import private_redis, redis_server_version
from _support import (
    gc_paused,
    local_machine,
    print_machine,
    print_table,
    run_benchmark,
    summarize,
    us,
)
from agent_core import ConversationCache
from agent_core.integrations.openai_agents import AgentCoreSession

SIZES: Final = (10, 100, 1_000)
SQLITE_SESSION: Final = "SQLiteSession"
L1: Final = "agent-core, L1 hit"
L2: Final = "agent-core, L2 hit"
STORE: Final = "agent-core, store"
VARIANTS: Final = (SQLITE_SESSION, L1, L2, STORE)
#: Variants whose thread is dropped from L1 before each sample.
EVICTED: Final = (L2, STORE)


@dataclass(frozen=True, slots=True)
class Plan:
    samples: int
    warmup: int


FULL: Final = Plan(samples=400, warmup=20)
QUICK: Final = Plan(samples=15, warmup=2)


def history(count: int) -> list[TResponseInputItem]:
    """``count`` items of a conversation as the SDK stores them."""
    filler = "The quick brown fox jumps over the lazy dog. "
    items: list[Any] = []
    turn = 0
    while len(items) < count:
        items.append({"content": f"Question {turn}: " + filler * 3, "role": "user"})
        if turn % 10 == 9:
            call_id = f"call_{turn}"
            items.append(
                {
                    "arguments": '{"city": "Paris"}',
                    "call_id": call_id,
                    "name": "weather",
                    "type": "function_call",
                    "id": "__fake_id__",
                }
            )
            items.append(
                {"call_id": call_id, "output": "sunny, 21 C", "type": "function_call_output"}
            )
        items.append(
            {
                "id": "__fake_id__",
                "content": [
                    {
                        "annotations": [],
                        "text": f"Answer {turn}. " + filler * 2,
                        "type": "output_text",
                    }
                ],
                "role": "assistant",
                "status": "completed",
                "type": "message",
            }
        )
        turn += 1
    return items[:count]


@asynccontextmanager
async def sessions(directory: str, redis_url: str) -> AsyncIterator[dict[tuple[str, int], Session]]:
    """One filled session per (variant, size)."""
    async with AsyncExitStack() as stack:
        local = await stack.enter_async_context(
            ConversationCache.from_urls(store=f"sqlite:///{directory}/agent-core.db")
        )
        shared = await stack.enter_async_context(
            ConversationCache.from_urls(
                store=f"sqlite:///{directory}/agent-core-l2.db", redis=redis_url
            )
        )
        caches = {L1: local, L2: shared, STORE: local}
        made: dict[tuple[str, int], Session] = {}
        for size in SIZES:
            sdk = SQLiteSession(f"session-{size}", Path(directory) / "sdk.db")
            stack.callback(sdk.close)
            made[SQLITE_SESSION, size] = sdk
            for variant, cache in caches.items():
                thread = f"{'store' if variant == STORE else 'session'}-{size}"
                made[variant, size] = AgentCoreSession(thread, cache)
        for (variant, size), session in made.items():
            await session.add_items(history(size))
            if len(await session.get_items()) != size:
                raise RuntimeError(f"{variant}: {size} items written, a different count read")
        yield made


async def measure(
    made: dict[tuple[str, int], Session], plan: Plan, rng: random.Random
) -> dict[tuple[str, int], list[int]]:
    cells = list(made)
    samples: dict[tuple[str, int], list[int]] = {cell: [] for cell in cells}
    clock = time.perf_counter_ns
    with gc_paused():
        for round_number in range(plan.warmup + plan.samples):
            rng.shuffle(cells)
            for cell in cells:
                session = made[cell]
                if cell[0] in EVICTED:
                    assert isinstance(session, AgentCoreSession)
                    session.cache.evict_local(session.session_id)
                started = clock()
                items = await session.get_items()
                elapsed = clock() - started
                if len(items) != cell[1]:
                    raise RuntimeError(f"{cell}: read {len(items)} items")
                if round_number >= plan.warmup:
                    samples[cell].append(elapsed)
    return samples


async def run(plan: Plan, mode: str, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    started = time.perf_counter()
    with private_redis() as redis_url, tempfile.TemporaryDirectory(prefix="ac-bench-") as directory:
        machine = {
            **local_machine("openai-agents", "orjson"),
            "temp_dir": directory,
            "redis_server": redis_server_version(),
        }
        print_machine(machine)
        async with sessions(directory, redis_url) as made:
            results = await measure(made, plan, rng)
            await check_tiers(made)
    summaries = {cell: summarize(values) for cell, values in results.items()}
    rows = []
    for size in SIZES:
        base = summaries[SQLITE_SESSION, size].p50_us
        row = [f"{size:,}"]
        for variant in VARIANTS:
            p50 = summaries[variant, size].p50_us
            row.append(us(p50) if variant == SQLITE_SESSION else f"{us(p50)} ({p50 / base:.2f}x)")
        rows.append(row)
    print_table(
        f"get_items p50, µs ({plan.samples} samples per cell; x: of SQLiteSession's)",
        ["items", *VARIANTS],
        rows,
    )
    elapsed = time.perf_counter() - started
    print(f"measured in {elapsed:.1f} s")
    return {
        "benchmark": "adapter_openai_agents",
        "mode": mode,
        "machine": machine,
        "plan": asdict(plan),
        "sizes": list(SIZES),
        "get_items": {
            f"{variant}/{size}": asdict(summary) for (variant, size), summary in summaries.items()
        },
        "elapsed_s": round(elapsed, 2),
    }


async def check_tiers(made: dict[tuple[str, int], Session]) -> None:
    """Each agent-core variant was served by the tier it is named for."""
    for (variant, size), session in made.items():
        if not isinstance(session, AgentCoreSession):
            continue
        cache, thread = session.cache, session.session_id
        if variant in EVICTED:
            cache.evict_local(thread)
        source = (await cache.read(thread)).source
        expected = {L1: "l1", L2: "l2", STORE: "store"}[variant]
        if source != expected:
            raise RuntimeError(f"{variant}/{size}: read from {source}, not {expected}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few samples; a smoke run")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    parser.add_argument("--seed", type=int, default=1, help="the visiting order's seed")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    mode = "quick" if args.quick else "full"
    document = run_benchmark("adapter_openai_agents", run(plan, mode, args.seed), args.json)
    return 1 if document is None else 0


if __name__ == "__main__":
    sys.exit(main())
