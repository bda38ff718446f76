"""`ConversationCache`: the API every caller uses to append and read threads."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

from .._validation import check_count, check_namespace, check_thread_id
from ..errors import CacheClosed, ConfigurationError
from ..messages import (
    DEFAULT_MAX_BATCH_MESSAGES,
    DEFAULT_MAX_MESSAGE_BYTES,
    Conversation,
    Message,
    encode_batch,
    messages_from_raw,
)
from ..store import ThreadPage, ThreadStore, store_from_url
from ._stats import CacheStats

__all__ = ["ConversationCache"]

DEFAULT_STORE_URL = "sqlite:///agent-core.db"


class ConversationCache:
    """Append to and read conversations of one namespace.

    Use it as an async context manager; it opens the store (creating or migrating
    its schema) on entry and closes it on exit. For now every read goes to the
    store; the L1 and Redis tiers slot in behind this same API.
    """

    def __init__(
        self,
        store: ThreadStore,
        *,
        namespace: str = "default",
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_batch_messages: int = DEFAULT_MAX_BATCH_MESSAGES,
    ) -> None:
        if not isinstance(store, ThreadStore):
            raise ConfigurationError(
                f"store must implement ThreadStore, got {type(store).__name__}; "
                "use ConversationCache.from_urls(store='sqlite:///agent-core.db')"
            )
        self.store = store
        self.namespace = check_namespace(namespace)
        self.max_message_bytes = check_count("max_message_bytes", max_message_bytes, minimum=2)
        self.max_batch_messages = check_count("max_batch_messages", max_batch_messages, minimum=1)
        self._stats = CacheStats()
        self._open = False

    @classmethod
    def from_urls(
        cls,
        store: str = DEFAULT_STORE_URL,
        redis: str | None = None,
        namespace: str = "default",
        **options: Any,
    ) -> ConversationCache:
        """Build a cache from a store URL (``sqlite:///...`` or ``postgresql://...``)."""
        if redis is not None:
            raise ConfigurationError(
                "the Redis tier is not available in this version of agent-core; pass redis=None"
            )
        check_namespace(namespace)
        return cls(store_from_url(store), namespace=namespace, **options)

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        await self.store.open()
        self._open = True

    async def close(self) -> None:
        self._open = False
        await self.store.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def _check_open(self) -> None:
        if not self._open:
            raise CacheClosed("the cache is not open: use 'async with ConversationCache...'")

    def _count(self, **increments: int) -> None:
        self._stats = dataclasses.replace(
            self._stats, **{k: getattr(self._stats, k) + v for k, v in increments.items()}
        )

    # -- API -------------------------------------------------------------------------

    async def append(
        self,
        thread_id: str,
        messages: Sequence[dict[str, Any] | Message],
        *,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        """Append a batch of messages; returns the thread's new version.

        With ``expected_version`` it is compare-and-append (`VersionConflict` on a
        mismatch). A repeated ``idempotency_key`` writes nothing and returns the
        version its first use produced.
        """
        self._check_open()
        check_thread_id(thread_id)
        payloads = encode_batch(
            messages,
            max_message_bytes=self.max_message_bytes,
            max_batch_messages=self.max_batch_messages,
        )
        result = await self.store.append(
            self.namespace,
            thread_id,
            payloads,
            expected_version=expected_version,
            idempotency_key=idempotency_key,
        )
        self._count(appends=1)
        return result.version

    async def get(self, thread_id: str) -> Conversation:
        """The thread as an immutable snapshot (version 0 and no messages if new)."""
        self._check_open()
        check_thread_id(thread_id)
        records = await self.store.read(self.namespace, thread_id)
        self._count(misses=1)
        return Conversation(thread_id, records.version, messages_from_raw(records.payloads))

    get_or_load = get

    async def delete(self, thread_id: str) -> int:
        """Delete the thread's messages; returns its new version (versions never go back)."""
        self._check_open()
        check_thread_id(thread_id)
        version = await self.store.delete(self.namespace, thread_id)
        self._count(deletes=1)
        return version

    async def invalidate(self, thread_id: str) -> None:
        """Drop any cached copy of the thread; the next read goes to the store."""
        self._check_open()
        check_thread_id(thread_id)

    async def list_threads(self, *, limit: int = 100, after: str | None = None) -> ThreadPage:
        """Non-empty threads of this namespace in id order; page with ``next_cursor``."""
        self._check_open()
        return await self.store.list_threads(self.namespace, limit=limit, after=after)

    def stats(self) -> CacheStats:
        return self._stats
