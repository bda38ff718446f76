"""``agent-core bench``: the seed's success metrics, measured on a real store.

`run_bench` runs agent turns (with `EchoModel`) on Zipf-distributed threads through
short-lived caches, as serverless workers do; `rows` judges the run against its targets,
`report` turns it into JSON, `plot` draws it (needs the ``plot`` extra). A second pass
runs the trace with agent-core and a Phase-1 baseline side by side (`Comparison`).
"""

from ._baseline import Comparison
from ._plots import plot, plot_directory
from ._report import BASELINE_IMPROVEMENT, Row, improvement, report, rows
from ._workload import BenchConfig, BenchRun, achievable, run_bench

__all__ = [
    "BASELINE_IMPROVEMENT",
    "BenchConfig",
    "BenchRun",
    "Comparison",
    "Row",
    "achievable",
    "improvement",
    "plot",
    "plot_directory",
    "report",
    "rows",
    "run_bench",
]
