"""The OpenAI chat-completions protocol (vLLM, llama.cpp server, Ollama /v1, TGI Messages, OpenAI).

Maps a ``GenerationRequest`` to a streaming ``POST {base}/chat/completions`` (always with
``stream_options.include_usage``) and the response's SSE chunks to normalised events, every
field of every choice (``choices[].index``, for ``n > 1``):

- ``delta.content`` → ``Delta``; ``delta.refusal`` → ``Refusal``;
- ``delta.reasoning_content``, or ``delta.reasoning`` (vLLM's later name, Ollama's and
  OpenRouter's) → ``Reasoning``; a server that sends both names sends the same text twice,
  so only ``reasoning_content`` is read then;
- ``delta.tool_calls[]`` → ``ToolCall`` (``Calls``): calls are numbered in the order they first
  appear, which is the upstream's own ``index`` when it is well formed; a call without
  ``index`` (Ollama's ``/v1``), or at the index of a call with another ``id`` (every call at
  index 0), is a call of its own. An ``id`` or a ``name`` already given for a call is not
  given again, and ``arguments`` sent as a JSON object (not a string) are JSON-encoded. A
  call with ``""`` or ``"{}"`` for its arguments is kept like any other;
- ``choices[].logprobs`` ``{content, refusal}`` → ``Logprobs``, the token objects as sent, per chunk;
- ``choices[].finish_reason`` → ``Finish`` at ``[DONE]``, each choice's as it came (a call cut
  off by ``length`` stays ``length``);
- ``usage`` (with ``prompt_tokens_details`` and ``completion_tokens_details``) → ``Usage``,
  with ``None`` for what it did not say.

An in-band ``{"error": ...}`` frame, a malformed chunk, an error status or a body that ends
before ``[DONE]`` (and before every choice's ``finish_reason``) become an ``Error``. A server
that ignores ``stream: true`` and answers one JSON completion is read the same way (its
``message`` in place of ``delta``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from app.streaming.events import MAX_CHOICES, Delta, Event, Finish, Logprobs, Reasoning, Refusal, ToolCall, Usage
from app.streaming.request import GenerationRequest
from app.streaming.upstreams.handler import ErrorBody, SSEStreamHandler, decode_repaired

# What the decoder makes of a chunk is a tree, never a cycle, and is dropped once read: ``gc=False``
# spares the collector's tracking of its structs (msgspec's perf tips), a tenth of a chunk's decoding.


class _Function(msgspec.Struct, gc=False):
    name: str | None = None
    arguments: str | dict[str, Any] | list[Any] | None = None


class _ToolCall(msgspec.Struct, gc=False):
    index: int | None = None
    id: str | None = None
    function: _Function | None = None


class _Delta(msgspec.Struct, gc=False):
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    refusal: str | None = None
    tool_calls: list[_ToolCall] | _ToolCall | None = None  # one call not in a list: some TGI versions


class _Logprobs(msgspec.Struct, gc=False):
    content: tuple[msgspec.Raw, ...] | None = None
    refusal: tuple[msgspec.Raw, ...] | None = None


class _Choice(msgspec.Struct, gc=False):
    index: int = 0
    delta: _Delta | None = None
    message: _Delta | None = None
    logprobs: _Logprobs | None = None
    finish_reason: str | None = None


class _Chunk(msgspec.Struct, gc=False):
    choices: list[_Choice] = []
    usage: Usage | None = None
    error: ErrorBody | str | None = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode
_encode = msgspec.json.Encoder().encode
# The most tool calls in one choice: what the relay remembers of each (its id, its name) is bounded by it.
MAX_CALLS = 4096


class Calls:
    """The calls of one choice: the relay's index of each upstream fragment, and what of it is new.

    Calls are numbered 0, 1, 2… in the order they first appear (for a well-formed upstream, its own
    indexes). A fragment belongs to the call of its ``id``, else to the latest call of its
    ``index``, else (no index) to the latest call; a new ``id`` is a new call, unless it names
    the call of its index that had none yet.
    """

    __slots__ = ("_by_id", "_by_index", "_count", "_identified", "_last", "_names")

    def __init__(self) -> None:
        self._count = 0
        self._by_id: dict[str, int] = {}
        self._identified: set[int] = set()
        self._by_index: dict[int, int] = {}  # the upstream's index → the relay's index of its latest call
        self._names: dict[int, str] = {}
        self._last: int | None = None

    @property
    def count(self) -> int:
        return self._count

    def place(self, index: int | None, call_id: str | None, name: str | None) -> tuple[int, str | None, str | None]:
        """The relay's index of a fragment, and its id and name unless that call has them already."""
        current = self._by_index.get(index) if index is not None else self._last
        if call_id and call_id in self._by_id:
            relay, call_id = self._by_id[call_id], None
        elif call_id:
            relay = current if current is not None and current not in self._identified else self._new()
            self._by_id[call_id] = relay
            self._identified.add(relay)
        else:
            relay = current if current is not None else self._new()
        if index is not None:
            self._by_index[index] = relay
        self._last = relay
        if name:
            if self._names.get(relay) == name:
                name = None
            else:
                self._names[relay] = name
        return relay, call_id or None, name or None

    def follow(self, index: int | None) -> int | None:
        """The relay's index of a fragment with no id nor name (``place``'s usual case), if it goes on a call already placed."""
        relay = self._by_index.get(index) if index is not None else self._last
        if relay is not None:
            self._last = relay
        return relay

    def _new(self) -> int:
        self._count += 1
        return self._count - 1


class ChatStream(SSEStreamHandler):
    __slots__ = ("_calls", "_finish_reason", "_reasons", "_run_choice", "_run_index", "_run_relay")

    path = "/chat/completions"
    passes = None  # the client's own protocol: every parameter, as sent
    choices = True
    images = True
    end_marker = "[DONE]"

    def __init__(self, emit: Callable[[Event], None], flush: Callable[[], None]) -> None:
        super().__init__(emit, flush)
        self._finish_reason: str | None = None  # choice 0's
        self._reasons: dict[int, str | None] | None = None  # with several choices, each one's (None: not finished)
        self._calls: dict[int, Calls] | None = None
        # The call the latest fragment went on, when it came by the fast path (its choice, its upstream index, the relay's index):
        # a call's fragments come in a run, and the next one goes on the same call with no lookup. Any other fragment forgets it.
        self._run_choice = 0
        self._run_index: int | None = None
        self._run_relay = 0

    @classmethod
    def body(cls, request: GenerationRequest, parameters: dict[str, Any]) -> Any:
        parameters["model"] = request.model
        parameters["messages"] = request.messages
        if request.max_tokens is not None:
            parameters["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            parameters["temperature"] = request.temperature
        parameters["stream"] = True
        parameters["stream_options"] = {"include_usage": True}
        return parameters

    def _finished(self) -> Finish | None:
        """The finish, once every choice has its reason."""
        if self._reasons is None:
            return Finish(self._finish_reason) if self._finish_reason is not None else None
        reasons = [self._reasons.get(index) for index in range(max(self._reasons) + 1)]
        if any(reason is None for reason in reasons):
            return None
        return Finish(reasons[0] or "stop", tuple(reason or "stop" for reason in reasons))

    def _done(self) -> Finish:
        finish = self._finished()
        if finish is not None:
            return finish
        if self._reasons is None:
            return Finish("stop")
        reasons = tuple(self._reasons.get(index) or "stop" for index in range(max(self._reasons) + 1))
        return Finish(reasons[0], reasons)

    def _last(self) -> Finish | None:
        return self._finished()

    def _unexpected(self, body: bytes) -> None:
        self._on_completion(body)

    def _on_event(self, data: str | bytes) -> None:
        if data == b"[DONE]" or data == "[DONE]":
            self._end(self._done())
            return
        try:
            chunk = _decode_chunk(data)
        except msgspec.DecodeError as exc:
            repaired = self._repaired(_decode_chunk, data, "chunk", exc)
            if repaired is None:
                return
            chunk = repaired
        if chunk.error is not None:
            self._failed(chunk.error)
            return
        for choice in chunk.choices:
            index = choice.index
            if index and not 0 < index < MAX_CHOICES:
                self._end(self._error("upstream_malformed", f"a choice index of {index} from the model server (at most {MAX_CHOICES - 1})"))
                return
            delta = choice.delta or choice.message
            if delta is not None:
                if delta.reasoning_content is not None or delta.reasoning is not None or delta.refusal is not None:
                    self._on_rich(delta, index)
                elif (calls := delta.tool_calls) is None:
                    if delta.content:
                        self._emit(Delta(delta.content, index))
                elif type(calls) is list and not delta.content:  # calls alone, a tool call's usual delta: no more work than a content delta's
                    for call in calls:
                        function = call.function
                        # The usual fragment, an argument text on a call already placed: what every fragment of a call but its first is.
                        if call.id is None and function is not None and function.name is None and type(arguments := function.arguments) is str:
                            upstream = call.index
                            if upstream is not None and upstream == self._run_index and index == self._run_choice:
                                if arguments:
                                    self._emit(ToolCall(self._run_relay, None, None, arguments, index))
                                continue
                            if self._calls is not None and (placed := self._calls.get(index)) is not None \
                                    and (relay := placed.follow(upstream)) is not None:
                                self._run_choice, self._run_index, self._run_relay = index, upstream, relay
                                if arguments:
                                    self._emit(ToolCall(relay, None, None, arguments, index))
                                continue
                        self._on_call(call, index)
                        if self._ended:
                            return
                else:  # text before its calls, or one call not in a list
                    self._on_rich(delta, index)
                if self._ended:
                    return
            if choice.logprobs is not None:
                self._on_logprobs(choice.logprobs, index)
            if index or self._reasons is not None:
                self._on_choice(index, choice.finish_reason)
            elif choice.finish_reason is not None:
                self._finish_reason = choice.finish_reason
        if chunk.usage is not None:
            self._emit(chunk.usage)

    def _on_rich(self, delta: _Delta, choice: int) -> None:
        """A delta with more than content, in a message's order: reasoning, content, refusal, calls."""
        reasoning = delta.reasoning_content if delta.reasoning_content is not None else delta.reasoning
        if reasoning:
            self._emit(Reasoning(reasoning, choice))
        if delta.content:
            self._emit(Delta(delta.content, choice))
        if delta.refusal:
            self._emit(Refusal(delta.refusal, choice))
        calls = delta.tool_calls
        for call in [calls] if isinstance(calls, _ToolCall) else calls or ():
            self._on_call(call, choice)
            if self._ended:
                return

    def _on_call(self, call: _ToolCall, choice: int) -> None:
        """Any fragment of a call: placed (``Calls``), its arguments JSON-encoded when they are an object."""
        self._run_index = None
        if self._calls is None:
            self._calls = {}
        calls = self._calls.get(choice)
        if calls is None:
            calls = self._calls[choice] = Calls()
        function = call.function or _Function()
        arguments = function.arguments
        if arguments is not None and not isinstance(arguments, str):
            arguments = _encode(arguments).decode()
        index, call_id, name = calls.place(call.index, call.id, function.name)
        if calls.count > MAX_CALLS:
            self._end(self._error("upstream_malformed", f"more than {MAX_CALLS} tool calls in one choice from the model server"))
            return
        if call_id is not None or name is not None or arguments:
            self._emit(ToolCall(index, call_id, name, arguments or "", choice))

    def _on_logprobs(self, logprobs: _Logprobs, choice: int) -> None:
        if logprobs.content is not None or logprobs.refusal is not None:
            self._emit(Logprobs(logprobs.content, logprobs.refusal, choice))

    def _on_choice(self, index: int, reason: str | None) -> None:
        """With several choices, each one's finish reason (``None`` until it finishes)."""
        if self._reasons is None:
            self._reasons = {0: self._finish_reason}
        if reason is not None or index not in self._reasons:
            self._reasons[index] = reason
        if index == 0 and reason is not None:
            self._finish_reason = reason

    def _on_completion(self, body: bytes) -> None:
        """The server ignored ``stream: true`` and answered with one JSON completion."""
        try:
            chunk = _decode_chunk(body)
        except msgspec.DecodeError:
            repaired = decode_repaired(_decode_chunk, body)
            if repaired is None:
                self._end(self._error("upstream_malformed", "the model server answered neither SSE nor JSON"))
                return
            chunk = repaired
        if chunk.error is None and not chunk.choices:
            self._end(self._error("upstream_malformed", "the model server's answer has no choices"))
            return
        self._on_event(body)
        if not self._ended:
            self._end(self._done())
