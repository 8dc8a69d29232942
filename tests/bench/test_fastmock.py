"""The bench's model server (bench/fastmock.py) answers as the tool-calls scenario says: text, or two parallel calls' fragments."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.mock import mock_text
from app.streaming.events import Delta, Event, Finish, ToolCall
from app.streaming.upstreams.openai import ChatStream
from tests.processes import START_TIMEOUT, free_port

FASTMOCK = Path(__file__).parents[2] / "bench" / "fastmock.py"
PROMPT = "Tell me a story about token relays."
TOOLS = [{"type": "function", "function": {"name": name, "parameters": {"type": "object"}}} for name in ("write_story", "save_story")]


@pytest.fixture(scope="module")
def fastmock() -> Iterator[str]:
    yield from _started()


@pytest.fixture(scope="module")
def padded() -> Iterator[str]:
    yield from _started("--pad", "42")


def _started(*options: str) -> Iterator[str]:
    port = free_port()
    argv = [sys.executable, str(FASTMOCK), "--port", str(port), "--ttft", "0", "--interval", "0.001", "--tokens", "9", *options]
    process = subprocess.Popen(argv)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                httpx.get(url + "/mock/stats", timeout=1).raise_for_status()
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(10)


async def answer(url: str, **fields: Any) -> tuple[int, list[Event]]:
    """The streamed answer, as the relay's OpenAI adapter reads it; and how many SSE events it had."""
    body = {"model": "mock", "messages": [{"role": "user", "content": PROMPT}], "stream": True, **fields}
    events: list[Event] = []
    handler = ChatStream(events.append, lambda: None)
    async with httpx.AsyncClient(timeout=10) as client, client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        handler.on_response(response.status_code, [(b"content-type", response.headers["content-type"].encode())])
        raw = await response.aread()
    handler.on_body(raw)
    handler.on_end()
    return raw.count(b"\n\ndata: ") + 1, events


async def test_text_is_one_delta_a_token(fastmock: str) -> None:
    chunks, events = await answer(fastmock, max_tokens=7)
    assert events == [*(Delta(token) for token in mock_text(PROMPT, 7)), Finish("length")]
    assert chunks == 7 + 3  # the role chunk, a token a chunk, the finish, [DONE]


@pytest.mark.parametrize(("max_tokens", "reason"), [(7, "length"), (None, "tool_calls")])
async def test_with_tools_the_same_tokens_are_two_calls_fragments_one_a_chunk(fastmock: str, max_tokens: int | None, reason: str) -> None:
    chunks, events = await answer(fastmock, tools=TOOLS, max_tokens=max_tokens)
    tokens = mock_text(PROMPT, max_tokens or 9)
    calls = [event for event in events if isinstance(event, ToolCall)]
    assert len(calls) == len(tokens) and chunks == len(tokens) + 3 and events[-1] == Finish(reason)
    half = (len(tokens) + 1) // 2
    assert [call.index for call in calls] == [0] * half + [1] * (len(tokens) - half)
    opened = [(call.index, call.id, call.name) for call in calls if call.id is not None]
    assert [(index, name) for index, _, name in opened] == [(0, "write_story"), (1, "save_story")] and opened[0][1] != opened[1][1]
    arguments = ["".join(call.arguments for call in calls if call.index == index) for index in (0, 1)]
    assert [json.loads(text)["text"] for text in arguments] == ["".join(tokens[:half]), "".join(tokens[half:])]


async def _lines(url: str, **fields: Any) -> list[bytes]:
    body = {"model": "mock", "messages": [{"role": "user", "content": PROMPT}], "stream": True, **fields}
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(url + "/v1/chat/completions", json=body)
    return [line for line in response.content.split(b"\n") if line.startswith(b"data: {")]


async def test_padded_text_chunks_are_as_long_as_the_fragments_of_the_same_tokens(fastmock: str, padded: str) -> None:
    """``--pad 42``: the bench's "text, as long" differs from the fragments in nothing but the kind of event, byte for byte."""
    text = (await _lines(padded))[1:-1]  # a token a chunk: not the role chunk, nor the finish
    calls = (await _lines(fastmock, tools=TOOLS))[1:-1]
    tokens = mock_text(PROMPT, 9)
    assert [json.loads(line[6:])["choices"][0]["delta"]["content"] for line in text] == [token + "_" * 42 for token in tokens]
    # A call's first fragment carries its id and name, and its first and last the object's braces: the others are the same size.
    middle = [i for i in range(len(tokens)) if i not in (0, 4, 5, 8)]
    assert [len(text[i]) for i in middle] == [len(calls[i]) for i in middle]


def test_the_load_generator_reads_each_argument_fragment_as_a_content_event(fastmock: str) -> None:
    """With ``--tools`` the bench's client does for a fragment what it does for a content delta: it counts it, and times the gaps."""
    argv = [sys.executable, str(Path(__file__).parents[2] / "bench" / "loadgen.py"), "--url", fastmock + "/v1/chat/completions",
            "--streams", "3", "--ramp", "0.05", "--max-tokens", "9", "--tools", "--timeout", "20"]
    summary = json.loads(subprocess.run(argv, capture_output=True, check=True, timeout=30).stdout)
    assert summary["ends"] == {"ok": 3} and summary["content_events"] == 3 * 9 and summary["ttft_s"]["n"] == 3


def test_the_in_process_fragment_path_runs_on_the_relay_s_own_objects() -> None:
    """bench/fragment_path.py builds a stream's path from the relay's classes: when one of them changes its signature, this fails, not the bench."""
    script = Path(__file__).parents[2] / "bench" / "fragment_path.py"
    argv = [sys.executable, str(script), "--chunks", "400", "--batch", "200", "--shapes", "text,tool calls,reasoning"]
    out = subprocess.run(argv, capture_output=True, check=True, timeout=60, text=True).stdout
    figures = ast.literal_eval(out.strip().splitlines()[-1])
    assert set(figures) == {"text", "tool calls", "reasoning"} and all(shape["us_per_chunk"] > 0 for shape in figures.values())
