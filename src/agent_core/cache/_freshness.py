"""When a cached version is known to be fresh, and flights a read may join.

A read may serve a snapshot only if the store confirmed it late enough: in strong
mode by a store query sent after the read began, in bounded mode by one sent at
most ``max_staleness`` before it. Times are ticks of one strictly increasing
clock, so "sent after the read began" is exact even for calls made in the same
nanosecond.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from .._tasks import raise_if_cancelling

_T = TypeVar("_T")


class Ticks:
    """``time.monotonic_ns()``, made strictly increasing within the process."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last = 0

    def __call__(self) -> int:
        now = time.monotonic_ns()
        if now <= self._last:
            now = self._last + 1
        self._last = now
        return now


class Flight(Generic[_T]):
    """One operation in progress; ``started`` is the tick taken before it sent anything."""

    __slots__ = ("future", "started")

    def __init__(self, started: int) -> None:
        self.started = started
        self.future: asyncio.Future[_T] = asyncio.get_running_loop().create_future()


class Flights(Generic[_T]):
    """Operations keyed by thread, joinable by callers they are fresh enough for.

    The caller that starts a flight runs it inline (no task on the hot path); a
    later caller joins it if it started after ``since``. An *exclusive* kind (loads)
    runs one flight per key at a time, so a caller that may not join waits for the
    running one to end first; otherwise (version checks) it starts its own beside it.
    """

    def __init__(self, ticks: Ticks, *, exclusive: bool) -> None:
        self._ticks = ticks
        self._exclusive = exclusive
        self._running: dict[str, Flight[_T]] = {}

    async def run(
        self,
        key: str,
        since: int,
        operation: Callable[[Flight[_T]], Awaitable[_T]],
        *,
        started: int | None = None,
    ) -> _T:
        """``operation``'s result, or that of a flight started after ``since``.

        ``started``: the flight's start, if earlier than now (the operation builds on
        something learned from the store at that tick).
        """
        while (flight := self._running.get(key)) is not None:
            fresh = flight.started > since
            if not fresh and not self._exclusive:
                break
            try:
                result = await asyncio.shield(flight.future)
            except asyncio.CancelledError:
                raise_if_cancelling()  # our own cancellation; else the runner's: retry
                continue
            except Exception:
                if fresh:
                    raise
                continue
            if fresh:
                return result
        flight = self._running[key] = Flight(self._ticks() if started is None else started)
        try:
            result = await operation(flight)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                flight.future.cancel()
            else:
                flight.future.set_exception(exc)
                flight.future.exception()  # retrieved: no warning if nobody joined
            raise
        else:
            flight.future.set_result(result)
            return result
        finally:
            if self._running.get(key) is flight:
                del self._running[key]
