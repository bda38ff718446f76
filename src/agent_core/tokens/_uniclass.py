"""quicktok's Unicode class tables, generated from the regex module's classes.

quicktok-v1 0.4.0 splits text with class tables read from its data directory
(``uniclass.bin`` for cl100k_base, ``uniclass_o200k.bin`` for o200k_base). Its own were
exported from regex 2026.5.9 (Unicode 17), so they disagree with tiktoken's regex (Unicode
16) on the code points assigned since. ``data/`` here holds the same tables built from
``_CLASSES``, the regex module's classes narrowed to tiktoken's Unicode 16
ones; ``_encodings`` loads quicktok with them. A test checks that this module regenerates
both quicktok's files (from the Unicode 17 classes) and ours, byte for byte.

The format (undocumented, read from quicktok's files): classes one after another, each a
little-endian uint32 count of ranges, then that many (first, last) uint32 pairs of code
points, inclusive and ascending. cl100k: L, N, whitespace (``\\s``). o200k: those, then the
classes of its case-aware letter grammar, ``[Lu Lt Lm Lo M]`` and ``[Ll Lm Lo M]``.

Regenerate with ``python -m agent_core.tokens._uniclass`` (needs the ``regex`` module of
the pin in pyproject.toml).
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Mapping
from itertools import chain
from pathlib import Path
from typing import Final

__all__ = ["TABLE_FILES", "tables"]

#: The table file quicktok reads for each encoding.
TABLE_FILES: Final = {"cl100k_base": "uniclass.bin", "o200k_base": "uniclass_o200k.bin"}
DATA: Final = Path(__file__).parent / "data"

# Letters, marks and numbers new in Unicode 17 (research note, section 4C). Ranges may
# include a few other code points. Qwen's counter sends texts holding any to tiktoken
# (_open_models, via _encodings); _CLASSES removes them.
_UNICODE_17_RANGES: Final = (
    "\u088f\u0c5c\u0cdc\u1acf-\u1add\u1ae0-\u1aeb\ua7ce\ua7cf\ua7d2\ua7d4\ua7f1"
    "\U00010940-\U00010959\U00010ec5-\U00010ec7\U00010efa\U00010efb\U00011b60-\U00011b67"
    "\U00011db0-\U00011ddb\U00011de0-\U00011de9\U00016ea0-\U00016eb8\U00016ebb-\U00016ed3"
    "\U00016ff2-\U00016ff6\U000187f8-\U000187ff\U00018d09-\U00018d1e\U00018d80-\U00018df2"
    "\U0001e6c0-\U0001e6f5\U0001e6fe\U0001e6ff\U0002b73a-\U0002b73f\U0002cea2-\U0002cead"
    "\U000323b0-\U00033479"
)
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
# without the code points assigned since Unicode 16, and U+0295 as Ll (Lo since Unicode
# 17). They equal the classes of regex 2024.11.6 (Unicode 16); a test pins them.
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


def _ranges(cls: str, chars: str) -> list[tuple[int, int]]:
    """The code-point ranges of a regex-module class, over ``chars`` (no surrogates)."""
    import regex

    found = []
    for match in regex.finditer(f"(?V1){cls}+", chars):
        first, last = ord(chars[match.start()]), ord(chars[match.end() - 1])
        if first < 0xD800 < last:  # a run over the surrogates, absent from ``chars``
            found += [(first, 0xD7FF), (0xE000, last)]
        else:
            found.append((first, last))
    return found


def tables(classes: Mapping[str, str]) -> dict[str, bytes]:
    """quicktok's table files for ``classes`` (regex-module classes, keyed as _CLASSES)."""
    chars = "".join(map(chr, [*range(0xD800), *range(0xE000, 0x110000)]))
    upper = f"[{classes['Lu']}{classes['Lt']}{classes['Lm']}{classes['Lo']}{classes['M']}]"
    lower = f"[{classes['Ll']}{classes['Lm']}{classes['Lo']}{classes['M']}]"
    packed = {}
    for cls in [classes["L"], classes["N"], r"\s", upper, lower]:
        ranges = _ranges(cls, chars)
        packed[cls] = struct.pack(
            f"<I{2 * len(ranges)}I", len(ranges), *chain.from_iterable(ranges)
        )
    basic = b"".join(packed[cls] for cls in [classes["L"], classes["N"], r"\s"])
    return {
        "cl100k_base": basic,
        "o200k_base": basic + packed[upper] + packed[lower],
    }


def main() -> None:
    """Write the tables of tiktoken's classes to ``data/``."""
    for name, data in tables(_CLASSES).items():
        (DATA / TABLE_FILES[name]).write_bytes(data)
        print(f"{DATA / TABLE_FILES[name]}: {len(data)} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
