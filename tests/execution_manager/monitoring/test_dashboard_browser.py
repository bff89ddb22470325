"""The dashboard in a real browser (Debian's headless Chromium driven by Playwright)
while the kernel runs real worker processes: the table shows them, a new worker appears
without a reload, a drain without the admin token is refused and one with it works."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from microkernel.services.execution_manager.errors import CallRevokedError
from tests import tasks
from tests.execution_manager.monitoring.test_web import ADMIN, TOKEN, kernel_with_http

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = Path(os.environ.get("DASHBOARD_SCREENSHOT", "")) if os.environ.get("DASHBOARD_SCREENSHOT") else None


@pytest.fixture
def chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser test: install Debian's chromium (.ci/run does, as root)")
        pytest.skip("no chromium on PATH (apt-get install chromium); CI installs it")
    return CHROMIUM


async def test_dashboard_live_table_and_drain_with_and_without_token(tmp_path: Path, chromium: str) -> None:
    import aiohttp
    from playwright.async_api import async_playwright, expect

    async with kernel_with_http(tmp_path, minWorkers=2, maxWorkers=3) as kernel, aiohttp.ClientSession() as http, \
            async_playwright() as pw:
        em = kernel.get_service("execution-manager")
        url = em.http_address
        browser = await pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = await browser.new_page(viewport={"width": 1500, "height": 1000})
            await page.goto(url + "/")
            await expect(page.locator("#conn")).to_have_text("live")
            await expect(page.locator('tr[data-worker="local-1"]')).to_be_visible()
            await expect(page.locator('tr[data-worker="local-2"]')).to_be_visible()
            await page.evaluate("window.sameDocument = true")

            async with http.post(f"{url}/api/scale", json={"minWorkers": 3}, headers=ADMIN) as r:
                assert r.status == 200
            await expect(page.locator('tr[data-worker="local-3"]')).to_be_visible(timeout=15_000)
            assert await page.evaluate("window.sameDocument") is True  # no reload happened

            await page.locator('tr[data-worker="local-1"] button[data-action="drain"]').click()
            await expect(page.locator("#toast")).to_contain_text("refused (401)")
            assert not em.pool.fleet.workers["local-1"].retiring

            await page.fill("#token", "not-the-token")
            await page.dispatch_event("#token", "change")
            await page.locator('tr[data-worker="local-1"] button[data-action="drain"]').click()
            await expect(page.locator("#toast")).to_contain_text("refused (403): wrong admin token")
            assert not em.pool.fleet.workers["local-1"].retiring

            await page.fill("#token", TOKEN)
            await page.dispatch_event("#token", "change")
            await page.locator('tr[data-worker="local-1"] button[data-action="drain"]').click()
            await expect(page.locator("#toast")).to_contain_text("drain: local-1")
            await expect(page.locator('tr[data-worker="local-1"]')).to_have_count(0, timeout=15_000)
            await expect(page.locator('tr[data-exited="local-1"]')).to_contain_text("drained on request")

            # A restart asks first, then drains the worker and starts another under its id.
            pid = (await em.worker("local-2")).pid
            page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
            await page.locator('tr[data-worker="local-2"] button[data-action="restart"]').click()
            await expect(page.locator("#toast")).to_contain_text("restart: local-2")
            for _ in range(300):
                again = await em.worker("local-2") if "local-2" in em.pool.fleet.workers else None
                if again is not None and again.restarts == 1 and again.state == "available":
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("local-2 did not come back")
            assert again.pid != pid
            await expect(page.locator('tr[data-worker="local-2"]')).to_be_visible(timeout=15_000)

            # A message from the page: asked for as JSON, answered by each worker (no instance pinned: []).
            page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept('{"ping": 1}')))
            await page.locator('tr[data-worker="local-2"] button[data-action="message"]').click()
            await expect(page.locator("#toast")).to_contain_text('message: {"local-2":[]}')

            # Revoke a running call from its row: it is stopped and its caller told why.
            doomed = em.submit(tasks.slow, 60.0)
            button = page.locator(f'button[data-revoke="{doomed.task_id}"]')
            await expect(button).to_be_visible(timeout=15_000)
            page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
            await button.click()
            await expect(page.locator("#toast")).to_contain_text(f"revoke: task {doomed.task_id}")
            with pytest.raises(CallRevokedError, match="was revoked and stopped"):
                await asyncio.wait_for(doomed, 15)

            # Something to look at in the screenshot: calls in flight with progress, a failure.
            busy = [em.submit(tasks.report_then_wait, f, 3.0, timeout=60) for f in (0.3, 0.7)]
            failed: Any = em.submit(tasks.raise_custom, "row 17 has no date")
            await expect(page.locator("#workers")).to_contain_text("halfway there", timeout=15_000)
            await expect(page.locator("#failures")).to_contain_text("CustomError: row 17 has no date")
            await expect(page.locator('[data-card="failed"] .v')).to_have_text("2")  # the revoked call, and this
            shot = SCREENSHOT or tmp_path / "dashboard.png"
            await page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            with pytest.raises(tasks.CustomError):
                await failed
            for handle in busy:
                await handle
        finally:
            await browser.close()
