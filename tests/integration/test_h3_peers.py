"""eg between independent HTTP/3 implementations, so qh3 is not the only HTTP/3 in the loop.

``test_h3_cells.py`` drives every cell with our own qh3 client and our own origins; here
the peer on one side of eg is someone else's code (``tests/peers/h3_peers.py``):

- Front: ngtcp2's ``gtlsclient`` and libcurl (ngtcp2 + nghttp3, via pycurl) → eg's
  ``quic`` listener → the HTTP/1.1, HTTP/2-over-TLS and HTTP/3 demo origins: GET with the
  forwarding headers, 0 B / 1 MiB / 8 MiB downloads and a 1 MiB upload by SHA-256, HEAD,
  204 and 304, and an upstream reset mid-body that the client must see as an error.
- Back: an ``h3`` cluster → Caddy (certificate verified against the test CA), from the
  HTTP/1.1, HTTP/2 and HTTP/3 (qh3 and libcurl) fronts: static files by SHA-256, 204, and
  a 1 MiB body echoed byte for byte. Caddy's ``x-eg-proto`` shows it was reached over
  HTTP/3.
- Certificate verification to an HTTP/3 backend: a cluster trusting another CA answers
  502 ``x-eg-error: tls_verify`` and counts a ``tls_verify`` backend error;
  ``verify = false`` reaches the same Caddy.
- Two workers: 20 new connections in a row all succeed, and both workers serve them.

Every test skips (through the peer wrappers) when ``scripts/peers`` could not install the
peer it needs; nothing else makes one skip.
"""

from __future__ import annotations

import hashlib
import random
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from eg.core.quic_steer import CID_LENGTH, worker_of
from eg.demo.origin import pattern
from eg.demo.origin_h2 import start_h2_origin
from eg.demo.origin_h3 import start_h3_origin
from tests.h3client import H3Client as QuicClient
from tests.helpers import OriginProcess
from tests.integration.conftest import (
    Doc,
    Gateway,
    OriginTally,
    StartGateway,
    curl,
    gateway_config,
    pattern_sha256,
)
from tests.integration.test_tls import make_certs
from tests.peers.h3_peers import (
    CaddyH3Origin,
    H3Client,
    PeerResponse,
    curl_h3,
    ngtcp2_request,
)
from tests.peers.paths import PEERS_INSTALL_TIMEOUT

# The first test may install the peers from scratch; warm, the module takes well under a
# minute.
pytestmark = pytest.mark.timeout(PEERS_INSTALL_TIMEOUT + 120)

MiB = 1 << 20
#: The independent HTTP/3 clients of the front tests.
CLIENTS: dict[str, H3Client] = {"curl": curl_h3, "ngtcp2": ngtcp2_request}
#: The demo origins behind the front tests, by the host name that routes to each.
BACKS = {"h1": "h1.test", "h2": "h2.test", "h3": "h3.test"}
#: Clusters to Caddy, by the host name that routes to each: trusting the CA that signed
#: Caddy's certificate, trusting another CA, and another CA with ``verify = false``.
CADDY_HOSTS = {"caddy": "caddy.test", "wrong_ca": "wrong-ca.test", "no_verify": "no-verify.test"}
#: The fronts of the Caddy tests: curl over HTTP/1.1 and HTTP/2, qh3 and libcurl over HTTP/3.
FRONTS = ["h1", "h2", "h3-qh3", "h3-curl"]
#: What curl's %{http_version} says for each front (libcurl's own report for h3-curl).
FRONT_VERSIONS = {"h1": "1.1", "h2": "2", "h3-qh3": "3", "h3-curl": "3"}
# Deterministic random bytes: no pattern a broken transfer could reproduce by luck.
STATIC = {"1m.bin": random.Random(1).randbytes(MiB), "8m.bin": random.Random(8).randbytes(8 * MiB)}
UPLOAD = random.Random(5).randbytes(MiB)
#: Sequential new connections in the two-worker test; the kernel's reuseport hash puts
#: them all on one worker with probability 2**-19.
SEQUENTIAL = 20
#: How each client reports a stream the server reset (see h3_peers).
RESET_SEEN = re.compile(r"reset by server|stream closed with HTTP/3 error code")
#: gtlsclient's log line of a packet from the server (whose SCID eg chose).
_NGTCP2_SERVER_SCID = re.compile(r" pkt rx .* scid=0x([0-9a-f]+) .*type=Handshake")
#: The first byte of a QUIC short header: worker_of reads the DCID that follows it.
SHORT_HEADER = b"\x40"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CA and a leaf for localhost and every host name here (eg, origins and Caddy)."""
    return make_certs(tmp_path_factory.mktemp("certs"), *BACKS.values(), *CADDY_HOSTS.values())


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, unrelated CA: Caddy's certificate does not chain to it."""
    return make_certs(tmp_path_factory.mktemp("other-certs")) / "ca.pem"


def listeners(certs: Path, *protocols: str) -> list[Doc]:
    """Listeners named after their protocol (``http`` is h1), with the test certificate."""
    certificates = [{"cert": str(certs / "cert.pem"), "key": str(certs / "key.pem")}]
    out: list[Doc] = []
    for protocol in protocols:
        listener: Doc = {"name": protocol, "address": "127.0.0.1:0"}
        if protocol == "http":
            listener["protocol"] = "h1"
        else:
            listener.update(protocol=protocol, tls={"certificates": certificates})
        out.append(listener)
    return out


@pytest.fixture(scope="module")
def front_gw(origins: OriginProcess, certs: Path,
             gateway_factory: StartGateway) -> Iterator[Gateway]:
    """eg's quic listener in front of the HTTP/1.1, HTTP/2 (TLS) and HTTP/3 demo origins."""
    cert, key = str(certs / "cert.pem"), str(certs / "key.pem")
    h2 = start_h2_origin("127.0.0.1", 0, "h2", cert=cert, key=key)
    h3 = start_h3_origin("127.0.0.1", 0, "h3", cert=cert, key=key)
    try:
        tls = {"ca_file": str(certs / "ca.pem"), "server_name": "localhost"}
        doc = gateway_config(
            origins.ports[:1],
            clusters=[
                {"name": "h2", "protocol": "h2", "endpoints": [f"127.0.0.1:{h2.port}"],
                 "tls": tls},
                {"name": "h3", "protocol": "h3", "endpoints": [f"127.0.0.1:{h3.port}"],
                 "tls": tls},
            ],
            routes=[
                {"host": BACKS["h2"], "cluster": "h2"},
                {"host": BACKS["h3"], "cluster": "h3"},
                {"host": "*", "cluster": "origin"},
            ],
        )
        doc["listeners"] = listeners(certs, "quic")
        yield gateway_factory(doc)
    finally:
        h2.stop()
        h3.stop()


@pytest.fixture(scope="module")
def caddy(certs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CaddyH3Origin]:
    """Caddy with the test certificate, serving STATIC under /static/."""
    with CaddyH3Origin(certs / "cert.pem", certs / "key.pem",
                       directory=tmp_path_factory.mktemp("caddy"), files=STATIC) as origin:
        yield origin


def caddy_config(caddy: CaddyH3Origin, certs: Path, other_ca: Path, *clusters: str,
                 workers: int = 2) -> Doc:
    """eg (HTTP/1.1, HTTP/2 over TLS and HTTP/3 listeners) with h3 ``clusters`` to Caddy.

    Each cluster (a key of CADDY_HOSTS) is routed to by its host name.
    """
    tls = {
        "caddy": {"ca_file": str(certs / "ca.pem"), "server_name": "localhost"},
        "wrong_ca": {"ca_file": str(other_ca), "server_name": "localhost"},
        "no_verify": {"ca_file": str(other_ca), "server_name": "localhost", "verify": False},
    }
    doc = gateway_config([], workers=workers)
    doc["clusters"] = [{"name": name, "protocol": "h3",
                        "endpoints": [f"{caddy.host}:{caddy.port}"], "tls": tls[name]}
                       for name in clusters]
    doc["routes"] = [{"host": CADDY_HOSTS[name], "cluster": name} for name in clusters]
    doc["listeners"] = listeners(certs, "http", "https", "quic")
    return doc


@pytest.fixture(scope="module")
def caddy_gw(caddy: CaddyH3Origin, certs: Path, other_ca: Path,
             gateway_factory: StartGateway) -> Gateway:
    """eg in front of Caddy over the verified h3 cluster ``caddy``."""
    return gateway_factory(caddy_config(caddy, certs, other_ca, "caddy"))


@pytest.fixture(scope="module")
def wrong_ca_gw(caddy: CaddyH3Origin, certs: Path, other_ca: Path,
                gateway_factory: StartGateway) -> Gateway:
    """eg whose only cluster to Caddy trusts another CA (so no connection to share)."""
    return gateway_factory(caddy_config(caddy, certs, other_ca, "wrong_ca"))


@pytest.fixture(scope="module")
def no_verify_gw(caddy: CaddyH3Origin, certs: Path, other_ca: Path,
                 gateway_factory: StartGateway) -> Gateway:
    """eg whose only cluster to Caddy trusts another CA with ``verify = false``."""
    return gateway_factory(caddy_config(caddy, certs, other_ca, "no_verify"))


@pytest.fixture(params=sorted(CLIENTS))
def client(request: pytest.FixtureRequest) -> H3Client:
    """Each independent HTTP/3 client in turn."""
    return CLIENTS[request.param]


def no_unhandled(gw: Gateway) -> None:
    assert gw.metric("eg_unhandled_exceptions_total") == 0, gw.stderr[-5000:]


# -- 1. independent clients in front ----------------------------------------------------------


def peer_request(client: H3Client, gw: Gateway, certs: Path, host: str, path: str, *,
                 method: str = "GET", body: bytes | None = None) -> PeerResponse:
    """One request from an independent client to eg's quic listener, for ``host``."""
    port = gw.ports["quic"]
    response = client(f"https://{host}:{port}{path}", ca_file=str(certs / "ca.pem"),
                      method=method, body=body, connect=f"127.0.0.1:{port}", timeout=30.0)
    assert response.http_version == "3"
    return response


def clean(response: PeerResponse) -> tuple[int, str | None]:
    """(status, error), to assert a clean end with the client's diagnostics on failure."""
    return response.status, response.error


back = pytest.mark.parametrize("back", sorted(BACKS))


@back
def test_get_carries_forwarding_headers(client: H3Client, front_gw: Gateway, certs: Path,
                                        back: str) -> None:
    def h3_requests() -> float:
        return front_gw.metric("eg_requests_total", listener="quic", protocol="h3")

    before = h3_requests()
    response = peer_request(client, front_gw, certs, BACKS[back], "/echo")
    assert clean(response) == (200, None), response.stderr[-3000:]
    assert h3_requests() == before + 1  # eg, too, saw it arrive over HTTP/3
    echoed = response.body.lower()
    assert echoed.startswith(b"get\n/echo\n"), echoed[:200]
    assert b"via: 1.1 eg" in echoed
    assert b"x-forwarded-proto: https" in echoed
    no_unhandled(front_gw)


@back
@pytest.mark.parametrize("size", [0, MiB, 8 * MiB])
def test_download(client: H3Client, front_gw: Gateway, certs: Path, back: str,
                  size: int) -> None:
    response = peer_request(client, front_gw, certs, BACKS[back], f"/bytes/{size}")
    assert clean(response) == (200, None), response.stderr[-3000:]
    assert len(response.body) == size
    assert sha(response.body) == pattern_sha256(size)
    assert response.header("content-length") == str(size)
    no_unhandled(front_gw)


@back
def test_upload(client: H3Client, front_gw: Gateway, certs: Path, back: str) -> None:
    response = peer_request(client, front_gw, certs, BACKS[back], "/sha256", method="POST",
                            body=pattern(0, MiB))
    assert clean(response) == (200, None), response.stderr[-3000:]
    assert response.body.split() == [pattern_sha256(MiB).encode(), str(MiB).encode()]
    no_unhandled(front_gw)


@back
def test_head_204_304(client: H3Client, front_gw: Gateway, certs: Path, back: str) -> None:
    host = BACKS[back]
    head = peer_request(client, front_gw, certs, host, "/bytes/1000", method="HEAD")
    assert (head.status, head.body, head.error) == (200, b"", None), head.stderr[-3000:]
    assert head.header("content-length") == "1000"
    for status in (204, 304):
        response = peer_request(client, front_gw, certs, host, f"/status/{status}")
        assert (response.status, response.body, response.error) == (status, b"", None)
    no_unhandled(front_gw)


@back
def test_upstream_reset_mid_body_is_an_error(client: H3Client, front_gw: Gateway, certs: Path,
                                             back: str) -> None:
    size = 4 * MiB
    response = peer_request(client, front_gw, certs, BACKS[back], f"/reset-mid-body?size={size}")
    assert response.status == 200
    assert response.error is not None, "a truncated body ended like a complete one"
    # A reset stream, not a client timeout: curl "reset by server", gtlsclient the code.
    assert RESET_SEEN.search(response.error), response.error
    assert len(response.body) < size
    # The connection and the gateway carry on.
    again = peer_request(client, front_gw, certs, BACKS[back], "/status/204")
    assert clean(again) == (204, None)
    no_unhandled(front_gw)


# -- 2. Caddy behind an h3 cluster ------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """A response as any front's client saw it."""

    status: int
    headers: dict[str, str]
    """Names lowercase; the last value of a repeated field."""
    body: bytes = field(repr=False)
    version: str
    """The HTTP version the client reports having used: ``1.1``, ``2`` or ``3``."""
    clean: bool
    """The response ended normally (no reset, no transfer error)."""
    diagnostics: str = field(default="", repr=False)


def _curl_head(text: str) -> dict[str, str]:
    """The fields of the last head curl dumped with ``-D`` (1xx heads come first)."""
    blocks = [block for block in text.replace("\r\n", "\n").split("\n\n") if block.strip()]
    fields: dict[str, str] = {}
    for line in blocks[-1].splitlines()[1:] if blocks else []:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return fields


def front_request(front: str, gw: Gateway, certs: Path, host: str, path: str, *,
                  body: bytes | None = None) -> Reply:
    """GET ``path`` (POST with ``body``) for ``host`` on one of eg's FRONTS."""
    ca = str(certs / "ca.pem")
    if front == "h3-qh3":
        headers = [] if body is None else [(b"content-length", b"%d" % len(body))]
        with QuicClient("127.0.0.1", gw.ports["quic"], ca_file=ca, server_name="localhost",
                        timeout=30.0) as quic:
            got = quic.request("GET" if body is None else "POST", path, authority=host,
                               body=body or b"", headers=headers)
        return Reply(status=got.status,
                     headers={k.decode(): v.decode() for k, v in got.headers},
                     body=got.body, version="3", clean=got.ended and got.reset_code is None,
                     diagnostics=repr(got))
    if front == "h3-curl":
        port = gw.ports["quic"]
        peer = curl_h3(f"https://{host}:{port}{path}", ca_file=ca,
                       method="GET" if body is None else "POST", body=body,
                       connect=f"127.0.0.1:{port}", timeout=30.0)
        return Reply(status=peer.status, headers=dict(peer.headers), body=peer.body,
                     version=peer.http_version, clean=peer.error is None,
                     diagnostics=f"{peer.error}\n{peer.stderr[-3000:]}")
    if front == "h1":
        target = ["--http1.1", "-H", f"Host: {host}", f"http://127.0.0.1:{gw.ports['http']}{path}"]
    else:
        port = gw.ports["https"]
        target = ["--http2", "--cacert", ca, "--resolve", f"{host}:{port}:127.0.0.1",
                  f"https://{host}:{port}{path}"]
    with tempfile.TemporaryDirectory(prefix="eg-h3-peers-") as tmp:
        head, out = Path(tmp, "head"), Path(tmp, "body")
        args = ["-o", str(out), "-D", str(head), "-w", "%{http_version} %{http_code}"]
        if body is not None:
            Path(tmp, "request").write_bytes(body)
            args += ["--data-binary", f"@{tmp}/request", "-H", "Content-Type:"]
        result = curl(*args, *target)
        version, _, status = result.stdout.decode().partition(" ")
        return Reply(status=int(status or 0),
                     headers=_curl_head(head.read_text("latin-1")) if head.exists() else {},
                     body=out.read_bytes() if out.exists() else b"", version=version,
                     clean=result.returncode == 0, diagnostics=result.stderr.decode())


front = pytest.mark.parametrize("front", FRONTS)


def caddy_request(front: str, gw: Gateway, certs: Path, path: str, *,
                  body: bytes | None = None) -> Reply:
    """A request through ``front`` to Caddy over the verified h3 cluster; checks the hops."""
    reply = front_request(front, gw, certs, CADDY_HOSTS["caddy"], path, body=body)
    assert reply.version == FRONT_VERSIONS[front]
    assert reply.clean, reply.diagnostics
    # What Caddy saw: eg reached it over HTTP/3.
    assert reply.headers.get("x-eg-proto") == "HTTP/3.0", reply.headers
    return reply


@front
@pytest.mark.parametrize("name", sorted(STATIC))
def test_caddy_static_file(front: str, caddy_gw: Gateway, certs: Path, name: str) -> None:
    reply = caddy_request(front, caddy_gw, certs, f"/static/{name}")
    assert reply.status == 200
    assert len(reply.body) == len(STATIC[name])
    assert sha(reply.body) == sha(STATIC[name])
    no_unhandled(caddy_gw)


@front
def test_caddy_status_204(front: str, caddy_gw: Gateway, certs: Path) -> None:
    reply = caddy_request(front, caddy_gw, certs, "/status/204")
    assert (reply.status, reply.body) == (204, b"")
    no_unhandled(caddy_gw)


@front
def test_caddy_echoes_an_upload(front: str, caddy_gw: Gateway, certs: Path) -> None:
    reply = caddy_request(front, caddy_gw, certs, "/echo", body=UPLOAD)
    assert reply.status == 200
    assert reply.headers.get("x-eg-method") == "POST"
    assert len(reply.body) == len(UPLOAD)
    assert reply.body == UPLOAD
    no_unhandled(caddy_gw)


# -- 3. certificate verification to an HTTP/3 backend -----------------------------------------


def refused_for_tls_verify(gw: Gateway, reply: Reply, before: float) -> None:
    assert reply.status == 502, (reply, reply.diagnostics)
    assert reply.headers.get("x-eg-error") == "tls_verify", reply.headers
    assert "x-eg-proto" not in reply.headers  # nothing came from Caddy
    after = gw.metric("eg_backend_errors_total", kind="tls_verify", cluster="wrong_ca")
    assert after > before
    assert after > 0


@front
def test_backend_certificate_from_another_ca_is_refused(front: str, wrong_ca_gw: Gateway,
                                                        certs: Path) -> None:
    before = wrong_ca_gw.metric("eg_backend_errors_total", kind="tls_verify",
                                cluster="wrong_ca")
    reply = front_request(front, wrong_ca_gw, certs, CADDY_HOSTS["wrong_ca"], "/status/200")
    refused_for_tls_verify(wrong_ca_gw, reply, before)
    no_unhandled(wrong_ca_gw)


@front
def test_verify_false_reaches_the_same_backend(front: str, no_verify_gw: Gateway,
                                               certs: Path) -> None:
    reply = front_request(front, no_verify_gw, certs, CADDY_HOSTS["no_verify"], "/status/201")
    assert (reply.status, reply.body) == (201, b"status 201\n"), reply.diagnostics
    assert reply.headers.get("x-eg-proto") == "HTTP/3.0"
    no_unhandled(no_verify_gw)


@pytest.mark.parametrize("first", ["caddy", "no_verify"])
def test_clusters_do_not_share_connections_across_tls_settings(
        caddy: CaddyH3Origin, certs: Path, other_ca: Path, start_gateway: StartGateway,
        first: str) -> None:
    """A connection one cluster opened never carries another cluster's requests when their
    TLS settings differ: the ``wrong_ca`` cluster still fails verification."""
    gw = start_gateway(caddy_config(caddy, certs, other_ca, first, "wrong_ca", workers=1))
    warm = front_request("h1", gw, certs, CADDY_HOSTS[first], "/status/200")
    assert warm.status == 200, warm.diagnostics  # one worker: its pool now has a connection
    before = gw.metric("eg_backend_errors_total", kind="tls_verify", cluster="wrong_ca")
    reply = front_request("h1", gw, certs, CADDY_HOSTS["wrong_ca"], "/status/200")
    refused_for_tls_verify(gw, reply, before)
    no_unhandled(gw)


# -- 4. two workers ---------------------------------------------------------------------------


def server_worker(response: PeerResponse, workers: int) -> int | None:
    """The worker eg named in the Connection ID it chose, from gtlsclient's packet log."""
    match = _NGTCP2_SERVER_SCID.search(response.stderr)
    assert match, "no Handshake packet from the server in gtlsclient's log"
    cid = bytes.fromhex(match.group(1))
    assert len(cid) == CID_LENGTH, cid.hex()
    return worker_of(SHORT_HEADER + cid, workers)


def test_sequential_connections_use_both_workers(client: H3Client, origins: OriginProcess,
                                                 certs: Path,
                                                 start_gateway: StartGateway) -> None:
    """Each run is a new QUIC connection from a new port; the kernel spreads them.

    Each worker keeps its own upstream pool, and sequential requests reuse the worker's
    pooled connection, so the origin sees one new connection per worker that served.
    gtlsclient also shows the Connection ID eg chose, which names the worker.
    """
    doc = gateway_config(origins.ports[:1], workers=2)
    doc["listeners"] = listeners(certs, "quic")
    gw = start_gateway(doc)
    tally = OriginTally(origins.ports[:1])
    requests, connections = tally.requests(), tally.connections()
    workers: set[int | None] = set()
    for n in range(SEQUENTIAL):
        response = peer_request(client, gw, certs, "localhost", f"/bytes/{1000 + n}")
        assert clean(response) == (200, None), (n, response.stderr[-3000:])
        assert sha(response.body) == pattern_sha256(1000 + n)
        if client is ngtcp2_request:
            workers.add(server_worker(response, 2))
    assert gw.metric("eg_connections_total", listener="quic") == SEQUENTIAL
    assert gw.metric("eg_requests_total", listener="quic", code_class="2xx") == SEQUENTIAL
    assert tally.requests() - requests == SEQUENTIAL
    assert tally.connections() - connections == 2, "one pooled upstream connection per worker"
    if client is ngtcp2_request:
        assert workers == {0, 1}
    no_unhandled(gw)
