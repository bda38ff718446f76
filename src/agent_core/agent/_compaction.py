"""`CompactionPolicy`: when `BaseAgent` compacts a thread, and the background task that does.

A turn never waits for a compaction: after its reply is stored, the agent starts a
task that decides and compacts (`Compactor.after_turn`). It compacts when the thread's
history passes ``trigger_tokens``; with stable windows, while the window is cut and
the next turn (if it adds as many tokens as this one did) would keep the same cut, it
waits for the turn before the cut moves, since the provider's cached prefix is lost then
anyway, but never past ``trigger_tokens + target_tokens``. After a compaction the thread
holds about ``target_tokens``, so a thread is compacted once per overflow of the trigger.
The summarizer's tokens are acquired from the agent's rate limits first. A failure is
logged and counted (`CompactionStats`), never raised into a turn.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .._tasks import TaskGroup
from .._validation import check_count
from ..errors import ConfigurationError, InvalidArgument
from ..tokens import Window
from ._memory import AgentLimiter, CompactingMemory
from ._models import ChatModel

__all__ = ["CompactionPolicy", "CompactionStats", "Compactor"]

log = logging.getLogger("agent_core.agent")


@dataclass(frozen=True, slots=True)
class CompactionPolicy:
    """Compact a thread once its history passes ``trigger_tokens``, down to about
    ``target_tokens``: a summary of at most ``max_summary_tokens`` (default a quarter of
    the target, at most 1,024) plus the newest messages. ``summarizer`` writes the
    summary; ``model`` names the token model (default: the agent's ``token_model``);
    ``instructions`` replace the default summarizing prompt; ``keep_original`` keeps
    each thread's messages before a compaction as a fork (`ConversationCache.compact`).
    """

    trigger_tokens: int
    target_tokens: int
    summarizer: ChatModel
    model: str | None = None
    instructions: str | None = None
    max_summary_tokens: int | None = None
    keep_original: bool = False

    def __post_init__(self) -> None:
        try:
            check_count("trigger_tokens", self.trigger_tokens, minimum=2)
            check_count("target_tokens", self.target_tokens, minimum=1)
            if self.max_summary_tokens is not None:
                check_count("max_summary_tokens", self.max_summary_tokens, minimum=1)
        except InvalidArgument as exc:
            raise ConfigurationError(str(exc)) from None
        if self.target_tokens >= self.trigger_tokens:
            raise ConfigurationError(
                f"target_tokens={self.target_tokens} must be below trigger_tokens="
                f"{self.trigger_tokens}: a compaction must leave the thread under its trigger"
            )
        if self.summary_tokens >= self.target_tokens:
            raise ConfigurationError(
                f"max_summary_tokens={self.summary_tokens} leaves no room for recent messages "
                f"in target_tokens={self.target_tokens}: it must be smaller"
            )
        if not isinstance(self.summarizer, ChatModel):
            raise ConfigurationError(
                f"summarizer must be a ChatModel, got {type(self.summarizer).__name__}"
            )
        if self.model is not None and (not isinstance(self.model, str) or not self.model.strip()):
            raise ConfigurationError(f"model must be None or a model name, got {self.model!r}")
        if self.instructions is not None and (
            not isinstance(self.instructions, str) or not self.instructions.strip()
        ):
            raise ConfigurationError("instructions must be None or a non-empty str")
        if not isinstance(self.keep_original, bool):
            raise ConfigurationError("keep_original must be a bool")

    @property
    def summary_tokens(self) -> int:
        """The summary's token cap."""
        if self.max_summary_tokens is not None:
            return self.max_summary_tokens
        return max(1, min(1024, self.target_tokens // 4))


@dataclass(slots=True)
class CompactionStats:
    """What an agent's compactions did, since it was made."""

    #: Compactions that ran to their end: a summary written, or none needed (nothing to
    #: summarize, or another instance's compaction of the same messages came first).
    finished: int = 0
    #: Checks that found a thread over its trigger but waited for its cut to move.
    deferred: int = 0
    #: Compactions that raised (logged; the turns went on).
    failed: int = 0
    #: Summarizer tokens acquired from the rate limits.
    summarizer_tokens: int = 0
    errors: list[str] = field(default_factory=list)


class Compactor:
    """The agent's background compactions (one at a time per thread in this process)."""

    def __init__(
        self,
        policy: CompactionPolicy,
        memory: CompactingMemory,
        token_model: str,
        rate_limits: AgentLimiter | None,
    ) -> None:
        self.policy = policy
        self.stats = CompactionStats()
        self._memory = memory
        self._model = policy.model or token_model
        self._rate_limits = rate_limits
        self._running: set[str] = set()
        self._tasks = TaskGroup()

    def after_turn(self, thread_id: str, window: WindowCheck | None) -> None:
        """Start the check for ``thread_id`` in the background, unless one runs."""
        if thread_id not in self._running:
            self._running.add(thread_id)
            self._tasks.start(self._run(thread_id, window))

    async def wait(self) -> None:
        """Wait for the compactions started so far."""
        await self._tasks.wait()

    async def _run(self, thread_id: str, window: WindowCheck | None) -> None:
        try:
            await self._check(thread_id, window)
        except Exception as exc:
            self.stats.failed += 1
            del self.stats.errors[:-9]  # the last 10
            self.stats.errors.append(f"{type(exc).__name__}: {exc}")
            log.warning("compacting thread %r failed: %r", thread_id, exc)
        finally:
            self._running.discard(thread_id)

    async def _check(self, thread_id: str, window: WindowCheck | None) -> None:
        policy = self.policy
        conversation = (await self._memory.read(thread_id)).value
        total = conversation.token_count(self._model)
        if total < policy.trigger_tokens:
            return
        if (
            window is not None
            and window.cut > 0
            and total < policy.trigger_tokens + policy.target_tokens
            and await self._cut_holds(thread_id, window)
        ):
            self.stats.deferred += 1
            return
        summary_tokens = policy.summary_tokens
        if self._rate_limits is not None:
            # What the summarizer reads (the part summarized) and may write.
            tokens = max(1, total - (policy.target_tokens - summary_tokens)) + summary_tokens
            await self._rate_limits.acquire(policy.summarizer.name, tokens)
            self.stats.summarizer_tokens += tokens
        await self._memory.compact(
            thread_id,
            summarizer=policy.summarizer,
            model=self._model,
            keep_recent_tokens=policy.target_tokens - summary_tokens,
            instructions=policy.instructions,
            max_summary_tokens=summary_tokens,
            keep_original=policy.keep_original,
        )
        self.stats.finished += 1

    async def _cut_holds(self, thread_id: str, window: WindowCheck) -> bool:
        """Whether the next turn keeps the cut, if it adds what this turn added: then the
        provider's cached prefix is warm, and compacting now would break it."""
        now = await self._read_window(thread_id, window, 0)
        if now.cut != window.cut:
            return False
        added = max(0, now.token_count - window.tokens)
        return (await self._read_window(thread_id, window, added)).cut == window.cut

    async def _read_window(self, thread_id: str, window: WindowCheck, pending: int) -> Window:
        read = await self._memory.read_window(
            thread_id,
            max_tokens=window.max_tokens,
            model=window.model,
            strategy="stable",
            retain_ratio=window.retain_ratio,
            pending_tokens=pending,
        )
        return read.value


@dataclass(frozen=True, slots=True)
class WindowCheck:
    """The stable window a turn was sent with: what the check compares the next one to."""

    cut: int
    #: The window's own tokens (the pending user message not included).
    tokens: int
    max_tokens: int
    model: str
    retain_ratio: float
