"""BaseAgent: turns against a real local Chat Completions server, on real stores and Redis.

The server (tests/_chat_server.py) records each request, so the tests check what the
model was sent: the prompt's order and content, and its size recounted with the
TokenCounter. Memory is a real ConversationCache over SQLite or PostgreSQL (and Redis
where the tiers matter).
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from agent_core import (
    AgentLimiter,
    AgentMemory,
    AgentReply,
    BaseAgent,
    ConfigurationError,
    ContextFileError,
    Conversation,
    ConversationCache,
    EchoModel,
    InvalidMessage,
    InvalidThreadId,
    Message,
    ModelError,
    OpenAIChatModel,
    RateLimited,
    RateLimiter,
    RateLimits,
    ReadResult,
    RequestTooLarge,
    TokenBudgetExceeded,
    TokenCounter,
    TurnNotSaved,
    Usage,
    Window,
)

from ._chat_server import ChatServer, Reply, Stream, chunk, completion_body, usage_chunk
from ._poll import eventually

KEY = "sk-test-local-0123456789"
COUNTER = TokenCounter.for_model("gpt-4o-mini")
THREAD = "thread-1"


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with ChatServer() as running:
        yield running


@pytest.fixture
async def model(server: ChatServer) -> AsyncIterator[OpenAIChatModel]:
    async with OpenAIChatModel(
        "gpt-4o-mini", base_url=server.url, api_key=KEY, backoff=0.01, max_retries=2
    ) as made:
        yield made


@pytest.fixture
async def memory(sqlite_url: str, namespace: str) -> AsyncIterator[ConversationCache]:
    async with ConversationCache.from_urls(store=sqlite_url, namespace=namespace) as cache:
        yield cache


def answer(text: str) -> Reply:
    return Reply(body=completion_body(text, usage=(21, 4)))


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text, "refusal": None}


def sent(server: ChatServer, index: int = -1) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = server.requests[index].json()["messages"]
    return messages


def recount(messages: list[dict[str, Any]]) -> int:
    return COUNTER.count_messages(messages)


# The prompt


async def test_prompt_is_system_files_history_user_in_order(
    server: ChatServer, model: OpenAIChatModel, memory: ConversationCache, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.md"
    notes.write_text("Paris is the capital of France.", encoding="utf-8")
    code = tmp_path / "code.py"
    code.write_text("ANSWER = 42\n", encoding="utf-8")
    history = [
        {"role": "system", "content": "Thread rule: answer in English."},
        {"role": "user", "content": "hello"},
        assistant("hi there"),
    ]
    await memory.append(THREAD, history)
    agent = BaseAgent(
        model,
        memory,
        system_prompt="You are terse.",
        context_files=[notes, str(code)],
        max_context_tokens=4000,
        reserve_output_tokens=100,
    )
    server.script(answer("Paris."))
    reply = await agent.run(THREAD, "What is the capital of France?")

    user = {"role": "user", "content": "What is the capital of France?"}
    assert sent(server) == [
        {"role": "system", "content": "You are terse."},
        {
            "role": "system",
            "content": f'<file path="{notes.resolve()}">\nParis is the capital of France.\n</file>',
        },
        {"role": "system", "content": f'<file path="{code.resolve()}">\nANSWER = 42\n\n</file>'},
        *history,
        user,
    ]
    body = server.requests[-1].json()
    assert (body["model"], body["max_tokens"]) == ("gpt-4o-mini", 100)
    assert reply.text == "Paris."
    assert reply.message == assistant("Paris.")
    assert reply.usage == Usage(21, 4, 25)
    assert reply.finish_reason == "stop"
    assert reply.version == 5
    assert reply.prompt_tokens == recount(sent(server))
    assert (reply.history_messages, reply.history_omitted, reply.conflicted) == (3, 0, False)
    assert set(reply.timings) == {"context", "build", "history", "model", "persist"}
    assert all(seconds >= 0 for seconds in reply.timings.values())
    # Only the turn is stored: neither the system prompt nor the files.
    stored = await memory.get(THREAD)
    assert stored.version == 5
    assert stored.to_list() == [*history, user, assistant("Paris.")]


async def test_a_user_message_dict_is_sent_and_stored_as_it_is(
    server: ChatServer, model: OpenAIChatModel, memory: ConversationCache
) -> None:
    user = {"role": "user", "content": [{"type": "text", "text": "hi"}], "name": "ann"}
    server.script(answer("hello ann"))
    reply = await BaseAgent(model, memory).run(THREAD, user)
    assert sent(server) == [user]
    assert (await memory.get(THREAD)).to_list() == [user, assistant("hello ann")]
    assert reply.prompt_tokens == recount([user])


async def test_the_budget_holds_and_the_newest_history_fills_it(
    server: ChatServer, model: OpenAIChatModel, memory: ConversationCache
) -> None:
    history = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " + "word " * i}
        for i in range(120)
    ]
    await memory.append(THREAD, history)
    agent = BaseAgent(
        model, memory, system_prompt="Be brief.", max_context_tokens=1500, reserve_output_tokens=300
    )
    server.script(answer("ok"))
    reply = await agent.run(THREAD, "and now?")

    messages = sent(server)
    assert recount(messages) == reply.prompt_tokens <= 1500 - 300
    kept = messages[1:-1]
    assert kept == history[-len(kept) :]
    assert reply.history_omitted == len(history) - len(kept) > 0
    # As much history as fits: the next older message would not have.
    older = history[-len(kept) - 1]
    assert reply.prompt_tokens + COUNTER.count_message(older) > 1200


async def test_fixed_parts_over_the_budget_raise_naming_the_file(
    server: ChatServer, model: OpenAIChatModel, memory: ConversationCache, tmp_path: Path
) -> None:
    big = tmp_path / "big.txt"
    big.write_text("lorem ipsum " * 500, encoding="utf-8")
    agent = BaseAgent(
        model, memory, context_files=[big], max_context_tokens=600, reserve_output_tokens=100
    )
    with pytest.raises(TokenBudgetExceeded, match=re.escape(str(big))) as caught:
        await agent.run(THREAD, "summarize")
    assert caught.value.max_tokens == 500
    assert caught.value.needed > 1000
    assert "reserve_output_tokens 100" in str(caught.value)
    assert server.requests == []
    assert (await memory.get(THREAD)).version == 0


async def test_a_missing_context_file_raises_and_sends_nothing(
    server: ChatServer, model: OpenAIChatModel, memory: ConversationCache, tmp_path: Path
) -> None:
    agent = BaseAgent(model, memory, context_files=[tmp_path / "gone.md"])
    with pytest.raises(ContextFileError, match=r"gone\.md"):
        await agent.run(THREAD, "hi")
    assert server.requests == []


async def test_history_too_big_for_the_budget_falls_back_to_pinned_messages(
    server: ChatServer, model: OpenAIChatModel, memory: ConversationCache
) -> None:
    rule = {"role": "system", "content": "Thread rule."}
    await memory.append(THREAD, [rule, {"role": "user", "content": "x"}])
    await memory.append(THREAD, [assistant("long " * 2000)])
    agent = BaseAgent(model, memory, max_context_tokens=800, reserve_output_tokens=100)
    server.script(answer("ok"))
    reply = await agent.run(THREAD, "next")
    assert sent(server) == [rule, {"role": "user", "content": "next"}]
    assert (reply.history_messages, reply.history_omitted) == (1, 2)
    assert reply.prompt_tokens == recount(sent(server))
    assert reply.version == 5


# Memory


async def test_memory_persists_across_instances(
    server: ChatServer, model: OpenAIChatModel, store_url: str, namespace: str
) -> None:
    server.script(answer("first answer"), answer("second answer"))
    async with ConversationCache.from_urls(store=store_url, namespace=namespace) as first:
        reply = await BaseAgent(model, first).run(THREAD, "first question")
        assert reply.version == 2
    async with ConversationCache.from_urls(store=store_url, namespace=namespace) as second:
        stored = await second.get(THREAD)
        assert stored.to_list() == [
            {"role": "user", "content": "first question"},
            assistant("first answer"),
        ]
        reply = await BaseAgent(model, second).run(THREAD, "second question")
        assert reply.version == 4
    assert sent(server) == [*stored.to_list(), {"role": "user", "content": "second question"}]


async def test_history_tier_is_reported(
    server: ChatServer,
    model: OpenAIChatModel,
    sqlite_url: str,
    redis_url: str,
    namespace: str,
) -> None:
    server.script(*(answer(f"answer {i}") for i in range(4)))
    async with ConversationCache.from_urls(
        store=sqlite_url, redis=redis_url, namespace=namespace
    ) as cache:
        agent = BaseAgent(model, cache)
        assert (await agent.run(THREAD, "one")).history_tier == "store"  # a new thread
        assert (await agent.run(THREAD, "two")).history_tier == "l1"
    async with ConversationCache.from_urls(
        store=sqlite_url, redis=redis_url, namespace=namespace
    ) as cold:
        reply = await BaseAgent(model, cold).run(THREAD, "three")
        assert (reply.history_tier, reply.history_messages) == ("l2", 4)
    async with ConversationCache.from_urls(store=sqlite_url, namespace=namespace) as no_redis:
        reply = await BaseAgent(model, no_redis).run(THREAD, "four")
        assert (reply.history_tier, reply.history_messages) == ("store", 6)


async def test_stateless_turns_read_and_write_nothing(
    server: ChatServer, model: OpenAIChatModel, memory: ConversationCache
) -> None:
    await memory.append(THREAD, [{"role": "user", "content": "remember me"}])
    server.script(answer("a"), answer("b"))
    agent = BaseAgent(model, memory, system_prompt="S", enable_conversation_memory=False)
    reply = await agent.run(THREAD, "hi")
    assert sent(server) == [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]
    assert (reply.version, reply.history_tier, reply.history_messages) == (None, "none", 0)
    assert reply.prompt_tokens == recount(sent(server))
    assert (await memory.get(THREAD)).version == 1
    # No memory at all.
    reply = await BaseAgent(model, enable_conversation_memory=False).run(THREAD, "again")
    assert (reply.text, reply.version) == ("b", None)
    assert sent(server) == [{"role": "user", "content": "again"}]


async def test_two_agents_on_one_thread_keep_both_turns(
    server: ChatServer, model: OpenAIChatModel, store_url: str, namespace: str
) -> None:
    # A's reply waits until B's whole turn has landed, so A's compare-and-append fails.
    b_done = threading.Event()
    server.script(Reply(body=completion_body("slow A"), until=b_done), answer("fast B"))
    async with (
        ConversationCache.from_urls(
            store=store_url, namespace=namespace, consistency="strong"
        ) as cache_a,
        ConversationCache.from_urls(
            store=store_url, namespace=namespace, consistency="strong"
        ) as cache_b,
    ):
        turn_a = asyncio.create_task(BaseAgent(model, cache_a).run(THREAD, "question A"))
        await eventually(lambda: server.requests)
        reply_b = await BaseAgent(model, cache_b).run(THREAD, "question B")
        b_done.set()
        reply_a = await turn_a
        # Each instance reads all four messages, the conflicted one included.
        assert (await cache_a.get(THREAD)).version == (await cache_b.get(THREAD)).version == 4
    assert (reply_b.version, reply_b.conflicted) == (2, False)
    assert (reply_a.version, reply_a.conflicted) == (4, True)
    async with ConversationCache.from_urls(store=store_url, namespace=namespace) as fresh:
        stored = await fresh.get(THREAD)
    assert stored.to_list() == [
        {"role": "user", "content": "question B"},
        assistant("fast B"),
        {"role": "user", "content": "question A"},
        assistant("slow A"),
    ]


# Failures


async def test_a_model_error_after_retries_stores_nothing(
    server: ChatServer, model: OpenAIChatModel, memory: ConversationCache
) -> None:
    failure = Reply(500, {"error": {"message": "boom", "type": "server_error"}})
    server.script(failure, failure, failure)
    with pytest.raises(ModelError, match="500") as caught:
        await BaseAgent(model, memory).run(THREAD, "hi")
    assert (caught.value.status, caught.value.attempts) == (500, 3)
    assert len(server.requests) == 3
    assert (await memory.get(THREAD)).version == 0


async def test_a_malformed_reply_raises_and_stores_nothing(
    server: ChatServer, model: OpenAIChatModel, memory: ConversationCache
) -> None:
    server.script(Reply(body=b'{"choices": [oops'))
    with pytest.raises(ModelError) as caught:
        await BaseAgent(model, memory).run(THREAD, "hi")
    assert caught.value.error_type == "invalid_response"
    assert (await memory.get(THREAD)).version == 0


async def test_a_reply_that_cannot_be_stored_is_handed_back(
    server: ChatServer, model: OpenAIChatModel, sqlite_url: str, namespace: str
) -> None:
    closed = threading.Event()  # the reply comes once the cache is closed
    server.script(Reply(body=completion_body("kept"), until=closed))
    cache = ConversationCache.from_urls(store=sqlite_url, namespace=namespace)
    await cache.open()
    turn = asyncio.create_task(BaseAgent(model, cache).run(THREAD, "hi"))
    await eventually(lambda: server.requests)
    await cache.close()
    closed.set()
    with pytest.raises(TurnNotSaved, match="could not be stored") as caught:
        await turn
    error = caught.value
    assert (error.reply.text, error.reply.version) == ("kept", None)
    assert error.messages == [{"role": "user", "content": "hi"}, assistant("kept")]
    async with ConversationCache.from_urls(store=sqlite_url, namespace=namespace) as reopened:
        assert (await reopened.get(THREAD)).version == 0
        for _ in range(2):  # the key makes the retry land once
            version = await reopened.append(
                THREAD, error.messages, idempotency_key=error.idempotency_key
            )
        assert version == 2
        assert (await reopened.get(THREAD)).to_list() == error.messages


# Streaming


async def test_streaming_yields_chunks_and_stores_the_whole_reply(
    server: ChatServer, model: OpenAIChatModel, memory: ConversationCache
) -> None:
    server.script(
        Stream(
            [
                chunk({"role": "assistant", "content": ""}),
                chunk({"content": "Hel"}),
                chunk({"content": "lo!"}),
                chunk({}, finish_reason="stop"),
                usage_chunk(9, 2),
            ]
        )
    )
    agent = BaseAgent(model, memory)
    chunks = []
    async with agent.stream(THREAD, "hi") as stream:
        assert stream.reply is None
        async for text in stream:
            chunks.append(text)
    assert chunks == ["Hel", "lo!"]
    assert server.requests[-1].json()["stream"] is True
    reply = stream.reply
    assert isinstance(reply, AgentReply)
    assert (reply.text, reply.version, reply.usage) == ("Hello!", 2, Usage(9, 2, 11))
    stored = (await memory.get(THREAD)).to_list()
    assert stored[0] == {"role": "user", "content": "hi"}
    assert (stored[1]["role"], stored[1]["content"]) == ("assistant", "Hello!")


async def test_a_stream_left_early_stores_nothing(
    server: ChatServer, model: OpenAIChatModel, memory: ConversationCache
) -> None:
    server.script(Stream([chunk({"content": "a"}), chunk({"content": "b"})], gap=0.05))
    async with BaseAgent(model, memory).stream(THREAD, "hi") as stream:
        async for _ in stream:
            break
    assert stream.reply is None
    assert (await memory.get(THREAD)).version == 0


# Rate limits


async def test_the_rate_limiter_admits_each_turn(
    server: ChatServer, model: OpenAIChatModel, memory: ConversationCache
) -> None:
    limiter = RateLimiter(RateLimits(requests_per_minute=1, tokens_per_minute=10_000, max_wait=0))
    agent = BaseAgent(
        model, memory, max_context_tokens=2000, reserve_output_tokens=500, rate_limits=limiter
    )
    server.script(answer("one"), answer("two"))
    reply = await agent.run(THREAD, "first")
    assert "rate_limit" in reply.timings
    with pytest.raises(RateLimited, match="gpt-4o-mini"):
        await agent.run(THREAD, "second")
    assert len(server.requests) == 1
    assert (await memory.get(THREAD)).version == 2
    assert limiter.stats().acquired == 1
    # Tokens counted: prompt plus the reserved output.
    tight = RateLimiter(RateLimits(tokens_per_minute=reply.prompt_tokens + 499))
    with pytest.raises(RequestTooLarge, match="can never fit"):
        await BaseAgent(
            model, memory, max_context_tokens=2000, reserve_output_tokens=500, rate_limits=tight
        ).run("other", "first")


# Protocols: a wrapper or substitute memory and limiter


class LoggingMemory:
    """A user's wrapper around a cache: records each call, delegates the work."""

    def __init__(self, cache: ConversationCache) -> None:
        self.cache = cache
        self.calls: list[str] = []
        self.max_message_bytes = cache.max_message_bytes

    async def read(self, thread_id: str) -> ReadResult[Conversation]:
        self.calls.append("read")
        return await self.cache.read(thread_id)

    async def read_window(
        self, thread_id: str, *, max_tokens: int, model: str
    ) -> ReadResult[Window]:
        self.calls.append("read_window")
        return await self.cache.read_window(thread_id, max_tokens=max_tokens, model=model)

    async def append(
        self,
        thread_id: str,
        messages: Sequence[dict[str, Any] | Message],
        *,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        self.calls.append("append")
        return await self.cache.append(
            thread_id,
            messages,
            expected_version=expected_version,
            idempotency_key=idempotency_key,
        )


class CountingLimiter:
    """A substitute limiter: admits everything, remembers what was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, int]] = []

    async def acquire(self, model: str, tokens: int) -> float:
        self.asked.append((model, tokens))
        return 0.0


async def test_a_wrapped_memory_and_a_substitute_limiter_run_turns(
    server: ChatServer, model: OpenAIChatModel, memory: ConversationCache
) -> None:
    wrapped, limiter = LoggingMemory(memory), CountingLimiter()
    assert isinstance(wrapped, AgentMemory)
    assert isinstance(limiter, AgentLimiter)
    agent = BaseAgent(model, wrapped, rate_limits=limiter, reserve_output_tokens=100)
    server.script(answer("one"), answer("two"))
    first = await agent.run(THREAD, "first")
    second = await agent.run(THREAD, "second")
    assert (first.history_tier, second.history_tier) == ("store", "l1")
    assert wrapped.calls == ["read_window", "append"] * 2
    assert limiter.asked == [
        ("gpt-4o-mini", first.prompt_tokens + 100),
        ("gpt-4o-mini", second.prompt_tokens + 100),
    ]
    assert (await memory.get(THREAD)).to_list()[-1]["content"] == "two"


async def test_memory_and_limiter_that_do_not_fit_are_refused(model: OpenAIChatModel) -> None:
    with pytest.raises(ConfigurationError, match="implement AgentMemory"):
        BaseAgent(model, object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="implement AgentLimiter"):
        BaseAgent(model, enable_conversation_memory=False, rate_limits=object())  # type: ignore[arg-type]


# EchoModel, validation


async def test_echo_model_runs_offline(memory: ConversationCache) -> None:
    agent = BaseAgent(EchoModel(), memory, token_model="gpt-4o")
    first = await agent.run(THREAD, "ping")
    second = await agent.run(THREAD, "pong")
    assert (first.text, second.text) == ("echo: ping", "echo: pong")
    # EchoModel bills with gpt-4o counts, as the agent counted the prompt.
    assert second.usage.prompt_tokens == second.prompt_tokens
    assert second.history_messages == 2


async def test_bad_arguments_raise_typed_errors(
    model: OpenAIChatModel, memory: ConversationCache
) -> None:
    agent = BaseAgent(model, memory)
    with pytest.raises(InvalidThreadId):
        await agent.run("no spaces allowed", "hi")
    for bad in ("", "   ", {"role": "user", "content": ""}, {"role": "user"}):
        with pytest.raises(InvalidMessage, match="empty"):
            await agent.run(THREAD, bad)
    with pytest.raises(InvalidMessage, match="role 'user'"):
        await agent.run(THREAD, {"role": "assistant", "content": "x"})
    with pytest.raises(InvalidMessage, match="str or a user message dict"):
        await agent.run(THREAD, 42)  # type: ignore[arg-type]
    with pytest.raises(InvalidThreadId):
        agent.stream("", "hi")
    bad_configs: list[dict[str, Any]] = [
        {"model": object()},
        {"memory": None},
        {"memory": "sqlite:///x.db"},
        {"max_context_tokens": 100, "reserve_output_tokens": 100},
        {"max_context_tokens": 0},
        {"reserve_output_tokens": True},
        {"context_files": "notes.md"},
        {"context_files": [""]},
        {"system_prompt": None},
        {"rate_limits": RateLimits()},
        {"token_model": ""},
    ]
    for config in bad_configs:
        arguments: dict[str, Any] = {"model": model, "memory": memory} | config
        with pytest.raises(ConfigurationError):
            BaseAgent(**arguments)
