"""``agent-core serve`` as a real subprocess, for the tests that talk to it over HTTP."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from agent_core.cli import app

from ._redis_server import free_port


def create_key(keys_file: Path, tenant: str, *scopes: str) -> str:
    """A new key of ``tenant`` in ``keys_file`` (read and write unless ``scopes``), made
    by ``agent-core keys create`` in this process; returns the key."""
    args = ["keys", "create", "--keys-file", str(keys_file), "--tenant", tenant]
    for scope in scopes:
        args += ["--scope", scope]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()[-1]


class ServeProcess:
    """``agent-core serve`` on a free port and a SQLite store in ``directory``.

    The port goes through ``AGENT_CORE_PORT`` and the store through ``--store``, so both
    ways of configuring it are used; none of the caller's ``AGENT_CORE_*`` variables
    leak in, ``env`` adds its own. `stop` and `start` again keep the port and store.
    """

    def __init__(
        self,
        directory: Path,
        env: Mapping[str, str] | None = None,
        *,
        store: str | None = None,
        args: Sequence[str] = (),
        ca: Path | None = None,
    ) -> None:
        self.directory = directory
        self.port = free_port()
        #: ``--store`` (default: SQLite in ``directory``), more options, and the CA that
        #: signed its ``--ssl-certfile`` (then the URL is https and the CA is trusted).
        self.store = store or f"sqlite:///{directory / 'serve.db'}"
        self.args = list(args)
        self.verify: ssl.SSLContext | bool = True
        if ca is not None:
            self.verify = ssl.create_default_context(cafile=str(ca))
        self.url = f"{'http' if ca is None else 'https'}://127.0.0.1:{self.port}"
        self.log = directory / "serve.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_CORE_")}
        self.env |= {"AGENT_CORE_PORT": str(self.port), **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        """Start it and wait (up to 30 s) until ``/healthz`` answers 200."""
        command = [sys.executable, "-m", "agent_core.cli", "serve"]
        command += ["--store", self.store, *self.args]
        with self.log.open("ab") as output:  # a file, not a pipe nobody reads
            process = self.process = subprocess.Popen(
                command, cwd=self.directory, env=self.env, stdout=output, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"serve exited with {process.returncode}:\n{self.log.read_text()}")
            try:
                if (
                    httpx.get(f"{self.url}/healthz", timeout=1, verify=self.verify).status_code
                    == 200
                ):
                    return process
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"serve did not answer /healthz within 30 s:\n{self.log.read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM, as a platform stops it; killed if it has not exited within 10 s."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
