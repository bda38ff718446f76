"""The HTTP service: a FastAPI app over one `ConversationCache` and one `BaseAgent`.

`Settings` is core (the console script reads it too); `create_app` needs the ``server``
extra and is imported on first access.
"""

from typing import TYPE_CHECKING, Any

from .._extras import needs_extra
from ._settings import Settings

if TYPE_CHECKING:
    from ._app import create_app

__all__ = ["Settings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        with needs_extra("The HTTP service"):
            from ._app import create_app
        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
