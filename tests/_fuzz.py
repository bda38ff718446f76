"""What the hostile-input fuzzers share: their hypothesis settings and an RSS probe."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

#: Generous: the suite's other tests and hypothesis itself allocate too.
RSS_GROWTH_LIMIT = 512 << 20
FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
