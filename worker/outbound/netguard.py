"""Outbound HTTP to URLs that others hand us: never to an internal address by accident.

A video URL comes from the provider, a redirect from whoever serves it, and a webhook URL may
come from an API caller. Any of them can name (or resolve to, or redirect to) a loopback,
private or link-local address, such as the cloud metadata service whose credentials the S3
archive uses. `guarded_session` makes a requests session that refuses such destinations.

The check is on the address actually connected to: each connection resolves its host itself,
refuses every candidate address that is internal, connects only to an allowed one (by its
literal IP, so a second lookup cannot answer differently) and checks the peer once connected.
A DNS name that resolves to 169.254.169.254 is refused like the IP itself, and no rebinding
between a check and the connection can get around it. HTTPS still verifies the certificate
against the URL's host name.

``ALLOW_PRIVATE_HOSTS`` names the exceptions (`AllowList.parse`): host names, IP addresses and
CIDR ranges, comma-separated, e.g. the fake gateway on ``127.0.0.1`` or a private mirror.

The policy (`address_kind`, `AllowList`, `refusal`) is pure; the urllib3 connection classes and
`GuardedAdapter` are the shell that applies it to every new connection.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.poolmanager import PoolManager
from urllib3.util.connection import allowed_gai_family, create_connection

__all__ = [
    "ENV_NAME",
    "AllowList",
    "DestinationRefused",
    "GuardedAdapter",
    "address_kind",
    "guarded_pools",
    "guarded_session",
    "is_guarded",
    "refusal",
    "url_refusal",
]

ENV_NAME = "ALLOW_PRIVATE_HOSTS"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

LOOPBACK = "loopback address"
PRIVATE = "private address"
LINK_LOCAL = "link-local address"
SHARED = "shared (CGNAT) address"
MULTICAST = "multicast address"
RESERVED = "reserved address"
UNSPECIFIED = "unspecified address"


class DestinationRefused(Exception):
    """The destination is an internal address that ALLOW_PRIVATE_HOSTS does not name.

    Not an `OSError`, on purpose: urllib3 and requests let it through unwrapped and unretried,
    so callers see it as it is and treat it as permanent.
    """


# -- the policy --------------------------------------------------------------------------------


def _networks(table: tuple[tuple[str, str], ...]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(net), kind) for net, kind in table)


_V4 = _networks(
    (
        ("0.0.0.0/8", UNSPECIFIED),  # "this network"
        ("10.0.0.0/8", PRIVATE),
        ("100.64.0.0/10", SHARED),  # RFC 6598; Python's is_private does not include it
        ("127.0.0.0/8", LOOPBACK),
        ("169.254.0.0/16", LINK_LOCAL),  # cloud metadata services live here
        ("172.16.0.0/12", PRIVATE),
        ("192.0.0.0/24", RESERVED),  # IETF protocol assignments
        ("192.0.2.0/24", RESERVED),  # documentation
        ("192.88.99.0/24", RESERVED),  # 6to4 relay anycast
        ("192.168.0.0/16", PRIVATE),
        ("198.18.0.0/15", RESERVED),  # benchmarking
        ("198.51.100.0/24", RESERVED),  # documentation
        ("203.0.113.0/24", RESERVED),  # documentation
        ("224.0.0.0/4", MULTICAST),
        ("240.0.0.0/4", RESERVED),  # and 255.255.255.255
    )
)
_V6 = _networks(
    (
        ("::/128", UNSPECIFIED),
        ("::1/128", LOOPBACK),
        ("64:ff9b:1::/48", PRIVATE),  # local-use NAT64 (inside ::/8)
        ("::/8", RESERVED),  # IPv4-compatible and -translated forms among others
        ("100::/64", RESERVED),  # discard-only
        ("2001:db8::/32", RESERVED),  # documentation
        ("2001::/23", RESERVED),  # IETF protocol assignments, Teredo
        ("fc00::/7", PRIVATE),  # unique local
        ("fe80::/10", LINK_LOCAL),
        ("fec0::/10", PRIVATE),  # site-local (deprecated)
        ("ff00::/8", MULTICAST),
    )
)
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for: mapped (``::ffff:a.b.c.d``), NAT64, 6to4."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def address_kind(address: IPAddress) -> str | None:
    """What kind of internal address `address` is ("loopback address", ...); None if public.

    IPv6 forms of an IPv4 address (mapped, NAT64, 6to4) are judged by that IPv4 address.
    """
    inner = embedded_ipv4(address)
    if inner is not None:
        return address_kind(inner)
    table = _V4 if isinstance(address, ipaddress.IPv4Address) else _V6
    for network, kind in table:
        if address in network:
            return kind
    if isinstance(address, ipaddress.IPv6Address) and address not in _GLOBAL_UNICAST:
        return RESERVED
    return None if address.is_global else RESERVED


_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


def _normal_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _parse_address(text: str) -> IPAddress:
    """An address as a socket reports it; an IPv6 zone (``fe80::1%eth0``) is dropped."""
    return ipaddress.ip_address(text.split("%", 1)[0])


@dataclass(frozen=True)
class AllowList:
    """Internal destinations that may be reached anyway: host names and IP networks."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, text: str) -> AllowList:
        """Parse ``ALLOW_PRIVATE_HOSTS``: comma-separated host names, IP addresses, CIDR ranges.

        ``"127.0.0.1, mirror.internal, 10.20.0.0/16, fd00::/8"``. Blank entries are skipped.
        Raises ValueError naming the first entry that is none of the three.
        """
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in text.split(","):
            entry = raw.strip()
            if not entry:
                continue
            networks_or_host = _parse_entry(entry)
            if isinstance(networks_or_host, str):
                hosts.add(networks_or_host)
            else:
                networks.append(networks_or_host)
        return cls(frozenset(hosts), tuple(networks))

    def allows(self, host: str, address: IPAddress) -> bool:
        """Whether `host` is named, or `address` (or the IPv4 address it stands for) is in range."""
        if _normal_host(host) in self.hosts:
            return True
        candidates = [address]
        inner = embedded_ipv4(address)
        if inner is not None:
            candidates.append(inner)
        return any(
            candidate.version == network.version and candidate in network
            for candidate in candidates
            for network in self.networks
        )

    def __str__(self) -> str:
        return ",".join([*sorted(self.hosts), *(str(n) for n in self.networks)])


def _parse_entry(entry: str) -> str | IPNetwork:
    hint = f"{ENV_NAME} takes host names, IP addresses and CIDR ranges, comma-separated"
    if "://" in entry:
        raise ValueError(f"{entry!r} is a URL; give only its host ({hint})")
    if entry.count(":") == 1 or (entry.startswith("[") and "]:" in entry):
        raise ValueError(f"{entry!r} has a port; give only the host ({hint})")
    if "/" in entry:
        try:
            return ipaddress.ip_network(entry, strict=True)
        except ValueError as exc:
            loose = _loose_network(entry)
            if loose is not None:
                raise ValueError(
                    f"{entry!r} has host bits set; did you mean {loose}? ({hint})"
                ) from None
            raise ValueError(f"{entry!r} is not a CIDR range: {exc} ({hint})") from None
    try:
        return ipaddress.ip_network(_normal_host(entry))
    except ValueError:
        pass
    name = _normal_host(entry)
    if ":" in name or re.fullmatch(r"[0-9.]+", name):
        raise ValueError(f"{entry!r} is not a valid IP address ({hint})")
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{entry!r} is not a host name, an IP address or a CIDR range ({hint})")
    return name


def _loose_network(entry: str) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return None


def refusal(host: str, address: IPAddress, allow: AllowList) -> str | None:
    """Why connecting to `address` (which `host` resolved to) is refused; None if it is fine."""
    kind = address_kind(address)
    if kind is None or allow.allows(host, address):
        return None
    name = _normal_host(host)
    shown = str(address) if name == str(address) else f"{name} ({address})"
    return f"refusing to connect to {shown}, a {kind}; list it in {ENV_NAME} to allow it"


Resolver = Callable[..., Sequence[tuple[Any, ...]]]
"""``socket.getaddrinfo`` or a stand-in with its signature (tests)."""


def url_refusal(url: str, allow: AllowList, *, resolve: Resolver | None = None) -> str | None:
    """Why `url`'s host may not be given as a destination, or None when it may.

    For a URL someone else supplies (a chain's ``webhook_url``), checked when it is given: an
    IP literal is judged as it is; a name is resolved, and refused when *any* of its
    addresses is internal and not allowed (the connection would skip such addresses, but a
    name that points inside at all is not one to accept), or when it does not resolve.
    Blocking (a DNS lookup). The connection is checked again when it is made
    (`guarded_session`), since the name may resolve differently by then.
    """
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    if not host:
        return "the URL has no host"
    try:
        literal: IPAddress | None = _parse_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        return refusal(host, literal, allow)
    lookup = resolve if resolve is not None else socket.getaddrinfo
    default = 443 if parts.scheme.lower() == "https" else 80
    try:
        found = lookup(host, port or default, 0, socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        return f"the host {host} could not be resolved ({why})"
    addresses = sorted({str(sockaddr[0]) for *_, sockaddr in found})
    if not addresses:
        return f"the host {host} resolved to no address"
    for text in addresses:
        problem = refusal(host, _parse_address(text), allow)
        if problem is not None:
            return problem
    return None


# -- the shell: connections that apply the policy ----------------------------------------------


def open_checked(
    host: str,
    port: int,
    allow: AllowList,
    *,
    timeout: Any,
    source_address: tuple[str, int] | None = None,
    socket_options: Any = None,
) -> socket.socket:
    """A socket connected to `host`, at an address the policy allows.

    Resolves `host`, skips (never connects to) refused addresses, connects to the first
    allowed one that answers, by its literal IP, and checks the peer address once connected.
    Raises DestinationRefused when every address is refused, else the last connection error.
    """
    name = host.strip("[]")
    refused: str | None = None
    error: OSError | None = None
    for *_, sockaddr in socket.getaddrinfo(name, port, allowed_gai_family(), socket.SOCK_STREAM):
        literal = str(sockaddr[0])
        problem = refusal(name, _parse_address(literal), allow)
        if problem is not None:
            refused = refused or problem
            continue
        try:
            sock = create_connection(
                (literal, port),
                timeout,
                source_address=source_address,
                socket_options=socket_options,
            )
        except OSError as exc:
            error = exc
            continue
        peer = refusal(name, _parse_address(str(sock.getpeername()[0])), allow)
        if peer is not None:
            sock.close()
            raise DestinationRefused(peer)
        return sock
    if error is not None:
        raise error
    if refused is not None:
        raise DestinationRefused(refused)
    raise OSError(f"{name} resolved to no address")


def _new_conn(conn: HTTPConnection, allow: AllowList) -> socket.socket:
    """`HTTPConnection._new_conn` of urllib3 2, with `open_checked` to make the socket."""
    try:
        sock = open_checked(
            conn._dns_host,
            conn.port or (443 if isinstance(conn, HTTPSConnection) else 80),
            allow,
            timeout=conn.timeout,
            source_address=conn.source_address,
            socket_options=conn.socket_options,
        )
    except socket.gaierror as exc:
        raise NameResolutionError(conn.host, conn, exc) from exc
    except TimeoutError as exc:
        raise ConnectTimeoutError(
            conn, f"Connection to {conn.host} timed out. (connect timeout={conn.timeout})"
        ) from exc
    except OSError as exc:
        raise NewConnectionError(conn, f"Failed to establish a new connection: {exc}") from exc
    sys.audit("http.client.connect", conn, conn.host, conn.port)
    return sock


@functools.cache
def _pool_classes(allow: AllowList) -> dict[str, type[HTTPConnectionPool]]:
    """Connection pools whose new connections apply `allow` (one set per allow list)."""

    class GuardedHTTPConnection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return _new_conn(self, allow)

    class GuardedHTTPSConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return _new_conn(self, allow)

    class GuardedHTTPConnectionPool(HTTPConnectionPool):
        ConnectionCls = GuardedHTTPConnection

    class GuardedHTTPSConnectionPool(HTTPSConnectionPool):
        ConnectionCls = GuardedHTTPSConnection

    return {"http": GuardedHTTPConnectionPool, "https": GuardedHTTPSConnectionPool}


class GuardedAdapter(HTTPAdapter):
    """A requests adapter whose every connection is checked against an `AllowList`.

    Proxies are refused: through a proxy, the address connected to is the proxy's, and the
    destination is whatever the proxy resolves, which nothing here could check.
    """

    __attrs__ = [*HTTPAdapter.__attrs__, "allow"]  # noqa: RUF012 - kept when pickled

    def __init__(self, allow: AllowList | None = None, **kwargs: Any) -> None:
        self.allow = allow if allow is not None else AllowList()
        super().__init__(**kwargs)  # calls init_poolmanager, which needs self.allow

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = _pool_classes(self.allow)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        raise DestinationRefused(
            "refusing to connect through a proxy: the destination could not be checked"
        )


def guarded_session(allow: AllowList | None = None) -> requests.Session:
    """A requests session that refuses internal destinations other than those `allow` names.

    ``trust_env`` is off: no ``.netrc`` credentials are sent, and no proxy from the
    environment is used (the adapter refuses proxies anyway).
    """
    session = requests.Session()
    session.trust_env = False
    adapter = GuardedAdapter(allow)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def guarded_pools(session: requests.Session, url: str) -> PoolManager | None:
    """The connection pools of the `GuardedAdapter` through which `session` (without
    ``.netrc``) fetches `url`; None when it would fetch it any other way.

    Requests sent on them directly skip what requests does per request (merging settings,
    preparing the request, its hooks), which is most of what fetching a small file costs,
    and keep the guard: every connection they make is checked."""
    try:
        adapter = session.get_adapter(url)
    except requests.exceptions.InvalidSchema:
        return None
    if not isinstance(adapter, GuardedAdapter) or session.trust_env:
        return None
    pools: PoolManager = adapter.poolmanager
    return pools


def is_guarded(session: requests.Session, url: str) -> bool:
    """Whether `session` would fetch `url` through a `GuardedAdapter`, without ``.netrc``."""
    return guarded_pools(session, url) is not None
