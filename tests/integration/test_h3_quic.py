"""QUIC behaviour of the HTTP/3 listener: steering, 0-RTT, Retry, limits, drain.

- Steering: with two workers, a client that changes its UDP port (NAT rebinding) and
  then switches to a Connection ID qh3 issued (migration) keeps its connection, in
  every steering mode; with the eBPF program no datagram needs a hand-off.
- 0-RTT: a client resuming with a ticket (from another server of the same name) sends
  its request as early data; eg refuses it, the client repeats it over 1-RTT, and the
  backend sees it exactly once.
- Retry: ``retry = "always"`` answers first Initials with a Retry; the client's second
  Initial carries the token and gets a connection.
- Certificates: several on one listener, chosen by the ClientHello's server name.
- Limits: SETTINGS advertise the QPACK and field-section caps; a field section over
  the cap ends the connection; a malformed request is a stream error only;
  ``max_requests_per_connection`` sends GOAWAY and rejects later streams; many
  concurrent large uploads keep RSS bounded.
- Inbound flow control: an origin reading slowly paces an H3 uploader (qh3 grants
  credit on arrival, so eg holds and throttles); a stream holding past
  ``stream_hold_limit`` is reset with H3_EXCESSIVE_LOAD.
- Drain: SIGTERM sends GOAWAY, the request in flight completes, eg exits 0.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from qh3.h3.connection import Setting

from eg.demo.origin_h3 import start_h3_origin
from eg.reactor.steer import Steering
from tests.h3client import (
    H3_EXCESSIVE_LOAD,
    H3_REQUEST_REJECTED,
    H3Client,
    H3ClientError,
    try_zero_rtt,
)
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

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certs(tmp_path_factory.mktemp("certs"))


def quic_config(origin_ports: list[int], certs: Path, *, workers: int = 2,
                quic: dict[str, object] | None = None, **extra: object) -> dict:  # type: ignore[type-arg]
    doc = gateway_config(origin_ports, workers=workers, **extra)  # type: ignore[arg-type]
    doc["listeners"] = [{
        "name": "quic", "address": "127.0.0.1:0", "protocol": "quic",
        "tls": {"certificates": [{"cert": str(certs / "cert.pem"),
                                  "key": str(certs / "key.pem")}]},
    }]
    if quic:
        doc["quic"] = quic
    return doc


def client(gw: Gateway, certs: Path, **kwargs: object) -> H3Client:
    return H3Client("127.0.0.1", gw.ports["quic"], ca_file=str(certs / "ca.pem"),
                    timeout=20.0, **kwargs)  # type: ignore[arg-type]


def _ebpf_available() -> str | None:
    """None when an eBPF steering program can be attached here, else why not."""
    socks = []
    try:
        for _ in range(2):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            socks.append(sock)
        socks[0].bind(("127.0.0.1", 0))
        socks[1].bind(socks[0].getsockname())
        Steering.attach(socks, prefer="ebpf").close()
    except OSError as exc:
        return str(exc)
    finally:
        for sock in socks:
            sock.close()
    return None


# -- steering -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["ebpf", "cbpf", "userspace"])
def test_connections_survive_port_changes_and_new_cids(
        origins: OriginProcess, certs: Path, start_gateway: StartGateway, mode: str) -> None:
    if mode == "ebpf" and (why := _ebpf_available()) is not None:
        pytest.skip(f"no eBPF here: {why}")
    gw = start_gateway(quic_config(origins.ports, certs, quic={"steering": mode}))
    assert gw.started["quic_steering"] == {"quic": mode}
    for _ in range(12):  # connections land on both workers
        with client(gw, certs) as c:
            assert c.request("GET", "/").status == 200
            c.rebind()  # NAT rebinding: same CID, new port
            assert c.request("GET", "/echo").status == 200
            c.quic.change_connection_id()  # migration: a CID qh3 issued
            c.rebind()
            resp = c.request("GET", "/bytes/100000")
            assert resp.status == 200 and resp.body_length == 100000
    assert gw.metric("eg_unhandled_exceptions_total") == 0
    handoffs = gw.metric("eg_limit_hits_total", kind="quic_handoff")
    if mode == "ebpf":
        assert handoffs == 0  # the kernel delivered every datagram to its owner
    elif mode == "userspace":
        assert handoffs > 0


# -- 0-RTT ----------------------------------------------------------------------------------


def test_early_data_is_refused_and_never_forwarded(certs: Path, start_gateway: StartGateway,
                                                   tmp_path: Path) -> None:
    cert, key = str(certs / "cert.pem"), str(certs / "key.pem")
    with start_h3_origin("127.0.0.1", 0, "tickets", cert=cert, key=key,
                         session_tickets="resume") as issuer, \
            start_h3_origin("127.0.0.1", 0, "backend", cert=cert, key=key) as backend:
        # The ticket comes from a server that accepts 0-RTT with it (so the client has a
        # ticket allowing early data for "localhost"), then is presented to eg.
        warm = try_zero_rtt("127.0.0.1", issuer.port, ca_file=str(certs / "ca.pem"))
        assert warm.ticket and warm.accepted  # the client really can send early data
        doc = quic_config([], certs, workers=1)
        doc["clusters"] = [{"name": "origin", "protocol": "h3",
                            "endpoints": [f"127.0.0.1:{backend.port}"],
                            "tls": {"ca_file": str(certs / "ca.pem"),
                                    "server_name": "localhost"}}]
        gw = start_gateway(doc)
        with H3Client("127.0.0.1", issuer.port, ca_file=str(certs / "ca.pem")) as first:
            first.request("GET", "/")
            first.wait_for(lambda: first.session_ticket is not None, 2.0)
            ticket = first.session_ticket
        assert ticket is not None
        before = backend.requests
        with client(gw, certs, session_ticket=ticket, zero_rtt=True) as c:
            resp = c.request("POST", "/echo", body=b"early-data-marker")
            assert c.early_data_attempted  # it went out as 0-RTT...
            assert not c.early_data_accepted  # ...and eg refused it
            assert not c.session_resumed
        assert resp.status == 200 and b"early-data-marker" in resp.body  # repeated, 1-RTT
        assert backend.requests - before == 1  # forwarded once: the 1-RTT copy only


# -- Retry ----------------------------------------------------------------------------------


def test_retry_always_validates_the_address(origins: OriginProcess, certs: Path,
                                            start_gateway: StartGateway) -> None:
    gw = start_gateway(quic_config(origins.ports, certs, quic={"retry": "always"}))
    for _ in range(3):
        with client(gw, certs) as c:
            assert c.request("GET", "/").status == 200
    assert gw.metric("eg_limit_hits_total", kind="quic_retry") >= 3
    assert gw.metric("eg_limit_hits_total", kind="quic_bad_token") == 0


# -- limits ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(origins: OriginProcess, certs: Path,
            gateway_factory: StartGateway) -> Iterator[Gateway]:
    yield gateway_factory(quic_config(origins.ports, certs, quic={
        "max_requests_per_connection": 3, "max_field_section_size": 8192}))


def test_settings_advertise_the_qpack_and_field_section_caps(limited: Gateway,
                                                             certs: Path) -> None:
    with client(limited, certs) as c:
        c.request("GET", "/")
        settings = c.h3.received_settings
    assert settings is not None
    assert settings[Setting.QPACK_MAX_TABLE_CAPACITY] == 0
    assert settings[Setting.QPACK_BLOCKED_STREAMS] == 0
    assert settings[Setting.MAX_FIELD_SECTION_SIZE] == 8192


def test_field_section_over_the_cap_ends_the_connection(limited: Gateway, certs: Path) -> None:
    with client(limited, certs) as c:
        assert c.request("GET", "/").status == 200
        big = [(b"x-big-%d" % i, b"v" * 1000) for i in range(12)]  # ~12 KB > 8 KiB
        resp = c.request("GET", "/echo", headers=big, timeout=5.0)
    # A peer past the size we advertised breaks our SETTINGS: a connection error
    # (RFC 9114 §4.2.2, §10.5.1), H3_EXCESSIVE_LOAD, before anything is forwarded.
    assert resp.status == 0 and resp.closed is not None
    assert resp.closed.error_code == 0x107, resp.closed
    assert limited.metric("eg_unhandled_exceptions_total") == 0


@pytest.mark.parametrize("headers", [
    [(b"X-Upper", b"1")],                        # uppercase name (RFC 9114 §4.2)
    [(b"connection", b"keep-alive")],            # connection-specific field (§4.2)
    [(b"x-ok", b"1"), (b":path", b"/again")],    # pseudo-header after a field (§4.3)
], ids=["uppercase", "connection", "late-pseudo"])
def test_malformed_request_is_a_stream_error(limited: Gateway, certs: Path,
                                             headers: list[tuple[bytes, bytes]]) -> None:
    """RFC 9114 §4.1.2: a malformed request is reset with H3_MESSAGE_ERROR; the connection
    and its other requests go on."""
    before = limited.metric("eg_protocol_errors_total", kind="h3_malformed")
    with client(limited, certs) as c:
        bad = c.request("GET", "/", headers=headers, timeout=5.0)
        assert bad.status == 0 and bad.reset_code == 0x10E, bad
        assert c.request("GET", "/").status == 200
    assert limited.metric("eg_protocol_errors_total", kind="h3_malformed") == before + 1


def test_recycled_after_max_requests(limited: Gateway, certs: Path) -> None:
    with client(limited, certs) as c:
        for _ in range(3):
            assert c.request("GET", "/").status == 200
        assert c.goaway_id is not None  # the third request brought the GOAWAY
        # A request past the GOAWAY (a client must not send one) is not processed:
        # rejected, or the connection is already closed once the last response was
        # acknowledged.
        late = c.request("GET", "/")
        assert late.status == 0
        assert late.reset_code == H3_REQUEST_REJECTED or late.closed is not None, late
        closed = c.wait_closed(5.0)
        assert closed is not None and closed.error_code == 0x100  # H3_NO_ERROR
    with client(limited, certs) as c:  # a new connection is served
        assert c.request("GET", "/").status == 200


def test_many_concurrent_large_uploads_keep_rss_bounded(
        origins: OriginProcess, certs: Path, start_gateway: StartGateway) -> None:
    gw = start_gateway(quic_config(origins.ports, certs))
    size = 16 * MiB
    uploads = 6
    answers: list[object] = []

    def upload() -> None:
        try:
            with client(gw, certs) as c:
                answers.append(c.request("POST", "/sha256", body=pattern_chunks(size),
                                         timeout=120.0).body.split())
        except Exception as exc:
            answers.append(exc)

    base = gw.rss()
    with RssSampler(gw) as rss:
        threads = [threading.Thread(target=upload) for _ in range(uploads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(180.0)
    assert answers == [[pattern_sha256(size).encode(), b"%d" % size]] * uploads
    # 96 MiB went through at once; what eg holds per connection is bounded far below.
    assert rss.peak - base < 64 * MiB, (base, rss.peak)
    assert gw.metric("eg_unhandled_exceptions_total") == 0


#: What loopback TCP may absorb between eg and a slowly reading origin, with margin: eg's
#: send buffer autotunes up to net.ipv4.tcp_wmem's maximum (4 MiB here) and the origin's
#: receive buffer grows with what it reads (about 5 MiB in all was measured with an
#: origin reading 8 MiB/s). A 4 MiB upload could vanish into them without the stream
#: ever pausing, which made an earlier version of these tests flaky.
SOCKET_BUFFERS = 10 * MiB


def test_origin_that_reads_slowly_holds_back_the_upload(
        origins: OriginProcess, certs: Path, start_gateway: StartGateway) -> None:
    """32 MiB to an origin reading 8 MiB/s. qh3 grants stream credit as data arrives, so
    eg holds what a paused stream delivers and stops processing the connection's
    datagrams while it holds too much: the uploader must go at the origin's pace."""
    gw = start_gateway(quic_config(origins.ports, certs, workers=1))
    size, rate = 32 * MiB, 8 * MiB
    base = gw.rss()
    with RssSampler(gw) as rss, client(gw, certs) as c:
        started = time.monotonic()
        sid = c.open("POST", f"/upload-slow-read?rate={rate}", body=pattern_chunks(size))
        sent = time.monotonic() - started  # open() returns once the body is all sent
        resp = c.wait(sid, timeout=60.0)
    assert resp.status == 200, resp
    assert resp.body.strip() == str(size).encode()
    # The client can only have sent the last byte once the origin had read all but what
    # the socket buffers and eg's hold (stream_hold_limit, 4 MiB) keep in between.
    floor = (size - SOCKET_BUFFERS - 4 * MiB) / rate
    assert sent > floor * 0.8, (sent, floor)
    assert rss.peak - base < 16 * MiB, (base, rss.peak)
    assert gw.metric("eg_limit_hits_total", kind="h3_stream_buffer") == 0


def test_stream_holding_past_the_limit_is_reset_with_excessive_load(
        origins: OriginProcess, certs: Path, start_gateway: StartGateway) -> None:
    """With ``stream_hold_limit`` far under what is in flight, a paused upload overflows
    it: the stream gets STOP_SENDING and RESET_STREAM with H3_EXCESSIVE_LOAD, the
    exchange is abandoned, the refusal counted, and the connection serves on."""
    gw = start_gateway(quic_config(origins.ports, certs, workers=1,
                                   quic={"stream_hold_limit": 4096}))
    with client(gw, certs) as c:
        # Past the socket buffers, so eg's side of the upstream fills and pauses the stream.
        sid = c.open("POST", "/upload-slow-read?rate=65536",
                     body=pattern_chunks(SOCKET_BUFFERS + 16 * MiB))
        resp = c.wait(sid, timeout=60.0)
        assert H3_EXCESSIVE_LOAD in (resp.reset_code, resp.stop_sending_code), resp
        assert resp.status in (0, 502, 503), resp
        assert c.request("GET", "/").status == 200
    assert gw.metric("eg_limit_hits_total", kind="h3_stream_buffer") == 1
    assert gw.metric("eg_unhandled_exceptions_total") == 0


def test_certificate_chosen_by_server_name(origins: OriginProcess, certs: Path,
                                           tmp_path: Path,
                                           start_gateway: StartGateway) -> None:
    """Two certificates (another CA for other.test): each name gets its own, verified,
    as on TCP listeners; a name neither lists gets the first."""
    other = make_certs(tmp_path / "other", "other.test")
    doc = quic_config(origins.ports, certs, workers=1)
    doc["listeners"][0]["tls"]["certificates"].append(
        {"cert": str(other / "cert.pem"), "key": str(other / "key.pem")})
    gw = start_gateway(doc)
    port = gw.ports["quic"]
    for name, ca in (("other.test", other), ("localhost", certs)):
        with H3Client("127.0.0.1", port, ca_file=str(ca / "ca.pem"), server_name=name,
                      timeout=10.0) as c:
            assert c.request("GET", "/").status == 200
    with H3Client("127.0.0.1", port, server_name="unknown.test", verify=False,
                  timeout=10.0) as c:
        assert c.request("GET", "/").status == 200
        peer = c.quic._tls.peer_certificate  # type: ignore[union-attr]
        assert peer is not None and b"DNSName(localhost)" in peer.get_subject_alt_names()
    with pytest.raises(H3ClientError):  # localhost's certificate is not other's CA's
        H3Client("127.0.0.1", port, ca_file=str(other / "ca.pem"), server_name="localhost",
                 timeout=5.0)


# -- drain ----------------------------------------------------------------------------------


def test_sigterm_drains_with_goaway(origins: OriginProcess, certs: Path,
                                    start_gateway: StartGateway) -> None:
    gw = start_gateway(quic_config(origins.ports, certs, workers=1,
                                   timeouts={"drain": 10.0}))
    with client(gw, certs) as c:
        sid = c.open("GET", "/slow?delay=1&size=1000")
        time.sleep(0.3)
        threading.Timer(0.0, gw.proc.send_signal, (signal.SIGTERM,)).start()
        resp = c.wait(sid, 10.0)
        assert resp.status == 200 and resp.body_length == 1000
        assert c.goaway_id is not None
    assert gw.proc.wait(15) == 0



# -- the HTTP/3 upstream pool ----------------------------------------------------------


def test_upstream_goaway_and_idle_timeout_reconnect(certs: Path,
                                                    start_gateway: StartGateway) -> None:
    """An HTTP/3 backend that sends GOAWAY every 3 requests, and one whose connections
    idle out, never fail a request: eg retires the connection and opens another."""
    cert, key = str(certs / "cert.pem"), str(certs / "key.pem")
    with start_h3_origin("127.0.0.1", 0, "recycling", cert=cert, key=key,
                         max_requests_per_connection=3) as backend:
        doc = gateway_config([], workers=1, clusters=[{
            "name": "h3", "protocol": "h3", "endpoints": [f"127.0.0.1:{backend.port}"],
            "tls": {"ca_file": str(certs / "ca.pem"), "server_name": "localhost"},
            "pool": {"idle_timeout": 0.5}}], routes=[{"host": "*", "cluster": "h3"}])
        doc["clusters"] = [c for c in doc["clusters"] if c["name"] != "origin"]
        gw = start_gateway(doc)
        url = f"http://127.0.0.1:{gw.port}/echo"
        statuses = [curl("-o", "/dev/null", "-w", "%{http_code}", url).stdout
                    for _ in range(20)]
        assert statuses == [b"200"] * 20
        assert backend.connections >= 7  # 3 requests per connection at most
        before = backend.connections
        time.sleep(1.0)  # past the pool's idle timeout: the connection is closed
        assert curl("-o", "/dev/null", "-w", "%{http_code}", url).stdout == b"200"
        assert backend.connections == before + 1
    assert gw.metric("eg_unhandled_exceptions_total") == 0
