"""Byte-weighted eviction policies for the L1 tier.

A policy only orders keys and keeps their weights within a capacity; the L1 tier
holds the entries and drops whatever keys the policy hands back.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Protocol


class EvictionPolicy(Protocol):
    """Decides which keys leave when the total weight is over capacity."""

    capacity: int
    total: int

    def record_access(self, key: Hashable, *, hit: bool) -> None:
        """A read of ``key``; ``hit`` says whether the tier held it."""

    def put(self, key: Hashable, weight: int) -> list[Hashable]:
        """Add ``key`` or change its weight; returns the keys to evict.

        The returned keys may include ``key`` itself: the policy declined to keep it.
        """

    def remove(self, key: Hashable) -> None:
        """Forget ``key`` (it was invalidated or expired)."""

    def resize(self, capacity: int) -> list[Hashable]:
        """Change the capacity; returns the keys to evict to fit."""

    def clear(self) -> None:
        """Forget every key."""


class LRUPolicy:
    """Least recently used, weighted by bytes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.total = 0
        self._weights: OrderedDict[Hashable, int] = OrderedDict()

    def record_access(self, key: Hashable, *, hit: bool) -> None:
        if hit:
            self._weights.move_to_end(key)

    def put(self, key: Hashable, weight: int) -> list[Hashable]:
        self.total -= self._weights.pop(key, 0)
        if weight > self.capacity:
            return [key]
        self.total += weight
        self._weights[key] = weight
        return self._shrink()

    def remove(self, key: Hashable) -> None:
        self.total -= self._weights.pop(key, 0)

    def resize(self, capacity: int) -> list[Hashable]:
        self.capacity = capacity
        return self._shrink()

    def clear(self) -> None:
        self._weights.clear()
        self.total = 0

    def _shrink(self) -> list[Hashable]:
        evicted = []
        while self.total > self.capacity:
            key, weight = self._weights.popitem(last=False)
            self.total -= weight
            evicted.append(key)
        return evicted
