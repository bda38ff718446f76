"""``agent-core-demo``: a conversation on the embedded default store, then agent turns.

Runs offline on SQLite with no Redis: the agent's model is `EchoModel`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any, Final

from .agent import AgentReply, BaseAgent, EchoModel
from .cache import DEFAULT_STORE_URL, ConversationCache
from .errors import AgentCoreError, VersionConflict

#: The demo agent's token budget, and the budget of the window shown at the end (small,
#: so that it leaves messages out).
MAX_CONTEXT_TOKENS: Final = 2_000
RESERVE_OUTPUT_TOKENS: Final = 500
WINDOW_TOKENS: Final = 60


async def run(store_url: str) -> None:
    thread_id = f"demo-{uuid.uuid4().hex[:8]}"
    async with ConversationCache.from_urls(store=store_url, namespace="demo") as cache:
        print(f"store      {cache.store!r}")
        started = time.perf_counter()
        version = await cache.append(
            thread_id,
            [
                {"role": "system", "content": "You are a terse assistant."},
                {"role": "user", "content": "What's the weather in Paris?", "name": "ana"},
            ],
        )
        print(f"append     thread {thread_id} -> version {version}")
        turn: list[dict[str, Any]] = [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18°C, clear"},
            {"role": "assistant", "content": "18 °C and clear. 🌤"},
        ]
        first = version = await cache.append(
            thread_id,
            turn,
            expected_version=version,
            idempotency_key=f"{thread_id}-turn-1",
        )
        print(f"append     tool call, result and reply -> version {version}")
        # A retry of the same turn (same key) writes nothing: the reply is stored once.
        retried = await cache.append(thread_id, turn, idempotency_key=f"{thread_id}-turn-1")
        print(f"retry      same idempotency key -> version {retried} (first call: {first})")
        try:
            await cache.append(thread_id, [{"role": "user", "content": "hi"}], expected_version=1)
        except VersionConflict as exc:
            print(f"conflict   {exc}")
        conversation = await cache.get(thread_id)
        print(f"get        version {conversation.version}, {len(conversation)} messages:")
        for message in conversation.to_list():
            print(f"             {message}")
        page = await cache.list_threads(limit=5)
        print(f"threads    first of namespace 'demo': {', '.join(page.thread_ids)}")
        await agent_turns(cache, thread_id)
        elapsed_ms = (time.perf_counter() - started) * 1000
        stats = cache.stats()
        print(
            f"stats      reads: {stats.l1_hits} L1, {stats.l2_hits} L2, {stats.misses} store "
            f"(hit rate {stats.hit_rate:.0%}); {stats.appends} appends; "
            f"L1 {stats.l1_bytes:,} of {stats.l1_max_bytes:,} bytes"
        )
        print(f"done       in {elapsed_ms:.1f} ms")


async def agent_turns(cache: ConversationCache, thread_id: str) -> None:
    """Three `BaseAgent` turns on the thread (L1 hit, streamed, cold), then a token window."""
    # The thread already starts with a system message, so the agent adds none of its own.
    agent = BaseAgent(
        EchoModel(),
        cache,
        token_model="gpt-4o",  # EchoModel's name is "echo": count prompts as gpt-4o bills them
        max_context_tokens=MAX_CONTEXT_TOKENS,
        reserve_output_tokens=RESERVE_OUTPUT_TOKENS,
    )
    print(f"agent      {agent!r}")
    show_turn("turn 1", await agent.run(thread_id, "And tomorrow in Lyon?"))
    async with agent.stream(thread_id, "Thanks! Anything else?") as chunks:
        words = [chunk async for chunk in chunks]
    assert chunks.reply is not None  # the stream ran to its end
    show_turn(f"turn 2     streamed in {len(words)} chunks:", chunks.reply)
    await cache.invalidate(thread_id)  # as after a restart: the next turn reads the store
    show_turn("turn 3     after cache.invalidate():", await agent.run(thread_id, "Bye."))
    window = await cache.window(thread_id, max_tokens=WINDOW_TOKENS, model="gpt-4o")
    print(
        f"window     newest within {WINDOW_TOKENS} gpt-4o tokens: {len(window.messages)} "
        f"messages, {window.token_count} tokens billed, {window.omitted} older left out "
        "(system message pinned):"
    )
    for message in window.to_list():
        print(f"             {message}")


def show_turn(label: str, reply: AgentReply) -> None:
    """The reply's text, version, history tier and step timings."""
    timings = ", ".join(f"{step} {seconds * 1000:.2f}" for step, seconds in reply.timings.items())
    print(f"{label:<10} {reply.text!r} -> version {reply.version}")
    print(
        f"             history from {reply.history_tier}: {reply.history_messages} messages, "
        f"prompt {reply.prompt_tokens} tokens; ms: {timings}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agent-core-demo", description=__doc__)
    parser.add_argument(
        "--store", default=DEFAULT_STORE_URL, help="store URL (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    try:
        asyncio.run(run(args.store))
    except AgentCoreError as exc:
        parser.exit(1, f"agent-core-demo: {exc}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
