"""The Redis clients agent-core makes from URLs."""

from __future__ import annotations

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .errors import ConfigurationError


def redis_client(url: object) -> redis.Redis:
    """A client for ``url`` with no retries: every caller has its own short deadline.

    A failure must surface at once so the caller can switch to its fallback (the
    cache's degraded mode, the rate limiter's local decisions); a socket timeout would
    wrap each read in one more task.
    """
    if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigurationError(f"not a Redis URL: {url!r:.100}; use redis://host:6379/0 or None")
    try:
        return redis.Redis.from_url(
            url, socket_connect_timeout=1.0, socket_timeout=None, retry=Retry(NoBackoff(), 0)
        )
    except ValueError as exc:
        raise ConfigurationError(f"bad Redis URL {url!r}: {exc}") from None
