"""The conversation cache and its statistics."""

from ._conversation_cache import DEFAULT_STORE_URL, ConversationCache
from ._stats import CacheStats

__all__ = ["DEFAULT_STORE_URL", "CacheStats", "ConversationCache"]
