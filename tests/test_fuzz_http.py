"""Hostile input over HTTP (issue 11): never a 5xx, always problem+json, nothing written.

The app runs in process (httpx ASGITransport) on real SQLite with `EchoModel`. Hypothesis
sends bodies that are not JSON, JSON that stdlib parsers choke on (100,000-deep nesting,
10,000-digit numbers, NaN and Infinity, lone surrogate escapes, NUL), invalid UTF-8, odd
headers and paths, to every write (append, turn, splice, fork, metadata) and read; one
50 MB body. Every answer is below 500, every refusal a problem document, and a refused
write leaves the thread's version where it was. Derandomized, a few seconds; schemathesis
covers the spec's own shapes in test_openapi_fuzz.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest
from fastapi import FastAPI
from hypothesis import example, given
from hypothesis import strategies as st

from agent_core.server import Settings, create_app

from ._fuzz import FUZZ, RSS_GROWTH_LIMIT, rss

PROBLEM = "application/problem+json"
# One message as the OpenAPI spec states it to clients: every stored item must match it.
MESSAGES = jsonschema_rs.Draft202012Validator(
    create_app(Settings()).openapi()["components"]["schemas"]["AppendRequest"]["properties"][
        "messages"
    ]["items"]
)
MAX_BODY = 1 << 20


def deep_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# JSON texts: stdlib json writes NaN, Infinity and lone surrogates (as \\ud800 escapes).
json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(),
    st.text(max_size=10),
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=2),
    st.just("\x00"),
)
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
roles = st.sampled_from(["user", "assistant", "system", "tool", "function", "robot"])
message = st.one_of(
    st.fixed_dictionaries(
        {"role": roles | json_values},
        optional={"content": json_values, "tool_calls": json_values, "tool_call_id": json_values},
    ),
    st.fixed_dictionaries({"type": json_values}, optional={"call_id": json_values}),
    json_values,
)
append_bodies = st.fixed_dictionaries(
    {"messages": st.lists(message, max_size=3) | json_values},
    optional={"expected_version": json_values},
)
turn_bodies = st.fixed_dictionaries({"message": st.one_of(message, json_values)})
# Splices, forks and metadata updates (issue 13): their fields, any JSON in each.
lifecycle_bodies = st.fixed_dictionaries(
    {},
    optional={
        "start": json_values,
        "stop": json_values,
        "messages": st.lists(message, max_size=3) | json_values,
        "expected_version": json_values,
        "new_id": st.sampled_from(["u", "t", "", "a b", "x" * 300]) | json_values,
        "at_version": json_values,
        "metadata": st.dictionaries(st.text(max_size=6), json_values, max_size=3) | json_values,
    },
)


def encoded(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


raw_bodies = st.one_of(
    append_bodies.map(encoded),
    turn_bodies.map(encoded),
    lifecycle_bodies.map(encoded),
    st.binary(max_size=64),  # invalid UTF-8, truncated JSON, anything
    st.sampled_from(
        [
            deep_json(100_000),
            b'{"messages": ' + deep_json(5_000) + b"}",
            b'{"messages": [{"role": "user", "content": ' + b"9" * 10_000 + b"}]}",
            b'{"messages": [{"role": "user", "content": "hi"}], "expected_version": '
            + b"9" * 5_000
            + b"}",
            b'{"messages": [{"role": "user", "content": NaN}]}',
            b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
            b'{"message": "\\udfff"}',
            b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}',
            b'{"messages": [{"role": "user", "content": "a\\u0000b"}]}',
            b"\xef\xbb\xbf{}",
        ]
    ),
)
thread_ids = st.one_of(
    st.sampled_from(["t", "t%00", "%ff", "a" * 300, "%F0%9F%98%80", "t%2F..", "{x}"]),
    st.text(
        st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="/?#%"),
        min_size=1,
        max_size=20,
    ),
)
keys = st.one_of(
    st.none(),
    st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=300),
)
queries = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {},
        optional={
            "max_tokens": st.sampled_from(["0", "-1", "9" * 5000, "1e9", "NaN", "10"]),
            "model": st.sampled_from(["gpt-4o", "", "x" * 500, "\x00"]),
            "purge": st.sampled_from(["true", "false", "1", "", "maybe", "\x00"]),
            "limit": st.sampled_from(["0", "1", "1000", "1001", "9" * 5000, "-1"]),
            "after": st.sampled_from(["t", "", "a b", "x" * 300, "\x00"]),
            "metadata.user": st.text(max_size=10),
            "metadata.": st.text(max_size=3),
            "metadata.a b": st.just("x"),
        },
    ),
)


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as loop:
        yield loop


@pytest.fixture(scope="module")
def client(
    runner: asyncio.Runner, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.AsyncClient]:
    path: Path = tmp_path_factory.mktemp("fuzz-http") / "a.db"
    app = create_app(
        Settings(
            store_url=f"sqlite:///{path}", model="echo", namespace="fuzz", max_body_bytes=MAX_BODY
        )
    )

    async def start(app: FastAPI) -> tuple[Any, httpx.AsyncClient]:
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
        return lifespan, http

    lifespan, http = runner.run(start(app))
    try:
        yield http
    finally:
        runner.run(http.aclose())
        runner.run(lifespan.__aexit__(None, None, None))


@pytest.fixture(scope="module", autouse=True)
def bounded_rss() -> Iterator[None]:
    before = rss()
    yield
    grown = rss() - before
    assert grown < RSS_GROWTH_LIMIT, f"RSS grew by {grown >> 20} MiB over the fuzz run"


def assert_answered(response: httpx.Response) -> None:
    request = f"{response.request.method} {response.request.url}"
    assert response.status_code < 500, (
        f"{response.status_code} for {request}: {response.text[:500]}"
    )
    if response.status_code >= 400:
        assert response.headers["content-type"] == PROBLEM, f"{request}: {response.text[:500]}"
        body = response.json()
        assert body["status"] == response.status_code
        assert isinstance(body["detail"], str)
        assert len(response.content) < 20_000, f"{request}: a {len(response.content)}-byte problem"


async def version(http: httpx.AsyncClient, thread_id: str) -> int:
    """The thread's version; 0 if it was never written (a 404)."""
    response = await http.get(f"/v1/threads/{thread_id}")
    if response.status_code == 404:
        assert response.json()["error"] == "ThreadNotFound", response.text
        return 0
    assert response.status_code == 200, response.text
    value: int = response.json()["version"]
    return value


@FUZZ
@given(
    body=raw_bodies,
    thread_id=thread_ids,
    key=keys,
    endpoint=st.sampled_from(["messages", "turns", "splice", "fork", ""]),
)
@example(
    body=b'{"messages": [{"role": "user", "content": "hi"}]}',
    thread_id="t",
    key="\x7f",
    endpoint="messages",
)
def test_posts(
    runner: asyncio.Runner,
    client: httpx.AsyncClient,
    body: bytes,
    thread_id: str,
    key: str | None,
    endpoint: str,
) -> None:
    async def post() -> None:
        before = await version(client, "t")
        headers = {b"content-type": b"application/json"}
        if key is not None:
            headers[b"idempotency-key"] = key.encode("latin-1")  # as raw as a header gets
        if endpoint:
            response = await client.post(
                f"/v1/threads/{thread_id}/{endpoint}", content=body, headers=headers
            )
        else:  # metadata
            response = await client.patch(f"/v1/threads/{thread_id}", content=body, headers=headers)
        assert_answered(response)
        if response.status_code >= 400 and thread_id == "t":
            assert await version(client, "t") == before
        elif response.status_code < 300:
            # What was accepted is what the spec promises: each message in its role's shape.
            stored = (await client.get(f"/v1/threads/{thread_id}")).json()["messages"]
            assert all(MESSAGES.is_valid(item) for item in stored), stored

    runner.run(post())


@FUZZ
@given(
    thread_id=thread_ids,
    query=queries,
    method=st.sampled_from(["GET", "DELETE", "PUT", "PATCH"]),
    path=st.sampled_from(["/v1/threads/{id}", "/v1/threads/{id}/info", "/v1/threads"]),
)
def test_reads_and_other_methods(
    runner: asyncio.Runner,
    client: httpx.AsyncClient,
    thread_id: str,
    query: dict[str, str] | None,
    method: str,
    path: str,
) -> None:
    async def call() -> None:
        url = path.replace("{id}", thread_id)
        response = await client.request(method, url, params=query)
        assert_answered(response)

    runner.run(call())


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_50_mb_body_is_a_413(
    runner: asyncio.Runner, client: httpx.AsyncClient, declared: bool
) -> None:
    text = b"x" * (50 << 20)
    body = b'{"messages": [{"role": "user", "content": "' + text + b'"}]}'

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 1 << 20):
            yield body[start : start + (1 << 20)]

    async def post() -> None:
        before = await version(client, "t")
        content: Any = body if declared else chunks()
        response = await client.post(
            "/v1/threads/t/messages", content=content, headers={"content-type": "application/json"}
        )
        assert response.status_code == 413, response.text[:300]
        assert_answered(response)
        assert await version(client, "t") == before

    runner.run(post())


def test_a_huge_content_length_is_a_413(runner: asyncio.Runner, client: httpx.AsyncClient) -> None:
    async def post() -> None:
        response = await client.post(
            "/v1/threads/t/messages", content=b"{}", headers={"content-length": "9" * 5_000}
        )
        assert_answered(response)

    runner.run(post())
