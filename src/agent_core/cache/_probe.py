"""`CacheProbe`: a test-facing seam on the miss path of `ConversationCache`.

Race tests pass a probe to hold a load at a named point and interleave a write or an
invalidation deterministically. Production code passes none (`NO_PROBE` does nothing).
"""

from __future__ import annotations

from typing import Final, Protocol

__all__ = ["NO_PROBE", "CacheProbe"]


class CacheProbe(Protocol):
    """Awaited by a load at fixed points; may delay it, must not raise."""

    async def loaded(self, thread_id: str) -> None:
        """After the store read, before the L2 fill."""

    async def l1_fill(self, thread_id: str) -> None:
        """After the load (and its L2 fill), before the L1 put."""


class _NoProbe:
    async def loaded(self, thread_id: str) -> None:
        return None

    async def l1_fill(self, thread_id: str) -> None:
        return None


NO_PROBE: Final[CacheProbe] = _NoProbe()
