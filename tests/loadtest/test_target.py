"""The request built for a URL."""

from __future__ import annotations

import json

import pytest

from app.loadtest.target import TargetError, build_target, parse_header


def split(raw: bytes) -> tuple[list[str], dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    line, *fields = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value for name, _, value in (f.partition(": ") for f in fields)}
    return line.split(" "), headers, body


def test_chat_completions_get_an_openai_streaming_body_that_asks_for_usage() -> None:
    target = build_target("http://127.0.0.1:8000/v1/chat/completions", model="m", max_tokens=7, prompt="hi")
    line, headers, body = split(target.request())
    assert line == ["POST", "/v1/chat/completions", "HTTP/1.1"]
    assert headers["host"] == "127.0.0.1:8000"
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    assert json.loads(body) == {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 7, "stream": True,
                                "stream_options": {"include_usage": True}}
    assert target.api == "openai-chat"


def test_generate_gets_the_native_body_and_completions_the_legacy_one() -> None:
    native = build_target("http://127.0.0.1/v1/generate", max_tokens=3)
    legacy = build_target("http://127.0.0.1/v1/completions", max_tokens=3)
    assert json.loads(native.body) == {"model": "mock", "prompt": "Tell me a story about token relays.", "max_tokens": 3, "stream": True}
    assert json.loads(legacy.body)["prompt"] and legacy.api == "openai-completions"
    assert split(native.request())[1]["host"] == "127.0.0.1"


def test_any_other_path_is_an_eventsource_get_without_a_body() -> None:
    target = build_target("http://127.0.0.1:9000/v1/streams/abc/events?last_event_id=4")
    line, headers, body = split(target.request())
    assert line == ["GET", "/v1/streams/abc/events?last_event_id=4", "HTTP/1.1"]
    assert headers["accept"] == "text/event-stream"
    assert "content-length" not in headers and body == b""
    assert target.api == "eventsource"


def test_headers_and_body_given_replace_the_defaults_and_request_ids_are_added() -> None:
    target = build_target("http://127.0.0.1:1/v1/chat/completions", headers=[("accept", "*/*"), ("Authorization", "Bearer k")], body=b"{}")
    _, headers, body = split(target.request("run-3"))
    assert headers["accept"] == "*/*"
    assert headers["authorization"] == "Bearer k"
    assert headers["x-request-id"] == "run-3"
    assert body == b"{}" and headers["content-length"] == "2"


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "127.0.0.1:8000/v1/generate", "http:///v1", "http://127.0.0.1:99999/"])
def test_urls_that_cannot_be_requested_are_refused(url: str) -> None:
    with pytest.raises(TargetError):
        build_target(url)


@pytest.mark.parametrize("text", ["no colon", ": empty name", "Bad Name: x"])
def test_malformed_headers_are_refused(text: str) -> None:
    with pytest.raises(TargetError):
        parse_header(text)


def test_a_header_is_name_and_value() -> None:
    assert parse_header("X-Api-Key:  abc: def ") == ("X-Api-Key", "abc: def")
