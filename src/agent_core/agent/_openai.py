"""`OpenAIChatModel`: the Chat Completions protocol over httpx (OpenAI, vLLM, Ollama, ...).

Request bodies are assembled from the messages' encoded bytes (``Message.raw``), joined
into the ``messages`` array as they are: a conversation is never re-encoded to be sent.

Retries: 408, 429, 5xx, timeouts and network failures are retried up to ``max_retries``
times, after the wait the server asks for (``retry-after-ms``, ``Retry-After`` in seconds
or as an HTTP date) or else an exponential backoff with jitter, capped at
``max_backoff``. A server that asks for more than ``max_retry_after`` seconds is not
waited for: the error carries its ``retry_after`` for the caller (or a rate limiter) to
use. A 429 for ``insufficient_quota`` is never retried. A stream is retried only until
its response starts; a failure after that raises, since the text already delivered
cannot be taken back.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import os
import random
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Final, Literal, TypeGuard
from urllib.parse import urlsplit

import orjson

from .._closing import AsyncClosing
from .._env import env_value
from .._quote import quote
from .._urls import mask_url, show_url
from .._validation import check_seconds
from ..errors import ConfigurationError, InvalidArgument, ModelError
from ..messages import Message
from ._models import ChatStream, Completion, StreamEvent, Usage, check_request

if TYPE_CHECKING:
    import httpx

__all__ = ["DEFAULT_BASE_URL", "OpenAIChatModel"]

DEFAULT_BASE_URL: Final = "https://api.openai.com/v1"
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
    }
)
_RETRY_STATUSES: Final = frozenset({408, 429})
_SNIPPET: Final = 300
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


class OpenAIChatModel(AsyncClosing):
    """A model behind an OpenAI-compatible ``POST {base_url}/chat/completions``.

    ``base_url`` defaults to ``$OPENAI_BASE_URL``, else OpenAI's API; ``api_key`` to
    ``$OPENAI_API_KEY`` (sent as ``Authorization: Bearer``; a local server may need none,
    OpenAI's API must have one). ``timeout`` bounds each attempt of `complete`; for
    `stream` it bounds the wait for the response to start and each gap between chunks.
    ``extra_body`` adds fields to every request (``temperature``, ``tool_choice``, ...);
    ``headers`` adds HTTP headers (``OpenAI-Organization``, ...). ``max_tokens_param``
    names the field ``max_tokens`` is sent as: o-series models want
    ``"max_completion_tokens"``. Retries (see the module's docs): at most
    ``max_retries``, waiting what the server asks up to ``max_retry_after`` seconds, else
    ``backoff`` seconds doubled per attempt up to ``max_backoff``, with jitter. One
    connection pool per instance: close it with `aclose` or ``async with``.
    """

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
        extra_body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(model, str) or not model.strip() or not model.isprintable():
            raise InvalidArgument(f"model must be a non-empty model name, got {quote(model)}")
        self._model = model
        self._url = f"{_base_url(base_url).rstrip('/')}/chat/completions"
        api_key = _api_key(api_key)
        if api_key is None and urlsplit(self._url).hostname == urlsplit(DEFAULT_BASE_URL).hostname:
            raise ConfigurationError(
                "OpenAI's API needs an API key: set OPENAI_API_KEY or pass api_key "
                "(or set base_url to a server that needs none)"
            )
        self._timeout = check_seconds("timeout", timeout)
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise InvalidArgument(f"max_retries must be an int >= 0, got {quote(max_retries)}")
        self._max_retries = max_retries
        self._backoff = check_seconds("backoff", backoff, allow_zero=True)
        self._max_backoff = check_seconds("max_backoff", max_backoff, allow_zero=True)
        self._max_retry_after = check_seconds("max_retry_after", max_retry_after, allow_zero=True)
        if max_tokens_param not in ("max_tokens", "max_completion_tokens"):
            raise InvalidArgument(
                "max_tokens_param must be 'max_tokens' or 'max_completion_tokens', "
                f"got {quote(max_tokens_param)}"
            )
        self._max_tokens_param = max_tokens_param
        self._extra_body = _extra_body(extra_body)
        self._head = b'{"model":' + orjson.dumps(model) + b',"messages":['
        # Imported here: about 65 ms of imports that `import agent_core` does not need.
        import httpx

        self._client = httpx.AsyncClient(
            headers=_headers(headers, api_key), timeout=self._timeout, follow_redirects=False
        )

    @property
    def name(self) -> str:
        """The model name sent with each request."""
        return self._model

    @property
    def url(self) -> str:
        """The endpoint: ``{base_url}/chat/completions``."""
        return self._url

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        max_tokens: int | None = None,
    ) -> Completion:
        """The model's reply to ``messages``; raises `ModelError` if none came."""
        body = self._body(*check_request(messages, tools, max_tokens), max_tokens, stream=False)
        response = await self._post(body, stream=False)
        return self._parse(response.content)

    def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        max_tokens: int | None = None,
    ) -> ChatStream:
        """The reply as it is generated (server-sent events): text deltas, then the Completion.

        Arguments are checked now; the request is sent on the first ``__anext__``.
        """
        body = self._body(*check_request(messages, tools, max_tokens), max_tokens, stream=True)
        return ChatStream(self._events(body))

    async def aclose(self) -> None:
        """Close the connection pool; the model can't be used afterwards."""
        await self._client.aclose()

    def __repr__(self) -> str:
        return f"OpenAIChatModel(model={self._model!r}, url={mask_url(self._url)!r})"

    def _body(
        self,
        messages: Sequence[Message],
        tools: bytes | None,
        max_tokens: int | None,
        *,
        stream: bool,
    ) -> bytes:
        rest: dict[str, Any] = dict(self._extra_body)
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

    async def _post(self, body: bytes, *, stream: bool) -> httpx.Response:
        """The first 200 response to ``body``, after any retries; the caller closes it."""
        if self._client.is_closed:
            raise ModelError(
                f"{self!r} is closed: make a new model (aclose ends its connection pool)",
                status=None,
                error_type="closed",
                retryable=False,
            )
        request = self._client.build_request(
            "POST",
            self._url,
            content=body,
            headers={
                "content-type": "application/json",
                "accept": "text/event-stream" if stream else "application/json",
            },
        )
        attempt = 0
        while True:
            attempt += 1
            response, error = await self._attempt(request, stream=stream)
            if response is not None:
                return response
            assert error is not None
            error.attempts = attempt
            if not error.retryable or attempt > self._max_retries:
                if attempt > 1:
                    error.args = (f"{error} (gave up after {attempt} attempts)",)
                raise error
            if error.retry_after is None:
                delay = min(self._max_backoff, self._backoff * 2 ** (attempt - 1))
                # Jitter spreads the retries of clients that failed together.
                delay *= 0.5 + random.random() / 2
            elif error.retry_after <= self._max_retry_after:
                delay = error.retry_after
            else:
                error.args = (
                    f"{error} (the server asks to wait {error.retry_after:g} s, more than "
                    f"max_retry_after = {self._max_retry_after:g} s)",
                )
                raise error
            await asyncio.sleep(delay)

    async def _attempt(
        self, request: httpx.Request, *, stream: bool
    ) -> tuple[httpx.Response | None, ModelError | None]:
        """One try: a 200 response, or the error it ended with."""
        import httpx

        try:
            async with asyncio.timeout(self._timeout):
                response = await self._client.send(request, stream=stream)
                if response.status_code == 200:
                    return response, None
                try:
                    await response.aread()
                finally:
                    await response.aclose()
        except (TimeoutError, httpx.TimeoutException) as exc:
            error = ModelError(
                f"no answer from {self._url} within {self._timeout:g} s: the server or the "
                "network is slow; retry later or pass a longer timeout",
                status=None,
                error_type="timeout",
                retryable=True,
            )
            error.__cause__ = exc
            return None, error
        except httpx.TransportError as exc:
            return None, _connection_error(self._url, exc)
        except httpx.DecodingError as exc:
            return None, _invalid(self._url, f"a body that does not decode ({exc})", b"")
        return None, _status_error(self._url, response)

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
        import httpx

        response = await self._post(body, stream=True)
        try:
            kind = response.headers.get("content-type", "")
            if not kind.startswith("text/event-stream"):
                await response.aread()
                raise _invalid(
                    self._url, f"content-type {quote(kind)}, not a stream", response.content
                )
            reply = _StreamedReply(self._url)
            try:
                async with aclosing(_sse_data(response)) as events:
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
            except httpx.TimeoutException as exc:
                raise ModelError(
                    f"the stream from {self._url} stalled for {self._timeout:g} s; send the "
                    "request again or pass a longer timeout",
                    status=200,
                    error_type="timeout",
                    retryable=True,
                ) from exc
            except (httpx.TransportError, httpx.DecodingError) as exc:
                raise ModelError(
                    f"the stream from {self._url} broke off: {type(exc).__name__}: {exc}; "
                    "send the request again",
                    status=200,
                    error_type="connection_error",
                    retryable=True,
                ) from exc
            yield reply.completion(self._model)
        finally:
            await response.aclose()


async def _sse_data(response: httpx.Response) -> AsyncGenerator[str, None]:
    """The ``data`` of each server-sent event (lines of one event joined by newlines)."""
    data: list[str] = []
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif not line and data:
            yield "\n".join(data)
            data.clear()
        # Comments (": keep-alive") and event, id and retry fields carry nothing used here.
    if data:
        yield "\n".join(data)


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
            message, error_type = _error_details(chunk)
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
        if _is_count(prompt) and _is_count(completion):
            total = prompt + completion if total is None else total
            if _is_count(total):
                return Usage(prompt, completion, total)
    raise _invalid(url, f"usage that is not token counts ({quote(usage)})", raw or b"")


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _json_object(content: bytes | str, url: str) -> dict[str, Any]:
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        raise _invalid(url, "malformed JSON", content) from None
    if not isinstance(data, dict):
        raise _invalid(url, f"a JSON {type(data).__name__}, not an object", content)
    return data


def _invalid(url: str, what: str, content: bytes | str) -> ModelError:
    return ModelError(
        f"{url} answered with {what}: {_snippet(content)}; is base_url an OpenAI-compatible "
        "API (it usually ends in /v1)?",
        status=200,
        error_type="invalid_response",
        retryable=False,
    )


def _status_error(url: str, response: httpx.Response) -> ModelError:
    status = response.status_code
    message, error_type = _error_details(_error_body(response.content))
    retryable = (status in _RETRY_STATUSES or status >= 500) and error_type != "insufficient_quota"
    if error_type == "insufficient_quota":
        hint = "the account is out of credit: check its plan and billing"
    else:
        hint = _HINTS.get(status, "the server failed; retry later" if status >= 500 else "")
        if 300 <= status < 400:
            where = response.headers.get("location", "elsewhere")
            hint = f"the server redirects to {where}; set base_url to the new address"
    return ModelError(
        f"{url} answered {status}"
        + (f" ({error_type})" if error_type else "")
        + f": {message or _snippet(response.content)}"
        + (f"; {hint}" if hint else ""),
        status=status,
        error_type=error_type,
        retryable=retryable,
        retry_after=_retry_after(response.headers, time.time()) if retryable else None,
    )


def _error_body(content: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _error_details(body: Mapping[str, Any]) -> tuple[str, str | None]:
    """The message and type of an error body: OpenAI's ``{"error": {...}}``, or vLLM's flat one."""
    error = body.get("error", body)
    if isinstance(error, str):
        return error[:_SNIPPET], None
    if not isinstance(error, dict):
        return "", None
    message = error.get("message")
    # OpenAI puts the useful kind in ``type`` ("insufficient_quota") or in ``code``.
    kind = error.get("type") if isinstance(error.get("type"), str) else error.get("code")
    return (
        message[:_SNIPPET] if isinstance(message, str) else "",
        kind if isinstance(kind, str) else None,
    )


def _connection_error(url: str, exc: httpx.TransportError) -> ModelError:
    import httpx

    error = ModelError(
        f"could not reach {url}: {type(exc).__name__}: {exc}; check base_url, the server "
        "and any proxy settings",
        status=None,
        error_type="connection_error",
        # A request httpx can't even write (bad header, unknown scheme) fails the same again.
        retryable=not isinstance(exc, httpx.LocalProtocolError | httpx.UnsupportedProtocol),
    )
    error.__cause__ = exc
    return error


def _retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            seconds = float(value) / 1000
        except ValueError:
            seconds = math.nan
        if math.isfinite(seconds):
            return max(0.0, seconds)
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _snippet(content: bytes | str) -> str:
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
    text = " ".join(text.split())
    return repr(text if len(text) <= _SNIPPET else text[: _SNIPPET - 3] + "...")


def _base_url(value: object) -> str:
    source = "base_url"
    if value is None:
        value = os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        source = "OPENAI_BASE_URL"
    error = ConfigurationError if source == "OPENAI_BASE_URL" else InvalidArgument
    if not isinstance(value, str):
        raise error(f"{source} must be a str URL, got {type(value)!r}")
    try:
        parts = urlsplit(value)
        port_ok = parts.port != 0
    except ValueError:
        port_ok = False
    if not port_ok or parts.scheme not in ("http", "https") or not parts.hostname:
        raise error(
            f"{source} must be an http(s) URL such as {DEFAULT_BASE_URL!r}, got {show_url(value)}"
        )
    if parts.query or parts.fragment:
        raise error(f"{source} must have no query or fragment, got {show_url(value)}")
    return value


def _api_key(value: object) -> str | None:
    source = "api_key"
    if value is None:
        value = env_value(os.environ, "OPENAI_API_KEY") or None
        source = "OPENAI_API_KEY"
    if value is None:
        return None
    # The key is never echoed: error messages end up in logs.
    if not (isinstance(value, str) and value and value.isascii() and value.isprintable()) or (
        " " in value
    ):
        error = ConfigurationError if source == "OPENAI_API_KEY" else InvalidArgument
        raise error(
            f"{source} must be a non-empty str of printable ASCII without spaces; got an "
            f"unusable {type(value).__name__} (not shown)"
        )
    return value


def _extra_body(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise InvalidArgument(f"extra_body must be a dict with str keys, got {quote(value)}")
    reserved = sorted(_RESERVED.intersection(value))
    if reserved:
        raise InvalidArgument(
            f"extra_body may not set {', '.join(reserved)}: the model sets them "
            "(pass max_tokens and tools to each call)"
        )
    try:
        # A copy, so that changing the caller's dict later changes no request.
        copy: dict[str, Any] = orjson.loads(orjson.dumps(dict(value)))
    except orjson.JSONEncodeError as exc:
        raise InvalidArgument(f"extra_body must be JSON-serializable: {exc}") from None
    return copy


def _headers(value: object, api_key: str | None) -> dict[str, str]:
    headers = {"user-agent": "agent-core"}
    if value is not None:
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) and f"{k}{v}".isascii() and v.isprintable()
            for k, v in value.items()
        ):
            raise InvalidArgument("headers must be a dict of ASCII str names to printable values")
        headers.update(value)
    if api_key is not None:
        headers["authorization"] = f"Bearer {api_key}"
    return headers
