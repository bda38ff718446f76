"""L1 soak: the L1 byte budget bounds the process's memory over a long mixed workload.

    python benchmarks/l1_soak.py [--quick] [--ops N] [--budget-mib M] [--redis URL]
                                 [--json FILE]

One process, one ConversationCache on SQLite (a temporary directory, in /dev/shm where
there is one: a soak writes gigabytes and disk speed is not what it measures), L1 budget
``--budget-mib`` (32 MiB; 4 in --quick), default token model (gpt-4o). Optionally over a
Redis given by ``--redis`` (e.g. the shared one on 6379), in a random namespace whose keys
are deleted at the end. Four tasks run ``--ops`` operations (1,000,000; 20,000 in --quick)
on 20,000 threads (1,000), each op on a thread drawn with Zipf weights 1/rank:

- 45 % append 1-3 messages: user, assistant, and now and then a tool call with its
  results, of 50 B to 20 KB (70 % under 500 B, 25 % under 5 KB, 5 % up to 20 KB) of
  pseudo-words; a thread that reaches its length (20-200 messages) is deleted instead,
  as a finished conversation would be;
- 35 % get; 12 % window (gpt-4o, 90 %, or llama-3, which counts on demand and stores
  its counts; 8,000 to 128,000 tokens); 5 % delete; 3 % get of a thread never written.

The working set is hundreds of MB, so L1 evicts all the time. The constant is the RSS
after a warm-up of the same workload with L1 held at 0 bytes (interpreter, imports, store
connections and their page caches, tokenizer vocabularies, allocator pools), L1 empty.
The bound: RSS <= constant + 1.25 x budget at every sample, checked every 1/40 of the run;
the script prints RSS over time and exits 1 if the bound is broken.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import random
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any, Final

from _support import local_machine, print_machine, print_table, write_json
from agent_core import ConversationCache, TokenBudgetExceeded
from agent_core.observe import process_rss

MIB: Final = 1 << 20
#: RSS may exceed the constant by this many L1 budgets.
BUDGET_FACTOR: Final = 1.25
SEED: Final = 11
WORKERS: Final = 4
SAMPLES: Final = 40
MODELS: Final = (("gpt-4o", 0.9), ("llama-3", 0.1))
WINDOW_BUDGETS: Final = (8_000, 32_000, 128_000)
_TEXT: Final = """the of and to in is that for it as was with be by on not he this are or his
from at which but have an they you were her she there been one all we their has would when
cache token window thread message budget model tool result query answer city river lorem
ipsum agent memory bound resident evict weigh sketch admit window prefix shape call"""


@dataclass(frozen=True, slots=True)
class Plan:
    ops: int
    threads: int
    budget: int
    warmup_ops: int


FULL: Final = Plan(ops=1_000_000, threads=20_000, budget=32 * MIB, warmup_ops=20_000)
QUICK: Final = Plan(ops=20_000, threads=1_000, budget=4 * MIB, warmup_ops=2_000)


class Workload:
    """Draws operations and messages; tracks each thread's length to end it at its cap."""

    def __init__(self, plan: Plan, rng: random.Random) -> None:
        self.rng = rng
        self.threads = plan.threads
        self.cum_weights = list(accumulate(1 / rank for rank in range(1, plan.threads + 1)))
        # Made whole now, so that what the benchmark itself holds does not grow with the run.
        self.lengths = [0] * plan.threads
        self.caps = [rng.randint(20, 200) for _ in range(plan.threads)]
        words = _TEXT.split()
        self.corpus = " ".join(rng.choices(words, k=40_000))  # ~250 KB to cut texts from
        self.calls = 0
        self.unknown = 0

    def thread(self) -> tuple[str, int]:
        index: int = self.rng.choices(range(self.threads), cum_weights=self.cum_weights)[0]
        return f"soak-{index}", index

    def text(self) -> str:
        draw = self.rng.random()
        if draw < 0.70:
            size = self.rng.randint(20, 470)
        elif draw < 0.95:
            size = int(math.exp(self.rng.uniform(math.log(470), math.log(5_000))))
        else:
            size = self.rng.randint(5_000, 19_950)
        start = self.rng.randrange(len(self.corpus) - size)
        return self.corpus[start : start + size]

    def batch(self) -> list[dict[str, Any]]:
        if self.rng.random() < 0.1:
            self.calls += 1
            ids = [f"call_{self.calls}_{i}" for i in range(self.rng.randint(1, 2))]
            return [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {"name": "search", "arguments": '{"q": "river"}'},
                        }
                        for call_id in ids
                    ],
                },
                *({"role": "tool", "tool_call_id": i, "content": self.text()} for i in ids),
            ]
        role = self.rng.choice(("user", "assistant"))
        return [{"role": role, "content": self.text()} for _ in range(self.rng.randint(1, 2))]


async def operate(cache: ConversationCache, work: Workload, counts: dict[str, int]) -> None:
    """One operation of the mix."""
    rng = work.rng
    draw = rng.random()
    thread_id, index = work.thread()
    if draw < 0.45:
        length = work.lengths[index]
        if length >= work.caps[index]:
            await cache.delete(thread_id)
            work.lengths[index] = 0
            counts["deletes (thread at its length)"] += 1
            return
        if length == 0:
            batch = [{"role": "system", "content": "You are a helpful agent."}, *work.batch()]
        else:
            batch = work.batch()
        await cache.append(thread_id, batch)
        work.lengths[index] = length + len(batch)
        counts["appends"] += 1
    elif draw < 0.80:
        await cache.get(thread_id)
        counts["gets"] += 1
    elif draw < 0.92:
        model = rng.choices([m for m, _ in MODELS], weights=[w for _, w in MODELS])[0]
        try:
            await cache.window(thread_id, max_tokens=rng.choice(WINDOW_BUDGETS), model=model)
        except TokenBudgetExceeded:
            counts["windows over budget"] += 1
        counts["windows"] += 1
    elif draw < 0.97:
        await cache.delete(thread_id)
        work.lengths[index] = 0
        counts["deletes"] += 1
    else:
        work.unknown += 1
        await cache.get(f"soak-unknown-{work.unknown}")
        counts["gets of unknown threads"] += 1


async def run_ops(cache: ConversationCache, work: Workload, ops: int, on_sample: Any) -> None:
    counts: dict[str, int] = on_sample.counts
    started = finished = 0
    every = max(1, ops // SAMPLES)

    async def worker() -> None:
        nonlocal started, finished
        while started < ops:
            started += 1
            await operate(cache, work, counts)
            finished += 1
            if finished % every == 0:
                on_sample(finished)

    await asyncio.gather(*(worker() for _ in range(WORKERS)))


class Sampler:
    """RSS, L1 bytes and entries every 1/40 of the run, printed as they are taken."""

    COLUMNS: Final = ("ops", "s", "RSS MiB", "over constant", "L1 MiB", "entries", "evictions")

    def __init__(self, cache: ConversationCache, constant: int, *, show: bool) -> None:
        self.cache = cache
        self.constant = constant
        self.show = show
        self.started = time.monotonic()
        self.rows: list[dict[str, float]] = []
        self.counts: dict[str, int] = dict.fromkeys(
            (
                "appends",
                "gets",
                "windows",
                "windows over budget",
                "deletes",
                "deletes (thread at its length)",
                "gets of unknown threads",
            ),
            0,
        )
        if show:
            title = f"RSS over time (constant {constant / MIB:,.1f} MiB)"
            print(f"{title}\n{'=' * len(title)}")
            print("".join(f"{name:>14}" for name in self.COLUMNS), flush=True)

    def __call__(self, ops: int) -> None:
        stats = self.cache.stats()
        rss = process_rss()
        row = {
            "ops": ops,
            "seconds": round(time.monotonic() - self.started, 1),
            "rss_mib": round(rss / MIB, 1),
            "l1_mib": round(stats.l1_bytes / MIB, 2),
            "l1_entries": stats.l1_entries,
            "evictions": sum(stats.evictions.values()),
        }
        self.rows.append(row)
        if self.show:
            cells = (
                f"{ops:,}",
                f"{row['seconds']:,.0f}",
                f"{row['rss_mib']:,.1f}",
                f"{(rss - self.constant) / MIB:+,.1f}",
                f"{row['l1_mib']:,.2f}",
                f"{row['l1_entries']:,}",
                f"{row['evictions']:,}",
            )
            print("".join(f"{cell:>14}" for cell in cells), flush=True)


async def measure(plan: Plan, directory: str, redis_url: str | None) -> dict[str, Any]:
    rng = random.Random(SEED)
    work = Workload(plan, rng)
    namespace = f"soak-{uuid.uuid4().hex[:12]}"
    store = f"sqlite:///{Path(directory) / 'soak.db'}"
    rss_at_start = process_rss()
    async with ConversationCache.from_urls(
        store=store,
        redis=redis_url,
        namespace=namespace,
        l1_max_bytes=plan.budget,
        l2_ttl=3_600.0,
        watch_external=False,
        # The memory monitor would give L1 its budget back during the warm-up; RSS is far
        # below the machine's limit here, so it would never shrink L1 anyway.
        memory_check_interval=86_400.0,
    ) as cache:
        try:
            # Warm-up with L1 held at 0 bytes: everything but L1's entries reaches its size.
            cache._l1.resize(0)
            await run_ops(cache, work, plan.warmup_ops, Sampler(cache, 0, show=False))
            gc.collect()
            constant = process_rss()
            cache._l1.resize(plan.budget)
            sampler = Sampler(cache, constant, show=True)
            sampler(0)
            await run_ops(cache, work, plan.ops, sampler)
            duration = time.monotonic() - sampler.started
            print()
            stats = cache.stats()
        finally:
            if redis_url is not None and cache._redis is not None:
                await _delete_namespace(cache, namespace)
    bound = constant + BUDGET_FACTOR * plan.budget
    peak = max(row["rss_mib"] for row in sampler.rows) * MIB
    return {
        "ops": plan.ops,
        "threads": plan.threads,
        "workers": WORKERS,
        "warmup_ops": plan.warmup_ops,
        "redis": redis_url is not None,
        "namespace": namespace,
        "duration_s": round(duration, 1),
        "ops_per_s": round(plan.ops / duration),
        "budget_mib": plan.budget / MIB,
        "rss_before_cache_mib": round(rss_at_start / MIB, 1),
        "constant_mib": round(constant / MIB, 1),
        "bound_mib": round(bound / MIB, 1),
        "rss_start_mib": sampler.rows[0]["rss_mib"],
        "rss_peak_mib": round(peak / MIB, 1),
        "rss_end_mib": sampler.rows[-1]["rss_mib"],
        "peak_growth_over_constant_budgets": round((peak - constant) / plan.budget, 3),
        "l1_peak_mib": max(row["l1_mib"] for row in sampler.rows),
        "l1_end_mib": round(stats.l1_bytes / MIB, 2),
        "evictions": dict(stats.evictions),
        "hits": {"l1": stats.l1_hits, "l2": stats.l2_hits, "misses": stats.misses},
        "operations": sampler.counts,
        "samples": sampler.rows,
        "passed": peak <= bound,
    }


async def _delete_namespace(cache: ConversationCache, namespace: str) -> None:
    """Delete every Redis key that names the soak's random namespace."""
    client = cache._redis
    assert client is not None
    keys = [key async for key in client.scan_iter(match=f"*{namespace}*", count=1000)]
    for start in range(0, len(keys), 1000):
        await client.delete(*keys[start : start + 1000])


def report(document: dict[str, Any]) -> None:
    print_table(
        "Operations",
        ["operation", "count"],
        [[name, f"{count:,}"] for name, count in document["operations"].items()],
    )
    print_table(
        "L1 soak",
        ["figure", "value"],
        [
            ["operations", f"{document['ops']:,} in {document['duration_s']:,.0f} s"],
            ["threads (Zipf 1/rank)", f"{document['threads']:,}"],
            ["L1 budget", f"{document['budget_mib']:,.0f} MiB"],
            ["RSS before the cache opened", f"{document['rss_before_cache_mib']:,.1f} MiB"],
            ["constant (warm, L1 empty)", f"{document['constant_mib']:,.1f} MiB"],
            ["RSS start / peak / end", _start_peak_end(document)],
            ["L1 peak / end", f"{document['l1_peak_mib']:,.2f} / {document['l1_end_mib']} MiB"],
            ["peak over constant", f"{document['peak_growth_over_constant_budgets']} budgets"],
            ["bound: constant + 1.25 x budget", f"{document['bound_mib']:,.1f} MiB"],
        ],
    )
    verdict = "PASS" if document["passed"] else "FAIL"
    print(
        f"Goal: RSS <= constant + {BUDGET_FACTOR} x L1 budget = {document['bound_mib']:,.1f} "
        f"MiB throughout: {verdict} (peak {document['rss_peak_mib']:,.1f} MiB)"
    )


def _start_peak_end(document: dict[str, Any]) -> str:
    return (
        f"{document['rss_start_mib']:,.1f} / {document['rss_peak_mib']:,.1f} / "
        f"{document['rss_end_mib']:,.1f} MiB"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 ops, 4 MiB, ~30 s")
    parser.add_argument("--ops", type=int, help="operations to run (after the warm-up)")
    parser.add_argument("--budget-mib", type=int, help="the L1 budget, MiB")
    parser.add_argument("--redis", metavar="URL", help="also use this Redis (random namespace)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    if args.ops is not None:
        plan = Plan(args.ops, plan.threads, plan.budget, plan.warmup_ops)
    if args.budget_mib is not None:
        plan = Plan(plan.ops, plan.threads, args.budget_mib * MIB, plan.warmup_ops)
    machine = local_machine("orjson", "quicktok-v1")
    print_machine(machine)
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="ac-soak-", dir=shm) as directory:
        figures = asyncio.run(measure(plan, directory, args.redis))
    document = {"mode": "quick" if args.quick else "full", "machine": machine, **figures}
    report(document)
    if args.json:
        write_json(args.json, document)
    return 0 if document["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
