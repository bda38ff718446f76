"""The HTTP service: a FastAPI app over one `ConversationCache` and one `BaseAgent`."""

from ._app import create_app
from ._settings import Settings

__all__ = ["Settings", "create_app"]
