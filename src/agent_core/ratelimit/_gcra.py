"""GCRA with reservations, in-process; the same rules as the Redis script.

Each limited dimension (requests: cost 1; tokens: cost = the request's tokens) keeps
a theoretical arrival time ``tat``. With R per period P, the emission interval is
T = P / R, and a request of cost c may start at the earliest ``s >= now`` with
``max(tat, s) + c*T - s <= P``; starting sets ``tat = max(tat, s) + c*T``. So a full
period's budget can go at once, then it refills at R per P, and in any window of
length w at most R + R*w/P is admitted. A request is *reserved* at once for its
start time: waiters are served in order of arrival, with no retries.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

Limit = Literal["requests", "tokens"]
LIMITS: Final[tuple[Limit, Limit]] = ("requests", "tokens")
#: Waits under a microsecond (Redis TIME's resolution; float rounding) count as none.
RESOLUTION: Final = 1e-6


@dataclass(frozen=True, slots=True)
class Decision:
    """One reservation, or the refusal of one."""

    admitted: bool
    #: Seconds from the decision to the start (needed, when refused).
    wait: float
    #: The limit that made it wait; None if it did not.
    limit: Limit | None
    #: The start on the deciding clock: Redis TIME in Unix seconds if ``shared``,
    #: else ``time.monotonic()``.
    at: float
    shared: bool
    #: Identifies the reservation, so a cancelled waiter can give it back.
    ticket: str
    #: Shared only: seconds of each dimension's budget in use after the decision
    #: (``tat - now``; None for an unlimited one), and instances seen on the key.
    debts: tuple[float | None, float | None] = (None, None)
    instances: int = 1


class LocalGcra:
    """Per-model GCRA state of one process, on ``time.monotonic()``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tats: dict[str, list[float]] = {}
        # Per model: the latest reservation's ticket and the state before it.
        self._latest: dict[str, tuple[str, list[float]]] = {}

    def reserve(
        self,
        model: str,
        rates: tuple[float | None, float | None],
        period: float,
        tokens: int,
        max_wait: float,
        ticket: str,
    ) -> Decision:
        """Reserve the earliest start, unless it is more than ``max_wait`` away.

        ``rates`` may be fractions of the configured limits (a share while Redis is
        down). A cost above such a share's burst waits for a full bucket instead of
        being refused, and the debt it leaves still holds the long-run rate.
        """
        now = self._clock()
        tats = self._tats.setdefault(model, [now, now])
        start, limit = now, None
        for tat, rate, cost, name in zip(tats, rates, (1, tokens), LIMITS, strict=True):
            if rate is not None:
                earliest = tat + (min(cost, rate) - rate) * (period / rate)
                if earliest > start + RESOLUTION:
                    start, limit = earliest, name
        wait = start - now
        if wait > max_wait:
            return Decision(False, wait, limit, start, False, ticket)
        self._latest[model] = (ticket, list(tats))
        for index, (rate, cost) in enumerate(zip(rates, (1, tokens), strict=True)):
            if rate is not None:
                tats[index] = max(tats[index], start) + cost * (period / rate)
        return Decision(True, wait, limit, start, False, ticket)

    def cancel(self, model: str, ticket: str) -> bool:
        """Give a reservation back if it is still the latest (else it is kept: safe)."""
        latest = self._latest.get(model)
        if latest is None or latest[0] != ticket:
            return False
        self._tats[model] = latest[1]
        del self._latest[model]
        return True

    def mirror(self, model: str, debts: tuple[float | None, float | None]) -> None:
        """Take the shared state's use of each budget, to continue from it if Redis fails.

        A debt is the same fraction of the budget at any share of the rate, so a
        fallback that starts from it neither forgets the shared use nor doubles it.
        """
        now = self._clock()
        self._tats[model] = [now + (debt or 0.0) for debt in debts]
        self._latest.pop(model, None)
