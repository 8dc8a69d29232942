"""An Anthropic upstream, relayed through ``/v1/messages``: the ``anthropic`` SDK makes of the relay's stream what it
makes of the model server's own, for every recorded Anthropic stream (tests/streaming/upstreams/fixtures/)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import anyio
import pytest

from tests.hostile import Conn, HostileUpstream, chunked_response
from tests.sdk import FIXTURES
from tests.servers import relay_server

NAMES = sorted(path.name.removesuffix(".sse") for path in FIXTURES.glob("anthropic-*.sse") if path.name != "anthropic-error.sse")
STOP_SEQUENCE = b'"stop_reason": "end_turn", "stop_sequence":null'


def fixture(model: str) -> bytes:
    """The fixture ``model`` names; ``stop-sequence`` is the basic stream ended by a stop sequence."""
    if model == "stop-sequence":
        body = (FIXTURES / "anthropic-stream.sse").read_bytes()
        assert STOP_SEQUENCE in body
        return body.replace(STOP_SEQUENCE, b'"stop_reason": "stop_sequence", "stop_sequence": "END"')
    return (FIXTURES / (model + ".sse")).read_bytes()


async def replaying(conn: Conn) -> None:
    while request := await conn.read_request():
        await conn.write(chunked_response(fixture(json.loads(request.partition(b"\r\n\r\n")[2])["model"])))


@pytest.fixture(scope="module")
def upstream_and_relay() -> Iterator[tuple[str, str]]:
    with HostileUpstream(replaying).serving() as base, relay_server(base, protocol="anthropic", first_token_timeout=5, idle_timeout=5) as url:
        yield base, url


def view(message: anthropic.types.Message) -> dict[str, Any]:
    """What a client reads of a message (its id and model are the relay's own)."""
    usage = message.usage
    return {
        "content": [block.model_dump(exclude_none=True) for block in message.content],
        "stop_reason": message.stop_reason, "stop_sequence": message.stop_sequence,
        "usage": (usage.input_tokens, usage.output_tokens, usage.cache_read_input_tokens or 0, usage.cache_creation_input_tokens or 0),
    }


def final(base_url: str, model: str) -> dict[str, Any]:
    with anthropic.Anthropic(base_url=base_url, api_key="k", max_retries=0, timeout=10) as client:
        with client.messages.stream(model=model, max_tokens=1000, messages=[{"role": "user", "content": "hi"}]) as stream:
            return view(stream.get_final_message())


@pytest.mark.parametrize("model", [*NAMES, "stop-sequence"])
async def test_the_sdk_reads_through_the_relay_what_it_reads_direct(upstream_and_relay: tuple[str, str], model: str) -> None:
    direct_url, relay_url = upstream_and_relay
    with anyio.fail_after(20):
        direct = await anyio.to_thread.run_sync(final, direct_url, model)
        relayed = await anyio.to_thread.run_sync(final, relay_url, model)
    assert relayed == direct
    if model == "stop-sequence":
        assert (relayed["stop_reason"], relayed["stop_sequence"]) == ("stop_sequence", "END")
