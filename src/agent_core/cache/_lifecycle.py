"""`ThreadLifecycle`: the part of `ConversationCache`'s API that rewrites, copies,
erases, expires, describes and lists threads (docs/DESIGN.md, "Write path")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from .._quote import quote
from .._validation import check_count, check_expires_at, check_slice, check_thread_id
from ..errors import InvalidArgument
from ..messages import Conversation, Message, encode_batch, trusted_message
from ..store import SpliceResult, ThreadInfo, ThreadPage, ThreadStore
from ._compaction import Summarizer, compact_thread
from ._writes import Writes

__all__ = ["ThreadLifecycle"]


class ThreadLifecycle:
    """Splice, pop, fork, purge, thread info and metadata, listing and the expiry sweep;
    a base of `ConversationCache`, which provides what is declared here."""

    store: ThreadStore
    namespace: str
    max_message_bytes: int
    max_batch_messages: int
    _writes: Writes

    def _check_open(self) -> None:
        """Raises `CacheClosed` unless the cache is open (`ConversationCache`'s)."""

    async def get(self, thread_id: str) -> Conversation:
        """The thread as a snapshot (`ConversationCache`'s)."""
        raise NotImplementedError

    async def splice(
        self,
        thread_id: str,
        start: int | None,
        stop: int | None,
        messages: Sequence[dict[str, Any] | Message] = (),
        *,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        """Replace ``messages[start:stop]`` (Python slice rules) by ``messages``,
        atomically; returns the new version. A splice that changes nothing writes
        nothing. ``expected_version`` and ``idempotency_key`` work as in `append`."""
        return (
            await self._splice(thread_id, start, stop, messages, expected_version, idempotency_key)
        ).version

    async def pop(self, thread_id: str, *, expected_version: int | None = None) -> Message | None:
        """Remove the last message and return it; None (nothing written) if there is none."""
        result = await self._splice(thread_id, -1, None, (), expected_version, None)
        return trusted_message(result.removed[0]) if result.removed else None

    async def _splice(
        self,
        thread_id: str,
        start: int | None,
        stop: int | None,
        messages: Sequence[dict[str, Any] | Message],
        expected_version: int | None,
        idempotency_key: str | None,
    ) -> SpliceResult:
        self._check_open()
        check_thread_id(thread_id)
        check_slice(start, stop)
        payloads = encode_batch(
            messages,
            max_message_bytes=self.max_message_bytes,
            max_batch_messages=self.max_batch_messages,
            allow_empty=True,
        )
        return await self._writes.splice(
            thread_id, slice(start, stop), messages, payloads, expected_version, idempotency_key
        )

    async def compact(
        self,
        thread_id: str,
        *,
        summarizer: Summarizer,
        model: str,
        keep_recent_tokens: int,
        instructions: str | None = None,
        max_summary_tokens: int = 1024,
        expected_version: int | None = None,
        keep_original: bool = False,
    ) -> int:
        """Summarize the thread's oldest messages into one summary message; returns the
        thread's version.

        Every message before the newest ``keep_recent_tokens`` (counted for ``model``,
        never splitting a tool call from its results) is replaced by a system message
        named `SUMMARY_NAME`, which windows keep like any system message; system and
        developer messages there stay. ``summarizer`` writes the summary (at most
        ``max_summary_tokens``) following ``instructions``. It is one compare-and-splice:
        an append meanwhile is kept, another compaction or rewrite of the same messages
        meanwhile makes this one write nothing. ``keep_original`` first forks the thread
        as it was to ``{thread_id}.original.{version}``. Nothing to summarize: nothing
        written. `VersionConflict` if the thread is not at ``expected_version``.
        """
        self._check_open()
        check_thread_id(thread_id)
        if not isinstance(summarizer, Summarizer):
            raise InvalidArgument(
                f"summarizer must be a ChatModel, got {type(summarizer).__name__}"
            )
        if not isinstance(model, str) or not model.strip():
            raise InvalidArgument(f"model must be a model name, got {quote(model)}")
        return await compact_thread(
            self,
            thread_id,
            summarizer=summarizer,
            model=model,
            keep_recent_tokens=keep_recent_tokens,
            instructions=instructions,
            max_summary_tokens=max_summary_tokens,
            expected_version=expected_version,
            keep_original=keep_original,
        )

    async def fork(self, source_id: str, new_id: str, *, at_version: int | None = None) -> int:
        """Make ``new_id`` a copy of ``source_id`` (messages and metadata) as of
        ``at_version`` (None: now); returns its version. Each side then changes alone.
        `ThreadExists` if ``new_id`` holds messages."""
        self._check_open()
        return await self._writes.fork(source_id, new_id, at_version)

    async def purge(self, thread_id: str) -> int:
        """Erase the thread: its messages, metadata and idempotency keys leave the store,
        its L2 value leaves Redis, and every instance is told. Returns the new version
        (the version stays, so a reused id goes on from it)."""
        self._check_open()
        check_thread_id(thread_id)
        return await self._writes.delete(thread_id, purge=True)

    async def list_threads(
        self,
        *,
        limit: int = 100,
        after: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ThreadPage:
        """Threads of this namespace holding messages or metadata, in id order (page with
        ``next_cursor``); ``metadata``: only those with every one of these pairs."""
        self._check_open()
        return await self.store.list_threads(
            self.namespace, limit=limit, after=after, metadata=metadata
        )

    async def thread_info(self, thread_id: str) -> ThreadInfo:
        """The thread's version, message count, times and metadata, from the store."""
        self._check_open()
        return await self.store.thread_info(self.namespace, thread_id)

    async def update_thread(
        self,
        thread_id: str,
        *,
        metadata: Mapping[str, str | None] | None = None,
        expires_at: datetime | None = None,
    ) -> ThreadInfo:
        """Merge ``metadata`` into the thread's (a None value removes its key; at most 16
        keys) and set its expiry to ``expires_at`` (an aware datetime; past it, the thread
        reads as deleted); None keeps either. The version does not move."""
        self._check_open()
        return await self._writes.update_thread(thread_id, metadata, check_expires_at(expires_at))

    async def sweep_expired(self, *, limit: int = 1000) -> int:
        """Delete up to ``limit`` threads of this namespace whose expiry has passed (they
        already read as deleted), as `purge` does; returns how many."""
        self._check_open()
        check_count("limit", limit, minimum=1, maximum=100_000)
        return await self._writes.sweep_expired(limit)
