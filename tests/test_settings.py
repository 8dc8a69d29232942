"""Settings come from defaults, a TOML file, RELAY_* variables and flags, in that order, and are validated."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import SettingsError, load_settings


def test_later_sources_win(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text('[relay]\nidle_timeout = 7\nheartbeat_interval = 3\nmodels = ["a", "b"]\n')
    settings = load_settings({"heartbeat_interval": 1.5}, environ={"RELAY_IDLE_TIMEOUT": "9"}, config_file=str(config))
    assert (settings.idle_timeout, settings.heartbeat_interval, settings.models) == (9.0, 1.5, ("a", "b"))


def test_environment_values_are_typed() -> None:
    settings = load_settings(environ={
        "RELAY_API_KEYS": "one, two", "RELAY_ACCESS_LOG": "false", "RELAY_TOTAL_TIMEOUT": "30", "RELAY_WORKERS": "3",
        "RELAY_REDIS_URL": "redis://127.0.0.1:6379/0", "RELAY_STREAM_SECRET": "s" * 32,
    })
    assert (settings.api_keys, settings.access_log, settings.total_timeout, settings.workers) == (("one", "two"), False, 30.0, 3)
    assert load_settings(environ={}).total_timeout is None
    proxies = load_settings(environ={"RELAY_FORWARDED_ALLOW_IPS": "10.0.0.1, 10.1.0.0/16,fd00::/8", "RELAY_ALLOWED_HOSTS": ""})
    assert (proxies.forwarded_allow_ips, proxies.allowed_hosts) == (("10.0.0.1", "10.1.0.0/16", "fd00::/8"), None)


@pytest.mark.parametrize(("environ", "message"), [
    ({"RELAY_IDLE_TIMEOUT": "soon"}, "invalid setting idle_timeout (RELAY_IDLE_TIMEOUT): Expected `float`, got `str`"),
    ({"RELAY_IDLE_TIMEOUT": "0"}, "invalid setting idle_timeout (RELAY_IDLE_TIMEOUT): Expected `float` > 0.0"),
    ({"RELAY_PORT": "70000"}, "invalid setting port (RELAY_PORT): Expected `int` <= 65535"),
    ({"RELAY_UPSTREAM": "localhost:8001"}, "invalid setting upstream (RELAY_UPSTREAM): must be an http:// or https:// base URL"),
    ({"RELAY_LOG_LEVEL": "loud"}, "invalid setting log_level (RELAY_LOG_LEVEL): Invalid enum value 'loud'"),
    ({"RELAY_CORS_ORIGINS": "https://a.example,https://b.example/chat"},
     "invalid setting cors_origins (RELAY_CORS_ORIGINS): 'https://b.example/chat' is not an origin"),
    ({"RELAY_STREAM_SECRET": "short"}, "invalid setting stream_secret (RELAY_STREAM_SECRET): must be at least 32 characters"),
    ({"RELAY_STREAM_GRACE": "0"}, "invalid setting stream_grace (RELAY_STREAM_GRACE): Expected `float` > 0.0"),
    ({"RELAY_PUBLIC_URL": "relay.example.com"}, "invalid setting public_url (RELAY_PUBLIC_URL): 'relay.example.com' is not a URL such as"),
    ({"RELAY_PUBLIC_URL": "https://relay.example.com/?a=1"}, "invalid setting public_url (RELAY_PUBLIC_URL): 'https://relay.example.com/?a=1' is not a URL"),
    ({"RELAY_PUBLIC_URL": "https://user@relay.example.com"}, "invalid setting public_url (RELAY_PUBLIC_URL): 'https://user@relay.example.com' is not"),
    ({"RELAY_ALLOWED_HOSTS": "relay.example.com:8000"}, "invalid setting allowed_hosts (RELAY_ALLOWED_HOSTS): 'relay.example.com:8000' is not a host"),
    ({"RELAY_ALLOWED_HOSTS": "https://relay.example.com"}, "invalid setting allowed_hosts (RELAY_ALLOWED_HOSTS): 'https://relay.example.com' is not"),
    ({"RELAY_ALLOWED_HOSTS": "a.*.example.com"}, "invalid setting allowed_hosts (RELAY_ALLOWED_HOSTS): 'a.*.example.com' is not a host"),
    ({"RELAY_FORWARDED_ALLOW_IPS": "10.0.0.1,proxy.internal"},
     "invalid setting forwarded_allow_ips (RELAY_FORWARDED_ALLOW_IPS): 'proxy.internal' is not an IP address or network"),
    ({"RELAY_FORWARDED_ALLOW_IPS": "10.0.0.1/8"}, "invalid setting forwarded_allow_ips (RELAY_FORWARDED_ALLOW_IPS): '10.0.0.1/8' is not an IP"),
    ({"RELAY_FORWARDED_ALLOW_IPS": "*,10.0.0.1"}, "invalid setting forwarded_allow_ips (RELAY_FORWARDED_ALLOW_IPS): '*' trusts every peer"),
    ({"RELAY_REDIS_URL": "127.0.0.1:6379"}, "invalid setting redis_url (RELAY_REDIS_URL): '127.0.0.1:6379' is not a redis://"),
    ({"RELAY_REDIS_URL": "http://127.0.0.1:6379"}, "invalid setting redis_url (RELAY_REDIS_URL): 'http://127.0.0.1:6379' is not a redis://"),
    ({"RELAY_REDIS_URL": "redis://127.0.0.1/0"},
     "invalid setting stream_secret (RELAY_STREAM_SECRET): required with RELAY_REDIS_URL, so that every process signs and checks"),
    ({"RELAY_WORKERS": "2"}, "invalid setting workers (RELAY_WORKERS): 2 worker processes (--workers, RELAY_WORKERS or WEB_CONCURRENCY) need "
     "RELAY_REDIS_URL"),
    ({"RELAY_STREAM_LEASE": "0"}, "invalid setting stream_lease (RELAY_STREAM_LEASE): Expected `float` > 0.0"),
    ({"RELAY_STREAM_LOG_BUDGET_BYTES": "1000"},
     "invalid setting stream_log_budget_bytes (RELAY_STREAM_LOG_BUDGET_BYTES): must be at least stream_log_max_bytes"),
])
def test_a_bad_value_names_the_setting(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(environ=environ)
    assert str(raised.value).startswith(message)


def test_unknown_keys_in_a_config_file_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text("idle_timeot = 3\n")
    with pytest.raises(SettingsError, match="unknown setting 'idle_timeot'"):
        load_settings(environ={}, config_file=str(config))


def test_the_cli_exits_non_zero_with_one_line_on_a_bad_setting() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app", "serve", "--port", "1"], env={"RELAY_HEARTBEAT_INTERVAL": "-5", "PATH": ""},
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "token-relay: invalid setting heartbeat_interval (RELAY_HEARTBEAT_INTERVAL): Expected `float` > 0.0"
    ]


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:6379", "redis://:pass@redis.internal:6380/2", "redis://user:pass@10.0.0.5/0", "rediss://cache.example.com:6380/1",
    "unix:///run/redis.sock?db=3",
])
def test_redis_urls_with_tls_password_and_db_are_taken(url: str) -> None:
    settings = load_settings(environ={"RELAY_REDIS_URL": url, "RELAY_STREAM_SECRET": "s" * 32})
    assert settings.redis_url == url


def test_several_workers_without_redis_refuse_to_start_with_one_line_naming_redis_url() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app", "serve", "--port", "1"], env={"WEB_CONCURRENCY": "4", "PATH": ""},
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("token-relay: invalid setting workers (RELAY_WORKERS): 4 worker processes (--workers, RELAY_WORKERS or WEB_CONCURRENCY)")
    assert "RELAY_REDIS_URL" in line and "RELAY_WORKERS=1" in line
    assert load_settings({"workers": 1}, environ={"WEB_CONCURRENCY": "4"}).workers == 1


def test_several_upstreams_and_routes_from_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text("""
[relay]
first_token_timeout = 30

[[upstreams]]
name = "vllm"
base_url = "http://10.0.0.1:8000/v1"
max_concurrency = 64

[[upstreams]]
name = "claude"
protocol = "anthropic"
base_url = "https://api.anthropic.com"
api_key_env = "ANTHROPIC_API_KEY"
first_token_timeout = 10

[routes]
"llama-3.1-8b" = ["vllm", "claude:claude-3-5-haiku-latest"]
""")
    settings = load_settings(environ={"ANTHROPIC_API_KEY": "sk-ant"}, config_file=str(config))
    assert [(u.name, u.protocol, u.max_concurrency, u.first_token_timeout) for u in settings.upstreams] == [
        ("vllm", "openai", 64, None), ("claude", "anthropic", None, 10.0),
    ]
    assert settings.routes == {"llama-3.1-8b": ("vllm", "claude:claude-3-5-haiku-latest")}
    assert settings.first_token_timeout == 30


def test_how_an_upstream_is_reached_is_read_with_it(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("a CA")
    settings = load_settings(environ={
        "RELAY_UPSTREAMS": f'[{{"name": "a", "base_url": "https://h/v1", "transport": "httpx", "http2": true, "ca_file": "{ca}"}}]',
    })
    upstream = settings.upstreams[0]
    assert (upstream.transport, upstream.http2, upstream.ca_file, upstream.client_cert) == ("httpx", True, str(ca), None)
    assert load_settings(environ={}).upstream_list()[0].transport == "http1"


def test_upstreams_and_routes_from_the_environment_as_json() -> None:
    settings = load_settings(environ={
        "RELAY_UPSTREAMS": '[{"name": "ollama", "protocol": "ollama", "base_url": "http://127.0.0.1:11434"}]',
        "RELAY_ROUTES": '{"llama": ["ollama:llama3.2"]}',
    })
    assert (settings.upstreams[0].protocol, settings.routes) == ("ollama", {"llama": ("ollama:llama3.2",)})


@pytest.mark.parametrize(("environ", "message"), [
    ({"RELAY_UPSTREAMS": '[{"name": "a", "base_url": "localhost:1"}]'},
     "invalid setting upstreams[0] (RELAY_UPSTREAMS): base_url: must be an http:// or https:// URL, not 'localhost:1'"),
    ({"RELAY_UPSTREAMS": '[{"name": "a", "base_url": "http://h", "protocol": "grpc"}]'},
     "invalid setting upstreams[0].protocol (RELAY_UPSTREAMS): Invalid enum value 'grpc'"),
    ({"RELAY_UPSTREAMS": '[{"name": "a", "base_url": "http://h", "api_key_env": "NO_SUCH_KEY"}]'},
     "invalid setting upstreams[0].api_key_env (RELAY_UPSTREAMS): the environment variable NO_SUCH_KEY is not set"),
    ({"RELAY_UPSTREAMS": '[{"name": "a", "base_url": "http://h"}, {"name": "a", "base_url": "http://i"}]'},
     "invalid setting upstreams (RELAY_UPSTREAMS): the name 'a' is used twice"),
    ({"RELAY_UPSTREAMS": '[{"name": "a", "base_url": "http://h"}]', "RELAY_UPSTREAM": "http://h/v1"},
     "invalid setting upstreams (RELAY_UPSTREAMS): set either upstream (one model server) or upstreams, not both"),
    ({"RELAY_ROUTES": '{"m": ["elsewhere"]}'},
     "invalid setting routes (RELAY_ROUTES): 'm' names 'elsewhere', but there is no upstream 'elsewhere'"),
    ({"RELAY_ROUTES": "{m: 1}"}, "invalid setting routes (RELAY_ROUTES): not JSON"),
    ({"RELAY_PROTOCOL": "grpc"}, "invalid setting protocol (RELAY_PROTOCOL): Invalid enum value 'grpc'"),
    ({"RELAY_UPSTREAMS": '[{"name": "a", "base_url": "https://h", "http2": true}]'},
     'invalid setting upstreams[0] (RELAY_UPSTREAMS): http2: needs transport = "httpx"'),
    ({"RELAY_UPSTREAMS": '[{"name": "a", "base_url": "https://h", "transport": "aiohttp"}]'},
     "invalid setting upstreams[0].transport (RELAY_UPSTREAMS): Invalid enum value 'aiohttp'"),
    ({"RELAY_UPSTREAMS": '[{"name": "a", "base_url": "https://h", "ca_file": "/no/such/ca.pem"}]'},
     "invalid setting upstreams[0] (RELAY_UPSTREAMS): ca_file: no such file: '/no/such/ca.pem'"),
    ({"RELAY_UPSTREAMS": f'[{{"name": "a", "base_url": "https://h", "client_key": "{__file__}"}}]'},
     "invalid setting upstreams[0] (RELAY_UPSTREAMS): client_key: needs client_cert"),
])
def test_a_bad_upstream_or_route_names_itself(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(environ=environ)
    assert str(raised.value).startswith(message)
