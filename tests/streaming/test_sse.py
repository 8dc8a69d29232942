"""The SSE parser follows the WHATWG event-stream rules, however the bytes are split."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.streaming.sse import MAX_EVENT, MAX_LINE, SSEEvent, SSEParser, SSETooLarge
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


def feed_all(parser: SSEParser, chunks: list[bytes]) -> list[SSEEvent]:
    return [event for chunk in chunks for event in parser.feed(chunk)]


@pytest.mark.parametrize("size", [None, 1, 5])
def test_a_line_over_the_bound_raises_with_the_events_before_it(size: int | None) -> None:
    stream = b"data: a\n\n" + b"data: " + b"x" * 10
    parser = SSEParser(max_line=15, max_event=100)
    step = size or len(stream)
    events: list[SSEEvent] = []
    with pytest.raises(SSETooLarge, match=r"^an SSE line of more than 15 bytes$") as raised:
        for start in range(0, len(stream), step):
            events += parser.feed(stream[start:start + step])
    assert [e.data for e in events + raised.value.events] == ["a"]


def test_a_line_at_the_bound_is_taken_and_a_whole_line_over_it_is_not() -> None:
    parser = SSEParser(max_line=8, max_event=100)
    assert [e.data for e in feed_all(parser, [b"data: ", b"ab", b"\n\n"])] == ["ab"]
    with pytest.raises(SSETooLarge):
        parser.feed(b"data: abc\n")  # whole, in one chunk


def test_data_lines_past_the_event_bound_raise_though_each_line_is_short() -> None:
    parser = SSEParser(max_line=16, max_event=60)  # the bytes of the lines, "data: " and all: four lines of 15
    assert [e.data for e in feed_all(parser, [b"data: 123456789\n" * 4 + b"\n"])] == ["\n".join(["123456789"] * 4)]
    with pytest.raises(SSETooLarge, match=r"^an SSE event with more than 60 bytes of data$"):
        feed_all(parser, [b"data: 123456789\n"] * 5)


def test_comments_and_other_fields_do_not_count_towards_the_event_bound() -> None:
    parser = SSEParser(max_line=16, max_event=20)
    assert [e.data for e in feed_all(parser, [b": 123456789\n", b"event: x\n"] * 100 + [b"data: a\n\n"])] == ["a"]


def test_the_default_bounds_are_a_mebibyte_a_line_and_four_an_event() -> None:
    assert (MAX_LINE, MAX_EVENT) == (1_048_576, 4_194_304)
    assert feed_all(SSEParser(), [b"data: " + b"x" * (MAX_LINE - 6) + b"\n\n"])[0].data == "x" * (MAX_LINE - 6)
    with pytest.raises(SSETooLarge):
        feed_all(SSEParser(), [b"data: ", b"x" * MAX_LINE])
    with pytest.raises(SSETooLarge):
        feed_all(SSEParser(), [b"data: " + b"x" * 65_536 + b"\n"] * 64)


def test_past_a_bound_the_parser_lets_go_of_what_it_held() -> None:
    parser = SSEParser(max_line=1_000, max_event=10_000)
    with pytest.raises(SSETooLarge):
        feed_all(parser, [b"data: " + b"x" * 900 + b"\n"] * 20)
    assert feed_all(parser, [b"\n"]) == []  # the data lines before the bound are gone: no event
    with pytest.raises(SSETooLarge):
        feed_all(parser, [b"data: ", b"x" * 999])
    assert [e.data for e in feed_all(parser, [b"\ndata: b\n\n"])] == ["b"]  # nor is the long line's start


def test_a_long_line_in_small_pieces_costs_no_more_than_its_bytes() -> None:
    # Rebuilding the pending line for each piece is quadratic: 8 MiB in 4 KiB pieces copies 8 GiB, seconds of
    # CPU; joined once it is milliseconds. The bound is loose, for a loaded machine, and far below quadratic.
    parser = SSEParser(max_line=16 * 1024 * 1024, max_event=16 * 1024 * 1024)
    piece = b"x" * 4096
    began = time.process_time()
    parser.feed(b"data: ")
    for _ in range(2048):
        assert parser.feed(piece) == []
    [event] = parser.feed(b"\n\n")
    assert time.process_time() - began < 1.0
    assert len(event.data) == 2048 * 4096
