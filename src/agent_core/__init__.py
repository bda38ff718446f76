"""agent-core: the memory layer for LLM agents."""

from . import errors
from .agent import (
    ChatModel,
    ChatStream,
    Completion,
    EchoModel,
    OpenAIChatModel,
    StreamEvent,
    Usage,
)
from .cache import CacheStats, ConversationCache
from .errors import (
    AgentCoreError,
    CacheClosed,
    ConfigurationError,
    ContextFileError,
    IdempotencyKeyReused,
    InvalidArgument,
    InvalidBatch,
    InvalidMessage,
    InvalidNamespace,
    InvalidThreadId,
    MessageTooLarge,
    ModelError,
    ProviderError,
    RateLimited,
    RequestTooLarge,
    StoreUnavailable,
    TokenBudgetExceeded,
    VersionConflict,
)
from .messages import Conversation, Message
from .ratelimit import RateLimiter, RateLimiterStats, RateLimits
from .store import PostgresStore, SQLiteStore, ThreadPage, ThreadStore, store_from_url
from .tokens import TokenCounter, Window

__version__ = "0.1.0"

__all__ = [
    "AgentCoreError",
    "CacheClosed",
    "CacheStats",
    "ChatModel",
    "ChatStream",
    "Completion",
    "ConfigurationError",
    "ContextFileError",
    "Conversation",
    "ConversationCache",
    "EchoModel",
    "IdempotencyKeyReused",
    "InvalidArgument",
    "InvalidBatch",
    "InvalidMessage",
    "InvalidNamespace",
    "InvalidThreadId",
    "Message",
    "MessageTooLarge",
    "ModelError",
    "OpenAIChatModel",
    "PostgresStore",
    "ProviderError",
    "RateLimited",
    "RateLimiter",
    "RateLimiterStats",
    "RateLimits",
    "RequestTooLarge",
    "SQLiteStore",
    "StoreUnavailable",
    "StreamEvent",
    "ThreadPage",
    "ThreadStore",
    "TokenBudgetExceeded",
    "TokenCounter",
    "Usage",
    "VersionConflict",
    "Window",
    "errors",
    "store_from_url",
]
