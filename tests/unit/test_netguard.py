"""The destination policy of worker.outbound.netguard: address kinds, ALLOW_PRIVATE_HOSTS, sessions.

No test here sends a packet: refused destinations are refused before any connection.
"""

from __future__ import annotations

import ipaddress

import pytest
import requests

from worker.outbound.netguard import (
    AllowList,
    DestinationRefused,
    GuardedAdapter,
    address_kind,
    guarded_session,
    is_guarded,
    refusal,
)

NOTHING = AllowList()


# -- what is internal ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        # IPv4
        ("127.0.0.1", "loopback address"),
        ("127.0.0.2", "loopback address"),
        ("127.255.255.254", "loopback address"),
        ("10.0.0.1", "private address"),
        ("172.16.0.1", "private address"),
        ("172.31.255.255", "private address"),
        ("192.168.1.10", "private address"),
        ("169.254.169.254", "link-local address"),  # the cloud metadata service
        ("169.254.0.1", "link-local address"),
        ("100.64.0.1", "shared (CGNAT) address"),
        ("100.127.255.254", "shared (CGNAT) address"),
        ("224.0.0.1", "multicast address"),
        ("239.255.255.250", "multicast address"),
        ("0.0.0.0", "unspecified address"),
        ("0.1.2.3", "unspecified address"),
        ("255.255.255.255", "reserved address"),
        ("240.0.0.1", "reserved address"),
        ("192.0.0.8", "reserved address"),
        ("192.0.2.1", "reserved address"),
        ("198.18.0.1", "reserved address"),
        ("198.51.100.7", "reserved address"),
        ("203.0.113.9", "reserved address"),
        # IPv6
        ("::1", "loopback address"),
        ("::", "unspecified address"),
        ("fc00::1", "private address"),
        ("fd12:3456::1", "private address"),
        ("fec0::1", "private address"),
        ("fe80::1", "link-local address"),
        ("ff02::1", "multicast address"),
        ("ff0e::1", "multicast address"),
        ("2001:db8::1", "reserved address"),
        ("100::1", "reserved address"),
        ("2001::1", "reserved address"),  # Teredo
        ("::127.0.0.1", "reserved address"),  # IPv4-compatible (deprecated)
        ("64:ff9b:1::1", "private address"),
        ("4000::1", "reserved address"),  # outside global unicast
        # IPv6 forms of IPv4 addresses are judged by the IPv4 address
        ("::ffff:127.0.0.1", "loopback address"),
        ("::ffff:169.254.169.254", "link-local address"),
        ("::ffff:10.1.2.3", "private address"),
        ("::ffff:100.64.0.1", "shared (CGNAT) address"),
        ("64:ff9b::a9fe:a9fe", "link-local address"),  # NAT64 of 169.254.169.254
        ("64:ff9b::7f00:1", "loopback address"),
        ("2002:a9fe:a9fe::1", "link-local address"),  # 6to4 of 169.254.169.254
        ("2002:c0a8:0101::", "private address"),  # 6to4 of 192.168.1.1
        # public
        ("8.8.8.8", None),
        ("1.1.1.1", None),
        ("93.184.216.34", None),
        ("100.63.255.255", None),  # just below CGNAT
        ("100.128.0.0", None),  # just above
        ("172.32.0.1", None),  # just past 172.16/12
        ("2606:4700:4700::1111", None),
        ("2a00:1450:4001:80b::200e", None),
        ("::ffff:8.8.8.8", None),
        ("64:ff9b::808:808", None),  # NAT64 of 8.8.8.8
        ("2002:808:808::1", None),  # 6to4 of 8.8.8.8
    ],
)
def test_address_kind(address: str, kind: str | None) -> None:
    assert address_kind(ipaddress.ip_address(address)) == kind


# -- ALLOW_PRIVATE_HOSTS -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "hosts", "networks"),
    [
        ("", set(), []),
        ("  ", set(), []),
        ("127.0.0.1", set(), ["127.0.0.1/32"]),
        ("127.0.0.1, ,", set(), ["127.0.0.1/32"]),
        ("localhost", {"localhost"}, []),
        ("Mirror.Internal.", {"mirror.internal"}, []),
        ("fake-gateway,my_mirror", {"fake-gateway", "my_mirror"}, []),
        ("10.20.0.0/16", set(), ["10.20.0.0/16"]),
        ("::1", set(), ["::1/128"]),
        ("[::1]", set(), ["::1/128"]),
        ("fd00::/8", set(), ["fd00::/8"]),
        (
            "127.0.0.1, mirror.internal,10.0.0.0/8 ,fd00::/8",
            {"mirror.internal"},
            ["127.0.0.1/32", "10.0.0.0/8", "fd00::/8"],
        ),
    ],
)
def test_allow_list_parses_hosts_ips_and_ranges(
    text: str, hosts: set[str], networks: list[str]
) -> None:
    allow = AllowList.parse(text)
    assert allow.hosts == hosts
    assert [str(n) for n in allow.networks] == networks


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("10.0.0.1/8", "has host bits set; did you mean 10.0.0.0/8"),
        ("10.0.0.0/33", "is not a CIDR range"),
        ("http://mirror.internal", "is a URL"),
        ("mirror.internal:8080", "has a port"),
        ("127.0.0.1:8090", "has a port"),
        ("[::1]:8090", "has a port"),
        ("127.0.0.256", "is not a valid IP address"),
        ("10.0.0", "is not a valid IP address"),
        ("fe80::zz", "is not a valid IP address"),
        ("*.example.com", "is not a host name"),
        ("a..b", "is not a host name"),
        ("-bad.example", "is not a host name"),
        ("white space", "is not a host name"),
        ("x" * 64, "is not a host name"),
    ],
)
def test_allow_list_names_the_bad_entry(entry: str, why: str) -> None:
    with pytest.raises(ValueError, match="ALLOW_PRIVATE_HOSTS") as caught:
        AllowList.parse(f"127.0.0.1,{entry}")
    assert repr(entry) in str(caught.value)
    assert why in str(caught.value)


@pytest.mark.parametrize(
    ("allow", "host", "address", "allowed"),
    [
        ("", "8.8.8.8", "8.8.8.8", True),  # public needs no entry
        ("", "127.0.0.1", "127.0.0.1", False),
        ("127.0.0.1", "127.0.0.1", "127.0.0.1", True),
        ("127.0.0.1", "127.0.0.2", "127.0.0.2", False),
        ("127.0.0.1", "localhost", "127.0.0.1", True),  # by the address connected to
        ("127.0.0.1", "::ffff:127.0.0.1", "::ffff:127.0.0.1", True),  # mapped form of it
        ("127.0.0.0/8", "127.9.9.9", "127.9.9.9", True),
        ("10.20.0.0/16", "10.20.3.4", "10.20.3.4", True),
        ("10.20.0.0/16", "10.21.0.1", "10.21.0.1", False),
        ("mirror.internal", "mirror.internal", "10.1.2.3", True),  # by name: any address
        ("mirror.internal", "MIRROR.internal.", "10.1.2.3", True),
        ("mirror.internal", "other.internal", "10.1.2.3", False),
        ("mirror.internal", "evil.test", "169.254.169.254", False),
        ("fd00::/8", "fd00::5", "fd00::5", True),
        ("fd00::/8", "fc00::5", "fc00::5", False),
        ("0.0.0.0/0", "::1", "::1", False),  # an IPv4 range never covers IPv6
        ("::/0", "127.0.0.1", "127.0.0.1", False),
    ],
)
def test_allows(allow: str, host: str, address: str, allowed: bool) -> None:
    ip = ipaddress.ip_address(address)
    assert (refusal(host, ip, AllowList.parse(allow)) is None) is allowed


def test_refusal_names_the_host_the_kind_and_the_remedy() -> None:
    ip = ipaddress.ip_address
    assert refusal("127.0.0.2", ip("127.0.0.2"), NOTHING) == (
        "refusing to connect to 127.0.0.2, a loopback address; "
        "list it in ALLOW_PRIVATE_HOSTS to allow it"
    )
    assert refusal("metadata.test", ip("169.254.169.254"), NOTHING) == (
        "refusing to connect to metadata.test (169.254.169.254), a link-local address; "
        "list it in ALLOW_PRIVATE_HOSTS to allow it"
    )
    assert refusal("example.com", ip("93.184.216.34"), NOTHING) is None


def test_allow_list_shows_its_entries() -> None:
    assert str(AllowList.parse("127.0.0.1, b.internal, a.internal")) == (
        "a.internal,b.internal,127.0.0.1/32"
    )


# -- sessions --------------------------------------------------------------------------------------


def test_guarded_session_ignores_the_environment() -> None:
    with guarded_session() as session:
        assert session.trust_env is False  # no .netrc, no proxy from the environment
        assert isinstance(session.get_adapter("http://x/"), GuardedAdapter)
        assert isinstance(session.get_adapter("https://x/"), GuardedAdapter)
        assert is_guarded(session, "https://cdn.example/v.mp4")


def test_is_guarded_sees_through_plain_and_altered_sessions() -> None:
    with requests.Session() as plain:
        assert not is_guarded(plain, "http://x/")
    with guarded_session() as session:
        session.mount("http://cdn.example/", requests.adapters.HTTPAdapter())
        assert not is_guarded(session, "http://cdn.example/v.mp4")
        assert is_guarded(session, "http://other.example/v.mp4")
        session.trust_env = True
        assert not is_guarded(session, "http://other.example/v.mp4")
        assert not is_guarded(session, "ftp://other.example/v.mp4")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.2:9/x",
        "https://169.254.169.254/latest/meta-data/",
        "http://[::1]:9/x",
        "http://[::ffff:10.0.0.1]:9/x",
        "http://0.0.0.0:9/x",
    ],
)
def test_a_guarded_session_refuses_before_connecting(url: str) -> None:
    with (
        guarded_session(AllowList.parse("127.0.0.1")) as session,
        pytest.raises(DestinationRefused, match="ALLOW_PRIVATE_HOSTS"),
    ):
        session.get(url, timeout=1)


def test_a_guarded_session_refuses_proxies() -> None:
    with guarded_session(AllowList.parse("127.0.0.1")) as session:
        session.proxies = {"http": "http://127.0.0.1:9"}
        with pytest.raises(DestinationRefused, match="proxy"):
            session.get("http://127.0.0.1:9/x", timeout=1)


def test_the_adapter_keeps_its_allow_list_when_pickled() -> None:
    import pickle

    allow = AllowList.parse("127.0.0.1,mirror.internal")
    adapter = pickle.loads(pickle.dumps(GuardedAdapter(allow)))  # noqa: S301 - our own bytes
    assert adapter.allow == allow
