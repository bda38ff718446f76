"""RFC 9457 problem details: every error the service answers is ``application/problem+json``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, Final

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from ..errors import (
    AgentCoreError,
    AuthenticationFailed,
    CacheClosed,
    ConfigurationError,
    ContextFileError,
    IdempotencyKeyReused,
    IdentityProviderUnavailable,
    InvalidArgument,
    MessageTooLarge,
    ModelError,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
    RequestTooLarge,
    StoreUnavailable,
    ThreadExists,
    ThreadNotFound,
    TokenBudgetExceeded,
    TurnNotSaved,
    VersionConflict,
)

__all__ = [
    "PROBLEM_MEDIA_TYPE",
    "PROBLEM_TYPE",
    "error_problem",
    "install_problem_handlers",
    "problem",
]

PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
#: Base of the ``type`` URIs; they name the error class and are not meant to resolve.
PROBLEM_TYPE: Final = "urn:agent-core:problem:"

# The most specific class wins: the lookup walks each error's MRO.
_STATUS: Final[dict[type[AgentCoreError], int]] = {
    AuthenticationFailed: 401,
    PermissionDenied: 403,
    ThreadNotFound: 404,
    QuotaExceeded: 507,
    IdentityProviderUnavailable: 503,
    VersionConflict: 409,
    ThreadExists: 409,
    IdempotencyKeyReused: 422,
    MessageTooLarge: 413,
    RequestTooLarge: 422,
    InvalidArgument: 400,
    TokenBudgetExceeded: 422,
    RateLimited: 429,
    ModelError: 502,
    TurnNotSaved: 503,
    StoreUnavailable: 503,
    CacheClosed: 503,
    ContextFileError: 500,
    ConfigurationError: 500,
}


def problem(
    status: int,
    detail: str,
    *,
    error: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Response:
    """A problem+json response; ``error`` names the failure (an error class name)."""
    title = HTTPStatus(status).phrase
    kind = error or title.replace(" ", "")
    body = {
        "type": PROBLEM_TYPE + kind,
        "title": title,
        "status": status,
        "detail": detail,
        "error": kind,
        **extra,
    }
    return Response(
        orjson.dumps(body), status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers
    )


def status_of(exc: AgentCoreError) -> int:
    """The HTTP status of a typed error."""
    for cls in type(exc).__mro__:
        status = _STATUS.get(cls)
        if status is not None:
            return status
    return 500


def error_problem(exc: AgentCoreError) -> Response:
    """The problem response of a typed error, with its useful attributes."""
    extra: dict[str, Any] = {}
    headers: dict[str, str] | None = None
    if isinstance(exc, AuthenticationFailed):
        headers = {"WWW-Authenticate": 'Bearer realm="agent-core"'}
    elif isinstance(exc, VersionConflict):
        extra = {"expected": exc.expected, "actual": exc.actual}
    elif isinstance(exc, IdempotencyKeyReused | ThreadExists):
        extra = {"version": exc.version}
    elif isinstance(exc, MessageTooLarge):
        extra = {"size": exc.size, "limit": exc.limit}
    elif isinstance(exc, TokenBudgetExceeded):
        extra = {"needed": exc.needed, "max_tokens": exc.max_tokens}
    elif isinstance(exc, QuotaExceeded):
        extra = {"used": exc.used, "adding": exc.adding, "quota": exc.quota}
        if exc.never_fits:
            return problem(413, str(exc), error=type(exc).__name__, **extra)
    elif isinstance(exc, IdentityProviderUnavailable):
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    elif isinstance(exc, RateLimited):
        extra = {"limit": exc.limit, "retry_after": exc.retry_after}
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    elif isinstance(exc, ModelError):
        extra = {"upstream_status": exc.status, "upstream_error": exc.error_type}
        if exc.retry_after is not None:
            headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    elif isinstance(exc, TurnNotSaved):
        # The reply is in the error: the client can append it later with this key.
        extra = {"messages": exc.messages, "idempotency_key": exc.idempotency_key}
    return problem(status_of(exc), str(exc), error=type(exc).__name__, headers=headers, **extra)


def _validation_problem(exc: RequestValidationError) -> Response:
    errors = exc.errors()
    if any(error.get("type") == "json_invalid" for error in errors):
        return problem(400, "the request body is not valid JSON", error="MalformedJSON")
    details = [
        {
            "loc": list(error.get("loc", ())),
            "msg": error.get("msg", ""),
            "type": error.get("type", ""),
        }
        for error in errors
    ]
    summary = "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in details[:5])
    return problem(422, f"invalid request: {summary}", error="ValidationError", errors=details)


def install_problem_handlers(app: FastAPI) -> None:
    """Answer typed errors, validation errors and HTTP errors (404, 405, ...) as problems."""

    async def on_agent_core_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, AgentCoreError)
        return error_problem(exc)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return _validation_problem(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404 and exc.detail == "Not Found":
            detail = f"no route for {request.method} {request.url.path}"
        elif exc.status_code == 405:
            detail = f"method {request.method} is not allowed on {request.url.path}"
        else:
            detail = str(exc.detail)
        return problem(exc.status_code, detail, headers=exc.headers)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        return problem(500, f"unexpected error: {type(exc).__name__}", error="InternalError")

    app.add_exception_handler(AgentCoreError, on_agent_core_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
