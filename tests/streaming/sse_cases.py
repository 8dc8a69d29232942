"""Conformance cases for SSE parsers, as data: the tests run them against ours, bench/sse_parsers.py against the others."""

from __future__ import annotations

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
    "derived-only-cr-lf-crlf-end-lines": (  # the other characters str.splitlines splits on are data
        "data: a\x0bb\x0cc\x1cd\x85e\u2028f\n\n".encode(), [("message", "a\x0bb\x0cc\x1cd\x85e\u2028f", "")], None,
    ),
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
