"""`CacheParts`: what the collaborators of one `ConversationCache` share; and the
store's fingerprint, which keys what they share in Redis."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from .._payload_cipher import PayloadCipher
from .._quote import quote
from .._redis import RedisClient
from ..errors import ConfigurationError
from ..store import ThreadStore
from ._bus import InvalidationBus
from ._fences import Fences
from ._freshness import Ticks
from ._l1 import L1Tier
from ._options import CacheOptions
from ._redis_tier import RedisTier
from ._stats import Counters

__all__ = ["CacheParts", "redis_parts", "store_fingerprint"]

_FINGERPRINT: Final = re.compile(r"[A-Za-z0-9]{1,64}")


@dataclass(frozen=True, slots=True)
class CacheParts:
    """The store and namespace, both tiers, the fences, the clock, the counters and the
    cipher."""

    store: ThreadStore
    namespace: str
    l1: L1Tier
    l2: RedisTier | None
    fences: Fences
    counters: Counters
    ticks: Ticks
    #: Seals payloads for the store and L2 (None: encryption at rest is off).
    cipher: PayloadCipher | None = None


def store_fingerprint(store: ThreadStore) -> str:
    """The open store's fingerprint, checked: it goes into every Redis key and channel."""
    fingerprint = store.fingerprint
    if not isinstance(fingerprint, str) or not _FINGERPRINT.fullmatch(fingerprint):
        raise ConfigurationError(
            f"{type(store).__name__}.fingerprint must be 1-64 characters of A-Z a-z 0-9 "
            f"once the store is open, got {quote(fingerprint)}"
        )
    return fingerprint


def redis_parts(
    client: RedisClient,
    namespace: str,
    options: CacheOptions,
    fences: Fences,
    origin: str,
    cipher: PayloadCipher | None,
) -> tuple[RedisTier, InvalidationBus]:
    """The L2 tier and the invalidation bus of one cache, wired to its fences."""
    tier = fences.l2 = RedisTier(
        client,
        namespace,
        ttl=options.l2_ttl,
        timeout=options.redis_timeout,
        compress_min_bytes=options.compress_min_bytes,
        origin=origin,
        on_degraded=fences.stop_waiting_for_fills,
        on_recover=fences.forget_unannounced,
        max_value_bytes=options.l2_max_value_bytes,
        signing_key=options.signing_key,
        cipher=cipher,
    )
    bus = InvalidationBus(
        client,
        namespace,
        origin=origin,
        timeout=options.redis_timeout,
        on_event=fences.on_event,
        on_subscribed=fences.forget_unannounced,
        on_lost=tier.fail,
    )
    return tier, bus
