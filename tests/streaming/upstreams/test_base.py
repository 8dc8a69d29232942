"""What the adapters' shared base guarantees, the same for every protocol: the request's framing, the
client's extra parameters, ``stop``, progress, and text that needs repair, however it is split."""

from __future__ import annotations

import gc
import re
import weakref
from collections.abc import Iterator
from typing import Any, cast

import msgspec
import pytest

from app.streaming.events import Delta, Error, Event, Finish
from app.streaming.request import GenerationRequest
from app.streaming.upstreams.adapters import ADAPTERS
from app.streaming.upstreams.handler import StreamHandler
from tests.streaming.upstreams.test_wire_formats import FIXTURES, events_of, one_token, run

PROTOCOLS = sorted(ADAPTERS)
HANDLERS = {protocol: cast(type[StreamHandler], ADAPTERS[protocol].handler) for protocol in PROTOCOLS}
MESSAGES = [{"role": "user", "content": "Hi"}]
# OpenAI parameters beyond those the relay reads, a null and one no model server knows among them.
EXTRA: dict[str, Any] = {
    "top_p": 0.5, "top_k": 3, "seed": 7, "repetition_penalty": 1.1, "frequency_penalty": 0.2, "presence_penalty": 0.1,
    "logit_bias": {"50256": -100}, "user": "u-1", "service_tier": None, "x_custom": [1, 2],
}


def sent(protocol: str, extra: dict[str, Any], api_key: str | None = None) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    _, headers, body = ADAPTERS[protocol].build_request(GenerationRequest("rid-7", "m", MESSAGES, extra=extra), api_key)
    return headers, msgspec.json.decode(body)


def where(body: dict[str, Any], name: str) -> Iterator[Any]:
    """The values of ``name`` in ``body``: at its top level, or in an object at its top level (Ollama's options, TGI's parameters)."""
    if name in body:
        yield body[name]
    for value in body.values():
        if isinstance(value, dict) and name in value:
            yield value[name]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_protocol_frames_its_request_alike(protocol: str) -> None:
    handler = HANDLERS[protocol]
    headers, _ = sent(protocol, {}, "sk-9")
    _, keyless = sent(protocol, {})
    name, prefix = handler.auth
    assert ("Content-Type", "application/json") in headers and ("X-Request-Id", "rid-7") in headers
    assert ("Accept", handler.content_types[0].decode()) in headers
    assert [header for header in headers if header[1].endswith("sk-9")] == [(name, prefix + "sk-9")]
    assert keyless is not None and not any(header == name for header, _ in sent(protocol, {})[0])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_protocol_passes_the_parameters_it_takes_as_sent_and_no_other(protocol: str) -> None:
    """OpenAI's protocol takes them all, as sent; another protocol those it declares, with the client's value, never a null."""
    passes = HANDLERS[protocol].passes
    _, body = sent(protocol, EXTRA)
    for name, value in EXTRA.items():
        taken = passes is None or (name in passes and value is not None)
        assert list(where(body, name)) == ([value] if taken else []), name


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(("stop", "as_list"), [
    ("END", ["END"]), (["a", "b"], ["a", "b"]), ("", None), ([], None), (None, None), (["a", 3, ""], ["a"]),
])
def test_stop_is_a_list_under_the_protocols_name_or_as_sent_to_openais(protocol: str, stop: Any, as_list: list[str] | None) -> None:
    name = HANDLERS[protocol].stop
    _, body = sent(protocol, {"stop": stop})
    if name is None:
        assert list(where(body, "stop")) == [stop]
    else:
        assert list(where(body, name)) == ([as_list] if as_list else [])


def protocol_of(fixture: str) -> str:
    if fixture.endswith(".ndjson"):
        return "ollama"
    return next((protocol for protocol in ("anthropic", "tgi") if fixture.startswith(protocol)), "openai")


STREAMS = sorted(path.name for path in FIXTURES.iterdir() if path.suffix in (".sse", ".ndjson"))


@pytest.mark.parametrize("fixture", STREAMS)
def test_an_error_is_in_the_stream_phase_once_any_event_went_out_and_only_then(fixture: str) -> None:
    """Cut at every line end: the error after the cut is ``first_token`` while nothing went out, ``stream`` after an event of any kind."""
    protocol, body = protocol_of(fixture), (FIXTURES / fixture).read_bytes()
    cuts = [match.end() for match in re.finditer(rb"\n", body)]
    for cut in cuts[:-1]:
        *before, last = run(protocol, body[:cut])
        if isinstance(last, Error):
            assert last.phase == ("stream" if before else "first_token"), (cut, before, last)


FIRST_PARTS = {  # per protocol, a first event of each kind it carries, then a body cut short
    "openai": [
        b'data: {"choices":[{"index":0,"delta":{"reasoning_content":"Hmm"}}]}\n\n',
        b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c","function":{"name":"f","arguments":""}}]}}]}\n\n',
        b'data: {"choices":[{"index":0,"delta":{"refusal":"No"}}]}\n\n',
        b'data: {"choices":[{"index":0,"delta":{},"logprobs":{"content":[{"token":"a","logprob":-1.0}]}}]}\n\n',
        b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":0,"total_tokens":1}}\n\n',
    ],
    "anthropic": [
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Hmm"}}\n\n',
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"s"}}\n\n',
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}\n\n',
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"redacted_thinking","data":"x"}}\n\n',
    ],
    "ollama": [
        b'{"message":{"role":"assistant","content":"","thinking":"Hmm"},"done":false}\n',
        b'{"message":{"role":"assistant","content":"","tool_calls":[{"function":{"name":"f","arguments":{}}}]},"done":false}\n',
    ],
    "tgi": [b'data:{"token":{"id":1,"text":"Hi","special":false}}\n\n'],
}
NOT_PARTS = {  # per protocol, events that carry nothing of the answer
    "openai": b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n',
    "anthropic": b'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":3}}}\n\nevent: ping\ndata: {"type":"ping"}\n\n',
    "ollama": b'{"message":{"role":"assistant","content":""},"done":false}\n',
    "tgi": b'data:{"token":{"id":2,"text":"","special":true}}\n\n',
}


@pytest.mark.parametrize(("protocol", "first"), [(protocol, first) for protocol, firsts in FIRST_PARTS.items() for first in firsts])
def test_every_kind_of_part_is_progress(protocol: str, first: bytes) -> None:
    *parts, error = run(protocol, NOT_PARTS[protocol] + first)
    assert parts and isinstance(error, Error) and (error.code, error.phase) == ("upstream_incomplete", "stream")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_events_that_carry_nothing_are_not_progress(protocol: str) -> None:
    [error] = run(protocol, NOT_PARTS[protocol])
    assert isinstance(error, Error) and (error.code, error.phase) == ("upstream_incomplete", "first_token")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_handler_dropped_before_its_first_event_is_freed_without_the_collector(protocol: str) -> None:
    events: list[Event] = []
    gc.disable()
    try:
        handler = ADAPTERS[protocol].handler(events.append, lambda: None)
        freed = weakref.ref(handler)
        del handler
        assert freed() is None
    finally:
        gc.enable()


def splits(protocol: str, body: bytes) -> dict[str, list[bytes]]:
    per_event = [part for part in re.split(rb"(?<=\n\n)" if protocol != "ollama" else rb"(?<=\n)", body) if part]
    return {"whole": [body], "per event": per_event, "per byte": [body[i:i + 1] for i in range(len(body))]}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bytes_that_are_not_utf8_read_as_replacement_characters_however_split(protocol: str) -> None:
    """As the SSE parser reads them when a read holds several events: a read of one event (the fast path, taken after the first) reads the same."""
    for split, chunks in splits(protocol, NOT_PARTS[protocol] + one_token(protocol, b"a\xff\xfeb\xe2\x82")).items():
        events = events_of(protocol, chunks)
        assert (events[0], type(events[-1])) == (Delta("a\ufffd\ufffdb\ufffd"), Finish), split
