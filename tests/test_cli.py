"""The ``agent-core`` console script: chat on a temp store, stats and serve for real."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner, Result

from agent_core.cli import app

from ._redis_server import free_port
from ._serve import ServeProcess

#: The environment of every invocation: no AGENT_CORE_* variable of the caller's shell, and
#: a wide terminal so that help text is not wrapped inside the names it is checked for.
CLEAN_ENV = {name: None for name in os.environ if name.startswith("AGENT_CORE_")} | {
    "COLUMNS": "200",
    "TERMINAL_WIDTH": "200",
}


def invoke(
    args: list[str], *, input: str | None = None, env: dict[str, str] | None = None
) -> Result:
    runner = CliRunner()
    return runner.invoke(
        app, args, input=input, env=CLEAN_ENV | (env or {}), catch_exceptions=False
    )


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


def versions(output: str) -> list[int]:
    """The version of each turn, from the dim status lines."""
    return [int(v) for v in re.findall(r"^v(\d+) · ", output, flags=re.MULTILINE)]


# -- help and flags ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("serve", ["--host", "--port", "--store", "AGENT_CORE_STORE_URL", "--no-access-log"]),
        ("stats", ["--url", "--json"]),
        ("bench", ["--quick", "--redis", "--json", "--plot", "AGENT_CORE_BENCH_STORE_URL"]),
        ("chat", ["THREAD", "--store", "--redis", "--model", "--system", "AGENT_CORE_MODEL"]),
    ],
)
def test_help_of_each_command(command: str, expected: list[str]) -> None:
    result = invoke([command, "--help"])
    assert result.exit_code == 0, result.output
    for text in expected:
        assert text in result.output


def test_no_command_shows_the_commands() -> None:
    result = invoke([])
    for command in ("serve", "bench", "stats", "chat"):
        assert command in result.output


def test_version_prints_the_package_version() -> None:
    result = invoke(["--version"])
    assert result.exit_code == 0, result.output
    assert result.output == f"agent-core {importlib.metadata.version('agent-core')}\n"


@pytest.mark.parametrize("command", [["bench"], ["gc"], ["threads", "purge"], []])
def test_help_paragraphs_are_not_broken_at_source_line_ends(command: list[str]) -> None:
    """Each docstring paragraph renders as one line on a wide terminal, not one per source
    line (typer keeps a later paragraph's single line breaks)."""
    result = invoke([*command, "--help"])
    assert result.exit_code == 0, result.output
    expected = {
        "bench": "through a new cache every 50 turns as serverless cold starts make.",
        "gc": "past their expires_at (as purge does) and idempotency keys older",
        "purge": "leave the store, and its cached copies Redis and every instance.",
        "": "expires_at (as purge does) and idempotency keys",
    }[command[-1] if command else ""]
    assert expected in result.output, result.output


def test_bad_flag_exits_2() -> None:
    assert invoke(["chat", "t", "--no-such-flag"]).exit_code == 2
    assert invoke(["serve", "--port", "not-a-port"]).exit_code == 2


# -- chat -------------------------------------------------------------------------------


def test_chat_streams_turns_that_persist(store_url: str) -> None:
    first = invoke(["chat", "thread-1", "--store", store_url], input="hello there\n\nworld\n")
    assert first.exit_code == 0, first.output
    assert "echo: hello there" in first.stdout
    assert "echo: world" in first.stdout
    assert versions(first.stdout) == [2, 4]  # a user and an assistant message per turn
    assert "history store (0 messages)" in first.stdout  # a new thread: nothing to load

    # A new process-like run: a fresh cache, so the history comes from the store.
    second = invoke(["chat", "thread-1", "--store", store_url], input="again\n/quit\nignored\n")
    assert second.exit_code == 0, second.output
    assert "echo: again" in second.stdout
    assert "ignored" not in second.stdout
    assert versions(second.stdout) == [6]
    assert "history store (4 messages)" in second.stdout


def test_chat_system_prompt_and_later_turns_from_l1(store_url: str) -> None:
    result = invoke(["chat", "t2", "--store", store_url, "--system", "Be brief."], input="a\nb\n")
    assert result.exit_code == 0, result.output
    assert versions(result.stdout) == [2, 4]
    # The second turn's history is the first turn, served by this process's L1.
    assert "history l1 (2 messages)" in result.stdout


def test_chat_reads_its_settings_from_the_environment(store_url: str) -> None:
    env = {"AGENT_CORE_STORE_URL": store_url, "AGENT_CORE_NAMESPACE": "ns-a"}
    assert versions(invoke(["chat", "t"], input="x\n", env=env).stdout) == [2]
    # Same store and namespace through flags: the same thread.
    again = invoke(["chat", "t", "--store", store_url, "--namespace", "ns-a"], input="y\n")
    assert versions(again.stdout) == [4]
    # A flag wins over its variable: another namespace, another thread.
    other = invoke(["chat", "t", "--namespace", "ns-b"], input="z\n", env=env)
    assert versions(other.stdout) == [2]


def test_chat_typed_error_is_one_red_line(store_url: str) -> None:
    result = invoke(["chat", "bad thread id!", "--store", store_url], input="hi\n")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    assert "thread" in lines[0]
    assert "Traceback" not in result.output


def test_bad_environment_value_is_a_clean_error(store_url: str) -> None:
    env = {"AGENT_CORE_MAX_CONTEXT_TOKENS": "lots"}
    result = invoke(["chat", "t", "--store", store_url], input="hi\n", env=env)
    assert result.exit_code == 1
    assert "AGENT_CORE_MAX_CONTEXT_TOKENS" in result.stderr


@pytest.mark.parametrize("command", [["chat", "t"], ["serve"]])
@pytest.mark.parametrize("store", ["mysql://nowhere/db", "sqlite:////no/such/dir/x.db"])
def test_a_store_that_does_not_open_is_one_red_line(command: list[str], store: str) -> None:
    result = invoke([*command, "--store", store], input="hi\n")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1


# -- stats and serve --------------------------------------------------------------------


@pytest.mark.integration
def test_stats_of_an_unreachable_server_is_a_clean_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = invoke(["stats", "--url", url, "--timeout", "2"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot reach ")
    assert "Traceback" not in result.output


@pytest.fixture
def server(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """``agent-core serve`` in a subprocess; parametrized indirectly, the parameter is
    extra environment for it."""
    running = ServeProcess(tmp_path, getattr(request, "param", None))
    process = running.start()
    try:
        yield running.url, process, running.log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_serve_then_stats_then_stop(
    server: tuple[str, subprocess.Popen[bytes], Path], stop: signal.Signals
) -> None:
    base, process, log = server
    posted = httpx.post(
        f"{base}/v1/threads/t-1/messages",
        json={"messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert posted.status_code == 201, posted.text
    assert posted.json() == {"version": 1}
    assert httpx.get(f"{base}/v1/threads/t-1", timeout=10).status_code == 200

    table = invoke(["stats", "--url", base])
    assert table.exit_code == 0, table.output
    for name in ("hit_rate", "appends", "l1_bytes", "degraded", "memory.rss"):
        assert name in table.stdout
    assert re.search(r"l1_hit_rate\W+100\.0%", table.stdout)  # the GET was an L1 hit

    raw = invoke(["stats", "--url", base, "--json"])
    assert raw.exit_code == 0, raw.output
    assert json.loads(raw.stdout)["appends"] == 1

    missing = invoke(["stats", "--url", f"{base}/nowhere"])
    assert missing.exit_code == 1
    assert "404" in missing.stderr

    process.send_signal(stop)
    assert process.wait(timeout=10) == 0
    assert "Finished server process" in log.read_text()  # a graceful shutdown
    assert '"POST /v1/threads/t-1/messages HTTP/1.1" 201' in log.read_text()  # access log


@pytest.mark.parametrize("server", [{"AGENT_CORE_ACCESS_LOG": "false"}], indirect=True)
def test_serve_without_access_log(server: tuple[str, subprocess.Popen[bytes], Path]) -> None:
    base, process, log = server
    assert httpx.get(f"{base}/v1/threads/t-1", timeout=10).status_code == 404
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    assert "Finished server process" in log.read_text()
    assert "GET /v1/threads" not in log.read_text()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com"])
def test_serve_refuses_a_non_loopback_address_without_auth(host: str) -> None:
    result = CliRunner().invoke(app, ["serve", "--host", host])
    assert result.exit_code == 1, result.output
    assert "refusing to listen" in result.output
    assert "--insecure-no-auth" in result.output


def test_insecure_no_auth_goes_on_with_a_warning(tmp_path: Path) -> None:
    # Past the check, serve fails at the store (its directory is missing): it went on.
    store = f"sqlite:///{tmp_path}/missing/agent-core.db"
    result = CliRunner().invoke(
        app, ["serve", "--host", "0.0.0.0", "--insecure-no-auth", "--store", store]
    )
    assert result.exit_code == 1, result.output
    assert "WARNING" in result.output
    assert "does not exist" in result.output
