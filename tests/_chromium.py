"""Debian's Chromium for the browser tests: installed with apt-get when it is missing.

Playwright's own browser download cannot work offline, so the tests drive the distribution's
build instead. A machine where it can't be installed fails the test with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Final

import pytest

CHROMIUM: Final = Path("/usr/bin/chromium")
#: Flags for a quiet, offline, headless run (no sandbox: the tests run as root).
CHROMIUM_ARGS: Final = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
_INSTALL: Final = (
    "apt-get",
    # Waits for another apt run to finish instead of failing on its lock.
    "-o",
    "DPkg::Lock::Timeout=300",
    "install",
    "-y",
    "--no-install-recommends",
    "chromium",
)
_UPDATE: Final = ("apt-get", "-o", "DPkg::Lock::Timeout=300", "update")
_TIMEOUT: Final = 900.0


def ensure_chromium() -> Path:
    """/usr/bin/chromium, installed first if missing; fails the test if it can't be."""
    if CHROMIUM.exists():
        return CHROMIUM
    if shutil.which("apt-get") is None:
        pytest.fail(
            f"the browser tests need Debian's chromium at {CHROMIUM}, and there is no apt-get "
            "to install it with: install Chromium there by hand",
            pytrace=False,
        )
    if os.geteuid() != 0:
        pytest.fail(
            f"the browser tests need Debian's chromium at {CHROMIUM}; installing it needs root: "
            f"run `sudo {' '.join(_INSTALL)}` or the tests as root",
            pytrace=False,
        )
    failure = _run(_INSTALL)
    if failure is not None:
        # A fresh machine may have no package lists yet, or stale ones.
        failure = _run(_UPDATE) or _run(_INSTALL)
    if failure is not None or not CHROMIUM.exists():
        pytest.fail(
            f"could not install chromium for the browser tests: {failure or 'no ' + str(CHROMIUM)}",
            pytrace=False,
        )
    return CHROMIUM


def _run(command: tuple[str, ...]) -> str | None:
    """None if ``command`` succeeded, else what went wrong (the end of its output)."""
    environ = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=environ,
            timeout=_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`{' '.join(command)}` failed: {exc}"
    if done.returncode == 0:
        return None
    output = (done.stdout + done.stderr).strip()[-2000:]
    return f"`{' '.join(command)}` exited {done.returncode}:\n{output}"
