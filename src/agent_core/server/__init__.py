"""The HTTP service: a FastAPI app over one `ConversationCache` and one `BaseAgent`."""

from ._app import create_app
from ._serverless import ServerlessApp, make_app, serverless_settings
from ._settings import Settings

__all__ = ["ServerlessApp", "Settings", "create_app", "make_app", "serverless_settings"]
