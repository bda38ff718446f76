"""quicktok's Unicode class tables, generated from the regex module's classes.

quicktok-v1 0.4.0 splits text with class tables read from its data directory
(``uniclass.bin`` for cl100k_base, ``uniclass_o200k.bin`` for o200k_base). Its own were
exported from regex 2026.5.9 (Unicode 17), so they disagree with tiktoken's regex (Unicode
16) on the code points assigned since. ``data/`` here holds the same tables built from
``_encodings._CLASSES``, the regex module's classes narrowed to tiktoken's Unicode 16
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
    from ._encodings import _CLASSES

    for name, data in tables(_CLASSES).items():
        (DATA / TABLE_FILES[name]).write_bytes(data)
        print(f"{DATA / TABLE_FILES[name]}: {len(data)} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
