"""Agent turn overhead: what ``BaseAgent.run`` adds around the model call, per turn.

    python benchmarks/agent_turn.py [--quick] [--json FILE] [--postgres-url URL]

One process; each sample is one ``await agent.run(thread, user_text)`` on a thread of
10, 100 or 1,000 chat messages (user and assistant turns of 200-400 characters of
English-like words, counted for gpt-4o at append, ~70 tokens each, so the whole thread
fits the default budget of 128,000 - 4,096 tokens and is sent). The agent has a short
system prompt, no context files and no rate limits. Three setups, each a
``ConversationCache`` with the defaults:

- ``sqlite``: SQLite (temporary directory, WAL, synchronous=full) + a private
  redis-server (bounded consistency: an L1 hit makes no round trip);
- ``postgres``: a throwaway ``ac_bench_<random>`` database + the same redis-server;
- ``sqlite, no Redis``: the embedded default (``make demo``); an L1 hit checks the
  thread's version in the store first (one SQLite read).

Where the history comes from (checked on each reply's ``history_tier``; a turn
served by another tier is left out, counted, and the sample taken again):

- ``L1``: the thread as a previous turn of this agent left it (warm snapshot, window
  index built, then extended by that turn's two messages);
- ``L2``: the same, dropped from this process's L1 only, as after another instance
  ran the previous turn;
- ``store``: after ``cache.invalidate``: nothing cached anywhere, a cold process.

So that the thread size stays exactly constant, before each sample (untimed) the thread
is deleted, refilled with size - 2 messages, windowed, and given the previous turn's
two messages. The model is an `EchoModel` (offline) behind a wrapper that first builds
the request body ``OpenAIChatModel`` would POST for the same prompt (its body builder,
timed on its own: the messages' stored bytes joined, nothing re-encoded). Every cell
is visited once per round, in a shuffled order; the cyclic GC stays on, as in service.

Steps (``AgentReply.timings``): ``history`` (load and token window), ``build`` (count
the user message, assemble the prompt), ``body`` (the request body), ``persist``
(``cache.append`` of the user message and the reply: token counts, the store's
commit, L1 extend, the L2 append script). ``store commit`` is the time spent inside
``store.append``, ``l2 append`` the time inside the L2 append (one Redis round trip).
The overhead is the turn's wall time minus the model call (the body build is counted
in the overhead, not in the model call), reported three ways: without persist, with
persist minus the store's commit, and with everything; the goal line also gives it
minus both the commit and the L2 append (the agent's CPU work alone).
Goal (issue 5): p50 <= 1 ms at 1,000 messages on an L1 hit, judged on the overhead
minus the store's commit (the agent's own work: the commit is the database's fsync
or round trip, which the store benchmarks measure).
"""

from __future__ import annotations

import asyncio
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from _redis import private_redis, redis_server_version
from _support import (
    EXIT_NO_POSTGRES,
    BenchmarkError,
    Summary,
    benchmark_parser,
    machine_info,
    print_machine,
    print_table,
    run_benchmark,
    summarize,
    temporary_database,
    us,
)
from agent_core import (
    BaseAgent,
    ChatStream,
    Completion,
    ConversationCache,
    EchoModel,
    Message,
    OpenAIChatModel,
)
from agent_core.agent._agent import DEFAULT_MAX_CONTEXT_TOKENS, DEFAULT_RESERVE_OUTPUT_TOKENS
from agent_core.agent._models import check_request
from window import WORDS

MODEL: Final = "gpt-4o"
SIZES: Final = (10, 100, 1_000)
TIERS: Final = ("l1", "l2", "store")
TIER_LABELS: Final = {"l1": "L1 hit", "l2": "L2 (cold L1)", "store": "store (cold)"}
SYSTEM_PROMPT: Final = "You are a helpful assistant. Answer briefly and cite the thread."
#: The issue's goal: the agent's own overhead at 1,000 messages on an L1 hit, p50.
GOAL_P50_US: Final = 1_000.0
GOAL_SIZE: Final = 1_000
#: A default agent's room for history; `reset` windows with it to build the window index.
DEFAULT_ROOM: Final = DEFAULT_MAX_CONTEXT_TOKENS - DEFAULT_RESERVE_OUTPUT_TOKENS
#: Per-sample figures, in the order the tables show them.
STEPS: Final = ("history", "build", "body", "persist", "store_commit", "l2_append", "other")
OVERHEADS: Final = ("without_persist", "without_commit", "with_persist")
SEED: Final = 11
#: Idle time after each untimed reset, as between real turns: background work settles.
SETTLE: Final = 0.005
#: Tries per sample before a cell that never gets its tier stops the run.
ATTEMPTS: Final = 5


@dataclass(frozen=True, slots=True)
class Plan:
    rounds: int
    warmup: int


FULL: Final = Plan(rounds=300, warmup=5)
QUICK: Final = Plan(rounds=4, warmup=1)


class Clock:
    """Replaces ``owner.append`` with a wrapper that adds up the time spent inside it."""

    def __init__(self, owner: object) -> None:
        self.ns = 0
        inner: Callable[..., Awaitable[object]] = getattr(owner, "append")  # noqa: B009

        async def append(*args: Any, **kwargs: Any) -> object:
            started = time.perf_counter_ns()
            try:
                return await inner(*args, **kwargs)
            finally:
                self.ns += time.perf_counter_ns() - started

        setattr(owner, "append", append)  # noqa: B010


@dataclass(frozen=True, slots=True)
class Setup:
    """A cache configuration, the tiers its history can come from, and its clocks."""

    name: str
    cache: ConversationCache
    tiers: tuple[str, ...]
    #: Time inside ``store.append`` (the commit) and the L2 append script (a round trip).
    store: Clock
    l2: Clock | None


class BodyThenEcho:
    """A `ChatModel`: builds the body ``OpenAIChatModel`` would send, then echoes.

    ``body_ns`` is the last body's build time (argument checks included, as
    ``OpenAIChatModel.complete`` does them); ``body_bytes`` its size.
    """

    def __init__(self, echo: EchoModel, openai: OpenAIChatModel) -> None:
        self._echo = echo
        self._openai = openai
        self.body_ns = 0
        self.body_bytes = 0

    @property
    def name(self) -> str:
        return self._echo.name

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        max_tokens: int | None = None,
        cache_key: str | None = None,
    ) -> Completion:
        started = time.perf_counter_ns()
        checked, encoded_tools = check_request(messages, tools, max_tokens)
        body = self._openai._body(checked, encoded_tools, max_tokens, cache_key, stream=False)
        self.body_ns = time.perf_counter_ns() - started
        self.body_bytes = len(body)
        return await self._echo.complete(messages, tools=tools, max_tokens=max_tokens)

    def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        max_tokens: int | None = None,
        cache_key: str | None = None,
    ) -> ChatStream:
        return self._echo.stream(messages, tools=tools, max_tokens=max_tokens, cache_key=cache_key)

    async def aclose(self) -> None:
        await self._openai.aclose()


def text(rng: random.Random) -> str:
    """200-400 characters of English-like words."""
    target = rng.randint(200, 400)
    words: list[str] = []
    length = -1
    while length < target:
        words.append(rng.choice(WORDS))
        length += len(words[-1]) + 1
    return " ".join(words)[:target].rstrip()


def chat(size: int, rng: random.Random) -> list[dict[str, Any]]:
    roles = ("user", "assistant")
    return [{"role": roles[index % 2], "content": text(rng)} for index in range(size)]


async def reset(cache: ConversationCache, thread_id: str, history: list[dict[str, Any]]) -> None:
    """The thread as a previous turn left it: ``len(history)`` messages, warm in L1."""
    await cache.delete(thread_id)
    await cache.append(thread_id, history[:-2])
    await cache.window(thread_id, max_tokens=DEFAULT_ROOM, model=MODEL)
    await cache.append(thread_id, history[-2:])


async def prepare_tier(cache: ConversationCache, thread_id: str, tier: str) -> None:
    if tier == "l2":
        cache.evict_local(thread_id)
    elif tier == "store":
        await cache.invalidate(thread_id)


async def sample(
    setup: Setup, agent: BaseAgent, model: BodyThenEcho, thread_id: str, user: str
) -> tuple[str, dict[str, int]]:
    """One timed turn: the tier its history came from, and its figures in ns."""
    setup.store.ns = 0
    if setup.l2 is not None:
        setup.l2.ns = 0
    started = time.perf_counter_ns()
    reply = await agent.run(thread_id, user)
    total = time.perf_counter_ns() - started
    steps = {name: round(seconds * 1e9) for name, seconds in reply.timings.items()}
    body, commit, persist = model.body_ns, setup.store.ns, steps["persist"]
    l2 = 0 if setup.l2 is None else setup.l2.ns
    overhead = total - (steps["model"] - body)
    return reply.history_tier, {
        "history": steps["history"],
        "build": steps["build"],
        "body": body,
        "persist": persist,
        "store_commit": commit,
        "l2_append": l2,
        "other": overhead - body - steps["context"] - steps["history"] - steps["build"] - persist,
        "without_persist": overhead - persist,
        "without_commit": overhead - commit,
        "with_persist": overhead,
        "without_io": overhead - commit - l2,
        "body_bytes": model.body_bytes,
        "history_messages": reply.history_messages,
        "prompt_tokens": reply.prompt_tokens,
    }


async def measure(
    setups: list[Setup], model: BodyThenEcho, plan: Plan, rng: random.Random
) -> tuple[dict[tuple[str, int, str], list[dict[str, int]]], dict[str, int]]:
    """Every cell once per round, shuffled; returns the samples and the left-out counts.

    A turn whose history came from another tier than its cell's is left out, counted,
    and the cell tried again.
    """
    histories = {size: chat(size, rng) for size in SIZES}
    agents = {
        setup.name: BaseAgent(model, setup.cache, system_prompt=SYSTEM_PROMPT, token_model=MODEL)
        for setup in setups
    }
    by_name = {setup.name: setup for setup in setups}
    cells = [(setup.name, size, tier) for setup in setups for size in SIZES for tier in setup.tiers]
    samples: dict[tuple[str, int, str], list[dict[str, int]]] = {cell: [] for cell in cells}
    left_out: dict[str, int] = {}
    for round_ in range(plan.warmup + plan.rounds):
        rng.shuffle(cells)
        for cell in cells:
            name, size, tier = cell
            setup, thread_id = by_name[name], f"thread-{size}"
            for _ in range(ATTEMPTS):
                await reset(setup.cache, thread_id, histories[size])
                await asyncio.sleep(SETTLE)
                await prepare_tier(setup.cache, thread_id, tier)
                served, figures = await sample(setup, agents[name], model, thread_id, text(rng))
                if served == tier:
                    break
                key = f"{name} {size} {tier} (served by {served})"
                left_out[key] = left_out.get(key, 0) + 1
            else:
                raise BenchmarkError(f"{ATTEMPTS} turns in a row missed {cell}: {left_out}")
            if round_ >= plan.warmup:
                samples[cell].append(figures)
    return samples, left_out


def summaries(values: list[dict[str, int]]) -> dict[str, Summary]:
    keys = (*STEPS, *OVERHEADS, "without_io")
    return {key: summarize([v[key] for v in values]) for key in keys}


def report(
    document: dict[str, Any], setups: Sequence[str], tiers: Mapping[str, Sequence[str]]
) -> None:
    cells = document["cells"]
    step_rows, overhead_rows = [], []
    for name in setups:
        for size in SIZES:
            for tier in tiers[name]:
                cell = cells[name][str(size)][tier]
                label = [name, f"{size:,}", TIER_LABELS[tier]]
                step_rows.append([*label, *(us(cell[step].p50_us) for step in STEPS)])
                overhead_rows.append(
                    [
                        *label,
                        *(
                            us(value)
                            for key in OVERHEADS
                            for value in (cell[key].p50_us, cell[key].p95_us)
                        ),
                    ]
                )
    samples = document["plan"]["rounds"]
    print_table(
        f"Turn steps, p50 µs ({samples:,} turns per cell, interleaved)",
        ["setup", "messages", "history from", *(s.replace("_", " ") for s in STEPS)],
        step_rows,
        left=3,
    )
    print(
        "history: load + token window; build: count the user message, assemble the prompt; "
        "body: the OpenAI request body;\npersist: cache.append of the pair, store commit "
        "and L2 append (one Redis round trip) included; other: the rest of run() (checks, "
        "the reply)\n"
    )
    print_table(
        "Turn overhead (wall time minus the model call), µs",
        [
            "setup",
            "messages",
            "history from",
            "no persist p50",
            "p95",
            "no commit p50",
            "p95",
            "all p50",
            "p95",
        ],
        overhead_rows,
        left=3,
    )
    print(
        "no persist: history + build + body + other; no commit: also persist, minus the "
        "time inside store.append; all: everything but the model call"
    )
    if document["left_out"]:
        counts = ", ".join(f"{cell}: {count}" for cell, count in document["left_out"].items())
        print(f"left out and tried again, history came from another tier: {counts}")
    errors = ", ".join(f"{name} {count}" for name, count in document["redis_errors"].items())
    print(f"Redis errors (failed, or over redis_timeout): {errors}")
    for size, thread in document["threads"].items():
        print(
            f"{int(size):>5,} messages: {thread['history_messages']:,} sent as history, "
            f"prompt {thread['prompt_tokens']:,} tokens, body {thread['body_bytes']:,} bytes"
        )
    print()
    for name, verdict in document["goal"]["by_setup"].items():
        met = "met" if verdict["met"] else "NOT met"
        print(
            f"Goal: overhead p50 <= {GOAL_P50_US / 1000:g} ms at {GOAL_SIZE:,} messages on an "
            f"L1 hit, store commit excluded ({name}): {verdict['p50_us'] / 1000:.3f} ms  {met}"
            f"  (also without the L2 append: {verdict['without_l2_append_p50_us'] / 1000:.3f}"
            f" ms; with the commit: {verdict['with_commit_p50_us'] / 1000:.3f} ms)"
        )


async def run(plan: Plan, admin_url: str, mode: str) -> dict[str, Any]:
    rng = random.Random(SEED)
    with private_redis() as redis_url, tempfile.TemporaryDirectory(prefix="ac-turn-") as directory:
        async with temporary_database(admin_url) as postgres_url:
            machine = await machine_info(postgres_url, temp_dir=directory)
            machine["redis_server"] = redis_server_version()
            print_machine(machine)
            # name: store, Redis, namespace (one each: the two Redis setups share the server).
            urls = {
                "sqlite": (f"sqlite:///{Path(directory) / 'turn.db'}", redis_url, "sqlite"),
                "postgres": (postgres_url, redis_url, "postgres"),
                "sqlite, no Redis": (f"sqlite:///{Path(directory) / 'local.db'}", None, "local"),
            }
            setups = []
            for name, (store_url, redis, namespace) in urls.items():
                cache = ConversationCache.from_urls(
                    store=store_url, redis=redis, namespace=namespace
                )
                tiers, l2 = (TIERS, Clock(cache._l2)) if redis else (("l1", "store"), None)
                setups.append(Setup(name, cache, tiers, Clock(cache.store), l2))
            # The base URL is never contacted: only the body builder is used.
            openai = OpenAIChatModel(MODEL, base_url="http://127.0.0.1:9/v1")
            model = BodyThenEcho(EchoModel(token_model=MODEL), openai)
            try:
                for setup in setups:
                    await setup.cache.open()
                started = time.perf_counter()
                samples, left_out = await measure(setups, model, plan, rng)
                elapsed = time.perf_counter() - started
                errors = {setup.name: setup.cache.stats().redis_errors for setup in setups}
            finally:
                await model.aclose()
                for setup in setups:
                    await setup.cache.close()

    cells: dict[str, Any] = {}
    threads: dict[str, dict[str, int]] = {}
    for (name, size, tier), values in samples.items():
        cells.setdefault(name, {}).setdefault(str(size), {})[tier] = summaries(values)
        first = values[0]
        threads[str(size)] = {
            "prompt_tokens": first["prompt_tokens"],
            "history_messages": first["history_messages"],
            "body_bytes": first["body_bytes"],
        }
    names = [setup.name for setup in setups]
    by_setup = {}
    for name in names:
        cell = cells[name][str(GOAL_SIZE)]["l1"]
        by_setup[name] = {
            "p50_us": cell["without_commit"].p50_us,
            "with_commit_p50_us": cell["with_persist"].p50_us,
            "without_l2_append_p50_us": cell["without_io"].p50_us,
            "met": cell["without_commit"].p50_us <= GOAL_P50_US,
        }
    document: dict[str, Any] = {
        "benchmark": "agent_turn",
        "mode": mode,
        "machine": machine,
        "plan": {**asdict(plan), "sizes": list(SIZES), "token_model": MODEL},
        "threads": threads,
        "cells": cells,
        "left_out": left_out,
        "redis_errors": errors,
        "goal": {
            "p50_us": GOAL_P50_US,
            "messages": GOAL_SIZE,
            "judged_on": "wall time - model call - time inside store.append, L1 hit",
            "by_setup": by_setup,
            "met": all(verdict["met"] for verdict in by_setup.values()),
        },
        "elapsed_s": round(elapsed, 2),
    }
    report(document, names, {setup.name: setup.tiers for setup in setups})
    print(f"measured in {elapsed:.1f} s")
    return document


def main(argv: list[str] | None = None) -> int:
    args = benchmark_parser(__doc__, f"{QUICK.rounds} rounds; a smoke run").parse_args(argv)
    mode = "quick" if args.quick else "full"
    plan = QUICK if args.quick else FULL
    document = run_benchmark("agent_turn", run(plan, args.postgres_url, mode), args.json)
    if document is None:
        return EXIT_NO_POSTGRES
    return 0


if __name__ == "__main__":
    sys.exit(main())
