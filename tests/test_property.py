"""Stateful property test: `ConversationCache` on each real store against a plain model.

Hypothesis runs random sequences of appends (with and without ``expected_version`` and
idempotency keys, retried and reused), gets, ranged reads, version lookups, deletes and
paged listings through a cache over SQLite and over PostgreSQL, and checks every answer,
and every error, against an in-memory model of the contract in ``store/_protocol.py``.

Each example gets two fresh namespaces that share thread ids and differ only in letter
case, so any leak between namespaces shows up as a mismatch with the model.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

from agent_core import (
    ConversationCache,
    IdempotencyKeyReused,
    InvalidMessage,
    Message,
    VersionConflict,
)

_T = TypeVar("_T")

# Thread ids whose byte ("C") order differs from a locale's order: '-' < '.' < digits
# < ':' < '@' < upper case < '_' < lower case.
THREAD_IDS = ("alpha", "Beta", "alpha-2", "alpha.2", "_x", "9@z:1", "Z" * 200)
# Cursors for list_threads that are not thread ids of the model.
LIST_STARTS = (*THREAD_IDS, "A", "alpha-", "zzz", "-")
IDEMPOTENCY_KEYS = ("k1", "k2", "ключ-🔑", "retry 7")

SETTINGS = settings(
    max_examples=35,
    stateful_step_count=30,
    deadline=None,
    derandomize=True,
    database=None,
    # Every step talks to a real database; on a loaded machine that can look "slow".
    suppress_health_check=[HealthCheck.too_slow],
)

# -- messages ---------------------------------------------------------------------------

SAMPLE_TEXT = (
    "",
    "hello",
    "你好\uff0c世界",
    "日本語のテキスト",
    "한국어",
    "👩‍👩‍👧‍👦🚀🔥",
    "e\u0301 combining",
    "مرحبا بالعالم",
    "line\u2028separator",
    "nul\x00byte\x1f",
    'quote " back \\ slash /',
)
texts = st.one_of(st.sampled_from(SAMPLE_TEXT), st.text(st.characters(codec="utf-8"), max_size=12))
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(texts, children, max_size=3)
    ),
    max_leaves=6,
)
json_text = json_values.map(lambda value: orjson.dumps(value).decode())
call_ids = st.sampled_from(("call_1", "call_2", "fc_あ"))
tool_names = st.sampled_from(("get_weather", "search", "天気"))

chat_messages = st.fixed_dictionaries(
    {
        "role": st.sampled_from(("system", "developer", "user", "assistant")),
        "content": st.one_of(
            texts,
            st.lists(
                st.fixed_dictionaries({"type": st.just("text"), "text": texts}),
                min_size=1,
                max_size=2,
            ),
        ),
    },
    optional={"name": texts, "metadata": json_values},
)
tool_call_messages = st.fixed_dictionaries(
    {
        "role": st.just("assistant"),
        "content": st.none(),
        "tool_calls": st.lists(
            st.fixed_dictionaries(
                {
                    "id": call_ids,
                    "type": st.just("function"),
                    "function": st.fixed_dictionaries({"name": tool_names, "arguments": json_text}),
                }
            ),
            min_size=1,
            max_size=2,
        ),
    }
)
function_calls = st.fixed_dictionaries(
    {
        "type": st.just("function_call"),
        "call_id": call_ids,
        "name": tool_names,
        "arguments": json_text,
    },
    optional={"status": st.just("completed")},
)
function_call_outputs = st.fixed_dictionaries(
    {"type": st.just("function_call_output"), "call_id": call_ids, "output": texts}
)
response_messages = st.fixed_dictionaries(
    {
        "type": st.just("message"),
        "role": st.just("assistant"),
        "content": st.lists(
            st.fixed_dictionaries(
                {"type": st.just("output_text"), "text": texts, "annotations": st.just([])}
            ),
            max_size=2,
        ),
    }
)
reasoning_items = st.fixed_dictionaries(
    {
        "type": st.just("reasoning"),
        "summary": st.lists(
            st.fixed_dictionaries({"type": st.just("summary_text"), "text": texts}), max_size=2
        ),
        "extra": json_values,
    }
)
messages = st.one_of(
    chat_messages,
    tool_call_messages,
    function_calls,
    function_call_outputs,
    response_messages,
    reasoning_items,
)
batches = st.lists(messages, min_size=1, max_size=3)
# What a retried idempotency key sends, relative to the batch that key applied.
RetryKind = Literal["same", "reversed", "extended", "truncated", "different"]
retry_kinds: st.SearchStrategy[RetryKind] = st.sampled_from(
    ("same", "same", "reversed", "reversed", "extended", "truncated", "different")
)
# How an append gets to the store: through the cache as dicts or `Message`s, or directly.
Via = Literal["dicts", "messages", "store"]
vias: st.SearchStrategy[Via] = st.sampled_from(("dicts", "messages", "store"))
Cas = Literal["none", "correct", "wrong"]
cas_modes: st.SearchStrategy[Cas] = st.sampled_from(("none", "correct", "wrong"))
wrong_offsets = st.sampled_from((-3, -2, -1, 1, 2, 3))

# -- the model --------------------------------------------------------------------------

Outcome = tuple[Literal["applied", "replayed", "conflict", "reused", "invalid"], int]


@dataclass
class StoredMessage:
    seq: int
    item: dict[str, Any]
    raw: bytes


@dataclass
class ThreadModel:
    version: int = 0
    messages: list[StoredMessage] = field(default_factory=list)
    # idempotency key -> (version its first use produced, the batch's encoded messages)
    keys: dict[str, tuple[int, tuple[bytes, ...]]] = field(default_factory=dict)

    def append(
        self, batch: Sequence[dict[str, Any]], expected_version: int | None, key: str | None
    ) -> Outcome:
        raws = tuple(orjson.dumps(item) for item in batch)
        if key is not None and key in self.keys:
            prior_version, prior_raws = self.keys[key]
            return ("replayed", prior_version) if prior_raws == raws else ("reused", prior_version)
        if expected_version is not None and expected_version != self.version:
            return ("conflict", self.version)
        for item, raw in zip(batch, raws, strict=True):
            self.version += 1
            self.messages.append(StoredMessage(self.version, item, raw))
        if key is not None:
            self.keys[key] = (self.version, raws)
        return ("applied", self.version)

    def delete(self) -> int:
        # Deleting a thread with no messages (never written, or already deleted)
        # changes nothing; both stores agree on that.
        if self.messages:
            self.version += 1
            self.messages.clear()
            self.keys.clear()
        return self.version

    def read(self, after: int, last: int | None) -> list[StoredMessage]:
        selected = [m for m in self.messages if m.seq > after]
        if last is not None:
            selected = selected[max(len(selected) - last, 0) :]
        return selected


# -- the machine ------------------------------------------------------------------------


class CacheModelMachine(RuleBasedStateMachine):
    store_url: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        base = uuid.uuid4().hex
        # Two namespaces that differ only in case, with the same thread ids.
        self.namespaces = (f"prop-{base}", f"PROP-{base}")
        self.caches: list[ConversationCache] = []
        self.models: tuple[dict[str, ThreadModel], ...] = ({}, {})
        # (namespace index, thread id, key) -> the batch that key last applied, kept
        # across deletes, so that retries (and retries after a delete) happen.
        self.applied_batches: dict[tuple[int, str, str], list[dict[str, Any]]] = {}
        for name in self.namespaces:
            # Strong: appends made straight to the store must show at the next read.
            cache = ConversationCache.from_urls(
                store=self.store_url, namespace=name, consistency="strong"
            )
            self.run(cache.open())
            self.caches.append(cache)

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return self.runner.run(coroutine)

    def teardown(self) -> None:
        try:
            for cache in self.caches:
                self.run(cache.close())
        finally:
            self.runner.close()

    def model(self, ns: int, thread_id: str) -> ThreadModel:
        return self.models[ns].setdefault(thread_id, ThreadModel())

    def expected_version_for(self, ns: int, thread_id: str, cas: Cas, wrong_by: int) -> int | None:
        version = self.model(ns, thread_id).version
        if cas == "none":
            return None
        if cas == "correct":
            return version
        return version + wrong_by if version + wrong_by >= 0 else version - wrong_by

    def do_append(
        self,
        ns: int,
        thread_id: str,
        batch: list[dict[str, Any]],
        expected_version: int | None,
        key: str | None,
        via: Via,
        *,
        poisoned: bool,
    ) -> None:
        """Append through the cache (dicts or `Message`s) or the store; compare with the model."""
        model = self.model(ns, thread_id)
        if poisoned and via != "store":
            expected: Outcome = ("invalid", model.version)
        else:
            expected = model.append(batch, expected_version, key)
        if expected[0] == "applied" and key is not None:
            self.applied_batches[ns, thread_id, key] = batch
        outcome: Outcome
        error_fields: tuple[object, ...] = ()
        try:
            if via == "store":
                payloads = [orjson.dumps(item) for item in batch]
                result = self.run(
                    self.caches[ns].store.append(
                        self.namespaces[ns],
                        thread_id,
                        payloads,
                        expected_version=expected_version,
                        idempotency_key=key,
                    )
                )
                outcome = ("applied" if result.applied else "replayed", result.version)
            else:
                sent: list[dict[str, Any] | Message] = list(batch)
                if via == "messages":
                    sent = [Message.from_dict(item) for item in batch]
                if poisoned:
                    # One invalid message in the batch: the whole batch is refused.
                    sent.insert(len(sent) // 2 + 1, {"role": "robot", "content": "不正"})
                version = self.run(
                    self.caches[ns].append(
                        thread_id, sent, expected_version=expected_version, idempotency_key=key
                    )
                )
                # The cache returns only the version; a replay returns the first use's.
                outcome = ("replayed" if expected[0] == "replayed" else "applied", version)
        except VersionConflict as exc:
            outcome = ("conflict", exc.actual)
            error_fields = (exc.thread_id, exc.expected)
        except IdempotencyKeyReused as exc:
            outcome = ("reused", exc.version)
            error_fields = (exc.thread_id, exc.key)
        except InvalidMessage:
            outcome = ("invalid", model.version)
        assert outcome == expected
        if outcome[0] == "conflict":
            assert error_fields == (thread_id, expected_version)
        elif outcome[0] == "reused":
            assert error_fields == (thread_id, key)
        self.check_thread(ns, thread_id)

    def pick_thread(self, data: st.DataObject) -> tuple[int, str]:
        """A thread of either namespace; two times in three one that has messages."""
        anywhere = st.tuples(st.integers(0, 1), st.sampled_from(THREAD_IDS))
        written = [(ns, t) for ns in (0, 1) for t in self.non_empty(ns)]
        if written:
            return data.draw(st.sampled_from(written) | st.sampled_from(written) | anywhere)
        return data.draw(anywhere)

    def do_delete(self, ns: int, thread_id: str) -> None:
        expected = self.model(ns, thread_id).delete()
        assert self.run(self.caches[ns].delete(thread_id)) == expected
        self.check_thread(ns, thread_id)

    def check_thread(self, ns: int, thread_id: str) -> None:
        """The store holds exactly what the model says (also after a rejected call)."""
        model = self.model(ns, thread_id)
        store, namespace = self.caches[ns].store, self.namespaces[ns]
        records = self.run(store.read(namespace, thread_id))
        assert records.version == model.version
        assert records.seqs == tuple(m.seq for m in model.messages)
        assert records.payloads == tuple(m.raw for m in model.messages)
        assert self.run(store.version(namespace, thread_id)) == model.version

    def non_empty(self, ns: int) -> list[str]:
        return sorted(t for t, m in self.models[ns].items() if m.messages)

    # -- rules -----------------------------------------------------------------------

    @initialize(
        appends=st.lists(
            st.tuples(
                st.integers(0, 1),
                st.sampled_from(THREAD_IDS),
                batches,
                st.none() | st.sampled_from(IDEMPOTENCY_KEYS),
            ),
            max_size=10,
        )
    )
    def populate(self, appends: list[tuple[int, str, list[dict[str, Any]], str | None]]) -> None:
        """Start from some written threads and used keys: hypothesis turns some rules off
        per example (swarm testing), and most rules need threads to work on."""
        for ns, thread_id, batch, key in appends:
            self.do_append(ns, thread_id, batch, None, key, "dicts", poisoned=False)

    @rule(
        ns=st.integers(0, 1),
        thread_id=st.sampled_from(THREAD_IDS),
        batch=batches,
        cas=cas_modes,
        wrong_by=wrong_offsets,
        key=st.none() | st.sampled_from(IDEMPOTENCY_KEYS),
        via=vias,
        poisoned=st.integers(0, 9),
    )
    def append(
        self,
        ns: int,
        thread_id: str,
        batch: list[dict[str, Any]],
        cas: Cas,
        wrong_by: int,
        key: str | None,
        via: Via,
        poisoned: int,
    ) -> None:
        expected_version = self.expected_version_for(ns, thread_id, cas, wrong_by)
        self.do_append(ns, thread_id, batch, expected_version, key, via, poisoned=poisoned == 0)

    @precondition(lambda self: bool(self.applied_batches))
    @rule(
        data=st.data(),
        retry=retry_kinds,
        other=batches,
        cas=cas_modes,
        wrong_by=wrong_offsets,
        first=st.sampled_from(("nothing", "nothing", "append", "delete")),
        via=vias,
    )
    def retry_append(
        self,
        data: st.DataObject,
        retry: RetryKind,
        other: list[dict[str, Any]],
        cas: Cas,
        wrong_by: int,
        first: Literal["nothing", "append", "delete"],
        via: Via,
    ) -> None:
        """Send a key again: the batch it applied, or a different one. Maybe after
        another append (the replay must still answer the version the key produced) or a
        delete (which forgets the key), and maybe with an expected_version."""
        ns, thread_id, key = data.draw(st.sampled_from(sorted(self.applied_batches)), "target")
        prior = self.applied_batches[ns, thread_id, key]
        if first == "append":
            self.do_append(ns, thread_id, other, None, None, "dicts", poisoned=False)
        elif first == "delete":
            self.do_delete(ns, thread_id)
        batch = {
            "same": prior,
            # (a single message cannot be reordered: put another one before it)
            "reversed": prior[::-1] if len(prior) > 1 else [other[0], *prior],
            "extended": [*prior, other[0]],
            "truncated": prior[:-1] or other,
            "different": other,
        }[retry]
        expected_version = self.expected_version_for(ns, thread_id, cas, wrong_by)
        self.do_append(ns, thread_id, batch, expected_version, key, via, poisoned=False)

    @rule(data=st.data())
    def get(self, data: st.DataObject) -> None:
        ns, thread_id = self.pick_thread(data)
        model = self.model(ns, thread_id)
        conversation = self.run(self.caches[ns].get(thread_id))
        assert conversation.thread_id == thread_id
        assert conversation.version == model.version
        assert len(conversation) == len(model.messages)
        assert conversation.to_list() == [m.item for m in model.messages]
        assert [m.raw for m in conversation.messages] == [m.raw for m in model.messages]
        assert [m.to_dict() for m in conversation.messages] == [m.item for m in model.messages]

    @rule(data=st.data(), last=st.one_of(st.none(), st.just(0), st.integers(1, 4)))
    def read(self, data: st.DataObject, last: int | None) -> None:
        ns, thread_id = self.pick_thread(data)
        model = self.model(ns, thread_id)
        # Every boundary that matters: 0, each seq and the one before it, past the end.
        afters = {0, model.version, model.version + 1}
        afters.update(n for m in model.messages for n in (m.seq - 1, m.seq))
        after = data.draw(st.sampled_from(sorted(afters)), label="after")
        records = self.run(
            self.caches[ns].store.read(self.namespaces[ns], thread_id, after=after, last=last)
        )
        expected = model.read(after, last)
        assert records.version == model.version
        assert records.seqs == tuple(m.seq for m in expected)
        assert records.payloads == tuple(m.raw for m in expected)
        assert [orjson.loads(p) for p in records.payloads] == [m.item for m in expected]

    @rule(data=st.data())
    def version(self, data: st.DataObject) -> None:
        ns, thread_id = self.pick_thread(data)
        version = self.run(self.caches[ns].store.version(self.namespaces[ns], thread_id))
        assert version == self.model(ns, thread_id).version

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        self.do_delete(*self.pick_thread(data))

    @rule(
        ns=st.integers(0, 1),
        limit=st.integers(1, 4),
        start=st.none() | st.sampled_from(LIST_STARTS),
    )
    def list_threads(self, ns: int, limit: int, start: str | None) -> None:
        cache = self.caches[ns]
        listed: list[str] = []
        after = start
        for page_number in range(len(THREAD_IDS) + 2):
            page = self.run(cache.list_threads(limit=limit, after=after))
            assert len(page.thread_ids) <= limit
            assert page_number == 0 or page.thread_ids  # a cursor never leads to nothing
            listed.extend(page.thread_ids)
            if page.next_cursor is None:
                break
            assert len(page.thread_ids) == limit
            assert page.next_cursor == page.thread_ids[-1]
            after = page.next_cursor
        else:
            raise AssertionError(f"list_threads did not end: {listed}")
        assert listed == [t for t in self.non_empty(ns) if start is None or t > start]

    @rule()
    def check_everything(self) -> None:
        for ns in (0, 1):
            for thread_id in THREAD_IDS:
                self.check_thread(ns, thread_id)
            page = self.run(self.caches[ns].list_threads(limit=1000))
            assert (list(page.thread_ids), page.next_cursor) == (self.non_empty(ns), None)


def test_cache_matches_model(store_url: str) -> None:
    class Machine(CacheModelMachine):
        pass

    Machine.store_url = store_url
    run_state_machine_as_test(Machine, settings=SETTINGS)
