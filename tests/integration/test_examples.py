"""Every file in config/examples boots and serves, with real backends behind it.

Each example is copied next to freshly made development certificates (the paths in the
files are relative), its addresses moved to free loopback ports and its endpoints to
origins started here: HTTP/1.1 clusters to the HTTP/1.1 origin, h2c and h2 clusters to
HTTP/2 origins (TLS for h2), h3 clusters to the HTTP/3 origin, the gRPC example's to a
real grpcio server. Then every listener is asked for the example's first route with the
client its protocol calls for (curl, or the HTTP/3 client for quic listeners), and the
gateway must answer it and stop cleanly.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eg.demo.origin_h2 import start_h2_origin
from eg.demo.origin_h3 import start_h3_origin
from tests.h3client import H3Client
from tests.helpers import REPO, OriginProcess
from tests.integration.conftest import (
    Gateway,
    check_stopped_cleanly,
    curl,
    to_toml,
)
from tests.integration.test_tls import make_certs
from tests.peers.paths import GrpcPeerServer, grpc_peer_call, peer_paths

EXAMPLES = sorted((REPO / "config" / "examples").glob("*.toml"))


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory laid out like the repository: certs/ and config/examples/."""
    root = tmp_path_factory.mktemp("repo")
    make_certs(root / "certs")
    (root / "config" / "examples").mkdir(parents=True)
    return root


@pytest.fixture(scope="module")
def backends(origins: OriginProcess, tree: Path) -> Iterator[dict[str, int]]:
    certs = tree / "certs"
    plain = start_h2_origin("127.0.0.1", 0, "h2c")
    tls = start_h2_origin("127.0.0.1", 0, "h2", cert=str(certs / "cert.pem"),
                          key=str(certs / "key.pem"))
    h3 = start_h3_origin("127.0.0.1", 0, "h3", cert=str(certs / "cert.pem"),
                         key=str(certs / "key.pem"))
    ports = {"h1": origins.ports[0], "h1s": origins.ports[0], "h2c": plain.port,
             "h2": tls.port, "h3": h3.port}
    grpc_python = peer_paths().get("grpc_python")
    server = GrpcPeerServer(grpc_python) if grpc_python is not None else None
    if server is not None:
        ports["grpc"] = server.port
    try:
        yield ports
    finally:
        plain.stop()
        tls.stop()
        h3.stop()
        if server is not None:
            server.stop()


def rewrite(doc: dict[str, Any], ports: dict[str, int], grpc: bool) -> dict[str, Any]:
    """The example on free loopback ports with its endpoints on our origins."""
    for listener in doc["listeners"]:
        listener["address"] = "127.0.0.1:0"
    observability = doc.setdefault("observability", {})
    observability["metrics_bind"] = "127.0.0.1:0"
    observability["log_format"] = "json"  # what the Gateway helper reads
    for cluster in doc.get("clusters", []):
        protocol = cluster.get("protocol", "h1")
        port = ports["grpc"] if grpc and "grpc" in ports else ports[protocol]
        cluster["endpoints"] = [f"127.0.0.1:{port}"]
        if protocol in ("h1s", "h2", "h3"):
            tls = cluster.setdefault("tls", {})
            tls["server_name"] = "localhost"
    doc.setdefault("runtime", {})["pin"] = False
    return doc


def request(gw: Gateway, listener: dict[str, Any], route: dict[str, Any], ca: Path) -> bytes:
    """The status code of one request for ``route`` on ``listener``."""
    port = gw.ports[listener["name"]]
    host = route.get("host", "*")
    host = "localhost" if host == "*" else host.replace("*", "www")
    path = route.get("path_prefix", "/")
    protocol = listener.get("protocol", "h1")
    if protocol == "quic":
        with H3Client("127.0.0.1", port, ca_file=str(ca), server_name="localhost") as client:
            resp = client.request("GET", path, authority=host)
        return b"%d" % resp.status
    if protocol in ("h1s", "https"):
        version = "--http2" if protocol == "https" else "--http1.1"
        # The certificate is for localhost: SNI localhost, and a Host to route by.
        args = [version, "--cacert", str(ca), f"https://localhost:{port}{path}"]
        if host != "localhost":
            return b"skip"  # SNI != Host would be a correct 421, not this test's point
    else:
        version = "--http2-prior-knowledge" if protocol == "h2c" else "--http1.1"
        args = [version, "-H", f"Host: {host}", f"http://127.0.0.1:{port}{path}"]
    return curl("-o", "/dev/null", "-w", "%{http_code}", *args).stdout


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_boots_and_serves(example: Path, tree: Path, backends: dict[str, int]) -> None:
    is_grpc = example.name == "grpc.toml"
    if is_grpc and "grpc" not in backends:
        pytest.skip("the gRPC peer venv is unavailable")
    doc = rewrite(tomllib.loads(example.read_text()), backends, is_grpc)
    path = tree / "config" / "examples" / example.name
    path.write_text(to_toml(doc))
    gw = Gateway(path)
    try:
        route = doc["routes"][0]
        for listener in doc["listeners"]:
            if is_grpc:
                tls = listener.get("protocol") == "https"
                result = grpc_peer_call(
                    peer_paths()["grpc_python"],
                    f"127.0.0.1:{gw.ports[listener['name']]}", "unary", "hello",
                    tls_ca=tree / "certs" / "ca.pem" if tls else None,
                    authority="localhost")
                assert (result["code"], result["match"]) == ("OK", True), result
                continue
            status = request(gw, listener, route, tree / "certs" / "ca.pem")
            assert status in (b"200", b"skip"), (listener["name"], status, gw.stderr[-2000:])
    finally:
        check_stopped_cleanly(gw)
