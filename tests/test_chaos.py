"""benchmarks/chaos.py --quick: every promise of agent-core holds under faults.

One quick run of the fault harness (about 40 s: Redis killed and paused, a partition,
PostgreSQL backends terminated, SQLite workers killed with -9; see the script) is
shared by the tests below, one test per promise, so a failure names the promise.
The harness needs redis-server on PATH and PostgreSQL (AGENT_CORE_BENCH_POSTGRES_URL,
else AGENT_CORE_TEST_POSTGRES_URL, else the local server); nothing skips.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from .test_benchmarks_smoke import BENCHMARKS, database_exists, run_benchmark

# The harness runs in a subprocess (a module-scoped fixture) over PostgreSQL and redis-servers.
pytestmark = pytest.mark.integration

Figures = dict[str, Any]


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Figures:
    figures = tmp_path_factory.mktemp("chaos") / "chaos.json"
    result = run_benchmark("chaos.py", "--quick", "--json", str(figures), timeout=240)
    # 0: every promise held; 1: one failed (the tests below say which); else it broke.
    assert result.returncode in (0, 1), (
        f"chaos.py --quick exited {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )
    document: Figures = json.loads(figures.read_text(encoding="utf-8"))
    document["stdout"] = result.stdout
    return document


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def each_mode(document: Figures) -> list[tuple[str, str, Figures]]:
    return [
        (f"{run['scenario']} / {run['store']}", mode, figures)
        for run in document["runs"]
        for mode, figures in run["modes"].items()
    ]


def test_every_scenario_ran_with_its_faults(chaos: Figures) -> None:
    runs = {run["scenario"]: run for run in chaos["runs"]}
    assert set(runs) == {"redis", "partition", "pg-terminate", "sqlite-kill"}
    assert runs["redis"]["faults"] == {"redis SIGKILL + restart": 2, "redis SIGSTOP 1 s": 1}
    assert runs["partition"]["faults"] == {"partition (cut) 0.8 s": 1, "partition (stall) 0.8 s": 1}
    assert runs["partition"]["proxy"]["connections_aborted"] > 0
    assert runs["pg-terminate"]["faults"]["pg_terminate_backend rounds"] == 2
    assert runs["pg-terminate"]["faults"]["backends terminated"] > 0
    assert runs["sqlite-kill"]["faults"] == {"worker SIGKILL + restart": 2}
    for name, mode, figures in each_mode(chaos):
        assert figures["appends_acked"] > 0, (name, mode)
        assert figures["reads"] > 0, (name, mode)
    for heading in ("Scenario redis on postgres", "Promises, every run"):
        assert heading in chaos["stdout"]


def test_nothing_acknowledged_is_lost_duplicated_partial_or_wrong(chaos: Figures) -> None:
    broken = {
        (name, mode): {key: figures[key] for key in ("lost", "duplicated", "partial", "wrong")}
        for name, mode, figures in each_mode(chaos)
        if figures["lost"] or figures["duplicated"] or figures["partial"] or figures["wrong"]
    }
    assert not broken, broken


def test_strong_mode_is_linearizable(chaos: Figures) -> None:
    stale = {
        name: (figures["stale_reads"], figures["staleness_ms"], figures["examples"][:2])
        for name, mode, figures in each_mode(chaos)
        if mode == "strong" and figures["stale_reads"]
    }
    assert not stale, f"strong reads older than an acknowledged append: {stale}"


def test_bounded_mode_stays_within_its_bound(chaos: Figures) -> None:
    over = {
        name: (figures["bound_violations"], figures["bound_s"], figures["staleness_ms"])
        for name, mode, figures in each_mode(chaos)
        if mode == "bounded" and figures["bound_violations"]
    }
    assert not over, f"bounded reads staler than max_staleness: {over}"


def test_callers_see_only_typed_errors(chaos: Figures) -> None:
    untyped = {
        (name, mode): (figures["errors"], figures["untyped_example"])
        for name, mode, figures in each_mode(chaos)
        if figures["untyped_errors"]
    }
    assert not untyped, untyped
    crashes = {run["scenario"]: run["worker_crashes"] for run in chaos["runs"]}
    assert not any(crashes.values()), crashes


def test_the_harness_leaves_nothing_behind(chaos: Figures) -> None:
    for run in chaos["runs"]:
        cleanup = run["cleanup"]
        if cleanup["database"] is not None:
            assert not asyncio.run(database_exists(cleanup["database"])), cleanup
        if cleanup["store"] is not None:
            assert not Path(cleanup["store"].removeprefix("sqlite:///")).exists(), cleanup
        for port in (cleanup["redis_port"], cleanup["proxy_port"]):
            if port is not None:
                assert not answers(port), cleanup
        for pid in cleanup["worker_pids"]:
            cmdline = Path(f"/proc/{pid}/cmdline")
            assert not cmdline.exists() or b"_chaos_worker" not in cmdline.read_bytes(), pid
    assert chaos["ok"] == all(run["ok"] for run in chaos["runs"])


def test_the_checker_catches_every_kind_of_broken_promise(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fed made-up logs and threads, the checker counts each defect once (a blind checker
    would let the tests above pass)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from _chaos_check import FinalThread, check_mode
    from _chaos_worker import ids_digest

    ms = 1_000_000

    def batch(thread: str, ids: list[str], version: int | None, end: int) -> list[Figures]:
        intent = {"k": "intent", "t": thread, "ids": ids}
        if version is None:
            fail = {"k": "fail", "t": thread, "ids": ids, "err": "KeyError", "typed": False}
            return [intent, fail | {"tb": "Traceback: KeyError"}]
        return [intent, {"k": "ack", "t": thread, "ids": ids, "v": version, "s": 0, "e": end}]

    def read(thread: str, ids: list[str], start: int, version: int | None = None) -> Figures:
        shown = len(ids) if version is None else version
        return {"k": "read", "t": thread, "v": shown, "n": len(ids), "h": ids_digest(ids)} | {
            "s": start,
            "e": start + ms,
        }

    records = [
        *batch("ok", ["a.0", "a.1"], 2, end=10 * ms),
        *batch("ok", ["b.0"], 3, end=20 * ms),
        read("ok", ["a.0", "a.1", "b.0"], start=30 * ms),  # fresh
        read("ok", ["a.0", "a.1"], start=15 * ms),  # began before b's ack: fine
        read("ok", ["a.0", "a.1"], start=1520 * ms),  # 1.5 s after b's ack: stale
        read("ok", ["a.0", "b.0", "a.1"], start=40 * ms),  # not a prefix: wrong
        read("ok", ["a.0"], start=5 * ms, version=2),  # version is not its count: wrong
        *batch("lost", ["c.0"], 1, end=ms),
        *batch("dup", ["d.0"], 1, end=ms),
        *batch("partial", ["e.0", "e.1"], None, end=ms),
        *batch("moved", ["f.0"], 1, end=ms),
        *batch("moved", ["g.0"], 2, end=ms),
    ]
    finals = {
        "ok": FinalThread(3, (1, 2, 3), ["a.0", "a.1", "b.0"]),
        "lost": FinalThread(0, (), []),
        "dup": FinalThread(2, (1, 2), ["d.0", "d.0"]),
        "partial": FinalThread(1, (1,), ["e.0"]),
        "moved": FinalThread(3, (1, 2, 3), ["g.0", "f.0", "x.0"]),
    }
    strong = check_mode(records, finals, "strong", bound_s=1.0)
    assert (strong["lost"], strong["duplicated"], strong["partial"]) == (1, 1, 1)
    # f.0 and g.0 at each other's place, x.0 never sent, two bad reads
    assert strong["wrong"] == 5, strong["examples"]
    assert strong["stale_reads"] == 1
    assert strong["staleness_ms"]["max"] == 1500.0
    assert strong["untyped_errors"] == 1
    assert strong["untyped_example"] == "Traceback: KeyError"
    assert not strong["ok"]
    bounded = check_mode(records, finals, "bounded", bound_s=1.0)
    assert bounded["bound_violations"] == 1
    assert check_mode(records, finals, "bounded", bound_s=2.0)["bound_violations"] == 0
