"""Checks shared by every public entry point; each raises a typed error."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Final

from ._quote import quote
from .errors import AgentCoreError, InvalidArgument, InvalidNamespace, InvalidThreadId

#: The characters of thread ids and namespaces; the OpenAPI spec states it as their pattern.
ID_PATTERN: Final = r"[A-Za-z0-9._:@-]+"
_ID_CHARS = re.compile(ID_PATTERN)
MAX_THREAD_ID_LENGTH = 200
MAX_NAMESPACE_LENGTH = 64
MAX_IDEMPOTENCY_KEY_LENGTH = 200


def _check_id(value: object, what: str, max_length: int, error: type[InvalidArgument]) -> str:
    if not (
        isinstance(value, str)
        and 0 < len(value) <= max_length
        and _ID_CHARS.fullmatch(value) is not None
    ):
        raise error(
            f"invalid {what} {quote(value)}: use 1-{max_length} characters of A-Z a-z 0-9 . _ : @ -"
        )
    return value


def check_thread_id(thread_id: object) -> str:
    return _check_id(thread_id, "thread id", MAX_THREAD_ID_LENGTH, InvalidThreadId)


def check_namespace(namespace: object) -> str:
    return _check_id(namespace, "namespace", MAX_NAMESPACE_LENGTH, InvalidNamespace)


#: A thread's metadata: at most this many keys, each a short name, each value a short string.
MAX_METADATA_KEYS: Final = 16
MAX_METADATA_VALUE_LENGTH: Final = 512
_METADATA_KEY = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def check_metadata(metadata: object, *, removals: bool) -> dict[str, str | None]:
    """A copy of ``metadata``: keys of 1-64 characters of A-Z a-z 0-9 . _ : -, values
    strings of at most 512 characters without NUL (None too, with ``removals``: remove
    the key), at most `MAX_METADATA_KEYS` of them."""
    if not isinstance(metadata, Mapping):
        raise InvalidArgument(f"metadata must be a mapping of str to str, got {quote(metadata)}")
    if len(metadata) > MAX_METADATA_KEYS:
        raise InvalidArgument(
            f"metadata has {len(metadata)} keys; a thread holds at most {MAX_METADATA_KEYS}"
        )
    checked: dict[str, str | None] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or _METADATA_KEY.fullmatch(key) is None:
            raise InvalidArgument(
                f"invalid metadata key {quote(key)}: use 1-64 characters of A-Z a-z 0-9 . _ : -"
            )
        if value is None and removals:
            checked[key] = None
            continue
        if (
            not isinstance(value, str)
            or len(value) > MAX_METADATA_VALUE_LENGTH
            or "\x00" in value
            or not _is_utf8(value)
        ):
            allowed = " (or None to remove the key)" if removals else ""
            raise InvalidArgument(
                f"invalid value of metadata key {key!r}: {quote(value)}; use a string of at most "
                f"{MAX_METADATA_VALUE_LENGTH} characters without NUL or lone surrogates{allowed}"
            )
        checked[key] = value
    return checked


def _is_utf8(text: str) -> bool:
    """Whether ``text`` can be stored: no lone surrogates, which UTF-8 can't encode."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def check_idempotency_key(key: object) -> str | None:
    if key is None:
        return None
    if (
        not isinstance(key, str)
        or not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH
        or not key.isprintable()
    ):
        raise InvalidArgument(
            f"invalid idempotency_key {quote(key)}: use 1-{MAX_IDEMPOTENCY_KEY_LENGTH} "
            "printable characters, e.g. a UUID, or None"
        )
    return key


#: Every count ends up in a 64-bit column (SQLite INTEGER, PostgreSQL bigint).
MAX_COUNT: Final = 2**63 - 1


def check_count(name: str, value: object, *, minimum: int, maximum: int = MAX_COUNT) -> int:
    """An int (not a bool) within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise InvalidArgument(
            f"{name} must be an int of at least {minimum} and at most {maximum}, got {quote(value)}"
        )
    return value


def check_optional_count(name: str, value: object, *, minimum: int) -> int | None:
    return None if value is None else check_count(name, value, minimum=minimum)


def check_number(
    name: str,
    value: object,
    valid: Callable[[float], bool],
    expected: str,
    *,
    error: type[AgentCoreError] = InvalidArgument,
) -> float:
    """``value`` as a float if it is a finite int or float (not a bool) and ``valid``.

    Otherwise ``error`` saying "``name`` must be ``expected``" and what it got.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            pass
        else:
            if math.isfinite(number) and valid(number):
                return number
    raise error(f"{name} must be {expected}, got {quote(value)}")


def check_seconds(
    name: str,
    value: object,
    *,
    allow_zero: bool = False,
    maximum: float = math.inf,
    note: str = "",
    error: type[AgentCoreError] = InvalidArgument,
) -> float:
    """A finite number of seconds: more than 0 (0 too with ``allow_zero``), at most ``maximum``.

    ``note`` says what the option means where the bound alone would not, e.g. "0 disables".
    """
    least = "0 or more" if allow_zero else "more than 0"
    most = f" and at most {maximum:g}" if maximum < math.inf else ""
    return check_number(
        name,
        value,
        lambda v: (v >= 0 if allow_zero else v > 0) and v <= maximum,
        f"a finite number of seconds, {least}{most}{f' ({note})' if note else ''}",
        error=error,
    )


#: A splice's ``start`` and ``stop`` lie within plus or minus this.
MAX_INDEX: Final = 2**62


def check_slice(start: object, stop: object) -> None:
    """A splice's bounds: each None or an int (negative counts from the end)."""
    for name, index in (("start", start), ("stop", stop)):
        if index is not None:
            check_count(name, index, minimum=-MAX_INDEX, maximum=MAX_INDEX)


#: Expiry times lie between the epoch and this (the year 9999, as datetime allows).
MAX_TIMESTAMP: Final = 253_402_300_799.0


def check_timestamp(name: str, value: object) -> float:
    """Seconds since the epoch, as a finite int or float from 0 to the year 9999."""
    return check_number(
        name,
        value,
        lambda number: 0 <= number <= MAX_TIMESTAMP,
        "seconds since the epoch (0 to the year 9999)",
    )


def check_expires_at(expires_at: object) -> float | None:
    """An expiry given as an aware datetime (or None), as seconds since the epoch."""
    if expires_at is None:
        return None
    if not isinstance(expires_at, datetime) or expires_at.utcoffset() is None:
        raise InvalidArgument(
            "expires_at must be a timezone-aware datetime such as "
            f"datetime.now(UTC) + timedelta(days=30), got {quote(expires_at)}"
        )
    return check_timestamp("expires_at", expires_at.timestamp())
