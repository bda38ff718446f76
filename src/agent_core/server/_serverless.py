"""`ServerlessApp`: the service for platforms that may never send lifespan events.

The app opens nothing when it is built: the first request (or a lifespan startup, when the
platform sends one) opens the cache, the model and the agent under a lock, and later
requests in the same process reuse them. A failed opening answers problem+json and is
tried again on the next request. Resources belong to the event loop that opened them: a
platform that runs each request in a new loop gets them reopened there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from fastapi import FastAPI

from ..errors import AgentCoreError
from ._app import Receive, Scope, Send, create_app
from ._problems import error_problem, problem
from ._settings import ENV_PREFIX, Settings

__all__ = ["CONSISTENCY_VARIABLE", "ServerlessApp", "make_app", "serverless_settings"]

CONSISTENCY_VARIABLE: Final = ENV_PREFIX + "CONSISTENCY"

_log = logging.getLogger("agent_core.serverless")


def serverless_settings(environ: Mapping[str, str] = os.environ) -> Settings:
    """`Settings.from_env`, with ``consistency`` ``"strong"`` and no background sweep unless
    their variables set them.

    Instances come and go and share no invalidation bus, so a bounded-staleness read could
    be served by an instance that missed another's append: every read checks the store. A
    frozen instance runs no background task either: run ``agent-core gc`` on a schedule.
    """
    defaults: dict[str, Any] = {"consistency": "strong", "sweep_interval": 0.0}
    overrides = {
        name: value for name, value in defaults.items() if ENV_PREFIX + name.upper() not in environ
    }
    return Settings.from_env(environ, **overrides)


@dataclass
class _Opened:
    """The inner app whose lifespan is entered, and the loop it was entered on."""

    loop: asyncio.AbstractEventLoop
    app: FastAPI
    stack: contextlib.AsyncExitStack


class ServerlessApp:
    """An ASGI app that opens the service lazily, once per process (and event loop).

    ``settings`` fixed, or None to read `serverless_settings(environ)` at each attempt to
    open (so a configuration error is a problem response, not a failed import).
    ``openings`` counts successful openings, ``attempts`` every try.
    """

    def __init__(
        self, settings: Settings | None = None, environ: Mapping[str, str] = os.environ
    ) -> None:
        self._settings = settings
        self._environ = environ
        self._opened: _Opened | None = None
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        self.openings = 0
        self.attempts = 0

    @property
    def inner(self) -> FastAPI | None:
        """The opened FastAPI app (its ``state.core`` holds the cache), or None."""
        return None if self._opened is None else self._opened.app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection, opening the service first if needed."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        try:
            app = await self.open()
        except Exception as exc:
            _log.warning("agent-core could not start: %s: %s", type(exc).__name__, exc)
            if scope["type"] != "http":
                raise
            response = (
                error_problem(exc)
                if isinstance(exc, AgentCoreError)
                else problem(503, f"the service could not start ({type(exc).__name__})")
            )
            await response(scope, receive, send)
            return
        await app(scope, receive, send)

    async def open(self) -> FastAPI:
        """The opened inner app: opened now if this process (and loop) has none yet."""
        loop = asyncio.get_running_loop()
        opened = self._opened
        if opened is not None and opened.loop is loop:
            return opened.app
        async with self._lock_for(loop):
            opened = self._opened
            if opened is not None and opened.loop is loop:
                return opened.app
            # A previous loop's connections cannot be used (or closed) from this one.
            self._opened = None
            self.attempts += 1
            settings = self._settings
            if settings is None:
                settings = serverless_settings(self._environ)
            app = create_app(settings)
            stack = contextlib.AsyncExitStack()
            await stack.enter_async_context(app.router.lifespan_context(app))
            self._opened = _Opened(loop, app, stack)
            self.openings += 1
            return app

    async def aclose(self) -> None:
        """Close what was opened on the running loop; the next request opens again."""
        loop = asyncio.get_running_loop()
        async with self._lock_for(loop):
            opened, self._opened = self._opened, None
            if opened is not None and opened.loop is loop:
                await opened.stack.aclose()

    def _lock_for(self, loop: asyncio.AbstractEventLoop) -> asyncio.Lock:
        # An asyncio.Lock binds to the first loop that waits on it.
        if self._lock is None or self._lock_loop is not loop:
            self._lock = asyncio.Lock()
            self._lock_loop = loop
        return self._lock

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        # A failed startup is logged, not reported: reporting it would stop the server,
        # and the next request tries again (answering 503 while the store is down).
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.open()
                except Exception as exc:
                    _log.warning(
                        "agent-core could not start (the first request retries): %s: %s",
                        type(exc).__name__,
                        exc,
                    )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


def make_app(
    settings: Settings | None = None, environ: Mapping[str, str] = os.environ
) -> ServerlessApp:
    """A new `ServerlessApp`; building it opens and reads nothing."""
    return ServerlessApp(settings, environ)
