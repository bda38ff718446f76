"""`OnlineCounts`: `AnthropicChatModel.count_tokens` with ``exact_online=True``.

Anthropic's ``POST /v1/messages/count_tokens`` counts a whole request; sending a growing
thread whole at every count would send it again and again. So each message is counted
once, on its own, and the count of a conversation is composed from those shares:

* every number is Anthropic's: a message's *share* is the count of a small fixed request
  with the message minus the count of the same request without it (``"."`` texts and,
  for tool calls and results, a one-tool definition make each request one the API
  takes); the per-request *base* (the request's own overhead, the system prompt's
  framing) is measured the same way, once per model;
* the composition is exact when Anthropic's count adds up over turns and blocks (each
  turn's framing and each block's tokens independent of their neighbours), which is how
  a rendered prompt is built; it can be off by the few framing tokens where that does not
  hold (a turn's first block against a later one, the first turn against a later one).
  A message that joins the turn before it (consecutive messages of one role, a user text
  after tool results) is counted as a continuation, the others as a new turn, so merged
  turns are not charged twice. An assistant message's share includes the turn of its
  tool results (with empty results); each tool message adds its result's content.
* shares are cached per message (the digest of its raw bytes, and whether it began or
  joined a turn) in a bounded LRU, as are the tools' share (the digest of their
  definitions): a thread that grew by two messages costs two requests. At most
  ``concurrency`` requests are in flight at once.

A composed count does not validate the conversation the way a whole request would
(a tool result without its call still counts). Anthropic calls its own count an estimate
that may differ slightly from what a request is billed.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

from .._anthropic_format import Conversion, convert_messages, convert_tools, encode_request
from ..messages import Message

__all__ = ["OnlineCounts"]

_DOT: Final[Mapping[str, str]] = {"type": "text", "text": "."}
_CALL_ID: Final = "toolu_count"
_TOOL: Final[Mapping[str, Any]] = {"name": "f", "input_schema": {"type": "object"}}
_CALL: Final[Mapping[str, Any]] = {"type": "tool_use", "id": _CALL_ID, "name": "f", "input": {}}
_RESULT: Final[Mapping[str, str]] = {"type": "tool_result", "tool_use_id": _CALL_ID}

# A count request is (system blocks, tools, turns); turns are (role, blocks). A share is
# (cache key, the name of the base it is measured against, its request).
_Blocks = Sequence[Mapping[str, Any]]
_Turns = Sequence[tuple[str, _Blocks]]
_Request = tuple[_Blocks, _Blocks, _Turns]
_Share = tuple[bytes, str, _Request]
_U: Final[_Turns] = [("user", [_DOT])]
_UA: Final[_Turns] = [("user", [_DOT]), ("assistant", [_DOT])]
_UAU: Final[_Turns] = [*_UA, ("user", [_DOT])]
#: The fixed requests shares are measured against, by name: (system, tools, turns).
_BASES: Final[Mapping[str, _Request]] = {
    "u": ([], [], _U),
    "ua": ([], [], _UA),
    "uau": ([], [], _UAU),
    "s": ([_DOT], [], _U),
    "ss": ([_DOT, _DOT], [], _U),
    "fu": ([], [_TOOL], _U),
    "fua": ([], [_TOOL], _UA),
    "ftool": ([], [_TOOL], [("user", [_DOT]), ("assistant", [_CALL]), ("user", [_RESULT])]),
}

Send = Callable[[bytes], Awaitable[int]]


class OnlineCounts:
    """Composed online counts for one model (see the module); ``send`` posts a count body."""

    def __init__(
        self, model: str, send: Send, *, max_entries: int = 10_000, concurrency: int = 8
    ) -> None:
        self._model = model
        self._send = send
        self._max_entries = max_entries
        self._limit = asyncio.Semaphore(concurrency)
        self._bases: dict[str, int] = {}
        self._shares: OrderedDict[bytes, int] = OrderedDict()

    @property
    def cached(self) -> int:
        """How many shares (messages, tool sets) are cached."""
        return len(self._shares)

    async def count(
        self, messages: Sequence[Message], tools: Sequence[Mapping[str, Any]] | None
    ) -> int:
        """Input tokens of ``messages`` and ``tools``, composed from cached and new shares."""
        converted = convert_messages(messages, images=True)
        definitions = convert_tools(tools)
        # What each share is measured with: (cache key, base name, request).
        shares = list(self._message_shares(messages, converted))
        if definitions:
            key = b"tools:" + hashlib.sha256(encode_request({"t": definitions})).digest()
            shares.append((key, "u", ([], definitions, _U)))
        needed = {"u", "ua", "uau"} | {base for _, base, _ in shares}
        if converted.system:
            needed |= {"s", "ss"}
        values = await self._measure(needed, [(key, request) for key, _, request in shares])
        bases = self._bases
        total = bases["u"] - (bases["uau"] - bases["ua"])
        if converted.system:
            # The system prompt's framing: its blocks' shares each hold a block's separator.
            total += bases["s"] - bases["u"] - (bases["ss"] - bases["s"])
        return total + sum(values[key] - bases[base] for key, base, _ in shares)

    def _message_shares(self, messages: Sequence[Message], converted: Conversion) -> list[_Share]:
        found: list[_Share] = []
        for message, place in zip(messages, converted.places, strict=True):
            if place is None:
                continue
            mode = b"c" if place.continued else b"t"
            key = mode + hashlib.sha256(message.raw).digest()
            if place.turn is None:
                blocks = converted.system[place.first : place.last + 1]
                found.append((key, "s", ([_DOT, *blocks], [], _U)))
                continue
            turn = converted.turns[place.turn]
            blocks = turn["content"][place.first : place.last + 1]
            if turn["role"] == "assistant":
                calls = [b["id"] for b in blocks if b["type"] == "tool_use"]
                said = [_DOT, *blocks] if place.continued else blocks
                turns: list[tuple[str, _Blocks]] = [("user", [_DOT]), ("assistant", said)]
                if calls:
                    turns.append(("user", [{**_RESULT, "tool_use_id": c} for c in calls]))
                base = ("fua" if calls else "ua") if place.continued else ("fu" if calls else "u")
                found.append((key, base, ([], [_TOOL] if calls else [], turns)))
            elif blocks[0]["type"] == "tool_result":
                content = blocks[0].get("content")
                if content:
                    result = {**_RESULT, "content": content}
                    turns = [("user", [_DOT]), ("assistant", [_CALL]), ("user", [result])]
                    found.append((key, "ftool", ([], [_TOOL], turns)))
            elif place.continued:
                found.append((key, "uau", ([], [], [*_UA, ("user", [_DOT, *blocks])])))
            else:
                found.append((key, "ua", ([], [], [*_UA, ("user", blocks)])))
        return found

    async def _measure(
        self,
        bases: set[str],
        shares: list[tuple[bytes, _Request]],
    ) -> dict[bytes, int]:
        """Counts the ``bases`` (by name) not known yet; the ``shares`` by key, cached or not."""
        values: dict[bytes, int] = {}
        jobs: dict[bytes | str, _Request] = {
            name: _BASES[name] for name in sorted(bases) if name not in self._bases
        }
        for key, request in shares:
            known = self._shares.get(key)
            if known is None:
                jobs[key] = request
            else:
                values[key] = known
                self._shares.move_to_end(key)
        names = list(jobs)
        try:
            # A failure cancels the other requests, and is raised as it is.
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._count(jobs[name])) for name in names]
        except ExceptionGroup as failed:
            error = failed.exceptions[0]
            raise error from error.__cause__
        for name, task in zip(names, tasks, strict=True):
            tokens = task.result()
            if isinstance(name, str):
                self._bases[name] = tokens
            else:
                values[name] = self._shares[name] = tokens
        while len(self._shares) > self._max_entries:
            self._shares.popitem(last=False)
        return values

    async def _count(self, request: _Request) -> int:
        system, tools, turns = request
        body: dict[str, Any] = {"model": self._model}
        if system:
            body["system"] = system
        if tools:
            body["tools"] = tools
        body["messages"] = [{"role": role, "content": blocks} for role, blocks in turns]
        async with self._limit:
            return await self._send(encode_request(body))
