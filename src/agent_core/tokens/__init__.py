"""Offline token counting: exact for OpenAI encodings, calibrated estimates otherwise."""

from ._counter import TokenCounter
from ._window import Window

__all__ = ["TokenCounter", "Window"]
