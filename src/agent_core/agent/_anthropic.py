"""`AnthropicChatModel`: Claude through Anthropic's Messages API, over httpx.

Requests: the thread's Chat Completions messages are converted by
`agent_core._anthropic_format` (system and developer messages to the top-level
``system``, tool calls and results to ``tool_use`` / ``tool_result`` blocks, same-role
turns merged, ``image_url`` parts to image blocks) into ``POST {base_url}/v1/messages``.
The body is built with its keys in a fixed order, without timestamps, tools in the order
given: the same messages make the same bytes, which is what prompt caching needs.

Prompt caching: Anthropic caches a prompt's prefix up to a block marked with
``cache_control`` (a *breakpoint*; at most 4 per request); a later request reads it when
its prefix is the same bytes up to a breakpoint, looking back at most 20 blocks from each
of its own. ``cache_breakpoints="auto"`` places them (see `auto_breakpoints`).

Replies: the assistant message comes back in Chat Completions shape (``content`` text or
None, ``tool_calls`` with JSON ``arguments``), ready to be appended to the thread and sent
again; ``thinking`` and server-tool blocks are left out of it (they are in ``raw``). So
extended thinking (``extra_body={"thinking": ...}``) does not carry across a tool call:
the API wants the thinking block back with the tool result, and the message has none.
Retries and errors are `HttpChatModel`'s (agent/_http.py), 529 "overloaded" among the
retried statuses.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from contextlib import aclosing
from typing import Any, Final, Literal

import orjson

from .._anthropic_format import Conversion, convert_messages, convert_tools, encode_request
from .._quote import quote
from .._summary import SUMMARY_NAME
from ..errors import InvalidArgument, ModelError
from ..messages import Message
from ..tokens import TokenCounter
from ._anthropic_count import OnlineCounts
from ._http import HttpChatModel, Provider, error_details, invalid_response, is_count, json_object
from ._models import ChatStream, Completion, StreamEvent, Usage, check_cache_key, check_request

__all__ = [
    "ANTHROPIC_VERSION",
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_TOKENS",
    "AnthropicChatModel",
    "CacheBreakpoints",
    "auto_breakpoints",
]

DEFAULT_BASE_URL: Final = "https://api.anthropic.com"
ANTHROPIC_VERSION: Final = "2023-06-01"
#: ``max_tokens`` of a call that passes none (the API requires one).
DEFAULT_MAX_TOKENS: Final = 4096
#: Anthropic's limit of ``cache_control`` blocks per request.
MAX_BREAKPOINTS: Final = 4

#: ``"auto"``, ``"off"`` (or None), or a function of the messages to the indexes to mark.
CacheBreakpoints = Literal["auto", "off"] | None | Callable[[Sequence[Message]], Iterable[int]]
# A breakpoint: ("system", block index) or ("turn", turn index: its last block).
_Mark = tuple[Literal["system", "turn"], int]

_API_HINT: Final = "is base_url Anthropic's API (https://api.anthropic.com, without /v1)?"
_PROVIDER: Final = Provider(
    name="Anthropic",
    base_url_env="ANTHROPIC_BASE_URL",
    api_key_env="ANTHROPIC_API_KEY",
    default_base_url=DEFAULT_BASE_URL,
    path="/v1/messages",
    reserved=frozenset({"model", "messages", "system", "tools", "stream", "max_tokens"}),
    hints={
        400: "Anthropic refused the request; check the messages, tools and extra_body",
        401: "check ANTHROPIC_API_KEY (or api_key): the server did not accept it",
        403: "the API key may not use this model or workspace",
        404: "check the model name and base_url (Anthropic's is https://api.anthropic.com)",
        408: "the server timed out reading the request; retry later",
        413: "the request is over the API's size limit; send a shorter window of the thread",
        429: "rate limited: send fewer requests or tokens per minute, or raise max_retries",
        529: "Anthropic's API is overloaded; retry later",
    },
    final_errors={},
    api_hint=_API_HINT,
    key_header="x-api-key",
    key_prefix="",
    headers={"anthropic-version": ANTHROPIC_VERSION},
)
_FINISH_REASONS: Final[Mapping[str, str]] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
#: Error types of a stream's ``error`` event worth sending the request again for.
_RETRYABLE_ERRORS: Final = frozenset(
    {"overloaded_error", "api_error", "rate_limit_error", "timeout_error"}
)
_EPHEMERAL: Final[Mapping[str, str]] = {"type": "ephemeral"}


class AnthropicChatModel(HttpChatModel):
    """A Claude model behind Anthropic's ``POST {base_url}/v1/messages``.

    ``base_url`` defaults to ``$ANTHROPIC_BASE_URL``, else Anthropic's API (without
    ``/v1``); ``api_key`` to ``$ANTHROPIC_API_KEY``, sent as ``x-api-key`` with
    ``anthropic-version: 2023-06-01`` (a local server may need no key, Anthropic's API must
    have one). ``timeout``, retries (``max_retries``, ``backoff``, ``max_backoff``,
    ``max_retry_after``), ``extra_body`` (``temperature``, ``tool_choice``,
    ``stop_sequences``, ``metadata``, ...; not ``system``, which comes from the messages)
    and ``headers`` (``anthropic-beta``, ...) work as `OpenAIChatModel`'s. A call without
    ``max_tokens`` sends `DEFAULT_MAX_TOKENS` (4096): the API requires one.

    ``cache_breakpoints``: ``"auto"`` (default) marks up to four prompt-cache breakpoints
    as `auto_breakpoints` says; ``"off"`` or None marks none; a function
    ``(messages) -> iterable of indexes`` into the messages of the call marks those: a
    system message's index its last block in ``system``, any other's the last block of the
    turn holding it (at most 4 places, else `InvalidArgument`; negative indexes count from
    the end).

    ``exact_online``: `count_tokens` asks Anthropic's count-tokens endpoint over this
    model's connection pool (composed from cached per-message counts; see
    `agent_core.agent._anthropic_count`) instead of estimating offline.
    """

    _provider = _PROVIDER

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_retry_after: float = 60.0,
        extra_body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        cache_breakpoints: CacheBreakpoints = "auto",
        exact_online: bool = False,
    ) -> None:
        super().__init__(
            model,
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            max_backoff=max_backoff,
            max_retry_after=max_retry_after,
            extra_body=extra_body,
            headers=headers,
        )
        if not (cache_breakpoints in ("auto", "off", None) or callable(cache_breakpoints)):
            raise InvalidArgument(
                "cache_breakpoints must be 'auto', 'off', None or a function of the messages "
                f"to the indexes to mark, got {quote(cache_breakpoints)}"
            )
        self._breakpoints = cache_breakpoints
        if not isinstance(exact_online, bool):
            raise InvalidArgument(f"exact_online must be True or False, got {quote(exact_online)}")
        self._count_url = f"{self._url}/count_tokens"
        self._online = OnlineCounts(model, self._count_request) if exact_online else None
        self._offline: TokenCounter | None = None

    @property
    def exact_online(self) -> bool:
        """Whether `count_tokens` asks Anthropic (True) or estimates offline."""
        return self._online is not None

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        max_tokens: int | None = None,
        cache_key: str | None = None,
    ) -> Completion:
        """The model's reply to ``messages``; raises `ModelError` if none came.

        ``cache_key`` is checked and otherwise ignored: Anthropic's API has no such field
        (its cache is keyed by the prompt's bytes, up to the breakpoints)."""
        body = self._body(messages, tools, max_tokens, cache_key, stream=False)
        response = await self._post(self._url, body, stream=False)
        return self._parse(response.content)

    def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        max_tokens: int | None = None,
        cache_key: str | None = None,
    ) -> ChatStream:
        """The reply as it is generated (server-sent events): text deltas, then the Completion.

        Arguments are checked now; the request is sent on the first ``__anext__``. A tool
        call's input arrives whole in the Completion. An ``error`` event in the stream
        raises `ModelError` (``retryable`` for ``overloaded_error`` and the like)."""
        body = self._body(messages, tools, max_tokens, cache_key, stream=True)
        return ChatStream(self._events(body))

    async def count_tokens(
        self, messages: Sequence[Message], tools: Sequence[Mapping[str, Any]] | None = None
    ) -> int:
        """Input tokens of a request with ``messages`` and ``tools``.

        With ``exact_online``, Anthropic's counts, each message counted once and cached
        (see `agent_core.agent._anthropic_count` for what is exact and what is composed);
        raises `ModelError` if the endpoint fails. Otherwise `TokenCounter`'s offline count,
        which for Claude is an estimate (Claude's tokenizer is not public)."""
        messages, _ = check_request(messages, tools, None)
        if self._online is None:
            if self._offline is None:
                self._offline = TokenCounter.for_model(self._model)
            return self._offline.count_messages(messages, tools)
        return await self._online.count(messages, tools)

    def _body(
        self,
        messages: Sequence[Message],
        tools: Sequence[Mapping[str, Any]] | None,
        max_tokens: int | None,
        cache_key: str | None,
        *,
        stream: bool,
    ) -> bytes:
        messages, _ = check_request(messages, tools, max_tokens)
        check_cache_key(cache_key)
        items = [message.to_dict() for message in messages]
        converted = convert_messages(items, images=True)
        for kind, index in self._marks(messages, items, converted):
            block = converted.system[index] if kind == "system" else converted.turns[index]
            if kind == "turn":
                block = block["content"][-1]
            block["cache_control"] = dict(_EPHEMERAL)
        body: dict[str, Any] = {
            "model": self._model,
            "max_tokens": max_tokens or DEFAULT_MAX_TOKENS,
        }
        if converted.system:
            body["system"] = converted.system
        body["messages"] = converted.turns
        definitions = convert_tools(tools)
        if definitions:
            body["tools"] = definitions
        if stream:
            body["stream"] = True
        body.update(self._extra_body)
        return encode_request(body)

    def _marks(
        self,
        messages: Sequence[Message],
        items: Sequence[Mapping[str, Any]],
        converted: Conversion,
    ) -> list[_Mark]:
        choose = self._breakpoints
        if choose is None or choose == "off":
            return []
        if choose == "auto":
            return auto_breakpoints(items, converted)
        assert callable(choose)
        chosen = choose(messages)
        if isinstance(chosen, str | bytes) or not isinstance(chosen, Iterable):
            raise InvalidArgument(
                f"cache_breakpoints must return an iterable of message indexes, got {quote(chosen)}"
            )
        count = len(messages)
        marks: list[_Mark] = []
        for index in chosen:
            if isinstance(index, bool) or not isinstance(index, int):
                raise InvalidArgument(
                    f"cache_breakpoints must return message indexes (ints), got {quote(index)}"
                )
            if not -count <= index < count:
                raise InvalidArgument(
                    f"cache_breakpoints returned index {index} for {count} messages: indexes "
                    f"go from {-count} to {count - 1}"
                )
            place = converted.places[index]
            if place is None:
                raise InvalidArgument(
                    f"cache_breakpoints marks messages[{index % count}], which converts to no "
                    "content block (no text, image or tool call): mark another message"
                )
            mark: _Mark = ("system", place.last) if place.turn is None else ("turn", place.turn)
            if mark not in marks:
                marks.append(mark)
        if len(marks) > MAX_BREAKPOINTS:
            raise InvalidArgument(
                f"cache_breakpoints marks {len(marks)} places; Anthropic takes at most "
                f"{MAX_BREAKPOINTS} cache breakpoints in a request"
            )
        return marks

    def _parse(self, content: bytes) -> Completion:
        data = json_object(content, self._url, _API_HINT)
        blocks = data.get("content")
        if not isinstance(blocks, list):
            raise self._invalid("no content list", content)
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for block in blocks:
            if not isinstance(block, dict):
                raise self._invalid("a content block that is not an object", content)
            if block.get("type") == "text":
                if not isinstance(block.get("text"), str):
                    raise self._invalid("a text block without text", content)
                texts.append(block["text"])
            elif block.get("type") == "tool_use":
                calls.append(self._call(block.get("id"), block.get("name"), block.get("input")))
        return self._completion(texts, calls, data, _usage(data.get("usage")), content)

    def _call(self, call_id: object, name: object, arguments: object) -> dict[str, Any]:
        """A tool_use block as a Chat Completions tool call."""
        if not (isinstance(call_id, str) and isinstance(name, str) and isinstance(arguments, dict)):
            raise self._invalid(
                f"a tool_use block without a str id and name and an object input "
                f"(id {quote(call_id)}, name {quote(name)}, input {quote(arguments)})",
                "",
            )
        return {
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": orjson.dumps(arguments).decode()},
        }

    def _completion(
        self,
        texts: list[str],
        calls: list[dict[str, Any]],
        data: Mapping[str, Any],
        usage: Usage | None,
        raw: bytes | None,
    ) -> Completion:
        if usage is None:
            raise self._invalid(f"usage that is not token counts ({quote(data.get('usage'))})", "")
        text = "".join(texts)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": (text or None) if calls else text,
        }
        if calls:
            message["tool_calls"] = calls
        reason = data.get("stop_reason")
        if reason is not None and not isinstance(reason, str):
            raise self._invalid(f"a stop_reason that is not a string ({quote(reason)})", "")
        model = data.get("model")
        return Completion(
            message=message,
            text=text,
            usage=usage,
            finish_reason=_FINISH_REASONS.get(reason, reason) if reason is not None else None,
            model=model if isinstance(model, str) and model else self._model,
            raw=raw,
        )

    async def _events(self, body: bytes) -> AsyncGenerator[StreamEvent, None]:
        reply = _StreamedReply(self)
        async with aclosing(self._sse_stream(body)) as events:
            async for data in events:
                text = reply.add(data)
                if text:
                    yield text
                if reply.stopped:
                    break
        if not reply.stopped:
            raise ModelError(
                f"the stream from {self._url} ended before message_stop: the connection was "
                "cut; send the request again",
                status=200,
                error_type="connection_error",
                retryable=True,
            )
        yield reply.completion()

    async def _count_request(self, body: bytes) -> int:
        response = await self._post(self._count_url, body, stream=False)
        tokens = json_object(response.content, self._count_url, _API_HINT).get("input_tokens")
        if not is_count(tokens):
            raise invalid_response(
                self._count_url, "no count of input_tokens", response.content, _API_HINT
            )
        return tokens


def auto_breakpoints(items: Sequence[Mapping[str, Any]], converted: Conversion) -> list[_Mark]:
    """Where ``cache_breakpoints="auto"`` puts the (at most 4) breakpoints, duplicates skipped:

    1. the last block of the system prompt proper, which caches the tools and the system
       prompt: the last system block, or, if that is the last compaction summary's (a
       system message named `SUMMARY_NAME`), the last system block before the summary;
    2. the last block of the last compaction summary, so a new summary rewrites the cache
       from the summary on, not from the system prompt;
    3. the last block of the last user turn before the final turn: where the previous
       request ended, hence its cache entry, which a turn that adds more than 20 blocks
       (tool calls and results) would leave out of the lookback of breakpoint 4;
    4. the last block of the final turn: the whole prompt, for the next request to read.
    """
    summary = None
    for item, place in zip(items, converted.places, strict=True):
        if place is not None and place.turn is None and item.get("name") == SUMMARY_NAME:
            summary = place
    marks: list[_Mark] = []
    last = len(converted.system) - 1
    if summary is not None and summary.first <= last <= summary.last:
        last = summary.first - 1
    if last >= 0:
        marks.append(("system", last))
    if summary is not None:
        marks.append(("system", summary.last))
    turns = converted.turns
    final = len(turns) - 1
    previous = next((t for t in range(final - 1, -1, -1) if turns[t]["role"] == "user"), None)
    if previous is not None:
        marks.append(("turn", previous))
    marks.append(("turn", final))
    return marks


def _usage(usage: object) -> Usage | None:
    """Anthropic's usage as `Usage`: input tokens are the uncached ones plus the cache's
    reads and writes; None if it is not token counts. Missing or null counts are 0."""
    if not isinstance(usage, Mapping):
        return None
    fresh, written, read, output = (
        usage.get(name) or 0
        for name in (
            "input_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
            "output_tokens",
        )
    )
    if not (is_count(fresh) and is_count(written) and is_count(read) and is_count(output)):
        return None
    prompt = fresh + written + read
    return Usage(prompt, output, prompt + output, cached_tokens=read, cache_write_tokens=written)


class _StreamedReply:
    """Assembles a streamed message from its events, as Anthropic's SDK does."""

    def __init__(self, model: AnthropicChatModel) -> None:
        self._model = model
        self._data: dict[str, Any] = {}
        self._usage: dict[str, Any] = {}
        #: Content blocks by index: text blocks' texts, tool_use blocks' partial JSON.
        self._blocks: dict[int, dict[str, Any]] = {}
        self.stopped = False

    def add(self, data: str) -> str:
        """Take one event; returns its text delta."""
        event = json_object(data, self._model.url, _API_HINT)
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message")
            if not isinstance(message, dict):
                raise self._model._invalid("a message_start without a message", data)
            self._data["model"] = message.get("model")
            self._take_usage(message.get("usage"), data)
        elif kind == "content_block_start":
            block = event.get("content_block")
            if not isinstance(block, dict):
                raise self._model._invalid("a content_block_start without a block", data)
            self._blocks[self._index(event, data)] = {**block, "parts": []}
            if block.get("type") == "text" and isinstance(block.get("text"), str):
                return self._append(event, data, block["text"])
        elif kind == "content_block_delta":
            delta = event.get("delta")
            if not isinstance(delta, dict):
                raise self._model._invalid("a content_block_delta without a delta", data)
            if delta.get("type") == "text_delta":
                return self._append(event, data, delta.get("text"))
            if delta.get("type") == "input_json_delta":
                self._append(event, data, delta.get("partial_json"))
            # thinking_delta, signature_delta, citations_delta: not part of the message.
        elif kind == "message_delta":
            delta = event.get("delta")
            if isinstance(delta, dict) and "stop_reason" in delta:
                self._data["stop_reason"] = delta["stop_reason"]
            self._take_usage(event.get("usage"), data)
        elif kind == "message_stop":
            self.stopped = True
        elif kind == "error":
            message, error_type = error_details(event)
            raise ModelError(
                f"the stream from {self._model.url} broke off: {error_type or 'an error'}: "
                f"{message}; send the request again"
                + (" later" if error_type == "overloaded_error" else ""),
                status=200,
                error_type=error_type,
                retryable=error_type in _RETRYABLE_ERRORS,
            )
        # ping, content_block_stop, and event types added later carry nothing needed here.
        return ""

    def completion(self) -> Completion:
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for _, block in sorted(self._blocks.items()):
            if block.get("type") == "text":
                texts.append("".join(block["parts"]))
            elif block.get("type") == "tool_use":
                arguments = block.get("input") or {}
                if block["parts"]:
                    try:
                        arguments = orjson.loads("".join(block["parts"]))
                    except orjson.JSONDecodeError:
                        raise self._model._invalid(
                            "a tool_use input that is not JSON", "".join(block["parts"])
                        ) from None
                calls.append(self._model._call(block.get("id"), block.get("name"), arguments))
        usage = _usage(self._usage)
        return self._model._completion(texts, calls, self._data, usage, None)

    def _index(self, event: Mapping[str, Any], data: str) -> int:
        index = event.get("index")
        if not is_count(index):
            raise self._model._invalid("an event without a block index", data)
        return index

    def _append(self, event: Mapping[str, Any], data: str, text: object) -> str:
        block = self._blocks.get(self._index(event, data))
        if block is None or not isinstance(text, str):
            raise self._model._invalid("a delta of no block started, or without text", data)
        block["parts"].append(text)
        return text if block.get("type") == "text" else ""

    def _take_usage(self, usage: object, data: str) -> None:
        if usage is None:
            return
        if not isinstance(usage, dict):
            raise self._model._invalid("usage that is not an object", data)
        # message_start holds the input side; message_delta's counts are cumulative.
        self._usage.update((name, value) for name, value in usage.items() if value is not None)
