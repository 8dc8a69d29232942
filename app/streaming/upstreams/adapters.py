"""The upstream protocols by name: how to ask each kind of model server, and how to read its answer.

An adapter is two things: ``build_request(request, api_key)`` gives the path (after the
upstream's base URL), headers and body of a streaming request, and ``handler(emit, flush)``
makes the ``ResponseHandler`` that turns the response's bytes into normalised events.
``choices`` says whether its protocol can answer ``n > 1`` choices at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from app.streaming.events import Event
from app.streaming.request import GenerationRequest
from app.streaming.upstreams import anthropic, ollama, openai, tgi
from app.streaming.upstreams.http1 import ResponseHandler

BuildRequest = Callable[[GenerationRequest, str | None], tuple[str, list[tuple[str, str]], bytes]]
MakeHandler = Callable[[Callable[[Event], None], Callable[[], None]], ResponseHandler]


class Adapter(NamedTuple):
    protocol: str
    build_request: BuildRequest
    handler: MakeHandler
    choices: bool = False


ADAPTERS = {
    "openai": Adapter("openai", openai.build_request, openai.ChatStream, choices=True),
    "tgi": Adapter("tgi", tgi.build_request, tgi.GenerateStream),
    "ollama": Adapter("ollama", ollama.build_request, ollama.ChatLines),
    "anthropic": Adapter("anthropic", anthropic.build_request, anthropic.MessageStream),
}
PROTOCOLS = tuple(ADAPTERS)
