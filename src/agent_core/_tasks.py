"""Stopping background tasks reliably.

On Python 3.11 a cancellation that lands while an inner ``asyncio.timeout`` (ours or
a client library's) expires can surface as ``TimeoutError``; a loop that retries
on timeouts would then swallow it and run on. These helpers make sure it doesn't.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Coroutine
from typing import Final, TypeVar

_T = TypeVar("_T")

#: Longest wait between reconnect attempts: a recovered service is found within it.
MAX_BACKOFF: Final = 0.5


def cancelling() -> bool:
    """Whether the current task is being cancelled (a cancellation is pending on it)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def raise_if_cancelling() -> None:
    """In an ``except TimeoutError`` of a retry loop: stop if the task is being cancelled."""
    if cancelling():
        raise asyncio.CancelledError


async def cancel_and_wait(task: asyncio.Task[object] | None) -> None:
    """Cancel ``task`` until it ends; a cancellation of the caller still propagates."""
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.1)


class Deadlines:
    """Deadlines for many short calls from one shared timer.

    ``asyncio.timeout`` schedules and cancels a timer per call, which costs as much
    as a fast Redis round trip here. This keeps the in-flight calls in a dict and
    checks them every ``tick`` seconds, so a call may run up to one tick past its
    deadline. Like ``asyncio.timeout`` it cancels the calling task and turns that
    cancellation, and only that one, into ``TimeoutError``.
    """

    def __init__(self, tick: float = 0.01) -> None:
        self._tick = tick
        self._now = 0
        self._pending: dict[asyncio.Task[object], int] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def pending(self) -> int:
        """How many calls are in flight, each with its deadline."""
        return len(self._pending)

    async def run(self, operation: Callable[[], Awaitable[_T]], limit: float) -> _T:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Deadlines.run needs a running task")
        # +1: the current tick is partly over already.
        self._pending[task] = self._now + math.ceil(limit / self._tick) + 1
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._tick, self._check)
        try:
            return await operation()
        except asyncio.CancelledError:
            if task in self._expired:
                self._expired.discard(task)
                if task.uncancel() == 0:
                    raise TimeoutError(f"no answer within {limit} s") from None
            raise
        finally:
            self._pending.pop(task, None)

    def _check(self) -> None:
        self._now += 1
        for task, expires in list(self._pending.items()):
            if expires <= self._now:
                del self._pending[task]
                self._expired.add(task)
                task.cancel()
        self._timer = (
            asyncio.get_running_loop().call_later(self._tick, self._check)
            if self._pending
            else None
        )


class TaskGroup:
    """Background tasks kept alive until they end, and awaited together at close.

    Unlike `asyncio.TaskGroup` it is not a scope: tasks are added from callbacks,
    and one task's failure does not cancel the others.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait(self) -> None:
        """Wait for every task started so far (their errors are theirs to handle)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
