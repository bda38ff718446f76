"""Durable thread logs: the `ThreadStore` protocol and its SQLite and PostgreSQL stores."""

from __future__ import annotations

from .._token_counts import decode_token_counts, encode_token_counts
from .._urls import show_url
from ..errors import ConfigurationError
from ._postgres import PostgresStore
from ._protocol import (
    MAX_PAGE_SIZE,
    AppendResult,
    ThreadPage,
    ThreadRecords,
    ThreadStore,
)
from ._sqlite import SQLiteStore

__all__ = [
    "MAX_PAGE_SIZE",
    "AppendResult",
    "PostgresStore",
    "SQLiteStore",
    "ThreadPage",
    "ThreadRecords",
    "ThreadStore",
    "decode_token_counts",
    "encode_token_counts",
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
        return PostgresStore.from_url(url)
    raise ConfigurationError(
        f"unsupported store URL {show_url(url)}: use sqlite:///path.db or postgresql://user@host/db"
    )
