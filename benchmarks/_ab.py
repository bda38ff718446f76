"""Two source trees measured side by side: child processes, interleaved rounds, ratios.

Not a benchmark itself; ``strong_reads.py`` and ``hot_path_ab.py`` import it. A
benchmark script runs itself as a child (``--child CONFIG``) once per tree, with
``PYTHONPATH`` set to that tree's src, so each child imports its own ``agent_core``.
The parent starts a fresh pair of children per *generation* and asks them for rounds
in the order old, new, new, old (new, old, old, new in every other generation, which also
starts the new child first): drift on the machine, and whatever makes one process
faster than another (an A/A run put one of two long-lived processes 5-15 % ahead in
every cell), spreads over both trees. Ratios come with a 95 % bootstrap interval and
the range of the per-pair ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import orjson

from _redis import private_redis, redis_server_version
from _support import (
    BenchmarkError,
    _source_state,
    _version,
    machine_info,
    percentile,
    print_machine,
    ratio_interval,
    temporary_database,
)

TREES: Final = ("old", "new")
STREAM_LIMIT: Final = 64 << 20


@dataclass(frozen=True, slots=True)
class Plan:
    #: Pairs of child processes, one per tree, each pair started afresh.
    generations: int
    #: Rounds each child runs.
    rounds: int
    samples_per_round: int
    warmup: int

    @property
    def samples(self) -> int:
        return self.generations * self.rounds * self.samples_per_round


@dataclass(slots=True)
class Record:
    """One tree's figures for one cell: of one round in the child, of all in the parent."""

    ns: list[int] = field(default_factory=list)
    stale: int = 0
    served: Counter[str] = field(default_factory=Counter)
    left_out: int = 0
    #: Per read sample: the store version queries it made (empty if the tree does not
    #: count them).
    queries: list[int] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it turns a Counter's items into keys.
        return {
            "ns": self.ns,
            "stale": self.stale,
            "served": dict(self.served),
            "left_out": self.left_out,
            "queries": self.queries,
        }

    def add(self, record: dict[str, Any]) -> None:
        """Add a round's figures (``as_json`` of the child's record)."""
        self.ns.extend(record["ns"])
        self.stale += record["stale"]
        self.served.update(record["served"])
        self.left_out += record["left_out"]
        self.queries.extend(record["queries"])

    def summary(self) -> dict[str, Any]:
        ordered = sorted(value / 1000 for value in self.ns)
        reads = sum(self.served.values())
        return {
            "samples": len(ordered),
            "p50_us": round(percentile(ordered, 0.5), 1),
            "p99_us": round(percentile(ordered, 0.99), 1),
            "min_us": round(ordered[0], 1),
            "max_us": round(ordered[-1], 1),
            "stale": self.stale,
            "served": dict(self.served),
            "left_out": self.left_out,
            "version_queries_per_read": (
                round(sum(self.queries) / reads, 2) if self.queries and reads else None
            ),
            "by_queries": self.by_queries(),
        }

    def by_queries(self) -> dict[str, dict[str, float]]:
        """The reads split by how many store version queries they made: count and p50."""
        if len(self.queries) != len(self.ns):
            return {}
        split: dict[int, list[float]] = {}
        for queries, ns in zip(self.queries, self.ns, strict=True):
            split.setdefault(queries, []).append(ns / 1000)
        return {
            str(queries): {
                "reads": len(values),
                "p50_us": round(percentile(sorted(values), 0.5), 1),
            }
            for queries, values in sorted(split.items())
        }


@dataclass(slots=True)
class Results:
    """Every tree's figures per cell, over all generations and in each one."""

    cells: dict[str, dict[str, Record]] = field(default_factory=dict)
    generations: list[dict[str, dict[str, Record]]] = field(default_factory=list)
    probes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, generation: int, tree: str, document: dict[str, Any]) -> None:
        while len(self.generations) <= generation:
            self.generations.append({})
        for name, record in document.get("cells", {}).items():
            for cells in (self.cells, self.generations[generation]):
                cells.setdefault(name, {}).setdefault(tree, Record()).add(record)
        for cell, probe in document.get("probes", {}).items():
            self.probes.setdefault(f"{tree}/{cell}", []).append(probe)


class TreeBench(Protocol):
    """What a child runs: set up once, then rounds, then a last report."""

    async def setup(self) -> None: ...

    async def round(self, samples: int) -> dict[str, Any]: ...

    async def finish(self) -> dict[str, Any]: ...


def imported_from(config: dict[str, Any]) -> str:
    """Where ``agent_core`` came from: the child's tree, or it stops."""
    import agent_core

    module = Path(agent_core.__file__).resolve()
    if not module.is_relative_to(Path(config["src"]).resolve()):
        raise SystemExit(f"{config['tree']} child: imported {module}, not from {config['src']}")
    return str(module)


async def serve_child(
    config: dict[str, Any], bench: TreeBench, warmup: Callable[[], Awaitable[object]]
) -> None:
    """Serve the parent's commands (one JSON line each) until ``finish``."""
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader(limit=STREAM_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)

    def reply(document: dict[str, Any]) -> None:
        sys.stdout.buffer.write(orjson.dumps(document) + b"\n")
        sys.stdout.buffer.flush()

    await bench.setup()
    await warmup()
    reply({"ready": True, "agent_core": imported_from(config)})
    while line := await commands.readline():
        command = orjson.loads(line)
        if command["op"] == "finish":
            reply(await bench.finish())
            break
        reply(await bench.round(command["samples"]))


class Child:
    """One tree's child process, driven by JSON lines."""

    def __init__(self, tree: str, process: asyncio.subprocess.Process) -> None:
        self.tree = tree
        self._process = process

    @classmethod
    async def start(cls, script: Path, tree: str, config: dict[str, Any]) -> Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            "--child",
            orjson.dumps(config).decode(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": config["src"]},
            limit=STREAM_LIMIT,
        )
        return cls(tree, process)

    async def receive(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = await self._process.stdout.readline()
        if not line:
            code = await self._process.wait()
            raise BenchmarkError(f"the {self.tree} child exited with {code} (its stderr is above)")
        document: dict[str, Any] = orjson.loads(line)
        return document

    async def request(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self._process.stdin is not None
        self._process.stdin.write(orjson.dumps(command) + b"\n")
        await self._process.stdin.drain()
        return await self.receive()

    async def stop(self) -> None:
        if self._process.returncode is None:
            self._process.kill()
        await self._process.wait()


def round_order(trees: list[str], rounds: int) -> list[str]:
    """Each tree ``rounds`` times: pairs of rounds, every other pair in reverse order."""
    order: list[str] = []
    for index in range(rounds):
        order += trees if index % 2 == 0 else trees[::-1]
    return order


async def run_generation(
    script: Path,
    generation: int,
    configs: dict[str, dict[str, Any]],
    rounds: int,
    samples_per_round: int,
    results: Results,
) -> None:
    """One child per tree, started together (untimed); then they take turns, round by
    round. Every other generation starts (and runs first) the trees in reverse order."""
    children: dict[str, Child] = {}
    order = list(configs.items())
    try:
        for tree, config in order if generation % 2 == 0 else order[::-1]:
            config = {**config, "generation": generation, "seed": 1000 * generation + len(children)}
            children[tree] = await Child.start(script, tree, config)
        for child_process in children.values():
            await child_process.receive()
        command = {"op": "round", "samples": samples_per_round}
        for tree in round_order(list(children), rounds):
            results.add(generation, tree, await children[tree].request(command))
        for tree, child_process in children.items():
            results.add(generation, tree, await child_process.request({"op": "finish"}))
    finally:
        for child_process in children.values():
            await child_process.stop()


async def measure_trees(
    script: Path, postgres_url: str, plan: Plan, sources: dict[str, Path]
) -> tuple[Results, dict[str, str], float]:
    """Every generation of ``script``'s children, one per tree: their results, the machine
    and the seconds it took. Each tree has its own SQLite file and throwaway PostgreSQL
    database, and all share one private redis-server; a child's config names them
    (``stores``, ``redis``) and its ``generation`` (for namespaces of its own)."""
    trees = list(sources)
    results = Results()
    with private_redis() as redis_url, tempfile.TemporaryDirectory(prefix="ac-bench-") as tmp:
        async with AsyncExitStack() as stack:
            databases = {
                tree: await stack.enter_async_context(temporary_database(postgres_url))
                for tree in trees
            }
            machine = await machine_info(databases[trees[-1]], temp_dir=tmp)
            machine["temp_databases"] = " ".join(
                url.rsplit("/", 1)[1] for url in databases.values()
            )
            machine["redis_server"] = redis_server_version()
            machine["redis_py"] = _version("redis")
            for tree, src in sources.items():
                machine[f"{tree}_tree"] = f"{src} ({_source_state(src.parent)})"
            print_machine(machine)
            configs = {
                tree: {
                    "tree": tree,
                    "src": str(src),
                    "redis": redis_url,
                    "stores": {"sqlite": f"sqlite:///{tmp}/{tree}.db", "postgres": databases[tree]},
                    "warmup": plan.warmup,
                }
                for tree, src in sources.items()
            }
            started = time.perf_counter()
            for generation in range(plan.generations):
                await run_generation(
                    script, generation, configs, plan.rounds, plan.samples_per_round, results
                )
            elapsed = time.perf_counter() - started
    machine["loadavg_at_end"] = " ".join(f"{load:.2f}" for load in os.getloadavg())
    return results, machine, elapsed


def add_tree_arguments(
    parser: argparse.ArgumentParser, default_baseline: Path, default_candidate: Path
) -> None:
    parser.add_argument(
        "--baseline-src",
        help=f"src of the tree before the change (default: {default_baseline}, if it exists)",
    )
    parser.add_argument(
        "--candidate-src",
        default=str(default_candidate),
        help="src of the tree measured against it (default: %(default)s)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)


def tree_sources(
    args: argparse.Namespace, default_baseline: Path
) -> tuple[dict[str, Path], str | None]:
    """The src directory of each tree measured, and why the baseline is skipped (if it is).

    ValueError if a tree that must be measured is missing.
    """
    candidate = Path(args.candidate_src)
    if not (candidate / "agent_core").is_dir():
        raise ValueError(f"--candidate-src {candidate} holds no agent_core package")
    baseline = Path(args.baseline_src) if args.baseline_src else default_baseline
    if (baseline / "agent_core").is_dir():
        return {"old": baseline, "new": candidate}, None
    reason = f"baseline skipped: {baseline} holds no agent_core package"
    if not args.quick:
        raise ValueError(
            f"{baseline} holds no agent_core package; pass --baseline-src (only --quick "
            "may run without a baseline)"
        )
    return {"new": candidate}, reason


def p50_ratio(old: Record, new: Record) -> float:
    return percentile(sorted(new.ns), 0.5) / percentile(sorted(old.ns), 0.5)


def ratio_cell(results: Results, name: str) -> tuple[list[str], dict[str, Any]]:
    """p50 new / old with its 95 % bootstrap interval, and the range of the ratios of the
    separate process pairs (which the bootstrap, drawing samples alone, does not see)."""
    old, new = results.cells[name]["old"], results.cells[name]["new"]
    low, high = ratio_interval(new.ns, old.ns, rounds=500)
    pairs = [p50_ratio(cells[name]["old"], cells[name]["new"]) for cells in results.generations]
    texts = [
        f"{p50_ratio(old, new):.2f} ({low:.2f}-{high:.2f})",
        f"{min(pairs):.2f}-{max(pairs):.2f}",
    ]
    return texts, {
        "p50": round(p50_ratio(old, new), 3),
        "ci95_low": round(low, 3),
        "ci95_high": round(high, 3),
        "per_process_pair": [round(ratio, 3) for ratio in pairs],
    }
