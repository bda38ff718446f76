"""Compaction: `ConversationCache.compact` and `BaseAgent`'s `CompactionPolicy`.

The summarizer is `OpenAIChatModel` against the local Chat Completions server, so that
a summary can be held back (``Reply(until=...)``) while other writers go on.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from agent_core import (
    SUMMARY_NAME,
    BaseAgent,
    CompactionPolicy,
    ConfigurationError,
    ConversationCache,
    EchoModel,
    InvalidArgument,
    ModelError,
    OpenAIChatModel,
    TokenCounter,
    VersionConflict,
)

from ._chat_server import ChatServer, Reply, completion_body, error_body
from ._poll import eventually
from .conftest import CacheFactory

MODEL = "gpt-4o"
COUNTER = TokenCounter.for_model(MODEL)
SYSTEM = {"role": "system", "content": "You are a travel agent."}


def turns(count: int, start: int = 0) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for turn in range(start, start + count):
        messages.append({"role": "user", "content": f"question {turn} " + "word " * 40})
        if turn % 3 == 0:
            call = {
                "id": f"c{turn}",
                "type": "function",
                "function": {"name": "f", "arguments": "{}"},
            }
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            messages.append({"role": "tool", "tool_call_id": f"c{turn}", "content": "row " * 60})
        messages.append({"role": "assistant", "content": f"answer {turn} " + "text " * 40})
    return messages


def summaries(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [item for item in items if item.get("name") == SUMMARY_NAME]


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with ChatServer() as running:
        yield running


@pytest.fixture
async def summarizer(server: ChatServer) -> AsyncIterator[OpenAIChatModel]:
    async with OpenAIChatModel(
        "gpt-4o-mini", base_url=server.url, api_key="k", max_retries=0
    ) as model:
        yield model


def tokens_of(items: list[dict[str, Any]]) -> int:
    return COUNTER.count_messages(items) - COUNTER.reply_priming


async def test_compact_replaces_the_oldest_part_by_one_summary(
    cache: ConversationCache, server: ChatServer, summarizer: OpenAIChatModel
) -> None:
    thread = f"c-{uuid.uuid4().hex}"
    original = [SYSTEM, *turns(30)]
    await cache.append(thread, original)
    server.script(Reply(body=completion_body("They planned a trip to Lisbon.")))
    version = await cache.compact(
        thread, summarizer=summarizer, model=MODEL, keep_recent_tokens=1_000
    )
    after = (await cache.get(thread)).to_list()
    assert after[0] == SYSTEM
    [summary] = summaries(after)
    assert after[1] == summary
    assert summary["role"] == "system"
    assert summary["content"].endswith("They planned a trip to Lisbon.")
    recent = after[2:]
    assert recent == original[len(original) - len(recent) :]
    assert tokens_of(recent) <= 1_000
    # Never a tool result without its call.
    assert recent[0]["role"] != "tool"
    # The summarizer read the transcript of what was replaced, not the system prompt.
    request = server.requests[-1].json()
    transcript = request["messages"][1]["content"]
    assert "question 0 " in transcript
    assert "f({})" in transcript
    assert "travel agent" not in transcript
    assert version == (await cache.get(thread)).version
    # Windows keep the summary as they keep system messages.
    window = await cache.window(thread, max_tokens=400, model=MODEL)
    assert window.messages[1].to_dict() == summary

    # A second compaction summarizes the first summary with what followed it.
    await cache.append(thread, turns(20, start=30))
    server.script(Reply(body=completion_body("Lisbon, then Porto.")))
    await cache.compact(thread, summarizer=summarizer, model=MODEL, keep_recent_tokens=1_000)
    after = (await cache.get(thread)).to_list()
    assert len(summaries(after)) == 1
    assert after[0] == SYSTEM
    assert "They planned a trip to Lisbon." in server.requests[-1].json()["messages"][1]["content"]


async def test_nothing_to_summarize_writes_nothing(
    cache: ConversationCache, server: ChatServer, summarizer: OpenAIChatModel
) -> None:
    thread = f"c-{uuid.uuid4().hex}"
    version = await cache.append(thread, [SYSTEM, *turns(2)])
    assert (
        await cache.compact(thread, summarizer=summarizer, model=MODEL, keep_recent_tokens=10_000)
        == version
    )
    assert server.requests == []


async def test_an_append_during_the_summary_is_kept(
    cache: ConversationCache, server: ChatServer, summarizer: OpenAIChatModel
) -> None:
    thread = f"c-{uuid.uuid4().hex}"
    original = [SYSTEM, *turns(20)]
    await cache.append(thread, original)
    release = threading.Event()
    server.script(Reply(body=completion_body("summary"), until=release))
    compaction = asyncio.create_task(
        cache.compact(thread, summarizer=summarizer, model=MODEL, keep_recent_tokens=800)
    )
    await eventually(lambda: len(server.requests) == 1)
    late = turns(2, start=100)
    await cache.append(thread, late)
    release.set()
    await compaction
    after = (await cache.get(thread)).to_list()
    assert len(summaries(after)) == 1
    assert after[-len(late) :] == late
    kept = after[2 : len(after) - len(late)]
    assert kept == original[len(original) - len(kept) :]


async def test_two_instances_compacting_at_once_leave_one_summary(
    make_cache: CacheFactory, server: ChatServer, summarizer: OpenAIChatModel
) -> None:
    thread = f"c-{uuid.uuid4().hex}"
    original = [SYSTEM, *turns(20)]
    release = threading.Event()
    server.script(
        Reply(body=completion_body("first summary"), until=release),
        Reply(body=completion_body("second summary"), until=release),
    )
    async with make_cache() as one, make_cache() as two:
        await one.append(thread, original)
        results = asyncio.gather(
            *(
                cache.compact(thread, summarizer=summarizer, model=MODEL, keep_recent_tokens=800)
                for cache in (one, two)
            )
        )
        await eventually(lambda: len(server.requests) == 2)
        release.set()
        await results
        for cache in (one, two):
            after = (await cache.get(thread)).to_list()
            assert len(summaries(after)) == 1
            kept = after[2:]
            assert kept == original[len(original) - len(kept) :]


async def test_keep_original_forks_the_thread_first(
    cache: ConversationCache, server: ChatServer, summarizer: OpenAIChatModel
) -> None:
    thread = f"c-{uuid.uuid4().hex}"
    original = [SYSTEM, *turns(12)]
    version = await cache.append(thread, original)
    server.script(Reply(body=completion_body("summary")))
    await cache.compact(
        thread, summarizer=summarizer, model=MODEL, keep_recent_tokens=500, keep_original=True
    )
    kept = await cache.get(f"{thread}.original.{version}")
    assert kept.to_list() == original


async def test_a_failed_or_refused_compaction_writes_nothing(
    cache: ConversationCache, server: ChatServer, summarizer: OpenAIChatModel
) -> None:
    thread = f"c-{uuid.uuid4().hex}"
    version = await cache.append(thread, [SYSTEM, *turns(12)])
    before = (await cache.get(thread)).to_list()
    with pytest.raises(VersionConflict):
        await cache.compact(
            thread,
            summarizer=summarizer,
            model=MODEL,
            keep_recent_tokens=500,
            expected_version=version - 1,
        )
    server.script(Reply(status=500, body=error_body("boom", "server_error")))
    with pytest.raises(ModelError):
        await cache.compact(thread, summarizer=summarizer, model=MODEL, keep_recent_tokens=500)
    server.script(Reply(body=completion_body("   ")))
    with pytest.raises(InvalidArgument, match="no text"):
        await cache.compact(thread, summarizer=summarizer, model=MODEL, keep_recent_tokens=500)
    for bad, match in (
        ({"keep_recent_tokens": -1}, "keep_recent_tokens"),
        ({"max_summary_tokens": 0}, "max_summary_tokens"),
        ({"instructions": " "}, "instructions"),
        ({"model": ""}, "model"),
        ({"summarizer": "gpt-4o"}, "summarizer"),
    ):
        arguments: dict[str, Any] = {
            "summarizer": summarizer,
            "model": MODEL,
            "keep_recent_tokens": 500,
        } | bad
        with pytest.raises(InvalidArgument, match=match):
            await cache.compact(thread, **arguments)
    assert (await cache.get(thread)).to_list() == before


# -- BaseAgent ---------------------------------------------------------------------------


def test_policy_is_checked() -> None:
    echo = EchoModel()
    for bad, match in (
        ({"trigger_tokens": 100, "target_tokens": 100}, "below trigger_tokens"),
        ({"trigger_tokens": 0, "target_tokens": 1}, "trigger_tokens"),
        ({"trigger_tokens": 100, "target_tokens": 50, "max_summary_tokens": 50}, "no room"),
        ({"trigger_tokens": 100, "target_tokens": 50, "summarizer": "x"}, "ChatModel"),
    ):
        arguments: dict[str, Any] = {"summarizer": echo} | bad
        with pytest.raises(ConfigurationError, match=match):
            CompactionPolicy(**arguments)


async def test_the_agent_compacts_after_the_reply_without_delaying_it(
    cache: ConversationCache, server: ChatServer, summarizer: OpenAIChatModel
) -> None:
    thread = f"a-{uuid.uuid4().hex}"
    await cache.append(thread, turns(30))
    acquired: list[tuple[str, int]] = []

    class Recorder:
        async def acquire(self, model: str, tokens: int) -> float:
            acquired.append((model, tokens))
            return 0.0

    release = threading.Event()
    server.script(Reply(body=completion_body("the summary"), until=release))
    policy = CompactionPolicy(
        trigger_tokens=2_000, target_tokens=1_200, summarizer=summarizer, model=MODEL
    )
    async with BaseAgent(
        EchoModel(),
        cache,
        token_model=MODEL,
        compaction=policy,
        rate_limits=Recorder(),
        max_context_tokens=100_000,
    ) as agent:
        # The summary is held back: the turn still returns.
        reply = await agent.run(thread, "hello")
        assert reply.version is not None
        await eventually(lambda: len(server.requests) == 1)
        assert summaries((await cache.get(thread)).to_list()) == []
        release.set()
        await eventually(
            lambda: agent.compaction_stats is not None and agent.compaction_stats.finished == 1
        )
    after = (await cache.get(thread)).to_list()
    assert len(summaries(after)) == 1
    assert after[-1]["content"] == "echo: hello"
    assert [model for model, _ in acquired].count("gpt-4o-mini") == 1


async def test_a_failing_summarizer_is_counted_never_raised(
    cache: ConversationCache, server: ChatServer, summarizer: OpenAIChatModel
) -> None:
    thread = f"a-{uuid.uuid4().hex}"
    await cache.append(thread, turns(30))
    server.script(Reply(status=500, body=error_body("boom", "server_error")))
    policy = CompactionPolicy(trigger_tokens=2_000, target_tokens=1_000, summarizer=summarizer)
    async with BaseAgent(EchoModel(), cache, token_model=MODEL, compaction=policy) as agent:
        await agent.run(thread, "hello")
    stats = agent.compaction_stats
    assert stats is not None
    assert stats.failed == 1
    assert "ModelError" in stats.errors[0]
    assert summaries((await cache.get(thread)).to_list()) == []


def stable_agent(cache: ConversationCache, policy: CompactionPolicy) -> BaseAgent:
    """An agent with stable windows of 2,500 tokens of history and ``policy``."""
    return BaseAgent(
        EchoModel(),
        cache,
        token_model=MODEL,
        compaction=policy,
        window_strategy="stable",
        max_context_tokens=3_000,
        reserve_output_tokens=500,
    )


async def test_stable_windows_wait_for_the_cut_to_move(
    cache: ConversationCache, server: ChatServer, summarizer: OpenAIChatModel
) -> None:
    """Over the trigger with a cut window, the agent compacts only on a turn before which
    the cut moves (this turn's growth again would move it); until then the provider's
    cached prefix stays warm."""
    thread = f"a-{uuid.uuid4().hex}"
    await cache.append(thread, turns(30))  # 3,610 tokens
    for _ in range(10):
        server.script(Reply(body=completion_body("summary")))
    policy = CompactionPolicy(trigger_tokens=3_000, target_tokens=2_900, summarizer=summarizer)
    async with stable_agent(cache, policy) as agent:
        stats = agent.compaction_stats
        assert stats is not None
        turn = 0
        while stats.finished == 0:
            turn += 1
            assert turn < 200, stats
            reply = await agent.run(thread, f"turn {turn} " + "more " * 30)
            await agent.aclose()  # the check of this turn has ended
            compacted = stats.finished > 0
            if not compacted:
                assert reply.history_omitted > 0
    assert stats.deferred > 0
    assert len(summaries((await cache.get(thread)).to_list())) == 1


async def test_deferral_ends_at_trigger_plus_target(
    cache: ConversationCache, server: ChatServer, summarizer: OpenAIChatModel
) -> None:
    """A thread past trigger_tokens + target_tokens is compacted at once, warm prefix or
    not: deferring can't let it grow without bound."""
    thread = f"a-{uuid.uuid4().hex}"
    await cache.append(thread, turns(30))  # 3,610 tokens
    server.script(Reply(body=completion_body("summary")))
    policy = CompactionPolicy(trigger_tokens=2_000, target_tokens=1_500, summarizer=summarizer)
    async with stable_agent(cache, policy) as agent:
        reply = await agent.run(thread, "one more " * 10)
        assert reply.history_omitted > 0  # the window was cut
        await agent.aclose()
        stats = agent.compaction_stats
        assert stats is not None
        assert (stats.finished, stats.deferred, stats.failed) == (1, 0, 0)
    assert len(summaries((await cache.get(thread)).to_list())) == 1


async def test_a_part_longer_than_one_request_is_summarized_in_pieces(
    cache: ConversationCache, server: ChatServer, summarizer: OpenAIChatModel
) -> None:
    """A part whose transcript is over PIECE_BYTES (and a message alone over it) goes to
    the summarizer in pieces, oldest first, each with the summary so far."""
    thread = f"c-{uuid.uuid4().hex}"
    big = "x" * 300_000  # alone over PIECE_BYTES: shortened, marked
    rows = [{"role": "user", "content": f"note {i} " + "y " * 40_000} for i in range(8)]
    await cache.append(thread, [SYSTEM, {"role": "user", "content": big}, *rows, *turns(3)])
    texts = ("the big one", "and three notes", "and six notes", "all of it")
    for text in texts:
        server.script(Reply(body=completion_body(text)))
    await cache.compact(thread, summarizer=summarizer, model=MODEL, keep_recent_tokens=500)
    # 80 KB notes: three to a piece of at most 256 KiB, after the shortened big one.
    prompts = [request.json()["messages"][1]["content"] for request in server.requests]
    assert len(prompts) == 4
    assert all(len(prompt.encode()) <= 300_000 for prompt in prompts)
    assert prompts[0].endswith("bytes left out]")
    for previous, prompt in zip(texts, prompts[1:], strict=False):
        assert prompt.startswith(f"(summary of what came before) {previous}\n\n")
    assert "note 7 " in prompts[3]
    after = (await cache.get(thread)).to_list()
    [summary] = summaries(after)
    assert summary["content"].endswith("all of it")
    assert after[0] == SYSTEM
