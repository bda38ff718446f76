"""Per-tenant limits: requests per minute on every route, model tokens per minute on turns.

Both use `RateLimiter` with the tenant as the budget's name, shared through Redis when
the server has it (every instance then draws on one budget per tenant), and never wait:
over the limit is a 429 with ``Retry-After`` at once.
"""

from __future__ import annotations

import time
from typing import Final, Literal

from ..errors import AgentCoreError, QuotaExceeded, RateLimited
from ..ratelimit import RateLimiter, RateLimits
from ..store import ThreadStore
from ._settings import Settings

__all__ = [
    "StoredBytesQuota",
    "TenantRateLimited",
    "TenantTokens",
    "admit_request",
    "tenant_limiter",
]

#: Seconds a tenant's measured stored bytes are trusted before measuring again.
USAGE_TTL: Final = 10.0


class TenantRateLimited(RateLimited):
    """A tenant's requests or tokens per minute are used up (HTTP 429 with Retry-After)."""

    def __init__(
        self, tenant: str, *, limit: Literal["requests", "tokens"], retry_after: float
    ) -> None:
        AgentCoreError.__init__(
            self,
            f"tenant {tenant!r} is over its {limit}-per-minute limit; retry after "
            f"{retry_after:.3f} s",
        )
        self.model = tenant
        self.limit = limit
        self.retry_after = retry_after
        self.max_wait = 0.0


def tenant_limiter(settings: Settings, limit: Literal["requests", "tokens"]) -> RateLimiter | None:
    """The limiter of each tenant's ``limit`` per minute, or None when unlimited; shared
    through ``settings``' Redis, if any."""
    per_minute: int | None = getattr(settings, f"tenant_{limit}_per_minute")
    if per_minute is None:
        return None
    limits = RateLimits(**{f"{limit}_per_minute": per_minute}, max_wait=0)
    return RateLimiter(limits, redis=settings.redis_url, namespace=settings.namespace)


async def admit_request(limiter: RateLimiter, tenant: str) -> None:
    """Count one request against the tenant's budget, or raise `TenantRateLimited`."""
    try:
        await limiter.acquire(tenant, 0, max_wait=0)
    except RateLimited as exc:
        raise TenantRateLimited(tenant, limit="requests", retry_after=exc.retry_after) from None


class TenantTokens:
    """A tenant agent's token budget (`AgentLimiter`): all its models share the tenant's."""

    def __init__(self, limiter: RateLimiter, tenant: str) -> None:
        self._limiter = limiter
        self._tenant = tenant

    async def acquire(self, model: str, tokens: int) -> float:
        try:
            return await self._limiter.acquire(self._tenant, tokens, max_wait=0)
        except RateLimited as exc:
            raise TenantRateLimited(
                self._tenant, limit="tokens", retry_after=exc.retry_after
            ) from None


class StoredBytesQuota:
    """Each tenant's stored bytes, held under ``quota`` (soft).

    The store's figure (`ThreadStore.stored_bytes`, a scan of the namespace) is measured
    at most every `USAGE_TTL` seconds per tenant; bytes this instance accepted since are
    added to it. So a tenant may pass its quota by what other instances accept within
    that time, and deletes count from the next measurement.
    """

    def __init__(self, store: ThreadStore, quota: int) -> None:
        self._store = store
        self.quota = quota
        # tenant -> (bytes measured, when, bytes accepted since)
        self._usage: dict[str, tuple[int, float, int]] = {}

    async def admit(self, tenant: str, adding: int) -> None:
        """Count ``adding`` bytes for ``tenant``, or raise `QuotaExceeded`."""
        measured, when, since = self._usage.get(tenant, (0, -USAGE_TTL, 0))
        now = time.monotonic()
        if now - when >= USAGE_TTL:
            measured, when, since = await self._store.stored_bytes(tenant), now, 0
        used = measured + since
        if used + adding > self.quota:
            self._usage[tenant] = (measured, when, since)
            raise QuotaExceeded(tenant, used=used, adding=adding, quota=self.quota)
        self._usage[tenant] = (measured, when, since + adding)
