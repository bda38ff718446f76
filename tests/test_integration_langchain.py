"""`AgentCoreChatMessageHistory` (agent_core.integrations.langchain): LangChain's chat
history over an agent-core thread, on both stores, with the real langchain-core and
LangGraph and their own fake chat models.

langchain-tests ships no standard tests for chat message histories (only for chat models,
embeddings, tools, retrievers, vector stores, caches, key-value stores, indexers and
sandboxes), so `TestContract` checks ``BaseChatMessageHistory``'s documented contract.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.chat_history import BaseChatMessageHistory, InMemoryChatMessageHistory
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    ToolMessage,
    get_buffer_string,
)
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.history import RunnableWithMessageHistory
from langgraph.graph import START, MessagesState, StateGraph

from agent_core import (
    CacheClosed,
    ConfigurationError,
    ConversationCache,
    InvalidArgument,
    InvalidBatch,
    InvalidMessage,
    InvalidThreadId,
    VersionConflict,
)
from agent_core.integrations.langchain import (
    METADATA_FIELD,
    AgentCoreChatMessageHistory,
    BlockingCallInEventLoop,
    from_chat_completions,
    to_chat_completions,
)

from .conftest import CacheFactory
from .test_extras import _error_of

# RunnableWithMessageHistory and BaseChatMessageHistory are deprecated in langchain-core
# 1.x (in favour of LangGraph persistence, tested below too); both still ship and work.
pytestmark = pytest.mark.filterwarnings("ignore::langchain_core._api.LangChainDeprecationWarning")

THREAD = "user-1"


def every_kind() -> list[BaseMessage]:
    """One of each message class, with ids, names, metadata, tool calls and content lists."""
    return [
        SystemMessage("Be brief.", id="sys-1"),
        SystemMessage("Answer in French.", additional_kwargs={"__openai_role__": "developer"}),
        HumanMessage("What's the weather in Paris?", name="alice", id="h-1"),
        HumanMessage(
            content=[
                "plain text part",
                {"type": "text", "text": "and a text block"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ]
        ),
        AIMessage(
            "",
            tool_calls=[
                {"name": "weather", "args": {"city": "Paris", "days": [1, 2]}, "id": "call-1"},
                {"name": "time", "args": {}, "id": "call-2"},
            ],
            id="run-1",
            response_metadata={"model_name": "fake-1", "finish_reason": "tool_calls"},
            usage_metadata={"input_tokens": 12, "output_tokens": 7, "total_tokens": 19},
        ),
        ToolMessage("18 °C, sunny", tool_call_id="call-1", name="weather", artifact={"c": 18}),
        ToolMessage("timeout", tool_call_id="call-2", status="error"),
        AIMessage(
            "Sunny, 18 °C.",
            invalid_tool_calls=[
                {
                    "name": "map",
                    "args": "{not json",
                    "id": "call-3",
                    "error": "bad JSON",
                    "type": "invalid_tool_call",
                }
            ],
        ),
        AIMessage(content=[{"type": "text", "text": "Block"}, {"type": "reasoning", "x": 1}]),
        AIMessageChunk(content="streamed", id="run-2"),
        ChatMessage(content="a chat message", role="user"),
        FunctionMessage(content="42", name="legacy_function"),
    ]


async def in_thread(call: Callable[[], Any]) -> Any:
    """``call()`` in a worker thread, as sync code outside the cache's loop runs."""
    return await asyncio.to_thread(call)


# -- BaseChatMessageHistory's contract -----------------------------------------------------


class TestContract:
    """What ``BaseChatMessageHistory`` documents: ``messages`` / ``aget_messages`` in the
    order added, ``add_messages`` in bulk and the one-message helpers, ``clear``, the async
    twins equal to the sync ones, ``str`` as the buffer string; on both stores."""

    async def test_a_new_thread_has_no_messages(self, cache: ConversationCache) -> None:
        history = AgentCoreChatMessageHistory(THREAD, cache)
        assert isinstance(history, BaseChatMessageHistory)
        assert await history.aget_messages() == []
        assert await in_thread(lambda: history.messages) == []

    async def test_sync_and_async_methods_read_and_write_the_same_thread(
        self, cache: ConversationCache
    ) -> None:
        history = AgentCoreChatMessageHistory(THREAD, cache)
        first = [HumanMessage("one"), AIMessage("two")]
        await in_thread(lambda: history.add_messages(first))
        await history.aadd_messages([HumanMessage("three")])
        await in_thread(lambda: history.add_message(AIMessage("four")))
        await in_thread(lambda: history.add_user_message("five"))
        await in_thread(lambda: history.add_ai_message("six"))
        await history.aadd_messages([])  # nothing to write
        expected = [
            HumanMessage("one"),
            AIMessage("two"),
            HumanMessage("three"),
            AIMessage("four"),
            HumanMessage("five"),
            AIMessage("six"),
        ]
        assert await history.aget_messages() == expected
        assert await in_thread(lambda: history.messages) == expected
        assert await in_thread(lambda: str(history)) == get_buffer_string(expected)
        assert (await cache.get(THREAD)).version == 6

    async def test_clear_and_aclear_remove_every_message(self, cache: ConversationCache) -> None:
        history = AgentCoreChatMessageHistory(THREAD, cache)
        other = history.for_thread("user-2")
        await history.aadd_messages([HumanMessage("a"), AIMessage("b")])
        await other.aadd_messages([HumanMessage("kept")])
        await in_thread(history.clear)
        assert await history.aget_messages() == []
        assert await other.aget_messages() == [HumanMessage("kept")]
        await history.aadd_messages([HumanMessage("again")])
        assert await history.aget_messages() == [HumanMessage("again")]
        await other.aclear()
        await history.aclear()
        assert await history.aget_messages() == await other.aget_messages() == []
        # Versions never go back: a cleared thread's next append is a new version.
        assert (await cache.get(THREAD)).version == 5

    async def test_it_behaves_like_the_in_memory_history(self, cache: ConversationCache) -> None:
        """The same calls on LangChain's own InMemoryChatMessageHistory give the same lists."""
        ours = AgentCoreChatMessageHistory(THREAD, cache)
        reference = InMemoryChatMessageHistory()
        steps: list[Callable[[BaseChatMessageHistory], Any]] = [
            lambda h: h.add_messages(every_kind()[:4]),
            lambda h: h.add_user_message("hello"),
            lambda h: h.add_messages(every_kind()[4:]),
            lambda h: h.clear(),
            lambda h: h.add_ai_message("after clear"),
        ]
        for step in steps:
            await in_thread(lambda step=step: step(ours))  # type: ignore[misc]
            step(reference)
            assert await ours.aget_messages() == reference.messages


# -- round trips -----------------------------------------------------------------------------


async def test_every_message_class_round_trips_equal(
    make_cache: CacheFactory, store_url: str
) -> None:
    """Each message reads back ``==`` to the one added: through the cache that wrote it,
    through another instance's L2, and from the store alone."""
    messages = every_kind()
    async with make_cache() as writer, make_cache(consistency="strong") as reader:
        history = AgentCoreChatMessageHistory(THREAD, writer)
        await history.aadd_messages(messages)
        assert await history.aget_messages() == messages
        assert await in_thread(lambda: history.messages) == messages
        assert await AgentCoreChatMessageHistory(THREAD, reader).aget_messages() == messages
    async with ConversationCache.from_urls(store=store_url, namespace=writer.namespace) as cold:
        assert await AgentCoreChatMessageHistory(THREAD, cold).aget_messages() == messages


async def test_the_stored_shape_is_chat_completions(cache: ConversationCache) -> None:
    """Other readers (the HTTP API, windows, BaseAgent) see Chat Completions messages; the
    ``"langchain"`` field holds only what that shape loses."""
    history = AgentCoreChatMessageHistory(THREAD, cache)
    await history.aadd_messages([*every_kind()[:6], HumanMessage("plain")])
    stored = (await cache.get(THREAD)).to_list()
    assert stored[0] == {"role": "system", "content": "Be brief.", METADATA_FIELD: {"id": "sys-1"}}
    assert stored[1] == {"role": "developer", "content": "Answer in French."}
    assert stored[2] == {
        "role": "user",
        "content": "What's the weather in Paris?",
        "name": "alice",
        METADATA_FIELD: {"id": "h-1"},
    }
    assert stored[3]["content"][0] == {"type": "text", "text": "plain text part"}
    assert stored[4]["role"] == "assistant"
    assert stored[4]["tool_calls"] == [
        {
            "id": "call-1",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city":"Paris","days":[1,2]}'},
        },
        {"id": "call-2", "type": "function", "function": {"name": "time", "arguments": "{}"}},
    ]
    assert stored[4][METADATA_FIELD]["usage_metadata"]["total_tokens"] == 19
    assert stored[5]["role"] == "tool"
    assert stored[5]["tool_call_id"] == "call-1"
    assert stored[-1] == {"role": "user", "content": "plain"}
    # And the token window cuts it like any thread (a tool call kept with its results).
    window = await cache.window(THREAD, max_tokens=10_000, model="gpt-4o")
    assert len(window.messages) == len(stored)


async def test_without_metadata_the_shape_is_bare_and_what_is_lost_is_stated(
    cache: ConversationCache,
) -> None:
    history = AgentCoreChatMessageHistory(THREAD, cache, keep_metadata=False)
    await history.aadd_messages(every_kind())
    stored = (await cache.get(THREAD)).to_list()
    assert all(METADATA_FIELD not in item for item in stored)
    back = await history.aget_messages()
    # Kept: class (by role), content, names, tool calls and their ids, the developer role.
    assert back[1] == every_kind()[1]
    assert back[4].tool_calls == every_kind()[4].tool_calls  # type: ignore[attr-defined]
    assert isinstance(back[5], ToolMessage)
    assert back[5].tool_call_id == "call-1"
    # Lost: ids, metadata, a tool message's name/artifact/status, invalid tool calls, chunk
    # and ChatMessage classes, strings in content lists (stored as text parts).
    assert back[0] == SystemMessage("Be brief.")
    assert back[4].usage_metadata is None  # type: ignore[attr-defined]
    assert back[5] == ToolMessage("18 °C, sunny", tool_call_id="call-1")
    assert back[7] == AIMessage("Sunny, 18 °C.")
    assert type(back[9]) is AIMessage
    assert type(back[10]) is HumanMessage
    assert back[3].content[0] == {"type": "text", "text": "plain text part"}


async def test_threads_written_by_others_read_as_langchain_messages(
    cache: ConversationCache,
) -> None:
    """A thread appended as Chat Completions dicts (BaseAgent, the HTTP API) reads back with
    LangChain's classes; fields LangChain has no place for go to ``additional_kwargs``."""
    await cache.append(
        THREAD,
        [
            {"role": "system", "content": [{"type": "text", "text": "rules"}]},
            {"role": "user", "content": "hi", "name": "bob"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                    {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{x"}},
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "ok"},
            {"role": "assistant", "content": None, "refusal": "no", "x-trace": "abc"},
        ],
    )
    back = await AgentCoreChatMessageHistory(THREAD, cache).aget_messages()
    assert back[0] == SystemMessage(content=[{"type": "text", "text": "rules"}])
    assert back[1] == HumanMessage("hi", name="bob")
    assert back[2] == AIMessage(
        "",
        tool_calls=[{"name": "f", "args": {}, "id": "c1"}],
        invalid_tool_calls=[
            {"name": "g", "args": "{x", "id": "c2", "error": None, "type": "invalid_tool_call"}
        ],
    )
    assert back[3] == ToolMessage("ok", tool_call_id="c1")
    assert back[4] == AIMessage("", additional_kwargs={"refusal": "no", "x-trace": "abc"})


async def test_a_responses_api_item_is_refused_on_read_with_its_place(
    cache: ConversationCache,
) -> None:
    await cache.append(THREAD, [{"role": "user", "content": "hi"}, {"type": "reasoning"}])
    with pytest.raises(InvalidMessage, match=r"message 1: a Responses API item \(type 'reasoning'"):
        await AgentCoreChatMessageHistory(THREAD, cache).aget_messages()


def test_the_conversion_functions_are_inverse() -> None:
    for message in every_kind():
        assert from_chat_completions(to_chat_completions(message)) == message


# -- refused input -----------------------------------------------------------------------


async def test_bad_arguments_are_typed_errors(cache: ConversationCache) -> None:
    with pytest.raises(ConfigurationError, match="cache must be a ConversationCache"):
        AgentCoreChatMessageHistory(THREAD, "sqlite:///x.db")  # type: ignore[arg-type]
    with pytest.raises(InvalidThreadId):
        AgentCoreChatMessageHistory("no spaces allowed", cache)
    with pytest.raises(InvalidArgument, match="sync_timeout must be a positive number"):
        AgentCoreChatMessageHistory(THREAD, cache, sync_timeout=0)
    with pytest.raises(InvalidArgument, match="keep_metadata must be True or False"):
        AgentCoreChatMessageHistory(THREAD, cache, keep_metadata="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="loop must be an asyncio event loop"):
        AgentCoreChatMessageHistory(THREAD, cache, loop=object())  # type: ignore[arg-type]
    with pytest.raises(InvalidThreadId):
        AgentCoreChatMessageHistory.from_urls("bad id!", store="sqlite:///never-made.db")
    assert "agent-core-langchain" not in [t.name for t in threading.enumerate()]


@pytest.mark.parametrize(
    ("batch", "error"),
    [
        ([HumanMessage("ok"), {"role": "user", "content": "a dict"}], r"messages\[1\]: expected"),
        ([HumanMessage("ok"), RemoveMessage(id="m1")], r"messages\[1\]: a RemoveMessage has no"),
        (
            [AIMessage("", tool_calls=[{"name": "f", "args": {}, "id": None}])],
            r"messages\[0\]: tool_calls\[0\] needs a string 'id'",
        ),
        ([HumanMessage(content=[])], r"messages\[0\]: a user message's content list is empty"),
        ([ChatMessage(content="x", role="critic")], r"messages\[0\]: unknown role 'critic'"),
        ([ToolMessage("x", tool_call_id="c", artifact=object())], r"messages\[0\]: "),
    ],
)
async def test_a_refused_batch_writes_nothing(
    cache: ConversationCache, batch: Any, error: str
) -> None:
    history = AgentCoreChatMessageHistory(THREAD, cache)
    await history.aadd_messages([HumanMessage("before")])
    with pytest.raises(InvalidMessage, match=error):
        await history.aadd_messages(batch)
    with pytest.raises(InvalidMessage, match=error):
        await in_thread(lambda: history.add_messages(batch))
    assert await history.aget_messages() == [HumanMessage("before")]
    assert (await cache.get(THREAD)).version == 1


async def test_a_batch_that_is_not_a_list_or_too_long_is_refused(cache: ConversationCache) -> None:
    history = AgentCoreChatMessageHistory(THREAD, cache)
    with pytest.raises(InvalidBatch, match="messages must be a list of LangChain messages"):
        await history.aadd_messages(HumanMessage("not in a list"))  # type: ignore[arg-type]
    with pytest.raises(InvalidBatch):
        await history.aadd_messages([HumanMessage(str(i)) for i in range(1001)])
    assert (await cache.get(THREAD)).version == 0


# -- two instances, concurrency, VersionConflict ----------------------------------------------


async def test_concurrent_writers_on_two_cache_instances_lose_nothing(
    make_cache: CacheFactory,
) -> None:
    """Two caches (two processes' worth: own L1, shared store and Redis), four writers each,
    sync and async: every batch lands whole and contiguous, and both read the same list."""
    async with make_cache(consistency="strong") as one, make_cache(consistency="strong") as two:
        histories = [
            AgentCoreChatMessageHistory(THREAD, one),
            AgentCoreChatMessageHistory(THREAD, two),
        ]

        def batch(writer: int, turn: int) -> list[BaseMessage]:
            return [HumanMessage(f"w{writer} t{turn} q"), AIMessage(f"w{writer} t{turn} a")]

        async def write_async(writer: int) -> None:
            for turn in range(10):
                await histories[writer % 2].aadd_messages(batch(writer, turn))

        def write_sync(writer: int) -> None:
            for turn in range(10):
                histories[writer % 2].add_messages(batch(writer, turn))

        await asyncio.gather(
            *(write_async(writer) for writer in range(4)),
            *(asyncio.to_thread(write_sync, writer) for writer in range(4, 8)),
        )
        seen = [await history.aget_messages() for history in histories]
        assert seen[0] == seen[1]
        texts = [str(message.content) for message in seen[0]]
        assert len(texts) == 8 * 10 * 2
        for question, answer in zip(texts[::2], texts[1::2], strict=True):
            assert answer == question[:-1] + "a"  # each batch whole, nothing in between
        for writer in range(8):
            mine = [text for text in texts[::2] if text.startswith(f"w{writer} ")]
            assert mine == [f"w{writer} t{turn} q" for turn in range(10)]


async def test_compare_and_append_raises_version_conflict_and_writes_nothing(
    make_cache: CacheFactory,
) -> None:
    """Plain appends never conflict (no read-modify-write). With ``expected_version`` from
    `aget_versioned`, a write by another instance in between is a `VersionConflict`, and
    the batch is not written; read again and retry."""
    async with make_cache(consistency="strong") as one, make_cache(consistency="strong") as two:
        mine = AgentCoreChatMessageHistory(THREAD, one)
        theirs = AgentCoreChatMessageHistory(THREAD, two)
        await mine.aadd_messages([HumanMessage("q1")])
        messages, version = await mine.aget_versioned()
        assert (messages, version) == ([HumanMessage("q1")], 1)
        await theirs.aadd_messages([AIMessage("their answer")])
        with pytest.raises(VersionConflict):
            await mine.aadd_messages([AIMessage("my answer")], expected_version=version)
        with pytest.raises(VersionConflict):
            await in_thread(
                lambda: mine.add_messages([AIMessage("my answer")], expected_version=version)
            )
        assert await theirs.aget_messages() == [HumanMessage("q1"), AIMessage("their answer")]
        messages, version = await in_thread(mine.get_versioned)
        await mine.aadd_messages([HumanMessage("q2")], expected_version=version)
        assert (await theirs.aget_versioned())[1] == version + 1


# -- the sync bridge ------------------------------------------------------------------------


async def test_a_sync_call_on_the_caches_own_loop_is_refused(cache: ConversationCache) -> None:
    history = AgentCoreChatMessageHistory(THREAD, cache)
    with pytest.raises(BlockingCallInEventLoop, match="await aget_messages"):
        _ = history.messages
    with pytest.raises(BlockingCallInEventLoop):
        history.add_messages([HumanMessage("never")])
    with pytest.raises(BlockingCallInEventLoop):
        history.clear()
    assert (await cache.get(THREAD)).version == 0


async def test_sync_calls_work_from_a_thread_running_another_event_loop(
    cache: ConversationCache,
) -> None:
    """A thread whose own loop runs (an async framework, or sync LangChain code called from
    a coroutine there) calls the sync methods: they run on the cache's loop."""
    history = AgentCoreChatMessageHistory(THREAD, cache)

    async def other_loop() -> list[BaseMessage]:
        assert asyncio.get_running_loop() is not cache_loop
        history.add_messages([HumanMessage("from another loop")])
        # The async methods work there too: they are submitted to the cache's loop.
        await history.aadd_messages([AIMessage("async, from another loop")])
        return history.messages

    cache_loop = asyncio.get_running_loop()
    seen = await in_thread(lambda: asyncio.run(other_loop()))
    assert seen == [HumanMessage("from another loop"), AIMessage("async, from another loop")]
    assert await history.aget_messages() == seen


async def test_a_sync_call_waiting_on_a_blocked_loop_times_out(cache: ConversationCache) -> None:
    """If the cache's loop waits for the calling thread (a deadlock), ``sync_timeout`` ends
    the wait with TimeoutError instead of hanging."""
    history = AgentCoreChatMessageHistory(THREAD, cache, sync_timeout=0.2)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            history.add_messages([HumanMessage("stuck")])
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=call)
    worker.start()
    worker.join()  # blocks the cache's loop on purpose, until the worker gives up
    assert len(errors) == 1
    assert isinstance(errors[0], TimeoutError)
    assert "sync_timeout" in str(errors[0])
    assert await history.aget_messages() == []  # the cancelled call wrote nothing


def test_a_history_made_outside_any_loop_needs_to_know_the_loop(tmp_path: Path) -> None:
    cache = ConversationCache.from_urls(store=f"sqlite:///{tmp_path / 'a.db'}")
    history = AgentCoreChatMessageHistory(THREAD, cache)
    with pytest.raises(ConfigurationError, match="does not know the event loop"):
        _ = history.messages

    async def use() -> list[BaseMessage]:
        async with cache:
            await history.aadd_messages([HumanMessage("hi")])  # this loop is now the one
            return await history.aget_messages()

    assert asyncio.run(use()) == [HumanMessage("hi")]
    with pytest.raises(CacheClosed, match="not running"):
        _ = history.messages  # that loop has ended


def test_from_urls_serves_plain_sync_code(tmp_path: Path) -> None:
    """No event loop anywhere in the caller: from_urls opens its own, for_thread shares it,
    and close stops it."""
    store = f"sqlite:///{tmp_path / 'agent-core.db'}"
    with AgentCoreChatMessageHistory.from_urls(THREAD, store=store) as history:
        history.add_messages([HumanMessage("hi"), AIMessage("hello")])
        other = history.for_thread("user-2")
        other.add_user_message("elsewhere")
        assert history.messages == [HumanMessage("hi"), AIMessage("hello")]
        assert other.messages == [HumanMessage("elsewhere")]
        threads = [t.name for t in threading.enumerate()]
        assert "agent-core-langchain" in threads
        assert "owned=True" in repr(history)
    assert "agent-core-langchain" not in [t.name for t in threading.enumerate()]
    with pytest.raises(CacheClosed):
        _ = other.messages
    history.close()  # twice is fine
    with AgentCoreChatMessageHistory.from_urls(THREAD, store=store) as again:
        assert again.messages == [HumanMessage("hi"), AIMessage("hello")]


async def test_from_urls_async_methods_work_from_the_callers_loop(
    store_url: str, namespace: str
) -> None:
    history = await asyncio.to_thread(
        AgentCoreChatMessageHistory.from_urls, THREAD, store=store_url, namespace=namespace
    )
    try:
        await history.aadd_messages([HumanMessage("async")])
        history_messages = await history.aget_messages()
        assert history_messages == [HumanMessage("async")]
        assert await in_thread(lambda: history.messages) == history_messages
    finally:
        await history.aclose()


def test_from_urls_refuses_an_unknown_option() -> None:
    with pytest.raises(ConfigurationError):
        AgentCoreChatMessageHistory.from_urls(THREAD, store="sqlite:///x.db", no_such_option=1)
    assert "agent-core-langchain" not in [t.name for t in threading.enumerate()]


# -- LangChain: RunnableWithMessageHistory ---------------------------------------------------


class SeenByModel(BaseCallbackHandler):
    """Records the messages each chat model call was given."""

    def __init__(self) -> None:
        self.calls: list[list[BaseMessage]] = []

    def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[BaseMessage]], **kwargs: Any
    ) -> None:
        self.calls.append(messages[0])


def fake_model(*replies: str) -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=iter([AIMessage(reply) for reply in replies]))


async def test_runnable_with_message_history_async(make_cache: CacheFactory) -> None:
    """``ainvoke`` turns on two cache instances: each turn sees the whole thread, including
    the turn the other instance stored."""
    async with make_cache(consistency="strong") as one, make_cache(consistency="strong") as two:
        seen = SeenByModel()
        chains = [
            RunnableWithMessageHistory(
                model, lambda session_id, c=cache: AgentCoreChatMessageHistory(session_id, c)
            )
            for model, cache in [
                (fake_model("first answer", "third answer"), one),
                (fake_model("second answer"), two),
            ]
        ]
        config: Any = {"configurable": {"session_id": THREAD}, "callbacks": [seen]}
        first = await chains[0].ainvoke("question 1", config=config)
        second = await chains[1].ainvoke("question 2", config=config)
        third = await chains[0].ainvoke("question 3", config=config)
        assert [len(call) for call in seen.calls] == [1, 3, 5]
        expected = [
            HumanMessage("question 1"),
            first,
            HumanMessage("question 2"),
            second,
            HumanMessage("question 3"),
            third,
        ]
        assert seen.calls[2] == expected[:5]
        assert await AgentCoreChatMessageHistory(THREAD, one).aget_messages() == expected
        assert third.content == "third answer"


def test_runnable_with_message_history_sync_and_streamed(tmp_path: Path) -> None:
    """Sync ``invoke`` and ``stream`` in plain sync code, one thread per session_id through
    `for_thread`; a streamed reply is stored as the AIMessageChunk LangChain aggregates."""
    store = f"sqlite:///{tmp_path / 'agent-core.db'}"
    with AgentCoreChatMessageHistory.from_urls("unused", store=store) as histories:
        chain = RunnableWithMessageHistory(
            fake_model("one", "two words", "other session"), histories.for_thread
        )
        alice: Any = {"configurable": {"session_id": "alice"}}
        bob: Any = {"configurable": {"session_id": "bob"}}
        first = chain.invoke([HumanMessage("hi")], config=alice)
        chunks = list(chain.stream("again", config=alice))
        chain.invoke("hello", config=bob)
        streamed = chunks[0]
        for chunk in chunks[1:]:
            streamed += chunk
        assert histories.for_thread("alice").messages == [
            HumanMessage("hi"),
            first,
            HumanMessage("again"),
            streamed,
        ]
        assert isinstance(streamed, AIMessageChunk)
        assert streamed.content == "two words"
        assert [m.content for m in histories.for_thread("bob").messages] == [
            "hello",
            "other session",
        ]


# -- LangGraph ------------------------------------------------------------------------------


def chat_graph(histories: AgentCoreChatMessageHistory, model: GenericFakeChatModel) -> Any:
    """The README's LangGraph pattern: the node loads the thread's history from agent-core,
    calls the model on it plus the new messages, and appends the new messages and the reply
    in one write. The graph keeps no checkpoint: agent-core holds the conversation."""

    async def chat(state: MessagesState, config: RunnableConfig) -> dict[str, list[BaseMessage]]:
        history = histories.for_thread(config["configurable"]["thread_id"])
        past = await history.aget_messages()
        reply = await model.ainvoke([*past, *state["messages"]])
        await history.aadd_messages([*state["messages"], reply])
        return {"messages": [reply]}

    builder = StateGraph(MessagesState)
    builder.add_node("chat", chat)
    builder.add_edge(START, "chat")
    return builder.compile()


async def test_a_langgraph_app_keeps_its_history_in_agent_core(
    make_cache: CacheFactory,
) -> None:
    """Two graph instances over two cache instances share a thread turn after turn; the
    graph's state holds only the turn, agent-core the conversation (message ids that
    LangGraph's reducer assigned included)."""
    async with make_cache(consistency="strong") as one, make_cache(consistency="strong") as two:
        seen = SeenByModel()
        graphs = [
            chat_graph(AgentCoreChatMessageHistory("unused", one), fake_model("a1", "a3")),
            chat_graph(AgentCoreChatMessageHistory("unused", two), fake_model("a2")),
        ]
        config: Any = {"configurable": {"thread_id": THREAD}, "callbacks": [seen]}
        states = []
        for turn, graph in enumerate([graphs[0], graphs[1], graphs[0]], start=1):
            states.append(await graph.ainvoke({"messages": [("user", f"q{turn}")]}, config))
        assert [len(call) for call in seen.calls] == [1, 3, 5]
        stored = await AgentCoreChatMessageHistory(THREAD, two).aget_messages()
        assert [m.content for m in stored] == ["q1", "a1", "q2", "a2", "q3", "a3"]
        # The state of each run is that turn's question and reply, ids and all.
        assert stored[4:] == states[2]["messages"]
        assert all(message.id for message in stored)


# -- the extra -------------------------------------------------------------------------------


@pytest.mark.integration
def test_without_langchain_core_the_import_names_the_extra() -> None:
    raised = _error_of("import agent_core.integrations.langchain", blocked=("langchain_core",))
    assert raised == (
        "agent_core.errors.ConfigurationError",
        "AgentCoreChatMessageHistory needs langchain-core: pip install 'agent-core[langchain]'",
    )
