"""The API reference page in a real headless Chromium: complete, self-contained, public."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from api_support import ApiEnv, make_api_env
from conftest import make_store
from playwright.async_api import Browser, ConsoleMessage, Request, async_playwright
from test_http_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

from ledger.secret_file import Secrets
from smtp_gateway.http import HttpServer

pytestmark = pytest.mark.browser

METHODS = ("get", "put", "post", "delete", "patch")


@pytest.fixture
async def env(tmp_path: Path, test_secrets: Secrets) -> AsyncIterator[ApiEnv]:
    """A SQLite ledger with clients acme and globex and their keys."""
    store, _url, _schema = await make_store("sqlite", tmp_path)
    try:
        yield await make_api_env(store, test_secrets)
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


async def test_docs_page_lists_every_operation_and_loads_nothing_external(
    env: ApiEnv, browser: Browser
) -> None:
    """Without a key, /api/v1/docs renders each method and path of openapi.json, with only the page itself fetched."""
    server = HttpServer(env.app(), host="127.0.0.1", port=0)
    await server.start()
    ARTIFACTS.mkdir(exist_ok=True)
    context = await browser.new_context(java_script_enabled=False, locale="en-GB")
    requests: list[str] = []
    console: list[str] = []
    try:
        async with httpx.AsyncClient(base_url=server.url) as http:
            schema = (await http.get("/api/v1/openapi.json")).json()
            assert (await http.get("/api/v1/me")).status_code == 401
        expected = {
            (m.upper(), "/api/v1" + p) for p, item in schema["paths"].items() for m in METHODS if m in item
        }
        assert ("POST", "/api/v1/subjects/erase") in expected and len(expected) >= 15

        page = await context.new_page()

        def seen(request: Request) -> None:
            """Note every request the page makes."""
            requests.append(request.url)

        def logged(message: ConsoleMessage) -> None:
            """Note console errors (a Content-Security-Policy refusal is one)."""
            if message.type == "error":
                console.append(message.text)

        page.on("request", seen)
        page.on("console", logged)
        response = await page.goto(server.url + "/api/v1/docs")
        assert response is not None and response.status == 200
        assert "default-src 'none'" in response.headers["content-security-policy"]
        assert (await page.locator("h1").inner_text()).strip() == schema["info"]["title"]

        headings = [" ".join(t.split()) for t in await page.locator("article.op h3").all_inner_texts()]
        shown = {tuple(h.split(" ")[:2]) for h in headings if h.split(" ")[0] in {m.upper() for m in METHODS}}
        assert shown == expected

        erase = page.locator("#op-post-subjects-erase")
        assert "operator key" in await erase.locator("h3").inner_text()
        assert "Erase a person" in await erase.inner_text()
        assert await erase.locator("td code", has_text="source").count() == 1
        check = page.locator("#op-post-clients-client_id-check")
        assert "client or operator key" in await check.locator("h3").inner_text()
        assert await check.locator("td code", has_text="addresses").count() == 1
        intro = await page.locator("#authentication").inner_text()
        assert "Authorization: Bearer" in intro and "consentgate api-key create --admin" in intro
        assert "consentgate client api-key create ID" in intro
        assert "Retry-After" in await page.locator("#rate-limit").inner_text()
        assert f"{server.url}/api/v1/clients/acme/check" in await page.locator("#example").inner_text()
        assert "application/problem+json" in await page.locator("#errors").inner_text()

        # The export's nested answer is documented down to its parts, reachable by links.
        export = page.locator("#op-post-subjects-export")
        await export.get_by_role("link", name="SubjectExport").click()
        assert page.url.endswith("#schema-SubjectExport")
        nested = page.locator("#schema-SubjectExport")
        assert await nested.get_by_role("link", name="ExportedConsentEvent").count() == 1
        assert "legal_basis" in await page.locator("#schema-ExportedConsentEvent").inner_text()
        await page.screenshot(path=str(ARTIFACTS / "api-docs.png"), full_page=False)

        # Nothing outside the page: no script, stylesheet, font, image or frame anywhere.
        assert await page.locator("script, link, img, iframe, object, embed, [src]").count() == 0
        assert requests == [server.url + "/api/v1/docs"] and console == []
    finally:
        await context.close()
        await server.stop()
