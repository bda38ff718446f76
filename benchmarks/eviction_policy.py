"""L1 eviction policy (issue 3): LRU against W-TinyLFU, by measured hit rate.

    python benchmarks/eviction_policy.py [--quick] [--seed N] [--json FILE]

A trace-driven simulation through the real `L1Tier`: each request is a ``get``; a miss
loads the thread (here: a prebuilt `Conversation`) and ``put``s it, as the cache does.
Thread sizes are log-normal (median 24 KiB) clipped to 1 KiB .. 2 MiB, and popularity
is independent of size. The L1 budget is a fraction of the working set: the L1 weight
of every thread in the popular pool. Traces, all with a fixed seed:

- zipf: Zipf s=1.1 over 1,000 threads, 20,000 requests (the project's benchmark trace);
- zipf+scan: the same, but 20 % of requests read a thread that is never read again;
- shifting: Zipf s=1.1 whose ranking is drawn afresh for each fifth of the trace.

Request hit rate counts hits; byte hit rate weighs each request by the thread's L1 weight.
Then the cost of a hit: ``L1Tier.get`` on a tier holding every thread, and the policy's
``record_access`` alone, averaged over a Zipf sequence of hits (best of the rounds, with
the policies interleaved). W-TinyLFU's sketch hashes with Python's per-process salt, so
its hit rates move by a few tenths of a point from run to run.
"""

from __future__ import annotations

import argparse
import math
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Final

from _support import gc_paused, message_payload, print_table, write_json
from agent_core.cache._l1 import L1Tier, weigh
from agent_core.cache._policy import EvictionPolicy, LRUPolicy
from agent_core.cache._tinylfu import WTinyLFUPolicy
from agent_core.messages import Conversation, Message, trusted_message

POLICIES: Final[dict[str, Callable[[int], EvictionPolicy]]] = {
    "LRU": LRUPolicy,
    "W-TinyLFU": WTinyLFUPolicy,
}
ZIPF_S: Final = 1.1
SCAN_SHARE: Final = 0.2
SHIFT_PHASES: Final = 5
MEDIAN_THREAD_BYTES: Final = 24 * 1024
SIGMA: Final = 1.4
MIN_THREAD_BYTES: Final = 1024
MAX_THREAD_BYTES: Final = 2 * 1024 * 1024
MESSAGE_BYTES: Final = 1500


@dataclass(frozen=True, slots=True)
class Plan:
    threads: int
    requests: int
    budgets: tuple[float, ...]
    timed_hits: int
    rounds: int


FULL: Final = Plan(1000, 20_000, (0.05, 0.10, 0.25, 0.50), 200_000, 5)
QUICK: Final = Plan(200, 3_000, (0.10, 0.25), 20_000, 2)


@dataclass(frozen=True, slots=True)
class Rates:
    requests: float
    bytes: float


class Library:
    """Conversations built on demand; messages share payloads, so only weights cost memory."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._payloads: dict[int, Message] = {}
        self.conversations: dict[str, Conversation] = {}
        self.weights: dict[str, int] = {}

    def thread(self) -> str:
        """A new thread of a random size; returns its id."""
        thread_id = f"thread-{len(self.conversations):06d}-{self._rng.getrandbits(32):08x}"
        size = math.exp(self._rng.gauss(math.log(MEDIAN_THREAD_BYTES), SIGMA))
        size = min(max(int(size), MIN_THREAD_BYTES), MAX_THREAD_BYTES)
        count, rest = divmod(size, MESSAGE_BYTES)
        messages = (self._message(MESSAGE_BYTES),) * count
        if rest:
            messages += (self._message(max(rest, 64)),)
        self.conversations[thread_id] = Conversation(thread_id, 1, messages)
        self.weights[thread_id] = weigh(self.conversations[thread_id].payloads)
        return thread_id

    def _message(self, size: int) -> Message:
        if size not in self._payloads:
            self._payloads[size] = trusted_message(message_payload(size))
        return self._payloads[size]


def zipf(rng: random.Random, threads: Sequence[str], count: int) -> list[str]:
    ranked = list(threads)
    rng.shuffle(ranked)  # popularity independent of size
    cumulative = list(accumulate(1 / rank**ZIPF_S for rank in range(1, len(ranked) + 1)))
    return rng.choices(ranked, cum_weights=cumulative, k=count)


def traces(
    plan: Plan, library: Library, rng: random.Random
) -> tuple[list[str], dict[str, list[str]]]:
    """The popular pool of threads, and the three traces."""
    pool = [library.thread() for _ in range(plan.threads)]
    plain = zipf(rng, pool, plan.requests)
    scan = zipf(rng, pool, plan.requests)
    for index in range(len(scan)):
        if rng.random() < SCAN_SHARE:
            scan[index] = library.thread()
    phase = plan.requests // SHIFT_PHASES
    shifting = [key for _ in range(SHIFT_PHASES) for key in zipf(rng, pool, phase)]
    return pool, {"zipf": plain, "zipf+scan": scan, "shifting": shifting}


def simulate(
    trace: list[str], library: Library, budget: int, policy: Callable[[int], EvictionPolicy]
) -> Rates:
    tier = L1Tier(budget, ttl=1e9, policy=policy)
    weights = library.weights
    conversations = library.conversations
    hits = hit_bytes = all_bytes = 0
    for thread_id in trace:
        weight = weights[thread_id]
        all_bytes += weight
        if tier.get(thread_id) is None:
            tier.put(conversations[thread_id], confirmed=0, weight=weight)
        else:
            hits += 1
            hit_bytes += weight
    return Rates(hits / len(trace), hit_bytes / all_bytes)


def time_hits(
    plan: Plan, library: Library, pool: list[str], rng: random.Random
) -> dict[str, tuple[float, float]]:
    """ns per ``L1Tier.get`` hit and per ``record_access(hit=True)``, for each policy."""
    reads = zipf(rng, pool, plan.timed_hits)
    capacity = 2 * sum(library.weights[thread_id] for thread_id in pool)
    tiers = {}
    policies = {}
    for name, policy in POLICIES.items():
        tiers[name] = L1Tier(capacity, ttl=1e9, policy=policy)
        policies[name] = policy(capacity)
        for thread_id in pool:
            tiers[name].put(library.conversations[thread_id], confirmed=0)
            policies[name].put(thread_id, library.weights[thread_id])
        assert all(thread_id in tiers[name] for thread_id in pool), name
    best = dict.fromkeys(POLICIES, (math.inf, math.inf))
    clock = time.perf_counter_ns
    with gc_paused():
        for _ in range(plan.rounds):
            for name, tier in tiers.items():
                get = tier.get
                started = clock()
                for thread_id in reads:
                    get(thread_id)
                got = (clock() - started) / len(reads)
                record = policies[name].record_access
                started = clock()
                for thread_id in reads:
                    record(thread_id, hit=True)
                recorded = (clock() - started) / len(reads)
                best[name] = (min(best[name][0], got), min(best[name][1], recorded))
    return best


def percent(value: float) -> str:
    return f"{100 * value:.1f}"


def run(plan: Plan, seed: int, mode: str) -> dict[str, Any]:
    print(
        f"Python {platform.python_version()} on {platform.machine()}, "
        f"{platform.system()} {platform.release()}; seed {seed}; mode {mode}\n"
    )
    rng = random.Random(seed)
    library = Library(rng)
    started = time.perf_counter()
    pool, trace_by_name = traces(plan, library, rng)
    sizes = sorted(library.weights[thread_id] for thread_id in pool)
    working_set = sum(sizes)
    print(
        f"{plan.threads:,} threads, {plan.requests:,} requests per trace; thread L1 weight: "
        f"median {sizes[len(sizes) // 2] / 1024:,.0f} KiB, "
        f"mean {working_set / len(sizes) / 1024:,.0f} KiB, max {sizes[-1] / 1024:,.0f} KiB; "
        f"working set {working_set / 2**20:,.1f} MiB\n"
    )

    results: dict[tuple[str, float, str], Rates] = {}
    for trace_name, trace in trace_by_name.items():
        for fraction in plan.budgets:
            for name, policy in POLICIES.items():
                budget = int(working_set * fraction)
                results[trace_name, fraction, name] = simulate(trace, library, budget, policy)
    names = list(POLICIES)
    rows = []
    for trace_name in trace_by_name:
        for fraction in plan.budgets:
            cells = [results[trace_name, fraction, name] for name in names]
            rows.append(
                [
                    trace_name,
                    f"{100 * fraction:.0f} % ({working_set * fraction / 2**20:,.1f} MiB)",
                    *(percent(rates.requests) for rates in cells),
                    f"{100 * (cells[1].requests - cells[0].requests):+.1f}",
                    *(percent(rates.bytes) for rates in cells),
                    f"{100 * (cells[1].bytes - cells[0].bytes):+.1f}",
                ]
            )
    print_table(
        "Hit rates, % (request / byte)",
        [
            "trace",
            "L1 budget (of working set)",
            *(f"{name} req" for name in names),
            "Δ req",
            *(f"{name} byte" for name in names),
            "Δ byte",
        ],
        rows,
        left=2,
    )

    costs = time_hits(plan, library, pool, rng)
    print_table(
        f"Cost of a hit, ns (mean over {plan.timed_hits:,} Zipf hits, best of {plan.rounds})",
        ["policy", "L1Tier.get hit", "record_access(hit=True)"],
        [[name, f"{get:,.0f}", f"{record:,.0f}"] for name, (get, record) in costs.items()],
    )
    print(f"measured in {time.perf_counter() - started:.1f} s")

    return {
        "benchmark": "eviction_policy",
        "mode": mode,
        "seed": seed,
        "python": platform.python_version(),
        "working_set_bytes": working_set,
        "hit_rates": [
            {
                "trace": trace_name,
                "budget_fraction": fraction,
                "policy": name,
                "requests": round(rates.requests, 4),
                "bytes": round(rates.bytes, 4),
            }
            for (trace_name, fraction, name), rates in results.items()
        ],
        "hit_cost_ns": {
            name: {"get": round(get), "record_access": round(record)}
            for name, (get, record) in costs.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a small trace; a smoke run")
    parser.add_argument("--seed", type=int, default=3, help="seed of the traces (default 3)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    document = run(QUICK if args.quick else FULL, args.seed, mode)
    if args.json:
        write_json(args.json, document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
