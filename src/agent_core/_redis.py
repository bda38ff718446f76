"""The Redis clients agent-core makes from URLs: one server, or a Redis Cluster."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import Mapping
from typing import Any, Final, TypeAlias

import redis.asyncio as redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from ._urls import redact, show_url
from .errors import ConfigurationError

__all__ = [
    "REDIS_FAILURES",
    "RedisClient",
    "describe",
    "is_cluster",
    "ping",
    "redis_client",
    "refresh_slots",
    "tls_misconfiguration",
]

#: Bytes asked of the socket per read (redis-py's default: 64 KB). A large L2 value
#: then takes a few reads instead of one per 64 KB, each a trip through the event
#: loop and a feed of the hiredis reader (docs/BENCHMARKS.md, "L2 hot path").
READ_SIZE: Final = 1 << 20

#: A client of one Redis server or of a Redis Cluster.
RedisClient: TypeAlias = redis.Redis | RedisCluster
#: What a Redis call may raise when Redis or a cluster node is unreachable, slow or
#: failing over (ConnectionError, TimeoutError, MOVED/ASK beyond the redirect limit,
#: CLUSTERDOWN, TRYAGAIN, an uncovered slot): each turns into the caller's fallback.
REDIS_FAILURES: Final = (RedisError, RedisClusterException, OSError, TimeoutError)
#: ``redis+cluster://`` is a cluster over plain TCP, ``rediss+cluster://`` over TLS.
_CLUSTER_SCHEMES: Final = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
#: Budget of a slot map refresh: a few dead nodes' connect timeouts, then a live one.
_REFRESH_WITHIN: Final = 5.0
_SCHEMES: Final = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
#: The TLS options of a rediss:// URL that name a file (ssl_ca_path: a directory of CAs).
_TLS_FILES: Final = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_ca_path")
#: OpenSSL's reason for TLS 1.3's alert when a client certificate was needed.
_CERTIFICATE_REQUIRED: Final = "CERTIFICATE_REQUIRED"


def is_cluster(client: RedisClient) -> bool:
    return isinstance(client, RedisCluster)


async def ping(client: RedisClient, deadline: float) -> None:
    """Raise unless Redis answers within ``deadline`` s; on a cluster, every primary.

    On a cluster the slot map is read again first: after a failover it must name the
    promoted replica, and the cache should leave degraded mode once every slot can be
    served again, not when one node happens to answer. Reading the map may first have
    to give up on a dead node (the 1 s connect timeout), so it has a budget of its own.
    """
    if isinstance(client, RedisCluster):
        await refresh_slots(client)
        async with asyncio.timeout(deadline):
            await client.ping(target_nodes=RedisCluster.PRIMARIES)
    else:
        async with asyncio.timeout(deadline):
            await client.ping()


async def refresh_slots(client: RedisCluster) -> None:
    """Ask the cluster which node serves which slot (after a failover or resharding)."""
    async with asyncio.timeout(_REFRESH_WITHIN):
        await client.nodes_manager.initialize()


def redis_client(url: object) -> RedisClient:
    """A client for ``url`` with no retries: every caller has its own short deadline.

    A failure must surface at once so the caller can switch to its fallback (the
    cache's degraded mode, the rate limiter's local decisions); a socket timeout would
    wrap each read in one more task. A cluster client still follows MOVED and ASK
    redirects itself, and refreshes its slot map after a failed call.
    """
    if not isinstance(url, str) or not url.startswith(_SCHEMES):
        raise ConfigurationError(
            f"not a Redis URL: {show_url(url)}; use redis://host:6379/0, "
            "redis+cluster://host:7000[,host:7001...] or None"
        )
    options: dict[str, Any] = {
        "socket_connect_timeout": 1.0,
        "socket_timeout": None,
        "socket_read_size": READ_SIZE,
    }
    try:
        scheme, _, rest = url.partition("://")
        client: RedisClient
        if scheme in _CLUSTER_SCHEMES:
            client = _cluster_client(_CLUSTER_SCHEMES[scheme], rest, options)
            connection_options = client.nodes_manager.connection_kwargs
        else:
            client = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **options)
            # An unknown query option is a TypeError of the first connection: make one (it
            # does not connect) so that it is a ConfigurationError now, not at first use.
            pool = client.connection_pool
            pool.connection_class(**pool.connection_kwargs)
            connection_options = pool.connection_kwargs
    except (ValueError, TypeError, RedisClusterException) as exc:  # bad port, host, option
        raise ConfigurationError(
            f"bad Redis URL {show_url(url)}: {redact(str(exc), url)}"
        ) from None
    _check_tls_files(connection_options)
    return client


def _check_tls_files(options: Mapping[str, Any]) -> None:
    """A CA, certificate or key file that can't be read is a ConfigurationError now, not a
    Redis that seems down (a degraded cache) at open."""
    for name in _TLS_FILES:
        path = options.get(name)
        if isinstance(path, str) and not os.access(path, os.R_OK):
            shown = repr(path if len(path) <= 300 else path[:297] + "...")  # no secret
            raise ConfigurationError(
                f"{name}={shown} in the Redis URL does not exist or cannot be read: "
                "give the path of a readable PEM file"
            )


def _cluster_client(scheme: str, rest: str, options: dict[str, Any]) -> RedisCluster:
    """``rest`` is ``[user:password@]host:port[,host:port...][/0][?options]``."""
    location, question, query = rest.partition("?")
    # The userinfo ends at the last '@' (a password may hold an unencoded '/').
    at = location.rfind("@") + 1
    hosts, slash, path = location[at:].partition("/")
    first, *others = [_host_port(node) for node in hosts.split(",")]
    single = f"{scheme}://{location[:at]}{first[0]}:{first[1]}{slash}{path}{question}{query}"
    return RedisCluster.from_url(
        single,
        startup_nodes=[ClusterNode(host, port) for host, port in others],
        retry=Retry(NoBackoff(), 0),
        **options,
    )


def _host_port(node: str) -> tuple[str, int]:
    host, colon, port = node.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host:
        raise ValueError(f"a cluster node must be host:port, got {node!r}")
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError(f"port {number} is out of range")
    return host, number


def describe(client: RedisClient) -> str:
    """Where ``client`` connects, without its credentials."""
    if isinstance(client, RedisCluster):
        nodes = ",".join(f"{node.host}:{node.port}" for node in client.startup_nodes)
        return f"cluster {nodes}"
    options = client.connection_pool.connection_kwargs
    if "path" in options:
        return f"unix:{options['path']}"
    return f"{options.get('host', 'localhost')}:{options.get('port', 6379)}/{options.get('db', 0)}"


async def tls_misconfiguration(
    client: RedisClient, failure: BaseException, *, within: float
) -> ConfigurationError | None:
    """A ConfigurationError if ``failure`` (Redis not reached at open) comes from TLS set
    up wrongly rather than from an outage; else None.

    The cases: the server's certificate failed verification (a CA that did not sign
    it, or a certificate that does not name the host); a plain ``redis://`` URL for a
    server that speaks only TLS, which closes the connection at the first plain bytes;
    a server that asks for a client certificate the URL does not give, which closes the
    connection with an alert, or with a reset if a command was already on its way. In
    the last two a handshake of its own (certificate unchecked, no command sent) tells.
    """
    refused = _certificate_failure(failure)
    if refused is not None:
        reason = (refused.verify_message or refused.reason or "unverified").rstrip(".")
        return ConfigurationError(
            f"TLS certificate verification failed for Redis at {describe(client)} "
            f"({reason}): the server's certificate is not signed by the CA in the URL's "
            "ssl_ca_certs (or, without it, by a CA of the system), or does not name the host "
            "connected to; give the CA file that signed it, as in "
            "rediss://host:6380/0?ssl_ca_certs=/path/to/ca.pem, and connect by a name or "
            "address the certificate holds"
        )
    wanted = any(_CERTIFICATE_REQUIRED in str(cause) for cause in _causes(failure))
    if isinstance(client, RedisCluster) or not (wanted or _closed_by_peer(failure)):
        return None
    pool = client.connection_pool
    options = pool.connection_kwargs
    if "host" not in options:
        return None  # a unix socket
    host, port = options["host"], options.get("port", 6379)
    if pool.connection_class is Connection:
        answer = await _handshake(host, port, within)
        if answer != "done" and "ALERT" not in answer:  # an alert is TLS too
            return None
        return ConfigurationError(
            f"Redis at {describe(client)} accepts only TLS connections and closed this plain "
            f"one: use a rediss:// URL with the CA that signed its certificate, as in "
            f"rediss://{host}:{port}/0?ssl_ca_certs=/path/to/ca.pem (add ssl_certfile and "
            "ssl_keyfile if it asks for a client certificate)"
        )
    if options.get("ssl_certfile"):
        return None
    if not wanted and _CERTIFICATE_REQUIRED not in await _handshake(
        host, port, within, listen=True
    ):
        return None
    return ConfigurationError(
        f"Redis at {describe(client)} asks for a client certificate and the URL gives none: "
        "add ssl_certfile=/path/to/client.pem&ssl_keyfile=/path/to/client.key, a "
        "certificate signed by a CA the server trusts (its tls-ca-cert-file)"
    )


def _causes(failure: BaseException) -> list[BaseException]:
    """``failure`` and what caused it (explicitly or not), outermost first."""
    chain: list[BaseException] = []
    cause: BaseException | None = failure
    while cause is not None and len(chain) < 16 and all(cause is not seen for seen in chain):
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    return chain


def _certificate_failure(failure: BaseException) -> ssl.SSLCertVerificationError | None:
    for cause in _causes(failure):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return cause
    return None


def _closed_by_peer(failure: BaseException) -> bool:
    """The server closed or reset the connection (what a TLS-only Redis does to plain
    bytes), as opposed to refusing it, timing out or answering with an error."""
    return any(
        isinstance(cause, ConnectionResetError | BrokenPipeError)
        or "closed by server" in str(cause).lower()
        for cause in _causes(failure)
    )


async def _handshake(host: str, port: int, within: float, *, listen: bool = False) -> str:
    """A TLS handshake with ``host:port`` that checks no certificate and sends no command:
    ``"done"`` if it completes (and, with ``listen``, the server then says nothing within
    ``within``), else the reason of the TLS alert or error, or ``""`` if none came."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only asks what the server speaks and wants
    writer = None
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection(host, port, ssl=context)
            if listen:  # TLS 1.3: a missing client certificate is an alert after the handshake
                await reader.read(1)
    except ssl.SSLError as exc:
        return str(exc.reason or exc)
    except TimeoutError:
        pass  # listening, nothing came: the server is waiting for a command
    except OSError:
        return ""
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(within):
                    await writer.wait_closed()
    return "done" if writer is not None else ""
