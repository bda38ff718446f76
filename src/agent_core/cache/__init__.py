"""The conversation cache and its statistics."""

from ._conversation_cache import ConversationCache
from ._stats import CacheStats

__all__ = ["CacheStats", "ConversationCache"]
