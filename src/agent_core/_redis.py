"""The Redis clients agent-core makes from URLs."""

from __future__ import annotations

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ._urls import redact, show_url
from .errors import ConfigurationError

#: Bytes asked of the socket per read (redis-py's default: 64 KB). A large L2 value
#: then takes a few reads instead of one per 64 KB, each a trip through the event
#: loop and a feed of the hiredis reader (docs/BENCHMARKS.md, "L2 hot path").
READ_SIZE = 1 << 20


def redis_client(url: object) -> redis.Redis:
    """A client for ``url`` with no retries: every caller has its own short deadline.

    A failure must surface at once so the caller can switch to its fallback (the
    cache's degraded mode, the rate limiter's local decisions); a socket timeout would
    wrap each read in one more task.
    """
    if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigurationError(
            f"not a Redis URL: {show_url(url)}; use redis://host:6379/0 or None"
        )
    try:
        client = redis.Redis.from_url(
            url,
            socket_connect_timeout=1.0,
            socket_timeout=None,
            retry=Retry(NoBackoff(), 0),
            socket_read_size=READ_SIZE,
        )
        # An unknown query option is a TypeError of the first connection: make one (it does
        # not connect) so that it is a ConfigurationError now, not a failure at first use.
        pool = client.connection_pool
        pool.connection_class(**pool.connection_kwargs)
    except (ValueError, TypeError) as exc:  # a bad port, host or query option
        raise ConfigurationError(
            f"bad Redis URL {show_url(url)}: {redact(str(exc), url)}"
        ) from None
    return client
