"""The status page in a real browser: Debian's chromium, driven by Playwright's async API,
against a real `bootd serve` on loopback (tests/bootd_proc.py).

`playwright install` cannot download here, so the browser is the Debian binary
(executable_path). The test loads the page, sees a node move state live with no
reload when the operator API moves it, sees a node the timer had to retry marked
stalled, gets a 403 for an action without login, then logs in through the form
and resets a node with the page's button.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from bootd_proc import Bootd
from conftest import free_port, loopback_config

playwright_api = pytest.importorskip("playwright.async_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
WAIT_MS = 20_000  # bound on any one wait in the page; never an assertion on speed

# reset times out after 2 s and is retried (up to 100 times), so "stuck", reset
# first, is marked stalled by the timer's retry; the page is public to read, not to act.
EXTRA = """\
status_public = true
[lifecycle]
retries = 100
check_interval = 1
[lifecycle.timeouts]
reset = 2
"""


@pytest.fixture
def bootd(tmp_path: Path) -> Iterator[tuple[Bootd, str]]:
    port = free_port()
    config = tmp_path / "bootd.toml"
    config.write_text(loopback_config(tmp_path / "state", port, "").replace(
        f'listen = "127.0.0.1:{port}"\n', f'listen = "127.0.0.1:{port}"\n' + EXTRA))
    proc = Bootd(config)
    try:
        for i, name in enumerate(("walker", "stuck", "act")):
            proc.cli("nodes", "add", name, "--mac", f"52:54:00:00:02:{i:02x}", "--rack", "r1")
        proc.start()
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        proc.close()


def api_post(base: str, path: str, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    req = urllib.request.Request(base + path, data=b"{}", method="POST", headers=headers)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return int(resp.status)


async def test_status_page_in_chromium(bootd: tuple[Bootd, str]) -> None:
    proc, base = bootd
    token = (proc.config.parent / "state" / "api-token").read_text().strip()
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            assert await asyncio.to_thread(api_post, base, "/api/v1/nodes/stuck/reset", token) == 200
            page = await browser.new_page()
            page.set_default_timeout(WAIT_MS)
            await page.goto(base + "/")
            walker = page.locator('tr[data-node="walker"] td.state')
            assert await walker.text_content() == "discovering"
            await page.evaluate("window.notReloaded = true")

            # The operator API moves the node; the open page follows by SSE, no reload.
            assert await asyncio.to_thread(api_post, base, "/api/v1/nodes/walker/reset", token) == 200
            await page.wait_for_function(
                "document.querySelector('tr[data-node=\"walker\"] td.state').textContent === 'reset'")
            assert await page.evaluate("window.notReloaded") is True
            assert await page.locator('[data-count="reset"]').text_content() == "2"  # stuck and walker

            # The timer retries "stuck" after 2 s: the page marks it stalled, with the reason.
            await page.wait_for_selector('tr[data-node="stuck"].stalled')
            reason = await page.locator('tr[data-node="stuck"] .reason').text_content()
            assert reason is not None and "reset" in reason

            # An action without login: 403, and the node did not move.
            status = await page.evaluate("""fetch('/nodes/act/action', {method: 'POST',
                body: new URLSearchParams({op: 'reset'})}).then(r => r.status)""")
            assert status == 403
            assert await page.locator('tr[data-node="act"] td.state').text_content() == "discovering"

            # Log in through the form, then reset "act" with its button.
            await page.goto(base + "/login?next=/nodes/act")
            await page.fill('input[name="token"]', token)
            await page.click('button[type="submit"]')
            await page.wait_for_url(base + "/nodes/act")
            async with page.expect_navigation():
                await page.click('button[name="op"][value="reset"]')
            assert page.url.endswith("/nodes/act?done=reset")
            assert await page.locator('tr[data-node="act"] td.state').text_content() == "reset"
            assert "reset: done" in (await page.content())
        finally:
            await browser.close()
    auth = {"Authorization": f"Bearer {token}"}
    req = urllib.request.Request(base + "/api/v1/nodes/act/events", headers=auth)
    with urllib.request.urlopen(req, timeout=10) as r:
        events = json.load(r)["events"]
    assert events[-1]["actor"] == "web" and events[-1]["to"] == "reset"
