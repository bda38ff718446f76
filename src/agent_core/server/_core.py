"""`Core`: what the app's lifespan opened, which every handler reaches through the request."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from fastapi import Request

from .._urls import redact
from ..agent import AgentReply
from ..cache import CacheStats, ConversationCache
from ..observe import LoopLagMonitor
from ..ratelimit import RateLimiter
from ._audit import AuditLog
from ._auth import Authenticator
from ._metrics import Metrics
from ._recent import RecentActivity
from ._settings import Settings
from ._tenant_limits import StoredBytesQuota
from ._tenants import Tenants

__all__ = ["Core", "core_of"]


@dataclass
class Core:
    """The opened caches, agents, monitors and access control; kept in ``app.state.core``.

    ``cache`` is the base cache (``settings.namespace``): the store and Redis every
    tenant's cache shares, and the only tenant without authentication.
    """

    settings: Settings
    cache: ConversationCache
    tenants: Tenants
    auth: Authenticator
    audit: AuditLog
    request_limits: RateLimiter | None
    quota: StoredBytesQuota | None
    lag: LoopLagMonitor
    metrics: Metrics
    token_model: str
    recent: RecentActivity
    started: float = field(default_factory=time.time)

    def stats(self) -> CacheStats:
        """The stats of every tenant's cache, combined."""
        return self.tenants.stats()

    def record_get(self, tier: str, seconds: float) -> None:
        """A GET of a thread (or of its window) served by ``tier`` in ``seconds``."""
        self.metrics.thread_reads.labels(tier).observe(seconds)
        self.recent.record_read(tier, seconds)

    def record_turn(self, reply: AgentReply) -> None:
        """A stored turn: its model call and waits, and its history read."""
        self.metrics.record_turn(reply.timings, reply.history_tier, reply.usage)
        history = reply.timings.get("history")
        if history is not None:
            self.recent.record_read(reply.history_tier, history)

    def redact(self, text: str) -> str:
        """``text`` without the secrets of the store and Redis URLs."""
        return redact(redact(text, self.settings.store_url), self.settings.redis_url)

    def redis_state(self, stats: CacheStats) -> Literal["none", "ok", "degraded"]:
        """Redis as ``stats`` see it: not configured, usable, or degraded."""
        if self.settings.redis_url is None:
            return "none"
        return "degraded" if stats.degraded else "ok"


def core_of(request: Request) -> Core:
    core: Core = request.app.state.core
    return core
