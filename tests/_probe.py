"""`Holds`: a `CacheProbe` that pauses a cache's loads at chosen points, for race tests."""

from __future__ import annotations

import asyncio


class Holds:
    """Pause the next load that reaches a held point until that hold is released."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[asyncio.Event, asyncio.Event]] = {}

    def hold(self, point: str) -> tuple[asyncio.Event, asyncio.Event]:
        """``(reached, release)`` for ``point`` ("loaded" or "l1_fill")."""
        events = self._held[point] = (asyncio.Event(), asyncio.Event())
        return events

    def clear(self) -> None:
        """Hold nothing from now on."""
        self._held.clear()

    async def loaded(self, thread_id: str) -> None:
        await self._at("loaded")

    async def l1_fill(self, thread_id: str) -> None:
        await self._at("l1_fill")

    async def _at(self, point: str) -> None:
        held = self._held.get(point)
        if held is not None:
            reached, release = held
            reached.set()
            await release.wait()
