"""HTTP load: two ``agent-core serve`` instances sharing Redis and PostgreSQL, req/s and p99.

    python benchmarks/http_load.py [--quick] [--json FILE] [--postgres-url URL]
                                   [--connections N] [--duration S]

Two servers (``python -m agent_core.cli serve --model echo``, one uvicorn process each,
as the CLI runs them: access log on, sent to a file) on free loopback ports, both on a
throwaway ``ac_bench_<random>`` PostgreSQL database and one private redis-server
(default ``bounded`` consistency). The pool of threads is pre-filled through the first
instance (one POST per thread of 20-50 chat messages of ~200 bytes), then each thread is
read once through each instance, so that both start warm.

The load generator runs in this process (one asyncio loop, ``httpx.AsyncClient``, one
client per instance): N closed-loop workers, half on each instance, each sending its
next request as soon as the previous answered, for a fixed duration per operation
(after a short untimed warm-up):

- ``GET thread``: ``GET /v1/threads/{id}`` (whole thread);
- ``append``: ``POST /v1/threads/{id}/messages`` with one message;
- ``turn``: ``POST /v1/threads/{id}/turns`` (JSON reply; ``EchoModel``, so the model
  costs nothing and the turn is the service's own work: window, two appends).

Threads are picked Zipf-like (weight ``1 / rank``) over the pool, so some threads are
hot and written by both instances at once. Every request's latency is taken with
``perf_counter`` around the whole request (connection pool, send, full body read).
Non-2xx statuses are counted; any 5xx or transport error is an error. req/s is the
number of requests completed in the window divided by its length.

All of it shares the machine's cores: the two servers, the generator, PostgreSQL and
Redis. The CPU each used during each window is reported, from ``/proc``: each server,
the generator, all ``postgres`` processes, all ``redis-server`` processes, and "other" =
the machine's busy time (``/proc/stat``, both cores) minus those (anything else running,
and on a shared VM time the host gave to others), so the figures say where the cores
went. On a small machine the generator is a large share and the req/s are a floor for
the service, not a ceiling.

Freshness across instances, after the load: for a sample of threads, GET from both
instances must return the same version (read again for up to 1 s if not: ``bounded``
staleness is the invalidation bus's propagation time); then, per sampled thread, an
append through one instance followed at once by a GET through the other, reported as
how many reads saw the new version at once and the longest wait for it.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import accumulate
from pathlib import Path
from typing import Any, Final

import httpx
import orjson

from _redis import free_port, private_redis, redis_server_version
from _support import (
    EXIT_NO_POSTGRES,
    BenchmarkError,
    benchmark_parser,
    local_machine,
    machine_info,
    percentile,
    print_machine,
    print_table,
    run_benchmark,
    temporary_database,
)

OPERATIONS: Final = ("GET thread", "append", "turn")
FILLER: Final = (
    "The quick brown fox jumps over the lazy dog while the agent keeps the thread warm. "
)
CPU_COLUMNS: Final = ("a", "b", "generator", "postgres", "redis", "other", "machine")
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Plan:
    threads: int
    min_messages: int
    max_messages: int
    connections: int
    duration_s: float
    warmup_s: float
    freshness_sample: int


FULL: Final = Plan(
    threads=200,
    min_messages=20,
    max_messages=50,
    connections=8,
    duration_s=20.0,
    warmup_s=2.0,
    freshness_sample=40,
)
QUICK: Final = Plan(
    threads=20,
    min_messages=5,
    max_messages=10,
    connections=4,
    duration_s=1.0,
    warmup_s=0.3,
    freshness_sample=5,
)


def message(index: int) -> dict[str, str]:
    """A chat message of ~200 bytes, alternating user and assistant."""
    role = "user" if index % 2 == 0 else "assistant"
    return {"role": role, "content": f"#{index} " + (FILLER * 2)[:170]}


# -- servers ----------------------------------------------------------------------------


@dataclass(slots=True)
class Server:
    """One ``agent-core serve`` process."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_server(name: str, store_url: str, redis_url: str, directory: Path) -> Server:
    port = free_port()
    log = directory / f"{name}.log"
    command = [sys.executable, "-m", "agent_core.cli", "serve", "--port", str(port)]
    command += ["--store", store_url, "--redis", redis_url, "--model", "echo"]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    return Server(name, f"http://127.0.0.1:{port}", process, log)


async def wait_healthy(server: Server, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=server.url, timeout=2.0) as client:
        while True:
            if server.process.poll() is not None:
                raise BenchmarkError(
                    f"server {server.name} exited with {server.process.returncode}:\n"
                    f"{server.log_tail()}"
                )
            try:
                if (await client.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise BenchmarkError(f"server {server.name} did not answer /healthz")
            await asyncio.sleep(0.1)


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


# -- CPU accounting ---------------------------------------------------------------------


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (from /proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine, all cores (from /proc/stat)."""
    try:
        values = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except OSError:
        return 0.0
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / CLOCK_TICKS


def group_cpu_s(names: Sequence[str]) -> dict[str, float]:
    """CPU seconds of all processes whose command name is in ``names``, summed per name."""
    totals = dict.fromkeys(names, 0.0)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            comm = Path(entry.path, "comm").read_text().strip()
        except OSError:
            continue
        if comm in totals:
            totals[comm] += process_cpu_s(int(entry.name))
    return totals


@dataclass(slots=True)
class CpuMeter:
    """CPU used by the servers, this process, PostgreSQL, Redis and the machine in a window."""

    pids: dict[str, int]
    start: dict[str, float] = field(default_factory=dict)

    def _read(self) -> dict[str, float]:
        readings = {name: process_cpu_s(pid) for name, pid in self.pids.items()}
        readings["generator"] = process_cpu_s(os.getpid())
        groups = group_cpu_s(("postgres", "redis-server"))
        readings["postgres"], readings["redis"] = groups["postgres"], groups["redis-server"]
        readings["machine"] = machine_busy_s()
        return readings

    def begin(self) -> None:
        self.start = self._read()

    def end(self, wall_s: float) -> dict[str, float]:
        """Cores used on average (CPU seconds / wall seconds) per consumer, and "other"."""
        now = self._read()
        used = {name: (now[name] - self.start[name]) / wall_s for name in now}
        mine = sum(value for name, value in used.items() if name != "machine")
        used["other"] = max(0.0, used["machine"] - mine)
        return {name: round(value, 2) for name, value in used.items()}


# -- load -------------------------------------------------------------------------------


class Picker:
    """Zipf-like choice of a thread: weight ``1 / rank``."""

    def __init__(self, threads: Sequence[str], rng: random.Random) -> None:
        self.threads = list(threads)
        self.cumulative = list(accumulate(1.0 / rank for rank in range(1, len(threads) + 1)))
        self.rng = rng

    def __call__(self) -> str:
        point = self.rng.random() * self.cumulative[-1]
        return self.threads[bisect_left(self.cumulative, point)]


Request = Callable[[httpx.AsyncClient, str, int], Awaitable[httpx.Response]]


async def get_thread(client: httpx.AsyncClient, thread: str, _serial: int) -> httpx.Response:
    return await client.get(f"/v1/threads/{thread}")


async def append(client: httpx.AsyncClient, thread: str, serial: int) -> httpx.Response:
    body = orjson.dumps({"messages": [message(serial)]})
    return await client.post(
        f"/v1/threads/{thread}/messages",
        content=body,
        headers={"content-type": "application/json"},
    )


async def turn(client: httpx.AsyncClient, thread: str, serial: int) -> httpx.Response:
    body = orjson.dumps({"message": f"question {serial}: what did the fox do?"})
    return await client.post(
        f"/v1/threads/{thread}/turns", content=body, headers={"content-type": "application/json"}
    )


REQUESTS: Final[dict[str, Request]] = {"GET thread": get_thread, "append": append, "turn": turn}


@dataclass(slots=True)
class Window:
    latencies_ns: list[int] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    by_instance: Counter[str] = field(default_factory=Counter)
    first_error: str = ""


async def drive(
    clients: Sequence[httpx.AsyncClient],
    request: Request,
    picker: Picker,
    connections: int,
    duration_s: float,
    *,
    record: bool,
) -> tuple[Window, float]:
    """N closed-loop workers (worker i on instance i % 2) for ``duration_s``."""
    window = Window()
    serial = iter(range(1_000_000_000))
    deadline = time.perf_counter() + duration_s

    async def worker(index: int) -> None:
        client = clients[index % len(clients)]
        instance = "ab"[index % len(clients)]
        clock = time.perf_counter_ns
        while time.perf_counter() < deadline:
            thread = picker()
            started = clock()
            try:
                response = await request(client, thread, next(serial))
                status = str(response.status_code)
            except httpx.HTTPError as exc:
                status = "transport error"
                if not window.first_error:
                    window.first_error = repr(exc)
                response = None
            elapsed = clock() - started
            if not record:
                continue
            window.latencies_ns.append(elapsed)
            window.statuses[status] += 1
            window.by_instance[instance] += 1
            if response is not None and response.status_code >= 500 and not window.first_error:
                window.first_error = f"{status}: {response.text[:300]}"

    started = time.perf_counter()
    await asyncio.gather(*(worker(index) for index in range(connections)))
    return window, time.perf_counter() - started


def figures(window: Window, wall_s: float, cpu: dict[str, float]) -> dict[str, Any]:
    ordered = sorted(value / 1e6 for value in window.latencies_ns)
    count = len(ordered)
    ok = sum(n for status, n in window.statuses.items() if status.startswith("2"))
    errors = sum(
        n for status, n in window.statuses.items() if not status[0].isdigit() or status[0] == "5"
    )
    return {
        "requests": count,
        "wall_s": round(wall_s, 2),
        "req_per_s": round(count / wall_s, 1),
        "p50_ms": round(percentile(ordered, 0.50), 2) if ordered else None,
        "p95_ms": round(percentile(ordered, 0.95), 2) if ordered else None,
        "p99_ms": round(percentile(ordered, 0.99), 2) if ordered else None,
        "max_ms": round(ordered[-1], 2) if ordered else None,
        "ok_2xx": ok,
        "non_2xx": count - ok,
        "errors": errors,
        "statuses": dict(window.statuses),
        "by_instance": dict(window.by_instance),
        "first_error": window.first_error,
        "cpu_cores": cpu,
    }


# -- setup and freshness ------------------------------------------------------------------


async def prefill(
    client: httpx.AsyncClient, threads: Sequence[str], plan: Plan, rng: random.Random
) -> int:
    total = 0
    for thread in threads:
        size = rng.randint(plan.min_messages, plan.max_messages)
        body = orjson.dumps({"messages": [message(index) for index in range(size)]})
        response = await client.post(
            f"/v1/threads/{thread}/messages",
            content=body,
            headers={"content-type": "application/json"},
        )
        if response.status_code != 201:
            raise BenchmarkError(f"prefill of {thread}: {response.status_code} {response.text}")
        total += size
    return total


async def version(client: httpx.AsyncClient, thread: str) -> int:
    response = await client.get(f"/v1/threads/{thread}")
    response.raise_for_status()
    value: int = response.json()["version"]
    return value


async def freshness(
    clients: Sequence[httpx.AsyncClient], threads: Sequence[str], settle_s: float = 1.0
) -> dict[str, Any]:
    """Same version from both instances after the load; write-on-one, read-on-other lag."""
    same_at_once = 0
    still_different: list[str] = []
    for thread in threads:
        deadline = time.perf_counter() + settle_s
        first = True
        while True:
            a, b = await version(clients[0], thread), await version(clients[1], thread)
            if a == b:
                same_at_once += first
                break
            first = False
            if time.perf_counter() > deadline:
                still_different.append(f"{thread}: {a} != {b}")
                break
            await asyncio.sleep(0.01)
    fresh_at_once = 0
    lags_ms: list[float] = []
    stale_after_settle = 0
    for index, thread in enumerate(threads):
        writer, reader = clients[index % 2], clients[(index + 1) % 2]
        response = await append(writer, thread, 10**9 + index)
        response.raise_for_status()
        written: int = response.json()["version"]
        started = time.perf_counter()
        seen = await version(reader, thread)
        if seen >= written:
            fresh_at_once += 1
            continue
        while seen < written and time.perf_counter() - started < settle_s:
            await asyncio.sleep(0.002)
            seen = await version(reader, thread)
        if seen < written:
            stale_after_settle += 1
        else:
            lags_ms.append((time.perf_counter() - started) * 1000)
    return {
        "sampled": len(threads),
        "same_version_at_once": same_at_once,
        "different_after_settle": still_different,
        "write_then_other_read_fresh_at_once": fresh_at_once,
        "write_then_other_read_max_lag_ms": round(max(lags_ms), 1) if lags_ms else 0.0,
        "write_then_other_read_stale_after_settle": stale_after_settle,
        "settle_s": settle_s,
    }


# -- report -------------------------------------------------------------------------------


def report(document: dict[str, Any]) -> None:
    plan = document["plan"]
    rows = []
    for operation in OPERATIONS:
        cell = document["operations"][operation]
        statuses = ", ".join(f"{k}: {v:,}" for k, v in sorted(cell["statuses"].items()))
        rows.append(
            [
                operation,
                f"{cell['requests']:,}",
                f"{cell['req_per_s']:,.0f}",
                f"{cell['p50_ms']:.1f}",
                f"{cell['p95_ms']:.1f}",
                f"{cell['p99_ms']:.1f}",
                f"{cell['max_ms']:.1f}",
                f"{cell['non_2xx']:,}",
                f"{cell['errors']:,}",
                statuses,
            ]
        )
    print_table(
        f"HTTP load, 2 instances, {plan['connections']} connections, "
        f"{plan['duration_s']:g} s per operation, ms",
        [
            "operation",
            "requests",
            "req/s",
            "p50",
            "p95",
            "p99",
            "max",
            "non-2xx",
            "errors",
            "statuses",
        ],
        rows,
    )
    cpu_rows = []
    for operation in OPERATIONS:
        cpu = document["operations"][operation]["cpu_cores"]
        cpu_rows.append([operation] + [f"{cpu[name]:.2f}" for name in CPU_COLUMNS])
    print_table(
        f"CPU used during each window, cores (of {document['machine']['nproc']})",
        ["operation", "server a", "server b", "generator", "postgres", "redis", "other", "machine"],
        cpu_rows,
    )
    fresh = document["freshness"]
    print("Freshness across instances (after the load)")
    print(
        f"  same version from both: {fresh['same_version_at_once']}/{fresh['sampled']} at once, "
        f"{len(fresh['different_after_settle'])} still different after {fresh['settle_s']:g} s"
    )
    print(
        f"  append on one, GET on the other: "
        f"{fresh['write_then_other_read_fresh_at_once']}/{fresh['sampled']} fresh at once, "
        f"max wait {fresh['write_then_other_read_max_lag_ms']} ms, "
        f"{fresh['write_then_other_read_stale_after_settle']} stale after {fresh['settle_s']:g} s"
    )
    print()
    for operation in OPERATIONS:
        error = document["operations"][operation]["first_error"]
        if error:
            print(f"  first error in {operation}: {error}")


def summary_line(document: dict[str, Any]) -> str:
    cells = document["operations"]
    parts = [
        f"{op} {cells[op]['req_per_s']:,.0f} req/s p99 {cells[op]['p99_ms']:.1f} ms"
        for op in OPERATIONS
    ]
    errors = sum(cells[op]["errors"] for op in OPERATIONS)
    fresh = document["freshness"]
    return (
        "Summary: "
        + "; ".join(parts)
        + f"; {errors} errors (5xx/transport); versions agree on "
        + f"{fresh['sampled'] - len(fresh['different_after_settle'])}/{fresh['sampled']} threads"
    )


# -- run ----------------------------------------------------------------------------------


async def run(plan: Plan, postgres_url: str, mode: str) -> dict[str, Any]:
    redis_version = redis_server_version()
    rng = random.Random(6)
    async with temporary_database(postgres_url) as store_url:
        machine = await machine_info(store_url)
        extra = local_machine("httpx", "uvicorn", "fastapi", "uvloop", "httptools")
        machine.update((name, extra[name]) for name in ("httpx", "uvicorn", "fastapi"))
        machine.update((name, extra[name]) for name in ("uvloop", "httptools"))
        machine["redis_server"] = redis_version
        print_machine(machine)
        with private_redis() as redis_url, tempfile.TemporaryDirectory(prefix="ac-load-") as tmp:
            servers = [start_server(name, store_url, redis_url, Path(tmp)) for name in "ab"]
            try:
                document = await load(plan, servers, rng)
            except BaseException:
                for server in servers:
                    print(f"--- {server.name} log ---\n{server.log_tail()}", file=sys.stderr)
                raise
            finally:
                for server in servers:
                    stop_server(server)
    document = {
        "benchmark": "http_load",
        "mode": mode,
        "machine": machine,
        "plan": asdict(plan),
        **document,
    }
    report(document)
    print(summary_line(document))
    return document


async def load(plan: Plan, servers: Sequence[Server], rng: random.Random) -> dict[str, Any]:
    for server in servers:
        await wait_healthy(server)
    per_instance = max(1, plan.connections // len(servers))
    limits = httpx.Limits(max_connections=per_instance, max_keepalive_connections=per_instance)
    clients = [
        httpx.AsyncClient(base_url=server.url, timeout=30.0, limits=limits) for server in servers
    ]
    try:
        threads = [f"load-{index:04d}" for index in range(plan.threads)]
        started = time.perf_counter()
        messages = await prefill(clients[0], threads, plan, rng)
        for client in clients:
            for thread in threads:
                await version(client, thread)
        prefill_s = time.perf_counter() - started
        print(f"pre-filled {len(threads)} threads, {messages:,} messages in {prefill_s:.1f} s\n")
        picker = Picker(threads, rng)
        meter = CpuMeter({server.name: server.process.pid for server in servers})
        operations: dict[str, Any] = {}
        for operation in OPERATIONS:
            request = REQUESTS[operation]
            await drive(clients, request, picker, plan.connections, plan.warmup_s, record=False)
            meter.begin()
            window, wall_s = await drive(
                clients, request, picker, plan.connections, plan.duration_s, record=True
            )
            operations[operation] = figures(window, wall_s, meter.end(wall_s))
        sample = rng.sample(threads[:10], min(5, len(threads)))
        sample += rng.sample(threads, min(plan.freshness_sample, len(threads)))
        fresh = await freshness(clients, list(dict.fromkeys(sample)))
        for server in servers:
            if server.process.poll() is not None:
                raise BenchmarkError(f"server {server.name} died during the load")
    finally:
        for client in clients:
            await client.aclose()
    return {
        "pool": {"threads": len(threads), "messages": messages, "prefill_s": round(prefill_s, 1)},
        "generator": "this process: one asyncio loop, httpx.AsyncClient per instance",
        "operations": operations,
        "freshness": fresh,
    }


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, "a small pool, ~1 s per operation; a smoke run")
    parser.add_argument("--connections", type=int, help="concurrent connections, both instances")
    parser.add_argument("--duration", type=float, help="seconds of load per operation")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.connections:
        plan = replace(plan, connections=args.connections)
    if args.duration:
        plan = replace(plan, duration_s=args.duration)
    mode = "quick" if args.quick else "full"
    document = run_benchmark("http_load", run(plan, args.postgres_url, mode), args.json)
    if document is None:
        return EXIT_NO_POSTGRES
    return 0


if __name__ == "__main__":
    sys.exit(main())
