"""The Phase-1 baseline that ``agent-core bench`` holds agent-core's turns against.

The seed promises a 70-80 % lower turn latency (everything but the model call) than a
first, naive memory layer. That layer is `Phase1Turns`: on every turn it reads the whole
thread from the store (no L1, no L2), decodes every message and counts its tokens afresh
with the agent's tokenizer (no stored counts), drops the oldest messages until the rest
fits the agent's budget, calls the model, and appends the user message and the reply.

It reads the very threads that the agent-core side reads (same store, same namespace,
same rows), so both sides see the same history. It writes its pair to a thread of the
same id in a namespace of its own (``<namespace>-p1``) with the same compare-and-append
and idempotency key as the agent: writing into the agent's thread would make every
agent-core turn after it a stale L1 entry and a version conflict, which is not what the
comparison measures.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import orjson

from .._closing import AsyncClosing
from ..agent import BaseAgent
from ..messages import (
    DEFAULT_MAX_BATCH_MESSAGES,
    DEFAULT_MAX_MESSAGE_BYTES,
    Message,
    encode_batch,
    trusted_message,
)
from ..store import store_from_url
from ..tokens import TokenCounter

__all__ = ["Comparison", "Phase1Turns", "baseline_namespace"]

#: The baseline's own namespace is the run's plus this.
_SUFFIX: Final = "-p1"


def baseline_namespace(namespace: str) -> str:
    """Where the baseline writes its appends: beside the run's namespace."""
    return namespace + _SUFFIX


@dataclass(slots=True)
class Comparison:
    """Paired turns, one entry per trace turn: seconds of everything but the model call."""

    agent_core: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    #: The baseline's parts: the store read, decoding and counting (with the trim and
    #: the prompt), and the append.
    read: list[float] = field(default_factory=list)
    count: list[float] = field(default_factory=list)
    write: list[float] = field(default_factory=list)
    #: Messages the baseline read and counted, and how many of them it sent.
    messages: list[int] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)
    #: Agent-core's parts (`AgentReply.timings`): the history window and the append.
    agent_history: list[float] = field(default_factory=list)
    agent_persist: list[float] = field(default_factory=list)
    #: Messages agent-core's window sent on the same turn.
    agent_sent: list[int] = field(default_factory=list)
    #: Wall-clock seconds of the whole comparison (both sides and the model calls).
    seconds: float = 0.0


class Phase1Turns(AsyncClosing):
    """Turns the naive way, over its own connection to the store: see the module's docs.

    ``agent`` lends its model, token model and budget, so both sides build the same
    prompt within the same limits. ``versions`` holds the versions of the baseline's own
    threads, across instances (bookkeeping for its compare-and-append, not timed work).
    """

    __slots__ = ("_agent", "_counter", "_namespace", "_store", "_versions")

    def __init__(
        self, url: str, namespace: str, agent: BaseAgent, versions: dict[str, int]
    ) -> None:
        self._store = store_from_url(url)
        self._namespace = namespace
        self._agent = agent
        self._counter = TokenCounter.for_model(agent.token_model)
        self._versions = versions

    async def _enter(self) -> None:
        await self._store.open()

    async def aclose(self) -> None:
        await self._store.close()

    async def turn(self, thread_id: str, text: str, into: Comparison) -> None:
        """One turn on ``thread_id``; its timings go ``into`` the comparison."""
        clock = time.perf_counter
        agent, counter = self._agent, self._counter
        started = clock()
        user = Message.from_dict({"role": "user", "content": text})
        records = await self._store.read(self._namespace, thread_id)
        read = clock()
        counts = [counter.count_message(orjson.loads(payload)) for payload in records.payloads]
        room = agent.max_context_tokens - agent.reserve_output_tokens
        room -= counter.count_message(user)
        total, cut = counter.reply_priming + sum(counts), 0
        while cut < len(counts) and total > room:
            total -= counts[cut]
            cut += 1
        prompt = [*map(trusted_message, records.payloads[cut:]), user]
        counted = clock()
        completion = await agent.model.complete(prompt, max_tokens=agent.reserve_output_tokens)
        answered = clock()
        await self._append(thread_id, [user, completion.message])
        done = clock()
        into.read.append(read - started)
        into.count.append(counted - read)
        into.write.append(done - answered)
        into.baseline.append(counted - started + done - answered)
        into.messages.append(len(counts))
        into.sent.append(len(counts) - cut)

    async def _append(
        self, thread_id: str, messages: Sequence[Message | dict[str, object]]
    ) -> None:
        payloads = encode_batch(
            messages,
            max_message_bytes=DEFAULT_MAX_MESSAGE_BYTES,
            max_batch_messages=DEFAULT_MAX_BATCH_MESSAGES,
        )
        result = await self._store.append(
            baseline_namespace(self._namespace),
            thread_id,
            payloads,
            expected_version=self._versions.get(thread_id, 0),
            idempotency_key=uuid.uuid4().hex,
        )
        self._versions[thread_id] = result.version
