"""How a thread is laid out in its L2 value.

``[version: 20 zero-padded digits][flag: c | x][chunk][chunk]...``: the header says
which version the value holds (``c``) or that only the version is known (``x``, a
fence). A fill writes chunks of at most about 256 KB and an append adds chunks, so
an append is a Redis ``APPEND`` and never rewrites what is there. A chunk is a
header (kind, length, CRC-32 of the data) and the data: the messages' JSON joined by
newlines, zstd-compressed for conversations of ``compress_min_bytes`` and more.
A *count* chunk holds the token counts of one key for the last messages before it
(``[key length][key][int32 counts]``): an append adds one per key after its messages,
and counting a conversation later adds one for all of them. orjson never writes
a raw newline, so the newline is a safe separator; a payload
that has one (pretty JSON written into the database by another program) is
compacted first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import sys
import threading
import zlib
from array import array
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Final, TypeVar

import orjson
import zstandard

from .._token_counts import UNKNOWN, Counts

HEADER_SIZE: Final = 21
_CHUNK: Final = struct.Struct("<BII")
_PLAIN: Final = 0
_ZSTD: Final = 1
_COUNTS: Final = 2
_KINDS: Final = (_PLAIN, _ZSTD, _COUNTS)
# zstd's fastest positive level: large conversations are compressed on every fill,
# and on 2 cores the compressing thread competes with the event loop for a CPU.
_COMPRESS_LEVEL: Final = 1
# Less compressed data than this is inflated on the loop: a thread hop costs more.
_INLINE_DECOMPRESS_BYTES: Final = 64 << 10
#: Payloads are joined into chunks of about this size, each its own unit of work.
CHUNK_BYTES: Final = 256 << 10


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


async def encode_chunks(payloads: Sequence[bytes], *, compress_min_bytes: int) -> bytes:
    """Chunks holding ``payloads``, at most about `CHUNK_BYTES` each.

    Joining yields to the loop between chunks, and compression (which releases the
    GIL) runs in a thread, so a 5 MB conversation never holds the loop for long.
    """
    groups = []
    start, size = 0, 0
    for index, payload in enumerate(payloads):
        size += len(payload) + 1
        if size >= CHUNK_BYTES:
            groups.append(_join(payloads[start : index + 1]))
            start, size = index + 1, 0
            await asyncio.sleep(0)
    if start < len(payloads):
        groups.append(_join(payloads[start:]))
    if sum(map(len, groups)) >= compress_min_bytes:
        return await _off_loop(_encode_all, groups, _ZSTD)
    return _encode_all(groups, _PLAIN)


def _join(payloads: Sequence[bytes]) -> bytes:
    joined = b"\n".join(payloads)
    if joined.count(b"\n") != len(payloads) - 1:
        joined = b"\n".join(
            p if b"\n" not in p else orjson.dumps(orjson.loads(p)) for p in payloads
        )
    return joined


def encode_counts(counts: Counts) -> bytes:
    """Count chunks for the messages just before them, one per key."""
    chunks = []
    for key, column in counts.items():
        name = key.encode()
        data = bytes([len(name)]) + name + _little_endian(column).tobytes()
        chunks.append(_CHUNK.pack(_COUNTS, len(data), zlib.crc32(data)) + data)
    return b"".join(chunks)


def _little_endian(column: array[int]) -> array[int]:
    if sys.byteorder == "little":
        return column
    swapped = array("i", column)
    swapped.byteswap()
    return swapped


def _encode_all(groups: list[bytes], kind: int) -> bytes:
    if kind == _ZSTD:
        compressor = zstandard.ZstdCompressor(level=_COMPRESS_LEVEL)
        groups = [compressor.compress(group) for group in groups]
    return b"".join(_CHUNK.pack(kind, len(data), zlib.crc32(data)) + data for data in groups)


async def decode_chunks(value: bytes) -> tuple[tuple[bytes, ...], dict[str, array[int]]]:
    """The message payloads and token counts of a complete value, CRC-checked.

    Large compressed data is inflated in a thread; splitting yields to the loop
    between chunks.
    """
    chunks = _parse_chunks(value)
    compressed = sum(len(data) for kind, data, _ in chunks if kind == _ZSTD)
    if compressed > _INLINE_DECOMPRESS_BYTES:
        inflated = await _off_loop(_inflate_all, chunks)
    else:
        inflated = _inflate_all(chunks)
    payloads: list[bytes] = []
    counts: dict[str, array[int]] = {}
    for index, (kind, data) in enumerate(inflated):
        if kind == _COUNTS:
            _place_counts(counts, data, len(payloads))
        elif data:
            payloads.extend(data.split(b"\n"))
        if index % 4 == 3:
            await asyncio.sleep(0)
    size = len(payloads)
    for column in counts.values():
        if len(column) < size:
            column.extend(array("i", [UNKNOWN]) * (size - len(column)))
    return tuple(payloads), counts


def _place_counts(counts: dict[str, array[int]], data: bytes, size: int) -> None:
    """Put one count chunk's counts on the last messages decoded so far."""
    name_length = data[0] if data else 0
    body = data[1 + name_length :]
    if not data or len(body) % 4 or len(body) // 4 > size:
        raise CorruptEntry("bad count chunk")
    key = data[1 : 1 + name_length].decode("ascii", "replace")
    tail = array("i")
    tail.frombytes(body)
    if sys.byteorder != "little":
        tail.byteswap()
    column = counts.setdefault(key, array("i"))
    if len(column) < size:
        column.extend(array("i", [UNKNOWN]) * (size - len(column)))
    column[size - len(tail) : size] = tail


_T = TypeVar("_T")
_pool: ThreadPoolExecutor | None = None


async def _off_loop(function: Callable[..., _T], *args: object) -> _T:
    """Run CPU-heavy work that releases the GIL on a low-priority thread."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(2, "agent-core-zstd", initializer=_lower_priority)
    return await asyncio.get_running_loop().run_in_executor(_pool, function, *args)


def _lower_priority() -> None:
    # A nicer thread yields the CPU to the event loop's thread when both want one.
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def _parse_chunks(value: bytes) -> list[tuple[int, memoryview, int]]:
    chunks = []
    view = memoryview(value)
    offset = HEADER_SIZE
    while offset < len(value):
        if offset + _CHUNK.size > len(value):
            raise CorruptEntry("truncated chunk header")
        kind, length, crc = _CHUNK.unpack_from(value, offset)
        start = offset + _CHUNK.size
        offset = start + length
        if kind not in _KINDS or offset > len(value):
            raise CorruptEntry("bad chunk header")
        chunks.append((kind, view[start:offset], crc))
    return chunks


def _inflate_all(chunks: list[tuple[int, memoryview, int]]) -> list[tuple[int, bytes]]:
    """Check and (if compressed) inflate every chunk; releases the GIL in a thread."""
    inflated = []
    decompressor = None
    for kind, data, crc in chunks:
        if zlib.crc32(data) != crc:
            raise CorruptEntry("chunk checksum mismatch")
        if kind != _ZSTD:
            inflated.append((kind, bytes(data)))
            continue
        if decompressor is None:
            decompressor = zstandard.ZstdDecompressor()
        try:
            inflated.append((_PLAIN, decompressor.decompress(data)))
        except zstandard.ZstdError as exc:
            raise CorruptEntry(f"bad zstd chunk: {exc}") from None
    return inflated
