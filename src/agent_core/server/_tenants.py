"""`Tenants`: one cache and one agent per tenant, each on its own namespace.

A tenant's cache is opened on its first request and kept until shutdown. It shares the
base cache's store and Redis client (`ConversationCache.for_namespace`) and has its own
L1, fences and bus subscription (one Redis pub/sub connection per tenant in use), so
``max_tenants`` bounds what one instance holds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..agent import BaseAgent
from ..cache import CacheStats, ConversationCache
from ..errors import ConfigurationError, StoreUnavailable

__all__ = ["Tenant", "Tenants"]


@dataclass(frozen=True, slots=True)
class Tenant:
    """A tenant's cache (its namespace) and the agent that runs its turns."""

    name: str
    cache: ConversationCache
    agent: BaseAgent


class Tenants:
    """Tenants by name, opened on first use; `aclose` closes them (not the base cache)."""

    def __init__(
        self,
        base: ConversationCache,
        make_agent: Callable[[str, ConversationCache], BaseAgent],
        *,
        max_tenants: int,
    ) -> None:
        if max_tenants < 1:
            raise ConfigurationError(f"max_tenants must be at least 1, got {max_tenants}")
        self.base = base
        self._make_agent = make_agent
        self._max = max_tenants
        self._open: dict[str, Tenant] = {base.namespace: self._tenant(base.namespace, base)}
        self._opening: dict[str, asyncio.Task[Tenant]] = {}
        self._closed = False

    def __iter__(self) -> Iterator[Tenant]:
        return iter(list(self._open.values()))

    def stats(self) -> CacheStats:
        """The stats of every open tenant's cache, combined."""
        return CacheStats.combined([tenant.cache.stats() for tenant in self._open.values()])

    async def get(self, name: str) -> Tenant:
        """The tenant ``name``, opening its cache if this is its first request."""
        tenant = self._open.get(name)
        if tenant is not None:
            return tenant
        task = self._opening.get(name)
        if task is None:
            if self._closed:
                raise StoreUnavailable("the server is shutting down")
            if len(self._open) + len(self._opening) >= self._max:
                raise StoreUnavailable(
                    f"this instance already serves {self._max} tenants (max_tenants): "
                    "raise --max-tenants, or spread tenants over more instances"
                )
            # A task, so that a request cancelled while waiting does not leave it half open.
            task = self._opening[name] = asyncio.ensure_future(self._open_tenant(name))
            task.add_done_callback(lambda _: self._opening.pop(name, None))
        return await asyncio.shield(task)

    async def _open_tenant(self, name: str) -> Tenant:
        cache = self.base.for_namespace(name)
        await cache.open()
        tenant = self._open[name] = self._tenant(name, cache)
        return tenant

    def _tenant(self, name: str, cache: ConversationCache) -> Tenant:
        return Tenant(name, cache, self._make_agent(name, cache))

    async def aclose(self) -> None:
        """Close every tenant's cache but the base one (its owner closes it)."""
        self._closed = True
        for task in list(self._opening.values()):
            with contextlib.suppress(Exception):
                await task
        for tenant in list(self._open.values()):
            if tenant.cache is not self.base:
                await tenant.cache.close()
        self._open = {self.base.namespace: self._open[self.base.namespace]}
