"""agent-core: the memory layer for LLM agents.

Importing it loads only the core: `PostgresStore` (the ``postgres`` extra), the server and
the console script load their optional packages when they are first used.
"""

from typing import TYPE_CHECKING, Any

from . import errors
from ._encryption import EncryptionKeys
from ._summary import SUMMARY_NAME
from .agent import (
    AgentLimiter,
    AgentMemory,
    AgentReply,
    AgentStream,
    AnthropicChatModel,
    BaseAgent,
    ChatModel,
    ChatStream,
    CompactionPolicy,
    CompactionStats,
    Completion,
    EchoModel,
    OpenAIChatModel,
    StreamEvent,
    Usage,
)
from .cache import (
    CacheOptions,
    CacheProbe,
    CacheStats,
    ConversationCache,
    ReadResult,
    ReadSource,
    Summarizer,
)
from .errors import (
    AgentCoreError,
    AuthenticationFailed,
    CacheClosed,
    ConfigurationError,
    ContextFileError,
    DecryptionFailed,
    EncryptionKeyMissing,
    IdempotencyKeyReused,
    IdentityProviderUnavailable,
    InvalidArgument,
    InvalidBatch,
    InvalidMessage,
    InvalidNamespace,
    InvalidThreadId,
    MessageTooLarge,
    ModelError,
    PermissionDenied,
    ProviderError,
    QuotaExceeded,
    RateLimited,
    RequestTooLarge,
    StoreUnavailable,
    ThreadExists,
    ThreadNotFound,
    TokenBudgetExceeded,
    TurnNotSaved,
    VersionConflict,
)
from .messages import Conversation, Message
from .ratelimit import RateLimiter, RateLimiterStats, RateLimits
from .store import SQLiteStore, ThreadInfo, ThreadPage, ThreadStore, store_from_url
from .tokens import TokenCounter, Window

if TYPE_CHECKING:
    from .store import PostgresStore as PostgresStore

__version__ = "0.1.0"

# PostgresStore is public too, but not in __all__: `import *` must work without asyncpg.
__all__ = [
    "SUMMARY_NAME",
    "AgentCoreError",
    "AgentLimiter",
    "AgentMemory",
    "AgentReply",
    "AgentStream",
    "AnthropicChatModel",
    "AuthenticationFailed",
    "BaseAgent",
    "CacheClosed",
    "CacheOptions",
    "CacheProbe",
    "CacheStats",
    "ChatModel",
    "ChatStream",
    "CompactionPolicy",
    "CompactionStats",
    "Completion",
    "ConfigurationError",
    "ContextFileError",
    "Conversation",
    "ConversationCache",
    "DecryptionFailed",
    "EchoModel",
    "EncryptionKeyMissing",
    "EncryptionKeys",
    "IdempotencyKeyReused",
    "IdentityProviderUnavailable",
    "InvalidArgument",
    "InvalidBatch",
    "InvalidMessage",
    "InvalidNamespace",
    "InvalidThreadId",
    "Message",
    "MessageTooLarge",
    "ModelError",
    "OpenAIChatModel",
    "PermissionDenied",
    "ProviderError",
    "QuotaExceeded",
    "RateLimited",
    "RateLimiter",
    "RateLimiterStats",
    "RateLimits",
    "ReadResult",
    "ReadSource",
    "RequestTooLarge",
    "SQLiteStore",
    "StoreUnavailable",
    "StreamEvent",
    "Summarizer",
    "ThreadExists",
    "ThreadInfo",
    "ThreadNotFound",
    "ThreadPage",
    "ThreadStore",
    "TokenBudgetExceeded",
    "TokenCounter",
    "TurnNotSaved",
    "Usage",
    "VersionConflict",
    "Window",
    "errors",
    "store_from_url",
]


def __getattr__(name: str) -> Any:
    # PostgresStore needs asyncpg: resolved on first access, a ConfigurationError without it.
    if name == "PostgresStore":
        from . import store

        return store.PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
