"""The conversation cache, its options, its statistics and how a read was served."""

from ._compaction import Summarizer
from ._conversation_cache import DEFAULT_STORE_URL, ConversationCache
from ._options import CacheOptions, Consistency
from ._probe import CacheProbe
from ._read_result import ReadResult, ReadSource
from ._stats import CacheStats

__all__ = [
    "DEFAULT_STORE_URL",
    "CacheOptions",
    "CacheProbe",
    "CacheStats",
    "Consistency",
    "ConversationCache",
    "ReadResult",
    "ReadSource",
    "Summarizer",
]
