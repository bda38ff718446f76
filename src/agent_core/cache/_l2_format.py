"""How a thread's messages are laid out in its L2 value.

The value is a run of chunks, one per fill or append, so an append is a Redis
``APPEND`` of one more chunk and never rewrites what is there. A chunk is a header
(kind, length, CRC-32 of the data) and the data: the messages' JSON joined by
newlines, zstd-compressed when large. orjson never writes a raw newline, so the
newline is a safe separator; a payload that has one (pretty JSON written into the
database by another program) is compacted first.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from typing import Final

import orjson
import zstandard

_HEADER: Final = struct.Struct("<BII")
_PLAIN: Final = 0
_ZSTD: Final = 1
_COMPRESS_LEVEL: Final = 3


class CorruptEntry(Exception):
    """An L2 value that does not parse; it is treated as a miss."""


def join_payloads(payloads: Sequence[bytes]) -> bytes:
    joined = b"\n".join(payloads)
    if joined.count(b"\n") != len(payloads) - 1:
        joined = b"\n".join(
            p if b"\n" not in p else orjson.dumps(orjson.loads(p)) for p in payloads
        )
    return joined


def encode_chunk(joined: bytes, *, compress: bool) -> bytes:
    """One chunk holding ``joined`` (from `join_payloads`). Compressing releases the GIL."""
    kind = _PLAIN
    if compress:
        joined = zstandard.ZstdCompressor(level=_COMPRESS_LEVEL).compress(joined)
        kind = _ZSTD
    return _HEADER.pack(kind, len(joined), zlib.crc32(joined)) + joined


def split_chunks(value: bytes) -> list[tuple[bool, bytes]]:
    """``(compressed, data)`` per chunk, checked against its header."""
    chunks = []
    view = memoryview(value)
    offset = 0
    while offset < len(value):
        if offset + _HEADER.size > len(value):
            raise CorruptEntry("truncated chunk header")
        kind, length, crc = _HEADER.unpack_from(value, offset)
        start = offset + _HEADER.size
        offset = start + length
        if kind not in (_PLAIN, _ZSTD) or offset > len(value):
            raise CorruptEntry("bad chunk header")
        data = bytes(view[start:offset])
        if zlib.crc32(data) != crc:
            raise CorruptEntry("chunk checksum mismatch")
        chunks.append((kind == _ZSTD, data))
    return chunks


def decompress(data: bytes) -> bytes:
    try:
        return zstandard.ZstdDecompressor().decompress(data)
    except zstandard.ZstdError as exc:
        raise CorruptEntry(f"bad zstd chunk: {exc}") from None


def split_payloads(joined: bytes) -> list[bytes]:
    return joined.split(b"\n") if joined else []
