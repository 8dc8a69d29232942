"""How the relay reaches an upstream: through which proxy, trusting which CAs, with which client certificate.

Both transports (``http1`` and ``httpx_transport``) take what is decided here, so that they
agree on it: the proxy comes from ``HTTPS_PROXY`` (for ``https`` upstreams) or ``HTTP_PROXY``
(for ``http`` ones), the lowercase names winning over the uppercase ones, as curl and Python's
``urllib`` read them; ``NO_PROXY`` lists the hosts reached directly (``*``, names that match
themselves and their subdomains, a leading ``.`` or ``*.`` allowed, IP addresses and CIDR
networks, each with an optional ``:port``). A proxy is an ``http://`` URL (a bare ``host:port``
is taken as one); its userinfo, if any, becomes the ``Proxy-Authorization`` (Basic). Other
proxy schemes (``https://``, ``socks5://``) are refused at start-up rather than ignored.

TLS: an upstream's ``ca_file`` is the set of CAs it is verified against, in place of the
system's (as ``curl --cacert`` does); else ``SSL_CERT_FILE``, if set, in place of the system's;
else the system's store. ``client_cert`` (with ``client_key``, unless the key is in the same
file) is presented to servers that ask for one. A context is built once per distinct set of
these and per ALPN list, never shared between transports: httpx sets the ALPN protocols on the
context it is given, and one that offered ``h2`` would make a server answer the HTTP/1.1
client in HTTP/2.
"""

from __future__ import annotations

import base64
import ipaddress
import ssl
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit


class Proxy:
    """An HTTP proxy: where it is, and the ``Proxy-Authorization`` its URL's userinfo makes (or ``None``)."""

    __slots__ = ("authorization", "host", "key", "port", "url")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the proxy {_redacted(url)!r} is not an http:// proxy URL (https:// and socks proxies are not supported)")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.authorization: str | None = None
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            self.authorization = "Basic " + base64.b64encode(credentials).decode("ascii")
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{self.port}"  # without the credentials: safe to log
        self.key = (self.host, self.port, self.authorization)

    def __repr__(self) -> str:
        return f"Proxy({self.url!r})"


def _redacted(url: str) -> str:
    """``url`` without its password, for a message."""
    return url.split("@", 1)[1] if "@" in url else url


def _env(environ: Mapping[str, str], name: str) -> str:
    return environ.get(name.lower()) or environ.get(name.upper()) or ""


def proxy_for(scheme: str, host: str, port: int, environ: Mapping[str, str]) -> Proxy | None:
    """The proxy that ``scheme://host:port`` is reached through, per ``environ``; ``None`` to connect directly."""
    url = _env(environ, f"{scheme}_proxy")
    if not url or bypassed(host, port, _env(environ, "no_proxy")):
        return None
    return Proxy(url)


def bypassed(host: str, port: int, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` (``no_proxy``) names ``host:port``."""
    host = host.lower().strip("[]")
    address = _address(host)
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        name, entry_port = _split_port(entry)
        if entry_port is not None and entry_port != port:
            continue
        if address is not None and _address_matches(address, name):
            return True
        suffix = name.removeprefix("*").removeprefix(".")
        if suffix and (host == suffix or host.endswith("." + suffix)):
            return True
    return False


def _split_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):  # [::1]:8080
        name, _, rest = entry[1:].partition("]")
        return name, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if entry.count(":") == 1:
        name, _, port = entry.partition(":")
        if port.isdigit():
            return name, int(port)
    return entry, None


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _address_matches(address: ipaddress.IPv4Address | ipaddress.IPv6Address, entry: str) -> bool:
    try:
        return address in ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False


class TLS:
    """An upstream's TLS settings and the context built from them; ``key`` tells two apart (for the pool)."""

    __slots__ = ("context", "key")

    def __init__(self, ca_file: str | None = None, client_cert: str | None = None, client_key: str | None = None,
                 alpn: tuple[str, ...] = ("http/1.1",)) -> None:
        self.key = (ca_file, client_cert, client_key, alpn)
        # With a file, only its CAs (create_default_context then loads no default ones); else the system's.
        context = ssl.create_default_context(cafile=ca_file)
        if client_cert is not None:
            context.load_cert_chain(client_cert, client_key)
        context.set_alpn_protocols(list(alpn))
        self.context = context


class TLSContexts:
    """The contexts of every upstream, one per distinct ``TLS.key``: built at start-up, shared by upstreams that agree."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._default_ca = environ.get("SSL_CERT_FILE") or None
        self._built: dict[tuple[object, ...], TLS] = {}

    def get(self, ca_file: str | None, client_cert: str | None, client_key: str | None, alpn: tuple[str, ...]) -> TLS:
        ca = ca_file or self._default_ca
        key = (ca, client_cert, client_key, alpn)
        tls = self._built.get(key)
        if tls is None:
            try:
                tls = self._built[key] = TLS(ca, client_cert, client_key, alpn)
            except (OSError, ssl.SSLError) as exc:
                files = ", ".join(name for name in (ca, client_cert, client_key) if name)
                raise ValueError(f"cannot load the TLS files {files}: {exc}") from exc
        return tls
