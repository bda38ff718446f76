"""What `BaseAgent` needs of its memory and its rate limiter, as Protocols.

`ConversationCache` and `RateLimiter` implement them; a caller may pass a wrapper
(logging, metrics, tenancy) or a substitute instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from ..cache import ReadResult, Summarizer
from ..messages import Conversation, Message
from ..tokens import DEFAULT_RETAIN_RATIO, Window, WindowStrategy

__all__ = ["AgentLimiter", "AgentMemory", "CompactingMemory"]


@runtime_checkable
class AgentMemory(Protocol):
    """A thread store with windows, as `ConversationCache` offers it (see its methods)."""

    #: The largest message (encoded JSON bytes) that `append` accepts.
    max_message_bytes: int

    async def read(self, thread_id: str) -> ReadResult[Conversation]: ...

    async def read_window(
        self, thread_id: str, *, max_tokens: int, model: str
    ) -> ReadResult[Window]: ...

    async def append(
        self,
        thread_id: str,
        messages: Sequence[dict[str, Any] | Message],
        *,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> int: ...


@runtime_checkable
class CompactingMemory(AgentMemory, Protocol):
    """An `AgentMemory` with stable windows and compaction, which `CompactionPolicy` needs."""

    async def read_window(
        self,
        thread_id: str,
        *,
        max_tokens: int,
        model: str,
        strategy: WindowStrategy = "sliding",
        retain_ratio: float = DEFAULT_RETAIN_RATIO,
        pending_tokens: int = 0,
    ) -> ReadResult[Window]: ...

    async def compact(
        self,
        thread_id: str,
        *,
        summarizer: Summarizer,
        model: str,
        keep_recent_tokens: int,
        instructions: str | None = None,
        max_summary_tokens: int = 1024,
        expected_version: int | None = None,
        keep_original: bool = False,
    ) -> int: ...


@runtime_checkable
class AgentLimiter(Protocol):
    """Token budgets per model, as `RateLimiter` offers them."""

    async def acquire(self, model: str, tokens: int) -> float:
        """Wait until ``tokens`` may be spent on ``model``; returns the seconds waited."""
        ...
