"""A private ``redis-server`` for a benchmark run: a free loopback port, nothing on disk.

Not a benchmark itself; ``cold_start.py`` and ``cache_latency.py`` import it. The
shared Redis on 6379 is never touched.
"""

from __future__ import annotations

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
