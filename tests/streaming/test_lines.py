"""Line splitting for the line-based protocols: the same lines however the bytes are split, and a bound on each."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from app.streaming.lines import LineSplitter


def lines_of(splitter: LineSplitter, chunks: list[bytes]) -> tuple[list[bytes], bool]:
    lines: list[bytes] = []
    for chunk in chunks:
        complete, too_long = splitter.split(chunk)
        lines += complete
        if too_long:
            return lines, True
    return lines, False


@settings(max_examples=300, deadline=None)
@given(stream=st.binary(max_size=200).map(lambda b: b.replace(b"\r", b"\n")), cuts=st.lists(st.integers(0, 200), max_size=10))
def test_any_split_yields_the_lines_of_the_whole(stream: bytes, cuts: list[int]) -> None:
    points = sorted(cut % (len(stream) + 1) for cut in cuts)
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    splitter = LineSplitter(max_line=1_000)
    assert lines_of(splitter, chunks) == (stream.split(b"\n")[:-1], False)
    assert splitter.take() == stream.split(b"\n")[-1]


@settings(max_examples=300, deadline=None)
@given(stream=st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")), min_size=1, max_size=12), size=st.integers(1, 30))
def test_the_lines_before_a_long_one_come_out_and_it_is_reported(stream: list[bytes], size: int) -> None:
    whole = b"\n".join(stream) + b"\n"
    expected = []
    for line in stream:
        if len(line) > 8:
            break
        expected.append(line)
    chunks = [whole[start:start + size] for start in range(0, len(whole), size)]
    splitter = LineSplitter(max_line=8)
    lines, too_long = lines_of(splitter, chunks)
    assert too_long == (len(expected) < len(stream))
    assert lines == expected if too_long else lines == stream


def test_past_the_bound_nothing_is_kept() -> None:
    splitter = LineSplitter(max_line=4)
    assert splitter.split(b"abcde") == ([], True)
    assert splitter.take() == b""
