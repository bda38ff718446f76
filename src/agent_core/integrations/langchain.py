"""LangChain memory in agent-core: `AgentCoreChatMessageHistory`, a ``BaseChatMessageHistory``.

``RunnableWithMessageHistory(chain, lambda session_id: AgentCoreChatMessageHistory(
session_id, cache))`` keeps each session's messages in the agent-core thread of that id:
the SQLite or PostgreSQL log behind the two-tier cache. Needs ``agent-core[langchain]``.

Messages are stored in the Chat Completions shape (``{"role": "assistant", "content": ...,
"tool_calls": [...]}``), so the HTTP API, windows and `BaseAgent` read the same thread.
What that shape cannot hold (ids, ``additional_kwargs``, ``response_metadata``,
``usage_metadata``, a tool message's ``artifact``...) goes in one extra field,
``"langchain"``, holding only the fields that differ from what the standard shape gives
back; with it, every message reads back equal (``==``) to the one added.

Both the sync (`messages`, `add_messages`, `clear`) and the async (`aget_messages`,
`aadd_messages`, `aclear`) methods work. A cache belongs to the event loop it was opened
on: the sync methods submit their call to that loop (``run_coroutine_threadsafe``) and
wait, so they work from any other thread, including one where another loop runs (that
loop waits meanwhile). On the cache's own loop they would deadlock, so they raise
`BlockingCallInEventLoop` instead. `from_urls` opens a cache on a private loop thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import orjson

from .._extras import needs_extra
from .._quote import quote
from .._validation import check_thread_id
from ..cache import DEFAULT_STORE_URL, ConversationCache
from ..errors import (
    AgentCoreError,
    CacheClosed,
    ConfigurationError,
    InvalidArgument,
    InvalidBatch,
    InvalidMessage,
)
from ..messages import Message

with needs_extra("AgentCoreChatMessageHistory"):
    from langchain_core.chat_history import BaseChatMessageHistory
    from langchain_core.messages import (
        AIMessage,
        BaseMessage,
        ChatMessage,
        FunctionMessage,
        HumanMessage,
        SystemMessage,
        ToolMessage,
        messages_from_dict,
    )
    from langchain_core.messages.tool import default_tool_parser

__all__ = [
    "METADATA_FIELD",
    "AgentCoreChatMessageHistory",
    "BlockingCallInEventLoop",
    "from_chat_completions",
    "to_chat_completions",
]

#: The extra field of a stored message that holds what the Chat Completions shape loses.
METADATA_FIELD: Final = "langchain"
#: LangChain's mark of a system message sent with OpenAI's ``developer`` role.
_OPENAI_ROLE: Final = "__openai_role__"
_TYPES: Final = {
    "user": "human",
    "assistant": "ai",
    "system": "system",
    "developer": "system",
    "tool": "tool",
    "function": "function",
}
_T = TypeVar("_T")


class BlockingCallInEventLoop(AgentCoreError, RuntimeError):
    """A sync method was called on the event loop its cache runs on: it would wait for that
    loop while blocking it. Await the async twin (``aget_messages``...) instead."""


class AgentCoreChatMessageHistory(BaseChatMessageHistory):
    """The messages of the agent-core thread ``thread_id``, as a LangChain chat history.

    ``cache`` is an open `ConversationCache`, which the caller keeps and closes (see
    `from_urls` for a history that owns its cache). ``loop`` is the event loop the cache
    was opened on: by default the loop running when the history is made (else the first
    one an async method runs on); the sync methods need it. ``keep_metadata=False``
    stores the bare Chat Completions shape (no ``"langchain"`` field: ids, metadata and
    the exact message class are then lost). ``sync_timeout`` bounds a sync call's wait, in
    seconds (None: no bound).
    """

    thread_id: str
    cache: ConversationCache
    keep_metadata: bool
    sync_timeout: float | None

    def __init__(
        self,
        thread_id: str,
        cache: ConversationCache,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        keep_metadata: bool = True,
        sync_timeout: float | None = 30.0,
    ) -> None:
        if not isinstance(cache, ConversationCache):
            raise ConfigurationError(
                f"cache must be a ConversationCache, got {type(cache).__name__}; or use "
                "AgentCoreChatMessageHistory.from_urls(thread_id, store=..., redis=...)"
            )
        if loop is not None and not isinstance(loop, asyncio.AbstractEventLoop):
            raise InvalidArgument(f"loop must be an asyncio event loop, got {type(loop).__name__}")
        if not isinstance(keep_metadata, bool):
            raise InvalidArgument(
                f"keep_metadata must be True or False, got {quote(keep_metadata)}"
            )
        self.thread_id = check_thread_id(thread_id)
        self.cache = cache
        self.keep_metadata = keep_metadata
        self.sync_timeout = _timeout(sync_timeout)
        self._loop = loop if loop is not None else _running_loop()
        super().__init__()
        self._owner: _LoopThread | None = None

    @classmethod
    def from_urls(
        cls,
        thread_id: str,
        store: str = DEFAULT_STORE_URL,
        redis: str | None = None,
        *,
        namespace: str = "default",
        keep_metadata: bool = True,
        sync_timeout: float | None = 30.0,
        **options: Any,
    ) -> AgentCoreChatMessageHistory:
        """A history that owns a cache of ``store`` (and ``redis`` as L2, if given), open on
        a private event loop thread; `close` (or ``with``) closes both. ``options`` are
        `ConversationCache`'s. Other threads' histories share it through `for_thread`."""
        check_thread_id(thread_id)
        _timeout(sync_timeout)
        cache = ConversationCache.from_urls(store, redis, namespace, **options)
        runner = _LoopThread()
        try:
            runner.run(cache.open(), sync_timeout)
        except BaseException:
            runner.stop()
            raise
        history = cls(
            thread_id,
            cache,
            loop=runner.loop,
            keep_metadata=keep_metadata,
            sync_timeout=sync_timeout,
        )
        history._owner = runner
        return history

    def for_thread(self, thread_id: str) -> AgentCoreChatMessageHistory:
        """A history of ``thread_id`` over this one's cache and loop (it closes nothing:
        use it while this one is open). For ``RunnableWithMessageHistory``'s factory."""
        return AgentCoreChatMessageHistory(
            thread_id,
            self.cache,
            loop=self._loop,
            keep_metadata=self.keep_metadata,
            sync_timeout=self.sync_timeout,
        )

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the cache runs on (None until known; a `from_urls` history's own)."""
        return self._loop

    # -- async -------------------------------------------------------------------------

    async def aget_messages(self) -> list[BaseMessage]:
        """Every message of the thread, oldest first."""
        return (await self.aget_versioned())[0]

    async def aget_versioned(self) -> tuple[list[BaseMessage], int]:
        """The messages and the thread version they were read at (for ``expected_version``)."""
        conversation = await self._await(lambda: self.cache.get(self.thread_id))
        return _from_payloads(self.thread_id, conversation.payloads), conversation.version

    async def aadd_messages(
        self, messages: Sequence[BaseMessage], *, expected_version: int | None = None
    ) -> None:
        """Append ``messages`` in one write: all after every message already there, or none.
        With ``expected_version`` it is compare-and-append: `VersionConflict`, and nothing
        written, if the thread has moved past that version."""
        stored = self._encode(messages)
        if stored:
            await self._await(
                lambda: self.cache.append(self.thread_id, stored, expected_version=expected_version)
            )

    async def aclear(self) -> None:
        """Delete every message (the version still grows: see `ConversationCache.delete`)."""
        await self._await(lambda: self.cache.delete(self.thread_id))

    # -- sync --------------------------------------------------------------------------

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        """`aget_messages`, from sync code (see the class for which threads may call it)."""
        return self.get_versioned()[0]

    def get_versioned(self) -> tuple[list[BaseMessage], int]:
        """`aget_versioned`, from sync code."""
        conversation = self._block(lambda: self.cache.get(self.thread_id))
        return _from_payloads(self.thread_id, conversation.payloads), conversation.version

    def add_messages(
        self, messages: Sequence[BaseMessage], *, expected_version: int | None = None
    ) -> None:
        """`aadd_messages`, from sync code."""
        stored = self._encode(messages)
        if stored:
            self._block(
                lambda: self.cache.append(self.thread_id, stored, expected_version=expected_version)
            )

    def clear(self) -> None:
        """`aclear`, from sync code."""
        self._block(lambda: self.cache.delete(self.thread_id))

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Close the cache and stop its loop thread if this history owns them (`from_urls`);
        otherwise nothing. Call it from any thread but that loop's."""
        owner, self._owner = self._owner, None
        if owner is not None:
            try:
                owner.run(self.cache.close(), self.sync_timeout)
            finally:
                owner.stop()

    async def aclose(self) -> None:
        """`close`, awaited from a coroutine (the wait runs in a worker thread)."""
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"AgentCoreChatMessageHistory({self.thread_id!r}, "
            f"namespace={self.cache.namespace!r}, owned={self._owner is not None})"
        )

    # -- internals ---------------------------------------------------------------------

    def _encode(self, messages: object) -> list[Message]:
        if isinstance(messages, str | bytes | BaseMessage | Mapping) or not isinstance(
            messages, Sequence
        ):
            raise InvalidBatch(
                f"messages must be a list of LangChain messages, got {type(messages).__name__}; "
                "wrap a single message in a list"
            )
        max_bytes = self.cache.max_message_bytes
        stored = []
        for index, message in enumerate(messages):
            try:
                item = to_chat_completions(message, keep_metadata=self.keep_metadata)
                stored.append(Message.from_dict(item, max_bytes=max_bytes))
            except InvalidMessage as exc:
                exc.args = (f"messages[{index}]: {exc}",)
                raise
        return stored

    async def _await(self, call: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        """Run ``call()`` on the cache's loop: here if that is this loop, else submitted."""
        running = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = running
        if self._loop is running:
            return await call()
        _check_runs(self._loop)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(), self._loop))

    def _block(self, call: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        """Run ``call()`` on the cache's loop and wait for it, from a thread that is not it."""
        loop = self._loop
        if loop is None:
            raise ConfigurationError(
                "AgentCoreChatMessageHistory does not know the event loop its cache was opened "
                "on: make it inside that loop, pass loop=..., or use "
                "AgentCoreChatMessageHistory.from_urls(...)"
            )
        if _running_loop() is loop:
            raise BlockingCallInEventLoop(
                "a sync method of AgentCoreChatMessageHistory was called on the event loop "
                "its cache runs on, which it would block: await aget_messages(), "
                "aadd_messages() or aclear() instead (or call it from another thread)"
            )
        _check_runs(loop)
        return _result_within(asyncio.run_coroutine_threadsafe(call(), loop), self.sync_timeout)


# -- the Chat Completions shape ----------------------------------------------------------


def to_chat_completions(message: object, *, keep_metadata: bool = True) -> dict[str, Any]:
    """``message`` as the Chat Completions dict stored, with a ``"langchain"`` field holding
    the fields that shape loses (if any, and if ``keep_metadata``)."""
    if not isinstance(message, BaseMessage):
        raise InvalidMessage(
            f"expected a LangChain message (HumanMessage, AIMessage...), got "
            f"{type(message).__name__}; convert dicts and tuples with "
            "langchain_core.messages.convert_to_messages"
        )
    item = _standard(message)
    if keep_metadata:
        everything = message.model_dump()
        rebuilt = from_chat_completions(dict(item)).model_dump()
        lost = {
            key: value
            for key, value in everything.items()
            if key not in rebuilt or rebuilt[key] != value
        }
        if lost:
            item[METADATA_FIELD] = lost
    return item


def from_chat_completions(item: dict[str, Any]) -> BaseMessage:
    """The LangChain message of a stored Chat Completions dict (consumed)."""
    return messages_from_dict([_message_dict(item)])[0]


def _standard(message: BaseMessage) -> dict[str, Any]:
    content = message.content
    if isinstance(content, list):
        content = [
            part if isinstance(part, dict) else {"type": "text", "text": part} for part in content
        ]
    if isinstance(message, HumanMessage):
        item: dict[str, Any] = {"role": "user", "content": content}
    elif isinstance(message, AIMessage):
        item = {"role": "assistant", "content": content}
        if message.tool_calls:
            item["tool_calls"] = [_tool_call(call) for call in message.tool_calls]
    elif isinstance(message, SystemMessage):
        developer = message.additional_kwargs.get(_OPENAI_ROLE) == "developer"
        item = {"role": "developer" if developer else "system", "content": content}
    elif isinstance(message, ToolMessage):
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": content}
    elif isinstance(message, FunctionMessage):
        item = {"role": "function", "content": content}
    elif isinstance(message, ChatMessage):
        item = {"role": message.role, "content": content}
    else:
        raise InvalidMessage(
            f"a {type(message).__name__} has no Chat Completions role: store HumanMessage, "
            "AIMessage, SystemMessage, ToolMessage, FunctionMessage or ChatMessage"
        )
    if message.name is not None:
        item["name"] = message.name
    return item


def _tool_call(call: Mapping[str, Any]) -> dict[str, Any]:
    try:
        arguments = orjson.dumps(call["args"]).decode()
    except TypeError as exc:
        raise InvalidMessage(
            f"tool call {quote(call.get('name'))}: args are not JSON: {exc}"
        ) from None
    return {
        "id": call["id"],
        "type": "function",
        "function": {"name": call["name"], "arguments": arguments},
    }


def _message_dict(item: dict[str, Any]) -> dict[str, Any]:
    """``item`` (consumed) as LangChain's ``{"type": ..., "data": ...}`` message dict."""
    role = item.pop("role", None)
    kind = _TYPES.get(role) if isinstance(role, str) else None
    lost = item.pop(METADATA_FIELD, None)
    data: dict[str, Any] = {"content": item.pop("content", None) or ""}
    if "name" in item:
        data["name"] = item.pop("name")
    if kind == "tool":
        data["tool_call_id"] = item.pop("tool_call_id")
    elif kind == "ai" and isinstance(item.get("tool_calls"), list):
        calls = item["tool_calls"]
        if all(isinstance(call, dict) and call.get("type") == "function" for call in calls):
            data["tool_calls"], data["invalid_tool_calls"] = default_tool_parser(calls)
            del item["tool_calls"]
    elif kind is None:
        if role is None:
            raise InvalidMessage(
                f"a Responses API item (type {quote(item.get('type'))}) has no LangChain "
                "message class: read this thread with ConversationCache.get, or the "
                "openai-agents adapter"
            )
        kind = "chat"
        data["role"] = role
    # Fields LangChain has no place for (refusal, audio, another writer's own) stay here.
    data["additional_kwargs"] = item
    if role == "developer":
        item[_OPENAI_ROLE] = "developer"
    if isinstance(lost, dict):
        data.update(lost)
        kind = lost.get("type", kind)
    return {"type": kind, "data": data}


def _from_payloads(thread_id: str, payloads: tuple[bytes, ...]) -> list[BaseMessage]:
    if not payloads:
        return []
    items: list[dict[str, Any]] = orjson.loads(b"[" + b",".join(payloads) + b"]")
    converted = []
    for index, item in enumerate(items):
        try:
            converted.append(_message_dict(item))
        except InvalidMessage as exc:
            exc.args = (f"thread {quote(thread_id)}, message {index}: {exc}",)
            raise
    return messages_from_dict(converted)


# -- the loop bridge ---------------------------------------------------------------------


class _LoopThread:
    """An event loop running in a daemon thread of its own (`from_urls`'s)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="agent-core-langchain", daemon=True
        )
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, _T], timeout: float | None) -> _T:
        return _result_within(asyncio.run_coroutine_threadsafe(coroutine, self.loop), timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


def _result_within(future: concurrent.futures.Future[_T], timeout: float | None) -> _T:
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise TimeoutError(
            f"the cache call did not finish in {timeout} s (sync_timeout): is the cache's "
            "event loop blocked, or waiting for this thread?"
        ) from None


def _check_runs(loop: asyncio.AbstractEventLoop) -> None:
    if loop.is_closed() or not loop.is_running():
        raise CacheClosed(
            "the event loop of this history's cache is not running (closed or stopped): "
            "the cache can only be used while its loop runs"
        )


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _timeout(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidArgument(
            f"sync_timeout must be a positive number of seconds or None, got {quote(value)}"
        )
    return float(value)
