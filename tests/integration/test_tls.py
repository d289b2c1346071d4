"""HTTP/1.1 over TLS: a live gateway, real curl and Python ssl clients."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO, OriginProcess
from tests.integration.conftest import (
    Gateway,
    StartGateway,
    curl,
    gateway_config,
    pattern_sha256,
)

HANDSHAKE_TIMEOUT = 1.0


def make_certs(directory: Path, *names: str) -> Path:
    subprocess.run([str(REPO / "scripts" / "dev-certs"), str(directory), *names], check=True,
                   capture_output=True)
    return directory


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second certificate (another CA) for the name other.test, chosen by SNI."""
    return make_certs(tmp_path_factory.mktemp("other"), "other.test")


def tls_config(origin_ports: list[int], certs: Path, *extra: Path, **tls: object) -> dict:  # type: ignore[type-arg]
    doc = gateway_config(origin_ports)
    certificates = [{"cert": str(d / "cert.pem"), "key": str(d / "key.pem")}
                    for d in (certs, *extra)]
    doc["listeners"] = [{
        "name": "http", "address": "127.0.0.1:0", "protocol": "h1s",
        "tls": {"certificates": certificates, "handshake_timeout": HANDSHAKE_TIMEOUT, **tls},
    }]
    return doc


@pytest.fixture(scope="module")
def tls_gateway(origins: OriginProcess, certs: Path, other_certs: Path,
                gateway_factory: StartGateway) -> Iterator[Gateway]:
    yield gateway_factory(tls_config(origins.ports, certs, other_certs))


def url(gw: Gateway, path: str = "/", host: str = "localhost") -> str:
    return f"https://{host}:{gw.port}{path}"


def test_get_over_tls_with_alpn_http11(tls_gateway: Gateway, certs: Path) -> None:
    result = curl("-v", "--cacert", str(certs / "ca.pem"), url(tls_gateway, "/echo"))
    assert result.returncode == 0, result.stderr
    assert b"x-forwarded-proto: https" in result.stdout
    assert b"ALPN: server accepted http/1.1" in result.stderr


def test_sni_other_than_host_is_421(tls_gateway: Gateway, certs: Path) -> None:
    result = curl("-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(certs / "ca.pem"),
                  "-H", "Host: elsewhere.example", url(tls_gateway))
    assert result.stdout == b"421"
    assert tls_gateway.metric("eg_requests_total", code_class="4xx") >= 1


def test_second_certificate_chosen_by_sni(tls_gateway: Gateway, other_certs: Path) -> None:
    port = tls_gateway.port
    result = curl("--cacert", str(other_certs / "ca.pem"), "--resolve",
                  f"other.test:{port}:127.0.0.1", f"https://other.test:{port}/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"hello from origin")


def test_tls12_uses_ecdhe_aead_and_old_versions_are_refused(tls_gateway: Gateway,
                                                            certs: Path) -> None:
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", tls_gateway.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        name, version, _ = tls.cipher()  # type: ignore[misc]
        assert version == "TLSv1.2"
        assert name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20" in name)
    before = tls_gateway.metric("eg_protocol_errors_total", kind="tls_handshake")
    refused = curl("--tls-max", "1.1", "--cacert", str(certs / "ca.pem"), url(tls_gateway))
    assert refused.returncode != 0
    deadline = time.monotonic() + 5
    while tls_gateway.metric("eg_protocol_errors_total", kind="tls_handshake") <= before:
        assert time.monotonic() < deadline, "the refused handshake was not counted"
        time.sleep(0.05)


def test_tls13_only_refuses_tls12(origins: OriginProcess, certs: Path,
                                  start_gateway: StartGateway) -> None:
    gw = start_gateway(tls_config(origins.ports, certs, tls13_only=True))
    ca = str(certs / "ca.pem")
    assert curl("--tls-max", "1.2", "--cacert", ca, url(gw)).returncode != 0
    assert curl("--tlsv1.3", "--cacert", ca, url(gw)).returncode == 0


def test_silent_client_is_dropped_after_handshake_timeout(tls_gateway: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", tls_gateway.port), timeout=10) as sock:
        started = time.monotonic()
        # No ClientHello ever sent: the gateway hangs up (an EOF or a reset, both final).
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(1) == b""
        assert HANDSHAKE_TIMEOUT * 0.9 <= time.monotonic() - started < HANDSHAKE_TIMEOUT + 3


def test_large_download_and_upload_over_tls(tls_gateway: Gateway, certs: Path,
                                            tmp_path: Path) -> None:
    size = 8 * 1024 * 1024
    ca = str(certs / "ca.pem")
    down = curl("--cacert", ca, url(tls_gateway, f"/bytes/{size}"))
    assert down.returncode == 0 and hashlib.sha256(down.stdout).hexdigest() == pattern_sha256(size)
    blob = tmp_path / "blob"
    blob.write_bytes(bytes(range(256)) * (size // 256))
    up = curl("--cacert", ca, "--data-binary", f"@{blob}", url(tls_gateway, "/sha256"))
    assert up.stdout.decode().split() == [hashlib.sha256(blob.read_bytes()).hexdigest(), str(size)]


def test_backend_reset_mid_body_aborts_the_tls_client(tls_gateway: Gateway,
                                                      certs: Path) -> None:
    result = curl("--cacert", str(certs / "ca.pem"),
                  url(tls_gateway, "/reset-mid-body?size=2000000"))
    assert result.returncode != 0  # an abort, never a clean end of the body
    assert len(result.stdout) < 2000000


def test_missing_certificate_stops_start_up(origins: OriginProcess, tmp_path: Path,
                                            start_gateway: StartGateway) -> None:
    doc = tls_config(origins.ports, tmp_path / "nowhere")
    with pytest.raises(RuntimeError, match="cannot load its certificates"):
        start_gateway(doc)
