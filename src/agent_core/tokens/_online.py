"""The optional online count: Anthropic's count-tokens endpoint, for Claude models.

Nothing here runs unless `TokenCounter.count_messages_online` is called. It converts
Chat Completions messages to a Messages API request (``POST /v1/messages/count_tokens``)
as `agent_core._anthropic_format` does for `AnthropicChatModel` (system prompt pulled out,
tool calls and results as content blocks, same-role turns merged) and sends it in one
request, never retried. Text only: images, audio, files, Responses API items and legacy
``function`` messages are refused with `InvalidArgument` rather than left out, which
would undercount.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import SplitResult, urlsplit

import orjson

from .._anthropic_format import convert_messages, convert_tools, encode_request
from .._urls import show_url
from .._validation import check_seconds
from ..errors import InvalidArgument, ProviderError
from ..messages import Message

__all__ = ["DEFAULT_BASE_URL", "check_online_args", "count_tokens_online", "is_claude"]

DEFAULT_BASE_URL: Final = "https://api.anthropic.com"
_PATH: Final = "/v1/messages/count_tokens"
_ANTHROPIC_VERSION: Final = "2023-06-01"
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
    converted = convert_messages(messages, images=False)
    body: dict[str, Any] = {"model": model, "messages": converted.turns}
    if converted.system:
        body["system"] = converted.system
    definitions = convert_tools(tools)
    if definitions:
        body["tools"] = definitions
    return encode_request(body)


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
