"""``agent-core bench``: the seed's success metrics, measured on a real store.

`run_bench` runs agent turns (with `EchoModel`) on Zipf-distributed threads through
short-lived caches, as serverless workers do; `rows` judges the run against its targets,
`report` turns it into JSON, `plot` draws it (needs the ``plot`` extra).
"""

from ._plots import plot, plot_directory
from ._report import Row, report, rows
from ._workload import BenchConfig, BenchRun, achievable, run_bench

__all__ = [
    "BenchConfig",
    "BenchRun",
    "Row",
    "achievable",
    "plot",
    "plot_directory",
    "report",
    "rows",
    "run_bench",
]
