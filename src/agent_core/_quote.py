"""`quote`: caller input shown in an error message, safely and briefly.

``repr()`` of hostile input can recurse until `RecursionError` (a 10,000-deep list),
raise `ValueError` (an int of more than 4,300 digits), run a caller's own ``__repr__``,
or echo megabytes. `quote` looks only at built-in scalars and at most two levels of
built-in containers, a few items each, and returns at most `MAX_QUOTE` characters.
"""

from __future__ import annotations

from itertools import islice
from typing import Final

__all__ = ["MAX_QUOTE", "quote"]

#: The longest text `quote` returns.
MAX_QUOTE: Final = 120
_MAX_TEXT: Final = 60
_MAX_ITEMS: Final = 4
_MAX_DEPTH: Final = 2
_MAX_INT_BITS: Final = 128
_BRACKETS: Final[dict[type, str]] = {list: "[]", tuple: "()", set: "{}", frozenset: "{}"}


def quote(value: object) -> str:
    """``value`` as Python would show it, cut short: strings to 60 characters, containers to
    4 items and 2 levels, other objects to their type's name; never more than 120 characters."""
    text = _quote(value, _MAX_DEPTH)
    return text if len(text) <= MAX_QUOTE else text[: MAX_QUOTE - 3] + "..."


def _quote(value: object, depth: int) -> str:
    kind = type(value)
    if value is None or kind is bool or kind is float:
        return repr(value)
    if kind is int:
        assert isinstance(value, int)
        bits = value.bit_length()
        return repr(value) if bits <= _MAX_INT_BITS else f"<int of {bits} bits>"
    if kind is str or kind is bytes:
        assert isinstance(value, str | bytes)
        if len(value) <= _MAX_TEXT:
            return repr(value)
        return f"{value[:_MAX_TEXT]!r}... ({len(value)} {'characters' if kind is str else 'bytes'})"
    if kind is dict:
        assert isinstance(value, dict)
        if depth == 0 or not value:
            return "{...}" if value else "{}"
        pairs = [
            f"{_quote(k, depth - 1)}: {_quote(v, depth - 1)}"
            for k, v in islice(value.items(), _MAX_ITEMS)
        ]
        return "{" + ", ".join(pairs) + (", ...}" if len(value) > _MAX_ITEMS else "}")
    brackets = _BRACKETS.get(kind)
    if brackets is not None:
        assert isinstance(value, list | tuple | set | frozenset)
        if not value and kind is not list and kind is not tuple:
            return f"{kind.__name__}()"
        if depth == 0 and value:
            return f"{brackets[0]}...{brackets[1]}"
        items = [_quote(item, depth - 1) for item in islice(value, _MAX_ITEMS)]
        more = (
            ", ..." if len(value) > _MAX_ITEMS else "," if kind is tuple and len(value) == 1 else ""
        )
        return f"{brackets[0]}{', '.join(items)}{more}{brackets[1]}"
    return f"<{kind.__name__}>"
