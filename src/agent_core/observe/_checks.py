"""The check of numeric parameters shared by the monitors and the histogram."""

from __future__ import annotations

import math
from collections.abc import Callable

from .._quote import quote
from ..errors import InvalidArgument


def check_number(name: str, value: object, valid: Callable[[float], bool], expected: str) -> float:
    """``value`` as a float if it is a finite int or float (not a bool) and ``valid``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            pass
        else:
            if math.isfinite(number) and valid(number):
                return number
    raise InvalidArgument(f"{name} must be {expected}, got {quote(value)}")
