"""Freshness across instances: how long other processes serve a thread's older version.

    python benchmarks/freshness.py [--quick] [--json FILE] [--store sqlite|postgres]
                                   [--postgres-url URL]

Four OS processes, each with its own ``ConversationCache`` on one store and one
private ``redis-server``, read and write 20 shared threads for 30 s (3 s with
``--quick``): 20 % appends of one message, 80 % gets, 0-2 ms apart. This runs in
``bounded`` and then in ``strong`` consistency (each in its own namespace).

Staleness of a read: if an append of a newer version than the read returned had
already returned (in any process) when the read began, how long before; else 0. The
timestamps are ``time.monotonic``, one clock for every process on Linux. Goals:
bounded, at most 50 ms; strong, never stale. Then the store is read back: every
message written exactly once; each read held ``version`` distinct messages; and
after the writers stop, every process serves exactly what the store holds.

External changes: another connection INSERTs a message straight into the store's
table (``agent_core.messages`` on PostgreSQL, ``messages`` on SQLite), 50 times
(5 with ``--quick``), 200 ms apart, while the four processes poll a ``get`` of that
thread every millisecond. Propagation is the time from just before the INSERT is
sent until the last process serves a version that holds it (goal: 100 ms).
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import queue
import random
import sqlite3
import sys
import tempfile
import time
import traceback
from bisect import bisect_right
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any, Final

import asyncpg
import orjson

from _redis import private_redis, redis_server_version
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
from agent_core import ConversationCache, store_from_url

PROCESSES: Final = 4
THREADS: Final = 20
APPEND_SHARE: Final = 0.2
PAUSE_MAX: Final = 0.002
MODES: Final = ("bounded", "strong")
BOUNDED_GOAL_MS: Final = 50.0
EXTERNAL_GOAL_MS: Final = 100.0
EXTERNAL_THREAD: Final = "external"
EXTERNAL_GAP: Final = 0.2
EXTERNAL_POLL: Final = 0.001
#: After the last INSERT: what no process serves by then counts as not propagated.
EXTERNAL_WAIT: Final = 1.0
SETTLE: Final = 0.5
_spawn = multiprocessing.get_context("spawn")


@dataclass(frozen=True, slots=True)
class Plan:
    seconds: float
    inserts: int


FULL: Final = Plan(seconds=30.0, inserts=50)
QUICK: Final = Plan(seconds=3.0, inserts=5)


def digest(payloads: Sequence[bytes]) -> str:
    return hashlib.blake2b(b"\n".join(payloads), digest_size=16).hexdigest()


# -- workers (separate processes) -----------------------------------------------------


def _mixed_worker(
    index: int,
    store_url: str,
    redis_url: str,
    namespace: str,
    consistency: str,
    seconds: float,
    barrier: Any,
    results: Any,
) -> None:
    """Reads and appends for ``seconds``, then reports what it did and what it finally sees."""

    async def run() -> dict[str, Any]:
        rng = random.Random(index)
        appends: list[tuple[str, int, float]] = []
        reads: list[tuple[str, int, float]] = []
        bad_reads = 0
        async with ConversationCache.from_urls(
            store=store_url, redis=redis_url, namespace=namespace, consistency=consistency
        ) as cache:
            await asyncio.to_thread(barrier.wait)  # the loop keeps serving the bus meanwhile
            deadline = time.monotonic() + seconds
            written = 0
            while time.monotonic() < deadline:
                thread_id = f"t{rng.randrange(THREADS)}"
                if rng.random() < APPEND_SHARE:
                    written += 1
                    message = {"role": "user", "content": f"{index}:{written}"}
                    version = await cache.append(thread_id, [message])
                    appends.append((thread_id, version, time.monotonic()))
                else:
                    began = time.monotonic()
                    conversation = await cache.get(thread_id)
                    reads.append((thread_id, conversation.version, began))
                    raws = {message.raw for message in conversation.messages}
                    if not len(raws) == len(conversation) == conversation.version:
                        bad_reads += 1
                await asyncio.sleep(rng.random() * PAUSE_MAX)
            await asyncio.to_thread(barrier.wait)  # every writer has stopped
            await asyncio.sleep(SETTLE)
            final = {}
            for i in range(THREADS):
                conversation = await cache.get(f"t{i}")
                final[f"t{i}"] = digest([message.raw for message in conversation.messages])
        return {
            "appends": appends,
            "reads": reads,
            "written": written,
            "bad_reads": bad_reads,
            "final": final,
        }

    try:
        results.put((index, asyncio.run(run())))
    except BaseException:
        results.put((index, {"error": traceback.format_exc()}))


def _external_worker(
    index: int,
    store_url: str,
    redis_url: str,
    namespace: str,
    barrier: Any,
    stop: Any,
    results: Any,
) -> None:
    """Polls one thread; reports when it first served each version, and wrong contents."""

    async def run() -> dict[str, Any]:
        first_served: dict[int, float] = {}
        wrong = 0
        async with ConversationCache.from_urls(
            store=store_url, redis=redis_url, namespace=namespace
        ) as cache:
            await cache.get(EXTERNAL_THREAD)
            await asyncio.to_thread(barrier.wait)
            while not stop.is_set():
                conversation = await cache.get(EXTERNAL_THREAD)
                version = conversation.version
                if version not in first_served:
                    first_served[version] = time.monotonic()
                    last = conversation.messages[-1].to_dict() if conversation.messages else {}
                    if last.get("content") != external_content(version):
                        wrong += 1
                await asyncio.sleep(EXTERNAL_POLL)
        return {"first_served": first_served, "wrong": wrong}

    try:
        results.put((index, asyncio.run(run())))
    except BaseException:
        results.put((index, {"error": traceback.format_exc()}))


def collect(workers: list[Any], results: Any, timeout: float) -> list[dict[str, Any]]:
    """Start the workers and gather their results; fail early if one dies silently."""
    for worker in workers:
        worker.start()
    collected: list[tuple[int, dict[str, Any]]] = []
    deadline = time.monotonic() + timeout
    while len(collected) < len(workers):
        try:
            collected.append(results.get(timeout=1.0))
        except queue.Empty:
            reported = {index for index, _ in collected}
            dead = [i for i, w in enumerate(workers) if w.exitcode and i not in reported]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(
                    f"worker process(es) {dead or 'all'} did not report; see their stderr"
                ) from None
    for worker in workers:
        worker.join(timeout=30)
    errors = [result["error"] for _, result in collected if "error" in result]
    if errors:
        raise RuntimeError("a worker process failed:\n" + "\n".join(errors))
    return [result for _, result in sorted(collected, key=lambda pair: pair[0])]


# -- freshness under a mixed load -------------------------------------------------------


def run_mode(
    store_url: str, redis_url: str, namespace: str, consistency: str, seconds: float
) -> list[dict[str, Any]]:
    barrier = _spawn.Barrier(PROCESSES)
    results = _spawn.Queue()
    workers = [
        _spawn.Process(
            target=_mixed_worker,
            args=(i, store_url, redis_url, namespace, consistency, seconds, barrier, results),
        )
        for i in range(PROCESSES)
    ]
    return collect(workers, results, seconds + 120)


def staleness(results: Sequence[dict[str, Any]]) -> list[float]:
    """Per read: how long after an append of a newer version had returned it began (or 0).

    Appends of a thread in order of return, with the running maximum of their versions:
    the first one newer than a read's version is found by bisection.
    """
    returned: dict[str, list[tuple[float, int]]] = {}
    for result in results:
        for thread_id, version, at in result["appends"]:
            returned.setdefault(thread_id, []).append((at, version))
    index: dict[str, tuple[list[float], list[int]]] = {}
    for thread_id, events in returned.items():
        events.sort()
        index[thread_id] = ([at for at, _ in events], list(accumulate((v for _, v in events), max)))
    lags = []
    for result in results:
        for thread_id, version, began in result["reads"]:
            times, newest = index.get(thread_id, ([], []))
            first_newer = bisect_right(newest, version)
            stale = first_newer < len(times) and times[first_newer] < began
            lags.append(began - times[first_newer] if stale else 0.0)
    return lags


async def check_store(
    store_url: str, namespace: str, results: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Every message written exactly once, and every process's last reads equal the store."""
    store = store_from_url(store_url)
    await store.open()
    try:
        found: Counter[str] = Counter()
        truth = {}
        for i in range(THREADS):
            records = await store.read(namespace, f"t{i}")
            found.update(orjson.loads(payload)["content"] for payload in records.payloads)
            truth[f"t{i}"] = digest(records.payloads)
    finally:
        await store.close()
    expected = Counter(
        f"{index}:{n}"
        for index, result in enumerate(results)
        for n in range(1, result["written"] + 1)
    )
    return {
        "written": sum(expected.values()),
        "in_store": sum(found.values()),
        "lost": sum((expected - found).values()),
        "duplicated": sum((found - expected).values()),
        "bad_reads": sum(result["bad_reads"] for result in results),
        "processes_matching_store": sum(result["final"] == truth for result in results),
    }


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def summarize_mode(results: Sequence[dict[str, Any]], seconds: float) -> dict[str, Any]:
    lags = staleness(results)
    stale = sorted(lag for lag in lags if lag > 0)
    return {
        "reads": len(lags),
        "appends": sum(len(result["appends"]) for result in results),
        "ops_per_s": round(
            sum(len(result["reads"]) + len(result["appends"]) for result in results) / seconds
        ),
        "stale_reads": len(stale),
        "stale_p50_ms": ms(percentile(stale, 0.5)) if stale else 0.0,
        "stale_p99_ms": ms(percentile(stale, 0.99)) if stale else 0.0,
        "stale_max_ms": ms(stale[-1]) if stale else 0.0,
    }


# -- external changes --------------------------------------------------------------------


def external_content(version: int) -> str:
    return f"external {version}"


@asynccontextmanager
async def external_writer(
    store_url: str, namespace: str
) -> AsyncIterator[Callable[[int], Awaitable[None]]]:
    """An open connection of another program; yields ``insert(seq)``, one plain INSERT."""

    def payload(seq: int) -> str:
        return orjson.dumps({"role": "assistant", "content": external_content(seq)}).decode()

    if store_url.startswith("sqlite:"):
        lite = sqlite3.connect(store_url.removeprefix("sqlite:///"), check_same_thread=False)

        def insert_sqlite(seq: int) -> None:
            with lite:  # commits
                lite.execute(
                    "INSERT INTO messages (namespace, thread_id, seq, payload, created_at)"
                    " VALUES (?, ?, ?, ?, 0)",
                    (namespace, EXTERNAL_THREAD, seq, payload(seq)),
                )

        async def insert_sqlite_async(seq: int) -> None:
            await asyncio.to_thread(insert_sqlite, seq)

        try:
            yield insert_sqlite_async
        finally:
            lite.close()
        return
    connection = await asyncpg.connect(store_url)

    async def insert_postgres(seq: int) -> None:
        await connection.execute(
            "INSERT INTO agent_core.messages (namespace, thread_id, seq, payload)"
            " VALUES ($1, $2, $3, $4::json)",
            namespace,
            EXTERNAL_THREAD,
            seq,
            payload(seq),
        )

    try:
        yield insert_postgres
    finally:
        await connection.close()


async def measure_external(
    store_url: str, redis_url: str, namespace: str, inserts: int
) -> dict[str, Any]:
    store = store_from_url(store_url)
    await store.open()
    try:
        first = {"role": "assistant", "content": external_content(1)}
        version = (await store.append(namespace, EXTERNAL_THREAD, [orjson.dumps(first)])).version
    finally:
        await store.close()
    barrier = _spawn.Barrier(PROCESSES + 1)
    stop = _spawn.Event()
    results = _spawn.Queue()
    workers = [
        _spawn.Process(
            target=_external_worker,
            args=(i, store_url, redis_url, namespace, barrier, stop, results),
        )
        for i in range(PROCESSES)
    ]
    collecting = asyncio.ensure_future(
        asyncio.to_thread(collect, workers, results, inserts * EXTERNAL_GAP + 120)
    )
    await asyncio.to_thread(barrier.wait)
    rng = random.Random(3)
    sent: list[tuple[int, float]] = []
    async with external_writer(store_url, namespace) as insert:
        for _ in range(inserts):
            await asyncio.sleep(EXTERNAL_GAP * rng.uniform(0.75, 1.25))
            version += 1
            started = time.monotonic()
            await insert(version)
            sent.append((version, started))
    await asyncio.sleep(EXTERNAL_WAIT)
    stop.set()
    served = await collecting
    propagation: list[float] = []
    missed = 0
    for seq, started in sent:
        seen = [
            min((at for v, at in result["first_served"].items() if v >= seq), default=None)
            for result in served
        ]
        if None in seen:
            missed += 1
        else:
            propagation.append(max(at for at in seen if at is not None) - started)
    propagation.sort()
    return {
        "inserts": inserts,
        "propagated": len(propagation),
        "missed": missed,
        "wrong_contents": sum(result["wrong"] for result in served),
        "p50_ms": ms(percentile(propagation, 0.5)) if propagation else 0.0,
        "p99_ms": ms(percentile(propagation, 0.99)) if propagation else 0.0,
        "max_ms": ms(propagation[-1]) if propagation else 0.0,
        "over_goal": sum(value * 1000 > EXTERNAL_GOAL_MS for value in propagation),
        "propagation_ms": [ms(value) for value in propagation],
    }


# -- the run -----------------------------------------------------------------------------


async def run(plan: Plan, admin_url: str, store_kind: str, mode: str) -> dict[str, Any]:
    modes: dict[str, dict[str, Any]] = {}
    checks: dict[str, dict[str, Any]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="ac-bench-") as directory,
        private_redis() as redis_url,
    ):
        async with temporary_database(admin_url) as postgres_url:
            machine = await machine_info(postgres_url, temp_dir=directory)
            machine["redis_server"] = redis_server_version()
            print_machine(machine)
            store_url = (
                f"sqlite:///{Path(directory) / 'bench.db'}"
                if store_kind == "sqlite"
                else postgres_url
            )
            for consistency in MODES:
                namespace = f"fresh-{consistency}"
                results = await asyncio.to_thread(
                    run_mode, store_url, redis_url, namespace, consistency, plan.seconds
                )
                modes[consistency] = summarize_mode(results, plan.seconds)
                checks[consistency] = await check_store(store_url, namespace, results)
            external = await measure_external(store_url, redis_url, "external", plan.inserts)
    return report(plan, store_kind, mode, machine, modes, checks, external)


def report(
    plan: Plan,
    store_kind: str,
    mode: str,
    machine: dict[str, str],
    modes: dict[str, dict[str, Any]],
    checks: dict[str, dict[str, Any]],
    external: dict[str, Any],
) -> dict[str, Any]:
    goals = {
        "bounded": modes["bounded"]["stale_max_ms"] <= BOUNDED_GOAL_MS,
        "strong": modes["strong"]["stale_reads"] == 0,
    }
    print_table(
        f"Freshness across processes ({PROCESSES} processes, {THREADS} threads, "
        f"{plan.seconds:g} s per mode, {store_kind}; staleness of the stale reads, ms)",
        ["mode", "reads", "appends", "ops/s", "stale", "p50", "p99", "max", "goal"],
        [
            [
                consistency,
                f"{cell['reads']:,}",
                f"{cell['appends']:,}",
                f"{cell['ops_per_s']:,}",
                f"{cell['stale_reads']:,}",
                f"{cell['stale_p50_ms']:.2f}",
                f"{cell['stale_p99_ms']:.2f}",
                f"{cell['stale_max_ms']:.2f}",
                ("max <= 50 ms" if consistency == "bounded" else "never stale")
                + (": met" if goals[consistency] else ": NOT met"),
            ]
            for consistency, cell in modes.items()
        ],
    )
    intact = {
        consistency: check["lost"] == check["duplicated"] == check["bad_reads"] == 0
        and check["processes_matching_store"] == PROCESSES
        for consistency, check in checks.items()
    }
    print_table(
        "No message lost or duplicated (store read back after each mode)",
        [
            "mode",
            "written",
            "in store",
            "lost",
            "duplicated",
            "bad reads",
            "final = store",
            "result",
        ],
        [
            [
                consistency,
                f"{check['written']:,}",
                f"{check['in_store']:,}",
                str(check["lost"]),
                str(check["duplicated"]),
                str(check["bad_reads"]),
                f"{check['processes_matching_store']}/{PROCESSES}",
                "ok" if intact[consistency] else "FAILED",
            ]
            for consistency, check in checks.items()
        ],
    )
    print(
        "  bad reads: a read whose message count differs from its version or that holds a "
        f"message twice; final = store: processes serving exactly the store's threads "
        f"{SETTLE:g} s after the writers stopped"
    )
    print()
    table = "agent_core.messages" if store_kind == "postgres" else "messages"
    external_met = external["missed"] == 0 and external["max_ms"] <= EXTERNAL_GOAL_MS
    print_table(
        f"External change propagation, ms (plain INSERT into {table} by another "
        f"connection; until all {PROCESSES} processes serve it)",
        ["store", "inserts", "propagated", "p50", "p99", "max", "over goal", "wrong", "goal"],
        [
            [
                store_kind,
                str(external["inserts"]),
                str(external["propagated"]),
                f"{external['p50_ms']:.2f}",
                f"{external['p99_ms']:.2f}",
                f"{external['max_ms']:.2f}",
                str(external["over_goal"]),
                str(external["wrong_contents"]),
                f"max <= {EXTERNAL_GOAL_MS:g} ms: {'met' if external_met else 'NOT met'}",
            ]
        ],
    )
    print(
        "  measured from just before the INSERT is sent; each process polls get() every "
        f"{EXTERNAL_POLL * 1000:g} ms; wrong: a new version whose last message is not the "
        "inserted one"
    )
    print()
    return {
        "benchmark": "freshness",
        "mode": mode,
        "store": store_kind,
        "machine": machine,
        "plan": {
            "processes": PROCESSES,
            "threads": THREADS,
            "seconds_per_mode": plan.seconds,
            "append_share": APPEND_SHARE,
            "pause_max_s": PAUSE_MAX,
            "external_inserts": plan.inserts,
            "external_gap_s": EXTERNAL_GAP,
            "external_poll_s": EXTERNAL_POLL,
        },
        "freshness": modes,
        "freshness_goals_met": goals,
        "integrity": checks,
        "integrity_ok": intact,
        "external": {**external, "goal_ms": EXTERNAL_GOAL_MS, "goal_met": external_met},
    }


def main(argv: list[str] | None = None) -> int:
    args = benchmark_parser(
        __doc__, "3 s per mode, 5 inserts", default_store="postgres"
    ).parse_args(argv)
    mode = "quick" if args.quick else "full"
    plan = QUICK if args.quick else FULL
    document = run_benchmark("freshness", run(plan, args.postgres_url, args.store, mode), args.json)
    if document is None:
        return EXIT_NO_POSTGRES
    if not all(document["integrity_ok"].values()):
        print("freshness: FAILED: a message was lost or duplicated", file=sys.stderr)
        return 1
    if not document["freshness_goals_met"]["strong"]:
        print("freshness: FAILED: strong consistency served a stale read", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
