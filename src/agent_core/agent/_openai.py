"""`OpenAIChatModel`: the Chat Completions protocol over httpx (OpenAI, vLLM, Ollama, ...).

Request bodies are assembled from the messages' encoded bytes (``Message.raw``), joined
into the ``messages`` array as they are: a conversation is never re-encoded to be sent.

Retries and errors are `HttpChatModel`'s (agent/_http.py): 408, 429, 5xx, timeouts and
network failures are retried, waiting what the server asks up to ``max_retry_after``; a
429 for ``insufficient_quota`` is never retried; a stream is retried only until its
response starts.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from typing import Any, Final, Literal, get_args

import orjson

from .._quote import quote
from ..errors import InvalidArgument, ModelError
from ..messages import Message
from ._http import (
    HttpChatModel,
    Provider,
    error_details,
    invalid_response,
    is_count,
    json_object,
    retry_after,
)
from ._models import (
    ChatStream,
    Completion,
    StreamEvent,
    Usage,
    check_cache_key,
    check_request,
)

__all__ = ["DEFAULT_BASE_URL", "PROMPT_CACHE_RETENTIONS", "OpenAIChatModel", "PromptCacheRetention"]

DEFAULT_BASE_URL: Final = "https://api.openai.com/v1"
#: How long OpenAI keeps a cached prompt prefix: 5-10 minutes of inactivity, or up to a day.
PromptCacheRetention = Literal["in_memory", "24h"]
PROMPT_CACHE_RETENTIONS: Final = get_args(PromptCacheRetention)
_RESERVED: Final = frozenset(
    {
        "model",
        "messages",
        "tools",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "prompt_cache_key",
        "prompt_cache_retention",
    }
)
_HINTS: Final[Mapping[int, str]] = {
    400: "the server refused the request; check the messages, tools and extra_body",
    401: "check OPENAI_API_KEY (or api_key): the server did not accept it",
    403: "the API key may not use this model, project or region",
    404: "check the model name and base_url (it usually ends in /v1)",
    408: "the server timed out reading the request; retry later",
    413: "the request is over the server's size limit; send a shorter window of the thread",
    422: "the server refused the request's parameters; check the tools and extra_body",
    429: "rate limited: send fewer requests or tokens per minute, or raise max_retries",
}
_API_HINT: Final = "is base_url an OpenAI-compatible API (it usually ends in /v1)?"
#: Where tests/test_chat_models.py finds the Retry-After parsing it checks.
_retry_after = retry_after
_PROVIDER: Final = Provider(
    name="OpenAI",
    base_url_env="OPENAI_BASE_URL",
    api_key_env="OPENAI_API_KEY",
    default_base_url=DEFAULT_BASE_URL,
    path="/chat/completions",
    reserved=_RESERVED,
    hints=_HINTS,
    final_errors={"insufficient_quota": "the account is out of credit: check its plan and billing"},
    api_hint=_API_HINT,
    key_header="authorization",
    key_prefix="Bearer ",
    headers={},
)


class OpenAIChatModel(HttpChatModel):
    """A model behind an OpenAI-compatible ``POST {base_url}/chat/completions``.

    ``base_url`` defaults to ``$OPENAI_BASE_URL``, else OpenAI's API; ``api_key`` to
    ``$OPENAI_API_KEY`` (sent as ``Authorization: Bearer``; a local server may need none,
    OpenAI's API must have one). ``timeout`` bounds each attempt of `complete`; for
    `stream` it bounds the wait for the response to start and each gap between chunks.
    ``extra_body`` adds fields to every request (``temperature``, ``tool_choice``, ...);
    ``headers`` adds HTTP headers (``OpenAI-Organization``, ...). ``max_tokens_param``
    names the field ``max_tokens`` is sent as: o-series models want
    ``"max_completion_tokens"``. ``prompt_cache_retention`` is sent with every request when
    given: ``"24h"`` keeps OpenAI's cached prefixes up to a day (gpt-5.1 and later) instead
    of the 5-10 minutes of inactivity of ``"in_memory"``, so a thread whose user pauses
    still hits its cache (docs/DESIGN.md, "Cache-stable windows"). Retries (see the
    module's docs): at most ``max_retries``, waiting what the server asks up to
    ``max_retry_after`` seconds, else ``backoff`` seconds doubled per attempt up to
    ``max_backoff``, with jitter. One connection pool per instance: close it with `aclose`
    or ``async with``.
    """

    _provider = _PROVIDER

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_retry_after: float = 60.0,
        max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens",
        prompt_cache_retention: PromptCacheRetention | None = None,
        extra_body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if max_tokens_param not in ("max_tokens", "max_completion_tokens"):
            raise InvalidArgument(
                "max_tokens_param must be 'max_tokens' or 'max_completion_tokens', "
                f"got {quote(max_tokens_param)}"
            )
        if prompt_cache_retention not in (None, *PROMPT_CACHE_RETENTIONS):
            raise InvalidArgument(
                "prompt_cache_retention must be 'in_memory', '24h' or None (the provider's "
                f"default), got {quote(prompt_cache_retention)}"
            )
        super().__init__(
            model,
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            max_backoff=max_backoff,
            max_retry_after=max_retry_after,
            extra_body=extra_body,
            headers=headers,
        )
        self._max_tokens_param = max_tokens_param
        if prompt_cache_retention is not None:
            self._extra_body["prompt_cache_retention"] = prompt_cache_retention
        self._head = b'{"model":' + orjson.dumps(model) + b',"messages":['

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        max_tokens: int | None = None,
        cache_key: str | None = None,
    ) -> Completion:
        """The model's reply to ``messages``; raises `ModelError` if none came.

        ``cache_key`` is sent as ``prompt_cache_key``: OpenAI routes requests with one
        key to the same prompt cache (`BaseAgent` sends the thread id)."""
        body = self._body(
            *check_request(messages, tools, max_tokens), max_tokens, cache_key, stream=False
        )
        response = await self._post(self._url, body, stream=False)
        return self._parse(response.content)

    def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        max_tokens: int | None = None,
        cache_key: str | None = None,
    ) -> ChatStream:
        """The reply as it is generated (server-sent events): text deltas, then the Completion.

        Arguments are checked now; the request is sent on the first ``__anext__``.
        """
        body = self._body(
            *check_request(messages, tools, max_tokens), max_tokens, cache_key, stream=True
        )
        return ChatStream(self._events(body))

    def _body(
        self,
        messages: Sequence[Message],
        tools: bytes | None,
        max_tokens: int | None,
        cache_key: str | None,
        *,
        stream: bool,
    ) -> bytes:
        rest: dict[str, Any] = dict(self._extra_body)
        if check_cache_key(cache_key) is not None:
            rest["prompt_cache_key"] = cache_key
        if tools is not None:
            rest["tools"] = orjson.Fragment(tools)
        if max_tokens is not None:
            rest[self._max_tokens_param] = max_tokens
        if stream:
            rest["stream"] = True
            rest["stream_options"] = {"include_usage": True}
        tail = orjson.dumps(rest)
        end = b"]}" if tail == b"{}" else b"]," + tail[1:]
        return b"".join((self._head, b",".join([message.raw for message in messages]), end))

    def _parse(self, content: bytes) -> Completion:
        data = _json_object(content, self._url)
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise _invalid(self._url, "no choices", content)
        message = choices[0].get("message")
        if not isinstance(message, dict):
            raise _invalid(self._url, "no message in choices[0]", content)
        return _completion(
            self._url, message, choices[0].get("finish_reason"), data, content, self._model
        )

    async def _events(self, body: bytes) -> AsyncGenerator[StreamEvent, None]:
        reply = _StreamedReply(self._url)
        async with aclosing(self._sse_stream(body)) as events:
            async for data in events:
                if data == "[DONE]":
                    break
                text = reply.add(data)
                if text:
                    yield text
            else:
                if reply.finish_reason is None:
                    raise ModelError(
                        f"the stream from {self._url} ended before [DONE]: the "
                        "connection was cut; send the request again",
                        status=200,
                        error_type="connection_error",
                        retryable=True,
                    )
        yield reply.completion(self._model)


class _StreamedReply:
    """Assembles a streamed reply (choice 0) from its chunks, as OpenAI's SDK does."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._texts: list[str] = []
        self._message: dict[str, Any] = {"role": "assistant"}
        self.finish_reason: str | None = None
        self._usage: Any = None
        self._model: Any = None

    def add(self, data: str) -> str:
        """Merge one chunk; returns its text delta."""
        chunk = _json_object(data, self._url)
        if chunk.get("error") is not None:
            # A request the server refuses gets a 4xx before the stream starts; an error
            # inside the stream is the server failing on the way.
            message, error_type = error_details(chunk)
            raise ModelError(
                f"the stream from {self._url} broke off: {message}; send the request again",
                status=200,
                error_type=error_type,
                retryable=True,
            )
        self._model = chunk.get("model", self._model)
        if chunk.get("usage") is not None:
            self._usage = chunk["usage"]
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise _invalid(self._url, "a chunk whose choices are not a list", data)
        text = ""
        for choice in choices:
            if not isinstance(choice, dict):
                raise _invalid(self._url, "a chunk with a choice that is not an object", data)
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                raise _invalid(self._url, "a chunk whose delta is not an object", data)
            content = delta.pop("content", None)
            if isinstance(content, str):
                text += content
            elif content is not None:
                raise _invalid(self._url, "a content delta that is not a string", data)
            _merge(self._message, delta)
            if isinstance(choice.get("finish_reason"), str):
                self.finish_reason = choice["finish_reason"]
        if text:
            self._texts.append(text)
        return text

    def completion(self, requested_model: str) -> Completion:
        text = "".join(self._texts)
        calls = self._message.pop("tool_calls", None)
        message = {
            "role": self._message.pop("role", None) or "assistant",
            "content": (text or None) if calls else text,
        }
        message.update(self._message)
        if calls is not None:
            if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
                raise _invalid(self._url, "tool_calls that are not a list of objects", "")
            # ``index`` only orders deltas; a non-streamed message has none.
            message["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in calls]
        data = {"usage": self._usage, "model": self._model}
        return _completion(self._url, message, self.finish_reason, data, None, requested_model)


def _merge(into: dict[str, Any], delta: Mapping[str, Any]) -> None:
    """Add a delta: strings are concatenated, objects merged, list items matched by index."""
    for key, value in delta.items():
        old = into.get(key)
        if old is None or key in ("index", "type", "role"):
            into[key] = value
        elif isinstance(old, str) and isinstance(value, str):
            into[key] = old + value
        elif isinstance(old, dict) and isinstance(value, dict):
            _merge(old, value)
        elif isinstance(old, list) and isinstance(value, list):
            for item in value:
                same = next(
                    (
                        entry
                        for entry in old
                        if isinstance(item, dict)
                        and "index" in item
                        and isinstance(entry, dict)
                        and entry.get("index") == item["index"]
                    ),
                    None,
                )
                if same is None:
                    old.append(item)
                else:
                    _merge(same, item)
        elif value is not None:
            into[key] = value


def _completion(
    url: str,
    message: dict[str, Any],
    finish_reason: object,
    data: Mapping[str, Any],
    raw: bytes | None,
    requested_model: str,
) -> Completion:
    content = message.get("content")
    if isinstance(content, list):
        # Some servers answer with content parts; the text is that of the text parts.
        text = "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    elif isinstance(content, str) or content is None:
        text = content or ""
    else:
        raise _invalid(url, "a message content that is not text", raw or b"")
    calls = message.get("tool_calls")
    if calls is not None and not isinstance(calls, list):
        raise _invalid(url, "tool_calls that are not a list", raw or b"")
    if finish_reason is not None and not isinstance(finish_reason, str):
        raise _invalid(url, "a finish_reason that is not a string", raw or b"")
    model = data.get("model")
    return Completion(
        message=message,
        text=text,
        usage=_usage(url, data.get("usage"), raw),
        finish_reason=finish_reason,
        model=model if isinstance(model, str) and model else requested_model,
        raw=raw,
    )


def _usage(url: str, usage: object, raw: bytes | None) -> Usage:
    if usage is None:
        return Usage()
    if isinstance(usage, dict):
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        total = usage.get("total_tokens")
        if is_count(prompt) and is_count(completion):
            total = prompt + completion if total is None else total
            details = usage.get("prompt_tokens_details")
            cached = details.get("cached_tokens") if isinstance(details, dict) else None
            if is_count(total):
                return Usage(prompt, completion, total, cached if is_count(cached) else 0)
    raise _invalid(url, f"usage that is not token counts ({quote(usage)})", raw or b"")


def _json_object(content: bytes | str, url: str) -> dict[str, Any]:
    return json_object(content, url, _API_HINT)


def _invalid(url: str, what: str, content: bytes | str) -> ModelError:
    return invalid_response(url, what, content, _API_HINT)
