"""The shape a message must have, per role (Chat Completions) or type (Responses API items).

`check_shape` runs on every append, on the dict the caller passed, before it is encoded:
a message the provider would refuse later is refused now, before it is in the log forever.
It looks only at the fields it names (no recursion into the rest), and unknown extra
fields, unknown content part types and unknown Responses item types stay allowed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from ._quote import quote
from .errors import InvalidMessage

__all__ = ["ROLES", "check_shape"]

_Item = Mapping[str, Any]


def check_shape(item: _Item) -> None:
    """Raise `InvalidMessage` saying what is wrong if ``item`` is not a valid message."""
    role = item.get("role")
    if role is None and "role" not in item:
        kind = item.get("type")
        if not isinstance(kind, str):
            raise InvalidMessage(
                f"a message needs a 'role' (one of {', '.join(sorted(ROLES))}), "
                "or a string 'type' for a Responses API item"
            )
        item_check = _ITEMS.get(kind)
        if item_check is not None:
            item_check(item)
        return
    if not isinstance(role, str):
        raise InvalidMessage(f"role must be a string, got {type(role).__name__}")
    role_check = ROLES.get(role)
    if role_check is None:
        raise InvalidMessage(f"unknown role {quote(role)}: use one of {', '.join(sorted(ROLES))}")
    role_check(item)


# -- Chat Completions roles (and Responses API message items, which share them) ------------


def _text_content(item: _Item) -> None:
    """system, developer: a string or a list of text parts."""
    _content(item, what="text parts", parts=_TEXT_PARTS)


def _user(item: _Item) -> None:
    _content(item, what="content parts", parts=None)


def _assistant(item: _Item) -> None:
    content = item.get("content")
    if (
        content is None
        and item.get("tool_calls") is None
        and item.get("function_call") is None
        and item.get("refusal") is None
        and item.get("audio") is None
    ):
        raise InvalidMessage(
            "an assistant message needs 'content' (a string or a list of parts), "
            "or 'tool_calls', 'function_call', 'refusal' or 'audio' instead"
        )
    if content is not None:
        _content(item, what="content parts", parts=None, empty_ok=True)
    calls = item.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list | tuple):
            raise InvalidMessage(f"tool_calls must be a list, got {type(calls).__name__}")
        for index, call in enumerate(calls):
            _tool_call(call, index)
    function_call = item.get("function_call")
    if function_call is not None:
        _function(function_call, "function_call")
    _optional_str(item, "refusal")


def _tool(item: _Item) -> None:
    _required_str(item, "tool_call_id", "a tool message")
    _content(item, what="content parts", parts=None, empty_ok=True)


def _function_message(item: _Item) -> None:
    _required_str(item, "name", "a function message")


#: Chat Completions roles and the check of each.
ROLES: Final[dict[str, Callable[[_Item], None]]] = {
    "system": _text_content,
    "developer": _text_content,
    "user": _user,
    "assistant": _assistant,
    "tool": _tool,
    "function": _function_message,
}


# -- Responses API items without a role ----------------------------------------------------


def _function_call_item(item: _Item) -> None:
    for field in ("call_id", "name", "arguments"):
        _required_str(item, field, "a function_call item")


def _function_call_output_item(item: _Item) -> None:
    _required_str(item, "call_id", "a function_call_output item")
    output = item.get("output")
    if not isinstance(output, str | list | tuple):
        raise InvalidMessage(
            "a function_call_output item needs 'output' (a string or a list of parts), "
            f"got {_kind(output)}"
        )


_ITEMS: Final[dict[str, Callable[[_Item], None]]] = {
    "function_call": _function_call_item,
    "function_call_output": _function_call_output_item,
}


# -- content and its parts -----------------------------------------------------------------

#: Fields that known part types need, each a string (text) or an object (media).
_PART_FIELDS: Final[dict[str, tuple[str, type]]] = {
    "text": ("text", str),
    "input_text": ("text", str),
    "output_text": ("text", str),
    "refusal": ("refusal", str),
    "image_url": ("image_url", dict),
    "input_audio": ("input_audio", dict),
    "file": ("file", dict),
}
_TEXT_PARTS: Final = frozenset({"text", "input_text"})


def _content(
    item: _Item, *, what: str, parts: frozenset[str] | None, empty_ok: bool = False
) -> None:
    content = item.get("content")
    if isinstance(content, str):
        return
    role = item.get("role")
    if not isinstance(content, list | tuple):
        raise InvalidMessage(
            f"a {role} message needs 'content': a string or a list of {what}, got {_kind(content)}"
        )
    if not content and not empty_ok:
        raise InvalidMessage(f"a {role} message's content list is empty: give at least one part")
    for index, part in enumerate(content):
        # Inline, the common case: a valid text part (allowed for every role).
        if (
            type(part) is not dict
            or part.get("type") != "text"
            or type(part.get("text")) is not str
        ):
            _part(part, index, parts)


def _part(part: object, index: int, allowed: frozenset[str] | None) -> None:
    if isinstance(part, dict):
        kind = part.get("type")
        field = _PART_FIELDS.get(kind) if isinstance(kind, str) else None
        if (
            field is not None
            and (allowed is None or kind in allowed)
            and isinstance(part.get(field[0]), field[1])
            and (kind != "image_url" or isinstance(part["image_url"].get("url"), str))
        ):
            return  # the common case, a valid part of a known type
    _part_in_detail(part, f"content[{index}]", allowed)


def _part_in_detail(part: object, where: str, allowed: frozenset[str] | None) -> None:
    if not isinstance(part, dict):
        raise InvalidMessage(
            f"{where} must be an object such as {{'type': 'text', 'text': 'hi'}}, got {_kind(part)}"
        )
    kind = part.get("type")
    if not isinstance(kind, str):
        raise InvalidMessage(f"{where} needs a string 'type', got {_kind(kind)}")
    if allowed is not None and kind not in allowed:
        raise InvalidMessage(
            f"{where} is a {quote(kind)} part; this role takes only "
            f"{' or '.join(sorted(allowed))} parts"
        )
    field = _PART_FIELDS.get(kind)
    if field is not None and not isinstance(part.get(field[0]), field[1]):
        expected = "a string" if field[1] is str else "an object"
        raise InvalidMessage(
            f"{where} of type {quote(kind)} needs {quote(field[0])}: {expected}, "
            f"got {_kind(part.get(field[0]))}"
        )
    if kind == "image_url" and not isinstance(part["image_url"].get("url"), str):
        raise InvalidMessage(f"{where}.image_url needs a string 'url'")


def _tool_call(call: object, index: int) -> None:
    if not isinstance(call, dict):
        raise InvalidMessage(f"tool_calls[{index}] must be an object, got {_kind(call)}")
    kind = call.get("type")
    if not isinstance(call.get("id"), str) or not isinstance(kind, str):
        field = "type" if isinstance(call.get("id"), str) else "id"
        raise InvalidMessage(
            f"tool_calls[{index}] needs a string {field!r}, got {_kind(call.get(field))}"
        )
    if kind == "function":
        function = call.get("function")
        if not _is_function(function):
            _function(function, f"tool_calls[{index}].function")


def _is_function(function: object) -> bool:
    return (
        isinstance(function, dict)
        and isinstance(function.get("name"), str)
        and isinstance(function.get("arguments"), str)
    )


def _function(function: object, where: str) -> None:
    if not isinstance(function, dict):
        raise InvalidMessage(
            f"{where} must be an object with string 'name' and 'arguments', got {_kind(function)}"
        )
    if not isinstance(function.get("name"), str) or not isinstance(function.get("arguments"), str):
        field = "arguments" if isinstance(function.get("name"), str) else "name"
        raise InvalidMessage(f"{where} needs a string {field!r}, got {_kind(function.get(field))}")


# -- fields --------------------------------------------------------------------------------


def _required_str(item: _Item, field: str, what: str) -> None:
    if not isinstance(item.get(field), str):
        raise InvalidMessage(f"{what} needs a string {field!r}, got {_kind(item.get(field))}")


def _optional_str(item: _Item, field: str) -> None:
    value = item.get(field)
    if value is not None and not isinstance(value, str):
        raise InvalidMessage(f"{field} must be a string or null, got {_kind(value)}")


def _kind(value: object) -> str:
    """What a wrong value is: 'nothing' when absent, else its JSON type."""
    if value is None:
        return "null or nothing"
    return _JSON_TYPES.get(type(value), type(value).__name__)


_JSON_TYPES: Final[dict[type, str]] = {
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    list: "an array",
    tuple: "an array",
    dict: "an object",
}
