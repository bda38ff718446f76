"""Shared pieces of the benchmarks: a throwaway PostgreSQL database, machine info,
percentiles and plain-text tables.

Not a benchmark itself; ``store_latency.py`` and ``pg_drivers.py`` import it (each
script's own directory is on ``sys.path`` when it is run as a file).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import hashlib
import importlib.metadata
import json
import os
import platform
import random
import sqlite3
import statistics
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson

#: The server the benchmarks create their throwaway database on (the one the tests use).
DEFAULT_POSTGRES_URL: Final = os.environ.get(
    "AGENT_CORE_BENCH_POSTGRES_URL",
    os.environ.get("AGENT_CORE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
)
#: Exit status when PostgreSQL cannot be reached or the database cannot be created.
EXIT_NO_POSTGRES: Final = 3
#: The issue's target for p50(append on a 10,000-message thread) / p50(on a 10-message one).
APPEND_RATIO_GOAL: Final = 1.3


class BenchmarkError(Exception):
    """A benchmark cannot run (e.g. no PostgreSQL); the script exits non-zero."""


def message_payload(size: int = 200) -> bytes:
    """The encoded JSON of one user message of exactly ``size`` bytes."""
    head = len(orjson.dumps({"role": "user", "content": ""}))
    if size < head:
        raise ValueError(f"a message cannot be shorter than {head} bytes")
    filler = "The quick brown fox jumps over the lazy dog. "
    content = (filler * (size // len(filler) + 1))[: size - head]
    raw = orjson.dumps({"role": "user", "content": content})
    assert len(raw) == size, len(raw)
    return raw


# -- PostgreSQL -----------------------------------------------------------------------


def with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


async def _admin_connect(admin_url: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(admin_url, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise BenchmarkError(
            f"PostgreSQL is required by this benchmark and is not reachable at {admin_url}: "
            f"{exc!r}. Start it, or pass --postgres-url / set AGENT_CORE_BENCH_POSTGRES_URL."
        ) from exc


@asynccontextmanager
async def temporary_database(admin_url: str, prefix: str = "ac_bench") -> AsyncIterator[str]:
    """``CREATE DATABASE <prefix>_<random>``; yields its URL; ``DROP ... WITH (FORCE)`` after."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = await _admin_connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    except asyncpg.PostgresError as exc:
        await admin.close()
        raise BenchmarkError(f"cannot create database {name} at {admin_url}: {exc!r}") from exc
    await admin.close()
    try:
        yield with_database(admin_url, name)
    finally:
        admin = await _admin_connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def postgres_info(url: str) -> dict[str, str]:
    """Server version and the settings that decide commit latency."""
    connection = await _admin_connect(url)
    try:
        info = {"postgres_version": str(await connection.fetchval("SHOW server_version"))}
        for name in ("fsync", "synchronous_commit", "wal_sync_method", "shared_buffers", "jit"):
            value = await connection.fetchval("SELECT current_setting($1)", name)
            info[f"postgres_{name}"] = str(value)
    finally:
        await connection.close()
    return info


# -- machine ----------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _source_state(root: Path | None = None) -> str:
    """The commit measured, and a fingerprint of any uncommitted changes under src/.

    ``root``: the checkout (default: the one these benchmarks belong to).
    """
    root = root or Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout

    try:
        commit = git("rev-parse", "--short", "HEAD").strip()
        changed = git("status", "--porcelain", "--", "src").splitlines()
        if not changed:
            return commit
        digest = hashlib.sha1(git("diff", "HEAD", "--", "src").encode()).hexdigest()[:10]
        return f"{commit} + {len(changed)} uncommitted change(s) under src/ (diff {digest})"
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def local_machine(*distributions: str) -> dict[str, str]:
    """The machine and source, plus the versions of ``distributions``; no PostgreSQL."""
    info = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu_model": _cpu_model(),
        "ram": _ram(),
        "kernel": f"{platform.system()} {platform.release()}",
        "loadavg_at_start": " ".join(f"{load:.2f}" for load in os.getloadavg()),
        "python": sys.version.split()[0],
        "sqlite_version": sqlite3.sqlite_version,
        "source": _source_state(),
    }
    info.update((name, _version(name)) for name in distributions)
    return info


async def machine_info(postgres_url: str, *, temp_dir: str | None = None) -> dict[str, str]:
    info = local_machine("asyncpg", "psycopg")
    if temp_dir is not None:
        info["temp_dir"] = temp_dir
    info["temp_database"] = urlsplit(postgres_url).path.lstrip("/")
    info.update(await postgres_info(postgres_url))
    return info


def print_machine(info: dict[str, str]) -> None:
    print("Machine")
    width = max(len(key) for key in info)
    for key, value in info.items():
        print(f"  {key:<{width}}  {value}")
    print()


# -- statistics -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Summary:
    """Percentiles of one cell's samples, in microseconds."""

    samples: int
    p50_us: float
    p95_us: float
    min_us: float
    max_us: float


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Linear interpolation between closest ranks; ``ordered`` must be sorted."""
    if not ordered:
        raise ValueError("no samples")
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(samples_ns: Sequence[int]) -> Summary:
    ordered = sorted(value / 1000 for value in samples_ns)
    return Summary(
        samples=len(ordered),
        p50_us=round(percentile(ordered, 0.50), 1),
        p95_us=round(percentile(ordered, 0.95), 1),
        min_us=round(ordered[0], 1),
        max_us=round(ordered[-1], 1),
    )


def ratio_interval(
    numerator_ns: Sequence[int],
    denominator_ns: Sequence[int],
    *,
    rounds: int = 2000,
    seed: int = 1,
) -> tuple[float, float]:
    """95% bootstrap interval of median(numerator) / median(denominator)."""
    rng = random.Random(seed)
    ratios = sorted(
        statistics.median(rng.choices(numerator_ns, k=len(numerator_ns)))
        / statistics.median(rng.choices(denominator_ns, k=len(denominator_ns)))
        for _ in range(rounds)
    )
    return percentile(ratios, 0.025), percentile(ratios, 0.975)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Collect once, then keep the cyclic GC out of the timed loop."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# -- output -----------------------------------------------------------------------------


def print_table(
    title: str, header: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1
) -> None:
    """A titled table; the first ``left`` columns are left-aligned, the others right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    print(title)
    print("=" * len(title))

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            f"{cell:<{width}}" if index < left else f"{cell:>{width}}"
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    print(line(header))
    print("  ".join("-" * width for width in widths))
    for row in rows:
        print(line(row))
    print()


def write_json(path: str, document: dict[str, Any]) -> None:
    def default(value: object) -> object:
        if isinstance(value, Summary):
            return asdict(value)
        raise TypeError(f"cannot encode {type(value).__name__}")

    Path(path).write_text(json.dumps(document, indent=2, default=default) + "\n")
    print(f"figures written to {path}")


def us(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def benchmark_parser(
    doc: str | None, quick_help: str, *, default_store: str | None = None
) -> argparse.ArgumentParser:
    """The options every PostgreSQL-backed benchmark takes (and ``--store`` if it has one)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0] if doc else None)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    if default_store is not None:
        parser.add_argument("--store", choices=("sqlite", "postgres"), default=default_store)
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES_URL,
        help="server to create the throwaway database on (default: %(default)s)",
    )
    return parser


def run_benchmark(
    name: str, work: Coroutine[Any, Any, dict[str, Any]], json_path: str | None
) -> dict[str, Any] | None:
    """Run ``work``; write its figures to ``json_path``. None (said on stderr) if it failed."""
    try:
        document = asyncio.run(work)
    except BenchmarkError as exc:
        print(f"{name}: FAILED: {exc}", file=sys.stderr)
        return None
    if json_path:
        write_json(json_path, document)
    return document
