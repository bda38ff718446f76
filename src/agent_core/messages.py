"""Immutable chat messages and conversation snapshots, held as encoded JSON bytes.

A message is encoded once, when it is appended, and from then on travels as those
bytes: into the store, through the cache tiers and into request bodies. Decoding
happens only when a caller asks for a ``dict``, and every ``to_dict()`` returns a
fresh copy, so nothing a caller does to it can change what the cache holds.

Besides the public API (``__all__``), this module offers agent_core's other layers a
small internal API, not validated and not for users: `trusted_message`,
`messages_from_raw`, `conversation_from_payloads`, `extend_conversation` and
`stored_counts` (see "Internal API" below), plus `encode_message` and `encode_batch`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final, final

import msgspec
import orjson

from ._message_shape import ROLES, check_shape
from ._token_counts import Counts
from .errors import InvalidBatch, InvalidMessage, MessageTooLarge

__all__ = [
    "DEFAULT_MAX_BATCH_MESSAGES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "KNOWN_ROLES",
    "Conversation",
    "Message",
]

DEFAULT_MAX_MESSAGE_BYTES: Final = 1 << 20
DEFAULT_MAX_BATCH_MESSAGES: Final = 1000
#: Chat Completions and Responses API roles.
KNOWN_ROLES: Final = frozenset(ROLES)

# Datetimes and dataclasses would come back as strings and dicts, so they are
# refused rather than silently changed.
_ENCODE_OPTIONS: Final = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


class _Head(msgspec.Struct):
    role: Any = None
    type: Any = None


_decode_head = msgspec.json.Decoder(_Head).decode


@final
class Message:
    """One chat item: a Chat Completions message or a Responses API item.

    A JSON object with a known ``role``, or with a string ``type`` and no role
    (Responses API items such as ``function_call``), in the shape its role or type
    needs (`agent_core._message_shape`), is accepted and round-trips exactly:
    ``Message.from_dict(d).to_dict() == d``. Extra fields are kept as they are.
    """

    __slots__ = ("_raw",)
    _raw: bytes

    def __init__(self, item: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_raw", encode_message(item, DEFAULT_MAX_MESSAGE_BYTES))

    @classmethod
    def from_dict(
        cls, item: Mapping[str, Any], *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> Message:
        """Validate and encode ``item``; raises `InvalidMessage` or `MessageTooLarge`."""
        return trusted_message(encode_message(item, max_bytes))

    @classmethod
    def from_json(cls, raw: bytes, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Message:
        """Validate encoded JSON bytes (one object) without re-encoding them."""
        if not isinstance(raw, bytes):
            raise InvalidMessage(f"expected the JSON of one message as bytes, got {type(raw)!r}")
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidMessage(f"message bytes are not valid JSON: {exc}") from None
        if not isinstance(item, dict):
            raise InvalidMessage(f"a message must be a JSON object, got {type(item).__name__}")
        check_shape(item)
        _check_size(len(raw), max_bytes)
        return trusted_message(exact_copy(raw))

    @property
    def raw(self) -> bytes:
        """The message's encoded JSON, exactly as stored."""
        return self._raw

    @property
    def role(self) -> str | None:
        """``role``, or None for a Responses API item that has only a ``type``."""
        role = _decode_head(self._raw).role
        return role if isinstance(role, str) else None

    @property
    def type(self) -> str | None:
        """``type`` (Responses API items), or None."""
        kind = _decode_head(self._raw).type
        return kind if isinstance(kind, str) else None

    def to_dict(self) -> dict[str, Any]:
        """A fresh ``dict`` equal to the one appended."""
        result: dict[str, Any] = orjson.loads(self._raw)
        return result

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Message is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Message is immutable")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Message):
            return self._raw == other._raw
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        text = self._raw.decode("utf-8", "replace")
        return f"Message({text if len(text) <= 80 else text[:77] + '...'})"

    def __copy__(self) -> Message:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Message:
        return self


@final
class Conversation:
    """An immutable snapshot of a thread at one version.

    It holds the messages' encoded bytes; `Message` objects are made only when
    ``messages`` is first read, so serving a snapshot costs nothing per message.
    """

    __slots__ = ("_counts", "_messages", "payloads", "thread_id", "version")
    thread_id: str
    version: int
    #: The messages' encoded JSON, oldest first.
    payloads: tuple[bytes, ...]
    _messages: tuple[Message, ...] | None
    # Stored token counts per key (see agent_core._token_counts).
    _counts: Counts

    def __init__(self, thread_id: str, version: int, messages: Iterable[Message] = ()) -> None:
        held = tuple(messages)
        self._set(thread_id, version, tuple(m.raw for m in held), held, _NO_COUNTS)

    def _set(
        self,
        thread_id: str,
        version: int,
        payloads: tuple[bytes, ...],
        messages: tuple[Message, ...] | None,
        counts: Counts,
    ) -> None:
        # The slots' own setters skip __setattr__, which refuses all changes.
        _set_thread_id(self, thread_id)
        _set_version(self, version)
        _set_payloads(self, payloads)
        _set_messages(self, messages)
        _set_counts(self, counts)

    def token_count(self, model: str) -> int:
        """Prompt tokens these messages cost ``model``, chat overhead and reply priming included.

        Uses the counts stored at append; a message without one is counted (on each
        call: a snapshot keeps nothing). See `agent_core.TokenCounter` for the rules.
        """
        if _count_tokens is None:  # agent_core's root imports tokens, which provides it
            raise RuntimeError("agent_core.tokens is not imported")
        return _count_tokens(self, model)

    @property
    def messages(self) -> tuple[Message, ...]:
        if self._messages is None:
            _set_messages(self, messages_from_raw(self.payloads))
        assert self._messages is not None
        return self._messages

    def __len__(self) -> int:
        return len(self.payloads)

    def to_list(self) -> list[dict[str, Any]]:
        """Fresh ``dict`` copies of every message, decoded in one pass."""
        if not self.payloads:
            return []
        result: list[dict[str, Any]] = orjson.loads(b"[" + b",".join(self.payloads) + b"]")
        return result

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Conversation is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Conversation is immutable")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Conversation):
            return (self.thread_id, self.version, self.payloads) == (
                other.thread_id,
                other.version,
                other.payloads,
            )
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.thread_id, self.version, self.payloads))

    def __repr__(self) -> str:
        return (
            f"Conversation(thread_id={self.thread_id!r}, version={self.version}, "
            f"messages={len(self.payloads)})"
        )


_set_thread_id = Conversation.__dict__["thread_id"].__set__
_set_version = Conversation.__dict__["version"].__set__
_set_payloads = Conversation.__dict__["payloads"].__set__
_set_messages = Conversation.__dict__["_messages"].__set__
_set_counts = Conversation.__dict__["_counts"].__set__
_NO_COUNTS: Final[Counts] = MappingProxyType({})

# Counting tokens is the tokens layer's job, one layer up: it provides the function
# when it is imported (`provide_token_count`), so this module never imports it.
_count_tokens: Callable[[Conversation, str], int] | None = None


def provide_token_count(count: Callable[[Conversation, str], int]) -> None:
    """Set what `Conversation.token_count` calls; agent_core.tokens does, on import."""
    global _count_tokens
    _count_tokens = count


# Internal API: snapshots as the cache tiers and the store hand them over, not
# validated. Callers pass only bytes this library encoded or a store returned.


def trusted_message(raw: bytes) -> Message:
    """Wrap one message's bytes that this library encoded (or its store returned)."""
    message = object.__new__(Message)
    _set_raw(message, raw)
    return message


def conversation_from_payloads(
    thread_id: str, version: int, payloads: tuple[bytes, ...], counts: Counts = _NO_COUNTS
) -> Conversation:
    """A snapshot of stored payloads and their token counts (see agent_core._token_counts)."""
    conversation = object.__new__(Conversation)
    conversation._set(thread_id, version, payloads, None, counts)
    return conversation


def extend_conversation(
    conversation: Conversation, version: int, payloads: tuple[bytes, ...], counts: Counts
) -> Conversation:
    """``conversation`` plus an append at ``version``; ``counts`` cover all messages.

    `Message` objects already made for ``conversation`` are reused.
    """
    extended = conversation_from_payloads(
        conversation.thread_id, version, conversation.payloads + payloads, counts
    )
    if conversation._messages is not None:
        _set_messages(extended, conversation._messages + messages_from_raw(payloads))
    return extended


def stored_counts(conversation: Conversation) -> Counts:
    """The token counts the snapshot was made with, per count key."""
    return conversation._counts


def encode_message(item: object, max_bytes: int) -> bytes:
    """Validate one message and return its JSON bytes."""
    if isinstance(item, Message):
        _check_size(len(item.raw), max_bytes)
        return item.raw
    if not isinstance(item, Mapping):
        raise InvalidMessage(
            f"a message must be a dict such as {{'role': 'user', 'content': 'hi'}}, "
            f"got {type(item).__name__}"
        )
    check_shape(item)
    try:
        raw = orjson.dumps(item if isinstance(item, dict) else dict(item), option=_ENCODE_OPTIONS)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise InvalidMessage(
            f"message cannot be encoded as JSON ({exc}): use only dict (str keys), list, "
            "str, int (64-bit), finite float, bool and None"
        ) from None
    # orjson writes NaN and Infinity as null, which would not round-trip.
    if b"null" in raw and _has_non_finite_float(item):
        raise InvalidMessage("message contains NaN or Infinity, which JSON cannot represent")
    _check_size(len(raw), max_bytes)
    return exact_copy(raw)


def exact_copy(raw: bytes) -> bytes:
    """``raw`` in a bytes object that holds no more memory than its length.

    orjson never shrinks the buffer it writes into: at least 4 KB, and for long strings
    up to about six times the output (room for escapes), kept for as long as the bytes
    live. A message's bytes live in the cache tiers, whose budgets count their length,
    so they are copied once, here, to exactly that length.
    """
    return memoryview(raw).tobytes()


def encode_batch(
    messages: object,
    *,
    max_message_bytes: int,
    max_batch_messages: int,
    allow_empty: bool = False,
) -> list[bytes]:
    """Validate a batch for one append (or, ``allow_empty``, a splice); nothing is
    written if this raises."""
    if isinstance(messages, str | bytes | bytearray | Mapping) or not isinstance(
        messages, Sequence
    ):
        raise InvalidBatch(
            f"messages must be a list of message dicts, got {type(messages).__name__}; "
            "wrap a single message in a list"
        )
    if not messages and not allow_empty:
        raise InvalidBatch("messages is empty: append at least one message")
    if len(messages) > max_batch_messages:
        raise InvalidBatch(
            f"{len(messages)} messages in one batch is over the limit of {max_batch_messages}; "
            "split it into several appends or raise max_batch_messages"
        )
    encoded = []
    for index, item in enumerate(messages):
        try:
            encoded.append(encode_message(item, max_message_bytes))
        except InvalidMessage as exc:
            exc.args = (f"messages[{index}]: {exc}",)
            raise
    return encoded


def _check_size(size: int, limit: int) -> None:
    if size > limit:
        raise MessageTooLarge(
            f"message is {size} bytes encoded, over the limit of {limit} bytes; "
            "shorten it or raise max_message_bytes",
            size=size,
            limit=limit,
        )


def _has_non_finite_float(value: object) -> bool:
    stack: list[object] = [value]
    while stack:
        current = stack.pop()
        if isinstance(current, float):
            if not math.isfinite(current):
                return True
        elif isinstance(current, Mapping):
            stack.extend(current.values())
        elif isinstance(current, list | tuple):
            stack.extend(current)
    return False


def messages_from_raw(payloads: Iterable[bytes]) -> tuple[Message, ...]:
    """Wrap stored payloads without decoding them."""
    create, set_raw = object.__new__, _set_raw
    wrapped = []
    for raw in payloads:
        message = create(Message)
        set_raw(message, raw)
        wrapped.append(message)
    return tuple(wrapped)


# The slot's own setter: skips Message.__setattr__, which refuses all changes.
_set_raw = Message.__dict__["_raw"].__set__
