"""Fuzzed requests never get a 5xx, and a stream that is accepted ends with exactly one terminal event.

Bodies are valid requests with one or more fields replaced (by any JSON value, by a wrong
type, by raw JSON text no encoder would write: nesting thousands deep, ``1e400``, ``NaN``,
lone-surrogate escapes, huge integers, long strings), with unknown fields added, or plain
random bytes. They go to every client route of a real relay on loopback. The examples are
derived from the test's name (``derandomize``), so a run in CI is the same as a run here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from app.streaming.sse import SSEEvent, SSEParser
from tests.servers import mock_server, relay_server

LIMIT = 64  # the relay's max_tokens_limit here
BODY_LIMIT = 65_536
# A model name for each protocol, all served by one mock: each protocol builds its own upstream request.
PROTOCOLS = {"mock": "openai", "mock-tgi": "tgi", "mock-ollama": "ollama", "mock-anthropic": "anthropic"}
MODELS = st.sampled_from(list(PROTOCOLS))
FUZZ = settings(max_examples=2000, deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def relay() -> Iterator[tuple[str, httpx.Client]]:
    with mock_server(ttft=0.0, interval=0.0, tokens=4) as (_, upstream):
        upstreams = [{"name": protocol, "protocol": protocol, "base_url": upstream} for protocol in PROTOCOLS.values()]
        routes = {model: [protocol] for model, protocol in PROTOCOLS.items()}
        limits = {"max_tokens_limit": LIMIT, "max_body_bytes": BODY_LIMIT}
        with relay_server(None, upstreams=upstreams, routes=routes, stream_secret="s" * 32, **limits) as url, \
                httpx.Client(base_url=url, timeout=httpx.Timeout(10.0)) as http:
            yield url, http


def _deep(depth: int, objects: bool) -> str:
    return '{"a":' * depth + "1" + "}" * depth if objects else "[" * depth + "]" * depth


SCALARS = (
    st.none() | st.booleans() | st.integers() | st.integers(min_value=2**63 - 2, max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=16)
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=16)
# JSON text (or almost JSON) that no encoder writes, spliced in where a value goes.
RAW = (
    st.sampled_from([
        "1e400", "-1e400", "NaN", "Infinity", "-0", "1.0", "1E2", '"\\ud800"', '"\\udfff"', '"\\ud800\\u0041"', '"\\u0000"',
        '"\\ud83d\\ude80"', "123456789012345678901234567890", "-123456789012345678901234567890", "[]", "{}", '""',
        '{"a":1,"a":2}', "[1,]", "01", '"\\x"', "tru",
    ])
    | st.tuples(st.integers(min_value=1, max_value=3000), st.booleans()).map(lambda nesting: _deep(*nesting))
    | st.integers(min_value=0, max_value=BODY_LIMIT).map(lambda size: '"' + "x" * size + '"')
    | VALUES.map(json.dumps)
)
FIELD_VALUES = VALUES | RAW.map(lambda raw: Raw(raw))

CHAT_FIELDS = [
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature", "n", "tools", "stop",
    "best_of", "n_predict", "num_predict", "options", "parameters", "metadata", "top_p", "user",
]
MESSAGE_FIELDS = ["role", "content", "name", "tool_calls"]
GENERATE_FIELDS = ["prompt", "max_tokens", "temperature", "stream", "model"]


class Raw:
    """JSON text to splice in as it is."""

    def __init__(self, text: str) -> None:
        self.text = text


def _encode(value: Any) -> bytes:
    raws: list[str] = []

    def mark(item: Any) -> Any:
        if isinstance(item, Raw):
            raws.append(item.text)
            return f"@@raw{len(raws) - 1}@@"
        if isinstance(item, dict):
            return {key: mark(inner) for key, inner in item.items()}
        if isinstance(item, list):
            return [mark(inner) for inner in item]
        return item

    text = json.dumps(mark(value))
    for index, raw in enumerate(raws):
        text = text.replace(f'"@@raw{index}@@"', raw, 1)
    return text.encode("utf-8", "surrogatepass")


@st.composite
def chat_bodies(draw: st.DrawFn, known: bool) -> dict[str, Any]:
    """A chat request with fuzzed free-form parts; with ``known``, fuzzed known fields too."""
    message: dict[str, Any] = {"role": draw(st.sampled_from(["user", "system", "assistant", "tool"])), "content": "hello"}
    if draw(st.booleans()):
        message["content"] = [{"type": "text", "text": "hi"}, draw(st.dictionaries(st.text(max_size=8), FIELD_VALUES, max_size=3))]
    for name in draw(st.lists(st.sampled_from(MESSAGE_FIELDS if known else MESSAGE_FIELDS[2:]), max_size=2)):
        message[name] = draw(FIELD_VALUES)
    body: dict[str, Any] = {"model": draw(MODELS), "messages": [message], "stream": draw(st.booleans())}
    if draw(st.booleans()):
        body["max_tokens"] = draw(st.integers(min_value=1, max_value=LIMIT))
    for name in draw(st.lists(st.sampled_from(CHAT_FIELDS), max_size=3)) if known else ():
        body[name] = draw(FIELD_VALUES)
    body.update(draw(st.dictionaries(st.text(max_size=12), FIELD_VALUES, max_size=2)))
    return body


@st.composite
def generate_bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": draw(st.text(min_size=1, max_size=40)), "max_tokens": draw(st.integers(1, LIMIT)), "stream": draw(st.booleans())}
    if draw(st.booleans()):
        body["model"] = draw(MODELS)
    for name in draw(st.lists(st.sampled_from(GENERATE_FIELDS), max_size=2)):
        body[name] = draw(FIELD_VALUES)
    if draw(st.integers(0, 4)) == 0:
        body.update(draw(st.dictionaries(st.text(max_size=12), FIELD_VALUES, max_size=2)))
    return body


REQUESTS = st.one_of(
    st.tuples(st.sampled_from(["/v1/chat/completions", "/v1/streams"]), st.booleans().flatmap(chat_bodies).map(_encode)),
    st.tuples(st.sampled_from(["/v1/generate", "/v1/streams"]), generate_bodies().map(_encode)),
    st.tuples(st.sampled_from(["/v1/chat/completions", "/v1/generate", "/v1/streams"]), st.binary(max_size=256) | RAW.map(str.encode)),
)
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40)
HEADER_VALUES = HEADER_TEXT.map(lambda text: text.strip(" \t").encode("latin-1"))  # h11 refuses surrounding blanks


def _events(response: httpx.Response) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for chunk in response.iter_raw():
        events.extend(parser.feed(chunk))
    return events


def _assert_one_terminal(path: str, events: list[SSEEvent]) -> None:
    if path == "/v1/chat/completions":
        done = [event for event in events if event.data == "[DONE]"]
        assert len(done) == 1 and events[-1] is done[0], [event.data for event in events]
        assert sum('"error"' in event.data for event in events) <= 1
    else:
        terminal = [event for event in events if event.event in ("done", "error")]
        assert len(terminal) == 1 and events[-1] is terminal[0], [(event.event, event.data) for event in events]


def _check(http: httpx.Client, path: str, response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        event(response.json()["error"]["code"])
    elif path == "/v1/streams":
        assert response.status_code == 201
        with http.stream("GET", response.json()["events_url"]) as events:
            assert events.status_code == 200
            _assert_one_terminal(path, _events(events))


@FUZZ
@given(request=REQUESTS, request_id=HEADER_VALUES)
def test_no_fuzzed_body_gets_a_5xx(relay: tuple[str, httpx.Client], request: tuple[str, bytes], request_id: bytes) -> None:
    _, http = relay
    path, body = request
    headers = {"content-type": b"application/json", "x-request-id": request_id}
    with http.stream("POST", path, content=body, headers=headers) as response:
        event(f"{path} {response.status_code}")
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            assert response.status_code == 200
            _assert_one_terminal(path, _events(response))
            return
        response.read()
    _check(http, path, response)


@pytest.fixture(scope="module")
def finished(relay: tuple[str, httpx.Client]) -> dict[str, Any]:
    """A resumable stream that has ended, with its URLs."""
    _, http = relay
    created: dict[str, Any] = http.post("/v1/streams", json={"prompt": "x", "max_tokens": 4}).json()
    with http.stream("GET", created["events_url"]) as events:
        _assert_one_terminal("/v1/streams", _events(events))
    return created


@settings(max_examples=600, deadline=None, database=None, derandomize=True)
@given(
    method=st.sampled_from(["GET", "DELETE"]),
    real_id=st.booleans(), stream_id=st.text(max_size=40),
    real_token=st.booleans(), query=HEADER_TEXT,
    last_event_id=st.none() | HEADER_VALUES | st.integers().map(lambda n: str(n).encode())
    | st.sampled_from([b"0-0", b"1-1", b"99999999999999999999-0", b"-1", b"0"]),
)
def test_no_fuzzed_stream_url_gets_a_5xx(
    relay: tuple[str, httpx.Client], finished: dict[str, Any], method: str, real_id: bool, stream_id: str, real_token: bool,
    query: str, last_event_id: bytes | None,
) -> None:
    _, http = relay
    events_url = httpx.URL(finished["events_url"])
    path = "/v1/streams/" + (finished["id"] if real_id else quote(stream_id, safe=""))
    path += "/events" if method == "GET" else ""
    params = events_url.params if real_token else httpx.QueryParams(query)
    if not real_token:
        params = params.set("token", query) if query else params
    if method == "DELETE" and real_token:
        params = httpx.QueryParams({"token": httpx.URL(finished["cancel_url"]).params["token"]})
    headers = {"last-event-id": last_event_id} if last_event_id is not None else {}
    # Only the head is read: what follows a head has its own tests.
    with http.stream(method, path, params=params, headers=headers) as response:
        event(f"{method} {response.status_code}")
        assert response.status_code < 500
        if response.status_code >= 400:
            response.read()
            assert response.json()["error"]["code"]
