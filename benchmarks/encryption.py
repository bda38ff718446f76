"""The price of encryption at rest: append, L2 hit and L1 hit, plain vs encrypted, side by side.

    python benchmarks/encryption.py [--quick] [--json FILE]

One process, one SQLite store (a temporary file, the default ``synchronous=full``) and a
private ``redis-server``. Two caches share them, in namespaces of their own: one plain,
one with ``encryption_keys`` (AES-256-GCM, a per-namespace HKDF key). Threads hold 10 and
200 messages of ~200 bytes. Each round times every cell once, plain and encrypted
alternating (A B, then B A), with the cyclic GC paused:

- append: ``cache.append`` of one message (counted, sealed, written to the store, L1
  extended, L2 extended in place by its Lua script), to a thread of up to 500 messages;
- L2 hit: ``cache.read`` after ``evict_local`` (untimed), served by L2 (checked): one
  ``GETEX`` beside the store's version query, the value's checks, and, encrypted, one
  AES-GCM open per message;
- L1 hit: ``cache.get`` of a snapshot L1 holds (plaintext: the same work either way).

The figure is p50 µs per call and the encrypted / plain ratio of p50s with its 95 %
bootstrap interval.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Final

from _redis import private_redis, redis_server_version
from _support import (
    BenchmarkError,
    benchmark_parser,
    gc_paused,
    local_machine,
    message_payload,
    print_machine,
    print_table,
    ratio_interval,
    run_benchmark,
    summarize,
    us,
)
from agent_core import ConversationCache, EncryptionKeys, Message

SIZES: Final = (10, 200)
OPERATIONS: Final = ("append", "l2_hit", "l1_hit")
VARIANTS: Final = ("plain", "encrypted")
# Appends go to a new thread every this many rounds, so that none grows long.
APPEND_THREAD_CAP: Final = 500


async def _timed(call: Callable[[], Awaitable[Any]]) -> tuple[int, Any]:
    started = time.perf_counter_ns()
    result = await call()
    return time.perf_counter_ns() - started, result


async def measure(rounds: int, sizes: tuple[int, ...]) -> dict[tuple[str, int, str], list[int]]:
    item = Message.from_json(message_payload(200))
    keys = EncryptionKeys([("k1", os.urandom(32))])
    samples: dict[tuple[str, int, str], list[int]] = {}
    with private_redis() as redis_url, tempfile.TemporaryDirectory() as directory:
        store = f"sqlite:///{directory}/bench.db"
        async with (
            ConversationCache.from_urls(store, redis_url, "plain", redis_timeout=5.0) as plain,
            ConversationCache.from_urls(
                store, redis_url, "encrypted", redis_timeout=5.0, encryption_keys=keys
            ) as sealed,
        ):
            caches = {"plain": plain, "encrypted": sealed}
            for cache in caches.values():
                for size in sizes:
                    await cache.append(f"read-{size}", [item] * size)
            for index in range(rounds):
                order = VARIANTS if index % 2 == 0 else VARIANTS[::-1]
                with gc_paused():
                    for name in order:
                        thread_id = f"append-{index // APPEND_THREAD_CAP}"
                        append = partial(caches[name].append, thread_id, [item])
                        elapsed, _ = await _timed(append)
                        samples.setdefault(("append", 1, name), []).append(elapsed)
                    for size in sizes:
                        for name in order:
                            for operation in OPERATIONS[1:]:
                                elapsed = await _read(caches[name], operation, size)
                                samples.setdefault((operation, size, name), []).append(elapsed)
    return samples


async def _read(cache: ConversationCache, operation: str, size: int) -> int:
    """One timed read of a thread of ``size`` messages, served by the tier ``operation``
    names (checked)."""
    thread_id = f"read-{size}"
    if operation == "l2_hit":
        cache.evict_local(thread_id)
        elapsed, result = await _timed(lambda: cache.read(thread_id))
        expected = "l2"
    else:
        await cache.get(thread_id)
        elapsed, conversation = await _timed(lambda: cache.get(thread_id))
        result = await cache.read(thread_id)
        expected = "l1"
        if conversation is not result.value:
            raise BenchmarkError(f"{cache.namespace}: the L1 hit served another snapshot")
    if result.source != expected or len(result.value) != size:
        raise BenchmarkError(
            f"{cache.namespace}: {operation} of {thread_id} came from {result.source} with "
            f"{len(result.value)} messages"
        )
    return elapsed


async def run(quick: bool) -> dict[str, Any]:
    machine = local_machine("redis", "cryptography", "orjson")
    machine["redis_server"] = redis_server_version()
    print_machine(machine)
    rounds, sizes = (30, SIZES[:1]) if quick else (1500, SIZES)
    samples = await measure(rounds, sizes)
    cells: dict[str, Any] = {}
    table = []
    for operation in OPERATIONS:
        for size in (1,) if operation == "append" else sizes:
            plain, sealed = samples[operation, size, "plain"], samples[operation, size, "encrypted"]
            low, high = ratio_interval(sealed, plain)
            figures = {name: summarize(samples[operation, size, name]) for name in VARIANTS}
            ratio = figures["encrypted"].p50_us / figures["plain"].p50_us
            cells[f"{operation}/{size}"] = {
                **figures,
                "ratio_p50": round(ratio, 3),
                "ratio_p50_95ci": [round(low, 3), round(high, 3)],
            }
            table.append(
                [
                    operation,
                    "one message" if operation == "append" else f"{size:,} msgs",
                    us(figures["plain"].p50_us),
                    us(figures["encrypted"].p50_us),
                    f"{ratio:.2f}",
                    f"{low:.2f}-{high:.2f}",
                ]
            )
    print_table(
        "Encryption at rest, p50 µs (plain vs encrypted)",
        ["call", "thread", "plain", "encrypted", "ratio", "95% CI"],
        table,
        left=2,
    )
    return {"mode": "quick" if quick else "full", "machine": machine, "rounds": rounds, **cells}


def main() -> int:
    parser = benchmark_parser(__doc__, "30 rounds, threads of 10 messages (a few seconds)")
    args = parser.parse_args()
    document = run_benchmark("encryption", run(args.quick), args.json)
    return 0 if document is not None else 1


if __name__ == "__main__":
    sys.exit(main())
