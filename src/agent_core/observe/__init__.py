"""Runtime health: event-loop lag, memory pressure, and the histogram behind them."""

from ._histogram import Histogram
from ._loop_lag import LoopLagMonitor, LoopLagSnapshot
from ._memory import MemoryAction, MemoryMonitor, MemorySnapshot, memory_limit, process_rss
from ._percentile import nearest_rank

__all__ = [
    "Histogram",
    "LoopLagMonitor",
    "LoopLagSnapshot",
    "MemoryAction",
    "MemoryMonitor",
    "MemorySnapshot",
    "memory_limit",
    "nearest_rank",
    "process_rss",
]
