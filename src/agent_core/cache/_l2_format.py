"""How a thread is laid out in its L2 value, and the strict parser of untrusted values.

``[version: 20 zero-padded digits][flag: c | x][chunk][chunk]...``: the header says
which version the value holds (``c``) or that only the version is known (``x``, a
fence). A fill writes chunks of at most about 256 KB and an append adds chunks, so
an append is a Redis ``APPEND`` and never rewrites what is there. A chunk is a
header (kind, length) and the data. A *message* chunk is
``[n: u32][n lengths: u32][the n payloads, back to back]``, zstd-compressed for
conversations of ``compress_min_bytes`` and more: the lengths let a read cut the
payloads out of the value it received, with no scan for separators and no copy of
the chunk. This is format 3: its chunk kinds start at 0x20, so a value of an older
format (1: kinds 0-3 with a CRC-32 each; 2: kinds 0x10-0x13, newline-joined
payloads) is refused as corrupt, and the load's fill replaces it.
A *count* chunk holds the token counts of one key for the last messages before it
(``[key length][key][int32 counts]``): an append adds one per key after its messages,
and counting a conversation later adds one for all of them.

With a signing key every write's group of chunks ends in a *seal* chunk:
``[base version u64][new version u64][HMAC-SHA256]`` over the Redis key's name, both
versions and the group's chunk bytes (a fill's base is `FROM_EMPTY`, an annotation's
base is its version). A value is authentic when its groups chain from empty to the
header's version, each sealed.

Anyone who can write to Redis can write any bytes, so a value is untrusted input:
`decode_value` checks every byte (header, version range, chunk kinds, lengths,
seals, count chunks, each payload is exactly one JSON object) and
inflates at most ``max_bytes``, before anything is served; anything else is
`CorruptEntry`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import struct
import sys
import threading
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import accumulate, filterfalse, pairwise
from operator import itemgetter
from typing import Final, TypeVar

import msgspec
import zstandard

from .._token_counts import UNKNOWN, Counts, check_token_key, column_bytes, column_from_bytes
from ..errors import InvalidArgument

HEADER_SIZE: Final = 21
#: Versions are signed 64-bit integers in both stores.
MAX_VERSION: Final = 2**63 - 1
#: The base of a fill's seal: the group starts from an empty value.
FROM_EMPTY: Final = 2**64 - 1
_MAX_DIGITS: Final = b"%020d" % MAX_VERSION
# A chunk's header: kind, length. No checksum: anyone who can write a value can
# compute one, and the strict parse (or the seals) already rejects what it would.
_CHUNK: Final = struct.Struct("<BI")
# A message chunk's payload count, and then each payload's length.
_COUNT: Final = struct.Struct("<I")
_LITTLE_ENDIAN: Final = sys.byteorder == "little"
_SEAL: Final = struct.Struct("<QQ")
_MAC_SIZE: Final = hashlib.sha256().digest_size
_SEAL_SIZE: Final = _SEAL.size + _MAC_SIZE
# Format 3's kinds; format 1 used 0-3, format 2 0x10-0x13.
_PLAIN: Final = 0x20
_ZSTD: Final = 0x21
_COUNTS: Final = 0x22
_SEALED: Final = 0x23
_KINDS: Final = (_PLAIN, _ZSTD, _COUNTS, _SEALED)
# zstd's fastest positive level: large conversations are compressed on every fill,
# and on 2 cores the compressing thread competes with the event loop for a CPU.
_COMPRESS_LEVEL: Final = 1
# Seals of less data than this are made and checked on the loop: below it a thread
# hop costs more than it saves (1.3-1.9x slower reads of signed 84-840 KB values,
# docs/BENCHMARKS.md, "L2 hot path"), and hashing 1 MiB holds the loop well under a
# millisecond. Plain unsigned values never leave it.
_INLINE_BYTES: Final = 1 << 20
#: Payloads are joined into chunks of about this size, each its own unit of work.
CHUNK_BYTES: Final = 256 << 10
# JSON is checked on the loop a chunk at a time, with a yield once this much is checked.
_CHECK_SLICE_BYTES: Final = 1 << 20


class CorruptEntry(Exception):
    """An L2 value that does not parse, or is not authentic; it is treated as a miss."""


def header(version: int) -> bytes:
    """The header of a value holding every message up to ``version``."""
    return b"%020dc" % version


def parse_header(value: bytes) -> tuple[int, bool]:
    """``(version, complete)``; raises `CorruptEntry`."""
    digits, flag = value[:20], value[20:HEADER_SIZE]
    if len(digits) != 20 or not digits.isdigit() or digits > _MAX_DIGITS:
        raise CorruptEntry("bad L2 header")
    if flag not in (b"c", b"x"):
        raise CorruptEntry("bad L2 header flag")
    return int(digits), flag == b"c"


class Signer:
    """Seals groups of chunks with HMAC-SHA256 and checks seals."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        self._key = key

    def seal(self, key_name: bytes, base: int, new: int, group: bytes | memoryview) -> bytes:
        """The seal chunk of ``group`` taking the value from ``base`` to ``new``."""
        versions = _SEAL.pack(base, new)
        mac = hmac.new(self._key, key_name + versions, hashlib.sha256)
        mac.update(group)
        data = versions + mac.digest()
        return _CHUNK.pack(_SEALED, len(data)) + data

    def check(
        self, key_name: bytes, base: int, new: int, group: memoryview, data: memoryview
    ) -> None:
        expected = self.seal(key_name, base, new, group)[_CHUNK.size :]
        if not hmac.compare_digest(expected, data):
            raise CorruptEntry("bad seal")


async def seal(signer: Signer | None, key_name: bytes, base: int, new: int, group: bytes) -> bytes:
    """``group`` followed by its seal (as is without a signer); large groups hash off the loop."""
    if signer is None:
        return group
    if len(group) > _INLINE_BYTES:
        return group + await _off_loop(signer.seal, key_name, base, new, group)
    return group + signer.seal(key_name, base, new, group)


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
    lengths = array("I", map(len, payloads))
    if not _LITTLE_ENDIAN:
        lengths.byteswap()
    return _COUNT.pack(len(payloads)) + lengths.tobytes() + b"".join(payloads)


def encode_counts(counts: Counts) -> bytes:
    """Count chunks for the messages just before them, one per key."""
    chunks = []
    for key, column in counts.items():
        name = key.encode()
        data = bytes([len(name)]) + name + column_bytes(column)
        chunks.append(_CHUNK.pack(_COUNTS, len(data)) + data)
    return b"".join(chunks)


def _encode_all(groups: list[bytes], kind: int) -> bytes:
    if kind == _ZSTD:
        compressor = zstandard.ZstdCompressor(level=_COMPRESS_LEVEL)
        groups = [compressor.compress(group) for group in groups]
    return b"".join(_CHUNK.pack(kind, len(data)) + data for data in groups)


async def decode_value(
    value: bytes, *, max_bytes: int, signer: Signer | None, key_name: bytes
) -> tuple[int, tuple[bytes, ...] | None, dict[str, array[int]]]:
    """The version, message payloads and token counts of a value (a fence: no
    payloads); raises `CorruptEntry` unless every byte checks out.

    Seals and inflation of large values run in a thread; each message chunk's
    payloads are cut out by its lengths and, unless seals proved them, checked as
    JSON, yielding to the loop between megabytes.
    """
    version, complete = parse_header(value)
    if not complete:
        return version, None, {}
    if len(value) > max_bytes + HEADER_SIZE:
        raise CorruptEntry("value larger than l2_max_value_bytes")
    chunks, compressed = _walk(value)
    if compressed or signer is not None:  # else the value is all there is to check
        check = _Checker(value, chunks, version, max_bytes, signer, key_name)
        # Inflation runs in a thread whatever the size: compressed values are large ones.
        if compressed or len(value) > _INLINE_BYTES:
            chunks = await _off_loop(check.run)
        else:
            chunks = check.run()
    payloads: list[bytes] = []
    counts: dict[str, array[int]] = {}
    checked = 0
    for kind, data, start, end in chunks:
        if kind == _COUNTS:
            _place_counts(counts, data[start:end], len(payloads))
            continue
        if kind == _SEALED:  # only an unsigned reader sees them: it can't check them
            continue
        cut = _cut(data, start, end)
        if signer is None:  # a sealed value was written by a holder of the key
            _check_payloads(cut)
            checked += end - start
            if checked >= _CHECK_SLICE_BYTES:
                checked = 0
                await asyncio.sleep(0)
        payloads += cut
    size = len(payloads)
    for column in counts.values():
        if len(column) < size:
            column.extend(array("i", [UNKNOWN]) * (size - len(column)))
    return version, tuple(payloads), counts


def _cut(data: bytes, start: int, end: int) -> list[bytes]:
    """The payloads of the message chunk ``data[start:end]``, cut by its lengths."""
    if end - start < _COUNT.size:
        raise CorruptEntry("a message chunk without its count")
    (count,) = _COUNT.unpack_from(data, start)
    first = start + _COUNT.size + 4 * count
    if not count or first > end:
        raise CorruptEntry("a message chunk's count does not fit it")
    lengths = array("I", data[start + _COUNT.size : first])
    if not _LITTLE_ENDIAN:
        lengths.byteswap()
    if sum(lengths) != end - first:
        raise CorruptEntry("a message chunk's lengths do not add up to it")
    return [data[start:end] for start, end in pairwise(accumulate(lengths, initial=first))]


def _check_payloads(payloads: list[bytes]) -> None:
    """Each payload exactly one JSON object in valid UTF-8: they may be spliced into
    responses. The grammar is RFC 8259's, checked by msgspec's skip-parse, which
    builds no objects: numbers beyond a double's range pass, as PostgreSQL's jsonb
    takes them. (The loops run in C: ``map`` over C functions.)"""
    try:
        firsts = bytes(map(_FIRST, payloads))
    except IndexError:  # an empty payload
        raise CorruptEntry("a payload is not a JSON object") from None
    if firsts != b"{" * len(payloads):
        raise CorruptEntry("a payload is not a JSON object")
    try:
        # The skip-parse rejects trailing data (each payload is one value) but not
        # invalid UTF-8 inside strings, which Python's strict codec checks.
        deque(map(_skip_parse, payloads), maxlen=0)
        deque(map(bytes.decode, filterfalse(bytes.isascii, payloads)), maxlen=0)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        # msgspec refuses nesting beyond its depth limit with a RecursionError.
        raise CorruptEntry("a payload is not valid JSON") from None


_FIRST: Final = itemgetter(0)
_skip_parse: Final = msgspec.json.Decoder(msgspec.Raw).decode


def _place_counts(counts: dict[str, array[int]], data: bytes, size: int) -> None:
    """Put one count chunk's counts on the last messages decoded so far."""
    name_length = data[0] if data else 0
    body = data[1 + name_length :]
    if not name_length or len(data) < 1 + name_length or len(body) % 4:
        raise CorruptEntry("bad count chunk")
    if len(body) // 4 > size:
        raise CorruptEntry("a count chunk counts more messages than precede it")
    key = _count_key(data[1 : 1 + name_length])
    tail = column_from_bytes(body)
    if tail and min(tail) < UNKNOWN:
        raise CorruptEntry("a negative token count")
    column = counts.get(key)
    if column is None and len(tail) == size:  # a fill's chunk: counts of every message
        counts[key] = tail
        return
    if column is None:
        column = counts[key] = array("i")
    if len(column) < size:
        column.extend(array("i", [UNKNOWN]) * (size - len(column)))
    column[size - len(tail) : size] = tail


# Count keys already found valid: a handful in practice; bounded, as values are untrusted.
_KNOWN_KEYS: dict[bytes, str] = {}
_MAX_KNOWN_KEYS: Final = 64


def _count_key(name: bytes) -> str:
    key = _KNOWN_KEYS.get(name)
    if key is None:
        try:
            key = check_token_key(name.decode("ascii"))
        except (UnicodeDecodeError, InvalidArgument):
            raise CorruptEntry("bad count key") from None
        if len(_KNOWN_KEYS) < _MAX_KNOWN_KEYS:
            _KNOWN_KEYS[name] = key
    return key


class _Checker:
    """Checks a value's chunks and seals and inflates them, within ``max_bytes``.

    Needed for a value with frames to inflate or seals to check; a plain unsigned
    value is all in the chunks `_walk` found, within ``max_bytes`` by its length.
    """

    def __init__(
        self,
        value: bytes,
        chunks: list[_Chunk],
        version: int,
        max_bytes: int,
        signer: Signer | None,
        key_name: bytes,
    ) -> None:
        self._value = value
        self._chunks = chunks
        self._version = version
        self._budget = max_bytes
        self._signer = signer
        self._key_name = key_name

    def run(self) -> list[_Chunk]:
        """The message and count chunks, messages inflated: the plain ones stay
        where they are in the value."""
        value = self._value
        view = memoryview(value)
        chunks: list[_Chunk] = []
        running: int | None = None  # the version the sealed groups reached so far
        group_start = HEADER_SIZE
        for kind, _, start, end in self._chunks:
            if kind == _SEALED:
                if self._signer is not None:
                    running = self._check_seal(
                        view[group_start : start - _CHUNK.size], view[start:end], running
                    )
                group_start = end
            elif kind == _ZSTD:
                inflated = self._inflate(view[start:end])
                chunks.append((_PLAIN, inflated, 0, len(inflated)))
            else:
                if kind == _PLAIN:
                    self._spend(end - start)
                chunks.append((kind, value, start, end))
        if self._signer is not None:
            if group_start != len(value):
                raise CorruptEntry("chunks after the last seal")
            if running != self._version:
                raise CorruptEntry("the seals do not end at the header's version")
        return chunks

    def _check_seal(self, group: memoryview, data: memoryview, running: int | None) -> int:
        assert self._signer is not None
        base, new = _SEAL.unpack_from(data)
        if running is None and base != FROM_EMPTY:
            raise CorruptEntry("the first seal does not start from empty")
        if running is not None and base != running:
            raise CorruptEntry("a seal does not continue the version before it")
        if new > MAX_VERSION or (base != FROM_EMPTY and new < base):
            raise CorruptEntry("a seal's version is out of range")
        self._signer.check(self._key_name, base, new, group, data)
        return int(new)

    def _spend(self, size: int) -> None:
        self._budget -= size
        if self._budget < 0:
            raise CorruptEntry("the value inflates beyond l2_max_value_bytes")

    def _inflate(self, data: memoryview) -> bytes:
        """One zstd frame with its size declared, inflating to at most the budget left."""
        try:
            declared = zstandard.frame_content_size(data)
        except zstandard.ZstdError:
            raise CorruptEntry("bad zstd frame header") from None
        if declared <= 0:
            raise CorruptEntry("a zstd frame without its content size")
        self._spend(declared)
        try:
            reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=False)
            out = reader.read(declared + 1)
            if len(out) != declared or reader.read(1):
                raise CorruptEntry("a zstd frame's size is not its content size")
        except zstandard.ZstdError as exc:
            raise CorruptEntry(f"bad zstd chunk: {exc}") from None
        return out


#: ``(kind, buffer, start, end)``: a chunk's data is ``buffer[start:end]``.
_Chunk = tuple[int, bytes, int, int]


def _walk(value: bytes) -> tuple[list[_Chunk], bool]:
    """Each chunk of the value, and whether one is compressed; raises `CorruptEntry`
    unless the chunks are of known kinds, tile the value and seals have their size."""
    chunks = []
    compressed = False
    offset = HEADER_SIZE
    while offset < len(value):
        if offset + _CHUNK.size > len(value):
            raise CorruptEntry("truncated chunk header")
        kind, length = _CHUNK.unpack_from(value, offset)
        start = offset + _CHUNK.size
        offset = start + length
        if kind not in _KINDS or offset > len(value):
            raise CorruptEntry("bad chunk header")
        if kind == _SEALED and length != _SEAL_SIZE:
            raise CorruptEntry("bad seal length")
        chunks.append((kind, value, start, offset))
        compressed |= kind == _ZSTD
    return chunks, compressed


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
