"""`EchoModel`: a local, deterministic chat model for demos and tests; it opens no socket."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any, Final

from .._closing import AsyncClosing
from .._quote import quote
from ..errors import InvalidArgument
from ..messages import Message
from ..tokens import TokenCounter
from ._models import ChatStream, Completion, StreamEvent, Usage, check_cache_key, check_request

__all__ = ["EchoModel"]

# Each chunk is a word with the whitespace before it; a trailing run of whitespace is its own.
_CHUNKS: Final = re.compile(r"\s*\S+|\s+")
# A prompt is counted in slices of at most this many messages and bytes (well under 1 ms
# each: a short message costs ~9 us), with the loop free in between; a bigger message
# alone goes to a worker thread.
_SLICE_MESSAGES: Final = 64
_INLINE_BYTES: Final = 16 << 10


class EchoModel(AsyncClosing):
    """Replies ``"echo: " + the text of the last user message``, the same every time.

    Usage is counted as ``token_model`` would bill it (default ``"gpt-4o"``: exact,
    offline counts with `TokenCounter`). `stream` yields the reply word by word.
    ``max_tokens`` cuts the reply to its longest run of whole words within that many
    tokens (``finish_reason="length"``). Tools are checked and never called.
    """

    def __init__(self, *, name: str = "echo", token_model: str = "gpt-4o") -> None:
        if not isinstance(name, str) or not name.strip():
            raise InvalidArgument(f"name must be a non-empty str, got {quote(name)}")
        if not isinstance(token_model, str) or not token_model.strip():
            raise InvalidArgument(f"token_model must be a model name, got {quote(token_model)}")
        self._name = name
        self._counter = TokenCounter.for_model(token_model)

    @property
    def name(self) -> str:
        """The name completions carry as their ``model``."""
        return self._name

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        max_tokens: int | None = None,
        cache_key: str | None = None,
    ) -> Completion:
        """The echo of the last user message (``cache_key`` is checked, then ignored)."""
        messages, _ = check_request(messages, tools, max_tokens)
        check_cache_key(cache_key)
        return await self._reply(messages, tools, max_tokens)

    def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        max_tokens: int | None = None,
        cache_key: str | None = None,
    ) -> ChatStream:
        """The echo word by word, then the `Completion`."""
        messages, _ = check_request(messages, tools, max_tokens)
        check_cache_key(cache_key)
        return ChatStream(self._events(messages, tools, max_tokens))

    async def aclose(self) -> None:
        """Nothing to release; there for the `ChatModel` protocol."""

    def __repr__(self) -> str:
        return f"EchoModel(name={self._name!r}, token_model={self._counter.model!r})"

    async def _events(
        self,
        messages: Sequence[Message],
        tools: Sequence[Mapping[str, Any]] | None,
        max_tokens: int | None,
    ) -> AsyncGenerator[StreamEvent, None]:
        completion = await self._reply(messages, tools, max_tokens)
        for chunk in _CHUNKS.findall(completion.text):
            yield chunk
        yield completion

    async def _reply(
        self,
        messages: Sequence[Message],
        tools: Sequence[Mapping[str, Any]] | None,
        max_tokens: int | None,
    ) -> Completion:
        text = f"echo: {_last_user_text(messages) or '(no user message)'}"
        completion = await self._counter.count_async(text)
        finish_reason = "stop"
        if max_tokens is not None and completion > max_tokens:
            text = _cut(text, max_tokens, self._counter.count)
            completion, finish_reason = self._counter.count(text), "length"
        prompt = await self._count_prompt(messages, tools)
        return Completion(
            message={"role": "assistant", "content": text},
            text=text,
            usage=Usage(prompt, completion, prompt + completion),
            finish_reason=finish_reason,
            model=self._name,
        )

    async def _count_prompt(
        self, messages: Sequence[Message], tools: Sequence[Mapping[str, Any]] | None
    ) -> int:
        """`TokenCounter.count_messages`, in slices that leave the loop free in between.

        A long history of short messages costs per message, not per byte: counted at
        once it would hold the loop for many ms, and in a worker thread it would hold
        the GIL. A message too big for one slice is counted in a worker thread.
        """
        counter = self._counter
        total = counter.count_messages((), tools)  # reply priming and tool definitions
        for part in _slices(messages):
            if len(part) == 1 and len(part[0].raw) > _INLINE_BYTES:
                total += await asyncio.to_thread(counter.count_message, part[0])
            else:
                total += sum(map(counter.count_message, part))
                await asyncio.sleep(0)
        return total


def _slices(messages: Sequence[Message]) -> list[Sequence[Message]]:
    """Runs of at most ``_SLICE_MESSAGES`` messages and ``_INLINE_BYTES`` bytes (or one message)."""
    slices: list[Sequence[Message]] = []
    start, size = 0, 0
    for end, message in enumerate(messages):
        if end > start and (
            end - start == _SLICE_MESSAGES or size + len(message.raw) > _INLINE_BYTES
        ):
            slices.append(messages[start:end])
            start, size = end, 0
        size += len(message.raw)
    if start < len(messages):
        slices.append(messages[start:])
    return slices


def _last_user_text(messages: Sequence[Message]) -> str:
    for message in reversed(messages):
        if message.role == "user":
            content = message.to_dict().get("content")
            if isinstance(content, list):
                return " ".join(
                    part["text"]
                    for part in content
                    if isinstance(part, dict) and isinstance(part.get("text"), str)
                )
            return content if isinstance(content, str) else ""
    return ""


def _cut(text: str, max_tokens: int, count: Callable[[str], int]) -> str:
    """The longest run of whole words of ``text`` within ``max_tokens`` (binary search)."""
    chunks = _CHUNKS.findall(text)
    # chunks[:low] fits and chunks[:high + 1] does not: the whole text is over the budget.
    low, high = 0, len(chunks) - 1
    while low < high:
        middle = (low + high + 1) // 2
        if count("".join(chunks[:middle])) <= max_tokens:
            low = middle
        else:
            high = middle - 1
    return "".join(chunks[:low])
