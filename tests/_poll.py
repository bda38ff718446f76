"""Waiting for a condition with a generous deadline, instead of sleeping and then asserting.

A loaded machine can delay any event by far more than a fixed sleep allows; a deadline of
seconds only fails a test whose condition never comes true. Both helpers raise an
AssertionError naming the condition and what it last returned (or ``show()``).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable

WITHIN = 10.0
INTERVAL = 0.005


async def eventually(
    predicate: Callable[[], object],
    *,
    within: float = WITHIN,
    interval: float = INTERVAL,
    show: Callable[[], object] | None = None,
) -> None:
    """Wait until ``predicate()`` (awaited if it returns an awaitable) is truthy."""
    deadline = time.monotonic() + within
    while True:
        seen = predicate()
        if inspect.isawaitable(seen):
            seen = await seen
        if seen:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(_failure(predicate, within, show() if show else seen))
        await asyncio.sleep(interval)


def eventually_sync(
    predicate: Callable[[], object],
    *,
    within: float = WITHIN,
    interval: float = INTERVAL,
    show: Callable[[], object] | None = None,
) -> None:
    """``eventually`` for a condition that threads or other processes bring about."""
    deadline = time.monotonic() + within
    while not (seen := predicate()):
        if time.monotonic() >= deadline:
            raise AssertionError(_failure(predicate, within, show() if show else seen))
        time.sleep(interval)


def _failure(predicate: Callable[[], object], within: float, seen: object) -> str:
    code = getattr(predicate, "__code__", None)
    where = f" ({code.co_filename}:{code.co_firstlineno})" if code is not None else ""
    name = getattr(predicate, "__qualname__", repr(predicate))
    return f"{name}{where} still not true after {within} s; last seen: {seen!r}"
