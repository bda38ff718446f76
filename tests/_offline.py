"""Scripts run in a fresh interpreter whose sockets refuse to connect: proof of no network."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path

_NO_NETWORK = """\
import socket

def _deny(*args, **kwargs):
    raise OSError(f"network access attempted: {args[:2]!r}")

socket.socket.connect = _deny
socket.socket.connect_ex = _deny
socket.getaddrinfo = _deny
socket.create_connection = _deny
"""


def run_offline(
    body: str,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``body`` (dedented) after every way to open a connection has been refused."""
    return subprocess.run(
        [sys.executable, "-c", _NO_NETWORK + textwrap.dedent(body)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        check=False,
    )
