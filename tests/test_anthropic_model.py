"""AnthropicChatModel against a local server that speaks Anthropic's Messages API.

The server (tests/_anthropic_server.py) is a real HTTP server on a loopback port that
checks requests as the API does; nothing of agent-core or httpx is mocked, and no test
reaches a real provider.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from agent_core import (
    SUMMARY_NAME,
    AnthropicChatModel,
    ChatModel,
    Completion,
    ConfigurationError,
    ConversationCache,
    InvalidArgument,
    Message,
    ModelError,
    StreamEvent,
    TokenCounter,
    Usage,
)

from ._anthropic_server import (
    API_KEY,
    COUNT_PATH,
    MESSAGE_STOP,
    PING,
    SERVED_MODEL,
    AnthropicServer,
    block_start,
    block_stop,
    error_body,
    error_event,
    frames,
    json_delta,
    message_body,
    message_delta,
    message_start,
    text,
    text_delta,
    tool_use,
    usage,
)
from ._chat_server import Drop, Reply, Stream
from .test_chat_models import drain, gaps

MODEL = "claude-sonnet-4-5"
EPHEMERAL = {"type": "ephemeral"}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "Current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
ANTHROPIC_TOOLS = [
    {
        "name": "weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        "description": "Current weather in a city",
    }
]
CALL = {
    "id": "toolu_01",
    "type": "function",
    "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
}


def m(role: str, content: Any = None, **fields: Any) -> Message:
    return Message.from_dict({"role": role, "content": content, **fields})


MESSAGES = [m("system", "Be brief."), m("user", "Hello, Claude")]


@pytest.fixture
def server() -> Iterator[AnthropicServer]:
    with AnthropicServer() as running:
        yield running


def make_model(server: AnthropicServer, **options: Any) -> AnthropicChatModel:
    settings: dict[str, Any] = {"base_url": server.base_url, "api_key": API_KEY, "backoff": 0.01}
    return AnthropicChatModel(MODEL, **(settings | options))


@pytest.fixture
async def model(server: AnthropicServer) -> AsyncIterator[AnthropicChatModel]:
    async with make_model(server) as made:
        yield made


def sent(server: AnthropicServer, index: int = -1) -> dict[str, Any]:
    """The body of a Messages request the server got."""
    body: dict[str, Any] = server.calls()[index].json()
    return body


def marked(body: dict[str, Any]) -> list[str]:
    """Where a body's cache breakpoints are: "system[i]" or "messages[t][b]"."""
    places = [f"system[{i}]" for i, b in enumerate(body.get("system", [])) if "cache_control" in b]
    for t, turn in enumerate(body["messages"]):
        for b, block in enumerate(turn["content"]):
            if "cache_control" in block:
                assert block["cache_control"] == EPHEMERAL
                places.append(f"messages[{t}][{b}]")
    return places


# Requests and replies


async def test_complete_sends_a_messages_request_and_reads_the_reply(
    server: AnthropicServer, model: AnthropicChatModel
) -> None:
    server.script(Reply(body=message_body(text("Hello!"), used=usage(12, 3))))
    completion = await model.complete(MESSAGES)

    [request] = server.requests
    assert (request.method, request.path) == ("POST", "/v1/messages")
    assert request.headers["x-api-key"] == API_KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.headers["content-type"] == "application/json"
    assert "authorization" not in request.headers
    assert request.json() == {
        "model": MODEL,
        "max_tokens": 4096,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": EPHEMERAL}],
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hello, Claude", "cache_control": EPHEMERAL}],
            }
        ],
    }
    assert completion == Completion(
        message={"role": "assistant", "content": "Hello!"},
        text="Hello!",
        usage=Usage(12, 3, 15),
        finish_reason="stop",
        model=SERVED_MODEL,
        raw=completion.raw,
    )
    assert completion.raw is not None
    assert completion.raw.startswith(b'{"id": "msg_local"')


async def test_usage_counts_the_prompt_cache(
    server: AnthropicServer, model: AnthropicChatModel
) -> None:
    used = usage(12, 7, written=100, read=2000)
    server.script(Reply(body=message_body(text("ok"), used=used)))
    completion = await model.complete(MESSAGES, max_tokens=50)
    assert completion.usage == Usage(
        prompt_tokens=2112,
        completion_tokens=7,
        total_tokens=2119,
        cached_tokens=2000,
        cache_write_tokens=100,
    )
    assert sent(server)["max_tokens"] == 50


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "pause_turn"),
    ],
)
async def test_stop_reasons_map_to_finish_reasons(
    server: AnthropicServer, model: AnthropicChatModel, stop_reason: str, finish_reason: str
) -> None:
    server.script(Reply(body=message_body(text("x"), stop_reason=stop_reason)))
    assert (await model.complete(MESSAGES)).finish_reason == finish_reason


async def test_a_tool_use_round_trip_through_a_conversation_cache(
    server: AnthropicServer, model: AnthropicChatModel, tmp_path: Path
) -> None:
    reply = message_body(
        text("Let me check."),
        tool_use("toolu_01", "weather", {"city": "Paris"}),
        stop_reason="tool_use",
    )
    server.script(Reply(body=reply), Reply(body=message_body(text("18 °C in Paris."))))
    async with ConversationCache.from_urls(store=f"sqlite:///{tmp_path}/threads.db") as cache:
        await cache.append("t", [{"role": "system", "content": "Be brief."}])
        await cache.append("t", [{"role": "user", "content": "Weather in Paris?"}])
        first = await model.complete((await cache.get("t")).messages, tools=TOOLS)
        assert first.finish_reason == "tool_calls"
        assert first.message == {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [CALL],
        }
        assert first.tool_calls == [CALL]
        await cache.append(
            "t",
            [first.message, {"role": "tool", "tool_call_id": "toolu_01", "content": "18 °C"}],
        )
        second = await model.complete((await cache.get("t")).messages, tools=TOOLS)
    assert second.text == "18 °C in Paris."
    body = sent(server)
    assert body["tools"] == ANTHROPIC_TOOLS
    # Breakpoints: the previous request's end (the question) and the final turn.
    assert body["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Weather in Paris?", "cache_control": EPHEMERAL}],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check."},
                {
                    "type": "tool_use",
                    "id": "toolu_01",
                    "name": "weather",
                    "input": {"city": "Paris"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01",
                    "content": [{"type": "text", "text": "18 °C"}],
                    "cache_control": EPHEMERAL,
                }
            ],
        },
    ]


async def test_a_reply_of_only_tool_calls_has_no_content(
    server: AnthropicServer, model: AnthropicChatModel
) -> None:
    server.script(
        Reply(body=message_body(tool_use("toolu_01", "weather", {}), stop_reason="tool_use"))
    )
    completion = await model.complete(MESSAGES, tools=TOOLS)
    assert completion.message == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "toolu_01",
                "type": "function",
                "function": {"name": "weather", "arguments": "{}"},
            }
        ],
    }
    assert completion.text == ""


async def test_images_become_image_blocks(
    server: AnthropicServer, model: AnthropicChatModel
) -> None:
    parts = [
        {"type": "text", "text": "What are these?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    server.script(Reply(body=message_body(text("A pixel and a cat."))))
    await model.complete([m("user", parts)], cache_key="thread-1")
    assert sent(server)["messages"][0]["content"] == [
        {"type": "text", "text": "What are these?"},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        },
        {
            "type": "image",
            "source": {"type": "url", "url": "https://example.com/cat.jpg"},
            "cache_control": EPHEMERAL,
        },
    ]


async def test_options_and_environment(
    server: AnthropicServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url + "/")
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    server.script(Reply(body=message_body(text("ok"))))
    extra = {"temperature": 0.2, "tool_choice": {"type": "auto"}}
    headers = {"Anthropic-Beta": "context-1m-2025-08-07"}
    async with AnthropicChatModel(MODEL, extra_body=extra, headers=headers) as model:
        assert model.url == server.base_url + "/v1/messages"
        extra["temperature"] = 1.0  # a copy was taken
        await model.complete(MESSAGES, tools=TOOLS, max_tokens=7)
    [request] = server.requests
    assert request.headers["x-api-key"] == API_KEY
    assert request.headers["anthropic-beta"] == "context-1m-2025-08-07"
    body = request.json()
    assert (body["temperature"], body["tool_choice"], body["max_tokens"]) == (
        0.2,
        {"type": "auto"},
        7,
    )
    assert list(body) == [
        "model",
        "max_tokens",
        "system",
        "messages",
        "tools",
        "temperature",
        "tool_choice",
    ]


async def test_anthropics_api_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="ANTHROPIC_API_KEY"):
        AnthropicChatModel(MODEL)
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    async with AnthropicChatModel(MODEL) as model:
        assert model.url == "https://api.anthropic.com/v1/messages"
        assert isinstance(model, ChatModel)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "api.anthropic.com")
    with pytest.raises(ConfigurationError, match="ANTHROPIC_BASE_URL"):
        AnthropicChatModel(MODEL)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"model": ""}, "model"),
        ({"timeout": 0}, "timeout"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_retry_after": float("inf")}, "max_retry_after"),
        ({"base_url": "ftp://example.com"}, "base_url"),
        ({"base_url": "http://example.com?x=1"}, "query"),
        ({"api_key": "sk-ant secret with spaces"}, "api_key"),
        ({"extra_body": {"system": "Be brief."}}, "extra_body may not set system"),
        ({"extra_body": {"max_tokens": 10}}, "max_tokens"),
        ({"extra_body": {"stream": True}}, "stream"),
        ({"headers": {"X-Id": 1}}, "headers"),
        ({"cache_breakpoints": "sometimes"}, "cache_breakpoints"),
        ({"cache_breakpoints": [0, 1]}, "cache_breakpoints"),
        ({"exact_online": "yes"}, "exact_online"),
    ],
)
def test_constructor_checks_its_arguments(options: dict[str, Any], match: str) -> None:
    settings = {"model": MODEL, "base_url": "http://127.0.0.1:1", "api_key": API_KEY} | options
    with pytest.raises(InvalidArgument, match=match) as info:
        AnthropicChatModel(**settings)
    assert "secret" not in str(info.value)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        ({"messages": []}, "empty"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "Message.from_dict"),
        ({"messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
        ({"messages": MESSAGES, "cache_key": ""}, "cache_key"),
        ({"messages": MESSAGES, "cache_key": "a\nb"}, "cache_key"),
        ({"messages": MESSAGES, "tools": [{"type": "web_search"}]}, r"tools\[0\] must be"),
        ({"messages": [m("system", "only a prompt")]}, "user or assistant message"),
        (
            {"messages": [m("user", [{"type": "image_url", "image_url": {"url": "x.png"}}])]},
            r"messages\[0\]: an image_url part needs",
        ),
        (
            {
                "messages": [
                    m(
                        "user",
                        [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}],
                    )
                ]
            },
            "text and image_url parts, got a 'input_audio' part",
        ),
    ],
)
async def test_calls_are_checked_before_sending(
    server: AnthropicServer, model: AnthropicChatModel, call: dict[str, Any], match: str
) -> None:
    with pytest.raises(InvalidArgument, match=match):
        await model.complete(**call)
    with pytest.raises(InvalidArgument, match=match):
        model.stream(**call)
    assert server.requests == []


async def test_closed_model_refuses_calls(server: AnthropicServer) -> None:
    model = make_model(server)
    await model.aclose()
    with pytest.raises(ModelError, match="closed"):
        await model.complete(MESSAGES)
    assert server.requests == []


# Errors and retries


async def test_429_waits_as_long_as_retry_after_says(server: AnthropicServer) -> None:
    limited = Reply(
        429, error_body("rate_limit_error", "Number of requests exceeded"), {"retry-after": "0.2"}
    )
    server.script(limited, Reply(body=message_body(text("ok"))))
    # A backoff of 5 s would show if retry-after were ignored.
    async with make_model(server, backoff=5.0) as model:
        assert (await model.complete(MESSAGES)).text == "ok"
    assert len(server.requests) == 2
    assert all(0.2 <= gap < 1.5 for gap in gaps(server)), gaps(server)
    assert len({r.body for r in server.requests}) == 1


async def test_529_overloaded_is_retried(
    server: AnthropicServer, model: AnthropicChatModel
) -> None:
    overloaded = Reply(529, error_body("overloaded_error", "Overloaded"))
    server.script(overloaded, Drop(), Reply(body=message_body(text("ok"))))
    assert (await model.complete(MESSAGES)).text == "ok"
    assert len(server.requests) == 3

    server.script(*[overloaded] * 2)
    async with make_model(server, max_retries=1) as once:
        with pytest.raises(ModelError, match="overloaded; retry later") as info:
            await once.complete(MESSAGES)
    error = info.value
    assert (error.status, error.error_type, error.retryable, error.attempts) == (
        529,
        "overloaded_error",
        True,
        2,
    )
    assert "gave up after 2 attempts" in str(error)


async def test_a_refused_request_says_why(
    server: AnthropicServer, model: AnthropicChatModel
) -> None:
    # The server refuses a tool result that answers no call, as the API does.
    messages = [
        m("user", "hi"),
        m("assistant", "Let me check."),
        m("tool", "late", tool_call_id="x"),
    ]
    with pytest.raises(
        ModelError, match=r"400 \(invalid_request_error\): .*unexpected `tool_use_id`"
    ) as info:
        await model.complete(messages)
    assert (info.value.retryable, len(server.requests)) == (False, 1)
    assert "request-id req_local" in str(info.value)


async def test_401_says_to_check_the_key(server: AnthropicServer) -> None:
    secret = "sk-ant-api03-not-the-right-one"
    async with make_model(server, api_key=secret) as model:
        with pytest.raises(ModelError, match="check ANTHROPIC_API_KEY") as info:
            await model.complete(MESSAGES)
    assert (info.value.status, info.value.error_type) == (401, "authentication_error")
    assert secret not in str(info.value)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"[]", "not an object"),
        (b'{"content": "hi"}', "no content list"),
        (b'{"content": [{"type": "text"}]}', "text block without text"),
        (b'{"content": [{"type": "tool_use", "id": "t", "name": "f", "input": "x"}]}', "tool_use"),
        (b'{"content": [], "usage": {"input_tokens": "3"}}', "usage"),
    ],
)
async def test_unreadable_answers_raise(
    server: AnthropicServer, model: AnthropicChatModel, body: bytes, match: str
) -> None:
    server.script(Reply(body=body))
    with pytest.raises(ModelError, match=match) as info:
        await model.complete(MESSAGES)
    assert (info.value.error_type, info.value.retryable) == ("invalid_response", False)
    assert "Anthropic's API" in str(info.value)


# Streaming


STREAMED = [
    message_start(usage(20, 1, read=100)),
    block_start(0, text("")),
    PING,
    text_delta(0, "Hel"),
    text_delta(0, "lo"),
    block_stop(0),
    block_start(1, tool_use("toolu_01", "weather", {})),
    json_delta(1, ""),
    json_delta(1, '{"city":'),
    json_delta(1, '"Paris"}'),
    block_stop(1),
    message_delta("tool_use", 9),
    MESSAGE_STOP,
]


async def test_stream_yields_text_then_the_completion(
    server: AnthropicServer, model: AnthropicChatModel
) -> None:
    server.script(Stream(STREAMED))
    stream = model.stream(MESSAGES, tools=TOOLS)
    events = await drain(stream)
    assert events[:-1] == ["Hel", "lo"]
    assert events[-1] is stream.completion
    assert stream.completion == Completion(
        message={"role": "assistant", "content": "Hello", "tool_calls": [CALL]},
        text="Hello",
        usage=Usage(120, 9, 129, cached_tokens=100),
        finish_reason="tool_calls",
        model=SERVED_MODEL,
    )
    [request] = server.requests
    assert request.headers["accept"] == "text/event-stream"
    assert request.json()["stream"] is True


async def test_stream_retries_until_it_starts(
    server: AnthropicServer, model: AnthropicChatModel
) -> None:
    server.script(Reply(529, error_body("overloaded_error", "Overloaded")), Stream(STREAMED))
    assert (await drain(model.stream(MESSAGES)))[:-1] == ["Hel", "lo"]
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    ("failure", "match", "error_type", "retryable"),
    [
        (
            error_event("overloaded_error", "Overloaded"),
            "overloaded_error: Overloaded",
            "overloaded_error",
            True,
        ),
        (
            error_event("invalid_request_error", "Bad"),
            "invalid_request_error: Bad",
            "invalid_request_error",
            False,
        ),
        (None, "ended before message_stop", "connection_error", True),
        (
            b"event: content_block_delta\ndata: {oops\n\n",
            "malformed JSON",
            "invalid_response",
            False,
        ),
    ],
)
async def test_stream_failures_after_the_start_raise(
    server: AnthropicServer,
    model: AnthropicChatModel,
    failure: Any,
    match: str,
    error_type: str,
    retryable: bool,
) -> None:
    events = [message_start(usage()), block_start(0, text("")), text_delta(0, "par")]
    server.script(Stream(events if failure is None else [*events, failure]))
    received: list[StreamEvent] = []
    with pytest.raises(ModelError, match=match) as info:
        await drain(model.stream(MESSAGES), received)
    assert received == ["par"]
    assert (info.value.error_type, info.value.retryable) == (error_type, retryable)
    assert len(server.requests) == 1


async def test_a_stalled_stream_times_out(server: AnthropicServer) -> None:
    # The hour-long gap ends when the server stops; only the timeout can end it sooner.
    first = frames(message_start(usage()), block_start(0, text("")))
    server.script(Stream([first, PING], gap=3600.0))
    received: list[StreamEvent] = []
    async with make_model(server, timeout=0.3) as model:
        with pytest.raises(ModelError, match=r"stalled for 0\.3 s") as info:
            await drain(model.stream(MESSAGES), received)
    assert (info.value.error_type, info.value.retryable) == ("timeout", True)
    assert received == []


async def test_leaving_a_stream_early_releases_it(
    server: AnthropicServer, model: AnthropicChatModel
) -> None:
    first = frames(message_start(usage()), block_start(0, text("")), text_delta(0, "a"))
    server.script(
        Stream([first, text_delta(0, "b")], gap=3600.0), Reply(body=message_body(text("next")))
    )
    # Not released, the stream would wait out the hour-long gap: a generous deadline.
    async with asyncio.timeout(60), model.stream(MESSAGES) as stream:
        async for event in stream:
            assert event == "a"
            break
    assert (await model.complete(MESSAGES)).text == "next"


# Prompt-cache breakpoints


def thread(*, summary: bool = True, late_system: bool = False) -> list[Message]:
    """A thread as BaseAgent sends it: prompt, context file, summary, turns with tool calls."""
    messages = [
        m("system", "You are terse."),
        m("system", '<file path="NOTES.md">\nnotes\n</file>'),
    ]
    if summary:
        messages.append(m("system", "Earlier: the user asked about Rome.", name=SUMMARY_NAME))
    messages += [
        m("user", "Weather in Paris?"),
        m("assistant", None, tool_calls=[CALL]),
        m("tool", "18 °C", tool_call_id="toolu_01"),
        m("assistant", "18 °C."),
        m("user", "And tomorrow?"),
    ]
    if late_system:
        messages.insert(-1, m("developer", "Answer in one line."))
    return messages


async def breakpoints(
    server: AnthropicServer, messages: Sequence[Message], **options: Any
) -> list[str]:
    server.script(Reply(body=message_body(text("ok"))))
    async with make_model(server, **options) as model:
        await model.complete(messages, tools=TOOLS)
    return marked(sent(server))


async def test_auto_breakpoints(server: AnthropicServer) -> None:
    # System prompt proper (before the summary), the summary, the previous request's end
    # (the tool result's turn), the final turn.
    assert await breakpoints(server, thread()) == [
        "system[1]",
        "system[2]",
        "messages[2][0]",
        "messages[4][0]",
    ]
    body = sent(server)
    assert body["system"][2]["text"].startswith("Earlier:")
    assert body["messages"][2]["content"][0]["type"] == "tool_result"
    # Without a summary: three.
    assert await breakpoints(server, thread(summary=False)) == [
        "system[1]",
        "messages[2][0]",
        "messages[4][0]",
    ]
    # A system message after the summary: the last system block is the prompt's end.
    assert await breakpoints(server, thread(late_system=True)) == [
        "system[2]",
        "system[3]",
        "messages[2][0]",
        "messages[4][0]",
    ]
    assert sent(server)["system"][3]["text"] == "Answer in one line."
    # A summary alone: no prompt before it.
    summary_only = [m("system", "Earlier: hello.", name=SUMMARY_NAME), m("user", "hi")]
    assert await breakpoints(server, summary_only) == ["system[0]", "messages[0][0]"]
    # One user message: the final turn only.
    assert await breakpoints(server, [m("user", "hi")]) == ["messages[0][0]"]


async def test_the_previous_requests_end_is_marked_again(server: AnthropicServer) -> None:
    first = thread()[:4]
    await breakpoints(server, first)
    second = [*first, m("assistant", "Sunny."), m("user", "Thanks!")]
    assert await breakpoints(server, second) == [
        "system[1]",
        "system[2]",
        "messages[0][0]",
        "messages[2][0]",
    ]
    # The first request's last turn is in the second, cache_control and all.
    assert sent(server, 1)["messages"][0] == sent(server, 0)["messages"][-1]


async def test_breakpoints_off(server: AnthropicServer) -> None:
    assert await breakpoints(server, thread(), cache_breakpoints="off") == []
    assert await breakpoints(server, thread(), cache_breakpoints=None) == []
    assert b"cache_control" not in server.calls()[-1].body


async def test_breakpoints_chosen_by_a_function(server: AnthropicServer) -> None:
    seen: list[Sequence[Message]] = []

    def choose(messages: Sequence[Message]) -> list[int]:
        seen.append(messages)
        return [0, 3, 5, -1, 3]

    messages = thread()
    assert await breakpoints(server, messages, cache_breakpoints=choose) == [
        "system[0]",
        "messages[0][0]",
        "messages[2][0]",
        "messages[4][0]",
    ]
    assert seen == [messages]


@pytest.mark.parametrize(
    ("chosen", "match"),
    [
        ([0, 1, 2, 3, 7], "marks 5 places; Anthropic takes at most 4"),
        ([8], "index 8 for 8 messages"),
        ([-9], "index -9"),
        (["0"], "ints"),
        ([True], "ints"),
        (None, "an iterable of message indexes"),
    ],
)
async def test_bad_breakpoints_are_refused(
    server: AnthropicServer, chosen: Any, match: str
) -> None:
    async with make_model(server, cache_breakpoints=lambda messages: chosen) as model:
        with pytest.raises(InvalidArgument, match=match):
            await model.complete(thread())
    assert server.requests == []


async def test_a_breakpoint_on_a_message_without_blocks_is_refused(server: AnthropicServer) -> None:
    messages = [m("user", "hi"), m("assistant", "  "), m("user", "there")]
    async with make_model(server, cache_breakpoints=lambda _: [1]) as model:
        with pytest.raises(InvalidArgument, match=r"messages\[1\], which converts to no"):
            await model.complete(messages)


async def test_the_same_messages_make_the_same_bytes(server: AnthropicServer) -> None:
    dicts = [message.to_dict() for message in thread()]
    server.script(*[Reply(body=message_body(text("ok")))] * 3, *[Stream(STREAMED)] * 2)
    async with make_model(server) as model, make_model(server) as other:
        await model.complete(thread(), tools=TOOLS, cache_key="t-1")
        await model.complete([Message.from_dict(d) for d in dicts], tools=TOOLS)
        await other.complete(thread(), tools=[dict(tool) for tool in TOOLS])
        await drain(model.stream(thread(), tools=TOOLS))
        await drain(other.stream(thread(), tools=TOOLS))
    bodies = [request.body for request in server.calls()]
    assert len(set(bodies[:3])) == 1
    assert len(set(bodies[3:])) == 1
    assert bodies[3] == bodies[0][:-1] + b',"stream":true}'


# Counting


def counted_thread() -> list[Message]:
    return [
        m("system", "You are terse."),
        m("developer", "Answer in one line."),
        m("user", "Weather in Paris and Rome?"),
        m("user", [{"type": "text", "text": "Both, please."}]),
        m(
            "assistant",
            "Checking.",
            tool_calls=[
                CALL,
                {
                    **CALL,
                    "id": "toolu_02",
                    "function": {"name": "weather", "arguments": '{"city": "Rome"}'},
                },
            ],
        ),
        m("tool", "18 C, sunny", tool_call_id="toolu_01"),
        m("tool", [{"type": "text", "text": "21 C"}], tool_call_id="toolu_02"),
        m("user", "Thanks, summarise."),
    ]


async def whole_count(server: AnthropicServer, messages: list[Message]) -> int:
    """The count of the whole request in one call, for comparison."""
    return await TokenCounter.for_model(MODEL).count_messages_online(
        messages, TOOLS, api_key=API_KEY, base_url=server.base_url
    )


async def test_exact_online_counts_each_message_once(server: AnthropicServer) -> None:
    messages = counted_thread()
    async with make_model(server, exact_online=True) as model:
        assert model.exact_online
        composed = await model.count_tokens(messages, TOOLS)
        first_requests = len(server.calls(COUNT_PATH))
        assert composed == await whole_count(server, messages)
        # Eight messages with blocks and the tools, and seven fixed requests measured once.
        assert first_requests == 9 + 7

        before = len(server.calls(COUNT_PATH))
        assert await model.count_tokens(messages, TOOLS) == composed
        assert len(server.calls(COUNT_PATH)) == before  # all cached

        grown = [*messages, m("assistant", "Paris 18 C, Rome 21 C."), m("user", "Tomorrow?")]
        before = len(server.calls(COUNT_PATH))
        composed = await model.count_tokens(grown, TOOLS)
        assert len(server.calls(COUNT_PATH)) == before + 2  # only the new messages
        assert composed == await whole_count(server, grown)
    assert server.calls() == []  # no Messages request


async def test_counts_are_offline_estimates_without_exact_online(server: AnthropicServer) -> None:
    messages = counted_thread()
    async with make_model(server) as model:
        assert not model.exact_online
        expected = TokenCounter.for_model(MODEL).count_messages(messages, TOOLS)
        assert await model.count_tokens(messages, TOOLS) == expected
    assert server.requests == []


async def test_a_failing_count_raises_a_model_error(server: AnthropicServer) -> None:
    async with make_model(server, exact_online=True, api_key="sk-ant-wrong") as model:
        with pytest.raises(ModelError, match="401") as info:
            await model.count_tokens(MESSAGES)
    assert info.value.status == 401
