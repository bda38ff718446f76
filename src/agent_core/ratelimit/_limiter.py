"""RateLimiter: requests and tokens per minute per model, local or shared through Redis."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict
from typing import Final

from redis.asyncio import Redis, RedisCluster

from .._closing import AsyncClosing
from .._quote import quote
from .._redis import REDIS_FAILURES, RedisClient, redis_client
from .._tasks import MAX_BACKOFF, raise_if_cancelling
from .._validation import check_count, check_namespace, check_seconds
from ..errors import (
    AgentCoreError,
    ConfigurationError,
    InvalidArgument,
    RateLimited,
    RequestTooLarge,
)
from ._gcra import Decision, LocalGcra
from ._limits import RateLimits
from ._shared import SharedGcra
from ._stats import Counters, RateLimiterStats

#: The key of a limits mapping that applies to every model not named in it.
ANY_MODEL: Final = "*"
MAX_MODEL_LENGTH: Final = 200
#: First wait before Redis is tried again after a failure (doubling to MAX_BACKOFF).
MIN_BACKOFF: Final = 0.05


class RateLimiter(AsyncClosing):
    """Admits requests to models within their `RateLimits`.

    ``limits`` is one `RateLimits` for every model (each model has its own budget) or
    a mapping of model name to `RateLimits`, where ``"*"`` stands for any other model.
    With ``redis`` (a ``redis.asyncio.Redis`` client or a URL) every limiter of the same
    ``namespace`` shares one budget per model; without it the budget is this process's.

    If Redis fails or takes longer than ``redis_timeout``, decisions are local until it
    answers again (tried after 50 ms, backing off to 0.5 s): each instance then takes
    its share of the limits (1/n, n = the instances that used the model's budget in the
    last period) and starts from the shared budget's last known use. `stats` shows it.
    """

    def __init__(
        self,
        limits: Mapping[str, RateLimits] | RateLimits,
        *,
        redis: RedisClient | str | None = None,
        namespace: str = "default",
        redis_timeout: float = 0.25,
    ) -> None:
        self._limits = _limits_table(limits)
        check_namespace(namespace)
        self._redis_timeout = check_seconds(
            "redis_timeout", redis_timeout, error=ConfigurationError
        )
        self._instance = uuid.uuid4().hex
        self._tickets = itertools.count()
        self._local = LocalGcra()
        self._counters = Counters()
        self._owns_client = isinstance(redis, str)
        client = redis_client(redis) if isinstance(redis, str) else redis
        if client is not None and not isinstance(client, (Redis, RedisCluster)):
            raise ConfigurationError(
                f"redis must be a redis.asyncio.Redis or RedisCluster client, a redis:// or "
                f"redis+cluster:// URL or None, "
                f"got {quote(client)}"
            )
        self._shared = None if client is None else SharedGcra(client, namespace, self._instance)
        # Instances seen on each model's shared budget at the last answer: the share
        # this one takes while Redis is down.
        self._instances: dict[str, int] = {}
        self._degraded = False
        self._backoff = MIN_BACKOFF
        self._retry_at = 0.0

    async def acquire(self, model: str, tokens: int, *, max_wait: float | None = None) -> float:
        """Wait until ``model`` may take one request of ``tokens`` tokens; return the seconds.

        ``tokens`` is what the request will count against tokens per minute (prompt
        plus reserved output). Raises `RateLimited` at once, reserving nothing, if the
        wait would exceed ``max_wait`` (default: the model's ``RateLimits.max_wait``;
        0 admits only what may start now), and `RequestTooLarge` if ``tokens`` exceeds
        a whole period's budget. A waiter that is cancelled gives its reservation back
        when no later one was made.
        """
        began = time.monotonic()
        limits = self._limits_for(model)
        check_count("tokens", tokens, minimum=0)
        allowed = limits.max_wait
        if max_wait is not None:
            allowed = check_seconds("max_wait", max_wait, allow_zero=True)
        if limits.tokens_per_minute is not None and tokens > limits.tokens_per_minute:
            raise RequestTooLarge(model, tokens=tokens, tokens_per_minute=limits.tokens_per_minute)
        if limits.requests_per_minute is None and limits.tokens_per_minute is None:
            self._counters.acquired += 1
            return 0.0
        decision = await self._reserve(model, limits, tokens, allowed)
        if not decision.admitted:
            assert decision.limit is not None  # a refusal always has a limit that binds
            self._counters.rate_limited += 1
            raise RateLimited(
                model,
                limit=decision.limit,
                retry_after=decision.wait,
                max_wait=allowed,
            )
        if decision.wait > 0:
            try:
                await asyncio.sleep(decision.wait)
            except asyncio.CancelledError:
                await self._give_back(model, decision)
                raise
        waited = time.monotonic() - began
        self._counters.acquired += 1
        if decision.wait > 0:
            self._counters.waited += 1
            self._counters.wait_seconds += waited
        return waited

    def stats(self) -> RateLimiterStats:
        return RateLimiterStats(
            **asdict(self._counters),
            shared=self._shared is not None,
            degraded=self._degraded,
        )

    async def aclose(self) -> None:
        """Close the Redis client if the limiter made it from a URL."""
        if self._owns_client and self._shared is not None:
            await self._shared.client.aclose()

    # -- internals -----------------------------------------------------------------

    def _limits_for(self, model: object) -> RateLimits:
        name = _check_model(model, InvalidArgument)
        limits = self._limits.get(name, self._limits.get(ANY_MODEL))
        if limits is None:
            raise InvalidArgument(
                f"no rate limits for model {quote(name)}: add it to the limits, or a "
                f"{ANY_MODEL!r} entry for every other model"
            )
        return limits

    async def _reserve(
        self, model: str, limits: RateLimits, tokens: int, max_wait: float
    ) -> Decision:
        ticket = f"{self._instance}:{next(self._tickets)}"
        if self._shared is not None and time.monotonic() >= self._retry_at:
            try:
                async with asyncio.timeout(self._redis_timeout):
                    decision = await self._shared.reserve(model, limits, tokens, max_wait, ticket)
            except REDIS_FAILURES as exc:
                raise_if_cancelling()
                self._redis_failed(exc)
            else:
                self._degraded = False
                self._backoff = MIN_BACKOFF
                self._instances[model] = decision.instances
                if decision.admitted:
                    self._local.mirror(model, decision.debts)
                return decision
        if self._shared is not None:
            self._counters.local_decisions += 1
        share = self._instances.get(model, 1)
        rates = (
            None if limits.requests_per_minute is None else limits.requests_per_minute / share,
            None if limits.tokens_per_minute is None else limits.tokens_per_minute / share,
        )
        return self._local.reserve(model, rates, limits.period, tokens, max_wait, ticket)

    async def _give_back(self, model: str, decision: Decision) -> None:
        self._counters.cancelled += 1
        if not decision.shared:
            given = self._local.cancel(model, decision.ticket)
        elif self._shared is None or self._degraded:
            return  # not worth a timeout while Redis is down; keeping it is safe
        else:
            try:
                # The caller is being cancelled: a short, best-effort call (a
                # reservation not given back only leaves that budget unused).
                async with asyncio.timeout(self._redis_timeout):
                    given = await self._shared.cancel(model, decision.ticket)
            except REDIS_FAILURES as exc:
                self._count_error(exc)
                return
        self._counters.given_back += given

    def _redis_failed(self, exc: BaseException) -> None:
        self._count_error(exc)
        if self._degraded:
            self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        else:
            self._degraded = True
            self._backoff = MIN_BACKOFF
        self._retry_at = time.monotonic() + self._backoff

    def _count_error(self, exc: BaseException) -> None:
        self._counters.redis_errors += 1
        self._counters.redis_last_error = f"{type(exc).__name__}: {exc}"


def _check_model(model: object, error: type[AgentCoreError]) -> str:
    if (
        not isinstance(model, str)
        or not 0 < len(model) <= MAX_MODEL_LENGTH
        or not model.isprintable()
    ):
        raise error(
            f"invalid model name {quote(model)}: use 1-{MAX_MODEL_LENGTH} printable characters"
        )
    return model


def _limits_table(limits: object) -> dict[str, RateLimits]:
    if isinstance(limits, RateLimits):
        return {ANY_MODEL: limits}
    if not isinstance(limits, Mapping) or not limits:
        raise ConfigurationError(
            "limits must be a RateLimits or a non-empty mapping of model name (or "
            f"{ANY_MODEL!r}) to RateLimits, got {quote(limits)}"
        )
    table: dict[str, RateLimits] = {}
    for model, value in limits.items():
        if not isinstance(value, RateLimits):
            raise ConfigurationError(
                f"limits[{quote(model)}] must be a RateLimits, got {quote(value)}"
            )
        table[_check_model(model, ConfigurationError)] = value
    return table
