"""L1 stays within its byte budget (measured with tracemalloc) and yields to memory pressure."""

from __future__ import annotations

import asyncio
import gc
import itertools
import random
import tracemalloc
from typing import Any

from agent_core import ConversationCache
from agent_core.observe import process_rss

MIB = 1 << 20


def conversation_of(rng: random.Random, size: int) -> list[dict[str, Any]]:
    """Messages adding up to about ``size`` bytes of JSON."""
    messages = []
    while size > 0:
        length = min(size, rng.choice([200, 2_000, 20_000, 200_000]))
        messages.append({"role": "user", "content": "x" * max(1, length - 30)})
        size -= length
    return messages


async def test_l1_stays_within_its_budget_by_tracemalloc(sqlite_url: str) -> None:
    budget = 24 * MIB
    rng = random.Random(7)
    sizes = [int(1_000 * (2_000 ** rng.random())) for _ in range(120)]  # 1 KB to 2 MB
    async with ConversationCache.from_urls(
        store=sqlite_url, l1_max_bytes=budget, watch_external=False
    ) as cache:
        for index, size in enumerate(sizes):
            await cache.append(f"t{index}", conversation_of(rng, size))
        cache._l1.clear("test")
        gc.collect()
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            peak_over = 0.0
            for _ in range(2):
                for index in rng.sample(range(len(sizes)), len(sizes)):
                    await cache.get(f"t{index}")  # loads from the store and fills L1
                    gc.collect()
                    held = tracemalloc.get_traced_memory()[0] - baseline
                    peak_over = max(peak_over, held / budget)
                    assert cache.stats().l1_bytes <= budget
        finally:
            tracemalloc.stop()
    print(f"L1 held at most {peak_over:.3f} x its budget (tracemalloc)")
    assert peak_over <= 1.10


async def test_low_memory_limit_shrinks_the_budget_step_by_step(sqlite_url: str) -> None:
    limit = process_rss()  # RSS is at 100 % of this "limit": above the 80 % mark
    async with ConversationCache.from_urls(
        store=sqlite_url,
        l1_max_bytes=64 * MIB,
        memory_limit=limit,
        memory_check_interval=0.01,
    ) as cache:
        budgets = [cache.stats().l1_max_bytes]
        while len(budgets) < 6:
            await asyncio.sleep(0.01)
            budget = cache.stats().l1_max_bytes
            if budget != budgets[-1]:
                budgets.append(budget)
        memory = cache.stats().memory
        assert memory is not None
        assert memory.pressure
        assert memory.shrinks >= 5
    # Each step takes about 10 % off: gradual, never everything at once.
    for before, after in itertools.pairwise(budgets):
        assert 0.85 * before <= after < before
