"""Loop-lag and memory monitors on the real event loop and the real process.

Timing bounds are loose on purpose: test machines are noisy, so the lag tests only
tell a blocked loop from an idle one.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent_core import InvalidArgument
from agent_core.cache._l1 import L1Tier
from agent_core.observe import (
    Histogram,
    LoopLagMonitor,
    MemoryMonitor,
    memory_limit,
    process_rss,
)

from ._poll import eventually

MIB = 1 << 20

# -- histogram ------------------------------------------------------------------------

#: Durations from 1 µs to 60 s, spread evenly over the orders of magnitude.
durations = st.floats(min_value=-6.0, max_value=math.log10(60.0)).map(lambda e: 10.0**e)


def exact_percentile(values: list[float], p: float) -> float:
    """Nearest rank: the smallest value with at least p % of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p * len(ordered) / 100)) - 1]


@given(
    values=st.lists(durations, min_size=1, max_size=500),
    ps=st.lists(st.floats(min_value=0.0, max_value=100.0), min_size=1, max_size=10),
)
def test_histogram_percentiles_are_within_one_percent(values: list[float], ps: list[float]) -> None:
    histogram = Histogram()
    for value in values:
        histogram.record(value)
    for p in [0.0, 50.0, 90.0, 99.0, 100.0, *ps]:
        assert histogram.percentile(p) == pytest.approx(exact_percentile(values, p), rel=0.01)
    assert histogram.count == len(values)
    assert histogram.min == min(values)
    assert histogram.max == max(values)
    assert histogram.mean == pytest.approx(math.fsum(values) / len(values), rel=1e-9)


def test_histogram_clamps_values_above_highest_but_keeps_the_exact_max() -> None:
    histogram = Histogram(highest=1.0)
    for value in (0.5, 0.6, 1000.0, 2000.0):
        histogram.record(value)
    assert histogram.count == 4
    assert histogram.max == histogram.percentile(100) == 2000.0
    assert histogram.percentile(75) == pytest.approx(1.0, rel=0.01)
    assert histogram.percentile(50) == pytest.approx(0.6, rel=0.01)


def test_empty_and_reset_histogram_report_zeros() -> None:
    histogram = Histogram()
    assert (histogram.count, histogram.percentile(99), histogram.mean) == (0, 0.0, 0.0)
    assert (histogram.min, histogram.max) == (0.0, 0.0)
    histogram.record(0.25)
    histogram.reset()
    assert (histogram.count, histogram.percentile(50), histogram.max) == (0, 0.0, 0.0)
    histogram.record(0.001)
    assert histogram.percentile(50) == histogram.min == histogram.max == 0.001


@pytest.mark.parametrize("value", [-0.001, math.nan, math.inf])
def test_histogram_rejects_values_that_are_not_durations(value: float) -> None:
    with pytest.raises(InvalidArgument):
        Histogram().record(value)


@pytest.mark.parametrize("p", [-1, 100.5, math.nan, True, "50"])
def test_histogram_rejects_percentiles_out_of_range(p: Any) -> None:
    with pytest.raises(InvalidArgument, match="p must be"):
        Histogram().percentile(p)


@pytest.mark.parametrize("highest", [0, 1e-9, -1.0, math.inf, "60"])
def test_histogram_rejects_a_bad_range(highest: Any) -> None:
    with pytest.raises(InvalidArgument, match="highest"):
        Histogram(highest=highest)


# -- loop lag -------------------------------------------------------------------------


async def test_a_blocking_call_shows_up_as_lag() -> None:
    async with LoopLagMonitor() as lag:
        await eventually(lambda: lag.snapshot().count >= 4)
        time.sleep(0.02)  # noqa: ASYNC251 - blocking the loop is the point
        before = lag.snapshot().count
        await eventually(lambda: lag.snapshot().count > before)  # the sample spanning it
    snapshot = lag.snapshot()
    assert snapshot.max >= 0.015
    assert snapshot.count >= 5
    assert 0.0 <= snapshot.p50 <= snapshot.p90 <= snapshot.p99 <= snapshot.max


async def test_an_idle_loop_has_little_lag() -> None:
    async with LoopLagMonitor() as lag:
        await eventually(lambda: lag.snapshot().count >= 30)
    snapshot = lag.snapshot()
    # Lag is the overshoot past each sleep, in seconds. The bounds are generous for a
    # loaded machine: the idle-loop goal itself is checked by benchmarks (bench's loop lag).
    assert snapshot.p50 < 0.1
    assert snapshot.mean < 0.25


async def test_lag_monitor_start_and_stop() -> None:
    lag = LoopLagMonitor(interval=0.005)
    assert not lag.running
    await lag.stop()  # stopping what never started is fine
    lag.start()
    lag.start()  # already running: no second sampler
    assert lag.running
    await eventually(lambda: lag.snapshot().count >= 1)
    await lag.stop()
    assert not lag.running
    count = lag.snapshot().count
    # Nothing samples after stop, while a sampler of the same interval samples thrice.
    async with LoopLagMonitor(interval=0.005) as witness:
        await eventually(lambda: witness.snapshot().count >= 3)
    assert lag.snapshot().count == count


async def test_lag_monitor_hands_each_sample_to_on_sample() -> None:
    samples: list[float] = []
    async with LoopLagMonitor(interval=0.005, on_sample=samples.append) as lag:
        await eventually(lambda: samples)
    assert len(samples) == lag.snapshot().count >= 1
    assert max(samples) == lag.snapshot().max
    assert min(samples) >= 0.0


def test_lag_monitor_needs_a_running_loop() -> None:
    with pytest.raises(RuntimeError):
        LoopLagMonitor().start()


@pytest.mark.parametrize("interval", [0, 0.0005, -1, math.nan, None, True])
def test_lag_monitor_rejects_a_bad_interval(interval: Any) -> None:
    with pytest.raises(InvalidArgument, match="interval"):
        LoopLagMonitor(interval)


# -- memory ---------------------------------------------------------------------------


class Budget:
    """The owner's side: a budget the monitor reads and sets."""

    def __init__(self, value: int) -> None:
        self.value = value
        self.history: list[int] = []

    def get(self) -> int:
        return self.value

    def set(self, value: int) -> None:
        self.value = value
        self.history.append(value)


def test_memory_readings_are_positive_ints() -> None:
    limit, rss = memory_limit(), process_rss()
    assert isinstance(limit, int)
    assert isinstance(rss, int)
    assert 0 < rss < limit


def test_pressure_shrinks_the_budget_step_by_step_down_to_the_floor() -> None:
    budget = Budget(16 * MIB)
    # RSS is ~91 % of this limit, above the 80 % high water.
    monitor = MemoryMonitor(
        budget.get, budget.set, 16 * MIB, limit_bytes=int(process_rss() * 1.1), min_budget=4 * MIB
    )
    assert monitor.snapshot().pressure
    expected = 16 * MIB
    while int(expected * 0.9) > 4 * MIB:
        assert monitor.check() == "shrink"
        expected = int(expected * 0.9)
        assert budget.value == expected
    assert monitor.check() == "shrink"
    assert budget.value == 4 * MIB  # the last step stops at the floor
    assert monitor.check() == "hold"
    assert monitor.check() == "hold"
    assert min(budget.history) == 4 * MIB
    snapshot = monitor.snapshot()
    assert (snapshot.shrinks, snapshot.grows, snapshot.budget) == (len(budget.history), 0, 4 * MIB)


def test_no_pressure_grows_the_budget_back_to_the_maximum() -> None:
    budget = Budget(MIB)
    monitor = MemoryMonitor(budget.get, budget.set, 8 * MIB, limit_bytes=1 << 50)
    actions = []
    while (action := monitor.check()) == "grow":
        actions.append(action)
    assert action == "hold"
    assert budget.value == 8 * MIB
    assert budget.history == sorted(budget.history)
    # Each step is the inverse of a shrink step, about +11 %.
    assert all(
        b <= math.ceil(a / 0.9)
        for a, b in zip([MIB, *budget.history], budget.history, strict=False)
    )
    assert 15 <= len(actions) <= 25
    snapshot = monitor.snapshot()
    assert (snapshot.grows, snapshot.shrinks, snapshot.pressure) == (len(actions), 0, False)


def test_between_the_water_marks_the_budget_holds() -> None:
    budget = Budget(8 * MIB)
    monitor = MemoryMonitor(budget.get, budget.set, 16 * MIB, limit_bytes=int(process_rss() / 0.7))
    assert [monitor.check() for _ in range(3)] == ["hold"] * 3
    assert budget.history == []


def test_the_monitor_drives_an_l1_tier() -> None:
    l1 = L1Tier(8 * MIB, ttl=60.0)
    monitor = MemoryMonitor(
        lambda: l1.max_bytes, l1.resize, 8 * MIB, limit_bytes=int(process_rss() * 1.1)
    )
    assert monitor.check() == "shrink"
    assert l1.max_bytes == int(8 * MIB * 0.9)


async def test_the_background_task_samples_every_interval() -> None:
    budget = Budget(MIB)
    async with MemoryMonitor(
        budget.get, budget.set, 2 * MIB, limit_bytes=1 << 50, interval=0.01
    ) as monitor:
        assert monitor.running
        await eventually(lambda: budget.value == 2 * MIB, show=lambda: budget.value)
    assert not monitor.running
    assert budget.value == 2 * MIB


async def test_a_failing_callback_stops_sampling_and_surfaces_on_stop() -> None:
    def refuse(value: int) -> None:
        raise OSError("cannot resize")

    monitor = MemoryMonitor(lambda: MIB, refuse, 2 * MIB, limit_bytes=1 << 50, interval=0.01)
    monitor.start()
    await eventually(lambda: not monitor.running)
    with pytest.raises(OSError, match="cannot resize"):
        await monitor.stop()


@pytest.mark.parametrize(
    "options",
    [
        {"max_budget": 0},
        {"max_budget": MIB - 1},
        {"min_budget": 0},
        {"min_budget": 2 * MIB, "max_budget": MIB},
        {"limit_bytes": 0},
        {"limit_bytes": 1.5},
        {"interval": 0},
        {"interval": math.inf},
        {"high_water": 0},
        {"high_water": 1.2},
        {"low_water": -0.1},
        {"low_water": 0.8},
        {"low_water": 0.5, "high_water": 0.4},
        {"step": 0},
        {"step": 1},
        {"step": "0.1"},
        {"get_budget": 5},
        {"set_budget": None},
    ],
)
def test_memory_monitor_rejects_bad_parameters(options: dict[str, Any]) -> None:
    arguments: dict[str, Any] = {
        "get_budget": lambda: MIB,
        "set_budget": lambda value: None,
        "max_budget": 8 * MIB,
        **options,
    }
    with pytest.raises(InvalidArgument):
        MemoryMonitor(**arguments)


# -- cgroup limits, on a fake /proc and /sys/fs/cgroup -------------------------------


@pytest.fixture
def fake_system(tmp_path: Path) -> tuple[Path, Path]:
    proc_self, cgroup_root = tmp_path / "proc" / "self", tmp_path / "cgroup"
    proc_self.mkdir(parents=True)
    cgroup_root.mkdir()
    return proc_self, cgroup_root


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_limit_is_the_tightest_on_the_path(fake_system: tuple[Path, Path]) -> None:
    proc_self, root = fake_system
    write(proc_self / "cgroup", "0::/pod/app\n")
    write(root / "pod" / "app" / "memory.max", "max\n")
    write(root / "pod" / "memory.max", f"{64 * MIB}\n")
    assert memory_limit(proc_self=proc_self, cgroup_root=root) == 64 * MIB
    write(root / "pod" / "app" / "memory.max", f"{32 * MIB}\n")
    assert memory_limit(proc_self=proc_self, cgroup_root=root) == 32 * MIB


def test_cgroup_v1_limit_is_read_when_v2_sets_none(fake_system: tuple[Path, Path]) -> None:
    proc_self, root = fake_system
    write(proc_self / "cgroup", "5:cpu,cpuacct:/x\n4:memory:/docker/abc\n0::/\n")
    # The container sees its own cgroup at the mount root, not at /docker/abc.
    write(root / "memory" / "memory.limit_in_bytes", f"{48 * MIB}\n")
    assert memory_limit(proc_self=proc_self, cgroup_root=root) == 48 * MIB


def test_without_a_cgroup_limit_physical_ram_is_the_limit(
    fake_system: tuple[Path, Path],
) -> None:
    proc_self, root = fake_system
    physical = memory_limit(proc_self=proc_self, cgroup_root=root)  # no cgroup file at all
    assert physical > 0
    write(proc_self / "cgroup", "4:memory:/\n0::/\n")
    write(root / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")
    assert memory_limit(proc_self=proc_self, cgroup_root=root) == physical
    assert memory_limit() <= physical
