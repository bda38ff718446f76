"""Where a splice's rows are, and the order keys of the rows it inserts.

A message's place in its thread is its *order key* ``(anchor, frac)``, compared as
(integer, bytes): ``anchor`` is NULL in the table for a row appended at the end, and
then counts as its ``seq``; ``frac`` (empty for such a row) orders rows spliced in
between two others. An append's rows get new seqs, above every anchor, so an append
never reads a key. A splice keeps every other row where it is: its new rows get keys
strictly between their neighbours' (`keys_between`), so nothing is renumbered and
the cost is that of the rows it removes and inserts.

Nesting inserts at one spot lengthens fracs by about a byte per eight. Past
`MAX_FRAC_BYTES` the store *respaces* the run of rows sharing the anchor
(`respace`): their fracs are spread afresh, a few bytes each, in one update of that
run alone (PostgreSQL's btree refuses index entries over ~2.7 KB, and short keys
keep the index small).

Locating ``messages[start:stop]`` walks the order index from the nearer end
(`fetch_for`): a front slice (``start, stop >= 0``) reads ``stop - start + 2`` rows
from ``start - 1``; a tail slice (``start < 0``, ``stop < 0`` or None) reads the last
``-start + 1`` rows. Only a slice mixing signs needs the thread's row count first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

__all__ = [
    "MAX_FRAC_BYTES",
    "Fetch",
    "Located",
    "absolute",
    "fetch_for",
    "keys_between",
    "locate",
    "needs_respace",
    "respace",
]

_Row = TypeVar("_Row", bound="Sequence[object]")


@dataclass(frozen=True, slots=True)
class Fetch:
    """Rows to read in order-key order: ``offset`` rows skipped from the front (or,
    ``from_end``, from the back, newest first), then at most ``limit`` (None: all)."""

    from_end: bool
    offset: int
    limit: int | None


@dataclass(frozen=True, slots=True)
class Located(Generic[_Row]):
    """The rows a splice removes, in order, and its neighbours (None at an end)."""

    before: _Row | None
    removed: list[_Row]
    after: _Row | None


def absolute(start: int | None, stop: int | None, count: int) -> tuple[int, int]:
    """Python's slice rules: ``(start, stop)`` within ``0..count``, ``stop >= start``."""
    first, last, _ = slice(start, stop).indices(count)
    return first, max(first, last)


def fetch_for(start: int | None, stop: int | None) -> Fetch | None:
    """The rows that locate ``[start:stop]``, or None if the row count is needed first
    (then locate ``absolute(start, stop, count)``)."""
    if start is not None and start < 0:
        if stop is not None and stop >= 0:
            return None
        return Fetch(True, 0, -start + 1)
    if stop is not None and stop < 0:
        return None
    first = start or 0
    if stop is None:
        return Fetch(False, max(first - 1, 0), None)
    return Fetch(False, max(first - 1, 0), max(stop - first, 0) + (first > 0) + 1)


def locate(start: int | None, stop: int | None, rows: Sequence[_Row]) -> Located[_Row]:
    """Split the rows `fetch_for` read into the removed ones and their neighbours."""
    if start is not None and start < 0:
        reach = -start
        if len(rows) <= reach:  # the whole thread: slice it as Python does
            ordered = list(reversed(rows))
            first, last = absolute(start, stop, len(ordered))
            return Located(
                ordered[first - 1] if first else None,
                ordered[first:last],
                ordered[last] if last < len(ordered) else None,
            )
        end = 0 if stop is None else -stop
        if end >= reach:
            return Located(rows[reach], [], rows[reach - 1])
        return Located(rows[reach], list(reversed(rows[end:reach])), rows[end - 1] if end else None)
    first = start or 0
    skip = 1 if first > 0 else 0
    if skip and not rows:  # start is past the end: an insertion at the end
        return Located(None, [], None)  # new rows take end keys: no neighbour needed
    before = rows[0] if skip else None
    if stop is None:
        return Located(before, list(rows[skip:]), None)
    taken = max(stop - first, 0)
    removed = list(rows[skip : skip + taken])
    after = rows[skip + taken] if len(rows) > skip + taken else None
    return Located(before, removed, after)


Key = tuple[int, bytes]
#: A splice whose new fracs would be longer respaces their anchor's run first.
MAX_FRAC_BYTES: Final = 64


def keys_between(
    before: Key | None, after: Key | None, count: int
) -> list[tuple[int | None, bytes]]:
    """``count`` increasing keys strictly between two neighbours' keys.

    An anchor of None means "the row's own seq": rows going to the end of the thread
    take new seqs, which sort after every key there is.
    """
    if after is None:
        return [(None, b"")] * count
    if before is None:
        anchor, low, high = after[0] - 1, b"", None
    elif before[0] < after[0]:
        anchor, low, high = before[0], before[1], None
    else:
        anchor, low, high = before[0], before[1], after[1]
    return [(anchor, frac) for frac in _fracs_between(low, high, count)]


def needs_respace(places: Sequence[tuple[int | None, bytes]]) -> int | None:
    """The anchor whose run must be respaced before ``places`` are used, if any."""
    for anchor, frac in places:
        if len(frac) > MAX_FRAC_BYTES:
            return anchor
    return None


def respace(
    run: Sequence[bytes], before: bytes | None, count: int
) -> tuple[list[bytes], list[bytes]]:
    """Fresh fracs for a run of rows sharing an anchor (``run``: their fracs in order)
    and for ``count`` rows going in right after the one whose frac is ``before`` (None:
    ahead of the whole run): ``(the run's new fracs, the new rows' fracs)``."""
    split = 0 if before is None else sum(1 for frac in run if frac <= before)
    fracs = _fracs_between(b"", None, len(run) + count)
    return fracs[:split] + fracs[split + count :], fracs[split : split + count]


def _fracs_between(low: bytes, high: bytes | None, count: int) -> list[bytes]:
    """``count`` byte strings ``low < f1 < ... < high`` (None: no upper bound), evenly
    spread, as short as that allows; none ends in a zero byte, so there is always
    room after each of them."""
    width = max(len(low), len(high or b""))
    while True:
        bottom = int.from_bytes(low.ljust(width, b"\0"))
        top = 256**width if high is None else int.from_bytes(high.ljust(width, b"\0"))
        if top - bottom > count:
            break
        width += 1
    step = (top - bottom) // (count + 1)
    return [(bottom + step * i).to_bytes(width).rstrip(b"\0") for i in range(1, count + 1)]
