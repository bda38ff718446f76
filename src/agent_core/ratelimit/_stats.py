"""Counters of a `RateLimiter`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Counters:
    """The limiter's running counts (mutable, internal)."""

    acquired: int = 0
    waited: int = 0
    wait_seconds: float = 0.0
    rate_limited: int = 0
    cancelled: int = 0
    given_back: int = 0
    redis_errors: int = 0
    redis_last_error: str = ""
    local_decisions: int = 0


@dataclass(frozen=True, slots=True)
class RateLimiterStats:
    """A snapshot of a limiter's counters since it was made."""

    #: Requests admitted, and how many of them had to wait, for how long in all.
    acquired: int
    waited: int
    wait_seconds: float
    #: ``RateLimited`` errors raised (nothing reserved for them).
    rate_limited: int
    #: Waiters cancelled, and how many of their reservations were given back (only the
    #: latest reservation of a model can be).
    cancelled: int
    given_back: int
    #: Redis is configured; it is unreachable now (decisions are local).
    shared: bool
    degraded: bool
    redis_errors: int
    redis_last_error: str
    #: Decisions taken locally although Redis is configured (while it was unreachable).
    local_decisions: int
