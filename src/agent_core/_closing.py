"""`async with` for anything that has an ``aclose()``."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class AsyncClosing:
    """Adds ``async with``: entering awaits ``_enter()`` and returns the object, leaving
    awaits ``aclose()``."""

    __slots__ = ()

    async def _enter(self) -> None:
        """What entering does first: nothing, unless the object opens or starts on entry."""

    async def aclose(self) -> None:
        """Release what the object holds; subclasses say what."""

    async def __aenter__(self) -> Self:
        await self._enter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
