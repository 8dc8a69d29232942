"""The OpenAI Responses API's answers: the typed event stream, and the whole ``response`` object.

A response's ``output`` is a list of items, built as the parts arrive (``Output``): a ``reasoning``
item per thinking block, a ``message`` item for text (its ``output_text`` and ``refusal`` content
parts in the order they came), a ``function_call`` item per call (``call_id`` and ``name`` from
its first fragment). A reasoning or message item is done when a part of another kind follows it;
calls stay open to the end, since parallel calls' fragments interleave. The stream says each step
(``response.output_item.added``, ``response.content_part.added``, the deltas, their ``.done``
events, ``response.output_item.done``), every event with its ``sequence_number``, after
``response.created`` and ``response.in_progress``; then exactly one of ``response.completed``,
``response.incomplete`` (a ``length`` finish: ``max_output_tokens``; ``content_filter``) or
``response.failed`` (``error``: the relay's ``type``, ``code``, ``phase`` and ``message``), each
with the whole response (a failed one with ``output: null``: its deltas said it, and the OpenAI SDK
rebuilds it from them).

A batch of parts that waited for a slow client (``Merged``) is taken in the order of a message
(reasoning, text, refusal, calls), so item and part boundaries stay right: the texts of one
field are concatenated, never across items. Reasoning goes out as the reasoning item's summary
(``response.reasoning_summary_text.delta``), what both the OpenAI SDKs and the AI SDK read; a
thinking block's signature, or a redacted block's data, is its ``encrypted_content``. Content
logprobs go with the text delta they came with (an empty delta when they came alone); a
refusal's have no place in this API. The closing events repeat the whole text, so the encoder
keeps the output of a stream until it ends (fragments in lists, joined once at the end), as the
API's final ``response`` carries it.

The usual events cost about what chat chunks cost: a text delta to the open part, a reasoning
delta to the open summary, an argument fragment to an open call are each one pre-shaped event
(``ResponseEvents.delta``, ``Output.lone``), without merging.
"""

from __future__ import annotations

import time
from typing import Any, assert_never

import msgspec

from app.streaming.encoders import Collected, error_body
from app.streaming.events import Error, Finish, Part, Reasoning, Terminal, ToolCall, Usage
from app.streaming.message import Choice, Merged, size
from app.streaming.sse import HEARTBEAT

_encode = msgspec.json.Encoder().encode
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
_SUMMARY_DELTA = "response.reasoning_summary_text.delta"
_ARGUMENTS_DELTA = "response.function_call_arguments.delta"


def response_usage(usage: Usage | None) -> dict[str, Any] | None:
    """OpenAI's usage in the Responses API's names; a count nobody reported stays ``null``."""
    if usage is None:
        return None
    prompt, completion = usage.prompt_tokens_details, usage.completion_tokens_details
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": prompt.cached_tokens if prompt is not None else None},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": completion.reasoning_tokens if completion is not None else None},
        "total_tokens": usage.total_tokens,
    }


def response_object(response_id: str, model: str, echo: dict[str, Any]) -> dict[str, Any]:
    """A response in progress: what ``response.created`` says, and what the end fills in (``echo``: the request's settings)."""
    return {
        "id": response_id, "object": "response", "created_at": int(time.time()), "status": "in_progress", "model": model,
        "output": [], "error": None, "incomplete_details": None, "usage": None, "store": False, "background": False,
        "previous_response_id": None, **echo,
    }


def step_body(kind: str, fields: dict[str, Any]) -> bytes:
    """An event's JSON up to its ``sequence_number``: ``{"type":…,…`` without the closing brace."""
    return _encode({"type": kind, **fields})[:-1]


class Output:
    """The output items of one response as its parts arrive; with ``steps``, each step too, as a stream event's type and fields.

    Each step is encoded at once, as the items it names stand then (``type`` and fields, up to the
    ``sequence_number`` the encoder appends), and kept for the encoder to take (``take``) rather
    than handed to a callback of its: an encoder and its output holding each other would be a
    reference cycle for every request.
    """

    def __init__(self, response_id: str, *, steps: bool) -> None:
        self.items: list[dict[str, Any]] = []
        self._id = response_id
        self._steps: list[tuple[str, bytes]] | None = [] if steps else None
        self._open: int | None = None  # the reasoning or message item taking parts, by output index
        self._texts: list[str] = []  # the open content part's (or summary's) text so far
        self._logprobs: list[msgspec.Raw] = []
        self._calls: dict[int, int] = {}  # call index → output index, while open
        self._arguments: dict[int, list[str]] = {}  # an open call's argument fragments, by output index
        self._part_open = False  # the open message's last content part takes text

    def _emit(self, kind: str, **fields: Any) -> None:
        if self._steps is not None:
            self._steps.append((kind, step_body(kind, fields)))

    def take(self) -> list[tuple[str, bytes]]:
        """The steps since the last call."""
        steps, self._steps = self._steps or [], []
        return steps

    # The open item and its open part.

    def _item(self, kind: str) -> tuple[int, dict[str, Any]]:
        """The open item of ``kind``, opened (and the open one of another kind done) as needed."""
        if self._open is not None and self.items[self._open]["type"] == kind:
            return self._open, self.items[self._open]
        self._close_open("completed")
        index = len(self.items)
        prefix = {"message": "msg", "reasoning": "rs"}[kind]
        item: dict[str, Any] = {"id": f"{prefix}_{self._id}_{index}", "type": kind, "status": "in_progress"}
        extra: dict[str, Any] = {"role": "assistant", "content": []} if kind == "message" else {"summary": [], "encrypted_content": None}
        item |= extra
        self.items.append(item)
        self._open = index
        self._emit("response.output_item.added", output_index=index, item=item)
        return index, item

    def _part(self, kind: str) -> tuple[int, dict[str, Any], int]:
        """The message's open content part of ``kind`` (``output_text`` or ``refusal``), opened as needed."""
        index, item = self._item("message")
        content = item["content"]
        if self._part_open and content[-1]["type"] == kind:
            return index, item, len(content) - 1
        self._close_part(index, item)
        part: dict[str, Any] = {"type": "output_text", "text": "", "annotations": [], "logprobs": []} if kind == "output_text" else \
            {"type": "refusal", "refusal": ""}
        content.append(part)
        self._emit("response.content_part.added", item_id=item["id"], output_index=index, content_index=len(content) - 1, part=part)
        self._part_open = True
        return index, item, len(content) - 1

    def _settle_part(self, item: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """The open content part with the text it has so far (and no longer open)."""
        part, text = item["content"][-1], "".join(self._texts)
        self._texts, self._part_open = [], False
        if part["type"] == "output_text":
            part["text"], part["logprobs"], self._logprobs = text, self._logprobs, []
        else:
            part["refusal"] = text
        return part, text

    def _close_part(self, index: int, item: dict[str, Any]) -> None:
        if not self._part_open:
            return
        part, text = self._settle_part(item)
        at = len(item["content"]) - 1
        if part["type"] == "output_text":
            self._emit("response.output_text.done", item_id=item["id"], output_index=index, content_index=at, text=text, logprobs=part["logprobs"])
        else:
            self._emit("response.refusal.done", item_id=item["id"], output_index=index, content_index=at, refusal=text)
        self._emit("response.content_part.done", item_id=item["id"], output_index=index, content_index=at, part=part)

    def _close_open(self, status: str) -> None:
        if self._open is None:
            return
        index, self._open = self._open, None
        item = self.items[index]
        if item["type"] == "message":
            self._close_part(index, item)
        elif item["summary"]:
            summary = item["summary"][0]
            summary["text"], self._texts = "".join(self._texts), []
            self._emit("response.reasoning_summary_text.done", item_id=item["id"], output_index=index, summary_index=0, text=summary["text"])
            self._emit("response.reasoning_summary_part.done", item_id=item["id"], output_index=index, summary_index=0, part=summary)
        self._done(index, status)

    def _done(self, index: int, status: str) -> None:
        item = self.items[index]
        item["status"] = status
        self._emit("response.output_item.done", output_index=index, item=item)

    # Parts in.

    def add(self, choice: Choice) -> None:
        """A batch of parts, merged, in the order of a message."""
        for block in choice.reasoning:
            self.reasoning("".join(block.parts), block.signature if block.redacted is None else block.redacted, redacted=block.redacted is not None)
        if choice.content or choice.content_logprobs:
            self.text("".join(choice.content), choice.content_logprobs or [])
        if choice.refusal:
            self.refusal("".join(choice.refusal))
        for call_index, call in choice.sorted_calls():
            self.call(call_index, call.id, call.name, "".join(call.arguments))

    def reasoning(self, text: str, sealed: str | None, *, redacted: bool = False) -> None:
        if redacted:
            self._close_open("completed")
            self._item("reasoning")  # a redacted block is an item of its own, opaque
            self._seal(sealed)
            return
        index, item = self._item("reasoning")
        if text:
            if not item["summary"]:
                item["summary"].append({"type": "summary_text", "text": ""})
                self._emit("response.reasoning_summary_part.added", item_id=item["id"], output_index=index, summary_index=0,
                           part=item["summary"][0])
            self._texts.append(text)
            self._emit("response.reasoning_summary_text.delta", item_id=item["id"], output_index=index, summary_index=0, delta=text)
        if sealed is not None:
            self._seal(sealed)

    def _seal(self, sealed: str | None) -> None:
        """The open reasoning item's block ended (its signature, or a redacted block's data): it is done."""
        assert self._open is not None
        self.items[self._open]["encrypted_content"] = sealed
        self._close_open("completed")

    def text(self, text: str, logprobs: list[msgspec.Raw]) -> None:
        index, item, at = self._part("output_text")
        self._texts.append(text)
        self._logprobs.extend(logprobs)
        self._emit("response.output_text.delta", item_id=item["id"], output_index=index, content_index=at, delta=text, logprobs=logprobs)

    def refusal(self, text: str) -> None:
        index, item, at = self._part("refusal")
        self._texts.append(text)
        self._emit("response.refusal.delta", item_id=item["id"], output_index=index, content_index=at, delta=text)

    def call(self, call_index: int, call_id: str | None, name: str | None, arguments: str) -> None:
        index = self._calls.get(call_index)
        if index is None:
            self._close_open("completed")
            index = self._calls[call_index] = len(self.items)
            item = {"id": f"fc_{self._id}_{index}", "type": "function_call", "status": "in_progress",
                    "call_id": call_id or f"call_{self._id}_{call_index}", "name": name or "", "arguments": ""}
            self.items.append(item)
            self._arguments[index] = []
            self._emit("response.output_item.added", output_index=index, item=item)
        if arguments:
            self._arguments[index].append(arguments)
            self._emit("response.function_call_arguments.delta", item_id=self.items[index]["id"], output_index=index, delta=arguments)

    def lone(self, part: Part) -> tuple[str, bytes] | None:
        """A reasoning delta or a call's fragment alone, for an item already open, as one step built cheaply; else ``None``."""
        if type(part) is Reasoning and part.text and part.signature is None and not part.choice and self._open is not None:
            item = self.items[self._open]
            if item["type"] != "reasoning" or not item["summary"]:
                return None
            self._texts.append(part.text)
            return _SUMMARY_DELTA, b'{"type":"%s","item_id":%b,"output_index":%d,"summary_index":0,"delta":%b' % (
                _SUMMARY_DELTA.encode(), _encode(item["id"]), self._open, _encode(part.text))
        if type(part) is ToolCall and part.id is None and part.name is None and not part.choice and part.arguments:
            index = self._calls.get(part.index)
            if index is None:
                return None
            self._arguments[index].append(part.arguments)
            return _ARGUMENTS_DELTA, b'{"type":"%b","item_id":%b,"output_index":%d,"delta":%b' % (
                _ARGUMENTS_DELTA.encode(), _encode(self.items[index]["id"]), index, _encode(part.arguments))
        return None

    def text_event(self) -> tuple[str, int, int] | None:
        """The open output_text part's (item id, output index, content index), if a text delta can go straight to it."""
        if self._open is None:
            return None
        item = self.items[self._open]
        if self._part_open and item["content"][-1]["type"] == "output_text":
            return item["id"], self._open, len(item["content"]) - 1
        return None

    def note_text(self, text: str) -> None:
        self._texts.append(text)

    def finish(self, status: str) -> None:
        """Every item still open is done, with ``status``."""
        self._close_open(status)
        for index in sorted(self._calls.values()):
            item = self.items[index]
            item["arguments"] = "".join(self._arguments.pop(index))
            self._emit("response.function_call_arguments.done", item_id=item["id"], output_index=index, arguments=item["arguments"])
            self._done(index, status)
        self._calls.clear()


def _ending(response: dict[str, Any], terminal: Terminal, usage: Usage | None) -> str:
    """Fill in how ``response`` ended; return its stream event's type."""
    response["usage"] = response_usage(usage)
    match terminal:
        case Finish():
            reason = _INCOMPLETE.get(terminal.reason)
            if reason is None:
                response["status"] = "completed"
                return "response.completed"
            response["status"], response["incomplete_details"] = "incomplete", {"reason": reason}
            return "response.incomplete"
        case Error():
            response["status"], response["error"] = "failed", error_body(terminal)
            return "response.failed"
        case _:
            assert_never(terminal)


def _status(terminal: Terminal) -> str:
    return "completed" if type(terminal) is Finish and terminal.reason not in _INCOMPLETE else "incomplete"


def whole_response(response: dict[str, Any], result: Collected) -> dict[str, Any]:
    """A ``stream: false`` answer: ``response`` (``response_object``) with the collected output and its end."""
    output = Output(response["id"].removeprefix("resp_"), steps=False)
    output.add(result.message.choices.get(0) or Choice())
    output.finish(_status(result.terminal))
    _ending(response, result.terminal, result.message.usage)
    response["output"] = output.items
    return response


TOO_LARGE = Error("relay_error", "response_too_large", "the answer passed what the relay keeps of it to repeat at its end", "stream")


class ResponseEvents:
    """The Responses API's stream: ``event: <type>`` and ``data: {type, …, sequence_number}`` for each step (a ``StreamEncoder``)."""

    heartbeat = HEARTBEAT  # an SSE comment: both SDKs skip it

    def __init__(self, response: dict[str, Any], limit: int) -> None:
        """``limit``: the characters of output it may keep (the final events repeat them); past it, ``full``."""
        self.full = False
        self._room = limit
        self._response = response
        self._output = Output(response["id"].removeprefix("resp_"), steps=True)
        self._sequence = 0
        self._usage: Usage | None = None
        self._text_prefix = b""  # the open output_text part's delta event up to its text
        self._text_at: tuple[str, int, int] | None = None

    def _event(self, kind: str, body: bytes) -> bytes:
        sequence = self._sequence
        self._sequence += 1
        return b"event: %b\ndata: %b,\"sequence_number\":%d}\n\n" % (kind.encode(), body, sequence)

    def _take(self) -> bytes:
        """The events of the output's steps so far, after ``response.created`` and ``response.in_progress`` if none went yet."""
        steps = self._output.take()
        if not self._sequence:
            steps[:0] = [(kind, step_body(kind, {"response": self._response})) for kind in ("response.created", "response.in_progress")]
        return b"".join([self._event(kind, body) for kind, body in steps])

    def _keep(self, size: int) -> bool:
        """Whether ``size`` more characters fit; when not, the output is let go and the encoder is ``full``."""
        self._room -= size
        if self._room >= 0:
            return True
        if not self.full:
            self.full = True
            self._output = Output(self._response["id"].removeprefix("resp_"), steps=True)
        return False

    def delta(self, text: str) -> bytes:
        if not self._keep(len(text)):
            return b""
        at = self._output.text_event()
        if at is None:
            self._output.text(text, [])
            return self._take()
        if at != self._text_at:
            self._text_at = at
            self._text_prefix = (
                b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","item_id":' + _encode(at[0])
                + b',"output_index":%d,"content_index":%d,"delta":' % (at[1], at[2])
            )
        self._output.note_text(text)
        sequence = self._sequence
        self._sequence += 1
        return self._text_prefix + _encode(text) + b',"logprobs":[],"sequence_number":%d}\n\n' % sequence

    def encode(self, events: list[Part]) -> bytes:
        if not self._keep(sum(map(size, events))):
            return b""
        if len(events) == 1 and self._sequence:
            step = self._output.lone(events[0])
            if step is not None:
                return self._event(*step)
        merged = Merged.of(events)
        if merged.usage is not None:
            self._usage = merged.usage
        choice = merged.choices.get(0)
        if choice is not None:
            self._output.add(choice)
        return self._take()

    def terminal(self, event: Terminal) -> bytes:
        # A failure's response leaves the output out (``null``): the deltas have said it all, the SDKs fill it in from
        # them, and the error stays small, even for a reader already too slow (``slow_consumer``).
        if self.full:  # whatever ended it, the answer was not all kept: it cannot be repeated whole
            event = TOO_LARGE
        output = None
        if type(event) is Finish:
            self._output.finish(_status(event))
            output = self._output.items
        response = dict(self._response, output=output)
        kind = _ending(response, event, self._usage)
        return self._take() + self._event(kind, step_body(kind, {"response": response}))
