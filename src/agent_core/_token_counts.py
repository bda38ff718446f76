"""Per-message token counts as snapshots and cache tiers hold them.

A snapshot keeps, per count key (an encoding name), one ``array("i")`` with a count
per message, ``UNKNOWN`` where none is stored. Arrays cost 4 bytes a message and turn
into prefix sums without a Python loop.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping, Sequence
from typing import Final

from .store import decode_token_counts, encode_token_counts

__all__ = ["UNKNOWN", "Counts", "concat", "from_stored", "to_stored"]

#: The count of a message that has none stored under a key.
UNKNOWN: Final = -1
Counts = Mapping[str, "array[int]"]


def from_stored(tokens: Sequence[bytes | None]) -> dict[str, array[int]]:
    """Arrays from the stored form, one JSON object per message (None: no counts)."""
    counts: dict[str, array[int]] = {}
    for index, encoded in enumerate(tokens):
        if encoded is None:
            continue
        for key, count in decode_token_counts(encoded).items():
            column = counts.get(key)
            if column is None:
                column = counts[key] = array("i", [UNKNOWN]) * len(tokens)
            column[index] = count
    return counts


def to_stored(counts: Counts, size: int) -> list[bytes | None]:
    """The stored form of ``size`` messages' counts."""
    per_message: list[dict[str, int]] = [{} for _ in range(size)]
    for key, column in counts.items():
        for index, count in enumerate(column):
            if count != UNKNOWN:
                per_message[index][key] = count
    return [encode_token_counts(item) if item else None for item in per_message]


def concat(head: Counts, head_size: int, tail: Counts, tail_size: int) -> dict[str, array[int]]:
    """The counts of two runs of messages, one after the other."""
    joined = {}
    for key in head.keys() | tail.keys():
        first = head.get(key) or array("i", [UNKNOWN]) * head_size
        second = tail.get(key) or array("i", [UNKNOWN]) * tail_size
        joined[key] = first + second
    return joined
