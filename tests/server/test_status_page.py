"""The status page in headless Chromium: charts drawn from the API, Sync now runs to completion.

Uses Debian's /usr/bin/chromium through Playwright (no bundled browser download).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ltvsync.server.app import create_app

from .conftest import TOKEN
from .fakes import FakeDaemon, FakeQueries
from .live import serving

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = pytest.mark.browser

if not CHROMIUM.exists() and os.environ.get("CI") != "true":
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import Browser, expect, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # One Chromium for the module: launching it is most of a browser test's cost.
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def test_status_page_renders_charts_and_runs_sync_now(browser: Browser) -> None:
    queries = FakeQueries()
    daemon = FakeDaemon(queries, finish_after=1.0)
    app = create_app(daemon, queries, TOKEN)
    console_errors: list[str] = []
    requested: list[str] = []
    with serving(app) as base:
        context = browser.new_context(viewport={"width": 1280, "height": 1400})
        try:
            page = context.new_page()
            page.on("console", lambda msg: console_errors.append(msg.text) if msg.type == "error" else None)
            page.on("request", lambda req: requested.append(req.url))
            page.goto(f"{base}/#token={TOKEN}")

            for chart in ("chart-ltv", "chart-tags", "chart-retention", "chart-cohort-ltv"):
                page.wait_for_selector(f"#{chart}[data-rendered=ok]", timeout=10_000)
            assert page.locator("#chart-ltv rect.bar").count() == 20
            counts = page.locator("#chart-ltv rect.bar").evaluate_all("rs => rs.map(r => +r.dataset.count)")
            assert counts == [b.count for b in queries.ltv_distribution(20).bins]
            heights = page.locator("#chart-ltv rect.bar").evaluate_all(
                "rs => rs.map(r => +r.getAttribute('height'))"
            )
            assert max(heights) > 100 and min(heights) > 0
            assert page.locator("#chart-tags polyline.series").count() == 2
            expected_cells = sum(len(r.retention) for r in queries.cohorts().rows)
            assert page.locator("#chart-retention rect.cell").count() == expected_cells
            assert page.locator("#chart-cohort-ltv rect.bar").count() == len(queries.cohorts().rows)
            assert page.locator("#runs tbody tr").count() == 2
            assert "failed" in page.locator("#runs tbody tr[data-run-id='1']").inner_text()
            assert "2.0 h" in page.locator("#streams").inner_text()
            # The token left the address bar as soon as the page read it.
            assert "token" not in page.url

            page.click("#sync-now")
            page.wait_for_selector("#sync-status[data-state=finished]", timeout=15_000)
            assert page.locator("#sync-status").inner_text().startswith("Run #3 finished: ok")
            page.wait_for_selector("#runs tbody tr[data-run-id='3']")
            assert daemon.submitted == ["manual"]

            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "status-page.png"), full_page=True)
        finally:
            context.close()
    assert console_errors == []
    assert requested and all(url.startswith(base) for url in requested)


def test_status_page_asks_for_a_token_and_rejects_a_wrong_one(browser: Browser) -> None:
    queries = FakeQueries()
    app = create_app(FakeDaemon(queries), queries, TOKEN)
    with serving(app) as base:
        context = browser.new_context()
        try:
            page = context.new_page()
            page.goto(base + "/")
            page.wait_for_selector("#token-form:not([hidden])")
            page.fill("#token-input", "wrong")
            page.click("#token-form button")
            # A locator wait, not wait_for_function: the page's CSP forbids evaluating strings.
            expect(page.locator("#token-message")).to_contain_text("refused")
            page.fill("#token-input", TOKEN)
            page.click("#token-form button")
            page.wait_for_selector("#chart-ltv[data-rendered=ok]")
        finally:
            context.close()
