"""`rotate_data`: every stored payload sealed under the newest encryption key.

It walks the messages in primary-key order, ``batch`` rows at a time, leaving out in
SQL the rows sealed under the newest key already; each batch is one short
transaction that swaps a payload only if it is still the one read (a writer that
changed it meanwhile wrote under the newest key). Versions, counts and order stay,
and no cache sees an external change: the messages are the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .._encryption import EncryptionKeys
from .._payload_cipher import sealed_prefix
from .._validation import check_count, check_namespace
from ..errors import ConfigurationError
from ._protocol import StoredPayload, ThreadStore

__all__ = ["Rotation", "rotate_data"]


@dataclass(frozen=True, slots=True)
class Rotation:
    """What `rotate_data` did."""

    #: The key id every payload is now sealed under.
    key_id: str
    #: Rows read that were not sealed under it (older key ids, or plaintext).
    found: int
    #: Rows sealed afresh.
    rotated: int
    #: Rows that changed between their read and their swap (written anew meanwhile).
    skipped: int


async def rotate_data(
    store: ThreadStore,
    keys: EncryptionKeys,
    *,
    namespace: str | None = None,
    batch: int = 1000,
    progress: Callable[[Rotation], None] | None = None,
) -> Rotation:
    """Seal every payload of ``namespace`` (None: of every namespace) under
    ``keys.newest``; ``progress`` is told the totals after each batch. A payload that
    does not open raises the typed error (`DecryptionFailed`), rotating no further."""
    if not isinstance(keys, EncryptionKeys):
        raise ConfigurationError(
            f"keys must be EncryptionKeys (EncryptionKeys.from_file), got {type(keys).__name__}"
        )
    if namespace is not None:
        check_namespace(namespace)
    check_count("batch", batch, minimum=1, maximum=100_000)
    skip = sealed_prefix(keys.newest)
    done = Rotation(keys.newest, 0, 0, 0)
    after: tuple[str, str, int] | None = None
    while rows := await store.scan_payloads(namespace, after=after, limit=batch, skip_prefix=skip):
        swaps = [(row, _sealed(keys, row)) for row in rows]
        rotated = await store.replace_payloads(swaps)
        done = Rotation(
            done.key_id,
            done.found + len(rows),
            done.rotated + rotated,
            done.skipped + len(rows) - rotated,
        )
        if progress is not None:
            progress(done)
        last = rows[-1]
        after = (last.namespace, last.thread_id, last.seq)
    return done


def _sealed(keys: EncryptionKeys, row: StoredPayload) -> bytes:
    cipher = keys.cipher(row.namespace)
    rotated = cipher.rotated(row.thread_id, row.payload)
    return row.payload if rotated is None else rotated
