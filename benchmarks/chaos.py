"""Fault harness: agent-core's promises checked under faults, from the store alone.

    python benchmarks/chaos.py [--quick] [--json FILE] [--duration S] [--processes N]
                               [--tasks M] [--threads K] [--scenario NAME ...]
                               [--store sqlite|postgres] [--postgres-url URL]

Each run is one scenario on one store. N worker processes (``_chaos_worker.py``)
each open a ``ConversationCache`` per consistency mode (namespaces ``strong`` and
``bounded``) on the run's own store (a throwaway PostgreSQL database, or a SQLite
file in a temporary directory) and a private ``redis-server``. Each runs M asyncio
tasks per mode that append batches of 1-3 uniquely named messages (25 %, with an
idempotency key, retried on failure) to, or get, K shared threads, and log every
call with its CLOCK_MONOTONIC start and end. Meanwhile the harness injects the
scenario's faults:

- ``none``: no fault (the baseline);
- ``redis``: SIGKILL and restart (same port, empty) x10, SIGSTOP for 2 s x2;
- ``partition``: half the workers (at least one) reach Redis through a TCP proxy, the
  others directly; the proxy is cut (connections aborted, new ones refused) x2 and
  stalled (nothing flows, nothing is closed) x2, for 1.5 s each, alternately;
- ``pg-terminate``: ``pg_terminate_backend`` on every backend of the run's database x8;
- ``sqlite-kill``: a worker is killed with SIGKILL x6 (round robin), then restarted.

After the workers stop, ``_chaos_check.py`` reads every thread back from the store
and checks the logs against it: nothing acknowledged lost, duplicated or misplaced,
no partial batch, every read a prefix of the final thread, no stale read in strong
mode (linearizability), none staler than ``max_staleness`` in bounded mode, and only
typed errors (``AgentCoreError``). The exit status is 1 if any promise fails.

``--quick``: 2 processes x 2 tasks x 10 threads, 4 s per run, one run per fault
scenario (redis and pg-terminate on PostgreSQL, partition and sqlite-kill on SQLite;
the fault-free baseline only if asked for with ``--scenario none``): 2 Redis kills
and 1 pause of 1 s, 1 cut, 2 terminations, 2 kills -9.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import asyncpg
import orjson

from _chaos_check import FinalThread, check_mode
from _chaos_worker import MODES
from _redis import RedisProcess, redis_server_version
from _support import (
    DEFAULT_POSTGRES_URL,
    EXIT_NO_POSTGRES,
    BenchmarkError,
    local_machine,
    postgres_info,
    print_machine,
    print_table,
    temporary_database,
    write_json,
)
from _tcp_proxy import TcpProxy
from agent_core import store_from_url

WORKER: Final = str(Path(__file__).resolve().parent / "_chaos_worker.py")
SCENARIOS: Final = {
    "none": ("sqlite", "postgres"),
    "redis": ("sqlite", "postgres"),
    "partition": ("sqlite", "postgres"),
    "pg-terminate": ("postgres",),
    "sqlite-kill": ("sqlite",),
}
QUICK_RUNS: Final = (
    ("redis", "postgres"),
    ("partition", "sqlite"),
    ("pg-terminate", "postgres"),
    ("sqlite-kill", "sqlite"),
)
#: Bounded mode's staleness bound when the cache has no ``max_staleness`` option yet.
DEFAULT_BOUND: Final = 1.0
#: Faults happen between these fractions of a run.
FAULT_WINDOW: Final = (0.1, 0.85)
REDIS_DOWN: Final = 0.2
START_LIMIT: Final = 60.0
STOP_GRACE: Final = 30.0
EXIT_INTERRUPTED: Final = 130


@dataclass(frozen=True, slots=True)
class Plan:
    duration: float
    processes: int
    tasks: int
    threads: int
    redis_kills: int
    redis_pauses: int
    pause_s: float
    cuts: int
    cut_s: float
    pg_terminations: int
    sqlite_kills: int


FULL: Final = Plan(40.0, 4, 2, 20, 10, 2, 2.0, 4, 1.5, 8, 6)
QUICK: Final = Plan(4.0, 2, 2, 10, 2, 1, 1.0, 2, 0.8, 2, 2)


@dataclass(slots=True)
class Run:
    """One scenario on one store: its services, worker processes and fault counts."""

    scenario: str
    store_kind: str
    plan: Plan
    directory: Path
    store_url: str
    redis: RedisProcess
    proxy: TcpProxy | None = None
    workers: dict[int, asyncio.subprocess.Process] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)
    incarnations: Counter[int] = field(default_factory=Counter)
    killed: set[str] = field(default_factory=set)
    faults: Counter[str] = field(default_factory=Counter)
    max_staleness: float | None = None
    stop_ns: int = 0
    t0: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)

    def worker_name(self, index: int) -> str:
        incarnation = self.incarnations[index]
        return f"w{index}" if incarnation == 0 else f"w{index}r{incarnation}"

    def redis_url(self, index: int) -> str:
        proxied = self.proxy is not None and index < max(1, self.plan.processes // 2)
        return self.proxy.url if proxied and self.proxy is not None else self.redis.url

    async def spawn(self, index: int) -> None:
        name = self.worker_name(index)
        config = {
            "name": name,
            "store": self.store_url,
            "redis": self.redis_url(index),
            "threads": self.plan.threads,
            "tasks": self.plan.tasks,
            "log": str(self.directory / f"{name}.jsonl"),
            "seed": zlib.crc32(f"{self.scenario}/{self.store_kind}/{name}".encode()),
        }
        stderr = await asyncio.to_thread(open, self.directory / f"{name}.stderr", "wb")
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                WORKER,
                orjson.dumps(config).decode(),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
            )
        finally:
            stderr.close()
        self.workers[index] = process
        self.pids.append(process.pid)
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), START_LIMIT)
        except TimeoutError:
            line = b""
        if not line.startswith(b"ready "):
            raise BenchmarkError(f"worker {name} did not start:\n{self.stderr_tail(name)}")
        self.max_staleness = orjson.loads(line[len(b"ready ") :])["max_staleness"]

    async def go(self, index: int) -> None:
        stdin = self.workers[index].stdin
        assert stdin is not None
        stdin.write(f"go {self.stop_ns}\n".encode())
        await stdin.drain()

    def stderr_tail(self, name: str) -> str:
        return (self.directory / f"{name}.stderr").read_text(errors="replace")[-3000:]

    async def at(self, fraction: float) -> None:
        await asyncio.sleep(max(0.0, self.t0 + fraction * self.plan.duration - time.monotonic()))

    async def stop_workers(self) -> dict[str, str]:
        """Wait for every worker to end; kill the late ones. Crashes by worker name."""
        crashes: dict[str, str] = {}
        deadline = self.stop_ns / 1e9 + STOP_GRACE
        for index, process in self.workers.items():
            name = self.worker_name(index)
            try:
                await asyncio.wait_for(process.wait(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                process.kill()
                await process.wait()
                crashes[name] = f"still running {STOP_GRACE:g} s after the end: killed"
                continue
            if process.returncode != 0:
                crashes[name] = f"exit {process.returncode}: {self.stderr_tail(name)}"
        return crashes

    def kill_all(self) -> None:
        for process in self.workers.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()


def spread(count: int, hold_s: float = 0.0, duration: float = 1.0) -> list[float]:
    """``count`` fractions of the run, evenly spaced in the fault window, the last one
    early enough for a fault held ``hold_s`` to end inside it."""
    low, high = FAULT_WINDOW
    high = max(low, high - hold_s / duration)
    return [low + (high - low) * i / max(1, count - 1) for i in range(count)]


async def redis_faults(run: Run) -> None:
    plan = run.plan
    events = ["kill"] * plan.redis_kills
    for j in range(plan.redis_pauses):
        events.insert(len(events) * (j + 1) // (plan.redis_pauses + 1) + j, "pause")
    hold = max(plan.pause_s, REDIS_DOWN)
    for fraction, event in zip(spread(len(events), hold, plan.duration), events, strict=True):
        await run.at(fraction)
        if event == "kill":
            run.redis.kill()
            await asyncio.sleep(REDIS_DOWN)
            await asyncio.to_thread(run.redis.start)
            run.faults["redis SIGKILL + restart"] += 1
        else:
            run.redis.pause()
            try:
                await asyncio.sleep(plan.pause_s)
            finally:
                run.redis.resume()
            run.faults[f"redis SIGSTOP {plan.pause_s:g} s"] += 1


async def partition_faults(run: Run) -> None:
    """Cuts and stalls alternate, starting with a cut."""
    proxy = run.proxy
    assert proxy is not None
    for number, fraction in enumerate(spread(run.plan.cuts, run.plan.cut_s, run.plan.duration)):
        await run.at(fraction)
        kind = "stall" if number % 2 else "cut"
        proxy.stall() if kind == "stall" else proxy.cut()
        try:
            await asyncio.sleep(run.plan.cut_s)
        finally:
            proxy.restore()
        run.faults[f"partition ({kind}) {run.plan.cut_s:g} s"] += 1


async def pg_terminate_faults(run: Run, admin_url: str) -> None:
    database = run.store_url.rsplit("/", 1)[1].split("?")[0]
    admin = await asyncpg.connect(admin_url, timeout=10)
    try:
        for fraction in spread(run.plan.pg_terminations):
            await run.at(fraction)
            terminated = await admin.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
            run.faults["pg_terminate_backend rounds"] += 1
            run.faults["backends terminated"] += int(terminated)
    finally:
        await admin.close()


async def sqlite_kill_faults(run: Run) -> None:
    for number, fraction in enumerate(spread(run.plan.sqlite_kills)):
        await run.at(fraction)
        index = number % run.plan.processes
        process = run.workers[index]
        if process.returncode is not None:
            continue
        process.kill()
        await process.wait()
        run.killed.add(run.worker_name(index))
        run.faults["worker SIGKILL + restart"] += 1
        if time.monotonic_ns() < run.stop_ns - 1_000_000_000:
            run.incarnations[index] += 1
            await run.spawn(index)
            await run.go(index)


def faults_of(scenario: str, admin_url: str) -> Callable[[Run], Awaitable[None]]:
    async def nothing(run: Run) -> None:
        return None

    async def terminate(run: Run) -> None:
        await pg_terminate_faults(run, admin_url)

    return {
        "none": nothing,
        "redis": redis_faults,
        "partition": partition_faults,
        "pg-terminate": terminate,
        "sqlite-kill": sqlite_kill_faults,
    }[scenario]


@contextlib.asynccontextmanager
async def store_for(kind: str, directory: Path, admin_url: str) -> AsyncIterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{directory / 'chaos.db'}"
        return
    async with temporary_database(admin_url, prefix="ac_bench_chaos") as url:
        yield url


async def final_threads(store_url: str, threads: int) -> dict[str, dict[str, FinalThread]]:
    store = store_from_url(store_url)
    await store.open()
    try:
        finals: dict[str, dict[str, FinalThread]] = {}
        for mode in MODES:
            finals[mode] = {}
            for index in range(threads):
                thread = f"t{index}"
                records = await store.read(mode, thread)
                ids = [str(orjson.loads(payload).get("content")) for payload in records.payloads]
                finals[mode][thread] = FinalThread(records.version, records.seqs, ids)
        return finals
    finally:
        await store.close()


def merged_logs(directory: Path) -> tuple[list[dict[str, Any]], int]:
    """Every worker's records, each tagged with its worker; and the count of torn lines."""
    records: list[dict[str, Any]] = []
    torn = 0
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_bytes().splitlines():
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                torn += 1
                continue
            record.setdefault("w", path.stem)
            records.append(record)
    return records, torn


def keep_logs(directory: Path, keep: Path, finals: dict[str, dict[str, FinalThread]]) -> None:
    """Copy the workers' logs and the final threads' message ids to ``keep``."""
    keep.mkdir(parents=True, exist_ok=True)
    for path in (*directory.glob("*.jsonl"), *directory.glob("*.stderr")):
        shutil.copyfile(path, keep / path.name)
    document = {
        mode: {thread: asdict(final) for thread, final in threads.items()}
        for mode, threads in finals.items()
    }
    (keep / "final.json").write_bytes(orjson.dumps(document))


async def run_one(
    scenario: str, kind: str, plan: Plan, admin_url: str, keep: Path | None
) -> dict[str, Any]:
    begun = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ac-chaos-") as name:
        directory = Path(name)
        redis = RedisProcess(name)
        redis.start()
        proxy: TcpProxy | None = None
        run: Run | None = None
        try:
            async with store_for(kind, directory, admin_url) as store_url:
                if scenario == "partition":
                    proxy = TcpProxy(redis.port)
                    await proxy.start()
                run = Run(scenario, kind, plan, directory, store_url, redis, proxy)
                await asyncio.gather(*(run.spawn(i) for i in range(plan.processes)))
                run.phases["start"] = time.monotonic() - begun
                run.t0 = time.monotonic()
                run.stop_ns = time.monotonic_ns() + int(plan.duration * 1e9)
                await asyncio.gather(*(run.go(i) for i in range(plan.processes)))
                await faults_of(scenario, admin_url)(run)
                crashes = await run.stop_workers()
                run.phases["run and stop"] = time.monotonic() - run.t0
                finals = await final_threads(store_url, plan.threads)
        finally:
            if run is not None:
                run.kill_all()
            if proxy is not None:
                await proxy.close()
            redis.kill()
        records, torn = merged_logs(directory)
        if keep is not None:
            keep_logs(directory, keep / f"{scenario}-{kind}", finals)
    result = report_run(run, records, torn, finals, crashes)
    result["seconds"] = {name: round(value, 1) for name, value in run.phases.items()}
    result["seconds"]["total"] = round(time.monotonic() - begun, 1)
    print(f"  seconds: {result['seconds']}\n")
    return result


def report_run(
    run: Run,
    records: list[dict[str, Any]],
    torn: int,
    finals: dict[str, dict[str, FinalThread]],
    crashes: dict[str, str],
) -> dict[str, Any]:
    bound = run.max_staleness if run.max_staleness is not None else DEFAULT_BOUND
    modes = {
        mode: check_mode((r for r in records if r.get("ns") == mode), finals[mode], mode, bound)
        for mode in MODES
    }
    ends = [r for r in records if r["k"] == "end"]
    unexpected = {name: why for name, why in crashes.items() if name not in run.killed}
    result = {
        "scenario": run.scenario,
        "store": run.store_kind,
        "faults": dict(run.faults),
        "proxy": None
        if run.proxy is None
        else {"connections_aborted": run.proxy.aborted, "connections_refused": run.proxy.refused},
        "max_staleness_option": run.max_staleness,
        "bound_s": bound,
        "modes": modes,
        "workers_started": sum(run.incarnations.values()) + run.plan.processes,
        "workers_killed": sorted(run.killed),
        "worker_crashes": unexpected,
        "torn_log_lines": torn,
        "cleanup": {
            "store": run.store_url if run.store_kind == "sqlite" else None,
            "database": None if run.store_kind == "sqlite" else run.store_url.rsplit("/", 1)[1],
            "redis_port": run.redis.port,
            "proxy_port": None if run.proxy is None else run.proxy.port,
            "worker_pids": run.pids,
        },
        "peak_rss_mib": round(max((r["rss_kib"] for r in ends), default=0) / 1024, 1),
        "ok": all(m["ok"] for m in modes.values()) and not unexpected,
    }
    print_run(result)
    return result


def print_run(result: dict[str, Any]) -> None:
    rows = []
    for mode, m in result["modes"].items():
        rows.append(
            [
                mode,
                f"{m['appends_acked']:,}",
                f"{m['appends_failed']:,}",
                f"{m['reads']:,}",
                f"{m['reads_failed']:,}",
                f"{m['lost']}/{m['duplicated']}/{m['partial']}/{m['wrong']}",
                f"{m['stale_reads']:,}",
                f"{m['staleness_ms']['p50']:.1f}",
                f"{m['staleness_ms']['max']:.1f}",
                str(m["stale_reads"] if mode == "strong" else m["bound_violations"]),
                "ok" if m["ok"] else "FAIL",
            ]
        )
    header = ["mode", "acked", "append err", "reads", "read err", "lost/dup/part/wrong"]
    header += ["stale", "p50 ms", "max ms", "violations", "result"]
    print_table(f"Scenario {result['scenario']} on {result['store']}", header, rows)
    faults = ", ".join(f"{name} x{count}" for name, count in result["faults"].items()) or "none"
    print(f"  faults: {faults}")
    if result["proxy"]:
        print(f"  proxy: {result['proxy']}")
    option = result["max_staleness_option"]
    print(
        f"  bounded mode's bound: {result['bound_s']:g} s"
        + ("" if option is not None else " (no max_staleness option on the cache: assumed)")
    )
    print(f"  errors by type: {errors_line(result)}")
    print(
        f"  workers: {result['workers_started']} started, {len(result['workers_killed'])} "
        f"killed by the harness, {len(result['worker_crashes'])} crashed; peak RSS "
        f"{result['peak_rss_mib']} MiB"
    )
    for mode, m in result["modes"].items():
        for example in m["examples"][:3]:
            print(f"  {mode}: {example}")
        if m["untyped_example"]:
            tail = m["untyped_example"].rstrip().splitlines()[-3:]
            print(f"  {mode}: untyped error, e.g. (end of its traceback):")
            print("\n".join(f"    {line}" for line in tail))
        if m["failures"]:
            print(f"  {mode}: FAILED: {', '.join(m['failures'])}")
    for name, why in result["worker_crashes"].items():
        print(f"  worker {name} crashed: {why}")


def errors_line(result: dict[str, Any]) -> str:
    errors: Counter[str] = Counter()
    for m in result["modes"].values():
        errors.update(m["errors"])
    return ", ".join(f"{name} {count}" for name, count in errors.most_common()) or "none"


def print_summary(runs: list[dict[str, Any]]) -> None:
    rows = [
        [
            f"{r['scenario']} / {r['store']}",
            str(r["modes"]["strong"]["stale_reads"]),
            f"{r['modes']['strong']['staleness_ms']['max']:.1f}",
            str(r["modes"]["bounded"]["bound_violations"]),
            f"{r['modes']['bounded']['staleness_ms']['max']:.1f}",
            str(sum(m["untyped_errors"] for m in r["modes"].values())),
            "ok" if r["ok"] else "FAIL",
        ]
        for r in runs
    ]
    header = ["run", "strong stale", "max ms", "bounded over bound", "max ms", "untyped"]
    print_table("Promises, every run", [*header, "result"], rows)


def selected_runs(args: argparse.Namespace) -> list[tuple[str, str]]:
    scenarios = args.scenario or list(SCENARIOS)
    stores = (args.store,) if args.store else ("sqlite", "postgres")
    if args.quick and not args.scenario and not args.store:
        return list(QUICK_RUNS)
    runs = [(s, k) for s in scenarios for k in SCENARIOS[s] if k in stores]
    if args.quick:  # one store per scenario
        runs = [run for i, run in enumerate(runs) if run[0] not in (r[0] for r in runs[:i])]
    return runs


def cancel_on_signals() -> None:
    """SIGINT and SIGTERM cancel the run, so every cleanup (``finally``) still happens."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)


async def run_all(args: argparse.Namespace, plan: Plan) -> dict[str, Any]:
    cancel_on_signals()
    runs = selected_runs(args)
    if not runs:
        raise BenchmarkError("no run: the scenarios chosen do not apply to the store chosen")
    machine = local_machine("asyncpg", "redis")
    machine["redis_server"] = redis_server_version()
    if any(kind == "postgres" for _, kind in runs):
        machine.update(await postgres_info(args.postgres_url))
    print_machine(machine)
    print(f"Plan: {plan}\n")
    keep = None if args.logs is None else Path(args.logs)
    results = [
        await run_one(scenario, kind, plan, args.postgres_url, keep) for scenario, kind in runs
    ]
    print_summary(results)
    return {
        "benchmark": "chaos",
        "mode": "quick" if args.quick else "full",
        "machine": machine,
        "plan": asdict(plan),
        "runs": results,
        "ok": all(r["ok"] for r in results),
    }


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, Plan]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run of every scenario")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    parser.add_argument("--duration", type=float, help="seconds per run")
    parser.add_argument("--processes", type=int, help="worker processes per run")
    parser.add_argument("--tasks", type=int, help="asyncio tasks per process and mode")
    parser.add_argument("--threads", type=int, help="shared threads per mode")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    parser.add_argument("--store", choices=("sqlite", "postgres"))
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument(
        "--logs", metavar="DIR", help="keep every run's worker logs and final threads in DIR"
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    for option in ("duration", "processes", "tasks", "threads"):
        value = getattr(args, option)
        if value is not None:
            if value <= 0:
                parser.error(f"--{option} must be > 0")
            plan = replace(plan, **{option: value})
    return args, plan


def main(argv: list[str] | None = None) -> int:
    args, plan = parse(argv)
    try:
        document = asyncio.run(run_all(args, plan))
    except BenchmarkError as exc:
        print(f"chaos: FAILED: {exc}", file=sys.stderr)
        return EXIT_NO_POSTGRES
    except asyncio.CancelledError:
        print("chaos: interrupted; processes, servers and databases removed", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.json:
        write_json(args.json, document)
    if not document["ok"]:
        print("chaos: a promise FAILED: see the tables above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
