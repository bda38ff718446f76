"""The HTTP service: a FastAPI app over one `ConversationCache` and one `BaseAgent`.

`Settings` is core (the console script reads it too); the app and its serverless form
need the ``server`` extra and are imported on first access.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any, Final

from .._extras import needs_extra
from ._settings import Settings

if TYPE_CHECKING:
    from ._access import ops_only
    from ._app import create_app
    from ._serverless import ServerlessApp, make_app, serverless_settings

__all__ = [
    "ServerlessApp",
    "Settings",
    "create_app",
    "make_app",
    "ops_only",
    "serverless_settings",
]

#: Public name -> the module that defines it (imports the ``server`` extra).
_LAZY: Final = {
    "create_app": "._app",
    "ops_only": "._access",
    "ServerlessApp": "._serverless",
    "make_app": "._serverless",
    "serverless_settings": "._serverless",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with needs_extra("The HTTP service"):
        return getattr(import_module(module, __name__), name)
