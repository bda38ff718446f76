"""A loopback TCP proxy that ``chaos.py`` can cut, to partition some instances from Redis.

Not a benchmark itself. Two kinds of partition, each until ``restore``:

- ``cut``: every proxied connection is aborted (RST), and new ones are accepted and
  aborted at once;
- ``stall``: connections stay open but no byte moves either way, and new ones are
  accepted but not connected onward (like a network that silently drops packets
  while TCP keeps retrying); on ``restore`` what was held back flows on.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

_CHUNK: Final = 1 << 16


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:target_port``."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._cut = False
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.port = 0
        self.refused = 0
        self.aborted = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        self._cut = True
        for writer in list(self._writers):
            writer.transport.abort()
            self.aborted += 1
        self._writers.clear()

    def stall(self) -> None:
        self._flowing.clear()

    def restore(self) -> None:
        self._cut = False
        self._flowing.set()

    async def close(self) -> None:
        self.cut()
        self._flowing.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            self.refused += 1
            writer.transport.abort()
            return
        await self._flowing.wait()
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self._target_port
            )
        except OSError:
            writer.transport.abort()
            return
        if self._cut:  # cut while connecting
            upstream_writer.transport.abort()
            writer.transport.abort()
            return
        pair = (writer, upstream_writer)
        self._writers.update(pair)
        try:
            await asyncio.gather(
                _pipe(reader, upstream_writer, self._flowing),
                _pipe(upstream_reader, writer, self._flowing),
            )
        finally:
            for side in pair:
                self._writers.discard(side)
                side.transport.abort()


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flowing: asyncio.Event
) -> None:
    """Copy (while ``flowing``) until EOF or an error on either side, then abort the other side."""
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(_CHUNK):
            await flowing.wait()
            writer.write(data)
            await writer.drain()
    writer.transport.abort()
