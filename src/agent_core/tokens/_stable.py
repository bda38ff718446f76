"""Cache-stable windows: where a window's kept suffix starts, so that turns share a prefix.

A sliding window starts wherever the newest suffix fits, so once a thread passes its
budget every request differs from the previous one right after the pinned messages,
and the provider's prompt cache never hits. A stable window keeps its start (the *cut*)
while the thread fits from there, and when a message overflows the budget moves it in
one large step, to where the window holds ``retain_ratio`` of the budget: the turns
until the next overflow then send identical prefixes.

The cut is a function of the thread alone: it replays the thread's history message by
message from the first, moving the cut at each overflow, with the thread's stored
counts. Every instance, a cold start included, so finds the same cut without any state
of its own or a write on the read path, and a rewrite of the thread (a compaction, a
pop) moves it as the replay of the rewritten thread does. The replay costs two binary
searches per overflow, and `Derived` keeps its result per snapshot and budget, so that
an appended snapshot goes on from the previous cut.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from typing import Final, Literal

from .._quote import quote
from .._validation import check_number
from ..errors import InvalidArgument

__all__ = [
    "DEFAULT_RETAIN_RATIO",
    "WindowStrategy",
    "check_window_strategy",
    "first_start",
    "move_cut",
    "stable_cut",
]

#: ``"sliding"``: the longest suffix that fits; ``"stable"``: a cache-stable one.
WindowStrategy = Literal["sliding", "stable"]

#: What a window keeps of its budget after an overflow (the Realtime API's default
#: ``retention_ratio`` is 0.8; 0.7 leaves room for more turns between overflows).
DEFAULT_RETAIN_RATIO: Final = 0.7


def check_window_strategy(
    strategy: object, retain_ratio: object, *, name: str = "strategy"
) -> float | None:
    """The retain ratio a window of ``strategy`` (the argument ``name``) uses (None: sliding)."""
    if strategy not in ("sliding", "stable"):
        raise InvalidArgument(f"{name} must be 'sliding' or 'stable', got {quote(strategy)}")
    ratio = check_number("retain_ratio", retain_ratio, lambda r: 0 < r <= 1, "a number in (0, 1]")
    return ratio if strategy == "stable" else None


def stable_cut(
    free: array[int],
    blocked: bytearray,
    size: int,
    avail: int,
    target: int,
    start: int = 0,
) -> int:
    """The cut after replaying messages ``start..size-1`` from a cut at ``start``.

    ``free[k]``: tokens of the unpinned messages before ``k``; ``avail``: what the
    unpinned messages of a window may cost; ``target``: what they may cost right after
    an overflow (at most ``avail``); ``blocked[k]``: 1 where a window may not start.
    """
    cut = start
    while True:
        # The first k whose messages cut..k-1 no longer fit: message k-1 overflows.
        end = bisect_right(free, free[cut] + avail, cut, size + 1)
        if end > size:
            return cut
        cut = move_cut(free, blocked, cut, end, free[end], avail, target)


def move_cut(
    free: array[int], blocked: bytearray, cut: int, stop: int, total: int, avail: int, target: int
) -> int:
    """The cut after an overflow of the window from ``cut`` to ``stop`` (``total``: the
    unpinned tokens before ``stop``, pending ones included): where the window costs at
    most ``target``, else (its newest messages alone cost more) at most ``avail``, else
    ``stop``."""
    for room in (target, avail):
        moved = first_start(blocked, bisect_left(free, total - room, cut, stop), stop)
        if moved < stop:
            return moved
    return stop


def first_start(blocked: bytearray, start: int, end: int) -> int:
    """The first position in ``start..end-1`` where a window may start, else ``end``."""
    found = blocked.find(0, start, end)
    return end if found < 0 else found
