"""Running agents: chat models (OpenAI-compatible HTTP, local echo) and context files."""

from ._echo import EchoModel
from ._models import ChatModel, ChatStream, Completion, StreamEvent, Usage
from ._openai import OpenAIChatModel

__all__ = [
    "ChatModel",
    "ChatStream",
    "Completion",
    "EchoModel",
    "OpenAIChatModel",
    "StreamEvent",
    "Usage",
]
