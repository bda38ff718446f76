"""The embedded default store: one SQLite file in WAL mode.

Every SQLite call runs on a worker thread, never on the event loop. Writes go to a
single writer thread and each whole transaction is one hop to it; reads use a few
reader threads with their own connections, which WAL lets run beside the writer.
Appends use ``BEGIN IMMEDIATE``, which takes the database's write lock, so writers
in other processes are serialized by SQLite itself.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Final, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from .._quote import quote
from .._tasks import cancel_and_wait
from .._urls import show_url
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
from ._order import (
    Located,
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

__all__ = ["SQLiteStore"]

_T = TypeVar("_T")

_NOW: Final = "((julianday('now') - 2440587.5) * 86400.0)"


def _bump(row: str, *, rewrites: bool = True) -> str:
    """A trigger's body: another program changed ``row``; from migration 7 on, it also
    marks the history before as rewritten (a fork can't rebuild it)."""
    rewritten = ", rewritten_at = version + 1" if rewrites else ""
    return f"""
            UPDATE threads SET version = version + 1{rewritten}, updated_at = {_NOW}
            WHERE namespace = {row}.namespace AND thread_id = {row}.thread_id;
            INSERT INTO changes (namespace, thread_id, version, created_at)
            SELECT namespace, thread_id, version, {_NOW} FROM threads
            WHERE namespace = {row}.namespace AND thread_id = {row}.thread_id;"""


def _rewrite_triggers(*, rewrites: bool) -> tuple[str, str]:
    return (
        f"""CREATE TRIGGER messages_external_delete AFTER DELETE ON messages
        WHEN OLD.seq > coalesce((SELECT cleared_through FROM threads
            WHERE namespace = OLD.namespace AND thread_id = OLD.thread_id), 0)
        BEGIN
            {_bump("OLD", rewrites=rewrites)}
        END""",
        _update_trigger(rewrites=rewrites, quiet=False),
    )


def _update_trigger(*, rewrites: bool, quiet: bool) -> str:
    """The update trigger; from migration 9 on, quiet for rows at or below the thread's
    cleared_through, as the delete trigger is (our own re-encryption raises it)."""
    when = (
        """
        WHEN NEW.seq > coalesce((SELECT cleared_through FROM threads
            WHERE namespace = NEW.namespace AND thread_id = NEW.thread_id), 0)"""
        if quiet
        else ""
    )
    return f"""CREATE TRIGGER messages_external_update AFTER UPDATE OF payload ON messages{when}
        BEGIN
            {_bump("NEW", rewrites=rewrites)}
        END"""


# A splice's own deletes: above every seq, so the delete trigger stays quiet.
_QUIET: Final = 2**63 - 1
# A message's place in its thread (store/_order.py): NULL anchor = its seq.
_ORDER: Final = "coalesce(anchor, seq), frac"
_BACKWARDS: Final = "coalesce(anchor, seq) DESC, frac DESC"
# Each entry moves the schema one version up; PRAGMA user_version records where a file is.
_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE threads (
            namespace TEXT NOT NULL,
            thread_id TEXT NOT NULL,
            version INTEGER NOT NULL,
            cleared_through INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (namespace, thread_id)
        ) WITHOUT ROWID""",
        """CREATE TABLE messages (
            namespace TEXT NOT NULL,
            thread_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            payload TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (namespace, thread_id, seq)
        )""",
        """CREATE TABLE idempotency_keys (
            namespace TEXT NOT NULL,
            thread_id TEXT NOT NULL,
            key TEXT NOT NULL,
            version INTEGER NOT NULL,
            digest BLOB NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (namespace, thread_id, key)
        ) WITHOUT ROWID""",
    ),
    # External change detection: rows that another program writes straight into
    # `messages` move the thread's version and are logged in `changes`, which the
    # watcher reads when `PRAGMA data_version` says another connection committed.
    # Our own writes move the thread row first, so the triggers' conditions skip them.
    (
        """CREATE TABLE changes (
            id INTEGER PRIMARY KEY,
            namespace TEXT NOT NULL,
            thread_id TEXT NOT NULL,
            version INTEGER NOT NULL,
            created_at REAL NOT NULL
        )""",
        f"""CREATE TRIGGER messages_external_insert AFTER INSERT ON messages
        WHEN NEW.seq > coalesce((SELECT version FROM threads
            WHERE namespace = NEW.namespace AND thread_id = NEW.thread_id), 0)
        BEGIN
            INSERT INTO threads (namespace, thread_id, version, created_at, updated_at)
            VALUES (NEW.namespace, NEW.thread_id, NEW.seq, {_NOW}, {_NOW})
            ON CONFLICT (namespace, thread_id)
            DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at;
            INSERT INTO changes (namespace, thread_id, version, created_at)
            VALUES (NEW.namespace, NEW.thread_id, NEW.seq, {_NOW});
        END""",
        *_rewrite_triggers(rewrites=False),
    ),
    # Per-message token counts, a JSON object by encoding name. The update trigger
    # above watches `payload` only, so recording counts is not an external change.
    ("ALTER TABLE messages ADD COLUMN tokens TEXT",),
    # The database's random identity, made once: caches key shared entries by it, so a
    # recreated file (or another one) never sees the entries of the one before.
    (
        "CREATE TABLE identity (id TEXT NOT NULL)",
        "INSERT INTO identity (id) VALUES (lower(hex(randomblob(16))))",
    ),
    # Idempotency keys expire (idempotency_ttl): the sweep finds the oldest first.
    ("CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at)",),
    # Thread metadata, a small string map per thread; the index serves list filters.
    (
        """CREATE TABLE thread_metadata (
            namespace TEXT NOT NULL,
            thread_id TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (namespace, thread_id, key)
        ) WITHOUT ROWID""",
        "CREATE INDEX thread_metadata_lookup ON thread_metadata (namespace, key, value, thread_id)",
    ),
    # Splices: a message's place is its order key (anchor, frac), so rows can be put
    # between others without renumbering any (store/_order.py); `rewritten_at` is the
    # last version that rewrote history, before which a fork can't rebuild the thread.
    (
        "ALTER TABLE messages ADD COLUMN anchor INTEGER",
        "ALTER TABLE messages ADD COLUMN frac BLOB NOT NULL DEFAULT x''",
        f"CREATE INDEX messages_order ON messages (namespace, thread_id, {_ORDER})",
        "ALTER TABLE threads ADD COLUMN rewritten_at INTEGER NOT NULL DEFAULT 0",
        "UPDATE threads SET rewritten_at = cleared_through",
        "DROP TRIGGER messages_external_delete",
        "DROP TRIGGER messages_external_update",
        *_rewrite_triggers(rewrites=True),
    ),
    # Retention: a thread reads as deleted once expires_at (seconds since the epoch)
    # has passed; the sweep finds a namespace's expired threads by the index.
    (
        "ALTER TABLE threads ADD COLUMN expires_at REAL",
        "CREATE INDEX threads_expiry ON threads (namespace, expires_at)"
        " WHERE expires_at IS NOT NULL",
    ),
    # Encryption at rest: re-encrypting a row (`replace_payloads`) updates its payload
    # with the same message; like our own deletes, it raises cleared_through meanwhile,
    # which the update trigger now heeds too (at rest every row is above it).
    (
        "DROP TRIGGER messages_external_update",
        _update_trigger(rewrites=True, quiet=True),
    ),
)
SCHEMA_VERSION: Final = len(_MIGRATIONS)
_SYNCHRONOUS: Final = ("full", "normal")
_CHANGES_KEPT: Final = 3600.0
_WATCH_INTERVAL: Final = 0.02


class SQLiteStore:
    """A `ThreadStore` in one SQLite file (``sqlite:///path/to/file.db``)."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "full",
        busy_timeout_ms: int = 30_000,
        readers: int = 2,
        idempotency_ttl: float = DEFAULT_IDEMPOTENCY_TTL,
    ) -> None:
        if str(path) in ("", ":memory:") or str(path).startswith("file:"):
            raise ConfigurationError(
                f"SQLiteStore needs a file path, got {str(path)!r}: in-memory databases are not "
                "shared between connections; use a file in a temporary directory instead"
            )
        if synchronous not in _SYNCHRONOUS:
            raise ConfigurationError(
                f"synchronous must be one of {', '.join(_SYNCHRONOUS)}, got {quote(synchronous)}"
            )
        if not isinstance(busy_timeout_ms, int) or busy_timeout_ms < 0:
            raise ConfigurationError(
                f"busy_timeout_ms must be an int >= 0, got {quote(busy_timeout_ms)}"
            )
        if not isinstance(readers, int) or not 1 <= readers <= 64:
            raise ConfigurationError(f"readers must be an int from 1 to 64, got {quote(readers)}")
        self.idempotency_ttl = check_seconds(
            "idempotency_ttl", idempotency_ttl, error=ConfigurationError
        )
        self.path = Path(path)
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._reader_count = readers
        self._writer_pool: ThreadPoolExecutor | None = None
        self._reader_pool: ThreadPoolExecutor | None = None
        self._writer: sqlite3.Connection | None = None
        self._fingerprint = ""
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._watch_pool: ThreadPoolExecutor | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._watchers: list[ChangeListener] = []

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        """``sqlite:///relative.db``, ``sqlite:////absolute.db``; options as query params."""
        parts = urlsplit(url)
        if parts.scheme != "sqlite" or parts.netloc or not parts.path.startswith("/"):
            raise ConfigurationError(
                f"not a SQLite URL: {show_url(url)}; use sqlite:///relative/path.db "
                "or sqlite:////absolute/path.db"
            )
        options = dict(parse_qsl(parts.query, strict_parsing=False))
        unknown = set(options) - {"synchronous", "busy_timeout_ms", "readers", "idempotency_ttl"}
        if unknown:
            raise ConfigurationError(
                f"unknown SQLite URL option(s) {sorted(unknown)}; "
                "known: synchronous, busy_timeout_ms, readers, idempotency_ttl"
            )
        try:
            return cls(
                unquote(parts.path[1:]),
                synchronous=options.get("synchronous", "full"),
                busy_timeout_ms=int(options.get("busy_timeout_ms", 30_000)),
                readers=int(options.get("readers", 2)),
                idempotency_ttl=float(options.get("idempotency_ttl", DEFAULT_IDEMPOTENCY_TTL)),
            )
        except ValueError as exc:
            if isinstance(exc, ConfigurationError):
                raise
            raise ConfigurationError(f"bad option in SQLite URL {show_url(url)}: {exc}") from None

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        if self._writer_pool is not None:
            return
        if not self.path.parent.is_dir():
            raise ConfigurationError(
                f"directory {str(self.path.parent)!r} for SQLite file {str(self.path)!r} "
                "does not exist; create it first"
            )
        self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix="agent-core-sqlite-w")
        self._reader_pool = ThreadPoolExecutor(
            self._reader_count, thread_name_prefix="agent-core-sqlite-r"
        )
        try:
            await self._on_writer(self._open_writer)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        task, self._watch_task = self._watch_task, None
        await cancel_and_wait(task)
        self._watchers.clear()
        pools = [p for p in (self._writer_pool, self._reader_pool, self._watch_pool) if p]
        self._writer_pool = self._reader_pool = self._watch_pool = None
        for pool in pools:
            await asyncio.to_thread(pool.shutdown, wait=True)
        with self._connections_lock:
            connections, self._connections = self._connections, []
        # Off the loop: the last connection to close checkpoints the WAL, with an fsync.
        await asyncio.to_thread(_close_all, connections)
        self._writer = None

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=False,
            timeout=self._busy_timeout_ms / 1000,
        )
        connection.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        connection.execute(f"PRAGMA synchronous = {self._synchronous}")
        # Deleted content is overwritten with zeros, not left in free space: a deleted
        # thread's text leaves the file (and, once checkpointed, the WAL).
        connection.execute("PRAGMA secure_delete = ON")
        with self._connections_lock:
            self._connections.append(connection)
        return connection

    def _open_writer(self) -> None:
        connection = self._connect()
        # Switching to WAL needs a moment of exclusive access, which a process that
        # starts beside others may not get at once; the busy handler does not cover it.
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        while True:
            try:
                mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        if mode != "wal":
            raise ConfigurationError(f"SQLite file {str(self.path)!r} cannot use WAL mode")
        _migrate(connection)
        identity = connection.execute("SELECT id FROM identity").fetchone()[0]
        self._fingerprint = fingerprint_of(identity)
        with _immediate_transaction(connection):
            connection.execute(
                "DELETE FROM changes WHERE created_at < ?", (time.time() - _CHANGES_KEPT,)
            )
        self._writer = connection

    # -- threads ---------------------------------------------------------------------

    async def _on_writer(self, function: Callable[..., _T], *args: object) -> _T:
        return await self._run(self._writer_pool, function, *args)

    async def _on_reader(self, function: Callable[..., _T], *args: object) -> _T:
        return await self._run(self._reader_pool, function, *args)

    async def _run(
        self, pool: ThreadPoolExecutor | None, function: Callable[..., _T], *args: object
    ) -> _T:
        if pool is None:
            raise CacheClosed(f"{self!r} is not open; use it inside 'async with'")
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, function, *args)
        except sqlite3.Error as exc:
            raise StoreUnavailable(
                f"SQLite store {str(self.path)!r} failed ({type(exc).__name__}: {exc}); "
                "nothing was written: retry",
                may_have_committed=False,
            ) from exc
        except RuntimeError as exc:  # the pool was shut down under us
            if "shutdown" not in str(exc):
                raise
            raise CacheClosed(f"{self!r} was closed during the call") from None

    def _reader(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._connect()
            connection.execute("PRAGMA query_only = 1")
            self._local.connection = connection
        return connection

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
            digest = b""
        elif digest is None:
            digest = batch_digest(payloads)
        return await self._on_writer(
            self._append,
            namespace,
            thread_id,
            payloads,
            (None,) * len(payloads) if tokens is None else tokens,
            expected_version,
            idempotency_key,
            digest,
            retention,
        )

    def _append(
        self,
        namespace: str,
        thread_id: str,
        payloads: Sequence[bytes],
        tokens: Sequence[bytes | None],
        expected_version: int | None,
        idempotency_key: str | None,
        digest: bytes,
        retention: float | None,
    ) -> AppendResult:
        connection = self._writer
        assert connection is not None
        key = (namespace, thread_id)
        with _immediate_transaction(connection):
            now = time.time()
            current, _, expires = _live(connection, key, now)
            prior = self._prior(connection, namespace, thread_id, idempotency_key, digest, now)
            if prior is not None:
                return AppendResult(prior, applied=False, expires_at=expires)
            if expected_version is not None and expected_version != current:
                raise VersionConflict(thread_id, expected=expected_version, actual=current)
            version = current + len(payloads)
            # The thread row moves first, so the external-change trigger sees these
            # rows as already accounted for.
            connection.execute(
                "INSERT INTO threads (namespace, thread_id, version, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (namespace, thread_id)"
                " DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
                (namespace, thread_id, version, now, now),
            )
            connection.executemany(
                "INSERT INTO messages (namespace, thread_id, seq, payload, tokens, created_at)"
                " VALUES (?, ?, ?, CAST(? AS TEXT), CAST(? AS TEXT), ?)",
                [
                    (namespace, thread_id, seq, payload, counts, now)
                    for seq, (payload, counts) in enumerate(
                        zip(payloads, tokens, strict=True), current + 1
                    )
                ],
            )
            _remember(connection, namespace, thread_id, idempotency_key, version, digest, now)
            expires = _touch(connection, key, expires, retention, now)
        return AppendResult(version, applied=True, expires_at=expires)

    def _prior(
        self,
        connection: sqlite3.Connection,
        namespace: str,
        thread_id: str,
        key: str | None,
        digest: bytes,
        now: float,
    ) -> int | None:
        """The version an unexpired use of ``key`` produced, if any; raises
        `IdempotencyKeyReused` if that use carried another operation."""
        if key is None:
            return None
        prior = connection.execute(
            "SELECT version, digest FROM idempotency_keys"
            " WHERE namespace = ? AND thread_id = ? AND key = ? AND created_at > ?",
            (namespace, thread_id, key, now - self.idempotency_ttl),
        ).fetchone()
        if prior is None:
            return None
        if prior[1] != digest:
            raise IdempotencyKeyReused(thread_id, key, version=prior[0])
        return int(prior[0])

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
            digest = b""
        elif digest is None:
            digest = splice_digest(start, stop, payloads)
        return await self._on_writer(
            self._splice,
            namespace,
            thread_id,
            (start, stop),
            payloads,
            (None,) * len(payloads) if tokens is None else tokens,
            expected_version,
            idempotency_key,
            digest,
            retention,
            removed_as,
        )

    def _splice(
        self,
        namespace: str,
        thread_id: str,
        bounds: tuple[int | None, int | None],
        payloads: Sequence[bytes],
        tokens: Sequence[bytes | None],
        expected_version: int | None,
        idempotency_key: str | None,
        digest: bytes,
        retention: float | None,
        removed_as: Rewrite | None,
    ) -> SpliceResult:
        connection = self._writer
        assert connection is not None
        key = (namespace, thread_id)
        with _immediate_transaction(connection):
            now = time.time()
            current, cleared, expires = _live(connection, key, now)
            prior = self._prior(connection, namespace, thread_id, idempotency_key, digest, now)
            if prior is not None:
                return SpliceResult(prior, prior, applied=False, removed=(), expires_at=expires)
            if expected_version is not None and expected_version != current:
                raise VersionConflict(thread_id, expected=expected_version, actual=current)
            located = _locate(connection, key, *bounds)
            if not located.removed and not payloads:
                return SpliceResult(current, current, applied=False, removed=(), expires_at=expires)
            removed = [row[3] for row in located.removed]
            if removed_as is not None:
                removed = checked_rewrite(removed_as, removed)  # raising rolls back
            version = current + max(1, len(payloads))
            # The thread row moves first (the insert trigger sees the new rows as ours);
            # cleared_through is raised meanwhile, so the delete trigger stays quiet.
            connection.execute(
                "INSERT INTO threads (namespace, thread_id, version, cleared_through,"
                " rewritten_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (namespace, thread_id) DO UPDATE SET version = excluded.version,"
                " cleared_through = excluded.cleared_through,"
                " rewritten_at = excluded.rewritten_at, updated_at = excluded.updated_at",
                (*key, version, _QUIET, version, now, now),
            )
            connection.executemany(
                "DELETE FROM messages WHERE namespace = ? AND thread_id = ? AND seq = ?",
                [(*key, removed[0]) for removed in located.removed],
            )
            places = keys_between(_key_of(located.before), _key_of(located.after), len(payloads))
            anchor = needs_respace(places)
            if anchor is not None:
                places = _respace(connection, key, anchor, located.before, len(payloads))
            connection.executemany(
                "INSERT INTO messages (namespace, thread_id, seq, anchor, frac, payload, tokens,"
                " created_at) VALUES (?, ?, ?, ?, ?, CAST(? AS TEXT), CAST(? AS TEXT), ?)",
                [
                    (*key, seq, anchor, frac, payload, counts, now)
                    for seq, ((anchor, frac), payload, counts) in enumerate(
                        zip(places, payloads, tokens, strict=True), current + 1
                    )
                ],
            )
            connection.execute(
                "UPDATE threads SET cleared_through = ? WHERE namespace = ? AND thread_id = ?",
                (cleared, *key),
            )
            _remember(connection, namespace, thread_id, idempotency_key, version, digest, now)
            expires = _touch(connection, key, expires, retention, now)
        return SpliceResult(
            version,
            current,
            applied=True,
            removed=tuple(removed),
            expires_at=expires,
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
        return await self._on_writer(
            self._fork, namespace, source_id, new_id, at_version, retention, rewrite
        )

    def _fork(
        self,
        namespace: str,
        source_id: str,
        new_id: str,
        at_version: int | None,
        retention: float | None,
        rewrite: Rewrite | None,
    ) -> int:
        connection = self._writer
        assert connection is not None
        with _immediate_transaction(connection):
            now = time.time()
            _live(connection, (namespace, source_id), now)
            target_version = _live(connection, (namespace, new_id), now)[0]
            source = connection.execute(
                "SELECT version, rewritten_at FROM threads WHERE namespace = ? AND thread_id = ?",
                (namespace, source_id),
            ).fetchone()
            at = check_fork_version(source_id, at_version, *(source or (0, 0)))
            holds = connection.execute(
                "SELECT EXISTS (SELECT 1 FROM messages WHERE namespace = ? AND thread_id = ?)",
                (namespace, new_id),
            ).fetchone()[0]
            if holds:
                raise ThreadExists(new_id, version=target_version)
            version = max(at, target_version + 1)
            connection.execute(
                "INSERT INTO threads (namespace, thread_id, version, cleared_through,"
                " rewritten_at, expires_at, created_at, updated_at)"
                " VALUES (?, ?, ?, 0, ?, ?, ?, ?)"
                " ON CONFLICT (namespace, thread_id) DO UPDATE SET version = excluded.version,"
                " cleared_through = 0, rewritten_at = excluded.rewritten_at,"
                " expires_at = excluded.expires_at, updated_at = excluded.updated_at",
                (
                    namespace,
                    new_id,
                    version,
                    version,
                    None if retention is None else now + retention,
                    now,
                    now,
                ),
            )
            if rewrite is None:
                connection.execute(
                    "INSERT INTO messages (namespace, thread_id, seq, anchor, frac, payload,"
                    " tokens, created_at) SELECT namespace, ?, seq, anchor, frac, payload,"
                    " tokens, ? FROM messages WHERE namespace = ? AND thread_id = ? AND seq <= ?",
                    (new_id, now, namespace, source_id, at),
                )
            else:
                _copy_rewritten(connection, (namespace, source_id, new_id), at, rewrite, now)
            for table in ("thread_metadata", "idempotency_keys"):
                connection.execute(
                    f"DELETE FROM {table} WHERE namespace = ? AND thread_id = ?",
                    (namespace, new_id),
                )
            connection.execute(
                "INSERT INTO thread_metadata (namespace, thread_id, key, value)"
                " SELECT namespace, ?, key, value FROM thread_metadata"
                " WHERE namespace = ? AND thread_id = ?",
                (new_id, namespace, source_id),
            )
        return version

    async def read(
        self, namespace: str, thread_id: str, *, after: int = 0, last: int | None = None
    ) -> ThreadRecords:
        check_read(namespace, thread_id, after, last)
        return await self._on_reader(self._read, namespace, thread_id, after, last)

    def _read(self, namespace: str, thread_id: str, after: int, last: int | None) -> ThreadRecords:
        connection = self._reader()
        # One read transaction: the version and the rows come from the same snapshot.
        connection.execute("BEGIN")
        try:
            row = connection.execute(
                "SELECT version, expires_at FROM threads WHERE namespace = ? AND thread_id = ?",
                (namespace, thread_id),
            ).fetchone()
            if row is None:
                return ThreadRecords(0, (), (), ())
            if _expired(row[1]):
                return ThreadRecords(row[0] + 1, (), (), ())
            if last is None:
                rows = connection.execute(
                    "SELECT seq, CAST(payload AS BLOB), CAST(tokens AS BLOB) FROM messages"
                    f" WHERE namespace = ? AND thread_id = ? AND seq > ? ORDER BY {_ORDER}",
                    (namespace, thread_id, after),
                ).fetchall()
            else:
                rows = connection.execute(
                    "SELECT seq, CAST(payload AS BLOB), CAST(tokens AS BLOB) FROM messages"
                    f" WHERE namespace = ? AND thread_id = ? AND seq > ? ORDER BY {_BACKWARDS}"
                    " LIMIT ?",
                    (namespace, thread_id, after, last),
                ).fetchall()
                rows.reverse()
        finally:
            connection.execute("COMMIT")
        return records_from_rows(row[0], rows, row[1])

    async def version(self, namespace: str, thread_id: str) -> int:
        check_thread(namespace, thread_id)
        return await self._on_reader(self._version, namespace, thread_id)

    def _version(self, namespace: str, thread_id: str) -> int:
        row = (
            self._reader()
            .execute(
                "SELECT version, expires_at FROM threads WHERE namespace = ? AND thread_id = ?",
                (namespace, thread_id),
            )
            .fetchone()
        )
        if row is None:
            return 0
        return int(row[0]) + 1 if _expired(row[1]) else int(row[0])

    async def set_tokens(
        self, namespace: str, thread_id: str, key: str, counts: Mapping[int, int]
    ) -> int:
        check_set_tokens(namespace, thread_id, key, counts)
        if not counts:
            return 0
        # The key is checked to [a-z0-9._-], so quoting it makes a safe JSON path.
        path = f'$."{key}"'
        rows = [(path, count, namespace, thread_id, seq) for seq, count in counts.items()]
        return await self._on_writer(self._set_tokens, rows)

    def _set_tokens(self, rows: list[tuple[str, int, str, str, int]]) -> int:
        connection = self._writer
        assert connection is not None
        with _immediate_transaction(connection):
            # Merged in SQL, so counts stored under other keys meanwhile are kept;
            # anything but a JSON object (written by another program) starts afresh.
            cursor = connection.executemany(
                "UPDATE messages SET tokens = json_set(CASE WHEN NOT json_valid(tokens) THEN '{}'"
                " WHEN json_type(tokens) = 'object' THEN tokens ELSE '{}' END, ?, ?)"
                " WHERE namespace = ? AND thread_id = ? AND seq = ?",
                rows,
            )
        return cursor.rowcount

    async def delete(self, namespace: str, thread_id: str) -> int:
        check_thread(namespace, thread_id)
        return await self._on_writer(self._delete, namespace, thread_id)

    def _delete(self, namespace: str, thread_id: str) -> int:
        connection = self._writer
        assert connection is not None
        key = (namespace, thread_id)
        with _immediate_transaction(connection):
            now = time.time()
            version, cleared_through, expires = _live(connection, key, now)
            holds_more = connection.execute(
                "SELECT EXISTS (SELECT 1 FROM thread_metadata WHERE namespace = ?"
                " AND thread_id = ?)",
                key,
            ).fetchone()[0]
            if version == cleared_through and not holds_more and expires is None:
                return version  # nothing to delete: a new id, or deleted already
            return _erase(connection, key, version, now)

    async def sweep_expired(
        self, namespace: str, *, limit: int = DEFAULT_EXPIRE_BATCH
    ) -> list[tuple[str, int]]:
        check_namespace(namespace)
        check_count("limit", limit, minimum=1)
        return await self._on_writer(self._sweep_expired, namespace, limit)

    def _sweep_expired(self, namespace: str, limit: int) -> list[tuple[str, int]]:
        connection = self._writer
        assert connection is not None
        with _immediate_transaction(connection):
            now = time.time()
            rows = connection.execute(
                "SELECT thread_id, version FROM threads WHERE namespace = ?"
                " AND expires_at IS NOT NULL AND expires_at <= ? ORDER BY expires_at LIMIT ?",
                (namespace, now, limit),
            ).fetchall()
            return [
                (thread_id, _erase(connection, (namespace, thread_id), version, now))
                for thread_id, version in rows
            ]

    async def purge_namespace(self, namespace: str) -> int:
        """Remove every row of ``namespace``: messages, idempotency keys and thread rows.

        IRREVERSIBLE, and only for a namespace that will never be used again (a benchmark's
        own, say): unlike `delete`, it keeps no thread row, so versions start again from 0
        and a cache that still holds the namespace's threads would not see them change.
        Not an external change: nothing is announced. Returns the number of threads removed.
        """
        check_namespace(namespace)
        return await self._on_writer(self._purge_namespace, namespace)

    def _purge_namespace(self, namespace: str) -> int:
        connection = self._writer
        assert connection is not None
        key = (namespace,)
        with _immediate_transaction(connection):
            # Clearing through each version first keeps the delete trigger quiet: it only
            # reports deleted rows above cleared_through.
            connection.execute(
                "UPDATE threads SET cleared_through = version WHERE namespace = ?", key
            )
            connection.execute("DELETE FROM messages WHERE namespace = ?", key)
            connection.execute("DELETE FROM idempotency_keys WHERE namespace = ?", key)
            connection.execute("DELETE FROM thread_metadata WHERE namespace = ?", key)
            connection.execute("DELETE FROM changes WHERE namespace = ?", key)
            return connection.execute("DELETE FROM threads WHERE namespace = ?", key).rowcount

    async def expire_idempotency_keys(self, *, limit: int = DEFAULT_EXPIRE_BATCH) -> int:
        check_count("limit", limit, minimum=1)
        return await self._on_writer(
            self._expire_idempotency_keys, time.time() - self.idempotency_ttl, limit
        )

    def _expire_idempotency_keys(self, before: float, limit: int) -> int:
        connection = self._writer
        assert connection is not None
        with _immediate_transaction(connection):
            return connection.execute(
                "DELETE FROM idempotency_keys WHERE (namespace, thread_id, key) IN"
                " (SELECT namespace, thread_id, key FROM idempotency_keys"
                "  WHERE created_at <= ? ORDER BY created_at LIMIT ?)",
                (before, limit),
            ).rowcount

    async def list_threads(
        self,
        namespace: str,
        *,
        limit: int = 100,
        after: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ThreadPage:
        pairs = check_list(namespace, limit, after, metadata)
        rows = await self._on_reader(self._list_threads, namespace, limit, after, pairs)
        return page_of(rows, limit)

    def _list_threads(
        self, namespace: str, limit: int, after: str | None, pairs: dict[str, str]
    ) -> list[str]:
        now = time.time()
        if not pairs:
            query = (
                "SELECT t.thread_id FROM threads t WHERE t.namespace = ? AND t.thread_id > ?"
                " AND (t.expires_at IS NULL OR t.expires_at > ?)"
                " AND (t.version > t.cleared_through OR EXISTS (SELECT 1 FROM thread_metadata m"
                " WHERE m.namespace = t.namespace AND m.thread_id = t.thread_id))"
                " ORDER BY t.thread_id LIMIT ?"
            )
            arguments: list[object] = [namespace, after or "", now, limit + 1]
        else:
            # Driven by the first pair's stretch of the metadata index, which is in id
            # order (CROSS JOIN keeps SQLite from scanning the namespace's threads).
            (key, value), *others = pairs.items()
            query = (
                "SELECT m.thread_id FROM thread_metadata m CROSS JOIN threads t"
                " ON t.namespace = m.namespace AND t.thread_id = m.thread_id"
                " WHERE m.namespace = ? AND m.key = ? AND m.value = ? AND m.thread_id > ?"
                " AND (t.expires_at IS NULL OR t.expires_at > ?)"
            )
            arguments = [namespace, key, value, after or "", now]
            for key, value in others:
                query += (
                    " AND EXISTS (SELECT 1 FROM thread_metadata o WHERE o.namespace = ?"
                    " AND o.thread_id = m.thread_id AND o.key = ? AND o.value = ?)"
                )
                arguments += [namespace, key, value]
            query += " ORDER BY m.thread_id LIMIT ?"
            arguments.append(limit + 1)
        rows = self._reader().execute(query, arguments).fetchall()
        return [row[0] for row in rows]

    async def thread_info(self, namespace: str, thread_id: str) -> ThreadInfo:
        check_thread(namespace, thread_id)
        return await self._on_reader(self._thread_info_snapshot, namespace, thread_id)

    async def stored_bytes(self, namespace: str) -> int:
        check_namespace(namespace)
        return await self._on_reader(self._stored_bytes, namespace)

    def _stored_bytes(self, namespace: str) -> int:
        (total,) = (
            self._reader()
            .execute(
                "SELECT coalesce(sum(length(CAST(payload AS BLOB))), 0) FROM messages"
                " WHERE namespace = ?",
                (namespace,),
            )
            .fetchone()
        )
        return int(total)

    def _thread_info_snapshot(self, namespace: str, thread_id: str) -> ThreadInfo:
        connection = self._reader()
        connection.execute("BEGIN")
        try:
            return _thread_info(connection, namespace, thread_id)
        finally:
            connection.execute("COMMIT")

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
        return await self._on_writer(
            self._update_thread, namespace, thread_id, changes, expires_at, retention
        )

    def _update_thread(
        self,
        namespace: str,
        thread_id: str,
        changes: dict[str, str | None],
        expires_at: float | None,
        retention: float | None,
    ) -> ThreadInfo:
        connection = self._writer
        assert connection is not None
        key = (namespace, thread_id)
        now = time.time()
        with _immediate_transaction(connection):
            expires = _live(connection, key, now)[2]
            connection.execute(
                "INSERT INTO threads (namespace, thread_id, version, created_at, updated_at)"
                " VALUES (?, ?, 0, ?, ?) ON CONFLICT (namespace, thread_id)"
                " DO UPDATE SET updated_at = excluded.updated_at",
                (*key, now, now),
            )
            connection.executemany(
                "DELETE FROM thread_metadata WHERE namespace = ? AND thread_id = ? AND key = ?",
                [(*key, name) for name, value in changes.items() if value is None],
            )
            connection.executemany(
                "INSERT INTO thread_metadata (namespace, thread_id, key, value)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (namespace, thread_id, key)"
                " DO UPDATE SET value = excluded.value",
                [(*key, name, value) for name, value in changes.items() if value is not None],
            )
            if expires_at is not None:
                connection.execute(
                    "UPDATE threads SET expires_at = ? WHERE namespace = ? AND thread_id = ?",
                    (expires_at, *key),
                )
            else:
                _touch(connection, key, expires, retention, now)
            (count,) = connection.execute(
                "SELECT count(*) FROM thread_metadata WHERE namespace = ? AND thread_id = ?", key
            ).fetchone()
            if count > MAX_METADATA_KEYS:
                raise too_many_keys(thread_id, count)  # rolls back
            info = _thread_info(connection, namespace, thread_id)
        return info

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
        # Along the primary key: one namespace's stretch of it, or all of it.
        where = (
            "namespace = ? AND (thread_id, seq) > (?, ?)"
            if namespace
            else ("(namespace, thread_id, seq) > (?, ?, ?)")
        )
        query = (
            f"SELECT namespace, thread_id, seq, CAST(payload AS BLOB) FROM messages WHERE {where}"
            " AND (? = 0 OR substr(CAST(payload AS BLOB), 1, ?) <> ?)"
            " ORDER BY namespace, thread_id, seq LIMIT ?"
        )
        arguments = (*start, len(skip_prefix), len(skip_prefix), skip_prefix, limit)
        rows = await self._on_reader(lambda: self._reader().execute(query, arguments).fetchall())
        return [StoredPayload(*row) for row in rows]

    async def replace_payloads(self, swaps: Sequence[tuple[StoredPayload, bytes]]) -> int:
        check_swaps(swaps)
        if not swaps:
            return 0
        return await self._on_writer(self._replace_payloads, swaps)

    def _replace_payloads(self, swaps: Sequence[tuple[StoredPayload, bytes]]) -> int:
        connection = self._writer
        assert connection is not None
        threads = sorted({(row.namespace, row.thread_id) for row, _ in swaps})
        replaced = 0
        with _immediate_transaction(connection):
            cleared = {
                key: connection.execute(
                    "SELECT cleared_through FROM threads WHERE namespace = ? AND thread_id = ?",
                    key,
                ).fetchone()
                for key in threads
            }
            # Above every seq meanwhile: the update trigger takes these as ours.
            connection.executemany(
                "UPDATE threads SET cleared_through = ? WHERE namespace = ? AND thread_id = ?",
                [(_QUIET, *key) for key in threads],
            )
            for row, payload in swaps:
                replaced += connection.execute(
                    "UPDATE messages SET payload = CAST(? AS TEXT) WHERE namespace = ?"
                    " AND thread_id = ? AND seq = ? AND CAST(payload AS BLOB) = ?",
                    (payload, row.namespace, row.thread_id, row.seq, row.payload),
                ).rowcount
            connection.executemany(
                "UPDATE threads SET cleared_through = ? WHERE namespace = ? AND thread_id = ?",
                [(held[0], *key) for key, held in cleared.items() if held is not None],
            )
        return replaced

    async def watch(self, listener: ChangeListener) -> None:
        """Report commits that other programs make straight into ``messages``."""
        if self._writer_pool is None:
            raise CacheClosed(f"{self!r} is not open; use it inside 'async with'")
        self._watchers.append(listener)
        if self._watch_task is None:
            self._watch_pool = ThreadPoolExecutor(1, thread_name_prefix="agent-core-sqlite-watch")
            connection = await self._run(self._watch_pool, self._connect)
            start = await self._run(self._watch_pool, _changes_since, connection, None)
            self._watch_task = asyncio.get_running_loop().create_task(
                self._watch(connection, start)
            )

    async def _watch(self, connection: sqlite3.Connection, start: _ChangePoll) -> None:
        data_version, last_id, _ = start
        while True:
            await asyncio.sleep(_WATCH_INTERVAL)
            try:
                seen = await self._run(self._watch_pool, _data_version, connection)
                if seen == data_version:
                    continue
                data_version, last_id, changes = await self._run(
                    self._watch_pool, _changes_since, connection, last_id
                )
            except StoreUnavailable:
                for listener in self._watchers:
                    listener.reset()
                continue
            for namespace, thread_id, version in changes:
                for listener in self._watchers:
                    listener.changed(namespace, thread_id, version)


_ChangePoll = tuple[int, int, list[tuple[str, str, int]]]
# (seq, place's anchor, frac, payload)
_Placed = tuple[int, int, bytes, bytes]


def _locate(
    connection: sqlite3.Connection, key: tuple[str, str], start: int | None, stop: int | None
) -> Located[_Placed]:
    """The rows ``[start:stop]`` and their neighbours, read from the nearer end."""
    fetch = fetch_for(start, stop)
    if fetch is None:
        (count,) = connection.execute(
            "SELECT count(*) FROM messages WHERE namespace = ? AND thread_id = ?", key
        ).fetchone()
        start, stop = absolute(start, stop, count)
        fetch = fetch_for(start, stop)
        assert fetch is not None
    order = _BACKWARDS if fetch.from_end else _ORDER
    rows = connection.execute(
        "SELECT seq, coalesce(anchor, seq), CAST(frac AS BLOB), CAST(payload AS BLOB)"
        f" FROM messages WHERE namespace = ? AND thread_id = ? ORDER BY {order}"
        " LIMIT ? OFFSET ?",
        (*key, -1 if fetch.limit is None else fetch.limit, fetch.offset),
    ).fetchall()
    return locate(start, stop, rows)


def _live(
    connection: sqlite3.Connection, key: tuple[str, str], now: float
) -> tuple[int, int, float | None]:
    """The thread's (version, cleared_through, expires_at), zeros for a new thread; an
    expired thread is deleted first (at the version + 1 it already reads as)."""
    row = connection.execute(
        "SELECT version, cleared_through, expires_at FROM threads"
        " WHERE namespace = ? AND thread_id = ?",
        key,
    ).fetchone()
    if row is None:
        return 0, 0, None
    version, cleared_through, expires = row
    if expires is not None and expires <= now:
        version = _erase(connection, key, version, now)
        return version, version, None
    return int(version), int(cleared_through), expires


def _erase(connection: sqlite3.Connection, key: tuple[str, str], version: int, now: float) -> int:
    """Delete the thread's messages, metadata and keys at a version of its own."""
    connection.execute(
        "UPDATE threads SET version = ?, cleared_through = ?, rewritten_at = ?,"
        " expires_at = NULL, updated_at = ? WHERE namespace = ? AND thread_id = ?",
        (version + 1, version + 1, version + 1, now, *key),
    )
    for table in ("messages", "idempotency_keys", "thread_metadata"):
        connection.execute(f"DELETE FROM {table} WHERE namespace = ? AND thread_id = ?", key)
    return version + 1


def _touch(
    connection: sqlite3.Connection,
    key: tuple[str, str],
    expires: float | None,
    retention: float | None,
    now: float,
) -> float | None:
    """Extend the thread's expiry to ``now + retention`` if that is later; the expiry."""
    if retention is None or (expires is not None and expires >= now + retention):
        return expires
    connection.execute(
        "UPDATE threads SET expires_at = ? WHERE namespace = ? AND thread_id = ?",
        (now + retention, *key),
    )
    return now + retention


def _expired(expires_at: float | None) -> bool:
    return expires_at is not None and expires_at <= time.time()


def _respace(
    connection: sqlite3.Connection,
    key: tuple[str, str],
    anchor: int,
    before: _Placed | None,
    count: int,
) -> list[tuple[int | None, bytes]]:
    """Spread the fracs of ``anchor``'s run afresh; the places of ``count`` new rows
    going in after ``before``."""
    run = connection.execute(
        "SELECT seq, CAST(frac AS BLOB) FROM messages"
        " WHERE namespace = ? AND thread_id = ? AND coalesce(anchor, seq) = ? ORDER BY frac",
        (*key, anchor),
    ).fetchall()
    fracs, new = respace([frac for _, frac in run], None if before is None else before[2], count)
    connection.executemany(
        "UPDATE messages SET frac = ? WHERE namespace = ? AND thread_id = ? AND seq = ?",
        [(frac, *key, seq) for (seq, _), frac in zip(run, fracs, strict=True)],
    )
    return [(anchor, frac) for frac in new]


def _key_of(row: _Placed | None) -> tuple[int, bytes] | None:
    return None if row is None else (row[1], row[2])


def _copy_rewritten(
    connection: sqlite3.Connection,
    ids: tuple[str, str, str],
    at: int,
    rewrite: Rewrite,
    now: float,
) -> None:
    """A fork's copy of the source's rows through ``rewrite`` (namespace, source, target)."""
    namespace, source_id, new_id = ids
    rows = connection.execute(
        "SELECT seq, anchor, CAST(frac AS BLOB), CAST(payload AS BLOB), CAST(tokens AS BLOB)"
        " FROM messages WHERE namespace = ? AND thread_id = ? AND seq <= ? ORDER BY seq",
        (namespace, source_id, at),
    ).fetchall()
    payloads = checked_rewrite(rewrite, [row[3] for row in rows])
    # Seqs at or below the new version: the insert trigger takes them as ours.
    connection.executemany(
        "INSERT INTO messages (namespace, thread_id, seq, anchor, frac, payload, tokens,"
        " created_at) VALUES (?, ?, ?, ?, ?, CAST(? AS TEXT), CAST(? AS TEXT), ?)",
        [
            (namespace, new_id, seq, anchor, frac, payload, tokens, now)
            for (seq, anchor, frac, _, tokens), payload in zip(rows, payloads, strict=True)
        ],
    )


def _remember(
    connection: sqlite3.Connection,
    namespace: str,
    thread_id: str,
    key: str | None,
    version: int,
    digest: bytes,
    now: float,
) -> None:
    if key is not None:
        # An expired key's row may still be there: this use replaces it.
        connection.execute(
            "INSERT OR REPLACE INTO idempotency_keys"
            " (namespace, thread_id, key, version, digest, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (namespace, thread_id, key, version, digest, now),
        )


def _thread_info(connection: sqlite3.Connection, namespace: str, thread_id: str) -> ThreadInfo:
    key = (namespace, thread_id)
    row = connection.execute(
        "SELECT version, created_at, updated_at, expires_at FROM threads"
        " WHERE namespace = ? AND thread_id = ?",
        key,
    ).fetchone()
    if row is None:
        return ThreadInfo(0, 0, None, None, {})
    if _expired(row[3]):  # reads as deleted (the next write or the sweep deletes it)
        return ThreadInfo(row[0] + 1, 0, _utc(row[1]), _utc(row[2]), {})
    (count,) = connection.execute(
        "SELECT count(*) FROM messages WHERE namespace = ? AND thread_id = ?", key
    ).fetchone()
    metadata = dict(
        connection.execute(
            "SELECT key, value FROM thread_metadata WHERE namespace = ? AND thread_id = ?"
            " ORDER BY key",
            key,
        ).fetchall()
    )
    expires = None if row[3] is None else _utc(row[3])
    return ThreadInfo(
        row[0], count, _utc(row[1]), _utc(row[2]), MappingProxyType(metadata), expires
    )


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _data_version(connection: sqlite3.Connection) -> int:
    version: int = connection.execute("PRAGMA data_version").fetchone()[0]
    return version


def _changes_since(connection: sqlite3.Connection, last_id: int | None) -> _ChangePoll:
    """``(data_version, newest change id, changes after last_id)`` in one snapshot."""
    connection.execute("BEGIN")
    try:
        data_version = _data_version(connection)
        if last_id is None:
            newest = connection.execute("SELECT coalesce(max(id), 0) FROM changes").fetchone()[0]
            return data_version, newest, []
        rows = connection.execute(
            "SELECT id, namespace, thread_id, version FROM changes WHERE id > ? ORDER BY id",
            (last_id,),
        ).fetchall()
    finally:
        connection.execute("COMMIT")
    newest = rows[-1][0] if rows else last_id
    return data_version, newest, [(ns, tid, version) for _, ns, tid, version in rows]


class _immediate_transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def __enter__(self) -> None:
        self._connection.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        try:
            if kind is None:
                self._connection.execute("COMMIT")
        finally:
            # Also after a failed COMMIT (an I/O error, say), which leaves the transaction
            # open: nothing of it is written, and the writer can start the next one.
            if self._connection.in_transaction:
                self._connection.execute("ROLLBACK")


def _migrate(connection: sqlite3.Connection) -> None:
    with _immediate_transaction(connection):
        current = connection.execute("PRAGMA user_version").fetchone()[0]
        if current > SCHEMA_VERSION:
            raise ConfigurationError(
                f"the SQLite file has schema version {current}, newer than this agent-core "
                f"({SCHEMA_VERSION}); upgrade agent-core"
            )
        for statements in _MIGRATIONS[current:]:
            for statement in statements:
                connection.execute(statement)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _close_all(connections: list[sqlite3.Connection]) -> None:
    for connection in connections:
        connection.close()
