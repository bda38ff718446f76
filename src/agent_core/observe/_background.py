"""The one asyncio task a monitor runs its sampling loop in."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from .._closing import AsyncClosing
from .._tasks import cancel_and_wait


class BackgroundTask:
    """Starts ``run()`` as a task on the running loop and cancels it on `stop`."""

    def __init__(self, run: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        self._run = run
        self._name = name
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the task; does nothing if it is running. Needs a running event loop."""
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        """Cancel the task and wait for it; re-raises what it failed with, if anything."""
        task, self._task = self._task, None
        if task is None:
            return
        await cancel_and_wait(task)
        if not task.cancelled():
            task.result()


class Sampler(AsyncClosing):
    """Start/stop and ``async with`` for a monitor that samples in a `BackgroundTask`."""

    _task: BackgroundTask

    @property
    def running(self) -> bool:
        return self._task.running

    def start(self) -> None:
        """Start sampling on the running loop; does nothing if already sampling."""
        self._task.start()

    async def stop(self) -> None:
        """Stop sampling (what was recorded is kept); re-raises a failure of the sampler."""
        await self._task.stop()

    async def _enter(self) -> None:
        self.start()

    async def aclose(self) -> None:
        """`stop`, under the name ``async with`` calls."""
        await self.stop()
