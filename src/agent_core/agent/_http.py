"""What the HTTP chat models share: their settings, one httpx pool with retries, SSE, errors.

`HttpChatModel` is the base of `OpenAIChatModel` and `AnthropicChatModel`; a `Provider`
holds what differs between them (environment variables, endpoint, auth header, hints).

Retries: 408, 429, 5xx (Anthropic's 529 "overloaded" among them), timeouts and network
failures are retried up to ``max_retries`` times, after the wait the server asks for
(``retry-after-ms``, ``Retry-After`` in seconds or as an HTTP date) or else an
exponential backoff with jitter, capped at ``max_backoff``. A server that asks for more
than ``max_retry_after`` seconds is not waited for: the error carries its
``retry_after`` for the caller (or a rate limiter) to use. Error types a provider names
final (OpenAI's ``insufficient_quota``) are never retried. A stream is retried only
until its response starts; a failure after that raises, since the text already
delivered cannot be taken back.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import os
import random
import time
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeGuard
from urllib.parse import urlsplit

import orjson

from .._closing import AsyncClosing
from .._env import env_value
from .._quote import quote
from .._urls import mask_url, show_url
from .._validation import check_seconds
from ..errors import ConfigurationError, InvalidArgument, ModelError

if TYPE_CHECKING:
    import httpx

__all__ = [
    "HttpChatModel",
    "Provider",
    "error_details",
    "invalid_response",
    "is_count",
    "json_object",
    "retry_after",
]

_RETRY_STATUSES: Final = frozenset({408, 429})
_SNIPPET: Final = 300


@dataclass(frozen=True, slots=True)
class Provider:
    """What an HTTP chat model's provider needs of `HttpChatModel`."""

    #: As errors name it: "OpenAI", "Anthropic".
    name: str
    base_url_env: str
    api_key_env: str
    default_base_url: str
    #: The endpoint, appended to the base URL.
    path: str
    #: Body fields the model sets, which ``extra_body`` may not.
    reserved: frozenset[str]
    #: What to do about an error status.
    hints: Mapping[int, str]
    #: Error types that are never retried, with what to do about them.
    final_errors: Mapping[str, str]
    #: What to check when the server answers something unreadable.
    api_hint: str
    #: The header the API key goes in, and what precedes the key there.
    key_header: str
    key_prefix: str
    #: Headers of every request, before the caller's ``headers`` (which may replace them).
    headers: Mapping[str, str]


class HttpChatModel(AsyncClosing):
    """A chat model behind an HTTP API: checked settings, one connection pool, retries.

    Subclasses set ``_provider`` and build bodies and completions; `_post` sends a body
    (retrying as the module says) and `_sse_stream` streams one.
    """

    _provider: ClassVar[Provider]

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None,
        api_key: str | None,
        timeout: float,
        max_retries: int,
        backoff: float,
        max_backoff: float,
        max_retry_after: float,
        extra_body: Mapping[str, Any] | None,
        headers: Mapping[str, str] | None,
    ) -> None:
        provider = self._provider
        if not isinstance(model, str) or not model.strip() or not model.isprintable():
            raise InvalidArgument(f"model must be a non-empty model name, got {quote(model)}")
        self._model = model
        self._base_url = _base_url(base_url, provider).rstrip("/")
        self._url = f"{self._base_url}{provider.path}"
        api_key = _api_key(api_key, provider.api_key_env)
        if (
            api_key is None
            and urlsplit(self._url).hostname == urlsplit(provider.default_base_url).hostname
        ):
            raise ConfigurationError(
                f"{provider.name}'s API needs an API key: set {provider.api_key_env} or pass "
                "api_key (or set base_url to a server that needs none)"
            )
        self._timeout = check_seconds("timeout", timeout)
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise InvalidArgument(f"max_retries must be an int >= 0, got {quote(max_retries)}")
        self._max_retries = max_retries
        self._backoff = check_seconds("backoff", backoff, allow_zero=True)
        self._max_backoff = check_seconds("max_backoff", max_backoff, allow_zero=True)
        self._max_retry_after = check_seconds("max_retry_after", max_retry_after, allow_zero=True)
        self._extra_body = _extra_body(extra_body, provider.reserved)
        # Imported here: about 65 ms of imports that `import agent_core` does not need.
        import httpx

        self._client = httpx.AsyncClient(
            headers=_headers(headers, provider, api_key),
            timeout=self._timeout,
            follow_redirects=False,
        )

    @property
    def name(self) -> str:
        """The model name sent with each request."""
        return self._model

    @property
    def url(self) -> str:
        """The endpoint: the base URL and the provider's path."""
        return self._url

    async def aclose(self) -> None:
        """Close the connection pool; the model can't be used afterwards."""
        await self._client.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self._model!r}, url={mask_url(self._url)!r})"

    async def _post(self, url: str, body: bytes, *, stream: bool) -> httpx.Response:
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
            url,
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

        url = str(request.url)
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
                f"no answer from {url} within {self._timeout:g} s: the server or the "
                "network is slow; retry later or pass a longer timeout",
                status=None,
                error_type="timeout",
                retryable=True,
            )
            error.__cause__ = exc
            return None, error
        except httpx.TransportError as exc:
            return None, _connection_error(url, exc)
        except httpx.DecodingError as exc:
            what = f"a body that does not decode ({exc})"
            return None, invalid_response(url, what, b"", self._provider.api_hint)
        return None, _status_error(url, response, self._provider)

    async def _sse_stream(self, body: bytes) -> AsyncGenerator[str, None]:
        """Sends ``body`` as a stream: the ``data`` of each server-sent event.

        A stall longer than ``timeout`` between events, or a broken connection, raises a
        retryable `ModelError`; the response is closed when the generator is.
        """
        import httpx

        response = await self._post(self._url, body, stream=True)
        try:
            kind = response.headers.get("content-type", "")
            if not kind.startswith("text/event-stream"):
                await response.aread()
                raise self._invalid(f"content-type {quote(kind)}, not a stream", response.content)
            try:
                async with aclosing(_sse_data(response)) as events:
                    async for data in events:
                        yield data
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
        finally:
            await response.aclose()

    def _invalid(self, what: str, content: bytes | str) -> ModelError:
        return invalid_response(self._url, what, content, self._provider.api_hint)


async def _sse_data(response: httpx.Response) -> AsyncGenerator[str, None]:
    """The ``data`` of each server-sent event (lines of one event joined by newlines)."""
    data: list[str] = []
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif not line and data:
            yield "\n".join(data)
            data.clear()
        # Comments (": keep-alive") and event, id and retry fields carry nothing used here:
        # Anthropic's events name their type in the data too.
    if data:
        yield "\n".join(data)


def json_object(content: bytes | str, url: str, hint: str) -> dict[str, Any]:
    """``content`` as a JSON object, or a `ModelError` (invalid_response) ending in ``hint``."""
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        raise invalid_response(url, "malformed JSON", content, hint) from None
    if not isinstance(data, dict):
        raise invalid_response(url, f"a JSON {type(data).__name__}, not an object", content, hint)
    return data


def invalid_response(url: str, what: str, content: bytes | str, hint: str) -> ModelError:
    """The error for an answer that is not what the API sends: never retried."""
    return ModelError(
        f"{url} answered with {what}: {_snippet(content)}; {hint}",
        status=200,
        error_type="invalid_response",
        retryable=False,
    )


def is_count(value: object) -> TypeGuard[int]:
    """An int >= 0 (not a bool): a token count."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def error_details(body: Mapping[str, Any]) -> tuple[str, str | None]:
    """The message and type of an error body: ``{"error": {...}}`` (OpenAI, Anthropic), or
    vLLM's flat one."""
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


def retry_after(headers: Mapping[str, str], now: float) -> float | None:
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


def _status_error(url: str, response: httpx.Response, provider: Provider) -> ModelError:
    status = response.status_code
    message, error_type = error_details(_error_body(response.content))
    final = provider.final_errors.get(error_type) if error_type is not None else None
    retryable = (status in _RETRY_STATUSES or status >= 500) and final is None
    if final is not None:
        hint = final
    else:
        hint = provider.hints.get(status, "the server failed; retry later" if status >= 500 else "")
        if 300 <= status < 400:
            where = response.headers.get("location", "elsewhere")
            hint = f"the server redirects to {where}; set base_url to the new address"
    request_id = response.headers.get("request-id") or response.headers.get("x-request-id")
    return ModelError(
        f"{url} answered {status}"
        + (f" ({error_type})" if error_type else "")
        + f": {message or _snippet(response.content)}"
        + (f"; {hint}" if hint else "")
        + (f" (request-id {request_id:.100})" if request_id else ""),
        status=status,
        error_type=error_type,
        retryable=retryable,
        retry_after=retry_after(response.headers, time.time()) if retryable else None,
    )


def _error_body(content: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


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


def _snippet(content: bytes | str) -> str:
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
    text = " ".join(text.split())
    return repr(text if len(text) <= _SNIPPET else text[: _SNIPPET - 3] + "...")


def _base_url(value: object, provider: Provider) -> str:
    source = "base_url"
    if value is None:
        value = os.environ.get(provider.base_url_env) or provider.default_base_url
        source = provider.base_url_env
    error = ConfigurationError if source == provider.base_url_env else InvalidArgument
    if not isinstance(value, str):
        raise error(f"{source} must be a str URL, got {type(value)!r}")
    try:
        parts = urlsplit(value)
        port_ok = parts.port != 0
    except ValueError:
        port_ok = False
    if not port_ok or parts.scheme not in ("http", "https") or not parts.hostname:
        raise error(
            f"{source} must be an http(s) URL such as {provider.default_base_url!r}, "
            f"got {show_url(value)}"
        )
    if parts.query or parts.fragment:
        raise error(f"{source} must have no query or fragment, got {show_url(value)}")
    return value


def _api_key(value: object, env: str) -> str | None:
    source = "api_key"
    if value is None:
        value = env_value(os.environ, env) or None
        source = env
    if value is None:
        return None
    # The key is never echoed: error messages end up in logs.
    if not (isinstance(value, str) and value and value.isascii() and value.isprintable()) or (
        " " in value
    ):
        error = ConfigurationError if source == env else InvalidArgument
        raise error(
            f"{source} must be a non-empty str of printable ASCII without spaces; got an "
            f"unusable {type(value).__name__} (not shown)"
        )
    return value


def _extra_body(value: object, reserved: frozenset[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise InvalidArgument(f"extra_body must be a dict with str keys, got {quote(value)}")
    taken = sorted(reserved.intersection(value))
    if taken:
        raise InvalidArgument(
            f"extra_body may not set {', '.join(taken)}: the model sets them "
            "(pass max_tokens and tools to each call)"
        )
    try:
        # A copy, so that changing the caller's dict later changes no request.
        copy: dict[str, Any] = orjson.loads(orjson.dumps(dict(value)))
    except orjson.JSONEncodeError as exc:
        raise InvalidArgument(f"extra_body must be JSON-serializable: {exc}") from None
    return copy


def _headers(value: object, provider: Provider, api_key: str | None) -> dict[str, str]:
    headers = {"user-agent": "agent-core", **provider.headers}
    if value is not None:
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) and f"{k}{v}".isascii() and v.isprintable()
            for k, v in value.items()
        ):
            raise InvalidArgument("headers must be a dict of ASCII str names to printable values")
        # Lower-cased, so that a caller's header replaces the default of the same name.
        headers.update((name.lower(), text) for name, text in value.items())
    if api_key is not None:
        headers[provider.key_header] = f"{provider.key_prefix}{api_key}"
    return headers
