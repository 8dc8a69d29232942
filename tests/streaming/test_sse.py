"""The SSE parser follows the WHATWG event-stream rules, however the bytes are split."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.streaming.sse import SSEEvent, SSEParser


def parse(*chunks: bytes) -> list[tuple[str, str, str, int | None]]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return [(e.event, e.data, e.id, e.retry) for e in events]


@pytest.mark.parametrize(("stream", "expected"), [
    (b"data: a\n\n", [("message", "a", "", None)]),
    (b"data: a\r\n\r\n", [("message", "a", "", None)]),
    (b"data: a\r\rdata: b\r\r", [("message", "a", "", None), ("message", "b", "", None)]),
    (b"data: a\ndata: b\n\n", [("message", "a\nb", "", None)]),
    (b"data:a\n\n", [("message", "a", "", None)]),
    (b"data:  a\n\n", [("message", " a", "", None)]),
    (b"data\n\n", [("message", "", "", None)]),
    (b"data\ndata\n\n", [("message", "\n", "", None)]),
    (b": comment\ndata: a\n\n", [("message", "a", "", None)]),
    (b"event: add\ndata: 1\n\n", [("add", "1", "", None)]),
    (b"id: 7\ndata: a\n\ndata: b\n\n", [("message", "a", "7", None), ("message", "b", "7", None)]),
    (b"id: 7\n\ndata: a\n\n", [("message", "a", "7", None)]),  # an id-only block is no event, but sets the id
    (b"id: 1\x002\ndata: a\n\n", [("message", "a", "", None)]),  # an id with NUL is ignored
    (b"retry: 1000\ndata: a\n\n", [("message", "a", "", 1000)]),
    (b"retry: 10s\ndata: a\n\n", [("message", "a", "", None)]),
    (b"event: x\n\ndata: a\n\n", [("message", "a", "", None)]),  # the event type resets at a blank line
    (b"\xef\xbb\xbfdata: a\n\n", [("message", "a", "", None)]),  # a leading BOM is dropped
    (b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\n", []),  # only one: the second makes a field named "\ufeffdata"
    (b"data: a\n\ndata: b", [("message", "a", "", None)]),  # a final block without a blank line is not an event
    (b"data: a\x0bb\x0cc\x1cd\xc2\x85e\n\n", [("message", "a\x0bb\x0cc\x1cd\x85e", "", None)]),  # not line ends
    (b"data: a\xe2\x80\xa8b\n\n", [("message", "a\u2028b", "", None)]),
    (b"dat: a\n\n", []),
])
def test_whatwg_cases(stream: bytes, expected: list[tuple[str, str, str, int | None]]) -> None:
    assert parse(stream) == expected


# The web-platform-tests eventsource/format-*.js cases, the WHATWG spec's own examples and Chromium's
# event_source_parser_test.cc cases: the bytes on the wire (for WPT, what resources/message.py sends), then
# (type, data, last event id) of each event, and the reconnection time at the end.
WPT = {
    "format-field-data": (b"data:\n\ndata\ndata\n\ndata:test\n\n", [("message", "", ""), ("message", "\n", ""), ("message", "test", "")], None),
    "format-field-event": (b"event: x\ndata:x\n\n", [("x", "x", "")], None),
    "format-field-event-empty": (b"event: \ndata:data\n\n", [("message", "data", "")], None),
    "format-field-id-null": (
        b"id:\x00\x00\ndata:1\n\nid:x\x00\ndata:2\n\nid:\x00x\ndata:3\n\nid:x\x00x\ndata:4\n\nid: \x00\ndata:5\n\n",
        [("message", str(n), "") for n in range(1, 6)], None,
    ),
    "format-field-parsing": (
        b"data:\x00\ndata:  2\rData:1\ndata\x00:2\ndata:1\r\x00data:4\nda-ta:3\rdata_5\ndata:3\rdata:\r\n data:32\ndata:4\n\n",
        [("message", "\x00\n 2\n1\n3\n\n4", "")], None,
    ),
    "format-field-retry": (b"retry:03000\ndata:x\n\n", [("message", "x", "")], 3000),
    "format-field-retry-bogus": (b"retry:3000\nretry:1000x\n\ndata:x\n\n", [("message", "x", "")], 3000),
    "format-field-retry-empty": (b"retry:2000\n\nretry\n\ndata:x\n\n", [("message", "x", "")], 2000),
    "format-field-unknown": (b"data:1\nfoo\nfoo: bar\ndata:2\n\n", [("message", "1\n2", "")], None),
    "format-newlines": (b"data:alpha\r\ndata\ndata:beta\r\r\n", [("message", "alpha\n\nbeta", "")], None),
    "format-leading-space": (b"data:\talpha\rdata: \ndata:beta\n\n", [("message", "\talpha\n\nbeta", "")], None),
    "format-comments": (
        b"data:1\r:\x00\n:\r\ndata:2\n:" + b"x" * 2048 + b"\rdata:3\n:data:fail\r:" + b"x" * 2048 + b"\ndata:4\n\n",
        [("message", "1\n2\n3\n4", "")], None,
    ),
    "format-null-character": (b"data:\x00\n\n", [("message", "\x00", "")], None),
    "format-bom": (b"\xef\xbb\xbfdata:1\n\n\xef\xbb\xbfdata:2\n\ndata:3\n\n", [("message", "1", ""), ("message", "3", "")], None),
    "format-bom-2": (b"\xef\xbb\xbf\xef\xbb\xbfdata:1\n\ndata:2\n\n", [("message", "2", "")], None),
    "format-utf-8": ("data:d\u00f6m\n\n".encode(), [("message", "d\u00f6m", "")], None),
    "format-data-before-final-empty-line": (b"retry:1000\ndata:test1\n\nid:test\ndata:test2\n", [("message", "test1", "")], 1000),
    "spec-example-test-stream": (
        b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid: 2\n\nevent: custom event\ndata: third event\nid: 3\n\n"
        b": this is a test stream\n",
        [("message", "first event", "1"), ("message", "second event", "2"), ("custom event", "third event", "3")], None,
    ),
    "spec-example-stock-ticker": (b"data: YHOO\ndata: +2\ndata: 10\n\n", [("message", "YHOO\n+2\n10", "")], None),
    "chromium-last-event-id-should-not-be-reset": (
        b"data:1\nid:1\n\nid:2\ndata:2\n\ndata:3\n\n", [("message", "1", "1"), ("message", "2", "2"), ("message", "3", "2")], None,
    ),
    "chromium-last-event-id-can-be-updated-even-when-data-is-empty": (
        b"id:9\n\ndata:x\n\nid:\n\ndata:y\n\n", [("message", "x", "9"), ("message", "y", "")], None,
    ),
    "chromium-non-digit-retry-should-be-ignored": (
        b"retry:2000\nretry:a0\nretry:1234x\nretry:0x10\nretry:1.5\nretry:+1\nretry:1_000\nretry: 1234\n\ndata:x\n\n", [("message", "x", "")], 1234,
    ),
}


@pytest.mark.parametrize("name", sorted(WPT))
@pytest.mark.parametrize("size", [None, 1, 3])
def test_web_platform_tests_cases(name: str, size: int | None) -> None:
    stream, expected, reconnection_time = WPT[name]
    parser = SSEParser()
    events: list[SSEEvent] = []
    step = size or len(stream)
    for start in range(0, len(stream), step):
        events.extend(parser.feed(stream[start:start + step]))
    assert [(e.event, e.data, e.id) for e in events] == expected
    assert parser.reconnection_time == reconnection_time


def test_an_empty_chunk_between_cr_and_lf_changes_nothing() -> None:
    assert parse(b"data: a\r", b"", b"\ndata: b\n\n") == parse(b"data: a\r\ndata: b\n\n") == [("message", "a\nb", "", None)]


line_end = st.sampled_from([b"\n", b"\r", b"\r\n"])
value = st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]), max_size=12).map(str.encode)
field = st.tuples(st.sampled_from([b"data", b"event", b"id", b"retry", b":", b"data:", b""]), value, line_end).map(
    lambda parts: parts[0] + (b": " if parts[0] not in (b":", b"data:", b"") else b"") + parts[1] + parts[2]
)
streams = st.tuples(st.booleans(), st.lists(field, max_size=30)).map(lambda s: (b"\xef\xbb\xbf" if s[0] else b"") + b"".join(s[1]))


@settings(max_examples=300, deadline=None)
@given(stream=streams, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_any_split_yields_the_same_events(stream: bytes, cuts: list[int]) -> None:
    points = sorted(cut % (len(stream) + 1) for cut in cuts)  # repeated points make empty chunks
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert parse(*chunks) == parse(stream)


@settings(max_examples=200, deadline=None)
@given(stream=streams)
def test_byte_by_byte_is_the_same_as_whole(stream: bytes) -> None:
    assert parse(*[stream[i:i + 1] for i in range(len(stream))]) == parse(stream)
