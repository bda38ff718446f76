"""Hostile input through the Python API (issue 11): only typed errors, nothing written behind one.

Hypothesis draws thread ids, idempotency keys, expected versions, messages, tools and token
budgets from generators of what breaks naive code: 10,000-deep nesting, ints far past 64 bits,
NaN and Infinity, lone surrogates, NUL, bytes, foreign objects. Every call either succeeds or
raises an `AgentCoreError` (never RecursionError, ValueError, TypeError or OverflowError raw);
a rejected append leaves the thread's version where it was; RSS stays bounded. Derandomized,
a few seconds: the HTTP side is in test_fuzz_http.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from agent_core import ConversationCache, TokenCounter
from agent_core.errors import AgentCoreError, MessageTooLarge

from ._fuzz import FUZZ, RSS_GROWTH_LIMIT, rss


def nested(depth: int, leaf: object = 1) -> object:
    value: object = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


class Foreign:
    """An object whose str blows up, as a hostile caller's might (hypothesis needs its repr)."""

    def __repr__(self) -> str:
        return "Foreign()"

    def __str__(self) -> str:
        raise RuntimeError("str called")

    def __format__(self, spec: str) -> str:
        raise RuntimeError("format called")


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63, max_value=2**200),
    st.builds(lambda: 10**5000),  # st.just would repr it: more than 4,300 digits
    st.floats(),  # NaN and the infinities included
    st.text(max_size=20),
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3),
    st.just("\x00"),
    st.just("x" * 10_000),
    st.binary(max_size=8),
    st.builds(Foreign),
)
deep = st.sampled_from([10, 600, 1_100, 10_000]).map(nested)
values = st.recursive(
    st.one_of(scalars, deep),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=6), children, max_size=3)
        | st.tuples(children)
    ),
    max_leaves=8,
)
ids = st.one_of(st.sampled_from(["t", "t:1", "a.b@c-d_e"]), values)
roles = st.sampled_from(["user", "assistant", "system", "tool", "function", "developer"])
messages = st.one_of(
    st.fixed_dictionaries(
        {"role": roles | values},
        optional={
            "content": values,
            "tool_calls": values,
            "tool_call_id": values,
            "name": values,
            "extra": values,
        },
    ),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["function_call", "function_call_output", "x"]) | values},
        optional={"call_id": values, "name": values, "arguments": values, "output": values},
    ),
    values,
)
batches = st.one_of(st.lists(messages, min_size=1, max_size=3), values)
tools = st.one_of(
    st.none(),
    values,
    st.lists(
        st.fixed_dictionaries(
            {"type": st.just("function"), "function": st.fixed_dictionaries({"name": values})},
            optional={"parameters": values},
        )
        | st.fixed_dictionaries(
            {
                "name": st.just("f"),
                "parameters": st.fixed_dictionaries(
                    {
                        "type": st.just("object"),
                        "properties": st.dictionaries(st.text(max_size=4), values, max_size=2),
                    }
                ),
            }
        ),
        max_size=2,
    ),
)


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as loop:
        yield loop


@pytest.fixture(scope="module")
def cache(
    runner: asyncio.Runner, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ConversationCache]:
    path: Path = tmp_path_factory.mktemp("fuzz") / "a.db"
    opened = ConversationCache.from_urls(
        f"sqlite:///{path}", namespace="fuzz", token_models=("gpt-4o",)
    )
    runner.run(opened.open())
    try:
        yield opened
    finally:
        runner.run(opened.close())


@pytest.fixture(scope="module", autouse=True)
def bounded_rss() -> Iterator[None]:
    before = rss()
    yield
    grown = rss() - before
    assert grown < RSS_GROWTH_LIMIT, f"RSS grew by {grown >> 20} MiB over the fuzz run"


def typed_or_none(call: Any) -> AgentCoreError | None:
    error: AgentCoreError | None = None
    try:
        call()
    except AgentCoreError as exc:
        error = exc
    assert error is None or len(str(error)) < 2_000, str(error)[:300]
    return error


@FUZZ
@given(
    thread_id=ids,
    batch=batches,
    expected=st.one_of(st.none(), values),
    key=st.one_of(st.none(), values),
)
@example(
    thread_id="t", batch=[{"role": "user", "content": "x" * (50 << 20)}], expected=None, key=None
)
@example(
    thread_id=nested(10_000), batch=[{"role": "user", "content": "hi"}], expected=None, key=None
)
@example(
    thread_id="t", batch=[{"role": "user", "content": "hi"}], expected=nested(10_000), key=None
)
@example(
    thread_id="t", batch=[{"role": "user", "content": "hi"}], expected=None, key=nested(10_000)
)
def test_append(
    runner: asyncio.Runner,
    cache: ConversationCache,
    thread_id: object,
    batch: object,
    expected: object,
    key: object,
) -> None:
    before = runner.run(cache.get("t")).version

    def append() -> None:
        runner.run(cache.append(thread_id, batch, expected_version=expected, idempotency_key=key))  # type: ignore[arg-type]

    error = typed_or_none(append)
    if (
        isinstance(batch, list)
        and batch
        and isinstance(batch[0], dict)
        and isinstance(batch[0].get("content"), str)
        and len(batch[0]["content"]) > (1 << 20)
    ):
        assert isinstance(error, MessageTooLarge)
    if error is not None:
        assert runner.run(cache.get("t")).version == before


@FUZZ
@given(
    thread_id=ids,
    tool_list=tools,
    max_tokens=st.one_of(st.integers(min_value=1, max_value=10**6), values),
)
@example(thread_id="t", tool_list=nested(10_000), max_tokens=100)
@example(thread_id="t", tool_list=[nested(10_000)], max_tokens=100)
def test_reads_and_windows(
    runner: asyncio.Runner,
    cache: ConversationCache,
    thread_id: object,
    tool_list: object,
    max_tokens: object,
) -> None:
    typed_or_none(lambda: runner.run(cache.get(thread_id)))  # type: ignore[arg-type]
    typed_or_none(
        lambda: runner.run(
            cache.window(thread_id, model="gpt-4o", max_tokens=max_tokens, tools=tool_list)  # type: ignore[arg-type]
        )
    )
    if thread_id != "t":  # "t" is test_append's thread, whose version it checks
        typed_or_none(lambda: runner.run(cache.delete(thread_id)))  # type: ignore[arg-type]


@FUZZ
@given(batch=batches, tool_list=tools)
@example(batch=[{"role": "user", "content": nested(10_000)}], tool_list=None)
@example(batch=[{"role": "user", "content": "hi"}], tool_list=nested(10_000))
def test_token_counter(batch: object, tool_list: object) -> None:
    counter = TokenCounter.for_model("gpt-4o")
    typed_or_none(lambda: counter.count_messages(batch, tools=tool_list))  # type: ignore[arg-type]
