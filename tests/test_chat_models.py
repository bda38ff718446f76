"""Chat models: OpenAIChatModel against a local Chat Completions server, and EchoModel.

The server (tests/_chat_server.py) is a real HTTP server on a loopback port; nothing of
agent-core or httpx is mocked, and no test reaches a real provider.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from agent_core import (
    ChatModel,
    ChatStream,
    Completion,
    ConfigurationError,
    EchoModel,
    InvalidArgument,
    Message,
    ModelError,
    OpenAIChatModel,
    StreamEvent,
    TokenCounter,
    Usage,
)
from agent_core.agent._openai import _retry_after

from ._chat_server import (
    ChatServer,
    Drop,
    Reply,
    Stream,
    chunk,
    completion_body,
    error_body,
    usage_chunk,
)
from ._redis_server import free_port

KEY = "sk-test-local-0123456789"
SERVED_MODEL = "gpt-4o-mini-2024-07-18"
# Spacing, key order, escapes and "1.50" that orjson would write differently: only bytes
# sent as they are can appear in the request unchanged.
RAW_USER = (
    b'{"role": "user",  "content": "caf\\u00e9 \\ud83d\\ude00 \\"hi\\"", "z": 1, "a": [1.50]}'
)
MESSAGES = [
    Message.from_dict({"role": "system", "content": "Be brief."}),
    Message.from_json(RAW_USER),
]
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
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
}
CALL_2 = {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": "{}"}}


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with ChatServer() as running:
        yield running


def make_model(server: ChatServer, **options: Any) -> OpenAIChatModel:
    settings: dict[str, Any] = {"base_url": server.url, "api_key": KEY, "backoff": 0.01}
    return OpenAIChatModel("gpt-4o-mini", **(settings | options))


@pytest.fixture
async def model(server: ChatServer) -> AsyncIterator[OpenAIChatModel]:
    async with make_model(server) as made:
        yield made


async def drain(stream: ChatStream, into: list[StreamEvent] | None = None) -> list[StreamEvent]:
    events = [] if into is None else into
    async with stream:
        async for event in stream:
            events.append(event)
    return events


def gaps(server: ChatServer) -> list[float]:
    return [b.at - a.at for a, b in itertools.pairwise(server.requests)]


# Requests


async def test_body_holds_the_messages_bytes_verbatim(
    server: ChatServer, model: OpenAIChatModel
) -> None:
    served = completion_body("Hello!", usage=(12, 3))
    server.script(Reply(body=served))
    completion = await model.complete(MESSAGES, tools=TOOLS, max_tokens=50)

    [request] = server.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    assert b'"messages":[' + b",".join(m.raw for m in MESSAGES) + b"]" in request.body
    assert request.json() == {
        "model": "gpt-4o-mini",
        "messages": [m.to_dict() for m in MESSAGES],
        "tools": TOOLS,
        "max_tokens": 50,
    }
    assert completion == Completion(
        message={"role": "assistant", "content": "Hello!", "refusal": None},
        text="Hello!",
        usage=Usage(12, 3, 15),
        finish_reason="stop",
        model=SERVED_MODEL,
        raw=completion.raw,
    )
    assert completion.raw is not None
    assert completion.raw.startswith(b'{"id": "chatcmpl-local"')


async def test_tool_calls_pass_through(server: ChatServer, model: OpenAIChatModel) -> None:
    server.script(
        Reply(body=completion_body(None, tool_calls=[CALL, CALL_2], finish_reason="tool_calls"))
    )
    completion = await model.complete(MESSAGES, tools=TOOLS)
    assert completion.tool_calls == [CALL, CALL_2]
    assert completion.message["content"] is None
    assert (completion.text, completion.finish_reason) == ("", "tool_calls")

    # The reply goes back as it came, with the tool results after it.
    server.script(Reply(body=completion_body("18 °C in Paris")))
    follow_up = [
        *MESSAGES,
        Message.from_dict(completion.message),
        Message.from_dict({"role": "tool", "tool_call_id": "call_1", "content": "18 °C"}),
        Message.from_dict({"role": "tool", "tool_call_id": "call_2", "content": "12:00"}),
    ]
    assert (await model.complete(follow_up, tools=TOOLS)).text == "18 °C in Paris"
    assert server.requests[1].json()["messages"][2]["tool_calls"] == [CALL, CALL_2]


async def test_options_shape_the_body(server: ChatServer) -> None:
    server.script(Reply(body=completion_body("ok")))
    extra = {"temperature": 0.2, "tool_choice": "auto"}
    async with make_model(
        server,
        max_tokens_param="max_completion_tokens",
        prompt_cache_retention="24h",
        extra_body=extra,
        headers={"X-Team": "a"},
    ) as model:
        extra["temperature"] = 1.0  # a copy was taken
        await model.complete(MESSAGES, tools=[], max_tokens=7)
    [request] = server.requests
    assert request.json() == {
        "model": "gpt-4o-mini",
        "messages": [m.to_dict() for m in MESSAGES],
        "temperature": 0.2,
        "tool_choice": "auto",
        "prompt_cache_retention": "24h",
        "max_completion_tokens": 7,
    }
    assert request.headers["x-team"] == "a"


async def test_environment_gives_the_defaults(
    server: ChatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    server.script(*[Reply(body=completion_body("ok"))] * 2)
    async with OpenAIChatModel("m") as model:
        assert model.url == server.url + "/chat/completions"
        await model.complete(MESSAGES)
    async with OpenAIChatModel("m", base_url=server.url, api_key="sk-given") as model:
        await model.complete(MESSAGES)
    assert [r.headers["authorization"] for r in server.requests] == [
        "Bearer sk-from-env",
        "Bearer sk-given",
    ]


async def test_local_server_needs_no_key_but_openai_does(
    server: ChatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        OpenAIChatModel("gpt-4o")
    server.script(Reply(body=completion_body("ok")))
    async with OpenAIChatModel("llama3.2", base_url=server.url) as model:
        await model.complete(MESSAGES)
    assert "authorization" not in server.requests[0].headers

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    async with OpenAIChatModel("gpt-4o") as model:
        assert model.url == "https://api.openai.com/v1/chat/completions"
    monkeypatch.setenv("OPENAI_BASE_URL", "localhost:8000")
    with pytest.raises(ConfigurationError, match="OPENAI_BASE_URL"):
        OpenAIChatModel("gpt-4o")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"model": ""}, "model"),
        ({"model": 5}, "model"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": 1.0}, "max_retries"),
        ({"backoff": -0.1}, "backoff"),
        ({"max_retry_after": float("inf")}, "max_retry_after"),
        ({"base_url": "ftp://example.com/v1"}, "base_url"),
        ({"base_url": "http://example.com:99999/v1"}, "base_url"),
        ({"base_url": "http://example.com/v1?x=1"}, "query"),
        ({"api_key": "sk secret with spaces"}, "api_key"),
        ({"api_key": ""}, "api_key"),
        ({"max_tokens_param": "max_output_tokens"}, "max_tokens_param"),
        ({"prompt_cache_retention": "1h"}, "prompt_cache_retention"),
        ({"extra_body": {"prompt_cache_retention": "24h"}}, "prompt_cache_retention"),
        ({"extra_body": {"messages": []}}, "messages"),
        ({"extra_body": {"stream": True}}, "stream"),
        ({"extra_body": {"seed": object()}}, "JSON"),
        ({"headers": {"X-Id": 1}}, "headers"),
    ],
)
def test_constructor_checks_its_arguments(options: dict[str, Any], match: str) -> None:
    settings = {"model": "m", "base_url": "http://127.0.0.1:1/v1", "api_key": KEY} | options
    with pytest.raises(InvalidArgument, match=match) as info:
        OpenAIChatModel(**settings)
    assert "secret" not in str(info.value)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        ({"messages": []}, "empty"),
        ({"messages": "hi"}, "sequence of Message"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "Message.from_dict"),
        ({"messages": MESSAGES, "tools": {"type": "function"}}, "tools must be a sequence"),
        ({"messages": MESSAGES, "tools": ["weather"]}, r"tools\[0\]"),
        ({"messages": MESSAGES, "tools": [{"f": {1, 2}}]}, "JSON"),
        ({"messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
        ({"messages": MESSAGES, "max_tokens": True}, "max_tokens"),
    ],
)
async def test_calls_are_checked_before_sending(
    server: ChatServer, model: OpenAIChatModel, call: dict[str, Any], match: str
) -> None:
    for made in (model, EchoModel()):
        with pytest.raises(InvalidArgument, match=match):
            await made.complete(**call)
        with pytest.raises(InvalidArgument, match=match):
            made.stream(**call)
    assert server.requests == []


# Retries


async def test_429_waits_as_long_as_retry_after_says(server: ChatServer) -> None:
    limited = Reply(
        429,
        error_body("Rate limit reached for requests", "requests", "rate_limit_exceeded"),
        {"retry-after": "0.2"},
    )
    server.script(limited, limited, Reply(body=completion_body("ok")))
    # A backoff of 5 s would show if Retry-After were ignored.
    async with make_model(server, max_retries=3, backoff=5.0) as model:
        assert (await model.complete(MESSAGES)).text == "ok"
    assert len(server.requests) == 3
    assert all(0.2 <= gap < 1.5 for gap in gaps(server)), gaps(server)
    assert len({r.body for r in server.requests}) == 1


async def test_retry_after_ms_comes_first(server: ChatServer) -> None:
    server.script(
        Reply(
            503, error_body("busy", "server_error"), {"retry-after-ms": "150", "retry-after": "5"}
        ),
        Reply(body=completion_body("ok")),
    )
    async with make_model(server) as model:
        await model.complete(MESSAGES)
    assert 0.15 <= gaps(server)[0] < 1.5


def test_retry_after_values() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert _retry_after({"retry-after": date}, now) == 30
    assert _retry_after({"retry-after": email.utils.formatdate(now - 30, usegmt=True)}, now) == 0
    assert _retry_after({"retry-after": "1.5"}, now) == 1.5
    assert _retry_after({"retry-after": "soon"}, now) is None
    assert _retry_after({"retry-after-ms": "250", "retry-after": "9"}, now) == 0.25
    assert _retry_after({}, now) is None


async def test_500_is_retried(server: ChatServer, model: OpenAIChatModel) -> None:
    server.script(
        Reply(500, error_body("The server had an error", "server_error")),
        Reply(body=completion_body("ok")),
    )
    assert (await model.complete(MESSAGES)).text == "ok"
    assert len(server.requests) == 2


async def test_exhausted_retries_raise_with_the_status(server: ChatServer) -> None:
    server.script(*[Reply(503, error_body("Service unavailable", "server_error"))] * 3)
    async with make_model(server, max_retries=2, backoff=0.1) as model:
        with pytest.raises(ModelError) as info:
            await model.complete(MESSAGES)
    error = info.value
    assert (error.status, error.error_type, error.retryable, error.attempts) == (
        503,
        "server_error",
        True,
        3,
    )
    assert "gave up after 3 attempts" in str(error)
    assert len(server.requests) == 3
    # Exponential: about 0.1 then 0.2 s, less up to half for jitter.
    first, second = gaps(server)
    assert first >= 0.05
    assert second >= 0.1


async def test_no_retries_when_max_retries_is_0(server: ChatServer) -> None:
    server.script(Reply(502, b"Bad gateway"))
    async with make_model(server, max_retries=0) as model:
        with pytest.raises(ModelError, match="502") as info:
            await model.complete(MESSAGES)
    assert (info.value.attempts, len(server.requests)) == (1, 1)


async def test_a_long_retry_after_is_left_to_the_caller(
    server: ChatServer, model: OpenAIChatModel
) -> None:
    server.script(Reply(429, error_body("slow down", "requests"), {"retry-after": "120"}))
    with pytest.raises(ModelError, match="max_retry_after") as info:
        await model.complete(MESSAGES)
    assert (info.value.retry_after, info.value.retryable, info.value.status) == (120, True, 429)
    assert len(server.requests) == 1


async def test_insufficient_quota_is_not_retried(
    server: ChatServer, model: OpenAIChatModel
) -> None:
    body = error_body("You exceeded your current quota", "insufficient_quota", "insufficient_quota")
    server.script(Reply(429, body))
    with pytest.raises(ModelError, match="billing") as info:
        await model.complete(MESSAGES)
    assert (info.value.retryable, info.value.error_type) == (False, "insufficient_quota")
    assert len(server.requests) == 1


async def test_401_says_to_check_the_key(server: ChatServer, model: OpenAIChatModel) -> None:
    body = error_body("Incorrect API key provided: sk-test***6789.", "invalid_request_error")
    server.script(Reply(401, body))
    with pytest.raises(ModelError, match="OPENAI_API_KEY") as info:
        await model.complete(MESSAGES)
    error = info.value
    assert (error.status, error.error_type, error.retryable) == (
        401,
        "invalid_request_error",
        False,
    )
    assert "Incorrect API key provided" in str(error)
    assert KEY not in str(error)
    assert len(server.requests) == 1


async def test_other_error_shapes(server: ChatServer, model: OpenAIChatModel) -> None:
    vllm = {
        "object": "error",
        "message": "maximum context length is 8192",
        "type": "BadRequestError",
    }
    server.script(Reply(400, vllm))
    with pytest.raises(ModelError, match="maximum context length") as info:
        await model.complete(MESSAGES)
    assert (info.value.status, info.value.error_type) == (400, "BadRequestError")

    async with make_model(server, base_url=server.url.removesuffix("/v1")) as unversioned:
        with pytest.raises(ModelError, match=r"404.*ends in /v1") as info:
            await unversioned.complete(MESSAGES)
    assert info.value.retryable is False

    server.script(Reply(301, b"", {"location": "https://example.com/v1/chat/completions"}))
    with pytest.raises(ModelError, match=r"redirects to https://example\.com/v1/chat"):
        await model.complete(MESSAGES)


async def test_timeout_raises(server: ChatServer) -> None:
    server.script(Reply(body=completion_body("late"), delay=5.0))
    async with make_model(server, timeout=0.3, max_retries=0) as model:
        # A reply after the delay would raise nothing: the error itself shows the cut.
        with pytest.raises(ModelError, match=r"within 0\.3 s") as info:
            await model.complete(MESSAGES)
    assert (info.value.status, info.value.error_type, info.value.retryable) == (
        None,
        "timeout",
        True,
    )


async def test_timeout_is_retried(server: ChatServer) -> None:
    server.script(Reply(body=completion_body("late"), delay=5.0), Reply(body=completion_body("ok")))
    async with make_model(server, timeout=0.3, max_retries=1) as model:
        assert (await model.complete(MESSAGES)).text == "ok"
    assert len(server.requests) == 2


async def test_dropped_connection_is_retried(server: ChatServer, model: OpenAIChatModel) -> None:
    server.script(Drop(), Reply(body=completion_body("ok")))
    assert (await model.complete(MESSAGES)).text == "ok"
    assert len(server.requests) == 2


@pytest.mark.integration
async def test_unreachable_server() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    async with OpenAIChatModel("m", base_url=url, max_retries=1, backoff=0.01) as model:
        with pytest.raises(ModelError, match="could not reach") as info:
            await model.complete(MESSAGES)
    assert (info.value.status, info.value.error_type, info.value.attempts) == (
        None,
        "connection_error",
        2,
    )


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b'{"choices": [', "malformed JSON"),
        (b"[]", "not an object"),
        (b'{"choices": []}', "no choices"),
        (b'{"choices": [{"message": "hi"}]}', "no message"),
        (b'{"choices": [{"message": {"role": "assistant", "content": 5}}]}', "content"),
        (
            b'{"choices": [{"message": {"role": "assistant", "content": "x"}}], '
            b'"usage": {"prompt_tokens": "3", "completion_tokens": 1}}',
            "usage",
        ),
    ],
)
async def test_unreadable_answers_raise(
    server: ChatServer, model: OpenAIChatModel, body: bytes, match: str
) -> None:
    server.script(Reply(body=body))
    with pytest.raises(ModelError, match=match) as info:
        await model.complete(MESSAGES)
    assert (info.value.status, info.value.error_type, info.value.retryable) == (
        200,
        "invalid_response",
        False,
    )
    assert len(server.requests) == 1


# Streaming


STREAMED = [
    chunk({"role": "assistant", "content": "", "refusal": None}),
    chunk({"content": "Hel"}),
    chunk({"content": "lo"}),
    chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": ""},
                }
            ]
        }
    ),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
    chunk({"tool_calls": [{"index": 1, **CALL_2}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
    chunk({}, "tool_calls"),
    usage_chunk(20, 9),
]


async def test_stream_yields_text_then_the_completion(
    server: ChatServer, model: OpenAIChatModel
) -> None:
    server.script(Stream(STREAMED))
    stream = model.stream(MESSAGES, tools=TOOLS)
    assert stream.completion is None
    events = await drain(stream)

    assert events[:-1] == ["Hel", "lo"]
    assert events[-1] is stream.completion
    assert stream.completion == Completion(
        message={
            "role": "assistant",
            "content": "Hello",
            "refusal": None,
            "tool_calls": [CALL, CALL_2],
        },
        text="Hello",
        usage=Usage(20, 9, 29),
        finish_reason="tool_calls",
        model=SERVED_MODEL,
    )
    [request] = server.requests
    assert request.headers["accept"] == "text/event-stream"
    assert b",".join(m.raw for m in MESSAGES) in request.body
    body = request.json()
    assert (body["stream"], body["stream_options"], body["tools"]) == (
        True,
        {"include_usage": True},
        TOOLS,
    )


async def test_stream_delivers_chunks_as_they_come(
    server: ChatServer, model: OpenAIChatModel
) -> None:
    server.script(
        Stream([chunk({"content": text}) for text in "abc"] + [chunk({}, "stop")], gap=0.15)
    )
    arrivals: list[float] = []
    async for event in model.stream(MESSAGES):
        arrivals.append(time.monotonic())
        if isinstance(event, Completion):
            assert (event.text, event.usage, event.finish_reason) == ("abc", Usage(), "stop")
    assert arrivals[2] - arrivals[0] >= 0.25


async def test_stream_reads_any_sse_framing(server: ChatServer, model: OpenAIChatModel) -> None:
    server.script(
        Stream(
            [
                b": keep-alive\n\n",
                b"event: message\r\n"
                b'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\r\n\r\n',
                b'data: {"choices": [{"index": 0,\ndata: "delta": {"content": "b"}}]}\n\n',
                b'data:{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n',
            ]
        )
    )
    events = await drain(model.stream(MESSAGES))
    assert events[:-1] == ["a", "b"]
    assert isinstance(events[-1], Completion)
    assert events[-1].message == {"role": "assistant", "content": "ab"}


async def test_stream_retries_until_it_starts(server: ChatServer, model: OpenAIChatModel) -> None:
    server.script(Reply(503, error_body("busy", "server_error")), Stream(STREAMED))
    events = await drain(model.stream(MESSAGES))
    assert events[:-1] == ["Hel", "lo"]
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    ("stream", "match", "error_type"),
    [
        (
            Stream(
                [
                    chunk({"content": "par"}),
                    {"error": {"message": "overloaded", "type": "server_error"}},
                ],
                done=False,
            ),
            "broke off: overloaded",
            "server_error",
        ),
        (Stream([chunk({"content": "par"})], done=False), "ended before", "connection_error"),
        (
            Stream([chunk({"content": "par"}), b"data: {oops\n\n"]),
            "malformed JSON",
            "invalid_response",
        ),
    ],
)
async def test_stream_failures_after_the_start_raise(
    server: ChatServer, model: OpenAIChatModel, stream: Stream, match: str, error_type: str
) -> None:
    server.script(stream)
    received: list[StreamEvent] = []
    with pytest.raises(ModelError, match=match) as info:
        await drain(model.stream(MESSAGES), received)
    assert received == ["par"]
    assert info.value.error_type == error_type
    assert len(server.requests) == 1


async def test_stream_refuses_an_answer_that_is_not_a_stream(
    server: ChatServer, model: OpenAIChatModel
) -> None:
    server.script(Reply(body=completion_body("hi")))
    with pytest.raises(ModelError, match="not a stream"):
        await drain(model.stream(MESSAGES))


async def test_leaving_a_stream_early_releases_it(
    server: ChatServer, model: OpenAIChatModel
) -> None:
    server.script(
        Stream([chunk({"content": "a"}), chunk({"content": "b"})], gap=3600.0),
        Reply(body=completion_body("next")),
    )
    # Not released, the stream would wait out the hour-long gap: a generous deadline.
    async with asyncio.timeout(60), model.stream(MESSAGES) as events:
        async for event in events:
            assert event == "a"
            break
    assert (await model.complete(MESSAGES)).text == "next"


async def test_closed_model_refuses_calls(server: ChatServer) -> None:
    model = make_model(server)
    await model.aclose()
    with pytest.raises(ModelError, match="closed"):
        await model.complete(MESSAGES)
    with pytest.raises(ModelError, match="closed"):
        await drain(model.stream(MESSAGES))
    assert server.requests == []


# EchoModel


def _conversation(user: Any) -> list[Message]:
    return [
        Message.from_dict({"role": "system", "content": "You are terse."}),
        Message.from_dict({"role": "user", "content": "earlier"}),
        Message.from_dict({"role": "assistant", "content": "echo: earlier"}),
        Message.from_dict({"role": "user", "content": user}),
    ]


async def test_echo_is_deterministic_and_counted() -> None:
    messages = _conversation("What's the weather in Paris?")
    async with EchoModel() as model:
        first = await model.complete(messages, tools=TOOLS)
        again = await EchoModel().complete(messages, tools=TOOLS)
        events = await drain(model.stream(messages, tools=TOOLS))
    counter = TokenCounter.for_model("gpt-4o")
    text = "echo: What's the weather in Paris?"
    prompt, completion = counter.count_messages(messages, TOOLS), counter.count(text)
    assert first == again == events[-1]
    assert first == Completion(
        message={"role": "assistant", "content": text},
        text=text,
        usage=Usage(prompt, completion, prompt + completion),
        finish_reason="stop",
        model="echo",
    )
    assert events[:-1] == ["echo:", " What's", " the", " weather", " in", " Paris?"]


async def test_echo_counts_long_prompts_in_slices_exactly() -> None:
    """Many short messages, and one bigger than a slice: the same count as in one call."""
    history = [
        Message.from_dict({"role": "user" if i % 2 else "assistant", "content": f"line {i} é"})
        for i in range(1_000)
    ]
    big = Message.from_dict({"role": "user", "content": "日本語のテキスト " * 8_000})
    for messages in (history, [*history[:300], big, *history[300:]], [big]):
        completion = await EchoModel().complete(messages, tools=TOOLS)
        expected = TokenCounter.for_model("gpt-4o").count_messages(messages, TOOLS)
        assert completion.usage.prompt_tokens == expected


async def test_echo_reads_text_parts_and_honours_max_tokens() -> None:
    parts = [
        {"type": "text", "text": "one two"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        {"type": "text", "text": "three four five six seven"},
    ]
    model = EchoModel(name="echo-test")
    full = await model.complete(_conversation(parts))
    assert full.text == "echo: one two three four five six seven"
    cut = await model.complete(_conversation(parts), max_tokens=4)
    assert full.text.startswith(cut.text)
    assert cut.text == "echo: one two"
    assert (cut.finish_reason, cut.usage.completion_tokens, cut.model) == ("length", 4, "echo-test")
    assert (await model.complete([MESSAGES[0]])).text == "echo: (no user message)"


def test_models_are_chat_models(server: ChatServer) -> None:
    assert isinstance(EchoModel(), ChatModel)
    assert isinstance(make_model(server), ChatModel)
    with pytest.raises(InvalidArgument, match="token_model"):
        EchoModel(token_model="")


@pytest.mark.integration
def test_echo_opens_no_socket() -> None:
    script = textwrap.dedent(
        """
        import asyncio
        import socket

        loop = asyncio.new_event_loop()  # its self-pipe is made before sockets are refused

        def deny(*args, **kwargs):
            raise OSError("a socket was opened")

        socket.socket.__init__ = deny
        socket.socket.connect = deny
        socket.getaddrinfo = deny
        socket.create_connection = deny

        from agent_core import EchoModel, Message

        async def main():
            messages = [Message.from_dict({"role": "user", "content": "hi there " * 10_000})]
            async with EchoModel() as model:
                completion = await model.complete(messages)
                events = [event async for event in model.stream(messages)]
            assert events[-1] == completion
            assert "".join(events[:-1]) == completion.text
            print(completion.usage.prompt_tokens)

        loop.run_until_complete(main())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 20_000
