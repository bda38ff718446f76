"""Encryption at rest: nothing stored holds the plaintext, a moved or tampered ciphertext and a
wrong or missing key are typed errors, every write path works sealed, and rotate-data moves
every row to the newest key while the versions stay (both stores, real Redis)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from redis.asyncio import Redis
from typer.testing import CliRunner

from agent_core import (
    ConfigurationError,
    ConversationCache,
    DecryptionFailed,
    EncryptionKeyMissing,
    EncryptionKeys,
    IdempotencyKeyReused,
    InvalidArgument,
    InvalidMessage,
    Message,
    ThreadStore,
)
from agent_core.cli import app
from agent_core.server import Settings
from agent_core.store import StoredPayload, batch_digest, rotate_data, store_from_url

from ._sqlite_bytes import file_holds
from .conftest import l2_key

SEALED = b'{"$ac_enc":1,"k":'


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def texts(conversation: Any) -> list[str]:
    return [m.to_dict()["content"] for m in conversation.messages]


def new_keys(*ids: str) -> list[tuple[str, bytes]]:
    return [(key_id, os.urandom(32)) for key_id in ids]


def write_keys(path: Path, pairs: list[tuple[str, bytes]]) -> Path:
    document = {"keys": [{"id": key_id, "key": key.hex()} for key_id, key in pairs]}
    path.write_bytes(orjson.dumps(document))
    return path


@asynccontextmanager
async def opened(
    store_url: str, namespace: str, keys: list[tuple[str, bytes]] | None, **options: Any
) -> AsyncIterator[ConversationCache]:
    encryption = None if keys is None else EncryptionKeys(keys)
    async with ConversationCache.from_urls(
        store_url, namespace=namespace, encryption_keys=encryption, **options
    ) as cache:
        yield cache


# -- what the store and Redis hold, read around the library ------------------------------


def _sqlite_path(store_url: str) -> Path:
    return Path(store_url.removeprefix("sqlite:///"))


_TABLES = ("messages", "idempotency_keys")


async def sql(store_url: str, statement: str, *args: object) -> list[tuple[Any, ...]]:
    """Run ``statement`` (``?`` placeholders, tables as ``{messages}``) as another program
    would, and return its rows."""
    if store_url.startswith("sqlite"):
        connection = sqlite3.connect(_sqlite_path(store_url), isolation_level=None)
        try:
            query = statement.format(**{table: table for table in _TABLES})
            return connection.execute(query, args).fetchall()
        finally:
            connection.close()
    parts = statement.format(**{table: f"agent_core.{table}" for table in _TABLES}).split("?")
    query = "".join(part + (f"${i}" if i < len(parts) else "") for i, part in enumerate(parts, 1))
    remote = await asyncpg.connect(store_url)
    try:
        return [tuple(row) for row in await remote.fetch(query, *args)]
    finally:
        await remote.close()


async def stored_payloads(store_url: str, namespace: str) -> list[bytes]:
    rows = await sql(
        store_url,
        "SELECT CAST(payload AS TEXT), tokens FROM {messages} WHERE namespace = ?",
        namespace,
    )
    assert all(tokens is not None for _, tokens in rows), "counts stay plaintext"
    return [text.encode() for text, _ in rows]


async def redis_values(redis_url: str, namespace: str) -> list[bytes]:
    client = Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"ac:{{*/{namespace}/*")]
        return [value for key in keys if isinstance(value := await client.get(key), bytes)]
    finally:
        await client.aclose()


# -- the keys file ---------------------------------------------------------------------

SECRET = "feedfacecafebeef" * 4


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("{keys", "is not JSON"),
        ('[{"id": "k1"}]', 'one field, "keys"'),
        ('{"keys": [], "note": 1}', 'one field, "keys"'),
        ('{"keys": []}', "non-empty list"),
        ('{"keys": [{"id": "k1"}]}', 'exactly "id" and "key"'),
        (f'{{"keys": [{{"id": "k1", "key": "{SECRET}", "note": "x"}}]}}', 'exactly "id"'),
        (f'{{"keys": [{{"id": "k 1", "key": "{SECRET}"}}]}}', "the key id must be"),
        (f'{{"keys": [{{"id": "{"k" * 65}", "key": "{SECRET}"}}]}}', "the key id must be"),
        (f'{{"keys": [{{"id": "k1", "key": "{SECRET[:-2]}"}}]}}', "a string of 62 characters"),
        (f'{{"keys": [{{"id": "k1", "key": "{SECRET[:-1]}x"}}]}}', "must be 64 hex digits"),
        ('{"keys": [{"id": "k1", "key": 12345}]}', "got int"),
        (
            f'{{"keys": [{{"id": "k1", "key": "{SECRET}"}}, {{"id": "k1", "key": "{SECRET}"}}]}}',
            "appears twice",
        ),
    ],
)
def test_a_bad_keys_file_is_refused_clearly(tmp_path: Path, content: str, says: str) -> None:
    path = tmp_path / "keys.json"
    path.write_text(content)
    with pytest.raises(ConfigurationError) as raised:
        EncryptionKeys.from_file(path)
    assert says in str(raised.value)
    assert SECRET[:20] not in str(raised.value)
    with pytest.raises(ConfigurationError, match="cannot read the encryption keys file"):
        EncryptionKeys.from_file(tmp_path / "missing.json")


def test_keys_show_their_ids_only(tmp_path: Path) -> None:
    pairs = new_keys("k1", "k2")
    keys = EncryptionKeys.from_file(write_keys(tmp_path / "keys.json", pairs))
    assert (keys.ids, keys.newest) == (("k1", "k2"), "k2")
    shown = repr(keys) + repr(keys.cipher("ns")) + repr(Settings(encryption_keys_file="x"))
    for _, key in pairs:
        assert key.hex()[:16] not in shown
    assert "k1" in repr(keys)
    with pytest.raises(ConfigurationError, match="32 bytes"):
        EncryptionKeys([("k1", b"short")])
    with pytest.raises(ConfigurationError, match="EncryptionKeys"):
        ConversationCache.from_urls("sqlite:///x.db", encryption_keys=str(tmp_path))


async def test_settings_build_an_encrypting_cache(tmp_path: Path) -> None:
    path = write_keys(tmp_path / "keys.json", new_keys("k1"))
    settings = Settings(
        store_url=f"sqlite:///{tmp_path / 'db.sqlite'}", encryption_keys_file=str(path)
    )
    cache = settings.cache()
    assert cache.options.encryption_keys is not None
    assert cache.options.encryption_keys.ids == ("k1",)
    with pytest.raises(ConfigurationError, match="cannot read"):
        Settings(encryption_keys_file=str(tmp_path / "nope.json")).cache()


# -- nothing at rest holds the plaintext -------------------------------------------------


async def test_nothing_stored_holds_the_plaintext(
    store_url: str, redis_url: str, namespace: str
) -> None:
    marker = f"marker-{uuid.uuid4().hex}"
    keys = new_keys("k1")
    async with opened(store_url, namespace, keys, redis=redis_url) as cache:
        await cache.append("t", [user(f"{marker} one")], idempotency_key="first")
        await cache.append("t", [user(f"{marker} two"), user(f"{marker} three")])
        await cache.splice("t", 0, 1, [user(f"{marker} spliced")], idempotency_key="s")
        await cache.fork("t", "f")
        await cache.append("f", [user(f"{marker} forked")])
        window = await cache.window("t", max_tokens=1000, model="gpt-4o")
        assert len(window.messages) == 3
    async with opened(store_url, namespace, keys, redis=redis_url) as cache:
        # Cold: from L2 (or the store, filling L2), in a new instance.
        assert texts(await cache.get("t")) == [f"{marker} {w}" for w in ("spliced", "two", "three")]
        assert texts(await cache.get("f"))[-1] == f"{marker} forked"
    payloads = await stored_payloads(store_url, namespace)
    assert len(payloads) == 7
    assert all(p.startswith(SEALED) for p in payloads)
    assert not any(marker.encode() in p for p in payloads)
    values = await redis_values(redis_url, namespace)
    assert values
    assert not any(marker.encode() in value for value in values)
    if store_url.startswith("sqlite"):
        assert not file_holds(_sqlite_path(store_url), marker)
        assert not file_holds(_sqlite_path(store_url), "spliced")


async def test_rows_from_before_encryption_are_served_and_go_to_l2_sealed(
    store_url: str, redis_url: str, namespace: str
) -> None:
    marker = f"legacy-{uuid.uuid4().hex}"
    async with opened(store_url, namespace, None) as plain:
        await plain.append("old", [user(marker)])
    async with opened(store_url, namespace, new_keys("k1"), redis=redis_url) as cache:
        assert texts(await cache.get("old")) == [marker]
        await cache.append("old", [user("sealed")])
        cache.clear_local()
        assert texts(await cache.get("old")) == [marker, "sealed"]
    values = await redis_values(redis_url, namespace)
    assert values
    assert not any(marker.encode() in value for value in values)


async def test_a_message_may_not_start_like_an_envelope(store_url: str, namespace: str) -> None:
    async with opened(store_url, namespace, None) as cache:
        with pytest.raises(InvalidMessage, match="ac_enc"):
            await cache.append("t", [{"$ac_enc": 1, "role": "user", "content": "x"}])
        assert (await cache.get("t")).version == 0


# -- moved, tampered, wrong or missing -------------------------------------------------


async def test_a_ciphertext_moved_to_another_thread_or_namespace_does_not_decrypt(
    store_url: str, namespace: str
) -> None:
    keys = new_keys("k1")
    other = f"{namespace}-b"
    async with (
        opened(store_url, namespace, keys, consistency="strong") as cache,
        opened(store_url, other, keys, consistency="strong") as neighbour,
    ):
        await cache.append("a", [user("for a only")])
        await cache.append("b", [user("for b")])
        await neighbour.append("a", [user("the neighbour's a")])
        # Another program moves a's ciphertext into b, and into the other namespace's a.
        copy = (
            "UPDATE {messages} SET payload = (SELECT payload FROM {messages}"
            " WHERE namespace = ? AND thread_id = 'a' AND seq = 1)"
            " WHERE namespace = ? AND thread_id = ? AND seq = 1"
        )
        await sql(store_url, copy, namespace, namespace, "b")
        await sql(store_url, copy, namespace, other, "a")
        with pytest.raises(DecryptionFailed, match="moved from another thread") as raised:
            await cache.get("b")
        assert not isinstance(raised.value, EncryptionKeyMissing)
        with pytest.raises(DecryptionFailed):
            await neighbour.get("a")
        assert texts(await cache.get("a")) == ["for a only"]
        # Tampered: one byte of the ciphertext flipped.
        ((sealed,),) = await sql(
            store_url,
            "SELECT CAST(payload AS TEXT) FROM {messages} WHERE namespace = ? AND thread_id = 'a'",
            namespace,
        )
        box = orjson.loads(sealed)
        box["c"] = box["c"][:-4] + ("AAAA" if box["c"][-4:] != "AAAA" else "BBBB")
        await sql(
            store_url,
            "UPDATE {messages} SET payload = ? WHERE namespace = ? AND thread_id = 'a'",
            orjson.dumps(box).decode(),
            namespace,
        )
        with pytest.raises(DecryptionFailed):
            await cache.get("a")


async def test_wrong_or_missing_keys_are_typed_errors(store_url: str, namespace: str) -> None:
    keys = new_keys("k1")
    async with opened(store_url, namespace, keys) as cache:
        await cache.append("t", [user("hello")])
    attempts: list[tuple[list[tuple[str, bytes]] | None, type[DecryptionFailed], str]] = [
        (new_keys("k1"), DecryptionFailed, "other key material"),
        (new_keys("k2"), EncryptionKeyMissing, "add that key back"),
        (None, EncryptionKeyMissing, "no encryption keys"),
    ]
    for other, error, says in attempts:
        async with opened(store_url, namespace, other) as cache:
            with pytest.raises(error, match=says) as raised:
                await cache.get("t")
            for _, key in keys + (other or []):
                assert key.hex()[:16] not in str(raised.value)
            if error is DecryptionFailed:
                assert not isinstance(raised.value, EncryptionKeyMissing)
            with pytest.raises(error):  # pop reads what it removes: the same error
                await cache.pop("t")


# -- every write path, sealed -------------------------------------------------------------


async def test_splice_pop_fork_windows_and_retries_work_sealed(
    store_url: str, redis_url: str, namespace: str
) -> None:
    keys = new_keys("k1")
    async with opened(store_url, namespace, keys, redis=redis_url) as cache:
        batch = [user("a"), user("b"), user("c")]
        first = await cache.append("t", batch, idempotency_key="x")
        assert await cache.append("t", batch, idempotency_key="x") == first
        with pytest.raises(IdempotencyKeyReused):
            await cache.append("t", [user("other")], idempotency_key="x")
        spliced = await cache.splice("t", 1, 2, [user("B")], idempotency_key="s")
        assert await cache.splice("t", 1, 2, [user("B")], idempotency_key="s") == spliced
        await cache.append("t", [user("d"), user("e")])
        assert texts(await cache.get("t")) == ["a", "B", "c", "d", "e"]
        # Forked at a version before the last append: sealed afresh for the new thread id.
        await cache.fork("t", "f", at_version=spliced + 1)
        assert texts(await cache.get("f")) == ["a", "B", "c", "d"]
        popped = await cache.pop("t")
        assert popped is not None
        assert popped.to_dict() == user("e")
        window = await cache.window("f", max_tokens=1000, model="gpt-4o")
        assert [m.to_dict()["content"] for m in window.messages] == ["a", "B", "c", "d"]
    async with opened(store_url, namespace, keys, redis=redis_url) as cold:
        for thread_id, expected in (("t", ["a", "B", "c", "d"]), ("f", ["a", "B", "c", "d"])):
            cold.clear_local()
            assert texts(await cold.get(thread_id)) == expected  # L2 or the store
            cold.clear_local()
            result = await cold.read(thread_id)
            assert (texts(result.value), result.source) == (expected, "l2")
        window = await cold.window("t", max_tokens=1000, model="gpt-4o")
        assert window.token_count > 0
    payloads = await stored_payloads(store_url, namespace)
    assert all(p.startswith(SEALED) for p in payloads)
    async with opened(store_url, namespace, keys, redis=redis_url) as cache:
        await cache.purge("f")
        await cache.delete("t")
        await cache.append("t", [user("after")])
        assert (texts(await cache.get("f")), texts(await cache.get("t"))) == ([], ["after"])
    assert len(await stored_payloads(store_url, namespace)) == 1


async def test_a_retry_across_a_new_key_is_still_a_retry(store_url: str, namespace: str) -> None:
    old = new_keys("k1")
    batch = [user("once"), user("only")]
    async with opened(store_url, namespace, old) as cache:
        version = await cache.append("t", batch, idempotency_key="turn-1")
    async with opened(store_url, namespace, [*old, *new_keys("k2")]) as cache:
        assert await cache.append("t", batch, idempotency_key="turn-1") == version
        with pytest.raises(IdempotencyKeyReused):
            await cache.append("t", [user("else")], idempotency_key="turn-1")
        assert texts(await cache.get("t")) == ["once", "only"]
    ((digest,),) = await sql(
        store_url,
        "SELECT digest FROM {idempotency_keys} WHERE namespace = ?",
        namespace,
    )
    # Keyed: not the plain digest of the batch, with which a guess could be checked.
    assert bytes(digest) != batch_digest([Message(m).raw for m in batch])


# -- L2: a value that does not open is a miss ---------------------------------------------


async def test_an_l2_value_that_does_not_open_is_a_miss_refilled_from_the_store(
    sqlite_url: str, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    k1, k2 = new_keys("k1"), new_keys("k2")
    async with opened(sqlite_url, namespace, None, redis=redis_url) as plain:
        await plain.append("p", [user("plain in redis")])
        assert texts(await plain.get("p")) == ["plain in redis"]
    async with opened(sqlite_url, namespace, k1, redis=redis_url) as cache:
        await cache.append("a", [user("a")])
        await cache.append("b", [user("b")])
        client = Redis.from_url(redis_url)
        try:
            moved = await client.get(l2_key(cache, "a"))
            assert moved is not None
            await client.set(l2_key(cache, "b"), moved)
        finally:
            await client.aclose()
    async with opened(sqlite_url, namespace, k1, redis=redis_url) as cache:
        for thread_id, expected in (("b", ["b"]), ("p", ["plain in redis"])):
            result = await cache.read(thread_id)
            assert (texts(result.value), result.source) == (expected, "store")
        assert cache.stats().l2_corrupt == 2
        cache.clear_local()
        assert (await cache.read("b")).source == "l2"  # refilled, sealed
    values = await redis_values(redis_url, namespace)
    assert not any(b"plain in redis" in value for value in values)
    # The old key removed after rotate-data: its L2 values are misses, refilled.
    await rotate(sqlite_url, write_keys(tmp_path / "keys.json", [*k1, *k2]), namespace)
    async with opened(sqlite_url, namespace, k2, redis=redis_url) as cache:
        result = await cache.read("a")
        assert (texts(result.value), result.source) == (["a"], "store")
        assert cache.stats().l2_corrupt == 1


# -- rotate-data ----------------------------------------------------------------------------


async def rotate(store_url: str, path: Path, namespace: str | None, *args: str) -> str:
    """``agent-core keys rotate-data`` (in a thread: it runs its own event loop); stdout."""
    scope = [] if namespace is None else ["--namespace", namespace]
    command = ["keys", "rotate-data", "--store", store_url, "--encryption-keys-file", str(path)]
    result = await asyncio.to_thread(CliRunner().invoke, app, [*command, *scope, *args])
    assert result.exit_code == 0, result.output
    return result.stdout


async def test_rotation_end_to_end(store_url: str, namespace: str, tmp_path: Path) -> None:
    k1, k2 = new_keys("k1"), new_keys("k2")
    async with opened(store_url, namespace, None) as plain:
        await plain.append("legacy", [user("from before encryption")])
    expected = {"t": ["a", "b", "c"], "u": ["d"], "legacy": ["from before encryption"]}
    async with opened(store_url, namespace, k1) as cache:
        await cache.append("t", [user("a"), user("b")])
        await cache.append("t", [user("c")])
        await cache.append("u", [user("d")])
        versions = {t: (await cache.thread_info(t)).version for t in expected}
    path = write_keys(tmp_path / "keys.json", [*k1, *k2])
    assert (await rotate(store_url, path, namespace, "--batch", "2")).split() == ["5"]
    payloads = await stored_payloads(store_url, namespace)
    assert len(payloads) == 5
    assert all(p.startswith(b'{"$ac_enc":1,"k":"k2",') for p in payloads)
    # Nothing else rotates; and k1 can go.
    assert (await rotate(store_url, path, namespace)).split() == ["0"]
    write_keys(path, k2)
    async with opened(store_url, namespace, k2) as cache:
        for thread_id, messages in expected.items():
            assert texts(await cache.get(thread_id)) == messages
            info = await cache.thread_info(thread_id)
            # Versions stay: the triggers saw no external change.
            assert info.version == versions[thread_id]


def test_rotation_refuses_a_bad_keys_file_and_names_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text('{"keys": []}')
    command = ["keys", "rotate-data", "--store", f"sqlite:///{tmp_path / 'db'}"]
    result = CliRunner().invoke(app, [*command, "--encryption-keys-file", str(path)])
    assert result.exit_code == 2
    assert "non-empty list" in result.stderr


async def test_rotation_of_every_namespace(sqlite_url: str, tmp_path: Path) -> None:
    k1, k2 = new_keys("k1"), new_keys("k2")
    for namespace in ("one", "two"):
        async with opened(sqlite_url, namespace, k1) as cache:
            await cache.append("t", [user(namespace)])
    path = write_keys(tmp_path / "keys.json", [*k1, *k2])
    assert (await rotate(sqlite_url, path, None, "--batch", "1")).split() == ["2"]
    for namespace in ("one", "two"):
        async with opened(sqlite_url, namespace, k2) as cache:
            assert texts(await cache.get("t")) == [namespace]


async def test_rotation_skips_a_row_changed_meanwhile(store_url: str, namespace: str) -> None:
    """The swap is a compare-and-swap: a row another writer changed after the scan stays."""
    k1, k2 = new_keys("k1"), new_keys("k2")
    async with opened(store_url, namespace, k1) as cache:
        await cache.append("t", [user("a"), user("b")])
        store = cache.store
        rows = await store.scan_payloads(namespace, limit=10)
        assert [row.seq for row in rows] == [1, 2]
        both = EncryptionKeys([*k1, *k2])
        cipher = both.cipher(namespace)
        swaps = [(row, cipher.rotated(row.thread_id, row.payload) or b"") for row in rows]
        await cache.splice("t", 0, 1, [user("A")])  # row 1 goes; a new row 3 comes
        assert await store.replace_payloads(swaps) == 1
        fresh = store_from_url(store_url)
        await fresh.open()
        try:
            done = await rotate_data(fresh, both, namespace=namespace)
        finally:
            await fresh.close()
        assert (done.found, done.rotated, done.skipped) == (1, 1, 0)
    async with opened(store_url, namespace, k2) as cache:
        assert texts(await cache.get("t")) == ["A", "b"]


async def test_rotation_while_a_writer_appends_and_splices(store_url: str, namespace: str) -> None:
    """rotate-data runs beside the service: every row ends under the newest key, and every
    thread reads as the writer left it."""
    k1, k2 = new_keys("k1"), new_keys("k2")
    threads = [f"t{i}" for i in range(12)]
    async with opened(store_url, namespace, k1) as old:
        for thread_id in threads:
            await old.append(thread_id, [user(f"{thread_id}-{j}") for j in range(4)])
    both = EncryptionKeys([*k1, *k2])
    async with opened(store_url, namespace, [*k1, *k2]) as writer:
        stop = asyncio.Event()

        async def write() -> int:
            done = 0
            while not stop.is_set():
                thread_id = threads[done % len(threads)]
                await writer.append(thread_id, [user(f"w{done}")])
                if done % 3 == 0:  # replaces the oldest message, maybe a k1 row being rotated
                    await writer.splice(thread_id, 0, 1, [user(f"s{done}")])
                done += 1
            return done

        task = asyncio.create_task(write())
        store = store_from_url(store_url)
        await store.open()
        try:
            rotation = await rotate_data(store, both, namespace=namespace, batch=3)
        finally:
            await store.close()
            stop.set()
        assert await task > 0
        assert rotation.found >= rotation.rotated > 0
        expected = {thread_id: texts(await writer.get(thread_id)) for thread_id in threads}
    payloads = await stored_payloads(store_url, namespace)
    assert all(p.startswith(b'{"$ac_enc":1,"k":"k2",') for p in payloads)
    async with opened(store_url, namespace, k2) as reader:
        for thread_id, messages in expected.items():
            assert texts(await reader.get(thread_id)) == messages


# -- the store methods' own checks (both stores) -------------------------------------------


async def test_the_new_store_arguments_are_checked_and_a_refused_call_writes_nothing(
    store: ThreadStore, namespace: str
) -> None:
    await store.append(namespace, "t", [b'{"role":"user","content":"x"}'])
    for bad in ({"after": ("other-ns", "t", 0)}, {"after": (namespace, "t")}, {"limit": 0}):
        with pytest.raises(InvalidArgument):
            await store.scan_payloads(namespace, **bad)
    with pytest.raises(InvalidArgument):
        await store.scan_payloads(namespace, skip_prefix="text")  # type: ignore[arg-type]
    (row,) = await store.scan_payloads(namespace)
    for swaps in ([(row, "text")], [("row", b"{}")], b"{}"):
        with pytest.raises(InvalidArgument):
            await store.replace_payloads(swaps)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="digest"):
        await store.append(namespace, "t", [b"{}"], idempotency_key="k", digest=b"")
    with pytest.raises(InvalidArgument, match="one bytes payload per payload"):
        await store.fork(namespace, "t", "f", rewrite=lambda payloads: [])
    with pytest.raises(InvalidArgument, match="one bytes payload per payload"):
        await store.splice(namespace, "t", 0, 1, [], removed_as=lambda payloads: [])
    assert (await store.read(namespace, "t")).payloads == (row.payload,)
    assert (await store.read(namespace, "f")).version == 0
    assert await store.version(namespace, "t") == 1
    # A stale swap (the payload is no longer the one read) changes nothing either.
    stale = StoredPayload(namespace, "t", 1, b'{"role":"user","content":"y"}')
    assert await store.replace_payloads([(stale, b'{"role":"user","content":"z"}')]) == 0
    assert await store.replace_payloads([(row, b'{"role":"user","content":"z"}')]) == 1
    records = await store.read(namespace, "t")
    assert (records.version, records.payloads) == (1, (b'{"role":"user","content":"z"}',))
