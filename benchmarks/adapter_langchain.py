"""Adapter overhead, LangChain: reading a chat history through `AgentCoreChatMessageHistory`
beside LangChain's own SQLite history, ``SQLChatMessageHistory`` (langchain-community).

    python benchmarks/adapter_langchain.py [--quick] [--json FILE]

One process, SQLite files in a temporary directory, no Redis (L1 and the store only). The
same thread, 10, 100 and 1,000 messages of a chat (a system prompt, then user questions
and assistant answers as a model returns them: ids, response and usage metadata; every
fifth turn an assistant tool call and its result; 40-400 characters of pseudo-words
each), is written to both histories; each read is checked to return the same list (``==``)
before timing. Cells, visited in a shuffled order each round (so neither side always goes
first), each time one read with ``time.perf_counter_ns``:

- ``SQLChatMessageHistory.messages``: LangChain's own SQLite history (SQLAlchemy, sync);
- ``messages`` (sync) of `AgentCoreChatMessageHistory.from_urls`: the call crosses to the
  history's private loop thread and back; an L1 hit (bounded consistency, the default);
- ``await aget_messages()`` on the cache's own loop (timed there): an L1 hit;
- ``await aget_messages()`` after ``evict_local``: a store read (SQLite), the cold path.

Every cell returns LangChain message objects: most of a large read is building them
(pydantic models), on both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from _support import gc_paused, local_machine, print_machine, print_table, summarize, write_json
from agent_core.integrations.langchain import AgentCoreChatMessageHistory

with warnings.catch_warnings():
    # langchain-community warns, on import, that it is being sunset; it still ships.
    warnings.simplefilter("ignore", DeprecationWarning)
    from langchain_community.chat_message_histories import SQLChatMessageHistory

SIZES: Final = (10, 100, 1_000)
SEED: Final = 16
_TEXT: Final = """the of and to in is that for it as was with be by on not he this are or his
from at which but have an they you were her she there been one all we their has would when
cache token window thread message budget model tool result query answer city river"""
WORDS: Final = _TEXT.split()
LANGCHAIN: Final = "SQLChatMessageHistory.messages"
SYNC: Final = "adapter messages (sync)"
ASYNC: Final = "adapter aget_messages (L1)"
STORE: Final = "adapter aget_messages (store)"
CELLS: Final = (LANGCHAIN, SYNC, ASYNC, STORE)


@dataclass(frozen=True, slots=True)
class Plan:
    rounds: int


FULL: Final = Plan(rounds=200)
QUICK: Final = Plan(rounds=8)


def chat(size: int, rng: random.Random) -> list[BaseMessage]:
    """A chat of ``size`` messages, as a model and its tools would leave it."""

    def text() -> str:
        return " ".join(rng.choices(WORDS, k=rng.randint(8, 80)))

    def reply(turn: int, **fields: Any) -> AIMessage:
        return AIMessage(
            id=f"lc_run--{turn:08d}",
            response_metadata={"model_name": "gpt-4o-2024-08-06", "finish_reason": "stop"},
            usage_metadata={"input_tokens": 900, "output_tokens": 60, "total_tokens": 960},
            **fields,
        )

    history: list[BaseMessage] = [SystemMessage("You are a helpful agent.")]
    turn = 0
    while len(history) < size:
        turn += 1
        history.append(HumanMessage(text()))
        if turn % 5 == 0:
            call = {"name": "search", "args": {"query": text()[:40]}, "id": f"call_{turn}"}
            history.append(reply(turn, content="", tool_calls=[call]))
            history.append(ToolMessage(text(), tool_call_id=f"call_{turn}"))
        history.append(reply(turn, content=text()))
    return history[:size]


def measure(plan: Plan, directory: Path) -> dict[str, Any]:
    rng = random.Random(SEED)
    ours = AgentCoreChatMessageHistory.from_urls("t", store=f"sqlite:///{directory / 'ac.db'}")
    theirs: dict[int, SQLChatMessageHistory] = {}
    histories: dict[int, AgentCoreChatMessageHistory] = {}
    with ours, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for size in SIZES:
            messages = chat(size, rng)
            histories[size] = ours.for_thread(f"t{size}")
            histories[size].add_messages(messages)
            theirs[size] = SQLChatMessageHistory(
                session_id=f"t{size}", connection=f"sqlite:///{directory / 'langchain.db'}"
            )
            theirs[size].add_messages(messages)
            assert theirs[size].messages == messages, "SQLChatMessageHistory changed messages"
            assert histories[size].messages == messages, "the adapter changed messages"

        def on_loop(size: int, cold: bool) -> int:
            """One ``aget_messages``, timed on the cache's loop (after an untimed eviction)."""

            async def timed() -> int:
                if cold:
                    ours.cache.evict_local(f"t{size}")
                started = time.perf_counter_ns()
                await histories[size].aget_messages()
                return time.perf_counter_ns() - started

            return asyncio.run_coroutine_threadsafe(timed(), loop_of(ours)).result()

        def here(call: Callable[[], object]) -> int:
            started = time.perf_counter_ns()
            call()
            return time.perf_counter_ns() - started

        cells: dict[tuple[str, int], Callable[[], int]] = {}
        for size in SIZES:
            cells[LANGCHAIN, size] = partial(here, partial(getattr, theirs[size], "messages"))
            cells[SYNC, size] = partial(here, partial(getattr, histories[size], "messages"))
            cells[ASYNC, size] = partial(on_loop, size, cold=False)
            cells[STORE, size] = partial(on_loop, size, cold=True)
        samples: dict[tuple[str, int], list[int]] = {key: [] for key in cells}
        keys = list(cells)
        for key in keys:  # warm up: connections, statement caches, L1
            cells[key]()
        with gc_paused():
            for _ in range(plan.rounds):
                rng.shuffle(keys)
                for key in keys:
                    samples[key].append(cells[key]())
    return {
        "rounds": plan.rounds,
        "reads_us": {
            str(size): {name: summarize(samples[name, size]) for name in CELLS} for size in SIZES
        },
    }


def loop_of(history: AgentCoreChatMessageHistory) -> asyncio.AbstractEventLoop:
    """The event loop a `from_urls` history runs its cache on."""
    loop = history.loop
    assert loop is not None
    return loop


def report(document: dict[str, Any]) -> None:
    rows = []
    for size, cells in document["reads_us"].items():
        base = cells[LANGCHAIN].p50_us
        rows.append(
            [
                f"{int(size):,}",
                *(f"{cells[name].p50_us:,.1f}" for name in CELLS),
                f"{cells[SYNC].p50_us / base:.2f}x",
                f"{cells[STORE].p50_us / base:.2f}x",
            ]
        )
    print_table(
        f"Reading the history, p50 µs ({document['rounds']} rounds)",
        ["messages", *CELLS, "sync / LC", "store / LC"],
        rows,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 rounds, a few seconds")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = parser.parse_args()
    machine = local_machine("langchain-core", "langchain-community", "sqlalchemy")
    print_machine(machine)
    with tempfile.TemporaryDirectory(prefix="ac-adapter-langchain-") as directory:
        figures = measure(QUICK if args.quick else FULL, Path(directory))
    document = {"mode": "quick" if args.quick else "full", "machine": machine, **figures}
    report(document)
    if args.json:
        write_json(args.json, document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
