"""A private ``redis-server`` for a benchmark run: a free loopback port, nothing on disk.

Not a benchmark itself; ``cold_start.py``, ``cache_latency.py``, ``redis_faults.py``
and ``chaos.py`` import it. The
shared Redis on 6379 is never touched.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from _support import BenchmarkError


def redis_server_version() -> str:
    """The first line of ``redis-server --version``."""
    try:
        result = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise BenchmarkError(f"redis-server is required on PATH: {exc!r}") from exc
    return result.stdout.strip()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def private_redis() -> Iterator[str]:
    """Start ``redis-server`` on a free port; yields its URL; stops it afterwards."""
    with tempfile.TemporaryDirectory(prefix="ac-bench-redis-") as directory:
        port = free_port()
        command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", directory]
        try:
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        except OSError as exc:
            raise BenchmarkError(f"cannot start redis-server: {exc!r}") from exc
        try:
            deadline = time.monotonic() + 10
            while not _answers(port):
                if process.poll() is not None:
                    raise BenchmarkError(f"redis-server exited with {process.returncode}")
                if time.monotonic() > deadline:
                    raise BenchmarkError(f"redis-server did not answer on port {port}")
                time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class RedisProcess:
    """``redis-server`` on one free port that can be killed, restarted, paused and resumed."""

    def __init__(self, directory: str) -> None:
        self.port = free_port()
        self._directory = directory
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", self._directory]
        try:
            self._process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
            )
        except OSError as exc:
            raise BenchmarkError(f"cannot start redis-server: {exc!r}") from exc
        deadline = time.monotonic() + 10
        while not _answers(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise BenchmarkError(f"redis-server did not come up on port {self.port}")
            time.sleep(0.01)

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def pause(self) -> None:
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGCONT)
