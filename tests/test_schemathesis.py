"""Schemathesis against the running relay: examples made from /openapi.json never get a 5xx, and every answer is the document's.

Its command line, as CI would run it by hand, against a real relay on a loopback port (its pytest
plugin does not run under this pytest). Bounded: a few dozen examples an operation, a time budget,
and the embedded mock answering at once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import relay_server

KEY = "schemathesis-key"
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,"
    "negative_data_rejection"
)


@pytest.fixture(scope="module")
def relay_url() -> Iterator[str]:
    with relay_server(None, api_keys=[KEY], mock_ttft=0, mock_interval=0, mock_tokens=4, max_tokens_limit=64) as url:
        yield url


def test_the_relay_answers_as_its_document_says(relay_url: str, tmp_path: Path) -> None:
    command = [
        str(Path(sys.executable).with_name("schemathesis")), "run", relay_url + "/openapi.json",
        "--checks", CHECKS, "--max-examples", "15", "--max-time", "45", "--request-timeout", "10", "--seed", "1",
        "--header", f"Authorization: Bearer {KEY}", "--report-dir", str(tmp_path), "--warnings", "off",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=os.environ | {"NO_COLOR": "1"}, check=False)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
