"""The HTTP service in process (httpx over ASGI) and the checks its answers share."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import FastAPI

PROBLEM = "application/problem+json"


@contextlib.asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``app``, inside its lifespan (the cache, model and agent opened)."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http,
    ):
        yield http


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assert_problem(response: httpx.Response, status: int, error: str | None = None) -> Any:
    """``response`` is an RFC 9457 problem of ``status`` (and ``error``); returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status
    assert body["title"]
    assert body["type"].startswith("urn:agent-core:problem:")
    assert isinstance(body["detail"], str)
    assert body["detail"]
    if error is not None:
        assert body["error"] == error, body
    return body
