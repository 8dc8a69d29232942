"""The upstream protocols by name: how to ask each kind of model server, and how to read its answer.

Each protocol is one class on the shared base (app/streaming/upstreams/handler.py): its
``build_request(request, api_key)`` gives the path (after the upstream's base URL), headers
and body of a streaming request, and the class itself, called as ``handler(emit, flush)``,
makes the ``ResponseHandler`` that turns the response's bytes into normalised events.
``choices`` says whether its protocol can answer ``n > 1`` choices at once, ``images`` whether
it takes images in a message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, assert_never

from app.settings import PROTOCOLS, Protocol
from app.streaming.events import Event
from app.streaming.request import GenerationRequest
from app.streaming.upstreams import anthropic, ollama, openai, tgi
from app.streaming.upstreams.handler import StreamHandler
from app.streaming.upstreams.http1 import ResponseHandler

BuildRequest = Callable[[GenerationRequest, str | None], tuple[str, list[tuple[str, str]], bytes]]
MakeHandler = Callable[[Callable[[Event], None], Callable[[], None]], ResponseHandler]


class Adapter(NamedTuple):
    protocol: Protocol
    build_request: BuildRequest
    handler: MakeHandler
    choices: bool = False
    images: bool = False


def _protocol(protocol: Protocol) -> type[StreamHandler]:
    match protocol:
        case "openai":
            return openai.ChatStream
        case "tgi":
            return tgi.GenerateStream
        case "ollama":
            return ollama.ChatLines
        case "anthropic":
            return anthropic.MessageStream
        case _:
            assert_never(protocol)


def _adapter(protocol: Protocol) -> Adapter:
    handler = _protocol(protocol)
    return Adapter(protocol, handler.build_request, handler, handler.choices, handler.images)


ADAPTERS = {protocol: _adapter(protocol) for protocol in PROTOCOLS}
