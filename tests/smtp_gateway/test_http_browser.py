"""A real headless Chromium follows the unsubscribe link of a message relayed through the gateway."""

from __future__ import annotations

import asyncio
import email
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import make_store
from playwright.async_api import Browser, Page, async_playwright
from submission_support import PUBLIC_URL, add_client, gateway, make_service, sink, submit

from ledger.secret_file import create_secrets, load_secrets
from ledger.service import LedgerService
from ledger.store import SqlLedgerStore
from smtp_gateway.http import HttpServer, LinkServiceConfig, build_app

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
RECIPIENT = "ana.popescu@example.ro"
CONSENTGATE = Path(sys.executable).with_name("consentgate")


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[tuple[SqlLedgerStore, LedgerService, Path]]:
    """A SQLite ledger, a secret file and a config file the `consentgate` CLI can read too."""
    store, url, _schema = await make_store("sqlite", tmp_path)
    secret_path = tmp_path / "secret.json"
    create_secrets(secret_path)
    config = tmp_path / "consentgate.toml"
    config.write_text(f'database_url = "{url}"\nsecret_file = "{secret_path}"\n')
    try:
        yield store, make_service(store, load_secrets(secret_path)), config
    finally:
        await store.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, through playwright (no downloaded browser)."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


async def check(config: Path, client: str | None) -> tuple[int, str]:
    """Run `consentgate check` as a subprocess; returns (exit status, output)."""
    scope = ["--client", client] if client else []
    proc = await asyncio.create_subprocess_exec(
        str(CONSENTGATE), "--config", str(config), "check", RECIPIENT, *scope,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def relayed_unsubscribe_url(service: LedgerService) -> str:
    """Relay a campaign through the real gateway to a sink; return its List-Unsubscribe https URL."""
    async with sink() as (received, upstream_port), gateway(service, upstream_port) as gw:
        refused = await asyncio.to_thread(submit, gw.port, [RECIPIENT])
        assert refused == {}
    (copy,) = received.received
    header = str(email.message_from_bytes(copy.content)["List-Unsubscribe"])
    match = re.search(rf"<({re.escape(PUBLIC_URL)}/u/[a-z2-7]+)>", header)
    assert match, header
    return match.group(1)


async def heading(page: Page) -> str:
    """The page's h1 text."""
    return (await page.locator("h1").inner_text()).strip()


async def test_unsubscribe_and_undo_in_a_real_browser_without_javascript(
    ledger: tuple[SqlLedgerStore, LedgerService, Path], browser: Browser
) -> None:
    """Load the page (nothing suppressed), click, see the confirmation, ledger refuses only that client; undo."""
    store, service, config = ledger
    await add_client(store, "acme", name="Acme Books", settings={"accent_color": "#0b5394", "logo_url": ""})
    await add_client(store, "globex", name="Globex", domains=("globex.example",))
    link = await relayed_unsubscribe_url(service)

    server = HttpServer(
        build_app(service, LinkServiceConfig(public_url=PUBLIC_URL)), host="127.0.0.1", port=0
    )
    await server.start()
    ARTIFACTS.mkdir(exist_ok=True)
    # JavaScript off: the pages must work as plain HTML forms.
    context = await browser.new_context(java_script_enabled=False, locale="en-GB")
    try:
        page = await context.new_page()
        response = await page.goto(link.replace(PUBLIC_URL, server.url))
        assert response is not None and response.status == 200
        assert await heading(page) == "Unsubscribe from Acme Books?"
        assert await page.locator("html").get_attribute("lang") == "en"
        await page.screenshot(path=str(ARTIFACTS / "unsubscribe-1-confirm.png"), full_page=True)
        assert await check(config, "acme") == (0, f"allowed: {RECIPIENT} for client acme\n")

        await page.get_by_role("button", name="Unsubscribe").click()
        await page.wait_for_load_state()
        assert await heading(page) == "You are unsubscribed"
        await page.screenshot(path=str(ARTIFACTS / "unsubscribe-2-done.png"), full_page=True)
        status, out = await check(config, "acme")
        assert status == 1 and "refused" in out and "unsubscribed" in out, out
        assert (await check(config, "globex"))[0] == 0
        assert (await check(config, None))[0] == 0

        await page.get_by_role("button", name="Subscribe again").click()
        await page.wait_for_load_state()
        assert await heading(page) == "You are subscribed again"
        await page.screenshot(path=str(ARTIFACTS / "unsubscribe-3-resubscribed.png"), full_page=True)
        assert (await check(config, "acme"))[0] == 0

        await page.goto(link.replace(PUBLIC_URL, server.url) + "?lang=ro")
        assert await page.locator("html").get_attribute("lang") == "ro"
        assert await heading(page) == "Vă dezabonați de la Acme Books?"
        await page.screenshot(path=str(ARTIFACTS / "unsubscribe-4-confirm-ro.png"), full_page=True)
    finally:
        await context.close()
        await server.stop()
