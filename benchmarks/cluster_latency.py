"""Redis Cluster beside one Redis server (issue 12): L2 hit, append, read after invalidation.

    python benchmarks/cluster_latency.py [--quick] [--json FILE]

Both backends run on this machine's loopback at once: a private ``redis-server`` and a
private 6-node cluster (3 primaries, 3 replicas, started by ``tests/_redis_cluster.py``).
Each backend has its own SQLite store file, so the store's share of a call is the same
on both sides and the difference is the cluster's price. Per backend:

- raw GET: ``GET`` of a thread's L2 value by a plain client (the floor);
- L2 hit: ``get()`` of a 10- and a 100-message thread (~200-byte messages) by a cache
  with a 1-byte L1 (``l1_max_bytes=1``), so every read is served by L2;
- append: one message onto a thread (store write, L2 append script and the bus event:
  on a cluster the event is a second call, SPUBLISH on the sharded channel);
- read after invalidation: instance B holds the thread in L1, instance A appends; once B
  has received the event (polled, untimed), B's ``get()``: an L1 miss served by L2.

Every sample is one awaited call timed with ``time.perf_counter_ns``; each round visits
every (backend, operation) cell in a shuffled order, so drift spreads over all cells.
"""

from __future__ import annotations

import asyncio
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from _redis import private_redis, redis_server_version
from _support import (
    BenchmarkError,
    Summary,
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
from agent_core._redis import redis_client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests._redis_cluster import LocalRedisCluster

PAYLOAD_BYTES: Final = 200
SIZES: Final = (10, 100)
BACKENDS: Final = ("single", "cluster")
OPERATIONS: Final = ("raw GET", "L2 hit", "append", "read after invalidation")


@dataclass(frozen=True, slots=True)
class Plan:
    rounds: int
    warmup: int


QUICK: Final = Plan(rounds=20, warmup=3)
FULL: Final = Plan(rounds=1000, warmup=30)

Sample = Callable[[], Awaitable[None]]


async def wait_until(condition: Callable[[], bool], what: str, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise BenchmarkError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


class Backend:
    """One Redis (or cluster) with its store and the three caches the samples use."""

    def __init__(self, name: str, redis_url: str, directory: Path) -> None:
        store = f"sqlite:///{directory}/{name}.db"
        namespace = f"bench-{uuid.uuid4().hex[:8]}"
        options: dict[str, Any] = {"namespace": namespace, "redis_timeout": 1.0}
        self.name = name
        self.raw = redis_client(redis_url)
        self.no_l1 = ConversationCache.from_urls(store, redis_url, l1_max_bytes=1, **options)
        self.writer = ConversationCache.from_urls(store, redis_url, **options)
        self.reader = ConversationCache.from_urls(store, redis_url, **options)
        self.payload = [{"role": "user", "content": message_payload(PAYLOAD_BYTES).decode()}]
        self.appended = 0

    async def open(self) -> None:
        for cache in (self.no_l1, self.writer, self.reader):
            await cache.open()
        for size in SIZES:
            await self.writer.append(f"t{size}", self.payload * size)
            await self.no_l1.get(f"t{size}")
        await self.writer.append("hot", self.payload)
        await self.reader.get("hot")

    async def close(self) -> None:
        for cache in (self.no_l1, self.writer, self.reader):
            await cache.purge_namespace()
            await cache.close()
        await self.raw.aclose()

    def check_served(self) -> None:
        """The L2 cells were served by L2, as the report says."""
        no_l1, reader = self.no_l1.stats(), self.reader.stats()
        if no_l1.l1_hits or no_l1.misses or reader.misses or reader.degraded:
            raise BenchmarkError(f"{self.name}: reads were not all served by L2: {no_l1}")

    def cells(self) -> dict[tuple[str, str], tuple[Sample | None, Sample]]:
        """(operation, size) -> (untimed preparation or None, the timed call)."""
        cells: dict[tuple[str, str], tuple[Sample | None, Sample]] = {}
        for size in SIZES:
            thread = f"t{size}"
            cells["raw GET", str(size)] = (None, self._raw_get(thread))
            cells["L2 hit", str(size)] = (None, self._l2_hit(thread))
        cells["append", "1"] = (None, self._append)
        cells["read after invalidation", "1"] = (self._invalidate, self._read_hot)
        return cells

    def _raw_get(self, thread: str) -> Sample:
        found: list[bytes] = []

        async def sample() -> None:
            if not found:  # the key is the tier's; find it once, untimed the next time
                pattern = f"ac:{{*/{self.no_l1.namespace}/{thread}}}"
                found.extend([key async for key in self.raw.scan_iter(match=pattern)])
            await self.raw.get(found[0])

        return sample

    def _l2_hit(self, thread: str) -> Sample:
        async def sample() -> None:
            await self.no_l1.get(thread)

        return sample

    async def _append(self) -> None:
        await self.writer.append("appended", self.payload)

    async def _invalidate(self) -> None:
        received = self.reader.stats().invalidations_received
        await self.writer.append("hot", self.payload)
        await wait_until(
            lambda: self.reader.stats().invalidations_received > received, "the bus event"
        )

    async def _read_hot(self) -> None:
        await self.reader.get("hot")


async def measure(backends: list[Backend], plan: Plan) -> dict[tuple[str, str, str], list[int]]:
    rng = random.Random(12)
    work = [
        (backend.name, operation, size, prepare, call)
        for backend in backends
        for (operation, size), (prepare, call) in backend.cells().items()
    ]
    samples: dict[tuple[str, str, str], list[int]] = {}
    with gc_paused():
        for round_index in range(plan.warmup + plan.rounds):
            rng.shuffle(work)
            for name, operation, size, prepare, call in work:
                if prepare is not None:
                    await prepare()
                started = time.perf_counter_ns()
                await call()
                elapsed = time.perf_counter_ns() - started
                if round_index >= plan.warmup:
                    samples.setdefault((name, operation, size), []).append(elapsed)
    return samples


def report(samples: dict[tuple[str, str, str], list[int]]) -> dict[str, Any]:
    summaries = {cell: summarize(values) for cell, values in samples.items()}
    cells = sorted({(operation, size) for _, operation, size in summaries}, key=_order)
    rows = []
    figures: dict[str, Any] = {}
    for operation, size in cells:
        single: Summary = summaries["single", operation, size]
        cluster: Summary = summaries["cluster", operation, size]
        rows.append(
            [
                operation,
                size,
                us(single.p50_us),
                us(single.p95_us),
                us(cluster.p50_us),
                us(cluster.p95_us),
                f"{cluster.p50_us / single.p50_us:.2f}x",
            ]
        )
        figures.setdefault(operation, {})[size] = {
            "single": asdict(single),
            "cluster": asdict(cluster),
            "ratio_p50": round(cluster.p50_us / single.p50_us, 3),
        }
    print_table(
        "Cluster beside one Redis, µs",
        ["operation", "messages", "one p50", "one p95", "cluster p50", "cluster p95", "ratio"],
        rows,
        left=2,
    )
    return figures


def _order(cell: tuple[str, str]) -> tuple[int, int]:
    return OPERATIONS.index(cell[0]), int(cell[1])


async def run(plan: Plan, mode: str) -> dict[str, Any]:
    machine = local_machine("redis", "hiredis")
    machine["redis_server"] = redis_server_version()
    print_machine(machine)
    with (
        tempfile.TemporaryDirectory(prefix="ac-bench-cluster-") as directory,
        private_redis() as single_url,
    ):
        cluster = LocalRedisCluster(Path(directory) / "cluster")
        try:
            try:
                cluster.start()
            except RuntimeError as exc:
                raise BenchmarkError(f"cannot start the cluster: {exc}") from exc
            backends = [
                Backend("single", single_url, Path(directory)),
                Backend("cluster", cluster.url, Path(directory)),
            ]
            for backend in backends:
                await backend.open()
            started = time.perf_counter()
            try:
                samples = await measure(backends, plan)
                for backend in backends:
                    backend.check_served()
            finally:
                errors = {
                    backend.name: backend.writer.stats().redis_errors
                    + backend.reader.stats().redis_errors
                    + backend.no_l1.stats().redis_errors
                    for backend in backends
                }
                for backend in backends:
                    await backend.close()
            elapsed = time.perf_counter() - started
        finally:
            cluster.stop()
    figures = report(samples)
    counts = ", ".join(f"{name} {count}" for name, count in errors.items())
    print(f"measured in {elapsed:.1f} s; Redis errors: {counts}")
    return {
        "benchmark": "cluster_latency",
        "mode": mode,
        "machine": machine,
        "plan": {**asdict(plan), "payload_bytes": PAYLOAD_BYTES},
        "latency": figures,
        "redis_errors": errors,
        "elapsed_s": round(elapsed, 2),
    }


def main(argv: list[str] | None = None) -> int:
    args = benchmark_parser(__doc__, "few samples; a smoke run").parse_args(argv)
    mode = "quick" if args.quick else "full"
    document = run_benchmark("cluster_latency", run(QUICK if args.quick else FULL, mode), args.json)
    return 0 if document is not None else 1


if __name__ == "__main__":
    sys.exit(main())
