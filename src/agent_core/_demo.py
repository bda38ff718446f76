"""``agent-core-demo``: append to and read a conversation on the embedded default store."""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from .cache import ConversationCache
from .cache._conversation_cache import DEFAULT_STORE_URL
from .errors import AgentCoreError, VersionConflict


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
        version = await cache.append(
            thread_id,
            [
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
            ],
            expected_version=version,
            idempotency_key=f"{thread_id}-turn-1",
        )
        print(f"append     tool call, result and reply -> version {version}")
        again = await cache.append(
            thread_id,
            [{"role": "assistant", "content": "18 °C and clear. 🌤"}],
            idempotency_key=f"{thread_id}-turn-2",
        )
        retried = await cache.append(
            thread_id,
            [{"role": "assistant", "content": "18 °C and clear. 🌤"}],
            idempotency_key=f"{thread_id}-turn-2",
        )
        print(f"retry      same idempotency key -> version {retried} (first call: {again})")
        try:
            await cache.append(thread_id, [{"role": "user", "content": "hi"}], expected_version=1)
        except VersionConflict as exc:
            print(f"conflict   {exc}")
        conversation = await cache.get(thread_id)
        elapsed_ms = (time.perf_counter() - started) * 1000
        print(f"get        version {conversation.version}, {len(conversation)} messages:")
        for message in conversation.to_list():
            print(f"             {message}")
        page = await cache.list_threads(limit=5)
        print(f"threads    first of namespace 'demo': {', '.join(page.thread_ids)}")
        stats = cache.stats()
        print(
            f"stats      reads: {stats.l1_hits} L1, {stats.l2_hits} L2, {stats.misses} store "
            f"(hit rate {stats.hit_rate:.0%}); {stats.appends} appends; "
            f"L1 {stats.l1_bytes:,} of {stats.l1_max_bytes:,} bytes"
        )
        print(f"done       in {elapsed_ms:.1f} ms")


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
