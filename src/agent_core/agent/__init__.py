"""Running agents: `BaseAgent`, chat models (OpenAI-compatible and Anthropic HTTP, local echo),
context files."""

from ._agent import AgentStream, BaseAgent
from ._anthropic import AnthropicChatModel
from ._compaction import CompactionPolicy, CompactionStats
from ._echo import EchoModel
from ._memory import AgentLimiter, AgentMemory
from ._models import ChatModel, ChatStream, Completion, StreamEvent, Usage
from ._openai import PROMPT_CACHE_RETENTIONS, OpenAIChatModel, PromptCacheRetention
from ._reply import AgentReply, HistoryTier

__all__ = [
    "PROMPT_CACHE_RETENTIONS",
    "AgentLimiter",
    "AgentMemory",
    "AgentReply",
    "AgentStream",
    "AnthropicChatModel",
    "BaseAgent",
    "ChatModel",
    "ChatStream",
    "CompactionPolicy",
    "CompactionStats",
    "Completion",
    "EchoModel",
    "HistoryTier",
    "OpenAIChatModel",
    "PromptCacheRetention",
    "StreamEvent",
    "Usage",
]
