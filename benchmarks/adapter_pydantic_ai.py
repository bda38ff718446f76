"""Adapter overhead, pydantic-ai (issue 16): loading a message history with
`AgentCoreMessageHistory.load` beside pydantic-ai's documented persistence, at 10, 100 and
1,000 messages.

    python benchmarks/adapter_pydantic_ai.py [--quick] [--json FILE]

pydantic-ai ships no SQLite (or other database) history: its documented pattern is
``ModelMessagesTypeAdapter.dump_json(messages)`` to store and ``validate_json`` to load
(2.x adds a ``ConversationStore`` base class whose only backend, in memory, is for tests).
The baseline is that pattern over a plain ``sqlite3`` table, one row per conversation
holding the dumped list, read on the event loop's thread (no worker thread): the least a
SQLite-backed history can cost.

Each history holds the same messages (a user prompt and a text reply per turn, and every
fifth turn a tool call and its return in between; ~450 bytes of pydantic-ai JSON a message),
written once. A sample is one ``load`` (the baseline's SELECT plus ``validate_json``), timed
with ``perf_counter_ns``; each round visits every (variant, size) cell once in a shuffled
order, so drift spreads over all of them.

- ``TypeAdapter + sqlite3``: the baseline above, on a file in a temporary directory.
- ``agent-core, L1 hit``: `AgentCoreMessageHistory` over a cache of a SQLite file in the same
  directory, no Redis: the snapshot held in process (a thread this process served or wrote
  last); the JSON of each message cut from its payload, then one ``validate_json``.
- ``agent-core, L2 hit``: the same over a cache with a private ``redis-server`` as L2; the
  thread dropped from L1 before each sample (``evict_local``, untimed): one Redis round trip
  and a version check in the store.
- ``agent-core, store``: no Redis, L1 dropped before each sample: the read the first load of
  a process pays (version and rows from SQLite, in its reader thread).

Every agent-core cache is in the default bounded mode (``max_staleness`` 1 s).
"""

from __future__ import annotations

import random
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Final

from pydantic_ai.messages import (
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelResponse,
    SystemPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.usage import RequestUsage

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
from agent_core.integrations.pydantic_ai import AgentCoreMessageHistory

BASELINE: Final = "TypeAdapter + sqlite3"
START: Final = datetime(2026, 1, 1, tzinfo=UTC)


def history(count: int) -> list[ModelMessage]:
    """``count`` messages of a conversation as an agent run produces them."""
    filler = "The quick brown fox jumps over the lazy dog. "
    messages: list[ModelMessage] = []
    turn = 0
    while len(messages) < count:
        when = START + timedelta(minutes=turn)
        parts: list[Any] = [UserPromptPart(f"Question {turn}: " + filler * 3, timestamp=when)]
        if turn == 0:
            parts.insert(0, SystemPromptPart("You are a helpful assistant.", timestamp=when))
        messages.append(ModelRequest(parts, timestamp=when, run_id=f"run-{turn}"))
        usage = RequestUsage(input_tokens=100 + turn, output_tokens=40)
        if turn % 5 == 4:
            call = ToolCallPart("weather", {"city": "Paris"}, f"call_{turn}")
            messages.append(ModelResponse([call], usage=usage, model_name="gpt-4o", timestamp=when))
            result = ToolReturnPart("weather", "sunny, 21 C", f"call_{turn}", timestamp=when)
            messages.append(ModelRequest([result], timestamp=when, run_id=f"run-{turn}"))
        reply = TextPart(f"Answer {turn}. " + filler * 2)
        messages.append(ModelResponse([reply], usage=usage, model_name="gpt-4o", timestamp=when))
        turn += 1
    return messages[:count]


class TypeAdapterSQLite:
    """pydantic-ai's documented persistence over sqlite3: the dumped list, one row each."""

    def __init__(self, path: str) -> None:
        self.connection = sqlite3.connect(path)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute(
            "CREATE TABLE IF NOT EXISTS histories (id TEXT PRIMARY KEY, messages BLOB NOT NULL)"
        )

    def save(self, conversation: str, messages: list[ModelMessage]) -> None:
        with self.connection:
            self.connection.execute(
                "INSERT OR REPLACE INTO histories VALUES (?, ?)",
                (conversation, ModelMessagesTypeAdapter.dump_json(messages)),
            )

    def load(self, conversation: str) -> list[ModelMessage]:
        row = self.connection.execute(
            "SELECT messages FROM histories WHERE id = ?", (conversation,)
        ).fetchone()
        return [] if row is None else ModelMessagesTypeAdapter.validate_json(row[0])


async def load_baseline(baseline: TypeAdapterSQLite, size: int) -> int:
    return len(baseline.load(f"history-{size}"))


async def load_history(history: AgentCoreMessageHistory) -> int:
    return len(await history.load())


@dataclass
class Subjects:
    readers: dict[Cell, Reader]
    histories: dict[Cell, AgentCoreMessageHistory]


@asynccontextmanager
async def subjects(directory: str, redis_url: str) -> AsyncIterator[Subjects]:
    """The baseline and one filled agent-core history per (variant, size)."""
    async with AsyncExitStack() as stack:
        caches = await stack.enter_async_context(tier_caches(directory, redis_url))
        baseline = TypeAdapterSQLite(f"{directory}/type-adapter.db")
        stack.callback(baseline.connection.close)
        made = Subjects({}, {})
        for size in SIZES:
            messages = history(size)
            baseline.save(f"history-{size}", messages)
            made.readers[BASELINE, size] = Reader(partial(load_baseline, baseline, size))
            expected = ModelMessagesTypeAdapter.dump_json(messages)
            if ModelMessagesTypeAdapter.dump_json(baseline.load(f"history-{size}")) != expected:
                raise RuntimeError(f"{BASELINE}/{size}: loaded another history than saved")
            for variant in TIERS:
                thread = thread_name(variant, size, "history")
                saved = made.histories[variant, size] = AgentCoreMessageHistory(
                    thread, caches[variant]
                )
                await saved.extend(messages)
                if ModelMessagesTypeAdapter.dump_json(await saved.load()) != expected:
                    raise RuntimeError(f"{variant}/{size}: loaded another history than saved")
                made.readers[variant, size] = Reader(
                    partial(load_history, saved), caches[variant], thread
                )
        yield made


async def stored_bytes(made: Subjects) -> dict[str, int]:
    """Bytes a message takes, on average at 1,000 messages: pydantic-ai's JSON alone (the
    baseline) and agent-core's payload (the Chat Completions view plus that JSON)."""
    size = SIZES[-1]
    dumped = len(ModelMessagesTypeAdapter.dump_json(history(size)))
    saved = made.histories[TIERS[0], size]
    payloads = (await saved.cache.get(saved.thread_id)).payloads
    return {
        BASELINE: round(dumped / size),
        "agent-core": round(sum(map(len, payloads)) / size),
    }


async def run(plan: Plan, mode: str, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    started = time.perf_counter()
    with bench_setup("pydantic-ai-slim", "pydantic", "pydantic-core", "orjson") as (
        redis_url,
        directory,
        machine,
    ):
        async with subjects(directory, redis_url) as made:
            results = await measure(made.readers, plan, rng)
            await check_tiers(made.readers)
            sizes = await stored_bytes(made)
    summaries = {cell: summarize(values) for cell, values in results.items()}
    print_table(
        f"load p50, µs ({plan.samples} samples per cell; x: of the baseline's)",
        ["messages", BASELINE, *TIERS],
        p50_rows(summaries, BASELINE),
    )
    print_table(
        "Stored bytes per message (1,000 messages)",
        ["stored as", "bytes"],
        [[name, f"{value:,}"] for name, value in sizes.items()],
    )
    elapsed = time.perf_counter() - started
    print(f"measured in {elapsed:.1f} s")
    return {
        "benchmark": "adapter_pydantic_ai",
        "mode": mode,
        "machine": machine,
        "plan": asdict(plan),
        "sizes": list(SIZES),
        "load": {
            f"{variant}/{size}": asdict(summary) for (variant, size), summary in summaries.items()
        },
        "bytes_per_message": sizes,
        "elapsed_s": round(elapsed, 2),
    }


def main(argv: list[str] | None = None) -> int:
    return adapter_main("adapter_pydantic_ai", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
