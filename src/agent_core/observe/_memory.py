"""Memory pressure: shrink an owner's memory budget while the process nears its limit."""

from __future__ import annotations

import asyncio
import math
import os
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from .._validation import check_count, check_number, check_optional_count, check_seconds
from ..errors import InvalidArgument
from ._background import BackgroundTask, Sampler

MIB: Final = 1 << 20
_PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")

#: What one `MemoryMonitor.check` did to the budget.
MemoryAction = Literal["shrink", "grow", "hold"]


def process_rss() -> int:
    """The resident set size of this process, in bytes."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_bytes().split()[1])
    except FileNotFoundError:
        # The peak RSS, not the current one: all a system without /proc offers.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
    return resident_pages * _PAGE_SIZE


def memory_limit(
    *, proc_self: Path = Path("/proc/self"), cgroup_root: Path = Path("/sys/fs/cgroup")
) -> int:
    """The bytes this process may use: its cgroup's memory limit, else physical RAM."""
    physical = _PAGE_SIZE * os.sysconf("SC_PHYS_PAGES")
    limit = _cgroup_limit(proc_self / "cgroup", cgroup_root)
    # cgroup v1 spells "no limit" as a huge number; physical RAM caps it either way.
    return physical if limit is None else min(limit, physical)


def _cgroup_limit(cgroup_file: Path, root: Path) -> int | None:
    """The cgroup v2 ``memory.max``, else the v1 ``memory.limit_in_bytes``, if any."""
    try:
        lines = cgroup_file.read_text().splitlines()
    except FileNotFoundError:
        return None
    v1_path = v2_path = None
    for line in lines:
        _, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if not controllers:
            v2_path = path
        elif "memory" in controllers.split(","):
            v1_path = path
    limit = None if v2_path is None else _tightest(root, v2_path, "memory.max")
    if limit is None and v1_path is not None:
        limit = _tightest(root / "memory", v1_path, "memory.limit_in_bytes")
    return limit


def _tightest(mount: Path, path: str, name: str) -> int | None:
    """The lowest limit set on cgroup ``path`` or any cgroup above it."""
    # Walk up to the mount: a parent's limit binds its children too, and a container
    # often has its own cgroup mounted at the root rather than at ``path``.
    here = mount / path.lstrip("/")
    limits = []
    for directory in (here, *here.parents):
        if not directory.is_relative_to(mount):
            break
        try:
            text = (directory / name).read_text().strip()
            if text != "max":
                limits.append(int(text))
        except (OSError, ValueError):
            continue
    return min(limits, default=None)


@dataclass(frozen=True, slots=True)
class MemorySnapshot:
    """The process's memory against its limit, and the budget the monitor manages."""

    rss: int
    limit: int
    budget: int
    max_budget: int
    shrinks: int
    grows: int
    #: RSS is above ``high_water`` of the limit: the budget is being shrunk.
    pressure: bool


class MemoryMonitor(Sampler):
    """Keeps an owner's memory budget, such as a cache's byte cap, within the limit.

    Every ``interval`` seconds it compares the process RSS with the limit: above
    ``high_water`` of the limit it cuts the budget by ``step`` (down to ``min_budget``),
    below ``low_water`` it raises it by the same ratio (up to ``max_budget``), and in
    between it holds. One step per sample, so the owner sheds memory gradually rather
    than all at once. The limit is ``limit_bytes``, else the cgroup's, else physical RAM.

    A cache plugs in with ``MemoryMonitor(lambda: l1.max_bytes, l1.resize, max_bytes)``.
    The callbacks run on the event loop. If one raises, sampling stops and `stop`
    raises the error.
    """

    def __init__(
        self,
        get_budget: Callable[[], int],
        set_budget: Callable[[int], None],
        max_budget: int,
        *,
        limit_bytes: int | None = None,
        interval: float = 1.0,
        high_water: float = 0.80,
        low_water: float = 0.60,
        step: float = 0.10,
        min_budget: int = MIB,
    ) -> None:
        if not callable(get_budget) or not callable(set_budget):
            raise InvalidArgument("get_budget and set_budget must be callables")
        self._get_budget = get_budget
        self._set_budget = set_budget
        self._min_budget = check_count("min_budget", min_budget, minimum=1)
        self._max_budget = check_count("max_budget", max_budget, minimum=self._min_budget)
        self._limit_bytes = check_optional_count("limit_bytes", limit_bytes, minimum=1)
        self._interval = check_seconds("interval", interval)
        self._high_water = check_number(
            "high_water", high_water, lambda v: 0 < v <= 1, "a fraction in (0, 1]"
        )
        self._low_water = check_number(
            "low_water",
            low_water,
            lambda v: 0 <= v < self._high_water,
            f"a fraction in [0, high_water={self._high_water})",
        )
        self._step = check_number("step", step, lambda v: 0 < v < 1, "a fraction in (0, 1)")
        self._shrinks = 0
        self._grows = 0
        self._last_limit = 0
        self._task = BackgroundTask(self._sample, "agent-core-memory")

    def limit(self) -> int:
        """The bytes the process may use, read afresh unless ``limit_bytes`` was given."""
        return memory_limit() if self._limit_bytes is None else self._limit_bytes

    def check(self) -> MemoryAction:
        """Take one sample and move the budget by at most one step."""
        rss, limit, budget = process_rss(), self.limit(), self._get_budget()
        self._last_limit = limit
        if rss > self._high_water * limit:
            smaller = max(self._min_budget, int(budget * (1 - self._step)))
            if smaller >= budget:
                return "hold"
            self._set_budget(smaller)
            self._shrinks += 1
            return "shrink"
        if rss < self._low_water * limit:
            # The inverse of a shrink, so n shrinks and n grows come back to the start.
            larger = min(
                self._max_budget, max(self._min_budget, math.ceil(budget / (1 - self._step)))
            )
            if larger <= budget:
                return "hold"
            self._set_budget(larger)
            self._grows += 1
            return "grow"
        return "hold"

    def snapshot(self) -> MemorySnapshot:
        # The limit as of the last check: reading it walks the cgroup files, too slow
        # for a stats call on every metrics scrape.
        rss, limit = process_rss(), self._last_limit or self.limit()
        return MemorySnapshot(
            rss=rss,
            limit=limit,
            budget=self._get_budget(),
            max_budget=self._max_budget,
            shrinks=self._shrinks,
            grows=self._grows,
            pressure=rss > self._high_water * limit,
        )

    async def _sample(self) -> None:
        while True:
            self.check()
            await asyncio.sleep(self._interval)
