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

import random
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, Final

from agents import SQLiteSession
from agents.items import TResponseInputItem
from agents.memory import Session

from _adapter_bench import (
    SIZES,
    TIERS,
    Cell,
    Plan,
    Reader,
    bench_setup,
    check_tiers,
    measure,
    p50_rows,
    thread_name,
    tier_caches,
)
from _adapter_bench import main as adapter_main
from _support import print_table, summarize
from agent_core.integrations.openai_agents import AgentCoreSession

SQLITE_SESSION: Final = "SQLiteSession"


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


async def count_items(session: Session) -> int:
    return len(await session.get_items())


@asynccontextmanager
async def readers(directory: str, redis_url: str) -> AsyncIterator[dict[Cell, Reader]]:
    """One filled session per (variant, size), and its read."""
    async with AsyncExitStack() as stack:
        caches = await stack.enter_async_context(tier_caches(directory, redis_url))
        made: dict[Cell, Reader] = {}
        for size in SIZES:
            sdk = SQLiteSession(f"session-{size}", Path(directory) / "sdk.db")
            stack.callback(sdk.close)
            sessions: dict[str, Session] = {SQLITE_SESSION: sdk}
            for variant in TIERS:
                thread = thread_name(variant, size, "session")
                sessions[variant] = AgentCoreSession(thread, caches[variant])
                made[variant, size] = Reader(
                    partial(count_items, sessions[variant]), caches[variant], thread
                )
            made[SQLITE_SESSION, size] = Reader(partial(count_items, sdk))
            for variant, session in sessions.items():
                await session.add_items(history(size))
                if len(await session.get_items()) != size:
                    raise RuntimeError(f"{variant}: {size} items written, a different count read")
        yield made


async def run(plan: Plan, mode: str, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    started = time.perf_counter()
    with bench_setup("openai-agents", "orjson") as (redis_url, directory, machine):
        async with readers(directory, redis_url) as made:
            results = await measure(made, plan, rng)
            await check_tiers(made)
    summaries = {cell: summarize(values) for cell, values in results.items()}
    print_table(
        f"get_items p50, µs ({plan.samples} samples per cell; x: of SQLiteSession's)",
        ["items", SQLITE_SESSION, *TIERS],
        p50_rows(summaries, SQLITE_SESSION),
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


def main(argv: list[str] | None = None) -> int:
    return adapter_main("adapter_openai_agents", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
