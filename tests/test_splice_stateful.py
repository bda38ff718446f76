"""A Hypothesis state machine: appends, splices, pops, forks, purges, expiries and sweeps
on a cache over each store, checked against a plain list per thread (and versions that
never go back)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from agent_core import ConversationCache, ThreadExists

THREADS = st.sampled_from(["a", "b", "c"])
EXPIRED = datetime(2001, 1, 1, tzinfo=UTC)
INDEX = st.none() | st.integers(-8, 8)
WORDS = st.lists(st.text("xyz", min_size=1, max_size=3), max_size=4)


def run_machine(store_url: str) -> None:
    class Lifecycle(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.loop = asyncio.new_event_loop()
            self.cache = ConversationCache.from_urls(
                store=store_url, namespace=f"ns-{uuid.uuid4().hex[:12]}"
            )
            self.run(self.cache.open())
            self.model: dict[str, list[str]] = {"a": [], "b": [], "c": []}
            self.versions: dict[str, int] = {"a": 0, "b": 0, "c": 0}

        def run(self, coroutine: Any) -> Any:
            return self.loop.run_until_complete(coroutine)

        def teardown(self) -> None:
            self.run(self.cache.close())
            self.loop.close()

        def moved(self, thread_id: str, version: int) -> None:
            assert version >= self.versions[thread_id], "a version went back"
            self.versions[thread_id] = version

        @initialize()
        def start(self) -> None:
            pass

        @rule(thread_id=THREADS, words=WORDS.filter(bool))
        def append(self, thread_id: str, words: list[str]) -> None:
            version = self.run(self.cache.append(thread_id, [_user(w) for w in words]))
            assert version == self.versions[thread_id] + len(words)
            self.model[thread_id] += words
            self.moved(thread_id, version)

        @rule(thread_id=THREADS, start=INDEX, stop=INDEX, words=WORDS)
        def splice(
            self, thread_id: str, start: int | None, stop: int | None, words: list[str]
        ) -> None:
            before = self.versions[thread_id]
            version = self.run(
                self.cache.splice(
                    thread_id, start, stop, [_user(w) for w in words], expected_version=before
                )
            )
            changed = bool(self.model[thread_id][start:stop] or words)
            assert version == (before + max(1, len(words)) if changed else before)
            self.model[thread_id][start:stop] = words
            self.moved(thread_id, version)

        @rule(thread_id=THREADS)
        def pop(self, thread_id: str) -> None:
            popped = self.run(self.cache.pop(thread_id))
            held = self.model[thread_id]
            if not held:
                assert popped is None
                return
            assert popped is not None
            assert popped.to_dict() == _user(held.pop())
            self.moved(thread_id, self.versions[thread_id] + 1)

        @rule(source=THREADS, into=THREADS)
        def fork(self, source: str, into: str) -> None:
            target = into
            if source == target:
                return
            if self.model[target]:
                try:
                    self.run(self.cache.fork(source, target))
                except ThreadExists:
                    return
                raise AssertionError("a fork over a thread with messages went through")
            version = self.run(self.cache.fork(source, target))
            assert version == max(self.versions[source], self.versions[target] + 1)
            self.model[target] = list(self.model[source])
            self.moved(target, version)

        @rule(thread_id=THREADS)
        def purge(self, thread_id: str) -> None:
            version = self.run(self.cache.purge(thread_id))
            self.model[thread_id] = []
            self.moved(thread_id, version)

        @rule(thread_id=THREADS)
        def expire(self, thread_id: str) -> None:
            """Past its expiry a thread reads as deleted, at its version + 1."""
            self.run(self.cache.update_thread(thread_id, expires_at=EXPIRED))
            self.model[thread_id] = []
            self.moved(thread_id, self.versions[thread_id] + 1)

        @rule()
        def sweep(self) -> None:
            self.run(self.cache.sweep_expired())

        @rule()
        def forget_local(self) -> None:
            self.cache.clear_local()

        @invariant()
        def every_thread_reads_as_the_model(self) -> None:
            for thread_id, words in self.model.items():
                conversation = self.run(self.cache.get(thread_id))
                assert conversation.version == self.versions[thread_id]
                assert [m.to_dict() for m in conversation.messages] == [_user(w) for w in words]

    run_state_machine_as_test(
        Lifecycle,
        settings=settings(
            max_examples=25,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def test_lifecycle_matches_a_list_model(store_url: str) -> None:
    run_machine(store_url)
