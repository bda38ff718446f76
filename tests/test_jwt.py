"""JwtVerifier against a local JWKS server: algorithms, claims, tenants, scopes, key refresh.

The JWKS server is a real HTTP server on 127.0.0.1 in this process (a thread); it counts
the requests it answers, so the refresh policy is checked where it matters: at the
identity provider.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from agent_core.errors import (
    AuthenticationFailed,
    ConfigurationError,
    IdentityProviderUnavailable,
)
from agent_core.server._jwt import JwtIdentity, JwtVerifier

from ._poll import eventually

pytestmark = pytest.mark.integration

AUDIENCE = "agent-core"
ISSUER = "https://idp.example"


class JwksServer:
    """Serves ``body`` (a JWKS) with ``status`` at any path; counts requests."""

    def __init__(self) -> None:
        self.body = b'{"keys": []}'
        self.status = 200
        self.requests = 0
        self._lock = threading.Lock()
        self._httpd = _QuietServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/.well-known/jwks.json"

    def publish(self, *jwks: dict[str, Any]) -> None:
        self.body = json.dumps({"keys": list(jwks)}).encode()

    def answered(self) -> int:
        with self._lock:
            return self.requests

    def record(self) -> None:
        """Count one request (called by the handler's thread)."""
        with self._lock:
            self.requests += 1

    def stop(self) -> None:
        """Down: the port refuses connections."""
        self._httpd.shutdown()
        self._httpd.server_close()


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the verifier hangs up on an oversized JWKS: expected


def _handler(server: JwksServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server.record()
            self.send_response(server.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(server.body)))
            self.end_headers()
            self.wfile.write(server.body)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def jwks(rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> Iterator[JwksServer]:
    server = JwksServer()
    server.publish(rsa_jwk(rsa_key, "rsa-1"), ec_jwk(ec_key, "ec-1"))
    yield server
    server.stop()


@pytest.fixture
async def verifier(jwks: JwksServer) -> AsyncIterator[JwtVerifier]:
    async with make_verifier(jwks) as made:
        yield made


def make_verifier(jwks: JwksServer, **options: Any) -> JwtVerifier:
    return JwtVerifier(jwks.url, audience=AUDIENCE, issuer=ISSUER, tenant_claim="tenant", **options)


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    return {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "use": "sig"}


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    return {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid}


def claims(**changes: Any) -> dict[str, Any]:
    """Good claims, with ``changes`` (None removes a claim)."""
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-7",
        "tenant": "acme",
        "scope": "read write",
        "iat": now,
        "exp": now + 300,
    }
    return {k: v for k, v in {**base, **changes}.items() if v is not None}


def sign(key: Any, kid: str, *, algorithm: str = "RS256", **changes: Any) -> str:
    return jwt.encode(claims(**changes), key, algorithm=algorithm, headers={"kid": kid})


def raw_token(header: dict[str, Any], payload: dict[str, Any], signer: Any = None) -> str:
    """A JWT built by hand; ``signer(signing_input)`` gives its signature (none: empty)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = signer(signing_input.encode()) if signer else b""
    return f"{signing_input}.{b64(signature)}"


async def rejected(verifier: JwtVerifier, token: str, reason: str) -> None:
    """``token`` is refused with a message that says ``reason`` and never quotes the token."""
    with pytest.raises(AuthenticationFailed, match=reason) as caught:
        await verifier.verify(token)
    message = str(caught.value)
    # Short strings ("", "abc") may occur in any message by chance.
    assert all(len(part) < 8 or part not in message for part in [token, *token.split(".")])


# -- valid tokens ---------------------------------------------------------------------


async def test_rs256_and_es256(
    verifier: JwtVerifier,
    jwks: JwksServer,
    rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    exp = int(time.time()) + 120
    identity = await verifier.verify(sign(rsa_key, "rsa-1", exp=exp))
    assert identity == JwtIdentity(
        tenant="acme",
        scopes=("read", "write"),
        subject="user-7",
        key_id="rsa-1",
        expires_at=datetime.fromtimestamp(exp, UTC),
    )
    identity = await verifier.verify(sign(ec_key, "ec-1", algorithm="ES256", sub=None))
    assert (identity.key_id, identity.subject) == ("ec-1", None)
    assert jwks.answered() == 1  # one fetch, then cached


async def test_within_leeway_is_accepted(verifier: JwtVerifier, rsa_key: Any) -> None:
    now = int(time.time())
    token = sign(rsa_key, "rsa-1", exp=now - 10, nbf=now + 10, iat=now + 10)
    assert (await verifier.verify(token)).tenant == "acme"


async def test_aud_may_be_a_list(verifier: JwtVerifier, rsa_key: Any) -> None:
    token = sign(rsa_key, "rsa-1", aud=["other", AUDIENCE])
    assert (await verifier.verify(token)).tenant == "acme"


# -- invalid tokens -------------------------------------------------------------------


async def test_time_claims(verifier: JwtVerifier, rsa_key: Any) -> None:
    now = int(time.time())
    await rejected(verifier, sign(rsa_key, "rsa-1", exp=now - 60), "has expired")
    await rejected(verifier, sign(rsa_key, "rsa-1", nbf=now + 60), "not valid yet")
    await rejected(verifier, sign(rsa_key, "rsa-1", iat=now + 60), "not valid yet")
    await rejected(verifier, sign(rsa_key, "rsa-1", exp=None), "no 'exp' claim")
    await rejected(verifier, sign(rsa_key, "rsa-1", exp=10**15), "beyond the year 9999")


async def test_audience_and_issuer(verifier: JwtVerifier, rsa_key: Any) -> None:
    await rejected(verifier, sign(rsa_key, "rsa-1", aud="someone-else"), "not for audience")
    await rejected(verifier, sign(rsa_key, "rsa-1", aud=None), "no 'aud' claim")
    await rejected(verifier, sign(rsa_key, "rsa-1", iss="https://evil"), "not issued by")
    await rejected(verifier, sign(rsa_key, "rsa-1", iss=None), "no 'iss' claim")


async def test_bad_signatures(
    verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    header, _, signature = sign(rsa_key, "rsa-1").split(".")
    other = raw_token({}, claims(tenant="victim")).split(".")[1]
    await rejected(verifier, f"{header}.{other}.{signature}", "signature that does not verify")
    stranger = ec.generate_private_key(ec.SECP256R1())
    token = sign(stranger, "ec-1", algorithm="ES256")
    await rejected(verifier, token, "signature that does not verify")
    # An ES256 header on the RSA key's kid: the key decides the algorithm.
    await rejected(verifier, sign(ec_key, "rsa-1", algorithm="ES256"), "is for RS256")


async def test_alg_none_and_hmac_confusion(
    verifier: JwtVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    await rejected(verifier, raw_token({"alg": "none", "kid": "rsa-1"}, claims()), "'none'")
    # HS256 keyed with the RSA public key as the IdP publishes it: the classic forgery.
    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    forged = raw_token(
        {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"},
        claims(scope="admin"),
        lambda data: hmac.new(pem, data, hashlib.sha256).digest(),
    )
    await rejected(verifier, forged, "'HS256' is not accepted")
    await rejected(verifier, sign(rsa_key, "rsa-1", algorithm="RS512"), "'RS512' is not accepted")


async def test_malformed_tokens(verifier: JwtVerifier, rsa_key: Any, jwks: JwksServer) -> None:
    for token in ("", "abc", "a.b.c", "x" * 100):
        await rejected(verifier, token, "not a well-formed JWT")
    await rejected(verifier, "e" * 20_000, "at most 16384 characters")
    no_kid = jwt.encode(claims(), rsa_key, algorithm="RS256")
    await rejected(verifier, no_kid, "names no key")
    assert jwks.answered() == 0  # none of these is worth a fetch


async def test_tenant_claim(verifier: JwtVerifier, rsa_key: Any) -> None:
    await rejected(verifier, sign(rsa_key, "rsa-1", tenant=None), "no 'tenant' claim")
    await rejected(verifier, sign(rsa_key, "rsa-1", tenant="a b"), "not a tenant")
    await rejected(verifier, sign(rsa_key, "rsa-1", tenant=42), "not a tenant")
    await rejected(verifier, sign(rsa_key, "rsa-1", tenant="t" * 65), "not a tenant")


async def test_scopes(verifier: JwtVerifier, jwks: JwksServer, rsa_key: Any) -> None:
    async def scopes(**changes: Any) -> tuple[str, ...]:
        return (await verifier.verify(sign(rsa_key, "rsa-1", **changes))).scopes

    assert await scopes(scope="openid admin profile read") == ("read", "admin")
    assert await scopes(scope=["write", "email", 7, "write"]) == ("write",)
    assert await scopes(scope=None) == ()
    await rejected(verifier, sign(rsa_key, "rsa-1", scope={"read": True}), "'scope' claim")
    async with make_verifier(jwks, scope_claim="scp") as by_scp:
        token = sign(rsa_key, "rsa-1", scope="admin", scp=["read", "User.Read"])
        assert (await by_scp.verify(token)).scopes == ("read",)


# -- the key set ----------------------------------------------------------------------


async def test_unknown_kid_refresh_finds_a_rotated_key(
    jwks: JwksServer, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    async with make_verifier(jwks, min_refresh_interval=0.01) as verifier:
        await verifier.verify(sign(rsa_key, "rsa-1"))
        jwks.publish(rsa_jwk(rsa_key, "rsa-1"), ec_jwk(ec_key, "ec-2"))
        token = sign(ec_key, "ec-2", algorithm="ES256")

        async def verified() -> bool:
            try:
                return (await verifier.verify(token)).key_id == "ec-2"
            except AuthenticationFailed:
                return False  # within min_refresh_interval of the first fetch

        await eventually(verified)
        assert jwks.answered() == 2


async def test_forged_kids_fetch_at_most_once_per_interval(
    jwks: JwksServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    forged = [sign(rsa_key, f"forged-{i}") for i in range(50)]
    async with make_verifier(jwks) as verifier:
        # Cold: a concurrent burst shares one fetch.
        results = await asyncio.gather(
            *(verifier.verify(token) for token in forged), return_exceptions=True
        )
        assert all(isinstance(r, AuthenticationFailed) for r in results), results
        assert "not in the issuer's JWKS" in str(results[0])
        assert jwks.answered() == 1
        # Warm: within the interval, neither bursts nor a stream of them fetch again.
        await asyncio.gather(*(verifier.verify(t) for t in forged), return_exceptions=True)
        for token in forged:
            await rejected(verifier, token, "not in the issuer's JWKS")
        assert (await verifier.verify(sign(rsa_key, "rsa-1"))).key_id == "rsa-1"
        assert jwks.answered() == 1


async def test_withdrawn_key_stops_verifying_after_max_age(
    jwks: JwksServer, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    async with make_verifier(jwks, min_refresh_interval=0.01, max_age=0.01) as verifier:
        token = sign(rsa_key, "rsa-1")
        await verifier.verify(token)
        jwks.publish(ec_jwk(ec_key, "ec-1"))

        async def refused() -> bool:
            try:
                await verifier.verify(token)
            except AuthenticationFailed:
                return True
            return False

        await eventually(refused)


async def test_jwks_down_cached_keys_still_verify(
    jwks: JwksServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    async with make_verifier(jwks, min_refresh_interval=0.01, max_age=0.01) as verifier:
        token = sign(rsa_key, "rsa-1")
        await verifier.verify(token)
        jwks.status = 503

        async def failed_fetches_seen() -> bool:
            # Each call finds the keys old and starts a fetch (which fails): still verified.
            assert (await verifier.verify(token)).key_id == "rsa-1"
            return jwks.answered() >= 4

        await eventually(failed_fetches_seen)
        # A kid not cached cannot be judged: unavailable, not invalid.
        unknown = sign(rsa_key, "rsa-2")
        await eventually(lambda: _unavailable(verifier, unknown))
        jwks.stop()
        await eventually(lambda: _unavailable(verifier, unknown, "ConnectError"))
        assert (await verifier.verify(token)).key_id == "rsa-1"


async def test_jwks_down_from_the_start(jwks: JwksServer, rsa_key: Any) -> None:
    jwks.stop()
    async with make_verifier(jwks) as verifier:
        token = sign(rsa_key, "rsa-1")
        with pytest.raises(IdentityProviderUnavailable, match="ConnectError") as caught:
            await verifier.verify(token)
        assert token not in str(caught.value)
        assert 0 < caught.value.retry_after <= 30
        # Within min_refresh_interval no new attempt: the same answer, at once.
        with pytest.raises(IdentityProviderUnavailable):
            await verifier.verify(token)


async def _unavailable(verifier: JwtVerifier, token: str, reason: str = "HTTP 503") -> bool:
    try:
        await verifier.verify(token)
    except IdentityProviderUnavailable as exc:
        return reason in str(exc) and token not in str(exc)
    except AuthenticationFailed:
        return False  # no fetch yet since the server went down
    raise AssertionError("verified a token whose key is not published")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not a JWKS"),
        (b"[1, 2]", "not a JWKS"),
        (b'{"keys": {}}', "at most 100"),
        (
            json.dumps({"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}] * 101}).encode(),
            "at most 100",
        ),
        (b'{"keys": [' + b"0, " * 100_000 + b"0]}", "over 262144 bytes"),
        (b'{"keys": [{"kty": "oct", "kid": "rsa-1", "k": "c2VjcmV0"}]}', "no RS256"),
    ],
)
async def test_unusable_jwks_is_unavailable(
    jwks: JwksServer, rsa_key: Any, body: bytes, reason: str
) -> None:
    jwks.body = body
    async with make_verifier(jwks) as verifier:
        with pytest.raises(IdentityProviderUnavailable, match=reason):
            await verifier.verify(sign(rsa_key, "rsa-1"))


async def test_only_rs256_and_es256_signing_keys_are_kept(
    jwks: JwksServer, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    p384 = ec.generate_private_key(ec.SECP384R1())
    good = rsa_jwk(rsa_key, "good")
    private = {**RSAAlgorithm.to_jwk(rsa_key, as_dict=True), "kid": "private"}
    hostile: list[Any] = [
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        rsa_jwk(small, "small"),
        {**ECAlgorithm.to_jwk(p384.public_key(), as_dict=True), "kid": "p384"},
        {
            **ECAlgorithm.to_jwk(p384.public_key(), as_dict=True),
            "kid": "p384-as-256",
            "crv": "P-256",
        },
        private,
        {**good, "kid": "enc", "use": "enc"},
        {**good, "kid": "rs512", "alg": "RS512"},
        {**good, "kid": "bad-n", "n": {"not": "base64"}},
        {**good, "kid": ["list"]},
        {**good, "kid": ""},
        {**good, "kty": ["RSA"], "kid": "kty-list"},
        {"kty": "EC", "kid": "no-coords", "crv": "P-256"},
        "not a key",
        None,
    ]
    jwks.publish(*hostile, good, ec_jwk(ec_key, "ec-good"))
    async with make_verifier(jwks) as verifier:
        assert (await verifier.verify(sign(rsa_key, "good"))).key_id == "good"
        assert (await verifier.verify(sign(ec_key, "ec-good", algorithm="ES256"))).tenant
        for kid in ("small", "private", "enc", "rs512", "bad-n"):
            await rejected(verifier, sign(rsa_key, kid), "not in the issuer's JWKS")
        await rejected(verifier, sign(p384, "p384", algorithm="ES384"), "'ES384' is not accepted")
        await rejected(verifier, sign(ec_key, "p384-as-256", algorithm="ES256"), "not in")


# -- configuration --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "options", "reason"),
    [
        ("http://idp.example/jwks", {}, "plain http"),
        ("ftp://127.0.0.1/jwks", {}, "https:// URL"),
        ("https://", {}, "https:// URL"),
        ("http://[::1/jwks", {}, "https:// URL"),
        ("https://idp.example/jwks", {"audience": ""}, "audience"),
        ("https://idp.example/jwks", {"tenant_claim": ""}, "tenant_claim"),
        ("https://idp.example/jwks", {"leeway": -1}, "leeway"),
        ("https://idp.example/jwks", {"min_refresh_interval": 0}, "min_refresh_interval"),
        ("https://idp.example/jwks", {"timeout": float("nan")}, "timeout"),
    ],
)
def test_configuration_errors(url: str, options: dict[str, Any], reason: str) -> None:
    settings: dict[str, Any] = {"audience": AUDIENCE, "issuer": ISSUER, "tenant_claim": "t"}
    with pytest.raises(ConfigurationError, match=reason):
        JwtVerifier(url, **{**settings, **options})


async def test_loopback_http_and_https_are_allowed() -> None:
    for url in ("http://localhost:1/k", "http://[::1]:1/k", "https://idp.example/k"):
        async with JwtVerifier(url, audience=AUDIENCE, issuer=ISSUER, tenant_claim="t"):
            pass
