"""Two tenants under concurrent load through two server processes: no cross-tenant read in
10,000 random requests (issue 14, "Tests").

Two ``agent-core serve`` processes share one PostgreSQL database (the session's, in
namespaces of this test's own: the tenants' names) and the session's private Redis (L2
and the bus), with one keys file holding a read+write key for each of tenants A and B.
Both tenants use the same thread ids (and each has a few of its own), and every message
they write names its tenant by a marker. 10,000 requests, 32 at a time, each to either
process at random: appends, turns (the echo model), reads of the whole thread, of a
window (``?max_tokens=``) and of its info, lists, and pops and edits (a read, then a
splice conditional on the version read). Checked:

- no response to a tenant holds the other tenant's marker, and no list names an id the
  tenant never wrote;
- every acknowledged write is replayed per (tenant, thread) in version order: each starts
  at the version the previous one ended at (nothing else wrote there), and every read of
  that thread (whole, window or info) shows exactly the replayed state at its version;
- at the end both processes serve each thread exactly as replayed from its own tenant's
  acknowledged writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import pytest

from ._poll import eventually
from ._serve import ServeProcess, create_key

pytestmark = pytest.mark.integration

REQUESTS: Final = 10_000
CONCURRENCY: Final = 32
SHARED_IDS: Final = tuple(f"shared-{i}" for i in range(4))
OWN_IDS: Final = 2
#: (operation, weight); pop and edit send two requests (a read, then the splice).
OPERATIONS: Final = (
    ("append", 25),
    ("turn", 10),
    ("get", 20),
    ("window", 10),
    ("info", 10),
    ("list", 8),
    ("pop", 8),
    ("edit", 9),
)
#: A role and content: what the checks compare of a message.
Message = tuple[str, str]


@dataclass(frozen=True)
class Write:
    """An acknowledged write: it took the thread from ``base`` to ``version`` by
    replacing ``[start:stop]`` (None: appended at the end) with ``messages``."""

    base: int
    version: int
    messages: tuple[Message, ...]
    start: int | None = None
    stop: int | None = None


@dataclass(frozen=True)
class Read:
    """What a read answered: the thread at ``version`` (``whole``), its newest
    ``messages`` (``window``) or just the message count (``info``)."""

    kind: str
    version: int
    messages: tuple[Message, ...] = ()
    count: int = 0


@dataclass
class Ledger:
    writes: dict[tuple[str, str], list[Write]] = field(default_factory=lambda: defaultdict(list))
    reads: dict[tuple[str, str], list[Read]] = field(default_factory=lambda: defaultdict(list))


@dataclass(frozen=True)
class Tenant:
    name: str
    marker: str
    headers: dict[str, str]
    thread_ids: tuple[str, ...]


@pytest.fixture
def servers(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> Iterator[tuple[dict[str, Tenant], list[ServeProcess]]]:
    keys = tmp_path / "keys.json"
    run = uuid.uuid4().hex[:8]
    tenants: dict[str, Tenant] = {}
    for letter in "ab":
        name = f"iso-{run}-{letter}"
        key = create_key(keys, name, "read", "write")
        tenants[letter] = Tenant(
            name=name,
            marker=f"<<tenant-{letter.upper()}-{run}>>",
            headers={"Authorization": f"Bearer {key}"},
            thread_ids=SHARED_IDS + tuple(f"only-{letter}-{i}" for i in range(OWN_IDS)),
        )
    args = ["--redis", redis_url, "--keys-file", str(keys), "--no-access-log"]
    args += ["--sweep-interval", "0"]
    processes = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        processes.append(ServeProcess(tmp_path / name, store=postgres_url, args=args))
    try:
        for process in processes:
            process.start()
        yield tenants, processes
    finally:
        for process in processes:
            process.stop()


def shown(messages: list[dict[str, Any]]) -> tuple[Message, ...]:
    return tuple((m["role"], m["content"]) for m in messages)


class Load:
    """The random requests, their checks as they come, and the ledger they fill."""

    def __init__(self, clients: dict[str, httpx.AsyncClient], tenants: dict[str, Tenant]):
        #: A client per process: httpx's pool scans all its connections on every request.
        self.clients = clients
        self.tenants = tenants
        self.urls = sorted(clients)
        self.ledger = Ledger()
        self.sent = 0
        #: Requests counted before they are sent, so the workers stop at REQUESTS exactly.
        self.reserved = 0
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.by_url: Counter[str] = Counter()
        self.numbers = itertools.count()
        self.rng = random.Random()
        names, weights = zip(*OPERATIONS, strict=True)
        self.names, self.weights = list(names), list(weights)

    def other(self, tenant: Tenant) -> Tenant:
        return next(t for t in self.tenants.values() if t is not tenant)

    def content(self, tenant: Tenant) -> str:
        return f"{tenant.marker}:{next(self.numbers)}"

    async def request(
        self, what: str, tenant: Tenant, method: str, path: str, **options: Any
    ) -> httpx.Response:
        url = self.rng.choice(self.urls)
        headers = {**tenant.headers, **options.pop("headers", {})}
        response = await self.clients[url].request(method, path, headers=headers, **options)
        self.sent += 1
        self.statuses[(what, response.status_code)] += 1
        self.by_url[url] += 1
        leaked = self.other(tenant).marker
        assert leaked not in response.text, (
            f"{tenant.name} read the other tenant's data: {method} {url}{path} -> "
            f"{response.status_code} {response.text[:500]}"
        )
        return response

    async def worker(self) -> None:
        while self.reserved < REQUESTS:
            tenant = self.tenants[self.rng.choice("ab")]
            thread_id = self.rng.choice(tenant.thread_ids)
            operation = self.rng.choices(self.names, self.weights)[0]
            if operation in ("pop", "edit") and self.reserved > REQUESTS - 2:
                operation = "get"
            self.reserved += 2 if operation in ("pop", "edit") else 1
            await getattr(self, operation)(tenant, thread_id)

    async def append(self, tenant: Tenant, thread_id: str) -> None:
        messages = [("user", self.content(tenant)) for _ in range(self.rng.randint(1, 2))]
        body = {"messages": [{"role": r, "content": c} for r, c in messages]}
        response = await self.request(
            "append", tenant, "POST", f"/v1/threads/{thread_id}/messages", json=body
        )
        assert response.status_code == 201, response.text
        version = response.json()["version"]
        self.wrote(tenant, thread_id, Write(version - len(messages), version, tuple(messages)))

    async def turn(self, tenant: Tenant, thread_id: str) -> None:
        text = self.content(tenant)
        response = await self.request(
            "turn", tenant, "POST", f"/v1/threads/{thread_id}/turns", json={"message": text}
        )
        assert response.status_code == 200, response.text
        reply = response.json()
        assert reply["text"] == f"echo: {text}"
        messages = (("user", text), ("assistant", reply["text"]))
        self.wrote(tenant, thread_id, Write(reply["version"] - 2, reply["version"], messages))

    async def get(self, tenant: Tenant, thread_id: str) -> Read:
        response = await self.request("get", tenant, "GET", f"/v1/threads/{thread_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["thread_id"] == thread_id
        read = Read("whole", body["version"], shown(body["messages"]))
        self.ledger.reads[(tenant.name, thread_id)].append(read)
        return read

    async def window(self, tenant: Tenant, thread_id: str) -> None:
        budget = self.rng.choice((30, 100, 400))
        response = await self.request(
            "window", tenant, "GET", f"/v1/threads/{thread_id}?max_tokens={budget}"
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["token_count"] <= budget, body
        read = Read("window", body["version"], shown(body["messages"]))
        self.ledger.reads[(tenant.name, thread_id)].append(read)

    async def info(self, tenant: Tenant, thread_id: str) -> None:
        response = await self.request("info", tenant, "GET", f"/v1/threads/{thread_id}/info")
        assert response.status_code == 200, response.text
        body = response.json()
        read = Read("info", body["version"], count=body["message_count"])
        self.ledger.reads[(tenant.name, thread_id)].append(read)

    async def list(self, tenant: Tenant, thread_id: str) -> None:
        response = await self.request("list", tenant, "GET", "/v1/threads?limit=100")
        assert response.status_code == 200, response.text
        listed = response.json()["thread_ids"]
        assert set(listed) <= set(tenant.thread_ids), (tenant.name, listed)

    async def pop(self, tenant: Tenant, thread_id: str) -> None:
        """The last message off, if the thread is still as read (``If-Match``)."""
        read = await self.get(tenant, thread_id)
        if not read.messages:
            self.reserved -= 1  # no splice after all
            return
        size = len(read.messages)
        response = await self.request(
            "pop",
            tenant,
            "POST",
            f"/v1/threads/{thread_id}/splice",
            json={"start": -1},
            headers={"If-Match": f'"{read.version}"'},
        )
        self.spliced(tenant, thread_id, response, Write(read.version, 0, (), size - 1, size))

    async def edit(self, tenant: Tenant, thread_id: str) -> None:
        """One message replaced by a new one, if the thread is still as read."""
        read = await self.get(tenant, thread_id)
        if not read.messages:
            self.reserved -= 1
            return
        start = self.rng.randrange(len(read.messages))
        new = ("user", self.content(tenant))
        body = {
            "start": start,
            "stop": start + 1,
            "messages": [{"role": new[0], "content": new[1]}],
            "expected_version": read.version,
        }
        response = await self.request(
            "edit", tenant, "POST", f"/v1/threads/{thread_id}/splice", json=body
        )
        self.spliced(tenant, thread_id, response, Write(read.version, 0, (new,), start, start + 1))

    def spliced(
        self, tenant: Tenant, thread_id: str, response: httpx.Response, write: Write
    ) -> None:
        if response.status_code == 409:  # another writer got there first: nothing written
            assert response.json()["error"] == "VersionConflict", response.text
            return
        assert response.status_code == 200, response.text
        version = response.json()["version"]
        assert version == write.base + 1, (write, version)
        self.wrote(
            tenant, thread_id, Write(write.base, version, write.messages, write.start, write.stop)
        )

    def wrote(self, tenant: Tenant, thread_id: str, write: Write) -> None:
        self.ledger.writes[(tenant.name, thread_id)].append(write)


def replay(key: tuple[str, str], writes: list[Write]) -> dict[int, tuple[Message, ...]]:
    """The thread's state at each version its acknowledged writes made; each write must
    start where the previous one ended (a gap would be a write nobody acknowledged)."""
    states: dict[int, tuple[Message, ...]] = {}
    version = 0
    state: tuple[Message, ...] = ()
    for write in sorted(writes, key=lambda w: w.version):
        assert write.base == version, f"{key}: {write} does not follow version {version}"
        if write.start is None:
            state = state + write.messages
        else:
            state = state[: write.start] + write.messages + state[write.stop :]
        version = write.version
        states[version] = state
    return states


def check_reads(key: tuple[str, str], reads: list[Read], states: dict[int, Any]) -> None:
    for read in reads:
        assert read.version in states, f"{key}: a read at version {read.version}, never written"
        state = states[read.version]
        if read.kind == "whole":
            assert read.messages == state, (key, read.version)
        elif read.kind == "window":
            assert state[len(state) - len(read.messages) :] == read.messages, (key, read)
        else:
            assert read.count == len(state), (key, read, len(state))


def self_marker_only(text: str, tenant: Tenant, tenants: dict[str, Tenant]) -> bool:
    return not any(t.marker in text for t in tenants.values() if t is not tenant)


async def test_no_cross_tenant_read_in_10000_requests(
    servers: tuple[dict[str, Tenant], list[ServeProcess]],
) -> None:
    tenants, processes = servers
    urls = [process.url for process in processes]
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with contextlib.AsyncExitStack() as stack:
        clients = {
            url: await stack.enter_async_context(
                httpx.AsyncClient(base_url=url, timeout=60, limits=limits)
            )
            for url in urls
        }
        load = Load(clients, tenants)
        # Every thread written once by each of its tenants before the load: no read is a 404.
        for tenant in tenants.values():
            for thread_id in tenant.thread_ids:
                await load.append(tenant, thread_id)
        load.sent = load.reserved = 0
        load.statuses.clear()
        load.by_url.clear()
        started = time.monotonic()
        async with asyncio.TaskGroup() as group:
            for _ in range(CONCURRENCY):
                group.create_task(load.worker())
        elapsed = time.monotonic() - started
        print(
            f"{load.sent} requests in {elapsed:.1f} s ({load.sent / elapsed:.0f}/s); "
            f"by process {dict(load.by_url)}; by operation and status {dict(load.statuses)}"
        )
        assert load.sent == REQUESTS
        assert set(load.by_url) == set(urls)

        states = {}
        for tenant in tenants.values():
            for thread_id in tenant.thread_ids:
                key = (tenant.name, thread_id)
                states[key] = replay(key, load.ledger.writes[key])
                check_reads(key, load.ledger.reads[key], states[key])

        # At the end, each process serves each tenant's threads as its own writes made them.
        async def settled() -> bool:
            for tenant in tenants.values():
                for thread_id in tenant.thread_ids:
                    last = max(states[(tenant.name, thread_id)].items())
                    for url in urls:
                        response = await clients[url].get(
                            f"/v1/threads/{thread_id}", headers=tenant.headers
                        )
                        assert response.status_code == 200, response.text
                        assert self_marker_only(response.text, tenant, tenants)
                        body = response.json()
                        if (body["version"], shown(body["messages"])) != last:
                            return False
            return True

        await eventually(settled)
    for tenant in tenants.values():
        final = {t: len(max(states[(tenant.name, t)].items())[1]) for t in tenant.thread_ids}
        print(f"{tenant.name}: messages per thread {final}")
