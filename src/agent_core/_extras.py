"""Optional dependencies: which extra installs each, and the typed error when one is missing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Final

from .errors import ConfigurationError

#: Import name -> (distribution to install, the ``agent-core[...]`` extra that brings it).
_OPTIONAL: Final = {
    "asyncpg": ("asyncpg", "postgres"),
    "langchain_core": ("langchain-core", "langchain"),
    "fastapi": ("fastapi", "server"),
    "starlette": ("fastapi", "server"),
    "uvicorn": ("uvicorn", "server"),
    "prometheus_client": ("prometheus-client", "server"),
    "typer": ("typer", "cli"),
    "click": ("typer", "cli"),
    "rich": ("rich", "cli"),
    "mangum": ("mangum", "lambda"),
    "matplotlib": ("matplotlib", "plot"),
    "cryptography": ("cryptography", "encryption"),
    "jwt": ("pyjwt", "server"),
    "agents": ("openai-agents", "openai-agents"),
    "pydantic_ai": ("pydantic-ai-slim", "pydantic-ai"),
}


@contextlib.contextmanager
def needs_extra(feature: str) -> Iterator[None]:
    """Turn a missing optional package, imported in the block, into a `ConfigurationError`.

    The message names what ``feature`` needs and the extra that installs it. Any other
    import failure (a missing core dependency, a broken module) propagates unchanged.
    """
    try:
        yield
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in _OPTIONAL:
            raise
        package, extra = _OPTIONAL[missing]
        raise ConfigurationError(
            f"{feature} needs {package}: pip install 'agent-core[{extra}]'"
        ) from exc
