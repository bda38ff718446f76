"""The README's Python examples run as written, as they would in ``python -m asyncio``: each
block alone, in a fresh directory (for its ``sqlite:///agent-core.db``), offline."""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```$", README.read_text(encoding="utf-8"), re.M | re.S)
#: The shared Redis of the cache example is not the test's to write to: no L2 here.
REDIS_URL = '"redis://127.0.0.1:6379/0"'


def test_the_readme_has_python_examples() -> None:
    assert len(BLOCKS) >= 3


def test_the_readme_says_how_to_run_top_level_await() -> None:
    assert "python -m asyncio" in README.read_text(encoding="utf-8")


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_a_readme_example_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = BLOCKS[index].replace(REDIS_URL, "None")
    code = compile(
        source, f"README.md python block {index + 1}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    )
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "__readme__"}

    async def run() -> None:
        result = eval(code, namespace)  # the README's own examples
        if inspect.iscoroutine(result):
            await result

    asyncio.run(run())
