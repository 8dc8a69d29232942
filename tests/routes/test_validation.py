"""Bad input gets a clear error in one JSON shape, and none of it reaches the upstream."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from app.mock import MockModel
from tests.servers import mock_server, relay_server


@pytest.fixture(scope="module")
def strict() -> Iterator[tuple[MockModel, str]]:
    with mock_server(ttft=0.0, interval=0.0, tokens=4) as (model, upstream), \
            relay_server(upstream, models=("mock",), max_body_bytes=2048, max_tokens_limit=100) as url:
        yield model, url


CASES = [
    ("/v1/chat/completions", b'{"model": "mock", "messages": [', 400, "invalid_json", None),
    ("/v1/chat/completions", b'[1, 2]', 422, "invalid_request", "$"),
    ("/v1/chat/completions", b'{"model": "mock"}', 422, "invalid_request", None),
    ("/v1/chat/completions", b'{"model": "mock", "messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}',
     422, "invalid_request", "$.max_tokens"),
    ("/v1/chat/completions", b'{"model": "mock", "messages": [{"role": "robot", "content": "x"}]}', 422, "invalid_request", "$.messages[0].role"),
    ("/v1/chat/completions", b'{"model": "mock", "messages": [{"role": "user", "content": "x"}], "temperature": 9}',
     422, "invalid_request", "$.temperature"),
    ("/v1/chat/completions", b'{"model": "mock", "messages": [{"role": "user", "content": "x"}], "max_tokens": 101}',
     422, "max_tokens_too_large", "$.max_tokens"),
    ("/v1/chat/completions", b'{"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}', 404, "model_not_found", "$.model"),
    ("/v1/generate", b"not json", 400, "invalid_json", None),
    ("/v1/generate", b'{"prompt": ""}', 422, "invalid_request", "$.prompt"),
    ("/v1/generate", b'{"prompt": "x", "max_tokens": 0}', 422, "invalid_request", "$.max_tokens"),
    ("/v1/generate", b'{"prompt": "x", "max_tokens": 101}', 422, "max_tokens_too_large", "$.max_tokens"),
    ("/v1/generate", b'{"prompt": "x", "surprise": 1}', 422, "invalid_request", "$.surprise"),
    ("/v1/generate", b'{"prompt": "x", "model": "nope"}', 404, "model_not_found", "$.model"),
    ("/v1/generate", b'{"prompt": "' + b"x" * 4096 + b'"}', 413, "request_too_large", None),
]


@pytest.mark.parametrize(("path", "body", "status", "code", "param"), CASES)
async def test_rejected_with_a_clear_error_before_reaching_the_upstream(
    strict: tuple[MockModel, str], client: httpx.AsyncClient, path: str, body: bytes, status: int, code: str, param: str | None
) -> None:
    model, url = strict
    before = model.requests
    response = await client.post(url + path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    assert model.requests == before


async def test_a_body_over_the_limit_without_content_length_is_refused(strict: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    model, url = strict

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(10):
            yield b"x" * 1024

    response = await client.post(url + "/v1/generate", content=chunks())
    assert response.status_code == 413
    assert model.requests == 0 or response.json()["error"]["code"] == "request_too_large"


async def test_unknown_paths_and_methods_answer_json(strict: tuple[MockModel, str], client: httpx.AsyncClient) -> None:
    _, url = strict
    missing = await client.get(url + "/v1/nothing")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")
    wrong = await client.get(url + "/v1/generate")
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (405, "method_not_allowed")
