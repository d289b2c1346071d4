"""gRPC through eg: a real grpcio client and server (regular CPython) on either side.

The four call kinds pass over an HTTP/2 front (h2c and TLS with ALPN) to h2c and TLS h2
backends, with grpc-status, grpc-message and custom trailers intact. When eg itself ends
a call (no backend, its deadline, a limit) the client gets a gRPC status, not an HTML
error page.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Gateway, StartGateway, gateway_config
from tests.integration.test_tls import make_certs
from tests.peers.paths import (
    GRPC_ALL_CASES,
    GrpcPeerServer,
    grpc_peer_all,
    grpc_peer_call,
    peer_paths,
    peers_report,
)


@pytest.fixture(scope="module")
def grpc_python() -> Path:
    paths = peer_paths()
    if "grpc_python" not in paths:
        pytest.skip(f"the gRPC peer venv is unavailable:\n{peers_report()}")
    return paths["grpc_python"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certs(tmp_path_factory.mktemp("certs"), "tls.test")


@pytest.fixture(scope="module")
def backends(grpc_python: Path, certs: Path) -> Iterator[tuple[GrpcPeerServer, GrpcPeerServer]]:
    """An h2c and a TLS Echo server."""
    with GrpcPeerServer(grpc_python) as plain, \
            GrpcPeerServer(grpc_python, tls=(certs / "cert.pem", certs / "key.pem")) as tls:
        yield plain, tls


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def grpc_gateway(backends: tuple[GrpcPeerServer, GrpcPeerServer], certs: Path,
                 gateway_factory: StartGateway) -> Iterator[Gateway]:
    plain, tls = backends
    doc = gateway_config(
        [plain.port],
        clusters=[
            {"name": "tls", "protocol": "h2", "endpoints": [f"127.0.0.1:{tls.port}"],
             "tls": {"ca_file": str(certs / "ca.pem"), "server_name": "localhost"}},
            {"name": "dead", "protocol": "h2c", "endpoints": [f"127.0.0.1:{free_port()}"]},
        ],
        routes=[
            {"host": "tls.test", "cluster": "tls"},
            {"host": "dead.test", "cluster": "dead"},
            {"host": "*", "cluster": "origin"},
        ],
    )
    doc["clusters"][0]["protocol"] = "h2c"
    doc["listeners"] = [
        {"name": "http", "address": "127.0.0.1:0", "protocol": "h2c"},
        {"name": "https", "address": "127.0.0.1:0", "protocol": "https",
         "tls": {"certificates": [{"cert": str(certs / "cert.pem"),
                                   "key": str(certs / "key.pem")}]}},
    ]
    yield gateway_factory(doc)


FRONTS = ["h2c", "tls"]
BACKS = ["h2c", "tls"]


def _call_args(gw: Gateway, certs: Path, front: str, back: str) -> dict[str, object]:
    """Where the client connects; ``:authority`` (and TLS name) picks the backend."""
    authority = "tls.test" if back == "tls" else "localhost"
    if front == "tls":
        return {"target": f"127.0.0.1:{gw.ports['https']}", "tls_ca": certs / "ca.pem",
                "authority": authority}
    return {"target": f"127.0.0.1:{gw.ports['http']}", "authority": authority}


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("back", BACKS)
def test_all_call_kinds_through_eg(grpc_python: Path, grpc_gateway: Gateway, certs: Path,
                                   front: str, back: str) -> None:
    args = _call_args(grpc_gateway, certs, front, back)
    target = str(args.pop("target"))
    results = {r["name"]: r for r in grpc_peer_all(grpc_python, target, **args)}  # type: ignore[arg-type]
    assert len(results) == GRPC_ALL_CASES
    failed = {name: (r["code"], r["details"]) for name, r in results.items() if not r["match"]}
    assert not failed, failed
    assert results["unary_small"]["trailers"]["x-eg-trailer"] == "done"
    status = results["unary_status"]
    assert (status["code"], status["details"]) == ("PERMISSION_DENIED", "asked for 7")
    assert grpc_gateway.metric("eg_unhandled_exceptions_total") == 0


def test_no_backend_is_unavailable(grpc_python: Path, grpc_gateway: Gateway) -> None:
    result = grpc_peer_call(grpc_python, f"127.0.0.1:{grpc_gateway.ports['http']}", "unary",
                            "x", authority="dead.test")
    assert result["code"] == "UNAVAILABLE", result
    assert "connect" in result["details"]


def test_unrouted_is_unimplemented(grpc_python: Path, backends: tuple[GrpcPeerServer, ...],
                                   start_gateway: StartGateway) -> None:
    doc = gateway_config([backends[0].port], routes=[{"host": "only.test", "cluster": "origin"}])
    doc["listeners"] = [{"name": "http", "address": "127.0.0.1:0", "protocol": "h2c"}]
    gw = start_gateway(doc)
    result = grpc_peer_call(grpc_python, f"127.0.0.1:{gw.port}", "unary", "x")
    assert result["code"] == "UNIMPLEMENTED", result


def test_deadline_clamped_by_eg(grpc_python: Path, start_gateway: StartGateway) -> None:
    """A backend that accepts and never answers: eg ends the call at ``grpc_max``."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        doc = gateway_config([silent.getsockname()[1]], timeouts={"grpc_max": 1.0})
        doc["clusters"][0]["protocol"] = "h2c"
        doc["listeners"] = [{"name": "http", "address": "127.0.0.1:0", "protocol": "h2c"}]
        gw = start_gateway(doc)
        result = grpc_peer_call(grpc_python, f"127.0.0.1:{gw.port}", "unary", "x",
                                timeout=20)
    assert result["code"] == "DEADLINE_EXCEEDED", result
    assert "deadline" in result["details"]
    assert gw.metric("eg_limit_hits_total", kind="grpc_deadline") == 1


def test_body_limit_is_resource_exhausted(grpc_python: Path,
                                          backends: tuple[GrpcPeerServer, ...],
                                          start_gateway: StartGateway) -> None:
    doc = gateway_config([backends[0].port], limits={"max_request_body": 65536})
    doc["clusters"][0]["protocol"] = "h2c"
    doc["listeners"] = [{"name": "http", "address": "127.0.0.1:0", "protocol": "h2c"}]
    gw = start_gateway(doc)
    target = f"127.0.0.1:{gw.port}"
    small = grpc_peer_call(grpc_python, target, "unary", "size:1000")
    assert small["code"] == "OK", small
    big = grpc_peer_call(grpc_python, target, "unary", "size:1000000")
    assert big["code"] == "RESOURCE_EXHAUSTED", big
