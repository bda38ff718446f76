"""Model name to encoding name: OpenAI models, Llama 3 and Qwen 2/2.5/3."""

from __future__ import annotations

import re
from typing import Final

__all__ = ["CL100K", "LLAMA3", "O200K", "OPEN_ENCODINGS", "QWEN", "encoding_for_model"]

O200K: Final = "o200k_base"
CL100K: Final = "cl100k_base"
#: Meta's Llama 3 vocabulary (tokenizer.model), shared by Llama 3, 3.1, 3.2 and 3.3.
LLAMA3: Final = "llama3"
#: Qwen's vocabulary (qwen.tiktoken), shared by Qwen2, Qwen2.5, QwQ and Qwen3; quicktok's name.
QWEN: Final = "qwen3"
#: Encodings of open-weight model families, counted by `agent_core.tokens._open_models`.
OPEN_ENCODINGS: Final = frozenset({LLAMA3, QWEN})

# A family name, optionally followed by "-<anything>" (dated snapshots, sizes, "-mini", ...).
_O200K_NAMES: Final = re.compile(
    r"(?:gpt-5(?:\.\d+)?|gpt-4\.1|gpt-4\.5|gpt-4o|chatgpt-4o|o1|o3|o4)(?:-.+)?"
)
_CL100K_NAMES: Final = re.compile(
    r"(?:gpt-4|gpt-3\.5-turbo|gpt-35-turbo|text-embedding-ada-002|text-embedding-3-(?:small|large))"
    r"(?:-.+)?"
)
# Open models, matched on the name after the last "/" (Hugging Face "meta-llama/...",
# "Qwen/...") and followed by "-<anything>" or Ollama's ":<tag>". Only versions known to
# share the vocabulary: Llama 2 and Llama 4, Qwen 1 and Qwen3.5 use other tokenizers or
# are unverified, and stay estimates.
_LLAMA3_NAMES: Final = re.compile(r"(?:meta-)?llama-?3(?:\.[123])?(?:[-:].+)?")
_QWEN_NAMES: Final = re.compile(r"(?:qwen-?(?:2|2\.5|3)|qwq)(?:[-:].+)?")


def encoding_for_model(name: str) -> str | None:
    """The encoding of a model, or None if the name is not a known family.

    OpenAI fine-tunes (``ft:<base>:<org>:<suffix>:<id>``) resolve to their base model.
    """
    model = name.strip().lower()
    if model.startswith("ft:"):
        model = model.split(":", 2)[1]
    if _O200K_NAMES.fullmatch(model):
        return O200K
    if _CL100K_NAMES.fullmatch(model):
        return CL100K
    base = model.rsplit("/", 1)[-1]
    if _LLAMA3_NAMES.fullmatch(base):
        return LLAMA3
    if _QWEN_NAMES.fullmatch(base):
        return QWEN
    return None
