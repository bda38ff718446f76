"""`AgentReply`: what one agent turn produced, and what it cost."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ._models import Usage

__all__ = ["AgentReply", "HistoryTier"]

#: Where a turn's history came from: the in-process L1, Redis (L2), the store, or
#: nowhere (stateless turns).
HistoryTier = Literal["l1", "l2", "store", "none"]


@dataclass(frozen=True, slots=True)
class AgentReply:
    """One turn of a `BaseAgent`: the model's reply, where the history came from, what it cost."""

    thread_id: str
    #: The reply's text (``""`` when it has none, e.g. only tool calls).
    text: str
    #: The assistant message as the model returned it; it is what was stored.
    message: dict[str, Any]
    #: Tokens as the model's server billed them (zeros if it reported none).
    usage: Usage
    #: ``"stop"``, ``"length"``, ``"tool_calls"``, ... or None if the server gave none.
    finish_reason: str | None
    #: The thread's version after the turn was stored; None for stateless turns.
    version: int | None
    #: The tier that served the history (``"none"`` for stateless turns).
    history_tier: HistoryTier
    #: The prompt's billed size by our count (`TokenCounter.count_messages` of what was sent).
    prompt_tokens: int
    #: Messages of the thread sent as history, and those left out to fit the budget.
    history_messages: int
    history_omitted: int
    #: Another writer appended to the thread during the turn; the turn was stored after
    #: its messages (see `BaseAgent`).
    conflicted: bool
    #: Seconds per step: ``"context"`` (context files), ``"history"`` (load and window),
    #: ``"build"`` (the prompt), ``"rate_limit"`` (waiting for admission), ``"model"``
    #: and ``"persist"``.
    timings: dict[str, float]
