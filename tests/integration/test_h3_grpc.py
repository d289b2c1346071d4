"""gRPC over an HTTP/3 front: gRPC-framed requests from an HTTP/3 client, through eg, to a
real grpcio server (HTTP/2 behind eg).

No gRPC library speaks HTTP/3 here, so the client is ours (``tests/h3client.py``) and the
gRPC framing is written out by hand: a 5-byte prefix (compressed flag, big-endian length)
per message, ``content-type: application/grpc``, ``te: trailers``. The server is the
grpcio peer of ``tests/peers/grpc_peer.py`` (raw-bytes messages, service
``eg.test.Echo``), so what comes back - messages, ``grpc-status``, ``grpc-message`` and
the custom trailer - is grpcio's, carried across eg's H3 → H2 translation.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.h3client import H3Client, H3Response
from tests.integration.conftest import Gateway, StartGateway, gateway_config
from tests.integration.test_tls import make_certs
from tests.peers.paths import GrpcPeerServer, peer_paths, peers_report

SERVICE = "/eg.test.Echo/"
#: grpc_peer.payload: message i of n bytes is 0..250 rotated by i.
PERIOD = 251


def frame(*messages: bytes) -> bytes:
    """gRPC length-prefixed messages (uncompressed)."""
    return b"".join(b"\x00" + struct.pack(">I", len(m)) + m for m in messages)


def unframe(data: bytes) -> list[bytes]:
    out = []
    while data:
        assert data[0] == 0, data[:5]
        (size,) = struct.unpack(">I", data[1:5])
        out.append(data[5 : 5 + size])
        data = data[5 + size :]
    return out


def payload(index: int, size: int) -> bytes:
    start = index % PERIOD
    block = bytes(range(start, PERIOD)) + bytes(range(start))
    return (block * (size // PERIOD + 1))[:size]


@pytest.fixture(scope="module")
def grpc_gateway(tmp_path_factory: pytest.TempPathFactory,
                 gateway_factory: StartGateway) -> Iterator[tuple[Gateway, Path]]:
    python = peer_paths().get("grpc_python")
    if python is None:
        pytest.skip(f"the gRPC peer venv is unavailable:\n{peers_report()}")
    certs = make_certs(tmp_path_factory.mktemp("certs"))
    with GrpcPeerServer(python) as server:
        doc = gateway_config(
            [], clusters=[
                {"name": "grpc", "protocol": "h2c", "endpoints": [f"127.0.0.1:{server.port}"]},
                {"name": "dead", "protocol": "h2c", "endpoints": ["127.0.0.1:1"]},
            ],
            routes=[{"host": "dead.test", "cluster": "dead"}, {"host": "*", "cluster": "grpc"}])
        doc["clusters"] = [c for c in doc["clusters"] if c["name"] != "origin"]
        doc["listeners"] = [{
            "name": "quic", "address": "127.0.0.1:0", "protocol": "quic",
            "tls": {"certificates": [{"cert": str(certs / "cert.pem"),
                                      "key": str(certs / "key.pem")}]}}]
        yield gateway_factory(doc), certs


def call(gw: Gateway, certs: Path, method: str, *messages: bytes,
         authority: str | None = None, metadata: tuple[tuple[bytes, bytes], ...] = ()
         ) -> H3Response:
    headers = [(b"content-type", b"application/grpc"), (b"te", b"trailers"), *metadata]
    with H3Client("127.0.0.1", gw.ports["quic"], ca_file=str(certs / "ca.pem")) as client:
        return client.request("POST", SERVICE + method, authority=authority,
                              headers=headers, body=frame(*messages))


def test_unary_echo_with_trailers(grpc_gateway: tuple[Gateway, Path]) -> None:
    gw, certs = grpc_gateway
    resp = call(gw, certs, "Unary", b"hello over h3")
    assert resp.status == 200 and resp.header(b"content-type") == b"application/grpc"
    assert unframe(resp.body) == [b"hello over h3"]
    assert resp.trailer(b"grpc-status") == b"0"
    assert resp.trailer(b"x-eg-trailer") == b"done"


def test_unary_error_status_passes_through(grpc_gateway: tuple[Gateway, Path]) -> None:
    gw, certs = grpc_gateway
    resp = call(gw, certs, "Unary", b"status:5")
    assert resp.status == 200 and resp.body == b""
    # grpcio answers an error trailers-only: the status is in the (only) HEADERS.
    assert resp.header(b"grpc-status") == b"5"
    assert resp.header(b"grpc-message") == b"asked for 5"


def test_server_streaming(grpc_gateway: tuple[Gateway, Path]) -> None:
    gw, certs = grpc_gateway
    resp = call(gw, certs, "ServerStream", b"20:100000")
    assert unframe(resp.body) == [payload(i, 100000) for i in range(20)]
    assert resp.trailer(b"grpc-status") == b"0"


def test_client_streaming_and_bidi(grpc_gateway: tuple[Gateway, Path]) -> None:
    gw, certs = grpc_gateway
    messages = [payload(i, 50000) for i in range(30)]
    resp = call(gw, certs, "ClientStream", *messages)
    digest = hashlib.sha256(b"".join(messages)).hexdigest()
    assert unframe(resp.body) == [f"30:{30 * 50000}:{digest}".encode()]
    echoed = call(gw, certs, "Bidi", *messages)
    assert unframe(echoed.body) == messages
    assert echoed.trailer(b"grpc-status") == b"0"


def test_eg_failures_are_grpc_statuses(grpc_gateway: tuple[Gateway, Path]) -> None:
    """eg's own failure toward a gRPC client over HTTP/3 is a gRPC status, not a page."""
    gw, certs = grpc_gateway
    resp = call(gw, certs, "Unary", b"x", authority="dead.test")
    assert resp.status == 200
    assert resp.header(b"grpc-status") == b"14"  # UNAVAILABLE, trailers-only
    assert gw.metric("eg_unhandled_exceptions_total") == 0
