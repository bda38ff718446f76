"""Running agents: `BaseAgent`, chat models (OpenAI-compatible HTTP, local echo), context files."""

from ._agent import AgentStream, BaseAgent
from ._echo import EchoModel
from ._memory import AgentLimiter, AgentMemory
from ._models import ChatModel, ChatStream, Completion, StreamEvent, Usage
from ._openai import OpenAIChatModel
from ._reply import AgentReply, HistoryTier

__all__ = [
    "AgentLimiter",
    "AgentMemory",
    "AgentReply",
    "AgentStream",
    "BaseAgent",
    "ChatModel",
    "ChatStream",
    "Completion",
    "EchoModel",
    "HistoryTier",
    "OpenAIChatModel",
    "StreamEvent",
    "Usage",
]
