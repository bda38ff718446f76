"""``agent-core serve`` as a real subprocess, for the tests that talk to it over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
import pytest

from ._redis_server import free_port


class ServeProcess:
    """``agent-core serve`` on a free port and a SQLite store in ``directory``.

    The port goes through ``AGENT_CORE_PORT`` and the store through ``--store``, so both
    ways of configuring it are used; none of the caller's ``AGENT_CORE_*`` variables
    leak in, ``env`` adds its own. `stop` and `start` again keep the port and store.
    """

    def __init__(self, directory: Path, env: Mapping[str, str] | None = None) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = directory / "serve.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_CORE_")}
        self.env |= {"AGENT_CORE_PORT": str(self.port), **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        """Start it and wait (up to 30 s) until ``/healthz`` answers 200."""
        command = [sys.executable, "-m", "agent_core.cli", "serve"]
        command += ["--store", f"sqlite:///{self.directory / 'serve.db'}"]
        with self.log.open("ab") as output:  # a file, not a pipe nobody reads
            process = self.process = subprocess.Popen(
                command, cwd=self.directory, env=self.env, stdout=output, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"serve exited with {process.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
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
