"""Compaction: the oldest part of a thread summarized into one message, by a splice.

`plan` picks the part: every message before the newest suffix of at most
``keep_recent_tokens`` (never starting between a tool call and its results), except
the system and developer messages there, which stay as they are. Earlier summaries
in the part are summarized again, so a thread holds at most one. `compact_thread`
asks the summarizer for the summary and replaces the part with the kept messages and
the summary in one compare-and-splice on the version it read:

- an append meanwhile leaves the part as it was: the same summary is spliced again on
  the new version (at most `_ATTEMPTS` times);
- any other change of the part (another instance's compaction, a rewrite) means the
  summary no longer stands for it: nothing is written, and the thread's version is
  returned; so two instances compacting at once leave one summary.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, runtime_checkable

import orjson

from .._summary import SUMMARY_NAME
from .._validation import check_count
from ..errors import InvalidArgument, ThreadExists, VersionConflict
from ..messages import Conversation, Message
from ..tokens import Derived, TokenCounter, complete_counts, recent_start

__all__ = ["DEFAULT_SUMMARY_INSTRUCTIONS", "Summarizer", "compact_thread", "is_summary"]

log = logging.getLogger("agent_core.cache")

DEFAULT_SUMMARY_INSTRUCTIONS: Final = (
    "You compact the history of a conversation between a user and an AI assistant. "
    "Summarize the transcript you are given for the assistant that continues the "
    "conversation: keep every fact, decision, name, number, preference, open task and "
    "tool result that may matter later; drop greetings and repetition. Write plain "
    "sentences, without a preamble."
)
_SUMMARY_HEAD: Final = "Summary of the earlier conversation:\n"
_EARLIER: Final = "(summary of what came before) "
#: The most transcript one summarizer request carries (about 64K tokens of English), far
#: below the 1 MiB message limit, with room for the summary so far.
PIECE_BYTES: Final = 256 * 1024
_ATTEMPTS: Final = 3
_PINNED_ROLES: Final = frozenset({"system", "developer"})


def is_summary(message: Message) -> bool:
    """Whether ``message`` is a compaction summary (a system message named `SUMMARY_NAME`)."""
    return (
        message.role == "system"
        and SUMMARY_NAME.encode() in message.raw
        and (message.to_dict().get("name") == SUMMARY_NAME)
    )


@runtime_checkable
class Summarizer(Protocol):
    """What compaction needs of a model: any `ChatModel` (the cache layer is below the
    agent layer, so it names only this much of it)."""

    @property
    def name(self) -> str: ...

    async def complete(
        self, messages: Sequence[Message], *, max_tokens: int | None = ...
    ) -> Any: ...


class _Threads(Protocol):
    """What compaction uses of `ConversationCache`."""

    async def get(self, thread_id: str) -> Conversation: ...

    async def splice(
        self,
        thread_id: str,
        start: int | None,
        stop: int | None,
        messages: Sequence[dict[str, Any] | Message] = (),
        *,
        expected_version: int | None = None,
    ) -> int: ...

    async def fork(self, source_id: str, new_id: str, *, at_version: int | None = None) -> int: ...


@dataclass(frozen=True, slots=True)
class _Plan:
    #: Messages ``[0:stop]`` are replaced.
    stop: int
    kept: tuple[Message, ...]
    summarized: tuple[Message, ...]


async def plan(conversation: Conversation, model: str, keep_recent_tokens: int) -> _Plan | None:
    """What a compaction of ``conversation`` replaces; None if nothing is worth it."""
    counter = TokenCounter.for_model(model)
    derived = Derived()
    index, _, _ = await complete_counts(conversation, counter, derived)
    stop = recent_start(conversation, derived, index, keep_recent_tokens)
    head = conversation.messages[:stop]
    kept = tuple(m for m in head if m.role in _PINNED_ROLES and not is_summary(m))
    summarized = tuple(m for m in head if m.role not in _PINNED_ROLES or is_summary(m))
    # Only a summary there already: a new one would stand for the same messages.
    if not summarized or (len(summarized) == 1 and is_summary(summarized[0])):
        return None
    return _Plan(stop, kept, summarized)


async def compact_thread(
    cache: _Threads,
    thread_id: str,
    *,
    summarizer: Summarizer,
    model: str,
    keep_recent_tokens: int,
    instructions: str | None,
    max_summary_tokens: int,
    expected_version: int | None,
    keep_original: bool,
) -> int:
    """`ConversationCache.compact`."""
    check_count("keep_recent_tokens", keep_recent_tokens, minimum=0)
    check_count("max_summary_tokens", max_summary_tokens, minimum=1)
    if instructions is not None and (not isinstance(instructions, str) or not instructions.strip()):
        raise InvalidArgument("instructions must be None or a non-empty str")
    conversation = await cache.get(thread_id)
    version = conversation.version
    if expected_version is not None and version != expected_version:
        raise VersionConflict(thread_id, expected=expected_version, actual=version)
    chosen = await plan(conversation, model, keep_recent_tokens)
    if chosen is None:
        return version
    head = conversation.messages[: chosen.stop]
    summary = await _summarize(summarizer, chosen.summarized, instructions, max_summary_tokens)
    if keep_original:
        await _keep_original(cache, thread_id, version)
    for _ in range(_ATTEMPTS):
        try:
            return await cache.splice(
                thread_id, 0, chosen.stop, [*chosen.kept, summary], expected_version=version
            )
        except VersionConflict:
            if expected_version is not None:
                raise
        conversation = await cache.get(thread_id)
        version = conversation.version
        if conversation.messages[: chosen.stop] != head:
            log.info("a compaction gave up: another rewrite of the thread came first")
            return version
    log.info("a compaction gave up after %d attempts: the thread kept changing", _ATTEMPTS)
    return version


def original_id(thread_id: str, version: int) -> str:
    """The id of the fork that keeps a thread's messages as they were before a compaction."""
    return f"{thread_id}.original.{version}"


async def _keep_original(cache: _Threads, thread_id: str, version: int) -> None:
    # ThreadExists: another instance's copy of the same version.
    with contextlib.suppress(ThreadExists):
        await cache.fork(thread_id, original_id(thread_id, version), at_version=version)


async def _summarize(
    summarizer: Summarizer,
    messages: Sequence[Message],
    instructions: str | None,
    max_tokens: int,
) -> Message:
    system = Message.from_dict(
        {"role": "system", "content": instructions or DEFAULT_SUMMARY_INSTRUCTIONS}
    )
    text = ""
    # A part too long for one request is summarized in pieces, oldest first, each with the
    # summary so far: a thread of any length compacts, and no request outgrows a message.
    for piece in _pieces(messages):
        if text:
            piece = f"{_EARLIER}{text}\n\n{piece}"
        user = Message.from_dict({"role": "user", "content": piece})
        completion = await summarizer.complete([system, user], max_tokens=max_tokens)
        text = completion.text.strip()
        if not text:
            raise InvalidArgument(
                f"the summarizer {summarizer.name!r} returned no text; nothing was compacted"
            )
    return Message.from_dict(
        {"role": "system", "name": SUMMARY_NAME, "content": _SUMMARY_HEAD + text}
    )


def _pieces(messages: Sequence[Message]) -> Iterator[str]:
    """The transcript in pieces of at most `PIECE_BYTES` (UTF-8), cut between messages; a
    message longer than that alone is shortened, marked where it was cut."""
    lines: list[str] = []
    size = 0
    for message in messages:
        line = _line(message.to_dict())
        encoded = line.encode()
        if len(encoded) > PIECE_BYTES:
            kept = encoded[: PIECE_BYTES - 64].decode(errors="ignore")
            line = f"{kept} [... {len(encoded) - len(kept.encode()):,} bytes left out]"
            encoded = line.encode()
        if lines and size + 2 + len(encoded) > PIECE_BYTES:
            yield "\n\n".join(lines)
            lines, size = [], 0
        lines.append(line)
        size += len(encoded) + 2
    if lines:
        yield "\n\n".join(lines)


def _line(item: dict[str, Any]) -> str:
    role = item.get("role")
    if item.get("name") == SUMMARY_NAME:
        return f"(summary of what came before) {_text(item.get('content'))}"
    if role == "tool":
        return f"tool result: {_text(item.get('content'))}"
    if isinstance(role, str):
        parts = [f"{role}: {_text(item.get('content'))}"] if item.get("content") else []
        calls = item.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                parts.append(f"{role} called {function.get('name')}({function.get('arguments')})")
        return "\n".join(parts) or f"{role}: (nothing)"
    return orjson.dumps(item).decode()  # a Responses API item: its JSON says what it is


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            if isinstance(part, dict) and isinstance(part.get("text"), str)
            else f"[{part.get('type', 'part') if isinstance(part, dict) else 'part'}]"
            for part in content
        )
    return "" if content is None else orjson.dumps(content).decode()
