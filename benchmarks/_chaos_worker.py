"""One worker process of ``chaos.py``: appends to and reads shared threads, logging every call.

    python benchmarks/_chaos_worker.py CONFIG_JSON

Not run by hand. The worker opens one ``ConversationCache`` per consistency mode (each
in its own namespace, on the same store and Redis), prints ``ready <json>`` on stdout,
then waits for ``go <stop_ns>`` on stdin and runs ``tasks`` asyncio tasks per mode
until ``time.monotonic_ns()`` reaches ``stop_ns`` (CLOCK_MONOTONIC: one clock for
every process of the machine).

Every call is written to the log at once, one JSON line per record, unbuffered, so
a worker killed with SIGKILL loses at most the calls in flight:

- ``intent``: an append is about to be tried (its message ids);
- ``ack``: an append returned (its version, start and end in ns);
- ``fail``: an append raised (the error's type; ``typed`` if an ``AgentCoreError``,
  else a traceback); it may or may not have committed, so it is retried with the
  same idempotency key, at most ``RETRIES`` times;
- ``read``: a get returned (its version, message count, digest of the message ids);
- ``rfail``: a get raised;
- ``end``: the worker's peak RSS.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import resource
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any, BinaryIO, Final

import orjson

from agent_core import ConversationCache
from agent_core.errors import AgentCoreError

APPEND_SHARE: Final = 0.25
#: The mean pause between two calls of a task, s (kept modest: the CPU is shared).
PAUSE: Final = 0.006
RETRIES: Final = 3
RETRY_PAUSE: Final = 0.05
#: A call still running after this long is recorded as a hang (and cancelled).
CALL_LIMIT: Final = 15.0
MODES: Final = ("strong", "bounded")


def ids_digest(ids: Sequence[str]) -> str:
    """What a read records of the message ids it returned (the checker computes the same)."""
    return hashlib.blake2b("\n".join(ids).encode(), digest_size=12).hexdigest()


class Log:
    """JSON lines, each written with one unbuffered ``write``."""

    def __init__(self, path: str) -> None:
        self._file: BinaryIO = open(path, "ab", buffering=0)  # noqa: SIM115 (closed in close)

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(orjson.dumps(record) + b"\n")

    def close(self) -> None:
        self._file.close()


class Worker:
    def __init__(self, config: dict[str, Any], log: Log) -> None:
        self.name: str = config["name"]
        self.threads: int = config["threads"]
        self.log = log
        self.rng = random.Random(config["seed"])
        self.tracebacks: set[tuple[str, str]] = set()

    def failure(self, kind: str, namespace: str, thread: str, exc: BaseException) -> dict[str, Any]:
        typed = isinstance(exc, AgentCoreError)
        error = "hang (harness timeout)" if isinstance(exc, TimeoutError) else type(exc).__name__
        record: dict[str, Any] = {
            "k": kind,
            "ns": namespace,
            "t": thread,
            "err": error,
            "typed": typed,
            "w": self.name,
        }
        if not typed and (namespace, error) not in self.tracebacks:
            self.tracebacks.add((namespace, error))
            record["tb"] = "".join(traceback.format_exception(exc))[-4000:]
        return record

    async def append(self, cache: ConversationCache, thread: str, prefix: str) -> None:
        namespace = cache.namespace
        ids = [f"{prefix}.{i}" for i in range(self.rng.randint(1, 3))]
        messages = [{"role": "user", "content": i} for i in ids]
        self.log.write({"k": "intent", "ns": namespace, "t": thread, "ids": ids})
        for attempt in range(RETRIES):
            started = time.monotonic_ns()
            try:
                async with asyncio.timeout(CALL_LIMIT):
                    version = await cache.append(thread, messages, idempotency_key=prefix)
            except Exception as exc:
                record = self.failure("fail", namespace, thread, exc)
                record.update(ids=ids, s=started, e=time.monotonic_ns(), attempt=attempt)
                self.log.write(record)
                await asyncio.sleep(RETRY_PAUSE)
                continue
            ended = time.monotonic_ns()
            self.log.write(
                {"k": "ack", "ns": namespace, "t": thread, "ids": ids, "v": version}
                | {"s": started, "e": ended}
            )
            return

    async def read(self, cache: ConversationCache, thread: str) -> None:
        namespace = cache.namespace
        started = time.monotonic_ns()
        try:
            async with asyncio.timeout(CALL_LIMIT):
                conversation = await cache.get(thread)
        except Exception as exc:
            record = self.failure("rfail", namespace, thread, exc)
            record.update(s=started, e=time.monotonic_ns())
            self.log.write(record)
            return
        ended = time.monotonic_ns()
        ids = [str(message.get("content")) for message in conversation.to_list()]
        self.log.write(
            {"k": "read", "ns": namespace, "t": thread, "v": conversation.version}
            | {"n": len(ids), "h": ids_digest(ids), "s": started, "e": ended}
        )

    async def task(self, cache: ConversationCache, task: int, stop_ns: int) -> None:
        calls = 0
        while time.monotonic_ns() < stop_ns:
            thread = f"t{self.rng.randrange(self.threads)}"
            if self.rng.random() < APPEND_SHARE:
                calls += 1
                await self.append(cache, thread, f"{self.name}-{cache.consistency}{task}-{calls}")
            else:
                await self.read(cache, thread)
            await asyncio.sleep(self.rng.uniform(0, 2 * PAUSE))


async def run(config: dict[str, Any]) -> None:
    log = Log(config["log"])
    worker = Worker(config, log)
    caches = [
        ConversationCache.from_urls(
            store=config["store"],
            redis=config["redis"],
            namespace=mode,
            consistency=mode,
        )
        for mode in MODES
    ]
    try:
        for cache in caches:
            await cache.open()
        staleness = getattr(caches[1], "max_staleness", None)
        print("ready " + orjson.dumps({"max_staleness": staleness}).decode(), flush=True)
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line.startswith("go "):
            return
        stop_ns = int(line.split()[1])
        await asyncio.gather(
            *(
                worker.task(cache, task, stop_ns)
                for cache in caches
                for task in range(config["tasks"])
            )
        )
    finally:
        for cache in caches:
            try:
                await cache.close()
            except Exception as exc:
                log.write(worker.failure("cfail", cache.namespace, "", exc))
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        log.write({"k": "end", "w": worker.name, "rss_kib": peak_kib})
        log.close()


if __name__ == "__main__":
    asyncio.run(run(orjson.loads(sys.argv[1])))
