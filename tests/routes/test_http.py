"""Reading a request body: bounded, whole, and, when it came in one message, not copied."""

from __future__ import annotations

from typing import Any

import pytest

from app.errors import RequestError
from app.routes.http import ClientGone, read_body


def _receive(*messages: dict[str, Any]) -> Any:
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        return queue.pop(0)

    return receive


def _scope(length: int | None = None) -> dict[str, Any]:
    return {"headers": [] if length is None else [(b"content-length", str(length).encode())]}


async def test_a_body_in_one_message_is_returned_as_it_came() -> None:
    body = b"x" * 10
    assert await read_body(_scope(), _receive({"type": "http.request", "body": body}), 10) is body


async def test_a_body_in_pieces_is_joined() -> None:
    pieces = [{"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.request", "body": b"", "more_body": True},
              {"type": "http.request", "body": b"cd"}]
    assert await read_body(_scope(), _receive(*pieces), 4) == b"abcd"


@pytest.mark.parametrize(
    "messages",
    [
        [{"type": "http.request", "body": b"x" * 11}],  # one message, no content-length
        [{"type": "http.request", "body": b"x" * 6, "more_body": True}, {"type": "http.request", "body": b"x" * 5}],
    ],
)
async def test_past_the_limit_it_is_refused_with_413(messages: list[dict[str, Any]]) -> None:
    with pytest.raises(RequestError) as refused:
        await read_body(_scope(), _receive(*messages), 10)
    assert (refused.value.status, refused.value.code) == (413, "request_too_large")


async def test_a_declared_length_past_the_limit_is_refused_before_reading() -> None:
    with pytest.raises(RequestError) as refused:
        await read_body(_scope(11), _receive(), 10)
    assert refused.value.status == 413


async def test_a_client_that_leaves_mid_body_is_gone() -> None:
    with pytest.raises(ClientGone):
        await read_body(_scope(), _receive({"type": "http.request", "body": b"a", "more_body": True}, {"type": "http.disconnect"}), 10)
