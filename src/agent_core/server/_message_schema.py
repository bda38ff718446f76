"""The JSON Schemas of a message in the OpenAPI spec: the rules of `agent_core._message_shape`.

The checks at append are the authority (their typed errors say more than a schema can); these
schemas state the same rules for clients and fuzzers, as far as JSON Schema can say them.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["MESSAGE_SCHEMA", "USER_MESSAGE_SCHEMA"]

_STRING: Final = {"type": "string"}
_OBJECT: Final = {"type": "object"}


def _needs(kind: str, field: str, schema: dict[str, Any]) -> dict[str, Any]:
    """If ``type`` is ``kind``, ``field`` is required and matches ``schema``."""
    return {
        "if": {"properties": {"type": {"const": kind}}},
        "then": {"required": [field], "properties": {field: schema}},
    }


_PART: Final = {
    "type": "object",
    "description": "A content part: a string `type`; known types need their field.",
    "required": ["type"],
    "properties": {"type": _STRING},
    "allOf": [
        _needs("text", "text", _STRING),
        _needs("input_text", "text", _STRING),
        _needs("output_text", "text", _STRING),
        _needs("refusal", "refusal", _STRING),
        _needs(
            "image_url",
            "image_url",
            {"type": "object", "required": ["url"], "properties": {"url": _STRING}},
        ),
        _needs("input_audio", "input_audio", _OBJECT),
        _needs("file", "file", _OBJECT),
    ],
}
_TEXT_PART: Final = {
    "type": "object",
    "required": ["type", "text"],
    "properties": {"type": {"enum": ["text", "input_text"]}, "text": _STRING},
}
_PARTS: Final = {"type": "array", "items": _PART}
_FUNCTION: Final = {
    "type": "object",
    "required": ["name", "arguments"],
    "properties": {"name": _STRING, "arguments": _STRING},
}
_TOOL_CALL: Final = {
    "type": "object",
    "required": ["id", "type"],
    "properties": {"id": _STRING, "type": _STRING},
    "allOf": [_needs("function", "function", _FUNCTION)],
}


def _role(role: str | list[str], required: list[str], **properties: Any) -> dict[str, Any]:
    roles = [role] if isinstance(role, str) else role
    return {
        "required": ["role", *required],
        "properties": {"role": {"enum": roles}, **properties},
    }


_INSTEAD_OF_CONTENT: Final = ("tool_calls", "function_call", "refusal", "audio")
_ROLES: Final = [
    _role(
        ["system", "developer"],
        ["content"],
        content={"anyOf": [_STRING, {"type": "array", "minItems": 1, "items": _TEXT_PART}]},
    ),
    _role("user", ["content"], content={"anyOf": [_STRING, {**_PARTS, "minItems": 1}]}),
    {
        **_role(
            "assistant",
            [],
            content={"anyOf": [_STRING, _PARTS, {"type": "null"}]},
            tool_calls={"type": "array", "items": _TOOL_CALL},
            function_call=_FUNCTION,
            refusal={"type": ["string", "null"]},
        ),
        "anyOf": [
            {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}},
            *(
                {"required": [field], "properties": {field: {"not": {"type": "null"}}}}
                for field in _INSTEAD_OF_CONTENT
            ),
        ],
    },
    _role(
        "tool",
        ["tool_call_id", "content"],
        tool_call_id=_STRING,
        content={"anyOf": [_STRING, _PARTS]},
    ),
    _role("function", ["name"], name=_STRING),
]
_ITEM: Final = {
    "required": ["type"],
    "not": {"required": ["role"]},
    "properties": {"type": _STRING},
    "allOf": [
        {
            "if": {"properties": {"type": {"const": "function_call"}}},
            "then": {
                "required": ["call_id", "name", "arguments"],
                "properties": {"call_id": _STRING, "name": _STRING, "arguments": _STRING},
            },
        },
        {
            "if": {"properties": {"type": {"const": "function_call_output"}}},
            "then": {
                "required": ["call_id", "output"],
                "properties": {"call_id": _STRING, "output": {"type": ["string", "array"]}},
            },
        },
    ],
}

MESSAGE_SCHEMA: Final = {
    "type": "object",
    "description": "A Chat Completions message (a known `role`, with the fields that role "
    "needs) or a Responses API item (a string `type` and no `role`; `function_call` and "
    "`function_call_output` need their fields); any other keys are kept as they are.",
    "anyOf": [*_ROLES, _ITEM],
}
_TEXT: Final = {"type": "string", "pattern": r"\S"}
USER_MESSAGE_SCHEMA: Final = {
    "description": "The user's text, or a user message object.",
    "anyOf": [
        _TEXT,
        {
            "type": "object",
            "required": ["role", "content"],
            "properties": {
                "role": {"const": "user"},
                "content": {"anyOf": [_TEXT, {**_PARTS, "minItems": 1}]},
            },
        },
    ],
}
