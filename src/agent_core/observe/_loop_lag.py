"""Event-loop lag, sampled the way Node's ``perf_hooks.monitorEventLoopDelay`` does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from .._validation import check_number
from ._background import BackgroundTask, Sampler
from ._histogram import Histogram

#: The default loop's timers wake up at millisecond granularity (epoll), so a shorter
#: interval would not sample more often.
MIN_INTERVAL: Final = 0.001


@dataclass(frozen=True, slots=True)
class LoopLagSnapshot:
    """Loop lag so far, in seconds; all 0.0 while ``count`` is 0."""

    count: int
    p50: float
    p90: float
    p99: float
    max: float
    mean: float


class LoopLagMonitor(Sampler):
    """Samples loop lag by sleeping ``interval`` seconds, again and again.

    Each sample is how much longer than ``interval`` the sleep took: the time the loop
    spent on other callbacks (or blocked in one) before it got to the wake-up. A
    sample costs one sleep and one histogram increment. Use it as
    ``async with LoopLagMonitor() as lag:`` or call `start` and `stop` yourself.
    ``on_sample``, if given, is also called with each sample (seconds), on the loop.
    """

    def __init__(
        self,
        interval: float = MIN_INTERVAL,
        *,
        on_sample: Callable[[float], None] | None = None,
    ) -> None:
        self._interval = check_number(
            "interval",
            interval,
            lambda v: v >= MIN_INTERVAL,
            f"a number of seconds >= {MIN_INTERVAL}",
        )
        self._histogram = Histogram()
        self._on_sample = on_sample
        self._task = BackgroundTask(self._sample, "agent-core-loop-lag")

    @property
    def interval(self) -> float:
        return self._interval

    @property
    def histogram(self) -> Histogram:
        """Every sample so far; reset it to start a new window."""
        return self._histogram

    def snapshot(self) -> LoopLagSnapshot:
        histogram = self._histogram
        return LoopLagSnapshot(
            count=histogram.count,
            p50=histogram.percentile(50),
            p90=histogram.percentile(90),
            p99=histogram.percentile(99),
            max=histogram.max,
            mean=histogram.mean,
        )

    async def _sample(self) -> None:
        interval = self._interval
        record = self._histogram.record
        on_sample = self._on_sample
        # perf_counter, not loop.time(): uvloop's loop clock is cached at 1 ms resolution.
        clock = time.perf_counter
        while True:
            started = clock()
            await asyncio.sleep(interval)
            lag = clock() - started - interval
            lag = lag if lag > 0.0 else 0.0
            record(lag)
            if on_sample is not None:
                on_sample(lag)
