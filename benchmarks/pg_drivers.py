"""PostgreSQL driver choice: asyncpg against psycopg 3 on the store's own SQL.

    python benchmarks/pg_drivers.py [--quick] [--json FILE] [--postgres-url URL]

A throwaway ``ac_bench_<random>`` database gets the store's schema by opening a
``PostgresStore`` once. Then each driver runs the very statements the store runs,
``_postgres_schema.APPEND`` (the ``agent_core.append(...)`` function) and
``_postgres_schema.READ``, through a pool of the same size:

* ``asyncpg``: ``asyncpg.create_pool`` configured as ``PostgresStore`` configures it
  (the ``json`` codec in binary format with identity encoder/decoder, so payloads are
  bytes both ways; ``reset=`` a no-op, since the store leaves no session state).
* ``asyncpg-reset``: the same with asyncpg's default reset on release, to show what
  that query (``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``,
  one extra round trip on every release) costs.
* ``psycopg``: ``psycopg_pool.AsyncConnectionPool`` of ``AsyncConnection`` with
  ``autocommit=True`` (asyncpg runs each statement in its own implicit transaction;
  without autocommit the pool would add a ``COMMIT`` round trip) and
  ``prepare_threshold=0`` (prepare on first use, as asyncpg's statement cache does).
  ``$n`` placeholders become ``%s`` with the arguments reordered to match; results
  are fetched in binary format, as asyncpg does. Payloads out: a Dumper for
  ``bytes`` with the ``json`` oid whose ``dump`` returns the bytes as they are
  (registered for text and binary, binary last, so ``%s`` picks binary and a
  ``list`` of them goes as ``json[]``). Payloads in: psycopg's own
  ``ByteaBinaryLoader`` registered for ``json``: in binary format a ``json`` value is
  its UTF-8 text, which that loader (C-accelerated by psycopg-binary) hands back as
  ``bytes``. So neither driver encodes or decodes JSON in Python. (A store would
  pass the ``bytea`` digest as a ``memoryview``, which psycopg still dumps as
  ``bytea``; it is NULL here.)
* ``psycopg-pyloader``: the same, but with a pure-Python ``Loader`` subclass for
  ``json`` that returns ``bytes(data)`` -- the textbook custom Loader -- to show how
  much the per-value Python call costs.

Measured: latency of one append of one ~200-byte message onto a ~1,000-message
thread, and of reading whole threads of 100 and 1,000 messages (p50/p95, every
round visits each (driver, operation) cell once in shuffled order); and throughput of
16 concurrent tasks each appending onto its own thread, drivers taking turns.
If PostgreSQL cannot be reached the script fails (exit status 3).
"""

from __future__ import annotations

import asyncio
import random
import re
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final, Protocol

import asyncpg
import psycopg
from psycopg.abc import Buffer
from psycopg.adapt import Dumper, Loader
from psycopg.pq import Format
from psycopg.types.string import ByteaBinaryLoader
from psycopg_pool import AsyncConnectionPool

from _support import (
    EXIT_NO_POSTGRES,
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
from agent_core.store import PostgresStore
from agent_core.store import _postgres_schema as sql

NAMESPACE: Final = "bench"
POOL_SIZE: Final = 10
PAYLOAD_BYTES: Final = 200
JSON_OID: Final = psycopg.postgres.types["json"].oid


@dataclass(frozen=True, slots=True)
class Plan:
    append_thread_size: int
    read_sizes: tuple[int, ...]
    samples: int
    warmup: int
    concurrency: int
    throughput_ops: int
    throughput_rounds: int


FULL: Final = Plan(1_000, (100, 1_000), 500, 50, 16, 1_600, 5)
QUICK: Final = Plan(1_000, (100, 1_000), 20, 10, 16, 160, 1)

#: The shape ``PostgresStore.read`` returns: version, then (seq, payload) pairs.
ReadResult = tuple[int, list[tuple[int, bytes]]]


class Driver(Protocol):
    name: str

    async def append(self, thread_id: str, payloads: list[bytes]) -> tuple[int, bool]: ...

    async def read(self, thread_id: str) -> ReadResult: ...

    async def close(self) -> None: ...


# -- asyncpg --------------------------------------------------------------------------


async def _asyncpg_init(connection: asyncpg.Connection) -> None:
    # As PostgresStore: in binary format a json value is its UTF-8 text, bytes both ways.
    await connection.set_type_codec(
        "json", schema="pg_catalog", encoder=_same, decoder=_same, format="binary"
    )


def _same(value: bytes) -> bytes:
    return value


async def _no_reset(connection: asyncpg.Connection) -> None:
    return None


class AsyncpgDriver:
    def __init__(self, name: str, pool: asyncpg.Pool) -> None:
        self.name = name
        self._pool = pool

    @classmethod
    async def create(cls, url: str, *, reset: bool) -> AsyncpgDriver:
        pool = await asyncpg.create_pool(
            url,
            min_size=POOL_SIZE,
            max_size=POOL_SIZE,
            command_timeout=30.0,
            init=_asyncpg_init,
            reset=None if reset else _no_reset,
        )
        return cls("asyncpg-reset" if reset else "asyncpg", pool)

    async def append(self, thread_id: str, payloads: list[bytes]) -> tuple[int, bool]:
        async with self._pool.acquire() as connection:
            row = await connection.fetchrow(
                sql.APPEND, NAMESPACE, thread_id, payloads, None, None, None, None, KEY_TTL, None
            )
        assert row is not None
        return row[0], row[1]

    async def read(self, thread_id: str) -> ReadResult:
        async with self._pool.acquire() as connection:
            rows = await connection.fetch(sql.READ, NAMESPACE, thread_id, 0)
        return rows[0][0], [(row[1], row[2]) for row in rows]

    async def close(self) -> None:
        await self._pool.close()


# -- psycopg --------------------------------------------------------------------------


class JsonBytesDumper(Dumper):
    """``bytes`` that already are JSON text go out as ``json``, untouched."""

    oid = JSON_OID

    def dump(self, obj: Any) -> Buffer | None:
        assert isinstance(obj, bytes)
        return obj


class JsonBytesBinaryDumper(JsonBytesDumper):
    format = Format.BINARY


class JsonBytesLoader(Loader):
    """``json`` comes back as its bytes, not parsed."""

    def load(self, data: Buffer) -> bytes:
        return bytes(data)


class JsonBytesBinaryLoader(JsonBytesLoader):
    format = Format.BINARY


async def _psycopg_configure(connection: psycopg.AsyncConnection[Any]) -> None:
    adapters = connection.adapters
    adapters.register_dumper(bytes, JsonBytesDumper)
    adapters.register_dumper(bytes, JsonBytesBinaryDumper)  # last: what %s uses
    adapters.register_loader("json", JsonBytesLoader)
    # psycopg swaps in its C ByteaBinaryLoader, which returns the value as bytes.
    adapters.register_loader("json", ByteaBinaryLoader)


async def _psycopg_configure_pyloader(connection: psycopg.AsyncConnection[Any]) -> None:
    await _psycopg_configure(connection)
    connection.adapters.register_loader("json", JsonBytesBinaryLoader)


def to_pyformat(statement: str) -> tuple[str, tuple[int, ...]]:
    """``$n`` placeholders to ``%s``, with the 0-based argument index for each one."""
    order: list[int] = []

    def placeholder(match: re.Match[str]) -> str:
        order.append(int(match.group(1)) - 1)
        return "%s"

    text = re.sub(r"\$(\d+)", placeholder, statement.replace("%", "%%"))
    return text, tuple(order)


APPEND_PY, APPEND_ORDER = to_pyformat(sql.APPEND)
#: append's eighth argument, the idempotency keys' TTL (no key is sent here); the ninth,
#: the thread's retention, is None (threads never expire).
KEY_TTL: Final = 86_400.0
READ_PY, READ_ORDER = to_pyformat(sql.READ)
assert APPEND_ORDER == (0, 1, 2, 3, 4, 5, 6, 7, 8), APPEND_ORDER


class PsycopgDriver:
    def __init__(self, name: str, pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]]) -> None:
        self.name = name
        self._pool = pool

    @classmethod
    async def create(cls, url: str, *, python_loader: bool) -> PsycopgDriver:
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            url,
            min_size=POOL_SIZE,
            max_size=POOL_SIZE,
            open=False,
            kwargs={"autocommit": True, "prepare_threshold": 0},
            configure=_psycopg_configure_pyloader if python_loader else _psycopg_configure,
        )
        await pool.open(wait=True, timeout=30.0)
        return cls("psycopg-pyloader" if python_loader else "psycopg", pool)

    async def append(self, thread_id: str, payloads: list[bytes]) -> tuple[int, bool]:
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                APPEND_PY,
                (NAMESPACE, thread_id, payloads, None, None, None, None, KEY_TTL, None),
                binary=True,
            )
            row = await cursor.fetchone()
        assert row is not None
        return row[0], row[1]

    async def read(self, thread_id: str) -> ReadResult:
        arguments = (NAMESPACE, thread_id, 0)
        async with self._pool.connection() as connection:
            cursor = await connection.execute(
                READ_PY, tuple(arguments[i] for i in READ_ORDER), binary=True
            )
            rows = await cursor.fetchall()
        return rows[0][0], [(row[1], row[2]) for row in rows]

    async def close(self) -> None:
        await self._pool.close()


# -- measurement ----------------------------------------------------------------------


async def check_round_trip(drivers: Sequence[Driver], payload: bytes) -> None:
    """Each driver's writes read back byte for byte through every other driver."""
    for writer in drivers:
        thread_id = f"check-{writer.name}"
        odd = b'{"role":"user","content":"caf\\u00e9 \xe2\x82\xac \\"q\\" {x,y}"}'
        await writer.append(thread_id, [payload, odd])
        for reader in drivers:
            version, rows = await reader.read(thread_id)
            if version != 2 or [p for _, p in rows] != [payload, odd]:
                raise RuntimeError(f"{writer.name} -> {reader.name}: got {version} {rows!r}")
            if not all(type(p) is bytes for _, p in rows):
                raise RuntimeError(f"{reader.name} returned {type(rows[0][1])}, not bytes")


Operation = Callable[[Driver], Awaitable[object]]


async def measure_latency(
    drivers: Sequence[Driver], plan: Plan, payload: bytes, rng: random.Random
) -> dict[tuple[str, str], list[int]]:
    def reader(size: int) -> Operation:
        return lambda driver: driver.read(f"read-{size}")

    operations: dict[str, Operation] = {
        "append": lambda driver: driver.append(f"append-{driver.name}", [payload]),
        **{f"read {size}": reader(size) for size in plan.read_sizes},
    }
    cells = [(driver, operation) for driver in drivers for operation in operations]
    for _ in range(plan.warmup):
        for driver, operation in cells:
            await operations[operation](driver)
    samples: dict[tuple[str, str], list[int]] = {(d.name, o): [] for d, o in cells}
    clock = time.perf_counter_ns
    with gc_paused():
        for _ in range(plan.samples):
            rng.shuffle(cells)
            for driver, operation in cells:
                call = operations[operation]
                started = clock()
                await call(driver)
                samples[driver.name, operation].append(clock() - started)
    return samples


async def measure_throughput(
    drivers: Sequence[Driver], plan: Plan, payload: bytes, rng: random.Random
) -> dict[str, list[float]]:
    """Appends per second with ``concurrency`` tasks, each on its own thread."""
    per_task = plan.throughput_ops // plan.concurrency
    results: dict[str, list[float]] = {driver.name: [] for driver in drivers}

    async def worker(driver: Driver, thread_id: str) -> None:
        batch = [payload]
        for _ in range(per_task):
            await driver.append(thread_id, batch)

    order = list(drivers)
    for round_number in range(plan.throughput_rounds + 1):
        rng.shuffle(order)
        for driver in order:
            with gc_paused():
                started = time.perf_counter()
                await asyncio.gather(
                    *(
                        worker(driver, f"tp-{driver.name}-{task}")
                        for task in range(plan.concurrency)
                    )
                )
                elapsed = time.perf_counter() - started
            if round_number > 0:  # round 0 warms up the pools under concurrency
                results[driver.name].append(per_task * plan.concurrency / elapsed)
    return results


async def run(plan: Plan, admin_url: str, mode: str) -> dict[str, Any]:
    payload = message_payload(PAYLOAD_BYTES)
    rng = random.Random(3)
    async with temporary_database(admin_url) as url:
        machine = await machine_info(url)
        print_machine(machine)
        store = PostgresStore(url)
        await store.open()  # creates the schema
        try:
            for size in plan.read_sizes:
                for start in range(0, size, 1000):
                    count = min(1000, size - start)
                    await store.append(NAMESPACE, f"read-{size}", [payload] * count)
        finally:
            await store.close()

        drivers: list[Driver] = []
        try:
            drivers.append(await AsyncpgDriver.create(url, reset=False))
            drivers.append(await AsyncpgDriver.create(url, reset=True))
            drivers.append(await PsycopgDriver.create(url, python_loader=False))
            drivers.append(await PsycopgDriver.create(url, python_loader=True))
            await check_round_trip(drivers, payload)
            for driver in drivers:
                await driver.append(f"append-{driver.name}", [payload] * plan.append_thread_size)
            started = time.perf_counter()
            latency = await measure_latency(drivers, plan, payload, rng)
            throughput = await measure_throughput(drivers, plan, payload, rng)
            elapsed = time.perf_counter() - started
        finally:
            for driver in drivers:
                await driver.close()

    names = [driver.name for driver in drivers]
    operations = ["append", *(f"read {size}" for size in plan.read_sizes)]
    summaries = {cell: summarize(values) for cell, values in latency.items()}
    labels = {
        "append": f"append 1 msg (thread ~{plan.append_thread_size:,})",
        **{f"read {size}": f"read {size:,} msgs" for size in plan.read_sizes},
    }

    def ratio(name: str, operation: str, baseline: str = "asyncpg") -> float:
        return statistics.median(latency[name, operation]) / statistics.median(
            latency[baseline, operation]
        )

    def interval(operation: str, baseline: str) -> tuple[float, float]:
        return ratio_interval(latency["psycopg", operation], latency[baseline, operation])

    def with_interval(operation: str, baseline: str) -> str:
        low, high = interval(operation, baseline)
        return f"{ratio('psycopg', operation, baseline):.2f} [{low:.2f}-{high:.2f}]"

    print_table(
        f"Driver latency, µs ({plan.samples:,} samples per cell, cells interleaved; "
        f"pools of {POOL_SIZE})",
        ["operation", "driver", "p50", "p95", "p50 / asyncpg p50"],
        [
            [
                labels[operation] if index == 0 else "",
                name,
                us(summaries[name, operation].p50_us),
                us(summaries[name, operation].p95_us),
                f"{ratio(name, operation):.2f}",
            ]
            for operation in operations
            for index, name in enumerate(names)
        ],
        left=2,
    )
    print_table(
        "Ratio psycopg / asyncpg, p50 latency (above 1: psycopg is slower; "
        "95% bootstrap interval in brackets)",
        ["operation", "vs asyncpg (as in the store)", "vs asyncpg-reset"],
        [
            [
                labels[operation],
                with_interval(operation, "asyncpg"),
                with_interval(operation, "asyncpg-reset"),
            ]
            for operation in operations
        ],
    )
    medians = {name: statistics.median(values) for name, values in throughput.items()}
    print_table(
        f"Concurrent throughput, appends/s ({plan.concurrency} tasks, "
        f"{plan.throughput_ops // plan.concurrency * plan.concurrency:,} appends per run, "
        f"median of {plan.throughput_rounds} run(s); higher is better)",
        ["driver", "median", "min", "max", "median / asyncpg"],
        [
            [
                name,
                f"{medians[name]:,.0f}",
                f"{min(throughput[name]):,.0f}",
                f"{max(throughput[name]):,.0f}",
                f"{medians[name] / medians['asyncpg']:.2f}",
            ]
            for name in names
        ],
    )
    print("'asyncpg' is the pool exactly as PostgresStore configures it.")
    print(f"measured in {elapsed:.1f} s")

    return {
        "benchmark": "pg_drivers",
        "mode": mode,
        "machine": machine,
        "plan": asdict(plan) | {"pool_size": POOL_SIZE, "payload_bytes": PAYLOAD_BYTES},
        "latency": {
            name: {operation: asdict(summaries[name, operation]) for operation in operations}
            for name in names
        },
        "latency_ratio_p50_psycopg_over": {
            baseline: {
                operation: {
                    "ratio": round(ratio("psycopg", operation, baseline), 3),
                    "interval_95": [round(bound, 3) for bound in interval(operation, baseline)],
                }
                for operation in operations
            }
            for baseline in ("asyncpg", "asyncpg-reset")
        },
        "throughput_appends_per_s": {
            name: {"median": round(medians[name]), "runs": [round(v) for v in throughput[name]]}
            for name in names
        },
        "elapsed_s": round(elapsed, 2),
    }


def main(argv: list[str] | None = None) -> int:
    args = benchmark_parser(__doc__, "few samples; a smoke run").parse_args(argv)
    mode = "quick" if args.quick else "full"
    plan = QUICK if args.quick else FULL
    document = run_benchmark("pg_drivers", run(plan, args.postgres_url, mode), args.json)
    if document is None:
        return EXIT_NO_POSTGRES
    return 0


if __name__ == "__main__":
    sys.exit(main())
