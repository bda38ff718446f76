"""Context files: read concurrently off the event loop, cached with their token counts.

A file is cached under its resolved path and keeps its entry while ``(mtime_ns, size)``
stay the same; a changed file is read again. Each file becomes one system message,
``<file path="...">`` + its text + ``</file>``, and its billed count is kept per count
key, so a turn that reuses the files counts nothing.
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from .._quote import quote
from ..errors import ContextFileError, InvalidArgument
from ..messages import Message
from ..tokens import TokenCounter

__all__ = ["ContextFile", "ContextFiles"]

_DEFAULT_MAX_FILE_BYTES: Final = 8 << 20
_DEFAULT_MAX_ENTRIES: Final = 256


@dataclass(frozen=True, slots=True)
class ContextFile:
    """One file as the model sees it: a system message, and its billed tokens per key."""

    path: str
    mtime_ns: int
    size: int
    message: Message
    tokens: dict[str, int] = field(default_factory=dict, compare=False)


class ContextFiles:
    """Reads context files in worker threads and caches them by (path, mtime, size)."""

    def __init__(
        self,
        *,
        max_file_bytes: int = _DEFAULT_MAX_FILE_BYTES,
        max_entries: int = _DEFAULT_MAX_ENTRIES,
    ) -> None:
        for name, value in (("max_file_bytes", max_file_bytes), ("max_entries", max_entries)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgument(f"{name} must be an int >= 1, got {quote(value)}")
        self._max_file_bytes = max_file_bytes
        self._max_entries = max_entries
        self._entries: OrderedDict[str, ContextFile] = OrderedDict()
        self.reads = 0

    async def load(
        self, paths: Sequence[str | os.PathLike[str]], counter: TokenCounter
    ) -> tuple[ContextFile, ...]:
        """The files, in order, each counted for ``counter``; all read concurrently.

        Raises `ContextFileError` naming the first file that is missing, unreadable, not
        UTF-8 text or larger than ``max_file_bytes``.
        """
        if isinstance(paths, str | bytes) or not isinstance(paths, Sequence):
            raise InvalidArgument(f"context files must be a sequence of paths, got {quote(paths)}")
        files = await asyncio.gather(*(self._file(path) for path in paths))
        for file in files:
            if counter.key not in file.tokens:
                file.tokens[counter.key] = await _count(counter, file.message)
        return tuple(files)

    async def _file(self, path: str | os.PathLike[str]) -> ContextFile:
        if not isinstance(path, str | os.PathLike) or not os.fspath(path):
            raise InvalidArgument(
                f"a context file path must be a non-empty str or Path, got {quote(path)}"
            )
        resolved, mtime_ns, size = await asyncio.to_thread(_stat, Path(path))
        held = self._entries.get(resolved)
        if held is not None and (held.mtime_ns, held.size) == (mtime_ns, size):
            self._entries.move_to_end(resolved)
            return held
        if size > self._max_file_bytes:
            raise ContextFileError(
                f"context file {resolved} is {size:,} bytes, over max_file_bytes="
                f"{self._max_file_bytes:,}; shorten it or raise the limit"
            )
        text, mtime_ns, size = await asyncio.to_thread(_read, Path(resolved))
        self.reads += 1
        # JSON escapes can make the message up to 6 times the text (\u0000 per byte).
        message = Message.from_dict(_as_dict(resolved, text), max_bytes=6 * size + 1024)
        file = ContextFile(resolved, mtime_ns, size, message)
        self._entries[resolved] = file
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return file


def _stat(path: Path) -> tuple[str, int, int]:
    try:
        resolved = path.resolve(strict=True)
        stat = resolved.stat()
    except FileNotFoundError:
        raise ContextFileError(f"context file {path} does not exist") from None
    except OSError as exc:
        raise ContextFileError(f"context file {path} cannot be read: {exc.strerror}") from None
    if not resolved.is_file():
        raise ContextFileError(f"context file {resolved} is not a regular file")
    return str(resolved), stat.st_mtime_ns, stat.st_size


def _read(path: Path) -> tuple[str, int, int]:
    try:
        with path.open("rb") as handle:
            # The stat after opening describes what is read, even if the file changes.
            stat = os.fstat(handle.fileno())
            data = handle.read()
    except OSError as exc:
        raise ContextFileError(f"context file {path} cannot be read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ContextFileError(
            f"context file {path} is not UTF-8 text (byte {exc.start}): convert it or leave it out"
        ) from None
    return text, stat.st_mtime_ns, stat.st_size


def _as_dict(path: str, text: str) -> dict[str, str]:
    return {"role": "system", "content": f'<file path="{path}">\n{text}\n</file>'}


async def _count(counter: TokenCounter, message: Message) -> int:
    content = message.to_dict()["content"]
    if len(content) < 64 << 10:
        return counter.count_message(message)
    return await asyncio.to_thread(counter.count_message, message)
