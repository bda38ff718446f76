"""`Settings`: what a server instance runs on, from arguments or ``AGENT_CORE_*`` variables."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from ..agent import ChatModel, EchoModel, OpenAIChatModel
from ..errors import ConfigurationError

# EchoModel has no tokenizer of its own: its prompts are counted as gpt-4o's.
_ECHO_TOKEN_MODEL: Final = "gpt-4o"

__all__ = ["ENV_PREFIX", "Settings"]

ENV_PREFIX: Final = "AGENT_CORE_"


@dataclass(frozen=True)
class Settings:
    """A server's configuration; `from_env` reads ``AGENT_CORE_<FIELD>`` variables.

    ``model`` ``"echo"`` is the local `EchoModel` (counted as gpt-4o); any other name is
    sent to an OpenAI-compatible server by `OpenAIChatModel` (``OPENAI_BASE_URL``,
    ``OPENAI_API_KEY``). ``max_body_bytes`` caps every request body. ``l2_signing_key``
    (``AGENT_CORE_L2_SIGNING_KEY``) makes the cache sign and check its Redis values.
    """

    store_url: str = "sqlite:///agent-core.db"
    redis_url: str | None = None
    model: str = "echo"
    namespace: str = "default"
    consistency: str = "bounded"
    max_context_tokens: int = 16_000
    reserve_output_tokens: int = 1_000
    max_body_bytes: int = 4 << 20
    #: Signs L2 values (``AGENT_CORE_L2_SIGNING_KEY``; never shown in the repr).
    l2_signing_key: str | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        # The rest (URLs, namespace, consistency, token budgets) is checked by the
        # cache and the agent when the app starts, with their own messages.
        if type(self.max_body_bytes) is not int or self.max_body_bytes < 1:
            raise ConfigurationError(
                f"max_body_bytes must be a positive integer, got {self.max_body_bytes!r}"
            )

    @property
    def token_model(self) -> str:
        """The model whose rules count prompts: ``model``, or gpt-4o for the echo model."""
        return _ECHO_TOKEN_MODEL if self.model == "echo" else self.model

    def chat_model(self) -> ChatModel:
        """A new model client for ``model``; the caller closes it."""
        if self.model == "echo":
            return EchoModel(token_model=_ECHO_TOKEN_MODEL)
        return OpenAIChatModel(self.model)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **overrides: Any) -> Settings:
        """Defaults, then ``AGENT_CORE_*`` variables, then the ``overrides`` that are not None.

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
            raw = environ.get(variable)
            if raw is None:
                continue
            if field.type == "int":
                try:
                    values[name] = int(raw)
                except ValueError:
                    raise ConfigurationError(
                        f"{variable} must be an integer, got {raw!r:.100}"
                    ) from None
            elif name in ("redis_url", "l2_signing_key"):
                values[name] = raw or None
            else:
                values[name] = raw
        values.update({name: value for name, value in overrides.items() if value is not None})
        return cls(**values)
