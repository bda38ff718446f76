"""Token windows: the newest messages of a conversation that fit a token budget.

A window keeps every system and developer message (pinned) and the newest suffix of
the rest, and never starts between a tool call and its results: a suffix that would
begins at the call instead. Its cost is the billed prompt size: reply priming, the
tool definitions, and each message's stored count (texts plus chat overhead).

Each snapshot builds, once and per count key, the prefix sums of its unpinned counts
(``index``) and, once, where windows may start (``shape``), into a `Derived` that the
cache keeps beside the snapshot; a window is then a binary search. When the cache
extends a snapshot with an append, both are extended rather than rebuilt, so windows
stay O(log n) on a growing thread.
"""

from __future__ import annotations

import asyncio
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from operator import add
from sys import getsizeof
from typing import Any, Final

import orjson

from .._token_counts import UNKNOWN
from ..errors import TokenBudgetExceeded
from ..messages import (
    Conversation,
    Message,
    provide_token_count,
    stored_counts,
    trusted_message,
)
from ._counter import TokenCounter
from ._stable import first_start, move_cut, stable_cut

__all__ = [
    "Derived",
    "Window",
    "complete_counts",
    "conversation_tokens",
    "recent_start",
    "select_window",
    "token_index",
    "token_total",
]

_PINNED_ROLES: Final = frozenset({"system", "developer"})
# Above these sizes, counting messages and reading a snapshot's shape (about 1 µs a
# message, and a few ms a MB, more where many messages must be decoded) move to a worker
# thread, so the event loop is not held for long.
_INLINE_COUNT_BYTES: Final = 64 << 10
_INLINE_SHAPE_MESSAGES: Final = 2_000
_INLINE_SHAPE_BYTES: Final = 256 << 10


@dataclass(frozen=True, slots=True)
class Window:
    """The messages to send for one request, and what they cost."""

    thread_id: str
    #: The version of the conversation the window was cut from.
    version: int
    #: Pinned messages, then the newest suffix, in conversation order.
    messages: tuple[Message, ...]
    #: Billed prompt tokens: messages, chat overhead, reply priming and tools.
    token_count: int
    #: Messages of the conversation left out.
    omitted: int
    #: Where the kept suffix starts in the conversation (pinned messages before it are
    #: kept too); 0 when nothing was left out.
    cut: int = 0

    def to_list(self) -> list[dict[str, Any]]:
        """Fresh ``dict`` copies of the window's messages."""
        if not self.messages:
            return []
        joined = b"[" + b",".join(m.raw for m in self.messages) + b"]"
        result: list[dict[str, Any]] = orjson.loads(joined)
        return result


class _Shape:
    """Where windows may start: pinned messages, and starts that would split a tool call."""

    __slots__ = ("blocked", "open_calls", "pinned")

    def __init__(self, pinned: array[int], blocked: bytearray, open_calls: dict[str, int]):
        self.pinned = pinned
        #: 1 where a window may not start (inside a call .. last result span).
        self.blocked = blocked
        #: Call ids whose result has not been seen yet -> index of the call.
        self.open_calls = open_calls

    def extended(self, payloads: Sequence[bytes]) -> _Shape:
        pinned, blocked = array("q", self.pinned), bytearray(self.blocked)
        open_calls = dict(self.open_calls)
        base = len(blocked)
        blocked.extend(bytes(len(payloads)))
        for position in _may_matter(payloads):
            index, raw = base + position, payloads[position]
            try:
                item = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(item, dict):
                continue
            if item.get("role") in _PINNED_ROLES:
                pinned.append(index)
            for call_id in _results_of(item):
                call = open_calls.get(call_id)
                if call is not None:
                    blocked[call + 1 : index + 1] = b"\x01" * (index - call)
            for call_id in _calls_of(item):
                open_calls[call_id] = index
        return _Shape(pinned, blocked, open_calls)


# Bytes that every pinned message, tool call and tool result holds (``\\u``: a role
# written with escapes by another program).
_MAY_MATTER: Final = (b"system", b"developer", b"call", b"function", b"\\u")
# Below this many payloads, searching each is as fast as searching them joined.
_JOIN_MIN: Final = 32


def _may_matter(payloads: Sequence[bytes]) -> list[int]:
    """Positions of the payloads holding a `_MAY_MATTER` word, in order: the only ones
    that need decoding; most messages hold none.

    Each word is looked for with ``bytes.find`` over the payloads joined by newlines
    (no word holds one, so a match never spans two payloads): a regex alternation, or
    a search call per payload, costs about 1 µs a message; this, a few ns.
    """
    if len(payloads) < _JOIN_MIN:
        return [i for i, raw in enumerate(payloads) if any(w in raw for w in _MAY_MATTER)]
    joined = b"\n".join(payloads)
    # starts[i]: where payload i begins in ``joined``: the lengths before it, plus i newlines.
    lengths_before = accumulate(map(len, payloads), initial=0)
    starts = array("q", map(add, lengths_before, range(len(payloads) + 1)))
    found: set[int] = set()
    for word in _MAY_MATTER:
        position = joined.find(word)
        while position >= 0:
            index = bisect_right(starts, position) - 1
            found.add(index)
            position = joined.find(word, starts[index + 1])  # the rest of it is settled
    return sorted(found)


# Stable cuts kept per snapshot (a caller rarely uses more than one or two budgets).
_MAX_CUTS: Final = 8
# A cut's key tuple and its ints (the key string is the index's, shared).
_CUT_BYTES: Final = 160
# An open call's key string and the int it maps to (the dict's slots are weighed apart).
_OPEN_CALL_BYTES: Final = 100
_NO_SHAPE: Final = _Shape(array("q"), bytearray(), {})
_SHAPE_BYTES: Final = getsizeof(_NO_SHAPE)
# The legacy ``function_call`` has no id: its result answers the latest one.
_LEGACY_CALL: Final = "\0function_call"


def _calls_of(item: dict[str, Any]) -> Iterable[str]:
    calls = item.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            if isinstance(call, dict) and isinstance(call.get("id"), str):
                yield call["id"]
    if "function_call" in item:
        yield _LEGACY_CALL
    kind, call_id = item.get("type"), item.get("call_id")
    if isinstance(kind, str) and kind.endswith("_call") and isinstance(call_id, str):
        yield call_id  # Responses API: function_call, custom_tool_call, ...


def _results_of(item: dict[str, Any]) -> Iterable[str]:
    if item.get("role") == "tool" and isinstance(item.get("tool_call_id"), str):
        yield item["tool_call_id"]
    elif item.get("role") == "function":
        yield _LEGACY_CALL
    kind, call_id = item.get("type"), item.get("call_id")
    if isinstance(kind, str) and kind.endswith("_call_output") and isinstance(call_id, str):
        yield call_id


class TokenIndex:
    """One key's complete counts of a snapshot and the prefix sums of its unpinned ones."""

    __slots__ = ("counts", "free", "pinned_total")

    def __init__(self, counts: array[int], free: array[int], pinned_total: int) -> None:
        self.counts = counts
        #: free[i] = tokens of the unpinned messages before message i.
        self.free = free
        self.pinned_total = pinned_total

    @property
    def total(self) -> int:
        """Tokens of all messages (without reply priming)."""
        return self.free[-1] + self.pinned_total

    def extended(self, tail: array[int], shape: _Shape) -> TokenIndex:
        start = len(self.counts)
        unpinned = array("q", tail)
        pinned_total = self.pinned_total
        for index in shape.pinned[bisect_left(shape.pinned, start) :]:
            pinned_total += unpinned[index - start]
            unpinned[index - start] = 0
        free = self.free + array("q", accumulate(unpinned, initial=self.free[-1]))[1:]
        return TokenIndex(self.counts + tail, free, pinned_total)


_NO_INDEX: Final = TokenIndex(array("i"), array("q", [0]), 0)
_INDEX_BYTES: Final = getsizeof(_NO_INDEX)


class Derived:
    """What windows build once for one snapshot: its shape and, per count key, its index.

    Mutable, so it is not part of the (immutable) `Conversation`: the cache holds it
    beside the snapshot in L1, weighs it there and extends it with each append.
    """

    __slots__ = ("cuts", "indexes", "shape")

    def __init__(
        self,
        shape: _Shape | None = None,
        indexes: dict[str, TokenIndex] | None = None,
        cuts: dict[tuple[str, int, int], int] | None = None,
    ) -> None:
        self.shape = shape
        self.indexes: dict[str, TokenIndex] = {} if indexes is None else indexes
        #: Stable windows' cuts, by count key, budget and retained budget (`stable_cut`).
        self.cuts: dict[tuple[str, int, int], int] = {} if cuts is None else cuts

    def extended(self, extended: Conversation, added: Sequence[bytes]) -> Derived | None:
        """For ``extended`` (this snapshot plus ``added``): what was built, extended, not
        rebuilt; None if nothing was built."""
        if self.shape is None:
            return None
        shape = self.shape.extended(added)
        start = len(extended) - len(added)
        indexes = {}
        for key, index in self.indexes.items():
            column = stored_counts(extended).get(key)
            if column is not None and UNKNOWN not in (tail := column[start:]):
                indexes[key] = index.extended(tail, shape)
        # A replay goes on from a cut while the older messages' starts are unchanged (a
        # result that closes an older call changes them: the cuts are replayed anew).
        unchanged = shape.blocked.startswith(self.shape.blocked)
        return Derived(shape, indexes, dict(self.cuts) if unchanged else None)

    def nbytes(self) -> int:
        """Memory it holds: every object, its header and spare capacity included (about
        700 bytes for a shape and one index on top of the arrays' items)."""
        total = _DERIVED_BYTES + getsizeof(self.indexes) + getsizeof(self.cuts)
        total += _CUT_BYTES * len(self.cuts)
        shape = self.shape
        if shape is not None:
            total += (
                _SHAPE_BYTES
                + getsizeof(shape.pinned)
                + getsizeof(shape.blocked)
                + getsizeof(shape.open_calls)
                + _OPEN_CALL_BYTES * len(shape.open_calls)
            )
        for index in self.indexes.values():
            total += _INDEX_BYTES + getsizeof(index.counts) + getsizeof(index.free)
        return total


_DERIVED_BYTES: Final = getsizeof(Derived())


def _shape(conversation: Conversation, derived: Derived) -> _Shape:
    shape = derived.shape
    if shape is None:
        shape = derived.shape = _NO_SHAPE.extended(conversation.payloads)
    return shape


def token_total(conversation: Conversation, counter: TokenCounter) -> int:
    """Tokens of all the snapshot's messages for ``counter`` (without reply priming),
    counting inline what has no stored count."""
    counts, _ = _count_missing(conversation.payloads, _stored(conversation, counter), counter)
    return sum(counts)


def token_index(
    conversation: Conversation, counter: TokenCounter, derived: Derived | None = None
) -> TokenIndex:
    """The snapshot's index for ``counter``, counting (inline) what has no stored count."""
    derived = Derived() if derived is None else derived
    index = derived.indexes.get(counter.key)
    if index is None:
        counts, _ = _count_missing(conversation.payloads, _stored(conversation, counter), counter)
        index = _index(conversation, derived, counter, counts)
    return index


async def complete_counts(
    conversation: Conversation, counter: TokenCounter, derived: Derived | None = None
) -> tuple[TokenIndex, bool, list[int]]:
    """The snapshot's index for ``counter`` (kept in ``derived``), whether it was built
    now, and the positions that had no stored count and were counted.

    Large snapshots are read, and large amounts of text counted, in a worker thread.
    """
    derived = Derived() if derived is None else derived
    index = derived.indexes.get(counter.key)
    if index is not None:
        return index, False, []
    payloads = conversation.payloads
    if derived.shape is None and (
        len(payloads) > _INLINE_SHAPE_MESSAGES or sum(map(len, payloads)) > _INLINE_SHAPE_BYTES
    ):
        await asyncio.to_thread(_shape, conversation, derived)
    stored = _stored(conversation, counter)
    missing = sum(len(conversation.payloads[i]) for i, c in enumerate(stored) if c == UNKNOWN)
    if missing > _INLINE_COUNT_BYTES:
        counts, counted = await asyncio.to_thread(
            _count_missing, conversation.payloads, stored, counter
        )
    else:
        counts, counted = _count_missing(conversation.payloads, stored, counter)
    return _index(conversation, derived, counter, counts), True, counted


def _stored(conversation: Conversation, counter: TokenCounter) -> array[int]:
    stored = stored_counts(conversation).get(counter.key)
    return stored if stored is not None else array("i", [UNKNOWN]) * len(conversation)


def _count_missing(
    payloads: Sequence[bytes], stored: array[int], counter: TokenCounter
) -> tuple[array[int], list[int]]:
    counts, counted = array("i", stored), []
    for position, count in enumerate(stored):
        if count == UNKNOWN:
            counts[position] = counter.count_message(trusted_message(payloads[position]))
            counted.append(position)
    return counts, counted


def _index(
    conversation: Conversation, derived: Derived, counter: TokenCounter, counts: array[int]
) -> TokenIndex:
    index = derived.indexes[counter.key] = _NO_INDEX.extended(counts, _shape(conversation, derived))
    return index


def conversation_tokens(conversation: Conversation, model: str) -> int:
    """`Conversation.token_count`: reply priming plus every message's count."""
    counter = TokenCounter.for_model(model)
    return counter.reply_priming + token_total(conversation, counter)


provide_token_count(conversation_tokens)


def select_window(
    conversation: Conversation,
    derived: Derived,
    index: TokenIndex,
    counter: TokenCounter,
    max_tokens: int,
    tools_tokens: int,
    *,
    retain_ratio: float | None = None,
    pending_tokens: int = 0,
) -> Window:
    """Pinned messages and a suffix within ``max_tokens``: the longest that fits, or with
    ``retain_ratio``, the cache-stable one (`stable_cut`). ``pending_tokens``: what the
    request sends after the window (a new user message); it counts against the budget.

    Raises `TokenBudgetExceeded` when not even the newest message (with its tool
    call, if it is a result) fits beside the pinned ones.
    """
    size = len(conversation)
    shape = _shape(conversation, derived)
    fixed = counter.reply_priming + tools_tokens + index.pinned_total
    if fixed + pending_tokens > max_tokens:
        pending = (
            f" and the {pending_tokens} tokens sent after the window" if pending_tokens else ""
        )
        raise TokenBudgetExceeded(
            f"max_tokens={max_tokens} is too small: the pinned system messages, reply "
            f"priming and tools{pending} alone need {fixed + pending_tokens} tokens",
            needed=fixed + pending_tokens,
            max_tokens=max_tokens,
        )
    free, avail = index.free, max_tokens - fixed
    end = free[size] + pending_tokens
    if retain_ratio is None:
        start = bisect_left(free, end - avail)
    else:
        # The cut before the pending messages is kept per budget (an appended snapshot
        # goes on from it); the pending ones may move it once more.
        target = min(avail, max(0, int(max_tokens * retain_ratio) - fixed))
        key = (counter.key, avail, target)
        start = stable_cut(free, shape.blocked, size, avail, target, derived.cuts.get(key, 0))
        if len(derived.cuts) >= _MAX_CUTS:  # budgets come from callers: keep a few
            derived.cuts.clear()
        derived.cuts[key] = start
        if end - free[start] > avail:
            start = move_cut(free, shape.blocked, start, size, end, avail, target)
    start = first_start(shape.blocked, start, size)
    if start == size and size and shape.pinned[-1:] != array("q", [size - 1]):
        newest = _last_start(shape.blocked, size)
        raise TokenBudgetExceeded(
            f"max_tokens={max_tokens} is too small: the newest message"
            f"{'s (a tool call and its results)' if newest < size - 1 else ''} need "
            f"{fixed + end - free[newest]} tokens with the pinned system messages, "
            "reply priming and tools; raise max_tokens or shorten the messages",
            needed=fixed + end - free[newest],
            max_tokens=max_tokens,
        )
    messages = conversation.messages
    before = shape.pinned[: bisect_left(shape.pinned, start)]
    chosen = tuple(messages[i] for i in before) + messages[start:]
    return Window(
        conversation.thread_id,
        conversation.version,
        chosen,
        fixed + free[size] - free[start],
        size - len(chosen),
        start,
    )


def recent_start(
    conversation: Conversation, derived: Derived, index: TokenIndex, keep_tokens: int
) -> int:
    """Where the newest suffix of at most ``keep_tokens`` unpinned tokens starts (never
    between a tool call and its results); the newest message's start if even it is over."""
    size = len(conversation)
    shape = _shape(conversation, derived)
    free = index.free
    start = first_start(shape.blocked, bisect_left(free, free[size] - keep_tokens), size)
    return _last_start(shape.blocked, size) if start == size and size else start


def _last_start(blocked: bytearray, size: int) -> int:
    found = blocked.rfind(0, 0, size)
    return max(found, 0)
