"""The model names clients may use, for ``GET /v1/models`` and for a request that names none.

Configured names come first: the routes' models, then ``RELAY_MODELS`` (with the embedded
mock, the mock's names). With none configured the relay passes any name on, and the list is
the upstreams' own, asked with a bounded ``GET``: an OpenAI-compatible or Anthropic server's
``/models``, Ollama's ``/api/tags``, TGI's ``/info``. Each upstream's answer is kept
``LIST_TTL`` seconds (a failure ``FAILURE_TTL``, so a dead upstream is not asked on every
page load), one question at a time per upstream; at most ``MAX_LIST_BYTES`` of body and
``MAX_MODELS`` names are read from it, within its first-token timeout (at most ``LIST_TIMEOUT`` seconds).

An upstream whose list fails is left out; when every one fails the list is refused with a
502 that says why and what to set (``ModelsUnavailable``), never an empty list that looks
like a server with no models. The model a request without one gets is first in the list.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any, assert_never

import anyio
import msgspec

from app.errors import RequestError, UpstreamError, UpstreamProtocolError
from app.streaming.routing import Upstream
from app.streaming.upstreams.anthropic import VERSION as ANTHROPIC_VERSION

logger = logging.getLogger("token_relay")

LIST_TTL = 60.0
FAILURE_TTL = 5.0
LIST_TIMEOUT = 10.0
MAX_LIST_BYTES = 1_048_576
MAX_MODELS = 1_000
OWNER = "token-relay"

_decode_any = msgspec.json.Decoder().decode


class ModelEntry(msgspec.Struct, frozen=True):
    """One entry of the OpenAI model list."""

    id: str
    created: int
    owned_by: str
    object: str = "model"


class ModelsUnavailable(RequestError):
    """No upstream's model list could be had, and no names are configured."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__(
            502, "upstream_models_unavailable",
            "the model list could not be read from the model server (" + "; ".join(reasons) + "); "
            "set RELAY_MODELS (or RELAY_DEFAULT_MODEL) to the names it serves",
        )


class _Collected:
    """A ``ResponseHandler`` keeping a response's status and at most ``limit`` bytes of its body."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.status = 0
        self.body = bytearray()
        self.failure: str | None = None
        self.done = anyio.Event()

    def on_response(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status

    def on_body(self, data: bytes) -> None:
        if self.done.is_set():
            return
        if len(self.body) + len(data) > self.limit:
            self.failure = f"the answer is over {self.limit} bytes"
            self.done.set()  # the caller then closes the exchange, which aborts the connection
            return
        self.body += data

    def on_end(self) -> None:
        self.done.set()

    def on_lost(self, exc: Exception) -> None:
        self.failure = str(exc)  # the message only: the exception would hold the connection in its traceback
        self.done.set()


async def get_bounded(upstream: Upstream, path: str, headers: list[tuple[str, str]], *, limit: int, seconds: float) -> bytes:
    """The body of a 200 answer to ``GET path`` on ``upstream``, read whole within ``seconds`` and ``limit`` bytes.

    Raises ``UpstreamError`` for anything else (a status, a cut, a size or time past its bound).
    """
    collected = _Collected(limit)
    timeouts = upstream.timeouts
    try:
        with anyio.fail_after(seconds):
            exchange = await upstream.client.request(
                upstream.origin, "GET", path, [("Accept", "application/json"), *headers], b"", collected,
                connect_timeout=min(timeouts.connect, seconds), head_timeout=seconds,
            )
            try:
                await collected.done.wait()
            finally:
                exchange.close()
    except TimeoutError:
        raise UpstreamProtocolError("upstream_timeout", f"no whole answer within {seconds:g} s", "first_token") from None
    if collected.failure is not None:
        raise UpstreamProtocolError("upstream_models_failed", collected.failure, "stream")
    if collected.status != 200:
        raise UpstreamProtocolError("upstream_models_failed", f"it answered HTTP {collected.status}", "first_token")
    return bytes(collected.body)


def list_request(upstream: Upstream) -> tuple[str, list[tuple[str, str]]]:
    """The path and headers that ask ``upstream``'s protocol for its models."""
    key = upstream.api_key
    bearer = [("Authorization", f"Bearer {key}")] if key else []
    match upstream.protocol:
        case "openai":
            return "/models", bearer
        case "anthropic":
            return f"/models?limit={MAX_MODELS}", [("anthropic-version", ANTHROPIC_VERSION), *([("x-api-key", key)] if key else [])]
        case "ollama":
            return "/api/tags", bearer
        case "tgi":
            return "/info", bearer
        case _:
            assert_never(upstream.protocol)


def parse_list(upstream: Upstream, body: bytes, created: int) -> list[ModelEntry]:
    """The entries of ``upstream``'s answer, in its order, at most ``MAX_MODELS``; ``ValueError`` when it has none."""
    try:
        value = _decode_any(body)
    except msgspec.DecodeError as exc:
        raise ValueError(f"its answer is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError("its answer is not a JSON object")
    if upstream.protocol == "tgi":
        items: Any = [{"id": value.get("model_id")}]
    elif upstream.protocol == "ollama":
        items = [{"id": item.get("name") or item.get("model")} for item in value.get("models") or () if isinstance(item, dict)]
    else:
        items = value.get("data") or ()
    entries: list[ModelEntry] = []
    for item in items if isinstance(items, list) else ():
        name = item.get("id") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            continue
        stamp, owner = item.get("created"), item.get("owned_by")
        entries.append(ModelEntry(
            name, stamp if isinstance(stamp, int) and not isinstance(stamp, bool) else created, owner if isinstance(owner, str) else upstream.name,
        ))
        if len(entries) == MAX_MODELS:
            break
    if not entries:
        raise ValueError("its answer names no model")
    return entries


class _UpstreamList:
    """One upstream's list, kept for a while; one question at a time."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.lock = anyio.Lock()
        self.entries: list[ModelEntry] = []
        self.failure: str | None = None
        self.expires = 0.0

    async def get(self, created: int) -> list[ModelEntry]:
        async with self.lock:
            if time.monotonic() >= self.expires:
                await self._refresh(created)
        if self.failure is not None:
            raise ValueError(self.failure)
        return self.entries

    async def _refresh(self, created: int) -> None:
        path, headers = list_request(self.upstream)
        where = f"GET {self.upstream.origin.base_path}{path.partition('?')[0]} on upstream {self.upstream.name!r}"
        try:
            timeout = min(LIST_TIMEOUT, self.upstream.timeouts.first_token)
            body = await get_bounded(self.upstream, path, headers, limit=MAX_LIST_BYTES, seconds=timeout)
            self.entries, self.failure = parse_list(self.upstream, body, created), None
        except (UpstreamError, ValueError) as exc:
            self.failure = f"{where}: {exc}"
            logger.warning("the model list failed: %s", self.failure)
        self.expires = time.monotonic() + (FAILURE_TTL if self.failure is not None else LIST_TTL)


class ModelCatalog:
    """The names of ``configured`` (in order, ``default`` first), else those the ``upstreams`` list."""

    def __init__(self, configured: Iterable[str], default: str | None, upstreams: Iterable[Upstream]) -> None:
        self.created = int(time.time())
        names = list(dict.fromkeys(configured))
        if default is not None and default in names:
            names.remove(default)
            names.insert(0, default)
        self.configured = [ModelEntry(name, self.created, OWNER) for name in names]
        self.default = default
        self._lists = [_UpstreamList(upstream) for upstream in upstreams]

    async def entries(self) -> list[ModelEntry]:
        """Every name clients may use; raises ``ModelsUnavailable`` when none can be had."""
        if self.configured:
            return self.configured
        entries: dict[str, ModelEntry] = {}
        reasons: list[str] = []
        for listed in self._lists:
            try:
                for entry in await listed.get(self.created):
                    entries.setdefault(entry.id, entry)
            except ValueError as exc:
                reasons.append(str(exc))
        if not entries:
            raise ModelsUnavailable(reasons)
        return list(entries.values())

    async def find(self, model: str) -> ModelEntry:
        """The entry of ``model``; raises a 404 ``RequestError`` for a name not in the list."""
        for entry in await self.entries():
            if entry.id == model:
                return entry
        raise RequestError(404, "model_not_found", f"the model {model!r} does not exist", param="model")

    async def default_model(self) -> str:
        """The model a request without one gets: the configured default, else the first the upstream lists.

        Raises a 422 ``RequestError`` that says what to set when there is none.
        """
        if self.default is not None:
            return self.default
        try:
            return (await self.entries())[0].id
        except ModelsUnavailable as exc:
            raise RequestError(
                422, "invalid_request",
                f"model is required: this relay has no default model, and {exc.message.removeprefix('the ')}; or name a model in the request",
                param="$.model",
            ) from exc
