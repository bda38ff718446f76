"""The import structure: one-way layers, no cycle, no private access across packages.

The checks and the layer map are in tests/_layers.py (``python -m tests._layers`` prints
the full report, tests and benchmarks included).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from . import _layers


def test_no_import_cycle_and_layers_point_one_way() -> None:
    findings = _layers.check()
    assert not findings.cycles, findings.cycles
    assert not findings.upward, "\n".join(map(str, findings.upward))


def test_no_private_access_across_packages() -> None:
    failures = _layers.check().failures()
    assert not failures, "\n".join(failures)


def test_every_library_module_has_a_layer() -> None:
    for name in _layers.library():
        _layers.layer_of(name)


def test_the_checker_finds_a_cycle_an_upward_import_and_private_access(tmp_path: Path) -> None:
    files = {
        "__init__.py": "",
        "errors.py": "def f():\n    from .messages import Message\n",
        "messages.py": "from .errors import f\nclass Message:\n    _raw = b''\n",
        "cache/__init__.py": "from ._l1 import L1\n",
        "cache/_l1.py": (
            "from typing import TYPE_CHECKING\n"
            "from ..messages import Message\n"
            "if TYPE_CHECKING:\n    from ..cli import main\n"
            "class L1:\n"
            "    def get(self, m):\n        self._own = 1\n        return m._raw, self._own\n"
        ),
        "cli.py": "from .cache._l1 import L1\nfrom .cache import L1 as Front\n",
        "bench/__init__.py": "from ..cache import _l1\n",
    }
    for name, text in files.items():
        (tmp_path / "agent_core" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "agent_core" / name).write_text(text)
    modules = _layers.parse((tmp_path / "agent_core").rglob("*.py"), tmp_path)

    # TYPE_CHECKING and function-level imports count.
    assert _layers.cycles(_layers.import_graph(modules)) == [
        ["agent_core.cache", "agent_core.cache._l1", "agent_core.cli"],
        ["agent_core.errors", "agent_core.messages"],
    ]
    upward = {(v.module, v.used) for v in _layers.layer_violations(modules)}
    assert upward == {
        ("agent_core.errors", "agent_core.messages"),
        ("agent_core.cache._l1", "agent_core.cli"),
    }
    private = {
        (v.module, v.rule, v.used)
        for v in _layers.private_violations(modules, modules, outside=False)
    }
    assert private == {
        ("agent_core.cache._l1", "private attribute", "._raw"),
        ("agent_core.cli", "private module", "agent_core.cache._l1"),
        ("agent_core.bench", "private module", "agent_core.cache._l1"),
    }


@pytest.mark.integration  # a fresh interpreter
def test_token_count_works_when_only_messages_is_imported() -> None:
    """messages.py leaves counting to tokens/, which agent_core's root must import."""
    code = (
        "from agent_core.messages import Conversation, Message\n"
        "c = Conversation('t', 1, [Message({'role': 'user', 'content': 'hi'})])\n"
        "print(c.token_count('gpt-4o'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 0
