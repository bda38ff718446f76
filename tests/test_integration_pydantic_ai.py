"""`AgentCoreMessageHistory` and `run_turn` (agent_core.integrations.pydantic_ai): a
pydantic-ai message history in an agent-core thread, on both stores, with the real
pydantic-ai ``Agent`` and its own offline models (``TestModel``, ``FunctionModel``).

Exactness is pydantic-ai's own: a loaded history dumps (``ModelMessagesTypeAdapter.dump_json``)
to the same bytes as the one stored, and is ``==`` to what pydantic-ai's own
``validate_json(dump_json(...))`` gives back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from pydantic_ai import Agent, ModelRetry
from pydantic_ai.messages import (
    AudioUrl,
    BinaryContent,
    CachePoint,
    CompactionPart,
    DocumentUrl,
    FilePart,
    ImageUrl,
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelResponse,
    NativeToolCallPart,
    NativeToolReturnPart,
    SystemPromptPart,
    TextContent,
    TextPart,
    ThinkingPart,
    ToolCallPart,
    ToolReturnPart,
    UserContent,
    UserPromptPart,
    VideoUrl,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel
from pydantic_ai.usage import RequestUsage

from agent_core import (
    ConfigurationError,
    ConversationCache,
    EchoModel,
    InvalidArgument,
    InvalidBatch,
    InvalidMessage,
    InvalidThreadId,
    MessageTooLarge,
    TokenBudgetExceeded,
    TurnNotSaved,
    VersionConflict,
)
from agent_core.integrations.pydantic_ai import FIELD, AgentCoreMessageHistory, run_turn

from .conftest import CacheFactory
from .test_extras import _error_of

TA = ModelMessagesTypeAdapter
THREAD = "user-1"
WHEN = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


def part(message: ModelMessage, index: int = -1) -> Any:
    """One of a message's parts, typed loosely: each test knows which kind it holds."""
    return message.parts[index]


def parts_of(messages: Sequence[ModelMessage]) -> list[Any]:
    """Every part, in order (pydantic-ai merges requests in a row before it sends them)."""
    return [part for message in messages for part in message.parts]


def assert_exact(loaded: list[ModelMessage], stored: Sequence[ModelMessage]) -> None:
    """``loaded`` is ``stored`` as pydantic-ai's own dump and load give it back."""
    assert TA.dump_json(loaded) == TA.dump_json(list(stored))
    assert loaded == TA.validate_json(TA.dump_json(list(stored)))


def corpus() -> list[ModelMessage]:
    """Messages with every kind of part a history holds, fields set, and texts that look
    like the adapter's own field."""
    return [
        ModelRequest(
            parts=[
                SystemPromptPart("Answer in French.", timestamp=WHEN),
                UserPromptPart('Décris ,"pydantic_ai": ceci 🖼️', timestamp=WHEN),
            ],
            timestamp=WHEN,
            instructions="Be brief.",
            run_id="run-1",
            metadata={"tenant": "acme", "n": 2**70},
        ),
        ModelResponse(
            parts=[
                ThinkingPart("Let me look.", signature="sig==", provider_name="anthropic"),
                TextPart("Je regarde.", id="msg_1"),
                ToolCallPart("weather", {"city": "Paris", "pydantic_ai": [1, 2.5, None]}, "c1"),
                ToolCallPart("search", '{"q": "météo"}', "c2"),
            ],
            usage=RequestUsage(input_tokens=12, output_tokens=30, details={"reasoning": 7}),
            model_name="claude-x",
            timestamp=WHEN,
            provider_name="anthropic",
            provider_details={"stop": "tool_use"},
            provider_response_id="resp_1",
            finish_reason="tool_call",
        ),
        ModelRequest(
            parts=[
                ToolReturnPart("weather", {"temp": 21.5, "sky": "clear"}, "c1", timestamp=WHEN),
                ToolReturnPart("search", "no results", "c2", timestamp=WHEN, outcome="retried"),
            ],
            timestamp=WHEN,
        ),
        ModelRequest(
            parts=[
                UserPromptPart(
                    [
                        "and these?",
                        ImageUrl("https://example.com/a.png"),
                        BinaryContent(PNG, media_type="image/png"),
                        AudioUrl("https://example.com/a.mp3"),
                        DocumentUrl("https://example.com/a.pdf"),
                        VideoUrl("https://example.com/a.mp4"),
                        TextContent("quoted", metadata={"source": "kb"}),
                        CachePoint(),
                    ],
                    timestamp=WHEN,
                )
            ],
            timestamp=WHEN,
        ),
        ModelResponse(
            parts=[
                NativeToolCallPart("web_search", {"query": "x"}, "b1", provider_name="openai"),
                NativeToolReturnPart("web_search", [{"url": "u"}], "b1", provider_name="openai"),
                FilePart(BinaryContent(PNG, media_type="image/png")),
                CompactionPart("Earlier: greetings.", id="cmp", provider_name="anthropic"),
                TextPart(""),
            ],
            timestamp=WHEN,
        ),
    ]


def dumped_views(payloads: Sequence[bytes]) -> list[dict[str, Any]]:
    """The stored messages without their exact JSON (the part other readers see)."""
    views = []
    for raw in payloads:
        item = orjson.loads(raw)
        assert list(item)[-1] == FIELD
        del item[FIELD]
        views.append(item)
    return views


# -- round trips ------------------------------------------------------------------------------


async def test_every_part_round_trips_exactly_through_each_tier(
    make_cache: CacheFactory, store_url: str, namespace: str
) -> None:
    stored = corpus()
    async with make_cache() as writer, make_cache() as reader:
        version = await AgentCoreMessageHistory(THREAD, writer).extend(stored)
        assert version == len(stored)  # one version per message, as every append
        for cache, tier in ((writer, "l1"), (reader, "l2")):
            assert (await cache.read(THREAD)).source == tier
            assert_exact(await AgentCoreMessageHistory(THREAD, cache).load(), stored)
    # A cold instance, without Redis, loads it from the store.
    async with ConversationCache.from_urls(store=store_url, namespace=namespace) as cold:
        assert (await cold.read(THREAD)).source == "store"
        loaded = await AgentCoreMessageHistory(THREAD, cold).load()
    assert_exact(loaded, stored)
    assert part(loaded[1], 2).args == {"city": "Paris", "pydantic_ai": [1, 2.5, None]}
    assert loaded[0].metadata == {"tenant": "acme", "n": 2**70}  # past 64 bits, exact


async def test_messages_pydantic_ai_round_trips_itself_come_back_equal(
    cache: ConversationCache,
) -> None:
    """Where pydantic-ai's own round trip gives back an equal message, so does the thread."""
    stored = [m for i, m in enumerate(corpus()) if i in (0, 1, 2)]
    assert TA.validate_json(TA.dump_json(stored)) == stored
    history = AgentCoreMessageHistory(THREAD, cache)
    await history.extend(stored)
    assert await history.load() == stored


async def test_the_stored_view_is_chat_completions(cache: ConversationCache) -> None:
    await AgentCoreMessageHistory(THREAD, cache).extend(corpus())
    views = dumped_views((await cache.get(THREAD)).payloads)
    assert views == [
        {"role": "system", "content": 'Answer in French.\n\nDécris ,"pydantic_ai": ceci 🖼️'},
        {
            "role": "assistant",
            "content": "Je regarde.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {
                        "name": "weather",
                        "arguments": '{"city":"Paris","pydantic_ai":[1,2.5,null]}',
                    },
                },
                {
                    "id": "c2",
                    "type": "function",
                    "function": {"name": "search", "arguments": '{"q":"météo"}'},
                },
            ],
        },
        {
            "role": "tool",
            "content": '{"temp":21.5,"sky":"clear"}\n\n{"error":"no results"}',
            "tool_call_id": "c1",
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "and these?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                {"type": "text", "text": f"[binary: image/png, {len(PNG)} bytes]"},
                {"type": "text", "text": "[audio-url: https://example.com/a.mp3]"},
                {"type": "text", "text": "[document-url: https://example.com/a.pdf]"},
                {"type": "text", "text": "[video-url: https://example.com/a.mp4]"},
                {"type": "text", "text": "quoted"},
            ],
        },
        {
            "role": "assistant",
            "content": f"[binary: image/png, {len(PNG)} bytes]\n\nEarlier: greetings.\n\n",
        },
    ]


# -- agent turns ------------------------------------------------------------------------------


class Scripted:
    """A `FunctionModel` function: answers from ``replies`` in order, recording each request's
    messages; a reply may be a callable run first (to let another writer in)."""

    def __init__(self, *replies: ModelResponse | Callable[[], Awaitable[ModelResponse]]) -> None:
        self.replies = list(replies)
        self.seen: list[list[ModelMessage]] = []

    async def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.seen.append(list(messages))
        reply = self.replies.pop(0)
        return reply if isinstance(reply, ModelResponse) else await reply()


def said(text: str) -> ModelResponse:
    return ModelResponse(parts=[TextPart(text)])


def weather_agent(script: Scripted) -> Agent[None, str]:
    agent = Agent(FunctionModel(script), system_prompt="You report the weather.")

    @agent.tool_plain
    def weather(city: str) -> str:
        if city != "Paris":
            raise ModelRetry(f"unknown city {city!r}: try Paris")
        return "sunny, 21 C"

    return agent


async def test_a_turn_with_tools_retries_and_thinking_is_stored_and_sent_back(
    make_cache: CacheFactory,
) -> None:
    script = Scripted(
        ModelResponse(
            parts=[
                ThinkingPart("Which city?", signature="s1"),
                ToolCallPart("weather", {"city": "Lyon"}, "t1"),
            ]
        ),
        ModelResponse(parts=[ToolCallPart("weather", {"city": "Paris"}, "t2")]),
        said("Sunny in Paris."),
        said("You asked about Paris."),
    )
    agent = weather_agent(script)
    async with make_cache(consistency="strong") as a, make_cache(consistency="strong") as b:
        first = await run_turn(agent, AgentCoreMessageHistory(THREAD, a), "Weather?")
        assert first.output == "Sunny in Paris."
        history = AgentCoreMessageHistory(THREAD, b)  # another instance continues
        assert_exact(await history.load(), first.all_messages())
        second = await run_turn(agent, history, "What did I ask?")
        # The model got the first turn as stored, then the new prompt.
        sent = script.seen[-1]
        assert_exact(sent[: len(first.all_messages())], first.all_messages())
        assert part(sent[-1]).content == "What did I ask?"
        loaded = await AgentCoreMessageHistory(THREAD, a).load()
    assert_exact(loaded, second.all_messages())
    kinds = [[p.part_kind for p in m.parts] for m in loaded]
    assert kinds[:4] == [
        ["system-prompt", "user-prompt"],
        ["thinking", "tool-call"],
        ["tool-return"],  # the retry (ModelRetry) answers the call
        ["tool-call"],
    ]
    assert part(loaded[2], 0).outcome == "retried"


async def test_multimodal_prompts_reach_the_next_turn(cache: ConversationCache) -> None:
    script = Scripted(said("A PNG."), said("Still a PNG."))
    agent = Agent(FunctionModel(script))
    history = AgentCoreMessageHistory(THREAD, cache)
    prompt: list[UserContent] = [
        "What is this?",
        BinaryContent(PNG, media_type="image/png"),
        ImageUrl("https://e/x.jpg"),
    ]
    first = await run_turn(agent, history, prompt)
    await run_turn(agent, history, "And now?")
    # The second request carried the first turn as stored, the image's bytes included.
    assert_exact(script.seen[-1][:2], first.all_messages())
    assert part(script.seen[-1][0], 0).content[1].data == PNG


async def test_test_model_turns_load_back_exactly(cache: ConversationCache) -> None:
    agent = Agent(TestModel(), instructions="Use the tools.")

    @agent.tool_plain
    def add(a: int, b: int) -> int:
        return a + b

    history = AgentCoreMessageHistory(THREAD, cache)
    for prompt in ("one", "two", "three"):
        result = await run_turn(agent, history, prompt)
    assert_exact(await history.load(), result.all_messages())
    assert len(result.all_messages()) == 8  # a tool call and its return in the first turn


# -- concurrency and VersionConflict ----------------------------------------------------------


async def test_concurrent_turns_on_two_instances_lose_nothing(make_cache: CacheFactory) -> None:
    turns = 8

    def agent() -> Agent[None, str]:
        async def echo(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
            await asyncio.sleep(0)  # let the other instance's turns interleave
            return said(f"re: {part(messages[-1]).content}")

        return Agent(FunctionModel(echo))

    async with make_cache(consistency="strong") as a, make_cache(consistency="strong") as b:
        runs = [
            run_turn(agent(), AgentCoreMessageHistory(THREAD, cache), f"{name}{i}")
            for i in range(turns)
            for name, cache in (("a", a), ("b", b))
        ]
        await asyncio.gather(*runs)
        loaded = await AgentCoreMessageHistory(THREAD, b).load()
    assert len(loaded) == 4 * turns
    # Each turn's request and response are stored together, in one append.
    pairs = [(loaded[i], loaded[i + 1]) for i in range(0, len(loaded), 2)]
    prompts = sorted(str(part(request).content) for request, _ in pairs)
    assert prompts == sorted(f"{n}{i}" for i in range(turns) for n in "ab")
    for request, response in pairs:
        assert part(response).content == f"re: {part(request).content}"


def interrupted_by(
    other: AgentCoreMessageHistory, text: str
) -> Callable[[], Awaitable[ModelResponse]]:
    """A reply that first lets ``other`` (another instance) append a turn of its own."""

    async def reply() -> ModelResponse:
        await other.extend([ModelRequest([UserPromptPart("meanwhile")]), said("noted")])
        return said(text)

    return reply


async def test_on_conflict_append_stores_the_turn_after_the_other_writer(
    make_cache: CacheFactory,
) -> None:
    async with make_cache(consistency="strong") as a, make_cache(consistency="strong") as b:
        script = Scripted(interrupted_by(AgentCoreMessageHistory(THREAD, b), "hello"))
        result = await run_turn(
            Agent(FunctionModel(script)), AgentCoreMessageHistory(THREAD, a), "hi"
        )
        loaded = await AgentCoreMessageHistory(THREAD, a).load()
    texts = [part(m).content for m in loaded]
    assert texts == ["meanwhile", "noted", "hi", "hello"]
    assert_exact(loaded[2:], result.new_messages())


async def test_on_conflict_retry_runs_the_turn_again_on_the_new_history(
    make_cache: CacheFactory,
) -> None:
    async with make_cache(consistency="strong") as a, make_cache(consistency="strong") as b:
        script = Scripted(
            interrupted_by(AgentCoreMessageHistory(THREAD, b), "stale"), said("fresh")
        )
        history = AgentCoreMessageHistory(THREAD, a)
        result = await run_turn(Agent(FunctionModel(script)), history, "hi", on_conflict="retry")
        loaded = await history.load()
    assert result.output == "fresh"
    assert len(script.seen) == 2
    assert len(script.seen[1]) == 3  # the retry saw "meanwhile"
    assert [part(m).content for m in loaded] == ["meanwhile", "noted", "hi", "fresh"]


async def test_a_conflict_on_the_last_attempt_raises_turn_not_saved(
    make_cache: CacheFactory,
) -> None:
    async with make_cache(consistency="strong") as a, make_cache(consistency="strong") as b:
        other = AgentCoreMessageHistory(THREAD, b)
        script = Scripted(interrupted_by(other, "lost?"))
        history = AgentCoreMessageHistory(THREAD, a)
        with pytest.raises(TurnNotSaved) as raised:
            await run_turn(
                Agent(FunctionModel(script)), history, "hi", on_conflict="retry", max_attempts=1
            )
        error = raised.value
        assert isinstance(error.__cause__, VersionConflict)
        assert (error.__cause__.expected, error.__cause__.actual) == (0, 2)
        assert len(await history.load()) == 2  # only the other writer's turn
        # The reply is kept: storing it with the error's key lands it once.
        assert error.reply.output == "lost?"
        for _ in range(2):
            version = await history.extend(
                error.reply.new_messages(), idempotency_key=error.idempotency_key
            )
        assert version == 4
        assert_exact((await history.load())[2:], error.reply.new_messages())
        assert [orjson.loads(orjson.dumps(m))[FIELD]["kind"] for m in error.messages] == [
            "request",
            "response",
        ]


async def test_extend_with_expected_version_is_compare_and_append(
    make_cache: CacheFactory,
) -> None:
    async with make_cache(consistency="strong") as a, make_cache(consistency="strong") as b:
        first, second = AgentCoreMessageHistory(THREAD, a), AgentCoreMessageHistory(THREAD, b)
        messages, version = await first.load_versioned()
        assert (messages, version) == ([], 0)
        assert await second.extend(corpus()[:2], expected_version=0) == 2
        with pytest.raises(VersionConflict) as raised:
            await first.extend(corpus()[2:], expected_version=version)
        assert (raised.value.expected, raised.value.actual) == (0, 2)
        assert_exact(await first.load(), corpus()[:2])
        assert await first.extend(corpus()[2:3], expected_version=2) == 3


# -- windows ----------------------------------------------------------------------------------


async def long_thread(cache: ConversationCache, turns: int) -> AgentCoreMessageHistory:
    """A system prompt, then ``turns`` turns, each a tool call and its return before the reply."""
    history = AgentCoreMessageHistory(THREAD, cache)
    filler = "The quick brown fox jumps over the lazy dog. " * 4
    messages: list[ModelMessage] = [
        ModelRequest([SystemPromptPart("You are terse."), UserPromptPart("start")]),
        said("ok"),
    ]
    for turn in range(turns):
        messages += [
            ModelRequest([UserPromptPart(f"question {turn}: {filler}")]),
            ModelResponse([ToolCallPart("lookup", {"n": turn}, f"call-{turn}")]),
            ModelRequest([ToolReturnPart("lookup", filler, f"call-{turn}")]),
            said(f"answer {turn}: {filler}"),
        ]
    await history.extend(messages)
    return history


async def test_windows_keep_the_system_prompt_and_start_at_a_user_prompt(
    cache: ConversationCache,
) -> None:
    history = await long_thread(cache, 6)
    everything = await history.load()
    sizes = set()
    for max_tokens in range(80, 1500, 9):
        window = await history.window(max_tokens, model="gpt-4o")
        sizes.add(len(window))
        assert window[0] == everything[0]  # pinned: pydantic-ai sends the system prompt only here
        rest = window[1:]
        assert rest == everything[len(everything) - len(rest) :]  # a suffix
        if rest and rest != everything[1:]:
            assert isinstance(rest[0], ModelRequest)
            assert isinstance(rest[0].parts[0], UserPromptPart)
    # Whole turns (four messages each) after the pinned request, or everything.
    assert {1, 5, 9, 13, 17, 21, len(everything)} <= sizes
    assert all(size % 4 == 1 or size == len(everything) for size in sizes)


async def test_run_turn_sends_the_window(cache: ConversationCache) -> None:
    await long_thread(cache, 10)
    script = Scripted(said("short"))
    history = AgentCoreMessageHistory(THREAD, cache, window_tokens=300, model="gpt-4o")
    window = await history.window()
    assert 1 < len(window) < 4 * 10
    await run_turn(Agent(FunctionModel(script)), history, "next")
    sent = script.seen[0]
    # The model got the window, then the prompt; pydantic-ai merges the pinned request with
    # the next (a window that cuts the first reply holds two requests in a row).
    assert parts_of(sent[:-1]) == parts_of(window)
    assert [part(sent[-1], i).content for i in range(len(sent[-1].parts))] == ["next"]
    assert len(await history.load()) == 2 + 4 * 10 + 2  # the whole turn is stored


async def test_a_window_too_small_for_the_newest_message(cache: ConversationCache) -> None:
    history = await long_thread(cache, 2)
    with pytest.raises(TokenBudgetExceeded):
        await history.window(20, model="gpt-4o")


# -- other writers ----------------------------------------------------------------------------


async def test_plain_text_messages_of_other_writers_load_as_prompts(
    cache: ConversationCache,
) -> None:
    history = AgentCoreMessageHistory(THREAD, cache)
    await history.extend(corpus()[:1])
    await cache.append(
        THREAD,
        [
            {"role": "system", "content": "Summary: they talked.", "name": "agent_core_summary"},
            {"role": "user", "content": [{"type": "text", "text": "from the API"}]},
            {"role": "assistant", "content": "a reply"},
        ],
    )
    loaded = await history.load()
    assert_exact(loaded[:1], corpus()[:1])
    assert [type(m).__name__ for m in loaded[1:]] == ["ModelRequest"] * 2 + ["ModelResponse"]
    assert [part(m).content for m in loaded[1:]] == [
        "Summary: they talked.",
        "from the API",
        "a reply",
    ]
    assert isinstance(loaded[1].parts[0], SystemPromptPart)


async def test_a_thread_compacted_by_agent_core_still_runs(cache: ConversationCache) -> None:
    """``cache.compact`` summarizes the oldest turns (read through their view) into a system
    message; the history loads with it as a system prompt and the kept turns exact."""
    history = await long_thread(cache, 6)
    before = await history.load()
    await cache.compact(THREAD, summarizer=EchoModel(), model="gpt-4o", keep_recent_tokens=200)
    after = await history.load()
    assert after[0] == before[0]  # a system message: compaction keeps it
    summary = part(after[1], 0)
    assert isinstance(summary, SystemPromptPart)
    assert summary.content.startswith("Summary of the earlier conversation:")
    assert "user: question 0: The quick" in summary.content  # the summarizer read the view
    kept = len(after) - 2
    assert 0 < kept < len(before) - 1
    assert_exact(after[2:], before[-kept:])
    script = Scripted(said("fine"))
    await run_turn(Agent(FunctionModel(script)), history, "go on")
    sent = parts_of(script.seen[0][:-1])
    assert len(sent) == len(parts_of(after))
    # pydantic-ai sends a system prompt that follows user content as user text.
    assert summary.content in sent[2].content
    assert sent[3:] == parts_of(after[2:])


async def test_a_message_pydantic_ai_cannot_load_is_named(cache: ConversationCache) -> None:
    await AgentCoreMessageHistory(THREAD, cache).extend(corpus()[:1])
    await cache.append(THREAD, [{"role": "tool", "tool_call_id": "x", "content": "y"}])
    with pytest.raises(InvalidMessage, match=r"message 1 of thread 'user-1' was not stored by"):
        await AgentCoreMessageHistory(THREAD, cache).load()


async def test_the_field_written_elsewhere_in_the_message_still_loads(
    cache: ConversationCache,
) -> None:
    """Another program storing the same JSON with its keys in another order (through dicts,
    so without the corpus' integer past 64 bits, which agent-core's own encoder refuses)."""
    stored = corpus()[1:]
    await AgentCoreMessageHistory("source", cache).extend(stored)
    reordered = []
    for message in (await cache.get("source")).messages:
        item = message.to_dict()
        reordered.append({FIELD: item.pop(FIELD), **item})
    await cache.append(THREAD, reordered)
    assert_exact(await AgentCoreMessageHistory(THREAD, cache).load(), stored)
    await cache.append(THREAD, [{"role": "user", "content": "x", FIELD: {"kind": "nope"}}])
    with pytest.raises(InvalidMessage, match="message 4 of thread 'user-1': its 'pydantic_ai'"):
        await AgentCoreMessageHistory(THREAD, cache).load()


# -- limits and refused input -----------------------------------------------------------------


async def test_refused_batches_write_nothing(make_cache: CacheFactory) -> None:
    async with make_cache(max_message_bytes=4096, max_batch_messages=3) as cache:
        history = AgentCoreMessageHistory(THREAD, cache)
        await history.extend(corpus()[:1])
        big = ModelRequest([UserPromptPart([BinaryContent(bytes(4000), media_type="image/png")])])
        cases: list[tuple[Any, type[Exception], str]] = [
            ([said("ok"), big], MessageTooLarge, r"messages\[1\]: message is \d+ bytes"),
            ([said("ok")] * 4, InvalidBatch, "4 messages in one batch is over the limit of 3"),
            ([said("ok"), {"role": "user"}], InvalidMessage, r"messages\[1\] must be a Model"),
            (said("ok"), InvalidBatch, "must be a list of ModelRequest/ModelResponse"),
            ("hi", InvalidBatch, "got str"),
        ]
        for batch, error, match in cases:
            with pytest.raises(error, match=match):
                await history.extend(batch)
        assert_exact(await history.load(), corpus()[:1])
        assert (await cache.get(THREAD)).version == 1
        assert await history.extend([]) == 1  # nothing to write


async def test_a_reply_too_large_to_store_is_turn_not_saved(make_cache: CacheFactory) -> None:
    async with make_cache(max_message_bytes=2048) as cache:
        script = Scripted(said("x" * 4096))
        history = AgentCoreMessageHistory(THREAD, cache)
        with pytest.raises(TurnNotSaved) as raised:
            await run_turn(Agent(FunctionModel(script)), history, "hi")
        assert isinstance(raised.value.__cause__, MessageTooLarge)
        assert raised.value.reply.output == "x" * 4096
        assert raised.value.messages == []
        assert await history.load() == []


async def test_bad_arguments_are_refused(cache: ConversationCache) -> None:
    agent = Agent(TestModel())
    history = AgentCoreMessageHistory(THREAD, cache)
    with pytest.raises(InvalidThreadId):
        AgentCoreMessageHistory("no spaces", cache)
    with pytest.raises(ConfigurationError, match="cache must be a ConversationCache"):
        AgentCoreMessageHistory(THREAD, "sqlite:///x.db")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="give window_tokens too"):
        AgentCoreMessageHistory(THREAD, cache, model="gpt-4o")
    with pytest.raises(InvalidArgument, match="needs the model"):
        AgentCoreMessageHistory(THREAD, cache, window_tokens=100)
    with pytest.raises(InvalidArgument, match="window_tokens"):
        AgentCoreMessageHistory(THREAD, cache, window_tokens=0, model="gpt-4o")
    with pytest.raises(InvalidArgument, match="needs the model"):
        await history.window(100)
    with pytest.raises(InvalidArgument, match="max_tokens"):
        await history.window(0, model="gpt-4o")
    calls: list[tuple[Any, dict[str, Any], str]] = [
        (history, {"message_history": []}, "passes message_history itself"),
        (history, {"on_conflict": "merge"}, "on_conflict must be 'append' or 'retry'"),
        (history, {"max_attempts": 0}, "max_attempts"),
        (THREAD, {}, "history must be an AgentCoreMessageHistory"),
    ]
    for target, options, match in calls:
        with pytest.raises(InvalidArgument, match=match):
            await run_turn(agent, target, "hi", **options)
    assert (await cache.get(THREAD)).version == 0


async def test_clear(make_cache: CacheFactory) -> None:
    async with make_cache(consistency="strong") as a, make_cache(consistency="strong") as b:
        await AgentCoreMessageHistory(THREAD, a).extend(corpus())
        assert await AgentCoreMessageHistory(THREAD, b).clear() > 5
        assert await AgentCoreMessageHistory(THREAD, a).load() == []


@pytest.mark.integration
def test_without_pydantic_ai_the_import_names_the_extra() -> None:
    raised = _error_of("import agent_core.integrations.pydantic_ai", blocked=("pydantic_ai",))
    assert raised == (
        "agent_core.errors.ConfigurationError",
        "AgentCoreMessageHistory needs pydantic-ai-slim: pip install 'agent-core[pydantic-ai]'",
    )
