"""What the routes need at request time, built by the lifespan: the upstream and the limits."""

from __future__ import annotations

from app.errors import RequestError
from app.settings import Settings
from app.streaming.generation import Upstream
from app.streaming.respond import LiveRequests
from app.streaming.upstreams.http1 import Client


class Runtime:
    def __init__(self, settings: Settings, upstream: Upstream, models: tuple[str, ...], live: LiveRequests, client: Client) -> None:
        self.settings = settings
        self.upstream = upstream
        self.models = frozenset(models)
        self.default_model = settings.default_model or (models[0] if models else None)
        self.live = live
        self.client = client

    def upstream_for(self, model: str) -> Upstream:
        if self.models and model not in self.models:
            raise RequestError(404, "model_not_found", f"the model {model!r} does not exist", param="$.model")
        return self.upstream

    def admit(self, max_tokens: int | None) -> None:
        """Refuse what is over a limit before anything starts."""
        if max_tokens is not None and max_tokens > self.settings.max_tokens_limit:
            raise RequestError(422, "max_tokens_too_large", f"max_tokens may be at most {self.settings.max_tokens_limit}", param="$.max_tokens")
        if self.live.closing:
            raise RequestError(503, "shutting_down", "the relay is shutting down; retry on another instance", headers={"Retry-After": "1"})
        if len(self.live) >= self.settings.max_concurrent_requests:
            raise RequestError(429, "too_many_requests", "the relay is at its limit of concurrent requests; retry shortly", headers={"Retry-After": "1"})
