"""``agent-core threads list|info|purge`` and ``agent-core gc`` on a real SQLite store
(issue 13)."""

from __future__ import annotations

import asyncio
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent_core import ConversationCache

from ._poll import eventually_sync
from .test_cli import invoke


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'threads.db'}"


def seed(
    store_url: str,
    threads: Mapping[str, Mapping[str, str]],
    *,
    namespace: str = "default",
    keys: Sequence[str] = (),
) -> None:
    """Each thread gets a message and its metadata; ``keys``, one append each with that
    idempotency key, on thread ``keyed``."""

    async def write() -> None:
        async with ConversationCache.from_urls(store=store_url, namespace=namespace) as cache:
            for thread_id, metadata in threads.items():
                await cache.append(thread_id, [{"role": "user", "content": "hi"}])
                await cache.update_thread(thread_id, metadata=dict(metadata))
            for key in keys:
                await cache.append("keyed", [{"role": "user", "content": key}], idempotency_key=key)

    asyncio.run(write())


def test_help() -> None:
    result = invoke(["threads", "--help"])
    assert result.exit_code == 0, result.output
    for command in ("list", "info", "purge"):
        assert command in result.output
    listing = invoke(["threads", "list", "--help"]).output
    for text in ("--store", "--redis", "--namespace", "--limit", "--after", "--metadata", "--json"):
        assert text in listing
    assert "--batch" in invoke(["gc", "--help"]).output
    assert "gc" in invoke([]).output


def test_list_pages_filters_and_json(store_url: str) -> None:
    ids = [f"t{i}" for i in range(5)]
    seed(store_url, {thread_id: {"user": f"u{i % 2}"} for i, thread_id in enumerate(ids)})
    seed(store_url, {"elsewhere": {"user": "u0"}}, namespace="other")

    first = invoke(["threads", "list", "--store", store_url, "--limit", "2"])
    assert first.exit_code == 0, first.output
    assert first.stdout.splitlines() == ["t0", "t1"]
    assert "--after t1" in first.stderr
    last = invoke(["threads", "list", "--store", store_url, "--limit", "2", "--after", "t3"])
    assert last.stdout.splitlines() == ["t4"]
    assert "--after" not in last.stderr

    raw = invoke(["threads", "list", "--store", store_url, "--metadata", "user=u0", "--json"])
    assert raw.exit_code == 0, raw.output
    assert json.loads(raw.stdout) == {"thread_ids": ["t0", "t2", "t4"], "next_cursor": None}
    paged = invoke(["threads", "list", "--store", store_url, "--limit", "1", "--json"])
    assert json.loads(paged.stdout) == {"thread_ids": ["t0"], "next_cursor": "t0"}

    both = ["--metadata", "user=u1", "--metadata", "user=u1"]
    assert invoke(["threads", "list", "--store", store_url, *both]).exit_code == 2
    none = invoke(["threads", "list", "--store", store_url, "--metadata", "user=u9"])
    assert (none.exit_code, none.stdout) == (0, "")
    assert "no threads" in none.stderr
    # A value may hold "=": only the first one splits.
    assert invoke(["threads", "list", "--store", store_url, "--metadata", "k=a=b"]).exit_code == 0

    other = invoke(["threads", "list", "--store", store_url, "--namespace", "other"])
    assert other.stdout.splitlines() == ["elsewhere"]
    env = {"AGENT_CORE_STORE_URL": store_url, "AGENT_CORE_NAMESPACE": "other"}
    assert invoke(["threads", "list"], env=env).stdout.splitlines() == ["elsewhere"]


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--metadata", "user"], 2),  # not KEY=VALUE
        (["--limit", "0"], 2),
        (["--limit", "1001"], 2),
        (["--after", "bad id"], 1),
        (["--metadata", "bad key=v"], 1),
    ],
)
def test_list_bad_arguments(store_url: str, args: list[str], code: int) -> None:
    result = invoke(["threads", "list", "--store", store_url, *args])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    if code == 1:
        assert result.stderr.startswith("error: ")
        assert result.stderr.count("\n") == 1


def test_info(store_url: str) -> None:
    before = datetime.now(UTC)
    seed(store_url, {"t": {"user": "u1", "topic": "billing"}})
    raw = invoke(["threads", "info", "t", "--store", store_url, "--json"])
    assert raw.exit_code == 0, raw.output
    data = json.loads(raw.stdout)
    created = datetime.fromisoformat(data.pop("created_at"))
    updated = datetime.fromisoformat(data.pop("updated_at"))
    assert data == {
        "thread_id": "t",
        "version": 1,
        "message_count": 1,
        "metadata": {"user": "u1", "topic": "billing"},
        "expires_at": None,
    }
    assert created.utcoffset() == updated.utcoffset() == UTC.utcoffset(None)
    assert before.timestamp() - 5 <= created.timestamp() <= updated.timestamp()

    table = invoke(["threads", "info", "t", "--store", store_url])
    assert table.exit_code == 0, table.output
    for text in ("message_count", "metadata.user", "billing", created.isoformat()[:19]):
        assert text in table.stdout

    never = invoke(["threads", "info", "never", "--store", store_url, "--json"])
    assert json.loads(never.stdout) == {
        "thread_id": "never",
        "version": 0,
        "message_count": 0,
        "created_at": None,
        "updated_at": None,
        "metadata": {},
        "expires_at": None,
    }
    assert "metadata" in invoke(["threads", "info", "never", "--store", store_url]).stdout


@pytest.mark.parametrize("command", [["threads", "info", "t"], ["threads", "list"], ["gc"]])
@pytest.mark.parametrize("store", ["mysql://nowhere/db", "sqlite:////no/such/dir/x.db"])
def test_a_store_that_does_not_open_is_one_red_line(command: list[str], store: str) -> None:
    result = invoke([*command, "--store", store])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1


def test_bad_thread_id_is_one_red_line(store_url: str) -> None:
    result = invoke(["threads", "info", "bad id!", "--store", store_url])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: invalid thread id")


def test_gc_removes_expired_idempotency_keys_in_batches(tmp_path: Path) -> None:
    path = tmp_path / "gc.db"
    # Keys expire a microsecond after they are written: all five have when gc runs.
    expiring = f"sqlite:///{path}?idempotency_ttl=0.000001"
    seed(expiring, {}, keys=[f"k{i}" for i in range(5)])
    # Opened with the default TTL (a day), the same keys are not expired.
    kept = invoke(["gc", "--store", f"sqlite:///{path}", "--batch", "2"])
    assert kept.exit_code == 0, kept.output
    assert kept.stdout == "removed 0 expired threads\nremoved 0 expired idempotency keys\n"

    # Batches of 2: three of them (2, 2, 1), the last short.
    result = invoke(["gc", "--store", expiring, "--batch", "2"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "removed 0 expired threads\nremoved 5 expired idempotency keys\n"
    again = invoke(["gc", "--store", expiring])
    assert again.stdout.endswith("removed 0 expired idempotency keys\n")
    assert invoke(["gc", "--store", expiring, "--batch", "0"]).exit_code == 2


def thread_state(
    store_url: str, thread_id: str, namespace: str = "default"
) -> tuple[int, int, dict[str, str]]:
    """The thread's version, message count and metadata, read through the library."""

    async def read() -> tuple[int, int, dict[str, str]]:
        async with ConversationCache.from_urls(store=store_url, namespace=namespace) as cache:
            info = await cache.thread_info(thread_id)
            return info.version, info.message_count, dict(info.metadata)

    return asyncio.run(read())


def test_purge_with_yes(store_url: str) -> None:
    seed(store_url, {"t": {"user": "u1"}, "kept": {}})
    result = invoke(["threads", "purge", "t", "--store", store_url, "--yes"])
    assert result.exit_code == 0, result.output
    version, count, metadata = thread_state(store_url, "t")
    assert result.stdout == f"purged t (version {version})\n"
    assert (count, metadata) == (0, {})
    assert invoke(["threads", "list", "--store", store_url]).stdout.splitlines() == ["kept"]


def test_purge_refuses_to_ask_without_a_terminal(store_url: str) -> None:
    seed(store_url, {"t": {"user": "u1"}})
    result = invoke(["threads", "purge", "t", "--store", store_url], input="y\n")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: not purging t: stdin is not a terminal")
    assert "--yes" in result.stderr
    assert thread_state(store_url, "t") == (1, 1, {"user": "u1"})
    bad = invoke(["threads", "purge", "bad id", "--store", store_url, "--yes"])
    assert bad.exit_code == 1
    assert bad.stderr.startswith("error: invalid thread id")


@pytest.mark.integration  # a subprocess on a pseudo-terminal
@pytest.mark.parametrize(("answer", "purged"), [("n", False), ("", False), ("y", True)])
def test_purge_asks_on_a_terminal(store_url: str, answer: str, purged: bool) -> None:
    seed(store_url, {"t": {"user": "u1"}})
    code, screen = on_terminal(
        ["threads", "purge", "t", "--store", store_url], answer, prompt="for good?"
    )
    assert "Erase thread t of namespace default" in screen
    if purged:
        assert code == 0, screen
        assert "purged t (version" in screen
        assert thread_state(store_url, "t")[1:] == (0, {})
    else:
        assert code == 1, screen
        assert "not purged" in screen
        assert thread_state(store_url, "t") == (1, 1, {"user": "u1"})


def on_terminal(args: list[str], answer: str, *, prompt: str) -> tuple[int, str]:
    """``agent-core ARGS`` with a pseudo-terminal as stdin, stdout and stderr: ``answer``
    is typed once ``prompt`` shows. Returns the exit code and all it wrote."""
    controller, terminal = os.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_CORE_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "agent_core.cli", *args],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=env | {"COLUMNS": "200", "TERM": "dumb"},
        close_fds=True,
    )
    os.close(terminal)
    screen = b""
    answered = False
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(controller, 4096)
                except OSError:  # EIO: every end of the terminal is closed, the child left
                    break
                if not chunk:
                    break
                screen += chunk
            if not answered and prompt.encode() in screen:
                os.write(controller, answer.encode() + b"\n")
                answered = True
        code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
            process.wait()
    assert answered, f"no prompt {prompt!r} in {screen!r}"
    return code, screen.decode(errors="replace")


def test_gc_removes_the_namespaces_expired_threads(store_url: str) -> None:
    async def write() -> None:
        for namespace in ("default", "other"):
            async with ConversationCache.from_urls(store=store_url, namespace=namespace) as cache:
                for index in range(5):
                    await cache.append(f"t{index}", [{"role": "user", "content": "hi"}])
                    if index < 3:
                        # Still to come when set (a time past would delete it at once).
                        soon = datetime.now(UTC) + timedelta(seconds=1)
                        await cache.update_thread(f"t{index}", expires_at=soon)

    asyncio.run(write())
    # Once expired, the threads read as deleted; gc then removes them, in batches.
    for namespace in ("default", "other"):
        eventually_sync(
            lambda: thread_state(store_url, "t2", namespace)[1] == 0,  # noqa: B023
            interval=0.05,
        )
    result = invoke(["gc", "--store", store_url, "--batch", "2"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("removed 3 expired threads\n")
    listed = invoke(["threads", "list", "--store", store_url]).stdout.splitlines()
    assert listed == ["t3", "t4"]
    # Another namespace's threads wait for a gc of that namespace.
    other = ["gc", "--store", store_url, "--namespace", "other"]
    assert invoke(other).stdout.startswith("removed 3 expired threads\n")
    assert invoke(other).stdout.startswith("removed 0 expired threads\n")


def test_the_cli_cache_takes_the_servers_settings(store_url: str) -> None:
    """The commands open their cache from the same settings as `serve`: a signing key or
    retention that the server would refuse is refused here too."""
    for env in ({"AGENT_CORE_L2_SIGNING_KEY": "short"}, {"AGENT_CORE_RETENTION": "-1"}):
        result = invoke(["threads", "list", "--store", store_url], env=env)
        assert result.exit_code == 1, (env, result.output)
        assert result.stderr.startswith("error: ")
        assert next(iter(env)).removeprefix("AGENT_CORE_").lower() in result.stderr
