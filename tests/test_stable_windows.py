"""Cache-stable windows: prefixes that stay byte-identical between overflows, on every
instance and store, within budget, with tool calls and pinned messages as windows keep them.

The property test compares the replayed cut with a brute-force simulation of the rule:
"message by message, when the window from the cut overflows the budget, move the cut to
where the window holds ``retain_ratio`` of it, never between a tool call and its results".
"""

from __future__ import annotations

import contextlib
import random
import uuid
from itertools import pairwise
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_core import (
    BaseAgent,
    ConfigurationError,
    ConversationCache,
    InvalidArgument,
    Message,
    OpenAIChatModel,
    TokenBudgetExceeded,
    TokenCounter,
)
from agent_core.messages import Conversation
from agent_core.server import Settings
from agent_core.tokens import Derived, select_window, token_index

from ._chat_server import ChatServer, Reply, completion_body
from .conftest import CacheFactory

MODEL = "gpt-4o"
COUNTER = TokenCounter.for_model(MODEL)


def chat_turns(rng: random.Random, turns: int, *, tools: bool = True) -> list[dict[str, Any]]:
    """User/assistant turns of varied sizes, some with a tool call and its results."""
    messages: list[dict[str, Any]] = []
    for turn in range(turns):
        messages.append(
            {"role": "user", "content": f"question {turn} " + "word " * rng.randint(3, 60)}
        )
        if tools and rng.random() < 0.3:
            call_id = f"call_{turn}"
            messages.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {"name": "lookup", "arguments": '{"q": 1}'},
                        }
                    ],
                }
            )
            messages.append(
                {"role": "tool", "tool_call_id": call_id, "content": "row " * rng.randint(5, 400)}
            )
        messages.append({"role": "assistant", "content": "answer " * rng.randint(5, 200)})
    return messages


def raws(messages: Any) -> list[bytes]:
    return [message.raw for message in messages]


# -- the rule, brute force ----------------------------------------------------------------


def reference_window(
    items: list[dict[str, Any]], max_tokens: int, ratio: float
) -> tuple[int, list[int], int]:
    """(cut, positions of the window's messages) by simulating the rule message by message."""
    messages = [Message.from_dict(item) for item in items]
    counts = [COUNTER.count_message(message) for message in messages]
    pinned = [item.get("role") in ("system", "developer") for item in items]
    blocked = [False] * len(items)
    calls: dict[str, int] = {}
    for index, item in enumerate(items):
        if item.get("role") == "tool" and item.get("tool_call_id") in calls:
            for position in range(calls[item["tool_call_id"]] + 1, index + 1):
                blocked[position] = True
        for call in item.get("tool_calls") or ():
            calls[call["id"]] = index
    fixed = COUNTER.reply_priming + sum(c for c, p in zip(counts, pinned, strict=True) if p)
    avail = max_tokens - fixed
    target = min(avail, max(0, int(max_tokens * ratio) - fixed))

    def cost(start: int, stop: int) -> int:
        return sum(counts[i] for i in range(start, stop) if not pinned[i])

    cut = 0
    for newest in range(len(items)):
        if cost(cut, newest + 1) > avail:
            for room in (target, avail):
                moved = cut + 1
                while moved <= newest and cost(moved, newest + 1) > room:
                    moved += 1
                while moved <= newest and blocked[moved]:
                    moved += 1
                if moved <= newest:
                    break
            cut = moved
    while cut < len(items) and blocked[cut]:
        cut += 1
    kept = [i for i in range(len(items)) if i >= cut or pinned[i]]
    return cut, kept, fixed


thread_shapes = st.lists(
    st.tuples(
        st.sampled_from(["user", "assistant", "system", "call"]),
        st.integers(min_value=1, max_value=300),
    ),
    min_size=1,
    max_size=60,
)


def build(shape: list[tuple[str, int]]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for index, (kind, words) in enumerate(shape):
        text = "w " * words
        if kind == "call":
            call = {
                "id": f"c{index}",
                "type": "function",
                "function": {"name": "f", "arguments": "{}"},
            }
            items.append({"role": "assistant", "content": None, "tool_calls": [call]})
            items.append({"role": "tool", "tool_call_id": f"c{index}", "content": text})
        else:
            items.append({"role": kind, "content": text})
    return items


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    shape=thread_shapes,
    max_tokens=st.integers(min_value=50, max_value=3000),
    ratio=st.sampled_from([0.3, 0.5, 0.7, 1.0]),
    prefix=st.integers(min_value=0, max_value=60),
)
def test_the_replayed_cut_is_the_rule_and_goes_on_from_a_kept_one(
    shape: list[tuple[str, int]], max_tokens: int, ratio: float, prefix: int
) -> None:
    items = build(shape)
    messages = [Message.from_dict(item) for item in items]
    # First a shorter snapshot (its cut is kept in Derived), then the whole thread
    # extended from it, as L1 extends a snapshot on append.
    prefix = min(prefix, len(messages))
    derived = Derived()
    short = Conversation("t", 1, messages[:prefix])
    with contextlib.suppress(TokenBudgetExceeded):
        select_window(
            short,
            derived,
            token_index(short, COUNTER, derived),
            COUNTER,
            max_tokens,
            0,
            retain_ratio=ratio,
        )
    whole = Conversation("t", 2, messages)
    extended = derived.extended(whole, [m.raw for m in messages[prefix:]])
    for kept_derived in (extended or Derived(), Derived()):
        cut, kept, fixed = reference_window(items, max_tokens, ratio)
        try:
            window = select_window(
                whole,
                kept_derived,
                token_index(whole, COUNTER, kept_derived),
                COUNTER,
                max_tokens,
                0,
                retain_ratio=ratio,
            )
        except TokenBudgetExceeded:
            assert fixed > max_tokens or (cut == len(items) and items[-1]["role"] != "system")
            continue
        assert window.cut == cut
        assert raws(window.messages) == [messages[i].raw for i in kept]
        assert window.token_count <= max_tokens


def test_turns_share_a_prefix_until_an_overflow_moves_the_cut() -> None:
    rng = random.Random(7)
    items = [{"role": "system", "content": "You are terse."}, *chat_turns(rng, 200)]
    messages = [Message.from_dict(item) for item in items]
    derived = Derived()
    previous: list[bytes] = []
    moves = 0
    budget = 4_000
    for size in range(2, len(messages) + 1):
        conversation = Conversation("t", size, messages[:size])
        if size > 2:
            derived = derived.extended(conversation, [messages[size - 1].raw]) or Derived()
        window = select_window(
            conversation,
            derived,
            token_index(conversation, COUNTER, derived),
            COUNTER,
            budget,
            0,
            retain_ratio=0.7,
        )
        assert window.token_count <= budget
        current = raws(window.messages)
        if current[: len(previous)] != previous:
            moves += 1
            # Right after a move the window holds at most 70 % of the budget, plus the
            # message that overflowed it if that alone is more.
            assert window.token_count <= 0.7 * budget or window.cut >= size - 3
        previous = current
    sliding_moves = 0
    previous = []
    for size in range(2, len(messages) + 1):
        conversation = Conversation("t", size, messages[:size])
        window = select_window(
            conversation, Derived(), token_index(conversation, COUNTER), COUNTER, budget, 0
        )
        current = raws(window.messages)
        sliding_moves += current[: len(previous)] != previous
        previous = current
    assert 0 < moves < sliding_moves / 3, (moves, sliding_moves)


def test_pending_tokens_count_against_the_budget() -> None:
    items = chat_turns(random.Random(3), 40, tools=False)
    conversation = Conversation("t", 1, [Message.from_dict(item) for item in items])
    for strategy_ratio in (None, 0.7):
        window = select_window(
            conversation,
            Derived(),
            token_index(conversation, COUNTER),
            COUNTER,
            2_000,
            0,
            retain_ratio=strategy_ratio,
            pending_tokens=500,
        )
        assert window.token_count + 500 <= 2_000
    with pytest.raises(TokenBudgetExceeded, match="sent after the window"):
        select_window(
            conversation,
            Derived(),
            token_index(conversation, COUNTER),
            COUNTER,
            2_000,
            0,
            retain_ratio=0.7,
            pending_tokens=2_000,
        )


# -- through the cache: stores, instances, cold starts -----------------------------------


async def test_window_arguments_are_checked(cache: ConversationCache) -> None:
    await cache.append("t", [{"role": "user", "content": "hi"}])
    with pytest.raises(InvalidArgument, match="strategy"):
        await cache.window("t", max_tokens=100, model=MODEL, strategy="fixed")  # type: ignore[arg-type]
    bad_ratios: tuple[Any, ...] = (0, 1.5, float("nan"), True, "0.7")
    for ratio in bad_ratios:
        with pytest.raises(InvalidArgument, match="retain_ratio"):
            await cache.window(
                "t", max_tokens=100, model=MODEL, strategy="stable", retain_ratio=ratio
            )
    with pytest.raises(InvalidArgument, match="pending_tokens"):
        await cache.window("t", max_tokens=100, model=MODEL, pending_tokens=-1)


async def test_a_cold_instance_cuts_the_same_window(make_cache: CacheFactory) -> None:
    """Instances with and without L2, opened after the thread grew (cold starts), send the
    same bytes; so does the writer that kept its snapshot in L1 all along."""
    rng = random.Random(11)
    thread = f"stable-{uuid.uuid4().hex}"
    turns = chat_turns(rng, 150)
    windows: list[list[bytes]] = []
    async with make_cache() as writer:
        await writer.append(thread, [{"role": "system", "content": "Be brief."}])
        step = 9
        for start in range(0, len(turns), step):
            await writer.append(thread, turns[start : start + step])
            window = await writer.window(
                thread, max_tokens=3_000, model=MODEL, strategy="stable", pending_tokens=40
            )
        windows.append(raws(window.messages))
        assert window.omitted > 0
    for options in ({}, {"redis": None}):
        async with make_cache(**options) as cold:
            read = await cold.read_window(
                thread, max_tokens=3_000, model=MODEL, strategy="stable", pending_tokens=40
            )
            windows.append(raws(read.value.messages))
    assert windows[1] == windows[0]
    assert windows[2] == windows[0]


async def test_agent_requests_keep_a_byte_identical_prefix_across_instances(
    make_cache: CacheFactory,
) -> None:
    """Turns alternate between two instances (each a new cache, as cold starts are): every
    request body begins with the previous one's messages unless the cut moved, and sends
    the thread id as prompt_cache_key; cached tokens reach the reply's usage."""
    thread = f"agent-{uuid.uuid4().hex}"
    rng = random.Random(5)
    bodies: list[dict[str, Any]] = []
    with ChatServer() as server:
        for turn in range(40):
            reply = "answer " * rng.randint(20, 120)
            body = completion_body(reply)
            body["usage"]["prompt_tokens_details"] = {"cached_tokens": 1024}
            server.script(Reply(body=body))
            async with (
                make_cache() as cache,
                OpenAIChatModel("gpt-4o", base_url=server.url, api_key="k") as model,
            ):
                agent = BaseAgent(
                    model,
                    cache,
                    system_prompt="You are terse.",
                    max_context_tokens=3_000,
                    reserve_output_tokens=500,
                    window_strategy="stable",
                )
                result = await agent.run(thread, f"turn {turn} " + "please " * rng.randint(5, 80))
                assert result.usage.cached_tokens == 1024
                assert result.prompt_tokens <= 2_500
            bodies.append(server.requests[-1].json())
    keys = {body["prompt_cache_key"] for body in bodies}
    assert keys == {thread}
    kept = moved = 0
    for before, after in pairwise(bodies):
        shared = after["messages"][: len(before["messages"])]
        if shared == before["messages"]:
            kept += 1
        else:
            moved += 1
    assert moved > 0
    assert kept > 3 * moved, (kept, moved)


@pytest.mark.integration
async def test_service_settings_send_the_prompt_cache_retention(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The service's OpenAI model asks for the configured retention on every request."""
    with ChatServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        for retention in ("24h", "in_memory", None):
            server.script(Reply(body=completion_body("ok")))
            model = Settings(model="gpt-5.1", prompt_cache_retention=retention).chat_model()
            try:
                await model.complete([Message.from_dict({"role": "user", "content": "hi"})])
            finally:
                await model.aclose()
            assert server.requests[-1].json().get("prompt_cache_retention") == retention
    with pytest.raises(ConfigurationError, match="prompt_cache_retention must be"):
        Settings(prompt_cache_retention="1h")


@pytest.mark.integration
async def test_identical_messages_give_identical_bodies() -> None:
    items = chat_turns(random.Random(2), 5)
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"b": 1, "a": 2}}}]
    with ChatServer() as server:
        for _ in range(2):
            server.script(Reply(body=completion_body("ok")))
            async with OpenAIChatModel("gpt-4o", base_url=server.url, api_key="k") as model:
                await model.complete(
                    [Message.from_dict(orjson.loads(orjson.dumps(i))) for i in items],
                    tools=tools,
                    cache_key="t",
                )
        first, second = (request.body for request in server.requests)
    assert first == second


def test_stable_windows_need_a_memory_that_takes_a_strategy() -> None:
    class SlidingOnly:
        max_message_bytes = 1 << 20

        async def read(self, thread_id: str) -> Any: ...

        async def read_window(self, thread_id: str, *, max_tokens: int, model: str) -> Any: ...

        async def append(self, thread_id: str, messages: Any, **options: Any) -> int:
            return 0

    from agent_core import ConfigurationError, EchoModel

    BaseAgent(EchoModel(), SlidingOnly())  # sliding windows: fine
    with pytest.raises(ConfigurationError, match="read_window takes strategy"):
        BaseAgent(EchoModel(), SlidingOnly(), window_strategy="stable")
    with pytest.raises(ConfigurationError, match="window_strategy"):
        BaseAgent(EchoModel(), SlidingOnly(), window_strategy="fixed")  # type: ignore[arg-type]
