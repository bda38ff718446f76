"""The nearest-rank percentile of a list of samples."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["nearest_rank"]


def nearest_rank(ordered: Sequence[float], p: float) -> float:
    """The smallest value with ``p`` % of ``ordered`` (sorted) at or below it; 0.0 if empty.

    The same definition as `Histogram.percentile`, without the buckets.
    """
    if not ordered:
        return 0.0
    return ordered[max(1, math.ceil(p * len(ordered) / 100)) - 1]
