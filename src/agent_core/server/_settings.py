"""`Settings`: what a server instance runs on, from arguments or ``AGENT_CORE_*`` variables."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, cast

from .._encryption import EncryptionKeys
from .._env import env_value
from .._quote import quote
from .._urls import mask_url
from .._validation import check_seconds
from ..agent import (
    PROMPT_CACHE_RETENTIONS,
    AnthropicChatModel,
    ChatModel,
    EchoModel,
    OpenAIChatModel,
    PromptCacheRetention,
)
from ..cache import ConversationCache
from ..errors import ConfigurationError
from ..messages import DEFAULT_MAX_MESSAGE_BYTES
from ..tokens import WindowStrategy

#: The annotations of numeric fields, and how their variables are read.
_NUMBERS: Final[dict[str, type[int] | type[float]]] = {
    "int": int,
    "float": float,
    "float | None": float,
    "int | None": int,
}
# EchoModel has no tokenizer of its own: its prompts are counted as gpt-4o's.
_ECHO_TOKEN_MODEL: Final = "gpt-4o"

__all__ = ["ENV_PREFIX", "Settings"]

ENV_PREFIX: Final = "AGENT_CORE_"


@dataclass(frozen=True)
class Settings:
    """A server's configuration; `from_env` reads ``AGENT_CORE_<FIELD>`` variables.

    ``model`` ``"echo"`` is the local `EchoModel` (counted as gpt-4o); any other name is
    sent to an OpenAI-compatible server by `OpenAIChatModel` (``OPENAI_BASE_URL``,
    ``OPENAI_API_KEY``), and a ``claude-*`` name to Anthropic by `AnthropicChatModel`
    (``ANTHROPIC_BASE_URL``, ``ANTHROPIC_API_KEY``). ``max_body_bytes`` caps every request
    body, ``max_message_bytes`` each message's JSON (the cache's option of that name).
    ``l2_signing_key`` (``AGENT_CORE_L2_SIGNING_KEY``) makes the cache sign and check its
    Redis values.
    ``retention`` (seconds; None: forever) makes every write keep its thread at least that
    long; the app deletes the namespace's expired threads every ``sweep_interval`` seconds
    (0: never; ``agent-core gc`` does it on demand).

    With ``keys_file`` (API keys) or ``jwt_jwks_url`` (JWTs of an identity provider)
    every request is authenticated, and each tenant is its own namespace; without
    either, every request acts for ``namespace``. ``tenant_*_per_minute`` limit each
    tenant's requests and model tokens (429), ``tenant_max_stored_bytes`` what each
    stores (507); ``audit_log`` (a path, or ``-`` for stderr) records who did what,
    ``audit_sample_rate`` of reads and appends included.
    ``cors_origins`` (comma-separated) lets those browser origins call the API.
    ``window_strategy`` ``"stable"`` sends turns cache-stable history windows;
    ``prompt_cache_retention`` (``"in_memory"`` or ``"24h"``) is sent with an OpenAI
    model's requests (None: OpenAI's default).
    """

    store_url: str = "sqlite:///agent-core.db"
    redis_url: str | None = None
    model: str = "echo"
    namespace: str = "default"
    consistency: str = "bounded"
    max_staleness: float = 1.0
    max_context_tokens: int = 16_000
    reserve_output_tokens: int = 1_000
    window_strategy: str = "sliding"
    prompt_cache_retention: str | None = None
    max_body_bytes: int = 4 << 20
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    retention: float | None = None
    sweep_interval: float = 60.0
    #: Signs L2 values (``AGENT_CORE_L2_SIGNING_KEY``; never shown in the repr).
    l2_signing_key: str | None = dataclasses.field(default=None, repr=False)
    keys_file: str | None = None
    jwt_jwks_url: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_tenant_claim: str = "tenant"
    max_tenants: int = 100
    tenant_requests_per_minute: int | None = None
    tenant_tokens_per_minute: int | None = None
    tenant_max_stored_bytes: int | None = None
    audit_log: str | None = None
    audit_sample_rate: float = 0.0
    cors_origins: str | None = None
    #: Encrypts stored messages at rest (a keys file: docs/DESIGN.md, "Encryption at rest").
    encryption_keys_file: str | None = None

    def __post_init__(self) -> None:
        # The rest (URLs, namespace, consistency, token budgets) is checked by the
        # cache and the agent when the app starts, with their own messages.
        for name, minimum in (("max_body_bytes", 1), ("max_message_bytes", 2)):
            value = getattr(self, name)
            if type(value) is not int or value < minimum:
                raise ConfigurationError(
                    f"{name} must be an integer of at least {minimum}, got {quote(value)}"
                )
        for name in (
            "max_tenants",
            "tenant_requests_per_minute",
            "tenant_tokens_per_minute",
            "tenant_max_stored_bytes",
        ):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < 1):
                raise ConfigurationError(
                    f"{name} must be a positive integer (or unset), got {quote(value)}"
                )
        if self.window_strategy not in ("sliding", "stable"):
            raise ConfigurationError(
                f"window_strategy must be 'sliding' or 'stable', got {quote(self.window_strategy)}"
            )
        if self.prompt_cache_retention not in (None, *PROMPT_CACHE_RETENTIONS):
            raise ConfigurationError(
                "prompt_cache_retention must be 'in_memory' or '24h' (or unset), got "
                f"{quote(self.prompt_cache_retention)}"
            )
        rate = self.audit_sample_rate
        if type(rate) not in (int, float) or not 0 <= rate <= 1:
            raise ConfigurationError(
                f"audit_sample_rate must be a fraction from 0 to 1, got {quote(rate)}"
            )
        jwt = {"jwt_audience": self.jwt_audience, "jwt_issuer": self.jwt_issuer}
        if self.jwt_jwks_url is not None and None in jwt.values():
            missing = [name for name, value in jwt.items() if value is None]
            raise ConfigurationError(
                f"jwt_jwks_url needs {' and '.join(missing)} too: tokens are only accepted "
                "for this service (audience) from your identity provider (issuer)"
            )
        check_seconds(
            "sweep_interval",
            self.sweep_interval,
            allow_zero=True,
            note="0: no background sweep",
            error=ConfigurationError,
        )

    def __repr__(self) -> str:
        # Only the fields shown in a repr: the signing key is not one of them.
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.repr}
        for name in ("store_url", "redis_url"):
            if isinstance(fields[name], str):
                fields[name] = mask_url(fields[name])
        return f"Settings({', '.join(f'{name}={value!r}' for name, value in fields.items())})"

    @property
    def authenticates(self) -> bool:
        """Whether requests must carry a credential (API keys or JWTs configured)."""
        return self.keys_file is not None or self.jwt_jwks_url is not None

    @property
    def cors_origin_list(self) -> list[str]:
        """``cors_origins`` split at commas (empty: CORS off)."""
        raw = self.cors_origins or ""
        return [origin.strip() for origin in raw.split(",") if origin.strip()]

    @property
    def turn_windows(self) -> WindowStrategy:
        """``window_strategy``, as `BaseAgent` takes it (checked at construction)."""
        return "stable" if self.window_strategy == "stable" else "sliding"

    @property
    def token_model(self) -> str:
        """The model whose rules count prompts: ``model``, or gpt-4o for the echo model."""
        return _ECHO_TOKEN_MODEL if self.model == "echo" else self.model

    def cache(self) -> ConversationCache:
        """A new cache on these settings' store, Redis, namespace and options; not opened."""
        return ConversationCache.from_urls(
            self.store_url,
            self.redis_url,
            namespace=self.namespace,
            consistency=self.consistency,
            max_staleness=self.max_staleness,
            l2_signing_key=self.l2_signing_key,
            retention=self.retention,
            max_message_bytes=self.max_message_bytes,
            encryption_keys=(
                None
                if self.encryption_keys_file is None
                else EncryptionKeys.from_file(self.encryption_keys_file)
            ),
        )

    def chat_model(self) -> ChatModel:
        """A new model client for ``model``; the caller closes it."""
        if self.model == "echo":
            return EchoModel(token_model=_ECHO_TOKEN_MODEL)
        if self.model.strip().lower().startswith("claude"):
            return AnthropicChatModel(self.model)
        # Checked in __post_init__.
        retention = cast("PromptCacheRetention | None", self.prompt_cache_retention)
        return OpenAIChatModel(self.model, prompt_cache_retention=retention)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **overrides: Any) -> Settings:
        """Defaults, then ``AGENT_CORE_*`` variables (or their ``*_FILE`` twins: the value
        read from that file), then the ``overrides`` that are not None.

        An empty ``AGENT_CORE_REDIS_URL`` means no Redis. Raises `ConfigurationError`
        for an unknown override or a variable that is not a valid value.
        """
        fields = {field.name: field for field in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            raise ConfigurationError(
                f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(fields)}"
            )
        values: dict[str, Any] = {}
        for name, field in fields.items():
            variable = ENV_PREFIX + name.upper()
            raw = env_value(environ, variable)
            if raw is None:
                continue
            kind = _NUMBERS.get(str(field.type))
            if kind is not None:
                if not raw and str(field.type).endswith("None"):
                    values[name] = None  # set but empty: none
                    continue
                try:
                    values[name] = kind(raw)
                except ValueError:
                    raise ConfigurationError(
                        f"{variable} must be a number ({field.type}), got {quote(raw)}"
                    ) from None
            elif str(field.type) == "str | None":
                values[name] = raw or None
            else:
                values[name] = raw
        values.update({name: value for name, value in overrides.items() if value is not None})
        return cls(**values)
