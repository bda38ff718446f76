"""`PayloadCipher`: message payloads of one namespace sealed in AES-256-GCM envelopes.

A sealed payload is itself one JSON object, so both stores' JSON columns and the L2
format's check take it as they take a message:
``{"$ac_enc":1,"k":"<key id>","n":"<nonce, base64>","c":"<ciphertext and tag, base64>"}``.
The associated data names the namespace and the thread (length-prefixed), so a
ciphertext moved to another thread or namespace does not decrypt. A payload that does
not start like an envelope was written before encryption was turned on: `open` passes
it through unless told ``strict``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Final

import msgspec

from ._quote import quote
from .errors import DecryptionFailed, EncryptionKeyMissing, InvalidMessage

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "ENVELOPE_PREFIX",
    "PayloadCipher",
    "refuse_reserved",
    "refuse_sealed",
    "sealed_prefix",
]

#: Every envelope starts with these bytes (and no message does: it has a role or a type).
ENVELOPE_PREFIX: Final = b'{"$ac_enc":'
_FORMAT: Final = 1
_NONCE_BYTES: Final = 12


class _Envelope(msgspec.Struct, forbid_unknown_fields=True):
    format: int = msgspec.field(name="$ac_enc")
    key_id: str = msgspec.field(name="k")
    nonce: bytes = msgspec.field(name="n")
    sealed: bytes = msgspec.field(name="c")


_encode: Final = msgspec.json.Encoder().encode
_decode: Final = msgspec.json.Decoder(_Envelope).decode


def sealed_prefix(key_id: str) -> bytes:
    """What every payload sealed under ``key_id`` starts with."""
    return b'%s%d,"k":%s,' % (ENVELOPE_PREFIX, _FORMAT, _encode(key_id))


class PayloadCipher:
    """Seals and opens the payloads of one namespace's threads.

    ``aeads`` maps each key id to its namespace data key (`EncryptionKeys.cipher` derives
    them); ``newest`` seals new payloads; ``digest_keys`` key the idempotency digests,
    newest first.
    """

    __slots__ = ("_aeads", "_digest_keys", "_invalid_tag", "namespace", "newest", "prefix")

    def __init__(
        self,
        namespace: str,
        aeads: Mapping[str, AESGCM],
        newest: str,
        digest_keys: Sequence[bytes],
        invalid_tag: type[Exception],
    ) -> None:
        self.namespace = namespace
        self._aeads = dict(aeads)
        self.newest = newest
        self._digest_keys = tuple(digest_keys)
        self._invalid_tag = invalid_tag
        #: Payloads sealed under the newest key start with these bytes.
        self.prefix = sealed_prefix(newest)

    def __repr__(self) -> str:
        return f"PayloadCipher(namespace={self.namespace!r}, keys={list(self._aeads)!r})"

    def seal(self, thread_id: str, payloads: Sequence[bytes]) -> list[bytes]:
        """``payloads`` sealed under the newest key, for ``thread_id``."""
        aead = self._aeads[self.newest]
        aad = self._aad(thread_id)
        nonces = os.urandom(_NONCE_BYTES * len(payloads))
        sealed = []
        for index, payload in enumerate(payloads):
            nonce = nonces[index * _NONCE_BYTES : (index + 1) * _NONCE_BYTES]
            box = _Envelope(_FORMAT, self.newest, nonce, aead.encrypt(nonce, payload, aad))
            sealed.append(_encode(box))
        return sealed

    def open(
        self, thread_id: str, payloads: Sequence[bytes], *, strict: bool = False
    ) -> tuple[bytes, ...]:
        """The plaintexts of ``thread_id``'s ``payloads``. One that is no envelope passes
        as it is, unless ``strict`` (then it is `DecryptionFailed`, as is any that does
        not decrypt; `EncryptionKeyMissing` for a key id these keys do not hold)."""
        aad = self._aad(thread_id)
        return tuple(
            self._open_one(thread_id, aad, payload)
            if payload.startswith(ENVELOPE_PREFIX)
            else self._plain(thread_id, payload, strict)
            for payload in payloads
        )

    def sealed(self, thread_id: str, payloads: Sequence[bytes]) -> list[bytes]:
        """``payloads`` with every one that is no envelope sealed (envelopes kept)."""
        plain = [i for i, payload in enumerate(payloads) if not payload.startswith(ENVELOPE_PREFIX)]
        if not plain:
            return list(payloads)
        result = list(payloads)
        boxes = self.seal(thread_id, [payloads[i] for i in plain])
        for index, box in zip(plain, boxes, strict=True):
            result[index] = box
        return result

    def rebind(self, source_id: str, target_id: str, payloads: Sequence[bytes]) -> list[bytes]:
        """``source_id``'s payloads sealed afresh for ``target_id`` (a fork's copy)."""
        return self.seal(target_id, self.open(source_id, payloads))

    def rotated(self, thread_id: str, payload: bytes) -> bytes | None:
        """``payload`` sealed under the newest key, or None if it already is."""
        if payload.startswith(self.prefix):
            return None
        return self.seal(thread_id, self.open(thread_id, [payload]))[0]

    def digests(self, digest: Callable[[bytes], bytes]) -> Iterator[bytes]:
        """``digest(key)`` under each digest key, newest first (made as asked)."""
        return (digest(key) for key in self._digest_keys)

    def _aad(self, thread_id: str) -> bytes:
        namespace = self.namespace.encode()
        thread = thread_id.encode()
        return b"agent-core/1%c%s%c%s" % (len(namespace), namespace, len(thread), thread)

    def _open_one(self, thread_id: str, aad: bytes, payload: bytes) -> bytes:
        try:
            box = _decode(payload)
        except msgspec.DecodeError:
            raise self._failed(thread_id, "?", "is not a well-formed envelope") from None
        if box.format != _FORMAT or len(box.nonce) != _NONCE_BYTES:
            raise self._failed(thread_id, box.key_id, "is an envelope of an unknown form")
        aead = self._aeads.get(box.key_id)
        if aead is None:
            raise EncryptionKeyMissing(
                f"a payload of thread {quote(thread_id)} (namespace {quote(self.namespace)}) is "
                f"sealed under key id {quote(box.key_id)}, which the encryption keys do not "
                f"hold (they hold {', '.join(map(repr, self._aeads))}): add that key back to "
                "the keys file",
                key_id=box.key_id,
            )
        try:
            return aead.decrypt(box.nonce, box.sealed, aad)
        except self._invalid_tag:
            raise self._failed(
                thread_id,
                box.key_id,
                f"does not decrypt under key id {quote(box.key_id)}: it was changed, moved "
                "from another thread or namespace, or that id names other key material than "
                "the one that sealed it",
            ) from None

    def _plain(self, thread_id: str, payload: bytes, strict: bool) -> bytes:
        if strict:
            raise self._failed(thread_id, "", "is not sealed")
        return payload

    def _failed(self, thread_id: str, key_id: str, why: str) -> DecryptionFailed:
        return DecryptionFailed(
            f"a payload of thread {quote(thread_id)} (namespace {quote(self.namespace)}) {why}",
            key_id=key_id,
        )


def refuse_sealed(namespace: str, thread_id: str, payloads: Sequence[bytes]) -> None:
    """Raise `EncryptionKeyMissing` if a payload is sealed: a cache without keys must
    not serve an envelope as if it were the message."""
    if any(payload.startswith(ENVELOPE_PREFIX) for payload in payloads):
        raise EncryptionKeyMissing(
            f"thread {quote(thread_id)} (namespace {quote(namespace)}) holds payloads "
            "encrypted at rest, and this cache has no encryption keys: pass "
            "encryption_keys=EncryptionKeys.from_file(path) (serve: --encryption-keys-file)",
            key_id="",
        )


def refuse_reserved(payloads: Sequence[bytes]) -> None:
    """Raise `InvalidMessage` for a message whose first field is ``$ac_enc``: it would
    read back as an envelope."""
    for index, payload in enumerate(payloads):
        if payload.startswith(ENVELOPE_PREFIX):
            raise InvalidMessage(
                f'messages[{index}]: a message may not start with the field "$ac_enc", '
                "which marks payloads encrypted at rest; put another field first"
            )
