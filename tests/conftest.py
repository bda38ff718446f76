"""Real services only: a temp-dir SQLite file and a fresh PostgreSQL database.

PostgreSQL comes from AGENT_CORE_TEST_POSTGRES_URL (default: the local server). If it
cannot be reached the run fails loudly; nothing is skipped.

Every test is marked ``unit`` or ``integration`` here (see `pytest_collection_modifyitems`):
``pytest -m unit`` is the fast set, which needs no Redis, PostgreSQL, subprocess or
network server, and a unit test that reaches for one fails at once.
"""

from __future__ import annotations

import asyncio
import multiprocessing.process
import os
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from hypothesis import HealthCheck, settings

from agent_core import ConversationCache, ThreadStore, store_from_url

from ._redis_server import RedisServer

# No per-example deadline and no "too slow" health check: a loaded machine can take
# seconds over one example (test_messages once exceeded the default 200 ms at load ~9);
# the properties are about results, and timing goals belong to benchmarks/.
settings.register_profile("agent-core", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("agent-core")

# -- unit / integration ---------------------------------------------------------------

#: Fixtures that reach a service outside this process (PostgreSQL, a redis-server) or
#: listen on the network: ``server`` is what the modules name their local HTTP server
#: (ChatServer, AnthropicServer, ``agent-core serve``).
SERVICE_FIXTURES = frozenset(
    {
        "postgres_database_factory",
        "postgres_url",
        "fresh_postgres_url",
        "redis_url",
        "redis_server",
        "server",
    }
)
#: Fixtures parametrized over STORES: only their PostgreSQL instances need a service.
STORE_FIXTURES = frozenset({"store_url", "empty_store_url"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test ``integration`` if it uses a service fixture, else ``unit``.

    A test that starts a service itself (a redis-server, a subprocess, a local HTTP
    server) is marked ``integration`` in its module; an explicit mark wins.
    """
    for item in items:
        if item.get_closest_marker("unit") or item.get_closest_marker("integration"):
            continue
        item.add_marker(pytest.mark.integration if _uses_a_service(item) else pytest.mark.unit)


def _uses_a_service(item: pytest.Item) -> bool:
    names = set(getattr(item, "fixturenames", ()))
    if names & SERVICE_FIXTURES:
        return True
    callspec = getattr(item, "callspec", None)
    params: dict[str, object] = callspec.params if callspec is not None else {}
    return any(params.get(name) == "postgres" for name in names & STORE_FIXTURES)


@pytest.fixture(autouse=True)
def _unit_tests_stay_in_process(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``unit`` test may not open a network connection or server, or start a process:
    it fails saying so, instead of passing here and failing where the services are down."""
    if request.node.get_closest_marker("unit") is None:
        return

    def refuse(what: str) -> AssertionError:
        return AssertionError(
            f"{request.node.nodeid} is a unit test but {what}; "
            "mark it integration (pytest.mark.integration)"
        )

    network = (socket.AF_INET, socket.AF_INET6)
    connect, connect_ex, bind = socket.socket.connect, socket.socket.connect_ex, socket.socket.bind

    def guarded(real: Any, what: str) -> Any:
        def call(self: socket.socket, address: Any) -> Any:
            if self.family in network:
                raise refuse(f"{what} {address!r}")
            return real(self, address)

        return call

    def no_process(*args: Any, **kwargs: Any) -> None:
        raise refuse("starts a process")

    monkeypatch.setattr(socket.socket, "connect", guarded(connect, "connects to"))
    monkeypatch.setattr(socket.socket, "connect_ex", guarded(connect_ex, "connects to"))
    monkeypatch.setattr(socket.socket, "bind", guarded(bind, "listens on"))
    monkeypatch.setattr(subprocess.Popen, "_execute_child", no_process)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", no_process)


# -- services ------------------------------------------------------------------------

POSTGRES_URL = os.environ.get(
    "AGENT_CORE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
STORES = ("sqlite", "postgres")


def _with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


async def _admin(statement: str) -> None:
    try:
        connection = await asyncpg.connect(POSTGRES_URL, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(
            f"PostgreSQL is required by the tests and is not reachable at {POSTGRES_URL}: {exc}. "
            "Start it or set AGENT_CORE_TEST_POSTGRES_URL.",
            pytrace=False,
        )
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def postgres_database_factory() -> Iterator[list[str]]:
    """Creates empty databases on demand and drops them all at the end."""
    created: list[str] = []
    yield created
    for name in created:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def new_postgres_url(created: list[str]) -> str:
    name = f"ac_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    created.append(name)
    return _with_database(POSTGRES_URL, name)


@pytest.fixture(scope="session")
def postgres_url(postgres_database_factory: list[str]) -> str:
    """One database for the session; tests keep apart by namespace."""
    return new_postgres_url(postgres_database_factory)


@pytest.fixture
def fresh_postgres_url(postgres_database_factory: list[str]) -> str:
    """An empty database of this test's own."""
    return new_postgres_url(postgres_database_factory)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'agent-core.db'}"


@pytest.fixture(params=STORES)
def store_url(request: pytest.FixtureRequest) -> str:
    """The same contract runs against every store."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture(params=STORES)
def empty_store_url(request: pytest.FixtureRequest) -> str:
    """A store URL whose database has no schema yet."""
    fixture = "sqlite_url" if request.param == "sqlite" else "fresh_postgres_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def namespace() -> str:
    return f"ns-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[ThreadStore]:
    opened = store_from_url(store_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def cache(store_url: str, namespace: str) -> AsyncIterator[ConversationCache]:
    async with ConversationCache.from_urls(store=store_url, namespace=namespace) as opened:
        yield opened


CacheFactory = Callable[..., AbstractAsyncContextManager[ConversationCache]]


@pytest.fixture
def make_cache(store_url: str, redis_url: str, namespace: str) -> CacheFactory:
    """Opens a new cache (a new "instance") over the shared store and Redis."""

    @asynccontextmanager
    async def make(**options: Any) -> AsyncIterator[ConversationCache]:
        options.setdefault("redis", redis_url)
        # Exact per-tier counts need Redis calls not to time out on a busy machine;
        # deadlines and degraded mode are tested in test_degraded.py.
        options.setdefault("redis_timeout", 1.0)
        async with ConversationCache.from_urls(
            store=store_url, namespace=namespace, **options
        ) as cache:
            yield cache

    return make


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private Redis for the session; tests keep apart by namespace."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.kill()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, to kill, pause and restart."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    if server.process is not None:
        server.resume()
    server.kill()


async def read_until_fresh(
    cache: ConversationCache, thread_id: str, version: int, *, acknowledged: float
) -> None:
    """Read until ``version`` shows, failing any read that began more than the cache's
    ``max_staleness`` after the append of ``version`` was acknowledged (``acknowledged``,
    time.monotonic() taken after it returned)."""
    while True:
        started = time.monotonic()
        if (await cache.get(thread_id)).version >= version:
            return
        assert started - acknowledged <= cache.max_staleness, "stale beyond the bound"
        await asyncio.sleep(0.005)


def l2_key(cache: ConversationCache, thread_id: str) -> str:
    """The Redis key of a thread's L2 value, by the layout docs/DESIGN.md states
    (``ac:{<fingerprint>/<namespace>/<thread id>}``); the cache must be open."""
    return f"ac:{{{cache.store.fingerprint}/{cache.namespace}/{thread_id}}}"
