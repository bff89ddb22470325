"""The jobs page in a real browser (Debian's headless Chromium driven by Playwright):
it asks for the token, lists jobs with filters, shows one job's progress, log and
result, and cancels a running one."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.execution_manager.monitoring.test_dashboard_browser import chromium  # noqa: F401  # the fixture
from tests.jobs.test_jobs import jobs_kernel

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


async def test_the_jobs_page_lists_filters_shows_and_cancels(tmp_path: Path, chromium: str) -> None:  # noqa: F811
    from playwright.async_api import async_playwright, expect

    async with jobs_kernel(tmp_path) as (kernel, client, token), async_playwright() as pw:
        done = await client.submit(function="math:factorial", args=[10], name="tenfold")
        failed = await client.submit(function="math:sqrt", args=["x"], project="etl")
        running = await client.submit(function="tests.tasks:report_then_wait", args=[0.5, 30], name="halfway")
        await client.wait(done.id, 10)
        await client.wait(failed.id, 10)
        browser = await pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = await browser.new_page(viewport={"width": 1500, "height": 1000})
            await page.goto(kernel.get_service("jobs").address + "/")
            await expect(page.locator("#conn")).to_have_text("no token")
            await page.fill("#token", "wrong")
            await page.dispatch_event("#token", "change")
            await expect(page.locator("#toast")).to_contain_text("refused (403)")
            await page.fill("#token", token)
            await page.dispatch_event("#token", "change")
            await expect(page.locator("#conn")).to_have_text("live")
            await expect(page.locator("#jobs tr")).to_have_count(3)

            await page.select_option("#f-state", "failed")
            await expect(page.locator("#jobs tr")).to_have_count(1)
            await expect(page.locator(f'tr[data-job="{failed.id}"]')).to_be_visible()
            await page.select_option("#f-state", "")
            await page.fill("#f-project", "etl")
            await page.dispatch_event("#f-project", "change")
            await expect(page.locator("#jobs tr")).to_have_count(1)
            await page.fill("#f-project", "")
            await page.dispatch_event("#f-project", "change")

            await page.locator(f'tr[data-job="{done.id}"]').click()
            await expect(page.locator("#result")).to_have_text("3628800")
            await expect(page.locator('dd[data-field="name"]')).to_have_text("tenfold")

            await page.locator(f'tr[data-job="{running.id}"]').click()
            await expect(page.locator('dd[data-field="progress"]')).to_have_text("50% halfway there", timeout=10_000)
            await page.locator("#cancel").click()
            await expect(page.locator('dd[data-field="state"]')).to_have_text("cancelled", timeout=10_000)
        finally:
            await browser.close()
