"""Redis faults under load: the server is killed and restarted, then paused and resumed.

    python benchmarks/redis_faults.py [--quick] [--json FILE] [--postgres-url URL]

Two ``ConversationCache`` instances in one process share a throwaway PostgreSQL
database (``ac_bench_<random>``) and a private ``redis-server``. Three tasks run a
mixed load for 20 s: each call picks an instance and one of 8 threads, appends one
message (30 %) or gets the thread (70 %), then sleeps 2 ms. Meanwhile, at 4 s the
server is killed (SIGKILL) and at 6 s restarted, empty, on the same port; at 11 s it
is paused (SIGSTOP) and at 13 s resumed (SIGCONT). ``--quick``: the same in 5 s
(kill 0.5 s to 1 s, pause 2 s to 3.5 s).

Every call is timed and any exception it raises counted (goal: none). A monitor reads
``stats().degraded`` of both instances every 2 ms: detection is the time from the
fault until an instance reports degraded, recovery the time from the restart or
resume until it no longer does (the slower instance of the two). Afterwards the
store is read back: every appended message exactly once (goal: nothing lost), and,
0.5 s later, both instances serve what the store holds. ``stats().evictions["reconnect"]``
counts the L1 entries each instance dropped on reconnecting, since it may have missed
invalidations while Redis was away.
"""

from __future__ import annotations

import asyncio
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson

from _redis import RedisProcess, redis_server_version
from _support import (
    EXIT_NO_POSTGRES,
    benchmark_parser,
    machine_info,
    percentile,
    print_machine,
    print_table,
    run_benchmark,
    temporary_database,
)
from agent_core import ConversationCache

NAMESPACE: Final = "faults"
THREADS: Final = 8
WORKERS: Final = 3
APPEND_SHARE: Final = 0.3
PAUSE: Final = 0.002
POLL: Final = 0.002
#: Before the final reads: bounded consistency lets an instance lag a write briefly.
SETTLE: Final = 0.5

Operation = Literal["append", "get"]


@dataclass(frozen=True, slots=True)
class Plan:
    seconds: float
    kill_at: float
    restart_at: float
    pause_at: float
    resume_at: float


FULL: Final = Plan(seconds=20.0, kill_at=4.0, restart_at=6.0, pause_at=11.0, resume_at=13.0)
QUICK: Final = Plan(seconds=5.0, kill_at=0.5, restart_at=1.0, pause_at=2.0, resume_at=3.5)


@dataclass(slots=True)
class Load:
    """What the load tasks did: appended texts per thread, timed calls, errors."""

    written: dict[str, list[str]] = field(default_factory=dict)
    latencies: dict[Operation, list[float]] = field(
        default_factory=lambda: {"append": [], "get": []}
    )
    errors: Counter[str] = field(default_factory=Counter)
    bad_reads: int = 0


async def mixed_load(
    caches: Sequence[ConversationCache], seed: int, stop_at: float, load: Load
) -> None:
    rng = random.Random(seed)
    counter = 0
    clock = time.perf_counter
    while clock() < stop_at:
        cache = rng.choice(caches)
        thread_id = f"t{rng.randrange(THREADS)}"
        operation: Operation = "append" if rng.random() < APPEND_SHARE else "get"
        started = clock()
        try:
            if operation == "append":
                counter += 1
                text = f"{seed}-{counter}"
                await cache.append(thread_id, [{"role": "user", "content": text}])
                load.written.setdefault(thread_id, []).append(text)
            else:
                conversation = await cache.get(thread_id)
                mine = [
                    int(content.split("-")[1])
                    for content in (m["content"] for m in conversation.to_list())
                    if content.startswith(f"{seed}-")
                ]
                # Our own writes: never twice, never out of order.
                if mine != sorted(set(mine)):
                    load.bad_reads += 1
        except Exception as exc:
            load.errors[f"{operation}: {type(exc).__name__}: {exc}"] += 1
        load.latencies[operation].append(clock() - started)
        await asyncio.sleep(PAUSE)


@dataclass(slots=True)
class Fault:
    name: str
    injected: float = 0.0
    restored: float = 0.0
    reconnect_clears_before: int = 0
    reconnect_clears_after: int = 0


async def watch_degraded(
    caches: Sequence[ConversationCache], stop_at: float, transitions: list[tuple[float, int, bool]]
) -> None:
    """Record every change of each instance's ``degraded`` flag, polling every 2 ms."""
    state = [False] * len(caches)
    while time.perf_counter() < stop_at:
        for index, cache in enumerate(caches):
            degraded = cache.stats().degraded
            if degraded != state[index]:
                state[index] = degraded
                transitions.append((time.perf_counter(), index, degraded))
        await asyncio.sleep(POLL)


def reconnect_clears(caches: Sequence[ConversationCache]) -> int:
    return sum(cache.stats().evictions.get("reconnect", 0) for cache in caches)


async def recovered(caches: Sequence[ConversationCache], limit: float = 10.0) -> None:
    deadline = time.perf_counter() + limit
    while any(cache.stats().degraded for cache in caches):
        if time.perf_counter() > deadline:
            raise RuntimeError(f"the caches were still degraded {limit:g} s after the fault")
        await asyncio.sleep(POLL)


async def inject_faults(
    server: RedisProcess, caches: Sequence[ConversationCache], plan: Plan, t0: float
) -> list[Fault]:
    async def at(offset: float) -> float:
        await asyncio.sleep(max(0.0, t0 + offset - time.perf_counter()))
        return time.perf_counter()

    kill, pause = Fault("kill, restart"), Fault(f"SIGSTOP {plan.resume_at - plan.pause_at:g} s")
    await at(plan.kill_at)
    kill.reconnect_clears_before = reconnect_clears(caches)
    kill.injected = time.perf_counter()
    await asyncio.to_thread(server.kill)
    await at(plan.restart_at)
    await asyncio.to_thread(server.start)
    kill.restored = time.perf_counter()
    await recovered(caches)
    kill.reconnect_clears_after = reconnect_clears(caches)

    await at(plan.pause_at)
    pause.reconnect_clears_before = reconnect_clears(caches)
    pause.injected = time.perf_counter()
    server.pause()
    await at(plan.resume_at)
    server.resume()
    pause.restored = time.perf_counter()
    await recovered(caches)
    pause.reconnect_clears_after = reconnect_clears(caches)
    return [kill, pause]


def first_change(
    transitions: Sequence[tuple[float, int, bool]], after: float, index: int, degraded: bool
) -> float | None:
    return next(
        (at for at, i, state in transitions if at >= after and i == index and state == degraded),
        None,
    )


def fault_times(
    fault: Fault, transitions: Sequence[tuple[float, int, bool]], instances: int
) -> dict[str, Any]:
    """Detection and recovery of the slower instance, in ms (None: never)."""
    detected = [first_change(transitions, fault.injected, i, True) for i in range(instances)]
    back = [first_change(transitions, fault.restored, i, False) for i in range(instances)]
    return {
        "fault": fault.name,
        "detected_after_ms": None
        if None in detected
        else ms(max(at for at in detected if at is not None) - fault.injected),
        "recovered_after_ms": None
        if None in back
        else ms(max(at for at in back if at is not None) - fault.restored),
        "l1_cleared_on_reconnect": fault.reconnect_clears_after - fault.reconnect_clears_before,
    }


async def verify(caches: Sequence[ConversationCache], load: Load) -> dict[str, Any]:
    """Read every thread back from the store, and from both instances once settled."""
    store = caches[0].store
    await asyncio.sleep(SETTLE)
    lost = duplicated = in_store = 0
    differ: list[str] = []
    for thread_id, texts in load.written.items():
        records = await store.read(NAMESPACE, thread_id)
        stored = Counter(orjson.loads(payload)["content"] for payload in records.payloads)
        in_store += len(records.payloads)
        expected = Counter(texts)
        lost += sum((expected - stored).values())
        duplicated += sum((stored - expected).values())
        for cache in caches:
            conversation = await cache.get(thread_id)
            raws = tuple(message.raw for message in conversation.messages)
            if conversation.version != records.version or raws != records.payloads:
                differ.append(
                    f"{thread_id}: an instance serves version {conversation.version} "
                    f"({len(raws)} messages), the store {records.version}"
                )
    return {
        "written": sum(len(texts) for texts in load.written.values()),
        "in_store": in_store,
        "lost": lost,
        "duplicated": duplicated,
        "instances_serve_store": not differ,
        "differences": differ,
    }


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def spread(samples: Sequence[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    return {
        "calls": len(ordered),
        "p50_ms": ms(percentile(ordered, 0.5)),
        "p99_ms": ms(percentile(ordered, 0.99)),
        "max_ms": ms(ordered[-1]),
    }


async def run(plan: Plan, admin_url: str, mode: str) -> dict[str, Any]:
    load = Load()
    transitions: list[tuple[float, int, bool]] = []
    with tempfile.TemporaryDirectory(prefix="ac-bench-redis-") as directory:
        server = RedisProcess(directory)
        server.start()
        try:
            async with temporary_database(admin_url) as postgres_url:
                machine = await machine_info(postgres_url, temp_dir=directory)
                machine["redis_server"] = redis_server_version()
                print_machine(machine)
                async with (
                    ConversationCache.from_urls(
                        store=postgres_url, redis=server.url, namespace=NAMESPACE
                    ) as a,
                    ConversationCache.from_urls(
                        store=postgres_url, redis=server.url, namespace=NAMESPACE
                    ) as b,
                ):
                    caches = (a, b)
                    t0 = time.perf_counter()
                    stop_at = t0 + plan.seconds
                    background = asyncio.gather(
                        *(mixed_load(caches, seed, stop_at, load) for seed in range(WORKERS)),
                        watch_degraded(caches, stop_at, transitions),
                    )
                    faults = await inject_faults(server, caches, plan, t0)
                    await background
                    await recovered(caches)
                    check = await verify(caches, load)
                    counters = {
                        name: {
                            "redis_errors": cache.stats().redis_errors,
                            "l1_cleared_on_reconnect": cache.stats().evictions.get("reconnect", 0),
                            "degraded_at_end": cache.stats().degraded,
                        }
                        for name, cache in zip("ab", caches, strict=True)
                    }
        finally:
            server.kill()
    times = [fault_times(fault, transitions, len(caches)) for fault in faults]
    return report(plan, mode, machine, load, times, check, counters)


def report(
    plan: Plan,
    mode: str,
    machine: dict[str, str],
    load: Load,
    faults: list[dict[str, Any]],
    check: dict[str, Any],
    counters: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    def shown(value: float | None) -> str:
        return "never" if value is None else f"{value:.1f}"

    print_table(
        f"Faults during a {plan.seconds:g} s mixed load (2 instances; ms, slower instance)",
        ["fault", "at s", "restored at s", "detected after", "recovered after", "L1 cleared"],
        [
            [
                cell["fault"],
                f"{at:g}",
                f"{restored:g}",
                shown(cell["detected_after_ms"]),
                shown(cell["recovered_after_ms"]),
                f"{cell['l1_cleared_on_reconnect']:,}",
            ]
            for cell, at, restored in zip(
                faults,
                (plan.kill_at, plan.pause_at),
                (plan.restart_at, plan.resume_at),
                strict=True,
            )
        ],
    )
    print(
        "  detected after: from the fault until stats().degraded; recovered after: from the "
        "restart/resume until it is False again; L1 cleared: entries both instances dropped "
        "on reconnecting (evictions['reconnect'])"
    )
    print()
    latency = {
        "append": spread(load.latencies["append"]),
        "get": spread(load.latencies["get"]),
        "all": spread(load.latencies["append"] + load.latencies["get"]),
    }
    errors = sum(load.errors.values())
    print_table(
        "Call latency, ms (every call of the load, faults included)",
        ["operation", "calls", "p50", "p99", "max"],
        [
            [
                operation,
                f"{cell['calls']:,}",
                f"{cell['p50_ms']:.2f}",
                f"{cell['p99_ms']:.2f}",
                f"{cell['max_ms']:.1f}",
            ]
            for operation, cell in latency.items()
        ],
    )
    print(f"Caller errors: {errors} (goal 0)")
    for error, count in load.errors.most_common(5):
        print(f"  {count} x {error}")
    print(f"Reads showing one of the reader's own writes twice or out of order: {load.bad_reads}")
    print()
    print_table(
        "Messages lost (store read back after the load)",
        ["written", "in store", "lost", "duplicated", "both instances serve the store"],
        [
            [
                f"{check['written']:,}",
                f"{check['in_store']:,}",
                str(check["lost"]),
                str(check["duplicated"]),
                "yes" if check["instances_serve_store"] else "NO",
            ]
        ],
        left=0,
    )
    for difference in check["differences"]:
        print(f"  {difference}")
    print_table(
        "Instance counters at the end",
        ["instance", "redis_errors", "evictions['reconnect']", "degraded"],
        [
            [
                name,
                f"{cell['redis_errors']:,}",
                f"{cell['l1_cleared_on_reconnect']:,}",
                str(cell["degraded_at_end"]),
            ]
            for name, cell in counters.items()
        ],
    )
    ok = (
        errors == 0
        and load.bad_reads == 0
        and check["lost"] == check["duplicated"] == 0
        and check["instances_serve_store"]
        and all(cell["detected_after_ms"] is not None for cell in faults)
        and all(cell["recovered_after_ms"] is not None for cell in faults)
        and all(cell["l1_cleared_on_reconnect"] > 0 for cell in counters.values())
    )
    return {
        "benchmark": "redis_faults",
        "mode": mode,
        "machine": machine,
        "plan": {
            "seconds": plan.seconds,
            "kill_at_s": plan.kill_at,
            "restart_at_s": plan.restart_at,
            "pause_at_s": plan.pause_at,
            "resume_at_s": plan.resume_at,
            "instances": 2,
            "load_tasks": WORKERS,
            "threads": THREADS,
            "append_share": APPEND_SHARE,
            "pause_between_calls_s": PAUSE,
        },
        "faults": faults,
        "latency": latency,
        "caller_errors": errors,
        "errors": dict(load.errors),
        "bad_reads": load.bad_reads,
        "messages": check,
        "counters": counters,
        "ok": ok,
    }


def main(argv: list[str] | None = None) -> int:
    args = benchmark_parser(__doc__, "5 s, 1.5 s pause; a smoke run").parse_args(argv)
    mode = "quick" if args.quick else "full"
    plan = QUICK if args.quick else FULL
    document = run_benchmark("redis_faults", run(plan, args.postgres_url, mode), args.json)
    if document is None:
        return EXIT_NO_POSTGRES
    if not document["ok"]:
        print("redis_faults: FAILED: see the tables above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
