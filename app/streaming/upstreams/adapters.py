"""The upstream protocols by name: how to ask each kind of model server, and how to read its answer.

An adapter is two things: ``build_request(request, api_key)`` gives the path (after the
upstream's base URL), headers and body of a streaming request, and ``handler(emit, flush)``
makes the ``ResponseHandler`` that turns the response's bytes into normalised events.
``choices`` says whether its protocol can answer ``n > 1`` choices at once, ``images`` whether
it takes images in a message (an ``image_url`` part; the Anthropic dialect's ``image`` blocks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, assert_never

from app.settings import PROTOCOLS, Protocol
from app.streaming.events import Event
from app.streaming.request import GenerationRequest
from app.streaming.upstreams import anthropic, ollama, openai, tgi
from app.streaming.upstreams.http1 import ResponseHandler

BuildRequest = Callable[[GenerationRequest, str | None], tuple[str, list[tuple[str, str]], bytes]]
MakeHandler = Callable[[Callable[[Event], None], Callable[[], None]], ResponseHandler]


class Adapter(NamedTuple):
    protocol: Protocol
    build_request: BuildRequest
    handler: MakeHandler
    choices: bool = False
    images: bool = False


def _adapter(protocol: Protocol) -> Adapter:
    match protocol:
        case "openai":
            return Adapter(protocol, openai.build_request, openai.ChatStream, choices=True, images=True)
        case "tgi":
            return Adapter(protocol, tgi.build_request, tgi.GenerateStream)
        case "ollama":
            return Adapter(protocol, ollama.build_request, ollama.ChatLines)
        case "anthropic":
            return Adapter(protocol, anthropic.build_request, anthropic.MessageStream, images=True)
        case _:
            assert_never(protocol)


ADAPTERS = {protocol: _adapter(protocol) for protocol in PROTOCOLS}
