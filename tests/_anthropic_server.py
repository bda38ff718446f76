"""A local HTTP server that speaks Anthropic's Messages API, scripted per test.

It is tests/_chat_server.py's `ChatServer` (recording, the script of replies, streams and
dropped connections, waits that end when the server stops) with Anthropic's endpoints:

* ``POST /v1/messages`` checks the request as the API does (``x-api-key``,
  ``anthropic-version``, ``max_tokens``, at most 4 ``cache_control`` blocks, then the
  messages, system and tools with tests/test_online_count.py's validator: roles
  alternating, tool results answering the previous turn's calls, no empty texts) and
  answers with the next scripted action; a `Stream`'s JSON events go out as
  ``event: <type>`` / ``data: <json>`` pairs, as Anthropic frames them;
* ``POST /v1/messages/count_tokens`` answers ``{"input_tokens": n}`` computed from the body
  by that validator (never scripted), so tests can compare counts and count requests.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ._chat_server import ChatServer, Drop, Recorded, Stream
from ._chat_server import _handler as _chat_handler
from .test_online_count import _Reject, count_request

API_KEY = "sk-ant-api03-local-test-key"
VERSION = "2023-06-01"
MESSAGES_PATH = "/v1/messages"
COUNT_PATH = "/v1/messages/count_tokens"
SERVED_MODEL = "claude-sonnet-4-5-20250929"
#: Fields of a Messages request besides the counted ones.
_REQUEST_FIELDS = {
    "max_tokens",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tool_choice",
    "stop_sequences",
    "metadata",
}


class AnthropicServer(ChatServer):
    """``ChatServer`` answering Anthropic's endpoints; ``base_url`` has no ``/v1``."""

    def __init__(self) -> None:
        super().__init__()
        self._httpd.RequestHandlerClass = _handler(self)

    def __enter__(self) -> AnthropicServer:
        self.start()
        return self

    @property
    def base_url(self) -> str:
        return self.url.removesuffix("/v1")

    def calls(self, path: str = MESSAGES_PATH) -> list[Recorded]:
        """The requests to ``path``."""
        return [request for request in self.requests if request.path == path]


def _handler(server: AnthropicServer) -> type:
    base: Any = _chat_handler(server)

    class Handler(base):  # type: ignore[misc]
        def do_POST(self) -> None:
            request = self._record()
            try:
                body = _checked(request)
                if request.path == COUNT_PATH:
                    self._json(200, {"input_tokens": count_request(body)})
                    return
            except _Reject as exc:
                headers = {"request-id": "req_local"}
                self._json(exc.status, error_body(exc.error_type, str(exc)), headers)
                return
            action = server._next()
            if isinstance(action, Drop):
                self.close_connection = True
            elif isinstance(action, Stream):
                self._stream(replace(action, events=[_frame(e) for e in action.events], done=False))
            elif server._wait(action.delay) and server._hold(action.until):
                self._json(action.status, action.body, action.headers)

    return Handler


def _checked(request: Recorded) -> dict[str, Any]:
    """The body of a request the API would take; raises `_Reject` as the API answers."""
    if request.path not in (MESSAGES_PATH, COUNT_PATH):
        raise _Reject(404, "not_found_error", f"Not Found: {request.path}")
    if request.headers.get("x-api-key") != API_KEY:
        raise _Reject(401, "authentication_error", "invalid x-api-key")
    if request.headers.get("anthropic-version") != VERSION:
        raise _Reject(400, "invalid_request_error", "anthropic-version: a known version is needed")
    if request.headers.get("content-type") != "application/json":
        raise _Reject(400, "invalid_request_error", "the body must be JSON")
    try:
        body = request.json()
    except ValueError:
        raise _Reject(400, "invalid_request_error", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise _Reject(400, "invalid_request_error", "the body must be a JSON object")
    if request.path == COUNT_PATH:
        return body
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise _Reject(400, "invalid_request_error", "max_tokens: Field required")
    counted = {key: value for key, value in body.items() if key not in _REQUEST_FIELDS}
    marks = _strip_cache_control(counted)
    if marks > 4:
        raise _Reject(
            400,
            "invalid_request_error",
            f"A maximum of 4 blocks with cache_control may be provided. Found {marks}.",
        )
    count_request(counted)
    return body


def _strip_cache_control(body: dict[str, Any]) -> int:
    """Removes every block's ``cache_control`` (checked) and stands images in for text, so
    the count-tokens validator takes the rest; returns how many blocks had one."""
    blocks: list[dict[str, Any]] = [*(body.get("system") or []), *(body.get("tools") or [])]
    for message in body.get("messages") or []:
        for block in message.get("content") or []:
            blocks.append(block)
            if block.get("type") == "tool_result" and isinstance(block.get("content"), list):
                blocks.extend(block["content"])
    marks = 0
    for block in blocks:
        if "cache_control" in block:
            if block.pop("cache_control") != {"type": "ephemeral"}:
                raise _Reject(400, "invalid_request_error", "cache_control: type 'ephemeral'")
            marks += 1
        if block.get("type") == "image":
            source = block.pop("source", None)
            if not isinstance(source, dict) or not (
                (source.get("type") == "base64" and {"media_type", "data"} <= set(source))
                or (source.get("type") == "url" and "url" in source)
            ):
                raise _Reject(400, "invalid_request_error", "image.source: a base64 or url source")
            block.update(type="text", text="[image]")
    return marks


def _frame(event: object) -> bytes:
    if isinstance(event, bytes):
        return event
    assert isinstance(event, Mapping)
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def frames(*events: dict[str, Any]) -> bytes:
    """Events framed as the API frames them, to be written at once (one `Stream` event)."""
    return b"".join(map(_frame, events))


def error_body(error_type: str, message: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": "req_local",
    }


def usage(
    input_tokens: int = 10, output_tokens: int = 5, *, written: int = 0, read: int = 0
) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": read,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def message_body(
    *content: dict[str, Any], stop_reason: str = "end_turn", used: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "id": "msg_local",
        "type": "message",
        "role": "assistant",
        "model": SERVED_MODEL,
        "content": list(content),
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage() if used is None else used,
    }


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def tool_use(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": call_id, "name": name, "input": arguments}


# Streamed events, as the API sends them.


def message_start(used: dict[str, Any]) -> dict[str, Any]:
    message = message_body(stop_reason="", used=used) | {"stop_reason": None}
    return {"type": "message_start", "message": message}


def block_start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    started = copy.deepcopy(block)
    if started["type"] == "text":
        started["text"] = ""
    elif started["type"] == "tool_use":
        started["input"] = {}
    return {"type": "content_block_start", "index": index, "content_block": started}


def text_delta(index: int, value: str) -> dict[str, Any]:
    return {
        "type": "content_block_delta",
        "index": index,
        "delta": {"type": "text_delta", "text": value},
    }


def json_delta(index: int, partial: str) -> dict[str, Any]:
    delta = {"type": "input_json_delta", "partial_json": partial}
    return {"type": "content_block_delta", "index": index, "delta": delta}


def block_stop(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


def message_delta(stop_reason: str, output_tokens: int) -> dict[str, Any]:
    return {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": {"output_tokens": output_tokens},
    }


MESSAGE_STOP: dict[str, Any] = {"type": "message_stop"}
PING: dict[str, Any] = {"type": "ping"}


def error_event(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}
