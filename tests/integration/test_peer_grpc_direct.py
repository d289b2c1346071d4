"""The gRPC peers against each other, with no eg between them.

eg's gRPC tests route ``grpc_peer.py call`` through eg to ``grpc_peer.py serve``. They are
only meaningful if the two peers agree when connected directly, so this module proves it
for all four call kinds (small, 1 MiB and 100-message payloads), error statuses with
trailers, TLS with an :authority override, and the client's own failure reporting.

The peers run on the regular-CPython venv from ``scripts/peers`` (grpcio has no
free-threaded build); the tests skip when it cannot be installed here.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO, free_port
from tests.peers.paths import (
    GRPC_ALL_CASES,
    GRPC_PEER,
    PEERS_INSTALL_TIMEOUT,
    GrpcPeerServer,
    grpc_peer_all,
    grpc_peer_call,
    peer_paths,
    peers_report,
)

# The first test may install the peers from scratch (h2spec build, apt, pip); once they are
# cached the whole module takes a few seconds.
pytestmark = pytest.mark.timeout(PEERS_INSTALL_TIMEOUT + 120)


@pytest.fixture(scope="module")
def grpc_python() -> Path:
    """The gRPC venv's interpreter; skip the module when it is not available here."""
    paths = peer_paths()
    if "grpc_python" not in paths:
        pytest.skip(f"the gRPC peer venv is unavailable:\n{peers_report()}")
    return paths["grpc_python"]


@pytest.fixture(scope="module")
def server(grpc_python: Path) -> Iterator[GrpcPeerServer]:
    """One h2c Echo server for the module."""
    with GrpcPeerServer(grpc_python) as peer:
        yield peer


@pytest.fixture(scope="module")
def tls_server(
    grpc_python: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GrpcPeerServer, Path]]:
    """An Echo server on TLS with a throwaway CA; yields it and the CA file."""
    certs = tmp_path_factory.mktemp("grpc-certs")
    made = subprocess.run(
        [str(REPO / "scripts" / "dev-certs"), str(certs)],
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"scripts/dev-certs failed (openssl?): {made.stderr.strip()}")
    with GrpcPeerServer(grpc_python, tls=(certs / "cert.pem", certs / "key.pem")) as peer:
        yield peer, certs / "ca.pem"


def _target(peer: GrpcPeerServer) -> str:
    return f"127.0.0.1:{peer.port}"


def test_all_cases(grpc_python: Path, server: GrpcPeerServer) -> None:
    """Every kind, small, large (1 MiB) and long (100 messages), matches byte for byte."""
    results = {result["name"]: result for result in grpc_peer_all(grpc_python, _target(server))}
    assert len(results) == GRPC_ALL_CASES
    failed = {name: r["code"] for name, r in results.items() if not r["match"]}
    assert not failed, failed
    for name, result in results.items():
        if name != "unary_status":
            assert result["code"] == "OK", (name, result["details"])
    assert results["unary_small"]["messages"][0]["data"] == "hello"
    assert results["unary_small"]["trailers"]["x-eg-trailer"] == "done"
    assert [m["len"] for m in results["unary_large"]["messages"]] == [1 << 20]
    assert len(results["server_stream_long"]["messages"]) == 100
    assert len(results["bidi_long"]["messages"]) == 100
    assert [m["len"] for m in results["bidi_large"]["messages"]] == [1 << 20] * 2
    status = results["unary_status"]
    assert (status["code"], status["details"]) == ("PERMISSION_DENIED", "asked for 7")
    assert status["messages"] == []


@pytest.mark.parametrize(
    ("kind", "args", "replies"),
    [
        ("unary", ("hello",), 1),
        ("server_stream", ("5", "70000"), 5),
        ("client_stream", ("5", "70000"), 1),
        ("bidi", ("5", "70000"), 5),
    ],
)
def test_call_each_kind(
    grpc_python: Path, server: GrpcPeerServer, kind: str, args: tuple[str, ...], replies: int
) -> None:
    """``call`` per kind, as eg's tests will use it; messages span several DATA frames."""
    result = grpc_peer_call(grpc_python, _target(server), kind, *args)
    assert (result["code"], result["match"]) == ("OK", True), result["details"]
    assert len(result["messages"]) == replies
    if kind == "client_stream":
        count, total, digest = result["messages"][0]["data"].split(":")
        assert (count, total, len(digest)) == ("5", "350000", 64)


def test_error_status_keeps_trailers(grpc_python: Path, server: GrpcPeerServer) -> None:
    """A requested error arrives as that status, with its message and custom trailer."""
    result = grpc_peer_call(grpc_python, _target(server), "unary", "status:14")
    assert result["code"] == "UNAVAILABLE"
    assert result["details"] == "asked for 14"
    assert result["trailers"]["x-eg-trailer"] == "done"
    assert result["match"]


def test_tls_with_authority(grpc_python: Path, tls_server: tuple[GrpcPeerServer, Path]) -> None:
    """TLS (ALPN h2) with the CA trusted and the certificate's name as :authority."""
    peer, ca = tls_server
    for kind, args in (("unary", ("size:100000",)), ("bidi", ("3", "1000"))):
        result = grpc_peer_call(
            grpc_python, _target(peer), kind, *args, tls_ca=ca, authority="localhost"
        )
        assert (result["code"], result["match"]) == ("OK", True), (kind, result["details"])


def test_unreachable_target_is_a_status(grpc_python: Path) -> None:
    """Nothing listening is reported as UNAVAILABLE in the JSON, with exit status 0."""
    result = grpc_peer_call(grpc_python, f"127.0.0.1:{free_port()}", "unary", "x", timeout=5)
    assert result["code"] == "UNAVAILABLE"
    assert not result["match"]


def test_usage_error_exits_nonzero(grpc_python: Path) -> None:
    """Bad arguments are the only non-zero exit (argparse's 2)."""
    proc = subprocess.run(
        [str(grpc_python), str(GRPC_PEER), "call", "--target", "127.0.0.1:1", "bidi", "x", "1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "N and SIZE" in proc.stderr
