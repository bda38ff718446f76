"""Durable thread logs: the `ThreadStore` protocol and its SQLite and PostgreSQL stores."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._extras import needs_extra
from .._token_counts import decode_token_counts, encode_token_counts
from .._urls import show_url
from ..errors import ConfigurationError
from ._protocol import (
    MAX_PAGE_SIZE,
    MAX_RETENTION,
    AppendResult,
    Rewrite,
    SpliceResult,
    StoredPayload,
    ThreadInfo,
    ThreadPage,
    ThreadRecords,
    ThreadStore,
    batch_digest,
    splice_digest,
)
from ._rotation import Rotation, rotate_data
from ._sqlite import SQLiteStore

if TYPE_CHECKING:
    from ._postgres import PostgresStore as PostgresStore

# PostgresStore is public too, but not in __all__: `import *` must work without asyncpg.
__all__ = [
    "MAX_PAGE_SIZE",
    "MAX_RETENTION",
    "AppendResult",
    "Rewrite",
    "Rotation",
    "SQLiteStore",
    "SpliceResult",
    "StoredPayload",
    "ThreadInfo",
    "ThreadPage",
    "ThreadRecords",
    "ThreadStore",
    "batch_digest",
    "decode_token_counts",
    "encode_token_counts",
    "rotate_data",
    "splice_digest",
    "store_from_url",
]


def store_from_url(url: str) -> SQLiteStore | PostgresStore:
    """``sqlite:///path.db`` or ``postgresql://user@host/db``; not opened yet."""
    if not isinstance(url, str):
        raise ConfigurationError(f"store URL must be a str, got {type(url).__name__}")
    scheme = url.partition(":")[0].lower()
    if scheme == "sqlite":
        return SQLiteStore.from_url(url)
    if scheme in ("postgresql", "postgres"):
        return _postgres_store().from_url(url)
    raise ConfigurationError(
        f"unsupported store URL {show_url(url)}: use sqlite:///path.db or postgresql://user@host/db"
    )


def _postgres_store() -> type[PostgresStore]:
    # Imported on first use: asyncpg is the ``postgres`` extra, not a core dependency.
    with needs_extra("PostgreSQL"):
        from ._postgres import PostgresStore
    return PostgresStore


def __getattr__(name: str) -> Any:
    if name == "PostgresStore":
        return _postgres_store()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
