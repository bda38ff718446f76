"""Model name to encoding name, for OpenAI models."""

from __future__ import annotations

import re
from typing import Final

__all__ = ["CL100K", "O200K", "encoding_for_model"]

O200K: Final = "o200k_base"
CL100K: Final = "cl100k_base"

# A family name, optionally followed by "-<anything>" (dated snapshots, sizes, "-mini", ...).
_O200K_NAMES: Final = re.compile(
    r"(?:gpt-5(?:\.\d+)?|gpt-4\.1|gpt-4\.5|gpt-4o|chatgpt-4o|o1|o3|o4)(?:-.+)?"
)
_CL100K_NAMES: Final = re.compile(
    r"(?:gpt-4|gpt-3\.5-turbo|gpt-35-turbo|text-embedding-ada-002|text-embedding-3-(?:small|large))"
    r"(?:-.+)?"
)


def encoding_for_model(name: str) -> str | None:
    """The encoding of an OpenAI model, or None if the name is not a known OpenAI family.

    Fine-tunes (``ft:<base>:<org>:<suffix>:<id>``) resolve to their base model.
    """
    model = name.strip().lower()
    if model.startswith("ft:"):
        model = model.split(":", 2)[1]
    if _O200K_NAMES.fullmatch(model):
        return O200K
    if _CL100K_NAMES.fullmatch(model):
        return CL100K
    return None
