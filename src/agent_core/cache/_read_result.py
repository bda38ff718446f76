"""`ReadResult`: what a read returned and which tier served it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

__all__ = ["ReadResult", "ReadSource"]

#: The tier that served a read: ``"store"`` when the thread was loaded from the store
#: (also by a load that this read joined).
ReadSource = Literal["l1", "l2", "store"]
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class ReadResult(Generic[_T]):
    """A read's value (a `Conversation` or a `Window`) and the tier that served it."""

    value: _T
    source: ReadSource
