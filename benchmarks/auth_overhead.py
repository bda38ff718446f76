"""What authentication adds to an HTTP request (issue 14): no auth vs an API key vs a JWT.

    python benchmarks/auth_overhead.py [--quick] [--json FILE]

Four apps of `agent_core.server.create_app` in this process, each on its own temporary
SQLite store (the default ``synchronous=full``), no Redis, called through
``httpx.ASGITransport`` (no sockets: what is left is the app's own work):

- ``none``: authentication off (every request acts for the default namespace), twice:
  ``none, again`` is a second such app, whose ratio to ``none`` shows the noise floor;
- ``api key``: a keys file with one read+write key (made by ``agent-core keys create``),
  verified once before timing, so each timed request pays what a remembered key costs
  (one SHA-256 and lookups, plus the keys file's stat);
- ``jwt``: RS256 tokens (2048-bit key) of a JWKS served by a local ``http.server``; the
  JWKS is fetched before timing, so each request pays the token's parse, signature check
  and claims.

Two requests, each the same on every app: ``GET /v1/threads/{id}`` of a 10-message
thread (an L1 hit: the stats' L1 hits are checked to grow by exactly the timed GETs) and
``POST /v1/threads/{id}/messages`` of one ~200-byte message (a new thread every 500
appends). Each round times every (request, app) cell once, the apps in a shuffled order,
with the cyclic GC paused. Printed: p50 and p99 per cell, the ratio of p50s auth / none
with its 95 % bootstrap interval, and the overhead (p50 auth - p50 none) in µs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from _support import (
    BenchmarkError,
    gc_paused,
    local_machine,
    message_payload,
    percentile,
    print_machine,
    print_table,
    ratio_interval,
    us,
    write_json,
)
from agent_core.server import Settings, create_app

#: "none, again" is a second app without authentication: its ratio to "none" is the
#: noise floor of the comparison (an A/A pair).
VARIANTS: Final = ("none", "none, again", "api key", "jwt")
REQUESTS: Final = ("GET thread (L1 hit)", "append")
AUDIENCE: Final = "agent-core-bench"
ISSUER: Final = "https://idp.bench.example"
TENANT: Final = "bench"
READ_THREAD: Final = "read-10"
APPEND_THREAD_CAP: Final = 500
FULL: Final = 2000
QUICK: Final = 30


# -- credentials ------------------------------------------------------------------------


def create_key(keys_file: Path, *scopes: str) -> str:
    """A key of TENANT, made as an operator makes one: ``agent-core keys create``."""
    command = [sys.executable, "-m", "agent_core.cli", "keys", "create"]
    command += ["--keys-file", str(keys_file), "--tenant", TENANT]
    for scope in scopes:
        command += ["--scope", scope]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise BenchmarkError(f"agent-core keys create failed: {done.stderr.strip()}")
    return done.stdout.strip().splitlines()[-1]


def _b64(number: int) -> str:
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Jwks:
    """An RSA signing key and a JWKS server on loopback (a thread) publishing it."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = self.key.public_key().public_numbers()
        body = json.dumps(
            {
                "keys": [
                    {
                        "kty": "RSA",
                        "kid": "bench-1",
                        "use": "sig",
                        "alg": "RS256",
                        "n": _b64(public.n),
                        "e": _b64(public.e),
                    }
                ]
            }
        ).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"

    def token(self, scope: str) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "bench-user",
            "tenant": TENANT,
            "scope": scope,
            "iat": now,
            "exp": now + 3600,
        }
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "bench-1"})

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextmanager
def jwks_server() -> Iterator[Jwks]:
    server = Jwks()
    try:
        yield server
    finally:
        server.stop()


# -- the apps ---------------------------------------------------------------------------


@asynccontextmanager
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``create_app(settings)``, inside the app's lifespan."""
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as http,
    ):
        yield http


class Variant:
    """One app, the headers its requests carry, and those its /v1/stats needs."""

    def __init__(self, http: httpx.AsyncClient, user: dict[str, str], admin: dict[str, str]):
        self.http = http
        self.user = user
        self.admin = admin
        self.appends = 0

    async def l1_hits(self) -> int:
        response = await self.http.get("/v1/stats", headers=self.admin)
        if response.status_code != 200:
            raise BenchmarkError(f"/v1/stats answered {response.status_code}: {response.text}")
        hits: int = response.json()["l1_hits"]
        return hits

    async def get(self) -> int:
        started = time.perf_counter_ns()
        response = await self.http.get(f"/v1/threads/{READ_THREAD}", headers=self.user)
        elapsed = time.perf_counter_ns() - started
        if response.status_code != 200:
            raise BenchmarkError(f"GET answered {response.status_code}: {response.text}")
        return elapsed

    async def append(self, body: bytes) -> int:
        thread_id = f"append-{self.appends // APPEND_THREAD_CAP}"
        self.appends += 1
        headers = {**self.user, "Content-Type": "application/json"}
        started = time.perf_counter_ns()
        response = await self.http.post(
            f"/v1/threads/{thread_id}/messages", content=body, headers=headers
        )
        elapsed = time.perf_counter_ns() - started
        if response.status_code != 201:
            raise BenchmarkError(f"append answered {response.status_code}: {response.text}")
        return elapsed


async def measure(rounds: int, directory: Path, jwks: Jwks) -> dict[tuple[str, str], list[int]]:
    keys_file = directory / "keys.json"
    key, admin_key = create_key(keys_file, "read", "write"), create_key(keys_file, "admin")
    common: dict[str, Any] = {"sweep_interval": 0}
    settings = {
        "none": Settings(store_url=f"sqlite:///{directory / 'none.db'}", **common),
        "none, again": Settings(store_url=f"sqlite:///{directory / 'none-2.db'}", **common),
        "api key": Settings(
            store_url=f"sqlite:///{directory / 'key.db'}", keys_file=str(keys_file), **common
        ),
        "jwt": Settings(
            store_url=f"sqlite:///{directory / 'jwt.db'}",
            jwt_jwks_url=jwks.url,
            jwt_audience=AUDIENCE,
            jwt_issuer=ISSUER,
            **common,
        ),
    }
    credentials = {
        "none": ({}, {}),
        "none, again": ({}, {}),
        "api key": (key, admin_key),
        "jwt": (jwks.token("read write"), jwks.token("admin")),
    }
    message = message_payload(200)
    body = b'{"messages":[' + message + b"]}"
    samples: dict[tuple[str, str], list[int]] = {}
    rng = random.Random(14)
    async with AsyncExitStack() as stack:
        variants: dict[str, Variant] = {}
        for name in VARIANTS:
            http = await stack.enter_async_context(client(settings[name]))
            user, admin = credentials[name]
            variants[name] = Variant(
                http,
                {"Authorization": f"Bearer {user}"} if user else {},
                {"Authorization": f"Bearer {admin}"} if admin else {},
            )
        # Untimed: the thread, the tenant's cache, the key's KDF, the JWKS fetch, warm paths.
        for variant in variants.values():
            ten = b'{"messages":[' + b",".join([message] * 10) + b"]}"
            response = await variant.http.post(
                f"/v1/threads/{READ_THREAD}/messages",
                content=ten,
                headers={**variant.user, "Content-Type": "application/json"},
            )
            if response.status_code != 201:
                raise BenchmarkError(f"setup append answered {response.status_code}")
            for _ in range(50):
                await variant.get()
                await variant.append(body)
        before = {name: await variant.l1_hits() for name, variant in variants.items()}
        order = list(VARIANTS)
        for _ in range(rounds):
            with gc_paused():
                for request in REQUESTS:
                    rng.shuffle(order)
                    for name in order:
                        variant = variants[name]
                        elapsed = await (
                            variant.get() if request == REQUESTS[0] else variant.append(body)
                        )
                        samples.setdefault((request, name), []).append(elapsed)
        for name, variant in variants.items():
            grew = await variant.l1_hits() - before[name]
            if grew != rounds:
                raise BenchmarkError(f"{name}: {grew} L1 hits for {rounds} timed GETs")
    return samples


def _p(samples: list[int], fraction: float) -> float:
    return percentile(sorted(samples), fraction) / 1000


async def run(quick: bool) -> dict[str, Any]:
    machine = local_machine("fastapi", "starlette", "uvicorn", "httpx", "PyJWT", "cryptography")
    print_machine(machine)
    rounds = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="ac-bench-auth-") as directory, jwks_server() as jwks:
        samples = await measure(rounds, Path(directory), jwks)
    cells: dict[str, Any] = {}
    table = []
    for request in REQUESTS:
        base = samples[(request, "none")]
        base_p50 = _p(base, 0.5)
        for name in VARIANTS:
            mine = samples[(request, name)]
            p50, p99 = _p(mine, 0.5), _p(mine, 0.99)
            cell: dict[str, Any] = {"samples": len(mine), "p50_us": round(p50, 1)}
            cell["p99_us"] = round(p99, 1)
            row = [request, name, us(p50), us(p99)]
            if name == "none":
                row += ["", "", ""]
            else:
                low, high = ratio_interval(mine, base)
                cell["ratio_p50"] = round(p50 / base_p50, 3)
                cell["ratio_p50_95ci"] = [round(low, 3), round(high, 3)]
                cell["overhead_p50_us"] = round(p50 - base_p50, 1)
                row += [f"{p50 / base_p50:.3f}", f"{low:.3f}-{high:.3f}", f"{p50 - base_p50:+.1f}"]
            cells[f"{request}/{name}"] = cell
            table.append(row)
    print_table(
        f"Authentication overhead per request, µs ({rounds} rounds, interleaved)",
        ["request", "auth", "p50", "p99", "p50 / none", "95% CI", "overhead p50"],
        table,
        left=2,
    )
    return {
        "benchmark": "auth_overhead",
        "mode": "quick" if quick else "full",
        "machine": machine,
        "rounds": rounds,
        "cells": cells,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK} rounds, a few seconds")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = parser.parse_args(argv)
    try:
        document = asyncio.run(run(args.quick))
    except BenchmarkError as exc:
        print(f"auth_overhead: FAILED: {exc}", file=sys.stderr)
        return 1
    if args.json:
        write_json(args.json, document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
