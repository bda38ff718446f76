"""API keys: a JSON file of salted scrypt hashes, and the verifier the service asks.

A key is ``ack_<id>_<secret>``: ``id`` (12 hex digits) names its entry, ``secret`` is 32
random bytes (URL-safe base64). The file keeps, per key, its id, tenant, scopes, times
and ``scrypt(secret, salt)``; never the key. Verifying runs the KDF once per distinct
key and then remembers the key's SHA-256 (a request then pays one hash), and a key that
does not verify costs a KDF whatever it looks like, so how long a rejection takes says
nothing about how much of the key was right. Writers lock the file and replace it
atomically (mode 0600).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import os
import re
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson

from ._quote import quote
from ._validation import check_namespace
from .errors import ConfigurationError, InvalidArgument

__all__ = [
    "SCOPES",
    "ApiKey",
    "KeyVerifier",
    "KeysFile",
]

#: What a key may do: read (GET), write (append, splice, turns), admin (purge, stats).
SCOPES: Final = ("read", "write", "admin")
_PREFIX: Final = "ack"
_KEY: Final = re.compile(r"ack_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
# scrypt at 16 MiB of memory, ~30-60 ms here: cheap for a key seen once per process,
# dear for guessing (the secrets are 256 random bits anyway).
_SCRYPT: Final = {"n": 2**14, "r": 8, "p": 1, "maxmem": 64 << 20, "dklen": 32}
_SALT_BYTES: Final = 16
_FORMAT: Final = 1


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One entry of the keys file (the key itself is never stored)."""

    id: str
    tenant: str
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    salt: bytes = field(default=b"", repr=False)
    digest: bytes = field(default=b"", repr=False)

    def usable(self, now: datetime) -> bool:
        """Neither revoked nor expired at ``now``."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["scopes"] = list(self.scopes)
        data["salt"], data["digest"] = self.salt.hex(), self.digest.hex()
        for name in ("created_at", "expires_at", "revoked_at"):
            value = data[name]
            data[name] = None if value is None else value.isoformat()
        return data

    @classmethod
    def from_json(cls, data: object) -> ApiKey:
        if not isinstance(data, dict):
            raise ValueError(f"a key entry must be an object, got {quote(data)}")
        try:
            scopes = tuple(data["scopes"])
            entry = cls(
                id=str(data["id"]),
                tenant=check_namespace(data["tenant"]),
                scopes=scopes,
                created_at=_instant(data["created_at"]),
                expires_at=None if data.get("expires_at") is None else _instant(data["expires_at"]),
                revoked_at=None if data.get("revoked_at") is None else _instant(data["revoked_at"]),
                salt=bytes.fromhex(data["salt"]),
                digest=bytes.fromhex(data["digest"]),
            )
        except (KeyError, TypeError, ValueError, InvalidArgument) as exc:
            raise ValueError(f"bad key entry {quote(data)}: {exc}") from None
        if not re.fullmatch(r"[0-9a-f]{12}", entry.id) or not set(scopes) <= set(SCOPES):
            raise ValueError(f"bad key entry {quote(data)}")
        return entry


class KeysFile:
    """The keys file at ``path``: read, and changed under an exclusive lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> list[ApiKey]:
        """Every entry; a missing file holds none. A malformed one is `ConfigurationError`."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ConfigurationError(f"cannot read keys file {str(self.path)!r}: {exc}") from None
        try:
            document = orjson.loads(raw)
            if not isinstance(document, dict) or document.get("format") != _FORMAT:
                raise ValueError(f"not an agent-core keys file (format {_FORMAT})")
            entries = [ApiKey.from_json(item) for item in document["keys"]]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"keys file {str(self.path)!r} is malformed: {exc}") from None
        return entries

    def create(
        self,
        tenant: str,
        scopes: Iterable[str] = ("read", "write"),
        *,
        expires_at: datetime | None = None,
        now: datetime | None = None,
    ) -> tuple[ApiKey, str]:
        """Add a key; returns its entry and the key, which exists nowhere else."""
        check_namespace(tenant)
        chosen = _check_scopes(scopes)
        created = now or datetime.now(UTC)
        if expires_at is not None and (expires_at.utcoffset() is None or expires_at <= created):
            raise InvalidArgument(
                f"expires_at must be an aware time after now, got {quote(expires_at)}"
            )
        secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
        salt = secrets.token_bytes(_SALT_BYTES)
        with self._locked() as entries:
            taken = {entry.id for entry in entries}
            key_id = secrets.token_hex(6)
            while key_id in taken:
                key_id = secrets.token_hex(6)
            entry = ApiKey(
                key_id, tenant, chosen, created, expires_at, None, salt, _kdf(secret, salt)
            )
            entries.append(entry)
        return entry, f"{_PREFIX}_{key_id}_{secret}"

    def revoke(self, key_id: str, *, now: datetime | None = None) -> ApiKey:
        """Mark a key revoked (kept, so the audit trail can name it); `InvalidArgument` if
        no key has that id."""
        with self._locked() as entries:
            for index, entry in enumerate(entries):
                if entry.id == key_id:
                    if entry.revoked_at is None:
                        entry = entries[index] = replace(entry, revoked_at=now or datetime.now(UTC))
                    return entry
        raise InvalidArgument(f"no key with id {quote(key_id)} in {str(self.path)!r}")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[ApiKey]]:
        """The entries, written back atomically when the block ends without an error."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = self.load()
            yield entries
            document = {"format": _FORMAT, "keys": [entry.to_json() for entry in entries]}
            fd, temporary = tempfile.mkstemp(prefix=self.path.name, dir=self.path.parent)
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(orjson.dumps(document, option=orjson.OPT_INDENT_2))
                    out.flush()
                    os.fsync(out.fileno())
                os.chmod(temporary, 0o600)
                os.replace(temporary, self.path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
                raise


class KeyVerifier:
    """Which key a presented secret is, if any: usable, and with its tenant and scopes."""

    def __init__(self, entries: Iterable[ApiKey]) -> None:
        self._by_id = {entry.id: entry for entry in entries}
        # SHA-256 of keys that verified once -> their id: later requests skip the KDF.
        self._verified: dict[bytes, str] = {}
        self._decoy_salt = secrets.token_bytes(_SALT_BYTES)

    def with_entries(self, entries: Iterable[ApiKey]) -> KeyVerifier:
        """A verifier of ``entries`` that still remembers the keys of this one it keeps."""
        successor = KeyVerifier(entries)
        successor._decoy_salt = self._decoy_salt
        successor._verified = {
            fingerprint: key_id
            for fingerprint, key_id in self._verified.items()
            if key_id in successor._by_id
            and successor._by_id[key_id].digest == self._by_id[key_id].digest
        }
        return successor

    def remembered(
        self, presented: str, *, now: datetime | None = None
    ) -> tuple[bool, ApiKey | None]:
        """Whether ``presented`` verified before (no KDF needed), and if so its usable key
        (None once revoked or expired)."""
        fingerprint = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        known = self._verified.get(fingerprint)
        if known is None:
            return False, None
        entry = self._by_id.get(known)
        return True, entry if entry is not None and entry.usable(now or datetime.now(UTC)) else None

    def verify(self, presented: str, *, now: datetime | None = None) -> ApiKey | None:
        """The usable key ``presented`` is, or None (unknown, wrong, revoked, expired)."""
        moment = now or datetime.now(UTC)
        seen, entry = self.remembered(presented, now=moment)
        if seen:
            return entry
        fingerprint = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        match = _KEY.fullmatch(presented)
        entry = self._by_id.get(match.group(1)) if match else None
        # The KDF runs for every key not seen before, well-formed or not, known id or not.
        secret = match.group(2) if match else presented[:64]
        salt = entry.salt if entry is not None else self._decoy_salt
        digest = _kdf(secret, salt)
        if entry is None or not hmac.compare_digest(digest, entry.digest):
            return None
        if len(self._verified) < 10_000:
            self._verified[fingerprint] = entry.id
        return entry if entry.usable(moment) else None


def _kdf(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode("utf-8", "surrogatepass"), salt=salt, **_SCRYPT)


def _check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    if isinstance(scopes, str):
        scopes = (scopes,)
    chosen = tuple(dict.fromkeys(scopes))
    if not chosen or not set(chosen) <= set(SCOPES):
        raise InvalidArgument(
            f"scopes must be some of {', '.join(SCOPES)}, got {quote(list(chosen))}"
        )
    return chosen


def _instant(value: object) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"a time must be an ISO 8601 string, got {quote(value)}")
    moment = datetime.fromisoformat(value)
    if moment.utcoffset() is None:
        raise ValueError(f"a time must carry its UTC offset, got {quote(value)}")
    return moment
