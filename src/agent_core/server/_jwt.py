"""JWT credentials (issue 14): RS256/ES256 tokens checked against an identity provider's JWKS.

The JWKS is fetched on first use and cached. A token naming a ``kid`` that is not cached,
or a cache older than ``max_age``, refetches it; at most once per ``min_refresh_interval``,
and concurrent callers share one fetch, so tokens with forged kids cannot make us hammer
the identity provider. While it is down, cached keys keep verifying.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from .._api_keys import SCOPES
from .._quote import quote
from .._urls import redact, show_url
from .._validation import MAX_TIMESTAMP, check_namespace, check_seconds
from ..errors import (
    AuthenticationFailed,
    ConfigurationError,
    IdentityProviderUnavailable,
    InvalidNamespace,
)

__all__ = ["JwtIdentity", "JwtVerifier"]

#: The only algorithms accepted, each bound to its key type: never ``none`` or HMAC, whose
#: "key" an attacker could take from our public keys (algorithm confusion).
_KEY_ALGORITHMS: Final = {"RSA": "RS256", "EC": "ES256"}
_MIN_RSA_BITS: Final = 2048
#: Bounds on what the identity provider sends; real key sets are a few keys, a few KiB.
_MAX_JWKS_BYTES: Final = 256 << 10
_MAX_KEYS: Final = 100
#: Longer tokens are refused unparsed.
_MAX_TOKEN_CHARS: Final = 16 << 10
#: PyJWT's errors, said our way (the most specific first; none quotes the token).
_REASONS: Final[tuple[tuple[type[jwt.InvalidTokenError], str], ...]] = (
    (jwt.ExpiredSignatureError, "has expired"),
    (jwt.ImmatureSignatureError, "is not valid yet (its nbf or iat is in the future)"),
    (jwt.InvalidSignatureError, "has a signature that does not verify"),
)


@dataclass(frozen=True, slots=True)
class JwtIdentity:
    """Who a verified token speaks for."""

    tenant: str
    #: agent-core's scopes the token grants (others are dropped), in `SCOPES` order.
    scopes: tuple[str, ...]
    subject: str | None
    #: The ``kid`` of the key that signed the token.
    key_id: str | None
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class _Key:
    algorithm: str
    key: RSAPublicKey | EllipticCurvePublicKey


class JwtVerifier:
    """Verifies bearer JWTs issued by one identity provider, whose keys are at ``jwks_url``.

    ``verify`` raises `AuthenticationFailed` for a token that is not good (malformed,
    another algorithm, unknown key, bad signature, expired or not yet valid beyond
    ``leeway`` seconds, wrong ``aud`` or ``iss``, no valid tenant), and
    `IdentityProviderUnavailable` when the token's key is not cached and the JWKS could
    not be fetched. ``jwks_url`` must be https (http only on a loopback address): whoever
    can change the keys can sign any token. Keys older than ``max_age`` seconds are
    refetched, so that a key the provider withdrew stops verifying.
    """

    def __init__(
        self,
        jwks_url: str,
        *,
        audience: str,
        issuer: str,
        tenant_claim: str,
        scope_claim: str = "scope",
        leeway: float = 30,
        timeout: float = 5,
        min_refresh_interval: float = 30,
        max_age: float = 3600,
    ) -> None:
        _check_jwks_url(jwks_url)
        for name, value in (
            ("audience", audience),
            ("issuer", issuer),
            ("tenant_claim", tenant_claim),
            ("scope_claim", scope_claim),
        ):
            if not isinstance(value, str) or not value:
                raise ConfigurationError(f"the JWT {name} must be a non-empty string")
        self._url = jwks_url
        self._audience = audience
        self._issuer = issuer
        self._tenant_claim = tenant_claim
        self._scope_claim = scope_claim
        self._leeway = check_seconds("leeway", leeway, allow_zero=True, error=ConfigurationError)
        self._min_interval = check_seconds(
            "min_refresh_interval", min_refresh_interval, error=ConfigurationError
        )
        self._max_age = check_seconds("max_age", max_age, error=ConfigurationError)
        self._client = httpx.AsyncClient(
            timeout=check_seconds("timeout", timeout, error=ConfigurationError),
            headers={"Accept": "application/jwk-set+json, application/json"},
        )
        self._keys: dict[str, _Key] = {}
        self._fetched_at = -float("inf")  # time.monotonic() of the last good fetch
        self._next_fetch = -float("inf")  # no fetch starts before this
        self._failure: str | None = None  # why the last fetch failed, None if it did not
        self._fetch: asyncio.Task[None] | None = None

    async def __aenter__(self) -> JwtVerifier:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop a fetch under way and close the HTTP client."""
        if self._fetch is not None:
            self._fetch.cancel()
            await asyncio.gather(self._fetch, return_exceptions=True)
        await self._client.aclose()

    async def verify(self, token: str) -> JwtIdentity:
        """The identity ``token`` proves; see the class for what it raises."""
        if not isinstance(token, str) or len(token) > _MAX_TOKEN_CHARS:
            raise AuthenticationFailed(
                f"a JWT is a string of at most {_MAX_TOKEN_CHARS} characters"
            )
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise AuthenticationFailed(
                f"the bearer token is not a well-formed JWT: {exc}"
            ) from None
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in _KEY_ALGORITHMS.values():
            raise AuthenticationFailed(
                f"JWT algorithm {quote(algorithm)} is not accepted: use RS256 or ES256"
            )
        if not isinstance(kid, str) or not kid:
            raise AuthenticationFailed("the JWT names no key (kid) in its header")
        key = await self._key(kid)
        if key.algorithm != algorithm:
            raise AuthenticationFailed(
                f"the JWT says {algorithm}, but its key {quote(kid)} is for {key.algorithm}"
            )
        claims = self._decode(token, key)
        exp = int(claims["exp"])
        if exp > MAX_TIMESTAMP:
            raise AuthenticationFailed("the JWT's exp is beyond the year 9999")
        return JwtIdentity(
            tenant=self._tenant(claims),
            scopes=self._scopes(claims),
            subject=sub if isinstance(sub := claims.get("sub"), str) else None,
            key_id=kid,
            expires_at=datetime.fromtimestamp(exp, UTC),
        )

    def _decode(self, token: str, key: _Key) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.InvalidTokenError as exc:
            raise AuthenticationFailed(f"the JWT {self._reason(exc)}") from None

    def _reason(self, exc: jwt.InvalidTokenError) -> str:
        for kind, reason in _REASONS:
            if isinstance(exc, kind):
                return reason
        if isinstance(exc, jwt.MissingRequiredClaimError):
            return f"has no {exc.claim!r} claim"
        if isinstance(exc, jwt.InvalidAudienceError):
            return f"is not for audience {self._audience!r}"
        if isinstance(exc, jwt.InvalidIssuerError):
            return f"was not issued by {self._issuer!r}"
        return f"is invalid: {exc}"

    def _tenant(self, claims: dict[str, Any]) -> str:
        name = self._tenant_claim
        if name not in claims:
            raise AuthenticationFailed(f"the JWT has no {name!r} claim, which names the tenant")
        try:
            return check_namespace(claims[name])
        except InvalidNamespace as exc:
            raise AuthenticationFailed(f"the JWT's {name!r} claim is not a tenant: {exc}") from None

    def _scopes(self, claims: dict[str, Any]) -> tuple[str, ...]:
        granted = claims.get(self._scope_claim, "")
        if isinstance(granted, str):
            granted = granted.split()
        if not isinstance(granted, list):
            raise AuthenticationFailed(
                f"the JWT's {self._scope_claim!r} claim must be a space-separated string or a "
                "list of strings"
            )
        return tuple(scope for scope in SCOPES if scope in granted)

    async def _key(self, kid: str) -> _Key:
        """The key ``kid``. An unknown kid, or keys older than ``max_age``, start a fetch of
        the JWKS if none ran in the last ``min_refresh_interval``; an unknown kid waits for
        the fetch under way, a cached one is used meanwhile (and if the fetch fails)."""
        key = self._keys.get(kid)
        now = time.monotonic()
        if (
            (key is None or now - self._fetched_at >= self._max_age)
            and self._fetch is None
            and now >= self._next_fetch
        ):
            self._next_fetch = now + self._min_interval
            self._fetch = asyncio.create_task(self._refresh())
        if key is None and self._fetch is not None:
            # Shielded: a caller that gives up does not cancel the others' fetch.
            await asyncio.shield(self._fetch)
            key = self._keys.get(kid)
        if key is not None:
            return key
        if self._failure is not None:
            raise IdentityProviderUnavailable(
                f"the JWT's key {quote(kid)} is not cached and the JWKS at "
                f"{show_url(self._url)} could not be fetched: {self._failure}",
                retry_after=max(0.0, self._next_fetch - time.monotonic()),
            )
        raise AuthenticationFailed(f"the JWT's key {quote(kid)} is not in the issuer's JWKS")

    async def _refresh(self) -> None:
        try:
            self._keys = await self._download()
        except _FetchFailed as exc:
            self._failure = redact(str(exc), self._url)
        else:
            self._fetched_at, self._failure = time.monotonic(), None
        finally:
            self._fetch = None

    async def _download(self) -> dict[str, _Key]:
        body = bytearray()
        try:
            async with self._client.stream("GET", self._url) as response:
                if response.status_code != 200:
                    raise _FetchFailed(f"HTTP {response.status_code}")
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > _MAX_JWKS_BYTES:
                        raise _FetchFailed(f"the answer is over {_MAX_JWKS_BYTES} bytes")
        except httpx.HTTPError as exc:
            raise _FetchFailed(f"{type(exc).__name__}: {exc}") from None
        try:
            keys = orjson.loads(body)["keys"]
        except (orjson.JSONDecodeError, TypeError, KeyError):
            raise _FetchFailed("the answer is not a JWKS (a JSON object with keys)") from None
        if not isinstance(keys, list) or len(keys) > _MAX_KEYS:
            raise _FetchFailed(f"the JWKS's keys are not a list of at most {_MAX_KEYS}")
        usable = dict(key for jwk in keys if (key := _usable_key(jwk)) is not None)
        if not usable:
            # Never right: keep the keys we have, and say so rather than reject every token.
            raise _FetchFailed("the JWKS holds no RS256 (2048+ bits) or ES256 signing key")
        return usable


class _FetchFailed(Exception):
    """Why the JWKS could not be had (its message only)."""


def _usable_key(jwk: object) -> tuple[str, _Key] | None:
    """``jwk`` as (kid, key) if it is a public RS256 (2048 bits or more) or ES256 signing key
    with a kid; anything else a JWKS may hold (HMAC secrets, other algorithms, encryption
    or private keys, garbage) is skipped."""
    # "d": a private key, which is never ours to hold (and slow to load).
    if not isinstance(jwk, dict) or "d" in jwk or jwk.get("use", "sig") != "sig":
        return None
    kid, kty = jwk.get("kid"), jwk.get("kty")
    algorithm = _KEY_ALGORITHMS.get(kty) if isinstance(kty, str) else None
    if not isinstance(kid, str) or not kid or algorithm is None:
        return None
    if jwk.get("alg", algorithm) != algorithm:
        return None
    try:
        key = jwt.PyJWK(jwk, algorithm).key
    except (jwt.PyJWTError, ValueError, TypeError):
        return None
    if isinstance(key, RSAPublicKey) and key.key_size >= _MIN_RSA_BITS:
        return kid, _Key(algorithm, key)
    if isinstance(key, EllipticCurvePublicKey) and isinstance(key.curve, SECP256R1):
        return kid, _Key(algorithm, key)
    return None


def _check_jwks_url(url: object) -> None:
    try:
        parts = urlsplit(url) if isinstance(url, str) else None
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigurationError(f"the JWKS URL must be an https:// URL, got {show_url(url)}")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ConfigurationError(
            f"the JWKS URL {show_url(url)} is plain http: use https (whoever can change the "
            "keys can sign any token; http is allowed on loopback only)"
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
