"""`AuditLog`: who did what to which thread, when, and how it ended, as JSON lines.

Lines go to a file or stderr through a queue and a writer thread, so a slow disk never
stalls the event loop. Reads and appends (turns included) are logged at
``sample_rate``; rewrites, deletes, purges, refusals (401, 403) and key changes always.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import random
import sys
from datetime import UTC, datetime
from typing import Any, Final, Literal

import orjson

from ._auth import KeyChanges, Principal

__all__ = ["AuditLog", "RouteKind"]

#: What a route does, for sampling: reads and appends are frequent, the rest is not.
RouteKind = Literal["read", "append", "change", "ops"]
_SAMPLED: Final = frozenset({"read", "append"})
#: Statuses always logged whatever the route: the caller was refused.
_REFUSED: Final = frozenset({401, 403})


class AuditLog:
    """Audit lines to ``destination`` (a path, or ``-`` for stderr); None logs nothing."""

    def __init__(self, destination: str | None, *, sample_rate: float = 0.0) -> None:
        self.sample_rate = sample_rate
        self._logger: logging.Logger | None = None
        self._listener: logging.handlers.QueueListener | None = None
        if destination is None:
            return
        handler: logging.Handler = (
            logging.StreamHandler(sys.stderr)
            if destination == "-"
            else logging.FileHandler(destination, encoding="utf-8")
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
        lines: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._listener = logging.handlers.QueueListener(lines, handler)
        # A logger of its own, not in logging's tree: the app's log settings can't mute it.
        self._logger = logging.Logger("agent_core.audit", logging.INFO)
        self._logger.addHandler(logging.handlers.QueueHandler(lines))
        self._listener.start()

    @property
    def enabled(self) -> bool:
        return self._logger is not None

    def request(
        self,
        principal: Principal | None,
        *,
        method: str,
        route: str,
        kind: RouteKind,
        status: int,
        thread_id: str | None = None,
        version: int | None = None,
        client: str | None = None,
    ) -> None:
        """One answered request; reads and appends only at the sample rate."""
        if self._logger is None:
            return
        if kind in _SAMPLED and status not in _REFUSED and random.random() >= self.sample_rate:
            return
        self._write(
            {
                "event": "request",
                "tenant": None if principal is None else principal.tenant,
                "credential": None if principal is None else principal.credential_id,
                "auth": None if principal is None else principal.method,
                "method": method,
                "route": route,
                "thread_id": thread_id,
                "version": version,
                "status": status,
                "outcome": _outcome(status),
                "client": client,
            }
        )

    def key_changes(self, changes: KeyChanges, path: str) -> None:
        """Keys created, revoked or removed in the keys file (always logged)."""
        for event, entries in (
            ("key_created", changes.created),
            ("key_revoked", changes.revoked),
            ("key_removed", changes.removed),
        ):
            for entry in entries:
                self._write(
                    {
                        "event": event,
                        "tenant": entry.tenant,
                        "credential": entry.id,
                        "scopes": list(entry.scopes),
                        "keys_file": path,
                    }
                )

    def _write(self, record: dict[str, Any]) -> None:
        if self._logger is not None:
            line = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), **record}
            self._logger.info(orjson.dumps(line).decode())

    def close(self) -> None:
        """Write what is queued and stop the writer thread."""
        if self._listener is not None:
            self._listener.stop()
            for handler in self._listener.handlers:
                handler.close()
            self._listener = None
            self._logger = None


def _outcome(status: int) -> str:
    if status < 400:
        return "ok"
    if status in _REFUSED:
        return "denied"
    return "failed" if status >= 500 else "rejected"
