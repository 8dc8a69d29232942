"""The chat page at /, driven in a real headless Chromium (Debian's) by Playwright."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest
from playwright.async_api import Browser, Page, Request, async_playwright

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
def slow_mock() -> Iterator[tuple[MockModel, str]]:
    """Frames far enough apart that a test sees a part while it streams: 8 words of reasoning, 16 of text, or two calls."""
    with mock_server(ttft=0.0, interval=0.15, tokens=16) as served:
        yield served


PAGE_MODELS = ("mock", "mock-fault-error-midstream", "mock-fault-reset", "mock-reasoning", "mock-refusal")


def _page_relay(mock: tuple[MockModel, str]) -> contextlib.AbstractContextManager[str]:
    return relay_server(mock[1], models=PAGE_MODELS, stream_secret=SECRET, stream_retry_ms=300)


@pytest.fixture(scope="module")
def page_url(paced_mock: tuple[MockModel, str]) -> Iterator[str]:
    with _page_relay(paced_mock) as url:
        yield url


@pytest.fixture(scope="module")
def slow_url(slow_mock: tuple[MockModel, str]) -> Iterator[str]:
    with _page_relay(slow_mock) as url:
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


async def _ask(page: Page, prompt: str, max_tokens: int, model: str = "", tools: bool = False) -> None:
    """Type ``prompt`` and send it with these options; ``model`` empty leaves the picker's choice (the relay's default)."""
    await page.wait_for_selector("#model[data-loaded]", state="attached", timeout=WAIT_MS)
    await page.fill("#prompt", prompt)
    await page.evaluate("document.querySelector('#ask details').open = true")
    await page.fill("#max-tokens", str(max_tokens))
    if model:
        await page.select_option("#model", model)
    await page.set_checked("#tools", tools)
    await page.click("#send")


def _record_bodies(page: Page) -> list[Any]:
    """The bodies the page POSTs to create its streams, as they are sent."""
    bodies: list[Any] = []

    def seen(request: Request) -> None:
        if request.method == "POST" and request.url.endswith("/v1/streams"):
            bodies.append(request.post_data_json)

    page.on("request", seen)
    return bodies


async def _direct(mock_url: str, body: dict[str, Any]) -> dict[str, Any]:
    """The message the mock answers ``body`` with, asked directly and whole: what the page must end up showing."""
    chat = {key: value for key, value in body.items() if key != "prompt"}
    chat.setdefault("messages", [{"role": "user", "content": body.get("prompt")}])
    with anyio.fail_after(10):
        async with httpx.AsyncClient() as client:
            response = await client.post(mock_url + "/chat/completions", json={**chat, "stream": False})
    response.raise_for_status()
    message: dict[str, Any] = response.json()["choices"][0]["message"]
    return message


async def _shown_calls(page: Page) -> list[dict[str, Any]]:
    """Each tool call as the page shows it: its name, its id, and its arguments' text."""
    calls: list[dict[str, Any]] = await page.eval_on_selector_all("#tool-calls .tool-call", """blocks => blocks.map(block => ({
        name: block.querySelector(".tool-name").textContent,
        id: block.querySelector(".tool-id").textContent,
        arguments: block.querySelector(".tool-arguments").textContent,
    }))""")
    return calls


def _expected_calls(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": call["function"]["name"], "id": call["id"], "arguments": call["function"]["arguments"]} for call in message["tool_calls"]]


def _same_calls(shown: list[dict[str, Any]], expected: list[dict[str, Any]]) -> bool:
    """The same calls in the same order, their arguments the same JSON (the page pretty-prints them)."""
    def key(calls: list[dict[str, Any]]) -> list[tuple[str, str, Any]]:
        return [(call["name"], call["id"], json.loads(call["arguments"])) for call in calls]

    return key(shown) == key(expected)


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


async def test_reasoning_is_shown_collapsed_while_it_streams_then_expands_to_its_text(slow_mock: tuple[MockModel, str], slow_url: str, page: Page) -> None:
    bodies = _record_bodies(page)
    await page.goto(slow_url + "/")
    await _ask(page, "think first", 256, model="mock-reasoning")
    # The first moment any reasoning is on the page: collapsed, saying that the model is thinking, no answer yet.
    handle = await page.wait_for_function("""() => {
        const details = document.getElementById("reasoning"), text = document.getElementById("reasoning-text");
        return text && text.textContent.length > 0 && {
            visible: !details.hidden, open: details.open, summary: details.querySelector("summary").textContent,
            answer: document.getElementById("answer").textContent,
        };
    }""", timeout=WAIT_MS)
    assert await handle.json_value() == {"visible": True, "open": False, "summary": "Thinking…", "answer": ""}
    await _wait_for_state(page, "done")
    expected = await _direct(slow_mock[1], bodies[0])
    assert await page.text_content("#answer") == expected["content"]
    assert not await page.is_visible("#reasoning-text")
    assert await page.text_content("#reasoning summary") == "Reasoning"
    await page.click("#reasoning summary")
    assert await page.is_visible("#reasoning-text")
    assert await page.text_content("#reasoning-text") == expected["reasoning_content"]
    assert "8 of them reasoning" in (await page.text_content("#usage") or "")


async def test_an_answer_without_reasoning_shows_no_reasoning_block(page_url: str, page: Page) -> None:
    await page.goto(page_url + "/")
    await _ask(page, "no thoughts", 5)
    await _wait_for_state(page, "done")
    assert not await page.is_visible("#reasoning")
    assert not await page.is_visible("#refusal")
    assert await page.eval_on_selector_all("#tool-calls .tool-call", "blocks => blocks.length") == 0


async def test_tool_calls_are_shown_with_their_names_and_pretty_printed_complete_arguments(slow_mock: tuple[MockModel, str], slow_url: str, page: Page) -> None:
    bodies = _record_bodies(page)
    await page.goto(slow_url + "/")
    await _ask(page, "weather in two cities", 256, model="mock", tools=True)
    await _wait_for_state(page, "done")
    assert bodies[0]["tools"][0]["function"]["name"] == "get_weather"
    expected = _expected_calls(await _direct(slow_mock[1], bodies[0]))
    shown = await _shown_calls(page)
    assert len(shown) == 2 and _same_calls(shown, expected)
    assert all(call["arguments"] == json.dumps(json.loads(call["arguments"]), indent=2, ensure_ascii=False) for call in shown)
    assert await page.text_content("#answer") == "" and not await page.is_visible("#answer")
    assert "finish reason: tool_calls" in (await page.text_content("#usage") or "")


async def test_the_model_picker_lists_the_relays_models_and_sends_the_one_chosen(page_url: str, page: Page) -> None:
    bodies = _record_bodies(page)
    await page.goto(page_url + "/")
    await _ask(page, "pick one", 5)
    await _wait_for_state(page, "done")
    options = await page.eval_on_selector_all("#model option", "options => options.map(option => option.value)")
    assert options == list(PAGE_MODELS)
    assert await page.input_value("#model") == "mock"  # the relay's default, first in its list
    await _ask(page, "pick another", 5, model="mock-reasoning")
    await _wait_for_state(page, "done")
    assert [body["model"] for body in bodies] == ["mock", "mock-reasoning"]


async def test_without_a_model_list_the_picker_says_why_and_a_key_fills_it(paced_mock: tuple[MockModel, str], page: Page) -> None:
    bodies = _record_bodies(page)
    with relay_server(paced_mock[1], models=("mock",), stream_secret=SECRET, api_keys=("browser-key",)) as url:
        await page.goto(url + "/")
        await page.wait_for_selector("#model[data-loaded='failed']", state="attached", timeout=WAIT_MS)
        assert "a valid API key is required" in (await page.text_content("#models-note") or "")
        await page.evaluate("document.querySelector('#ask details').open = true")
        assert await page.eval_on_selector_all("#model option", "options => options.map(option => option.value)") == [""]
        await page.fill("#max-tokens", "5")
        await page.fill("#api-key", "browser-key")
        await page.fill("#prompt", "default model")  # leaving the key's field: the list is asked again, with the key
        await page.wait_for_selector("#model[data-loaded='listed']", state="attached", timeout=WAIT_MS)
        assert await page.text_content("#models-note") == ""
        await page.click("#send")
        await _wait_for_state(page, "done")
    assert bodies[0]["model"] == "mock"
    assert await page.text_content("#answer") == "".join(mock_text("default model", 5))


async def test_the_favicon_is_the_relays_own_file(page_url: str, page: Page) -> None:
    await page.goto(page_url + "/")
    href = await page.eval_on_selector("link[rel=icon]", "link => link.href")
    assert urlsplit(href).netloc == urlsplit(page_url).netloc
    with anyio.fail_after(10):
        async with httpx.AsyncClient() as client:
            icon = await client.get(href)
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"


async def _turn(page: Page, prompt: str, state: str = "done") -> None:
    """Type ``prompt`` (its line breaks with Shift+Enter), send it with Enter, and wait until the turn ends in ``state``."""
    await page.click("#prompt")
    await page.fill("#prompt", "")
    for number, line in enumerate(prompt.split("\n")):
        if number:
            await page.press("#prompt", "Shift+Enter")
        await page.type("#prompt", line)
    await page.press("#prompt", "Enter")
    await _wait_for_state(page, state)


async def _shown_turns(page: Page) -> list[dict[str, Any]]:
    """The turns of the conversation as the page shows them, the current one last."""
    turns: list[dict[str, Any]] = await page.evaluate("""() => [...document.querySelectorAll("#conversation > li"), document.getElementById("turn")]
        .map(turn => ({question: turn.querySelector(".question").textContent, answer: turn.querySelector(".answer").textContent,
                       left_out: turn.classList.contains("left-out")}))""")
    return turns


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


async def test_a_conversation_goes_to_the_model_whole_turn_after_turn(paced_mock: tuple[MockModel, str], page_url: str, page: Page) -> None:
    bodies = _record_bodies(page)
    await page.goto(page_url + "/")
    await _ask(page, "first question", 6)
    await _wait_for_state(page, "done")
    first = "".join(mock_text("first question", 6))
    await _turn(page, "second\nin two lines")
    assert bodies[1]["messages"] == [_user("first question"), _assistant(first), _user("second\nin two lines")]
    second = (await _direct(paced_mock[1], bodies[1]))["content"]
    await _turn(page, "third")
    assert bodies[2]["messages"] == [*bodies[1]["messages"], _assistant(second), _user("third")]
    third = (await _direct(paced_mock[1], bodies[2]))["content"]
    assert await _shown_turns(page) == [
        {"question": "first question", "answer": first, "left_out": False},
        {"question": "second\nin two lines", "answer": second, "left_out": False},
        {"question": "third", "answer": third, "left_out": False},
    ]
    assert await page.input_value("#prompt") == ""
    await page.click("#new-chat")
    await _turn(page, "afresh")
    assert bodies[3]["messages"] == [_user("afresh")]
    assert len(await _shown_turns(page)) == 1


async def test_a_turn_the_model_server_cuts_off_shows_the_error_and_the_next_turn_goes_on(paced_mock: tuple[MockModel, str], page_url: str, page: Page) -> None:
    bodies = _record_bodies(page)
    await page.goto(page_url + "/")
    await _ask(page, "before the cut", 5)
    await _wait_for_state(page, "done")
    first = "".join(mock_text("before the cut", 5))
    await _ask(page, "cut me off", 40, model="mock-fault-reset")
    await _wait_for_state(page, "error")
    assert "the model server closed the connection" in (await page.text_content("#state") or "")
    assert await page.input_value("#prompt") == "cut me off"  # back in the box, to send again
    await page.select_option("#model", "mock")
    await _turn(page, "after the cut")
    # The turn that failed is shown, marked, and left out of what the model is sent.
    assert bodies[2]["messages"] == [_user("before the cut"), _assistant(first), _user("after the cut")]
    shown = await _shown_turns(page)
    assert [(turn["question"], turn["left_out"]) for turn in shown] == [("before the cut", False), ("cut me off", True), ("after the cut", False)]
    assert shown[2]["answer"] == (await _direct(paced_mock[1], bodies[2]))["content"]


async def test_a_connection_dropped_in_a_later_turn_loses_nothing_and_the_conversation_goes_on(
    paced_mock: tuple[MockModel, str], page_url: str, page: Page,
) -> None:
    bodies = _record_bodies(page)
    proxy = DroppingProxy(urlsplit(page_url).port or 80)
    with proxy.serving() as proxied:
        await page.goto(proxied + "/")
        await _ask(page, "turn one", 5)
        await _wait_for_state(page, "done")
        await _ask(page, "turn two, dropped", 60)
        await page.wait_for_function("document.getElementById('answer').textContent.length > 20", timeout=WAIT_MS)
        proxy.drop()
        await _wait_for_state(page, "reconnecting")
        await _wait_for_state(page, "done")
        second = (await _direct(paced_mock[1], bodies[1]))["content"]
        assert await page.text_content("#answer") == second
        await _turn(page, "turn three")
    assert bodies[2]["messages"][-3:] == [_user("turn two, dropped"), _assistant(second), _user("turn three")]
    assert [turn["left_out"] for turn in await _shown_turns(page)] == [False, False, False]


async def test_a_refusal_is_shown_as_a_refusal(paced_mock: tuple[MockModel, str], page_url: str, page: Page) -> None:
    bodies = _record_bodies(page)
    await page.goto(page_url + "/")
    await _ask(page, "something bad", 64, model="mock-refusal")
    await _wait_for_state(page, "done")
    expected = await _direct(paced_mock[1], bodies[0])
    assert await page.is_visible("#refusal")
    assert await page.text_content("#refusal-text") == expected["refusal"]
    assert await page.text_content("#answer") == ""


async def test_a_connection_dropped_in_the_middle_of_reasoning_loses_none_of_it(paced_mock: tuple[MockModel, str], page_url: str, page: Page) -> None:
    bodies = _record_bodies(page)
    proxy = DroppingProxy(urlsplit(page_url).port or 80)
    with proxy.serving() as proxied:
        await page.goto(proxied + "/")
        await _ask(page, "think while dropped", 60, model="mock-reasoning")  # 60 words of reasoning, cut there
        await page.wait_for_function("document.getElementById('reasoning-text').textContent.length > 40", timeout=WAIT_MS)
        proxy.drop()
        await _wait_for_state(page, "reconnecting")
        await _wait_for_state(page, "done")
    expected = await _direct(paced_mock[1], bodies[0])
    assert await page.text_content("#reasoning-text") == expected["reasoning_content"]
    assert await page.evaluate("window.__states") == ["idle", "connecting", "streaming", "reconnecting", "streaming", "done"]


async def test_a_connection_dropped_amid_a_tool_calls_arguments_loses_none_of_them(slow_mock: tuple[MockModel, str], slow_url: str, page: Page) -> None:
    bodies = _record_bodies(page)
    proxy = DroppingProxy(urlsplit(slow_url).port or 80)
    with proxy.serving() as proxied:
        await page.goto(proxied + "/")
        await _ask(page, "weather while dropped", 256, model="mock", tools=True)
        await page.wait_for_function("(document.querySelector('#tool-calls .tool-arguments') || {}).textContent > ''", timeout=WAIT_MS)
        proxy.drop()
        await _wait_for_state(page, "reconnecting")
        await _wait_for_state(page, "done")
    expected = _expected_calls(await _direct(slow_mock[1], bodies[0]))
    assert _same_calls(await _shown_calls(page), expected)
    assert await page.evaluate("window.__states") == ["idle", "connecting", "streaming", "reconnecting", "streaming", "done"]
