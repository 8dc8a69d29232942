"""The chat page at /, driven in a real headless Chromium (Debian's) by Playwright."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import anyio
import pytest
from playwright.async_api import Browser, Page, async_playwright

from app.mock import MockModel, mock_text
from tests.proxy import DroppingProxy
from tests.servers import mock_server, relay_server

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Playwright's own browser download does not work here: the tests use the system's Chromium.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SECRET = "u" * 32
WAIT_MS = 15_000


@pytest.fixture(scope="module")
def paced_mock() -> Iterator[tuple[MockModel, str]]:
    with mock_server(ttft=0.0, interval=0.04, tokens=400) as served:
        yield served


@pytest.fixture(scope="module")
def page_url(paced_mock: tuple[MockModel, str]) -> Iterator[str]:
    with relay_server(paced_mock[1], models=("mock", "mock-fault-error-midstream"), stream_secret=SECRET, stream_retry_ms=300) as url:
        yield url


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(bypass_csp=True)  # lets the test evaluate its own scripts
    opened = await context.new_page()
    # Every state the page passes through, in order, as the user saw it.
    await opened.add_init_script("""
        window.__states = [];
        new MutationObserver(() => {
            const view = document.getElementById("state");
            const state = view && view.dataset.state;
            if (state && window.__states[window.__states.length - 1] !== state) window.__states.push(state);
        }).observe(document, {subtree: true, childList: true, attributes: true, attributeFilter: ["data-state"]});
    """)
    yield opened
    await context.close()


async def _ask(page: Page, prompt: str, max_tokens: int, model: str = "") -> None:
    await page.fill("#prompt", prompt)
    await page.click("summary")
    await page.fill("#max-tokens", str(max_tokens))
    await page.fill("#model", model)
    await page.click("#send")


async def _wait_for_state(page: Page, state: str) -> None:
    await page.wait_for_selector(f"#state[data-state='{state}']", timeout=WAIT_MS)


async def test_the_answer_streams_in_token_by_token_and_shows_its_usage(page_url: str, page: Page) -> None:
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    await page.goto(page_url + "/")
    await _ask(page, "hello browser", 30)
    await _wait_for_state(page, "done")
    assert await page.text_content("#answer") == "".join(mock_text("hello browser", 30))
    assert "30 tokens generated" in (await page.text_content("#usage") or "")
    assert await page.evaluate("window.__states") == ["idle", "connecting", "streaming", "done"]
    # Nothing but the relay itself: no CDN, no fonts, no analytics.
    assert requests and all(urlsplit(url).netloc == urlsplit(page_url).netloc for url in requests)
    assert await page.is_enabled("#send") and not await page.is_enabled("#stop")


async def test_after_the_connection_drops_the_text_continues_without_gaps_or_duplicates(paced_mock: tuple[MockModel, str], page_url: str, page: Page) -> None:
    proxy = DroppingProxy(urlsplit(page_url).port or 80)
    with proxy.serving() as proxied:
        await page.goto(proxied + "/")
        await _ask(page, "drop me", 60)
        for _ in range(2):
            before = len(await page.text_content("#answer") or "")
            await page.wait_for_function(f"document.getElementById('answer').textContent.length > {before} + 20", timeout=WAIT_MS)
            proxy.drop()
            await _wait_for_state(page, "reconnecting")
            await _wait_for_state(page, "streaming")
        await _wait_for_state(page, "done")
    assert await page.text_content("#answer") == "".join(mock_text("drop me", 60))
    states = await page.evaluate("window.__states")
    assert states == ["idle", "connecting", "streaming", "reconnecting", "streaming", "reconnecting", "streaming", "done"]


async def test_stop_cancels_the_generation_and_closes_the_upstream(paced_mock: tuple[MockModel, str], page_url: str, page: Page) -> None:
    model = paced_mock[0]
    disconnects = len(model.disconnects)
    await page.goto(page_url + "/")
    await _ask(page, "stop me", 400)
    await page.wait_for_function("document.getElementById('answer').textContent.length > 10", timeout=WAIT_MS)
    await page.click("#stop")
    await _wait_for_state(page, "stopped")
    await anyio.to_thread.run_sync(model.wait_for_disconnects, disconnects + 1, 5)
    assert model.disconnects[-1]["tokens_sent"] < 400
    assert "the stream was cancelled" in (await page.text_content("#state") or "")


async def test_an_error_in_the_stream_is_shown_with_its_message(page_url: str, page: Page) -> None:
    await page.goto(page_url + "/")
    await _ask(page, "fail", 20, model="mock-fault-error-midstream")
    await _wait_for_state(page, "error")
    assert "Error:" in (await page.text_content("#state") or "")
    assert await page.is_enabled("#send")


async def test_a_refused_request_shows_the_relay_error_and_a_key_makes_it_work(paced_mock: tuple[MockModel, str], page: Page) -> None:
    with relay_server(paced_mock[1], models=("mock",), stream_secret=SECRET, api_keys=("browser-key",)) as url:
        await page.goto(url + "/")
        await _ask(page, "let me in", 5)
        await _wait_for_state(page, "error")
        assert "a valid API key is required" in (await page.text_content("#state") or "")
        await page.fill("#api-key", "browser-key")
        await page.click("#send")
        await _wait_for_state(page, "done")
        assert await page.text_content("#answer") == "".join(mock_text("let me in", 5))
