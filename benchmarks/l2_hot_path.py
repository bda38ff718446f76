"""What each step of the L2 read path costs, per size: kept only where it pays.

    python benchmarks/l2_hot_path.py [--quick] [--json FILE]

One process, a SQLite store and a private ``redis-server`` on loopback. For threads of
10, 100 and 1,000 messages of ~200 and ~840 bytes, in one run, interleaved (each round
visits every cell once, shuffled), p50 µs of:

- ``naive``: a raw ``GET`` of the messages as one JSON array + ``msgspec.json.decode``
  (the floor of the goal in cache_latency.py), on a client as ``from_urls`` builds it;
- ``tier``: ``RedisTier.get`` with the defaults (unsigned, not compressed below 1 MiB);
- ``crc``: ``zlib.crc32`` over the value (what format 1 paid on every hit, on the loop
  below 64 KB and in a thread above);
- ``tier zstd``: ``RedisTier.get`` of the thread stored compressed
  (``compress_min_bytes=1``): fewer bytes on the wire, inflation in a thread;
- ``signed hop`` / ``signed inline``: ``RedisTier.get`` with ``l2_signing_key``, the
  seals of a value over 64 KB checked in the thread pool (the threshold before issue
  12) or every seal checked on the loop;
- ``GET 64K`` / ``GET 1M``: a raw ``GET`` of the tier's value on a client reading 64 KB
  (redis-py's default) or 1 MiB per socket read.
"""

from __future__ import annotations

import asyncio
import random
import sys
import tempfile
import time
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final, cast

import msgspec

from _redis import private_redis, redis_server_version
from _support import (
    BenchmarkError,
    benchmark_parser,
    local_machine,
    print_machine,
    print_table,
    run_benchmark,
    summarize,
    us,
)
from agent_core import ConversationCache
from agent_core.cache import _l2_format
from agent_core.cache._redis_tier import RedisTier
from cache_latency import (
    L2_PAYLOAD_BYTES,
    Cell,
    chat_payloads,
    left_out,
    measure,
    new_client,
    prefill,
)

SIZES: Final = (10, 100, 1_000)
KEY: Final = b"benchmark signing key, 32 bytes!"
CASES: Final = (
    "naive",
    "tier",
    "crc",
    "tier zstd",
    "signed hop",
    "signed inline",
    "GET 64K",
    "GET 1M",
)


def tier_of(cache: ConversationCache) -> RedisTier:
    tier = cache._l2
    assert tier is not None
    return tier


async def held(cache: ConversationCache, client: Any, thread_id: str) -> bytes:
    """The thread's L2 value, filled again while Redis looked unreachable (under load
    the bus may miss a ping and drop L2 for a moment)."""
    key = tier_of(cache).key(thread_id)
    deadline = time.monotonic() + 30
    while (value := await client.get(key)) is None or value[20:21] != b"c":
        if time.monotonic() > deadline:
            raise BenchmarkError(f"L2 does not hold {thread_id} (Redis degraded?)")
        await asyncio.sleep(0.05)
        await cache.invalidate(thread_id)
        await cache.get(thread_id)
    return cast(bytes, value)


class Hits:
    """Counts the tier reads that were hits: a sample that was not is left out."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> int:
        return self.count

    def counting(self, get: Callable[[str], Awaitable[object]]) -> Callable[[str], Awaitable[None]]:
        async def counted(thread_id: str) -> None:
            self.count += (await get(thread_id)) is not None

        return counted


def checked_where(
    call: Callable[[str], Awaitable[object]], inline_bytes: int
) -> Callable[[str], Awaitable[object]]:
    """``call`` with the checks of values over ``inline_bytes`` in the thread pool."""

    async def with_threshold(arg: str) -> object:
        kept = _l2_format._INLINE_BYTES
        _l2_format._INLINE_BYTES = inline_bytes  # type: ignore[misc]
        try:
            return await call(arg)
        finally:
            _l2_format._INLINE_BYTES = kept  # type: ignore[misc]

    return with_threshold


async def run(quick: bool) -> dict[str, Any]:
    machine = local_machine("redis", "hiredis", "zstandard", "orjson", "msgspec")
    machine["redis_server"] = redis_server_version()
    print_machine(machine)
    rng = random.Random(7)
    decode = msgspec.json.decode
    with private_redis() as redis_url, tempfile.TemporaryDirectory(prefix="ac-bench-") as d:
        store = f"sqlite:///{Path(d) / 'bench.db'}"
        options: dict[str, dict[str, Any]] = {
            "plain": {},
            "zstd": {"compress_min_bytes": 1},
            "signed": {"l2_signing_key": KEY},
        }
        caches = {
            name: ConversationCache.from_urls(store, redis_url, name, **extra)
            for name, extra in options.items()
        }
        reads_64k = new_client(redis_url, 64 << 10)
        reads_1m = new_client(redis_url, 1 << 20)
        try:
            for cache in caches.values():
                await cache.open()
            tiers = {name: tier_of(cache) for name, cache in caches.items()}

            async def naive(key: str) -> None:
                decode(cast(bytes, await reads_1m.get(key)))

            cells: dict[tuple[str, int, int], Cell] = {}
            hits = Hits()
            values: dict[str, bytes] = {}

            async def crc(thread_id: str) -> None:
                zlib.crc32(values[thread_id])

            for message_bytes in L2_PAYLOAD_BYTES:
                pool = chat_payloads(rng, max(SIZES), message_bytes)
                for size in SIZES:
                    thread_id = f"t-{message_bytes}-{size}"
                    for name, cache in caches.items():
                        await prefill(cache.store, cache.namespace, thread_id, pool[:size])
                        await cache.get(thread_id)
                        value = await held(cache, reads_1m, thread_id)
                        if name == "plain":
                            values[thread_id] = value
                    await reads_1m.set(f"naive-{thread_id}", b"[" + b",".join(pool[:size]) + b"]")
                    key = tiers["plain"].key(thread_id)
                    calls: dict[str, tuple[Callable[[str], Awaitable[object]], str]] = {
                        "naive": (naive, f"naive-{thread_id}"),
                        "crc": (crc, thread_id),
                        "GET 64K": (reads_64k.get, key),
                        "GET 1M": (reads_1m.get, key),
                    }
                    for case, (call, arg) in calls.items():
                        cells[case, message_bytes, size] = Cell(call, arg)
                    reads = {
                        "tier": tiers["plain"].get,
                        "tier zstd": tiers["zstd"].get,
                        "signed hop": checked_where(tiers["signed"].get, 64 << 10),
                        "signed inline": checked_where(tiers["signed"].get, 1 << 62),
                    }
                    for case, get in reads.items():
                        cell = case, message_bytes, size
                        cells[cell] = Cell(hits.counting(get), thread_id, served=hits)
            samples = 20 if quick else 1_000
            timings = await measure(cells, samples, 2 if quick else 20, rng)
            corrupt = {name: cache.stats().l2_corrupt for name, cache in caches.items()}
        finally:
            for cache in caches.values():
                await cache.close()
            await reads_64k.aclose()
            await reads_1m.aclose()
    if any(corrupt.values()):
        print(f"corrupt L2 values seen (a bug: the samples are left out): {corrupt}")
    off_path = left_out(timings)
    p50 = {cell: summarize(values).p50_us for cell, values in timings.samples.items()}
    rows = []
    for message_bytes in L2_PAYLOAD_BYTES:
        for size in SIZES:
            figure = {case: p50[case, message_bytes, size] for case in CASES}
            rows.append(
                [
                    str(message_bytes),
                    f"{size:,}",
                    f"{len(values[f't-{message_bytes}-{size}']):,}",
                    *(us(figure[case]) for case in CASES),
                    f"{figure['crc'] / figure['naive']:.1%}",
                    f"{figure['tier zstd'] / figure['tier']:.2f}",
                    f"{figure['signed hop'] / figure['signed inline']:.2f}",
                    f"{figure['GET 1M'] / figure['GET 64K']:.2f}",
                ]
            )
    print_table(
        f"L2 read path steps, p50 µs ({samples:,} samples per cell, interleaved)",
        [
            "msg B",
            "msgs",
            "value B",
            *CASES,
            "crc/naive",
            "zstd/plain",
            "hop/inline",
            "1M/64K reads",
        ],
        rows,
        left=3,
    )
    return {
        "benchmark": "l2_hot_path",
        "mode": "quick" if quick else "full",
        "samples_per_cell": samples,
        "machine": machine,
        "corrupt": corrupt,
        "left_out": off_path,
        "us_p50": {" ".join(map(str, cell)): value for cell, value in p50.items()},
    }


def main() -> int:
    parser = benchmark_parser(__doc__, "20 rounds (a few seconds)")
    args = parser.parse_args()
    document = run_benchmark("l2_hot_path", run(args.quick), args.json)
    return 0 if document is not None else 1


if __name__ == "__main__":
    sys.exit(main())
