from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest

from app.loadtest.runner import LoadConfig, Runner
from app.loadtest.target import build_target
from app.mock import MODELS, MockModel
from tests.servers import relay_server


@pytest.fixture(scope="module")
def relay(mock: tuple[MockModel, str]) -> Iterator[str]:
    """The relay in front of the module's mock (tests/conftest.py: 16 tokens, 1 ms apart), with every fault model allowed and short timeouts."""
    with relay_server(mock[1], models=MODELS, first_token_timeout=5, idle_timeout=5) as url:
        yield url


async def load(url: str, *, seconds: float = 15, model: str = "mock", max_tokens: int = 64, headers: list[tuple[str, str]] | None = None,
               body: bytes | None = None, method: str | None = None, **config: object) -> Runner:
    """Run a load test to its end (bounded) and return the runner with its books."""
    target = build_target(url, model=model, max_tokens=max_tokens, headers=headers, body=body, method=method)
    options: dict[str, object] = {"streams": 3, "keep_records": True, "tick": 0.05, **config}
    runner = Runner([target], LoadConfig(**options))  # type: ignore[arg-type]
    with anyio.fail_after(seconds):
        await runner.run()
    return runner
