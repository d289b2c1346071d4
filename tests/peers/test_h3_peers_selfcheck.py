"""The HTTP/3 peers against each other, with no eg between them.

eg's HTTP/3 tests put eg between an independent client (ngtcp2's ``gtlsclient``, libcurl
via pycurl) and an independent origin (Caddy). They are only meaningful if those peers
agree when connected directly over real loopback, so this module proves it: a 1 MiB file
byte for byte, any status, a body upload echoed back, that HTTP/3 is what both sides
actually spoke, how each client treats certificates, failures reported as such, and that
the origin listens on 127.0.0.1 only and is gone after it stops.

The tests skip when ``scripts/peers`` cannot install a peer here.
"""

from __future__ import annotations

import hashlib
import random
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.peers.h3_peers import (
    CaddyH3Origin,
    H3Client,
    H3RequestFailed,
    curl_h3,
    ngtcp2_request,
)
from tests.peers.paths import PEERS_INSTALL_TIMEOUT

# The first test may install the peers from scratch (apt, pip, the h2spec build); once they
# are cached the whole module takes a few seconds.
pytestmark = pytest.mark.timeout(PEERS_INSTALL_TIMEOUT + 120)

MiB = 1 << 20
# Deterministic random bytes: no pattern that a broken transfer could reproduce by luck.
BIG = random.Random(3).randbytes(MiB)
UPLOAD = random.Random(9).randbytes(300_001)
CLIENTS: dict[str, H3Client] = {"ngtcp2": ngtcp2_request, "curl": curl_h3}


def _dev_certs(directory: Path) -> Path:
    made = subprocess.run(
        [str(REPO / "scripts" / "dev-certs"), str(directory), "localhost"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    return directory


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.pem, cert.pem and key.pem for localhost and 127.0.0.1."""
    return _dev_certs(tmp_path_factory.mktemp("h3-certs"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, unrelated CA: the origin's certificate does not chain to it."""
    return _dev_certs(tmp_path_factory.mktemp("h3-other-certs")) / "ca.pem"


@pytest.fixture(scope="module")
def origin(certs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CaddyH3Origin]:
    """One Caddy origin for the module, serving BIG as /static/1m.bin."""
    with CaddyH3Origin(
        certs / "cert.pem",
        certs / "key.pem",
        directory=tmp_path_factory.mktemp("caddy"),
        files={"1m.bin": BIG},
    ) as caddy:
        yield caddy


@pytest.fixture(params=sorted(CLIENTS))
def client(request: pytest.FixtureRequest) -> H3Client:
    """Each independent HTTP/3 client in turn."""
    return CLIENTS[request.param]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_static_file_arrives_whole_over_h3(
    client: H3Client, origin: CaddyH3Origin, certs: Path
) -> None:
    response = client(origin.url("/static/1m.bin"), ca_file=str(certs / "ca.pem"))
    assert (response.status, response.error) == (200, None), response.stderr[-2000:]
    assert len(response.body) == MiB
    assert _sha(response.body) == _sha(BIG)
    assert response.header("content-length") == str(MiB)
    assert response.http_version == "3"
    # What Caddy saw: the request came over HTTP/3 (a client-side claim is not enough).
    assert response.header("x-eg-proto") == "HTTP/3.0"


@pytest.mark.parametrize("code", [201, 404, 503])
def test_status_route(client: H3Client, origin: CaddyH3Origin, certs: Path, code: int) -> None:
    response = client(origin.url(f"/status/{code}"), ca_file=str(certs / "ca.pem"))
    assert (response.status, response.body, response.error) == (
        code,
        f"status {code}\n".encode(),
        None,
    )


def test_status_without_body(client: H3Client, origin: CaddyH3Origin, certs: Path) -> None:
    response = client(origin.url("/status/204"), ca_file=str(certs / "ca.pem"))
    assert (response.status, response.body, response.error) == (204, b"", None)


def test_upload_is_echoed(client: H3Client, origin: CaddyH3Origin, certs: Path) -> None:
    response = client(
        origin.url("/echo?q=1"), ca_file=str(certs / "ca.pem"), method="PUT", body=UPLOAD
    )
    assert (response.status, response.error) == (200, None)
    assert _sha(response.body) == _sha(UPLOAD)
    assert response.header("x-eg-method") == "PUT"
    assert response.header("x-eg-proto") == "HTTP/3.0"


def test_post_without_body(client: H3Client, origin: CaddyH3Origin, certs: Path) -> None:
    response = client(origin.url("/echo"), ca_file=str(certs / "ca.pem"), method="POST")
    assert (response.status, response.body, response.header("x-eg-method")) == (200, b"", "POST")


def test_curl_empty_upload(origin: CaddyH3Origin, certs: Path) -> None:
    response = curl_h3(origin.url("/echo"), ca_file=str(certs / "ca.pem"), method="POST", body=b"")
    assert (response.status, response.body, response.header("x-eg-method")) == (200, b"", "POST")


def test_head_of_static_file(client: H3Client, origin: CaddyH3Origin, certs: Path) -> None:
    response = client(origin.url("/static/1m.bin"), ca_file=str(certs / "ca.pem"), method="HEAD")
    assert (response.status, response.body) == (200, b"")
    assert response.header("content-length") == str(MiB)


def test_unknown_path(client: H3Client, origin: CaddyH3Origin, certs: Path) -> None:
    response = client(origin.url("/nowhere", host="127.0.0.1"), ca_file=str(certs / "ca.pem"))
    assert (response.status, response.body) == (404, b"not found\n")


def test_connect_elsewhere_than_the_url(
    client: H3Client, origin: CaddyH3Origin, certs: Path
) -> None:
    """``connect`` keeps the URL's authority (and name) while dialing another address."""
    url = "https://localhost:1/status/202"
    response = client(url, ca_file=str(certs / "ca.pem"), connect=f"127.0.0.1:{origin.port}")
    assert response.status == 202


def test_closed_port_fails(client: H3Client, certs: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))  # held, so nothing else answers there
        port = udp.getsockname()[1]
        with pytest.raises(H3RequestFailed):
            client(f"https://localhost:{port}/", ca_file=str(certs / "ca.pem"), timeout=2.0)


def test_curl_sends_extra_headers(origin: CaddyH3Origin, certs: Path) -> None:
    response = curl_h3(
        origin.url("/echo"), ca_file=str(certs / "ca.pem"), headers=["X-Eg-Echo: hello h3"]
    )
    assert (response.status, response.header("x-eg-echo")) == (200, "hello h3")


def test_curl_verifies_the_certificate(origin: CaddyH3Origin, other_ca: Path) -> None:
    with pytest.raises(H3RequestFailed, match="certificate"):
        curl_h3(origin.url("/status/200"), ca_file=str(other_ca))


def test_ngtcp2_never_verifies_the_certificate(origin: CaddyH3Origin, other_ca: Path) -> None:
    """A known limit of gtlsclient 0.12.1, pinned: a certificate test needs curl_h3."""
    response = ngtcp2_request(origin.url("/status/200"), ca_file=str(other_ca))
    assert response.status == 200


def test_ngtcp2_limits_are_usage_errors(origin: CaddyH3Origin) -> None:
    with pytest.raises(ValueError, match="extra request headers"):
        ngtcp2_request(origin.url("/echo"), ca_file=None, headers=["X-Eg-Echo: x"])
    with pytest.raises(ValueError, match="empty body"):
        ngtcp2_request(origin.url("/echo"), ca_file=None, method="POST", body=b"")


def _listening(port: int) -> set[tuple[str, str]]:
    """(protocol, local address in /proc/net hex) of every socket bound to ``port``."""
    found: set[tuple[str, str]] = set()
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path("/proc/net", proto).read_text().splitlines()[1:]:
            address, _, hex_port = line.split()[1].partition(":")
            if int(hex_port, 16) == port:
                found.add((proto, address))
    return found


def test_origin_binds_loopback_only_and_stops(certs: Path, tmp_path: Path) -> None:
    with CaddyH3Origin(certs / "cert.pem", certs / "key.pem", directory=tmp_path) as caddy:
        # 0100007F is 127.0.0.1 in /proc/net's byte order; no wildcard, no IPv6.
        assert _listening(caddy.port) == {("tcp", "0100007F"), ("udp", "0100007F")}
        assert "HTTP/3" in caddy.log_text()
    assert caddy.proc.returncode is not None
    assert _listening(caddy.port) == set()


def test_echo_past_its_limit_is_truncated(client: H3Client, certs: Path, tmp_path: Path) -> None:
    """Caddy's gotcha, pinned: past max_echo_body it still answers 200 and echoes only the
    first max_echo_body bytes, then stops the request side (H3_REQUEST_CANCELLED). gtlsclient
    reports that reset as ``error``; libcurl, whose response did end cleanly, does not."""
    with CaddyH3Origin(
        certs / "cert.pem", certs / "key.pem", directory=tmp_path, max_echo_body=1000
    ) as caddy:
        response = client(
            caddy.url("/echo"), ca_file=str(certs / "ca.pem"), method="POST", body=UPLOAD
        )
    assert (response.status, response.body) == (200, UPLOAD[:1000])
