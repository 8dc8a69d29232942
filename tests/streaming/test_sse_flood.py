"""A model server that never ends its SSE line, or its event, gets its stream ended with ``upstream_malformed``
soon after the parser's bound, and costs the relay neither memory nor a stalled loop meanwhile."""

from __future__ import annotations

import anyio
import httpx
import pytest

from tests.hostile import Flood, HostileUpstream, chunk, chunked_head, probing
from tests.servers import relay_server
from tests.sse import data, post_stream

MiB = 1024 * 1024
FLOOD = 64 * MiB
PIECE = 65_536
MAX_LINE, MAX_EVENT = MiB, 4 * MiB  # the parser's bounds, as README documents them


@pytest.mark.parametrize(("start", "piece", "bound"), [
    pytest.param(b"data: ", b"x" * PIECE, f"an SSE line of more than {MAX_LINE} bytes", id="a line without its end"),
    pytest.param(b"data: x\n", b"data: " + b"x" * (PIECE - 7) + b"\n", f"an SSE event with more than {MAX_EVENT} bytes of data",
                 id="data lines without a blank line"),
])
async def test_a_flood_without_an_end_is_malformed_soon_after_the_bound(start: bytes, piece: bytes, bound: str) -> None:
    flood = Flood(chunked_head() + chunk(start), chunk(piece), FLOOD)
    with HostileUpstream(flood.script).serving() as upstream, relay_server(upstream) as url:
        async with httpx.AsyncClient(timeout=httpx.Timeout(20.0)) as client, probing(url) as probe:
            results: dict[str, list[dict[str, object]]] = {}

            async def ask(model: str) -> None:
                response, events = await post_stream(client, url + "/v1/generate", {"prompt": "x", "stream": True, "model": model}, seconds=20)
                assert response.status_code == 200
                results[model] = [{"event": e.event, **data(e)} for e in events]

            async with anyio.create_task_group() as tg:
                tg.start_soon(ask, "flood")
                tg.start_soon(ask, "normal")
            [error] = results["flood"]
            assert (error["event"], error["code"], error["phase"]) == ("error", "upstream_malformed", "first_token")
            assert error["message"] == f"{bound} from the model server"
            assert await anyio.to_thread.run_sync(flood.done.wait, 10), "the flood went on"
    normal = results["normal"]
    assert "".join(str(e["text"]) for e in normal[:-1]) == "one two" and normal[-1]["event"] == "done"
    assert flood.closed, "the relay did not close the flooding connection"
    assert flood.sent < FLOOD // 4, "the relay read on long after the bound"
    assert probe.slowest < 0.5
    assert probe.peak_growth < 24 * MiB
