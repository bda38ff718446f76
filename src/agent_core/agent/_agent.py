"""`BaseAgent`: one agent turn = history window + model call + append, within a token budget.

A turn's prompt is, in this order: the system prompt, the context files (one system
message each), the newest history of the thread that fits, and the new user message.
Its billed size (`TokenCounter.count_messages`, reply priming included) stays within
``max_context_tokens - reserve_output_tokens``: the fixed parts are counted first and
the history window gets what is left. The model may write up to
``reserve_output_tokens`` (sent as ``max_tokens``).

Policies:

- **Fixed parts over the budget** (system prompt + context files + user message):
  `TokenBudgetExceeded` naming each part and its count, before anything is sent.
- **History whose newest message does not fit** (a huge earlier reply): the turn is
  sent with the thread's pinned system messages only (``history_omitted`` says how
  many were left out), so one big message can't make a thread unusable.
- **Persisting**: the user and assistant messages are appended together, compare-and-
  append on the version the window was cut from, under one idempotency key per turn.
  If another writer appended meanwhile (`VersionConflict`), the pair is appended again
  on top of its messages, with the same key: both sides' messages are kept, in the
  order they were stored, and ``reply.conflicted`` is True. The reply was written
  without seeing the other writer's messages.
- **A failed model call stores nothing**: the thread stays as it was, so the same
  user message can simply be sent again.
- **A reply that can't be stored** raises `TurnNotSaved`, which carries the reply, the
  messages and the idempotency key to append them with later.
- **Stateless** (``enable_conversation_memory=False``): nothing is read from or written
  to memory; the prompt is the system prompt, the files and the user message.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any, Final, cast, final

from .._closing import AsyncClosing
from .._quote import quote
from .._validation import check_count, check_thread_id
from ..errors import (
    AgentCoreError,
    ConfigurationError,
    InvalidArgument,
    InvalidMessage,
    ModelError,
    TokenBudgetExceeded,
    TurnNotSaved,
    VersionConflict,
)
from ..messages import DEFAULT_MAX_MESSAGE_BYTES, Message
from ..tokens import DEFAULT_RETAIN_RATIO, TokenCounter, WindowStrategy, check_window_strategy
from ._compaction import CompactionPolicy, CompactionStats, Compactor, WindowCheck
from ._context_files import ContextFile, ContextFiles
from ._memory import AgentLimiter, AgentMemory, CompactingMemory
from ._models import ChatModel, Completion
from ._reply import AgentReply, HistoryTier

__all__ = ["AgentStream", "BaseAgent"]

DEFAULT_MAX_CONTEXT_TOKENS: Final = 128_000
DEFAULT_RESERVE_OUTPUT_TOKENS: Final = 4_096
_PINNED_ROLES: Final = frozenset({"system", "developer"})
# Above this size a user message is counted in a worker thread, off the loop.
_INLINE_COUNT_BYTES: Final = 64 << 10


class _Turn:
    """A prompt ready to send, and what it took to build it."""

    __slots__ = (
        "check",
        "omitted",
        "prompt",
        "prompt_tokens",
        "sent_history",
        "thread_id",
        "tier",
        "timings",
        "user",
        "version",
    )

    def __init__(
        self,
        thread_id: str,
        user: Message,
        prompt: list[Message],
        prompt_tokens: int,
        version: int | None,
        tier: HistoryTier,
        sent_history: int,
        omitted: int,
        timings: dict[str, float],
        check: WindowCheck | None,
    ) -> None:
        self.check = check
        self.thread_id = thread_id
        self.user = user
        self.prompt = prompt
        self.prompt_tokens = prompt_tokens
        self.version = version
        self.tier: HistoryTier = tier
        self.sent_history = sent_history
        self.omitted = omitted
        self.timings = timings


class BaseAgent(AsyncClosing):
    """Runs turns of a conversation: history from ``memory``, a reply from ``model``.

    ``memory`` is an open `ConversationCache`, or a wrapper or substitute implementing
    `AgentMemory` (the agent neither opens nor closes it);
    it is required unless ``enable_conversation_memory=False``. ``context_files`` are
    read on each turn (concurrently, off the loop, cached by path, mtime and size).
    ``token_model`` names the model whose token counts bound the prompt: by default
    ``model.name``, which `TokenCounter` counts exactly for OpenAI, Llama 3 and Qwen
    models and estimates for others (pass e.g. ``token_model="gpt-4o"`` to count an
    `EchoModel` or a renamed deployment exactly). With ``rate_limits`` (a `RateLimiter`
    or any `AgentLimiter`), each turn
    first acquires ``prompt_tokens + reserve_output_tokens`` for ``model.name``.
    ``window_strategy="stable"`` sends cache-stable history windows (``retain_ratio``:
    `ConversationCache.window`), so that turns share the prefix providers cache;
    ``compaction`` (a `CompactionPolicy`) summarizes long threads in the background,
    after the reply. ``prompt_cache_key`` maps a thread id to the key requests are
    sent with (``cache_key``; OpenAI's ``prompt_cache_key``): by default the thread id;
    a function returning None sends none. The module's docs give the policies (budget,
    conflicts, failures). One agent may run many turns concurrently; ``aclose`` (or
    ``async with``) waits for its background compactions.
    """

    def __init__(
        self,
        model: ChatModel,
        memory: AgentMemory | None = None,
        *,
        system_prompt: str = "",
        context_files: Sequence[str | os.PathLike[str]] = (),
        max_context_tokens: int = DEFAULT_MAX_CONTEXT_TOKENS,
        reserve_output_tokens: int = DEFAULT_RESERVE_OUTPUT_TOKENS,
        rate_limits: AgentLimiter | None = None,
        enable_conversation_memory: bool = True,
        token_model: str | None = None,
        window_strategy: WindowStrategy = "sliding",
        retain_ratio: float = DEFAULT_RETAIN_RATIO,
        compaction: CompactionPolicy | None = None,
        prompt_cache_key: Callable[[str], str | None] | None = None,
    ) -> None:
        if not isinstance(model, ChatModel):
            raise ConfigurationError(
                f"model must implement ChatModel (OpenAIChatModel, EchoModel, ...), "
                f"got {type(model).__name__}"
            )
        if not isinstance(enable_conversation_memory, bool):
            raise ConfigurationError(
                f"enable_conversation_memory must be a bool, "
                f"got {quote(enable_conversation_memory)}"
            )
        if memory is not None and not isinstance(memory, AgentMemory):
            raise ConfigurationError(
                "memory must be a ConversationCache (or implement AgentMemory) or None, "
                f"got {type(memory).__name__}"
            )
        if enable_conversation_memory and memory is None:
            raise ConfigurationError(
                "memory is None: pass an open ConversationCache as memory, or "
                "enable_conversation_memory=False for stateless turns"
            )
        if rate_limits is not None and not isinstance(rate_limits, AgentLimiter):
            raise ConfigurationError(
                "rate_limits must be a RateLimiter (or implement AgentLimiter) or None, "
                f"got {type(rate_limits).__name__}"
            )
        if not isinstance(system_prompt, str):
            raise ConfigurationError(f"system_prompt must be a str, got {type(system_prompt)!r}")
        self._paths = _check_paths(context_files)
        try:
            check_count("max_context_tokens", max_context_tokens, minimum=2)
            check_count("reserve_output_tokens", reserve_output_tokens, minimum=1)
        except InvalidArgument as exc:
            raise ConfigurationError(str(exc)) from None
        if reserve_output_tokens >= max_context_tokens:
            raise ConfigurationError(
                f"reserve_output_tokens={reserve_output_tokens} leaves no room for the prompt "
                f"in max_context_tokens={max_context_tokens}: it must be smaller"
            )
        name = model.name if token_model is None else token_model
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(f"token_model must be a model name, got {quote(name)}")
        try:
            ratio = check_window_strategy(window_strategy, retain_ratio, name="window_strategy")
        except InvalidArgument as exc:
            raise ConfigurationError(str(exc)) from None
        if (
            ratio is not None
            and memory is not None
            and "strategy" not in inspect.signature(memory.read_window).parameters
        ):
            raise ConfigurationError(
                "window_strategy='stable' needs a memory whose read_window takes strategy= "
                f"(a ConversationCache); {type(memory).__name__}'s does not"
            )
        if compaction is not None and not isinstance(compaction, CompactionPolicy):
            raise ConfigurationError(
                f"compaction must be a CompactionPolicy or None, got {type(compaction).__name__}"
            )
        if compaction is not None and not isinstance(memory, CompactingMemory):
            raise ConfigurationError(
                "compaction needs a memory that compacts (a ConversationCache), got "
                f"{type(memory).__name__}"
            )
        if prompt_cache_key is not None and not callable(prompt_cache_key):
            raise ConfigurationError(
                "prompt_cache_key must be a callable (thread id -> key) or None"
            )
        self.model = model
        self.memory = memory if enable_conversation_memory else None
        self.window_strategy: WindowStrategy = window_strategy
        self.retain_ratio = retain_ratio if ratio is None else ratio
        self._cache_key = prompt_cache_key or _thread_key
        self._compactor = (
            None
            if compaction is None or self.memory is None
            else Compactor(compaction, cast(CompactingMemory, memory), name, rate_limits)
        )
        self.rate_limits = rate_limits
        self.max_context_tokens = max_context_tokens
        self.reserve_output_tokens = reserve_output_tokens
        self.token_model = name
        self._counter = TokenCounter.for_model(name)
        self._budget = max_context_tokens - reserve_output_tokens
        self._max_message_bytes = (
            self.memory.max_message_bytes if self.memory is not None else DEFAULT_MAX_MESSAGE_BYTES
        )
        self._system = (
            Message.from_dict({"role": "system", "content": system_prompt})
            if system_prompt
            else None
        )
        self._system_tokens = (
            0 if self._system is None else self._counter.count_message(self._system)
        )
        self._files = ContextFiles()

    @property
    def stateless(self) -> bool:
        """True when turns neither read nor write memory."""
        return self.memory is None

    async def run(self, thread_id: str, user_message: str | Mapping[str, Any]) -> AgentReply:
        """One turn: send the prompt, store the user message and the reply, return the reply.

        ``user_message`` is the text, or a user message dict (multi-part content, ...).
        Raises `ModelError` if the model failed (nothing is stored), `TokenBudgetExceeded`,
        `RateLimited`, `ContextFileError`, `TurnNotSaved`, or a typed validation error.
        """
        thread_id, user = self._check_turn(thread_id, user_message)
        turn = await self._prepare(thread_id, user)
        started = time.perf_counter()
        completion = await self.model.complete(
            turn.prompt,
            max_tokens=self.reserve_output_tokens,
            cache_key=self._cache_key(thread_id),
        )
        turn.timings["model"] = time.perf_counter() - started
        return await self._persist(turn, completion)

    def stream(self, thread_id: str, user_message: str | Mapping[str, Any]) -> AgentStream:
        """The turn of `run`, as text chunks; the reply is stored when the stream ends.

        Arguments are checked now; the turn starts on the first ``__anext__``. After
        the last chunk, ``stream.reply`` holds the `AgentReply`. A stream left before
        its end stores nothing: use ``async with agent.stream(...) as chunks:`` so an
        early exit also closes the model's connection.
        """
        thread_id, user = self._check_turn(thread_id, user_message)
        return AgentStream(lambda done: self._stream_turn(thread_id, user, done))

    # -- a turn ----------------------------------------------------------------------

    def _check_turn(self, thread_id: object, user_message: object) -> tuple[str, Message]:
        thread_id = check_thread_id(thread_id)
        if isinstance(user_message, str):
            item: Mapping[str, Any] = {"role": "user", "content": user_message}
        elif isinstance(user_message, Mapping):
            if user_message.get("role") != "user":
                raise InvalidMessage(
                    f"user_message must have role 'user', got {quote(user_message.get('role'))}"
                )
            item = user_message
        else:
            raise InvalidMessage(
                f"user_message must be a str or a user message dict, got {type(user_message)!r}"
            )
        content = item.get("content")
        if content is None or content == [] or (isinstance(content, str) and not content.strip()):
            raise InvalidMessage("user_message is empty: send some text")
        return thread_id, Message.from_dict(item, max_bytes=self._max_message_bytes)

    async def _prepare(self, thread_id: str, user: Message) -> _Turn:
        clock = time.perf_counter
        timings: dict[str, float] = {}
        started = clock()
        files = await self._files.load(self._paths, self._counter) if self._paths else ()
        timings["context"] = clock() - started

        started = clock()
        if len(user.raw) > _INLINE_COUNT_BYTES:
            user_tokens = await asyncio.to_thread(self._counter.count_message, user)
        else:
            user_tokens = self._counter.count_message(user)
        key = self._counter.key
        fixed = self._system_tokens + sum(file.tokens[key] for file in files) + user_tokens
        # What the history window may bill: it counts reply priming (once per request).
        room = self._budget - fixed
        priming = self._counter.reply_priming
        if room < max(priming, 1):
            raise self._over_budget(fixed + priming, user_tokens, files)
        timings["build"] = clock() - started

        started = clock()
        history: tuple[Message, ...] = ()
        history_tokens, version, omitted = priming, None, 0
        tier: HistoryTier = "none"
        check: WindowCheck | None = None
        if self.memory is not None:
            history, history_tokens, version, omitted, tier, check = await self._history(
                thread_id, room, user_tokens
            )
        timings["history"] = clock() - started

        started = clock()
        prompt = [*_head(self._system, files), *history, user]
        timings["build"] += clock() - started
        prompt_tokens = fixed + history_tokens

        if self.rate_limits is not None:
            started = clock()
            await self.rate_limits.acquire(
                self.model.name, prompt_tokens + self.reserve_output_tokens
            )
            timings["rate_limit"] = clock() - started
        return _Turn(
            thread_id,
            user,
            prompt,
            prompt_tokens,
            version,
            tier,
            len(history),
            omitted,
            timings,
            check,
        )

    async def _history(
        self, thread_id: str, room: int, user_tokens: int
    ) -> tuple[tuple[Message, ...], int, int, int, HistoryTier, WindowCheck | None]:
        """Messages, their billed tokens (reply priming included), version, omitted count,
        the tier that served them and, for a stable window, what compaction checks."""
        assert self.memory is not None
        check = None
        try:
            if self.window_strategy == "stable":
                # The user message is the window's pending part, so that the budget the
                # cut is replayed with is the same on every turn.
                memory = cast(CompactingMemory, self.memory)
                read = await memory.read_window(
                    thread_id,
                    max_tokens=room + user_tokens,
                    model=self.token_model,
                    strategy="stable",
                    retain_ratio=self.retain_ratio,
                    pending_tokens=user_tokens,
                )
                check = WindowCheck(
                    read.value.cut,
                    read.value.token_count,
                    room + user_tokens,
                    self.token_model,
                    self.retain_ratio,
                )
            else:
                read = await self.memory.read_window(
                    thread_id, max_tokens=room, model=self.token_model
                )
        except TokenBudgetExceeded:
            # The newest message (or tool call and results) can't fit: fall back to the
            # pinned messages rather than fail every later turn of the thread.
            served = await self.memory.read(thread_id)
            conversation = served.value
            pinned = tuple(m for m in conversation.messages if m.role in _PINNED_ROLES)
            tokens = self._counter.reply_priming + sum(map(self._counter.count_message, pinned))
            if tokens > room:
                raise TokenBudgetExceeded(
                    f"the thread's system messages need {tokens} tokens but only {room} are "
                    f"left for history in the budget of {self._budget} "
                    "(max_context_tokens - reserve_output_tokens) after the system prompt, "
                    "context files and user message; raise max_context_tokens",
                    needed=self._budget - room + tokens,
                    max_tokens=self._budget,
                ) from None
            omitted = len(conversation) - len(pinned)
            return pinned, tokens, conversation.version, omitted, served.source, None
        window = read.value
        return (
            window.messages,
            window.token_count,
            window.version,
            window.omitted,
            read.source,
            check,
        )

    def _over_budget(
        self, needed: int, user_tokens: int, files: Sequence[ContextFile]
    ) -> TokenBudgetExceeded:
        key = self._counter.key
        parts = [f"system prompt {self._system_tokens}", f"user message {user_tokens}"]
        parts += [f"context file {file.path} {file.tokens[key]}" for file in files]
        return TokenBudgetExceeded(
            f"the prompt's fixed parts need {needed} tokens (reply priming included), over "
            f"the budget of {self._budget} = max_context_tokens {self.max_context_tokens} - "
            f"reserve_output_tokens {self.reserve_output_tokens}; tokens by part: "
            f"{', '.join(parts)}; shorten or drop the largest, or raise max_context_tokens",
            needed=needed,
            max_tokens=self._budget,
        )

    async def _stream_turn(
        self, thread_id: str, user: Message, done: Callable[[AgentReply], None]
    ) -> AsyncGenerator[str, None]:
        turn = await self._prepare(thread_id, user)
        started = time.perf_counter()
        completion: Completion | None = None
        async with self.model.stream(
            turn.prompt, max_tokens=self.reserve_output_tokens, cache_key=self._cache_key(thread_id)
        ) as events:
            async for event in events:
                if isinstance(event, str):
                    yield event
                else:
                    completion = event
        turn.timings["model"] = time.perf_counter() - started
        if completion is None:
            raise ModelError(
                f"the stream of {self.model!r} ended without its Completion; nothing was "
                "stored: send the message again",
                status=None,
                error_type="invalid_response",
                retryable=True,
            )
        done(await self._persist(turn, completion))

    async def _persist(self, turn: _Turn, completion: Completion) -> AgentReply:
        started = time.perf_counter()
        version, conflicted = None, False
        key = uuid.uuid4().hex
        if self.memory is not None:
            try:
                try:
                    version = await self.memory.append(
                        turn.thread_id,
                        [turn.user, completion.message],
                        expected_version=turn.version,
                        idempotency_key=key,
                    )
                except VersionConflict:
                    # Another writer got in first: keep both, ours on top of theirs.
                    conflicted = True
                    version = await self.memory.append(
                        turn.thread_id, [turn.user, completion.message], idempotency_key=key
                    )
            except AgentCoreError as exc:
                turn.timings["persist"] = time.perf_counter() - started
                raise TurnNotSaved(
                    turn.thread_id,
                    reply=self._reply(turn, completion, None, conflicted),
                    messages=[turn.user.to_dict(), completion.message],
                    idempotency_key=key,
                    cause=exc,
                ) from exc
        turn.timings["persist"] = time.perf_counter() - started
        if self._compactor is not None:
            self._compactor.after_turn(turn.thread_id, turn.check)
        return self._reply(turn, completion, version, conflicted)

    def _reply(
        self, turn: _Turn, completion: Completion, version: int | None, conflicted: bool
    ) -> AgentReply:
        return AgentReply(
            thread_id=turn.thread_id,
            text=completion.text,
            message=completion.message,
            usage=completion.usage,
            finish_reason=completion.finish_reason,
            version=version,
            history_tier=turn.tier,
            prompt_tokens=turn.prompt_tokens,
            history_messages=turn.sent_history,
            history_omitted=turn.omitted,
            conflicted=conflicted,
            timings=turn.timings,
        )

    @property
    def compaction_stats(self) -> CompactionStats | None:
        """What background compactions did (None without a `CompactionPolicy`)."""
        return None if self._compactor is None else self._compactor.stats

    async def aclose(self) -> None:
        """Wait for the background compactions started so far (the memory and the model
        stay open: the agent does not own them). Serverless handlers call it before
        returning, since a frozen instance runs no background task."""
        if self._compactor is not None:
            await self._compactor.wait()

    def __repr__(self) -> str:
        return (
            f"BaseAgent(model={self.model!r}, stateless={self.stateless}, "
            f"max_context_tokens={self.max_context_tokens}, "
            f"reserve_output_tokens={self.reserve_output_tokens})"
        )


@final
class AgentStream(AsyncClosing):
    """A streamed turn: the reply's text chunks; ``reply`` once the stream has ended."""

    __slots__ = ("_events", "_reply")

    def __init__(
        self,
        start: Callable[[Callable[[AgentReply], None]], AsyncGenerator[str, None]],
    ) -> None:
        self._reply: AgentReply | None = None
        self._events = start(self._finished)

    def _finished(self, reply: AgentReply) -> None:
        self._reply = reply

    @property
    def reply(self) -> AgentReply | None:
        """The stored turn's `AgentReply`; None until the stream has ended."""
        return self._reply

    def __aiter__(self) -> AgentStream:
        return self

    async def __anext__(self) -> str:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        """Stop the turn (nothing is stored unless it had ended) and close the model's stream."""
        await self._events.aclose()


def _thread_key(thread_id: str) -> str:
    return thread_id


def _head(system: Message | None, files: Sequence[ContextFile]) -> list[Message]:
    head = [] if system is None else [system]
    head += (file.message for file in files)
    return head


def _check_paths(paths: object) -> tuple[str | os.PathLike[str], ...]:
    if isinstance(paths, str | bytes | os.PathLike) or not isinstance(paths, Sequence):
        raise ConfigurationError(
            f"context_files must be a sequence of paths (str or Path), got {quote(paths)}"
        )
    for path in paths:
        if not isinstance(path, str | os.PathLike) or not os.fspath(path):
            raise ConfigurationError(
                f"context_files holds {quote(path)}: each must be a non-empty str or Path"
            )
    return tuple(paths)
