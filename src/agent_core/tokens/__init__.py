"""Offline token counts (exact for OpenAI, Llama 3 and Qwen; estimates otherwise), windows."""

from ._counter import TokenCounter
from ._window import Window

__all__ = ["TokenCounter", "Window"]
