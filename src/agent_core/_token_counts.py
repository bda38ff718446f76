"""Per-message token counts and every form they take.

In memory (snapshots, L1) a count key (an encoding name) maps to one ``array("i")``
with a count per message, ``UNKNOWN`` where none is stored: 4 bytes a message, and
prefix sums without a Python loop. The other two forms are codecs of the same data,
both here so that one module owns them:

- *stored*: the thread store keeps one JSON object per message, ``{"o200k_base": 12}``
  (`encode_token_counts`, `decode_token_counts`; `from_stored`, `to_stored` convert
  whole snapshots). The store schemas hold this form in a column per message.
- *L2 column*: a count chunk of an L2 value holds one key's counts of the messages
  before it as little-endian int32 (`column_bytes`, `column_from_bytes`); the chunk's
  framing is the L2 format's (`agent_core.cache._l2_format`).

This module sits in the messages layer: it imports only errors and validation.
"""

from __future__ import annotations

import re
import sys
from array import array
from collections.abc import Mapping, Sequence
from typing import Final

import orjson

from ._quote import quote
from ._validation import check_count
from .errors import InvalidArgument

__all__ = [
    "UNKNOWN",
    "Counts",
    "check_token_key",
    "column_bytes",
    "column_from_bytes",
    "concat",
    "decode_token_counts",
    "encode_token_counts",
    "from_stored",
    "is_token_counts",
    "to_stored",
]

#: The count of a message that has none stored under a key.
UNKNOWN: Final = -1
Counts = Mapping[str, "array[int]"]
_TOKEN_KEY: Final = re.compile(r"[a-z0-9._-]{1,64}")


def check_token_key(key: object) -> str:
    """A token-count key: an encoding name such as ``o200k_base``."""
    if not isinstance(key, str) or not _TOKEN_KEY.fullmatch(key):
        raise InvalidArgument(
            "a token-count key must be 1-64 characters of a-z, 0-9, '.', '_' or '-', "
            f"got {quote(key)}"
        )
    return key


# The stored form: one JSON object per message.


def encode_token_counts(counts: Mapping[str, int]) -> bytes:
    """The stored form of one message's token counts: ``{"o200k_base": 12, ...}``."""
    for key, count in counts.items():
        check_token_key(key)
        check_count(f"token count for {quote(key)}", count, minimum=0)
    return orjson.dumps(counts if isinstance(counts, dict) else dict(counts))


def decode_token_counts(encoded: bytes | None) -> dict[str, int]:
    """Token counts from their stored form; {} for None or anything malformed."""
    if not encoded:
        return {}
    try:
        counts = orjson.loads(encoded)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(counts, dict):
        return {}
    return {k: v for k, v in counts.items() if type(v) is int and v >= 0}


def is_token_counts(encoded: object) -> bool:
    """Whether ``encoded`` is exactly what `encode_token_counts` could have written."""
    if not isinstance(encoded, bytes):
        return False
    try:
        counts = orjson.loads(encoded)
    except orjson.JSONDecodeError:
        return False
    return isinstance(counts, dict) and all(
        _TOKEN_KEY.fullmatch(key) and type(count) is int and count >= 0
        for key, count in counts.items()
    )


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


# The L2 column form: little-endian int32.


def column_bytes(column: array[int]) -> bytes:
    """One key's counts as little-endian int32."""
    if sys.byteorder == "little":
        return column.tobytes()
    swapped = array("i", column)
    swapped.byteswap()
    return swapped.tobytes()


def column_from_bytes(data: bytes | memoryview) -> array[int]:
    """Counts from `column_bytes` output; ``len(data)`` must be a multiple of 4."""
    column = array("i")
    column.frombytes(data)
    if sys.byteorder != "little":
        column.byteswap()
    return column


def concat(head: Counts, head_size: int, tail: Counts, tail_size: int) -> dict[str, array[int]]:
    """The counts of two runs of messages, one after the other."""
    joined = {}
    for key in head.keys() | tail.keys():
        first = head.get(key) or array("i", [UNKNOWN]) * head_size
        second = tail.get(key) or array("i", [UNKNOWN]) * tail_size
        joined[key] = first + second
    return joined
