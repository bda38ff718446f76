"""The multi-machine store: PostgreSQL through an asyncpg pool.

asyncpg was chosen over psycopg 3 by measurement (``benchmarks/pg_drivers.py``,
``docs/BENCHMARKS.md``). Message payloads and token counts travel as raw bytes
both ways: ``json`` and ``jsonb`` are bound in binary format, which for ``json`` is
the text itself and for ``jsonb`` the text after a version byte, so nothing is
re-encoded or decoded in Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy

from .._quote import quote
from .._tasks import MAX_BACKOFF, cancel_and_wait, raise_if_cancelling
from .._urls import mask_url, redact, show_url
from .._validation import (
    MAX_METADATA_KEYS,
    check_count,
    check_metadata,
    check_namespace,
    check_seconds,
)
from ..errors import (
    CacheClosed,
    ConfigurationError,
    IdempotencyKeyReused,
    StoreUnavailable,
    ThreadExists,
    VersionConflict,
)
from . import _postgres_schema as sql
from ._order import (
    Fetch,
    absolute,
    fetch_for,
    keys_between,
    locate,
    needs_respace,
    respace,
)
from ._protocol import (
    DEFAULT_EXPIRE_BATCH,
    DEFAULT_IDEMPOTENCY_TTL,
    AppendResult,
    ChangeListener,
    Rewrite,
    SpliceResult,
    StoredPayload,
    ThreadInfo,
    ThreadPage,
    ThreadRecords,
    batch_digest,
    check_append,
    check_digest,
    check_expiry,
    check_fork,
    check_fork_version,
    check_list,
    check_read,
    check_scan,
    check_set_tokens,
    check_splice,
    check_swaps,
    check_thread,
    checked_rewrite,
    fingerprint_of,
    page_of,
    records_from_rows,
    splice_digest,
    too_many_keys,
)

__all__ = ["PostgresStore"]

_Connection = asyncpg.Connection | PoolConnectionProxy
log = logging.getLogger("agent_core.store")

_OPTIONS: Final = {
    "pool_min_size": 1,
    "pool_max_size": 10,
    "command_timeout": 30.0,
    "idempotency_ttl": DEFAULT_IDEMPOTENCY_TTL,
}
#: Failures of the connection or of the driver itself, not answers of the server: the
#: network, timeouts, a closed pool or connection, and asyncpg's protocol errors
#: (InternalClientError) that a terminated backend can leave behind.
_CONNECTION_ERRORS: Final = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
)
#: libpq's TLS parameters that name files; asyncpg reads them as it connects.
_TLS_FILES: Final = ("sslrootcert", "sslcert", "sslkey", "sslcrl")
#: SQLSTATE classes of a lost connection (08) and of an operator's intervention (57, as
#: pg_terminate_backend): a statement in flight may have committed before the error.
_LOST_STATES: Final = ("08", "57")


class PostgresStore:
    """A `ThreadStore` in PostgreSQL (``postgresql://user@host:5432/db``).

    Tables live in the ``agent_core`` schema. Pool size and timeouts come from the
    URL's ``pool_min_size``, ``pool_max_size``, ``command_timeout`` and
    ``idempotency_ttl`` (seconds). libpq's TLS parameters go to asyncpg as they are:
    ``sslmode`` (``require``, ``verify-ca``, ``verify-full``), ``sslrootcert`` (the CA
    file), ``sslcert`` and ``sslkey`` (a client certificate).
    """

    def __init__(
        self,
        dsn: str,
        *,
        pool_min_size: int = 1,
        pool_max_size: int = 10,
        command_timeout: float = 30.0,
        idempotency_ttl: float = DEFAULT_IDEMPOTENCY_TTL,
    ) -> None:
        if not 0 <= pool_min_size <= pool_max_size or pool_max_size < 1:
            raise ConfigurationError(
                f"need 0 <= pool_min_size <= pool_max_size and pool_max_size >= 1, "
                f"got {pool_min_size} and {pool_max_size}"
            )
        if command_timeout <= 0:
            raise ConfigurationError(f"command_timeout must be > 0, got {command_timeout}")
        self.idempotency_ttl = check_seconds(
            "idempotency_ttl", idempotency_ttl, error=ConfigurationError
        )
        self._dsn = dsn
        self._pool_min_size = pool_min_size
        self._pool_max_size = pool_max_size
        self._command_timeout = command_timeout
        self._pool: asyncpg.Pool | None = None
        self._listeners: list[ChangeListener] = []
        self._watch_task: asyncio.Task[None] | None = None
        self._fingerprint = ""

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        try:
            parts = urlsplit(url)
        except ValueError as exc:  # an unclosed IPv6 bracket
            raise ConfigurationError(f"bad PostgreSQL URL {show_url(url)}: {exc}") from None
        if parts.scheme not in ("postgresql", "postgres"):
            raise ConfigurationError(
                f"not a PostgreSQL URL: {show_url(url)}; use postgresql://user@host:5432/database"
            )
        query = parse_qsl(parts.query)
        theirs = [(k, v) for k, v in query if k not in _OPTIONS]
        options: dict[str, Any] = {}
        for name, text in query:
            if name in _OPTIONS:
                try:
                    options[name] = type(_OPTIONS[name])(text)
                except ValueError as exc:
                    raise ConfigurationError(
                        f"bad option {name}={quote(text)} in PostgreSQL URL: {exc}"
                    ) from None
            elif name in _TLS_FILES and not os.access(text, os.R_OK):
                shown = repr(text if len(text) <= 300 else text[:297] + "...")  # no secret
                raise ConfigurationError(
                    f"{name}={shown} in the PostgreSQL URL does not exist or cannot be read: "
                    "give the path of a readable PEM file"
                )
        dsn = urlunsplit(parts._replace(query=urlencode(theirs)))
        return cls(dsn, **options)

    def __repr__(self) -> str:
        # Host, port and database only; text, not a parse, so a bad port cannot raise.
        address = mask_url(self._dsn).partition("://")[2].rpartition("@")[2].partition("?")[0]
        return f"PostgresStore({quote(address)})"

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self._pool_min_size,
                max_size=self._pool_max_size,
                command_timeout=self._command_timeout,
                init=_init_connection,
                reset=_keep_session,
            )
        except ssl.SSLCertVerificationError as exc:  # a ValueError too: before that case
            raise ConfigurationError(self._certificate_refused(exc)) from exc
        except ValueError as exc:  # a bad port or option, found by asyncpg
            raise ConfigurationError(f"cannot open {self!r}: {self._redact(exc)}") from None
        except _CONNECTION_ERRORS as exc:
            raise StoreUnavailable(f"cannot connect to {self!r}: {self._redact(exc)}") from exc
        except asyncpg.PostgresError as exc:
            message = f"cannot open {self!r}: {self._redact(exc)}"
            if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError) and (
                "no encryption" in str(exc)
            ):
                message += (
                    "; the server accepts only TLS connections from here: connect with "
                    "sslmode=verify-full&sslrootcert=/path/to/ca.pem (sslmode=require "
                    "encrypts without checking who answers)"
                )
            elif "client certificate" in str(exc):
                message += (
                    "; give the client certificate and its key as "
                    "sslcert=/path/to/client.pem&sslkey=/path/to/client.key"
                )
            raise ConfigurationError(message) from exc
        try:
            async with pool.acquire() as connection:
                await _migrate(connection)
                self._fingerprint = fingerprint_of(await connection.fetchval(sql.IDENTITY))
        except BaseException:
            await _close_pool(pool)
            raise
        self._pool = pool

    def _certificate_refused(self, exc: ssl.SSLCertVerificationError) -> str:
        reason = (exc.verify_message or exc.reason or "unverified").rstrip(".")
        return (
            f"TLS certificate verification failed for {self!r} ({reason}): the server's "
            "certificate is not signed by the CA in the URL's sslrootcert, or (sslmode="
            "verify-full) does not name the host connected to; give the CA file that signed "
            "it, as in postgresql://user@host:5432/db?sslmode=verify-full&sslrootcert="
            "/path/to/ca.pem, and connect by a name or address the certificate holds"
        )

    async def close(self) -> None:
        task, self._watch_task = self._watch_task, None
        await cancel_and_wait(task)
        self._listeners.clear()
        pool, self._pool = self._pool, None
        if pool is not None:
            await _close_pool(pool)

    @asynccontextmanager
    async def _connection(self, *, write: bool = False) -> AsyncIterator[_Connection]:
        """A pooled connection; every driver failure becomes `StoreUnavailable`.

        ``write``: the body sends one write, which may have committed if the connection
        fails after it was sent (the error then says so).
        """
        if self._pool is None:
            raise CacheClosed(f"{self!r} is not open; use it inside 'async with'")
        sent = False
        try:
            async with self._pool.acquire() as connection:
                sent = write
                yield connection
        except asyncpg.PostgresError as exc:
            if exc.sqlstate in sql.REFUSED_STATES:
                raise
            lost = sent and str(exc.sqlstate)[:2] in _LOST_STATES
            raise self._unavailable(exc, may_have_committed=lost) from exc
        except _CONNECTION_ERRORS as exc:
            raise self._unavailable(exc, may_have_committed=sent) from exc

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[_Connection]:
        """A pooled connection in a transaction, committed when the body returns and
        rolled back if it raises. Only a failure while the COMMIT is on its way may
        have committed: before that, the transaction had written nothing durable."""
        committing = False
        try:
            async with self._connection() as connection:
                transaction = connection.transaction()
                await transaction.start()
                try:
                    yield connection
                except BaseException:
                    try:
                        await transaction.rollback()
                    except (*_CONNECTION_ERRORS, asyncpg.PostgresError):
                        # Lost, or busy: the error that got here stands, and the
                        # connection goes, so no transaction returns to the pool open.
                        with contextlib.suppress(asyncpg.InterfaceError):
                            connection.terminate()
                    raise
                committing = True
                await transaction.commit()
        except StoreUnavailable as exc:
            cause = exc.__cause__
            if committing and cause is not None and _connection_lost(cause):
                raise self._unavailable(cause, may_have_committed=True) from cause
            raise

    async def _query(self, method: str, query: str, *args: object) -> Any:
        """A read, tried once more on another connection if its connection was lost.

        A backend terminated while its connection sat in the pool is found only when the
        next query uses it; a read is safe to repeat, so that one caller does not fail.
        """
        for attempt in range(2):
            try:
                async with self._connection() as connection:
                    return await getattr(connection, method)(query, *args)
            except StoreUnavailable as exc:
                if attempt or not _connection_lost(exc.__cause__):
                    raise
        raise AssertionError("unreachable")

    def _unavailable(self, exc: BaseException, *, may_have_committed: bool) -> StoreUnavailable:
        if may_have_committed:
            outcome = "the write may have committed: retry with the same idempotency key"
        else:
            outcome = "nothing was written: retry"
        return StoreUnavailable(
            f"{self!r} failed ({type(exc).__name__}: {self._redact(exc)}); {outcome}",
            may_have_committed=may_have_committed,
        )

    def _redact(self, exc: BaseException) -> str:
        return redact(str(exc), self._dsn)

    # -- operations ------------------------------------------------------------------

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
        check_append(namespace, thread_id, payloads, tokens, expected_version, idempotency_key)
        check_expiry(None, retention)
        check_digest(digest)
        if idempotency_key is None:
            digest = None
        elif digest is None:
            digest = batch_digest(payloads)
        try:
            async with self._connection(write=True) as connection:
                row = await connection.fetchrow(
                    sql.APPEND,
                    namespace,
                    thread_id,
                    payloads,
                    tokens,
                    expected_version,
                    idempotency_key,
                    digest,
                    self.idempotency_ttl,
                    retention,
                )
        except asyncpg.PostgresError as exc:
            actual = int(exc.args[0]) if exc.args else -1
            if exc.sqlstate == sql.VERSION_CONFLICT_STATE:
                assert expected_version is not None
                raise VersionConflict(thread_id, expected=expected_version, actual=actual) from None
            assert idempotency_key is not None
            raise IdempotencyKeyReused(thread_id, idempotency_key, version=actual) from None
        assert row is not None
        return AppendResult(row[0], applied=row[1], expires_at=row[2])

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
        check_splice(
            namespace, thread_id, start, stop, payloads, tokens, expected_version, idempotency_key
        )
        check_expiry(None, retention)
        check_digest(digest)
        if idempotency_key is None:
            digest = None
        elif digest is None:
            digest = splice_digest(start, stop, payloads)
        try:
            async with self._transaction() as connection:
                return await self._splice(
                    connection,
                    namespace,
                    thread_id,
                    (start, stop),
                    payloads,
                    tokens,
                    expected_version,
                    idempotency_key,
                    digest,
                    retention,
                    removed_as,
                )
        except _Unchanged as unchanged:  # raised to roll back a thread row made for nothing
            return unchanged.result

    async def _splice(
        self,
        connection: _Connection,
        namespace: str,
        thread_id: str,
        bounds: tuple[int | None, int | None],
        payloads: Sequence[bytes],
        tokens: Sequence[bytes | None] | None,
        expected_version: int | None,
        idempotency_key: str | None,
        digest: bytes | None,
        retention: float | None,
        removed_as: Rewrite | None,
    ) -> SpliceResult:
        start, stop = bounds
        fetch = fetch_for(start, stop)
        args = (namespace, thread_id, idempotency_key, self.idempotency_ttl)
        header, rows = _split(await connection.fetch(sql.SPLICE_BEGIN, *args, *_fetch_args(fetch)))
        current, prior, prior_digest, count, expires, erased = header
        if prior is not None:
            if prior_digest != digest:
                assert idempotency_key is not None
                raise IdempotencyKeyReused(thread_id, idempotency_key, version=prior)
            unused = SpliceResult(prior, prior, applied=False, removed=(), expires_at=expires)
            raise _Unchanged(unused)
        if expected_version is not None and expected_version != current:
            raise VersionConflict(thread_id, expected=expected_version, actual=current)
        if fetch is None:  # a slice mixing signs: located from the front, by the count
            assert count is not None
            start, stop = absolute(start, stop, count)
            fetch = fetch_for(start, stop)
            assert fetch is not None
            _, rows = _split(await connection.fetch(sql.SPLICE_BEGIN, *args, *_fetch_args(fetch)))
        located = locate(start, stop, rows)
        if not located.removed and not payloads:
            unchanged = SpliceResult(
                current, current, applied=False, removed=(), expires_at=expires
            )
            if erased:  # the expired thread's delete is a write of its own: it commits
                return unchanged
            raise _Unchanged(unchanged)
        removed = [row[3] for row in located.removed]
        if removed_as is not None:
            removed = checked_rewrite(removed_as, removed)  # raising rolls back
        version = current + max(1, len(payloads))
        places = keys_between(_key_of(located.before), _key_of(located.after), len(payloads))
        respaced: list[tuple[tuple[int, int], bytes]] = []
        anchor = needs_respace(places)
        if anchor is not None:
            gone = {row[0] for row in located.removed}
            run = [
                row
                for row in await connection.fetch(sql.RUN, namespace, thread_id, anchor)
                if row[0] not in gone
            ]
            before = None if located.before is None else located.before[2]
            fracs, new = respace([row[1] for row in run], before, len(payloads))
            respaced = [(row[2], frac) for row, frac in zip(run, fracs, strict=True)]
            places = [(anchor, frac) for frac in new]
        deleted = await connection.fetchrow(
            sql.SPLICE,
            namespace,
            thread_id,
            [row[0] for row in located.removed],
            current,
            [anchor for anchor, _ in places],
            [frac for _, frac in places],
            payloads,
            tokens,
            version,
            idempotency_key,
            digest,
            [row[4] for row in located.removed],
            retention,
            [row_id for row_id, _ in respaced],
            [frac for _, frac in respaced],
        )
        if deleted is None or (deleted[0], deleted[1]) != (len(located.removed),) * 2:
            raise StoreUnavailable(
                f"thread {thread_id!r} changed under a splice (another program updated its "
                "rows); nothing was written: retry",
                may_have_committed=False,
            )
        return SpliceResult(
            version,
            current,
            applied=True,
            removed=tuple(removed),
            expires_at=deleted[2],
        )

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
        check_fork(namespace, source_id, new_id, at_version)
        check_expiry(None, retention)
        arguments = (namespace, source_id, new_id, at_version, retention)
        try:
            if rewrite is None:
                async with self._connection(write=True) as connection:
                    version: int = await connection.fetchval(sql.FORK, *arguments)
            else:
                async with self._transaction() as connection:
                    version = await connection.fetchval(sql.FORK, *arguments)
                    await _rewrite_copy(connection, namespace, new_id, rewrite)
        except asyncpg.PostgresError as exc:
            numbers = [int(number) for number in str(exc.args[0]).split()]
            if exc.sqlstate == sql.FORK_VERSION_STATE:
                check_fork_version(source_id, at_version, *numbers)  # raises InvalidArgument
                raise AssertionError(f"fork refused at {numbers}") from None
            raise ThreadExists(new_id, version=numbers[0]) from None
        return version

    async def read(
        self, namespace: str, thread_id: str, *, after: int = 0, last: int | None = None
    ) -> ThreadRecords:
        check_read(namespace, thread_id, after, last)
        if last is None:
            rows = await self._query("fetch", sql.READ, namespace, thread_id, after)
        else:
            rows = await self._query("fetch", sql.READ_LAST, namespace, thread_id, after, last)
        if not rows:
            return ThreadRecords(0, (), (), ())
        version, expires = rows[0][0], rows[0][4]
        if rows[0][1] is None:
            return ThreadRecords(version, (), (), (), expires)
        return records_from_rows(version, [(row[1], row[2], row[3]) for row in rows], expires)

    async def version(self, namespace: str, thread_id: str) -> int:
        check_thread(namespace, thread_id)
        version: int | None = await self._query("fetchval", sql.VERSION, namespace, thread_id)
        return version or 0

    async def set_tokens(
        self, namespace: str, thread_id: str, key: str, counts: Mapping[int, int]
    ) -> int:
        check_set_tokens(namespace, thread_id, key, counts)
        if not counts:
            return 0
        async with self._connection(write=True) as connection:
            updated: int = await connection.fetchval(
                sql.SET_TOKENS, namespace, thread_id, key, list(counts), list(counts.values())
            )
        return updated

    async def delete(self, namespace: str, thread_id: str) -> int:
        check_thread(namespace, thread_id)
        async with self._connection(write=True) as connection:
            version: int = await connection.fetchval(sql.DELETE, namespace, thread_id)
        return version

    async def sweep_expired(
        self, namespace: str, *, limit: int = DEFAULT_EXPIRE_BATCH
    ) -> list[tuple[str, int]]:
        check_namespace(namespace)
        check_count("limit", limit, minimum=1)
        async with self._connection(write=True) as connection:
            rows = await connection.fetch(sql.SWEEP_EXPIRED, namespace, limit)
        return [(row[0], row[1]) for row in rows]

    async def purge_namespace(self, namespace: str) -> int:
        """Remove every row of ``namespace``: messages, idempotency keys and thread rows.

        IRREVERSIBLE, and only for a namespace that will never be used again (a benchmark's
        own, say): unlike `delete`, it keeps no thread row, so versions start again from 0
        and a cache that still holds the namespace's threads would not see them change.
        Not an external change: nothing is announced. Returns the number of threads removed.
        """
        check_namespace(namespace)
        async with self._connection(write=True) as connection, connection.transaction():
            # The flag agent-core's own functions set: the external-change trigger skips.
            await connection.execute(sql.INTERNAL_ON)
            for statement in sql.PURGE_ROWS:
                await connection.execute(statement, namespace)
            purged: str = await connection.execute(sql.PURGE_THREADS, namespace)
        return int(purged.rpartition(" ")[2])

    async def scan_payloads(
        self,
        namespace: str | None,
        *,
        after: tuple[str, str, int] | None = None,
        limit: int = DEFAULT_EXPIRE_BATCH,
        skip_prefix: bytes = b"",
    ) -> list[StoredPayload]:
        check_scan(namespace, after, limit, skip_prefix)
        start = after or (namespace or "", "", 0)
        query = sql.SCAN_PAYLOADS
        if namespace is not None:
            query, start = sql.SCAN_NAMESPACE_PAYLOADS, (namespace, *start[1:])
        try:
            prefix = skip_prefix.decode()
        except UnicodeDecodeError:  # no stored JSON text starts with it: none skipped
            prefix = ""
        rows = await self._query("fetch", query, *start, prefix, limit)
        return [StoredPayload(*row) for row in rows]

    async def replace_payloads(self, swaps: Sequence[tuple[StoredPayload, bytes]]) -> int:
        check_swaps(swaps)
        if not swaps:
            return 0
        rows = [row for row, _ in swaps]
        threads = sorted({(row.namespace, row.thread_id) for row in rows})
        async with self._transaction() as connection:
            await connection.execute(sql.INTERNAL_ON)  # not an external change
            await connection.execute(
                sql.LOCK_THREADS, [ns for ns, _ in threads], [tid for _, tid in threads]
            )
            status: str = await connection.execute(
                sql.SWAP_PAYLOADS,
                [row.namespace for row in rows],
                [row.thread_id for row in rows],
                [row.seq for row in rows],
                [row.payload for row in rows],
                [payload for _, payload in swaps],
            )
        return int(status.rpartition(" ")[2])

    async def list_threads(
        self,
        namespace: str,
        *,
        limit: int = 100,
        after: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ThreadPage:
        pairs = check_list(namespace, limit, after, metadata)
        query = sql.LIST
        arguments: list[object] = [namespace, after or ""]
        for key, value in pairs.items():
            query += sql.LIST_FILTER.format(key=len(arguments) + 1, value=len(arguments) + 2)
            arguments += [key, value]
        query += f" ORDER BY t.thread_id LIMIT ${len(arguments) + 1}"
        rows = await self._query("fetch", query, *arguments, limit + 1)
        return page_of([row[0] for row in rows], limit)

    async def thread_info(self, namespace: str, thread_id: str) -> ThreadInfo:
        check_thread(namespace, thread_id)
        return _thread_info(await self._query("fetchrow", sql.THREAD_INFO, namespace, thread_id))

    async def stored_bytes(self, namespace: str) -> int:
        check_namespace(namespace)
        return int(await self._query("fetchval", sql.STORED_BYTES, namespace))

    async def update_thread(
        self,
        namespace: str,
        thread_id: str,
        *,
        metadata: Mapping[str, str | None] | None = None,
        expires_at: float | None = None,
        retention: float | None = None,
    ) -> ThreadInfo:
        check_thread(namespace, thread_id)
        changes = {} if metadata is None else check_metadata(metadata, removals=True)
        check_expiry(expires_at, retention)
        removed = [key for key, value in changes.items() if value is None]
        kept = {key: value for key, value in changes.items() if value is not None}
        async with self._connection(write=True) as connection, connection.transaction():
            await connection.execute(sql.LOCK_THREAD, namespace, thread_id, expires_at, retention)
            if removed:  # each statement is a round trip: none for nothing to do
                await connection.execute(sql.REMOVE_METADATA, namespace, thread_id, removed)
            if kept:
                count = await connection.fetchval(
                    sql.SET_METADATA, namespace, thread_id, list(kept), list(kept.values())
                )
                # Counted in the table: the info below shows none if the thread expired.
                if count > MAX_METADATA_KEYS:
                    raise too_many_keys(thread_id, count)  # rolls back
            info = _thread_info(await connection.fetchrow(sql.THREAD_INFO, namespace, thread_id))
        return info

    async def expire_idempotency_keys(self, *, limit: int = DEFAULT_EXPIRE_BATCH) -> int:
        check_count("limit", limit, minimum=1)
        # Deleting what has expired is safe to repeat, so a lost connection is retried.
        status: str = await self._query(
            "execute", sql.EXPIRE_IDEMPOTENCY_KEYS, self.idempotency_ttl, limit
        )
        return int(status.rpartition(" ")[2])

    # -- external changes ------------------------------------------------------------

    async def watch(self, listener: ChangeListener) -> None:
        """Report rows that other programs write straight into the messages table."""
        if self._pool is None:
            raise CacheClosed(f"{self!r} is not open; use it inside 'async with'")
        self._listeners.append(listener)
        if self._watch_task is None:
            connection = await self._listen()
            self._watch_task = asyncio.get_running_loop().create_task(self._watch(connection))

    async def _listen(self) -> asyncpg.Connection:
        try:
            connection = await asyncpg.connect(self._dsn, timeout=self._command_timeout)
            await connection.add_listener(sql.CHANGES_CHANNEL, self._notified)
        except (*_CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            raise StoreUnavailable(f"cannot LISTEN on {self!r}: {self._redact(exc)}") from exc
        return connection

    async def _watch(self, connection: asyncpg.Connection | None) -> None:
        """Keep the LISTEN connection alive; a lost one means changes may be missed."""
        delay = 0.05
        while True:
            await asyncio.sleep(_WATCH_HEALTH_INTERVAL)
            try:
                if connection is None:
                    connection = await self._listen()
                    delay = 0.05
                    self._reset_listeners()
                async with asyncio.timeout(_WATCH_HEALTH_INTERVAL):
                    await connection.execute("SELECT 1")
            except (StoreUnavailable, *_CONNECTION_ERRORS, asyncpg.PostgresError):
                raise_if_cancelling()
                if connection is not None:
                    connection.terminate()
                    connection = None
                    self._reset_listeners()
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)

    def _reset_listeners(self) -> None:
        for listener in self._listeners:
            listener.reset()

    def _notified(self, _connection: object, _pid: int, _channel: str, payload: object) -> None:
        try:
            change = _decode_change(str(payload))
        except msgspec.DecodeError:
            return
        for listener in self._listeners:
            listener.changed(change.namespace, change.thread_id, change.version)


class _Unchanged(Exception):
    """A splice that writes nothing: its transaction rolls back, and this is the answer."""

    def __init__(self, result: SpliceResult) -> None:
        super().__init__(result)
        self.result = result


# (seq, place's anchor, frac, payload, ctid), as splice_begin reads them.
_Placed = tuple[int, int, bytes, bytes, tuple[int, int]]
# splice_begin's header: version, prior use of the key (version, digest), row count,
# the thread's expiry (seconds since the epoch) and whether it was erased (expired).
_Header = tuple[int, int | None, bytes | None, int | None, float | None, bool]


async def _rewrite_copy(
    connection: _Connection, namespace: str, new_id: str, rewrite: Rewrite
) -> None:
    """A fork's copy, just made in this transaction, rewritten (not an external change)."""
    rows = await connection.fetch(sql.FORKED_ROWS, namespace, new_id)
    payloads = [row[1] for row in rows]
    if sum(map(len, payloads)) > _REWRITE_INLINE_BYTES:
        rewritten = await asyncio.to_thread(checked_rewrite, rewrite, payloads)
    else:
        rewritten = checked_rewrite(rewrite, payloads)
    await connection.execute(sql.INTERNAL_ON)
    await connection.execute(
        sql.REWRITE_ROWS, namespace, new_id, [row[0] for row in rows], rewritten
    )


#: A fork's rewrite of more payload bytes than this runs in a worker thread.
_REWRITE_INLINE_BYTES: Final = 256 << 10


def _fetch_args(fetch: Fetch | None) -> tuple[bool | None, int, int | None]:
    """splice_begin's last three arguments: the row count first for None."""
    if fetch is None:
        return None, 0, None
    return fetch.from_end, fetch.offset, fetch.limit


def _split(rows: list[asyncpg.Record]) -> tuple[_Header, list[_Placed]]:
    header = rows[0]
    return (header[0], header[1], header[2], header[3], header[4], header[5]), [
        (row[6], row[7], row[8], row[9], row[10]) for row in rows[1:]
    ]


def _key_of(row: _Placed | None) -> tuple[int, bytes] | None:
    return None if row is None else (row[1], row[2])


def _connection_lost(exc: BaseException | None) -> bool:
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc.sqlstate)[:2] in _LOST_STATES
    return isinstance(exc, _CONNECTION_ERRORS)


class _Change(msgspec.Struct):
    namespace: str
    thread_id: str
    version: int


_decode_change = msgspec.json.Decoder(_Change).decode


def _thread_info(row: asyncpg.Record | None) -> ThreadInfo:
    if row is None:
        return ThreadInfo(0, 0, None, None, {})
    version, created_at, updated_at, count, keys, values, expires_at = row
    metadata = MappingProxyType(dict(zip(keys, values, strict=True)))
    return ThreadInfo(version, count, created_at, updated_at, metadata, expires_at)


#: How long close() waits for pooled connections to come back before it closes them by force.
_CLOSE_SECONDS: Final = 5.0


async def _close_pool(pool: asyncpg.Pool) -> None:
    """Close gracefully, within `_CLOSE_SECONDS`, else by force. A connection that a
    cancelled call never gave back would hold ``pool.close()`` forever, and with it
    any transaction it left open (and the rows another writer then waits for)."""
    try:
        async with asyncio.timeout(_CLOSE_SECONDS):
            await pool.close()
    except TimeoutError:
        log.warning("PostgreSQL connections not released in %s s: closed by force", _CLOSE_SECONDS)
        pool.terminate()
    except BaseException:  # cancelled while closing: leave nothing open behind
        pool.terminate()
        raise


_WATCH_HEALTH_INTERVAL: Final = 1.0


async def _init_connection(connection: asyncpg.Connection) -> None:
    # In binary format a json value is its UTF-8 text, and a jsonb value that text
    # after a version byte: bytes in, bytes out.
    await connection.set_type_codec(
        "json", schema="pg_catalog", encoder=_same, decoder=_same, format="binary"
    )
    await connection.set_type_codec(
        "jsonb", schema="pg_catalog", encoder=_to_jsonb, decoder=_from_jsonb, format="binary"
    )


async def _keep_session(connection: _Connection) -> None:
    """Skip asyncpg's reset query on release: a round trip per call, for session state
    (locks, cursors, LISTEN, settings) that the store never leaves behind."""


def _same(value: bytes) -> bytes:
    return value


_JSONB_VERSION: Final = b"\x01"


def _to_jsonb(value: bytes) -> bytes:
    return _JSONB_VERSION + value


def _from_jsonb(value: bytes) -> bytes:
    return value[1:]


async def _migrate(connection: _Connection) -> None:
    encoding = await connection.fetchval("SHOW server_encoding")
    if encoding != "UTF8":
        raise ConfigurationError(
            f"the database's encoding is {encoding}; agent-core needs a UTF8 database"
        )
    async with connection.transaction():
        # Serializes concurrent first starts on an empty database.
        await connection.execute("SELECT pg_advisory_xact_lock($1)", sql.MIGRATION_LOCK)
        await connection.execute(sql.CREATE_SCHEMA)
        current: int = await connection.fetchval(sql.CURRENT_VERSION)
        if current > sql.SCHEMA_VERSION:
            raise ConfigurationError(
                f"the database has agent-core schema version {current}, newer than this "
                f"agent-core ({sql.SCHEMA_VERSION}); upgrade agent-core"
            )
        for version, script in enumerate(sql.MIGRATIONS[current:], current + 1):
            await connection.execute(script)
            await connection.execute(sql.RECORD_VERSION, version)
