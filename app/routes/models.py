"""``GET /v1/models`` and ``GET /v1/models/{model}``: the names clients may use, in the OpenAI list shape (app/catalog.py)."""

from __future__ import annotations

from app.errors import RequestError
from app.routes.http import json_body, send_error, send_json
from app.runtime import Runtime
from app.types import Receive, Scope, Send


async def list_models(scope: Scope, receive: Receive, send: Send) -> None:
    runtime: Runtime = scope["state"]["runtime"]
    try:
        entries = await runtime.catalog.entries()
    except RequestError as exc:
        await send_error(send, exc)
        return
    await send_json(send, 200, json_body({"object": "list", "data": entries}))


async def retrieve_model(scope: Scope, receive: Receive, send: Send) -> None:
    runtime: Runtime = scope["state"]["runtime"]
    try:
        entry = await runtime.catalog.find(scope["path_params"]["model"])
    except RequestError as exc:
        await send_error(send, exc)
        return
    await send_json(send, 200, json_body(entry))
