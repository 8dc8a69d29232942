"""The official ``openai`` SDK as the reference reader of a Responses API stream.

``checked`` holds a stream to what the API promises (every event's ``type`` as its SSE name,
``sequence_number`` 0, 1, 2…, ``response.created`` and ``response.in_progress`` first, exactly
one terminal event, last) and feeds it to the SDK's own accumulator (what ``responses.stream()``
uses), which raises on anything out of place: a delta before its item, an item done as another
identity, a response completed with items left open.
"""

from __future__ import annotations

import json
from typing import Any

from openai import omit
from openai._models import construct_type
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent

from app.streaming.sse import SSEEvent, SSEParser

TERMINALS = ("response.completed", "response.incomplete", "response.failed")


def checked(events: list[SSEEvent], *, sdk: bool = True) -> list[dict[str, Any]]:
    """The events' bodies, once the stream has been checked as above (``sdk=False``: without the SDK's accumulator,
    whose cost grows with the text: megabytes of deltas take it minutes)."""
    bodies = [json.loads(event.data) for event in events]
    kinds = [body["type"] for body in bodies]
    assert [event.event for event in events] == kinds
    assert [body["sequence_number"] for body in bodies] == list(range(len(bodies)))
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert sum(kind in TERMINALS for kind in kinds) == 1 and kinds[-1] in TERMINALS, kinds
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    for body in bodies if sdk else ():
        state.handle_event(construct_type(type_=ResponseStreamEvent, value=body))  # type: ignore[arg-type]
    return bodies


def checked_bytes(raw: bytes, *, sdk: bool = True) -> list[dict[str, Any]]:
    return checked(SSEParser().feed(raw), sdk=sdk)


def final(bodies: list[dict[str, Any]]) -> dict[str, Any]:
    """The response the stream ended with."""
    response: dict[str, Any] = bodies[-1]["response"]
    return response


def view(response: dict[str, Any]) -> list[tuple[str, Any]]:
    """What a client reads of a response's output: each item's kind and content (ids left out, call ids kept)."""
    out: list[tuple[str, Any]] = []
    for item in response["output"]:
        if item["type"] == "message":
            out.append(("message", [(part["type"], part.get("text", part.get("refusal"))) for part in item["content"]]))
        elif item["type"] == "reasoning":
            out.append(("reasoning", ("".join(part["text"] for part in item["summary"]), item["encrypted_content"])))
        else:
            out.append((item["type"], (item["call_id"], item["name"], item["arguments"])))
    return out


def output_text(response: dict[str, Any]) -> str:
    return "".join(part["text"] for item in response["output"] if item["type"] == "message" for part in item["content"]
                   if part["type"] == "output_text")
