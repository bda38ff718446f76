"""Concurrent writers in several OS processes, against both real stores.

Every scenario starts its writers as separate processes (``spawn``, so nothing is
inherited but the arguments) that wait on one barrier and then hit the same thread
at once. Workers send their results, or a traceback, back through a queue; the
parent then reads the thread through a store of its own and checks the invariants:
every message exactly once, ``seq`` dense from 1, batches contiguous and in each
writer's order, one write per idempotency key.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import time
import traceback
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Any, Final

import orjson
import pytest

from agent_core import (
    ConversationCache,
    IdempotencyKeyReused,
    Message,
    VersionConflict,
    store_from_url,
)
from agent_core.store import AppendResult, ThreadRecords

# OS processes sharing one store.
pytestmark = pytest.mark.integration

PROCESSES: Final = 4
APPENDS_PER_PROCESS: Final = 500
CAS_APPENDS_PER_PROCESS: Final = 50
PARENT_TASKS: Final = 8
#: How long a whole multi-process scenario may take before it counts as hung.
DEADLINE_SECONDS: Final = 90.0
BARRIER_SECONDS: Final = 60.0
THREAD: Final = "shared-thread"

_CONTEXT: Final = multiprocessing.get_context("spawn")

Worker = Callable[..., Coroutine[Any, Any, Any]]
#: (thread_id, idempotency_key, the batch each caller sends: parent tasks, then processes)
KeyedRound = tuple[str, str, Sequence[Sequence[dict[str, Any]]]]
#: (applied, version) of a keyed append; applied is None when IdempotencyKeyReused.
Outcome = tuple[bool | None, int]


# -- helpers shared by parent and workers ---------------------------------------------


def batch_size(proc: int, batch: int) -> int:
    """1 to 3 messages, fixed per (process, batch) so every run is the same."""
    return 1 + (proc + batch) % 3


def batch_messages(proc: int, batch: int) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": f"p{proc}-b{batch}-m{j}"}
        for j in range(batch_size(proc, batch))
    ]


def contents(records: ThreadRecords) -> list[str]:
    result = []
    for payload in records.payloads:
        content = orjson.loads(payload)["content"]
        assert isinstance(content, str)
        result.append(content)
    return result


async def read_thread(url: str, namespace: str, thread_id: str = THREAD) -> ThreadRecords:
    store = store_from_url(url)
    await store.open()
    try:
        return await store.read(namespace, thread_id)
    finally:
        await store.close()


def check_interleaved_batches(
    records: ThreadRecords, batches_per_process: int
) -> dict[tuple[int, int], int]:
    """Assert the log holds every batch of every process exactly once, each contiguous
    and each process's batches in order; return the seq of each batch's first message."""
    expected = {
        f"p{p}-b{b}-m{j}"
        for p in range(PROCESSES)
        for b in range(batches_per_process)
        for j in range(batch_size(p, b))
    }
    total = len(expected)
    found = contents(records)
    duplicates = sorted(c for c, n in Counter(found).items() if n > 1)
    assert not duplicates, f"messages stored more than once: {duplicates[:10]}"
    missing = sorted(expected - set(found))
    assert not missing, f"{len(missing)} messages lost, e.g. {missing[:10]}"
    extra = sorted(set(found) - expected)
    assert not extra, f"unexpected messages: {extra[:10]}"
    assert records.seqs == tuple(range(1, total + 1)), "seqs are not dense from 1"
    assert records.version == total

    seq_of = {content: seq for seq, content in zip(records.seqs, found, strict=True)}
    starts: dict[tuple[int, int], int] = {}
    for p in range(PROCESSES):
        previous_end = 0
        for b in range(batches_per_process):
            seqs = [seq_of[f"p{p}-b{b}-m{j}"] for j in range(batch_size(p, b))]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (
                f"batch p{p}-b{b} is split or out of order: seqs {seqs}"
            )
            assert seqs[0] > previous_end, (
                f"batch p{p}-b{b} (seq {seqs[0]}) is stored before an earlier batch of the "
                f"same process (ending at seq {previous_end})"
            )
            previous_end = seqs[-1]
            starts[p, b] = seqs[0]
    return starts


# -- running workers in other processes -----------------------------------------------


def _child(
    worker: Worker, index: int, barrier: Barrier, results: Queue[Any], args: tuple[Any, ...]
) -> None:
    """Process entry point: run one async worker, report its result or traceback."""
    try:
        value: Any = asyncio.run(worker(index, barrier, *args))
    except BaseException:
        results.put((index, False, traceback.format_exc()))
        raise SystemExit(1) from None
    results.put((index, True, value))


def start_workers(
    worker: Worker, args: tuple[Any, ...], *, extra_parties: int = 0
) -> tuple[list[SpawnProcess], Barrier, Queue[Any]]:
    """Start PROCESSES workers sharing one barrier (with room for ``extra_parties``)."""
    barrier = _CONTEXT.Barrier(PROCESSES + extra_parties)
    results: Queue[Any] = _CONTEXT.Queue()
    processes = [
        _CONTEXT.Process(
            target=_child,
            args=(worker, index, barrier, results, args),
            name=f"{worker.__name__}-{index}",
            daemon=True,
        )
        for index in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    return processes, barrier, results


def collect(
    processes: Sequence[SpawnProcess], barrier: Barrier, results: Queue[Any], started: float
) -> dict[int, Any]:
    """Each worker's result, in index order; fails on an error, a crash or a hang.

    The first failure breaks the barrier, so that the others stop waiting for it."""
    values: dict[int, Any] = {}
    errors: dict[int, str] = {}
    # A worker that died without reporting (say, it could not even import this module)
    # gets a grace period for its last message to arrive, then fails the test at once.
    dead_since: dict[int, float] = {}
    try:
        while len(values) + len(errors) < len(processes):
            try:
                index, ok, value = results.get(timeout=0.2)
            except queue.Empty:
                now = time.monotonic()
                silent = [i for i in range(len(processes)) if i not in values and i not in errors]
                for i in silent:
                    if processes[i].exitcode is not None:
                        dead_since.setdefault(i, now)
                crashed = {
                    processes[i].name: processes[i].exitcode
                    for i in silent
                    if now - dead_since.get(i, now) > 2.0
                }
                if crashed or now > started + DEADLINE_SECONDS:
                    barrier.abort()
                    problem = (
                        f"exited without reporting (exit codes {crashed}); see stderr"
                        if crashed
                        else f"did not report within {DEADLINE_SECONDS}s"
                    )
                    pytest.fail(
                        f"workers {[processes[i].name for i in silent]}: {problem}; "
                        f"other errors: {list(errors.values())}",
                        pytrace=False,
                    )
                continue
            if ok:
                values[index] = value
            else:
                errors[index] = f"worker {index} failed:\n{value}"
                barrier.abort()
        for process in processes:
            process.join(timeout=max(started + DEADLINE_SECONDS - time.monotonic(), 1.0))
        hung = [p.name for p in processes if p.is_alive()]
        assert not hung, f"workers did not exit: {hung}"
        if errors:
            pytest.fail("\n".join(errors.values()), pytrace=False)
        codes = {p.name: p.exitcode for p in processes if p.exitcode != 0}
        assert not codes, f"workers exited abnormally: {codes}"
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(5)
        results.close()
    return dict(sorted(values.items()))


def run_workers(worker: Worker, *args: Any) -> dict[int, Any]:
    started = time.monotonic()
    processes, barrier, results = start_workers(worker, args)
    return collect(processes, barrier, results, started)


# -- workers (module level, so that spawn can find them) --------------------------------


async def append_batches(
    proc: int, barrier: Barrier, url: str, namespace: str, open_first: bool
) -> list[int]:
    """Append APPENDS_PER_PROCESS batches; return the version each append returned."""
    if not open_first:
        # Race the others to create the schema.
        await asyncio.to_thread(barrier.wait, BARRIER_SECONDS)
    versions = []
    async with ConversationCache.from_urls(store=url, namespace=namespace) as cache:
        if open_first:
            await asyncio.to_thread(barrier.wait, BARRIER_SECONDS)
        for batch in range(APPENDS_PER_PROCESS):
            versions.append(await cache.append(THREAD, batch_messages(proc, batch)))
    return versions


async def append_with_same_key(
    proc: int, barrier: Barrier, url: str, namespace: str, rounds: Sequence[KeyedRound]
) -> list[Outcome]:
    """For each round: wait for everyone, then append this process's batch once."""
    outcomes: list[Outcome] = []
    async with ConversationCache.from_urls(store=url, namespace=namespace) as cache:
        for thread_id, key, batches in rounds:
            await asyncio.to_thread(barrier.wait, BARRIER_SECONDS)
            outcomes.append(await keyed_append(cache, thread_id, key, batches[PARENT_TASKS + proc]))
    return outcomes


async def keyed_append(
    cache: ConversationCache, thread_id: str, key: str, messages: Sequence[dict[str, Any]]
) -> Outcome:
    payloads = [Message.from_dict(m).raw for m in messages]
    try:
        result: AppendResult = await cache.store.append(
            cache.namespace, thread_id, payloads, idempotency_key=key
        )
    except IdempotencyKeyReused as exc:
        return None, exc.version
    return result.applied, result.version


async def compare_and_append(
    proc: int, barrier: Barrier, url: str, namespace: str
) -> list[tuple[int, int]]:
    """Read, then append at that version, retrying on conflict, until
    CAS_APPENDS_PER_PROCESS batches landed; return (expected, new version) of each."""
    landed: list[tuple[int, int]] = []
    async with ConversationCache.from_urls(store=url, namespace=namespace) as cache:
        await asyncio.to_thread(barrier.wait, BARRIER_SECONDS)
        batch = 0
        while batch < CAS_APPENDS_PER_PROCESS:
            expected = (await cache.get(THREAD)).version
            try:
                version = await cache.append(
                    THREAD, batch_messages(proc, batch), expected_version=expected
                )
            except VersionConflict as exc:
                if exc.expected != expected or exc.actual <= expected:
                    raise AssertionError(
                        f"conflict reports expected={exc.expected} actual={exc.actual} "
                        f"for an append that expected {expected}"
                    ) from exc
                continue
            landed.append((expected, version))
            batch += 1
    return landed


# -- tests --------------------------------------------------------------------------------


def check_append_versions(
    versions: dict[int, Any], starts: dict[tuple[int, int], int], batches: int
) -> None:
    """Each append returned the version its own batch ended at."""
    assert sorted(versions) == list(range(PROCESSES))
    for p, returned in versions.items():
        assert len(returned) == batches
        for b, version in enumerate(returned):
            assert version == starts[p, b] + batch_size(p, b) - 1, (
                f"append of batch p{p}-b{b} returned version {version}, but the batch "
                f"ends at seq {starts[p, b] + batch_size(p, b) - 1}"
            )


async def test_processes_append_to_one_thread(store_url: str, namespace: str) -> None:
    # Create the schema first, so the workers race only on appends.
    store = store_from_url(store_url)
    await store.open()
    try:
        versions = await asyncio.to_thread(run_workers, append_batches, store_url, namespace, True)
        records = await store.read(namespace, THREAD)
    finally:
        await store.close()
    starts = check_interleaved_batches(records, APPENDS_PER_PROCESS)
    check_append_versions(versions, starts, APPENDS_PER_PROCESS)


async def test_processes_create_schema_and_append_concurrently(
    empty_store_url: str, namespace: str
) -> None:
    versions = await asyncio.to_thread(
        run_workers, append_batches, empty_store_url, namespace, False
    )
    records = await read_thread(empty_store_url, namespace)
    starts = check_interleaved_batches(records, APPENDS_PER_PROCESS)
    check_append_versions(versions, starts, APPENDS_PER_PROCESS)


async def test_idempotency_key_sequential(store_url: str, namespace: str) -> None:
    batch = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
    async with ConversationCache.from_urls(store=store_url, namespace=namespace) as cache:
        await cache.append(THREAD, [{"role": "system", "content": "be brief"}])
        first = await cache.append(THREAD, batch, idempotency_key="key-1")
        again = await cache.append(THREAD, batch, idempotency_key="key-1")
        assert first == again == 3
        payloads = [Message.from_dict(m).raw for m in batch]
        replay = await cache.store.append(namespace, THREAD, payloads, idempotency_key="key-1")
        assert replay == AppendResult(3, applied=False)

        with pytest.raises(IdempotencyKeyReused) as reused:
            await cache.append(
                THREAD, [{"role": "user", "content": "something else"}], idempotency_key="key-1"
            )
        assert reused.value.version == 3
        assert reused.value.key == "key-1"
        # Same messages but one fewer: a different batch too.
        with pytest.raises(IdempotencyKeyReused):
            await cache.append(THREAD, batch[:1], idempotency_key="key-1")
        # The key is checked before expected_version: a retry of a compare-and-append
        # that succeeded returns its version even though the expected one is stale by now.
        assert await cache.append(THREAD, batch, idempotency_key="key-1", expected_version=1) == 3
        with pytest.raises(IdempotencyKeyReused):
            await cache.append(THREAD, batch[::-1], idempotency_key="key-1", expected_version=1)

        # The key is per thread: another thread may use it for its own first batch.
        assert await cache.append("other-thread", batch, idempotency_key="key-1") == 2
        # A new key appends again.
        assert await cache.append(THREAD, batch, idempotency_key="key-2") == 5
        assert await cache.append(THREAD, batch, idempotency_key="key-1") == 3

    records = await read_thread(store_url, namespace)
    assert records.version == 5
    assert records.seqs == (1, 2, 3, 4, 5)
    assert contents(records) == ["be brief", "hello", "hi", "hello", "hi"]


async def test_idempotency_key_concurrent(store_url: str, namespace: str) -> None:
    """8 tasks here and 4 other processes send a keyed batch at the same moment."""
    batch = [
        {"role": "user", "content": "question"},
        {"role": "assistant", "content": "answer"},
    ]
    other = [{"role": "user", "content": "a different batch under the same key"}]
    callers = PARENT_TASKS + PROCESSES  # tasks first, then processes
    rounds: list[KeyedRound] = [
        # Every caller sends the same batch: to a new thread, then to an existing one.
        (THREAD, "k-new-thread", [batch] * callers),
        (THREAD, "k-existing-thread", [batch] * callers),
        # Half the callers (here and there) send another batch under one key.
        ("mixed-thread", "k-mixed", [batch if i % 2 else other for i in range(callers)]),
    ]

    started = time.monotonic()
    async with ConversationCache.from_urls(store=store_url, namespace=namespace) as cache:
        processes, barrier, results = start_workers(
            append_with_same_key, (store_url, namespace, rounds), extra_parties=1
        )
        # Collect meanwhile: a worker's failure breaks the barrier we wait on below.
        collector = asyncio.ensure_future(
            asyncio.to_thread(collect, processes, barrier, results, started)
        )
        here: list[list[Outcome]] = []
        try:
            async with asyncio.timeout(DEADLINE_SECONDS):
                for thread_id, key, batches in rounds:
                    await asyncio.to_thread(barrier.wait, BARRIER_SECONDS)
                    here.append(
                        await asyncio.gather(
                            *(
                                keyed_append(cache, thread_id, key, batches[task])
                                for task in range(PARENT_TASKS)
                            )
                        )
                    )
        except BaseException:
            barrier.abort()  # let the workers fail fast instead of waiting out the barrier
            raise
        finally:
            there = await collector
        records = await cache.store.read(namespace, THREAD)
        mixed_records = await cache.store.read(namespace, "mixed-thread")

    outcomes = [
        [*here[number], *(there[p][number] for p in range(PROCESSES))]
        for number in range(len(rounds))
    ]
    for number, expected in enumerate([len(batch), 2 * len(batch)]):
        applied = [o for o in outcomes[number] if o[0]]
        assert len(applied) == 1, f"round {number}: {len(applied)} writes: {outcomes[number]}"
        assert {version for _, version in outcomes[number]} == {expected}, (
            f"round {number}: callers got different versions: {outcomes[number]}"
        )
    assert records.version == 2 * len(batch)
    assert records.seqs == (1, 2, 3, 4)
    assert contents(records) == ["question", "answer"] * 2

    # Mixed round: exactly one batch landed; whoever sent the other one was refused.
    sent, mixed = rounds[2][2], outcomes[2]
    winners = [caller for caller, (applied, _) in enumerate(mixed) if applied]
    assert len(winners) == 1, f"{len(winners)} writes in the mixed round: {mixed}"
    won = sent[winners[0]]
    assert contents(mixed_records) == [m["content"] for m in won]
    assert mixed_records.seqs == tuple(range(1, len(won) + 1))
    assert mixed_records.version == len(won)
    for caller, (messages, (applied, version)) in enumerate(zip(sent, mixed, strict=True)):
        assert version == len(won), f"caller {caller} got version {version}: {mixed}"
        if messages == won:
            assert applied is not None, f"caller {caller}'s replay was refused: {mixed}"
        else:
            assert applied is None, f"caller {caller}'s other batch was accepted: {mixed}"


async def test_compare_and_append_race(store_url: str, namespace: str) -> None:
    store = store_from_url(store_url)
    await store.open()
    try:
        landed = await asyncio.to_thread(run_workers, compare_and_append, store_url, namespace)
        records = await store.read(namespace, THREAD)
    finally:
        await store.close()
    starts = check_interleaved_batches(records, CAS_APPENDS_PER_PROCESS)
    assert len(starts) == PROCESSES * CAS_APPENDS_PER_PROCESS
    for p, appends in landed.items():
        assert len(appends) == CAS_APPENDS_PER_PROCESS
        for b, (expected, version) in enumerate(appends):
            # The batch went in right after the version its writer had read.
            assert starts[p, b] == expected + 1, (
                f"batch p{p}-b{b} expected version {expected} but starts at seq {starts[p, b]}"
            )
            assert version == expected + batch_size(p, b)


async def test_delete_racing_an_append_orders_them(store_url: str, namespace: str) -> None:
    """A delete and an append never share a version: one is wholly before the other."""
    first, second = store_from_url(store_url), store_from_url(store_url)
    await first.open()
    await second.open()
    try:
        for _ in range(300):
            await second.delete(namespace, "t")
            appended, deleted = await asyncio.gather(
                first.append(namespace, "t", [b'{"role":"user","content":"x"}']),
                second.delete(namespace, "t"),
            )
            records = await first.read(namespace, "t")
            assert deleted != appended.version
            if deleted > appended.version:
                assert records.seqs == ()
            else:
                assert records.seqs == (appended.version,)
    finally:
        await first.close()
        await second.close()
