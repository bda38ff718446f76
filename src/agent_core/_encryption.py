"""`EncryptionKeys`: the master keys of encryption at rest, and the keys file they come from.

The file is JSON, ``{"keys": [{"id": "k1", "key": "<64 hex digits>"}, ...]}``; the last
key seals new writes, and every key opens what names it. Each namespace gets data keys
of its own, derived from each master key with HKDF-SHA256 (the namespace in the info),
and so do its idempotency digests. No error, repr or log shows key material.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import orjson

from ._extras import needs_extra
from ._payload_cipher import PayloadCipher
from ._quote import quote
from .errors import ConfigurationError

__all__ = ["EncryptionKeys"]

_KEY_ID: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HEX_KEY: Final = re.compile(r"[0-9a-fA-F]{64}")
_KEY_BYTES: Final = 32
_MAX_KEYS: Final = 100
_MAX_FILE_BYTES: Final = 1 << 20
# HKDF infos: a data key and a digest key per namespace, from each master key.
_DATA_INFO: Final = b"agent-core payload key v1\x00"
_DIGEST_INFO: Final = b"agent-core idempotency digest key v1\x00"
# Namespaces' ciphers kept at most (each holds one AES key schedule per master key).
_MAX_CIPHERS: Final = 4096


class EncryptionKeys:
    """Master keys by id, oldest first: the last one seals new writes.

    Build it with `from_file` (the keys file) or from ``(id, 32 bytes)`` pairs. Pass it
    as ``encryption_keys=`` to `ConversationCache`. Its repr shows the ids only.
    """

    __slots__ = ("_ciphers", "_keys")

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        with needs_extra("Encryption at rest"):
            import cryptography  # noqa: F401  (refused here, not at the first write)
        if isinstance(keys, str | bytes) or not isinstance(keys, Sequence) or not keys:
            raise ConfigurationError(
                "encryption keys must be a non-empty sequence of (id, 32-byte key) pairs; "
                "read a keys file with EncryptionKeys.from_file(path)"
            )
        if len(keys) > _MAX_KEYS:
            raise ConfigurationError(
                f"{len(keys)} encryption keys; at most {_MAX_KEYS}: drop keys that "
                "`agent-core keys rotate-data` has rotated away from"
            )
        checked: dict[str, bytes] = {}
        for index, pair in enumerate(keys):
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise ConfigurationError(f"keys[{index}] must be an (id, key) pair")
            key_id, key = pair
            _check_id(key_id, f"keys[{index}]")
            if key_id in checked:
                raise ConfigurationError(f"keys[{index}]: key id {key_id!r} appears twice")
            if not isinstance(key, bytes) or len(key) != _KEY_BYTES:
                raise ConfigurationError(
                    f"keys[{index}] (id {key_id!r}): the key must be {_KEY_BYTES} bytes "
                    "(secrets.token_bytes(32))"
                )
            checked[key_id] = key
        self._keys = checked
        self._ciphers: dict[str, PayloadCipher] = {}

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> EncryptionKeys:
        """The keys of a keys file, checked strictly (`ConfigurationError` says what is
        wrong, never quoting a key)."""
        where = Path(path)
        try:
            with open(where, "rb") as file:
                raw = file.read(_MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the encryption keys file {str(where)!r}: {exc.strerror or exc}"
            ) from None
        if len(raw) > _MAX_FILE_BYTES:
            raise ConfigurationError(
                f"the encryption keys file {str(where)!r} is over {_MAX_FILE_BYTES} bytes"
            )
        return cls.from_json(raw, source=str(where))

    @classmethod
    def from_json(cls, text: bytes | str, *, source: str = "encryption keys") -> EncryptionKeys:
        """The keys of a keys file's text: ``{"keys": [{"id": ..., "key": ...}, ...]}``."""
        try:
            document: Any = orjson.loads(text)
        except orjson.JSONDecodeError:
            # orjson's message quotes the text around the error, which may be a key.
            raise ConfigurationError(
                f"{source!r} is not JSON: it must be "
                '{"keys": [{"id": "k1", "key": "<64 hex digits>"}, ...]}'
            ) from None
        if not isinstance(document, dict) or set(document) != {"keys"}:
            raise ConfigurationError(
                f'{source!r} must be a JSON object with one field, "keys": '
                '{"keys": [{"id": "k1", "key": "<64 hex digits>"}, ...]}'
            )
        entries = document["keys"]
        if not isinstance(entries, list) or not entries:
            raise ConfigurationError(
                f'{source!r}: "keys" must be a non-empty list; the last key seals new writes'
            )
        pairs = []
        for index, entry in enumerate(entries):
            where = f"{source!r}: keys[{index}]"
            if not isinstance(entry, dict) or set(entry) != {"id", "key"}:
                fields = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
                raise ConfigurationError(
                    f'{where} must be an object with exactly "id" and "key", got {quote(fields)}'
                )
            _check_id(entry["id"], where)
            key = entry["key"]
            if not isinstance(key, str) or not _HEX_KEY.fullmatch(key):
                shape = (
                    f"a string of {len(key)} characters"
                    if isinstance(key, str)
                    else type(key).__name__
                )
                raise ConfigurationError(
                    f'{where} (id {entry["id"]!r}): "key" must be 64 hex digits (32 random '
                    f"bytes: python -c 'import secrets; print(secrets.token_hex(32))'), "
                    f"got {shape}"
                )
            pairs.append((entry["id"], bytes.fromhex(key)))
        return cls(pairs)

    @property
    def ids(self) -> tuple[str, ...]:
        """The key ids, oldest first."""
        return tuple(self._keys)

    @property
    def newest(self) -> str:
        """The id of the key that seals new writes."""
        return next(reversed(self._keys))

    def __repr__(self) -> str:
        return f"EncryptionKeys(ids={list(self._keys)!r})"

    def cipher(self, namespace: str) -> PayloadCipher:
        """The namespace's cipher: its data keys derived once, then kept."""
        cipher = self._ciphers.get(namespace)
        if cipher is None:
            if len(self._ciphers) >= _MAX_CIPHERS:
                self._ciphers.clear()
            cipher = self._ciphers[namespace] = self._derive(namespace)
        return cipher

    def _derive(self, namespace: str) -> PayloadCipher:
        with needs_extra("Encryption at rest"):
            from cryptography.exceptions import InvalidTag
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
            from cryptography.hazmat.primitives.hashes import SHA256
            from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        def derive(master: bytes, info: bytes) -> bytes:
            return HKDF(SHA256(), _KEY_BYTES, None, info + namespace.encode()).derive(master)

        aeads = {key_id: AESGCM(derive(key, _DATA_INFO)) for key_id, key in self._keys.items()}
        digest_keys = [derive(key, _DIGEST_INFO) for key in reversed(self._keys.values())]
        return PayloadCipher(namespace, aeads, self.newest, digest_keys, InvalidTag)


def _check_id(key_id: object, where: str) -> None:
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise ConfigurationError(
            f"{where}: the key id must be 1-64 characters of A-Z a-z 0-9 . _ -, got {quote(key_id)}"
        )
