"""`RecentSamples`: the last few seconds of a measurement, which the dashboard charts.

The Prometheus histograms and the loop-lag monitor count since the start; a live chart needs
what happened lately, for any number of viewers, so nothing is reset when it is read.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ..observe import nearest_rank

__all__ = ["READ_TIERS", "RecentActivity", "RecentSamples", "RecentSummary"]


@dataclass(frozen=True, slots=True)
class RecentSummary:
    """Nearest-rank percentiles of the recent samples, in seconds; all 0.0 while ``count`` is 0."""

    count: int
    p50: float
    p95: float
    p99: float
    max: float


class RecentSamples:
    """The values added in the last ``window`` seconds, at most the newest ``max_samples``.

    Memory is bounded by ``max_samples``: under more traffic than that per window the
    summary covers the newest samples only. Not thread-safe: use it from the event loop.
    """

    __slots__ = ("_clock", "_samples", "_window")

    def __init__(
        self, window: float, max_samples: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._window = window
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self._clock = clock

    @property
    def window(self) -> float:
        return self._window

    def add(self, value: float) -> None:
        self._samples.append((self._clock(), value))

    def summary(self) -> RecentSummary:
        """The samples of the last ``window`` seconds; older ones are dropped now."""
        samples = self._samples
        cutoff = self._clock() - self._window
        while samples and samples[0][0] < cutoff:
            samples.popleft()
        values = sorted(value for _, value in samples)
        if not values:
            return RecentSummary(0, 0.0, 0.0, 0.0, 0.0)
        return RecentSummary(
            count=len(values),
            p50=nearest_rank(values, 50),
            p95=nearest_rank(values, 95),
            p99=nearest_rank(values, 99),
            max=values[-1],
        )


#: The tiers a thread read can be served by, as `BaseAgent` and the GET handler name them.
READ_TIERS: Final = ("l1", "l2", "store")
#: Enough for 400 reads a second per tier over the default window.
_MAX_READS: Final = 4096
#: The loop-lag monitor samples at most 100 times a second.
_MAX_LAG_SAMPLES: Final = 2048


class RecentActivity:
    """Thread-read latency by serving tier, and loop lag, over the last ``window`` seconds."""

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self.reads = {tier: RecentSamples(window, _MAX_READS) for tier in READ_TIERS}
        self.loop_lag = RecentSamples(window, _MAX_LAG_SAMPLES)

    def record_read(self, tier: str, seconds: float) -> None:
        """Count a read served by ``tier``; "none" (a turn without memory) is not a read."""
        samples = self.reads.get(tier)
        if samples is not None:
            samples.add(seconds)
