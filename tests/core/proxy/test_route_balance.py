"""RouteTable and ClusterState: pure, no sockets, fake time."""

from __future__ import annotations

import pytest

from eg.core.config import ClusterConfig, EndpointConfig, HealthConfig, RouteConfig
from eg.core.proxy.balance import ClusterState, split_address
from eg.core.proxy.route import RouteTable


def table(*routes: tuple[str, str, str]) -> RouteTable:
    return RouteTable(tuple(RouteConfig(host=h, path_prefix=p, cluster=c) for h, p, c in routes))


def test_exact_host_beats_wildcard_beats_catch_all() -> None:
    t = table(("*", "/", "any"), ("*.example.com", "/", "wild"), ("api.example.com", "/", "exact"))
    assert t.match(b"api.example.com", b"/x") == "exact"
    assert t.match(b"www.example.com", b"/x") == "wild"
    assert t.match(b"example.com", b"/x") == "any"  # "*.example.com" needs a label
    assert t.match(b"other.org", b"/") == "any"


def test_host_is_case_insensitive_and_port_is_ignored() -> None:
    t = table(("API.example.com", "/", "exact"))
    assert t.match(b"api.EXAMPLE.com:8080", b"/") == "exact"
    assert t.match(b"[::1]:8080", b"/") is None


def test_ipv6_literal_host() -> None:
    t = table(("[::1]", "/", "v6"))
    assert t.match(b"[::1]:443", b"/") == "v6"
    assert t.match(b"[::1]", b"/") == "v6"


def test_longest_prefix_wins_then_file_order() -> None:
    t = table(("*", "/", "root"), ("*", "/api/", "api"), ("*", "/api/", "second"),
              ("*", "/api/v2/", "v2"))
    assert t.match(b"h", b"/api/v2/users") == "v2"
    assert t.match(b"h", b"/api/v1") == "api"
    assert t.match(b"h", b"/index.html") == "root"


def test_longest_wildcard_suffix_first() -> None:
    t = table(("*.example.com", "/", "outer"), ("*.a.example.com", "/", "inner"))
    assert t.match(b"x.a.example.com", b"/") == "inner"
    assert t.match(b"x.b.example.com", b"/") == "outer"


def test_exact_host_without_matching_prefix_falls_through() -> None:
    t = table(("h.example", "/only/", "narrow"), ("*", "/", "any"))
    assert t.match(b"h.example", b"/else") == "any"


def test_no_route() -> None:
    assert table(("a", "/", "x")).match(b"b", b"/") is None


def cluster(*weights: int, max_failures: int = 2, eject: float = 10.0) -> ClusterState:
    eps = tuple(EndpointConfig(address=f"127.0.0.1:{9000 + i}", weight=w)
                for i, w in enumerate(weights))
    return ClusterState(ClusterConfig(name="c", endpoints=eps,
                                      health=HealthConfig(max_failures=max_failures,
                                                          eject_seconds=eject)))


def test_round_robin_honours_weights() -> None:
    c = cluster(1, 2)
    picks = [c.pick(0.0).port for _ in range(6)]  # type: ignore[union-attr]
    assert sorted(picks) == [9000, 9000, 9001, 9001, 9001, 9001]


def test_offset_spreads_workers() -> None:
    eps = (EndpointConfig(address="127.0.0.1:1"), EndpointConfig(address="127.0.0.1:2"))
    cfg = ClusterConfig(name="c", endpoints=eps)
    first = {ClusterState(cfg, offset=i).pick(0.0).port for i in range(2)}  # type: ignore[union-attr]
    assert first == {1, 2}


def test_consecutive_failures_eject_until_timeout() -> None:
    c = cluster(1, 1, max_failures=2, eject=5.0)
    bad = c.endpoints[0]
    c.report_failure(bad, 0.0)
    assert bad.ejected_until == 0.0
    c.report_failure(bad, 1.0)
    assert bad.ejected_until == 6.0
    assert {c.pick(2.0).port for _ in range(4)} == {9001}  # type: ignore[union-attr]
    assert {c.pick(6.0).port for _ in range(4)} == {9000, 9001}  # type: ignore[union-attr]


def test_success_resets_failures() -> None:
    c = cluster(1, max_failures=2)
    ep = c.endpoints[0]
    c.report_failure(ep, 0.0)
    c.report_success(ep)
    c.report_failure(ep, 0.0)
    assert ep.ejected_until == 0.0


def test_all_ejected_means_none_and_empty_cluster_means_none() -> None:
    c = cluster(1, max_failures=1)
    c.report_failure(c.endpoints[0], 0.0)
    assert c.pick(1.0) is None
    empty = ClusterState(ClusterConfig(name="e", endpoints=()))
    assert empty.pick(0.0) is None


@pytest.mark.parametrize(("address", "expected"), [
    ("127.0.0.1:80", ("127.0.0.1", 80)),
    ("[::1]:8443", ("::1", 8443)),
    ("backend.internal:9000", ("backend.internal", 9000)),
])
def test_split_address(address: str, expected: tuple[str, int]) -> None:
    assert split_address(address) == expected
    ep = cluster(1).endpoints[0]
    assert ep.key == "127.0.0.1:9000"
