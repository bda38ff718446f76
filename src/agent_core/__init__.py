"""agent-core: the memory layer for LLM agents."""

from . import errors
from .cache import CacheStats, ConversationCache
from .errors import (
    AgentCoreError,
    CacheClosed,
    ConfigurationError,
    IdempotencyKeyReused,
    InvalidArgument,
    InvalidBatch,
    InvalidMessage,
    InvalidNamespace,
    InvalidThreadId,
    MessageTooLarge,
    ProviderError,
    StoreUnavailable,
    TokenBudgetExceeded,
    VersionConflict,
)
from .messages import Conversation, Message
from .store import PostgresStore, SQLiteStore, ThreadPage, ThreadStore, store_from_url
from .tokens import TokenCounter, Window

__version__ = "0.1.0"

__all__ = [
    "AgentCoreError",
    "CacheClosed",
    "CacheStats",
    "ConfigurationError",
    "Conversation",
    "ConversationCache",
    "IdempotencyKeyReused",
    "InvalidArgument",
    "InvalidBatch",
    "InvalidMessage",
    "InvalidNamespace",
    "InvalidThreadId",
    "Message",
    "MessageTooLarge",
    "PostgresStore",
    "ProviderError",
    "SQLiteStore",
    "StoreUnavailable",
    "ThreadPage",
    "ThreadStore",
    "TokenBudgetExceeded",
    "TokenCounter",
    "VersionConflict",
    "Window",
    "errors",
    "store_from_url",
]
