"""Who sends a request: an API key of the keys file (reloaded when it changes) or a JWT.

The tenant, and so the namespace, comes from the credential and nothing else. A key never
seen before is checked with the KDF in a worker thread, a few at a time, so a flood of
wrong keys neither stalls the event loop nor runs unbounded; a key that verified once
costs one SHA-256 afterwards (`KeyVerifier`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

from .._api_keys import SCOPES, ApiKey, KeysFile, KeyVerifier
from ..errors import AuthenticationFailed, ConfigurationError, PermissionDenied
from ._jwt import JwtVerifier

__all__ = ["Authenticator", "KeyChanges", "Principal", "ReloadingKeys"]

_log = logging.getLogger("agent_core.server")
#: Longer Authorization headers are refused unread: no key or token of ours is that long.
_MAX_CREDENTIAL: Final = 16 << 10
#: KDFs run at once: each takes ~50 ms of a core and 16 MiB.
_KDF_SLOTS: Final = 2
_BEARER: Final = "bearer "
_KEY_PREFIX: Final = "ack_"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: its tenant (the namespace it may touch) and scopes."""

    tenant: str
    scopes: frozenset[str]
    #: The API key's id, or the JWT's subject; None without authentication.
    credential_id: str | None
    method: Literal["none", "api_key", "jwt"]

    def allows(self, scope: str) -> bool:
        """Whether the caller may do what ``scope`` covers (admin covers everything)."""
        return scope in self.scopes or "admin" in self.scopes

    def require(self, scope: str) -> None:
        """Raise `PermissionDenied` unless `allows`."""
        if not self.allows(scope):
            held = ", ".join(sorted(self.scopes)) or "none"
            raise PermissionDenied(
                f"this request needs the {scope!r} scope; the credential has: {held}. "
                f"Create a key with --scope {scope}"
            )


@dataclass(frozen=True, slots=True)
class KeyChanges:
    """What a reload of the keys file changed (for the audit log)."""

    created: tuple[ApiKey, ...]
    revoked: tuple[ApiKey, ...]
    removed: tuple[ApiKey, ...]


class ReloadingKeys:
    """The keys file's verifier, rebuilt when the file changes.

    Every request stats the file (about a microsecond); a changed size, time or inode
    reloads it. A file that became malformed keeps the previous keys in force and logs
    an error, so a half-edited file never locks everyone out or lets anyone in.
    """

    def __init__(self, path: Path, on_change: Callable[[KeyChanges], None]) -> None:
        self._file = KeysFile(path)
        self._on_change = on_change
        self._stamp = self._stat()
        self._entries = {entry.id: entry for entry in self._file.load()}
        self._verifier = KeyVerifier(self._entries.values())

    @property
    def path(self) -> Path:
        return self._file.path

    def verifier(self) -> KeyVerifier:
        """The verifier of the file as it is now."""
        stamp = self._stat()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                entries = {entry.id: entry for entry in self._file.load()}
            except ConfigurationError as exc:
                _log.error("agent-core: keeping the previous API keys: %s", exc)
            else:
                self._reloaded(entries)
        return self._verifier

    def _reloaded(self, entries: dict[str, ApiKey]) -> None:
        before, self._entries = self._entries, entries
        self._verifier = self._verifier.with_entries(entries.values())
        changes = KeyChanges(
            created=tuple(e for i, e in entries.items() if i not in before),
            revoked=tuple(
                e
                for i, e in entries.items()
                if i in before and e.revoked_at is not None and before[i].revoked_at is None
            ),
            removed=tuple(e for i, e in before.items() if i not in entries),
        )
        if changes.created or changes.revoked or changes.removed:
            self._on_change(changes)

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            status = os.stat(self._file.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigurationError(f"cannot read keys file {str(self.path)!r}: {exc}") from None
        return (status.st_mtime_ns, status.st_size, status.st_ino)


class Authenticator:
    """Turns an ``Authorization`` header into a `Principal`.

    With neither keys nor a JWT verifier, authentication is off: every request acts for
    ``open_tenant`` with every scope (serve allows that on loopback addresses only).
    """

    def __init__(
        self, *, keys: ReloadingKeys | None, jwt: JwtVerifier | None, open_tenant: str
    ) -> None:
        self.keys = keys
        self.jwt = jwt
        self._open = Principal(open_tenant, frozenset(SCOPES), None, "none")
        self._kdf_slots = asyncio.Semaphore(_KDF_SLOTS)

    @property
    def enabled(self) -> bool:
        return self.keys is not None or self.jwt is not None

    async def authenticate(self, authorization: str | None) -> Principal:
        """The caller of a request with this header; `AuthenticationFailed` if none."""
        if not self.enabled:
            return self._open
        token = _bearer_token(authorization)
        if self.jwt is not None and not token.startswith(_KEY_PREFIX):
            identity = await self.jwt.verify(token)
            return Principal(identity.tenant, frozenset(identity.scopes), identity.subject, "jwt")
        if self.keys is None:
            raise AuthenticationFailed(
                "API keys are not accepted here: send a JWT from the configured issuer"
            )
        verifier = self.keys.verifier()
        now = datetime.now(UTC)
        seen, entry = verifier.remembered(token, now=now)
        if not seen:
            async with self._kdf_slots:
                entry = await asyncio.to_thread(verifier.verify, token, now=now)
        if entry is None:
            raise AuthenticationFailed(
                "the API key is unknown, wrong, revoked or expired: check the "
                "'Authorization: Bearer <key>' header, or create a key with "
                "'agent-core keys create'"
            )
        return Principal(entry.tenant, frozenset(entry.scopes), entry.id, "api_key")


def _bearer_token(authorization: str | None) -> str:
    if authorization is None:
        raise AuthenticationFailed(
            "this request needs a credential: send 'Authorization: Bearer <key>'"
        )
    if len(authorization) > _MAX_CREDENTIAL or not authorization.lower().startswith(_BEARER):
        raise AuthenticationFailed(
            "the Authorization header must be 'Bearer <key>' (an API key or a JWT)"
        )
    token = authorization[len(_BEARER) :].strip()
    if not token:
        raise AuthenticationFailed("the Authorization header holds no credential after 'Bearer'")
    return token
