"""RateLimiter: GCRA bounds, waiting, RateLimited, local and shared through Redis.

The limits run with ``period=1.0`` (per second instead of per minute) so the tests
are quick; the algorithm does not depend on the period's length.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import multiprocessing
import random
import time
import traceback
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from redis.asyncio import Redis

from agent_core import (
    ConfigurationError,
    InvalidArgument,
    InvalidNamespace,
    RateLimited,
    RateLimiter,
    RateLimits,
    RequestTooLarge,
)
from agent_core.ratelimit._gcra import Decision

from ._poll import eventually
from ._redis_server import RedisServer

PROCESSES = 4
_spawn = multiprocessing.get_context("spawn")


class RecordingLimiter(RateLimiter):
    """Keeps each task's latest decision, so a test can see when a request was let go."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.decisions: dict[asyncio.Task[Any], Decision] = {}

    async def _reserve(
        self, model: str, limits: RateLimits, tokens: int, max_wait: float
    ) -> Decision:
        decision = await super()._reserve(model, limits, tokens, max_wait)
        task = asyncio.current_task()
        assert task is not None
        self.decisions[task] = decision
        return decision


def worst_excess(events: Sequence[tuple[float, int]], rate: float, period: float) -> float:
    """The most that any closed time window's total cost exceeds ``rate * (1 + w / period)``.

    With the events sorted by time, the window [t_i, t_j] holds events i..j, so the
    bound must hold for every pair i <= j: S[j+1] - S[i] <= rate * (1 + (t_j - t_i)/P).
    Kept as ``A_j <= B_i`` with a running minimum of B, that is one pass.
    """
    excess = -float("inf")
    total = 0.0
    lowest = float("inf")
    for at, cost in sorted(events):
        lowest = min(lowest, total - rate * at / period + rate)
        total += cost
        excess = max(excess, total - rate * at / period - lowest)
    return excess


def test_the_window_check_finds_an_excess() -> None:
    # Rate 2 per second: at most 2 at once, 3 within a half-second window.
    assert worst_excess([(0.0, 1), (0.0, 1)], 2, 1.0) == 0
    assert worst_excess([(0.0, 1), (0.0, 1), (0.0, 1)], 2, 1.0) == 1
    assert worst_excess([(0.0, 2), (0.5, 1), (0.6, 1)], 2, 1.0) == pytest.approx(0.8)
    assert worst_excess([(0.0, 2), (1.0, 2), (2.0, 2)], 2, 1.0) == 0


async def hammer(
    limiter: RecordingLimiter,
    model: str,
    *,
    tasks: int,
    seconds: float,
    seed: int,
    max_tokens: int,
) -> list[tuple[float, float, int]]:
    """Acquire from ``tasks`` tasks as fast as possible; (scheduled, proceeded, tokens)."""
    rng = random.Random(seed)
    admitted: list[tuple[float, float, int]] = []
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < deadline:
            tokens = rng.randint(1, max_tokens)
            await limiter.acquire(model, tokens)
            proceeded = time.time()
            task = asyncio.current_task()
            assert task is not None
            admitted.append((limiter.decisions[task].at, proceeded, tokens))

    await asyncio.gather(*(worker() for _ in range(tasks)))
    return admitted


@dataclasses.dataclass
class Figures:
    """Admissions against the GCRA bound over the whole run, and the worst window."""

    requests: int
    request_bound: float
    request_excess: float
    tokens: int
    token_bound: float
    token_excess: float

    @property
    def utilization(self) -> float:
        """How fully the binding limit was used over the run."""
        return max(self.requests / self.request_bound, self.tokens / self.token_bound)

    def __str__(self) -> str:
        return (
            f"{self.requests} requests (bound {self.request_bound:.1f}, worst window "
            f"{self.request_excess:+.3f}), {self.tokens} tokens (bound {self.token_bound:.1f}, "
            f"worst window {self.token_excess:+.3f})"
        )


def check_bounds(admitted: list[tuple[float, float, int]], limits: RateLimits) -> Figures:
    """Assert the GCRA bound for requests and tokens in every window."""
    assert limits.requests_per_minute is not None
    assert limits.tokens_per_minute is not None
    requests = [(at, 1) for at, _, _ in admitted]
    tokens = [(at, n) for at, _, n in admitted]
    times = sorted(at for at, _, _ in admitted)
    growth = 1 + (times[-1] - times[0]) / limits.period
    figures = Figures(
        requests=len(requests),
        request_bound=limits.requests_per_minute * growth,
        request_excess=worst_excess(requests, limits.requests_per_minute, limits.period),
        tokens=sum(n for _, n in tokens),
        token_bound=limits.tokens_per_minute * growth,
        token_excess=worst_excess(tokens, limits.tokens_per_minute, limits.period),
    )
    # At most a microsecond of rounding (Redis TIME's resolution) per decision.
    slack = 1e-5 * limits.tokens_per_minute + 1e-9
    assert figures.request_excess <= slack, figures
    assert figures.token_excess <= slack, figures
    return figures


async def planned_wait(limiter: RateLimiter, model: str, tokens: int = 0) -> float:
    """The wait a request would have now, learned without reserving (max_wait=0 refuses)."""
    with pytest.raises(RateLimited) as refused:
        await limiter.acquire(model, tokens, max_wait=0)
    return refused.value.retry_after


async def waits_over(limiter: RateLimiter, model: str, seconds: float) -> bool:
    return await planned_wait(limiter, model) > seconds


async def at_once(limiter: RateLimiter, model: str, tokens: int = 0) -> bool:
    """Whether a request is admitted without a planned wait (the limiter's own count, not
    a stopwatch, which a loaded machine would fool)."""
    waited = limiter.stats().waited
    await limiter.acquire(model, tokens)
    return limiter.stats().waited == waited


async def admitted_at_once(limiter: RateLimiter, model: str) -> int:
    """How many requests go without waiting, until the first `RateLimited`."""
    admitted = 0
    while True:
        try:
            await limiter.acquire(model, 0, max_wait=0)
        except RateLimited:
            return admitted
        admitted += 1


# -- local --------------------------------------------------------------------------


async def test_a_full_burst_at_once_then_the_rate() -> None:
    limiter = RateLimiter(RateLimits(requests_per_minute=200, period=1.0))
    began = time.monotonic()
    await asyncio.gather(*(limiter.acquire("m", 0) for _ in range(200)))
    burst_s = time.monotonic() - began
    assert limiter.stats().waited == 0
    finished: list[int] = []

    async def one(index: int) -> None:
        await limiter.acquire("m", 0)
        finished.append(index)

    await asyncio.gather(*(one(i) for i in range(40)))
    elapsed = time.monotonic() - began
    # 40 more at 200/s: the last one 0.2 s after the start at the earliest, however fast the
    # machine; served in order of arrival.
    assert elapsed >= 0.195
    assert finished == list(range(40))
    stats = limiter.stats()
    assert (stats.acquired, stats.shared, stats.degraded) == (240, False, False)
    # All 40 wait, but for those the bucket regained (200/s) while a busy machine ran the burst.
    assert 40 - math.ceil(burst_s * 200) - 1 <= stats.waited <= 40


@pytest.mark.parametrize(
    "max_tokens",
    [
        pytest.param(100, id="tokens-bind"),  # 50 a request on average: 300/s would be 15,000
        pytest.param(30, id="requests-bind"),  # 15 on average: 300/s is 4,650
    ],
)
async def test_local_rates_hold_in_every_window(max_tokens: int) -> None:
    limits = RateLimits(requests_per_minute=300, tokens_per_minute=6000, period=1.0)
    limiter = RecordingLimiter({"gpt-4o": limits})
    admitted = await hammer(limiter, "gpt-4o", tasks=8, seconds=1.2, seed=1, max_tokens=max_tokens)
    figures = check_bounds(admitted, limits)
    print(f"local: {figures}")
    # Not overly conservative: the binding limit is used almost fully.
    assert figures.utilization > 0.95


async def test_tokens_wait_for_the_refill() -> None:
    limiter = RateLimiter(RateLimits(tokens_per_minute=1000, period=1.0))
    assert await at_once(limiter, "m", 900)
    waited = await limiter.acquire("m", 200)
    assert waited >= 0.095  # 100 tokens refill in 0.1 s, however fast the machine
    with pytest.raises(RateLimited) as caught:
        await limiter.acquire("m", 500, max_wait=0)
    assert caught.value.limit == "tokens"
    # 0.5 s of refill, less however long the machine took since the bucket was empty.
    assert 0 < caught.value.retry_after <= 0.5 + 1e-6


async def test_rate_limited_when_the_wait_would_exceed_max_wait() -> None:
    # A period of 60 s (a slot every 6 s): the planned waits below do not depend on how
    # fast a loaded machine runs the test.
    limiter = RateLimiter(RateLimits(requests_per_minute=10, max_wait=3.0, period=60.0))
    for _ in range(10):
        await limiter.acquire("m", 0)
    with pytest.raises(RateLimited) as caught:
        await limiter.acquire("m", 0)
    error = caught.value
    assert (error.model, error.limit, error.max_wait) == ("m", "requests", 3.0)
    assert error.retry_after == pytest.approx(6.0, abs=0.5)
    assert "retry after" in str(error)
    # Nothing was reserved: the next request would wait 6 s, not 12 s.
    assert await planned_wait(limiter, "m") == pytest.approx(6.0, abs=0.5)
    stats = limiter.stats()
    assert (stats.rate_limited, stats.waited) == (2, 0)  # refused at once, never waiting


async def test_an_oversized_request_fails_fast() -> None:
    limiter = RateLimiter(RateLimits(requests_per_minute=5, tokens_per_minute=1000))
    with pytest.raises(RequestTooLarge) as caught:
        await limiter.acquire("m", 1001)
    assert (caught.value.tokens, caught.value.tokens_per_minute) == (1001, 1000)
    assert isinstance(caught.value, InvalidArgument)
    assert "can never fit" in str(caught.value)
    assert await at_once(limiter, "m", 1000)  # the whole budget is fine


async def test_a_cancelled_waiter_gives_its_reservation_back() -> None:
    limiter = RateLimiter(RateLimits(requests_per_minute=10, period=60.0))  # 6 s a slot
    for _ in range(10):
        await limiter.acquire("m", 0)
    waiter = asyncio.create_task(limiter.acquire("m", 0))
    await eventually(lambda: waits_over(limiter, "m", 9.0))  # the waiter has reserved
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    # Its slot is free again: the next one would wait 6 s, not 12 s.
    assert await planned_wait(limiter, "m") < 9.0
    stats = limiter.stats()
    assert (stats.cancelled, stats.given_back) == (1, 1)


async def test_only_the_latest_reservation_is_given_back() -> None:
    limiter = RateLimiter(RateLimits(requests_per_minute=10, period=60.0))  # 6 s a slot
    for _ in range(10):
        await limiter.acquire("m", 0)
    first = asyncio.create_task(limiter.acquire("m", 0))
    second = asyncio.create_task(limiter.acquire("m", 0))
    await eventually(lambda: waits_over(limiter, "m", 15.0))  # both reserved: 6 s, 12 s
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    # Giving back a slot that a later reservation counts on would let one more in
    # than the bound, so it stays taken: the next one would still wait 18 s.
    assert await planned_wait(limiter, "m") > 15.0
    assert (limiter.stats().cancelled, limiter.stats().given_back) == (1, 0)
    second.cancel()  # the latest: its slot is given back
    with pytest.raises(asyncio.CancelledError):
        await second
    assert await planned_wait(limiter, "m") < 15.0
    stats = limiter.stats()
    assert (stats.cancelled, stats.given_back) == (2, 1)


async def test_models_have_their_own_budgets() -> None:
    limiter = RateLimiter(
        {
            "small": RateLimits(requests_per_minute=1, max_wait=0),
            "*": RateLimits(requests_per_minute=1000),
        }
    )
    await limiter.acquire("small", 0)
    with pytest.raises(RateLimited):
        await limiter.acquire("small", 0)
    assert await at_once(limiter, "other")
    assert await at_once(limiter, "unlimited-too")
    unlimited = RateLimiter(RateLimits())
    for _ in range(1000):
        assert await unlimited.acquire("m", 10**9) == 0.0


def test_limits_are_validated_and_frozen() -> None:
    for bad in (
        {"requests_per_minute": 0},
        {"requests_per_minute": True},
        {"tokens_per_minute": 1.5},
        {"tokens_per_minute": -3},
        {"max_wait": -1},
        {"max_wait": float("nan")},
        {"max_wait": float("inf")},
        {"period": 0},
        {"period": "60"},
    ):
        with pytest.raises(ConfigurationError):
            RateLimits(**bad)
    limits = RateLimits(requests_per_minute=60)
    with pytest.raises(dataclasses.FrozenInstanceError):
        limits.requests_per_minute = 120  # type: ignore[misc]
    for bad_limits in ({}, {"m": 5}, {"": limits}, [limits], None):
        with pytest.raises(ConfigurationError):
            RateLimiter(bad_limits)  # type: ignore[arg-type]
    for bad_options in (
        {"redis": "http://127.0.0.1:6379"},
        {"redis": 6379},
        {"redis_timeout": 0},
    ):
        with pytest.raises(ConfigurationError):
            RateLimiter(limits, **bad_options)
    with pytest.raises(InvalidNamespace):
        RateLimiter(limits, namespace="no spaces")


async def test_acquire_arguments_are_validated() -> None:
    limiter = RateLimiter({"m": RateLimits(requests_per_minute=60)})
    calls: list[tuple[object, object, object]] = [
        ("", 0, None),
        (5, 0, None),
        ("unknown", 0, None),
        ("m", -1, None),
        ("m", True, None),
        ("m", 1.5, None),
        ("m", 0, -1.0),
        ("m", 0, float("nan")),
    ]
    for model, tokens, max_wait in calls:
        with pytest.raises(InvalidArgument):
            await limiter.acquire(model, tokens, max_wait=max_wait)  # type: ignore[arg-type]
    assert limiter.stats().acquired == 0


# -- shared through Redis -------------------------------------------------------------


def namespace_for_test() -> str:
    return f"rl-{uuid.uuid4().hex[:12]}"


async def test_limiters_share_one_budget_through_redis(redis_url: str) -> None:
    # A slot every 3 s: no slot frees up while a loaded machine makes the 20 calls.
    limits = RateLimits(requests_per_minute=20, max_wait=0, period=60.0)
    namespace = namespace_for_test()
    client = Redis.from_url(redis_url, decode_responses=True)  # a caller's own client
    async with (
        RateLimiter(limits, redis=redis_url, namespace=namespace) as first,
        RateLimiter(limits, redis=client, namespace=namespace) as second,
        RateLimiter(limits, redis=redis_url, namespace=namespace_for_test()) as elsewhere,
    ):
        for _ in range(10):
            await first.acquire("m", 0)
            await second.acquire("m", 0)
        for limiter in (first, second):
            with pytest.raises(RateLimited) as caught:
                await limiter.acquire("m", 0)
            assert caught.value.retry_after == pytest.approx(3.0, abs=1.0)
        await elsewhere.acquire("m", 0)  # namespaces keep apart
        for limiter in (first, second):
            stats = limiter.stats()
            assert (stats.shared, stats.degraded, stats.redis_errors) == (True, False, 0)
            assert stats.local_decisions == 0
        # The keys expire once the budget has refilled.
        ttl = await client.pttl(f"ac:rl:{{{namespace}/m}}")
        assert 0 < ttl <= 60_100
    await client.aclose()


async def test_namespace_and_model_never_share_a_budget_through_a_colon(redis_url: str) -> None:
    """Namespace ``a`` with model ``b:c`` and namespace ``a:b`` with model ``c`` are apart."""
    limits = RateLimits(requests_per_minute=1, max_wait=0.0, period=60.0)
    base = namespace_for_test()
    async with (
        RateLimiter(limits, redis=redis_url, namespace=base) as first,
        RateLimiter(limits, redis=redis_url, namespace=f"{base}:b") as second,
    ):
        await first.acquire("b:c", 0)
        await second.acquire("c", 0)  # its own budget: not RateLimited
        with pytest.raises(RateLimited):
            await first.acquire("b:c", 0)


async def test_a_cancelled_shared_waiter_gives_its_reservation_back(redis_url: str) -> None:
    limits = RateLimits(requests_per_minute=10, tokens_per_minute=100, period=60.0)
    async with RateLimiter(limits, redis=redis_url, namespace=namespace_for_test()) as limiter:
        for _ in range(10):
            await limiter.acquire("m", 10)
        waiter = asyncio.create_task(limiter.acquire("m", 10))
        await eventually(lambda: waits_over(limiter, "m", 9.0))  # the waiter has reserved
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        # Its slot is free again: the next one would wait 6 s, not 12 s.
        assert await planned_wait(limiter, "m") < 9.0
        stats = limiter.stats()
        assert (stats.cancelled, stats.given_back, stats.redis_errors) == (1, 1, 0)


async def test_redis_down_falls_back_to_local_limits(redis_server: RedisServer) -> None:
    # A period of 60 s: the budget does not refill while a loaded machine runs the test.
    limits = RateLimits(requests_per_minute=100, period=60.0, max_wait=0)
    namespace = namespace_for_test()
    async with (
        RateLimiter(limits, redis=redis_server.url, namespace=namespace) as limiter,
        RateLimiter(limits, redis=redis_server.url, namespace=namespace) as other,
    ):
        for _ in range(30):
            await limiter.acquire("m", 0)
        await other.acquire("m", 0)
        await limiter.acquire("m", 0)  # learns that two instances share the budget
        redis_server.kill()
        # Redis refuses: no error, and local decisions at half the limit (two
        # instances: 50 a second, a burst of 50), starting from the shared budget's
        # known use (32 of 100: 32%). So about 34 go at once (not 50 from a fresh
        # share, 68 from the whole limit, or 100).
        admitted = await admitted_at_once(limiter, "m")
        assert 32 <= admitted <= 37
        stats = limiter.stats()
        assert stats.degraded
        assert stats.redis_errors >= 1
        assert stats.local_decisions == admitted + 1
        assert "Error" in stats.redis_last_error

        redis_server.start()  # same port

        async def shared_again() -> bool:
            with contextlib.suppress(RateLimited):  # the local budget is spent
                await limiter.acquire("m", 0)  # a call tries Redis again
            return not limiter.stats().degraded

        # Shared again (a fresh, empty Redis).
        await eventually(shared_again, within=30, interval=0.05)


async def test_a_hung_redis_costs_one_timeout_then_decisions_are_local(
    redis_server: RedisServer,
) -> None:
    limits = RateLimits(requests_per_minute=1000, period=1.0)
    async with RateLimiter(
        limits, redis=redis_server.url, namespace=namespace_for_test(), redis_timeout=0.1
    ) as limiter:
        await limiter.acquire("m", 0)
        redis_server.pause()
        try:
            # Without its deadline the call would wait for as long as Redis is paused.
            async with asyncio.timeout(30):
                await limiter.acquire("m", 0)
            assert limiter.stats().redis_errors == 1
            await limiter.acquire("m", 0)  # within the backoff: Redis is not tried
            assert limiter.stats().redis_errors == 1
        finally:
            redis_server.resume()
        stats = limiter.stats()
        assert stats.degraded
        assert stats.local_decisions == 2
        assert "TimeoutError" in stats.redis_last_error


# -- four processes, one budget -------------------------------------------------------

SHARED_LIMITS = RateLimits(
    requests_per_minute=150, tokens_per_minute=6000, max_wait=10.0, period=1.0
)


def _shared_worker(
    index: int, redis_url: str, namespace: str, seconds: float, start: Any, results: Any
) -> None:
    async def run() -> dict[str, Any]:
        # A generous Redis deadline: on a starved 2-core machine a call may take more
        # than 0.1 s, which would rightly send this process to its local share.
        async with RecordingLimiter(
            SHARED_LIMITS, redis=redis_url, namespace=namespace, redis_timeout=2.0
        ) as limiter:
            start.wait()
            admitted = await hammer(
                limiter, "gpt-4o", tasks=6, seconds=seconds, seed=index, max_tokens=100
            )
            stats = limiter.stats()
            return {
                "admitted": admitted,
                "local_decisions": stats.local_decisions,
                "redis_last_error": stats.redis_last_error,
                "instances": max(d.instances for d in limiter.decisions.values()),
            }

    try:
        results.put((index, asyncio.run(asyncio.wait_for(run(), seconds + 30))))
    except BaseException:
        results.put((index, {"error": traceback.format_exc()}))


def test_four_processes_never_exceed_the_combined_limit(redis_url: str) -> None:
    seconds = 2.5
    namespace = namespace_for_test()
    start = _spawn.Barrier(PROCESSES)
    results = _spawn.Queue()
    workers = [
        _spawn.Process(
            target=_shared_worker, args=(i, redis_url, namespace, seconds, start, results)
        )
        for i in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    collected = [results.get(timeout=seconds + 60) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    errors = [result["error"] for _, result in collected if "error" in result]
    assert not errors, "\n".join(errors)
    for _, result in collected:
        assert result["local_decisions"] == 0, result["redis_last_error"]
        assert result["instances"] == PROCESSES
    admitted = [event for _, result in collected for event in result["admitted"]]
    figures = check_bounds(admitted, SHARED_LIMITS)
    # Each request went on its way no earlier than its scheduled start (same host clock).
    lateness = sorted(proceeded - at for at, proceeded, _ in admitted)
    assert lateness[0] > -0.001
    # After the first second (whoever starts first takes most of the burst), reservations
    # are served in order of arrival, so the processes share alike.
    first = min(at for at, _, _ in admitted)
    steady = [
        sum(1 for at, _, _ in result["admitted"] if at >= first + 1.0)
        for _, result in sorted(collected)
    ]
    print(
        f"4 processes: {figures}; per process {[len(r['admitted']) for _, r in collected]}, "
        f"after 1 s {steady}; lateness p50 {lateness[len(lateness) // 2] * 1000:.1f} ms, "
        f"max {lateness[-1] * 1000:.1f} ms"
    )
    # Not overly conservative: the binding limit (tokens) is used almost fully.
    assert figures.utilization > 0.95
    assert min(steady) > max(steady) / 2
