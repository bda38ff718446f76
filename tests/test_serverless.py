"""The serverless entry point: cheap import, lazy opening without lifespan, retry, Lambda."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest

from agent_core.server import ServerlessApp, Settings, make_app, serverless_settings

from ._offline import run_offline

if TYPE_CHECKING:
    from fastapi import FastAPI

PROBLEM = "application/problem+json"
USER = {"role": "user", "content": "hi"}
# Refused at once: nothing listens on port 1.
UNREACHABLE_PG = "postgresql://nobody@127.0.0.1:1/none"


@pytest.fixture
def environ(tmp_path: Path) -> dict[str, str]:
    return {"AGENT_CORE_STORE_URL": f"sqlite:///{tmp_path / 'serverless.db'}"}


@pytest.fixture
async def app(environ: dict[str, str]) -> AsyncIterator[ServerlessApp]:
    app = make_app(environ=environ)
    yield app
    await app.aclose()


def client(app: ServerlessApp) -> httpx.AsyncClient:
    # ASGITransport sends no lifespan events: the app must open itself.
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def consistency(app: ServerlessApp) -> str:
    assert app.inner is not None
    value: str = app.inner.state.core.cache.consistency
    return value


@pytest.mark.integration
def test_import_opens_nothing(tmp_path: Path) -> None:
    result = run_offline(
        """
        import os, sys
        from agent_core.serverless import ServerlessApp, app

        assert isinstance(app, ServerlessApp)
        assert app.inner is None and app.attempts == 0
        assert "mangum" not in sys.modules
        assert not os.listdir(".")
        print("ok")
        """,
        cwd=tmp_path,
        env={
            "AGENT_CORE_STORE_URL": f"sqlite:///{tmp_path / 'never.db'}",
            "AGENT_CORE_REDIS_URL": "redis://127.0.0.1:1/0",
        },
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert not (tmp_path / "never.db").exists()


async def test_first_request_opens_and_later_ones_reuse(app: ServerlessApp) -> None:
    assert app.inner is None
    async with client(app) as http:
        response = await http.post("/v1/threads/t1/messages", json={"messages": [USER]})
        assert response.status_code == 201, response.text
        assert app.openings == 1
        inner = app.inner
        for _ in range(3):
            response = await http.get("/v1/threads/t1")
            assert response.json()["messages"] == [USER]
        assert (await http.get("/readyz")).json()["status"] == "ok"
    assert app.inner is inner
    assert (app.openings, app.attempts) == (1, 1)


async def test_concurrent_first_requests_open_once(
    app: ServerlessApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every request that finds nothing opened waits to open it: count them.
    waiters = 0
    open_app = app.open

    async def counting_open() -> FastAPI:
        nonlocal waiters
        waiters += app.inner is None
        return await open_app()

    monkeypatch.setattr(app, "open", counting_open)
    async with client(app) as http:
        responses = await asyncio.gather(
            *(
                http.post(
                    f"/v1/threads/c{i}/messages",
                    json={"messages": [{"role": "user", "content": str(i)}]},
                )
                for i in range(10)
            )
        )
    assert [r.status_code for r in responses] == [201] * 10
    assert waiters == 10
    assert (app.openings, app.attempts) == (1, 1)


async def test_strong_consistency_by_default(app: ServerlessApp) -> None:
    async with client(app) as http:
        assert (await http.get("/healthz")).status_code == 200
    assert consistency(app) == "strong"


async def test_consistency_variable_overrides(environ: dict[str, str]) -> None:
    app = make_app(environ={**environ, "AGENT_CORE_CONSISTENCY": "bounded"})
    try:
        async with client(app) as http:
            assert (await http.get("/healthz")).status_code == 200
        assert consistency(app) == "bounded"
    finally:
        await app.aclose()


def test_serverless_settings() -> None:
    assert serverless_settings({}).consistency == "strong"
    assert serverless_settings({"AGENT_CORE_CONSISTENCY": "bounded"}).consistency == "bounded"
    assert serverless_settings({"AGENT_CORE_NAMESPACE": "n"}).namespace == "n"
    # The server's own default is unchanged.
    assert Settings.from_env({}).consistency == "bounded"


@pytest.mark.integration
async def test_failed_opening_is_503_then_retried(environ: dict[str, str]) -> None:
    variables = {**environ, "AGENT_CORE_STORE_URL": UNREACHABLE_PG}
    app = make_app(environ=variables)
    try:
        async with client(app) as http:
            for attempt in (1, 2):
                response = await http.get("/v1/threads/t1")
                assert response.status_code == 503
                assert response.headers["content-type"] == PROBLEM
                body = response.json()
                assert body["error"] == "StoreUnavailable"
                assert body["status"] == 503
                assert body["detail"]
                assert (app.attempts, app.openings) == (attempt, 0)
                assert app.inner is None

            variables.update(environ)  # the store is back (here: a reachable URL)
            response = await http.post("/v1/threads/t1/messages", json={"messages": [USER]})
            assert response.status_code == 201, response.text
            assert (app.attempts, app.openings) == (3, 1)
    finally:
        await app.aclose()


async def test_configuration_error_is_a_problem_not_an_import_error() -> None:
    app = make_app(environ={"AGENT_CORE_MAX_BODY_BYTES": "lots"})
    async with client(app) as http:
        response = await http.get("/healthz")
    assert response.status_code == 500
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["error"] == "ConfigurationError"


async def test_lifespan_when_the_platform_sends_it(app: ServerlessApp) -> None:
    sent: list[dict[str, Any]] = []
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for message in ({"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}):
        queue.put_nowait(message)

    async def send(message: Any) -> None:
        sent.append(dict(message))
        if message["type"] == "lifespan.startup.complete":
            assert app.inner is not None

    await app({"type": "lifespan"}, queue.get, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert app.inner is None
    assert app.openings == 1


async def test_failed_lifespan_startup_still_completes() -> None:
    app = make_app(environ={"AGENT_CORE_STORE_URL": UNREACHABLE_PG})
    sent: list[str] = []
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for message in ({"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}):
        queue.put_nowait(message)

    async def send(message: Any) -> None:
        sent.append(message["type"])

    await app({"type": "lifespan"}, queue.get, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert (app.attempts, app.openings) == (1, 0)


def test_a_new_event_loop_reopens(environ: dict[str, str]) -> None:
    # Some runtimes run each request in asyncio.run: connections of a closed loop are dropped.
    app = make_app(environ=environ)

    async def request() -> int:
        async with client(app) as http:
            return (await http.get("/v1/threads/t1")).status_code

    assert asyncio.run(request()) == 404  # never written: the store answered
    assert asyncio.run(request()) == 404
    assert app.openings == 2

    async def close() -> None:
        await app.aclose()

    asyncio.run(close())


def test_lambda_handler_reuses_the_opened_app(
    environ: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AGENT_CORE_CONSISTENCY", raising=False)
    import agent_core.serverless as serverless

    app = make_app()
    monkeypatch.setattr(serverless, "app", app)
    monkeypatch.setattr(serverless, "_handler", None)
    handler: Any = serverless.handler
    assert serverless.handler is handler

    def event(method: str, path: str, body: bytes = b"") -> dict[str, Any]:
        # An API Gateway HTTP API (payload 2.0) event.
        return {
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": path,
            "rawQueryString": "",
            "headers": {"host": "example.com", "content-type": "application/json"},
            "requestContext": {
                "http": {"method": method, "path": path, "sourceIp": "127.0.0.1"},
                "stage": "$default",
            },
            "body": base64.b64encode(body).decode(),
            "isBase64Encoded": True,
        }

    class Context:
        aws_request_id = "r"

    body = orjson.dumps({"messages": [USER]})
    result = handler(event("POST", "/v1/threads/t1/messages", body), Context())
    assert result["statusCode"] == 201, result
    result = handler(event("GET", "/v1/threads/t1"), Context())
    assert result["statusCode"] == 200, result
    assert orjson.loads(result["body"])["messages"] == [USER]
    assert app.openings == 1
    assert consistency(app) == "strong"

    async def close() -> None:
        await app.aclose()

    # Mangum runs every invocation on the thread's event loop.
    asyncio.get_event_loop().run_until_complete(close())
