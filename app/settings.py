"""Configuration: one frozen Struct, built once at start-up and passed to whatever needs it.

Sources, later ones winning: defaults, a TOML file (``--config``), ``RELAY_*`` environment
variables, command-line flags. ``load_settings`` validates everything and raises
``SettingsError`` with one line naming the setting and what is wrong with it.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec

ENV_PREFIX = "RELAY_"
DEFAULT_UPSTREAM = "default"

Seconds = Annotated[float, msgspec.Meta(gt=0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
# The upstream protocols, named here only: the CLI's choices and the adapters (which mypy holds to every name) follow.
Protocol = Literal["openai", "tgi", "ollama", "anthropic"]
PROTOCOLS: tuple[Protocol, ...] = typing.get_args(Protocol)
# The HTTP clients an upstream can be reached with (app/streaming/upstreams/transports.py).
Transport = Literal["http1", "httpx"]
_URL = re.compile(r"^https?://[^/\s]+")
_REDIS_URL = re.compile(r"^(?:rediss?://[^/\s]+(?:/[0-9]*)?(?:\?\S*)?|unix:///\S+)$")
_PUBLIC_URL = re.compile(r"^https?://(?P<host>[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?(?:/[^\s?#]*)?$", re.IGNORECASE)
_HOST_PATTERN = re.compile(r"^(?:\*|(?:\*\.)?[a-z0-9-]+(?:\.[a-z0-9-]+)*|\[[0-9a-f:.]+\])$", re.IGNORECASE)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
WILDCARD_ADDRESSES = ("", "0.0.0.0", "::")  # no name a client would use


class UpstreamSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One model server of ``[[upstreams]]``; unset timeouts are the relay's."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]+$")]
    base_url: str
    protocol: Protocol = "openai"
    # The environment variable holding its API key (never the key itself, never from a client).
    api_key_env: str | None = None
    connect_timeout: Seconds | None = None
    first_token_timeout: Seconds | None = None
    idle_timeout: Seconds | None = None
    max_concurrency: Positive | None = None
    # The HTTP client: the relay's own HTTP/1.1 one (the fast path), or httpx (HTTP/2 with http2 = true).
    transport: Transport = "http1"
    http2: bool = False
    # PEM files: the CAs the upstream is verified against (instead of SSL_CERT_FILE's or the system's),
    # and a client certificate to present, with its key (unless the certificate's file holds it).
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    def __post_init__(self) -> None:
        if not _URL.match(self.base_url):
            raise ValueError(f"base_url: must be an http:// or https:// URL, not {self.base_url!r}")
        if self.http2 and self.transport != "httpx":
            raise ValueError("http2: needs transport = \"httpx\" (the http1 transport speaks HTTP/1.1 only)")
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("client_key: needs client_cert")
        for name in ("ca_file", "client_cert", "client_key"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"{name}: no such file: {path!r}")


class KeySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One client key of ``[[keys]]``: its name, the key as its SHA-256 (hex) or the variable holding it, its limits and models."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    key_sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-fA-F]{64}$")] | None = None
    key_env: str | None = None
    max_concurrent_streams: Positive | None = None
    requests_per_minute: Positive | None = None
    tokens_per_minute: Positive | None = None
    # The model names this key may ask for; unset: any.
    models: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if (self.key_sha256 is None) == (self.key_env is None):
            raise ValueError(f"key {self.name!r}: give exactly one of key_sha256 and key_env")


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Serving.
    host: str = "127.0.0.1"
    port: Port = 8000
    workers: Positive = 1
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    access_log: bool = True
    # "json": every log line (the relay's, the access log, the line at each request's end) is one JSON object.
    log_format: Literal["text", "json"] = "text"
    # GET /metrics, and the recording behind it (off: 404, and nothing recorded; for comparing the cost in bench/).
    metrics: bool = True
    # The URL clients reach the relay at ("https://relay.example.com", maybe with a path prefix):
    # the base of the stream URLs it hands out. Unset: the request's scheme and Host.
    public_url: str | None = None
    # Host header values answered ("relay.example.com", "*.example.com", "*" for any); the
    # others get 400. Unset: loopback's, the bound address's and the public URL's (trusted_hosts).
    allowed_hosts: tuple[str, ...] | None = None
    # Proxies whose X-Forwarded-Proto and X-Forwarded-For are believed (addresses, networks, "*").
    # Unset: uvicorn's FORWARDED_ALLOW_IPS, else 127.0.0.1 and ::1.
    forwarded_allow_ips: tuple[str, ...] | None = None

    # Upstream. With no upstream, the embedded mock model server is started and used.
    upstream: str | None = None
    protocol: Protocol = "openai"
    upstream_api_key: str | None = None
    # Several model servers (instead of upstream), and which of them each model name goes to, in order:
    # routes = {"llama" = ["vllm-a", "vllm-b:meta-llama/Llama-3.1-8B-Instruct"]}.
    upstreams: tuple[UpstreamSettings, ...] = ()
    routes: dict[str, tuple[str, ...]] = {}
    # Consecutive failures that open an upstream's circuit, and the seconds it then stays open.
    circuit_failures: Positive = 5
    circuit_cooldown: Seconds = 30.0
    # Model names clients may ask for; empty means "whatever the upstream serves".
    models: tuple[str, ...] = ()
    # The model /v1/generate uses when a request names none (default: the first of models).
    default_model: str | None = None

    # Clients: unnamed keys without limits, and named keys with theirs ([[keys]]).
    api_keys: tuple[str, ...] = ()
    keys: tuple[KeySettings, ...] = ()
    max_body_bytes: Positive = 1_048_576
    max_tokens_limit: Positive = 32_768
    max_concurrent_requests: Positive = 10_000
    # Open connections per process (past it they are answered 503, or retry: for EventSource, and
    # closed); unset, as many as the open-files limit leaves room for (app/runtime.py).
    max_connections: Positive | None = None
    # Seconds a connection has to send a request's head (from the accept, or on a kept-alive
    # connection from the next request's first byte), and then its whole body.
    request_head_timeout: Seconds = 5.0
    request_body_timeout: Seconds = 30.0
    # Bytes of a request's head, and of a chunked body's framing and trailers between two bytes of content; past it 431 and closed.
    max_request_head_bytes: Positive = 65_536

    # Timeouts per phase, in seconds; total_timeout is off unless set.
    connect_timeout: Seconds = 10.0
    first_token_timeout: Seconds = 120.0
    idle_timeout: Seconds = 60.0
    total_timeout: Seconds | None = None

    # Streams.
    heartbeat_interval: Seconds = 15.0
    slow_consumer_lag_bytes: Positive = 262_144
    slow_consumer_grace: Seconds = 5.0
    # The text a stream: false answer may hold; past it the upstream is closed and the answer is a 502.
    max_collected_bytes: Positive = 4_194_304
    drain_timeout: Seconds = 10.0

    # Resumable streams (POST /v1/streams, read with EventSource).
    # Where the event log, stream ownership and cancellation live for several processes
    # (redis://[[user]:password@]host[:port][/db], rediss:// for TLS); unset: one process's memory.
    redis_url: str | None = None
    # The key that signs the events and cancel URLs; a random one per start when unset (required with redis_url).
    stream_secret: str | None = None
    # Seconds a generating process's hold on a stream lasts unrenewed (renewed every third of it):
    # when the process dies, readers elsewhere get owner_lost within about 4/3 of it.
    stream_lease: Seconds = 3.0
    stream_token_ttl: Seconds = 3600.0
    stream_grace: Seconds = 10.0
    stream_retention: Seconds = 300.0
    stream_log_max_bytes: Positive = 4_194_304
    # The event log's bytes for all streams together: 64 streams at their own cap, or over a thousand long answers.
    stream_log_budget_bytes: Positive = 268_435_456
    max_streams: Positive = 1_000
    max_stream_readers: Positive = 10_000
    stream_retry_ms: Positive = 2_000
    stream_busy_retry_ms: Positive = 5_000

    # Browser origins allowed to call the API (CORS); "*" for any, without credentials.
    cors_origins: tuple[str, ...] = ()

    # The embedded mock model server.
    mock_ttft: Annotated[float, msgspec.Meta(ge=0)] = 0.2
    mock_interval: Annotated[float, msgspec.Meta(ge=0)] = 0.02
    mock_tokens: Positive = 64

    def __post_init__(self) -> None:
        if self.upstream is not None and not _URL.match(self.upstream):
            raise ValueError("upstream: must be an http:// or https:// base URL, such as http://127.0.0.1:8001/v1")
        if self.upstream is not None and self.upstreams:
            raise ValueError("upstreams: set either upstream (one model server) or upstreams, not both")
        names = [upstream.name for upstream in self.upstreams]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"upstreams: the name {name!r} is used twice")
        known = set(names or [DEFAULT_UPSTREAM])
        for model, targets in self.routes.items():
            if not targets:
                raise ValueError(f"routes: {model!r} names no upstream")
            for target in targets:
                if target.partition(":")[0] not in known:
                    raise ValueError(f"routes: {model!r} names {target!r}, but there is no upstream {target.partition(':')[0]!r}")
        for origin in self.cors_origins:
            if origin != "*" and not re.match(r"^https?://[^/\s]+$", origin):
                raise ValueError(f"cors_origins: {origin!r} is not an origin such as https://chat.example.com (scheme and host, no path)")
        if self.stream_log_budget_bytes < self.stream_log_max_bytes:
            raise ValueError("stream_log_budget_bytes: must be at least stream_log_max_bytes (one stream at its limit must fit)")
        if self.redis_url is not None and not _REDIS_URL.match(self.redis_url):
            raise ValueError(f"redis_url: {self.redis_url!r} is not a redis:// or rediss:// URL such as redis://:password@10.0.0.5:6379/0")
        if self.redis_url is not None and self.stream_secret is None:
            raise ValueError("stream_secret: required with RELAY_REDIS_URL, so that every process signs and checks the same stream URLs")
        if self.workers > 1 and self.redis_url is None:
            # Resumable streams would live in one worker's memory: a reader reaching another would get 204, and a browser stops for good.
            raise ValueError(
                f"workers: {self.workers} worker processes (--workers, RELAY_WORKERS or WEB_CONCURRENCY) need RELAY_REDIS_URL, "
                "or a stream made by one worker answers 204 on the others; set RELAY_REDIS_URL, or RELAY_WORKERS=1"
            )
        if self.stream_secret is not None and len(self.stream_secret) < 32:
            raise ValueError("stream_secret: must be at least 32 characters")
        if self.public_url is not None and not _PUBLIC_URL.match(self.public_url):
            raise ValueError(f"public_url: {self.public_url!r} is not a URL such as https://relay.example.com or https://example.com/relay")
        for host in self.allowed_hosts or ():
            if not _HOST_PATTERN.match(host):
                raise ValueError(f"allowed_hosts: {host!r} is not a host name, *.domain, [IPv6] or * (no scheme, no port)")
        proxies = self.forwarded_allow_ips or ()
        if "*" in proxies and len(proxies) > 1:
            raise ValueError("forwarded_allow_ips: '*' trusts every peer, and must then be the only entry")
        for proxy in proxies:
            # uvicorn takes what it cannot parse for a name no TCP peer has: a typo would trust nobody, silently.
            if proxy != "*" and not _is_address(proxy):
                raise ValueError(f"forwarded_allow_ips: {proxy!r} is not an IP address or network such as 10.0.0.0/8")

    def trusted_hosts(self) -> tuple[str, ...]:
        """The Host header values answered: ``allowed_hosts`` (else loopback's and the bound address's), and the public URL's."""
        if self.allowed_hosts is not None:
            hosts = [host.lower() for host in self.allowed_hosts]
        else:
            hosts = list(LOOPBACK_HOSTS)
            if self.host not in WILDCARD_ADDRESSES:
                hosts.append(f"[{self.host}]" if ":" in self.host else self.host.lower())
        public = _PUBLIC_URL.match(self.public_url or "")
        if public is not None:
            hosts.append(public["host"].lower())
        return tuple(dict.fromkeys(hosts))

    def upstream_list(self) -> tuple[UpstreamSettings, ...]:
        """The configured upstreams; the shorthand ``upstream`` (or the embedded mock, with ``None``) is one named "default"."""
        if self.upstreams:
            return self.upstreams
        return (UpstreamSettings(DEFAULT_UPSTREAM, self.upstream or "http://127.0.0.1/", self.protocol),)


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_network(text) if "/" in text else ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class SettingsError(Exception):
    """A setting has a bad value; the message is one line naming it."""


_FIELDS = {field.name: field for field in msgspec.structs.fields(Settings)}


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, field in _FIELDS.items():
        raw = environ.get(env_name(name))
        if raw is None:
            continue
        if name in ("upstreams", "routes", "keys"):
            try:
                values[name] = msgspec.json.decode(raw)
            except msgspec.DecodeError as exc:
                raise SettingsError(f"invalid setting {name} ({env_name(name)}): not JSON: {exc}") from exc
        elif raw == "" and type(None) in typing.get_args(field.type):
            values[name] = None
        elif tuple[str, ...] in (field.type, *typing.get_args(field.type)):
            values[name] = tuple(part.strip() for part in raw.split(",") if part.strip())
        else:
            values[name] = raw
    return values


def _from_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise SettingsError(f"config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path}: {exc}") from exc
    # Accept both a flat file and one with a [relay] table, beside which [[upstreams]], [routes] and [[keys]] may stand.
    relay = data.get("relay", data)
    if not isinstance(relay, dict):
        raise SettingsError(f"config file {path}: [relay] must be a table")
    if relay is not data:
        relay = relay | {key: data[key] for key in ("upstreams", "routes", "keys") if key in data}
    return relay


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Settings:
    """Merge defaults, the TOML file, the environment and ``overrides`` (flags), and validate."""
    environ = os.environ if environ is None else environ
    config_file = config_file or environ.get(env_name("config")) or None
    values: dict[str, Any] = {}
    if config_file:
        values.update(_from_toml(config_file))
    values.update(_from_env(environ))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise SettingsError(f"unknown setting {unknown[0]!r}")
    try:
        # strict=False turns the environment's strings into numbers and booleans.
        settings = msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(_describe(str(exc))) from exc
    for index, upstream in enumerate(settings.upstreams):
        if upstream.api_key_env is not None and not environ.get(upstream.api_key_env):
            raise SettingsError(
                f"invalid setting upstreams[{index}].api_key_env ({env_name('upstreams')}): the environment variable {upstream.api_key_env} is not set"
            )
    names = [key.name for key in settings.keys]
    for index, key in enumerate(settings.keys):
        if key.key_env is not None and not environ.get(key.key_env):
            raise SettingsError(f"invalid setting keys[{index}].key_env ({env_name('keys')}): the environment variable {key.key_env} is not set")
        if names.index(key.name) != index:
            raise SettingsError(f"invalid setting keys[{index}].name ({env_name('keys')}): another key is named {key.name!r}")
    return settings


def _describe(message: str) -> str:
    """Turn msgspec's ``Expected `float`, got `str` - at `$.idle_timeout``` into one line naming the setting."""
    match = re.search(r" - at `\$\.(\w+)([^`]*)`", message)
    if match:
        name = match.group(1)
        what = message[: match.start()]
        return f"invalid setting {name}{match.group(2)} ({env_name(name)}): {what}"
    field, _, what = message.partition(": ")
    if field in _FIELDS:
        return f"invalid setting {field} ({env_name(field)}): {what}"
    return f"invalid settings: {message}"
