"""The SSE parser follows the WHATWG event-stream rules, however the bytes are split."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.streaming.sse import SSEEvent, SSEParser
from tests.streaming.sse_cases import WPT


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
