"""A log-linear histogram of durations: bounded memory, about 1% relative error."""

from __future__ import annotations

import math
from bisect import bisect_left
from itertools import accumulate
from typing import Final

from .._quote import quote
from .._validation import check_number
from ..errors import InvalidArgument

# Values are bucketed in whole nanoseconds. Below 2**_BITS ns every value has a bucket
# of its own; above, each power of two is split into 2**(_BITS - 1) equal buckets, so a
# bucket is at most 1/64 of the values in it wide (HDR histogram layout).
_BITS: Final = 7
_EXACT: Final = 1 << _BITS
_NS_PER_SECOND: Final = 1e9


def _bucket(ns: int) -> int:
    if ns < _EXACT:
        return ns
    shift = ns.bit_length() - _BITS
    return (shift << (_BITS - 1)) + (ns >> shift)


def _bucket_bounds(index: int) -> tuple[int, int]:
    """The lowest value of bucket ``index`` and its width, in nanoseconds."""
    if index < _EXACT:
        return index, 1
    shift = (index >> (_BITS - 1)) - 1
    top = (index & (_EXACT // 2 - 1)) + _EXACT // 2
    return top << shift, 1 << shift


class Histogram:
    """Counts of durations in seconds, for percentiles without keeping the samples.

    Percentiles are within 1% of the exact nearest-rank percentile for values from
    1 µs to ``highest``; the count, min and max are exact, and so is the mean but for
    float rounding. Values above ``highest`` are counted in the last bucket. Memory is
    fixed at construction (about 2,000 counts for the default 60 s), and recording a
    value only increments one. Not thread-safe: record from one thread, such as the
    event loop's.
    """

    __slots__ = ("_count", "_counts", "_last", "_max", "_min", "_sum")
    _counts: list[int]
    _count: int
    _sum: float
    _min: float
    _max: float

    def __init__(self, *, highest: float = 60.0) -> None:
        highest = check_number(
            "highest", highest, lambda v: v >= 1e-6, "a number of seconds >= 0.000001"
        )
        self._last = _bucket(int(highest * _NS_PER_SECOND))
        self.reset()

    def record(self, value: float) -> None:
        """Count one duration of ``value`` seconds (>= 0)."""
        if not 0.0 <= value < math.inf:
            raise InvalidArgument(f"a duration must be a finite number >= 0, got {quote(value)}")
        index = _bucket(int(value * _NS_PER_SECOND))
        self._counts[index if index < self._last else self._last] += 1
        self._count += 1
        self._sum += value
        if value > self._max:
            self._max = value
        if value < self._min:
            self._min = value

    @property
    def count(self) -> int:
        return self._count

    @property
    def min(self) -> float:
        """The smallest value recorded, or 0.0 if none was."""
        return self._min if self._count else 0.0

    @property
    def max(self) -> float:
        """The largest value recorded, or 0.0 if none was."""
        return self._max

    @property
    def mean(self) -> float:
        """The mean of the values recorded, or 0.0 if none was."""
        return self._sum / self._count if self._count else 0.0

    def percentile(self, p: float) -> float:
        """The nearest-rank ``p``-th percentile (0 to 100), or 0.0 if nothing was recorded.

        That is the smallest value with at least ``p`` % of the values at or below it,
        reported as the middle of its bucket (kept within the exact min and max), or as
        the exact min or max when it is the lowest or highest value.
        """
        p = check_number("p", p, lambda v: 0 <= v <= 100, "a number from 0 to 100")
        if not self._count:
            return 0.0
        rank = max(1, math.ceil(p * self._count / 100))
        # The extremes are known exactly, even beyond ``highest``.
        if rank == self._count:
            return self._max
        if rank == 1:
            return self._min
        lowest, width = _bucket_bounds(bisect_left(list(accumulate(self._counts)), rank))
        middle = (lowest + width / 2) / _NS_PER_SECOND
        return min(max(middle, self._min), self._max)

    def reset(self) -> None:
        """Forget every value recorded."""
        self._counts = [0] * (self._last + 1)
        self._count = 0
        self._sum = 0.0
        self._min = math.inf
        self._max = 0.0

    def __repr__(self) -> str:
        return (
            f"Histogram(count={self._count}, p50={self.percentile(50):.6f}, "
            f"p99={self.percentile(99):.6f}, max={self.max:.6f})"
        )
