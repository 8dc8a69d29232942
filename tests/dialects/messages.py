"""Reading a Messages API stream in tests: its event grammar checked strictly, and the message it adds up to."""

from __future__ import annotations

import json
from typing import Any

from app.streaming.sse import SSEEvent

# Which delta a block of each type may take.
DELTAS = {"text": {"text_delta"}, "thinking": {"thinking_delta", "signature_delta"}, "tool_use": {"input_json_delta"}, "redacted_thinking": set()}
FIELDS = {"text_delta": "text", "thinking_delta": "thinking", "signature_delta": "signature", "input_json_delta": "partial_json"}


def reassembled(events: list[SSEEvent]) -> dict[str, Any]:
    """The stream's message, checking as it goes what the Messages API promises a strict client.

    ``message_start`` first with a usage object of integer counts; blocks one at a time, each
    started at the next index, its deltas of its own kind (a signature last in its thinking
    block), stopped before the next begins; ``message_delta`` with a stop reason once every block
    is stopped; then ``message_stop``, or instead one ``error``, and nothing after either.
    """
    events = [event for event in events if event.event != "ping"]
    names = [event.event for event in events]
    assert names.count("message_stop") + names.count("error") == 1, names
    assert names[-1] in ("message_stop", "error"), names
    message: dict[str, Any] | None = None
    blocks: list[dict[str, Any]] = []
    buffers: list[str] = []
    open_block: int | None = None
    signed = False
    for event in events:
        body = json.loads(event.data)
        assert body["type"] == event.event
        if event.event == "error":
            assert set(body["error"]) >= {"type", "message", "code", "phase"}
            return {"message": message, "content": blocks, "error": body["error"], "open": open_block}
        if event.event == "message_start":
            assert message is None and not blocks
            message = body["message"]
            usage = message["usage"]
            assert isinstance(usage["input_tokens"], int) and isinstance(usage["output_tokens"], int)
            continue
        assert message is not None, f"{event.event} before message_start"
        if event.event == "content_block_start":
            assert open_block is None and body["index"] == len(blocks), body
            blocks.append(dict(body["content_block"]))
            buffers.append("")
            open_block, signed = body["index"], False
        elif event.event == "content_block_delta":
            assert body["index"] == open_block and not signed, body
            block, delta = blocks[open_block], body["delta"]
            assert delta["type"] in DELTAS[block["type"]], (block["type"], delta["type"])
            field = FIELDS[delta["type"]]
            if delta["type"] == "input_json_delta":
                buffers[open_block] += delta[field]
            elif delta["type"] == "signature_delta":
                block["signature"], signed = delta["signature"], True
            else:
                block[field] += delta[field]
        elif event.event == "content_block_stop":
            assert body["index"] == open_block, body
            if blocks[open_block]["type"] == "tool_use" and buffers[open_block]:
                blocks[open_block]["input"] = json.loads(buffers[open_block])
            open_block = None
        elif event.event == "message_delta":
            assert open_block is None and body["delta"]["stop_reason"], body
            message["stop_reason"] = body["delta"]["stop_reason"]
            message["usage"] = message["usage"] | {key: value for key, value in body["usage"].items() if value is not None}
        elif event.event == "message_stop":
            assert message["stop_reason"] is not None
        else:
            raise AssertionError(f"an event the Messages API does not have: {event.event}")
    return {"message": message, "content": blocks, "error": None, "open": None}


def texts(content: list[dict[str, Any]], kind: str) -> str:
    return "".join(block.get(kind, "") for block in content if block["type"] == kind)


def calls(content: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"id": block["id"], "name": block["name"], "input": block["input"]} for block in content if block["type"] == "tool_use"]
