"""Message and Conversation: exact round trips, immutability, validation."""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent_core import Conversation, InvalidBatch, InvalidMessage, Message, MessageTooLarge
from agent_core.messages import encode_batch

CHAT_ITEMS: list[dict[str, Any]] = [
    {"role": "system", "content": "You are terse."},
    {"role": "developer", "content": "Answer in French."},
    {"role": "user", "content": "hi", "name": "ana"},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is in this image?"},
            {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
        ],
    },
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
            }
        ],
        "refusal": None,
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "18°C"},
    {"role": "function", "name": "weather", "content": "18°C"},
    # Responses API items
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hé"}]},
    {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}", "id": "fc_1"},
    {"type": "function_call_output", "call_id": "c1", "output": "ok"},
    {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAA"},
    # unknown fields, odd values, key order, unicode
    {
        "z": 1,
        "role": "assistant",
        "content": "ok",
        "a": [1.5, -0.0, 1e300, True, None],
        "x-vendor": {"k": []},
    },
    {"role": "user", "content": '中文 🎉 \u0000 \u2028 \\ " \n'},
    {"role": "user", "content": "", "metadata": {"big": 2**63 - 1, "small": -(2**63)}},
]


@pytest.mark.parametrize("item", CHAT_ITEMS)
def test_round_trip_is_exact(item: dict[str, Any]) -> None:
    message = Message.from_dict(item)
    assert message.to_dict() == item
    assert list(message.to_dict()) == list(item)  # key order kept too
    assert Message.from_json(message.raw) == message


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(
    st.dictionaries(st.text(max_size=8), json_values, max_size=5),
    st.sampled_from(
        [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "c", "content": ""}]
    ),
)
def test_any_json_object_round_trips(extra: dict[str, Any], message: dict[str, Any]) -> None:
    item = {**extra, **message}
    assert Message.from_dict(item).to_dict() == item


def test_to_dict_returns_a_fresh_copy() -> None:
    message = Message.from_dict({"role": "user", "content": [{"type": "text", "text": "a"}]})
    first = message.to_dict()
    first["content"][0]["text"] = "changed"
    first["role"] = "system"
    assert message.to_dict() == {"role": "user", "content": [{"type": "text", "text": "a"}]}


def test_message_is_immutable_and_hashable() -> None:
    message = Message.from_dict({"role": "user", "content": "a"})
    # Every slot is read-only too, not only the public names.
    for name in (*Message.__slots__, "raw"):
        with pytest.raises(AttributeError):
            setattr(message, name, b"{}")
    with pytest.raises(AttributeError):
        message.anything = 1
    assert message.raw == b'{"role":"user","content":"a"}'
    assert copy.deepcopy(message) is message
    assert {message, Message({"role": "user", "content": "a"})} == {message}


def test_role_and_type() -> None:
    assert Message.from_dict({"role": "tool", "tool_call_id": "c", "content": "x"}).role == "tool"
    item = Message.from_dict(
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}
    )
    assert (item.role, item.type) == (None, "function_call")


def test_conversation_is_an_immutable_snapshot() -> None:
    items = CHAT_ITEMS[:3]
    conversation = Conversation("t", 3, tuple(Message.from_dict(i) for i in items))
    assert conversation.to_list() == items
    listed = conversation.to_list()
    listed[0]["content"] = "changed"
    listed.append({"role": "user"})
    assert conversation.to_list() == items
    with pytest.raises(AttributeError):
        conversation.version = 4
    assert Conversation("t", 0).to_list() == []


def test_python_values_that_orjson_maps_are_stored_as_json() -> None:
    assert Message.from_dict({"role": "user", "content": "a", "tags": ("a", "b")}).to_dict() == {
        "role": "user",
        "content": "a",
        "tags": ["a", "b"],
    }
    assert Message.from_dict(OrderedDict(role="user", content="x")).to_dict() == {
        "role": "user",
        "content": "x",
    }


@dataclass
class Point:
    x: int


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        ("not a dict", "must be a dict"),
        (["role", "user"], "must be a dict"),
        ({"content": "no role"}, "needs a 'role'"),
        ({"role": 1, "content": "x"}, "role must be a string"),
        ({"role": None, "content": "x"}, "role must be a string"),
        ({"role": "robot", "content": "x"}, "unknown role 'robot'"),
        ({"role": "user", "content": "x", "extra": {1, 2}}, "cannot be encoded as JSON"),
        ({"role": "user", "content": "x", "extra": object()}, "cannot be encoded as JSON"),
        ({"role": "user", "content": "x", "extra": b"bytes"}, "cannot be encoded as JSON"),
        ({"role": "user", "content": "x", "extra": {1: "int key"}}, "cannot be encoded as JSON"),
        ({"role": "user", "content": "x", "extra": 2**64}, "cannot be encoded as JSON"),
        ({"role": "user", "content": "x", "extra": datetime.now(UTC)}, "cannot be encoded as JSON"),
        ({"role": "user", "content": "x", "extra": Point(1)}, "cannot be encoded as JSON"),
        ({"role": "user", "content": "x", "extra": [math.nan]}, "NaN or Infinity"),
        ({"role": "user", "content": "x", "extra": {"x": -math.inf}}, "NaN or Infinity"),
    ],
)
def test_invalid_messages_are_rejected_with_a_clear_error(item: Any, needle: str) -> None:
    with pytest.raises(InvalidMessage, match=needle.replace("(", r"\(")):
        Message.from_dict(item)


def test_size_cap() -> None:
    item = {"role": "user", "content": "x" * 100}
    size = len(Message.from_dict(item).raw)
    assert Message.from_dict(item, max_bytes=size).raw
    with pytest.raises(MessageTooLarge, match=f"{size} bytes encoded") as info:
        Message.from_dict(item, max_bytes=size - 1)
    assert (info.value.size, info.value.limit) == (size, size - 1)


def test_from_json_validates() -> None:
    with pytest.raises(InvalidMessage, match="not valid JSON"):
        Message.from_json(b"{nope")
    with pytest.raises(InvalidMessage, match="JSON object"):
        Message.from_json(b"[1]")
    with pytest.raises(InvalidMessage, match="unknown role"):
        Message.from_json(b'{"role": "x"}')
    with pytest.raises(InvalidMessage, match="as bytes"):
        Message.from_json('{"role": "user"}')  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("batch", "needle"),
    [
        ([], "empty"),
        ({"role": "user"}, "list of message dicts"),
        ("user", "list of message dicts"),
        (None, "list of message dicts"),
        ([{"role": "user"}] * 4, "over the limit of 3"),
    ],
)
def test_invalid_batches(batch: Any, needle: str) -> None:
    with pytest.raises(InvalidBatch, match=needle):
        encode_batch(batch, max_message_bytes=1000, max_batch_messages=3)


def test_batch_error_names_the_bad_message() -> None:
    with pytest.raises(InvalidMessage, match=r"messages\[1\]: unknown role"):
        encode_batch(
            [{"role": "user", "content": "hi"}, {"role": "bot"}],
            max_message_bytes=1000,
            max_batch_messages=3,
        )
