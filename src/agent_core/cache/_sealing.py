"""Sealing and opening a batch of payloads, off the loop when it is large.

AES-GCM costs about a microsecond per payload plus a few per KiB; beyond
`_INLINE_BYTES` a batch goes to a worker thread, so the loop never stalls on a
long thread's load (the hop itself costs more than a small batch's work).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Final, TypeVar

__all__ = ["sized"]

_T = TypeVar("_T")
_INLINE_BYTES: Final = 256 << 10


async def sized(
    function: Callable[[str, Sequence[bytes]], _T], thread_id: str, payloads: Sequence[bytes]
) -> _T:
    """``function(thread_id, payloads)``: on the loop for a small batch, else in a thread."""
    if sum(map(len, payloads)) <= _INLINE_BYTES:
        return function(thread_id, payloads)
    return await asyncio.to_thread(function, thread_id, payloads)
