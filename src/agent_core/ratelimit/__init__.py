"""Requests and tokens per minute per model, enforced locally or shared through Redis."""

from ._limiter import RateLimiter
from ._limits import RateLimits
from ._stats import RateLimiterStats

__all__ = ["RateLimiter", "RateLimiterStats", "RateLimits"]
