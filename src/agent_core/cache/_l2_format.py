"""How a thread is laid out in its L2 value.

``[version: 20 zero-padded digits][flag: c | x][chunk][chunk]...``: the header says
which version the value holds (``c``) or that only the version is known (``x``, a
fence). Each fill or append adds one chunk, so an append is a Redis ``APPEND`` and
never rewrites what is there. A chunk is a header (kind, length, CRC-32 of the data)
and the data: the messages' JSON joined by newlines, zstd-compressed when large.
orjson never writes a raw newline, so the newline is a safe separator; a payload
that has one (pretty JSON written into the database by another program) is
compacted first.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import Sequence
from typing import Final

import orjson
import zstandard

HEADER_SIZE: Final = 21
_CHUNK: Final = struct.Struct("<BII")
_PLAIN: Final = 0
_ZSTD: Final = 1
_COMPRESS_LEVEL: Final = 3
# Smaller compressed chunks are inflated on the loop: a thread hop costs more.
_INLINE_DECOMPRESS_BYTES: Final = 64 << 10


class CorruptEntry(Exception):
    """An L2 value that does not parse; it is treated as a miss."""


def header(version: int) -> bytes:
    """The header of a value holding every message up to ``version``."""
    return b"%020dc" % version


def parse_header(value: bytes) -> tuple[int, bool]:
    """``(version, complete)``; raises `CorruptEntry`."""
    digits, flag = value[:20], value[20:HEADER_SIZE]
    if len(digits) != 20 or not digits.isdigit() or flag not in (b"c", b"x"):
        raise CorruptEntry("bad L2 header")
    return int(digits), flag == b"c"


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
    return _CHUNK.pack(kind, len(joined), zlib.crc32(joined)) + joined


async def decode_chunks(value: bytes) -> list[bytes]:
    """The message payloads of a complete value, checked against each chunk's CRC."""
    payloads: list[bytes] = []
    view = memoryview(value)
    offset = HEADER_SIZE
    while offset < len(value):
        if offset + _CHUNK.size > len(value):
            raise CorruptEntry("truncated chunk header")
        kind, length, crc = _CHUNK.unpack_from(value, offset)
        start = offset + _CHUNK.size
        offset = start + length
        if kind not in (_PLAIN, _ZSTD) or offset > len(value):
            raise CorruptEntry("bad chunk header")
        data = view[start:offset]
        if kind == _ZSTD:
            if length > _INLINE_DECOMPRESS_BYTES:
                joined = await asyncio.to_thread(_inflate, data, crc)
            else:
                joined = _inflate(data, crc)
        elif zlib.crc32(data) != crc:
            raise CorruptEntry("chunk checksum mismatch")
        else:
            joined = bytes(data)
        if joined:
            payloads.extend(joined.split(b"\n"))
    return payloads


def _inflate(data: memoryview, crc: int) -> bytes:
    if zlib.crc32(data) != crc:
        raise CorruptEntry("chunk checksum mismatch")
    try:
        return zstandard.ZstdDecompressor().decompress(data)
    except zstandard.ZstdError as exc:
        raise CorruptEntry(f"bad zstd chunk: {exc}") from None
