"""`Windows`: token windows of cached snapshots, and storing the counts they had to make.

A window reads the snapshot through the cache, builds (once per snapshot and count
key) its prefix sums, and selects. Messages without a stored count for the key are
counted once; those counts are written back to the store and L2 by a tracked
background task, off the read's path, so no instance counts them again.
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

from .._tasks import TaskGroup
from .._validation import check_count
from ..messages import Conversation
from ..tokens import (
    DEFAULT_RETAIN_RATIO,
    TokenCounter,
    Window,
    WindowStrategy,
    check_window_strategy,
    complete_counts,
    select_window,
)
from ._loader import Served
from ._parts import CacheParts
from ._read_result import ReadSource

__all__ = ["Windows"]

log = logging.getLogger("agent_core.cache")

_MAX_WINDOW_MODELS: Final = 64
# Count repairs in flight at most; beyond that a snapshot's late counts stay with it
# (this instance still never recounts them; another instance might, once).
_MAX_REPAIRS: Final = 64


class Windows:
    """`ConversationCache.window` and the stored-count repair behind it."""

    def __init__(
        self,
        parts: CacheParts,
        fresh: Callable[[str], Conversation | None],
        load: Callable[[str], Awaitable[Served]],
        background: TaskGroup,
    ) -> None:
        self._store = parts.store
        self._namespace = parts.namespace
        self._l1 = parts.l1
        self._l2 = parts.l2
        self._counters = parts.counters
        # The cache's read, in two parts, so that a window of a held snapshot awaits nothing.
        self._fresh = fresh
        self._load = load
        self._background = background
        self._window_counters: dict[str, TokenCounter] = {}
        self._repairing: set[tuple[str, int, str]] = set()

    async def window(
        self,
        thread_id: str,
        max_tokens: int,
        model: str,
        tools: Sequence[Mapping[str, Any]] | None,
        strategy: WindowStrategy = "sliding",
        retain_ratio: float = DEFAULT_RETAIN_RATIO,
        pending_tokens: int = 0,
    ) -> tuple[Window, ReadSource]:
        check_count("max_tokens", max_tokens, minimum=1)
        check_count("pending_tokens", pending_tokens, minimum=0)
        ratio = check_window_strategy(strategy, retain_ratio)
        counter = self._counter(model)
        tools_tokens = (
            0 if tools is None else counter.count_messages([], tools) - counter.reply_priming
        )
        conversation = self._fresh(thread_id)
        source: ReadSource = "l1"
        if conversation is None:
            conversation, source = await self._load(thread_id)
        derived = self._l1.derived(conversation)
        index = derived.indexes.get(counter.key)
        if index is None:  # else the hot path: a held snapshot windowed before
            index, _, counted = await complete_counts(conversation, counter, derived)
            self._l1.reweigh(conversation)
            if counted:
                self._counters.late_counts += len(counted)
                self._repair(conversation, counter.key, index.counts, counted)
        window = select_window(
            conversation,
            derived,
            index,
            counter,
            max_tokens,
            tools_tokens,
            retain_ratio=ratio,
            pending_tokens=pending_tokens,
        )
        return window, source

    def _counter(self, model: str) -> TokenCounter:
        counter = self._window_counters.get(model) if type(model) is str else None
        if counter is None:
            counter = TokenCounter.for_model(model)
            if len(self._window_counters) >= _MAX_WINDOW_MODELS:
                self._window_counters.clear()
            self._window_counters[model] = counter
        return counter

    def _repair(
        self, conversation: Conversation, key: str, counts: array[int], counted: list[int]
    ) -> None:
        """Store counts made for a snapshot in the background (at most one task per
        snapshot and key; `ConversationCache.close` waits for them)."""
        job = (conversation.thread_id, conversation.version, key)
        if job in self._repairing or len(self._repairing) >= _MAX_REPAIRS:
            return
        self._repairing.add(job)
        self._background.start(self._store_counts(job, counts, counted))

    async def _store_counts(
        self, job: tuple[str, int, str], counts: array[int], counted: list[int]
    ) -> None:
        """The store is keyed by seq, which snapshots don't hold: it is read once more,
        and nothing is written if the thread moved on meanwhile."""
        thread_id, version, key = job
        try:
            records = await self._store.read(self._namespace, thread_id)
            if records.version != version or len(records.seqs) != len(counts):
                return
            seqs = records.seqs
            await self._store.set_tokens(
                self._namespace, thread_id, key, {seqs[i]: counts[i] for i in counted}
            )
            if self._l2 is not None:
                await self._l2.annotate(thread_id, version, {key: counts})
        except Exception as exc:  # the counts stay with this instance's snapshot only
            log.warning("storing %d token counts of a thread failed: %r", len(counted), exc)
        finally:
            self._repairing.discard(job)
