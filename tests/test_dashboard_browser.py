"""The dashboard in headless Chromium, against ``agent-core serve``: it draws the server's numbers.

Chromium is Debian's (installed by `ensure_chromium` when missing), driven by Playwright. The
server is the real console script on a free port with a temp SQLite store and EchoModel.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from ._chromium import CHROMIUM_ARGS, ensure_chromium
from ._poll import eventually_sync
from ._serve import ServeProcess

#: Long enough for the first poll and two refreshes (2 s apart) on a busy machine.
WAIT_MS = 15_000
MESSAGE = {"role": "user", "content": "hello there, " * 10}

# Pixels of each drawn series, per chart: how many are (nearly) the series' colour. Dashed
# lines are left out: their gaps make the count depend on where the dashes fall.
COUNT_PIXELS = """() => {
  const hex = (c) => [1, 3, 5].map((i) => parseInt(c.slice(i, i + 2), 16));
  const result = {};
  for (const [name, chart] of Object.entries(window.dashboard.charts)) {
    const canvas = document.getElementById(chart.canvas);
    const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    result[name] = {};
    for (const series of chart.series) {
      if (series.dashed) continue;
      const [r, g, b] = hex(series.color);
      let count = 0;
      for (let i = 0; i < pixels.length; i += 4) {
        const d = Math.abs(pixels[i] - r) + Math.abs(pixels[i + 1] - g)
          + Math.abs(pixels[i + 2] - b);
        if (pixels[i + 3] > 200 && d < 40) count++;
      }
      result[name][series.key] = count;
    }
  }
  return result;
}"""

# The text and the raw number of each figure next to the charts.
FIGURES = """() => Object.fromEntries([...document.querySelectorAll("dd[id]")].map(
  (el) => [el.id, { text: el.textContent, ...el.dataset }]))"""


@pytest.fixture(scope="session")
def chromium() -> Path:
    return ensure_chromium()


@pytest.fixture(scope="module")
def browser(chromium: Path) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=list(CHROMIUM_ARGS))
        yield launched
        launched.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServeProcess]:
    running = ServeProcess(tmp_path)
    running.start()
    yield running
    running.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    opened = browser.new_page(viewport={"width": 1280, "height": 720})
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    opened.close()
    assert not errors, f"the page raised: {errors}"


def polls_reach(page: Page, count: int) -> None:
    """Wait until the page has polled ``count`` times. Not ``wait_for_function``: its
    predicate is eval'd in the page, which the page's Content-Security-Policy forbids
    (as it should: the page runs its own script only)."""
    eventually_sync(
        lambda: page.evaluate("window.dashboard.polls") >= count,
        within=WAIT_MS / 1000,
        interval=0.05,
    )


def drive_traffic(http: httpx.Client) -> None:
    """Appends, L1 hits, windows, store misses and turns: every chart gets something."""
    for i in range(10):
        thread = f"thread-{i}"
        assert http.post(f"/v1/threads/{thread}/messages", json={"messages": [MESSAGE]}).is_success
        assert http.get(f"/v1/threads/{thread}").is_success
        assert http.get(f"/v1/threads/{thread}", params={"max_tokens": 100}).is_success
        # Never written: a 404, read from the store (a miss the charts count).
        assert http.get(f"/v1/threads/unknown-{i}").status_code == 404
    for i in range(3):
        assert http.post(f"/v1/threads/thread-{i}/turns", json={"message": "hi"}).is_success


def keep_reading(http: httpx.Client, stop: threading.Event) -> None:
    """Reads until ``stop``: each refresh then has reads of its own to chart."""
    i = 0
    while not stop.is_set():
        http.get(f"/v1/threads/thread-{i % 10}" if i % 4 else f"/v1/threads/new-{i}")
        i += 1
        stop.wait(0.05)


def test_the_charts_draw_the_servers_numbers(
    server: ServeProcess, page: Page, tmp_path: Path
) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        drive_traffic(http)
        stop = threading.Event()
        reader = threading.Thread(target=keep_reading, args=(http, stop))
        reader.start()
        try:
            # One minute across, rather than five: the lines of a few seconds are longer.
            page.goto(f"{server.url}/?minutes=1")
            # The first poll and two refreshes.
            polls_reach(page, 3)
        finally:
            stop.set()
            reader.join()
        # Two more polls: the second starts after the reads stopped, so it shows the final counts.
        polls = page.evaluate("window.dashboard.polls")
        polls_reach(page, polls + 2)
        stats = http.get("/v1/stats").json()

    shown: dict[str, Any] = page.evaluate(FIGURES)
    assert float(shown["hit-total"]["value"]) == stats["hit_rate"]
    assert float(shown["hit-l1"]["value"]) == stats["l1_hit_rate"]
    assert float(shown["hit-l2"]["value"]) == stats["l2_hit_rate"] == 0.0  # no Redis
    assert 0.5 < stats["hit_rate"] < 1
    assert float(shown["hit-total"]["text"].rstrip("%")) == pytest.approx(
        stats["hit_rate"] * 100, abs=0.051
    )
    assert int(shown["reads-total"]["value"]) == stats["requests"] > 40
    assert shown["reads-total"]["text"] == f"{stats['requests']:,}"
    for tier in ("l1", "store"):
        figure = shown[f"lat-{tier}"]
        assert int(figure["count"]) > 0, figure
        assert 0 < float(figure["p50"]) <= float(figure["p95"]) < 10
        assert "/" in figure["text"]
    assert shown["lat-l2"]["text"] == "no reads"
    assert float(shown["lag-max"]["value"]) >= float(shown["lag-p99"]["value"]) >= 0
    assert int(shown["mem-l1"]["value"]) == stats["l1_bytes"] > 0
    assert int(shown["mem-budget"]["value"]) == stats["l1_max_bytes"]
    assert int(shown["mem-rss"]["value"]) > 0
    assert shown["mem-rss"]["text"].endswith("MiB")

    state = page.evaluate(
        "({polls: dashboard.polls, failures: dashboard.failures,"
        " times: dashboard.history.map((p) => p.t), charts: dashboard.charts})"
    )
    assert state["failures"] == 0
    times = state["times"]
    assert len(times) == state["polls"] >= 5
    assert times == sorted(set(times))  # one point per refresh
    drawn = {name: chart["drawn"] for name, chart in state["charts"].items()}
    # Every series with data has a point per refresh (hit rates: per refresh with reads).
    for name, key in (
        ("hits", "hit_total"),
        ("latency", "l1_p95"),
        ("latency", "store_p95"),
        ("lag", "lag_p99"),
        ("memory", "rss_share"),
        ("memory", "l1_share"),
    ):
        assert drawn[name][key] >= 3, (name, key, drawn)
    assert drawn["latency"]["l2_p95"] == 0

    pixels = page.evaluate(COUNT_PIXELS)
    for name, key in (
        ("hits", "hit_total"),
        ("hits", "hit_l1"),
        ("latency", "l1_p95"),
        ("latency", "store_p95"),
        ("lag", "lag_max"),
        ("memory", "rss_share"),
        ("memory", "l1_share"),
    ):
        assert pixels[name][key] >= 10, (name, key, pixels)
    page.screenshot(path=tmp_path / "dashboard.png", full_page=True)


def test_a_banner_while_the_server_is_away(server: ServeProcess, page: Page) -> None:
    page.goto(f"{server.url}/")
    polls_reach(page, 1)
    banner = page.locator("#banner")
    assert banner.is_hidden()

    server.stop()
    banner.wait_for(state="visible", timeout=WAIT_MS)
    assert "not answering" in banner.inner_text()
    assert page.evaluate("window.dashboard.failures") >= 1
    # The last numbers stay on the page.
    assert page.locator("#reads-total").inner_text() != "\u2013"  # the dash of "no data yet"

    server.start()
    banner.wait_for(state="hidden", timeout=WAIT_MS)
    assert page.evaluate("window.dashboard.polls") >= 2
