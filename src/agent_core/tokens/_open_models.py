"""Exact, offline BPE counts for Llama 3 and Qwen (2, 2.5, 3).

Both vocabularies ship in quicktok-v1's wheel, sha256-identical to the published files
(Meta's Llama 3 ``tokenizer.model`` and Qwen's ``qwen.tiktoken``; docs/research/
tokenizers.md, sections 3, 6 and 10):

* Llama 3: Meta's reference tokenizer is a ``tiktoken.Encoding`` of those ranks with
  Meta's pattern, and this module builds exactly that (quicktok's own llama3 engine
  miscounts some Korean and Japanese). Meta's ``Tokenizer.encode`` also cuts texts into
  400,000-character slices and cuts runs of whitespace or non-whitespace every 25,000
  characters (tiktoken's regex overflows on longer runs with this pattern); counts
  follow the same cuts. Hugging Face's tokenizer, which most servers use, does not cut:
  on such long texts its count can be lower by about one token per cut.
* Qwen: quicktok's qwen3 engine, which applies NFC as Qwen's tokenizer does and matched
  rank BPE with Qwen2's pattern. Lone surrogates become U+FFFD (as for the OpenAI
  encodings), and texts with letters new in Unicode 17 (unassigned to
  tiktoken's regex tables, letters to quicktok's) are counted by tiktoken with Qwen2's
  pattern after NFC.
"""

from __future__ import annotations

import re
import struct
import threading
import unicodedata
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Final

import quicktok

from ._encodings import _mask_unicode_17
from ._models import LLAMA3, QWEN

if TYPE_CHECKING:
    import tiktoken

__all__ = [
    "LLAMA3_PATTERN",
    "QWEN_PATTERN",
    "llama3_counter",
    "open_model_counter",
    "quicktok_ranks",
]

# Verbatim from meta-llama/llama-models models/llama3/api/tokenizer.py (Tokenizer.pat_str).
LLAMA3_PATTERN: Final = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Verbatim from transformers models/qwen2/tokenization_qwen2.py (PRETOKENIZE_REGEX).
QWEN_PATTERN: Final = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_SLICE_CHARS: Final = 400_000
_RUN_CHARS: Final = 25_000
# A run of whitespace or non-whitespace longer than _RUN_CHARS, matched from its start.
# Python's \s is str.isspace(), the test Meta's splitter uses.
_LONG_RUN: Final = re.compile(r"(?<!\S)\S{25001,}|(?<!\s)\s{25001,}")
# The last character of a class before a position: .* jumps to it, then backtracks.
_LAST_SPACE: Final = re.compile(r"(?s:.*)\s")
_LAST_NON_SPACE: Final = re.compile(r"(?s:.*)\S")
_SPACE: Final = re.compile(r"\s")
_NON_SPACE: Final = re.compile(r"\S")


def quicktok_ranks(name: str) -> dict[bytes, int]:
    """Ranks of quicktok's bundled vocabulary: u32le count, then (u16le len, bytes, u32le rank)."""
    data = (Path(quicktok.__file__).parent / "data" / f"{name}.vocab").read_bytes()
    (count,) = struct.unpack_from("<I", data, 0)
    offset, ranks = 4, {}
    for _ in range(count):
        (length,) = struct.unpack_from("<H", data, offset)
        end = offset + 2 + length
        (ranks[data[offset + 2 : end]],) = struct.unpack_from("<I", data, end)
        offset = end + 4
    if offset != len(data) or len(ranks) != count:
        raise RuntimeError(f"quicktok's {name}.vocab is malformed")
    return ranks


def _encoding(name: str, pattern: str) -> tiktoken.Encoding:
    # Imported here, so that importing agent_core does not pay for it. The Encoding is
    # built from the ranks given: tiktoken's downloading loader is never called.
    import tiktoken

    # Counts are plain text, so no special tokens: "<|eot_id|>" in a text counts as text.
    return tiktoken.Encoding(
        name, pat_str=pattern, mergeable_ranks=quicktok_ranks(name), special_tokens={}
    )


def _meta_pieces(text: str) -> Iterator[str]:
    """The substrings Meta's ``Tokenizer.encode`` encodes one by one, lazily."""
    for start in range(0, len(text), _SLICE_CHARS):
        part = text[start : start + _SLICE_CHARS]
        cut = 0
        for end in _run_cuts(part):
            yield part[cut:end]
            cut = end
        yield part[cut:]


def _run_cuts(part: str) -> Iterator[int]:
    """Where Meta's splitter cuts ``part``, in order: every ``_RUN_CHARS`` characters of a
    run of whitespace or non-whitespace longer than that.

    Such a run covers one of the positions ``k * _RUN_CHARS``, so only the runs through
    those are measured, from at most ``_RUN_CHARS + 1`` characters either side (matching
    `_LONG_RUN` over the whole part would hold the GIL for about 30 ns a character). A
    long run is read on a window at a time and each cut yielded as soon as the run is
    known to reach it: a caller that counts the piece before asking for the next cut
    releases the GIL in between, even in a CJK text that is one run of 100,000s of
    characters (~12 ns each to read).
    """
    position = 0
    while position < len(part):
        if part[position].isspace():
            other, last_other = _NON_SPACE, _LAST_NON_SPACE
        else:
            other, last_other = _SPACE, _LAST_SPACE
        # The run starts after the last character of the other class before it.
        high = position
        while True:
            low = max(high - _RUN_CHARS - 1, 0)
            found = last_other.match(part, low, high)
            if found or not low:
                start = found.end() if found else 0
                break
            high = low
        found = other.search(part, position, position + _RUN_CHARS + 1)
        end = found.start() if found else min(position + _RUN_CHARS + 1, len(part))
        if end - start <= _RUN_CHARS:
            position += _RUN_CHARS
            continue
        cut = start + _RUN_CHARS
        while True:
            while cut < end:
                yield cut
                cut += _RUN_CHARS
            if found or end == len(part):
                break
            found = other.search(part, end, end + _RUN_CHARS)
            end = found.start() if found else min(end + _RUN_CHARS, len(part))
        position = -(-end // _RUN_CHARS) * _RUN_CHARS  # the first position past the run


class Llama3Counter:
    """Meta's reference Llama 3 tokenizer, counting plain text."""

    __slots__ = ("_encoding",)

    def __init__(self) -> None:
        self._encoding = _encoding(LLAMA3, LLAMA3_PATTERN)

    def count(self, text: str) -> int:
        """BPE tokens of ``text``; tiktoken turns lone surrogates into U+FFFD."""
        return sum(map(self.count_piece, _meta_pieces(text)))

    @staticmethod
    def pieces(text: str) -> Iterator[str]:
        """The substrings Meta's ``Tokenizer.encode`` encodes one by one (``count`` sums them)."""
        return _meta_pieces(text)

    def count_piece(self, piece: str) -> int:
        """BPE tokens of one of `pieces`, or of any text Meta's tokenizer would not cut."""
        return len(self._encoding.encode_ordinary(piece))


class QwenCounter:
    """Qwen's tokenizer (NFC, then byte-level BPE), counting plain text."""

    __slots__ = ("_engine", "_fallback", "_lock")

    def __init__(self) -> None:
        self._engine = quicktok.get_encoding(QWEN)
        self._fallback: tiktoken.Encoding | None = None
        self._lock = threading.Lock()

    def count(self, text: str) -> int:
        """BPE tokens of ``text`` after NFC."""
        if text.isascii():
            return int(self._engine.count(text))
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            # Lone surrogates: quicktok rejects them, tiktoken counts them as U+FFFD.
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            data = text.encode("utf-8")
        if _mask_unicode_17(data)[1]:
            normalized = unicodedata.normalize("NFC", text)
            return len(self._tiktoken().encode_ordinary(normalized))
        # quicktok normalizes to NFC itself.
        return int(self._engine.count(data))

    def _tiktoken(self) -> tiktoken.Encoding:
        with self._lock:
            if self._fallback is None:
                # Built on first need: only texts with Unicode-17 letters use it.
                self._fallback = _encoding(QWEN, QWEN_PATTERN)
            return self._fallback


_COUNTERS: Final[dict[str, type[Llama3Counter | QwenCounter]]] = {
    LLAMA3: Llama3Counter,
    QWEN: QwenCounter,
}


@cache
def open_model_counter(name: str) -> Llama3Counter | QwenCounter:
    """The shared counter of an open-model encoding, loaded once (0.1-0.4 s)."""
    return _COUNTERS[name]()


def llama3_counter() -> Llama3Counter:
    """The shared Llama 3 counter."""
    counter = open_model_counter(LLAMA3)
    assert isinstance(counter, Llama3Counter)
    return counter
