"""RateLimits: the validated, frozen budget of one model."""

from __future__ import annotations

from dataclasses import dataclass

from .._quote import quote
from .._validation import check_seconds
from ..errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Requests and tokens per ``period`` seconds (60: per minute) for one model.

    None leaves that dimension unlimited. A limit R allows a burst of R at once and
    then refills continuously at R per period. ``max_wait`` is the longest an
    ``acquire`` may wait before it raises ``RateLimited`` instead.
    """

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_wait: float = 30.0
    #: Length of the window the limits count in; tests shorten it.
    period: float = 60.0

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ConfigurationError(
                    f"{name} must be a positive int or None (unlimited), got {quote(value)}"
                )
        check_seconds("max_wait", self.max_wait, allow_zero=True, error=ConfigurationError)
        check_seconds("period", self.period, error=ConfigurationError)
