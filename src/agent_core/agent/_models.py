"""The `ChatModel` protocol and what every model returns: `Completion`, `Usage`, `ChatStream`.

Streaming: ``model.stream(...)`` returns a `ChatStream`, an async iterator of
`StreamEvent` (``str | Completion``): the reply's text deltas in order, then exactly
one `Completion`, the last event, which holds the whole message (tool calls included)
and the usage. The same Completion is then at ``stream.completion``. Text deltas are
plain ``str`` so that printing a reply as it comes is ``if isinstance(event, str)``;
tool calls are only useful whole, so they come with the Completion. Leaving the loop
early leaves the HTTP response open until the stream is closed: use
``async with model.stream(...) as events:`` (or ``await events.aclose()``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, final, runtime_checkable

import orjson

from .._closing import AsyncClosing
from .._quote import quote
from ..errors import InvalidArgument
from ..messages import Message

__all__ = [
    "ChatModel",
    "ChatStream",
    "Completion",
    "StreamEvent",
    "Usage",
    "check_cache_key",
    "check_request",
]


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens billed for one request, as the server reported them (zeros if it did not)."""

    #: Every input token, those read from and written to the provider's prompt cache included.
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    #: Input tokens read from the provider's prompt cache (billed at its discount):
    #: OpenAI's ``prompt_tokens_details.cached_tokens``, Anthropic's ``cache_read_input_tokens``.
    cached_tokens: int = 0
    #: Input tokens written to the provider's prompt cache (Anthropic's
    #: ``cache_creation_input_tokens``, billed at 1.25x); 0 where writes are free.
    cache_write_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Completion:
    """One reply of a chat model."""

    #: The assistant message as the server returned it, ``tool_calls`` included; it can be
    #: appended to a conversation as it is.
    message: dict[str, Any]
    #: The message's text (``""`` when it has none, e.g. only tool calls).
    text: str
    usage: Usage
    #: ``"stop"``, ``"length"``, ``"tool_calls"``, ... or None if the server gave none.
    finish_reason: str | None
    #: The model that answered, as the server named it.
    model: str
    #: The response body (non-streaming requests only).
    raw: bytes | None = None

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """The message's ``tool_calls`` (empty if none)."""
        calls = self.message.get("tool_calls")
        return calls if isinstance(calls, list) else []


StreamEvent = str | Completion


@final
class ChatStream(AsyncClosing):
    """A streamed reply: text deltas (``str``), then one `Completion`, the last event.

    Made from an async generator of events; a model's ``stream`` returns one.
    """

    __slots__ = ("_completion", "_events")

    def __init__(self, events: AsyncGenerator[StreamEvent, None]) -> None:
        self._events = events
        self._completion: Completion | None = None

    @property
    def completion(self) -> Completion | None:
        """The final `Completion`; None until the stream has delivered it."""
        return self._completion

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> StreamEvent:
        if self._completion is not None:
            raise StopAsyncIteration
        event = await self._events.__anext__()
        if isinstance(event, Completion):
            self._completion = event
            # Nothing follows the completion: release the response now, not at GC.
            await self._events.aclose()
        return event

    async def aclose(self) -> None:
        """Stop the stream and release its connection."""
        await self._events.aclose()


@runtime_checkable
class ChatModel(Protocol):
    """A chat model: `OpenAIChatModel` (any OpenAI-compatible server) or `EchoModel`."""

    @property
    def name(self) -> str:
        """The model's name, as requests name it."""
        ...

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        max_tokens: int | None = None,
        cache_key: str | None = None,
    ) -> Completion:
        """The model's reply to ``messages``, offered ``tools`` (function definitions).

        ``cache_key`` groups requests that share a prompt prefix (`BaseAgent` passes the
        thread id), for providers that route on it (OpenAI's ``prompt_cache_key``);
        models without such a feature ignore it."""
        ...

    def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        max_tokens: int | None = None,
        cache_key: str | None = None,
    ) -> ChatStream:
        """The reply as it is generated: text deltas, then the `Completion`."""
        ...

    async def aclose(self) -> None:
        """Release the model's connections."""
        ...


def check_request(
    messages: object, tools: object, max_tokens: object
) -> tuple[Sequence[Message], bytes | None]:
    """Validate a request's arguments; returns the messages and the encoded tools (None if none)."""
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise InvalidArgument(f"messages must be a sequence of Message, got {type(messages)!r}")
    if not messages:
        raise InvalidArgument("messages is empty: a request needs at least one message")
    for index, message in enumerate(messages):
        if not isinstance(message, Message):
            raise InvalidArgument(
                f"messages[{index}] is a {type(message).__name__}, not a Message; "
                "wrap dicts with Message.from_dict (the request reuses their encoded bytes)"
            )
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise InvalidArgument(f"max_tokens must be a positive int or None, got {quote(max_tokens)}")
    return messages, _encode_tools(tools)


def check_cache_key(cache_key: object) -> str | None:
    """Validate a request's ``cache_key``: None, or a str of 1 to 1,024 printable characters."""
    if cache_key is not None and not (
        isinstance(cache_key, str) and 0 < len(cache_key) <= 1024 and cache_key.isprintable()
    ):
        raise InvalidArgument(
            f"cache_key must be None or a str of 1 to 1024 printable characters, "
            f"got {quote(cache_key)}"
        )
    return cache_key


def _encode_tools(tools: object) -> bytes | None:
    if tools is None:
        return None
    if isinstance(tools, str | bytes) or not isinstance(tools, Sequence):
        raise InvalidArgument(f"tools must be a sequence of tool dicts, got {type(tools)!r}")
    for index, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            raise InvalidArgument(f"tools[{index}] must be a dict, got {type(tool)!r}")
    # Servers refuse an empty tools array; no tools is the same request without one.
    if not tools:
        return None
    try:
        return orjson.dumps([dict(tool) for tool in tools])
    except orjson.JSONEncodeError as exc:
        raise InvalidArgument(f"tools must be JSON-serializable: {exc}") from None
