"""The L1 eviction policies against a plain model of the keys they keep.

Hypothesis drives both policies through random puts, reads, removes, resizes and clears
and checks the accounting the L1 tier relies on after every step.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_core.cache._policy import EvictionPolicy, LRUPolicy
from agent_core.cache._tinylfu import WTinyLFUPolicy, _FrequencySketch

POLICIES: list[Callable[[int], EvictionPolicy]] = [LRUPolicy, WTinyLFUPolicy]
SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, database=None)

KEYS = st.sampled_from([f"thread-{index}" for index in range(6)])
CAPACITIES = st.integers(0, 200)
Operation = tuple[str] | tuple[str, object] | tuple[str, object, object]


def _operation(roll: int, key: str, weight: int, capacity: int) -> Operation:
    # Mostly puts and reads, so that the policies fill up, promote and evict.
    if roll < 40:
        return ("put", key, weight)
    if roll < 80:
        return ("read", key)
    if roll < 90:
        return ("remove", key)
    if roll < 97:
        return ("resize", capacity)
    return ("clear",)


OPERATIONS = st.lists(
    st.builds(_operation, st.integers(0, 99), KEYS, st.integers(1, 80), CAPACITIES),
    min_size=10,
    max_size=120,
)


def drop(policy: EvictionPolicy, kept: dict[Hashable, int], evicted: list[Hashable]) -> None:
    """Apply evictions to the model; each key must have been kept, and now be forgotten."""
    assert len(set(evicted)) == len(evicted), evicted
    for key in evicted:
        del kept[key]
        before = policy.total
        policy.remove(key)
        assert policy.total == before, f"{key!r} was evicted but is still weighed"


def check_segments(policy: WTinyLFUPolicy) -> None:
    """Each segment's running total is the sum of its weights, protected stays within its
    share, and no key is in two segments."""
    assert policy.invariant_violations() == []


@pytest.mark.parametrize("factory", POLICIES, ids=lambda factory: factory.__name__)
@SETTINGS
@given(capacity=CAPACITIES, operations=OPERATIONS)
def test_accounting_matches_model(
    factory: Callable[[int], EvictionPolicy], capacity: int, operations: list[Operation]
) -> None:
    policy = factory(capacity)
    kept: dict[Hashable, int] = {}
    for operation in operations:
        match operation:
            case ("put", str(key), int(weight)):
                fits = policy.total - kept.get(key, 0) + weight <= policy.capacity
                kept[key] = weight
                evicted = policy.put(key, weight)
                if weight > policy.capacity:
                    assert key in evicted, "an entry larger than the capacity was kept"
                elif fits:
                    assert evicted == [], "a put that fits evicted something"
                drop(policy, kept, evicted)
            case ("read", str(key)):
                policy.record_access(key, hit=key in kept)
            case ("remove", str(key)):
                kept.pop(key, None)
                policy.remove(key)
            case ("resize", int(size)):
                drop(policy, kept, policy.resize(size))
                assert policy.capacity == size
            case ("clear",):
                kept.clear()
                policy.clear()
        assert policy.total == sum(kept.values())
        assert policy.total <= policy.capacity
        if isinstance(policy, WTinyLFUPolicy):
            check_segments(policy)
    for held in kept:  # each kept key is tracked: a hit on an unknown key raises
        policy.record_access(held, hit=True)
    for held in list(kept):
        policy.remove(held)
    assert policy.total == 0


@pytest.mark.parametrize("factory", POLICIES, ids=lambda factory: factory.__name__)
def test_oversize_entry_is_rejected(factory: Callable[[int], EvictionPolicy]) -> None:
    policy = factory(1000)
    assert policy.put("big", 1001) == ["big"]
    assert policy.total == 0
    assert policy.put("fits", 1000) == []
    assert policy.total == 1000


def test_tinylfu_rejects_oversize_without_flushing() -> None:
    policy = WTinyLFUPolicy(1000)
    for index in range(10):
        assert policy.put(f"t{index}", 100) == []
    assert policy.put("big", 5000) == ["big"]
    assert policy.total == 1000


@pytest.mark.parametrize("factory", POLICIES, ids=lambda factory: factory.__name__)
def test_growing_past_capacity_evicts(factory: Callable[[int], EvictionPolicy]) -> None:
    policy = factory(1000)
    policy.put("a", 400)
    policy.put("b", 400)
    evicted = policy.put("a", 900)
    assert evicted, "the total went over the capacity"
    assert policy.total <= 1000


@pytest.mark.parametrize("factory", POLICIES, ids=lambda factory: factory.__name__)
def test_shrinking_evicts_to_fit(factory: Callable[[int], EvictionPolicy]) -> None:
    policy = factory(1000)
    for index in range(10):
        policy.put(f"t{index}", 100)
    assert len(policy.resize(999)) == 1
    assert policy.total == 900


def test_tinylfu_admits_by_frequency() -> None:
    """A key leaving the window must be read more often than each key it displaces."""
    policy = WTinyLFUPolicy(1000)  # a 10-byte window: every entry here passes through it
    assert policy.put("a", 500) == []
    assert policy.put("b", 500) == []
    policy.record_access("c", hit=False)
    assert policy.put("c", 500) == ["a"]  # read once against never
    assert policy.put("d", 500) == ["d"]  # never read: not admitted
    policy.record_access("d", hit=False)
    assert policy.put("d", 500) == ["b"]
    policy.record_access("e", hit=False)
    assert policy.put("e", 500) == ["e"]  # a tie keeps the key already held
    policy.record_access("f", hit=False)
    policy.record_access("f", hit=False)
    assert policy.put("f", 1000) == ["c", "d"]  # beats both, which it needs to fit


def test_tinylfu_read_key_outlives_unread() -> None:
    """A key read again since admission is protected: victims come from the others first."""
    policy = WTinyLFUPolicy(1000)
    for key in ("a", "b", "c"):
        assert policy.put(key, 300) == []
    policy.record_access("a", hit=True)
    for _ in range(3):
        policy.record_access("d", hit=False)
    assert policy.put("d", 300) == ["b"]


def simulate(policy: EvictionPolicy, trace: list[str], weight: int) -> set[str]:
    """Read each key as the L1 tier does: a miss loads and puts it. Returns the kept keys."""
    held: set[str] = set()
    for key in trace:
        hit = key in held
        policy.record_access(key, hit=hit)
        if not hit:
            held.add(key)
            held.difference_update(policy.put(key, weight))
    return held


@pytest.mark.parametrize(
    ("factory", "survivors"), [(LRUPolicy, 0), (WTinyLFUPolicy, 10)], ids=["lru", "tinylfu"]
)
def test_scan_of_one_time_reads(factory: Callable[[int], EvictionPolicy], survivors: int) -> None:
    """Ten keys read over and over, then 1,000 keys read once, in a cache of 100."""
    hot = [f"hot-{index}" for index in range(10)]
    scan = [f"once-{index}" for index in range(1000)]
    held = simulate(factory(100_000), hot * 20 + scan, weight=1000)
    assert len(held & set(hot)) == survivors


def test_sketch_keeps_counts_when_widened() -> None:
    sketch = _FrequencySketch()
    keys = [f"thread-{index}" for index in range(40)]
    sketch.add([key for index, key in enumerate(keys) for _ in range(index % 7)])
    before = [sketch.estimate(key) for key in keys]
    sketch.fit(5000)
    assert [sketch.estimate(key) for key in keys] == before


def test_sketch_ages() -> None:
    sketch = _FrequencySketch()
    sketch.fit(100)  # halves every 1,000 reads
    sketch.add(["hot"] * 12)
    sketch.add([f"once-{index}" for index in range(900)])
    assert sketch.estimate("hot") >= 12
    sketch.add([f"again-{index}" for index in range(100)])
    assert 6 <= sketch.estimate("hot") < 12
