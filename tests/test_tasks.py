"""The shared-timer deadlines behave like asyncio.timeout, one tick looser."""

from __future__ import annotations

import asyncio
import time

import pytest

from agent_core._tasks import Deadlines


async def test_a_call_past_its_deadline_raises_timeout_error() -> None:
    deadlines = Deadlines(tick=0.01)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await deadlines.run(lambda: asyncio.sleep(10), 0.05)
    assert 0.05 <= time.monotonic() - started < 5
    # The task is usable afterwards: no cancellation is left pending.
    await asyncio.sleep(0.02)
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_fast_call_returns_its_result() -> None:
    deadlines = Deadlines(tick=0.01)

    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    assert [await deadlines.run(answer, 0.05) for _ in range(100)] == [42] * 100
    await asyncio.sleep(0.05)  # the timer stopped with nothing in flight: nothing fires
    assert deadlines.pending == 0


async def test_an_outside_cancellation_stays_a_cancellation() -> None:
    deadlines = Deadlines(tick=0.01)
    task = asyncio.create_task(deadlines.run(lambda: asyncio.sleep(10), 5.0))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_enclosing_timeout_still_wins() -> None:
    deadlines = Deadlines(tick=0.01)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.03):
            await deadlines.run(lambda: asyncio.sleep(10), 5.0)


async def test_many_concurrent_calls_each_get_their_own_deadline() -> None:
    deadlines = Deadlines(tick=0.01)

    async def call(delay: float) -> str:
        try:
            await deadlines.run(lambda: asyncio.sleep(delay), 1.0)
        except TimeoutError:
            return "timeout"
        return "done"

    # A second of margin on either side: a loaded machine cannot turn one into the other.
    results = await asyncio.gather(*(call(0.0 if i % 2 else 10.0) for i in range(20)))
    assert results == ["timeout", "done"] * 10
