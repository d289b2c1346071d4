"""The HTTP/3 demo origin on loopback UDP, seen by the qh3 test client (tests/h3client.py).

Each endpoint is checked as a client sees it, plus what only HTTP/3 has: routing by
connection ID across a NAT rebinding, GOAWAY and CONNECTION_CLOSE after K requests,
RESET_STREAM codes, 0-RTT with and without acceptance, and qh3's inbound flow control
(credit granted as data arrives: pinned here, since the gateway's h3 adapter depends on
it). Together the client and the origin also test each other.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from eg.demo.origin import pattern
from eg.demo.origin_h3 import H3OriginHandle, TicketMode, start_h3_origin
from tests.h3client import (
    H3_INTERNAL_ERROR,
    H3_NO_ERROR,
    H3_REQUEST_CANCELLED,
    H3_REQUEST_REJECTED,
    H3Client,
    H3ClientError,
    try_zero_rtt,
)
from tests.helpers import REPO

MIB = 1 << 20
# qh3's default per-stream receive window (QuicConfiguration.max_stream_data), which the
# origin keeps: the flow-control test sends well past it.
QH3_STREAM_WINDOW = 6 * MIB

type Certs = dict[str, str]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A CA and a localhost leaf from scripts/dev-certs."""
    folder = tmp_path_factory.mktemp("certs")
    script = REPO / "scripts" / "dev-certs"
    subprocess.run([str(script), str(folder)], check=True, capture_output=True)
    return {name: str(folder / f"{name}.pem") for name in ("ca", "cert", "key")}


@pytest.fixture(scope="module")
def origin(certs: Certs) -> Iterator[H3OriginHandle]:
    """One origin shared by the tests that do not count or stop anything."""
    with start_h3_origin(name="t", cert=certs["cert"], key=certs["key"]) as handle:
        yield handle


@pytest.fixture
def client(origin: H3OriginHandle, certs: Certs) -> Iterator[H3Client]:
    with H3Client("127.0.0.1", origin.port, ca_file=certs["ca"]) as h3:
        yield h3


def rss() -> int:
    """This process's resident set size, in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- endpoints ------------------------------------------------------------------------------


def test_hello_on_root_and_unknown_paths(client: H3Client) -> None:
    for path in ("/", "/no/such/thing?x=1"):
        response = client.request("GET", path)
        assert response.status == 200
        assert response.body == b"hello from origin t\n"
        assert response.header(b"x-origin") == b"t"
        assert response.header(b"content-length") == b"20"
        assert response.ended and response.reset_code is None


def test_echo_lists_method_path_fields_and_body(client: H3Client) -> None:
    response = client.request(
        "POST", "/echo?q=1", headers=[(b"x-one", b"1"), (b"x-two", b"two")], body=b"payload"
    )
    assert response.status == 200
    authority = f"localhost:{client.port}"
    assert response.body == (
        f"POST\n/echo?q=1\n:method: POST\n:scheme: https\n:authority: {authority}\n"
        f":path: /echo?q=1\nx-one: 1\nx-two: two\n\npayload"
    ).encode()


def test_headers_lists_the_fields_only(client: H3Client) -> None:
    response = client.request("GET", "/headers", headers=[(b"x-a", b"b")])
    assert response.body.endswith(b":path: /headers\nx-a: b\n")


def test_sha256_of_an_8_mib_upload_sent_in_pieces(client: H3Client) -> None:
    pieces = [pattern(i * MIB, MIB) for i in range(8)]
    digest = hashlib.sha256(b"".join(pieces)).hexdigest()
    response = client.request("POST", "/sha256", body=iter(pieces))
    assert response.status == 200
    assert response.body == f"{digest} {8 * MIB}".encode()


@pytest.mark.parametrize("size", [0, 1, 250, 65_536, MIB + 7])
def test_bytes_returns_the_pattern(client: H3Client, size: int) -> None:
    response = client.request("GET", f"/bytes/{size}")
    assert response.status == 200
    assert response.header(b"content-length") == str(size).encode()
    assert response.body == pattern(0, size)


def test_bytes_64_mib_streams_with_bounded_memory(client: H3Client) -> None:
    """64 MiB arrive intact, and neither side holds the body: the origin writes as qh3's
    send queue drains, the client hands each piece to a digest."""
    size = 64 * MIB
    digest = hashlib.sha256()
    baseline = rss()
    peak = baseline
    pieces = 0

    def sink(data: bytes) -> None:
        nonlocal peak, pieces
        digest.update(data)
        pieces += 1
        if pieces % 64 == 0:
            peak = max(peak, rss())

    response = client.request("GET", f"/bytes/{size}?trailers=1", sink=sink, timeout=30)
    assert response.status == 200
    assert response.body_length == size
    expected = hashlib.sha256()
    block = pattern(0, MIB + 251)
    for offset in range(0, size, MIB):
        expected.update(block[offset % 251 : offset % 251 + MIB])
    assert digest.hexdigest() == expected.hexdigest()
    assert response.trailer(b"x-checksum") == expected.hexdigest().encode()
    # Measured: ~25 MiB, and none on a second download (qh3 keeps up to the client's
    # 6 MiB stream window in flight on each side; the rest is allocator arenas). Holding
    # the body anywhere would add 64 MiB.
    assert peak - baseline < 40 * MIB, f"RSS grew by {(peak - baseline) / MIB:.1f} MiB"


def test_bytes_trailers_and_nolength(client: H3Client) -> None:
    response = client.request("GET", "/bytes/1000?trailers=1&nolength=1")
    assert response.header(b"content-length") is None
    assert response.header(b"trailer") == b"x-checksum"
    assert response.trailers == [
        (b"x-checksum", hashlib.sha256(pattern(0, 1000)).hexdigest().encode())
    ]


@pytest.mark.parametrize("status", [200, 201, 204, 304, 404, 503, 599])
def test_status(client: H3Client, status: int) -> None:
    response = client.request("GET", f"/status/{status}")
    assert response.status == status
    if status in (204, 304):
        assert response.body == b""
        assert response.header(b"content-length") is None
    else:
        assert response.body == f"status {status}\n".encode()


def test_bad_parameters_get_400(client: H3Client) -> None:
    assert client.request("GET", "/status/abc").status == 400
    assert client.request("GET", "/bytes/-1").status == 400
    assert client.request("GET", "/slow?delay=never").status == 400


def test_head_gets_the_head_only(client: H3Client) -> None:
    response = client.request("HEAD", "/bytes/5000")
    assert response.status == 200
    assert response.header(b"content-length") == b"5000"
    assert response.body == b""
    assert response.ended


def test_slow_waits_before_the_head(client: H3Client) -> None:
    began = time.monotonic()
    response = client.request("GET", "/slow?delay=0.3&size=1000")
    assert time.monotonic() - began >= 0.3
    assert response.body == pattern(0, 1000)


def test_drip_spaces_out_the_body(client: H3Client) -> None:
    began = time.monotonic()
    stream_id = client.open("GET", "/drip?size=400&interval=0.1&piece=100")
    head = client.wait_headers(stream_id)
    assert head.status == 200 and head.header(b"content-length") == b"400"
    response = client.wait(stream_id)
    assert time.monotonic() - began >= 0.4
    assert response.body == pattern(0, 400)


def test_reset_mid_body_sends_half_then_h3_internal_error(client: H3Client) -> None:
    response = client.request("GET", "/reset-mid-body?size=200000")
    assert response.status == 200
    assert response.header(b"content-length") == b"200000"
    assert response.reset_code == H3_INTERNAL_ERROR == 0x102
    assert response.body == pattern(0, 100_000)  # every byte before the reset arrives
    assert not response.ended


def test_headers_size_adds_fields(client: H3Client) -> None:
    response = client.request("GET", "/headers-size?n=20&size=1000")
    extra = [(name, value) for name, value in response.headers if name.startswith(b"x-h-")]
    assert [name for name, _ in extra] == [f"x-h-{i}".encode() for i in range(20)]
    assert all(len(value) == 1000 for _, value in extra)


def test_upload_slow_read_paces_the_reading(client: H3Client) -> None:
    began = time.monotonic()
    response = client.request("POST", "/upload-slow-read?rate=400000", body=b"u" * 200_000)
    assert response.body == b"200000"
    assert time.monotonic() - began >= 0.45


def test_qh3_grants_stream_credit_as_data_arrives(origin: H3OriginHandle, certs: Certs) -> None:
    """Pins qh3 2.1.0's behaviour: MAX_STREAM_DATA follows bytes *received*, not bytes the
    application consumed. An endpoint consuming 256 KiB/s lets 3x qh3's stream window
    leave the client within seconds at most; under "credit as consumed" the client would
    stall at the window (6 MiB) for 20 s. If this fails, qh3 has gained real
    backpressure, and the origin and the gateway's h3 adapter can use it."""
    size = 3 * QH3_STREAM_WINDOW
    rate = 256 * 1024
    with H3Client("127.0.0.1", origin.port, ca_file=certs["ca"]) as h3:
        stream_id = h3.open("POST", f"/upload-slow-read?rate={rate}", end_stream=False)
        began = time.monotonic()
        h3.send_data(stream_id, b"u" * size, end_stream=True)
        # Everything has been sent (get_send_buffer_size counts bytes never sent yet).
        assert h3.wait_for(lambda: h3.quic.get_send_buffer_size(stream_id) == 0, 5.0)
        consumed_at_most = (time.monotonic() - began) * rate + rate
        assert consumed_at_most + QH3_STREAM_WINDOW < size
        resets = origin.resets
        h3.cancel(stream_id)
        assert h3.wait_for(lambda: origin.resets > resets, 2.0)


def test_trailers(client: H3Client) -> None:
    response = client.request("GET", "/trailers")
    assert response.body == b"hello from origin t\n"
    assert response.trailers == [(b"grpc-status", b"0"), (b"grpc-message", b"ok")]


def test_stats_count_requests_and_connections(certs: Certs) -> None:
    with start_h3_origin(name="s", cert=certs["cert"], key=certs["key"]) as handle:
        for _ in range(2):
            with H3Client("127.0.0.1", handle.port, ca_file=certs["ca"]) as h3:
                h3.request("GET", "/")
        with H3Client("127.0.0.1", handle.port, ca_file=certs["ca"]) as h3:
            body = h3.request("GET", "/_stats").body
        assert body.startswith(b"requests=3 connections=3 ")
        assert (handle.requests, handle.connections) == (3, 3)


def test_concurrent_requests_share_one_connection(client: H3Client) -> None:
    began = time.monotonic()
    responses = client.request_many("GET", ["/slow?delay=0.4"] * 8 + ["/bytes/300000"])
    assert time.monotonic() - began < 1.5  # 8 x 0.4 s in parallel, not in series
    assert [r.status for r in responses] == [200] * 9
    assert responses[-1].body == pattern(0, 300_000)
    stats = client.request("GET", "/_stats").body.decode()
    assert int(stats.rsplit("streams_max_concurrent=", 1)[1]) >= 9


# -- connection behaviour -------------------------------------------------------------------


def test_goaway_after_k_requests_then_close(certs: Certs) -> None:
    with start_h3_origin(
        name="g", cert=certs["cert"], key=certs["key"], max_requests_per_connection=3
    ) as handle:
        with H3Client("127.0.0.1", handle.port, ca_file=certs["ca"]) as h3:
            first = [h3.request("GET", "/") for _ in range(2)]
            assert [r.goaway for r in first] == [False, False]
            third = h3.request("GET", "/bytes/100000")
            assert third.status == 200 and third.body == pattern(0, 100_000)
            assert third.goaway
            assert h3.goaway_id == third.stream_id + 4  # the first stream not served
            close = h3.wait_closed(5.0)
            assert close is not None
            assert (close.error_code, close.reason) == (
                H3_NO_ERROR, "max requests per connection reached"
            )
            with pytest.raises(H3ClientError):
                h3.request("GET", "/")
        with H3Client("127.0.0.1", handle.port, ca_file=certs["ca"]) as h3:
            assert h3.request("GET", "/").status == 200
        assert handle.connections == 2


def test_goaway_refuses_streams_past_it(certs: Certs) -> None:
    with start_h3_origin(
        name="g", cert=certs["cert"], key=certs["key"], max_requests_per_connection=2
    ) as handle, H3Client("127.0.0.1", handle.port, ca_file=certs["ca"]) as h3:
        responses = h3.request_many("GET", ["/slow?delay=0.2"] * 4)
        assert [r.status for r in responses[:2]] == [200, 200]
        assert [r.reset_code for r in responses[2:]] == [H3_REQUEST_REJECTED] * 2
        assert handle.requests == 2


def test_rebind_keeps_the_connection(origin: H3OriginHandle, certs: Certs) -> None:
    connections = origin.connections
    with H3Client("127.0.0.1", origin.port, ca_file=certs["ca"]) as h3:
        assert h3.request("GET", "/").status == 200
        before = h3.local_port
        after = h3.rebind()
        assert after != before
        response = h3.request("GET", "/bytes/2000000")
        assert response.status == 200 and response.body == pattern(0, 2_000_000)
        assert h3.terminated is None
        assert h3.ping()
    assert origin.connections == connections + 1


@pytest.mark.parametrize("how", ["reset", "stop_sending", "cancel"])
def test_client_cancel_reaches_the_origin(
    origin: H3OriginHandle, client: H3Client, how: str
) -> None:
    """RESET_STREAM of an unfinished request body, STOP_SENDING of a response being
    sent, or both: the origin stops the request, counts it, and resets its own half."""
    resets = origin.resets
    if how == "reset":
        stream_id = client.open("POST", "/sha256", end_stream=False)
        client.send_data(stream_id, b"some of the body")
        client.reset(stream_id)
    else:
        stream_id = client.open("GET", "/drip?size=1000&interval=0.2&piece=10")
        assert client.wait_headers(stream_id).status == 200
        getattr(client, how)(stream_id)
    assert client.wait_for(lambda: origin.resets == resets + 1, 2.0)
    response = client.wait(stream_id)
    assert response.reset_code == H3_REQUEST_CANCELLED
    assert client.request("GET", "/").status == 200  # the connection is fine


def test_request_trailers_end_the_body(client: H3Client) -> None:
    response = client.request(
        "POST", "/sha256", body=[b"ab", b"c"], trailers=[(b"x-sum", b"whatever")]
    )
    assert response.body == f"{hashlib.sha256(b'abc').hexdigest()} 3".encode()


def test_late_frames_of_an_abandoned_request_are_not_a_new_request(
    origin: H3OriginHandle, client: H3Client
) -> None:
    """After a STOP_SENDING the origin forgets the request while its body is still open:
    trailers that arrive later must not be taken for a new request on that stream."""
    requests, resets = origin.requests, origin.resets
    stream_id = client.open("POST", "/sha256", end_stream=False)
    client.send_data(stream_id, b"x" * 1000)
    client.stop_sending(stream_id)
    # At once: once the origin's own STOP_SENDING arrives, qh3 would drop the trailers.
    client.send_trailers(stream_id, [(b"x-late", b"1")])
    assert client.wait_for(lambda: origin.resets == resets + 1, 2.0)
    assert client.request("GET", "/").status == 200
    assert origin.requests == requests + 2


def test_stop_closes_connections_with_no_error(certs: Certs) -> None:
    handle = start_h3_origin(name="x", cert=certs["cert"], key=certs["key"])
    with H3Client("127.0.0.1", handle.port, ca_file=certs["ca"]) as h3:
        h3.request("GET", "/")
        stream_id = h3.open("GET", "/slow?delay=30")
        handle.stop()
        close = h3.wait_closed(3.0)
        assert close is not None and close.error_code == H3_NO_ERROR
        assert close.reason == "origin stopping"
        assert h3.responses[stream_id].closed == close


def test_idle_timeout_closes_the_connection(certs: Certs) -> None:
    with start_h3_origin(
        name="i", cert=certs["cert"], key=certs["key"], idle_timeout=0.5
    ) as handle, H3Client("127.0.0.1", handle.port, ca_file=certs["ca"]) as h3:
        h3.request("GET", "/")
        began = time.monotonic()
        assert h3.wait_closed(5.0) is not None
        assert time.monotonic() - began < 3.0


def test_garbage_datagrams_are_ignored(origin: H3OriginHandle, client: H3Client) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        for payload in (b"", b"\x00", os.urandom(50), b"\xc0" + os.urandom(1300)):
            raw.sendto(payload, ("127.0.0.1", origin.port))
    assert client.request("GET", "/").status == 200


def test_certificate_checks(origin: H3OriginHandle, certs: Certs) -> None:
    with pytest.raises(H3ClientError):
        H3Client("127.0.0.1", origin.port, timeout=2.0)  # no CA: the leaf is untrusted
    with pytest.raises(H3ClientError):
        H3Client("127.0.0.1", origin.port, ca_file=certs["ca"], server_name="other", timeout=2)
    with H3Client("127.0.0.1", origin.port, verify=False) as h3:
        assert h3.request("GET", "/").status == 200


@pytest.mark.parametrize(
    ("mode", "ticket", "attempted", "accepted"),
    [("off", False, False, False), ("issue", True, True, False), ("resume", True, True, True)],
)
def test_zero_rtt(
    certs: Certs, mode: TicketMode, ticket: bool, attempted: bool, accepted: bool
) -> None:
    """The client tells accepted early data from rejected: a gateway test relies on it."""
    with start_h3_origin(
        name="z", cert=certs["cert"], key=certs["key"], session_tickets=mode
    ) as handle:
        result = try_zero_rtt(
            "127.0.0.1", handle.port, "POST", "/echo", body=b"early", ticket_wait=0.3,
            ca_file=certs["ca"],
        )
    assert (result.ticket, result.attempted, result.accepted) == (ticket, attempted, accepted)
    assert result.resumed == accepted
    if ticket:
        assert result.response is not None and result.response.status == 200
        assert result.response.body.endswith(b"\n\nearly")  # resent in 1-RTT if rejected


# -- process level --------------------------------------------------------------------------


def test_the_gil_stays_disabled() -> None:
    assert not sys._is_gil_enabled()


def test_cli_prints_its_port_and_stops_on_sigterm(certs: Certs) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "eg.demo.origin_h3", "--port", "0", "--name", "cli",
         "--cert", certs["cert"], "--key", certs["key"]],
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("origin listening on 127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        with H3Client("127.0.0.1", port, ca_file=certs["ca"]) as h3:
            assert h3.request("GET", "/").body == b"hello from origin cli\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
