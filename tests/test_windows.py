"""Stored token counts and token windows, over real stores and real Redis."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_core import (
    ConfigurationError,
    Conversation,
    InvalidArgument,
    Message,
    TokenBudgetExceeded,
    TokenCounter,
)
from agent_core.store import decode_token_counts, store_from_url
from agent_core.tokens import Derived, _encodings, _window, complete_counts, select_window
from agent_core.tokens._window import _MAY_MATTER, _may_matter, _shape, token_index

from .conftest import CacheFactory

GPT4O = TokenCounter.for_model("gpt-4o")
GPT4 = TokenCounter.for_model("gpt-4")


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def system(text: str) -> dict[str, Any]:
    return {"role": "system", "content": text}


def call(call_id: str, *more: str) -> dict[str, Any]:
    calls = [
        {"id": i, "type": "function", "function": {"name": "lookup", "arguments": '{"q": 1}'}}
        for i in (call_id, *more)
    ]
    return {"role": "assistant", "content": None, "tool_calls": calls}


def result(call_id: str, text: str = "42") -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": text}


@pytest.fixture
def tokenizer_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text the exact tokenizer counts, in order."""
    calls: list[str] = []
    count = _encodings.BpeCounter.count

    def counting(self: _encodings.BpeCounter, text: str) -> int:
        calls.append(text)
        return count(self, text)

    monkeypatch.setattr(_encodings.BpeCounter, "count", counting)
    return calls


def billed(counter: TokenCounter, messages: list[dict[str, Any]], tools: Any = None) -> int:
    return counter.count_messages(messages, tools)


CHAT = [
    system("You are terse."),
    user("What is the capital of France?"),
    {"role": "assistant", "content": "Paris."},
    user("And its population, roughly?"),
    call("c1", "c2"),
    result("c1", "2.1 million in the city"),
    result("c2", "12 million in the metro area"),
    {"role": "assistant", "content": "About 2.1 million (12 million metro)."},
    {"role": "user", "content": "Thanks!", "name": "alice"},
]


# -- stored counts --------------------------------------------------------------------


async def test_append_stores_each_messages_count(
    make_cache: CacheFactory, store_url: str, namespace: str
) -> None:
    async with make_cache() as cache:
        await cache.append("t", CHAT)
    store = store_from_url(store_url)
    await store.open()
    try:
        records = await store.read(namespace, "t")
    finally:
        await store.close()
    stored = [decode_token_counts(t) for t in records.tokens]
    assert stored == [{"o200k_base": GPT4O.count_message(m)} for m in CHAT]


async def test_loading_never_retokenizes(
    make_cache: CacheFactory, tokenizer_calls: list[str]
) -> None:
    expected = billed(GPT4O, CHAT)
    async with make_cache() as writer:
        tokenizer_calls.clear()
        await writer.append("t", CHAT)
    assert tokenizer_calls, "append counts the messages"
    tokenizer_calls.clear()
    # Cold starts served by L2, then by the store (no Redis).
    for options in ({}, {"redis": None}):
        async with make_cache(**options) as cache:
            window = await cache.window("t", max_tokens=10_000, model="gpt-4o-2024-08-06")
            assert window.token_count == expected
            conversation = await cache.get("t")
            assert conversation.token_count("gpt-4o") == expected
            assert cache.stats().late_counts == 0
    assert tokenizer_calls == []


async def test_missing_encoding_is_counted_once_then_stored(
    make_cache: CacheFactory, tokenizer_calls: list[str]
) -> None:
    expected = billed(GPT4, CHAT)
    async with make_cache() as writer:  # counts o200k_base only
        await writer.append("t", CHAT)
        tokenizer_calls.clear()
        window = await writer.window("t", max_tokens=10_000, model="gpt-4")
        assert window.token_count == expected
        assert writer.stats().late_counts == len(CHAT)
        counted = len(tokenizer_calls)
        assert counted > 0
        await writer.window("t", max_tokens=10_000, model="gpt-4")
        assert len(tokenizer_calls) == counted
    tokenizer_calls.clear()
    for options in ({}, {"redis": None}):
        async with make_cache(**options) as cache:
            window = await cache.window("t", max_tokens=10_000, model="gpt-3.5-turbo")
            assert window.token_count == expected
            assert cache.stats().late_counts == 0
    assert tokenizer_calls == []


async def test_appends_extend_a_built_window_index(
    make_cache: CacheFactory, tokenizer_calls: list[str]
) -> None:
    async with make_cache() as cache:
        await cache.append("t", CHAT)
        await cache.window("t", max_tokens=50, model="gpt-4o")
        history = list(CHAT)
        for i in range(20):
            batch = [user(f"question {i} " * (i % 5 + 1)), call(f"x{i}"), result(f"x{i}")]
            history += batch
            await cache.append("t", batch)
            for budget in (40, 120, 400, 10_000):
                before = len(tokenizer_calls)
                window = await cache.window("t", max_tokens=budget, model="gpt-4o")
                assert len(tokenizer_calls) == before, "a window recounted stored messages"
                assert window.token_count == billed(GPT4O, window.to_list())
                assert window.token_count <= budget
                assert window.to_list() == _oracle(history, budget, GPT4O)
        assert cache.stats().late_counts == 0


async def test_rows_without_counts_are_counted_on_first_window(
    make_cache: CacheFactory, store_url: str, namespace: str
) -> None:
    store = store_from_url(store_url)
    await store.open()
    try:
        payloads = [Message.from_dict(m).raw for m in CHAT]
        await store.append(namespace, "t", payloads)  # another writer: no counts
        async with make_cache() as cache:
            window = await cache.window("t", max_tokens=10_000, model="gpt-4o")
            assert window.token_count == billed(GPT4O, CHAT)
            assert cache.stats().late_counts == len(CHAT)
        records = await store.read(namespace, "t")
        assert [decode_token_counts(t) for t in records.tokens] == [
            {"o200k_base": GPT4O.count_message(m)} for m in CHAT
        ]
    finally:
        await store.close()


async def test_token_models_choose_what_append_counts(
    make_cache: CacheFactory, tokenizer_calls: list[str]
) -> None:
    async with make_cache(token_models=("gpt-4o", "gpt-4", "gpt-4o-mini")) as cache:
        await cache.append("t", CHAT)
        tokenizer_calls.clear()
        for model in ("gpt-4o", "gpt-4"):
            await cache.window("t", max_tokens=10_000, model=model)
        assert tokenizer_calls == []
        assert cache.stats().late_counts == 0
    async with make_cache(token_models=()) as cache:
        await cache.append("u", CHAT)
        assert (await cache.window("u", max_tokens=10_000, model="gpt-4o")).token_count == billed(
            GPT4O, CHAT
        )


@pytest.mark.parametrize("models", ["gpt-4o", [""], [None], 3])
async def test_bad_token_models(make_cache: CacheFactory, models: Any) -> None:
    with pytest.raises(ConfigurationError, match="token_models"):
        async with make_cache(token_models=models):
            pass


# -- windows --------------------------------------------------------------------------


async def test_system_messages_stay_pinned(make_cache: CacheFactory) -> None:
    history = [system("Rules."), *(user(f"message {i}") for i in range(50))]
    async with make_cache() as cache:
        await cache.append("t", history)
        window = await cache.window("t", max_tokens=60, model="gpt-4o")
    assert window.to_list()[0] == system("Rules.")
    assert window.to_list()[1:] == history[-len(window.messages) + 1 :]
    assert window.omitted == len(history) - len(window.messages) > 0
    assert window.token_count == billed(GPT4O, window.to_list()) <= 60


async def test_a_tool_call_is_never_split_from_its_results(make_cache: CacheFactory) -> None:
    async with make_cache() as cache:
        await cache.append("t", CHAT)
        seen = set()
        for budget in range(1, 200):
            try:
                window = await cache.window("t", max_tokens=budget, model="gpt-4o")
            except TokenBudgetExceeded:
                continue
            kept = window.to_list()
            seen.add(len(kept))
            ids = {c["id"] for m in kept for c in m.get("tool_calls") or ()}
            assert all(m["tool_call_id"] in ids for m in kept if m["role"] == "tool")
            assert window.token_count == billed(GPT4O, kept) <= budget
        # The system message and a suffix: starting at either result (4 or 5 messages)
        # would split the call at CHAT[4] from them.
        assert seen == {2, 3, 6, 7, 8, 9}


async def test_tools_count_against_the_budget(make_cache: CacheFactory) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Look a city up.",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string", "description": "Its name"}},
                },
            },
        }
    ]
    async with make_cache() as cache:
        await cache.append("t", CHAT)
        window = await cache.window("t", max_tokens=10_000, model="gpt-4o", tools=tools)
    assert window.token_count == billed(GPT4O, CHAT, tools)


async def test_a_message_larger_than_the_budget_is_an_error(make_cache: CacheFactory) -> None:
    async with make_cache() as cache:
        await cache.append("t", [system("Rules."), user("word " * 500)])
        with pytest.raises(TokenBudgetExceeded) as raised:
            await cache.window("t", max_tokens=100, model="gpt-4o")
        needed = billed(GPT4O, [system("Rules."), user("word " * 500)])
        assert (raised.value.needed, raised.value.max_tokens) == (needed, 100)
        assert (await cache.window("t", max_tokens=needed, model="gpt-4o")).omitted == 0
        await cache.append("t", [call("c"), result("c", "answer " * 900)])
        with pytest.raises(TokenBudgetExceeded, match="tool call and its results"):
            await cache.window("t", max_tokens=needed, model="gpt-4o")
        with pytest.raises(TokenBudgetExceeded, match="pinned"):
            await cache.window("t", max_tokens=5, model="gpt-4o")


async def test_an_empty_thread_has_an_empty_window(make_cache: CacheFactory) -> None:
    async with make_cache() as cache:
        window = await cache.window("nothing", max_tokens=10, model="gpt-4o")
    assert (window.messages, window.token_count, window.omitted) == ((), 3, 0)


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"max_tokens": 0, "model": "gpt-4o"}, InvalidArgument),
        ({"max_tokens": True, "model": "gpt-4o"}, InvalidArgument),
        ({"max_tokens": 10.5, "model": "gpt-4o"}, InvalidArgument),
        ({"max_tokens": 10, "model": ""}, InvalidArgument),
        ({"max_tokens": 10, "model": None}, InvalidArgument),
        ({"max_tokens": 10, "model": "gpt-4o", "tools": [{"no": "name"}]}, InvalidArgument),
    ],
)
async def test_bad_window_arguments(
    make_cache: CacheFactory, arguments: dict[str, Any], error: type[Exception]
) -> None:
    async with make_cache() as cache:
        with pytest.raises(error):
            await cache.window("t", **arguments)
        with pytest.raises(InvalidArgument):
            await cache.window("", max_tokens=10, model="gpt-4o")


# -- the selection rule against a brute-force oracle ----------------------------------


def _oracle(history: list[dict[str, Any]], budget: int, counter: TokenCounter) -> Any:
    """The smallest start that fits, checked one start at a time."""
    size = len(history)
    for start in range(size):
        if _splits_a_call(history, start):
            continue
        chosen = [m for m in history[:start] if m.get("role") in ("system", "developer")]
        chosen += history[start:]
        if billed(counter, chosen) <= budget:
            return chosen
    return None


def _splits_a_call(history: list[dict[str, Any]], start: int) -> bool:
    calls_before = {
        c["id"] for m in history[:start] for c in (m.get("tool_calls") or ()) if "id" in c
    }
    return any(
        m.get("role") == "tool" and m.get("tool_call_id") in calls_before for m in history[start:]
    )


_texts = st.text(alphabet=st.sampled_from("ab 猫😀\n.,"), max_size=40)


@st.composite
def _histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    history: list[dict[str, Any]] = []
    for i in range(draw(st.integers(0, 25))):
        kind = draw(st.sampled_from(["user", "assistant", "system", "call", "named"]))
        if kind == "call":
            ids = [f"c{i}-{j}" for j in range(draw(st.integers(1, 3)))]
            history.append(call(*ids))
            history += [result(call_id, draw(_texts)) for call_id in ids]
        elif kind == "named":
            history.append({"role": "user", "name": "bob", "content": draw(_texts)})
        else:
            history.append({"role": kind, "content": draw(_texts)})
    return history


@settings(max_examples=300, deadline=None)
@given(history=_histories(), budget=st.integers(1, 400))
def test_window_equals_brute_force(history: list[dict[str, Any]], budget: int) -> None:
    conversation = Conversation("t", len(history), [Message.from_dict(m) for m in history])
    derived = Derived()
    index = token_index(conversation, GPT4O, derived)
    expected = _oracle(history, budget, GPT4O) if history else []
    if expected is None or budget < GPT4O.reply_priming:
        with pytest.raises(TokenBudgetExceeded) as raised:
            select_window(conversation, derived, index, GPT4O, budget, 0)
        assert raised.value.needed > budget
        return
    window = select_window(conversation, derived, index, GPT4O, budget, 0)
    assert window.to_list() == expected
    assert window.token_count == billed(GPT4O, window.to_list()) <= budget
    assert conversation.token_count("gpt-4o") == billed(GPT4O, history)


@pytest.mark.parametrize("model", ["meta-llama/Llama-3.1-8B-Instruct", "qwen2.5-7b", "claude-x"])
async def test_windows_for_other_model_families(make_cache: CacheFactory, model: str) -> None:
    counter = TokenCounter.for_model(model)
    async with make_cache(token_models=(model,)) as cache:
        await cache.append("t", CHAT)
        window = await cache.window("t", max_tokens=10_000, model=model)
        assert window.token_count == billed(counter, CHAT)
        assert cache.stats().late_counts == 0
        budget = billed(counter, [CHAT[0], *CHAT[-2:]])
        window = await cache.window("t", max_tokens=budget, model=model)
        assert window.to_list() == [CHAT[0], *CHAT[-2:]]
        assert window.token_count == budget


_PIECES = st.sampled_from([b"sys", b"tem", b"system", b"call", b"cal", b"l", b"\\", b"u", b"x"])


@settings(max_examples=200, deadline=None)
@given(payloads=st.lists(st.lists(_PIECES, max_size=6).map(b"".join), max_size=80))
def test_payloads_to_decode_are_found_as_one_search_per_payload_would(
    payloads: list[bytes],
) -> None:
    # Joined, a word must never be found across two payloads, nor one missed.
    expected = [i for i, raw in enumerate(payloads) if any(w in raw for w in _MAY_MATTER)]
    assert _may_matter(payloads) == expected


async def test_a_large_snapshot_is_read_off_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Few messages but many bytes: the shape is read in a worker thread, not on the loop."""
    threads: list[str] = []
    shape = _shape

    def recording(conversation: Conversation, derived: Derived) -> Any:
        threads.append(threading.current_thread().name)
        return shape(conversation, derived)

    monkeypatch.setattr(_window, "_shape", recording)
    big = [Message.from_dict(user("a tool call " * 2_000)) for _ in range(30)]  # 720 KB
    await complete_counts(Conversation("t", 30, big), GPT4O)
    assert threads[0] != threading.main_thread().name
