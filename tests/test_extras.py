"""The core imports without the service stack; a missing extra is a typed error naming it.

Each check runs in a fresh interpreter, so that nothing this test process imported counts.
Setting ``sys.modules[name] = None`` makes ``import name`` raise ModuleNotFoundError, as
when the package is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import agent_core

# Every test runs a fresh interpreter: that is what it checks.
pytestmark = pytest.mark.integration

#: What the core must not load: the ``server``, ``cli`` and ``postgres`` extras, and the
#: driver only the benchmarks use. (Not ``cryptography``, the ``encryption`` extra: redis-py
#: imports it, when installed, to learn whether it is.)
SERVICE_STACK = (
    "fastapi",
    "starlette",
    "uvicorn",
    "typer",
    "rich",
    "prometheus_client",
    "asyncpg",
    "psycopg",
)
SERVER = ("fastapi", "starlette", "uvicorn", "prometheus_client")
CLI = ("typer", "rich", "click")


def _run(code: str, *, blocked: tuple[str, ...] = (), cwd: Path | None = None) -> Any:
    """Run ``code`` in a new interpreter with ``blocked`` not importable; its printed JSON."""
    prelude = f"import sys\nfor _name in {list(blocked)!r}:\n    sys.modules[_name] = None\n"
    env = {**os.environ, "PYTHONPATH": str(Path(agent_core.__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def _error_of(statement: str, *, blocked: tuple[str, ...]) -> tuple[str, str]:
    """The qualified type and message of what ``statement`` raised, run with ``blocked``."""
    raised = _run(
        f"""
        import json
        try:
            {statement}
        except Exception as exc:
            print(json.dumps([type(exc).__module__ + "." + type(exc).__name__, str(exc)]))
        else:
            print(json.dumps(["nothing raised", ""]))
        """,
        blocked=blocked,
    )
    return raised[0], raised[1]


def test_the_core_loads_none_of_the_service_stack(tmp_path: Path) -> None:
    loaded = _run(
        """
        import asyncio, json, sys
        import agent_core
        from agent_core import BaseAgent, ConversationCache, EchoModel, TokenCounter

        async def main() -> int:
            async with ConversationCache.from_urls(store="sqlite:///core.db") as cache:
                await cache.append("t", [{"role": "user", "content": "hi"}])
                agent = BaseAgent(EchoModel(), cache)
                reply = await agent.run("t", "hello")
                window = await cache.window("t", max_tokens=1000, model="gpt-4o")
                assert window.token_count > 0
                return reply.version

        version = asyncio.run(main())
        assert version == 3, version
        assert TokenCounter.for_model("gpt-4o").count("tiktoken is great!") == 6
        print(json.dumps(sorted({name.partition(".")[0] for name in sys.modules})))
        """,
        cwd=tmp_path,
    )
    assert "agent_core" in loaded
    assert set(SERVICE_STACK).isdisjoint(loaded)


def test_the_core_works_with_every_extra_missing(tmp_path: Path) -> None:
    version = _run(
        """
        import asyncio, json
        from agent_core import *
        from agent_core import ConversationCache

        async def main() -> int:
            async with ConversationCache.from_urls(store="sqlite:///core.db") as cache:
                return await cache.append("t", [{"role": "user", "content": "hi"}])

        print(json.dumps(asyncio.run(main())))
        """,
        blocked=SERVICE_STACK + CLI + ("mangum", "matplotlib"),
        cwd=tmp_path,
    )
    assert version == 1


POSTGRES_MISSING = (
    "agent_core.errors.ConfigurationError",
    "PostgreSQL needs asyncpg: pip install 'agent-core[postgres]'",
)


@pytest.mark.parametrize(
    "statement",
    [
        "agent_core.store_from_url('postgresql://postgres@127.0.0.1/test')",
        "from agent_core import PostgresStore",
        "from agent_core.store import PostgresStore",
        "agent_core.ConversationCache.from_urls(store='postgresql://postgres@127.0.0.1/test')",
    ],
)
def test_postgres_without_asyncpg(statement: str) -> None:
    blocked = ("asyncpg",)
    assert _error_of(f"import agent_core; {statement}", blocked=blocked) == POSTGRES_MISSING


def test_encryption_without_cryptography() -> None:
    statement = "import agent_core; agent_core.EncryptionKeys([('k1', bytes(32))])"
    assert _error_of(statement, blocked=("cryptography",)) == (
        "agent_core.errors.ConfigurationError",
        "Encryption at rest needs cryptography: pip install 'agent-core[encryption]'",
    )


def test_server_without_its_extra() -> None:
    assert _error_of("from agent_core.server import create_app", blocked=SERVER) == (
        "agent_core.errors.ConfigurationError",
        "The HTTP service needs fastapi: pip install 'agent-core[server]'",
    )
    assert _error_of("import agent_core.serverless", blocked=SERVER) == (
        "agent_core.errors.ConfigurationError",
        "The HTTP service needs fastapi: pip install 'agent-core[server]'",
    )


def test_metrics_without_prometheus_client() -> None:
    blocked = ("prometheus_client",)
    assert _error_of("from agent_core.server import create_app", blocked=blocked) == (
        "agent_core.errors.ConfigurationError",
        "The HTTP service needs prometheus-client: pip install 'agent-core[server]'",
    )


def test_lambda_handler_without_mangum() -> None:
    blocked = ("mangum",)
    assert _error_of("import agent_core.serverless as s; s.handler", blocked=blocked) == (
        "agent_core.errors.ConfigurationError",
        "agent_core.serverless.handler needs mangum: pip install 'agent-core[lambda]'",
    )


def test_console_script_without_the_cli_extra() -> None:
    # The console script's entry point is agent_core.cli:main.
    assert _error_of("from agent_core.cli import main", blocked=CLI) == (
        "agent_core.errors.ConfigurationError",
        "The agent-core command needs typer: pip install 'agent-core[cli]'",
    )


def test_serve_without_the_server_extra_is_one_line(tmp_path: Path) -> None:
    # The cli extra alone runs bench, chat and stats; serve names the server extra.
    outcome = _run(
        """
        import json, sys
        from contextlib import redirect_stderr
        from io import StringIO
        from agent_core.cli import main

        sys.argv = ["agent-core", "serve", "--store", "sqlite:///serve.db"]
        err = StringIO()
        try:
            with redirect_stderr(err):
                main()
        except SystemExit as exit:
            print(json.dumps([exit.code, err.getvalue()]))
        """,
        blocked=SERVER,
        cwd=tmp_path,
    )
    code, stderr = outcome
    assert code == 1
    assert "The HTTP service needs fastapi: pip install 'agent-core[server]'" in stderr
    assert "Traceback" not in stderr
