"""The contract every thread store keeps."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, cast, runtime_checkable

from .._quote import quote
from .._token_counts import check_token_key, is_token_counts
from .._validation import (
    MAX_METADATA_KEYS,
    check_count,
    check_idempotency_key,
    check_metadata,
    check_namespace,
    check_optional_count,
    check_seconds,
    check_slice,
    check_thread_id,
    check_timestamp,
)
from ..errors import InvalidArgument, InvalidBatch

#: ``list_threads`` returns at most this many ids per page.
MAX_PAGE_SIZE = 1000
#: How long an idempotency key is remembered (seconds) unless a store is told otherwise:
#: a retry within it writes nothing; after it the key is free again.
DEFAULT_IDEMPOTENCY_TTL = 86_400.0
#: A retention is at most about a century (seconds).
MAX_RETENTION = 100 * 365.25 * 86400
#: `expire_idempotency_keys` removes at most this many keys per call by default.
DEFAULT_EXPIRE_BATCH = 1000
#: Both stores keep seqs and counts as signed 64-bit integers.
#: A fork's rewrite of the payloads it copies (`ThreadStore.fork`).
Rewrite = Callable[[Sequence[bytes]], Sequence[bytes]]


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What an append did: the thread's version after it, and whether it wrote."""

    version: int
    #: False when the idempotency key had already been applied (nothing written).
    applied: bool
    #: When the thread expires (seconds since the epoch), None if it does not.
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class SpliceResult:
    """What a splice did: the versions before and after it, and the payloads it removed."""

    version: int
    base_version: int
    #: False when nothing was written: the idempotency key had already been applied,
    #: or the splice removed nothing and inserted nothing.
    applied: bool
    #: The removed messages' payloads, in order (empty when not applied).
    removed: tuple[bytes, ...]
    #: When the thread expires (seconds since the epoch), None if it does not.
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class ThreadRecords:
    """Stored messages of one thread, read in one consistent snapshot."""

    version: int
    seqs: tuple[int, ...]
    payloads: tuple[bytes, ...]
    #: Per message, its stored token counts (see `encode_token_counts`), None if none.
    tokens: tuple[bytes | None, ...]
    #: When the thread expires (seconds since the epoch), None if it does not.
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class StoredPayload:
    """One stored message's place and payload, as `scan_payloads` finds it."""

    namespace: str
    thread_id: str
    seq: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class ThreadInfo:
    """What the store knows of a thread besides its messages."""

    version: int
    message_count: int
    #: When the thread's row was made and last written; None for a thread never written.
    created_at: datetime | None
    updated_at: datetime | None
    #: Small string map set with ``update_thread``; filter ``list_threads`` by it.
    metadata: Mapping[str, str]
    #: When the thread expires and reads as deleted; None if it does not.
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ThreadPage:
    """One page of thread ids, in id order; pass ``next_cursor`` as ``after``."""

    thread_ids: tuple[str, ...]
    next_cursor: str | None


class ChangeListener(Protocol):
    """Told of changes that other programs make to the store behind agent-core's back."""

    def changed(self, namespace: str, thread_id: str, version: int) -> None:
        """``thread_id`` is now at ``version``."""

    def reset(self) -> None:
        """Changes may have been missed (the watch connection failed)."""


@runtime_checkable
class ThreadStore(Protocol):
    """A log of messages per ``(namespace, thread_id)``, appended to and spliced.

    ``version`` is at least every ``seq``; it never goes back, not even across
    ``delete``, which itself takes a version so that caches can fence on it.

    A thread whose ``expires_at`` has passed reads as deleted at its version + 1
    (every read, on every connection), and the next write to it, or
    `sweep_expired`, deletes it at that version. ``retention`` (seconds) on a write
    extends the thread's expiry to at least that long from now.
    """

    async def open(self) -> None:
        """Connect and create or migrate the schema (safe with concurrent openers)."""

    @property
    def fingerprint(self) -> str:
        """The database's identity: 16 hex digits of a random id its schema got once.

        Caches key shared (Redis) entries by it, so a namespace reused against another
        database, or a recreated one, never sees this one's entries. "" before `open`.
        """

    async def close(self) -> None:
        """Release connections and threads; idempotent."""

    async def append(
        self,
        namespace: str,
        thread_id: str,
        payloads: Sequence[bytes],
        *,
        tokens: Sequence[bytes | None] | None = None,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        retention: float | None = None,
        digest: bytes | None = None,
    ) -> AppendResult:
        """Append encoded messages as one contiguous batch, atomically.

        ``tokens``, if given, holds each message's encoded token counts (or None). An
        ``idempotency_key`` is remembered for the store's ``idempotency_ttl``: a retry
        within it writes nothing and returns the first use's version; after it the key
        is free again (and may carry another batch). ``digest`` tells a retry from a
        reuse instead of `batch_digest` of the payloads (which differ on each try when
        they are encrypted: the caller then digests the plaintext).
        """

    async def splice(
        self,
        namespace: str,
        thread_id: str,
        start: int | None,
        stop: int | None,
        payloads: Sequence[bytes],
        *,
        tokens: Sequence[bytes | None] | None = None,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        retention: float | None = None,
        digest: bytes | None = None,
        removed_as: Rewrite | None = None,
    ) -> SpliceResult:
        """Replace the messages ``[start:stop]`` (Python slice rules) by ``payloads``,
        atomically; the other messages keep their places and seqs.

        The new version is the old one plus ``max(1, len(payloads))``; the new messages
        take the seqs above the old version. A splice that removes and inserts nothing
        writes nothing. ``expected_version``, ``idempotency_key`` and ``digest`` work as
        in `append` (the default digest is `splice_digest`). ``removed_as``, if given,
        maps the removed payloads to what the result holds, inside the transaction; what
        it raises rolls the splice back (an encrypting cache opens them there, so a
        message it cannot open is never removed unseen).
        """

    async def fork(
        self,
        namespace: str,
        source_id: str,
        new_id: str,
        *,
        at_version: int | None = None,
        retention: float | None = None,
        rewrite: Rewrite | None = None,
    ) -> int:
        """Make ``new_id`` a copy of ``source_id``'s messages and metadata as of
        ``at_version`` (None: now); returns the new thread's version. The copy does not
        take the source's expiry (``retention`` sets its own).

        ``new_id`` must hold no messages (`ThreadExists`). A past version can be forked
        only if no splice or delete has rewritten the source since (`InvalidArgument`).
        ``rewrite``, if given, maps the copied payloads (in seq order) to what the copy
        stores, inside the fork's transaction (an encrypting cache seals them afresh for
        the new thread id); what it raises rolls the fork back.
        """

    async def read(
        self, namespace: str, thread_id: str, *, after: int = 0, last: int | None = None
    ) -> ThreadRecords:
        """Messages in thread order, with the version: those whose seq is above
        ``after`` (made after that version), at most the ``last`` newest."""

    async def version(self, namespace: str, thread_id: str) -> int:
        """The thread's version; 0 for a thread that was never written."""

    async def set_tokens(
        self, namespace: str, thread_id: str, key: str, counts: Mapping[int, int]
    ) -> int:
        """Record ``counts`` (seq -> tokens) under ``key``, beside the counts already stored.

        Neither the version nor the messages change, and it is not an external change.
        Seqs that are not stored (any more) are skipped; returns how many rows took a count.
        """

    async def delete(self, namespace: str, thread_id: str) -> int:
        """Remove the thread's messages and idempotency keys; returns the new version."""

    async def list_threads(
        self,
        namespace: str,
        *,
        limit: int = 100,
        after: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ThreadPage:
        """Threads of a namespace that hold messages or metadata, in id order, ``limit``
        at a time; with ``metadata``, only those whose metadata has every pair."""

    async def thread_info(self, namespace: str, thread_id: str) -> ThreadInfo:
        """The thread's version, message count, times and metadata, from one snapshot."""

    async def stored_bytes(self, namespace: str) -> int:
        """Bytes of the namespace's stored message payloads (as stored: encrypted if they
        are); reads every row of the namespace, so callers cache it."""

    async def update_thread(
        self,
        namespace: str,
        thread_id: str,
        *,
        metadata: Mapping[str, str | None] | None = None,
        expires_at: float | None = None,
        retention: float | None = None,
    ) -> ThreadInfo:
        """Merge ``metadata`` into the thread's (None removes a key), creating the thread
        (version 0) if needed; the version does not move. More than
        `MAX_METADATA_KEYS` keys afterwards is `InvalidArgument`, and nothing is written.
        ``expires_at`` (seconds since the epoch) sets the expiry exactly; else
        ``retention`` extends it as any write does."""

    async def sweep_expired(
        self, namespace: str, *, limit: int = DEFAULT_EXPIRE_BATCH
    ) -> list[tuple[str, int]]:
        """Delete at most ``limit`` expired threads of ``namespace`` (messages, metadata,
        idempotency keys; the version stays); returns each one's id and new version."""

    async def expire_idempotency_keys(self, *, limit: int = DEFAULT_EXPIRE_BATCH) -> int:
        """Remove at most ``limit`` idempotency keys older than the store's
        ``idempotency_ttl`` (every namespace); returns how many. Expired keys already
        count as absent: this only reclaims their rows."""

    async def watch(self, listener: ChangeListener) -> None:
        """Tell ``listener`` of external changes until the store closes."""

    async def scan_payloads(
        self,
        namespace: str | None,
        *,
        after: tuple[str, str, int] | None = None,
        limit: int = DEFAULT_EXPIRE_BATCH,
        skip_prefix: bytes = b"",
    ) -> list[StoredPayload]:
        """At most ``limit`` stored messages of ``namespace`` (None: every namespace) in
        (namespace, thread id, seq) order, after the place ``after``, leaving out those
        whose payload starts with ``skip_prefix`` (when not empty)."""

    async def replace_payloads(self, swaps: Sequence[tuple[StoredPayload, bytes]]) -> int:
        """Replace each scanned row's payload by the new one if it still holds the payload
        scanned (compare and swap), in one short transaction; returns how many were.
        Versions, counts and order stay, and it is not an external change: the same
        message in another form (re-encrypted)."""


def batch_digest(payloads: Sequence[bytes], *, key: bytes = b"") -> bytes:
    """Fingerprint of a batch, to tell a retried idempotency key from a reused one.

    ``key`` (at most 64 bytes) keys the hash: a cache that encrypts digests the
    plaintext under a key of its own, so the digest says nothing of the messages.
    """
    digest = hashlib.blake2b(digest_size=16, key=key)
    for payload in payloads:
        digest.update(len(payload).to_bytes(8, "little"))
        digest.update(payload)
    return digest.digest()


def splice_digest(
    start: int | None, stop: int | None, payloads: Sequence[bytes], *, key: bytes = b""
) -> bytes:
    """`batch_digest` of a splice: no append's batch (JSON objects) can share it."""
    return batch_digest([b"splice", f"{start}:{stop}".encode(), *payloads], key=key)


def check_digest(digest: bytes | None) -> None:
    if digest is not None and not (isinstance(digest, bytes) and 1 <= len(digest) <= 64):
        raise InvalidArgument(f"digest must be None or 1-64 bytes, got {quote(digest)}")


def fingerprint_of(identity: str) -> str:
    """A store's fingerprint from the random identity its migration stored."""
    return identity[:16]


def check_append(
    namespace: str,
    thread_id: str,
    payloads: Sequence[bytes],
    tokens: Sequence[bytes | None] | None,
    expected_version: int | None,
    idempotency_key: str | None,
) -> None:
    check_namespace(namespace)
    check_thread_id(thread_id)
    if not payloads or not all(isinstance(p, bytes) for p in payloads):
        raise InvalidBatch("a store append takes a non-empty sequence of encoded messages (bytes)")
    if tokens is not None:
        if isinstance(tokens, bytes | str) or len(tokens) != len(payloads):
            raise InvalidBatch(
                f"tokens must be a sequence with one entry per message ({len(payloads)}), "
                f"got {quote(tokens)}"
            )
        for index, encoded in enumerate(tokens):
            if encoded is not None and not is_token_counts(encoded):
                raise InvalidBatch(
                    f"tokens[{index}] must be None or encode_token_counts() output, "
                    f"got {quote(encoded)}"
                )
    check_optional_count("expected_version", expected_version, minimum=0)
    check_idempotency_key(idempotency_key)


def check_splice(
    namespace: str,
    thread_id: str,
    start: int | None,
    stop: int | None,
    payloads: Sequence[bytes],
    tokens: Sequence[bytes | None] | None,
    expected_version: int | None,
    idempotency_key: str | None,
) -> None:
    check_slice(start, stop)
    if payloads:
        check_append(namespace, thread_id, payloads, tokens, expected_version, idempotency_key)
        return
    if tokens:
        raise InvalidBatch("tokens must be empty when a splice inserts no messages")
    check_thread(namespace, thread_id)
    check_optional_count("expected_version", expected_version, minimum=0)
    check_idempotency_key(idempotency_key)


def check_fork(namespace: str, source_id: str, new_id: str, at_version: int | None) -> None:
    check_namespace(namespace)
    check_thread_id(source_id)
    check_thread_id(new_id)
    if source_id == new_id:
        raise InvalidArgument(f"fork needs a new id: source and new id are both {quote(new_id)}")
    check_optional_count("at_version", at_version, minimum=0)


def check_fork_version(
    source_id: str, at_version: int | None, version: int, rewritten_at: int
) -> int:
    """The version to fork at; raises `InvalidArgument` if it can't be rebuilt."""
    if at_version is None:
        return version
    if at_version > version:
        raise InvalidArgument(
            f"thread {quote(source_id)} is at version {version}: it has no version "
            f"{at_version} to fork"
        )
    if at_version < rewritten_at:
        raise InvalidArgument(
            f"thread {quote(source_id)}'s history before version {rewritten_at} was "
            f"rewritten (a splice or delete): fork at version {rewritten_at} or later"
        )
    return at_version


def check_set_tokens(namespace: str, thread_id: str, key: str, counts: Mapping[int, int]) -> None:
    check_namespace(namespace)
    check_thread_id(thread_id)
    check_token_key(key)
    if not isinstance(counts, Mapping):
        raise InvalidArgument(f"counts must be a mapping of seq to tokens, got {type(counts)!r}")
    for seq, count in counts.items():
        check_count("seq", seq, minimum=1)
        check_count(f"token count of seq {seq}", count, minimum=0)


def check_scan(
    namespace: str | None, after: tuple[str, str, int] | None, limit: int, skip_prefix: bytes
) -> None:
    if namespace is not None:
        check_namespace(namespace)
    if after is not None:
        if not (isinstance(after, tuple) and len(after) == 3):
            raise InvalidArgument(
                f"after must be a (namespace, thread id, seq) place, got {quote(after)}"
            )
        check_namespace(after[0])
        check_thread_id(after[1])
        check_count("after's seq", after[2], minimum=0)
        if namespace is not None and after[0] != namespace:
            raise InvalidArgument(
                f"after {quote(after)} is a place of another namespace than {quote(namespace)}"
            )
    check_count("limit", limit, minimum=1, maximum=100_000)
    if not isinstance(skip_prefix, bytes):
        raise InvalidArgument(f"skip_prefix must be bytes, got {quote(skip_prefix)}")


def check_swaps(swaps: Sequence[tuple[StoredPayload, bytes]]) -> None:
    if isinstance(swaps, str | bytes) or not isinstance(swaps, Sequence):
        raise InvalidArgument(f"swaps must be a sequence of (row, payload), got {quote(swaps)}")
    for index, swap in enumerate(swaps):
        if not (
            isinstance(swap, tuple)
            and len(swap) == 2
            and isinstance(swap[0], StoredPayload)
            and isinstance(swap[1], bytes)
            and isinstance(swap[0].payload, bytes)
        ):
            raise InvalidArgument(
                f"swaps[{index}] must be (a StoredPayload from scan_payloads, the new payload "
                f"as bytes), got {quote(swap)}"
            )
        check_namespace(swap[0].namespace)
        check_thread_id(swap[0].thread_id)
        check_count("seq", swap[0].seq, minimum=1)


def checked_rewrite(rewrite: Rewrite, payloads: Sequence[bytes]) -> list[bytes]:
    """What ``rewrite`` made of ``payloads``, checked: one bytes per payload."""
    rewritten = list(rewrite(payloads))
    if len(rewritten) != len(payloads) or not all(isinstance(p, bytes) for p in rewritten):
        raise InvalidArgument(
            f"a rewrite of payloads must return one bytes payload per payload ({len(payloads)})"
        )
    return rewritten


def check_read(namespace: str, thread_id: str, after: int, last: int | None) -> None:
    check_namespace(namespace)
    check_thread_id(thread_id)
    check_count("after", after, minimum=0)
    check_optional_count("last", last, minimum=0)


def check_list(
    namespace: str, limit: int, after: str | None, metadata: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Checks ``list_threads``' arguments; returns the metadata filter (maybe empty)."""
    check_namespace(namespace)
    check_count("limit", limit, minimum=1, maximum=MAX_PAGE_SIZE)
    if after is not None:
        check_thread_id(after)
    if metadata is None:
        return {}
    # Without removals every value is a str.
    return cast(dict[str, str], check_metadata(metadata, removals=False))


def too_many_keys(thread_id: str, count: int) -> InvalidArgument:
    return InvalidArgument(
        f"thread {quote(thread_id)} would hold {count} metadata keys; at most "
        f"{MAX_METADATA_KEYS}: remove some (a None value removes a key)"
    )


def check_expiry(expires_at: float | None, retention: float | None) -> None:
    if expires_at is not None:
        check_timestamp("expires_at", expires_at)
    if retention is not None:
        check_seconds("retention", retention, maximum=MAX_RETENTION)


def check_thread(namespace: str, thread_id: str) -> None:
    check_namespace(namespace)
    check_thread_id(thread_id)


def records_from_rows(
    version: int,
    rows: Sequence[tuple[int, bytes, bytes | None]],
    expires_at: float | None = None,
) -> ThreadRecords:
    if not rows:
        return ThreadRecords(version, (), (), (), expires_at)
    seqs, payloads, tokens = zip(*rows, strict=True)
    return ThreadRecords(version, seqs, payloads, tokens, expires_at)


def page_of(thread_ids: Sequence[str], limit: int) -> ThreadPage:
    """A page from ``limit + 1`` fetched ids: the extra one says there is more."""
    if len(thread_ids) > limit:
        return ThreadPage(tuple(thread_ids[:limit]), thread_ids[limit - 1])
    return ThreadPage(tuple(thread_ids), None)


__all__ = [
    "MAX_PAGE_SIZE",
    "AppendResult",
    "ChangeListener",
    "SpliceResult",
    "StoredPayload",
    "ThreadInfo",
    "ThreadPage",
    "ThreadRecords",
    "ThreadStore",
    "batch_digest",
    "splice_digest",
]
