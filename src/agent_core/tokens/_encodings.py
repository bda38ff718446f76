"""Exact, offline BPE counts for cl100k_base and o200k_base.

quicktok-v1 counts from vocabularies bundled in its wheel (sha256-identical to OpenAI's
``.tiktoken`` files) and never touches the network. Two guards make it match tiktoken
exactly (docs/research/tokenizers.md, sections 4 and 7):

* lone surrogates, which quicktok rejects, become U+FFFD first, as tiktoken does;
* code points that are new letters, marks or numbers in Unicode 17 are unassigned to
  tiktoken's regex but letters to quicktok, so texts containing them are split with
  tiktoken's pattern (those code points masked as unassigned) and merged here.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from functools import cache
from typing import Any, Final

import quicktok

__all__ = ["BpeCounter", "bpe_counter"]

# Verbatim from tiktoken 0.14.0 tiktoken_ext/openai_public.py; a test checks them.
PATTERNS: Final = {
    "cl100k_base": (
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+"""
        r"""| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
    ),
    "o200k_base": "|".join(
        [
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""\p{N}{1,3}""",
            r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
            r"""\s*[\r\n]+""",
            r"""\s+(?!\S)""",
            r"""\s+""",
        ]
    ),
}

# Letters, marks and numbers new in Unicode 17 (research note, section 4C). Ranges may
# include a few other code points: those only take the slower, still exact, path.
_UNICODE_17_RANGES: Final = (
    "\u088f\u0c5c\u0cdc\u1acf-\u1add\u1ae0-\u1aeb\ua7ce\ua7cf\ua7d2\ua7d4\ua7f1"
    "\U00010940-\U00010959\U00010ec5-\U00010ec7\U00010efa\U00010efb\U00011b60-\U00011b67"
    "\U00011db0-\U00011ddb\U00011de0-\U00011de9\U00016ea0-\U00016eb8\U00016ebb-\U00016ed3"
    "\U00016ff2-\U00016ff6\U000187f8-\U000187ff\U00018d09-\U00018d1e\U00018d80-\U00018df2"
    "\U0001e6c0-\U0001e6f5\U0001e6fe\U0001e6ff\U0002b73a-\U0002b73f\U0002cea2-\U0002cead"
    "\U000323b0-\U00033479"
)
_UNICODE_17: Final = re.compile(f"[{_UNICODE_17_RANGES}]")
# Lead bytes of the UTF-8 of those ranges: a byte search is about 3x faster than a
# search for the code points, and emoji (F0 9F) and CJK (E4-E9, F0 A0-AA) never match.
_UNICODE_17_UTF8: Final = re.compile(
    rb"\xf0[\x90\x91\x96\x98\x9e\xab\xac\xb2\xb3]|\xe0\xa2\x8f|\xe0\xb1\x9c|\xe0\xb3\x9c"
    rb"|\xe1\xab|\xea\x9f"
)
# A private-use code point: unassigned-like (not a letter, mark, number or space) in
# every Unicode version, so the split sees what tiktoken's tables see.
_MASK: Final = "\ue000"


class BpeCounter:
    """Exact token counts for one OpenAI encoding, plain-text semantics."""

    __slots__ = ("_encoding", "_lock", "_name", "_splitter")

    def __init__(self, name: str) -> None:
        self._name = name
        self._encoding = quicktok.get_encoding(name)
        self._splitter: Any = None
        self._lock = threading.Lock()

    def count(self, text: str) -> int:
        """BPE tokens of ``text``; special-token-looking text counts as ordinary text."""
        if text.isascii():
            return int(self._encoding.count(text))
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            # Lone surrogates: quicktok rejects them, tiktoken counts them as U+FFFD.
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            data = text.encode("utf-8")
        if _UNICODE_17_UTF8.search(data) and _UNICODE_17.search(text):
            return self._count_split(text)
        return int(self._encoding.count(data))

    def _count_split(self, text: str) -> int:
        # Relies on the regex module agreeing with tiktoken's tables on every other code
        # point; the differential test in tests/test_tokens.py checks that.
        splitter = self._splitter_pattern()
        masked = _UNICODE_17.sub(_MASK, text)
        total = 0
        for match in splitter.finditer(masked):
            piece = text[match.start() : match.end()]
            if _UNICODE_17.search(piece):
                total += len(_merge(self._rank, piece.encode("utf-8")))
            else:
                # A piece of tiktoken's split is one piece to quicktok as well.
                total += int(self._encoding.count(piece))
        return total

    def _splitter_pattern(self) -> Any:
        with self._lock:
            if self._splitter is None:
                # Imported here: only texts with Unicode-17 letters need it.
                import regex

                self._splitter = regex.compile(PATTERNS[self._name])
            return self._splitter

    def _rank(self, token: bytes) -> int | None:
        try:
            rank = int(self._encoding.encode_single_token(token))
        except KeyError:
            return None
        return None if self._encoding.is_special_token(rank) else rank


def _merge(rank: Callable[[bytes], int | None], piece: bytes) -> list[bytes]:
    """Byte-pair merge of one piece by rank, as tiktoken's ``_byte_pair_merge`` does.

    Quadratic in the piece length, which is fine for the rare pieces that hold
    Unicode-17 letters (a word or a run of symbols).
    """
    parts = [piece[i : i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        best, best_rank = -1, None
        for i in range(len(parts) - 1):
            r = rank(parts[i] + parts[i + 1])
            if r is not None and (best_rank is None or r < best_rank):
                best, best_rank = i, r
        if best < 0:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return parts


@cache
def bpe_counter(name: str) -> BpeCounter:
    """The shared counter of an encoding; quicktok loads it once (0.4-1.7 s)."""
    return BpeCounter(name)
