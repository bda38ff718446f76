"""The in-process tier: immutable conversation snapshots, bounded in bytes."""

from __future__ import annotations

import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from sys import getsizeof
from typing import Final, NamedTuple

from .._token_counts import Counts, concat
from ..messages import (
    Conversation,
    conversation_from_payloads,
    extend_conversation,
    stored_counts,
    trusted_message,
)
from ..tokens import Derived
from ._policy import EvictionPolicy
from ._tinylfu import WTinyLFUPolicy

# What one more message costs an entry beyond its payload: the bytes object's header,
# its Message object (made once the snapshot's messages are read) and its slot in both
# tuples, payloads and messages (checked by tests with tracemalloc).
MESSAGE_OVERHEAD: Final = getsizeof(trusted_message(b"")) + getsizeof(b"") + 2 * 8
# The Conversation, its tuples' headers, the entry tuple with its weight, expiry and
# derived slot, a slot in the tier's dict and one in the policy's, and the thread id's
# string header (also checked). What windows derive is weighed apart (`Derived.nbytes`).
ENTRY_OVERHEAD: Final = 472
#: The share of the budget that entries' own bytes may fill. Every append to a held
#: thread replaces its tuples and arrays with slightly larger ones, and glibc's malloc
#: and Python's small-object allocator keep much of what those leave free: at full
#: churn RSS grew by 1.36-1.40x the entries' bytes (benchmarks/l1_soak.py). The rest of
#: the budget is theirs, so the budget bounds what the process really holds.
HELD_SHARE: Final = 0.8


def weigh(payloads: Sequence[bytes], counts: Counts | None = None, thread_id: str = "") -> int:
    """Bytes an entry holding these messages costs in memory (once they are wrapped)."""
    return (
        ENTRY_OVERHEAD
        + len(thread_id)
        + sum(map(len, payloads))
        + MESSAGE_OVERHEAD * len(payloads)
        + counts_bytes(counts)
    )


def counts_bytes(counts: Counts | None) -> int:
    """What a snapshot's token counts hold: the dict and each array, spare room included.

    Other mappings are shared empty constants, which no entry pays for.
    """
    if type(counts) is not dict:
        return 0
    return getsizeof(counts) + sum(map(getsizeof, counts.values()))


class _Entry(NamedTuple):
    """Immutable; a tuple because it is made on every fill (a frozen dataclass is slower)."""

    conversation: Conversation
    weight: int
    expires_at: float
    #: Tick (`_freshness.Ticks`) by which the store had confirmed this version:
    #: every append acknowledged before it is in the snapshot.
    confirmed: int
    #: What windows built on this snapshot (made at the first window), held and
    #: weighed here: the snapshot itself is immutable.
    derived: Derived | None = None


class L1Tier:
    """Thread id -> latest known `Conversation`, within ``max_bytes``.

    Entries expire ``ttl`` seconds after they were written, a backstop for staleness
    should an invalidation be missed. Evictions are counted by cause.
    """

    def __init__(
        self,
        max_bytes: int,
        *,
        ttl: float,
        policy: Callable[[int], EvictionPolicy] = WTinyLFUPolicy,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: dict[str, _Entry] = {}
        self._budget = max_bytes
        self._policy = policy(_held(max_bytes))
        self._ttl = ttl
        self._clock = clock
        self.evictions: Counter[str] = Counter()

    @property
    def max_bytes(self) -> int:
        """The budget (of which entries fill at most `HELD_SHARE`)."""
        return self._budget

    @property
    def used_bytes(self) -> int:
        return self._policy.total

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, thread_id: str) -> bool:
        return thread_id in self._entries

    def get(self, thread_id: str) -> tuple[Conversation, int] | None:
        """The held snapshot and the tick its version was confirmed by."""
        entry = self._entries.get(thread_id)
        if entry is None:
            self._policy.record_access(thread_id, hit=False)
            return None
        if entry.expires_at <= self._clock():
            self._remove(thread_id, "ttl")
            self._policy.record_access(thread_id, hit=False)
            return None
        self._policy.record_access(thread_id, hit=True)
        return entry.conversation, entry.confirmed

    def confirm(self, conversation: Conversation, tick: int) -> None:
        """The store confirmed ``conversation``'s version at ``tick``."""
        held = self._entries.get(conversation.thread_id)
        if held is not None and held.conversation is conversation and held.confirmed < tick:
            self._entries[conversation.thread_id] = held._replace(confirmed=tick)

    def version(self, thread_id: str) -> int | None:
        entry = self._entries.get(thread_id)
        return None if entry is None else entry.conversation.version

    def put(
        self,
        conversation: Conversation,
        *,
        confirmed: int,
        weight: int | None = None,
        derived: Derived | None = None,
    ) -> bool:
        """Keep ``conversation`` (confirmed at tick ``confirmed``) unless a newer version
        is held; True if kept."""
        thread_id = conversation.thread_id
        held = self._entries.get(thread_id)
        if held is not None and held.conversation.version > conversation.version:
            return False
        if weight is None:
            weight = weigh(conversation.payloads, stored_counts(conversation), thread_id)
        self._entries[thread_id] = _Entry(
            conversation, weight, self._clock() + self._ttl, confirmed, derived
        )
        evicted = self._policy.put(thread_id, weight)
        if thread_id in evicted:
            # Not admitted (too large, or too rarely read to displace what is held).
            evicted.remove(thread_id)
            del self._entries[thread_id]
            self.evictions["rejected"] += 1
        self._evict(evicted, "size")
        return thread_id in self._entries

    def extend(
        self,
        thread_id: str,
        base_version: int,
        payloads: tuple[bytes, ...],
        counts: Counts,
        version: int,
        *,
        confirmed: int,
    ) -> bool:
        """Add an append (with its token counts) to the held entry if it is exactly at
        ``base_version``.

        Otherwise the entry can't be brought up to date without a load, so it is dropped.
        """
        held = self._held_at(thread_id, base_version, version)
        if held is None:
            return False
        old = held.conversation
        joined = concat(stored_counts(old), len(old), counts, len(payloads))
        conversation = extend_conversation(old, version, payloads, joined)
        grown = counts_bytes(joined) - counts_bytes(stored_counts(old))
        grown += sum(map(len, payloads)) + MESSAGE_OVERHEAD * len(payloads)
        derived = None
        if held.derived is not None:
            derived = held.derived.extended(conversation, payloads)
            grown += _nbytes(derived) - held.derived.nbytes()
        return self.put(
            conversation, confirmed=confirmed, weight=held.weight + grown, derived=derived
        )

    def splice(
        self,
        thread_id: str,
        base_version: int,
        bounds: slice,
        payloads: tuple[bytes, ...],
        counts: Counts,
        version: int,
        *,
        confirmed: int,
    ) -> bool:
        """Apply a splice (``bounds`` replaced by ``payloads`` with their token counts)
        to the held entry if it is exactly at ``base_version``; else drop it if older."""
        held = self._held_at(thread_id, base_version, version)
        if held is None:
            return False
        old = held.conversation
        first, last, _ = bounds.indices(len(old))
        last = max(first, last)
        kept = stored_counts(old)
        joined = concat(
            concat(_cut(kept, 0, first), first, counts, len(payloads)),
            first + len(payloads),
            _cut(kept, last, len(old)),
            len(old) - last,
        )
        spliced = conversation_from_payloads(
            thread_id, version, old.payloads[:first] + payloads + old.payloads[last:], joined
        )
        # Weighed by what changed, not by the whole thread; what windows derived goes.
        removed = old.payloads[first:last]
        weight = held.weight - _nbytes(held.derived) + counts_bytes(joined) - counts_bytes(kept)
        weight += sum(map(len, payloads)) - sum(map(len, removed))
        weight += MESSAGE_OVERHEAD * (len(payloads) - len(removed))
        return self.put(spliced, confirmed=confirmed, weight=weight)

    def _held_at(self, thread_id: str, base_version: int, version: int) -> _Entry | None:
        """The entry if it holds exactly ``base_version``; else None, and an entry older
        than ``version`` (the write's) is dropped: it can't be brought up to date."""
        held = self._entries.get(thread_id)
        if held is None or held.conversation.version == base_version:
            return held
        if held.conversation.version < version:
            self._remove(thread_id, "stale")
        return None

    def derived(self, conversation: Conversation) -> Derived:
        """Where windows keep what they build on ``conversation``: beside it if it is
        held (made at first use), else a new one that lives as long as the caller's use."""
        held = self._entries.get(conversation.thread_id)
        if held is None or held.conversation is not conversation:
            return Derived()
        derived = held.derived
        if derived is None:
            derived = Derived()
            self._entries[conversation.thread_id] = held._replace(derived=derived)
        return derived

    def reweigh(self, conversation: Conversation) -> None:
        """Count what windows built on a held snapshot since it was put."""
        held = self._entries.get(conversation.thread_id)
        if held is not None and held.conversation is conversation:
            weight = weigh(
                conversation.payloads, stored_counts(conversation), conversation.thread_id
            )
            self.put(
                conversation,
                confirmed=held.confirmed,
                weight=weight + _nbytes(held.derived),
                derived=held.derived,
            )

    def drop(self, thread_id: str, cause: str) -> bool:
        if thread_id not in self._entries:
            return False
        self._remove(thread_id, cause)
        return True

    def drop_older(self, thread_id: str, version: int, cause: str) -> bool:
        """Drop the entry if it is older than ``version``; True if one was dropped."""
        held = self._entries.get(thread_id)
        if held is None or held.conversation.version >= version:
            return False
        self._remove(thread_id, cause)
        return True

    def clear(self, cause: str) -> None:
        if self._entries:
            self.evictions[cause] += len(self._entries)
        self._entries.clear()
        self._policy.clear()

    def resize(self, max_bytes: int) -> None:
        self._budget = max_bytes
        self._evict(self._policy.resize(_held(max_bytes)), "pressure")

    def _remove(self, thread_id: str, cause: str) -> None:
        del self._entries[thread_id]
        self._policy.remove(thread_id)
        self.evictions[cause] += 1

    def _evict(self, keys: list[object], cause: str) -> None:
        for key in keys:
            if self._entries.pop(key, None) is not None:  # type: ignore[call-overload]
                self.evictions[cause] += 1


def _cut(counts: Counts, start: int, stop: int) -> dict[str, array[int]]:
    return {key: column[start:stop] for key, column in counts.items()}


def _nbytes(derived: Derived | None) -> int:
    return 0 if derived is None else derived.nbytes()


def _held(budget: int) -> int:
    return int(budget * HELD_SHARE)
