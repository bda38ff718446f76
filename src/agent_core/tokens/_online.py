"""The optional online count: Anthropic's count-tokens endpoint, for Claude models.

Nothing here runs unless `TokenCounter.count_messages_online` is called. It converts
Chat Completions messages to a Messages API request (``POST /v1/messages/count_tokens``)
and sends it in one request, never retried:

* ``system`` and ``developer`` messages -> top-level ``system`` text blocks, in order;
* ``user`` and ``assistant`` text (a string or text parts) -> ``text`` blocks; empty and
  whitespace-only texts are left out, as the API refuses them;
* assistant ``tool_calls`` -> ``tool_use`` blocks (``input`` = the parsed arguments);
* ``tool`` messages -> ``tool_result`` blocks in a user turn;
* consecutive turns of one role -> one turn, as the API expects alternating roles;
* tools in function format -> ``{"name", "description", "input_schema"}``.

Images, audio, files, Responses API items and legacy ``function`` messages are refused
with `InvalidArgument` rather than left out, which would undercount.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import SplitResult, urlsplit

import orjson

from .._quote import quote
from .._urls import show_url
from .._validation import check_seconds
from ..errors import InvalidArgument, ProviderError
from ..messages import Message
from ._chat import _function_of

__all__ = ["DEFAULT_BASE_URL", "check_online_args", "count_tokens_online", "is_claude"]

DEFAULT_BASE_URL: Final = "https://api.anthropic.com"
_PATH: Final = "/v1/messages/count_tokens"
_ANTHROPIC_VERSION: Final = "2023-06-01"
_EMPTY_SCHEMA: Final[Mapping[str, Any]] = {"type": "object", "properties": {}}
_TEXT_PARTS: Final = frozenset({"text", "input_text", "output_text"})
_SNIPPET: Final = 300
_HINTS: Final[Mapping[int, str]] = {
    400: "the provider refused the converted request; check the messages and tools",
    401: "check api_key: it must be a valid Anthropic API key",
    403: "the api_key may not use this model or workspace",
    404: "check the model name and base_url",
    413: "the conversation is over the provider's request size limit",
    429: "rate limited: wait before counting again, or use count_messages (offline)",
}


def is_claude(model: str) -> bool:
    """Whether Anthropic's endpoint counts ``model``."""
    return model.strip().lower().startswith("claude")


def check_online_args(api_key: object, base_url: object, timeout: object) -> str:
    """Validate the arguments of an online count; returns the endpoint's URL."""
    # The key is never echoed: error messages end up in logs.
    if not (
        isinstance(api_key, str)
        and api_key
        and api_key.isascii()
        and api_key.isprintable()
        and " " not in api_key
    ):
        raise InvalidArgument(
            "api_key must be a non-empty str of printable ASCII without spaces "
            f"(an Anthropic API key); got an unusable {type(api_key).__name__} (not shown)"
        )
    parts = _url_parts(base_url)
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument(
            f"base_url must be an http(s) URL such as {DEFAULT_BASE_URL!r}, "
            f"got {show_url(base_url)}"
        )
    if parts.query or parts.fragment:
        raise InvalidArgument(f"base_url must have no query or fragment, got {show_url(base_url)}")
    check_seconds("timeout", timeout)
    return f"{parts.geturl().rstrip('/')}{_PATH}"


def anthropic_request(
    model: str,
    messages: Sequence[Mapping[str, Any]] | Sequence[Message],
    tools: Sequence[Mapping[str, Any]] | None,
) -> bytes:
    """The count-tokens request body (JSON) for ``messages`` and ``tools``."""
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise InvalidArgument(
            f"messages must be a sequence of message dicts or Message, got {type(messages)!r}"
        )
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        item = message.to_dict() if isinstance(message, Message) else message
        try:
            role, blocks = _convert(item)
        except InvalidArgument as exc:
            exc.args = (f"messages[{index}]: {exc}",)
            raise
        if role == "system":
            system.extend(blocks)
        elif turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        elif blocks:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise InvalidArgument(
            "messages must hold a user or assistant message with content: "
            "the provider counts no request without one"
        )
    body: dict[str, Any] = {"model": model, "messages": turns}
    if system:
        body["system"] = system
    if tools is not None:
        if isinstance(tools, str | bytes) or not isinstance(tools, Sequence):
            raise InvalidArgument(f"tools must be a sequence of tool dicts, got {type(tools)!r}")
        if tools:
            body["tools"] = [_tool(tool, index) for index, tool in enumerate(tools)]
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError as exc:
        raise InvalidArgument(f"messages and tools must be JSON-serializable: {exc}") from None


async def count_tokens_online(
    url: str,
    body: bytes,
    api_key: str,
    timeout: float,  # noqa: ASYNC109 - TokenCounter.count_messages_online's own timeout
) -> int:
    """``input_tokens`` of one count-tokens request; raises `ProviderError` on any failure."""
    # Imported here: about 65 ms of imports that offline counting never needs.
    import httpx

    headers = {
        "x-api-key": api_key,
        "anthropic-version": _ANTHROPIC_VERSION,
        "content-type": "application/json",
        "accept": "application/json",
    }
    try:
        # httpx's timeout bounds each phase (connect, each read); this bounds the whole call.
        async with asyncio.timeout(timeout), httpx.AsyncClient(timeout=timeout) as client:
            response = await client.post(url, content=body, headers=headers)
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise ProviderError(
            f"no answer from {url} within {timeout:g} s: the network or the provider is slow; "
            "retry, pass a longer timeout, or use count_messages for an offline estimate",
            status=None,
            error_type=None,
        ) from exc
    except httpx.RequestError as exc:
        raise ProviderError(
            f"could not reach {url}: {type(exc).__name__}: {exc}; check base_url and the "
            "network, or use count_messages for an offline estimate",
            status=None,
            error_type=None,
        ) from exc
    if response.status_code != 200:
        raise _status_error(url, response.status_code, response.headers, response.content)
    tokens = _json(response.content).get("input_tokens")
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ProviderError(
            f"{url} answered 200 without a count of input_tokens: "
            f"{_snippet(response.content)}; is base_url Anthropic's API?",
            status=200,
            error_type=None,
        )
    return tokens


def _url_parts(url: object) -> SplitResult | None:
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url)
        # .port raises for a port out of range, which httpx would refuse untyped; 0 is no port.
        return parts if parts.port != 0 else None
    except ValueError:
        return None


def _convert(item: object) -> tuple[str, list[dict[str, Any]]]:
    """The Anthropic role (``"system"`` for the top-level prompt) and content blocks."""
    if not isinstance(item, Mapping):
        raise InvalidArgument(f"a message must be a dict or Message, got {type(item)!r}")
    role = item.get("role")
    if role in ("system", "developer"):
        return "system", _text_blocks(item.get("content"))
    if role == "user":
        return "user", _text_blocks(item.get("content"))
    if role == "assistant":
        if item.get("function_call") is not None:
            raise InvalidArgument(
                "the legacy function_call has no id to pair with its result; use tool_calls"
            )
        blocks = _text_blocks(item.get("content"))
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
        blocks = _text_blocks(item.get("content"))
        if blocks:
            result["content"] = blocks
        return "user", [result]
    raise InvalidArgument(
        "online counts take Chat Completions messages of role system, developer, user, "
        f"assistant or tool, got role {quote(role)} (type {quote(item.get('type'))})"
    )


def _text_blocks(content: object) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        texts = [content]
    elif isinstance(content, list):
        texts = [_part_text(part) for part in content]
    else:
        raise InvalidArgument(f"content must be a str or a list of parts, got {type(content)!r}")
    return [{"type": "text", "text": text} for text in texts if text.strip()]


def _part_text(part: object) -> str:
    if (
        isinstance(part, Mapping)
        and part.get("type", "text") in _TEXT_PARTS
        and isinstance(part.get("text"), str)
    ):
        text: str = part["text"]
        return text
    kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
    raise InvalidArgument(
        f"online counts take text parts only, got a {quote(kind)} part; count images, audio "
        "and files with the provider's own client"
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
    function = _function_of(tool, index)
    schema = function.get("parameters", _EMPTY_SCHEMA)
    if not isinstance(schema, Mapping):
        raise InvalidArgument(
            f"tools[{index}] parameters must be a JSON schema object, got {quote(schema)}"
        )
    converted: dict[str, Any] = {"name": function["name"], "input_schema": schema}
    if isinstance(function.get("description"), str):
        converted["description"] = function["description"]
    return converted


def _status_error(
    url: str, status: int, headers: Mapping[str, str], content: bytes
) -> ProviderError:
    error = _json(content).get("error")
    error = error if isinstance(error, Mapping) else {}
    error_type = error.get("type") if isinstance(error.get("type"), str) else None
    detail = error.get("message") if isinstance(error.get("message"), str) else None
    hint = _HINTS.get(status) or (
        "the provider failed or is overloaded; retry later, or use count_messages for an "
        "offline estimate"
        if status >= 500
        else "is base_url Anthropic's API?"
    )
    if status == 429 and "retry-after" in headers:
        hint += f" (retry-after: {headers['retry-after']:.20} s)"
    request_id = f" (request-id {headers['request-id']:.100})" if "request-id" in headers else ""
    return ProviderError(
        f"{url} answered {status} {error_type or 'without an error type'}: "
        f"{detail or _snippet(content)}; {hint}{request_id}",
        status=status,
        error_type=error_type,
    )


def _json(content: bytes) -> Mapping[str, Any]:
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _snippet(content: bytes) -> str:
    text = content[:_SNIPPET].decode("utf-8", "replace")
    return repr(text) if text else "an empty body"
