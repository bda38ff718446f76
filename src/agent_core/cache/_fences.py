"""`Fences`: what a cache instance learns of other writers while it loads and serves.

Every load in flight has a *floor*: the newest version announced for its thread
meanwhile (by the bus, an external change, or this instance's own write); a load
that comes back older than its floor is served but not kept in L1. Loads waiting on
another instance's lease wait here for its fill event. Bus events and external
changes drop older L1 entries; when events may have been missed, nothing cached or
loading now is trusted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from .._tasks import TaskGroup
from ._bus import EVERYTHING, FILL, RESET
from ._l1 import L1Tier
from ._redis_tier import RedisTier
from ._stats import Counters

__all__ = ["Fences"]


class Fences:
    """Floors of loads in flight, fill waiters, and what events do to the tiers.

    It is the cache's `ChangeListener` (the store's watcher) and its bus handler.
    """

    def __init__(
        self, namespace: str, origin: str, l1: L1Tier, counters: Counters, background: TaskGroup
    ) -> None:
        self._namespace = namespace
        self._origin = origin
        self._l1 = l1
        self._counters = counters
        #: Set once the tier is built (it calls back into this object).
        self.l2: RedisTier | None = None
        self._floors: dict[str, int] = {}
        self._fill_waiters: dict[str, asyncio.Event] = {}
        self._background = background

    # -- loads -------------------------------------------------------------------------

    def load_started(self, thread_id: str) -> None:
        """A load of ``thread_id`` is in flight (one at a time per thread: `Flights`);
        `load_ended` must follow, whatever happens (a plain pair: this is the L2 hit path)."""
        self._floors[thread_id] = 0

    def load_ended(self, thread_id: str) -> None:
        del self._floors[thread_id]

    def admits(self, thread_id: str, version: int) -> bool:
        """The load of ``thread_id`` may keep ``version`` in L1: nothing newer was announced."""
        return version >= self._floors[thread_id]

    def raise_floor(self, thread_id: str, version: int) -> None:
        if thread_id in self._floors and self._floors[thread_id] < version:
            self._floors[thread_id] = version

    @contextmanager
    def fill_awaited(self, thread_id: str) -> Iterator[asyncio.Event]:
        """An event set when another instance fills ``thread_id`` (or may never do so)."""
        event = self._fill_waiters[thread_id] = asyncio.Event()
        try:
            yield event
        finally:
            self._fill_waiters.pop(thread_id, None)

    # -- events ------------------------------------------------------------------------

    def on_event(self, kind: str, thread_id: str, version: int, origin: str) -> None:
        """A bus event (`InvalidationBus`)."""
        if kind == FILL:
            event = self._fill_waiters.get(thread_id)
            if event is not None:
                event.set()
            return
        if origin == self._origin:
            return
        if kind == RESET:
            self.forget_unannounced()
            return
        self._counters.invalidations_received += 1
        self.raise_floor(thread_id, version)
        if self._l1.drop_older(thread_id, version, "invalidation"):
            self._counters.invalidations_applied += 1

    def changed(self, namespace: str, thread_id: str, version: int) -> None:
        """Another program changed the thread in the store (`ChangeListener`)."""
        if namespace != self._namespace:
            return
        self._counters.external_changes += 1
        self.raise_floor(thread_id, version)
        self._l1.drop_older(thread_id, version, "external")
        if self.l2 is not None:
            self._background.start(self.l2.fence(thread_id, version))

    def reset(self) -> None:
        """The store's watcher may have missed changes (`ChangeListener`)."""
        self.forget_unannounced()

    def stop_waiting_for_fills(self) -> None:
        """Redis is unreachable: a fill event may never come, so waiters go to the store."""
        for event in self._fill_waiters.values():
            event.set()

    def forget_unannounced(self) -> None:
        """Events may have been missed: nothing in L1 or loading now can be trusted."""
        self._l1.clear("reconnect")
        self.stop_waiting_for_fills()
        for thread_id in self._floors:
            self._floors[thread_id] = EVERYTHING
