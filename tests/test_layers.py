"""The import structure: one-way layers, no cycle, no private access across packages.

The checks and the layer map are in tests/_layers.py (``python -m tests._layers`` prints
the full report, tests and benchmarks included). Tests and benchmarks use no private part
of agent_core but the exceptions listed in `TEST_ALLOWED` and `BENCHMARK_ALLOWED`.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
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


def test_a_private_use_by_a_test_fails_unless_listed(tmp_path: Path) -> None:
    library = {
        "__init__.py": "",
        "cache/__init__.py": "from ._l1 import L1\n",
        "cache/_l1.py": "class L1:\n    _raw = b''\n    def get(self):\n        return self._raw\n",
    }
    tests = {
        "tests/__init__.py": "",
        "tests/test_l1.py": (
            "from agent_core.cache import L1\n"
            "from agent_core.cache._l1 import L1 as Inner\n"
            "def test_l1(m):\n    return L1()._raw, m._elsewhere\n"
        ),
    }
    for name, text in {**{f"agent_core/{k}": v for k, v in library.items()}, **tests}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    modules = _layers.parse((tmp_path / "agent_core").rglob("*.py"), tmp_path)
    found = _layers.private_violations(
        _layers.parse((tmp_path / "tests").rglob("*.py"), tmp_path), modules, outside=True
    )
    # ``_elsewhere`` is no name of the library: not agent_core's to guard.
    assert {(v.module, v.rule, v.used) for v in found} == {
        ("tests.test_l1", "private module", "agent_core.cache._l1"),
        ("tests.test_l1", "private attribute", "._raw"),
    }

    failures = _layers.Findings([], [], [], [], found).failures()
    assert sorted(f for f in failures if not f.startswith("stale ")) == sorted(map(str, found))
    # With no use left, every entry of both lists is stale, and fails.
    stale = {f for f in failures if f.startswith("stale ")}
    assert stale == {
        *(f"stale TEST_ALLOWED entry: {e}" for e in _layers.TEST_ALLOWED),
        *(f"stale BENCHMARK_ALLOWED entry: {e}" for e in _layers.BENCHMARK_ALLOWED),
    }
    # A listed use passes: the same finding, made by a test module and use an entry names.
    module, used = min(_layers.TEST_ALLOWED)
    listed = replace(found[0], module=module, used=used)
    assert str(listed) not in _layers.Findings([], [], [], [], [listed]).failures()


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
