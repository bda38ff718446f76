"""The contract every store keeps, run against real SQLite and real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent_core import (
    CacheClosed,
    ConfigurationError,
    ConversationCache,
    IdempotencyKeyReused,
    InvalidArgument,
    InvalidBatch,
    InvalidMessage,
    InvalidNamespace,
    InvalidThreadId,
    MessageTooLarge,
    ThreadStore,
    VersionConflict,
    store_from_url,
)
from agent_core.store import (
    AppendResult,
    PostgresStore,
    SQLiteStore,
    ThreadRecords,
    decode_token_counts,
    encode_token_counts,
)

from ._poll import eventually
from ._sqlite_bytes import file_holds


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


async def test_new_thread_reads_as_version_zero(cache: ConversationCache) -> None:
    conversation = await cache.get("never-written")
    assert (conversation.version, conversation.messages) == (0, ())
    assert await cache.store.version(cache.namespace, "never-written") == 0


async def test_append_and_get(cache: ConversationCache) -> None:
    assert await cache.append("t", [user("a")]) == 1
    assert await cache.append("t", [user("b"), user("c")]) == 3
    conversation = await cache.get("t")
    assert conversation.thread_id == "t"
    assert conversation.version == 3
    assert conversation.to_list() == [user("a"), user("b"), user("c")]
    assert await cache.get_or_load("t") == conversation


async def test_read_after_and_last(store: ThreadStore, namespace: str) -> None:
    for i in range(1, 11):
        await store.append(namespace, "t", [f'{{"role":"user","content":"{i}"}}'.encode()])
    whole = await store.read(namespace, "t")
    assert whole.version == 10
    assert whole.seqs == tuple(range(1, 11))
    after = await store.read(namespace, "t", after=7)
    assert (after.version, after.seqs) == (10, (8, 9, 10))
    assert after.payloads == whole.payloads[7:]
    last = await store.read(namespace, "t", last=3)
    assert last.seqs == (8, 9, 10)
    assert (await store.read(namespace, "t", after=8, last=5)).seqs == (9, 10)
    assert (await store.read(namespace, "t", last=0)).seqs == ()
    assert (await store.read(namespace, "t", after=10)) == ThreadRecords(10, (), (), ())
    assert (await store.read(namespace, "t", last=100)).seqs == whole.seqs


async def test_compare_and_append(cache: ConversationCache) -> None:
    assert await cache.append("t", [user("a")], expected_version=0) == 1
    with pytest.raises(VersionConflict, match="at version 1, not the expected 0") as info:
        await cache.append("t", [user("b")], expected_version=0)
    assert (info.value.expected, info.value.actual) == (0, 1)
    assert await cache.append("t", [user("b")], expected_version=1) == 2
    assert (await cache.get("t")).to_list() == [user("a"), user("b")]


async def test_conflict_on_a_new_thread_writes_nothing(cache: ConversationCache) -> None:
    with pytest.raises(VersionConflict):
        await cache.append("new", [user("a")], expected_version=5)
    assert (await cache.get("new")).version == 0
    assert (await cache.list_threads()).thread_ids == ()


async def test_idempotency_key(cache: ConversationCache) -> None:
    batch = [user("a"), user("b")]
    assert await cache.append("t", batch, idempotency_key="k1") == 2
    assert await cache.append("t", [user("c")]) == 3
    # A retry returns the version its first use produced and writes nothing,
    # even when the thread moved on and its expected_version is now stale.
    assert await cache.append("t", batch, idempotency_key="k1") == 2
    assert await cache.append("t", batch, idempotency_key="k1", expected_version=0) == 2
    assert (await cache.get("t")).version == 3
    with pytest.raises(IdempotencyKeyReused, match="already produced version 2"):
        await cache.append("t", [user("other")], idempotency_key="k1")
    assert (await cache.get("t")).version == 3
    # Keys belong to a thread.
    assert await cache.append("u", batch, idempotency_key="k1") == 2


async def test_thread_info(cache: ConversationCache) -> None:
    empty = await cache.thread_info("never")
    assert (empty.version, empty.message_count, empty.created_at, empty.metadata) == (
        0,
        0,
        None,
        {},
    )
    await cache.append("t", [user("a"), user("b")])
    info = await cache.thread_info("t")
    assert (info.version, info.message_count, dict(info.metadata)) == (2, 2, {})
    assert info.created_at is not None
    assert info.updated_at is not None
    assert info.created_at.tzinfo is not None
    assert info.updated_at >= info.created_at
    await cache.delete("t")
    assert (await cache.thread_info("t")).message_count == 0


async def test_update_thread_merges_metadata(cache: ConversationCache) -> None:
    # Metadata can come before the first message: the thread then exists at version 0.
    info = await cache.update_thread("t", metadata={"user": "u1", "topic": "cats"})
    assert (info.version, info.message_count, dict(info.metadata)) == (
        0,
        0,
        {"topic": "cats", "user": "u1"},
    )
    await cache.append("t", [user("a")])
    info = await cache.update_thread("t", metadata={"topic": None, "lang": "fr"})
    assert (info.version, dict(info.metadata)) == (1, {"lang": "fr", "user": "u1"})
    assert (await cache.update_thread("t")).metadata == info.metadata  # None: no change
    assert (await cache.thread_info("t")).metadata == info.metadata
    with pytest.raises(TypeError):
        info.metadata["user"] = "u2"  # type: ignore[index]
    # A delete takes the metadata with the messages.
    await cache.delete("t")
    assert (await cache.thread_info("t")).metadata == {}


@pytest.mark.parametrize(
    "metadata",
    [
        {"": "x"},
        {"bad key": "x"},
        {"k" * 65: "x"},
        {"k": 1},
        {"k": "x" * 513},
        {"k": "nul\x00"},
        {"k": "lone \ud800 surrogate"},
        {f"k{i}": "x" for i in range(17)},
        ["k", "x"],
    ],
    ids=[
        "empty-key",
        "space",
        "long-key",
        "int",
        "long-value",
        "nul",
        "surrogate",
        "17-keys",
        "list",
    ],
)
async def test_bad_metadata_is_refused_and_writes_nothing(
    cache: ConversationCache, metadata: Any
) -> None:
    await cache.update_thread("t", metadata={"user": "u1"})
    with pytest.raises(InvalidArgument):
        await cache.update_thread("t", metadata=metadata)
    with pytest.raises(InvalidArgument):
        await cache.list_threads(metadata=metadata)
    assert dict((await cache.thread_info("t")).metadata) == {"user": "u1"}


async def test_more_than_16_keys_in_all_is_refused_and_writes_nothing(
    cache: ConversationCache,
) -> None:
    await cache.update_thread("t", metadata={f"k{i}": "x" for i in range(16)})
    with pytest.raises(InvalidArgument, match="17 metadata keys"):
        await cache.update_thread("t", metadata={"k0": "changed", "one-more": "x"})
    metadata = (await cache.thread_info("t")).metadata
    assert len(metadata) == 16
    assert metadata["k0"] == "x"
    # Removing one makes room, in the same call.
    info = await cache.update_thread("t", metadata={"k0": None, "one-more": "x"})
    assert len(info.metadata) == 16
    assert "k0" not in info.metadata


async def test_list_threads_by_metadata(cache: ConversationCache) -> None:
    for thread_id, owner, lang in [("a", "u1", "fr"), ("b", "u2", "fr"), ("c", "u1", "en")]:
        await cache.append(thread_id, [user("hi")])
        await cache.update_thread(thread_id, metadata={"user": owner, "lang": lang})
    await cache.update_thread("d", metadata={"user": "u1"})  # metadata, no messages yet
    await cache.append("e", [user("no metadata")])
    assert (await cache.list_threads()).thread_ids == ("a", "b", "c", "d", "e")
    assert (await cache.list_threads(metadata={"user": "u1"})).thread_ids == ("a", "c", "d")
    both = await cache.list_threads(metadata={"user": "u1", "lang": "fr"})
    assert both.thread_ids == ("a",)
    assert (await cache.list_threads(metadata={"user": "nobody"})).thread_ids == ()
    first = await cache.list_threads(limit=2, metadata={"user": "u1"})
    assert (first.thread_ids, first.next_cursor) == (("a", "c"), "c")
    rest = await cache.list_threads(limit=2, after=first.next_cursor, metadata={"user": "u1"})
    assert (rest.thread_ids, rest.next_cursor) == (("d",), None)
    with pytest.raises(InvalidArgument):
        await cache.list_threads(metadata={"user": None})  # type: ignore[dict-item]


def with_option(url: str, option: str) -> str:
    return url + ("&" if "?" in url else "?") + option


@pytest.fixture
async def short_lived_keys(empty_store_url: str) -> AsyncIterator[ThreadStore]:
    """A store (of a database of its own) whose idempotency keys live 0.3 s."""
    store = store_from_url(with_option(empty_store_url, "idempotency_ttl=0.3"))
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def test_an_idempotency_key_is_free_again_after_its_ttl(
    short_lived_keys: ThreadStore, namespace: str
) -> None:
    store = short_lived_keys
    first, other = [b'{"role":"user","content":"a"}'], [b'{"role":"user","content":"b"}']
    assert await store.append(namespace, "t", first, idempotency_key="k") == AppendResult(1, True)

    async def other_batch_applies() -> bool:
        try:
            return (await store.append(namespace, "t", other, idempotency_key="k")).applied
        except IdempotencyKeyReused:  # the key still remembers the first batch
            return False

    await eventually(other_batch_applies)
    # The key now stands for the second use, remembered afresh.
    assert await store.append(namespace, "t", other, idempotency_key="k") == AppendResult(2, False)
    assert (await store.read(namespace, "t")).payloads == (first[0], other[0])


async def test_expired_idempotency_keys_are_swept_in_batches(
    short_lived_keys: ThreadStore, empty_store_url: str, namespace: str
) -> None:
    for key in ("k1", "k2", "k3"):
        await short_lived_keys.append(
            namespace, "t", [b'{"role":"user","content":"x"}'], idempotency_key=key
        )
    # A store that keeps keys for an hour finds nothing to sweep: the TTL is the sweeper's.
    long_lived = store_from_url(empty_store_url)
    await long_lived.open()
    try:
        assert await long_lived.expire_idempotency_keys() == 0
    finally:
        await long_lived.close()
    swept: list[int] = []

    async def all_swept() -> bool:
        swept.append(await short_lived_keys.expire_idempotency_keys(limit=2))
        return sum(swept) == 3

    await eventually(all_swept)
    assert max(swept) <= 2  # bounded batches
    assert await short_lived_keys.expire_idempotency_keys() == 0
    # Gone, so a retry is a new append.
    result = await short_lived_keys.append(
        namespace, "t", [b'{"role":"user","content":"x"}'], idempotency_key="k1"
    )
    assert result == AppendResult(4, True)


async def test_sqlite_keeps_no_plaintext_of_a_deleted_thread(tmp_path: Path) -> None:
    """secure_delete: once deleted and checkpointed, the file holds none of the text."""
    path = tmp_path / "erased.db"
    marker = f"marker-{uuid.uuid4().hex}"
    store = SQLiteStore(path)
    await store.open()
    try:
        payload = orjson.dumps(user(marker * 20))
        await store.append("ns", "t", [payload], idempotency_key=marker)
        await store.append("ns", "other", [b'{"role":"user","content":"kept"}'])
        assert file_holds(path, marker)
        await store.delete("ns", "t")
        assert not file_holds(path, marker)
    finally:
        await store.close()


@pytest.mark.parametrize("ttl", ["0", "-1", "nan", "inf", "soon"])
def test_a_bad_idempotency_ttl_is_a_configuration_error(store_url: str, ttl: str) -> None:
    with pytest.raises(ConfigurationError, match="idempotency_ttl"):
        store_from_url(with_option(store_url, f"idempotency_ttl={ttl}"))


async def test_delete(cache: ConversationCache) -> None:
    await cache.append("t", [user("a"), user("b")], idempotency_key="k")
    assert await cache.delete("t") == 3
    conversation = await cache.get("t")
    assert (conversation.version, conversation.messages) == (3, ())
    assert (await cache.list_threads()).thread_ids == ()
    # Deleting again changes nothing; versions never go back.
    assert await cache.delete("t") == 3
    assert await cache.delete("never") == 0
    # The key went with the thread, so the same batch is a new append.
    assert await cache.append("t", [user("a"), user("b")], idempotency_key="k") == 5
    records = await cache.store.read(cache.namespace, "t")
    assert (records.version, records.seqs) == (5, (4, 5))
    assert (await cache.get("t")).to_list() == [user("a"), user("b")]


async def test_list_threads_paginates_in_id_order(cache: ConversationCache) -> None:
    ids = ["b", "A", "a.1", "a-2", "a:3", "a@4", "a_5", "z", "0"]
    for thread_id in ids:
        await cache.append(thread_id, [user(thread_id)])
    await cache.append("gone", [user("x")])
    await cache.delete("gone")
    seen: list[str] = []
    cursor = None
    while True:
        page = await cache.list_threads(limit=2, after=cursor)
        seen.extend(page.thread_ids)
        if page.next_cursor is None:
            break
        assert len(page.thread_ids) == 2
        cursor = page.next_cursor
    assert seen == sorted(ids, key=lambda s: s.encode())
    assert (await cache.list_threads(limit=100)).thread_ids == tuple(seen)


async def test_namespaces_are_isolated(store_url: str) -> None:
    async with (
        ConversationCache.from_urls(store=store_url, namespace="tenant-a") as a,
        ConversationCache.from_urls(store=store_url, namespace="tenant-b") as b,
    ):
        await a.append("shared", [user("from a")], idempotency_key="k")
        assert (await b.get("shared")).version == 0
        assert await b.append("shared", [user("from b")], idempotency_key="k") == 1
        assert (await a.get("shared")).to_list() == [user("from a")]
        assert (await b.get("shared")).to_list() == [user("from b")]
        await a.delete("shared")
        assert (await b.get("shared")).to_list() == [user("from b")]
        assert (await a.list_threads()).thread_ids == ()
        assert (await b.list_threads()).thread_ids == ("shared",)


async def test_reopen_keeps_everything(store_url: str, namespace: str) -> None:
    async with ConversationCache.from_urls(store=store_url, namespace=namespace) as cache:
        await cache.append("t", [user("kept")])
    async with ConversationCache.from_urls(store=store_url, namespace=namespace) as cache:
        assert (await cache.get("t")).to_list() == [user("kept")]


async def test_large_thread_and_message(cache: ConversationCache) -> None:
    big = user("x" * 900_000)
    batch = [user(str(i)) for i in range(1000)]
    await cache.append("t", batch)
    await cache.append("t", [big])
    conversation = await cache.get("t")
    assert conversation.version == 1001
    assert conversation.to_list() == [*batch, big]


# -- rejected calls write nothing ---------------------------------------------------------


async def _assert_nothing_written(cache: ConversationCache) -> None:
    assert (await cache.get("t")).version == 1
    assert (await cache.list_threads()).thread_ids == ("t",)


@pytest.mark.parametrize(
    ("call", "error", "needle"),
    [
        (lambda c: c.append("bad id", [user("a")]), InvalidThreadId, "invalid thread id"),
        (lambda c: c.append("", [user("a")]), InvalidThreadId, "1-200 characters"),
        (lambda c: c.append("x" * 201, [user("a")]), InvalidThreadId, "invalid thread id"),
        (lambda c: c.append("{t}", [user("a")]), InvalidThreadId, "invalid thread id"),
        (lambda c: c.append(7, [user("a")]), InvalidThreadId, "invalid thread id"),
        (lambda c: c.append("t", []), InvalidBatch, "empty"),
        (lambda c: c.append("t", user("a")), InvalidBatch, "list of message dicts"),
        (lambda c: c.append("t", [user("a")] * 1001), InvalidBatch, "limit of 1000"),
        (lambda c: c.append("t", [user("a"), "b"]), InvalidMessage, r"messages\[1\]"),
        (lambda c: c.append("t", [{"role": 3}]), InvalidMessage, "role must be a string"),
        (lambda c: c.append("t", [{"role": "bot"}]), InvalidMessage, "unknown role"),
        (
            lambda c: c.append("t", [user("a"), {"role": "user", "content": "b", "x": {1}}]),
            InvalidMessage,
            "JSON",
        ),
        (lambda c: c.append("t", [user("x" * (1 << 20))]), MessageTooLarge, "over the limit"),
        (lambda c: c.append("t", [user("a")], expected_version=-1), InvalidArgument, "at least 0"),
        (lambda c: c.append("t", [user("a")], expected_version=True), InvalidArgument, "int"),
        (lambda c: c.append("t", [user("a")], expected_version=2**63), InvalidArgument, "at most"),
        (lambda c: c.store.read(c.namespace, "t", after=2**63), InvalidArgument, "at most"),
        (lambda c: c.store.read(c.namespace, "t", last=2**70), InvalidArgument, "at most"),
        (lambda c: c.append("t", [user("a")], idempotency_key=""), InvalidArgument, "key"),
        (lambda c: c.append("t", [user("a")], idempotency_key="a\nb"), InvalidArgument, "key"),
        (lambda c: c.append("t", [user("a")], idempotency_key=5), InvalidArgument, "key"),
        (lambda c: c.append("t", [user("b")], expected_version=0), VersionConflict, "version 1"),
        (lambda c: c.get("../etc"), InvalidThreadId, "invalid thread id"),
        (lambda c: c.delete("a b"), InvalidThreadId, "invalid thread id"),
        (lambda c: c.list_threads(limit=0), InvalidArgument, "limit"),
        (lambda c: c.list_threads(limit=1001), InvalidArgument, "limit"),
        (lambda c: c.list_threads(after="a b"), InvalidThreadId, "invalid thread id"),
    ],
)
async def test_rejected_calls_raise_typed_errors_and_write_nothing(
    cache: ConversationCache, call: Any, error: type[Exception], needle: str
) -> None:
    await cache.append("t", [user("first")])
    with pytest.raises(error, match=needle):
        await call(cache)
    await _assert_nothing_written(cache)
    assert (await cache.get("t")).to_list() == [user("first")]


async def test_message_cap_is_configurable(store_url: str, namespace: str) -> None:
    async with ConversationCache.from_urls(
        store=store_url, namespace=namespace, max_message_bytes=100, max_batch_messages=2
    ) as cache:
        await cache.append("t", [user("x" * 50)])
        with pytest.raises(MessageTooLarge, match="over the limit of 100 bytes"):
            await cache.append("t", [user("x" * 100)])
        with pytest.raises(InvalidBatch, match="limit of 2"):
            await cache.append("t", [user("a")] * 3)
        assert (await cache.get("t")).version == 1


async def test_store_validates_its_own_input(store: ThreadStore, namespace: str) -> None:
    with pytest.raises(InvalidNamespace):
        await store.append("bad namespace", "t", [b'{"role":"user"}'])
    with pytest.raises(InvalidThreadId):
        await store.read(namespace, "bad id")
    with pytest.raises(InvalidBatch):
        await store.append(namespace, "t", [])
    with pytest.raises(InvalidBatch):
        await store.append(namespace, "t", ['{"role":"user"}'])  # type: ignore[list-item]
    with pytest.raises(InvalidArgument):
        await store.read(namespace, "t", after=-1)
    assert (await store.list_threads(namespace)).thread_ids == ()


# -- token counts -------------------------------------------------------------------------

O200K, CL100K = "o200k_base", "cl100k_base"


def payload(text: str) -> bytes:
    return orjson.dumps(user(text))


def counts_of(records: ThreadRecords) -> list[dict[str, int]]:
    return [decode_token_counts(encoded) for encoded in records.tokens]


async def test_tokens_round_trip(store: ThreadStore, namespace: str) -> None:
    first = (encode_token_counts({O200K: 1}), None, encode_token_counts({O200K: 3, CL100K: 4}))
    await store.append(namespace, "t", [payload(str(i)) for i in range(1, 4)], tokens=first)
    await store.append(namespace, "t", [payload("4"), payload("5")])
    await store.append(namespace, "t", [payload("6")], tokens=[encode_token_counts({CL100K: 0})])
    expected = [{O200K: 1}, {}, {O200K: 3, CL100K: 4}, {}, {}, {CL100K: 0}]
    whole = await store.read(namespace, "t")
    assert whole.payloads == tuple(payload(str(i)) for i in range(1, 7))
    assert counts_of(whole) == expected
    assert [encoded is None for encoded in whole.tokens] == [False, True, False, True, True, False]
    assert counts_of(await store.read(namespace, "t", after=2)) == expected[2:]
    assert counts_of(await store.read(namespace, "t", last=4)) == expected[2:]
    assert counts_of(await store.read(namespace, "t", after=1, last=2)) == expected[4:]
    assert (await store.read(namespace, "t", last=0)).tokens == ()


async def test_idempotent_retry_keeps_the_first_tokens(store: ThreadStore, namespace: str) -> None:
    batch = [payload("a")]
    first = await store.append(
        namespace, "t", batch, tokens=[encode_token_counts({O200K: 1})], idempotency_key="k"
    )
    # Token counts are not part of the batch: a retry that brings others is still a retry.
    retry = await store.append(
        namespace, "t", batch, tokens=[encode_token_counts({O200K: 9})], idempotency_key="k"
    )
    assert (first, retry) == (AppendResult(1, applied=True), AppendResult(1, applied=False))
    assert counts_of(await store.read(namespace, "t")) == [{O200K: 1}]


async def test_set_tokens_merges_beside_stored_counts(store: ThreadStore, namespace: str) -> None:
    await store.append(
        namespace,
        "t",
        [payload("a"), payload("b"), payload("c")],
        tokens=[encode_token_counts({CL100K: 7}), None, None],
    )
    assert await store.set_tokens(namespace, "t", O200K, {1: 10, 2: 20}) == 2
    assert await store.set_tokens(namespace, "t", "p50k.base-2", {3: 31, 2: 21}) == 2
    assert await store.set_tokens(namespace, "t", O200K, {2: 22}) == 1
    records = await store.read(namespace, "t")
    assert counts_of(records) == [
        {CL100K: 7, O200K: 10},
        {O200K: 22, "p50k.base-2": 21},
        {"p50k.base-2": 31},
    ]
    assert records.payloads == (payload("a"), payload("b"), payload("c"))
    # Neither the version nor the idempotency of appends moved.
    assert records.version == 3
    assert await store.append(namespace, "t", [payload("d")], expected_version=3) == AppendResult(
        4, applied=True
    )


async def test_set_tokens_skips_missing_seqs(store: ThreadStore, namespace: str) -> None:
    assert await store.set_tokens(namespace, "never", O200K, {1: 5}) == 0
    assert await store.version(namespace, "never") == 0
    assert (await store.list_threads(namespace)).thread_ids == ()
    await store.append(namespace, "t", [payload("a"), payload("b")])
    assert await store.set_tokens(namespace, "t", O200K, {2: 5, 3: 6, 1000: 7}) == 1
    assert await store.set_tokens(namespace, "t", O200K, {}) == 0
    assert await store.delete(namespace, "t") == 3
    assert await store.set_tokens(namespace, "t", O200K, {1: 1, 2: 2}) == 0
    await store.append(namespace, "t", [payload("c")])
    assert await store.set_tokens(namespace, "t", O200K, {2: 2, 4: 4}) == 1
    records = await store.read(namespace, "t")
    assert (records.version, records.seqs, counts_of(records)) == (4, (4,), [{O200K: 4}])


async def test_concurrent_set_tokens_keep_every_key(store_url: str, namespace: str) -> None:
    # Two stores: two SQLite writer connections, or two PostgreSQL pools.
    stores = [store_from_url(store_url), store_from_url(store_url)]
    await asyncio.gather(*(store.open() for store in stores))
    try:
        seqs = range(1, 51)
        await stores[0].append(namespace, "t", [payload(str(seq)) for seq in seqs])
        keys = [f"enc-{i}" for i in range(8)]
        calls = [
            stores[i % 2].set_tokens(
                namespace,
                "t",
                key,
                # Half the calls name the rows in the other order.
                {seq: i * 1000 + seq for seq in (seqs if i % 2 else reversed(seqs))},
            )
            for i, key in enumerate(keys)
        ]
        *updated, appended = await asyncio.gather(
            *calls, stores[1].append(namespace, "t", [payload("more")])
        )
        assert updated == [50] * len(keys)
        assert appended == AppendResult(51, applied=True)
        records = await stores[0].read(namespace, "t")
        assert counts_of(records)[:50] == [
            {key: i * 1000 + seq for i, key in enumerate(keys)} for seq in seqs
        ]
        assert records.tokens[50] is None
    finally:
        await asyncio.gather(*(store.close() for store in stores))


_GOOD = encode_token_counts({O200K: 1})
_P = payload("p")


@pytest.mark.parametrize(
    ("call", "error", "needle"),
    [
        (lambda s, ns: s.append(ns, "t", [_P], tokens=[]), InvalidBatch, "one entry per"),
        (lambda s, ns: s.append(ns, "t", [_P], tokens=[_GOOD] * 2), InvalidBatch, "one entry per"),
        (lambda s, ns: s.append(ns, "t", [_P], tokens=_GOOD), InvalidBatch, "one entry per"),
        (lambda s, ns: s.append(ns, "t", [_P], tokens=[b"{bad"]), InvalidBatch, r"tokens\[0\]"),
        (lambda s, ns: s.append(ns, "t", [_P], tokens=[b"[1]"]), InvalidBatch, r"tokens\[0\]"),
        (
            lambda s, ns: s.append(ns, "t", [_P, _P], tokens=[None, b'{"O200K": 1}']),
            InvalidBatch,
            r"tokens\[1\]",
        ),
        (lambda s, ns: s.append(ns, "t", [_P], tokens=[b'{"k": -1}']), InvalidBatch, "tokens"),
        (lambda s, ns: s.append(ns, "t", [_P], tokens=[b'{"k": true}']), InvalidBatch, "tokens"),
        (lambda s, ns: s.append(ns, "t", [_P], tokens=[b'{"k": 1.5}']), InvalidBatch, "tokens"),
        (lambda s, ns: s.append(ns, "t", [_P], tokens=['{"k": 1}']), InvalidBatch, "tokens"),
        (lambda s, ns: s.set_tokens(ns, "t", "O200K", {1: 5}), InvalidArgument, "key"),
        (lambda s, ns: s.set_tokens(ns, "t", "", {1: 5}), InvalidArgument, "key"),
        (lambda s, ns: s.set_tokens(ns, "t", "k" * 65, {1: 5}), InvalidArgument, "key"),
        (lambda s, ns: s.set_tokens(ns, "t", 'k"', {1: 5}), InvalidArgument, "key"),
        (lambda s, ns: s.set_tokens(ns, "t", O200K, {1: 5, 2: -1}), InvalidArgument, "least 0"),
        (lambda s, ns: s.set_tokens(ns, "t", O200K, {1: True}), InvalidArgument, "int"),
        (lambda s, ns: s.set_tokens(ns, "t", O200K, {1: 2**63}), InvalidArgument, "at most"),
        (lambda s, ns: s.set_tokens(ns, "t", O200K, {True: 5}), InvalidArgument, "seq"),
        (lambda s, ns: s.set_tokens(ns, "t", O200K, {0: 5}), InvalidArgument, "seq"),
        (lambda s, ns: s.set_tokens(ns, "t", O200K, [(1, 5)]), InvalidArgument, "mapping"),
        (lambda s, ns: s.set_tokens(ns, "a b", O200K, {1: 5}), InvalidThreadId, "thread id"),
        (lambda s, ns: s.set_tokens("a b", "t", O200K, {1: 5}), InvalidNamespace, "namespace"),
    ],
)
async def test_rejected_token_calls_raise_typed_errors_and_write_nothing(
    store: ThreadStore, namespace: str, call: Any, error: type[Exception], needle: str
) -> None:
    await store.append(namespace, "t", [_P], tokens=[_GOOD])
    before = await store.read(namespace, "t")
    with pytest.raises(error, match=needle):
        await call(store, namespace)
    assert await store.read(namespace, "t") == before


# -- configuration and lifecycle ----------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("mysql://localhost/db", "unsupported store URL"),
        ("agent-core.db", "unsupported store URL"),
        ("sqlite://", "not a SQLite URL"),
        ("sqlite:///:memory:", "needs a file path"),
        ("sqlite:///x.db?synchronous=off", "synchronous"),
        ("sqlite:///x.db?mode=ro", "unknown SQLite URL option"),
        ("sqlite:///x.db?readers=many", "bad option"),
        ("postgresql://localhost/db?pool_max_size=many", "bad option"),
        ("postgresql://localhost/db?pool_min_size=5&pool_max_size=2", "pool_min_size"),
    ],
)
def test_bad_store_urls(url: str, needle: str) -> None:
    with pytest.raises(ConfigurationError, match=needle):
        store_from_url(url)


def test_bad_cache_options() -> None:
    with pytest.raises(InvalidNamespace):
        ConversationCache.from_urls(namespace="no spaces")
    with pytest.raises(InvalidArgument, match="max_message_bytes"):
        ConversationCache.from_urls(max_message_bytes=0)
    with pytest.raises(ConfigurationError, match="ThreadStore"):
        ConversationCache(object())  # type: ignore[arg-type]


async def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    cache = ConversationCache.from_urls(store=f"sqlite:///{tmp_path}/missing/dir/x.db")
    with pytest.raises(ConfigurationError, match="does not exist"):
        await cache.open()


@pytest.mark.integration
async def test_unreachable_postgres_is_store_unavailable() -> None:
    from agent_core import StoreUnavailable

    cache = ConversationCache.from_urls(store="postgresql://postgres@127.0.0.1:1/none")
    with pytest.raises(StoreUnavailable, match="cannot connect"):
        await cache.open()


async def test_use_outside_async_with_is_an_error(store_url: str) -> None:
    cache = ConversationCache.from_urls(store=store_url)
    with pytest.raises(CacheClosed, match="async with"):
        await cache.get("t")
    async with cache:
        pass
    with pytest.raises(CacheClosed):
        await cache.append("t", [user("a")])
    with pytest.raises(CacheClosed):
        await cache.store.read("default", "t")


async def test_newer_schema_is_refused(empty_store_url: str) -> None:
    store = store_from_url(empty_store_url)
    await store.open()
    await store.close()
    await _bump_schema_version(empty_store_url)
    with pytest.raises(ConfigurationError, match="newer than this agent-core"):
        await store_from_url(empty_store_url).open()


async def test_migration_adds_tokens_to_an_older_database(empty_store_url: str) -> None:
    await _create_schema_before_tokens(empty_store_url, [payload("a"), payload("b")])
    # Openers that start together migrate the database once.
    stores = [store_from_url(empty_store_url) for _ in range(3)]
    await asyncio.gather(*(store.open() for store in stores))
    try:
        records = await stores[0].read("old", "t")
        assert (records.version, records.payloads) == (2, (payload("a"), payload("b")))
        assert records.tokens == (None, None)
        assert await stores[1].set_tokens("old", "t", O200K, {2: 5}) == 1
        await stores[2].append("old", "t", [payload("c")], tokens=[encode_token_counts({O200K: 3})])
        assert counts_of(await stores[0].read("old", "t")) == [{}, {O200K: 5}, {O200K: 3}]
    finally:
        await asyncio.gather(*(store.close() for store in stores))
    if not empty_store_url.startswith("sqlite"):
        import asyncpg

        # A process of the previous release (a rolling upgrade) still appends, without counts.
        server = await asyncpg.connect(empty_store_url)
        try:
            version = await server.fetchval(
                "SELECT version FROM agent_core.append($1, $2, $3, NULL, NULL, NULL)",
                "old",
                "t",
                [payload("d").decode()],
            )
        finally:
            await server.close()
        assert version == 4
        store = store_from_url(empty_store_url)
        await store.open()
        try:
            assert counts_of(await store.read("old", "t", after=3)) == [{}]
        finally:
            await store.close()


#: The schema version just before the tokens column.
_BEFORE_TOKENS = 2


async def _create_schema_before_tokens(url: str, payloads: list[bytes]) -> None:
    """The schema as agent-core left it before token counts, with one thread written."""
    if url.startswith("sqlite"):
        import sqlite3

        from agent_core.store._sqlite import _MIGRATIONS

        database = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        for statements in _MIGRATIONS[:_BEFORE_TOKENS]:
            for statement in statements:
                database.execute(statement)
        database.execute(f"PRAGMA user_version = {_BEFORE_TOKENS}")
        database.execute("INSERT INTO threads VALUES ('old', 't', ?, 0, 0, 0)", (len(payloads),))
        database.executemany(
            "INSERT INTO messages VALUES ('old', 't', ?, ?, 0)",
            [(seq, p.decode()) for seq, p in enumerate(payloads, 1)],
        )
        database.close()
        return
    import asyncpg

    from agent_core.store import _postgres_schema as sql

    server = await asyncpg.connect(url)
    try:
        await server.execute(sql.CREATE_SCHEMA)
        for version, script in enumerate(sql.MIGRATIONS[:_BEFORE_TOKENS], 1):
            await server.execute(script)
            await server.execute(sql.RECORD_VERSION, version)
        await server.execute(
            "SELECT agent_core.append('old', 't', $1::json[], NULL, NULL, NULL)",
            [p.decode() for p in payloads],
        )
    finally:
        await server.close()


async def _bump_schema_version(url: str) -> None:
    if url.startswith("sqlite"):
        import sqlite3

        database = sqlite3.connect(url.removeprefix("sqlite:///"))
        database.execute("PRAGMA user_version = 99")
        database.close()
        return
    import asyncpg

    server = await asyncpg.connect(url)
    await server.execute("INSERT INTO agent_core.schema_migrations (version) VALUES (99)")
    await server.close()


async def test_purge_namespace_removes_every_row_of_it_alone(
    store: SQLiteStore | PostgresStore, namespace: str
) -> None:
    other = f"{namespace}-kept"
    for ns in (namespace, other):
        await store.append(ns, "a", [b'{"role":"user","content":"x"}'], idempotency_key="k")
        await store.append(ns, "b", [b'{"role":"user","content":"y"}'])
    await store.delete(namespace, "b")  # a tombstone row, which the purge removes too
    assert await store.purge_namespace(namespace) == 2
    assert await store.version(namespace, "a") == await store.version(namespace, "b") == 0
    assert (await store.list_threads(namespace)).thread_ids == ()
    # The idempotency key went with it: the same key is a new append, at version 1.
    result = await store.append(
        namespace, "a", [b'{"role":"user","content":"z"}'], idempotency_key="k"
    )
    assert (result.version, result.applied) == (1, True)
    assert await store.version(other, "a") == await store.version(other, "b") == 1
    with pytest.raises(InvalidNamespace):
        await store.purge_namespace("bad namespace")


async def test_stored_bytes_counts_the_namespace_s_payloads(
    store: ThreadStore, namespace: str
) -> None:
    assert await store.stored_bytes(namespace) == 0
    payloads = [b'{"role":"user","content":"h\xc3\xa9"}', b'{"role":"user","content":"hi"}']
    await store.append(namespace, "a", payloads[:1])
    await store.append(namespace, "b", payloads[1:])
    await store.append(namespace + "-other", "a", payloads)
    # Bytes as stored (PostgreSQL's json keeps the text as given), UTF-8 counted in bytes.
    assert await store.stored_bytes(namespace) == sum(map(len, payloads))
    await store.delete(namespace, "a")
    assert await store.stored_bytes(namespace) == len(payloads[1])
    with pytest.raises(InvalidArgument):
        await store.stored_bytes("bad namespace!")
