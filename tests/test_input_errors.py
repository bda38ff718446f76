"""Errors quote bad input safely and briefly (issue 11, defect 5).

A 10,000-deep list, an int of 10,000 digits or a 10,000-character string passed where an id,
key, version or tool list belongs gets a short typed error: never RecursionError or
ValueError from ``repr()``, never the whole value echoed back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from agent_core import ConversationCache, OpenAIChatModel, RateLimits, TokenCounter
from agent_core._quote import MAX_QUOTE, quote
from agent_core.errors import AgentCoreError, ConfigurationError, InvalidArgument
from agent_core.observe import LoopLagMonitor


def deep_list(depth: int = 10_000) -> list[Any]:
    root: list[Any] = []
    current = root
    for _ in range(depth):
        inner: list[Any] = []
        current.append(inner)
        current = inner
    return root


DEEP = deep_list()
HUGE_INT = 10**10_000
LONG = "x" * 10_000
USER = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    "value",
    [DEEP, HUGE_INT, -HUGE_INT, LONG, LONG.encode(), {LONG: DEEP}, (DEEP,) * 100, object()],
    ids=["deep", "huge_int", "negative_int", "long", "bytes", "dict", "tuple", "object"],
)
def test_quote_is_short_for_any_value(value: object) -> None:
    assert len(quote(value)) <= MAX_QUOTE


def test_quote_shows_small_values_as_repr_does() -> None:
    for value in ("abc", 5, -1.5, None, True, [1, "a"], {"a": [1, 2]}, (1,)):
        assert quote(value) == repr(value)


Call = Callable[[ConversationCache, Any], Awaitable[object]]
CALLS: dict[str, Call] = {
    "thread_id": lambda cache, bad: cache.append(bad, USER),
    "idempotency_key": lambda cache, bad: cache.append("t", USER, idempotency_key=bad),
    "expected_version": lambda cache, bad: cache.append("t", USER, expected_version=bad),
    "get": lambda cache, bad: cache.get(bad),
    "delete": lambda cache, bad: cache.delete(bad),
    "tools": lambda cache, bad: cache.window("t", model="gpt-4o", max_tokens=100, tools=bad),
    "tool": lambda cache, bad: cache.window("t", model="gpt-4o", max_tokens=100, tools=[bad]),
    "max_tokens": lambda cache, bad: cache.window("t", model="gpt-4o", max_tokens=bad),
    "content": lambda cache, bad: cache.append("t", [{"role": "user", "content": [bad]}]),
    "message": lambda cache, bad: cache.append("t", [bad]),
    "role": lambda cache, bad: cache.append("t", [{"role": bad, "content": "hi"}]),
}


@pytest.mark.parametrize("where", sorted(CALLS))
@pytest.mark.parametrize("bad", [DEEP, HUGE_INT, LONG], ids=["deep", "huge_int", "long"])
async def test_bad_input_gets_a_short_typed_error(sqlite_url: str, where: str, bad: object) -> None:
    async with ConversationCache.from_urls(sqlite_url, namespace="quote") as cache:
        with pytest.raises(AgentCoreError) as caught:
            await CALLS[where](cache, bad)
        assert len(str(caught.value)) < 400, str(caught.value)[:500]
        assert (await cache.get("t")).version == 0


@pytest.mark.parametrize("bad", [DEEP, HUGE_INT, LONG], ids=["deep", "huge_int", "long"])
def test_token_counter_tools_never_raise_untyped(bad: object) -> None:
    counter = TokenCounter.for_model("gpt-4o")
    schema = {"type": bad, "description": bad, "enum": [bad, 1]}
    tools = [{"name": "f", "parameters": {"type": "object", "properties": {"a": schema}}}]
    assert counter.count_messages(USER, tools=tools) > 0
    with pytest.raises(AgentCoreError) as caught:
        counter.count_messages(USER, tools=bad)  # type: ignore[arg-type]
    assert len(str(caught.value)) < 400


def _cache_with(**options: Any) -> Callable[[], object]:
    return lambda: ConversationCache.from_urls(store="sqlite:///unused.db", **options)


@pytest.mark.parametrize(
    ("make", "error", "says"),
    [
        (
            _cache_with(l1_ttl=0),
            ConfigurationError,
            "l1_ttl must be a finite number of seconds, more than 0, got 0",
        ),
        (_cache_with(redis_timeout=True), ConfigurationError, "redis_timeout must be a finite"),
        (
            _cache_with(lease_ttl=-1),
            ConfigurationError,
            "lease_ttl must be a finite number of seconds, 0 or more (0 disables), got -1",
        ),
        (
            _cache_with(max_staleness=3601),
            ConfigurationError,
            "at most 3600 (bounded mode's bound), got 3601",
        ),
        (
            lambda: RateLimits(max_wait=float("nan")),
            ConfigurationError,
            "max_wait must be a finite number of seconds, 0 or more, got nan",
        ),
        (
            lambda: OpenAIChatModel("gpt-4o", api_key="k", timeout=float("inf")),
            InvalidArgument,
            "timeout must be a finite number of seconds, more than 0, got inf",
        ),
        (
            lambda: LoopLagMonitor(interval=HUGE_INT),
            InvalidArgument,
            "interval must be a number of seconds >= ",
        ),
    ],
    ids=["l1_ttl", "bool", "lease_ttl", "max_staleness", "max_wait", "openai_timeout", "loop_lag"],
)
def test_seconds_options_share_one_check(
    make: Callable[[], object], error: type[AgentCoreError], says: str
) -> None:
    # One check (_validation.check_seconds) behind every option in seconds: finite, not a
    # bool, in range, and the message names the option and the range.
    with pytest.raises(error) as caught:
        make()
    assert says in str(caught.value)
