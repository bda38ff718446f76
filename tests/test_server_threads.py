"""Thread lifecycle over HTTP (issue 13): list with metadata filters, info and metadata
updates, on both stores; every refusal is a problem and writes nothing."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_core.errors import ConfigurationError
from agent_core.server import Settings, create_app, serverless_settings

from ._http import assert_problem, running, user
from ._poll import eventually


@pytest.fixture
async def client(store_url: str, namespace: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(store_url=store_url, namespace=namespace, max_body_bytes=64 << 10))
    async with running(app) as http:
        yield http


async def info(http: httpx.AsyncClient, thread_id: str) -> dict[str, Any]:
    response = await http.get(f"/v1/threads/{thread_id}/info")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    return body


async def patch(http: httpx.AsyncClient, thread_id: str, metadata: Any) -> httpx.Response:
    return await http.patch(f"/v1/threads/{thread_id}", json={"metadata": metadata})


async def all_pages(http: httpx.AsyncClient, params: dict[str, Any]) -> list[list[str]]:
    """Every page of GET /v1/threads with ``params``, following ``next_cursor``."""
    pages: list[list[str]] = []
    after: str | None = None
    while True:
        query = {**params, **({"after": after} if after is not None else {})}
        response = await http.get("/v1/threads", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"thread_ids", "next_cursor"}
        pages.append(body["thread_ids"])
        after = body["next_cursor"]
        if after is None:
            return pages
        assert len(pages) < 50, "next_cursor never ends"


# -- listing ----------------------------------------------------------------------------


async def test_list_pages_and_filters(client: httpx.AsyncClient) -> None:
    ids = [f"t{i:02d}" for i in range(10)]
    for index, thread_id in enumerate(reversed(ids)):  # written out of id order
        await write(client, thread_id, "hi")
        if index % 3 == 0:  # some hold no message any more
            assert (await client.delete(f"/v1/threads/{thread_id}")).status_code == 200
    for number, thread_id in enumerate(ids):
        metadata = {"user": "u1" if number % 2 == 0 else "u2", "team": "a" if number < 5 else "b"}
        assert (await patch(client, thread_id, metadata)).status_code == 200

    # Pages of 3: 4 pages, in id order, nothing twice or left out.
    pages = await all_pages(client, {"limit": 3})
    assert [len(page) for page in pages] == [3, 3, 3, 1]
    assert [thread_id for page in pages for thread_id in page] == ids
    # Stable: the same walk gives the same pages.
    assert await all_pages(client, {"limit": 3}) == pages
    # The default page holds them all.
    assert (await client.get("/v1/threads")).json() == {"thread_ids": ids, "next_cursor": None}

    evens = ids[0::2]
    pages = await all_pages(client, {"limit": 2, "metadata.user": "u1"})
    assert [len(page) for page in pages] == [2, 2, 1]
    assert [thread_id for page in pages for thread_id in page] == evens
    both = await all_pages(client, {"metadata.user": "u1", "metadata.team": "b"})
    assert both == [[thread_id for thread_id in evens if thread_id >= "t05"]]
    assert await all_pages(client, {"metadata.user": "nobody"}) == [[]]
    # A value is matched exactly, not as a prefix or case-insensitively.
    assert await all_pages(client, {"metadata.user": "U1"}) == [[]]
    assert await all_pages(client, {"metadata.user": "u"}) == [[]]

    # Deleting a thread removes its messages and metadata: it is no longer listed. Nor is
    # a thread only read.
    assert (await client.delete("/v1/threads/t01")).status_code == 200
    assert (await info(client, "t01"))["metadata"] == {}
    assert_problem(await client.get("/v1/threads/t99/info"), 404, "ThreadNotFound")
    rest = [thread_id for thread_id in ids if thread_id != "t01"]
    assert (await client.get("/v1/threads")).json()["thread_ids"] == rest


@pytest.mark.parametrize(
    ("query", "status", "error"),
    [
        ("user=u1", 422, "ValidationError"),  # not metadata.user: must not list every thread
        ("metdata.user=u1", 422, "ValidationError"),
        ("metadata.user=a&metadata.user=b", 422, "ValidationError"),
        ("limit=2&limit=3", 422, "ValidationError"),
        ("limit=0", 422, "ValidationError"),
        ("limit=1001", 422, "ValidationError"),
        ("limit=two", 422, "ValidationError"),
        ("limit=" + "9" * 5000, 422, "ValidationError"),
        ("after=a%20b", 400, "InvalidThreadId"),
        ("after=" + "x" * 201, 400, "InvalidThreadId"),
        ("metadata.=x", 400, "InvalidArgument"),
        ("metadata.a%20b=x", 400, "InvalidArgument"),
        ("metadata.k=" + "v" * 513, 400, "InvalidArgument"),
        ("metadata.k=a%00b", 400, "InvalidArgument"),
        ("&".join(f"metadata.k{i}=v" for i in range(17)), 400, "InvalidArgument"),
    ],
)
async def test_list_bad_query(
    client: httpx.AsyncClient, query: str, status: int, error: str
) -> None:
    assert_problem(await client.get(f"/v1/threads?{query}"), status, error)


async def test_list_names_at_most_five_bad_parameters(client: httpx.AsyncClient) -> None:
    query = "&".join(f"x{i}{'y' * 300}=1" for i in range(50))
    problem = assert_problem(await client.get(f"/v1/threads?{query}"), 422, "ValidationError")
    assert len(problem["errors"]) == 5
    assert len(str(problem)) < 2_000


# -- info and metadata ------------------------------------------------------------------


async def test_info(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v1/threads/new/info"), 404, "ThreadNotFound")
    before = datetime.now(UTC)
    body = {"messages": [user("a"), user("b"), user("c")]}
    assert (await client.post("/v1/threads/i/messages", json=body)).json() == {"version": 3}
    first = await info(client, "i")
    assert (first["version"], first["message_count"], first["metadata"]) == (3, 3, {})
    # ISO 8601 in UTC.
    created = datetime.fromisoformat(first["created_at"])
    updated = datetime.fromisoformat(first["updated_at"])
    assert created.utcoffset() == updated.utcoffset() == UTC.utcoffset(None)
    assert before.timestamp() - 5 <= created.timestamp() <= updated.timestamp()

    await client.post("/v1/threads/i/messages", json={"messages": [user("d")]})
    second = await info(client, "i")
    assert (second["version"], second["message_count"]) == (4, 4)
    assert second["created_at"] == first["created_at"]
    assert datetime.fromisoformat(second["updated_at"]) >= updated

    assert (await client.delete("/v1/threads/i")).json() == {"version": 5}
    deleted = await info(client, "i")
    assert (deleted["version"], deleted["message_count"]) == (5, 0)


async def test_patch_merges_metadata_and_keeps_the_version(client: httpx.AsyncClient) -> None:
    await client.post("/v1/threads/p/messages", json={"messages": [user("a")]})
    response = await patch(client, "p", {"user": "u1", "topic": "billing"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == await info(client, "p")
    assert response.json()["metadata"] == {"user": "u1", "topic": "billing"}
    assert response.json()["version"] == 1

    # Merged: a string sets its key, null removes it, a key left out stays.
    merged = (await patch(client, "p", {"topic": None, "lang": "fr", "absent": None})).json()
    assert merged["metadata"] == {"user": "u1", "lang": "fr"}
    assert merged["version"] == 1
    assert (await client.get("/v1/threads/p")).json()["version"] == 1

    # A body without metadata, or with null or no keys, changes nothing (an empty merge
    # may count as a write of the thread's row: updated_at).
    bodies: list[dict[str, Any]] = [{}, {"metadata": None}, {"metadata": {}}]
    for body in bodies:
        response = await client.patch("/v1/threads/p", json=body)
        assert response.status_code == 200, response.text
        assert {**response.json(), "updated_at": None} == {**merged, "updated_at": None}

    # A thread never written is made (version 0), and listed for its metadata.
    # A thread never written is not made by a PATCH: 404, as another tenant's would be.
    assert_problem(await patch(client, "fresh", {"user": "u1"}), 404, "ThreadNotFound")
    listed = await client.get("/v1/threads", params={"metadata.user": "u1"})
    assert listed.json()["thread_ids"] == ["p"]


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        # Over 16 keys: in the request itself, or with those the thread holds (10).
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, 400, "InvalidArgument"),
        ({"metadata": {f"new{i}": "v" for i in range(7)}}, 400, "InvalidArgument"),
        ({"metadata": {"a b": "v"}}, 400, "InvalidArgument"),
        ({"metadata": {"": "v"}}, 400, "InvalidArgument"),
        ({"metadata": {"k" * 65: "v"}}, 400, "InvalidArgument"),
        ({"metadata": {"k": "v" * 513}}, 400, "InvalidArgument"),
        ({"metadata": {"k": "a\x00b"}}, 400, "InvalidArgument"),
        ({"metadata": {"k": 1}}, 422, "ValidationError"),
        ({"metadata": {"k": ["v"]}}, 422, "ValidationError"),
        ({"metadata": {"k": True}}, 422, "ValidationError"),
        ({"metadata": ["k", "v"]}, 422, "ValidationError"),
        ({"metadata": "k=v"}, 422, "ValidationError"),
        ({"metdata": {"k": "v"}}, 422, "ValidationError"),  # a typo is not a silent no-op
        ({"metadata": {"k": "v"}, "version": 3}, 422, "ValidationError"),
        ([], 422, "ValidationError"),
    ],
)
async def test_patch_refused_writes_nothing(
    client: httpx.AsyncClient, body: Any, status: int, error: str
) -> None:
    await client.post("/v1/threads/m/messages", json={"messages": [user("a")]})
    held = {f"k{i}": "v" for i in range(10)}
    assert (await patch(client, "m", held)).status_code == 200
    before = await info(client, "m")
    assert_problem(await client.patch("/v1/threads/m", json=body), status, error)
    assert await info(client, "m") == before


@pytest.mark.parametrize(
    ("raw", "status", "error"),
    [
        (b'{"metadata": {"k": "\\ud800"}}', 422, "ValidationError"),  # a lone surrogate
        (b'{"metadata": {"k": "v"}', 400, "MalformedJSON"),
        (b'{"metadata": {"k": NaN}}', 422, "ValidationError"),
        (b"", 422, "ValidationError"),
    ],
)
async def test_patch_raw_bodies(
    client: httpx.AsyncClient, raw: bytes, status: int, error: str
) -> None:
    response = await client.patch(
        "/v1/threads/r", content=raw, headers={"content-type": "application/json"}
    )
    assert_problem(response, status, error)
    assert_problem(await client.get("/v1/threads/r/info"), 404, "ThreadNotFound")


async def test_patch_body_limit(client: httpx.AsyncClient) -> None:
    big = {"metadata": {"k": "v" * (70 << 10)}}
    assert_problem(await client.patch("/v1/threads/b", json=big), 413, "RequestBodyTooLarge")
    assert_problem(await client.get("/v1/threads/b/info"), 404, "ThreadNotFound")


async def test_patch_expiry(client: httpx.AsyncClient) -> None:
    await write(client, "e", "a", "b")
    later = await client.patch("/v1/threads/e", json={"expires_at": "2999-01-01T02:00:00+02:00"})
    assert later.status_code == 200, later.text
    body = later.json()
    assert datetime.fromisoformat(body["expires_at"]) == datetime(2999, 1, 1, tzinfo=UTC)
    assert body["expires_at"].endswith("Z")  # shown in UTC
    assert (body["version"], body["message_count"]) == (2, 2)
    # Left out or null, the expiry stays; metadata changes beside it.
    kept = (await patch(client, "e", {"k": "v"})).json()
    assert (kept["expires_at"], kept["metadata"]) == (body["expires_at"], {"k": "v"})
    nulled = await client.patch("/v1/threads/e", json={"expires_at": None})
    assert nulled.json()["expires_at"] == body["expires_at"]
    assert await messages(client, "e") == (2, ["a", "b"])

    # A time already past: the thread is deleted now, at the next version.
    past = await client.patch("/v1/threads/e", json={"expires_at": "2001-01-01T00:00:00Z"})
    assert past.status_code == 200, past.text
    assert (past.json()["version"], past.json()["message_count"]) == (3, 0)
    assert await messages(client, "e") == (3, [])


@pytest.mark.parametrize(
    ("expires_at", "status", "error"),
    [
        ("2999-01-01T00:00:00", 400, "InvalidArgument"),  # no UTC offset: which zone?
        ("1969-12-31T23:00:00Z", 400, "InvalidArgument"),  # before the epoch
        (32503680000, 422, "ValidationError"),  # a number, not a date
        ("tomorrow", 422, "ValidationError"),
        ("10000-01-01T00:00:00Z", 422, "ValidationError"),
        ("", 422, "ValidationError"),
        ({"at": "2999-01-01T00:00:00Z"}, 422, "ValidationError"),
    ],
)
async def test_patch_bad_expiry_writes_nothing(
    client: httpx.AsyncClient, expires_at: Any, status: int, error: str
) -> None:
    await write(client, "x", "a")
    before = await info(client, "x")
    body = {"expires_at": expires_at, "metadata": {"k": "v"}}
    assert_problem(await client.patch("/v1/threads/x", json=body), status, error)
    assert await info(client, "x") == before


@pytest.mark.parametrize("thread_id", ["a b", "x" * 201, "é"])
async def test_bad_thread_id(client: httpx.AsyncClient, thread_id: str) -> None:
    path = f"/v1/threads/{thread_id}"
    for response in (
        await client.get(f"{path}/info"),
        await client.patch(path, json={"metadata": {"k": "v"}}),
    ):
        assert_problem(response, 400, "InvalidThreadId")


# -- the spec ---------------------------------------------------------------------------


def test_openapi_lists_the_thread_endpoints() -> None:
    spec = create_app(Settings()).openapi()
    paths = spec["paths"]
    assert set(paths["/v1/threads"]) == {"get"}
    assert set(paths["/v1/threads/{thread_id}/info"]) == {"get"}
    assert "patch" in paths["/v1/threads/{thread_id}"]

    def response_schema(operation: dict[str, Any]) -> str:
        ref: str = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        return ref.rsplit("/", 1)[-1]

    listing = paths["/v1/threads"]["get"]
    assert response_schema(listing) == "ThreadListResponse"
    assert "metadata.<key>=<value>" in listing["description"]
    assert {p["name"] for p in listing["parameters"]} == {"limit", "after"}
    assert response_schema(paths["/v1/threads/{thread_id}/info"]["get"]) == "ThreadInfoResponse"
    update = paths["/v1/threads/{thread_id}"]["patch"]
    assert response_schema(update) == "ThreadInfoResponse"
    assert {"400", "413", "422", "503"} <= set(update["responses"])
    for operation in (listing, update):
        for status in ("400", "422"):
            assert "application/problem+json" in operation["responses"][status]["content"]
    schemas = spec["components"]["schemas"]
    assert schemas["ThreadUpdate"]["additionalProperties"] is False
    info_fields = schemas["ThreadInfoResponse"]["properties"]
    assert set(info_fields) == {
        "thread_id",
        "version",
        "message_count",
        "created_at",
        "updated_at",
        "metadata",
        "expires_at",
    }
    assert {"format": "date-time", "type": "string"} in info_fields["created_at"]["anyOf"]


@pytest.mark.parametrize(
    "key", ["k", "a.b_c:d-1", "K" * 64, "", "k" * 65, "a b", "a@b", "é", "a/b", "k\n"]
)
async def test_openapi_metadata_key_rule_is_the_checks(client: httpx.AsyncClient, key: str) -> None:
    spec = (await client.get("/openapi.json")).json()
    metadata = spec["components"]["schemas"]["ThreadUpdate"]["properties"]["metadata"]["anyOf"][0]
    # JSON Schema patterns are ECMA-262, whose "$" is the very end: Python's \Z.
    pattern = metadata["propertyNames"]["pattern"].removesuffix("$") + r"\Z"
    allowed = re.search(pattern, key) is not None
    await write(client, "rules", "hi")
    response = await patch(client, "rules", {key: "v"})
    assert response.status_code == (200 if allowed else 400), (key, response.text)


# -- splice, fork and purge -------------------------------------------------------------


async def messages(http: httpx.AsyncClient, thread_id: str) -> tuple[int, list[Any]]:
    """The thread's version and the content of each message."""
    body = (await http.get(f"/v1/threads/{thread_id}")).json()
    return body["version"], [message["content"] for message in body["messages"]]


async def write(http: httpx.AsyncClient, thread_id: str, *texts: str) -> int:
    body = {"messages": [user(text) for text in texts]}
    response = await http.post(f"/v1/threads/{thread_id}/messages", json=body)
    assert response.status_code == 201, response.text
    version: int = response.json()["version"]
    return version


async def splice(
    http: httpx.AsyncClient, thread_id: str, body: Any, **headers: str
) -> httpx.Response:
    names = {name: name.replace("_", "-").title() for name in headers}
    return await http.post(
        f"/v1/threads/{thread_id}/splice",
        json=body,
        headers={names[name]: value for name, value in headers.items()},
    )


async def test_splice_replaces_removes_and_inserts(client: httpx.AsyncClient) -> None:
    assert await write(client, "s", "m0", "m1", "m2", "m3", "m4") == 5
    response = await splice(client, "s", {"start": 1, "stop": 3, "messages": [user("x")]})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"version": 6}
    assert await messages(client, "s") == (6, ["m0", "x", "m3", "m4"])

    # Python slice rules: negative indexes count from the end, null is an end.
    removed = await splice(client, "s", {"start": -1})  # no messages: a removal
    assert removed.json() == {"version": 7}
    assert await messages(client, "s") == (7, ["m0", "x", "m3"])
    inserted = await splice(
        client, "s", {"start": 0, "stop": 0, "messages": [user("a"), user("b")]}
    )
    assert inserted.json() == {"version": 9}
    assert await messages(client, "s") == (9, ["a", "b", "m0", "x", "m3"])
    tail = await splice(client, "s", {"start": 100, "messages": [user("end")]})
    assert tail.json() == {"version": 10}
    assert await messages(client, "s") == (10, ["a", "b", "m0", "x", "m3", "end"])

    # Nothing removed and nothing inserted: nothing written, the version stays.
    for body in ({"start": 2, "stop": 2}, {"start": 100}, {"start": 3, "stop": 1}):
        same = await splice(client, "s", body)
        assert same.json() == {"version": 10}, body
    info_after = await info(client, "s")
    assert (info_after["version"], info_after["message_count"]) == (10, 6)

    # Everything: the thread is empty, its version goes on.
    assert (await splice(client, "s", {})).json() == {"version": 11}
    assert await messages(client, "s") == (11, [])


async def test_splice_compare_and_swap(client: httpx.AsyncClient) -> None:
    await write(client, "c", "a", "b")  # version 2
    edit = {"start": 0, "stop": 1, "messages": [user("A")]}

    conflict = await splice(client, "c", {**edit, "expected_version": 1})
    problem = assert_problem(conflict, 409, "VersionConflict")
    assert (problem["expected"], problem["actual"]) == (1, 2)
    for if_match in ('"1"', "1", "0"):
        problem = assert_problem(await splice(client, "c", edit, if_match=if_match), 409)
        assert problem["actual"] == 2
    assert await messages(client, "c") == (2, ["a", "b"])

    # If-Match quoted as an entity tag or bare, or expected_version: the same check.
    assert (await splice(client, "c", edit, if_match='"2"')).json() == {"version": 3}
    assert (await splice(client, "c", edit, if_match="3")).json() == {"version": 4}
    both = await splice(client, "c", {**edit, "expected_version": 4}, if_match=' "4" ')
    assert both.json() == {"version": 5}
    assert (await splice(client, "c", {**edit, "expected_version": 5})).json() == {"version": 6}
    assert await messages(client, "c") == (6, ["A", "b"])


@pytest.mark.parametrize(
    ("if_match", "expected_version"),
    [
        ('"6"', 5),  # both given, and they differ
        ('W/"2"', None),  # a weak tag never matches a version
        ("*", None),
        ('"2", "3"', None),
        ('"2', None),
        ("two", None),
        ("-1", None),
        ("", None),
        ("9" * 20, None),
        ("9" * 5000, None),
        ("²", None),  # a digit to str.isdigit, not to int()
    ],
)
async def test_splice_bad_if_match(
    client: httpx.AsyncClient, if_match: str, expected_version: int | None
) -> None:
    await write(client, "i", "a", "b")
    body = {"start": 0, "messages": [user("x")], "expected_version": expected_version}
    response = await client.post(
        "/v1/threads/i/splice",
        json=body,
        headers={b"If-Match": if_match.encode("latin-1")},  # as the server decodes it
    )
    assert_problem(response, 400, "InvalidArgument")
    assert await messages(client, "i") == (2, ["a", "b"])


async def test_splice_idempotency(client: httpx.AsyncClient) -> None:
    await write(client, "k", "a", "b", "c")
    body = {"start": 1, "stop": 2, "messages": [user("B")]}
    first = await splice(client, "k", body, idempotency_key="edit-1")
    again = await splice(client, "k", body, idempotency_key="edit-1")
    assert first.json() == again.json() == {"version": 4}
    assert again.status_code == 200
    assert await messages(client, "k") == (4, ["a", "B", "c"])
    other = await splice(client, "k", {**body, "stop": 3}, idempotency_key="edit-1")
    assert assert_problem(other, 422, "IdempotencyKeyReused")["version"] == 4
    assert await messages(client, "k") == (4, ["a", "B", "c"])
    for key in ("", "k" * 201):
        assert_problem(await splice(client, "k", body, idempotency_key=key), 400, "InvalidArgument")


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"start": 0, "messages": [{"role": "wizard", "content": "x"}]}, 400, "InvalidMessage"),
        ({"start": 0, "messages": [{"content": "no role"}]}, 400, "InvalidMessage"),
        ({"start": 0, "messages": [1]}, 422, "ValidationError"),
        ({"start": 0, "messages": "hi"}, 422, "ValidationError"),
        ({"start": "1"}, 422, "ValidationError"),
        ({"start": 1.0}, 422, "ValidationError"),
        ({"start": True}, 422, "ValidationError"),
        ({"stop": 2**62 + 1}, 422, "ValidationError"),
        ({"start": -(2**62) - 1}, 422, "ValidationError"),
        ({"start": 0, "expected_version": -1}, 422, "ValidationError"),
        ({"start": 0, "expected_version": "2"}, 422, "ValidationError"),
        ({"start": 0, "expected_versoin": 2}, 422, "ValidationError"),  # a typo is no CAS
        ([], 422, "ValidationError"),
    ],
)
async def test_splice_bad_input_writes_nothing(
    client: httpx.AsyncClient, body: Any, status: int, error: str
) -> None:
    await write(client, "b", "a", "b")
    assert_problem(await splice(client, "b", body), status, error)
    assert await messages(client, "b") == (2, ["a", "b"])


async def test_splice_size_limits(client: httpx.AsyncClient, store_url: str) -> None:
    await write(client, "big", "a")
    big = {"start": 0, "messages": [user("x" * (70 << 10))]}
    assert_problem(await splice(client, "big", big), 413, "RequestBodyTooLarge")
    assert await messages(client, "big") == (1, ["a"])
    # A message over the cache's 1 MiB cap, in a body the server takes: as append says.
    app = create_app(Settings(store_url=store_url, namespace="limits"))
    async with running(app) as http:
        await write(http, "m", "a")
        response = await splice(http, "m", {"messages": [user("x" * (1 << 20))]})
        assert assert_problem(response, 413, "MessageTooLarge")["limit"] == 1 << 20
        assert (await messages(http, "m")) == (1, ["a"])


async def test_fork(client: httpx.AsyncClient) -> None:
    await write(client, "src", "a")
    await write(client, "src", "b")
    await write(client, "src", "c")  # version 3
    await patch(client, "src", {"user": "u1"})

    response = await client.post("/v1/threads/src/fork", json={"new_id": "dst"})
    assert response.status_code == 201, response.text
    version = response.json()["version"]
    assert response.headers["location"] == "/v1/threads/dst"
    assert await messages(client, "dst") == (version, ["a", "b", "c"])
    assert (await info(client, "dst"))["metadata"] == {"user": "u1"}
    # Each side then changes alone.
    await write(client, "dst", "d")
    assert await messages(client, "src") == (3, ["a", "b", "c"])

    old = await client.post("/v1/threads/src/fork", json={"new_id": "old", "at_version": 2})
    assert old.status_code == 201, old.text
    assert (await messages(client, "old"))[1] == ["a", "b"]

    # The new thread must hold no messages: 409, and nothing changes.
    taken = await client.post("/v1/threads/src/fork", json={"new_id": "dst"})
    assert assert_problem(taken, 409, "ThreadExists")["version"] == version + 1
    assert (await messages(client, "dst"))[1] == ["a", "b", "c", "d"]
    # A thread that holds only metadata may be forked onto.
    await patch(client, "meta-only", {"k": "v"})
    onto = await client.post("/v1/threads/src/fork", json={"new_id": "meta-only"})
    assert onto.status_code == 201, onto.text
    assert (await messages(client, "meta-only"))[1] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"new_id": "src"}, 400, "InvalidArgument"),  # onto itself
        ({"new_id": "n", "at_version": 4}, 400, "InvalidArgument"),  # past the source
        ({"new_id": "n", "at_version": 1}, 400, "InvalidArgument"),  # before the splice
        ({"new_id": "a b"}, 400, "InvalidThreadId"),
        ({"new_id": "x" * 201}, 400, "InvalidThreadId"),
        ({"new_id": ""}, 400, "InvalidThreadId"),
        ({}, 422, "ValidationError"),
        ({"new_id": 7}, 422, "ValidationError"),
        ({"new_id": "n", "at_version": -1}, 422, "ValidationError"),
        ({"new_id": "n", "at_version": "2"}, 422, "ValidationError"),
        ({"new_id": "n", "at": 2}, 422, "ValidationError"),
    ],
)
async def test_fork_refused_writes_nothing(
    client: httpx.AsyncClient, body: Any, status: int, error: str
) -> None:
    await write(client, "src", "a", "b")
    await splice(client, "src", {"start": 0, "stop": 1, "messages": [user("A")]})  # version 3
    assert_problem(await client.post("/v1/threads/src/fork", json=body), status, error)
    assert await messages(client, "src") == (3, ["A", "b"])
    assert_problem(await client.get("/v1/threads/n"), 404, "ThreadNotFound")
    assert (await client.get("/v1/threads")).json()["thread_ids"] == ["src"]


async def test_purge(client: httpx.AsyncClient) -> None:
    key = {"Idempotency-Key": "turn-1"}
    posted = await client.post(
        "/v1/threads/p/messages", json={"messages": [user("secret")]}, headers=key
    )
    assert posted.json() == {"version": 1}
    await patch(client, "p", {"user": "u1"})

    response = await client.delete("/v1/threads/p", params={"purge": "true"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    version = response.json()["version"]
    assert version >= 1
    gone = await info(client, "p")
    assert (gone["version"], gone["message_count"], gone["metadata"]) == (version, 0, {})
    assert (await client.get("/v1/threads")).json()["thread_ids"] == []
    # The idempotency key is gone too: it may carry another batch. Versions go on.
    again = await client.post(
        "/v1/threads/p/messages", json={"messages": [user("other")]}, headers=key
    )
    assert again.json() == {"version": version + 1}

    # purge=false is a plain delete; anything but a boolean is refused, nothing written.
    assert (await client.delete("/v1/threads/p", params={"purge": "false"})).json() == {
        "version": version + 2
    }
    await write(client, "p", "kept")
    for value in ("maybe", "", "2"):
        refused = await client.delete("/v1/threads/p", params={"purge": value})
        assert_problem(refused, 422, "ValidationError")
    assert (await messages(client, "p"))[1] == ["kept"]
    assert_problem(await client.delete("/v1/threads/a%20b?purge=true"), 400, "InvalidThreadId")


async def test_changes_reach_another_instance(
    sqlite_url: str, redis_url: str, namespace: str
) -> None:
    """Splice, fork and purge through one app are what a second app (its own L1, the same
    Redis and store) serves: its cached copies are invalidated."""
    settings = Settings(store_url=sqlite_url, redis_url=redis_url, namespace=namespace)
    async with (
        running(create_app(settings)) as first,
        running(create_app(settings)) as second,
    ):
        await write(first, "t", "a", "b", "c")
        assert await messages(second, "t") == (3, ["a", "b", "c"])  # now cached there

        async def served(thread_id: str, expected: tuple[int, list[Any]]) -> None:
            async def fresh() -> bool:
                return await messages(second, thread_id) == expected

            await eventually(fresh, show=lambda: expected)

        version = (await splice(first, "t", {"start": 1, "stop": 2})).json()["version"]
        await served("t", (version, ["a", "c"]))
        fork = await first.post("/v1/threads/t/fork", json={"new_id": "f"})
        await served("f", (fork.json()["version"], ["a", "c"]))
        purged = (await first.delete("/v1/threads/t", params={"purge": "true"})).json()
        await served("t", (purged["version"], []))


def test_openapi_lists_splice_fork_and_purge() -> None:
    spec = create_app(Settings()).openapi()
    paths = spec["paths"]
    schemas = spec["components"]["schemas"]
    splice_op = paths["/v1/threads/{thread_id}/splice"]["post"]
    assert {p["name"] for p in splice_op["parameters"]} == {
        "thread_id",
        "Idempotency-Key",
        "If-Match",
    }
    assert {"200", "400", "409", "413", "422"} <= set(splice_op["responses"])
    fork_op = paths["/v1/threads/{thread_id}/fork"]["post"]
    assert {"201", "400", "409"} <= set(fork_op["responses"])
    assert "ThreadExists" not in fork_op["responses"]["409"]["description"]  # said in words
    assert "already holds messages" in fork_op["responses"]["409"]["description"]
    delete = paths["/v1/threads/{thread_id}"]["delete"]
    (purge,) = (p for p in delete["parameters"] if p["name"] == "purge")
    assert purge["schema"]["type"] == "boolean"
    # A spliced message follows the same rules, from the same schema, as an appended one.
    splice_messages = schemas["SpliceRequest"]["properties"]["messages"]
    append_messages = schemas["AppendRequest"]["properties"]["messages"]
    assert splice_messages["items"] == append_messages["items"]
    assert "minItems" not in splice_messages  # a splice may only remove
    for name in ("SpliceRequest", "ForkRequest"):
        assert schemas[name]["additionalProperties"] is False


# -- retention and the background sweep ------------------------------------------------


async def test_background_sweep_deletes_expired_threads(store_url: str, namespace: str) -> None:
    settings = Settings(store_url=store_url, namespace=namespace, sweep_interval=0.05)
    async with running(create_app(settings)) as http:
        await write(http, "e", "a")
        await write(http, "kept", "a")
        soon = datetime.now(UTC) + timedelta(seconds=1)  # still to come when set
        set_expiry = await http.patch("/v1/threads/e", json={"expires_at": soon.isoformat()})
        assert set_expiry.status_code == 200, set_expiry.text

        async def swept() -> bool:
            # Deleted by the sweep, not by a write: its row was written after it expired.
            updated = (await info(http, "e"))["updated_at"]
            return datetime.fromisoformat(updated) > soon

        await eventually(swept)
        assert await messages(http, "e") == (2, [])
        assert (await client_list(http)) == ["kept"]
        assert (await messages(http, "kept")) == (1, ["a"])


async def test_background_sweep_removes_expired_idempotency_keys(
    tmp_path: Path, namespace: str
) -> None:
    path = tmp_path / "keys.db"
    settings = Settings(
        store_url=f"sqlite:///{path}?idempotency_ttl=0.2", namespace=namespace, sweep_interval=0.05
    )
    async with running(create_app(settings)) as http:
        body = {"messages": [user("a")]}
        response = await http.post(
            "/v1/threads/k/messages", json=body, headers={"Idempotency-Key": "key-1"}
        )
        assert response.status_code == 201, response.text

        def keys_left() -> int:
            connection = sqlite3.connect(path)
            try:
                (count,) = connection.execute("SELECT count(*) FROM idempotency_keys").fetchone()
            finally:
                connection.close()
            return int(count)

        assert keys_left() == 1
        await eventually(lambda: keys_left() == 0)


async def client_list(http: httpx.AsyncClient) -> list[str]:
    ids: list[str] = (await http.get("/v1/threads")).json()["thread_ids"]
    return ids


async def test_retention_setting_sets_each_writes_expiry(sqlite_url: str, namespace: str) -> None:
    settings = Settings(store_url=sqlite_url, namespace=namespace, retention=3600.0)
    async with running(create_app(settings)) as http:
        before = datetime.now(UTC)
        await write(http, "r", "a")
        expires_at = datetime.fromisoformat((await info(http, "r"))["expires_at"])
        assert (
            before + timedelta(seconds=3590)
            <= expires_at
            <= datetime.now(UTC) + timedelta(seconds=3610)
        )


def test_settings_retention_and_sweep_from_env() -> None:
    environ = {"AGENT_CORE_RETENTION": "86400", "AGENT_CORE_SWEEP_INTERVAL": "5"}
    settings = Settings.from_env(environ)
    assert (settings.retention, settings.sweep_interval) == (86400.0, 5.0)
    assert Settings.from_env({"AGENT_CORE_RETENTION": ""}).retention is None
    assert Settings().retention is None
    assert Settings().sweep_interval == 60.0
    assert Settings(sweep_interval=0).sweep_interval == 0
    with pytest.raises(ConfigurationError, match="AGENT_CORE_RETENTION"):
        Settings.from_env({"AGENT_CORE_RETENTION": "a month"})
    for bad in ("-1", "nan", "inf"):
        with pytest.raises(ConfigurationError, match="sweep_interval"):
            Settings.from_env({"AGENT_CORE_SWEEP_INTERVAL": bad})
    # Serverless instances freeze between requests: no background sweep unless asked.
    assert serverless_settings({}).sweep_interval == 0
    assert serverless_settings({"AGENT_CORE_SWEEP_INTERVAL": "30"}).sweep_interval == 30.0
    assert serverless_settings({}).consistency == "strong"


async def test_a_bad_retention_is_a_configuration_error(sqlite_url: str) -> None:
    app = create_app(Settings(store_url=sqlite_url, retention=-1.0))
    with pytest.raises(ConfigurationError, match="retention"):
        async with app.router.lifespan_context(app):
            pass
