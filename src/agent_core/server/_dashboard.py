"""The live dashboard: the page at ``/`` and ``GET /v1/dashboard``, the numbers it charts."""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import time
from importlib import resources
from typing import Final, Literal

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from ._access import Ops
from ._core import Core, core_of
from ._recent import RecentSummary

__all__ = ["DashboardResponse", "dashboard_router"]

_PAGE: Final = "dashboard.html"


class Recent(BaseModel):
    """Nearest-rank percentiles, in seconds, of the samples of the last ``window`` seconds."""

    count: int
    p50: float
    p95: float
    p99: float
    max: float


class TierLatency(BaseModel):
    """Thread reads (GETs and turn histories) by the tier that served them."""

    l1: Recent
    l2: Recent
    store: Recent


class Reads(BaseModel):
    """Thread reads since the cache opened, by the tier that served them."""

    total: int
    l1_hits: int
    l2_hits: int
    misses: int = Field(description="Reads served by the store.")


class HitRates(BaseModel):
    """Hit rates since the cache opened, as in ``/v1/stats``."""

    l1: float = Field(description="L1 hits / all reads.")
    l2: float = Field(description="L2 hits / reads that reached L2.")
    total: float = Field(description="(L1 + L2 hits) / all reads.")


class Memory(BaseModel):
    """RSS against the memory limit, and L1 against its byte budget (in bytes)."""

    rss: int | None = Field(description="None when the cache runs no memory monitor.")
    limit: int | None
    pressure: bool
    l1_bytes: int
    l1_budget: int
    l1_entries: int


class DashboardResponse(BaseModel):
    """What the dashboard at ``/`` charts, every 2 s."""

    time: float = Field(description="Server time, Unix seconds.")
    uptime: float = Field(description="Seconds since the app started.")
    window: float = Field(description="Seconds that `read_latency` and `loop_lag` cover.")
    reads: Reads
    hit_rate: HitRates
    read_latency: TierLatency
    loop_lag: Recent
    memory: Memory
    appends: int
    redis: Literal["none", "ok", "degraded"]


dashboard_router = APIRouter(dependencies=[Ops])


@dashboard_router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def dashboard_page() -> HTMLResponse:
    """The dashboard: one static page that polls ``/v1/dashboard`` and draws its own charts."""
    page = _page()
    return HTMLResponse(page, headers={"Cache-Control": "no-cache", **_security_headers(page)})


@dashboard_router.get("/v1/dashboard", response_model=DashboardResponse, tags=["ops"])
async def dashboard_data(request: Request) -> DashboardResponse:
    """Hit rates, recent read latency by tier, recent loop lag and memory, for ``/``."""
    return dashboard_snapshot(core_of(request))


def dashboard_snapshot(core: Core) -> DashboardResponse:
    stats = core.stats()
    recent = core.recent
    memory = stats.memory
    now = time.time()
    return DashboardResponse(
        time=now,
        uptime=now - core.started,
        window=recent.window,
        reads=Reads(
            total=stats.requests,
            l1_hits=stats.l1_hits,
            l2_hits=stats.l2_hits,
            misses=stats.misses,
        ),
        hit_rate=HitRates(l1=stats.l1_hit_rate, l2=stats.l2_hit_rate, total=stats.hit_rate),
        read_latency=TierLatency(
            l1=_recent(recent.reads["l1"].summary()),
            l2=_recent(recent.reads["l2"].summary()),
            store=_recent(recent.reads["store"].summary()),
        ),
        loop_lag=_recent(recent.loop_lag.summary()),
        memory=Memory(
            rss=None if memory is None else memory.rss,
            limit=None if memory is None else memory.limit,
            pressure=memory is not None and memory.pressure,
            l1_bytes=stats.l1_bytes,
            l1_budget=stats.l1_max_bytes,
            l1_entries=stats.l1_entries,
        ),
        appends=stats.appends,
        redis=core.redis_state(stats),
    )


def _recent(summary: RecentSummary) -> Recent:
    return Recent(
        count=summary.count, p50=summary.p50, p95=summary.p95, p99=summary.p99, max=summary.max
    )


@functools.cache
@functools.cache
def _security_headers(page: str) -> dict[str, str]:
    """What keeps the page from being framed, sniffed or made to run other scripts: its one
    inline script is allowed by hash, it may only fetch from its own origin."""
    script = re.search(r"<script>(.*?)</script>", page, re.DOTALL)
    digest = hashlib.sha256((script.group(1) if script else "").encode()).digest()
    policy = (
        "default-src 'none'; "
        f"script-src 'sha256-{base64.b64encode(digest).decode()}'; "
        # Its style attributes and <style>: styles can't run code.
        "style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
    }


def _page() -> str:
    # Package data, read once: the page works from a wheel or a zip, with no build step.
    return resources.files("agent_core.server").joinpath(_PAGE).read_text(encoding="utf-8")
