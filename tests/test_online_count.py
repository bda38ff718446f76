"""The optional online count against a local server that speaks Anthropic's count-tokens API.

The server checks requests the way the real endpoint does (POST only, path, headers,
body shape, roles and tool pairing) and answers with a count it computes from the body, or
with the provider's error responses. No test reaches a real provider.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from agent_core import InvalidArgument, Message, ProviderError, TokenCounter

from ._redis_server import free_port

API_KEY = "sk-ant-api03-local-test-key"
MODEL = "claude-sonnet-4-5"
_TEXT = TokenCounter.for_model(MODEL).count
_TOP_LEVEL = {"model", "messages", "system", "tools", "tool_choice", "thinking"}


class _Reject(Exception):
    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


def _bad(message: str) -> _Reject:
    return _Reject(400, "invalid_request_error", message)


def _text_block(block: object, where: str) -> str:
    if not isinstance(block, dict) or block.get("type") != "text":
        raise _bad(f"{where}: expected a text block")
    if set(block) != {"type", "text"}:
        raise _bad(f"{where}: Extra inputs are not permitted")
    text = block.get("text")
    if not isinstance(text, str) or not text.strip():
        raise _bad(f"{where}.text: text content blocks must contain non-whitespace text")
    return text


def _count_message(index: int, message: object, previous: dict[str, Any] | None) -> int:
    where = f"messages.{index}"
    if not isinstance(message, dict) or set(message) != {"role", "content"}:
        raise _bad(f"{where}: a message has exactly a role and a content")
    role, content = message["role"], message["content"]
    if role not in ("user", "assistant"):
        raise _bad(f"{where}.role: Input should be 'user' or 'assistant'")
    if previous is not None and previous["role"] == role:
        raise _bad(
            f'messages: roles must alternate between "user" and "assistant", '
            f'but found multiple "{role}" roles in a row'
        )
    if isinstance(content, str):
        if not content.strip():
            raise _bad(f"{where}: all messages must have non-empty content")
        return 3 + _TEXT(content)
    if not isinstance(content, list) or not content:
        raise _bad(f"{where}: all messages must have non-empty content")
    asked = _tool_use_ids(previous)
    answered: list[str] = []
    tokens = 3
    for position, block in enumerate(content):
        spot = f"{where}.content.{position}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            tokens += _TEXT(_text_block(block, spot))
        elif kind == "tool_use" and role == "assistant":
            assert isinstance(block, dict)
            if set(block) != {"type", "id", "name", "input"}:
                raise _bad(f"{spot}: a tool_use block has exactly type, id, name and input")
            if not isinstance(block["id"], str) or not isinstance(block["name"], str):
                raise _bad(f"{spot}: tool_use id and name must be strings")
            if not isinstance(block["input"], dict):
                raise _bad(f"{spot}.input: Input should be a valid dictionary")
            tokens += 5 + _TEXT(block["name"]) + _TEXT(json.dumps(block["input"]))
        elif kind == "tool_result" and role == "user":
            assert isinstance(block, dict)
            if not set(block) <= {"type", "tool_use_id", "content", "is_error"}:
                raise _bad(f"{spot}: Extra inputs are not permitted")
            if any(earlier.get("type") != "tool_result" for earlier in content[:position]):
                raise _bad(f"{spot}: tool_result blocks must come first in the content")
            if block.get("tool_use_id") not in asked:
                raise _bad(
                    f"{spot}: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{block.get('tool_use_id')}. Each `tool_result` block must have a "
                    "corresponding `tool_use` block in the previous message."
                )
            answered.append(block["tool_use_id"])
            result = block.get("content", "")
            if isinstance(result, list):
                result = "".join(
                    _text_block(part, f"{spot}.content.{n}") for n, part in enumerate(result)
                )
            elif not isinstance(result, str):
                raise _bad(f"{spot}.content: Input should be a valid string or list")
            tokens += 4 + _TEXT(result)
        else:
            raise _bad(f"{spot}: unexpected block type {kind!r} in a {role} message")
    missing = [call for call in asked if call not in answered]
    if missing:
        raise _bad(
            f"messages.{index - 1}: `tool_use` ids were found without `tool_result` blocks "
            f"immediately after: {', '.join(missing)}. Each `tool_use` block must have a "
            "corresponding `tool_result` block in the next message."
        )
    return tokens


def _tool_use_ids(message: dict[str, Any] | None) -> list[str]:
    if message is None or message["role"] != "assistant" or isinstance(message["content"], str):
        return []
    return [block["id"] for block in message["content"] if block.get("type") == "tool_use"]


def count_request(body: object) -> int:
    """Validate a count-tokens body as the API does; its token count, computed from it."""
    if not isinstance(body, dict):
        raise _bad("the body must be a JSON object")
    for key in body:
        if key not in _TOP_LEVEL:
            raise _bad(f"{key}: Extra inputs are not permitted")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _bad("model: Field required")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages: at least one message is required")
    tokens = 7
    previous: dict[str, Any] | None = None
    for index, message in enumerate(messages):
        tokens += _count_message(index, message, previous)
        previous = message
    if _tool_use_ids(previous):
        raise _bad(
            f"messages.{len(messages) - 1}: `tool_use` ids were found without `tool_result` "
            "blocks immediately after"
        )
    system = body.get("system")
    if isinstance(system, str):
        tokens += 2 + _TEXT(system)
    elif isinstance(system, list):
        tokens += 2 + sum(_TEXT(_text_block(b, f"system.{n}")) for n, b in enumerate(system))
    elif system is not None:
        raise _bad("system: Input should be a valid string or list")
    names: set[str] = set()
    for index, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool, dict) or not {"name", "input_schema"} <= set(tool):
            raise _bad(f"tools.{index}: a tool needs a name and an input_schema")
        if not set(tool) <= {"name", "description", "input_schema"}:
            raise _bad(f"tools.{index}: Extra inputs are not permitted")
        schema = tool["input_schema"]
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise _bad(f"tools.{index}.input_schema.type: Input should be 'object'")
        if tool["name"] in names:
            raise _bad("tools: Tool names must be unique.")
        names.add(tool["name"])
        description = tool.get("description", "")
        tokens += 10 + _TEXT(tool["name"]) + _TEXT(description) + _TEXT(json.dumps(schema))
    return tokens


class AnthropicServer(ThreadingHTTPServer):
    """``POST /v1/messages/count_tokens`` on a loopback port, with canned failures on demand."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        #: Every request received: path, lower-cased headers, decoded body.
        self.requests: list[dict[str, Any]] = []
        #: The counts answered, one per successful request.
        self.counts: list[int] = []
        #: When set, the next answers are this status, body and headers.
        self.canned: tuple[int, bytes, dict[str, str]] | None = None
        #: When set, answers wait until the event is set (or 10 s pass).
        self.stall: threading.Event | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def fail_with(
        self, status: int, error_type: str, message: str, headers: Mapping[str, str] = {}
    ) -> None:
        """Answer the next requests with the provider's error body."""
        body = {"type": "error", "error": {"type": error_type, "message": message}}
        self.canned = (status, json.dumps(body).encode(), dict(headers))


class _Handler(BaseHTTPRequestHandler):
    server: AnthropicServer

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("content-length", 0)))
        headers = {key.lower(): value for key, value in self.headers.items()}
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.server.requests.append({"path": self.path, "headers": headers, "body": body})
        if self.server.stall is not None:
            self.server.stall.wait(10)
        if self.server.canned is not None:
            self._answer(*self.server.canned)
            return
        try:
            tokens = self._count(headers, body)
        except _Reject as exc:
            error = {"type": exc.error_type, "message": str(exc)}
            payload = {"type": "error", "error": error, "request_id": "req_local"}
            self._answer(exc.status, json.dumps(payload).encode(), {"request-id": "req_local"})
            return
        self.server.counts.append(tokens)
        self._answer(200, json.dumps({"input_tokens": tokens}).encode(), {})

    def _count(self, headers: dict[str, str], body: object) -> int:
        if self.path != "/v1/messages/count_tokens":
            raise _Reject(404, "not_found_error", f"Not Found: {self.path}")
        if "x-api-key" not in headers:
            raise _Reject(401, "authentication_error", "x-api-key header is required")
        if headers["x-api-key"] != API_KEY:
            raise _Reject(401, "authentication_error", "invalid x-api-key")
        if headers.get("anthropic-version") != "2023-06-01":
            raise _bad("anthropic-version: header is required and must be a known version")
        if headers.get("content-type") != "application/json":
            raise _bad("the body must be JSON: content-type application/json")
        return count_request(body)

    def _answer(self, status: int, payload: bytes, headers: Mapping[str, str]) -> None:
        try:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            pass  # The client gave up first (the timeout test): nothing to answer.

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[AnthropicServer]:
    made = AnthropicServer()
    # A short poll interval: shutdown() waits up to one interval, once per test.
    thread = threading.Thread(target=made.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield made
    finally:
        if made.stall is not None:
            made.stall.set()
        made.shutdown()
        made.server_close()
        thread.join(10)


async def _count(
    server: AnthropicServer,
    messages: list[dict[str, Any]] | list[Message],
    tools: list[dict[str, Any]] | None = None,
    **kwargs: Any,
) -> int:
    arguments: dict[str, Any] = {"api_key": API_KEY, "base_url": server.base_url}
    return await TokenCounter.for_model(MODEL).count_messages_online(
        messages, tools, **(arguments | kwargs)
    )


WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "City name"}},
    "required": ["city"],
}
TOOL_CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city": "Rome"}'},
            },
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
    {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "21 C"}]},
    {"role": "developer", "content": "Answer in one line."},
    {"role": "user", "content": "Thanks, summarise."},
]
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {"name": "weather", "description": "Current weather", "parameters": WEATHER},
    },
    # The legacy ``functions`` shape, without parameters.
    {"name": "clock"},
]
CONVERTED_TOOL_CONVERSATION = {
    "model": MODEL,
    "system": [
        {"type": "text", "text": "You are terse."},
        {"type": "text", "text": "Answer in one line."},
    ],
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Rome?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "weather", "input": {"city": "Rome"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "call_1",
                    "content": [{"type": "text", "text": "18 C, sunny"}],
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "call_2",
                    "content": [{"type": "text", "text": "21 C"}],
                },
                {"type": "text", "text": "Thanks, summarise."},
            ],
        },
    ],
    "tools": [
        {"name": "weather", "input_schema": WEATHER, "description": "Current weather"},
        {"name": "clock", "input_schema": {"type": "object", "properties": {}}},
    ],
}


# The request


async def test_counts_a_conversation_with_the_endpoints_protocol(server: AnthropicServer) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello, Claude"},
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": [{"type": "text", "text": "Explain LLMs."}]},
    ]
    tokens = await _count(server, messages)
    assert server.counts == [tokens]
    [request] = server.requests
    assert request["path"] == "/v1/messages/count_tokens"
    assert request["headers"]["x-api-key"] == API_KEY
    assert request["headers"]["anthropic-version"] == "2023-06-01"
    assert request["headers"]["content-type"] == "application/json"
    assert request["body"] == {
        "model": MODEL,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hello, Claude"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Hi! How can I help?"}]},
            {"role": "user", "content": [{"type": "text", "text": "Explain LLMs."}]},
        ],
    }


async def test_converts_tool_calls_results_and_tools(server: AnthropicServer) -> None:
    tokens = await _count(server, TOOL_CONVERSATION, TOOLS)
    assert server.requests[0]["body"] == CONVERTED_TOOL_CONVERSATION
    assert server.counts == [tokens]


async def test_message_objects_convert_like_dicts(server: AnthropicServer) -> None:
    messages = [Message.from_dict(item) for item in TOOL_CONVERSATION]
    assert await _count(server, messages, TOOLS) == await _count(server, TOOL_CONVERSATION, TOOLS)
    assert server.requests[0]["body"] == server.requests[1]["body"]


async def test_merges_same_role_turns_and_leaves_out_empty_texts(server: AnthropicServer) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "First."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Second."}, {"type": "text", "text": " "}],
        },
        {"role": "assistant", "content": ""},
        {"role": "assistant", "content": "Answer.", "name": "bot", "refusal": None},
        {"role": "user", "content": [{"type": "input_text", "text": "Third."}]},
    ]
    await _count(server, messages)
    assert server.requests[0]["body"]["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "First."}, {"type": "text", "text": "Second."}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "Answer."}]},
        {"role": "user", "content": [{"type": "text", "text": "Third."}]},
    ]


async def test_base_url_may_end_with_a_slash(server: AnthropicServer) -> None:
    messages = [{"role": "user", "content": "hi"}]
    assert await _count(server, messages, base_url=server.base_url + "/") == server.counts[0]


# The provider's errors: typed, explained, never retried


async def test_a_wrong_api_key_is_a_401_that_says_to_check_it(server: AnthropicServer) -> None:
    secret = "sk-ant-api03-not-the-right-key"
    with pytest.raises(ProviderError, match="check api_key") as caught:
        await _count(server, [{"role": "user", "content": "hi"}], api_key=secret)
    assert (caught.value.status, caught.value.error_type) == (401, "authentication_error")
    assert "invalid x-api-key" in str(caught.value)
    assert "request-id req_local" in str(caught.value)
    assert secret not in str(caught.value)
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("status", "error_type", "headers", "hint"),
    [
        (429, "rate_limit_error", {"retry-after": "7"}, r"rate limited.*retry-after: 7 s"),
        (403, "permission_error", {}, "may not use this model"),
        (404, "not_found_error", {}, "check the model name and base_url"),
        (413, "request_too_large", {}, "request size limit"),
        (500, "api_error", {}, "retry later"),
        (529, "overloaded_error", {}, "overloaded; retry later"),
    ],
)
async def test_provider_errors_are_typed_and_not_retried(
    server: AnthropicServer, status: int, error_type: str, headers: dict[str, str], hint: str
) -> None:
    server.fail_with(status, error_type, "Provider says no.", headers)
    with pytest.raises(ProviderError, match=hint) as caught:
        await _count(server, [{"role": "user", "content": "hi"}])
    assert (caught.value.status, caught.value.error_type) == (status, error_type)
    assert "Provider says no." in str(caught.value)
    assert len(server.requests) == 1


async def test_a_request_the_api_refuses_is_a_400_with_its_message(
    server: AnthropicServer,
) -> None:
    # Converts, but answers a tool call that the conversation never made.
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Let me check."},
        {"role": "tool", "tool_call_id": "call_9", "content": "late"},
    ]
    with pytest.raises(ProviderError, match="unexpected `tool_use_id`") as caught:
        await _count(server, messages)
    assert (caught.value.status, caught.value.error_type) == (400, "invalid_request_error")


async def test_an_error_without_the_providers_body(server: AnthropicServer) -> None:
    server.canned = (502, b"<html>Bad Gateway</html>", {})
    with pytest.raises(ProviderError, match=r"502 without an error type.*Bad Gateway") as caught:
        await _count(server, [{"role": "user", "content": "hi"}])
    assert (caught.value.status, caught.value.error_type) == (502, None)


@pytest.mark.parametrize(
    "answer", [b'{"tokens": 3}', b'{"input_tokens": -1}', b'{"input_tokens": true}', b"[]"]
)
async def test_a_200_without_a_count(server: AnthropicServer, answer: bytes) -> None:
    server.canned = (200, answer, {})
    with pytest.raises(ProviderError, match="without a count of input_tokens") as caught:
        await _count(server, [{"role": "user", "content": "hi"}])
    assert (caught.value.status, caught.value.error_type) == (200, None)


async def test_a_slow_answer_times_out(server: AnthropicServer) -> None:
    server.stall = threading.Event()  # never set: only the timeout can end the call
    with pytest.raises(ProviderError, match=r"no answer from .* within 0.3 s") as caught:
        await _count(server, [{"role": "user", "content": "hi"}], timeout=0.3)
    assert (caught.value.status, caught.value.error_type) == (None, None)
    assert len(server.requests) == 1


@pytest.mark.integration
async def test_a_closed_port_is_a_connection_error() -> None:
    with pytest.raises(ProviderError, match=r"could not reach .*ConnectError") as caught:
        await TokenCounter.for_model(MODEL).count_messages_online(
            [{"role": "user", "content": "hi"}],
            api_key=API_KEY,
            base_url=f"http://127.0.0.1:{free_port()}",
        )
    assert (caught.value.status, caught.value.error_type) == (None, None)


# Refused before any request


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"api_key": ""}, "api_key must be"),
        ({"api_key": None}, "api_key must be"),
        ({"api_key": "sk-ant key"}, "api_key must be"),
        ({"api_key": "sk-ant\nx-evil: 1"}, "api_key must be"),
        ({"api_key": "sk-ant-\u00e9"}, "api_key must be"),
        ({"base_url": ""}, "base_url must be"),
        ({"base_url": "ftp://127.0.0.1"}, "base_url must be"),
        ({"base_url": "127.0.0.1:8080"}, "base_url must be"),
        ({"base_url": "http://"}, "base_url must be"),
        ({"base_url": "http://[::1"}, "base_url must be"),
        ({"base_url": "http://127.0.0.1:99999"}, "base_url must be"),
        ({"base_url": "http://127.0.0.1:0"}, "base_url must be"),
        ({"base_url": "https://api.anthropic.com?x=1"}, "no query or fragment"),
        ({"base_url": b"https://api.anthropic.com"}, "base_url must be"),
        ({"timeout": 0}, "timeout must be"),
        ({"timeout": -1.0}, "timeout must be"),
        ({"timeout": math.nan}, "timeout must be"),
        ({"timeout": math.inf}, "timeout must be"),
        ({"timeout": True}, "timeout must be"),
        ({"timeout": "10"}, "timeout must be"),
    ],
)
async def test_bad_arguments_are_refused_before_any_request(
    server: AnthropicServer, arguments: dict[str, Any], match: str
) -> None:
    with pytest.raises(InvalidArgument, match=match) as caught:
        await _count(server, [{"role": "user", "content": "hi"}], **arguments)
    assert "sk-ant" not in str(caught.value)
    assert server.requests == []


def _call(arguments: str) -> dict[str, Any]:
    function = {"name": "f", "arguments": arguments}
    return {
        "role": "assistant",
        "tool_calls": [{"id": "c", "type": "function", "function": function}],
    }


@pytest.mark.parametrize(
    ("messages", "tools", "match"),
    [
        ([], None, "user or assistant message"),
        ([{"role": "system", "content": "only a prompt"}], None, "user or assistant message"),
        ([{"role": "user", "content": "  "}], None, "user or assistant message"),
        ("hi", None, "sequence of message dicts"),
        (["hi"], None, r"messages\[0\]: a message must be a dict"),
        ([_call("{not json")], None, r"messages\[0\]: .*arguments is not valid JSON"),
        ([_call("[1, 2]")], None, "must encode a JSON object, got list"),
        ([{"role": "assistant", "tool_calls": [{"id": "c"}]}], None, "must be a function call"),
        ([{"role": "assistant", "tool_calls": "f()"}], None, "tool_calls must be a list"),
        (
            [{"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}}],
            None,
            "legacy function_call",
        ),
        ([{"role": "tool", "content": "18 C"}], None, "needs a str tool_call_id"),
        ([{"role": "function", "name": "f", "content": "x"}], None, "got role 'function'"),
        (
            [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}],
            None,
            "type 'function_call'",
        ),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            None,
            "text parts only, got a 'image_url' part",
        ),
        ([{"role": "user", "content": 3}], None, "content must be a str or a list"),
        ([{"role": "user", "content": "hi"}], "f", "tools must be a sequence"),
        ([{"role": "user", "content": "hi"}], [{"type": "web_search"}], r"tools\[0\] must be"),
        (
            [{"role": "user", "content": "hi"}],
            [{"type": "function", "function": {"name": "f", "parameters": "{}"}}],
            "parameters must be a JSON schema object",
        ),
        (
            [{"role": "user", "content": "hi"}],
            [{"name": "f", "parameters": {"type": "object", "default": {1, 2}}}],
            "must be JSON-serializable",
        ),
    ],
)
async def test_messages_that_do_not_convert_are_refused_before_any_request(
    server: AnthropicServer, messages: Any, tools: Any, match: str
) -> None:
    with pytest.raises(InvalidArgument, match=match):
        await _count(server, messages, tools)
    assert server.requests == []


@pytest.mark.parametrize(
    ("model", "match"),
    [
        ("gpt-4o", r"not 'gpt-4o'; count it offline with count_messages \(exact"),
        ("meta-llama/Llama-3.1-8B-Instruct", r"count_messages \(exact"),
        ("mistral-large", r"count_messages \(an estimate"),
    ],
)
async def test_other_models_are_counted_offline(
    server: AnthropicServer, model: str, match: str
) -> None:
    with pytest.raises(InvalidArgument, match=match):
        await TokenCounter.for_model(model).count_messages_online(
            [{"role": "user", "content": "hi"}], api_key=API_KEY, base_url=server.base_url
        )
    assert server.requests == []


@pytest.mark.integration
def test_offline_use_does_not_load_the_http_client() -> None:
    script = textwrap.dedent(
        """
        import sys

        from agent_core import TokenCounter

        counter = TokenCounter.for_model("claude-sonnet-4-5")
        assert counter.count_messages([{"role": "user", "content": "hi"}]) > 0
        assert "httpx" not in sys.modules
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
