"""Each adapter reads its protocol's documented wire format (tests/streaming/upstreams/fixtures/), however the bytes are split,
and builds the request its model server expects."""

from __future__ import annotations

import json
import re
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.streaming.events import Delta, Error, Event, Finish, UpstreamDetail, Usage
from app.streaming.request import GenerationRequest
from app.streaming.upstreams.adapters import ADAPTERS
from app.streaming.upstreams.handler import ErrorBody, decode_repaired

FIXTURES = Path(__file__).parent / "fixtures"
SSE, NDJSON = b"text/event-stream", b"application/x-ndjson"

CASES = {
    "openai-stream-usage.sse": ("openai", [Delta("Hello"), Delta("!"), Usage(9, 2, 11), Finish("stop")]),
    "openai-llamacpp.sse": ("openai", [Delta("Hi"), Usage(12, 1, 13), Finish("length")]),
    "openai-vllm-error.sse": ("openai", [Delta("Once"), Error("upstream_error", "500", "The engine is dead", "stream")]),
    "tgi-generate-stream.sse": ("tgi", [Delta("Deep"), Delta(" learning"), Usage(6, 3, 9), Finish("stop")]),
    "tgi-length.sse": ("tgi", [Delta("Deep"), Delta(" learning"), Usage(6, 2, 8), Finish("length")]),
    "tgi-error.sse": ("tgi", [
        Delta("Deep"), Error("upstream_error", "generation", "Request failed during generation: Server error: Out of available cache blocks", "stream"),
    ]),
    "ollama-chat.ndjson": ("ollama", [Delta("The"), Delta(" sky"), Delta(" is blue."), Usage(26, 282, 308), Finish("stop")]),
    "ollama-error.ndjson": ("ollama", [
        Delta("The"), Error("upstream_error", "upstream_error", "an error was encountered while running the model: unexpected EOF", "stream"),
    ]),
    "anthropic-stream.sse": ("anthropic", [Delta("Hello"), Delta("!"), Usage(25, 15, 40), Finish("stop")]),
    "anthropic-error.sse": ("anthropic", [Delta("Hello"), Error("upstream_error", "overloaded_error", "Overloaded", "stream")]),
}


def run(protocol: str, body: bytes, *, size: int | None = None, status: int = 200, content_type: bytes | None = None) -> list[Event]:
    events: list[Event] = []
    handler = ADAPTERS[protocol].handler(events.append, lambda: None)
    handler.on_response(status, [(b"content-type", content_type or (NDJSON if protocol == "ollama" else SSE))])
    size = size or len(body) or 1
    for start in range(0, len(body), size):
        handler.on_body(body[start:start + size])
    handler.on_end()
    return events


@pytest.mark.parametrize("size", [None, 1, 7, 64])
@pytest.mark.parametrize("name", sorted(CASES))
def test_documented_streams_become_the_same_events_however_split(name: str, size: int | None) -> None:
    protocol, expected = CASES[name]
    assert run(protocol, (FIXTURES / name).read_bytes(), size=size) == expected


@pytest.mark.parametrize("name", sorted(name for name in CASES if name.endswith(".sse")))
def test_crlf_line_ends_read_the_same(name: str) -> None:
    protocol, expected = CASES[name]
    assert run(protocol, (FIXTURES / name).read_bytes().replace(b"\n", b"\r\n"), size=5) == expected


@pytest.mark.parametrize("name", sorted(name for name, (_, expected) in CASES.items() if isinstance(expected[-1], Finish)))
def test_a_body_cut_before_its_end_marker_is_incomplete(name: str) -> None:
    protocol, _ = CASES[name]
    body = (FIXTURES / name).read_bytes()
    events = run(protocol, body[: body.rindex(b"\n", 0, len(body) // 2) + 1])  # its first half, at a line end
    assert isinstance(events[-1], Error) and events[-1].code == "upstream_incomplete"
    assert [e for e in events if isinstance(e, Error)] == [events[-1]]


@pytest.mark.parametrize(("protocol", "status", "body", "message"), [
    ("openai", 429, b'{"error": {"message": "Rate limit reached for requests", "type": "requests", "param": null, "code": "rate_limit_exceeded"}}',
     "Rate limit reached for requests"),
    ("tgi", 422, b'{"error":"Input validation error: `inputs` must have less than 4096 tokens. Given: 5000","error_type":"validation"}',
     "Input validation error: `inputs` must have less than 4096 tokens. Given: 5000"),
    ("ollama", 404, b'{"error":"model \\"llama3.2\\" not found, try pulling it first"}', 'model "llama3.2" not found, try pulling it first'),
    ("anthropic", 529, b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}', "Overloaded"),
    ("anthropic", 502, b"<html><body>Bad gateway</body></html>", "<html><body>Bad gateway</body></html>"),
])
def test_an_error_status_quotes_the_model_servers_message(protocol: str, status: int, body: bytes, message: str) -> None:
    events = run(protocol, body, status=status, content_type=b"application/json")
    assert len(events) == 1 and isinstance(events[0], Error)
    error = events[0]
    assert (error.type, error.code, error.message, error.phase, error.status) == (
        "upstream_error", f"upstream_status_{status}", f"the model server answered {status}: {message}", "first_token", status,
    )
    assert error.detail is not None and error.detail.message == message


def test_an_error_status_keeps_the_model_servers_own_type_code_and_param() -> None:
    body = b'{"error":{"message":"too long","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}'
    [error] = run("openai", body, status=400, content_type=b"application/json")
    assert isinstance(error, Error) and error.refused
    assert error.detail == UpstreamDetail("too long", "invalid_request_error", "context_length_exceeded", "messages")


@pytest.mark.parametrize("protocol", sorted(ADAPTERS))
def test_a_stream_of_the_wrong_kind_is_malformed(protocol: str) -> None:
    events = run(protocol, b"<html>hello</html>", content_type=b"text/html")
    assert len(events) == 1 and isinstance(events[0], Error) and events[0].code == "upstream_malformed"


@pytest.mark.parametrize("end", [b"", b"\n"], ids=["unended", "ended"])
@pytest.mark.parametrize("size", [None, 65_536])
@pytest.mark.parametrize("protocol", sorted(ADAPTERS))
def test_a_line_past_the_bound_ends_the_stream_as_malformed(protocol: str, size: int | None, end: bytes) -> None:
    line = (b"" if protocol == "ollama" else b"data: ") + b"x" * 1_048_577 + end
    [error] = run(protocol, line, size=size)
    assert (error.code, error.phase) == ("upstream_malformed", "first_token")
    assert error.message.endswith(" of more than 1048576 bytes from the model server")


@pytest.mark.parametrize("protocol", sorted(protocol for protocol in ADAPTERS if protocol != "ollama"))
def test_data_lines_past_the_event_bound_end_the_stream_as_malformed(protocol: str) -> None:
    [error] = run(protocol, (b"data: " + b"x" * 65_530 + b"\n") * 65, size=65_536)
    assert (error.code, error.message) == ("upstream_malformed", "an SSE event with more than 4194304 bytes of data from the model server")


@pytest.mark.parametrize(("protocol", "token"), [
    ("openai", b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'),
    ("tgi", b'data:{"token":{"id":1,"text":"Hi","special":false}}\n\n'),
    ("anthropic", b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"type":"text_delta","text":"Hi"}}\n\n'),
    ("ollama", b'{"message":{"role":"assistant","content":"Hi"},"done":false}\n'),
])
def test_what_came_before_the_bound_in_the_same_read_is_kept(protocol: str, token: bytes) -> None:
    events = run(protocol, token + (b"" if protocol == "ollama" else b"data: ") + b"x" * 1_048_576)
    assert events[0] == Delta("Hi")
    assert isinstance(events[1], Error) and (events[1].code, events[1].phase) == ("upstream_malformed", "stream") and len(events) == 2


def one_token(protocol: str, text: bytes) -> bytes:
    """A whole stream of one token, ``text`` being the bytes of its JSON string between the quotes."""
    if protocol == "openai":
        return (b'data: {"choices":[{"index":0,"delta":{"content":"%b"}}]}\n\n' % text
                + b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n')
    if protocol == "tgi":
        return (b'data:{"token":{"id":1,"text":"%b","special":false}}\n\n' % text
                + b'data:{"token":{"id":2,"text":"","special":true},"details":{"finish_reason":"eos_token","generated_tokens":2,"input_length":1}}\n\n')
    if protocol == "anthropic":
        return (b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"type":"text_delta","text":"%b"}}\n\n' % text
                + b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    return (b'{"message":{"role":"assistant","content":"%b"},"done":false}\n' % text
            + b'{"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","prompt_eval_count":1,"eval_count":2}\n')


ESCAPES = {  # the JSON string on the wire, and the text it stands for
    "a lone high surrogate": (rb"a\ud800b", "a\ufffdb"),
    "a lone high surrogate ending the string": (rb"a\ud800", "a\ufffd"),
    "a lone low surrogate": (rb"a\udc00b", "a\ufffdb"),
    "a low before a high": (rb"\udc00\ud800", "\ufffd\ufffd"),
    "a high before a pair": (rb"\ud800\ud83d\ude00", "\ufffd\U0001f600"),
    "a lone surrogate in capitals": (rb"\uD800x", "\ufffdx"),
    "a pair": (rb"\ud83d\ude00", "\U0001f600"),
    "a pair in capitals": (rb"\uD83D\uDE00", "\U0001f600"),
    "an escaped backslash before ud800": (rb"a\\ud800", "a\\ud800"),
    "an escaped backslash before ud800, then a lone surrogate": (rb"\\ud800\udc00", "\\ud800\ufffd"),
    "an escaped backslash before a lone surrogate": (rb"\\\ud800", "\\\ufffd"),
}


def events_of(protocol: str, chunks: list[bytes], *, status: int = 200, content_type: bytes | None = None) -> list[Event]:
    events: list[Event] = []
    handler = ADAPTERS[protocol].handler(events.append, lambda: None)
    handler.on_response(status, [(b"content-type", content_type or (NDJSON if protocol == "ollama" else SSE))])
    for chunk in chunks:
        handler.on_body(chunk)
    handler.on_end()
    return events


@pytest.mark.parametrize("split", ["whole", "per event", "per byte"])
@pytest.mark.parametrize("escape", sorted(ESCAPES))
@pytest.mark.parametrize("protocol", sorted(ADAPTERS))
def test_a_lone_surrogate_escape_is_read_as_a_replacement_character(protocol: str, escape: str, split: str) -> None:
    wire, text = ESCAPES[escape]
    body = one_token(protocol, wire)
    if split == "whole":
        chunks = [body]
    elif split == "per event":  # one event a read: the OpenAI adapter's fast path
        chunks = [part for part in re.split(rb"(?<=\n\n)" if protocol != "ollama" else rb"(?<=\n)", body) if part]
    else:
        chunks = [body[i:i + 1] for i in range(len(body))]
    events = events_of(protocol, chunks)
    assert events[0] == Delta(text)
    assert isinstance(events[-1], Finish)


SURROGATE = re.compile("[\ud800-\udfff]")
tricky_text = st.lists(st.sampled_from([
    "\\", "\\ud800", "\\udc00", "u", "d", "8", "c", "0", "a", '"', "\ud800", "\udbff", "\udc00", "\udfff", "\U0001f600",
]), max_size=20).map("".join)


@settings(max_examples=500, deadline=None)
@given(text=tricky_text)
def test_json_escapes_read_as_python_reads_them_with_lone_surrogates_as_replacement_characters(text: str) -> None:
    wire = json.dumps({"message": text}).encode()  # ASCII: every surrogate, lone or paired, is a \u escape
    expected = SURROGATE.sub("\ufffd", json.loads(wire)["message"])  # json pairs what it can; what is left is lone
    try:
        decoded = msgspec.json.decode(wire, type=ErrorBody)
    except msgspec.DecodeError:
        repaired = decode_repaired(msgspec.json.Decoder(ErrorBody).decode, wire)
        assert repaired is not None
        decoded = repaired
    assert decoded.message == expected


@pytest.mark.parametrize("protocol", sorted(ADAPTERS))
def test_a_lone_surrogate_in_an_error_body_is_read_as_a_replacement_character(protocol: str) -> None:
    body = rb'{"error":{"message":"bad \ud800 input"}}' if protocol in ("openai", "anthropic") else rb'{"error":"bad \ud800 input"}'
    events = events_of(protocol, [body], status=500, content_type=b"application/json")
    assert events == [Error(
        "upstream_error", "upstream_status_500", "the model server answered 500: bad \ufffd input", "first_token",
        status=500, detail=UpstreamDetail("bad \ufffd input"),
    )]


def test_a_lone_surrogate_in_a_json_answer_to_a_stream_request_is_read_as_a_replacement_character() -> None:
    body = rb'{"choices":[{"message":{"content":"a\udc00"},"finish_reason":"stop"}]}'
    assert events_of("openai", [body], content_type=b"application/json") == [Delta("a\ufffd"), Finish("stop")]


def test_an_invalid_chunk_with_a_lone_surrogate_is_still_malformed() -> None:
    [error] = events_of("openai", [b'data: {"choices": \\ud800\n\n'])
    assert error.code == "upstream_malformed"


REQUEST = GenerationRequest(
    "rid-1", "m", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
    extra={"max_tokens": 20, "temperature": 1.5, "top_p": 0.9, "stop": "END", "seed": 7},
)


def test_openai_request_passes_parameters_and_asks_for_usage() -> None:
    path, headers, body = ADAPTERS["openai"].build_request(REQUEST, "sk-1")
    assert path == "/chat/completions" and ("Authorization", "Bearer sk-1") in headers and ("X-Request-Id", "rid-1") in headers
    sent = msgspec.json.decode(body)
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert (sent["max_tokens"], sent["temperature"], sent["stop"], sent["messages"]) == (20, 1.5, "END", REQUEST.messages)


def test_tgi_request_is_a_prompt_with_parameters() -> None:
    path, headers, body = ADAPTERS["tgi"].build_request(REQUEST, None)
    assert path == "/generate_stream" and not any(name == "Authorization" for name, _ in headers)
    assert msgspec.json.decode(body) == {
        "inputs": "system: Be brief.\nuser: Hi\nassistant:",
        "parameters": {"top_p": 0.9, "seed": 7, "details": True, "max_new_tokens": 20, "temperature": 1.5, "stop": ["END"]},
    }
    _, _, lone = ADAPTERS["tgi"].build_request(GenerationRequest("r", "m", [{"role": "user", "content": "Just this"}], max_tokens=3), None)
    assert msgspec.json.decode(lone)["inputs"] == "Just this"


def test_ollama_request_uses_options() -> None:
    """``stop`` goes as a list: Ollama's ``Options.Stop`` is ``[]string``, and a string is refused ("option "stop" must be of type array")."""
    path, _, body = ADAPTERS["ollama"].build_request(REQUEST, None)
    assert path == "/api/chat"
    assert msgspec.json.decode(body) == {
        "model": "m", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "stream": True,
        "options": {"top_p": 0.9, "seed": 7, "stop": ["END"], "num_predict": 20, "temperature": 1.5},
    }


def test_anthropic_request_has_its_headers_a_system_and_a_capped_temperature() -> None:
    path, headers, body = ADAPTERS["anthropic"].build_request(REQUEST, "sk-ant")
    assert path == "/v1/messages"
    assert ("x-api-key", "sk-ant") in headers and ("anthropic-version", "2023-06-01") in headers
    assert not any(name == "Authorization" for name, _ in headers)
    assert msgspec.json.decode(body) == {
        "top_p": 0.9, "model": "m", "max_tokens": 20, "messages": [{"role": "user", "content": "Hi"}], "stream": True,
        "system": "Be brief.", "temperature": 1.0, "stop_sequences": ["END"],
    }
    _, _, default = ADAPTERS["anthropic"].build_request(GenerationRequest("r", "m", [{"role": "user", "content": "x"}]), None)
    assert msgspec.json.decode(default)["max_tokens"] == 4096
