"""The price of checking and signing L2 values: fill, append and get, unsigned vs signed.

    python benchmarks/l2_signing.py [--quick] [--json FILE]

One process, a SQLite store and a private ``redis-server``. For threads of 10, 1,000
and 10,000 messages of 200 bytes (and a compressed 5 MB thread, 25,000 messages of
200 bytes, with ``compress_min_bytes`` at 1 MiB), the Redis tier's own calls are
timed, each on a cache without and one with ``l2_signing_key``, alternating A B, B A
per round:

- fill: write the whole thread to L2 (encode, seal, Lua ``SET``);
- append: add one message to that value (encode, seal, Lua ``APPEND``);
- get: read it back (``GETEX``, then every check: header, chunks, seals,
  inflation within ``l2_max_value_bytes``, each payload one JSON object).

The figure is p50 µs per call, the signed / unsigned ratio, and the longest gap the
event loop saw during the get calls (a task that sleeps 1 ms records its wake-ups).
Without a key only the seals go; every other check always runs.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable
from typing import Any, Final, TypeVar

from _redis import private_redis, redis_server_version
from _support import (
    BenchmarkError,
    benchmark_parser,
    gc_paused,
    local_machine,
    message_payload,
    print_machine,
    print_table,
    run_benchmark,
    summarize,
    us,
)
from agent_core import ConversationCache
from agent_core.cache._redis_tier import RedisTier

SIZES: Final = (10, 1_000, 10_000, 25_000)
KEY: Final = b"benchmark signing key, 32 bytes!"
_T = TypeVar("_T")


async def _loop_gaps(stop: asyncio.Event, gaps: list[float]) -> None:
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        gaps.append(now - last - 0.001)
        last = now


async def _timed(call: Awaitable[_T]) -> tuple[int, _T]:
    """Nanoseconds the awaitable took, and its result."""
    start = time.perf_counter_ns()
    result = await call
    return time.perf_counter_ns() - start, result


async def measure(quick: bool) -> dict[str, Any]:
    rounds = 5 if quick else 40
    sizes = SIZES[:2] if quick else SIZES
    payload = message_payload(200)
    rows: dict[str, Any] = {}
    with private_redis() as redis_url, tempfile.TemporaryDirectory() as directory:
        store = f"sqlite:///{directory}/bench.db"
        async with (
            ConversationCache.from_urls(store, redis_url, "bench", redis_timeout=5.0) as plain,
            ConversationCache.from_urls(
                store, redis_url, "bench", redis_timeout=5.0, l2_signing_key=KEY
            ) as signed,
        ):
            tiers: dict[str, RedisTier] = {"unsigned": plain._l2, "signed": signed._l2}  # type: ignore[dict-item]
            for size in sizes:
                payloads = [payload] * size
                samples: dict[tuple[str, str], list[int]] = {}
                gaps: dict[str, list[float]] = {"unsigned": [], "signed": []}
                for index in range(rounds):
                    order = ("unsigned", "signed") if index % 2 == 0 else ("signed", "unsigned")
                    for name in order:
                        tier = tiers[name]
                        thread = f"{name}-{size}-{index}"
                        with gc_paused():
                            fill, _ = await _timed(tier.fill(thread, size, payloads, {}))
                            append, _ = await _timed(
                                tier.append(thread, size, size + 1, [payload], {})
                            )
                            stop = asyncio.Event()
                            ticker = asyncio.create_task(_loop_gaps(stop, gaps[name]))
                            await asyncio.sleep(0.002)
                            get, entry = await _timed(tier.get(thread))
                            stop.set()
                            await ticker
                        if entry is None or len(entry.payloads or ()) != size + 1:
                            raise BenchmarkError(f"{name} get of {size} messages missed")
                        for operation, value in (("fill", fill), ("append", append), ("get", get)):
                            samples.setdefault((operation, name), []).append(value)
                        await tier.client.delete(tier.key(thread))
                rows[str(size)] = {
                    operation: {
                        name: summarize(samples[(operation, name)])
                        for name in ("unsigned", "signed")
                    }
                    for operation in ("fill", "append", "get")
                }
                rows[str(size)]["get_loop_gap_max_ms"] = {
                    name: round(max(gaps[name]) * 1000, 2) for name in gaps
                }
    return rows


async def run(quick: bool) -> dict[str, Any]:
    machine = local_machine("redis", "zstandard", "orjson")
    machine["redis_server"] = redis_server_version()
    print_machine(machine)
    rows = await measure(quick)
    table = []
    for size, figures in rows.items():
        for operation in ("fill", "append", "get"):
            unsigned, signed = figures[operation]["unsigned"], figures[operation]["signed"]
            table.append(
                [
                    f"{int(size):,} msgs",
                    operation,
                    us(unsigned.p50_us),
                    us(signed.p50_us),
                    f"{signed.p50_us / unsigned.p50_us:.2f}",
                ]
            )
    print_table(
        "L2 calls, p50 µs (unsigned vs l2_signing_key)",
        ["thread", "call", "unsigned", "signed", "ratio"],
        table,
        left=2,
    )
    print_table(
        "Longest event-loop gap during get, ms",
        ["thread", "unsigned", "signed"],
        [
            [
                f"{int(size):,} msgs",
                str(figures["get_loop_gap_max_ms"]["unsigned"]),
                str(figures["get_loop_gap_max_ms"]["signed"]),
            ]
            for size, figures in rows.items()
        ],
    )
    return {"mode": "quick" if quick else "full", "machine": machine, "calls": rows}


def main() -> int:
    parser = benchmark_parser(__doc__, "5 rounds, 10 and 1,000 messages (a few seconds)")
    args = parser.parse_args()
    document = run_benchmark("l2_signing", run(args.quick), args.json)
    return 0 if document is not None else 1


if __name__ == "__main__":
    sys.exit(main())
