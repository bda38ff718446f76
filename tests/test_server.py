"""The HTTP service against real stores and EchoModel: every endpoint, good and bad input."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from agent_core import StoreUnavailable
from agent_core._validation import MAX_IDEMPOTENCY_KEY_LENGTH, check_thread_id
from agent_core.errors import InvalidThreadId
from agent_core.messages import KNOWN_ROLES
from agent_core.server import Settings, create_app
from agent_core.server._recent import RecentSamples, RecentSummary

from ._http import assert_problem, running, user
from ._poll import eventually


@pytest.fixture
def settings(store_url: str, namespace: str) -> Settings:
    return Settings(store_url=store_url, namespace=namespace, max_body_bytes=64 << 10)


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with running(app) as http:
        yield http


async def test_append_get_delete(client: httpx.AsyncClient) -> None:
    messages = [{"role": "system", "content": "be brief"}, user("héllo"), {"type": "x", "a": [1]}]
    response = await client.post("/v1/threads/t1/messages", json={"messages": messages})
    assert response.status_code == 201
    assert response.json() == {"version": 3}

    response = await client.get("/v1/threads/t1")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"thread_id": "t1", "version": 3, "messages": messages}

    response = await client.post(
        "/v1/threads/t1/messages", json={"messages": [user("again")], "expected_version": 3}
    )
    assert response.json() == {"version": 4}

    response = await client.delete("/v1/threads/t1")
    assert response.status_code == 200
    assert response.json() == {"version": 5}
    assert (await client.get("/v1/threads/t1")).json() == {
        "thread_id": "t1",
        "version": 5,
        "messages": [],
    }


async def test_window(client: httpx.AsyncClient) -> None:
    messages = [{"role": "system", "content": "pinned"}] + [
        user(f"message number {i} " * 20) for i in range(20)
    ]
    await client.post("/v1/threads/w/messages", json={"messages": messages})
    response = await client.get("/v1/threads/w", params={"max_tokens": 200, "model": "gpt-4o"})
    assert response.status_code == 200
    body = response.json()
    assert body["version"] == 21
    assert body["messages"][0] == messages[0]
    assert body["messages"][-1] == messages[-1]
    assert body["omitted"] == 21 - len(body["messages"]) > 0
    assert 0 < body["token_count"] <= 200
    # Without model: the server's token model.
    default = await client.get("/v1/threads/w", params={"max_tokens": 200})
    assert default.json()["messages"] == body["messages"]


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"max_tokens": 0}, 422),
        ({"max_tokens": "many"}, 422),
        ({"model": "gpt-4o"}, 400),
        ({"max_tokens": 1}, 422),
    ],
)
async def test_window_bad_params(
    client: httpx.AsyncClient, params: dict[str, Any], status: int
) -> None:
    await client.post("/v1/threads/w/messages", json={"messages": [user("x " * 50)]})
    assert_problem(await client.get("/v1/threads/w", params=params), status)


async def test_idempotency(client: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "k1"}
    body = {"messages": [user("once")]}
    first = await client.post("/v1/threads/i/messages", json=body, headers=headers)
    again = await client.post("/v1/threads/i/messages", json=body, headers=headers)
    assert first.json() == again.json() == {"version": 1}
    assert again.status_code == 201
    assert len((await client.get("/v1/threads/i")).json()["messages"]) == 1
    other = await client.post(
        "/v1/threads/i/messages", json={"messages": [user("other")]}, headers=headers
    )
    problem = assert_problem(other, 422, "IdempotencyKeyReused")
    assert problem["version"] == 1


@pytest.mark.parametrize("key", ["", "k" * 201])
async def test_bad_idempotency_key(client: httpx.AsyncClient, key: str) -> None:
    response = await client.post(
        "/v1/threads/i/messages", json={"messages": [user("a")]}, headers={"Idempotency-Key": key}
    )
    assert_problem(response, 400, "InvalidArgument")


async def test_version_conflict(client: httpx.AsyncClient) -> None:
    await client.post("/v1/threads/c/messages", json={"messages": [user("a")]})
    response = await client.post(
        "/v1/threads/c/messages", json={"messages": [user("b")], "expected_version": 0}
    )
    problem = assert_problem(response, 409, "VersionConflict")
    assert (problem["expected"], problem["actual"]) == (0, 1)


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b'{"messages": [', 400, "MalformedJSON"),
        (b"[]", 422, "ValidationError"),
        (b'{"messages": "hi"}', 422, "ValidationError"),
        (b'{"messages": [1]}', 422, "ValidationError"),
        (b'{"messages": [{"role": "user"}], "expected_version": "1"}', 422, "ValidationError"),
        (b'{"messages": [{"role": "user"}], "expected_version": -1}', 422, "ValidationError"),
        (
            b'{"messages": [{"role": "user"}], "expected_version": 9223372036854775808}',
            422,
            "ValidationError",
        ),
        (b'{"messages": []}', 400, "InvalidBatch"),
        (b'{"messages": [{"role": "wizard", "content": "x"}]}', 400, "InvalidMessage"),
        (b'{"messages": [{"content": "no role"}]}', 400, "InvalidMessage"),
    ],
)
async def test_append_bad_input(
    client: httpx.AsyncClient, body: bytes, status: int, error: str
) -> None:
    response = await client.post(
        "/v1/threads/b/messages", content=body, headers={"content-type": "application/json"}
    )
    assert_problem(response, status, error)


@pytest.mark.parametrize("thread_id", ["a b", "x" * 201, "é"])
async def test_bad_thread_id(client: httpx.AsyncClient, thread_id: str) -> None:
    path = f"/v1/threads/{thread_id}"
    for response in (
        await client.get(path),
        await client.delete(path),
        await client.post(f"{path}/messages", json={"messages": [user("x")]}),
        await client.post(f"{path}/turns", json={"message": "x"}),
    ):
        assert_problem(response, 400, "InvalidThreadId")


async def test_body_limits(client: httpx.AsyncClient) -> None:
    big = {"messages": [user("x" * (70 << 10))]}
    assert_problem(
        await client.post("/v1/threads/big/messages", json=big), 413, "RequestBodyTooLarge"
    )

    async def chunks() -> AsyncIterator[bytes]:
        # No Content-Length: the size is counted as the body arrives.
        for _ in range(70):
            yield b" " * 1024

    response = await client.post(
        "/v1/threads/big/messages", content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "RequestBodyTooLarge")
    assert (await client.get("/v1/threads/big")).status_code == 404


async def test_message_too_large(store_url: str, namespace: str) -> None:
    # A body under the request limit whose message is over the cache's 1 MiB cap.
    app = create_app(Settings(store_url=store_url, namespace=namespace))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
    ):
        response = await http.post(
            "/v1/threads/m/messages", json={"messages": [user("x" * (1 << 20))]}
        )
        problem = assert_problem(response, 413, "MessageTooLarge")
        assert problem["limit"] == 1 << 20


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/nope"), 404)
    assert_problem(await client.put("/v1/threads/t"), 405)
    assert_problem(await client.get("/v1/threads/a/b/c"), 404)


async def test_turn(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/threads/chat/turns", json={"message": "ping"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["text"]
    assert body["version"] == 2
    assert body["history_tier"] in {"l1", "l2", "store"}
    assert body["prompt_tokens"] > 0
    assert set(body["usage"]) == {
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cached_tokens",
        "cache_write_tokens",
    }
    assert "model" in body["timings"]
    thread = (await client.get("/v1/threads/chat")).json()
    assert [m["role"] for m in thread["messages"]] == ["user", "assistant"]
    assert thread["messages"][1]["content"] == body["text"]


async def test_turn_bad_input(client: httpx.AsyncClient) -> None:
    assert_problem(await client.post("/v1/threads/t/turns", json={}), 422, "ValidationError")
    assert_problem(
        await client.post("/v1/threads/t/turns", json={"message": 3}), 422, "ValidationError"
    )
    assert_problem(
        await client.post("/v1/threads/t/turns", json={"message": {"role": "assistant"}}),
        400,
        "InvalidMessage",
    )


async def test_turn_over_budget(sqlite_url: str, namespace: str) -> None:
    settings = Settings(
        store_url=sqlite_url, namespace=namespace, max_context_tokens=50, reserve_output_tokens=10
    )
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
    ):
        long = "word " * 200
        assert_problem(
            await http.post("/v1/threads/t/turns", json={"message": long}),
            422,
            "TokenBudgetExceeded",
        )
        # Streamed, the failure still comes before the 200: same problem.
        assert_problem(
            await http.post(
                "/v1/threads/t/turns",
                json={"message": long},
                headers={"accept": "text/event-stream"},
            ),
            422,
            "TokenBudgetExceeded",
        )


def parse_sse(text: str) -> list[tuple[str, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], orjson.loads(fields["data"])))
    return events


async def test_turn_stream(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/threads/s/turns",
        json={"message": "stream me a reply"},
        headers={"accept": "text/event-stream"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.text)
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "reply"
    assert set(kinds[:-1]) == {"chunk"}
    reply = events[-1][1]
    assert "".join(data["text"] for _, data in events[:-1]) == reply["text"]
    assert reply["version"] == 2
    thread = (await client.get("/v1/threads/s")).json()
    assert thread["messages"][1]["content"] == reply["text"]


async def test_ops_endpoints(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "store": "ok", "redis": "none", "detail": ""}

    await client.post("/v1/threads/o/messages", json={"messages": [user("a")]})
    await client.get("/v1/threads/o")
    await client.post("/v1/threads/o/turns", json={"message": "hi"})
    stats = (await client.get("/v1/stats")).json()
    assert stats["appends"] == 2
    assert stats["l1_hits"] >= 1
    assert 0 < stats["hit_rate"] <= 1
    assert stats["memory"]["rss"] > 0
    assert stats["consistency"] == "bounded"
    assert "p99" in stats["loop_lag"]

    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    values = _samples(metrics.text)
    for name in (
        'agent_core_cache_hits_total{tier="l1"}',
        "agent_core_appends_total",
        "agent_core_l1_bytes",
        "agent_core_l1_entries",
        "agent_core_memory_rss_bytes",
        "agent_core_memory_limit_bytes",
        'agent_core_thread_read_duration_seconds_count{tier="l1"}',
        "agent_core_model_call_duration_seconds_count",
        'agent_core_turns_total{history_tier="l1"}',
        'agent_core_http_request_duration_seconds_count{method="GET",'
        'route="/v1/threads/{thread_id}",status="200"}',
        'agent_core_cache_hit_rate{tier="total"}',
    ):
        assert values.get(name, 0) > 0, name
    assert "agent_core_event_loop_lag_seconds" in metrics.text
    assert "agent_core_degraded 0.0" in metrics.text


def _samples(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


async def test_openapi(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    assert set(paths) >= {
        "/v1/threads/{thread_id}/messages",
        "/v1/threads/{thread_id}",
        "/v1/threads/{thread_id}/turns",
        "/metrics",
        "/healthz",
        "/readyz",
        "/v1/stats",
        "/v1/dashboard",
    }
    assert "/" not in paths  # the dashboard page is for people; its data is /v1/dashboard
    assert set(paths["/v1/threads/{thread_id}"]) == {"get", "patch", "delete"}
    append = paths["/v1/threads/{thread_id}/messages"]["post"]
    assert "requestBody" in append
    assert "201" in append["responses"]
    assert "409" in append["responses"]
    schemas = spec["components"]["schemas"]
    assert {
        "AppendRequest",
        "ThreadResponse",
        "TurnRequest",
        "TurnResponse",
        "DashboardResponse",
    } <= set(schemas)


@pytest.mark.parametrize(
    "thread_id", ["t", "a.b_c:d@e-1", "x" * 200, "", "x" * 201, "a b", "é", "a/b", "t\n"]
)
def test_openapi_thread_id_rule_is_the_checks(thread_id: str) -> None:
    spec = create_app(Settings()).openapi()
    for path, operations in spec["paths"].items():
        if "{thread_id}" not in path:
            continue
        for operation in operations.values():
            (parameter,) = (p for p in operation["parameters"] if p["name"] == "thread_id")
            schema = parameter["schema"]
            # JSON Schema patterns are ECMA-262, whose "$" is the very end: Python's \Z.
            pattern = schema["pattern"].removesuffix("$") + r"\Z"
            allowed = (
                schema["minLength"] <= len(thread_id) <= schema["maxLength"]
                and re.search(pattern, thread_id) is not None
            )
            try:
                check_thread_id(thread_id)
            except InvalidThreadId:
                assert not allowed, (path, thread_id)
            else:
                assert allowed, (path, thread_id)


def test_openapi_message_rules() -> None:
    schemas = create_app(Settings()).openapi()["components"]["schemas"]
    item = schemas["AppendRequest"]["properties"]["messages"]["items"]
    *with_role, with_type = item["anyOf"]
    roles = [role for rule in with_role for role in rule["properties"]["role"]["enum"]]
    assert sorted(roles) == sorted(KNOWN_ROLES)
    assert all("role" in rule["required"] for rule in with_role)
    assert with_type["required"] == ["type"]
    assert with_type["not"] == {"required": ["role"]}
    turn = schemas["TurnRequest"]["properties"]["message"]["anyOf"]
    assert turn[1]["properties"]["role"] == {"const": "user"}


def test_openapi_idempotency_key_rule() -> None:
    spec = create_app(Settings()).openapi()
    append = spec["paths"]["/v1/threads/{thread_id}/messages"]["post"]
    (header,) = (p for p in append["parameters"] if p["name"] == "Idempotency-Key")
    assert (header["in"], header["required"]) == ("header", False)
    schema = header["schema"]
    assert (schema["minLength"], schema["maxLength"]) == (1, MAX_IDEMPOTENCY_KEY_LENGTH)
    assert "printable" in header["description"]


async def test_redis_reported(sqlite_url: str, redis_url: str, namespace: str) -> None:
    app = create_app(Settings(store_url=sqlite_url, redis_url=redis_url, namespace=namespace))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
    ):
        await http.post("/v1/threads/r/messages", json={"messages": [user("a")]})
        assert (await http.get("/v1/threads/r")).status_code == 200
        ready = (await http.get("/readyz")).json()
        assert (ready["status"], ready["redis"]) == ("ok", "ok")
        assert (await http.get("/v1/dashboard")).json()["redis"] == "ok"


@pytest.mark.integration
async def test_store_unreachable(namespace: str) -> None:
    app = create_app(
        Settings(store_url="postgresql://nobody@127.0.0.1:1/none", namespace=namespace)
    )
    with pytest.raises(StoreUnavailable):
        async with app.router.lifespan_context(app):
            pass


async def test_readyz_store_down(app: FastAPI, client: httpx.AsyncClient) -> None:
    await app.state.core.cache.store.close()
    response = await client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert (body["status"], body["store"]) == ("unavailable", "unavailable")
    assert body["detail"]


def test_settings_from_env() -> None:
    environ = {
        "AGENT_CORE_STORE_URL": "sqlite:///x.db",
        "AGENT_CORE_REDIS_URL": "",
        "AGENT_CORE_MAX_CONTEXT_TOKENS": "9000",
        "AGENT_CORE_CONSISTENCY": "strong",
        "AGENT_CORE_MAX_STALENESS": "0.25",
    }
    settings = Settings.from_env(environ, model=None, namespace="ns")
    assert settings == Settings(
        store_url="sqlite:///x.db",
        redis_url=None,
        max_context_tokens=9000,
        consistency="strong",
        max_staleness=0.25,
        namespace="ns",
    )
    with pytest.raises(ValueError, match="AGENT_CORE_MAX_STALENESS"):
        Settings.from_env({"AGENT_CORE_MAX_STALENESS": "soon"})
    with pytest.raises(ValueError, match="AGENT_CORE_MAX_BODY_BYTES"):
        Settings.from_env({"AGENT_CORE_MAX_BODY_BYTES": "lots"})
    with pytest.raises(ValueError, match="unknown setting"):
        Settings.from_env({}, colour="blue")
    with pytest.raises(ValueError, match="max_body_bytes"):
        Settings(max_body_bytes=0)


# -- the dashboard ---------------------------------------------------------------------


async def test_dashboard_data(client: httpx.AsyncClient) -> None:
    await client.post("/v1/threads/d/messages", json={"messages": [user("a")]})
    assert (await client.get("/v1/threads/d")).status_code == 200  # from L1
    assert (await client.get("/v1/threads/never-written")).status_code == 404  # from the store
    assert (await client.post("/v1/threads/d/turns", json={"message": "hi"})).status_code == 200

    async def lag_sampled() -> bool:
        return bool((await client.get("/v1/dashboard")).json()["loop_lag"]["count"])

    await eventually(lag_sampled)

    response = await client.get("/v1/dashboard")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    data = response.json()
    stats = (await client.get("/v1/stats")).json()
    assert data["reads"] == {
        "total": stats["requests"],
        "l1_hits": stats["l1_hits"],
        "l2_hits": stats["l2_hits"],
        "misses": stats["misses"],
    }
    assert data["hit_rate"] == {
        "l1": stats["l1_hit_rate"],
        "l2": stats["l2_hit_rate"],
        "total": stats["hit_rate"],
    }
    assert 0 < data["hit_rate"]["total"] < 1
    assert data["appends"] == stats["appends"] == 2
    latency = data["read_latency"]
    # The GET and the turn's history came from L1; the unknown thread from the store.
    assert latency["l1"]["count"] == 2
    assert latency["store"]["count"] == 1
    assert latency["l2"] == {"count": 0, "p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    for tier in ("l1", "store"):
        s = latency[tier]
        assert 0 < s["p50"] <= s["p95"] <= s["p99"] <= s["max"] < 10
    lag = data["loop_lag"]
    assert lag["count"] > 0
    assert 0 <= lag["p50"] <= lag["p99"] <= lag["max"]
    assert data["window"] == 10.0
    assert 0 < data["uptime"] < 600
    memory = data["memory"]
    assert memory["rss"] > 0
    assert memory["limit"] >= memory["rss"]
    assert 0 < memory["l1_bytes"] <= memory["l1_budget"]
    assert memory["l1_entries"] == 2  # the empty thread read from the store is cached too
    assert data["redis"] == "none"


async def test_dashboard_page(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    page = response.text
    assert '"v1/dashboard"' in page
    assert page.count("<canvas id=") == 4
    # Nothing is loaded from elsewhere: the page must work offline.
    assert "http://" not in page
    assert "https://" not in page
    assert "<script src" not in page
    assert "stylesheet" not in page
    # Security headers (issue 14): only its own inline script runs, it can't be framed.
    policy = response.headers["content-security-policy"]
    script = page.split("<script>", 1)[1].split("</script>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in policy
    assert "default-src 'none'" in policy
    assert "frame-ancestors 'none'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"


async def test_dashboard_errors_are_problems(client: httpx.AsyncClient) -> None:
    assert_problem(await client.post("/v1/dashboard"), 405)
    assert_problem(await client.delete("/"), 405)
    assert_problem(await client.get("/dashboard"), 404)


def test_recent_samples_keep_the_window() -> None:
    now = [100.0]
    samples = RecentSamples(window=10.0, max_samples=5, clock=lambda: now[0])
    assert samples.summary() == RecentSummary(0, 0.0, 0.0, 0.0, 0.0)
    for value in (5.0, 1.0, 3.0):
        samples.add(value)
    assert samples.summary() == RecentSummary(3, 3.0, 5.0, 5.0, 5.0)
    now[0] = 105.0
    samples.add(2.0)
    samples.add(4.0)
    samples.add(0.5)  # over max_samples: the oldest (5.0) goes
    assert samples.summary() == RecentSummary(5, 2.0, 4.0, 4.0, 4.0)
    now[0] = 110.5  # the first three are over 10 s old
    assert samples.summary() == RecentSummary(3, 2.0, 4.0, 4.0, 4.0)
    now[0] = 200.0
    assert samples.summary().count == 0


async def test_metrics_labels_do_not_grow_with_what_clients_send(
    client: httpx.AsyncClient,
) -> None:
    """Made-up methods and paths share labels: a client cannot grow the label sets."""
    for index in range(20):
        await client.request(f"M{index}", f"/v1/threads/t{index}")
        await client.get(f"/nope/{index}")
    text = (await client.get("/metrics")).text
    series = [
        name
        for name in _samples(text)
        if name.startswith("agent_core_http_request_duration_seconds_count")
    ]
    assert not any("M1" in name or "nope" in name for name in series), series
    assert (
        _samples(text)[
            'agent_core_http_request_duration_seconds_count{method="other",'
            'route="/v1/threads/{thread_id}",status="405"}'
        ]
        == 20
    )
    assert len(series) <= 3, series
