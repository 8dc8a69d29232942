from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import mock_server


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    """The mock's root URL (every protocol's paths hang from it): unpaced, eight words an answer."""
    with mock_server(ttft=0.0, interval=0.0, tokens=8) as (_, url):
        yield url.removesuffix("/v1")
