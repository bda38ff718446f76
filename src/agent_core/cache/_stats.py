"""Counters of a `ConversationCache`, with the seed's hit-rate formulas."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING

from ..observe import MemorySnapshot

if TYPE_CHECKING:
    from ..observe import MemoryMonitor
    from ._bus import InvalidationBus
    from ._l1 import L1Tier
    from ._redis_tier import RedisTier


@dataclass(slots=True)
class Counters:
    """The cache's running counts (mutable, internal)."""

    l1_hits: int = 0
    l2_hits: int = 0
    misses: int = 0
    store_loads: int = 0
    appends: int = 0
    splices: int = 0
    forks: int = 0
    deletes: int = 0
    invalidations_received: int = 0
    invalidations_applied: int = 0
    fills_dropped: int = 0
    lease_waits: int = 0
    external_changes: int = 0
    late_counts: int = 0
    version_checks: int = 0


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A snapshot of a cache's counters since it was opened.

    ``l1_hits``, ``l2_hits`` and ``misses`` count reads by the tier that served them
    (a miss is served by the store). ``store_loads`` counts store reads actually made:
    concurrent misses of one thread share one load.
    """

    l1_hits: int = 0
    l2_hits: int = 0
    misses: int = 0
    store_loads: int = 0
    appends: int = 0
    #: Splices that wrote (pops included), and forks made.
    splices: int = 0
    forks: int = 0
    #: Deletes and purges.
    deletes: int = 0
    #: Evicted or dropped L1 entries by cause: size, rejected (not admitted), ttl,
    #: pressure, invalidation, external, stale, reconnect, closed.
    evictions: Mapping[str, int] = field(default_factory=dict)
    invalidations_received: int = 0
    invalidations_applied: int = 0
    #: L1 fills dropped because a newer version was announced while loading.
    fills_dropped: int = 0
    #: Changes that other programs made straight to the store, heard by its watcher.
    external_changes: int = 0
    #: L2 fills refused because Redis already held a newer version.
    l2_fills_refused: int = 0
    lease_waits: int = 0
    redis_errors: int = 0
    #: Bus subscriptions made (each after the first cleared L1) and bus events that did
    #: not decode.
    bus_subscriptions: int = 0
    bus_corrupt: int = 0
    #: The last Redis failure, as "ExceptionType: message" ("" if none).
    redis_last_error: str = ""
    l2_corrupt: int = 0
    degraded: bool = False
    l1_bytes: int = 0
    l1_max_bytes: int = 0
    l1_entries: int = 0
    #: RSS, limit and the L1 budget the memory monitor set (``l1_max_bytes`` above).
    memory: MemorySnapshot | None = None
    consistency: str = "bounded"
    #: Messages counted after their append (no stored count for the encoding asked
    #: about), whose counts were then stored.
    late_counts: int = 0
    #: Store version queries made to confirm that a cached copy is fresh (strong mode:
    #: every read that reaches L1 or L2; bounded: once per ``max_staleness``).
    version_checks: int = 0

    @property
    def requests(self) -> int:
        return self.l1_hits + self.l2_hits + self.misses

    @classmethod
    def combined(cls, parts: Sequence[CacheStats]) -> CacheStats:
        """The stats of several caches of one process (a server's tenants) as one: counts
        and bytes add up, degraded if any is; memory, consistency and the last Redis
        error are the first cache's (they are the process's)."""
        first = parts[0]
        sums = {
            f.name: sum(getattr(part, f.name) for part in parts)
            for f in fields(cls)
            if f.type == "int"
        }
        evictions: Counter[str] = Counter()
        for part in parts:
            evictions.update(part.evictions)
        return replace(
            first,
            **sums,
            evictions=dict(evictions),
            degraded=any(part.degraded for part in parts),
            redis_last_error=next((p.redis_last_error for p in parts if p.redis_last_error), ""),
        )

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


def build_stats(
    c: Counters,
    l1: L1Tier,
    tier: RedisTier | None,
    bus: InvalidationBus | None,
    memory: MemoryMonitor,
    consistency: str,
) -> CacheStats:
    """A `CacheStats` snapshot of one cache's counters and tiers."""
    l2 = tier.counters if tier is not None else None
    return CacheStats(
        l1_hits=c.l1_hits,
        l2_hits=c.l2_hits,
        misses=c.misses,
        store_loads=c.store_loads,
        appends=c.appends,
        splices=c.splices,
        forks=c.forks,
        deletes=c.deletes,
        evictions=dict(l1.evictions),
        invalidations_received=c.invalidations_received,
        invalidations_applied=c.invalidations_applied,
        fills_dropped=c.fills_dropped,
        external_changes=c.external_changes,
        l2_fills_refused=l2.fills_refused if l2 else 0,
        lease_waits=c.lease_waits,
        redis_errors=l2.errors if l2 else 0,
        redis_last_error=l2.last_error if l2 else "",
        bus_subscriptions=bus.subscriptions if bus else 0,
        bus_corrupt=bus.corrupt if bus else 0,
        l2_corrupt=l2.corrupt if l2 else 0,
        degraded=tier is not None and (tier.degraded or not (bus is not None and bus.subscribed)),
        l1_bytes=l1.used_bytes,
        l1_max_bytes=l1.max_bytes,
        l1_entries=len(l1),
        memory=memory.snapshot(),
        consistency=consistency,
        late_counts=c.late_counts,
        version_checks=c.version_checks,
    )
