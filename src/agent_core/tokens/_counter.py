"""TokenCounter: the public entry point of agent_core.tokens."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, final

from .._quote import quote
from ..errors import InvalidArgument
from ..messages import Message
from ._chat import chat_format, count_message, count_messages, count_tools
from ._encodings import bpe_counter
from ._estimate import estimate_tokens
from ._models import CL100K, LLAMA3, O200K, OPEN_ENCODINGS, QWEN, encoding_for_model
from ._online import (
    DEFAULT_BASE_URL,
    anthropic_request,
    check_online_args,
    count_tokens_online,
    is_claude,
)
from ._open_models import llama3_counter, open_model_counter

__all__ = ["ESTIMATE_KEY", "TokenCounter"]

#: The key under which estimated counts are stored.
ESTIMATE_KEY: Final = "estimate-v1"
# Shorter texts count in well under a millisecond: a thread hop would cost more.
_INLINE_CHARS: Final = 64 << 10
_ENCODINGS: Final = (O200K, CL100K, LLAMA3, QWEN, None)


# Where every encoding's pattern (Llama 3's cuts aside) ends a piece, whatever precedes:
# before a space that follows a non-space (no alternative runs from a non-space into a
# space, and a match from the space depends only on what follows), and after a newline
# that a letter or digit follows (no alternative takes a newline and then one); and
# between a letter and CJK punctuation (a run of letters ends; punctuation starts a
# piece). Python's \s is a superset of the patterns' White_Space, so \S here is never
# one; and its letters (Unicode 14) are letters to every pattern.
_CUT: Final = re.compile(
    r"(?<=\S)(?= )|\n(?=[^\W_])|(?<=[^\W\d_])(?=[\u3001\u3002\uff0c\uff01\uff1f\uff1a\uff1b])"
)
# What holds the GIL in a worker grows with the slice (UTF-8 encoding and the checks
# before counting, ~7 ns a character on emoji-heavy text; for Llama 3, tiktoken's list of ids,
# ~9 ns a character): 64K characters keep each stretch well under 1 ms. The engines
# count with the GIL released in between.
_SLICE_CHARS: Final = 64 << 10
# How far past a slice's nominal end a cut is looked for, per search (GIL held).
_CUT_WINDOW: Final = 16 << 10


def _safe_cut(text: str, position: int) -> int:
    """The first cut at or after ``position`` (the text's end if there is none)."""
    while position < len(text):
        found = _CUT.search(text, position, position + _CUT_WINDOW)
        if found is not None:
            return found.start() + (text[found.start()] == "\n")
        position += _CUT_WINDOW
    return len(text)


def _count_sliced(text: str, slice_chars: int, count: Callable[[str], int]) -> int:
    """``count`` summed over slices of ``text`` of about ``slice_chars``, cut at `_safe_cut`."""
    total, start = 0, 0
    while start < len(text):
        end = _safe_cut(text, start + slice_chars)
        total += count(text[start:end])
        start = end
    return total


def _bpe_count(encoding: str) -> Callable[[str], int]:
    if encoding in OPEN_ENCODINGS:
        return open_model_counter(encoding).count
    return bpe_counter(encoding).count


@final
class TokenCounter:
    """Counts the tokens a model sees, offline.

    OpenAI models (gpt-4o, gpt-4.1, gpt-5, o1/o3/o4 -> o200k_base; gpt-4, gpt-3.5-turbo
    -> cl100k_base; dated snapshots and ``ft:`` fine-tunes included), Llama 3, 3.1, 3.2
    and 3.3 (-> ``"llama3"``) and Qwen2, Qwen2.5, QwQ and Qwen3 (-> ``"qwen3"``; open
    model names may carry an org prefix such as ``meta-llama/`` or an Ollama ``:tag``)
    get exact counts from a vocabulary bundled in an installed package: no download, no
    socket. Their chat overhead follows their own chat format (see
    ``agent_core.tokens._chat``).

    Any other model (Claude, Llama 2 and 4, unknown names) gets an estimate with
    ``exact == False``: characters per token of 3.4 for ASCII, 1.1 for CJK, 1.5 for other
    BMP text and 0.5 for emoji and other supplementary-plane characters, fitted to
    o200k_base on a mixed corpus (within -28%..+24% per category; the measurements are
    in ``agent_core.tokens._estimate``). Other tokenizers, Claude's among them, differ
    from o200k_base, so budget a margin. Chat overhead uses the gpt-4o rules. For Claude,
    `count_messages_online` asks Anthropic's count-tokens endpoint instead, only when
    called.
    """

    __slots__ = ("_chat", "_encoding", "_model", "_priming")

    def __init__(self, model: str, encoding: str | None) -> None:
        """Prefer `for_model`, which picks the encoding from the model name."""
        if encoding not in _ENCODINGS:
            names = ", ".join(repr(name) for name in _ENCODINGS[:-1])
            raise InvalidArgument(f"encoding must be {names} or None, got {quote(encoding)}")
        self._model = model
        self._encoding = encoding
        self._chat = chat_format(encoding)
        self._priming: int | None = None

    @classmethod
    def for_model(cls, name: str) -> TokenCounter:
        """The counter of model ``name``; raises `InvalidArgument` if it is not a non-empty str."""
        if not isinstance(name, str) or not name.strip():
            raise InvalidArgument(f"model name must be a non-empty str, got {quote(name)}")
        counter = cls(name, encoding_for_model(name))
        if counter._encoding is not None:
            # Loads the vocabulary now, so the first count does not pay for it.
            _bpe_count(counter._encoding)
        return counter

    @property
    def model(self) -> str:
        """The model name given to `for_model`."""
        return self._model

    @property
    def encoding(self) -> str | None:
        """The BPE encoding (``"o200k_base"``, ``"cl100k_base"``, ``"llama3"`` or ``"qwen3"``).

        None for estimates.
        """
        return self._encoding

    @property
    def key(self) -> str:
        """What stored counts of this counter are filed under: the encoding, or ``"estimate-v1"``.

        Models that share an encoding share a chat format, hence their counts.
        """
        return self._encoding or ESTIMATE_KEY

    @property
    def reply_priming(self) -> int:
        """Tokens a request adds once, beyond its messages, to prime the reply."""
        if self._priming is None:
            self._priming = self._chat.reply_priming(self.count)
        return self._priming

    @property
    def exact(self) -> bool:
        """Whether counts are exact BPE counts rather than estimates."""
        return self._encoding is not None

    def count(self, text: str) -> int:
        """Tokens of ``text`` as plain text (``<|endoftext|>`` counts as ordinary text)."""
        if not isinstance(text, str):
            raise InvalidArgument(f"text must be a str, got {type(text)!r}")
        if self._encoding is None:
            return estimate_tokens(text)
        return _bpe_count(self._encoding)(text)

    async def count_async(self, text: str) -> int:
        """`count`, off the event loop for long texts.

        The engines release the GIL while they count, so a long text goes to a worker
        thread and the loop keeps serving other tasks (a 5 MB text takes about 100 ms;
        Llama 3 about 400 ms). What still holds the GIL (encoding to UTF-8, the
        checks before counting, tiktoken's list of ids for Llama 3) is bounded by counting
        the text in slices of about 64K characters, cut where a piece always ends, so
        the worker holds the GIL for well under a millisecond at a time.
        """
        if not isinstance(text, str) or len(text) < _INLINE_CHARS:
            return self.count(text)
        return await asyncio.to_thread(self._count_slices, text, _SLICE_CHARS)

    def _count_slices(self, text: str, slice_chars: int) -> int:
        if self._encoding == LLAMA3:
            # Meta's tokenizer encodes its own cuts of a text one by one (every 400,000
            # characters, and runs of 25,000): each is counted in slices as any text.
            llama3 = llama3_counter()
            return sum(
                _count_sliced(piece, slice_chars, llama3.count_piece)
                for piece in llama3.pieces(text)
            )
        return _count_sliced(text, slice_chars, self.count)

    def count_message(self, message: Mapping[str, Any] | Message) -> int:
        """Tokens one message adds to a request: its texts plus the per-message overhead.

        A request costs ``reply_priming`` plus the sum of this over its messages.
        """
        return count_message(self._chat, self.count, message)

    def count_messages(
        self,
        messages: Sequence[Mapping[str, Any]] | Sequence[Message],
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> int:
        """Prompt tokens the API bills for ``messages`` (and ``tools``), reply priming included.

        Follows OpenAI's published rules, or the chat format of Llama 3 and Qwen; see
        `agent_core.tokens._chat` for how multi-part content, tool calls and tool
        definitions are counted.
        """
        total = count_messages(self._chat, self.count, messages)
        if tools is not None:
            total += count_tools(self.count, self._encoding, tools)
        return total

    async def count_messages_online(
        self,
        messages: Sequence[Mapping[str, Any]] | Sequence[Message],
        tools: Sequence[Mapping[str, Any]] | None = None,
        *,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        # A parameter rather than the caller's asyncio.timeout: the request is bounded on
        # its own, and a timeout becomes a ProviderError that says so.
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> int:
        """Input tokens of ``messages`` (and ``tools``) as Anthropic counts them, for Claude.

        Off by default: nothing in agent-core calls it, and no other token count opens a
        socket. It sends the whole conversation and tools to Anthropic's count-tokens
        endpoint (``{base_url}/v1/messages/count_tokens``) with ``api_key``, in one request
        bounded by ``timeout`` seconds and never retried. The provider's terms, rate limits
        and any price apply; it calls its count an estimate that may differ slightly from
        what a request is billed.

        Messages are converted to the Messages API as `agent_core.tokens._online`
        describes (system prompt pulled out, tool calls and results as content blocks,
        same-role turns merged); text only. Raises `InvalidArgument` before any request
        for a model that is not Claude (use `count_messages`), bad arguments or messages
        that do not convert, and `ProviderError` when the provider refuses or fails the
        request or cannot be reached.
        """
        if not is_claude(self._model):
            raise InvalidArgument(
                f"online counts are for Claude models (Anthropic's endpoint), not "
                f"{self._model!r:.100}; count it offline with count_messages "
                f"({'exact' if self.exact else 'an estimate'} for this model)"
            )
        url = check_online_args(api_key, base_url, timeout)
        body = anthropic_request(self._model.strip(), messages, tools)
        return await count_tokens_online(url, body, api_key, timeout)

    def __repr__(self) -> str:
        return f"TokenCounter(model={self._model!r}, encoding={self._encoding!r})"
