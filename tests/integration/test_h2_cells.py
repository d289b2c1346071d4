"""The four HTTP/1.1 and HTTP/2 cells of the matrix, end to end with real clients.

Fronts: HTTP/1.1 (curl --http1.1), h2c prior knowledge (curl --http2-prior-knowledge),
HTTP/2 over TLS chosen by ALPN (curl --http2). Backs: the HTTP/1.1 origin, an h2c
origin and an HTTP/2-over-TLS origin (verified against the test CA). Every front x back
pair carries GETs, bodies of every framing both ways, trailers, HEAD/204/304 and resets;
the H2-specific behaviour (trailers, RST_STREAM codes) is checked with an h2 client.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from eg.demo.origin import pattern
from eg.demo.origin_h2 import start_h2_origin
from tests.h2client import H2Client
from tests.helpers import OriginProcess
from tests.integration.conftest import (
    Gateway,
    RssSampler,
    StartGateway,
    curl,
    gateway_config,
    pattern_sha256,
)
from tests.integration.test_tls import make_certs

FRONTS = ["h1", "h2c", "h2"]
BACKS = ["h1", "h2c", "h2"]
#: Host that routes to each back (and the name on the test certificate).
HOSTS = {"h1": "h1.test", "h2c": "h2c.test", "h2": "h2.test"}
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certs(tmp_path_factory.mktemp("certs"), *HOSTS.values())


@pytest.fixture(scope="module")
def h2_origins(certs: Path) -> Iterator[tuple[int, int]]:
    """(h2c port, TLS port) of two HTTP/2 origins."""
    plain = start_h2_origin("127.0.0.1", 0, "h2c")
    tls = start_h2_origin("127.0.0.1", 0, "h2", cert=str(certs / "cert.pem"),
                          key=str(certs / "key.pem"))
    try:
        yield plain.port, tls.port
    finally:
        plain.stop()
        tls.stop()


@pytest.fixture(scope="module")
def cells(origins: OriginProcess, h2_origins: tuple[int, int], certs: Path,
          gateway_factory: StartGateway) -> Iterator[Gateway]:
    h2c_port, h2_port = h2_origins
    doc = gateway_config(
        origins.ports[:1],
        clusters=[
            {"name": "h2c", "protocol": "h2c", "endpoints": [f"127.0.0.1:{h2c_port}"]},
            {"name": "h2", "protocol": "h2", "endpoints": [f"127.0.0.1:{h2_port}"],
             "tls": {"ca_file": str(certs / "ca.pem"), "server_name": "localhost"}},
        ],
        routes=[
            {"host": "h2c.test", "cluster": "h2c"},
            {"host": "h2.test", "cluster": "h2"},
            {"host": "*", "cluster": "origin"},
        ],
    )
    doc["listeners"] = [
        {"name": "http", "address": "127.0.0.1:0", "protocol": "h1"},
        {"name": "h2c", "address": "127.0.0.1:0", "protocol": "h2c"},
        {"name": "https", "address": "127.0.0.1:0", "protocol": "https",
         "tls": {"certificates": [{"cert": str(certs / "cert.pem"),
                                   "key": str(certs / "key.pem")}]}},
    ]
    yield gateway_factory(doc)


def client_args(gw: Gateway, certs: Path, front: str, back: str, path: str) -> list[str]:
    """curl arguments for one request on ``front`` routed to ``back``."""
    host = HOSTS[back]
    if front == "h1":
        return ["--http1.1", "-H", f"Host: {host}", f"http://127.0.0.1:{gw.ports['http']}{path}"]
    if front == "h2c":
        return ["--http2-prior-knowledge", "-H", f"Host: {host}",
                f"http://127.0.0.1:{gw.ports['h2c']}{path}"]
    port = gw.ports["https"]
    return ["--http2", "--cacert", str(certs / "ca.pem"), "--resolve",
            f"{host}:{port}:127.0.0.1", f"https://{host}:{port}{path}"]


def version_of(front: str) -> bytes:
    return b"1.1" if front == "h1" else b"2"


cell = pytest.mark.parametrize(("front", "back"),
                               [(f, b) for f in FRONTS for b in BACKS])


@cell
def test_get(cells: Gateway, certs: Path, front: str, back: str) -> None:
    result = curl("-w", "\n%{http_version} %{http_code}",
                  *client_args(cells, certs, front, back, "/echo"))
    assert result.returncode == 0, result.stderr
    body, _, tail = result.stdout.rpartition(b"\n")
    assert tail == version_of(front) + b" 200"
    assert b"via: 1.1 eg" in body.lower()
    assert b"x-forwarded-proto: " + (b"https" if front == "h2" else b"http") in body.lower()


@cell
@pytest.mark.parametrize("query", ["", "?chunked=1", "?trailers=1"])
def test_download_8mib(cells: Gateway, certs: Path, front: str, back: str, query: str) -> None:
    size = 8 * MiB
    result = curl("-o", "-", *client_args(cells, certs, front, back, f"/bytes/{size}{query}"))
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).hexdigest() == pattern_sha256(size)


@cell
@pytest.mark.parametrize("chunked", [False, True])
def test_upload_8mib(cells: Gateway, certs: Path, tmp_path: Path, *, front: str, back: str,
                     chunked: bool) -> None:
    size = 8 * MiB
    body = tmp_path / "body"
    body.write_bytes(pattern(0, size))
    extra = ["-H", "Transfer-Encoding: chunked"] if chunked and front == "h1" else []
    result = curl("--data-binary", f"@{body}", *extra,
                  *client_args(cells, certs, front, back, "/sha256"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [pattern_sha256(size).encode(), str(size).encode()]


@cell
def test_head_204_304(cells: Gateway, certs: Path, front: str, back: str) -> None:
    head = curl("-I", *client_args(cells, certs, front, back, "/bytes/1000"))
    assert head.returncode == 0, head.stderr
    assert b"content-length: 1000" in head.stdout.lower()
    for status in (204, 304):
        result = curl("-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                      *client_args(cells, certs, front, back, f"/status/{status}"))
        assert result.stdout == b"%d 0" % status, result.stderr


@cell
def test_upstream_reset_mid_body_is_not_a_clean_end(cells: Gateway, certs: Path,
                                                    front: str, back: str) -> None:
    result = curl("-o", "/dev/null",
                  *client_args(cells, certs, front, back, f"/reset-mid-body?size={4 * MiB}"))
    assert result.returncode != 0  # curl: 18 partial file, 56/92 reset stream
    assert cells.metric("eg_unhandled_exceptions_total") == 0


# -- what curl does not show: HTTP/2 trailers and reset codes -----------------------------


def h2_front(gw: Gateway) -> H2Client:
    return H2Client(gw.ports["h2c"])


@pytest.mark.parametrize("back", BACKS)
def test_trailers_reach_an_h2_client(cells: Gateway, back: str) -> None:
    with h2_front(cells) as client:
        resp = client.request(f"/bytes/{MiB}?trailers=1", authority=HOSTS[back])
    assert resp.status == 200
    assert hashlib.sha256(resp.body).hexdigest() == pattern_sha256(MiB)
    assert (b"x-checksum", pattern_sha256(MiB).encode()) in resp.trailers


@pytest.mark.parametrize("back", BACKS)
def test_request_trailers_reach_the_backend(cells: Gateway, back: str) -> None:
    """A request with trailers (as gRPC clients send) is forwarded whole."""
    with h2_front(cells) as client:
        sid = client.start("/sha256", method="POST", authority=HOSTS[back],
                           headers=[(b"te", b"trailers")], body=b"x" * 1000, end=False)
        client.raw.send_headers(sid, [(b"x-done", b"1")], end_stream=True)
        client.flush()
        resp = client.wait(sid)
    assert resp.status == 200
    assert resp.body.split() == [hashlib.sha256(b"x" * 1000).hexdigest().encode(), b"1000"]


@pytest.mark.parametrize("back", BACKS)
def test_upstream_reset_becomes_rst_stream(cells: Gateway, back: str) -> None:
    with h2_front(cells) as client:
        resp = client.request(f"/reset-mid-body?size={MiB}", authority=HOSTS[back])
        # The connection survives the reset of one stream.
        again = client.request("/", authority=HOSTS[back])
    assert resp.reset is not None and resp.reset != 0
    assert again.status == 200


@pytest.mark.parametrize("back", BACKS)
def test_client_reset_cancels_upstream(cells: Gateway, back: str) -> None:
    with h2_front(cells) as client:
        sid = client.start("/slow?delay=30", authority=HOSTS[back])
        client.pump(0.3)
        client.raw.reset_stream(sid, 8)  # CANCEL
        client.flush()
        again = client.request("/", authority=HOSTS[back])
    assert again.status == 200
    records = [r for r in cells.records() if r.get("path") == "/slow?delay=30"]
    assert records and records[-1]["duration"] < 10


@pytest.mark.parametrize("front", ["h1", "h2c"])
@pytest.mark.parametrize("back", ["h1", "h2c"])
def test_64mib_both_ways_bounded_rss(cells: Gateway, certs: Path, tmp_path: Path, *,
                                     front: str, back: str) -> None:
    size = 64 * MiB
    body = tmp_path / "body"
    body.write_bytes(pattern(0, size))
    before = cells.rss()
    with RssSampler(cells) as sampler:
        down = curl("-o", "-", *client_args(cells, certs, front, back, f"/bytes/{size}"),
                    timeout=120)
        up = curl("--data-binary", f"@{body}",
                  *client_args(cells, certs, front, back, "/sha256"), timeout=120)
    assert hashlib.sha256(down.stdout).hexdigest() == pattern_sha256(size)
    assert up.stdout.split() == [pattern_sha256(size).encode(), str(size).encode()]
    # Streamed, never buffered: far below one body (64 MiB).
    assert sampler.peak - before < 32 * MiB, (before, sampler.peak)


def test_listener_alt_svc_on_h1_and_h2(origins: OriginProcess, start_gateway: StartGateway) -> None:
    """Each listener advertises its own configured Alt-Svc (RFC 7838); one without keeps
    the response as the upstream sent it."""
    alt = 'h3=":8443"; ma=3600'
    doc = gateway_config(origins.ports[:1])
    doc["listeners"] = [
        {"name": "http", "address": "127.0.0.1:0", "protocol": "h1", "alt_svc": alt},
        {"name": "h2c", "address": "127.0.0.1:0", "protocol": "h2c", "alt_svc": alt},
        {"name": "plain", "address": "127.0.0.1:0", "protocol": "h1"},
    ]
    gw = start_gateway(doc)
    for args in (["--http1.1", f"http://127.0.0.1:{gw.ports['http']}/"],
                 ["--http2-prior-knowledge", f"http://127.0.0.1:{gw.ports['h2c']}/"],
                 ["--http1.1", f"http://127.0.0.1:{gw.ports['http']}/status/503"]):
        head = curl("-s", "-D", "-", "-o", "/dev/null", *args).stdout.lower()
        assert head.count(b"alt-svc:") == 1, head
        assert b"alt-svc: " + alt.encode() + b"\r\n" in head, head
    plain = curl("-s", "-D", "-", "-o", "/dev/null", f"http://127.0.0.1:{gw.ports['plain']}/")
    assert b"alt-svc" not in plain.stdout.lower()
