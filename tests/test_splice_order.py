"""Order keys against a list model: every splice locates the rows Python's slice would
and puts its new rows strictly between their neighbours, however often it nests."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agent_core.store._order import absolute, fetch_for, keys_between, locate, respace

Row = tuple[int, int, bytes]  # (seq, anchor, frac)
INDEX = st.none() | st.integers(-12, 12)


def read(rows: list[Row], start: int | None, stop: int | None) -> list[Row]:
    """What a store's query for ``fetch_for(start, stop)`` returns."""
    fetch = fetch_for(start, stop)
    assert fetch is not None
    ordered = rows[::-1] if fetch.from_end else rows
    end = None if fetch.limit is None else fetch.offset + fetch.limit
    return ordered[fetch.offset : end]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(INDEX, INDEX, st.integers(0, 4)), min_size=1, max_size=40))
def test_splices_locate_and_place_like_python_lists(
    steps: list[tuple[int | None, int | None, int]],
) -> None:
    rows: list[Row] = [(seq, seq, b"") for seq in range(1, 6)]
    version = 5
    for start, stop, inserted in steps:
        if fetch_for(start, stop) is None:  # a store counts the rows first
            start, stop = absolute(start, stop, len(rows))
        located = locate(start, stop, read(rows, start, stop))
        expected = rows[start:stop]
        assert located.removed == expected
        first, last = absolute(start, stop, len(rows))
        assert located.after == (rows[last] if last < len(rows) else None)
        if located.after is not None:  # else new rows go to the end: no neighbour needed
            assert located.before == (rows[first - 1] if first else None)

        def key(row: Row | None) -> tuple[int, bytes] | None:
            return None if row is None else (row[1], row[2])

        places = keys_between(key(located.before), key(located.after), inserted)
        new = [
            (seq, seq if anchor is None else anchor, frac)
            for seq, (anchor, frac) in enumerate(places, version + 1)
        ]
        assert all(not frac.endswith(b"\0") for _, _, frac in new)
        rows[first:last] = new
        version += max(1, inserted)
        order = [(anchor, frac) for _, anchor, frac in rows]
        assert order == sorted(order)
        assert len(set(order)) == len(order)


def test_nested_inserts_at_one_spot_grow_keys_slowly() -> None:
    low, high = (3, b""), (4, b"")
    before = low
    for _ in range(800):  # always between the left neighbour and the last one made
        ((anchor, frac),) = keys_between(before, high, 1)
        assert anchor is not None
        assert (anchor, frac) > before
        assert (anchor, frac) < high
        high = (anchor, frac)
    assert len(high[1]) <= 800 // 8 + 2


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=70), max_size=30, unique=True),
    st.integers(0, 30),
    st.integers(1, 5),
    st.booleans(),
)
def test_respacing_keeps_the_run_in_order_and_places_new_rows(
    fracs: list[bytes], split: int, count: int, ahead: bool
) -> None:
    # Stored fracs never end in a zero byte, and only an appended row's is empty.
    run = sorted({frac.rstrip(b"\0") or b"\1" for frac in fracs})
    split = min(split, len(run))
    before = None if ahead or not run else run[max(split - 1, 0)]
    kept, new = respace(run, before, count)
    at = 0 if before is None else run.index(before) + 1
    merged = kept[:at] + new + kept[at:]
    assert merged == sorted(merged)
    assert len(set(merged)) == len(merged)
    assert max(map(len, merged)) <= 2
    assert len(new) == count
