"""`make demo` runs: the demo script on a fresh SQLite file, no Redis, offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Runs the demo in a subprocess.
pytestmark = pytest.mark.integration

_RUN_DEMO = "import sys; from agent_core._demo import main; sys.exit(main())"


def test_demo_runs_on_a_fresh_store(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'demo.db'}"
    result = subprocess.run(
        [sys.executable, "-c", _RUN_DEMO, "--store", store],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for expected in ("turn 1", "turn 3", "history from store", "window", "done"):
        assert expected in result.stdout, result.stdout
    # The stored thread holds the assistant's reply once: the retry wrote nothing.
    assert result.stdout.count("'content': '18 °C and clear. 🌤'}") == 1, result.stdout
