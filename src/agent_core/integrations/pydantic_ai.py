"""pydantic-ai memory in agent-core: `AgentCoreMessageHistory` and `run_turn`.

``await run_turn(agent, AgentCoreMessageHistory("user-1", cache), "Hi")`` runs
``agent.run("Hi", message_history=<the thread>)`` and appends ``result.new_messages()`` to the
agent-core thread ``user-1`` in one write. Needs ``agent-core[pydantic-ai]``.

Each ``ModelMessage`` is one agent-core message: a Chat Completions view of it (``role``,
``content``, ``tool_calls``, ``tool_call_id``), which the HTTP API, token windows and compaction
read, plus its exact JSON from pydantic-ai's own ``ModelMessagesTypeAdapter`` in the last field,
``"pydantic_ai"``. Loading joins those JSON texts, cut from the stored bytes without decoding
them, and validates them in one ``ModelMessagesTypeAdapter.validate_json`` call: the history
comes back exactly as pydantic-ai's own ``dump_json``/``validate_json`` would give it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, Final, Literal, TypeVar

import orjson

from .._extras import needs_extra
from .._quote import quote
from .._validation import check_count, check_thread_id
from ..cache import ConversationCache
from ..errors import (
    ConfigurationError,
    InvalidArgument,
    InvalidBatch,
    InvalidMessage,
    TurnNotSaved,
    VersionConflict,
)
from ..messages import Message

with needs_extra("AgentCoreMessageHistory"):
    import pydantic
    import pydantic_core
    from pydantic_ai import AgentRunResult
    from pydantic_ai.agent import AbstractAgent
    from pydantic_ai.messages import (
        BinaryContent,
        FilePart,
        FileUrl,
        ImageUrl,
        ModelMessage,
        ModelMessagesTypeAdapter,
        ModelRequest,
        ModelResponse,
        RetryPromptPart,
        SystemPromptPart,
        TextPart,
        ToolCallPart,
        ToolReturnPart,
        UserContent,
        UserPromptPart,
    )

__all__ = ["FIELD", "AgentCoreMessageHistory", "run_turn"]

#: The field of each stored message that holds the pydantic-ai message's exact JSON.
FIELD: Final = "pydantic_ai"
# The adapter writes the field last, after the view, whose keys hold no such name: the first
# occurrence of these bytes starts the field, and its value runs to the payload's final "}".
_MARK: Final = b',"' + FIELD.encode() + b'":'

OutputT = TypeVar("OutputT")
OnConflict = Literal["append", "retry"]


class AgentCoreMessageHistory:
    """A pydantic-ai message history (``list[ModelMessage]``) kept in the agent-core thread
    ``thread_id`` of ``cache``, an open `ConversationCache` that the caller keeps and closes.

    With ``window_tokens`` (and ``model``), `run_turn` sends the agent the newest messages
    that fit that many prompt tokens of ``model`` (`window`) instead of the whole history.
    """

    thread_id: str
    cache: ConversationCache
    window_tokens: int | None
    model: str | None

    def __init__(
        self,
        thread_id: str,
        cache: ConversationCache,
        *,
        window_tokens: int | None = None,
        model: str | None = None,
    ) -> None:
        if not isinstance(cache, ConversationCache):
            raise ConfigurationError(
                f"cache must be a ConversationCache, got {type(cache).__name__}: "
                "open one with ConversationCache.from_urls(store=...)"
            )
        self.thread_id = check_thread_id(thread_id)
        if window_tokens is None and model is not None:
            raise InvalidArgument(
                f"model={quote(model)} is for window_tokens: give window_tokens too, or no model"
            )
        self.window_tokens, self.model = None, None
        if window_tokens is not None:
            self.window_tokens, self.model = _budget(window_tokens, model, "window_tokens")
        self.cache = cache

    async def load(self) -> list[ModelMessage]:
        """The whole history, oldest first (``[]`` for a new thread)."""
        return (await self.load_versioned())[0]

    async def load_versioned(self) -> tuple[list[ModelMessage], int]:
        """`load`, and the thread version it was read at (for ``expected_version``)."""
        conversation = await self.cache.get(self.thread_id)
        return _decode(conversation.payloads, self.thread_id), conversation.version

    async def window(
        self, max_tokens: int | None = None, *, model: str | None = None
    ) -> list[ModelMessage]:
        """The newest messages that fit ``max_tokens`` prompt tokens of ``model`` (default: the
        history's ``window_tokens`` and ``model``), as counted on their Chat Completions view.

        The request that holds the system prompt is always kept; a tool call is never cut from
        its return; the kept part starts at a user prompt (a leading response, or tool returns
        whose call was cut, are left out). `TokenBudgetExceeded` if the newest message alone
        does not fit.
        """
        return (await self.window_versioned(max_tokens, model=model))[0]

    async def window_versioned(
        self, max_tokens: int | None = None, *, model: str | None = None
    ) -> tuple[list[ModelMessage], int]:
        """`window`, and the thread version it was cut from."""
        budget, counted_for = _budget(
            self.window_tokens if max_tokens is None else max_tokens,
            self.model if model is None else model,
            "window_tokens" if max_tokens is None else "max_tokens",
        )
        window = await self.cache.window(self.thread_id, max_tokens=budget, model=counted_for)
        kept = window.messages
        if window.omitted:
            # Pinned (system) messages, then the suffix from ``window.cut``: it must start at a
            # user prompt for pydantic-ai (a response first, or returns without their call, no).
            pinned = window.cut - window.omitted
            start = pinned
            while start < len(kept) and kept[start].role not in ("user", "system"):
                start += 1
            kept = kept[:pinned] + kept[start:]
        return _decode(tuple(m.raw for m in kept), self.thread_id), window.version

    async def load_for_run(self) -> tuple[list[ModelMessage], int]:
        """What `run_turn` sends as ``message_history``: the `window` if the history has
        ``window_tokens``, else the whole history; and the version it was read at."""
        if self.window_tokens is None:
            return await self.load_versioned()
        return await self.window_versioned()

    async def extend(
        self,
        messages: Sequence[ModelMessage],
        *,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        """Append ``messages`` (``result.new_messages()``) in one write, after everything
        already there; returns the thread's new version.

        All of them land or none: each is checked and encoded first, so a refused batch writes
        nothing. With ``expected_version`` it is compare-and-append (`VersionConflict`, nothing
        written, if the thread has moved). An empty list writes nothing and returns the current
        version. ``idempotency_key`` as in `ConversationCache.append`.
        """
        if isinstance(messages, list | tuple) and not messages:
            return (await self.cache.get(self.thread_id)).version
        batch = _batch(messages, self.cache.max_message_bytes)
        return await self.cache.append(
            self.thread_id,
            batch,
            expected_version=expected_version,
            idempotency_key=idempotency_key,
        )

    async def clear(self) -> int:
        """Delete the history; returns the thread's new version (versions never go back)."""
        return await self.cache.delete(self.thread_id)

    def __repr__(self) -> str:
        return (
            f"AgentCoreMessageHistory({self.thread_id!r}, namespace={self.cache.namespace!r}, "
            f"window_tokens={self.window_tokens!r})"
        )


async def run_turn(
    agent: AbstractAgent[Any, OutputT],
    history: AgentCoreMessageHistory,
    user_prompt: str | Sequence[UserContent] | None = None,
    *,
    on_conflict: OnConflict = "append",
    max_attempts: int = 3,
    **run_kwargs: Any,
) -> AgentRunResult[OutputT]:
    """Run one turn of ``agent`` on the thread and store it: ``agent.run(user_prompt,
    message_history=<loaded>, **run_kwargs)``, then ``result.new_messages()`` appended in one
    write. Returns the run's result.

    ``on_conflict="append"`` (the default) appends after whatever another writer stored during
    the run: nothing is lost and no turn is split, but this turn did not see those messages.
    ``"retry"`` appends only if the thread is still at the version loaded; if not, it loads the
    thread again and runs the turn again (the model and the tools are called again), at most
    ``max_attempts`` runs in all. If the reply cannot be stored (the last attempt's conflict, a
    store failure, a message over ``max_message_bytes``) `TurnNotSaved` is raised, the cause
    chained: its ``reply`` is the run's result, and ``history.extend(reply.new_messages(),
    idempotency_key=...)`` with its ``idempotency_key`` stores it at most once. A run that
    raises stores nothing.
    """
    if not isinstance(history, AgentCoreMessageHistory):
        raise InvalidArgument(
            f"history must be an AgentCoreMessageHistory, got {type(history).__name__}"
        )
    if on_conflict not in ("append", "retry"):
        raise InvalidArgument(f"on_conflict must be 'append' or 'retry', got {quote(on_conflict)}")
    attempts = check_count("max_attempts", max_attempts, minimum=1, maximum=100)
    if "message_history" in run_kwargs:
        raise InvalidArgument(
            "run_turn passes message_history itself, from the thread: leave it out"
        )
    cache, thread_id = history.cache, history.thread_id
    for attempt in range(1, attempts + 1):
        past, version = await history.load_for_run()
        result: AgentRunResult[OutputT] = await agent.run(
            user_prompt, message_history=past, **run_kwargs
        )
        key = uuid.uuid4().hex
        batch: list[Message] = []
        try:
            batch = _batch(result.new_messages(), cache.max_message_bytes)
            await cache.append(
                thread_id,
                batch,
                expected_version=version if on_conflict == "retry" else None,
                idempotency_key=key,
            )
        except VersionConflict as exc:
            if attempt < attempts:
                continue
            raise _not_saved(thread_id, result, batch, key, exc) from exc
        except Exception as exc:
            raise _not_saved(thread_id, result, batch, key, exc) from exc
        return result
    raise AssertionError("unreachable: the last attempt returns or raises")


def _not_saved(
    thread_id: str, result: Any, batch: list[Message], key: str, cause: BaseException
) -> TurnNotSaved:
    """The error of a turn whose reply came back but was not stored; ``messages`` is empty
    when agent-core refused them (the cause says why)."""
    messages = [m.to_dict() for m in batch]
    return TurnNotSaved(
        thread_id, reply=result, messages=messages, idempotency_key=key, cause=cause
    )


def _budget(max_tokens: object, model: object, name: str) -> tuple[int, str]:
    tokens = check_count(name, max_tokens, minimum=1)
    if not isinstance(model, str) or not model.strip():
        raise InvalidArgument(
            f"a token window needs the model its tokens are counted for (model='gpt-4o', say); "
            f"got model={quote(model)}"
        )
    return tokens, model


# -- storing: the view and the exact JSON ----------------------------------------------------


def _batch(messages: Sequence[object], max_bytes: int) -> list[Message]:
    if isinstance(messages, str | bytes | dict) or not isinstance(messages, Sequence):
        raise InvalidBatch(
            f"messages must be a list of ModelRequest/ModelResponse, got "
            f"{type(messages).__name__}: pass result.new_messages()"
        )
    return [_encode(message, index, max_bytes) for index, message in enumerate(messages)]


def _encode(message: object, index: int, max_bytes: int) -> Message:
    """One stored message: the view's JSON with the exact dump as its last field."""
    if not isinstance(message, ModelRequest | ModelResponse):
        raise InvalidMessage(
            f"messages[{index}] must be a ModelRequest or ModelResponse, "
            f"got {type(message).__name__}"
        )
    try:
        dumped = ModelMessagesTypeAdapter.dump_json([message])
    except pydantic_core.PydanticSerializationError as exc:
        raise InvalidMessage(
            f"messages[{index}] cannot be serialized by ModelMessagesTypeAdapter: {exc}"
        ) from None
    view = _request_view(message) if isinstance(message, ModelRequest) else _response_view(message)
    raw = orjson.dumps(view)[:-1] + _MARK + dumped[1:-1] + b"}"
    try:
        return Message.from_json(raw, max_bytes=max_bytes)
    except InvalidMessage as exc:
        exc.args = (f"messages[{index}]: {exc}",)
        raise


def _request_view(message: ModelRequest) -> dict[str, Any]:
    """``system`` if it holds a system prompt (windows then always keep it, as pydantic-ai
    sends the system prompt only with the history's first request), ``tool`` if it answers
    tool calls (windows keep it with its call), else ``user``."""
    parts: list[dict[str, Any]] = []
    role, call_id = "user", None
    for part in message.parts:
        if isinstance(part, SystemPromptPart):
            role = "system"
            parts.append(_text(part.content))
        elif isinstance(part, UserPromptPart):
            contents = [part.content] if isinstance(part.content, str) else part.content
            parts.extend(_user_content(item) for item in contents if not _is_cache_point(item))
        elif isinstance(part, ToolReturnPart | RetryPromptPart):
            tool_call = isinstance(part, ToolReturnPart) or part.tool_name is not None
            if tool_call and call_id is None:
                call_id = part.tool_call_id
            text = (
                part.model_response_str()
                if isinstance(part, ToolReturnPart)
                else part.model_response()
            )
            parts.append(_text(text))
        else:
            other = _other_text(part, request=True)
            if other is not None:
                parts.append(_text(other))
    if role == "user" and call_id is not None:
        role = "tool"
    view: dict[str, Any] = {"role": role, "content": _content(parts, images=role == "user")}
    if role == "tool":
        view["tool_call_id"] = call_id
    return view


def _response_view(message: ModelResponse) -> dict[str, Any]:
    """``assistant``: the text parts as ``content``, function tool calls as ``tool_calls``
    (thinking and provider-run tools are left out)."""
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for part in message.parts:
        if isinstance(part, TextPart):
            parts.append(_text(part.content))
        elif isinstance(part, ToolCallPart):
            function = {"name": part.tool_name, "arguments": part.args_as_json_str()}
            calls.append({"id": part.tool_call_id, "type": "function", "function": function})
        elif isinstance(part, FilePart):
            parts.append(_text(_placeholder(part.content)))
        else:
            other = _other_text(part, request=False)
            if other is not None:
                parts.append(_text(other))
    view: dict[str, Any] = {"role": "assistant", "content": _content(parts, images=False)}
    if calls:
        view["tool_calls"] = calls
        if not parts:
            view["content"] = None
    return view


def _other_text(part: object, *, request: bool) -> str | None:
    """The text of the parts that newer pydantic-ai versions add, by duck typing: a request's
    retry feedback, a compaction summary, a speech transcript. Instruction and settings deltas,
    thinking and provider-run tools are not conversation text: None."""
    kind, respond = getattr(part, "part_kind", None), getattr(part, "model_response", None)
    found: Any = None
    if kind == "compaction":
        found = getattr(part, "content", None)
    elif kind == "speech":
        found = getattr(part, "transcript", None)
    elif request and callable(respond):  # RetryFeedbackPart
        found = respond()
    return found if isinstance(found, str) else None


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _user_content(item: object) -> dict[str, Any]:
    if isinstance(item, str):
        return _text(item)
    if isinstance(item, ImageUrl):
        return {"type": "image_url", "image_url": {"url": item.url}}
    text = getattr(item, "content", None)  # TextContent
    return _text(text if isinstance(text, str) else _placeholder(item))


def _is_cache_point(item: object) -> bool:
    return getattr(item, "kind", None) == "cache-point"


def _placeholder(item: object) -> str:
    """What the view says in place of a file: its kind, and its URL or media type and size."""
    kind = getattr(item, "kind", type(item).__name__)
    if isinstance(item, FileUrl):
        return f"[{kind}: {item.url}]"
    if isinstance(item, BinaryContent):
        return f"[{kind}: {item.media_type}, {len(item.data)} bytes]"
    return f"[{kind}]"


def _content(parts: list[dict[str, Any]], *, images: bool) -> str | list[dict[str, Any]]:
    """One string of the texts (blank lines between), or, with an image among them and
    ``images``, the parts as they are."""
    if images and any(part["type"] != "text" for part in parts):
        return parts
    return "\n\n".join(part["text"] if part["type"] == "text" else _image(part) for part in parts)


def _image(part: dict[str, Any]) -> str:
    return f"[image-url: {part['image_url']['url']}]"


# -- loading ----------------------------------------------------------------------------------


def _decode(payloads: tuple[bytes, ...], thread_id: str) -> list[ModelMessage]:
    """The messages of ``payloads``: their dumps cut out and validated in one call, or, if a
    payload is not as this adapter writes it, one by one (`_decode_each`)."""
    if not payloads:
        return []
    dumps = []
    for raw in payloads:
        at = raw.find(_MARK)
        if at < 0:
            return _decode_each(payloads, thread_id)
        dumps.append(raw[at + len(_MARK) : -1])
    try:
        return ModelMessagesTypeAdapter.validate_json(b"[" + b",".join(dumps) + b"]")
    except pydantic.ValidationError:
        return _decode_each(payloads, thread_id)


def _decode_each(payloads: Iterable[bytes], thread_id: str) -> list[ModelMessage]:
    """Each payload on its own: its ``pydantic_ai`` field, wherever it is, or a plain chat
    message another writer stored (`_from_chat`); `InvalidMessage` names the first that is
    neither."""
    messages: list[ModelMessage] = []
    for index, raw in enumerate(payloads):
        item = json.loads(raw)  # not orjson: integers past 64 bits stay exact
        where = f"message {index} of thread {quote(thread_id)}"
        if FIELD not in item:
            messages.append(_from_chat(item, where))
            continue
        dumped = json.dumps(item[FIELD], ensure_ascii=False).encode()
        try:
            messages.extend(ModelMessagesTypeAdapter.validate_json(b"[" + dumped + b"]"))
        except pydantic.ValidationError as exc:
            raise InvalidMessage(
                f"{where}: its {FIELD!r} field is not a pydantic-ai message "
                f"({exc.error_count()} errors, first: {exc.errors()[0]['msg']})"
            ) from None
    return messages


def _from_chat(item: dict[str, Any], where: str) -> ModelMessage:
    """A plain text message that another writer stored (a compaction summary, a message sent
    through the HTTP API): system and developer as a system prompt, user as a user prompt,
    assistant as a text response."""
    role, content = item.get("role"), item.get("content")
    text = _plain_text(content)
    if text is not None and role in ("system", "developer"):
        return ModelRequest(parts=[SystemPromptPart(text)])
    if text is not None and role == "user":
        return ModelRequest(parts=[UserPromptPart(text)])
    if text is not None and role == "assistant" and not item.get("tool_calls"):
        return ModelResponse(parts=[TextPart(text)])
    raise InvalidMessage(
        f"{where} was not stored by AgentCoreMessageHistory and is not a plain text system, "
        f"user or assistant message (role {quote(role)}): pydantic-ai cannot load it; remove it "
        "(ConversationCache.splice) or read this thread with ConversationCache.get"
    )


def _plain_text(content: object) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        for part in content
    ):
        return "\n\n".join(part["text"] for part in content)
    return None
