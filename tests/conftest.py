from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from app.mock import MockModel
from tests.servers import mock_server, relay_server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def asgi_server(request: pytest.FixtureRequest) -> str:
    """The ASGI server the relay runs under: uvicorn, or each in turn for a test marked ``under_every_server``."""
    return getattr(request, "param", "uvicorn")


@pytest.fixture(scope="module")
def mock() -> Iterator[tuple[MockModel, str]]:
    """A fast mock model server shared by a module's tests."""
    with mock_server(ttft=0.0, interval=0.001, tokens=16) as served:
        yield served


@pytest.fixture(scope="module")
def relay_url(mock: tuple[MockModel, str], asgi_server: str) -> Iterator[str]:
    """The relay in front of the module's mock, with short timeouts."""
    with relay_server(mock[1], server=asgi_server, models=("mock", "mock-fault-http-500"), first_token_timeout=5, idle_timeout=5) as url:
        yield url


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as http:
        yield http
