"""Serverless entry point: ``from agent_core.serverless import app``.

`app` is an ASGI app that opens nothing at import: the first request (or a lifespan
startup) opens the store, Redis and the model, and warm invocations reuse them. Settings
come from ``AGENT_CORE_*`` variables, with ``strong`` consistency unless
``AGENT_CORE_CONSISTENCY`` is set. ``handler`` is an AWS Lambda handler (Mangum, the
``agent-core[lambda]`` extra), built on first access. Needs the ``server`` extra.
"""

from __future__ import annotations

from typing import Any

from ._extras import needs_extra
from .server import ServerlessApp, make_app, serverless_settings

__all__ = ["ServerlessApp", "app", "make_app", "serverless_settings"]

app: ServerlessApp = make_app()

_handler: Any = None


def __getattr__(name: str) -> Any:
    # ``handler`` is built on first access so that importing `app` never needs Mangum
    # (and so that Vercel, which treats a module-level ``handler`` specially, sees none).
    global _handler
    if name != "handler":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _handler is None:
        with needs_extra("agent_core.serverless.handler"):
            from mangum import Mangum
        # Mangum runs lifespan startup and shutdown around every invocation; "off" keeps
        # the opened store across warm invocations (the app opens it on first request).
        _handler = Mangum(app, lifespan="off")
    return _handler
