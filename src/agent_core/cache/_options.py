"""`CacheOptions`: a `ConversationCache`'s settings, validated once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal

from .._encryption import EncryptionKeys
from .._quote import quote
from .._validation import check_count, check_seconds
from ..errors import ConfigurationError, InvalidArgument
from ..messages import DEFAULT_MAX_BATCH_MESSAGES, DEFAULT_MAX_MESSAGE_BYTES
from ..store import MAX_RETENTION
from ..tokens import TokenCounter
from ._policy import EvictionPolicy, LRUPolicy
from ._probe import NO_PROBE, CacheProbe
from ._redis_tier import DEFAULT_MAX_VALUE_BYTES
from ._tinylfu import WTinyLFUPolicy

__all__ = ["CacheOptions", "Consistency"]

Consistency = Literal["bounded", "strong"]
_CONSISTENCY: Final = ("bounded", "strong")
_MIN_SIGNING_KEY_BYTES: Final = 16
POLICIES: Final[dict[str, type[EvictionPolicy]]] = {"tinylfu": WTinyLFUPolicy, "lru": LRUPolicy}


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheOptions:
    """Every keyword option of `ConversationCache` (docs/DESIGN.md, "ConversationCache")."""

    consistency: Consistency = "bounded"
    max_staleness: float = 1.0
    l1_max_bytes: int = 64 << 20
    l1_ttl: float = 300.0
    l1_policy: str = "tinylfu"
    l2_ttl: float = 86_400.0
    redis_timeout: float = 0.05
    compress_min_bytes: int = 1 << 20
    lease_ttl: float = 1.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_batch_messages: int = DEFAULT_MAX_BATCH_MESSAGES
    watch_external: bool = True
    memory_limit: int | None = None
    memory_check_interval: float = 1.0
    token_models: Sequence[str] = ("gpt-4o",)
    l2_max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    l2_signing_key: bytes | str | None = None
    #: Seconds: every write extends its thread's expiry to at least this long from
    #: now (None: threads do not expire unless `update_thread` sets it).
    retention: float | None = None
    #: Encrypts message payloads in the store and L2 (None: stored as they are).
    encryption_keys: EncryptionKeys | None = None
    #: Test-facing: awaited at fixed points of a load (`CacheProbe`).
    probe: CacheProbe = NO_PROBE
    #: One counter per distinct count key of ``token_models`` (derived).
    append_counters: tuple[TokenCounter, ...] = field(init=False)
    #: ``l2_signing_key`` as bytes (derived).
    signing_key: bytes | None = field(init=False)

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> CacheOptions:
        """Options from keywords; an unknown name is a `ConfigurationError` listing the known."""
        unknown = sorted(set(options) - NAMES)
        if unknown:
            raise ConfigurationError(
                f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(NAMES))}"
            )
        return cls(**options)

    def __post_init__(self) -> None:
        if self.consistency not in _CONSISTENCY:
            raise ConfigurationError(
                f"consistency must be 'bounded' or 'strong', got {quote(self.consistency)}"
            )
        if self.l1_policy not in POLICIES:
            raise ConfigurationError(
                f"l1_policy must be one of {sorted(POLICIES)}, got {quote(self.l1_policy)}"
            )
        for name in ("l1_ttl", "l2_ttl", "redis_timeout"):
            check_seconds(name, getattr(self, name), error=ConfigurationError)
        staleness = self.max_staleness
        check_seconds(
            "max_staleness",
            staleness,
            allow_zero=True,
            maximum=3600,
            note="bounded mode's bound",
            error=ConfigurationError,
        )
        check_seconds(
            "lease_ttl",
            self.lease_ttl,
            allow_zero=True,
            note="0 disables",
            error=ConfigurationError,
        )
        _set = object.__setattr__
        _set(self, "append_counters", _counters_for(self.token_models))
        _set(self, "max_staleness", float(staleness) if self.consistency == "bounded" else 0.0)
        _set(self, "lease_ttl", float(self.lease_ttl))
        check_count("max_message_bytes", self.max_message_bytes, minimum=2)
        check_count("max_batch_messages", self.max_batch_messages, minimum=1)
        check_count("l1_max_bytes", self.l1_max_bytes, minimum=0)
        check_count("compress_min_bytes", self.compress_min_bytes, minimum=0)
        check_count("l2_max_value_bytes", self.l2_max_value_bytes, minimum=1024)
        _set(self, "signing_key", _signing_key(self.l2_signing_key))
        if self.retention is not None:
            _set(
                self,
                "retention",
                check_seconds(
                    "retention", self.retention, maximum=MAX_RETENTION, error=ConfigurationError
                ),
            )
        if self.encryption_keys is not None and not isinstance(
            self.encryption_keys, EncryptionKeys
        ):
            raise ConfigurationError(
                "encryption_keys must be EncryptionKeys (EncryptionKeys.from_file(path)) or "
                f"None, got {type(self.encryption_keys).__name__}"
            )
        if not all(callable(getattr(self.probe, p, None)) for p in ("loaded", "l1_fill")):
            raise ConfigurationError(
                f"probe must implement CacheProbe (loaded, l1_fill), got {quote(self.probe)}"
            )


#: The keyword options of `ConversationCache` (and of `from_urls`).
NAMES: Final = frozenset(f.name for f in fields(CacheOptions) if f.init)


def _signing_key(key: object) -> bytes | None:
    """``l2_signing_key`` as bytes: at least 16 bytes (a str is UTF-8 encoded), or None."""
    if key is None:
        return None
    raw = key.encode() if isinstance(key, str) else key
    if not isinstance(raw, bytes) or len(raw) < _MIN_SIGNING_KEY_BYTES:
        raise ConfigurationError(
            f"l2_signing_key must be bytes or a str of at least {_MIN_SIGNING_KEY_BYTES} "
            "bytes, e.g. secrets.token_hex(32), or None (values are not signed)"
        )
    return raw


def _counters_for(models: object) -> tuple[TokenCounter, ...]:
    """One counter per distinct count key among ``models``."""
    if isinstance(models, str) or not isinstance(models, Sequence):
        raise ConfigurationError(
            "token_models must be a sequence of model names such as ('gpt-4o',), "
            f"got {quote(models)}"
        )
    counters: dict[str, TokenCounter] = {}
    for model in models:
        try:
            counter = TokenCounter.for_model(model)
        except InvalidArgument as exc:
            raise ConfigurationError(f"token_models: {exc}") from None
        counters.setdefault(counter.key, counter)
    return tuple(counters.values())
