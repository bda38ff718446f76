"""Authentication and tenants over HTTP: the matrix of refusals for every route, generated
from the OpenAPI spec (a new route without a row below fails), keys-file reloads, scopes,
per-tenant limits and the audit log."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI

from agent_core._api_keys import KeysFile
from agent_core.server import Settings, create_app

from ._http import assert_problem, running, user
from ._poll import eventually
from .test_jwt import AUDIENCE, ISSUER, JwksServer, rsa_jwk, sign

#: Every authenticated operation of the spec: the scope it needs, and a request that
#: would succeed on a thread that exists. ``{thread_id}`` is filled in per case.
OPERATIONS: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {
    ("POST", "/v1/threads/{thread_id}/messages"): ("write", {"json": {"messages": [user("x")]}}),
    ("GET", "/v1/threads/{thread_id}"): ("read", {}),
    ("DELETE", "/v1/threads/{thread_id}"): ("write", {}),
    ("PATCH", "/v1/threads/{thread_id}"): ("write", {"json": {"metadata": {"k": "v"}}}),
    ("POST", "/v1/threads/{thread_id}/splice"): ("write", {"json": {"start": 0, "stop": 1}}),
    ("POST", "/v1/threads/{thread_id}/fork"): ("write", {"json": {"new_id": "forked"}}),
    ("GET", "/v1/threads"): ("read", {}),
    ("GET", "/v1/threads/{thread_id}/info"): ("read", {}),
    ("POST", "/v1/threads/{thread_id}/turns"): ("write", {"json": {"message": "hi"}}),
    ("GET", "/metrics"): ("admin", {}),
    ("GET", "/readyz"): ("admin", {}),
    ("GET", "/v1/stats"): ("admin", {}),
    ("GET", "/v1/dashboard"): ("admin", {}),
}
#: Open to anyone: liveness, and the spec itself.
OPEN: set[tuple[str, str]] = {("GET", "/healthz")}
#: Writes that make the thread in the caller's namespace when it has none there.
CREATING = {("POST", "/v1/threads/{thread_id}/messages"), ("POST", "/v1/threads/{thread_id}/turns")}
SHARED = "shared"

pytestmark = pytest.mark.integration


@dataclass
class World:
    """Two tenants' keys (and tenant A's JWT signer) on one app."""

    http: httpx.AsyncClient
    keys: KeysFile
    key: dict[str, str]
    jwks: JwksServer
    signer: rsa.RSAPrivateKey

    def bearer(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key[name]}"}

    def jwt(self, **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {sign(self.signer, 'rsa-1', **claims)}"}


@pytest.fixture(scope="module")
def signer() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def jwks(signer: rsa.RSAPrivateKey) -> Iterator[JwksServer]:
    server = JwksServer()
    server.publish(rsa_jwk(signer, "rsa-1"))
    yield server
    server.stop()


def make_keys(path: Path) -> tuple[KeysFile, dict[str, str]]:
    keys = KeysFile(path)
    made: dict[str, str] = {}
    for name, tenant, scopes in (
        ("a", "ta", ("read", "write")),
        ("a-read", "ta", ("read",)),
        ("a-write", "ta", ("write",)),
        ("a-admin", "ta", ("admin",)),
        ("b", "tb", ("read", "write")),
        ("a-revoked", "ta", ("read", "write", "admin")),
    ):
        _, made[name] = keys.create(tenant, scopes)
    keys.revoke(KeysFile(path).load()[-1].id)
    past = datetime.now(UTC) - timedelta(hours=2)
    _, made["a-expired"] = keys.create(
        "ta", ("read", "write", "admin"), expires_at=past + timedelta(hours=1), now=past
    )
    made["bad"] = "ack_0123456789ab_" + "A" * 43
    return keys, made


def auth_app(tmp_path: Path, jwks: JwksServer, **settings: Any) -> FastAPI:
    return create_app(
        Settings(
            store_url=f"sqlite:///{tmp_path / 'auth.db'}",
            keys_file=str(tmp_path / "keys.json"),
            jwt_jwks_url=jwks.url,
            jwt_audience=AUDIENCE,
            jwt_issuer=ISSUER,
            sweep_interval=0,
            **settings,
        )
    )


@pytest.fixture
async def world(
    tmp_path: Path, jwks: JwksServer, signer: rsa.RSAPrivateKey
) -> AsyncIterator[World]:
    keys, made = make_keys(tmp_path / "keys.json")
    async with running(auth_app(tmp_path, jwks)) as http:
        yield World(http, keys, made, jwks, signer)


def spec_operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, methods in spec["paths"].items()
        for method, operation in methods.items()
    }


async def test_every_route_of_the_spec_is_in_the_matrix(world: World) -> None:
    spec = (await world.http.get("/openapi.json")).json()
    operations = spec_operations(spec)
    assert set(operations) == set(OPERATIONS) | OPEN, "a route without a row in OPERATIONS"
    for name, operation in operations.items():
        secured = operation.get("security") == [{"HTTPBearer": []}]
        assert secured == (name not in OPEN), name
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


async def thread_state(
    world: World, headers: dict[str, str]
) -> tuple[int, list[Any], dict[str, str]]:
    body = (await world.http.get(f"/v1/threads/{SHARED}", headers=headers)).json()
    info = (await world.http.get(f"/v1/threads/{SHARED}/info", headers=headers)).json()
    return body["version"], body["messages"], info["metadata"]


def call(world: World, method: str, path: str, headers: dict[str, str]) -> Any:
    _, request = OPERATIONS[(method, path)]
    return world.http.request(
        method, path.replace("{thread_id}", SHARED), headers=headers, **request
    )


@pytest.mark.parametrize(("method", "path"), sorted(OPERATIONS))
async def test_refusals(world: World, method: str, path: str) -> None:
    scope, _ = OPERATIONS[(method, path)]
    b = world.bearer("b")
    assert (
        await world.http.post(
            f"/v1/threads/{SHARED}/messages", json={"messages": [user("1"), user("2")]}, headers=b
        )
    ).status_code == 201
    before = await thread_state(world, b)
    refused = {
        "no credential": {},
        "not bearer": {"Authorization": f"Basic {world.key['a']}"},
        "bad key": world.bearer("bad"),
        "revoked key": world.bearer("a-revoked"),
        "expired key": world.bearer("a-expired"),
        "expired JWT": world.jwt(
            tenant="ta", iat=int(time.time()) - 7200, exp=int(time.time()) - 3600
        ),
        "JWT for another audience": world.jwt(tenant="ta", aud="someone-else"),
    }
    for case, headers in refused.items():
        response = await call(world, method, path, headers)
        body = assert_problem(response, 401, "AuthenticationFailed")
        assert response.headers["www-authenticate"].startswith("Bearer"), case
        assert world.key["a"] not in body["detail"], case
    # The wrong scope: a key with every scope but the one the route needs.
    others = {"read": "a-write", "write": "a-read", "admin": "a"}[scope]
    for headers in (world.bearer(others), world.jwt(tenant="ta", scope=_without(scope))):
        assert_problem(await call(world, method, path, headers), 403, "PermissionDenied")
    # Nothing was written by any refusal, nor by tenant A's calls on B's thread id.
    assert await thread_state(world, b) == before
    if scope != "admin":
        for headers in (world.bearer("a-admin"), world.jwt(tenant="ta", scope="admin")):
            response = await call(world, method, path, headers)
            if (method, path) in CREATING:
                assert response.status_code in (200, 201), response.text  # A's own thread
            elif path == "/v1/threads":
                assert SHARED not in response.json()["thread_ids"]
            else:
                assert_problem(response, 404, "ThreadNotFound")
        assert await thread_state(world, b) == before
        listed = await world.http.get("/v1/threads", headers=b)
        assert listed.json()["thread_ids"] == [SHARED]


def _without(scope: str) -> str:
    return " ".join(s for s in ("read", "write") if s != scope) or "read"


async def test_each_tenant_sees_its_own_threads(world: World) -> None:
    for name in ("a", "b"):
        response = await world.http.post(
            "/v1/threads/same-id/messages",
            json={"messages": [user(name)]},
            headers=world.bearer(name),
        )
        assert response.json() == {"version": 1}
    jwt_a = world.jwt(tenant="ta")
    for headers, text in ((world.bearer("a"), "a"), (jwt_a, "a"), (world.bearer("b"), "b")):
        body = (await world.http.get("/v1/threads/same-id", headers=headers)).json()
        assert [m["content"] for m in body["messages"]] == [text]
    # Admin scope covers reads, writes and purges; a write key can't purge.
    assert_problem(
        await world.http.delete("/v1/threads/same-id?purge=true", headers=world.bearer("a")),
        403,
        "PermissionDenied",
    )
    purged = await world.http.delete(
        "/v1/threads/same-id?purge=true", headers=world.bearer("a-admin")
    )
    assert purged.status_code == 200, purged.text
    body = (await world.http.get("/v1/threads/same-id", headers=world.bearer("b"))).json()
    assert [m["content"] for m in body["messages"]] == ["b"]


async def test_the_keys_file_is_reloaded_on_change(world: World) -> None:
    _, key = world.keys.create("tc", ("read", "write"))
    headers = {"Authorization": f"Bearer {key}"}

    async def accepted() -> bool:
        response = await world.http.post(
            "/v1/threads/t/messages", json={"messages": [user("c")]}, headers=headers
        )
        return response.status_code == 201

    await eventually(accepted)
    # Revoked: refused from the next request that sees the file, remembered or not.
    entry = next(e for e in world.keys.load() if e.tenant == "tc")
    world.keys.revoke(entry.id)

    async def refused() -> bool:
        return (await world.http.get("/v1/threads/t", headers=headers)).status_code == 401

    await eventually(refused)


async def test_a_malformed_keys_file_keeps_the_keys_in_force(world: World) -> None:
    headers = world.bearer("a")
    assert (await world.http.get("/v1/threads", headers=headers)).status_code == 200
    world.keys.path.write_text("{ half written")
    assert (await world.http.get("/v1/threads", headers=headers)).status_code == 200
    assert (await world.http.get("/v1/threads", headers=world.bearer("bad"))).status_code == 401


async def test_jwks_down_is_a_503_not_a_401(tmp_path: Path, signer: rsa.RSAPrivateKey) -> None:
    jwks = JwksServer()
    jwks.stop()
    make_keys(tmp_path / "keys.json")
    async with running(auth_app(tmp_path, jwks)) as http:
        token = sign(signer, "rsa-1", tenant="ta")
        response = await http.get("/v1/threads", headers={"Authorization": f"Bearer {token}"})
        assert_problem(response, 503, "IdentityProviderUnavailable")
        assert int(response.headers["retry-after"]) >= 1


async def test_tenant_request_limit(tmp_path: Path, jwks: JwksServer) -> None:
    _, made = make_keys(tmp_path / "keys.json")
    app = auth_app(tmp_path, jwks, tenant_requests_per_minute=3)
    async with running(app) as http:
        a, b = ({"Authorization": f"Bearer {made[n]}"} for n in ("a", "b"))
        statuses = [(await http.get("/v1/threads", headers=a)).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        response = await http.get("/v1/threads", headers=a)
        problem = assert_problem(response, 429, "TenantRateLimited")
        assert "'ta'" in problem["detail"]
        assert int(response.headers["retry-after"]) >= 1
        # Another tenant has its own budget.
        assert (await http.get("/v1/threads", headers=b)).status_code == 200


async def test_tenant_token_limit_on_turns(tmp_path: Path, jwks: JwksServer) -> None:
    _, made = make_keys(tmp_path / "keys.json")
    app = auth_app(tmp_path, jwks, tenant_tokens_per_minute=1_500, reserve_output_tokens=1_000)
    async with running(app) as http:
        a = {"Authorization": f"Bearer {made['a']}"}
        first = await http.post("/v1/threads/t/turns", json={"message": "hi"}, headers=a)
        assert first.status_code == 200, first.text
        second = await http.post("/v1/threads/t/turns", json={"message": "hi"}, headers=a)
        problem = assert_problem(second, 429, "TenantRateLimited")
        assert problem["limit"] == "tokens"
        b = {"Authorization": f"Bearer {made['b']}"}
        assert (
            await http.post("/v1/threads/t/turns", json={"message": "hi"}, headers=b)
        ).status_code == 200


async def test_the_audit_log(tmp_path: Path, jwks: JwksServer) -> None:
    keys, made = make_keys(tmp_path / "keys.json")
    log = tmp_path / "audit.jsonl"
    app = auth_app(tmp_path, jwks, audit_log=str(log), audit_sample_rate=0.0)
    async with running(app) as http:
        a = {"Authorization": f"Bearer {made['a']}"}
        await http.post("/v1/threads/t/messages", json={"messages": [user("x")]}, headers=a)
        await http.get("/v1/threads/t", headers=a)  # sampled out (rate 0)
        await http.post("/v1/threads/t/splice", json={"start": 0, "stop": 1}, headers=a)
        await http.delete("/v1/threads/t", headers=a)
        await http.get("/v1/threads/t", headers={"Authorization": "Bearer nope"})
        keys.create("tz", ("read",))
        await http.get("/v1/threads", headers=a)  # the reload logs the new key

        def lines() -> list[dict[str, Any]]:
            return (
                [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
            )

        await eventually(lambda: len(lines()) >= 4)
    records = lines()
    requests = [r for r in records if r["event"] == "request"]
    assert [(r["method"], r["route"], r["status"]) for r in requests] == [
        ("POST", "/v1/threads/{thread_id}/splice", 200),
        ("DELETE", "/v1/threads/{thread_id}", 200),
        ("GET", "/v1/threads/{thread_id}", 401),
    ]
    splice, delete, refused = requests
    assert (splice["tenant"], splice["thread_id"], splice["version"]) == ("ta", "t", 2)
    assert (splice["credential"], splice["auth"]) == (keys.load()[0].id, "api_key")
    assert (delete["outcome"], refused["outcome"]) == ("ok", "denied")
    assert refused["tenant"] is None
    created = [r for r in records if r["event"] == "key_created"]
    assert [r["tenant"] for r in created] == ["tz"]
    for record in records:
        datetime.fromisoformat(record["time"])
        assert made["a"] not in json.dumps(record)


async def test_stored_bytes_quota(tmp_path: Path, jwks: JwksServer) -> None:
    _, made = make_keys(tmp_path / "keys.json")
    app = auth_app(tmp_path, jwks, tenant_max_stored_bytes=2_000)
    async with running(app) as http:
        a, b = ({"Authorization": f"Bearer {made[n]}"} for n in ("a", "b"))
        body = {"messages": [user("x" * 400)]}
        statuses = [
            (await http.post("/v1/threads/t/messages", json=body, headers=a)).status_code
            for _ in range(5)
        ]
        assert statuses[:4] == [201] * 4
        problem = assert_problem(
            await http.post("/v1/threads/t/messages", json=body, headers=a), 507, "QuotaExceeded"
        )
        assert problem["quota"] == 2_000
        assert problem["used"] + problem["adding"] > 2_000
        # Nothing of the refused request was written; another tenant has its own quota.
        version = (await http.get("/v1/threads/t", headers=a)).json()["version"]
        assert version == statuses.count(201)
        assert (await http.post("/v1/threads/t/messages", json=body, headers=b)).status_code == 201
        # A request larger than the whole quota can never fit: 413.
        huge = {"messages": [user("y" * 3_000)]}
        assert_problem(
            await http.post("/v1/threads/u/messages", json=huge, headers=b), 413, "QuotaExceeded"
        )
        # Reads go on over the quota.
        assert (await http.get("/v1/threads/t", headers=a)).status_code == 200
