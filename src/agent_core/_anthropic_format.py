"""Chat Completions messages as an Anthropic Messages API request.

One conversion serves both `AnthropicChatModel` and the online count
(`TokenCounter.count_messages_online`):

* ``system`` and ``developer`` messages -> top-level ``system`` text blocks, in order;
* ``user`` and ``assistant`` text (a string or text parts) -> ``text`` blocks; empty and
  whitespace-only texts are left out, as the API refuses them;
* ``image_url`` parts, where images are taken -> ``image`` blocks: a ``data:`` URL as a
  base64 source, an http(s) URL as a url source;
* assistant ``tool_calls`` -> ``tool_use`` blocks (``input`` = the parsed arguments);
* ``tool`` messages -> ``tool_result`` blocks in a user turn;
* consecutive turns of one role -> one turn, as the API expects alternating roles;
* tools in function format -> ``{"name", "description", "input_schema"}``.

Other parts (audio, files; images where they are not taken), Responses API items and
legacy ``function`` messages are refused with `InvalidArgument` rather than left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

from ._quote import quote
from .errors import InvalidArgument
from .messages import Message

__all__ = ["Conversion", "Place", "convert_messages", "convert_tools", "encode_request"]

_EMPTY_SCHEMA: Final[Mapping[str, Any]] = {"type": "object", "properties": {}}
_TEXT_PARTS: Final = frozenset({"text", "input_text", "output_text"})
_IMAGE_TYPES: Final = ("image/jpeg", "image/png", "image/gif", "image/webp")

#: Which parts a content takes: ``"images"`` text and image_url parts (user and tool
#: messages of a request); the others text only, each with its own refusal.
_Parts = Literal["images", "system", "assistant", "count"]
_REFUSALS: Final[Mapping[str, str]] = {
    "images": "Anthropic's API takes text and image_url parts, got a {}; send audio and files "
    "with the provider's own client",
    "system": "a system prompt takes text parts only (Anthropic's is text), got a {}",
    "assistant": "an assistant message takes text parts and tool_calls only, got a {}",
    "count": "online counts take text parts only, got a {}; count images, audio and files "
    "with the provider's own client",
}


@dataclass(frozen=True, slots=True)
class Place:
    """Where one message's blocks went: ``system[first:last + 1]``, or
    ``turns[turn]["content"][first:last + 1]``."""

    #: None for a system or developer message (its blocks are in ``system``).
    turn: int | None
    first: int
    last: int
    #: The message joined a turn that an earlier message of its role began.
    continued: bool = False


@dataclass(frozen=True, slots=True)
class Conversion:
    """A conversation converted: fresh dicts, which the caller may change."""

    system: list[dict[str, Any]]
    #: ``{"role": "user" | "assistant", "content": [block, ...]}``, roles alternating.
    turns: list[dict[str, Any]]
    #: Per message, where its blocks went; None for a message that gave no block.
    places: list[Place | None]


def convert_messages(
    messages: Sequence[Mapping[str, Any]] | Sequence[Message], *, images: bool
) -> Conversion:
    """The conversion of ``messages`` (dicts or `Message`); ``images``: take image_url parts.

    Raises `InvalidArgument`, naming the message, for one that does not convert, and for
    a conversation without a user or assistant block (the API takes no request without).
    """
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise InvalidArgument(
            f"messages must be a sequence of message dicts or Message, got {type(messages)!r}"
        )
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    places: list[Place | None] = []
    for index, message in enumerate(messages):
        item = message.to_dict() if isinstance(message, Message) else message
        try:
            role, blocks = _convert(item, images)
        except InvalidArgument as exc:
            exc.args = (f"messages[{index}]: {exc}",)
            raise
        place: Place | None = None
        if not blocks:
            pass
        elif role == "system":
            place = Place(None, len(system), len(system) + len(blocks) - 1)
            system.extend(blocks)
        elif turns and turns[-1]["role"] == role:
            content = turns[-1]["content"]
            place = Place(len(turns) - 1, len(content), len(content) + len(blocks) - 1, True)
            content.extend(blocks)
        else:
            place = Place(len(turns), 0, len(blocks) - 1)
            turns.append({"role": role, "content": blocks})
        places.append(place)
    if not turns:
        raise InvalidArgument(
            "messages must hold a user or assistant message with content: "
            "Anthropic's API takes no request without one"
        )
    return Conversion(system, turns, places)


def convert_tools(tools: object) -> list[dict[str, Any]]:
    """Tool definitions (Chat Completions or bare function format) as the API takes them."""
    if tools is None:
        return []
    if isinstance(tools, str | bytes) or not isinstance(tools, Sequence):
        raise InvalidArgument(f"tools must be a sequence of tool dicts, got {type(tools)!r}")
    return [_tool(tool, index) for index, tool in enumerate(tools)]


def encode_request(body: Mapping[str, Any]) -> bytes:
    """``body`` as JSON: keys in the order given, so equal bodies are equal bytes."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError as exc:
        raise InvalidArgument(f"messages and tools must be JSON-serializable: {exc}") from None


def _convert(item: object, images: bool) -> tuple[str, list[dict[str, Any]]]:
    """The Anthropic role (``"system"`` for the top-level prompt) and content blocks."""
    if not isinstance(item, Mapping):
        raise InvalidArgument(f"a message must be a dict or Message, got {type(item)!r}")
    role = item.get("role")
    # The online count has always taken text only; a request takes images where the API does.
    parts: _Parts = "images" if images else "count"
    if role in ("system", "developer"):
        return "system", _blocks(item.get("content"), "system" if images else "count")
    if role == "user":
        return "user", _blocks(item.get("content"), parts)
    if role == "assistant":
        if item.get("function_call") is not None:
            raise InvalidArgument(
                "the legacy function_call has no id to pair with its result; use tool_calls"
            )
        blocks = _blocks(item.get("content"), "assistant" if images else "count")
        calls = item.get("tool_calls") or []
        if not isinstance(calls, list):
            raise InvalidArgument(f"tool_calls must be a list, got {type(calls)!r}")
        blocks.extend(_tool_use(call, index) for index, call in enumerate(calls))
        return "assistant", blocks
    if role == "tool":
        call_id = item.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise InvalidArgument(f"a tool message needs a str tool_call_id, got {quote(call_id)}")
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
        blocks = _blocks(item.get("content"), parts)
        if blocks:
            result["content"] = blocks
        return "user", [result]
    raise InvalidArgument(
        "Anthropic's Messages API takes Chat Completions messages of role system, developer, "
        f"user, assistant or tool, got role {quote(role)} (type {quote(item.get('type'))})"
    )


def _blocks(content: object, parts: _Parts) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content.strip() else []
    if not isinstance(content, list):
        raise InvalidArgument(f"content must be a str or a list of parts, got {type(content)!r}")
    blocks: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type", "text") if isinstance(part, Mapping) else type(part).__name__
        text = part.get("text") if isinstance(part, Mapping) else None
        if kind in _TEXT_PARTS and isinstance(text, str):
            if text.strip():
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url" and parts == "images" and isinstance(part, Mapping):
            blocks.append(_image(part.get("image_url")))
        else:
            raise InvalidArgument(_REFUSALS[parts].format(f"{quote(kind)} part"))
    return blocks


def _image(image: object) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, Mapping) else image
    if isinstance(url, str) and url.startswith("data:"):
        head, comma, data = url[5:].partition(",")
        media_type, _, encoding = head.partition(";")
        if comma and data and encoding == "base64" and media_type in _IMAGE_TYPES:
            return {
                "type": "image",
                "source": {"type": "base64", "media_type": media_type, "data": data},
            }
    elif isinstance(url, str) and url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidArgument(
        "an image_url part needs a url: an http(s) URL, or a base64 data: URL of "
        f"{', '.join(_IMAGE_TYPES)} (what Anthropic takes), got {quote(url)}"
    )


def _tool_use(call: object, index: int) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, Mapping) else None
    if (
        not isinstance(call, Mapping)
        or call.get("type", "function") != "function"
        or not isinstance(call.get("id"), str)
        or not isinstance(function, Mapping)
        or not isinstance(function.get("name"), str)
        or not isinstance(function.get("arguments"), str)
    ):
        raise InvalidArgument(
            f"tool_calls[{index}] must be a function call with a str id, function.name and "
            f"function.arguments, got {quote(call)}"
        )
    try:
        arguments = orjson.loads(function["arguments"])
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(
            f"tool_calls[{index}].function.arguments is not valid JSON ({exc}); the provider "
            "takes a tool call's input as a JSON object"
        ) from None
    if not isinstance(arguments, dict):
        raise InvalidArgument(
            f"tool_calls[{index}].function.arguments must encode a JSON object, "
            f"got {type(arguments).__name__}"
        )
    return {"type": "tool_use", "id": call["id"], "name": function["name"], "input": arguments}


def _tool(tool: object, index: int) -> dict[str, Any]:
    # {"type": "function", "function": {...}}, or bare as the legacy ``functions`` had it.
    wrapped = tool.get("function") if isinstance(tool, Mapping) else None
    function = wrapped if isinstance(wrapped, Mapping) else tool
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise InvalidArgument(
            f"tools[{index}] must be a function definition with a string 'name', got {quote(tool)}"
        )
    schema = function.get("parameters", _EMPTY_SCHEMA)
    if not isinstance(schema, Mapping):
        raise InvalidArgument(
            f"tools[{index}] parameters must be a JSON schema object, got {quote(schema)}"
        )
    converted: dict[str, Any] = {"name": function["name"], "input_schema": schema}
    if isinstance(function.get("description"), str):
        converted["description"] = function["description"]
    return converted
