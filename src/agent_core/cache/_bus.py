"""The invalidation bus: every write of a namespace is announced on one Redis channel.

The channel is ``ac:bus:<store fingerprint>/<namespace>``. Events are
``(kind, thread_id, version, origin)`` encoded with msgpack: ``"w"`` for
a write (append, delete, invalidation), ``"f"`` for a fill (wakes instances waiting
on another's load lease) and ``"r"`` for a reset (clear all of L1). Write events are
published by the same Lua script that updates L2, in one round trip (on a Redis Cluster the
channel is sharded, SSUBSCRIBE/SPUBLISH, and the event follows the script: see
`RedisTier._announcing`). A subscriber pings its own
connection, so a Redis that hangs (SIGSTOP) is noticed as surely as one that
closes the socket; each (re)subscription tells the owner, who must then assume it
missed events.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, ClassVar, Final

import msgspec
from redis.asyncio.cluster import RedisCluster

from .._redis import REDIS_FAILURES, RedisClient, refresh_slots
from .._tasks import MAX_BACKOFF, cancel_and_wait, cancelling, raise_if_cancelling

WRITE: Final = "w"
FILL: Final = "f"
RESET: Final = "r"
#: Announced when the version is unknown (an invalidation): older than any real version.
EVERYTHING: Final = 1 << 62
_PING_EVERY: Final = 0.2
_DEAD_AFTER: Final = 0.75

Event = tuple[str, str, int, str]
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(tuple[str, str, int, str]).decode


def bus_channel(fingerprint: str, namespace: str) -> str:
    """The channel of a namespace of the store with ``fingerprint`` (``/`` is in neither)."""
    return f"ac:bus:{fingerprint}/{namespace}"


def encode_event(kind: str, thread_id: str, version: int, origin: str) -> bytes:
    return _encode((kind, thread_id, version, origin))


class InvalidationBus:
    """Receives one namespace's events (the Lua scripts of the Redis tier publish them)."""

    def __init__(
        self,
        client: RedisClient,
        namespace: str,
        *,
        origin: str,
        timeout: float,
        on_event: Callable[[str, str, int, str], None],
        on_subscribed: Callable[[], None],
        on_lost: Callable[[BaseException], None],
    ) -> None:
        self._client = client
        self._namespace = namespace
        self.channel = ""
        self.origin = origin
        self._timeout = timeout
        self._on_event = on_event
        self._on_subscribed = on_subscribed
        self._on_lost = on_lost
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        #: Events that did not decode (ignored).
        self.corrupt = 0
        #: Successful (re)subscriptions; each one after the first cleared L1.
        self.subscriptions = 0

    def bind(self, fingerprint: str) -> None:
        """Listen on the channel of the store with this fingerprint (before `start`)."""
        self.channel = bus_channel(fingerprint, self._namespace)

    @property
    def subscribed(self) -> bool:
        return self._ready.is_set()

    async def start(self, wait: float) -> None:
        """Start listening; wait up to ``wait`` seconds for the first subscription."""
        assert self.channel, "bind() the bus to the store's fingerprint first"
        self._task = asyncio.get_running_loop().create_task(self._run())
        try:
            async with asyncio.timeout(wait):
                await self._ready.wait()
        except TimeoutError:
            raise_if_cancelling()

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        self._ready.clear()

    async def _run(self) -> None:
        delay = 0.05
        while True:
            pubsub = self._client.pubsub()
            reason: BaseException = ConnectionError("subscription ended")
            try:
                await self._listen(pubsub)
            except REDIS_FAILURES as exc:
                raise_if_cancelling()
                reason = exc
            finally:
                if self._ready.is_set():
                    self._ready.clear()
                    if not cancelling():
                        self._on_lost(reason)
                    delay = 0.05
                with contextlib.suppress(*REDIS_FAILURES):
                    async with asyncio.timeout(self._timeout):
                        await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis 8
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    async def _listen(self, pubsub: Any) -> None:
        channel = _Classic(pubsub)
        if isinstance(self._client, RedisCluster):
            channel = _Sharded(pubsub)
            if self.subscriptions:
                # A resubscription may follow a failover: find the slot's new primary.
                await refresh_slots(self._client)
        async with asyncio.timeout(1.0):
            await channel.subscribe(self.channel)
            while True:
                message = await channel.get_message(wait=1.0)
                if message is not None and message["type"] == channel.subscribed:
                    break
        self.subscriptions += 1
        self._ready.set()
        self._on_subscribed()
        last_heard = next_ping = time.monotonic()
        while True:
            message = await channel.get_message(wait=_PING_EVERY)
            now = time.monotonic()
            if message is not None:
                last_heard = now
                if message["type"] == channel.message:
                    self._dispatch(message["data"])
                elif message["type"] == channel.unsubscribed:
                    # Only the server unsubscribes us: a cluster moved the channel's slot.
                    raise ConnectionError("the channel's slot moved to another node")
            if now >= next_ping:
                async with asyncio.timeout(self._timeout):
                    await channel.ping()
                next_ping = now + _PING_EVERY
            if now - last_heard > _DEAD_AFTER:
                raise TimeoutError("the Redis subscription stopped answering pings")

    def _dispatch(self, data: bytes) -> None:
        try:
            kind, thread_id, version, origin = _decode(data)
        except msgspec.DecodeError:
            self.corrupt += 1
            return
        self._on_event(kind, thread_id, version, origin)


class _Classic:
    """A PUBLISH channel of one Redis server."""

    subscribed: ClassVar[str] = "subscribe"
    unsubscribed: ClassVar[str] = "unsubscribe"
    message: ClassVar[str] = "message"

    def __init__(self, pubsub: Any) -> None:
        self._pubsub = pubsub

    async def subscribe(self, channel: str) -> None:
        await self._pubsub.subscribe(channel)

    async def get_message(self, wait: float) -> dict[str, Any] | None:
        message: dict[str, Any] | None = await self._pubsub.get_message(timeout=wait)
        return message

    async def ping(self) -> None:
        await self._pubsub.ping()


class _Sharded(_Classic):
    """A sharded (SPUBLISH) channel of a Redis Cluster: it lives on its slot's primary
    only, so events cost no cluster-bus broadcast. A failover of that primary, or the
    slot moving to another node (the server then sends SUNSUBSCRIBE), ends the
    subscription; the bus then resubscribes wherever the slot is now served."""

    subscribed: ClassVar[str] = "ssubscribe"
    unsubscribed: ClassVar[str] = "sunsubscribe"
    message: ClassVar[str] = "smessage"

    async def subscribe(self, channel: str) -> None:
        await self._pubsub.ssubscribe(channel)

    async def get_message(self, wait: float) -> dict[str, Any] | None:
        message: dict[str, Any] | None = await self._pubsub.get_sharded_message(timeout=wait)
        return message

    async def ping(self) -> None:
        # The node's own subscribed connection answers: a hung node stops the pongs.
        for node_pubsub in list(self._pubsub.node_pubsub_mapping.values()):
            await node_pubsub.ping()
