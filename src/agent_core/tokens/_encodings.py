"""Exact, offline BPE counts for cl100k_base and o200k_base.

quicktok-v1 counts from vocabularies bundled in its wheel (sha256-identical to OpenAI's
``.tiktoken`` files) and never touches the network. Two guards make it match tiktoken
exactly (docs/research/tokenizers.md, sections 4 and 7):

* lone surrogates, which quicktok rejects, become U+FFFD first, as tiktoken does;
* code points that are new letters, marks or numbers in Unicode 17 are unassigned to
  tiktoken's regex but letters to quicktok. A text holding some is counted as its
  masked copy, each of them replaced by the private-use U+E000 (in the UTF-8, where
  they are found fastest): no class of either pattern tells U+E000 from an unassigned
  code point, so quicktok splits the copy into tiktoken's pieces of the text, and only
  the pieces holding a mask count differently.
  Each of those is found by splitting with tiktoken's pattern from a nearby position
  where a piece ends whatever precedes it (``_SYNC``), so the work stays next to the
  masks, and its count is replaced by tiktoken's count of its original text (a
  ``tiktoken.Encoding`` built from quicktok's ranks, never downloaded).
"""

from __future__ import annotations

import re
import threading
from functools import cache
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import quicktok

if TYPE_CHECKING:
    import tiktoken

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
# The UTF-8 of those ranges, exactly, to mask the bytes quicktok counts: a search for
# the code points costs ~28 ns a character over the astral ranges. Each pattern starts
# with one literal lead byte, which re scans for alone (2-3x faster than for one of
# several), and a lead byte absent from a text costs a memchr (``in``).
_UNICODE_17_BMP_UTF8: Final = (
    (b"\xe0", re.compile(rb"\xe0(?:\xa2\x8f|[\xb1\xb3]\x9c)")),  # U+088F U+0C5C U+0CDC
    (b"\xe1", re.compile(rb"\xe1\xab[\x8f-\x9d\xa0-\xab]")),  # U+1ACF-1ADD U+1AE0-1AEB
    (b"\xea", re.compile(rb"\xea\x9f[\x8e\x8f\x92\x94\xb1]")),  # U+A7CE-A7CF A7D2 A7D4 A7F1
)
_UNICODE_17_ASTRAL_UTF8: Final = re.compile(
    rb"\xf0(?:\x90(?:\xa5[\x80-\x99]|\xbb[\x85-\x87\xba\xbb])"  # U+10940-10EFB
    rb"|\x91(?:\xad[\xa0-\xa7]|\xb6[\xb0-\xbf]|\xb7[\x80-\x9b\xa0-\xa9])"  # U+11B60-11DE9
    rb"|\x96(?:\xba[\xa0-\xb8\xbb-\xbf]|\xbb[\x80-\x93]|\xbf[\xb2-\xb6])"  # U+16EA0-16FF6
    rb"|\x98(?:\x9f[\xb8-\xbf]|\xb4[\x89-\x9e]|\xb6[\x80-\xbf]|\xb7[\x80-\xb2])"  # U+187F8-18DF2
    rb"|\x9e\x9b[\x80-\xb5\xbe\xbf]"  # U+1E6C0-1E6FF
    rb"|\xab\x9c[\xba-\xbf]|\xac\xba[\xa2-\xad]"  # U+2B73A-2CEAD
    rb"|\xb2(?:\x8e[\xb0-\xbf]|[\x8f-\xbf][\x80-\xbf])"  # U+323B0-32FFF
    rb"|\xb3(?:[\x80-\x90][\x80-\xbf]|\x91[\x80-\xb9]))"  # U+33000-33479
)
# Emoji (F0 9F) would make the astral pattern try a match at each: it runs only if F0
# precedes a second byte of its ranges, found as F0 00 once those bytes map to 00 (00
# never follows F0 in UTF-8).
_ASTRAL_SECOND_BYTES: Final = bytes.maketrans(b"\x90\x91\x96\x98\x9e\xab\xac\xb2\xb3", bytes(9))
# Letters, marks and numbers new in Unicode 18, as regex 2026.11.15 has them: unassigned
# to tiktoken's tables (Unicode 16) and to quicktok's, so to the split here as well.
_UNICODE_18_RANGES: Final = (
    "\u0558\u058b-\u058c\u05c8-\u05c9\u0b53-\u0b54\u1ade-\u1adf\u1aec-\u1af0\u208f"
    "\u209d-\u209f\ua7dd\ua7e2\uab6c-\uab6d\U000107bb-\U000107bf\U00010ecb-\U00010ecf"
    "\U00010ed9-\U00010eee\U00010ef0-\U00010ef9\U00011b0a\U00011df0-\U00011df1"
    "\U0001246f\U00012475-\U0001247f\U00012550-\U00012686\U00018cd6-\U00018cda"
    "\U00018d1f-\U00018d20\U00018e00-\U00019191\U000191a0-\U000191d2"
    "\U0001b123-\U0001b128\U0001b168\U0001d127-\U0001d128\U0001d250-\U0001d252"
    "\U0001d25b-\U0001d25c\U0001d25f\U0001d280-\U0001d281\U0001d6a6"
    "\U0001df1f-\U0001df24\U0001df2b-\U0001df81\U0001df90-\U0001df96"
    "\U0001dfcd-\U0001dfff\U0002b81e\U0003d000-\U0003fc3f"
)
# The classes of tiktoken's patterns in the regex module, narrowed to tiktoken's tables:
# without the code points assigned since Unicode 16, and U+0295 as Ll (Lo in Unicode
# 18). They equal the classes of regex 2024.11.6 (Unicode 16); a test pins them.
_NEW: Final = f"[{_UNICODE_17_RANGES}{_UNICODE_18_RANGES}]"
_CLASSES: Final = {
    "L": rf"[\p{{L}}--{_NEW}]",
    "Lu": rf"[\p{{Lu}}--[\u0295{_NEW}]]",
    "Lt": rf"[\p{{Lt}}--[\u0295{_NEW}]]",
    "Lm": rf"[\p{{Lm}}--[\u0295{_NEW}]]",
    "Lo": rf"[\p{{Lo}}--[\u0295{_NEW}]]",
    "Ll": rf"[\p{{Ll}}\u0295--{_NEW}]",
    "M": rf"[\p{{M}}--{_NEW}]",
    "N": rf"[\p{{N}}--{_NEW}]",
}
# A private-use code point: unassigned-like (not a letter, mark, number or space) in
# every Unicode version, so the split sees what tiktoken's tables see.
_MASK: Final = "\ue000"
_MASK_UTF8: Final = _MASK.encode("utf-8")
# Two characters between which a piece ends, whatever precedes them; the nearest pair
# before a mask is searched backwards. A letter then a non-letter: only the letter
# alternatives take letters, and they take a run of letters whole (in o200k with the
# marks and an 's-like suffix that follow; cl100k's contractions hold letters only
# after the apostrophe). A digit then a non-digit: only \p{N}{1,3} takes digits.
_SYNC: Final = {
    "cl100k_base": r"\p{L}[^\p{L}]|\p{N}[^\p{N}]",
    "o200k_base": r"\p{L}[^\p{L}\p{M}']|\p{N}[^\p{N}]",
}


class _Tables(NamedTuple):
    """What counting a text with Unicode-17 letters needs, built on first use."""

    splitter: Any  # regex.Pattern: the regex module ships no type hints
    sync: Any
    reference: tiktoken.Encoding


class BpeCounter:
    """Exact token counts for one OpenAI encoding, plain-text semantics."""

    __slots__ = ("_encoding", "_lock", "_name", "_tables")

    def __init__(self, name: str) -> None:
        self._name = name
        self._encoding = quicktok.get_encoding(name)
        self._tables: _Tables | None = None
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
        masked, found = _mask_unicode_17(data)
        if found:
            return self._count_masked(text, masked)
        return int(self._encoding.count(data))

    def _count_masked(self, text: str, masked_utf8: bytes) -> int:
        # Exact if the regex module's tables, narrowed by _CLASSES, are tiktoken's: a test
        # pins them, and the differential tests in tests/test_tokens.py check the counts.
        tables = self._load_tables()
        total = int(self._encoding.count(masked_utf8))
        masked = masked_utf8.decode("utf-8")
        end = 0  # a piece boundary after every mask counted so far
        mask = masked.find(_MASK)
        while mask >= 0:
            if text[mask] != _MASK:  # not U+E000 of the text itself: that piece counts right
                sync = tables.sync.search(masked, max(end - 1, 0), mask + 1)
                start = sync.start() + 1 if sync else end
                # The match at a boundary depends only on the text from there on, so the
                # pieces from ``start`` are tiktoken's.
                piece = tables.splitter.search(masked, start)
                while piece.end() <= mask:
                    piece = tables.splitter.search(masked, piece.end())
                start, end = piece.span()
                # quicktok counted the masked piece as one piece, as it counts it alone:
                # cut at its end, a piece still matches whole, for only the paths that
                # reach the new end of text change, and they end there. For the same
                # reason tiktoken takes the original piece alone as one piece, so its
                # count of it is its byte-pair merge (about 1 µs a piece).
                total -= int(self._encoding.count(piece.group()))
                total += len(tables.reference.encode_ordinary(text[start:end]))
            mask = masked.find(_MASK, max(mask + 1, end))
        return total

    def _load_tables(self) -> _Tables:
        with self._lock:
            if self._tables is None:
                # Imported here: only texts with Unicode-17 letters need them.
                import regex
                import tiktoken

                # Ordinary tokens only, as tiktoken's mergeable ranks (~25 MB for o200k).
                tokens = self._encoding.token_byte_values()
                ranks = dict(
                    zip(tokens, map(self._encoding.encode_single_token, tokens), strict=True)
                )
                self._tables = _Tables(
                    splitter=regex.compile(_tiktoken_tables(PATTERNS[self._name])),
                    sync=regex.compile(_tiktoken_tables(_SYNC[self._name]), regex.REVERSE),
                    # tiktoken's own constructor for this encoding, with the ranks given
                    # rather than downloaded; no special tokens: counts are plain text.
                    reference=tiktoken.Encoding(
                        self._name,
                        pat_str=PATTERNS[self._name],
                        mergeable_ranks=ranks,
                        special_tokens={},
                    ),
                )
            return self._tables


def _tiktoken_tables(pattern: str) -> str:
    """``pattern`` for the regex module, with the classes of tiktoken's tables."""
    for name, narrowed in _CLASSES.items():
        pattern = pattern.replace(rf"\p{{{name}}}", narrowed)
    # Version 1 for the set difference; simple case folding, as in version 0.
    return "(?V1-f)" + pattern


def _mask_unicode_17(data: bytes) -> tuple[bytes, int]:
    """``data`` with each Unicode-17 code point replaced by ``_MASK``, and their number."""
    masked, found = data, 0
    for lead, pattern in _UNICODE_17_BMP_UTF8:
        if lead in masked:
            masked, n = pattern.subn(_MASK_UTF8, masked)
            found += n
    if b"\xf0" in masked and b"\xf0\x00" in masked.translate(_ASTRAL_SECOND_BYTES):
        masked, n = _UNICODE_17_ASTRAL_UTF8.subn(_MASK_UTF8, masked)
        found += n
    return masked, found


@cache
def bpe_counter(name: str) -> BpeCounter:
    """The shared counter of an encoding; quicktok loads it once (0.4-1.7 s)."""
    return BpeCounter(name)
