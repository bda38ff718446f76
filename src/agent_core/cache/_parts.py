"""`CacheParts`: what the collaborators of one `ConversationCache` share."""

from __future__ import annotations

from dataclasses import dataclass

from ..store import ThreadStore
from ._fences import Fences
from ._freshness import Ticks
from ._l1 import L1Tier
from ._redis_tier import RedisTier
from ._stats import Counters

__all__ = ["CacheParts"]


@dataclass(frozen=True, slots=True)
class CacheParts:
    """The store and namespace, both tiers, the fences, the clock and the counters."""

    store: ThreadStore
    namespace: str
    l1: L1Tier
    l2: RedisTier | None
    fences: Fences
    counters: Counters
    ticks: Ticks
