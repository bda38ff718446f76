"""PNG plots of a bench run, drawn with matplotlib (the ``plot`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final

from .._extras import needs_extra
from ..agent import HistoryTier
from ..errors import ConfigurationError
from ._workload import MIB, BenchRun

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot", "plot_directory"]

#: Turns per point of the rolling hit-rate curves.
_ROLLING: Final = 100
_TIERS: Final[tuple[HistoryTier, ...]] = ("l1", "l2", "store")


def plot(run: BenchRun, directory: Path) -> list[Path]:
    """Write hit_rates.png, latency.png, loop_lag.png and memory.png, and baseline.png if
    the comparison with the Phase-1 baseline ran; return their paths."""
    with needs_extra("--plot"):
        import matplotlib

        matplotlib.use("Agg")  # files only: no display on servers and CI
        from matplotlib.figure import Figure
    plot_directory(directory)
    drawn = {
        "hit_rates.png": _hit_rates(Figure(figsize=(8, 4)), run),
        "latency.png": _latency(Figure(figsize=(8, 4)), run),
        "loop_lag.png": _loop_lag(Figure(figsize=(8, 4)), run),
        "memory.png": _memory(Figure(figsize=(8, 4)), run),
    }
    if run.comparison.agent_core:
        drawn["baseline.png"] = _baseline(Figure(figsize=(8, 4)), run)
    paths = []
    for name, figure in drawn.items():
        path = directory / name
        figure.savefig(path, dpi=100, bbox_inches="tight")
        paths.append(path)
    return paths


def plot_directory(directory: Path) -> None:
    """Create ``directory`` if needed; `ConfigurationError` if it cannot be."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(f"cannot create the plot directory {directory}: {exc}") from exc


def _hit_rates(figure: Figure, run: BenchRun) -> Figure:
    axes = figure.subplots()
    tiers = run.samples.tiers
    turns = range(_ROLLING, len(tiers) + 1)
    for label, served in (("L1", ("l1",)), ("L1 + L2 (total)", ("l1", "l2"))):
        hits = [tier in served for tier in tiers]
        rolling = [sum(hits[end - _ROLLING : end]) / _ROLLING for end in turns]
        axes.plot(list(turns), rolling, label=label)
    axes.set(
        title=f"Hit rate over the last {_ROLLING} turns ({run.instances} cold starts)",
        xlabel="turn",
        ylabel="hit rate",
        ylim=(0, 1.02),
    )
    axes.legend(loc="lower right")
    return figure


def _latency(figure: Figure, run: BenchRun) -> Figure:
    axes = figure.subplots()
    for tier in _TIERS:
        values = sorted(seconds * 1e3 for seconds in run.samples.of("history", (tier,)))
        if values:
            share = [(i + 1) / len(values) for i in range(len(values))]
            axes.step(values, share, where="post", label=f"{tier} ({len(values):,} turns)")
    axes.set(
        title="History load per turn, by the tier that served it",
        xlabel="ms (log)",
        ylabel="share of turns",
        xscale="log",
    )
    axes.legend(loc="lower right")
    return figure


def _baseline(figure: Figure, run: BenchRun) -> Figure:
    axes = figure.subplots()
    comparison = run.comparison
    for label, seconds in (("agent-core", comparison.agent_core), ("Phase-1", comparison.baseline)):
        values = sorted(value * 1e3 for value in seconds)
        share = [(i + 1) / len(values) for i in range(len(values))]
        axes.step(values, share, where="post", label=f"{label} ({len(values):,} turns)")
    axes.set(
        title="Turn latency without the model call, same trace side by side",
        xlabel="ms (log)",
        ylabel="share of turns",
        xscale="log",
    )
    axes.legend(loc="lower right")
    return figure


def _loop_lag(figure: Figure, run: BenchRun) -> Figure:
    axes = figure.subplots()
    timeline = run.timeline
    axes.plot(timeline.seconds, _ms(timeline.lag_max), label="max", alpha=0.6)
    axes.plot(timeline.seconds, _ms(timeline.lag_p99), label="p99")
    axes.axhline(5.0, linestyle="--", color="grey", label="5 ms bound")
    axes.set(title="Event-loop lag per 250 ms", xlabel="s", ylabel="ms")
    axes.legend(loc="upper right")
    return figure


def _memory(figure: Figure, run: BenchRun) -> Figure:
    axes = figure.subplots()
    timeline = run.timeline
    axes.plot(timeline.seconds, _mib(timeline.rss), label="RSS")
    axes.plot(timeline.seconds, _mib(timeline.l1_bytes), label="L1 bytes")
    axes.axhline(run.memory_limit / MIB, linestyle="--", color="C0", label="memory limit")
    axes.axhline(run.l1_budget / MIB, linestyle=":", color="C1", label="L1 budget")
    axes.set(title="Memory", xlabel="s", ylabel="MiB", ylim=(0, None))
    axes.legend(loc="center right")
    return figure


def _ms(seconds: list[float]) -> list[float]:
    return [value * 1e3 for value in seconds]


def _mib(counts: list[int]) -> list[float]:
    return [value / MIB for value in counts]
