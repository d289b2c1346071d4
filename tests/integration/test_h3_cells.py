"""The nine cells of the matrix, end to end: H1, H2 and H3 in front x H1, H2 and H3 behind.

Fronts: HTTP/1.1 (curl --http1.1), HTTP/2 over TLS chosen by ALPN (curl --http2) and
HTTP/3 (our qh3 client, ``tests/h3client.py``; the independent clients are in
``test_h3_peers.py``). Backs: the HTTP/1.1 origin, the HTTP/2-over-TLS origin and the
HTTP/3 origin, both verified against the test CA. Every front x back pair carries a GET
with the forwarding headers, bodies from 0 bytes to 8 MiB both ways (length-delimited
and of unknown length), trailers, HEAD/204/304 and resets from either side; 64 MiB both
ways runs through every cell with an HTTP/3 side, with the gateway's RSS bounded.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from eg.demo.origin import pattern
from eg.demo.origin_h2 import start_h2_origin
from eg.demo.origin_h3 import H3OriginHandle, start_h3_origin
from tests.h2client import H2Client
from tests.h3client import H3Client, H3Response
from tests.helpers import OriginProcess
from tests.integration.conftest import (
    Gateway,
    RssSampler,
    StartGateway,
    curl,
    gateway_config,
    pattern_chunks,
    pattern_sha256,
)
from tests.integration.test_tls import make_certs

FRONTS = ["h1", "h2", "h3"]
BACKS = ["h1", "h2", "h3"]
#: Host that routes to each back (and a name on the test certificate).
HOSTS = {"h1": "h1.test", "h2": "h2.test", "h3": "h3.test"}
MiB = 1024 * 1024
#: RSS growth allowed while 64 MiB crosses the gateway (buffers are bounded far below).
RSS_BOUND = 48 * MiB


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certs(tmp_path_factory.mktemp("certs"), *HOSTS.values())


@pytest.fixture(scope="module")
def h3_origin(certs: Path) -> Iterator[H3OriginHandle]:
    with start_h3_origin("127.0.0.1", 0, "h3", cert=str(certs / "cert.pem"),
                         key=str(certs / "key.pem")) as handle:
        yield handle


@pytest.fixture(scope="module")
def backs(certs: Path, h3_origin: H3OriginHandle) -> Iterator[tuple[int, int]]:
    """(HTTP/2-over-TLS port, HTTP/3 port) of the two TLS origins."""
    h2 = start_h2_origin("127.0.0.1", 0, "h2", cert=str(certs / "cert.pem"),
                         key=str(certs / "key.pem"))
    try:
        yield h2.port, h3_origin.port
    finally:
        h2.stop()


@pytest.fixture(scope="module")
def cells(origins: OriginProcess, backs: tuple[int, int], certs: Path,
          gateway_factory: StartGateway) -> Iterator[Gateway]:
    h2_port, h3_port = backs
    tls = {"ca_file": str(certs / "ca.pem"), "server_name": "localhost"}
    doc = gateway_config(
        origins.ports[:1],
        clusters=[
            {"name": "h2", "protocol": "h2", "endpoints": [f"127.0.0.1:{h2_port}"],
             "tls": tls},
            {"name": "h3", "protocol": "h3", "endpoints": [f"127.0.0.1:{h3_port}"],
             "tls": tls},
        ],
        routes=[
            {"host": "h2.test", "cluster": "h2"},
            {"host": "h3.test", "cluster": "h3"},
            {"host": "*", "cluster": "origin"},
        ],
    )
    certificates = [{"cert": str(certs / "cert.pem"), "key": str(certs / "key.pem")}]
    doc["listeners"] = [
        {"name": "http", "address": "127.0.0.1:0", "protocol": "h1"},
        {"name": "https", "address": "127.0.0.1:0", "protocol": "https",
         "tls": {"certificates": certificates}},
        {"name": "quic", "address": "127.0.0.1:0", "protocol": "quic",
         "tls": {"certificates": certificates}},
    ]
    yield gateway_factory(doc)


def curl_args(gw: Gateway, certs: Path, front: str, back: str, path: str) -> list[str]:
    """curl arguments for one request on the H1 or H2 ``front`` routed to ``back``."""
    host = HOSTS[back]
    if front == "h1":
        return ["--http1.1", "-H", f"Host: {host}", f"http://127.0.0.1:{gw.ports['http']}{path}"]
    port = gw.ports["https"]
    return ["--http2", "--cacert", str(certs / "ca.pem"), "--resolve",
            f"{host}:{port}:127.0.0.1", f"https://{host}:{port}{path}"]


def h3_front(gw: Gateway, certs: Path) -> H3Client:
    return H3Client("127.0.0.1", gw.ports["quic"], ca_file=str(certs / "ca.pem"),
                    server_name="localhost", timeout=30.0)


def h3_request(gw: Gateway, certs: Path, back: str, path: str, *, method: str = "GET",
               body: bytes | Iterator[bytes] = b"",
               headers: list[tuple[bytes, bytes]] | None = None) -> H3Response:
    with h3_front(gw, certs) as client:
        return client.request(method, path, authority=HOSTS[back], body=body,
                              headers=headers or [])


cell = pytest.mark.parametrize(("front", "back"), [(f, b) for f in FRONTS for b in BACKS])


@cell
def test_get(cells: Gateway, certs: Path, front: str, back: str) -> None:
    if front == "h3":
        resp = h3_request(cells, certs, back, "/echo")
        assert resp.status == 200, resp
        body = resp.body.lower()
    else:
        result = curl("-w", "\n%{http_version} %{http_code}",
                      *curl_args(cells, certs, front, back, "/echo"))
        assert result.returncode == 0, result.stderr
        body, _, tail = result.stdout.rpartition(b"\n")
        assert tail == (b"1.1" if front == "h1" else b"2") + b" 200"
        body = body.lower()
    assert b"via: 1.1 eg" in body
    proto = b"http" if front == "h1" else b"https"
    assert b"x-forwarded-proto: " + proto in body
    assert cells.metric("eg_unhandled_exceptions_total") == 0


@cell
@pytest.mark.parametrize("query", ["", "?nolength=1", "?trailers=1"])
@pytest.mark.parametrize("size", [0, 8 * MiB])
def test_download(cells: Gateway, certs: Path, *, front: str, back: str, query: str,
                  size: int) -> None:
    if back == "h1" and query == "?nolength=1":
        query = "?chunked=1"  # the HTTP/1.1 origin's unknown length is chunked
    path = f"/bytes/{size}{query}"
    if front == "h3":
        resp = h3_request(cells, certs, back, path)
        assert resp.status == 200, resp
        assert resp.ended and resp.reset_code is None
        data = resp.body
        if query == "?trailers=1" and back != "h1" and size:
            assert (b"x-checksum", pattern_sha256(size).encode()) in resp.trailers
    else:
        result = curl("-o", "-", *curl_args(cells, certs, front, back, path))
        assert result.returncode == 0, result.stderr
        data = result.stdout
    assert len(data) == size
    assert hashlib.sha256(data).hexdigest() == pattern_sha256(size)


@cell
@pytest.mark.parametrize("known_length", [True, False])
@pytest.mark.parametrize("size", [0, 8 * MiB])
def test_upload(cells: Gateway, certs: Path, tmp_path: Path, *, front: str, back: str,
                known_length: bool, size: int) -> None:
    if front == "h3":
        headers = [(b"content-length", b"%d" % size)] if known_length else []
        body: bytes | Iterator[bytes] = pattern(0, size) if known_length else \
            pattern_chunks(size)
        resp = h3_request(cells, certs, back, "/sha256", method="POST", body=body,
                          headers=headers)
        assert resp.status == 200, resp
        answer = resp.body
    else:
        path = tmp_path / "body"
        path.write_bytes(pattern(0, size))
        extra = [] if known_length else ["-H", "Transfer-Encoding: chunked"]
        if front == "h2" and not known_length:
            extra = ["-H", "Content-Length:"]  # curl then streams it without a length
        result = curl("--data-binary", f"@{path}", *extra,
                      *curl_args(cells, certs, front, back, "/sha256"))
        assert result.returncode == 0, result.stderr
        answer = result.stdout
    assert answer.split() == [pattern_sha256(size).encode(), str(size).encode()]


@cell
def test_head_204_304(cells: Gateway, certs: Path, front: str, back: str) -> None:
    if front == "h3":
        with h3_front(cells, certs) as client:
            head = client.request("HEAD", "/bytes/1000", authority=HOSTS[back])
            assert head.status == 200 and head.body == b""
            assert head.header(b"content-length") == b"1000"
            for status in (204, 304):
                resp = client.request("GET", f"/status/{status}", authority=HOSTS[back])
                assert (resp.status, resp.body, resp.ended) == (status, b"", True)
        return
    head = curl("-I", *curl_args(cells, certs, front, back, "/bytes/1000"))
    assert head.returncode == 0, head.stderr
    assert b"content-length: 1000" in head.stdout.lower()
    for status in (204, 304):
        result = curl("-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                      *curl_args(cells, certs, front, back, f"/status/{status}"))
        assert result.stdout == b"%d 0" % status, result.stderr


@cell
def test_upstream_reset_mid_body_is_not_a_clean_end(cells: Gateway, certs: Path,
                                                    front: str, back: str) -> None:
    path = f"/reset-mid-body?size={4 * MiB}"
    if front == "h3":
        with h3_front(cells, certs) as client:
            resp = client.request("GET", path, authority=HOSTS[back])
            assert resp.reset_code is not None and not resp.ended
            assert resp.body_length < 4 * MiB
            again = client.request("GET", "/", authority=HOSTS[back])  # connection lives
            assert again.status == 200
    else:
        result = curl("-o", "/dev/null", *curl_args(cells, certs, front, back, path))
        assert result.returncode != 0  # curl: 18 partial file, 56/92 reset stream
    assert cells.metric("eg_unhandled_exceptions_total") == 0


@pytest.mark.parametrize("back", BACKS)
def test_h3_trailers_both_ways(cells: Gateway, certs: Path, back: str) -> None:
    """Request trailers reach the back; response trailers come back (H2/H3 backs)."""
    with h3_front(cells, certs) as client:
        resp = client.request("POST", "/sha256", authority=HOSTS[back], body=b"x" * 1000,
                              headers=[(b"te", b"trailers")], trailers=[(b"x-done", b"1")])
        assert resp.status == 200
        assert resp.body.split() == [hashlib.sha256(b"x" * 1000).hexdigest().encode(), b"1000"]
        if back != "h1":  # an HTTP/1.1 origin sends its trailers chunked (also checked)
            got = client.request("GET", "/trailers", authority=HOSTS[back])
            assert (b"grpc-status", b"0") in got.trailers
        else:
            got = client.request("GET", f"/bytes/{MiB}?trailers=1", authority=HOSTS[back])
            assert (b"x-checksum", pattern_sha256(MiB).encode()) in got.trailers


@pytest.mark.parametrize("back", BACKS)
def test_h3_client_reset_cancels_the_upstream_request(cells: Gateway, certs: Path,
                                                      back: str) -> None:
    with h3_front(cells, certs) as client:
        sid = client.open("GET", "/drip?size=1000000&interval=0.05", authority=HOSTS[back])
        first = client.wait_headers(sid)
        assert first.status == 200
        client.cancel(sid)
        again = client.request("GET", "/", authority=HOSTS[back])
        assert again.status == 200
    assert cells.metric("eg_unhandled_exceptions_total") == 0


@pytest.mark.parametrize("front", ["h1", "h2"])
def test_client_abort_cancels_the_h3_upstream_stream(cells: Gateway, certs: Path,
                                                     h3_origin: H3OriginHandle,
                                                     front: str) -> None:
    """A client that goes away (H1: the connection is reset; H2: RST_STREAM CANCEL)
    cancels its HTTP/3 upstream stream: the origin sees the reset, the gateway stays
    healthy. (An HTTP/1.1 client that only half-closes still gets its response.)"""
    before = h3_origin.resets
    if front == "h1":
        with socket.create_connection(("127.0.0.1", cells.ports["http"])) as sock:
            sock.sendall(b"GET /slow?delay=30 HTTP/1.1\r\nHost: h3.test\r\n\r\n")
            time.sleep(0.3)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    else:
        tls = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        tls.set_alpn_protocols(["h2"])
        with H2Client(cells.ports["https"], tls=tls, server_name="h3.test") as client:
            sid = client.start("/slow?delay=30", authority="h3.test")
            client.pump(0.3)
            client.raw.reset_stream(sid, 8)  # CANCEL
            client.flush()
            assert client.request("/", authority="h3.test").status == 200
    deadline = time.monotonic() + 5.0
    while h3_origin.resets == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert h3_origin.resets > before
    assert cells.metric("eg_unhandled_exceptions_total") == 0


@pytest.mark.parametrize(("front", "back"), [(f, b) for f in FRONTS for b in BACKS
                                             if "h3" in (f, b)])
def test_64mib_both_ways_with_bounded_rss(cells: Gateway, certs: Path, tmp_path: Path,
                                          front: str, back: str) -> None:
    size = 64 * MiB
    base = cells.rss()
    with RssSampler(cells) as rss:
        if front == "h3":
            with h3_front(cells, certs) as client:
                sink = hashlib.sha256()
                down = client.request("GET", f"/bytes/{size}", authority=HOSTS[back],
                                      sink=sink.update)
                assert down.status == 200 and down.body_length == size
                assert sink.hexdigest() == pattern_sha256(size)
                up = client.request("POST", "/sha256", authority=HOSTS[back],
                                    body=pattern_chunks(size))
                assert up.body.split() == [pattern_sha256(size).encode(), str(size).encode()], up
        else:
            result = curl("-o", "-", *curl_args(cells, certs, front, back, f"/bytes/{size}"))
            assert result.returncode == 0, result.stderr
            assert hashlib.sha256(result.stdout).hexdigest() == pattern_sha256(size)
            path = tmp_path / "body"
            path.write_bytes(pattern(0, size))
            result = curl("--data-binary", f"@{path}",
                          *curl_args(cells, certs, front, back, "/sha256"))
            assert result.stdout.split() == [pattern_sha256(size).encode(), str(size).encode()]
    assert rss.peak - base < RSS_BOUND, (base, rss.peak)
