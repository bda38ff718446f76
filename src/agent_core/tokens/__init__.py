"""Offline token counting: exact for OpenAI encodings, calibrated estimates otherwise."""

from ._counter import TokenCounter

__all__ = ["TokenCounter"]
