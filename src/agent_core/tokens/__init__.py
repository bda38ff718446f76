"""Offline token counts (exact for OpenAI, Llama 3 and Qwen; estimates otherwise), windows."""

from ._counter import TokenCounter
from ._window import Derived, Window, complete_counts, select_window

# Derived, complete_counts and select_window are for the cache's windows (library-internal).
__all__ = ["Derived", "TokenCounter", "Window", "complete_counts", "select_window"]
