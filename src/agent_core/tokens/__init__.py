"""Offline token counts (exact for OpenAI, Llama 3 and Qwen; estimates otherwise), windows."""

from ._counter import TokenCounter
from ._stable import DEFAULT_RETAIN_RATIO, WindowStrategy, check_window_strategy
from ._window import (
    Derived,
    Window,
    complete_counts,
    recent_start,
    select_window,
    token_index,
)

# Derived, complete_counts, check_window_strategy, recent_start, select_window
# and token_index are for the cache's windows and compaction (library-internal).
__all__ = [
    "DEFAULT_RETAIN_RATIO",
    "Derived",
    "TokenCounter",
    "Window",
    "WindowStrategy",
    "check_window_strategy",
    "complete_counts",
    "recent_start",
    "select_window",
    "token_index",
]
