"""scheduler/store/endpoints.py: the --etcd flag parsed, resolved and turned into one gRPC target."""

from __future__ import annotations

import pytest

from scheduler.store.endpoints import Endpoint, grpc_target, parse_endpoints, resolve


def test_urls_become_one_ipv4_target() -> None:
    endpoints = parse_endpoints("http://127.0.0.1:2379, http://127.0.0.1:2479,127.0.0.2")
    assert endpoints == (Endpoint("127.0.0.1", 2379), Endpoint("127.0.0.1", 2479),
                         Endpoint("127.0.0.2", 2379))
    assert grpc_target(endpoints) == "ipv4:127.0.0.1:2379,127.0.0.1:2479,127.0.0.2:2379"


def test_ipv6_and_single_names() -> None:
    v6 = parse_endpoints("http://[::1]:2379,http://[fd00::2]:2379")
    assert grpc_target(v6) == "ipv6:[::1]:2379,[fd00::2]:2379"
    assert str(v6[0]) == "http://[::1]:2379"
    assert grpc_target(parse_endpoints("http://etcd.internal:2379")) == "dns:///etcd.internal:2379"


def test_several_names_are_resolved_to_addresses_of_one_family() -> None:
    table = {"a": ["10.0.0.1", "fd00::1"], "b": ["fd00::2"], "c": ["10.0.0.3", "10.0.0.4"]}
    resolved = resolve(parse_endpoints("http://a:2379,http://c:2379,http://10.0.0.1:2379"),
                       lambda host, port: table[host])
    assert grpc_target(resolved) == "ipv4:10.0.0.1:2379,10.0.0.3:2379,10.0.0.4:2379"
    single = parse_endpoints("http://a:2379")
    assert resolve(single, lambda host, port: table[host]) == single  # left to gRPC's resolver
    with pytest.raises(ValueError, match="cannot be mixed"):
        grpc_target(resolve(parse_endpoints("http://a:2379,http://b:2379"), lambda host, port: table[host]))

    def unknown(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    with pytest.raises(ValueError, match="cannot resolve x"):
        resolve(parse_endpoints("http://x:1,http://y:2"), unknown)


@pytest.mark.parametrize(("flag", "message"), [
    ("https://127.0.0.1:2379", "TLS to etcd is not supported yet"),
    ("unix:///run/etcd.sock", "expected http://HOST:PORT"),
    ("http://127.0.0.1:2379/v3", "expected http://HOST:PORT"),
    ("http://127.0.0.1:99999", "bad port"),
    ("http://127.0.0.1:2379,", "empty endpoint"),
    ("http://:2379", "no host"),
    ("http://127.0.0.1:2379,127.0.0.1:2379", "listed twice"),
])
def test_bad_flags_are_refused_with_the_item(flag: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_endpoints(flag)
