"""TLS to PostgreSQL and Redis (issue 14, "TLS and secrets"), against local certificates.

One private PostgreSQL (``ssl=on``, TLS and a client certificate required) and one
redis-server (TLS only, ``--tls-auth-clients yes``) start once for the module, with
certificates from a local CA (tests/_tls.py). A cache appends and reads through both; a
wrong CA, a certificate for another host and a plain connection each fail at open with a
ConfigurationError that says what is wrong and how to fix it.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest

from agent_core import ConversationCache, RateLimiter, RateLimits
from agent_core.errors import ConfigurationError, RateLimited

from ._poll import eventually
from ._redis_server import RedisServer, TlsFiles
from ._tls import Certificates, TlsPostgres, make_certificates

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "user", "content": "over TLS"}, {"role": "assistant", "content": "yes"}]


@dataclass(frozen=True)
class Servers:
    certificates: Certificates
    postgres: TlsPostgres
    redis: RedisServer

    def store_url(self, *, ca: Path | None = None, host: str = "127.0.0.1", **extra: str) -> str:
        """verify-full with the CA (or ``ca``) and the client certificate, plus ``extra``."""
        files = self.certificates
        parameters = {
            "sslmode": "verify-full",
            "sslrootcert": str(ca or files.ca),
            "sslcert": str(files.client_cert),
            "sslkey": str(files.client_key),
            "pool_max_size": "2",
        }
        return self.postgres.url(host, **{**parameters, **extra})

    def redis_url(self, *, ca: Path | None = None, scheme: str = "rediss") -> str:
        files = self.certificates
        query = urlencode(
            {
                "ssl_ca_certs": str(ca or files.ca),
                "ssl_certfile": str(files.client_cert),
                "ssl_keyfile": str(files.client_key),
                "ssl_cert_reqs": "required",
            }
        )
        return f"{scheme}://:s3cret-pw@127.0.0.1:{self.redis.port}/0?{query}"


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    # Not tmp_path: its parents are private to root, and PostgreSQL runs as ``postgres``.
    directory = Path(tempfile.mkdtemp(prefix="agent-core-tls-"))
    directory.chmod(0o755)
    certificates = make_certificates(directory / "certs")
    postgres = TlsPostgres(directory / "postgres", certificates)
    (directory / "redis").mkdir()
    redis = RedisServer(
        directory / "redis",
        tls=TlsFiles(
            certificates.server_cert,
            certificates.server_key,
            certificates.ca,
            client=(certificates.client_cert, certificates.client_key),
        ),
    )
    try:
        redis.start()
        postgres.start()
        yield Servers(certificates, postgres, redis)
    finally:
        redis.kill()
        postgres.stop()
        shutil.rmtree(directory, ignore_errors=True)


# -- both over TLS --------------------------------------------------------------------


async def test_a_cache_appends_and_reads_over_tls_on_both(servers: Servers, namespace: str) -> None:
    """verify-full with the right CA, and a client certificate on both servers, which
    refuse anything else: the store opening at all proves TLS and the certificate."""
    store, redis = servers.store_url(), servers.redis_url()
    async with (
        ConversationCache.from_urls(store=store, redis=redis, namespace=namespace) as writer,
        # Trusts its L1 for a minute: only the bus can tell it of the writer's next append.
        ConversationCache.from_urls(
            store=store, redis=redis, namespace=namespace, max_staleness=60
        ) as reader,
    ):
        await writer.append("t", MESSAGES)
        assert (await writer.get("t")).to_list() == MESSAGES
        read = await reader.read("t")  # a new instance: L1 empty, L2 filled by the append
        assert (read.source, read.value.to_list()) == ("l2", MESSAGES)
        later = [{"role": "user", "content": "and the bus?"}]
        version = await writer.append("t", later)

        async def announced() -> bool:  # the bus (its own pub/sub connection) dropped L1
            return (await reader.get("t")).version == version

        await eventually(announced)
        assert (await reader.get("t")).to_list() == MESSAGES + later
        for cache in (writer, reader):
            assert not cache.stats().degraded
            assert cache.stats().redis_errors == 0


async def test_the_rate_limiter_shares_its_budget_over_tls(
    servers: Servers, namespace: str
) -> None:
    limits = RateLimits(requests_per_minute=1, max_wait=0)
    url = servers.redis_url()
    async with (
        RateLimiter(limits, redis=url, namespace=namespace) as first,
        RateLimiter(limits, redis=url, namespace=namespace) as second,
    ):
        await first.acquire("m", 1)
        with pytest.raises(RateLimited):  # the one request a minute was taken through Redis
            await second.acquire("m", 1)
        for limiter in (first, second):
            assert limiter.stats().shared
            assert not limiter.stats().degraded


# -- failures at open: typed, clear, no secret ------------------------------------------


async def test_a_wrong_ca_fails_postgres_at_open(servers: Servers, namespace: str) -> None:
    url = servers.store_url(ca=servers.certificates.wrong_ca).replace("agent@", "agent:pg-pw@")
    cache = ConversationCache.from_urls(store=url, namespace=namespace)
    with pytest.raises(ConfigurationError) as caught:
        async with cache:
            pass
    message = str(caught.value)
    assert "TLS certificate verification failed" in message
    assert f"127.0.0.1:{servers.postgres.port}" in message
    assert "sslrootcert" in message
    assert "pg-pw" not in message


async def test_a_certificate_for_another_host_fails_verify_full(servers: Servers) -> None:
    """127.0.0.2 reaches the same server, but its certificate names only 127.0.0.1 and
    localhost: verify-full refuses it, verify-ca (the CA alone) accepts it."""
    elsewhere = servers.store_url(host="127.0.0.2")
    with pytest.raises(ConfigurationError, match="TLS certificate verification failed") as caught:
        async with ConversationCache.from_urls(store=elsewhere):
            pass
    assert "not valid for '127.0.0.2'" in str(caught.value)
    verify_ca = servers.store_url(host="127.0.0.2", sslmode="verify-ca")
    async with ConversationCache.from_urls(store=verify_ca, namespace="tls-ca") as cache:
        assert (await cache.get("t")).version >= 0


async def test_a_wrong_ca_fails_redis_at_open(
    servers: Servers, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Not an outage (which would leave the cache degraded): open fails."""
    caplog.set_level(logging.INFO, logger="agent_core")
    url = servers.redis_url(ca=servers.certificates.wrong_ca)
    with pytest.raises(ConfigurationError) as caught:
        async with ConversationCache.from_urls(store=sqlite_url, redis=url):
            pass
    message = str(caught.value)
    assert "TLS certificate verification failed for Redis" in message
    assert f"127.0.0.1:{servers.redis.port}" in message
    assert "ssl_ca_certs" in message
    assert "s3cret-pw" not in message + caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # not degraded


async def test_a_plain_connection_to_tls_only_postgres_is_refused_clearly(
    servers: Servers,
) -> None:
    with pytest.raises(ConfigurationError, match="accepts only TLS") as caught:
        async with ConversationCache.from_urls(store=servers.store_url(sslmode="disable")):
            pass
    assert "no encryption" in str(caught.value)


async def test_a_plain_connection_to_tls_only_redis_is_refused_clearly(
    servers: Servers, sqlite_url: str
) -> None:
    url = f"redis://:s3cret-pw@127.0.0.1:{servers.redis.port}/0"
    with pytest.raises(ConfigurationError, match="accepts only TLS") as caught:
        async with ConversationCache.from_urls(store=sqlite_url, redis=url):
            pass
    message = str(caught.value)
    assert f"rediss://127.0.0.1:{servers.redis.port}/0?ssl_ca_certs=" in message
    assert "s3cret-pw" not in message


async def test_a_missing_redis_client_certificate_is_named(
    servers: Servers, sqlite_url: str
) -> None:
    """The server closes the connection, with an alert or a reset: open says why."""
    url = f"rediss://127.0.0.1:{servers.redis.port}/0?ssl_ca_certs={servers.certificates.ca}"
    for _ in range(3):  # the alert or the reset, whichever comes
        with pytest.raises(ConfigurationError, match="asks for a client certificate"):
            async with ConversationCache.from_urls(store=sqlite_url, redis=url):
                pass


async def test_a_missing_postgres_client_certificate_is_named(servers: Servers) -> None:
    """The server asks for one (``cert`` authentication); the URL gives none."""
    url = servers.postgres.url(sslmode="verify-full", sslrootcert=str(servers.certificates.ca))
    with pytest.raises(ConfigurationError, match=re.escape("sslcert=/path/to/client.pem")):
        async with ConversationCache.from_urls(store=url):
            pass


def test_tls_files_that_cannot_be_read_are_refused_before_connecting(tmp_path: Path) -> None:
    """The file is named (paths are no secret), the password is not."""
    missing = tmp_path / "no-such-ca.pem"
    store = f"postgresql://agent:pg-pw@127.0.0.1:1/db?sslmode=verify-full&sslrootcert={missing}"
    with pytest.raises(ConfigurationError, match=r"sslrootcert=.*no-such-ca\.pem") as caught:
        ConversationCache.from_urls(store=store)
    assert "pg-pw" not in str(caught.value)
    key = tmp_path / "no-such.key"
    redis = f"rediss://:s3cret-pw@127.0.0.1:1/0?ssl_certfile={missing}&ssl_keyfile={key}"
    with pytest.raises(ConfigurationError, match=r"ssl_certfile=.*no-such-ca\.pem") as caught:
        ConversationCache.from_urls(store=f"sqlite:///{tmp_path / 'db'}", redis=redis)
    assert "s3cret-pw" not in str(caught.value)
