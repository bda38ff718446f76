"""Thread store latency (issue 2): append and read, SQLiteStore beside PostgresStore.

    python benchmarks/store_latency.py [--quick] [--json FILE] [--postgres-url URL]

Append: one ~200-byte message onto threads that already hold 10, 1,000 and 10,000
messages (prefilled by batched ``store.append`` calls of up to 1,000). Read: the
whole of threads of 10, 100 and 1,000 messages. Every sample is one awaited store
call timed with ``time.perf_counter_ns``; each round visits every (store, size) cell
once in a shuffled order, so drift and noise on the machine spread over all cells.
The goal in the issue: p50(append, 10,000) / p50(append, 10) <= 1.3 on both stores.

The SQLite file lives in a temporary directory (default options: WAL, synchronous=full);
PostgreSQL gets a throwaway ``ac_bench_<random>`` database, dropped at the end. If
PostgreSQL cannot be reached the script fails (exit status 3); it never skips it.
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from _support import (
    APPEND_RATIO_GOAL,
    EXIT_NO_POSTGRES,
    Summary,
    benchmark_parser,
    gc_paused,
    machine_info,
    message_payload,
    print_machine,
    print_table,
    ratio_interval,
    run_benchmark,
    summarize,
    temporary_database,
    us,
)
from agent_core.store import PostgresStore, SQLiteStore

NAMESPACE: Final = "bench"
BATCH: Final = 1000
PAYLOAD_BYTES: Final = 200


@dataclass(frozen=True, slots=True)
class Plan:
    append_sizes: tuple[int, ...]
    read_sizes: tuple[int, ...]
    append_samples: int
    read_samples: int
    warmup: int


FULL: Final = Plan((10, 1_000, 10_000), (10, 100, 1_000), 1_000, 300, 20)
QUICK: Final = Plan((10, 1_000, 10_000), (10, 100, 1_000), 30, 30, 5)
#: Timed appends per thread at most: each size gets enough identical threads that
#: none grows by more than this (plus its share of the warmup) while it is measured.
APPENDS_PER_THREAD: Final = 100

Cell = tuple[str, int]
Store = SQLiteStore | PostgresStore


async def prefill(store: Store, thread_id: str, count: int, payload: bytes) -> None:
    done = 0
    while done < count:
        batch = min(BATCH, count - done)
        await store.append(NAMESPACE, thread_id, [payload] * batch)
        done += batch


async def measure_appends(
    stores: dict[str, Store], plan: Plan, payload: bytes, rng: random.Random
) -> tuple[dict[Cell, list[int]], dict[Cell, int]]:
    """Timed single-message appends; returns the samples and the largest final size."""
    replicas = -(-plan.append_samples // APPENDS_PER_THREAD)
    cells = [(name, size) for name in stores for size in plan.append_sizes]
    for name, size in cells:
        for replica in range(replicas):
            await prefill(stores[name], f"append-{size}-{replica}", size, payload)
    for round_number in range(plan.warmup):
        for name, size in cells:
            thread_id = f"append-{size}-{round_number % replicas}"
            await stores[name].append(NAMESPACE, thread_id, [payload])
    samples: dict[Cell, list[int]] = {cell: [] for cell in cells}
    clock = time.perf_counter_ns
    with gc_paused():
        for round_number in range(plan.append_samples):
            rng.shuffle(cells)
            replica = round_number % replicas
            for name, size in cells:
                store, batch, thread_id = stores[name], [payload], f"append-{size}-{replica}"
                started = clock()
                await store.append(NAMESPACE, thread_id, batch)
                samples[name, size].append(clock() - started)
    final = {}
    for name, size in cells:
        final[name, size] = max(
            [await stores[name].version(NAMESPACE, f"append-{size}-{r}") for r in range(replicas)]
        )
    return samples, final


async def measure_reads(
    stores: dict[str, Store], plan: Plan, payload: bytes, rng: random.Random
) -> dict[Cell, list[int]]:
    cells = [(name, size) for name in stores for size in plan.read_sizes]
    for name, size in cells:
        await prefill(stores[name], f"read-{size}", size, payload)
    for name, size in cells:
        records = await stores[name].read(NAMESPACE, f"read-{size}")
        if len(records.payloads) != size or records.payloads[0] != payload:
            raise RuntimeError(f"{name}: read-{size} returned {len(records.payloads)} messages")
    for _ in range(plan.warmup):
        for name, size in cells:
            await stores[name].read(NAMESPACE, f"read-{size}")
    samples: dict[Cell, list[int]] = {cell: [] for cell in cells}
    clock = time.perf_counter_ns
    with gc_paused():
        for _ in range(plan.read_samples):
            rng.shuffle(cells)
            for name, size in cells:
                store, thread_id = stores[name], f"read-{size}"
                started = clock()
                await store.read(NAMESPACE, thread_id)
                samples[name, size].append(clock() - started)
    return samples


async def run(plan: Plan, admin_url: str, mode: str) -> dict[str, Any]:
    payload = message_payload(PAYLOAD_BYTES)
    rng = random.Random(2)
    with tempfile.TemporaryDirectory(prefix="ac-bench-") as directory:
        async with temporary_database(admin_url) as postgres_url:
            machine = await machine_info(postgres_url, temp_dir=directory)
            print_machine(machine)
            stores: dict[str, Store] = {
                "sqlite": SQLiteStore(Path(directory) / "bench.db"),
                "postgres": PostgresStore(postgres_url),
            }
            for store in stores.values():
                await store.open()
            try:
                started = time.perf_counter()
                append_samples, final_sizes = await measure_appends(stores, plan, payload, rng)
                read_samples = await measure_reads(stores, plan, payload, rng)
                elapsed = time.perf_counter() - started
            finally:
                for store in stores.values():
                    await store.close()

    names = list(stores)
    appends = {cell: summarize(values) for cell, values in append_samples.items()}
    reads = {cell: summarize(values) for cell, values in read_samples.items()}
    small, large = plan.append_sizes[0], plan.append_sizes[-1]
    ratios = {
        name: statistics.median(append_samples[name, large])
        / statistics.median(append_samples[name, small])
        for name in names
    }
    intervals = {
        name: ratio_interval(append_samples[name, large], append_samples[name, small])
        for name in names
    }
    verdicts = {name: _verdict(ratios[name], intervals[name]) for name in names}

    def columns(summary: Summary) -> list[str]:
        return [us(summary.p50_us), us(summary.p95_us)]

    header = ["thread messages", *(f"{name} {p}" for name in names for p in ("p50", "p95"))]
    print_table(
        f"Append latency, µs (one {PAYLOAD_BYTES}-byte message; "
        f"{plan.append_samples:,} samples per cell, cells interleaved)",
        [*header, *(f"{name} final" for name in names)],
        [
            [
                f"{size:,}",
                *(c for name in names for c in columns(appends[name, size])),
                *(f"{final_sizes[name, size]:,}" for name in names),
            ]
            for size in plan.append_sizes
        ],
    )
    print(
        f"Append ratio p50({large:,}) / p50({small:,}), goal <= {APPEND_RATIO_GOAL} "
        "(95% bootstrap interval in brackets)"
    )
    for name in names:
        low, high = intervals[name]
        print(f"  {name:<9} {ratios[name]:.2f} [{low:.2f}-{high:.2f}]  goal {verdicts[name]}")
    print(
        f"  ('final' = largest thread of that size after the run; each size is spread over "
        f"{-(-plan.append_samples // APPENDS_PER_THREAD)} thread(s))"
    )
    print()
    print_table(
        f"Read latency, µs (whole thread; {plan.read_samples:,} samples per cell, "
        "cells interleaved)",
        header,
        [
            [f"{size:,}", *(c for name in names for c in columns(reads[name, size]))]
            for size in plan.read_sizes
        ],
    )
    print(f"measured in {elapsed:.1f} s")

    return {
        "benchmark": "store_latency",
        "mode": mode,
        "machine": machine,
        "plan": {
            "append_sizes": plan.append_sizes,
            "read_sizes": plan.read_sizes,
            "append_samples": plan.append_samples,
            "read_samples": plan.read_samples,
            "warmup_rounds": plan.warmup,
            "appends_per_thread_max": APPENDS_PER_THREAD,
            "payload_bytes": PAYLOAD_BYTES,
            "prefill_batch": BATCH,
            "sqlite_options": "defaults (WAL, synchronous=full, 2 readers)",
            "postgres_options": "defaults (pool 1..10)",
        },
        "append": {
            name: {
                str(size): {**asdict(appends[name, size]), "final_size": final_sizes[name, size]}
                for size in plan.append_sizes
            }
            for name in names
        },
        "append_ratio_p50": {
            "numerator_size": large,
            "denominator_size": small,
            "goal": APPEND_RATIO_GOAL,
            **{name: round(ratios[name], 3) for name in names},
            "interval_95": {name: [round(bound, 3) for bound in intervals[name]] for name in names},
            "goal_met": {name: ratios[name] <= APPEND_RATIO_GOAL for name in names},
            "verdict": verdicts,
        },
        "read": {
            name: {str(size): asdict(reads[name, size]) for size in plan.read_sizes}
            for name in names
        },
        "elapsed_s": round(elapsed, 2),
    }


def _verdict(ratio: float, interval: tuple[float, float]) -> str:
    low, high = interval
    if high <= APPEND_RATIO_GOAL:
        return "met"
    if low > APPEND_RATIO_GOAL:
        return "NOT met"
    side = "met" if ratio <= APPEND_RATIO_GOAL else "NOT met"
    return f"{side} by the point estimate, but the interval straddles {APPEND_RATIO_GOAL}"


def main(argv: list[str] | None = None) -> int:
    args = benchmark_parser(__doc__, "few samples; a smoke run").parse_args(argv)
    mode = "quick" if args.quick else "full"
    plan = QUICK if args.quick else FULL
    document = run_benchmark("store_latency", run(plan, args.postgres_url, mode), args.json)
    if document is None:
        return EXIT_NO_POSTGRES
    return 0


if __name__ == "__main__":
    sys.exit(main())
