"""Context files: concurrent reads off the loop, cached by (path, mtime, size), typed errors."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from agent_core import ContextFileError, InvalidArgument, TokenCounter
from agent_core.agent._context_files import ContextFiles

GPT4O = TokenCounter.for_model("gpt-4o")


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


async def test_files_become_system_messages_counted_once(tmp_path: Path) -> None:
    a = write(tmp_path / "a.md", "# Notes\nThe capital of France is Paris.")
    b = write(tmp_path / "b.py", "def answer() -> int:\n    return 42\n")
    files = ContextFiles()
    loaded = await files.load([a, str(b)], GPT4O)
    assert [f.path for f in loaded] == [str(a.resolve()), str(b.resolve())]
    content = loaded[0].message.to_dict()
    assert content == {
        "role": "system",
        "content": f'<file path="{a.resolve()}">\n'
        "# Notes\nThe capital of France is Paris.\n</file>",
    }
    assert loaded[0].tokens["o200k_base"] == GPT4O.count_message(content)
    again = await files.load([a, b], GPT4O)
    assert again == loaded
    assert files.reads == 2
    await files.load([a, b], TokenCounter.for_model("gpt-4"))
    assert loaded[1].tokens.keys() == {"o200k_base", "cl100k_base"}
    assert files.reads == 2


async def test_a_changed_file_is_read_again(tmp_path: Path) -> None:
    path = write(tmp_path / "notes.txt", "first version")
    files = ContextFiles()
    (first,) = await files.load([path], GPT4O)
    write(path, "second version, longer")
    (second,) = await files.load([path], GPT4O)
    assert "second version" in second.message.to_dict()["content"]
    assert second.tokens["o200k_base"] > first.tokens["o200k_base"]
    assert files.reads == 2


async def test_reads_run_concurrently_in_worker_threads(tmp_path: Path) -> None:
    paths = [write(tmp_path / f"f{i}.txt", f"file {i}") for i in range(8)]
    loop_thread = threading.get_ident()
    seen: set[int] = set()
    real_open = Path.open

    def recording_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        seen.add(threading.get_ident())
        return real_open(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "open", recording_open)
        loaded = await ContextFiles().load(paths, GPT4O)
    assert len(loaded) == 8
    assert loop_thread not in seen
    assert len(seen) >= 2, "the files were read one after another"


async def test_bad_files_raise_clear_errors(tmp_path: Path) -> None:
    files = ContextFiles(max_file_bytes=100)
    good = write(tmp_path / "good.txt", "fine")
    with pytest.raises(ContextFileError, match="does not exist"):
        await files.load([good, tmp_path / "missing.txt"], GPT4O)
    with pytest.raises(ContextFileError, match="not a regular file"):
        await files.load([tmp_path], GPT4O)
    (tmp_path / "binary.bin").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ContextFileError, match="not UTF-8"):
        await files.load([tmp_path / "binary.bin"], GPT4O)
    big = write(tmp_path / "big.txt", "x" * 101)
    with pytest.raises(ContextFileError, match="max_file_bytes=100"):
        await files.load([big], GPT4O)
    if os.geteuid() != 0:  # root reads anything
        locked = write(tmp_path / "locked.txt", "secret")
        locked.chmod(0)
        with pytest.raises(ContextFileError, match="cannot be read"):
            await files.load([locked], GPT4O)


@pytest.mark.parametrize("paths", ["a.txt", b"a.txt", [""], [None], 3])
async def test_bad_arguments(paths: Any) -> None:
    with pytest.raises(InvalidArgument):
        await ContextFiles().load(paths, GPT4O)


@pytest.mark.parametrize("option", [{"max_file_bytes": 0}, {"max_entries": True}])
def test_bad_options(option: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        ContextFiles(**option)


async def test_the_cache_is_bounded(tmp_path: Path) -> None:
    files = ContextFiles(max_entries=2)
    paths = [write(tmp_path / f"{i}.txt", str(i)) for i in range(3)]
    for path in paths:
        await files.load([path], GPT4O)
    await files.load([paths[0]], GPT4O)
    assert files.reads == 4
    await asyncio.sleep(0)
