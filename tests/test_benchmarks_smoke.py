"""The benchmarks still run: each one in --quick mode, as a subprocess, on real PostgreSQL.

The scripts create (and drop) their own ``ac_bench_*`` database on the server named by
AGENT_CORE_BENCH_POSTGRES_URL, else AGENT_CORE_TEST_POSTGRES_URL, else the local one.
If PostgreSQL cannot be reached they exit non-zero, and these tests fail; nothing skips.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis

# Runs benchmarks in subprocesses, over PostgreSQL and Redis.
pytestmark = pytest.mark.integration

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
ADMIN_URL = os.environ.get(
    "AGENT_CORE_BENCH_POSTGRES_URL",
    os.environ.get("AGENT_CORE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
)


def run_benchmark(
    script: str, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        timeout=timeout,
        check=False,
    )


async def database_exists(name: str) -> bool:
    connection = await asyncpg.connect(ADMIN_URL, timeout=10)
    try:
        found = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
    finally:
        await connection.close()
    return found is not None


def quick_run(
    script: str, tmp_path: Path, headings: Sequence[str], *args: str, timeout: float = 120
) -> dict[str, Any]:
    """Run ``script --quick``; check it exits 0 and prints ``headings``; its JSON figures."""
    figures = tmp_path / "figures.json"
    result = run_benchmark(script, "--quick", *args, "--json", str(figures), timeout=timeout)
    assert result.returncode == 0, (
        f"{script} --quick exited {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )
    missing = [heading for heading in headings if heading not in result.stdout]
    assert not missing, f"{script} output lacks {missing}:\n{result.stdout}"
    document: dict[str, Any] = json.loads(figures.read_text(encoding="utf-8"))
    assert document["mode"] == "quick"
    return document


def assert_dropped(document: dict[str, Any]) -> None:
    """The script's throwaway PostgreSQL database is gone."""
    database = document["machine"]["temp_database"]
    assert database.startswith("ac_bench_")
    assert not asyncio.run(database_exists(database)), f"{database} was not dropped"


@pytest.mark.parametrize(
    ("script", "headings", "keys"),
    [
        pytest.param(
            "store_latency.py",
            (
                "Machine",
                "postgres_version",
                "Append latency, µs",
                "Append ratio p50(10,000) / p50(10)",
                "Read latency, µs",
            ),
            ("append", "append_ratio_p50", "read"),
            id="store_latency",
        ),
        pytest.param(
            "pg_drivers.py",
            (
                "Machine",
                "postgres_version",
                "Driver latency, µs",
                "Ratio psycopg / asyncpg",
                "Concurrent throughput, appends/s",
            ),
            ("latency", "latency_ratio_p50_psycopg_over", "throughput_appends_per_s"),
            id="pg_drivers",
        ),
    ],
)
def test_quick_run(
    script: str, headings: tuple[str, ...], keys: tuple[str, ...], tmp_path: Path
) -> None:
    document = quick_run(script, tmp_path, headings)
    assert all(key in document for key in keys), sorted(document)
    assert_dropped(document)


def test_fails_loudly_without_postgres() -> None:
    with socket.socket() as probe:  # a local port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for script in ("store_latency.py", "pg_drivers.py"):
        result = run_benchmark(
            script, "--quick", "--postgres-url", f"postgresql://postgres@127.0.0.1:{port}/test"
        )
        assert result.returncode == 3, result.stderr
        assert "not reachable" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("script", "args", "headings", "keys"),
    [
        pytest.param(
            "cache_latency.py",
            (),
            (
                "redis_server",
                "postgres_version",
                "L1 hit: await cache.get(), µs",
                "L2 hit vs raw Redis, µs",
                "Append one message, µs",
                "get() by path vs store.read(), µs",
            ),
            ("l1_hit", "l2_hit", "append", "get_paths"),
            id="cache_latency",
        ),
        pytest.param(
            "cold_start.py",
            ("--store", "sqlite"),
            ("redis_server", "Cold-start hit rates, %", "Goal: hit rate >= 99 % of max"),
            ("variants",),
            id="cold_start-sqlite",
        ),
        pytest.param(
            "cold_start.py",
            ("--store", "postgres"),
            ("postgres_version", "Cold-start hit rates, %", "Goal: hit rate >= 99 % of max"),
            ("variants",),
            id="cold_start-postgres",
        ),
        pytest.param(
            "l2_signing.py",
            (),
            (
                "redis_server",
                "L2 calls, p50 µs (unsigned vs l2_signing_key)",
                "Longest event-loop gap during get, ms",
            ),
            ("calls",),
            id="l2_signing",
        ),
        pytest.param(
            "l2_hot_path.py",
            (),
            ("redis_server", "L2 read path steps, p50 µs"),
            ("us_p50",),
            id="l2_hot_path",
        ),
        pytest.param(
            "lifecycle.py",
            (),
            (
                "redis_server",
                "Pop and splice latency, µs",
                "Fork latency, µs",
                "list_threads by metadata",
                "Sweep of expired threads",
            ),
            ("ratio_p50", "fork", "list_threads", "sweep"),
            id="lifecycle",
        ),
        pytest.param(
            "encryption.py",
            (),
            ("redis_server", "Encryption at rest, p50 µs (plain vs encrypted)"),
            ("append/1", "l2_hit/10", "l1_hit/10"),
            id="encryption",
        ),
        pytest.param(
            "adapter_openai_agents.py",
            (),
            ("redis_server", "openai-agents", "get_items p50, µs", "agent-core, L2 hit"),
            ("get_items", "sizes"),
            id="adapter_openai_agents",
        ),
    ],
)
def test_cache_benchmark_quick_run(
    script: str,
    args: tuple[str, ...],
    headings: tuple[str, ...],
    keys: tuple[str, ...],
    tmp_path: Path,
) -> None:
    """The cache benchmarks, each on its own private redis-server."""
    document = quick_run(script, tmp_path, ("Machine", *headings), *args)
    assert all(key in document for key in keys), sorted(document)
    if "temp_database" in document["machine"]:
        assert_dropped(document)


@pytest.mark.parametrize(
    ("script", "headings", "keys"),
    [
        pytest.param(
            "loop_lag.py",
            (
                "Event-loop lag, ms",
                "Lag ratio naive / agent-core",
                "Goal p99 <= 5 ms (agent-core)",
                "Small gets, ms",
                "Big-thread operations, ms",
                "Garbage-collector pauses on the loop thread, ms",
            ),
            ("lag_ms", "goal", "small_gets", "big_thread_operations", "gc"),
            id="loop_lag",
        ),
        pytest.param(
            "freshness.py",
            (
                "Freshness across processes",
                "No message lost or duplicated",
                "External change propagation, ms",
            ),
            ("freshness", "integrity", "external"),
            id="freshness",
        ),
        pytest.param(
            "redis_faults.py",
            (
                "Faults during a 5 s mixed load",
                "Call latency, ms",
                "Caller errors: 0",
                "Messages lost",
                "Instance counters at the end",
            ),
            ("faults", "latency", "messages", "counters"),
            id="redis_faults",
        ),
    ],
)
def test_lag_freshness_and_fault_benchmarks_quick_run(
    script: str, headings: tuple[str, ...], keys: tuple[str, ...], tmp_path: Path
) -> None:
    """Each on a private redis-server (killed and paused by redis_faults.py), about 20 s."""
    document = quick_run(script, tmp_path, ("Machine", *headings))
    assert all(key in document for key in keys), sorted(document)
    assert_dropped(document)


def test_auth_timing_quick_run(tmp_path: Path) -> None:
    """benchmarks/auth_timing.py --quick: the key verifier alone, a few seconds."""
    headings = ("Key verification: cached p50", "Wrong keys: rejection time")
    document = quick_run("auth_timing.py", tmp_path, headings, timeout=60)
    assert document["cached_p50_us"] > 0
    assert set(document["wrong"]) == {"0", "4", "10", "17", "59"}


def test_auth_overhead_quick_run(tmp_path: Path) -> None:
    """benchmarks/auth_overhead.py --quick: no auth, API key and JWT apps in process (SQLite,
    a local JWKS server), a few seconds."""
    headings = ("Machine", "Authentication overhead per request, µs")
    document = quick_run("auth_overhead.py", tmp_path, headings, timeout=60)
    variants = ("none", "none, again", "api key", "jwt")
    requests = ("GET thread (L1 hit)", "append")
    assert set(document["cells"]) == {f"{r}/{v}" for r in requests for v in variants}
    for name, cell in document["cells"].items():
        assert cell["samples"] == document["rounds"], name
        assert cell["p99_us"] >= cell["p50_us"] > 0, name
        if not name.endswith("/none"):
            assert cell["ratio_p50"] > 0, name


def test_tokens_quick_run(tmp_path: Path) -> None:
    """benchmarks/tokens.py --quick: offline, no PostgreSQL or Redis, a few seconds."""
    headings = (
        "Machine",
        "Throughput, MB/s",
        "Goal: TokenCounter >= 3x tiktoken",
        "Worst cases, best ms",
        "Estimate accuracy vs exact o200k_base",
        "count_messages on a 100-message chat",
        "Event loop while count_async counts",
    )
    document = quick_run("tokens.py", tmp_path, headings, timeout=60)
    for key in ("throughput", "worst_cases", "accuracy", "count_messages", "loop_gaps"):
        assert document[key], key


def test_window_quick_run(tmp_path: Path) -> None:
    """benchmarks/window.py --quick: SQLite and a private redis-server, a few seconds."""
    headings = (
        "Machine",
        "Window on a 2,000-message thread, L1 hit, µs",
        "Other paths, µs",
        "Goal:",
    )
    document = quick_run("window.py", tmp_path, headings)
    assert document["hot"]
    assert document["goal"]["window_4000_p50_us"] > 0


def test_agent_turn_quick_run(tmp_path: Path) -> None:
    """benchmarks/agent_turn.py --quick: SQLite, PostgreSQL and a private redis-server."""
    headings = (
        "Machine",
        "redis_server",
        "postgres_version",
        "Turn steps, p50 µs",
        "Turn overhead (wall time minus the model call), µs",
        "Goal: overhead p50 <= 1 ms at 1,000 messages on an L1 hit",
    )
    document = quick_run("agent_turn.py", tmp_path, headings)
    assert set(document["cells"]) == {"sqlite", "postgres", "sqlite, no Redis"}
    l1 = document["cells"]["sqlite"]["1000"]["l1"]
    assert l1["with_persist"]["p50_us"] >= l1["without_commit"]["p50_us"] > 0
    assert document["threads"]["1000"]["history_messages"] == 1000
    assert document["goal"]["by_setup"]["sqlite"]["p50_us"] > 0
    assert_dropped(document)


def test_http_load_quick_run(tmp_path: Path) -> None:
    """benchmarks/http_load.py --quick: two `serve` processes, PostgreSQL and a redis-server."""
    headings = (
        "Machine",
        "redis_server",
        "postgres_version",
        "HTTP load, 2 instances",
        "CPU used during each window, cores",
        "Freshness across instances",
        "Summary:",
    )
    document = quick_run("http_load.py", tmp_path, headings)
    assert set(document["operations"]) == {"GET thread", "append", "turn"}
    for operation, cell in document["operations"].items():
        assert cell["requests"] > 0, operation
        assert cell["errors"] == 0, (operation, cell["statuses"], cell["first_error"])
        assert cell["p99_ms"] >= cell["p50_ms"] > 0, operation
        assert set(cell["by_instance"]) == {"a", "b"}, operation
    assert document["freshness"]["different_after_settle"] == []
    assert_dropped(document)


@pytest.mark.parametrize("baseline", ["this checkout", "absent"])
def test_strong_reads_quick_run(baseline: str, tmp_path: Path) -> None:
    """benchmarks/strong_reads.py --quick: old and new trees side by side (here this checkout
    twice: CI has no baseline checkout), or the new one alone when the baseline is absent."""
    src = BENCHMARKS.parent / "src" if baseline == "this checkout" else tmp_path / "absent"
    headings: tuple[str, ...] = (
        "Machine",
        "redis_server",
        "postgres_version",
        "Price of strong reads: µs per call, old vs new",
        "Stale reads and paths",
        "Stale reads 1.1 s or more after an append by an instance without Redis",
    )
    if baseline == "absent":
        headings += ("baseline skipped",)
    document = quick_run("strong_reads.py", tmp_path, headings, "--baseline-src", str(src))
    trees = ["old", "new"] if baseline == "this checkout" else ["new"]
    assert document["trees"] == trees
    assert (document["baseline_skipped"] is None) == (baseline == "this checkout")
    assert len(document["cells"]) == 20
    for name, cell in document["cells"].items():
        for tree in trees:
            assert cell[tree]["samples"] > 0, (name, tree)
            if name.startswith("strong/"):
                assert cell[tree]["stale"] == 0, (name, tree)
    assert document["probes"]
    assert all(probe["stale"] == 0 for probe in document["probes"].values())
    for database in document["machine"]["temp_databases"].split():
        assert not asyncio.run(database_exists(database)), f"{database} was not dropped"


def test_hot_path_ab_quick_run(tmp_path: Path) -> None:
    """benchmarks/hot_path_ab.py --quick: this checkout against itself (CI has no baseline
    checkout); every cell measured in both trees, each read served by its cell's tier."""
    src = BENCHMARKS.parent / "src"
    headings = ("Machine", "redis_server", "Hot paths: µs per call, old vs new")
    document = quick_run("hot_path_ab.py", tmp_path, headings, "--baseline-src", str(src))
    assert document["trees"] == ["old", "new"]
    assert len(document["cells"]) == 10
    for name, cell in document["cells"].items():
        for tree in ("old", "new"):
            assert cell[tree]["samples"] > 0, (name, tree)
        assert cell["ratio_new_over_old"]["p50"] > 0, name
    for database in document["machine"]["temp_databases"].split():
        assert not asyncio.run(database_exists(database)), f"{database} was not dropped"


def test_message_shape_quick_run(tmp_path: Path) -> None:
    """benchmarks/message_shape.py --quick: no services, a second."""
    headings = ("Machine", "Validation and encoding of one message", "Goal:")
    document = quick_run("message_shape.py", tmp_path, headings)
    assert document["messages"]["user text"]["check_shape_us"] > 0
    assert document["goal"]["check_shape_worst_us"] > 0


def test_adapter_langchain_quick_run(tmp_path: Path) -> None:
    """benchmarks/adapter_langchain.py --quick: SQLite only, every cell timed at every size
    (the two histories were checked to read back the same messages first)."""
    headings = ("Machine", "Reading the history, p50 µs (8 rounds)", "SQLChatMessageHistory")
    document = quick_run("adapter_langchain.py", tmp_path, headings, timeout=60)
    assert set(document["reads_us"]) == {"10", "100", "1000"}
    for cells in document["reads_us"].values():
        assert len(cells) == 4
        assert all(cell["samples"] == 8 for cell in cells.values())


def test_adapter_pydantic_ai_quick_run(tmp_path: Path) -> None:
    """benchmarks/adapter_pydantic_ai.py --quick: a private Redis, every cell timed at every
    size (each side was checked to load the history it saved first)."""
    headings = ("Machine", "redis_server", "TypeAdapter + sqlite3", "agent-core, L2 hit")
    document = quick_run("adapter_pydantic_ai.py", tmp_path, headings, timeout=60)
    assert len(document["load"]) == 12
    assert all(cell["samples"] == 15 for cell in document["load"].values())
    assert document["bytes_per_message"]["agent-core"] > 0


def test_l1_soak_quick_run(tmp_path: Path, redis_url: str) -> None:
    """benchmarks/l1_soak.py --quick: SQLite and the session's Redis, RSS within the bound,
    and no key of its namespace left behind."""
    headings = ("Machine", "RSS over time", "Operations", "L1 soak", "Goal: RSS <=")
    document = quick_run("l1_soak.py", tmp_path, headings, "--redis", redis_url)
    assert document["passed"], document["samples"]
    assert document["ops"] == sum(
        count for name, count in document["operations"].items() if name != "windows over budget"
    )
    assert document["rss_peak_mib"] <= document["bound_mib"]
    assert document["l1_peak_mib"] <= document["budget_mib"]
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.keys(f"*{document['namespace']}*") == []
    finally:
        client.close()


def test_cluster_latency_quick_run(tmp_path: Path) -> None:
    """benchmarks/cluster_latency.py --quick: a private redis-server beside a private
    6-node cluster, SQLite, about 15 s (mostly the cluster's start)."""
    headings = ("Machine", "Cluster beside one Redis, µs", "read after invalidation")
    document = quick_run("cluster_latency.py", tmp_path, headings)
    assert document["redis_errors"] == {"single": 0, "cluster": 0}
    assert document["latency"]["L2 hit"]["100"]["cluster"]["samples"] > 0


def test_prompt_cache_quick_run(tmp_path: Path) -> None:
    """benchmarks/prompt_cache.py --quick: SQLite only, 3 conversations x 60 turns at 32K, a
    few seconds; its tallies add up and no prompt is over its budget."""
    headings = (
        "Machine",
        "Workload: 3 conversations x 60 turns",
        "Billed input cost relative to naive, budget 32,000 tokens",
        "Cache shares and prompt sizes, budget 32,000 tokens",
        "Why OpenAI billed tokens in full (in-memory retention)",
        "Goals at 32,000 tokens (stable against naive):",
        "PASS  no prompt over its budget",
    )
    document = quick_run("prompt_cache.py", tmp_path, headings, timeout=60)
    row = document["cells"]["32000"]
    assert set(row) == {"naive", "stable", "compact100", "compact80"}
    for key, cell in row.items():
        tally = cell["tally"]
        assert tally["over_budget"] == tally["fallbacks"] == 0, key
        assert 0 < tally["max_prompt"] <= 32_000, key
        assert tally["requests"] == row["naive"]["tally"]["requests"], key
        billed = tally["anthropic_read"] + tally["anthropic_write"] + tally["anthropic_plain"]
        assert billed == tally["prompt_tokens"], key
        uncached = sum(tally[f"uncached_{cause}"] for cause in cell["uncached"])
        assert uncached == tally["prompt_tokens"] - tally["openai_cached"], key
        # A prefix that is kept longer is cached at least as often.
        assert tally["openai_cached_24h"] >= tally["openai_cached"], key
    assert row["naive"]["relative"] == dict.fromkeys(row["naive"]["relative"], 1.0)
    stable, naive = row["stable"]["tally"], row["naive"]["tally"]
    # A stable window's prefix changes only where its cut moves, and far less often.
    assert stable["prefix_breaks"] == stable["cut_moves"] < naive["prefix_breaks"] / 2
    for key in ("compact100", "compact80"):
        tally = row[key]["tally"]
        assert tally["compactions"] > 0, key
        assert tally["summarizer_input"] > tally["summarizer_output"] > 0, key
    assert document["goals"]["over_budget"] == []
    goals = document["goals"]
    assert set(goals) >= {"anthropic", "openai90_24h", "openai90", "openai50", "met"}
    assert goals["openai90"]["goal"] is goals["openai90"]["met"] is None  # reported only


def _prompt_cache_module(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("prompt_cache", BENCHMARKS / "prompt_cache.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "prompt_cache", module)
    spec.loader.exec_module(module)
    return module


def _marked(body: dict[str, Any]) -> list[str]:
    places = [f"system[{i}]" for i, b in enumerate(body.get("system", [])) if "cache_control" in b]
    for t, turn in enumerate(body["messages"]):
        places += [
            f"messages[{t}][{b}]"
            for b, block in enumerate(turn["content"])
            if "cache_control" in block
        ]
    return places


async def test_prompt_cache_breakpoints_are_the_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmark bills Anthropic at the breakpoints it computes, a replica of
    `AnthropicChatModel(cache_breakpoints="auto")`'s (private): the real model, sending the
    benchmark's prompts to a local Messages API, marks the same blocks."""
    from agent_core import SUMMARY_NAME, AnthropicChatModel, Message, TokenCounter

    from ._anthropic_server import API_KEY, AnthropicServer, message_body, text
    from ._chat_server import Reply

    bench = _prompt_cache_module(monkeypatch)
    counter = TokenCounter.for_model("gpt-4o")
    chat = bench.make_chat(bench.TextMaker(counter), 7, 0, 10)
    history: list[Any] = []
    starts: list[int] = []  # where a window may start: not inside a call and its results
    ends: list[int] = []  # where a request ends: a user message, a round's results
    for turn in chat.turns:
        starts.append(len(history))
        history.append(turn.user)
        ends.append(len(history))
        for round_ in turn.rounds:
            starts.append(len(history))
            history += [round_.call, *round_.results]
            ends.append(len(history))
        starts.append(len(history))
        history.append(turn.final)
    system = Message.from_dict({"role": "system", "content": bench.SYSTEM_PROMPT})
    summary = Message.from_dict(
        {"role": "system", "name": SUMMARY_NAME, "content": "Summary of the earlier conversation."}
    )
    prompts = [
        [system, *([summary] if with_summary else []), *history[start:end]]
        for with_summary in (False, True)
        for end in ends
        for start in starts
        if start < end and start % 3 == end % 3
    ]
    assert len(prompts) >= 20
    with AnthropicServer() as server:
        async with AnthropicChatModel(
            "claude-sonnet-4-5", base_url=server.base_url, api_key=API_KEY
        ) as model:
            for prompt in prompts:
                server.script(Reply(body=message_body(text("ok"))))
                await model.complete(prompt, tools=bench.TOOLS)
                body = server.calls()[-1].json()
                assert bench.breakpoint_labels(prompt, counter) == _marked(body)
