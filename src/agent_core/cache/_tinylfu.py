"""W-TinyLFU weighted by bytes: an LRU window in front of a frequency-gated segmented LRU.

New keys enter a small window. A key pushed out of the window joins the main space only if
a count-min sketch of recent reads says it is read more often than every key it would
displace, so a scan of one-time reads cannot flush the entries that keep being read.
See Einziger, Friedman and Manes, "TinyLFU: A Highly Efficient Cache Admission Policy".
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Hashable
from itertools import chain
from typing import Final

#: Share of the capacity for the window, which lets a new key build up reads before it
#: has to win admission.
WINDOW_SHARE: Final = 0.01
#: Share of the main space for keys read again since they were admitted.
PROTECTED_SHARE: Final = 0.8
# Counters a sketch row has at least, so that a tier of a few large entries still tells
# apart the many keys read around them.
_MIN_WIDTH: Final = 1024
# Reads between halvings at least: the sample is 10 reads per entry held, as in TinyLFU,
# so popularity fades at the pace entries turn over.
_MIN_SAMPLE: Final = 640
# Reads are buffered and counted in batches, before each admission or when the buffer
# fills: a Counter first merges repeats, which are most reads on a skewed workload.
_READ_BATCH: Final = 4096
_COUNTER_MAX: Final = 15
_HALVE: Final = bytes(value >> 1 for value in range(256))


class _FrequencySketch:
    """Count-min sketch of recent reads: 4 rows of counters saturating at 15.

    Once a sample of reads has been counted, all counters are halved, so old popularity
    fades.
    """

    __slots__ = ("_additions", "_mask", "_rows", "_sample")

    def __init__(self) -> None:
        self._rows = tuple(bytearray(_MIN_WIDTH) for _ in range(4))
        self._mask = _MIN_WIDTH - 1
        self._sample = _MIN_SAMPLE
        self._additions = 0

    def fit(self, entries: int) -> None:
        """Size for a tier of ``entries`` keys: 4 counters a row and 10 reads per key.

        Rows only widen, and keep their counts as they do: a row twice as wide indexes
        with one more hash bit, so a key lands on its old counter or on its copy.
        """
        while self._mask < 4 * entries:
            self._rows = tuple(row + row for row in self._rows)
            self._mask = 2 * self._mask + 1
        self._sample = max(10 * entries, _MIN_SAMPLE)

    def add(self, keys: list[Hashable]) -> None:
        mask = self._mask
        top = _COUNTER_MAX
        row0, row1, row2, row3 = self._rows
        # Unrolled: this loop is most of the policy's cost.
        for key, count in Counter(keys).items():
            index = hash(key)
            step = (index >> 32) | 1  # double hashing: one hash gives the 4 rows' slots
            slot = index & mask
            value = row0[slot] + count
            row0[slot] = value if value < top else top
            index += step
            slot = index & mask
            value = row1[slot] + count
            row1[slot] = value if value < top else top
            index += step
            slot = index & mask
            value = row2[slot] + count
            row2[slot] = value if value < top else top
            index += step
            slot = index & mask
            value = row3[slot] + count
            row3[slot] = value if value < top else top
        self._additions += len(keys)
        if self._additions >= self._sample:
            self._rows = tuple(row.translate(_HALVE) for row in self._rows)
            self._additions //= 2

    def estimate(self, key: Hashable) -> int:
        mask = self._mask
        index = hash(key)
        step = (index >> 32) | 1
        lowest = _COUNTER_MAX
        for row in self._rows:
            value = row[index & mask]
            if value < lowest:
                lowest = value
            index += step
        return lowest


class WTinyLFUPolicy:
    """Window TinyLFU, weighted by bytes (an `EvictionPolicy`).

    Keys live in one of three LRU segments: the window (~1 % of the capacity), then in
    the main space either probation or, once read again, protected (80 % of the main
    space). A key leaving the window is compared with the least recently used keys of
    main, probation first, as many as it takes to free its weight: it is admitted only
    if it was read more often than each of them, and is evicted otherwise.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.total = 0
        self._window: OrderedDict[Hashable, int] = OrderedDict()
        self._probation: OrderedDict[Hashable, int] = OrderedDict()
        self._protected: OrderedDict[Hashable, int] = OrderedDict()
        self._window_total = 0
        self._protected_total = 0
        self._window_max = 0
        self._protected_max = 0
        self._set_shares()
        self._sketch = _FrequencySketch()
        self._reads: list[Hashable] = []

    def record_access(self, key: Hashable, *, hit: bool) -> None:
        reads = self._reads
        reads.append(key)
        if len(reads) >= _READ_BATCH:
            self._count_reads()
        if hit:
            if key in self._protected:
                self._protected.move_to_end(key)
            elif key in self._probation:
                self._promote(key)
            else:
                self._window.move_to_end(key)

    def put(self, key: Hashable, weight: int) -> list[Hashable]:
        if weight > self.capacity:
            self._discard(key)
            return [key]
        if key in self._protected:
            segment = self._protected
            self._protected_total += weight - segment[key]
        elif key in self._probation:
            segment = self._probation
        else:
            segment = self._window
            self._window_total += weight - segment.get(key, 0)
        self.total += weight - segment.get(key, 0)
        segment[key] = weight
        segment.move_to_end(key)
        self._sketch.fit(len(self._window) + len(self._probation) + len(self._protected))
        return self._rebalance()

    def remove(self, key: Hashable) -> None:
        self._discard(key)

    def resize(self, capacity: int) -> list[Hashable]:
        self.capacity = capacity
        self._set_shares()
        return self._rebalance()

    def clear(self) -> None:
        # The sketch stays: how often keys are read does not change because they were dropped.
        self._window.clear()
        self._probation.clear()
        self._protected.clear()
        self.total = self._window_total = self._protected_total = 0

    def invariant_violations(self) -> list[str]:
        """What is wrong with the segments' bookkeeping; empty when it is sound.

        Each segment's running total is the sum of its weights, protected stays within
        its share, and no key is in two segments. For tests; it reads, changes nothing.
        """
        found = []
        segments = (self._window, self._probation, self._protected)
        if self._window_total != sum(self._window.values()):
            found.append(f"window total {self._window_total} is not its weights' sum")
        if self._protected_total != sum(self._protected.values()):
            found.append(f"protected total {self._protected_total} is not its weights' sum")
        if self._protected_total > self._protected_max:
            found.append(f"protected holds {self._protected_total} > {self._protected_max}")
        if sum(len(segment) for segment in segments) != len(set().union(*segments)):
            found.append("a key is in two segments")
        return found

    def _set_shares(self) -> None:
        self._window_max = int(self.capacity * WINDOW_SHARE)
        self._protected_max = int((self.capacity - self._window_max) * PROTECTED_SHARE)

    def _count_reads(self) -> None:
        self._sketch.add(self._reads)
        self._reads = []

    def _promote(self, key: Hashable) -> None:
        weight = self._probation.pop(key)
        self._protected[key] = weight
        self._protected_total += weight
        self._demote()

    def _demote(self) -> None:
        """Move protected keys over its share back to probation, least recent first."""
        while self._protected_total > self._protected_max:
            key, weight = self._protected.popitem(last=False)
            self._protected_total -= weight
            self._probation[key] = weight

    def _rebalance(self) -> list[Hashable]:
        """Bring the window within its share, then the total within the capacity."""
        self._demote()
        evicted: list[Hashable] = []
        candidates = []
        while self._window_total > self._window_max:
            key, weight = self._window.popitem(last=False)
            self._window_total -= weight
            candidates.append((key, weight))
        # Candidates stay in ``total`` until each is either admitted or evicted.
        pending = sum(weight for _, weight in candidates)
        for key, weight in candidates:
            pending -= weight
            excess = self.total - pending - self.capacity
            if excess > 0:
                victims = self._victims(key, excess)
                if victims is None:
                    self.total -= weight
                    evicted.append(key)
                    continue
                for victim in victims:
                    self._discard(victim)
                evicted += victims
            self._probation[key] = weight
        # Only a key that grew in place or a smaller capacity gets here: nothing to compare.
        while self.total > self.capacity:
            segment = self._probation or self._protected or self._window
            key = next(iter(segment))
            self._discard(key)
            evicted.append(key)
        return evicted

    def _victims(self, candidate: Hashable, excess: int) -> list[Hashable] | None:
        """The keys ``candidate`` displaces to free ``excess`` bytes, or None if it loses.

        The scan stops at the first key the candidate does not beat, so a loser usually
        costs two estimates. A tie keeps the key already held. (Caffeine also lets a warm
        loser in at random, against hash flooding; str hashes here are salted per process.)
        """
        if self._reads:
            self._count_reads()
        estimate = self._sketch.estimate
        frequency = estimate(candidate)
        victims = []
        freed = 0
        for key, weight in chain(
            self._probation.items(), self._protected.items(), self._window.items()
        ):
            if estimate(key) >= frequency:
                return None
            victims.append(key)
            freed += weight
            if freed >= excess:
                return victims
        return None

    def _discard(self, key: Hashable) -> None:
        weight = self._probation.pop(key, None)
        if weight is None:
            weight = self._protected.pop(key, None)
            if weight is not None:
                self._protected_total -= weight
            else:
                weight = self._window.pop(key, None)
                if weight is None:
                    return
                self._window_total -= weight
        self.total -= weight
