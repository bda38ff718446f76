"""Messages are checked per role and type at append (issue 11, defect 8).

A message the provider would refuse is refused before it is in the log forever, with an
`InvalidMessage` that says what is wrong, through the Python API and HTTP alike; nothing is
written. Valid shapes, unknown extra fields, unknown part types and unknown Responses item
types are accepted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest

from agent_core import ConversationCache, Message
from agent_core.errors import InvalidMessage
from agent_core.messages import trusted_message
from agent_core.server import Settings, create_app

CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}

VALID: list[dict[str, Any]] = [
    {"role": "system", "content": "be brief"},
    {"role": "developer", "content": [{"type": "text", "text": "be brief"}]},
    {"role": "system", "content": [{"type": "input_text", "text": "be brief"}]},
    {"role": "user", "content": "hi", "name": "ann", "extra": {"kept": [1]}},
    {"role": "user", "content": ""},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
            {"type": "file", "file": {"file_id": "file-1"}},
            {"type": "some_future_part", "anything": 1},
        ],
    },
    {"role": "assistant", "content": "hello", "refusal": None},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "assistant", "tool_calls": [CALL, {"id": "c2", "type": "custom", "custom": {}}]},
    {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}},
    {"role": "assistant", "content": None, "refusal": "I can't"},
    {
        "role": "assistant",
        "content": [{"type": "text", "text": "a"}, {"type": "refusal", "refusal": "b"}],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "42"}]},
    {"role": "function", "name": "f", "content": "42"},
    {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
    {"type": "function_call_output", "call_id": "c", "output": "42"},
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
    {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "hi", "annotations": []}],
    },
    {"type": "reasoning", "summary": []},
    {"type": "x", "a": [1]},
]

INVALID: list[tuple[dict[str, Any], str]] = [
    ({"role": "user", "content": 5}, "a number"),
    ({"role": "user", "content": [1]}, "content[0]"),
    ({"role": "user", "content": [{"type": "text"}]}, "'text'"),
    ({"role": "user"}, "content"),
    ({"role": "user", "content": None}, "content"),
    ({"role": "user", "content": []}, "empty"),
    ({"role": "user", "content": [{"text": "no type"}]}, "type"),
    ({"role": "user", "content": [{"type": "image_url", "image_url": "https://x"}]}, "image_url"),
    ({"role": "user", "content": [{"type": "image_url", "image_url": {}}]}, "url"),
    ({"role": "user", "content": [{"type": "input_audio"}]}, "input_audio"),
    ({"role": "user", "content": [{"type": "file", "file": "f"}]}, "file"),
    ({"role": "system"}, "content"),
    ({"role": "system", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}, "text"),
    ({"role": "developer", "content": {"text": "hi"}}, "an object"),
    ({"role": "assistant"}, "tool_calls"),
    ({"role": "assistant", "content": None}, "tool_calls"),
    ({"role": "assistant", "content": 5}, "content"),
    ({"role": "assistant", "content": None, "tool_calls": {}}, "tool_calls"),
    ({"role": "assistant", "content": None, "tool_calls": [5]}, "tool_calls[0]"),
    ({"role": "assistant", "tool_calls": [{"type": "function"}]}, "'id'"),
    ({"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]}, "function"),
    (
        {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": {}}}]},
        "arguments",
    ),
    ({"role": "assistant", "function_call": {"name": 5, "arguments": "{}"}}, "name"),
    ({"role": "assistant", "content": "x", "refusal": 5}, "refusal"),
    ({"role": "tool", "content": "42"}, "tool_call_id"),
    ({"role": "tool", "tool_call_id": "c"}, "content"),
    ({"role": "function", "content": "42"}, "name"),
    ({"type": "function_call", "call_id": "c", "name": "f"}, "arguments"),
    ({"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}, "arguments"),
    ({"type": "function_call_output", "call_id": "c"}, "output"),
    ({"type": "function_call_output", "output": "42"}, "call_id"),
    ({"type": "message", "role": "user", "content": [{"type": "input_text"}]}, "text"),
    ({"role": 5, "content": "hi"}, "role"),
    ({"role": "robot", "content": "hi"}, "robot"),
]


@pytest.mark.parametrize("item", VALID)
def test_valid_shapes_round_trip(item: dict[str, Any]) -> None:
    assert Message.from_dict(item).to_dict() == item


@pytest.mark.parametrize(("item", "says"), INVALID)
def test_invalid_shapes_are_refused_saying_what_is_wrong(item: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        Message.from_dict(item)
    assert says in str(caught.value)
    with pytest.raises(InvalidMessage):
        Message.from_json(trusted_message(_json(item)).raw)


def _json(item: dict[str, Any]) -> bytes:
    import orjson

    return orjson.dumps(item)


async def test_append_writes_nothing_for_an_invalid_message(sqlite_url: str) -> None:
    async with ConversationCache.from_urls(sqlite_url, namespace="shape") as cache:
        assert await cache.append("t", VALID) == len(VALID)
        for item, _ in INVALID:
            with pytest.raises(InvalidMessage, match=r"^messages\[1\]: "):
                await cache.append("t", [{"role": "user", "content": "ok"}, item])
        assert (await cache.get("t")).version == len(VALID)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        Settings(store_url=f"sqlite:///{tmp_path / 'a.db'}", model="echo", namespace="shape")
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http,
    ):
        yield http


@pytest.mark.parametrize(
    "item",
    [
        {"role": "user", "content": 5},
        {"role": "user", "content": [1]},
        {"role": "user", "content": [{"type": "text"}]},
        {"role": "user"},
    ],
)
async def test_http_refuses_the_issues_examples(client: httpx.AsyncClient, item: Any) -> None:
    response = await client.post("/v1/threads/t/messages", json={"messages": [item]})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "InvalidMessage"
    response = await client.post("/v1/threads/t/turns", json={"message": item})
    assert response.status_code in (400, 422), response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert (await client.get("/v1/threads/t")).status_code == 404  # nothing was written


def test_the_openapi_schema_states_the_same_rules() -> None:
    schemas = create_app(Settings()).openapi()["components"]["schemas"]
    message = schemas["AppendRequest"]["properties"]["messages"]["items"]
    validator = jsonschema_rs.Draft202012Validator(message)
    for item in VALID:
        assert validator.is_valid(item), item
    for item, _ in INVALID:
        assert not validator.is_valid(item), item
