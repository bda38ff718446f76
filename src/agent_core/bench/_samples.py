"""What a bench run records: per-turn latencies by tier, and a timeline of the process."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..agent import HistoryTier

__all__ = ["Samples", "Timeline"]


@dataclass(slots=True)
class Samples:
    """One entry per turn, in order: the tier that served its history, and its seconds."""

    tiers: list[HistoryTier] = field(default_factory=list)
    #: Loading the history (read and window) and the whole turn.
    history: list[float] = field(default_factory=list)
    turn: list[float] = field(default_factory=list)
    #: Seconds to open each instance's cache (store, Redis, bus): the cold start itself.
    cold_start: list[float] = field(default_factory=list)

    def record(self, tier: HistoryTier, history: float, started: float) -> None:
        self.tiers.append(tier)
        self.history.append(history)
        self.turn.append(time.perf_counter() - started)

    def of(self, kind: str, tiers: tuple[HistoryTier, ...]) -> list[float]:
        """The ``kind`` ("history" or "turn") seconds of the turns served from ``tiers``."""
        values = self.history if kind == "history" else self.turn
        return [value for tier, value in zip(self.tiers, values, strict=True) if tier in tiers]


@dataclass(slots=True)
class Timeline:
    """Samples of the process over the run, in columns (seconds since the turns began)."""

    seconds: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    l1_bytes: list[int] = field(default_factory=list)
    #: Loop lag p99 and max over each sample's interval.
    lag_p99: list[float] = field(default_factory=list)
    lag_max: list[float] = field(default_factory=list)

    def add(self, at: float, rss: int, l1_bytes: int, lag_p99: float, lag_max: float) -> None:
        self.seconds.append(at)
        self.rss.append(rss)
        self.l1_bytes.append(l1_bytes)
        self.lag_p99.append(lag_p99)
        self.lag_max.append(lag_max)
