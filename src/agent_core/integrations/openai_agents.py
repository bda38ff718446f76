"""openai-agents memory in agent-core: `AgentCoreSession`, the SDK's ``Session`` over a thread.

``Runner.run(agent, text, session=AgentCoreSession("user-1", cache))`` keeps the session's
items in the agent-core thread ``user-1``: the SQLite or PostgreSQL log behind the
two-tier cache. Needs ``agent-core[openai-agents]``.

Each method is one cache call: ``get_items`` a read (or a token window), ``add_items``
one append (the batch lands whole or not at all), ``pop_item`` one splice of the last
item (two concurrent pops never return the same item), ``clear_session`` a delete. So
sessions on any number of cache instances share a thread without losing a write.

Items round-trip exactly (``get_items`` returns dicts equal to those added, keys in the
same order). An item that agent-core's message check refuses (an ``item_reference``
without ``type``, a user message with an empty content list...) is stored inside an
envelope, ``{"type": "agent_core_item", "item": <the item>}``, and unwrapped on the way
out; so is an item whose own type is ``agent_core_item``. Other readers of the thread
(the HTTP API, windows) see the envelope.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from typing import Any, Final, Literal, cast

import orjson

from .._closing import AsyncClosing
from .._extras import needs_extra
from .._quote import quote
from .._validation import check_count, check_thread_id
from ..cache import DEFAULT_STORE_URL, ConversationCache
from ..errors import (
    ConfigurationError,
    InvalidArgument,
    InvalidMessage,
    MessageTooLarge,
)
from ..messages import Message

with needs_extra("AgentCoreSession"):
    from agents.items import TResponseInputItem
    from agents.memory import SessionSettings

__all__ = ["ENVELOPE_TYPE", "AgentCoreSession"]

#: The ``type`` of the envelope that holds an item agent-core's message check refuses.
ENVELOPE_TYPE: Final = "agent_core_item"
# Payloads without this name hold no envelope (the adapter writes them with orjson, which
# escapes no letter; a search of 200 KB costs ~45 µs, against ~180 µs for a ``\\u`` too).
_ENVELOPE_MARK: Final = ENVELOPE_TYPE.encode()

_State = Literal["borrowed", "unopened", "open", "closed"]


class AgentCoreSession(AsyncClosing):
    """An openai-agents ``Session`` whose items live in the agent-core thread ``session_id``.

    ``cache`` is an open `ConversationCache`, which the caller keeps and closes (see
    `from_urls` for a session that opens and owns its cache). ``session_settings``
    (`SessionSettings` or a dict) gives the default ``limit`` of `get_items`. With
    ``window_tokens``, `get_items` returns the newest items that fit that many prompt
    tokens of ``model`` (system messages kept, a function call never split from its
    output) instead of the whole history, before any ``limit``.
    """

    session_id: str
    session_settings: SessionSettings | None
    cache: ConversationCache
    window_tokens: int | None
    model: str | None

    def __init__(
        self,
        session_id: str,
        cache: ConversationCache,
        *,
        session_settings: SessionSettings | Mapping[str, Any] | None = None,
        window_tokens: int | None = None,
        model: str | None = None,
    ) -> None:
        if not isinstance(cache, ConversationCache):
            raise ConfigurationError(
                f"cache must be a ConversationCache, got {type(cache).__name__}; "
                "or use AgentCoreSession.from_urls(session_id, store=..., redis=...)"
            )
        self.session_id = check_thread_id(session_id)
        self.session_settings = _settings(session_settings)
        self.window_tokens, self.model = _window(window_tokens, model)
        self.cache = cache
        self._state: _State = "borrowed"
        self._opening: asyncio.Lock | None = None

    @classmethod
    def from_urls(
        cls,
        session_id: str,
        store: str = DEFAULT_STORE_URL,
        redis: str | None = None,
        *,
        namespace: str = "default",
        session_settings: SessionSettings | Mapping[str, Any] | None = None,
        window_tokens: int | None = None,
        model: str | None = None,
        **options: Any,
    ) -> AgentCoreSession:
        """A session that owns a cache of ``store`` (and ``redis`` as L2, if given).

        The cache opens on first use, or on ``async with``; `close` closes it. ``options``
        are `ConversationCache`'s (``consistency="strong"``, ``max_message_bytes``...);
        with ``model``, appends count its tokens unless ``token_models`` says otherwise.
        """
        check_thread_id(session_id)
        _settings(session_settings)
        _window(window_tokens, model)
        if model is not None:
            options.setdefault("token_models", (model,))
        cache = ConversationCache.from_urls(store, redis, namespace, **options)
        session = cls(
            session_id,
            cache,
            session_settings=session_settings,
            window_tokens=window_tokens,
            model=model,
        )
        session._state = "unopened"
        return session

    # -- the Session protocol ----------------------------------------------------------

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """The newest ``limit`` items (None: ``session_settings.limit``, then all), oldest
        first; with ``window_tokens``, of the token window."""
        return (await self.get_items_and_version(limit))[0]

    async def add_items(
        self, items: list[TResponseInputItem], *, expected_version: int | None = None
    ) -> None:
        """Append ``items`` in one write: all of them, after every item already there, or
        none. With ``expected_version`` (not something the SDK passes) it is
        compare-and-append: `VersionConflict`, and nothing written, if the thread has
        moved past that version."""
        batch: Any = items  # the cache's append refuses anything but a list, typed
        if isinstance(items, list | tuple):
            if not items:
                return
            max_bytes = self.cache.max_message_bytes
            batch = [_stored(item, max_bytes) for item in items]
        if self._state == "unopened":
            await self._open_owned()
        await self.cache.append(self.session_id, batch, expected_version=expected_version)

    async def pop_item(self, *, expected_version: int | None = None) -> TResponseInputItem | None:
        """Remove the newest item and return it; None if there is none. Atomic: concurrent
        pops, from any instance, each get a different item. ``expected_version`` as in
        `add_items`."""
        if self._state == "unopened":
            await self._open_owned()
        message = await self.cache.pop(self.session_id, expected_version=expected_version)
        if message is None:
            return None
        return cast("TResponseInputItem", _unwrap(orjson.loads(message.raw)))

    async def clear_session(self) -> None:
        """Delete every item (the thread's version still grows: see `ConversationCache.delete`)."""
        if self._state == "unopened":
            await self._open_owned()
        await self.cache.delete(self.session_id)

    # -- beyond the protocol ------------------------------------------------------------

    async def get_items_and_version(
        self, limit: int | None = None
    ) -> tuple[list[TResponseInputItem], int]:
        """`get_items`, and the thread version they were read at (for ``expected_version``)."""
        settings = self.session_settings
        resolved = limit if limit is not None or settings is None else settings.limit
        if resolved is not None:
            check_count("limit", resolved, minimum=0)
        if self._state == "unopened":
            await self._open_owned()
        payloads: tuple[bytes, ...]
        if self.window_tokens is None:
            conversation = await self.cache.get(self.session_id)
            payloads, version = conversation.payloads, conversation.version
        else:
            assert self.model is not None  # _window checked both
            window = await self.cache.window(
                self.session_id, max_tokens=self.window_tokens, model=self.model
            )
            payloads, version = tuple(m.raw for m in window.messages), window.version
        if resolved is not None:
            payloads = payloads[len(payloads) - resolved :] if resolved else ()
        return _decode(payloads), version

    async def close(self) -> None:
        """Close the cache if this session owns it (`from_urls`); otherwise nothing."""
        if self._state in ("unopened", "open"):
            async with self._lock():  # not while a first call is opening it
                if self._state in ("unopened", "open"):
                    self._state = "closed"
                    await self.cache.close()

    async def aclose(self) -> None:
        """`close`, under the name ``async with`` and `contextlib.aclosing` call."""
        await self.close()

    async def _enter(self) -> None:
        if self._state == "unopened":
            await self._open_owned()

    def __repr__(self) -> str:
        return (
            f"AgentCoreSession({self.session_id!r}, namespace={self.cache.namespace!r}, "
            f"window_tokens={self.window_tokens!r})"
        )

    # -- internals ----------------------------------------------------------------------

    def _lock(self) -> asyncio.Lock:
        if self._opening is None:
            self._opening = asyncio.Lock()
        return self._opening

    async def _open_owned(self) -> None:
        async with self._lock():
            if self._state == "unopened":
                await self.cache.open()
                self._state = "open"


def _settings(value: object) -> SessionSettings:
    if value is None:
        return SessionSettings()
    if not isinstance(value, SessionSettings | Mapping):
        raise InvalidArgument(
            f"session_settings must be a SessionSettings or a dict, got {type(value).__name__}"
        )
    if isinstance(value, Mapping):
        known = {field.name for field in dataclasses.fields(SessionSettings)}
        unknown = sorted(map(str, set(value) - known))
        if unknown:
            raise InvalidArgument(
                f"session_settings has no {', '.join(unknown)}: it takes {', '.join(sorted(known))}"
            )
    try:
        settings = value if isinstance(value, SessionSettings) else SessionSettings(**value)
    except (TypeError, ValueError) as exc:  # an unknown name; pydantic's ValidationError
        raise InvalidArgument(f"session_settings: {exc}") from None
    if settings.limit is not None:
        check_count("session_settings.limit", settings.limit, minimum=0)
    return settings


def _window(window_tokens: object, model: object) -> tuple[int | None, str | None]:
    if window_tokens is None:
        if model is not None:
            raise InvalidArgument(
                f"model={quote(model)} is only used with window_tokens: give both, or neither"
            )
        return None, None
    tokens = check_count("window_tokens", window_tokens, minimum=1)
    if not isinstance(model, str) or not model.strip():
        raise InvalidArgument(
            f"window_tokens needs the model the tokens are counted for, e.g. model='gpt-4o'; "
            f"got model={quote(model)}"
        )
    return tokens, model


def _stored(item: object, max_bytes: int) -> Any:
    """``item`` as a `Message`; its envelope if agent-core's message check refuses it; or
    as it is, for the cache's append to refuse with its typed error (not a dict, too large)."""
    if not isinstance(item, Mapping):
        return item
    if item.get("type") != ENVELOPE_TYPE:
        try:
            return Message.from_dict(item, max_bytes=max_bytes)
        except MessageTooLarge:
            return item
        except InvalidMessage:
            pass
    return {"type": ENVELOPE_TYPE, "item": item}


def _unwrap(item: Any) -> Any:
    if type(item) is dict and item.get("type") == ENVELOPE_TYPE and "item" in item:
        return item["item"]
    return item


def _decode(payloads: tuple[bytes, ...]) -> list[TResponseInputItem]:
    """Fresh dicts of ``payloads``, in one decode; envelopes unwrapped."""
    if not payloads:
        return []
    joined = b"[" + b",".join(payloads) + b"]"
    items: list[Any] = orjson.loads(joined)
    if _ENVELOPE_MARK in joined:
        items = [_unwrap(item) for item in items]
    return items
