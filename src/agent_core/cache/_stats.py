"""Counters of a `ConversationCache`, with the seed's hit-rate formulas."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A snapshot of a cache's counters since it was created."""

    l1_hits: int = 0
    l2_hits: int = 0
    misses: int = 0
    appends: int = 0
    deletes: int = 0

    @property
    def requests(self) -> int:
        return self.l1_hits + self.l2_hits + self.misses

    @property
    def l1_hit_rate(self) -> float:
        """L1 hits / all reads."""
        return _ratio(self.l1_hits, self.requests)

    @property
    def l2_hit_rate(self) -> float:
        """L2 hits / reads that reached L2 (L2 hits + misses)."""
        return _ratio(self.l2_hits, self.l2_hits + self.misses)

    @property
    def hit_rate(self) -> float:
        """(L1 + L2 hits) / all reads."""
        return _ratio(self.l1_hits + self.l2_hits, self.requests)


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0
