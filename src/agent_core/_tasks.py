"""Stopping background tasks reliably.

On Python 3.11 a cancellation that lands while an inner ``asyncio.timeout`` (ours or
a client library's) expires can surface as ``TimeoutError``; a loop that retries
on timeouts would then swallow it and run on. These helpers make sure it doesn't.
"""

from __future__ import annotations

import asyncio
from typing import Final

#: Longest wait between reconnect attempts: a recovered service is found within it.
MAX_BACKOFF: Final = 0.5


def raise_if_cancelling() -> None:
    """In an ``except TimeoutError`` of a retry loop: stop if the task is being cancelled."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def cancel_and_wait(task: asyncio.Task[object] | None) -> None:
    """Cancel ``task`` until it ends; a cancellation of the caller still propagates."""
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.1)
