"""Prometheus metrics: the cache's stats read at scrape time, and the app's own histograms."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ..agent import Usage
from ..cache import CacheStats
from ..observe import LoopLagSnapshot

__all__ = ["Metrics"]

PREFIX: Final = "agent_core_"
# From 0.1 ms (an L1 hit) to 60 s (a slow model call).
_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip

# Methods that get a label of their own; any other (a client may send any token) is
# "other", so label sets cannot grow with what clients send.
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# CacheStats counters exported as ``agent_core_<name>_total``.
_COUNTERS: Final = (
    ("store_loads", "Store reads made (concurrent misses of a thread share one)."),
    ("appends", "Batches appended."),
    ("deletes", "Threads deleted."),
    ("invalidations_received", "Invalidation events heard on the bus."),
    ("invalidations_applied", "Invalidation events that dropped a cached copy."),
    ("fills_dropped", "L1 fills dropped because a newer version was announced meanwhile."),
    ("external_changes", "Changes made straight to the store by other programs."),
    ("l2_fills_refused", "L2 fills refused because Redis held a newer version."),
    ("lease_waits", "Reads that waited for another instance's fill."),
    ("redis_errors", "Redis failures."),
    ("bus_subscriptions", "Invalidation bus subscriptions made."),
    ("bus_corrupt", "Invalidation bus events that did not decode."),
    ("l2_corrupt", "L2 entries that did not decode."),
    ("late_counts", "Messages counted after their append, whose counts were then stored."),
    ("version_checks", "Store version queries made to confirm a cached copy is fresh."),
)


class _StatsCollector(Collector):
    """Reads ``stats()`` and the loop lag at each scrape, so nothing is counted twice."""

    def __init__(self, stats: Callable[[], CacheStats], lag: Callable[[], LoopLagSnapshot]) -> None:
        self._stats = stats
        self._lag = lag

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        hits = CounterMetricFamily(
            PREFIX + "cache_hits", "Reads served by a cache tier.", labels=["tier"]
        )
        hits.add_metric(["l1"], s.l1_hits)
        hits.add_metric(["l2"], s.l2_hits)
        yield hits
        yield CounterMetricFamily(
            PREFIX + "cache_misses", "Reads served by the store.", value=s.misses
        )
        for name, documentation in _COUNTERS:
            yield CounterMetricFamily(PREFIX + name, documentation, value=getattr(s, name))
        evictions = CounterMetricFamily(
            PREFIX + "l1_evictions", "L1 entries evicted or dropped, by cause.", labels=["cause"]
        )
        for cause, count in sorted(s.evictions.items()):
            evictions.add_metric([cause], count)
        yield evictions
        rates = GaugeMetricFamily(
            PREFIX + "cache_hit_rate", "Hit rates since the cache opened.", labels=["tier"]
        )
        rates.add_metric(["l1"], s.l1_hit_rate)
        rates.add_metric(["l2"], s.l2_hit_rate)
        rates.add_metric(["total"], s.hit_rate)
        yield rates
        for name, value, documentation in (
            ("degraded", float(s.degraded), "1 while Redis is configured but not usable."),
            ("l1_bytes", s.l1_bytes, "Bytes held by L1."),
            ("l1_max_bytes", s.l1_max_bytes, "L1's current byte budget."),
            ("l1_entries", s.l1_entries, "Threads held by L1."),
        ):
            yield GaugeMetricFamily(PREFIX + name, documentation, value=value)
        if s.memory is not None:
            m = s.memory
            for name, value, documentation in (
                ("memory_rss_bytes", m.rss, "Resident set size of the process."),
                ("memory_limit_bytes", m.limit, "Memory limit (cgroup, configured or RAM)."),
                ("memory_pressure", float(m.pressure), "1 while RSS is over the high water."),
            ):
                yield GaugeMetricFamily(PREFIX + name, documentation, value=value)
            yield CounterMetricFamily(
                PREFIX + "l1_budget_shrinks", "L1 budget cuts under memory pressure.", m.shrinks
            )
        lag = self._lag()
        quantiles = GaugeMetricFamily(
            PREFIX + "event_loop_lag_seconds",
            "Event-loop lag since start, by quantile (1 is the maximum).",
            labels=["quantile"],
        )
        for label, value in (("0.5", lag.p50), ("0.9", lag.p90), ("0.99", lag.p99), ("1", lag.max)):
            quantiles.add_metric([label], value)
        yield quantiles
        yield CounterMetricFamily(
            PREFIX + "event_loop_lag_samples", "Event-loop lag samples taken.", value=lag.count
        )


class Metrics:
    """One app's metrics, in a registry of its own so that apps (and tests) never collide."""

    def __init__(self, stats: Callable[[], CacheStats], lag: Callable[[], LoopLagSnapshot]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_StatsCollector(stats, lag))
        self.requests = Histogram(
            PREFIX + "http_request_duration_seconds",
            "HTTP request latency by route template, method and status.",
            ["route", "method", "status"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.thread_reads = Histogram(
            PREFIX + "thread_read_duration_seconds",
            "GET thread latency by the tier that served it (l1, l2, store).",
            ["tier"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.model_calls = Histogram(
            PREFIX + "model_call_duration_seconds",
            "Chat model call latency per turn.",
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.rate_limit_waits = Histogram(
            PREFIX + "rate_limit_wait_seconds",
            "Time turns waited for rate-limit admission.",
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.turns = Counter(
            PREFIX + "turns",
            "Agent turns stored, by the tier that served their history.",
            ["history_tier"],
            registry=self.registry,
        )
        self.model_tokens = Counter(
            PREFIX + "model_tokens",
            "Tokens the model's provider billed for stored turns: prompt (all input), "
            "cached (input read from its prompt cache), cache_write, completion.",
            ["kind"],
            registry=self.registry,
        )

    def record_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Record a request's latency under its route template (unmatched: ``"unmatched"``),
        method (``"other"`` if not a common one) and status."""
        method = method if method in _METHODS else "other"
        self.requests.labels(route, method, str(status)).observe(seconds)

    def record_turn(self, timings: dict[str, float], history_tier: str, usage: Usage) -> None:
        """Record a stored turn's model call, rate-limit wait, history tier and billed tokens."""
        model = timings.get("model")
        if model is not None:
            self.model_calls.observe(model)
        wait = timings.get("rate_limit")
        if wait is not None:
            self.rate_limit_waits.observe(wait)
        self.turns.labels(history_tier).inc()
        for kind, tokens in (
            ("prompt", usage.prompt_tokens),
            ("cached", usage.cached_tokens),
            ("cache_write", usage.cache_write_tokens),
            ("completion", usage.completion_tokens),
        ):
            self.model_tokens.labels(kind).inc(tokens)
