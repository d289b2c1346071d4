"""HTTP/1.1 proxying end to end: the real gateway process between real clients and origins.

Clients are curl, http.client and raw sockets; the origins are ``eg.demo.origin``
processes. Bodies are checked byte for byte (the origin's body pattern, SHA-256), and the
gateway's resident memory is sampled while 64 MiB bodies stream through it.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import itertools
import socket
import subprocess
import time
from pathlib import Path

import pytest

from eg.demo.origin import pattern
from tests.helpers import OriginProcess, RawConnection, http_get, parse_response
from tests.integration.conftest import (
    Gateway,
    MiB,
    OriginTally,
    RssSampler,
    StartGateway,
    check_stopped_cleanly,
    connect,
    curl,
    gateway_config,
    pattern_chunks,
    pattern_sha256,
    read_until_close,
)

BIG = 64 * MiB
# A streaming proxy holds a few buffers per connection (buffer_high 64 KiB, recv 256 KiB,
# a 1 MiB send cap); whole-body buffering of a 64 MiB transfer would blow well past this.
RSS_BOUND = 200 * MiB

pytestmark = pytest.mark.timeout(60)


def echo_lines(body: bytes) -> list[str]:
    """The header lines of an /echo body (between the target line and the blank line)."""
    head = body.decode("latin-1").split("\n\n", 1)[0]
    return head.split("\n")[2:]


# -- basics -----------------------------------------------------------------------------------


def test_get_through_to_origin_with_curl(gateway: Gateway) -> None:
    result = curl("-i", f"http://127.0.0.1:{gateway.port}/")
    assert result.returncode == 0, result.stderr
    reply = parse_response(result.stdout)
    assert reply.status == 200
    assert reply.header("x-origin") in ("a", "b")
    assert reply.body == f"hello from origin {reply.header('x-origin')}\n".encode()
    assert reply.header("via") == "1.1 eg"


def test_forwarding_headers_added_and_host_kept(gateway: Gateway) -> None:
    with RawConnection(gateway.port) as conn:
        plain = conn.request("GET", "/echo?x=1", [("X-Custom", "kept")])
        chained = conn.request("GET", "/echo", [("X-Forwarded-For", "10.0.0.1")])
    assert plain.status == 200
    lines = echo_lines(plain.body)
    assert plain.body.startswith(b"GET\n/echo?x=1\n")
    assert "host: origin" in lines
    assert "x-forwarded-for: 127.0.0.1" in lines
    assert "x-forwarded-proto: http" in lines
    assert "via: 1.1 eg" in lines
    assert "x-custom: kept" in lines
    assert "x-forwarded-for: 10.0.0.1, 127.0.0.1" in echo_lines(chained.body)


def test_client_cannot_spoof_forwarding_headers(gateway: Gateway) -> None:
    with RawConnection(gateway.port) as conn:
        reply = conn.request(
            "GET",
            "/echo",
            [
                ("X-Forwarded-For", "1.1.1.1"),
                ("X-Forwarded-For", "2.2.2.2"),
                ("X-Forwarded-Proto", "https"),
            ],
        )
    lines = echo_lines(reply.body)
    xff = ", ".join(line.split(": ", 1)[1] for line in lines if line.startswith("x-forwarded-for:"))
    # The address eg saw stays the rightmost entry of the combined list.
    assert xff == "1.1.1.1, 2.2.2.2, 127.0.0.1"
    assert [line for line in lines if line.startswith("x-forwarded-proto:")] == [
        "x-forwarded-proto: http"
    ]


def test_hop_by_hop_headers_stripped(gateway: Gateway) -> None:
    with RawConnection(gateway.port) as conn:
        reply = conn.request(
            "GET",
            "/echo",
            [
                ("Connection", "foo, keep-alive"),
                ("Foo", "x"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Connection", "keep-alive"),
                ("TE", "trailers"),
                ("Upgrade", "websocket"),
                ("X-End-To-End", "yes"),
            ],
        )
        assert reply.status == 200
        # Connection: keep-alive kept this client connection open.
        assert conn.request("GET", "/").status == 200
    names = {line.split(":", 1)[0].lower() for line in echo_lines(reply.body)}
    assert {"foo", "keep-alive", "proxy-connection", "te", "upgrade"}.isdisjoint(names)
    assert "connection" not in names
    assert "x-end-to-end" in names


def test_round_robin_alternates_between_origins(gateway: Gateway) -> None:
    # Balancing state is per worker; one connection stays on one worker.
    with RawConnection(gateway.port) as conn:
        seen = [conn.request("GET", "/").header("x-origin") for _ in range(6)]
    assert set(seen) == {"a", "b"}
    assert all(x != y for x, y in itertools.pairwise(seen)), seen


def test_keep_alive_five_requests_on_one_connection(gateway: Gateway) -> None:
    with RawConnection(gateway.port) as conn:
        for i in range(5):
            reply = conn.request("GET", f"/echo?n={i}")
            assert reply.status == 200
            assert reply.body.startswith(f"GET\n/echo?n={i}\n".encode())
            assert reply.header("connection") != "close"
        assert not conn.at_eof(0.2)


def test_max_requests_per_connection_closes_after_the_last(
    origins: OriginProcess, start_gateway: StartGateway
) -> None:
    gw = start_gateway(gateway_config(origins.ports, limits={"max_requests_per_connection": 3}))
    with RawConnection(gw.port) as conn:
        first = conn.request("GET", "/")
        second = conn.request("GET", "/")
        third = conn.request("GET", "/")
        assert [first.status, second.status, third.status] == [200, 200, 200]
        assert first.header("connection") is None
        assert second.header("connection") is None
        assert third.header("connection") == "close"
        assert conn.at_eof(5.0)
    check_stopped_cleanly(gw)


def test_upstream_connections_are_reused(gateway: Gateway, origins: OriginProcess) -> None:
    tally = OriginTally(origins.ports)
    before = tally.per_port()
    for _ in range(40):
        assert http_get(gateway.port, "/").status == 200
    after = tally.per_port()
    served = sum(after[p][0] - before[p][0] for p in origins.ports)
    opened = {p: after[p][1] - before[p][1] for p in origins.ports}
    assert served == 40
    # At most one pooled connection per worker (2) per origin, whatever the client did.
    assert all(n <= 2 for n in opened.values()), opened


@pytest.mark.parametrize(("max_idle", "kept"), [(3, 3), (None, 8)])
def test_pool_keeps_up_to_max_idle(origins: OriginProcess, start_gateway: StartGateway,
                                   max_idle: int | None, kept: int) -> None:
    """8 requests in flight at once, twice. ``max_idle`` idle connections survive the
    first round (the rest are closed, counted as open no more) and serve the second; the
    default keeps all 8, so the second round opens none."""
    doc = gateway_config(origins.ports[:1], workers=1)
    if max_idle is not None:
        doc["clusters"][0]["pool"] = {"max_idle": max_idle}
    gw = start_gateway(doc)
    tally = OriginTally(origins.ports[:1])

    def burst() -> list[int]:
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(lambda _: http_get(gw.port, "/slow?delay=0.5").status,
                                 range(8)))

    start = tally.connections()
    assert burst() == [200] * 8
    assert tally.connections() - start == 8
    assert gw.metric("eg_upstream_connections_open") == kept
    assert burst() == [200] * 8
    assert tally.connections() - start == 8 + 8 - kept


# -- bodies -----------------------------------------------------------------------------------


def test_upload_64mib_with_content_length(gateway: Gateway) -> None:
    expected = pattern_sha256(BIG)
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    try:
        with RssSampler(gateway) as rss:
            conn.request(
                "POST",
                "/sha256",
                body=pattern_chunks(BIG),
                headers={"Content-Length": str(BIG), "Content-Type": "application/octet-stream"},
            )
            response = conn.getresponse()
            body = response.read()
    finally:
        conn.close()
    assert response.status == 200
    assert body.decode() == f"{expected} {BIG}"
    assert rss.samples > 0
    assert rss.peak < RSS_BOUND, f"gateway RSS peaked at {rss.peak / MiB:.0f} MiB"


def test_upload_chunked_with_trailers(gateway: Gateway) -> None:
    size = 3 * MiB + 12345
    data = b"".join(pattern_chunks(size, piece=100_000))
    with RawConnection(gateway.port, timeout=30) as conn:
        conn.send(
            b"POST /sha256 HTTP/1.1\r\nHost: origin\r\nTransfer-Encoding: chunked\r\n"
            b"Trailer: x-checksum\r\n\r\n"
        )
        for start in range(0, size, 100_000):
            piece = data[start : start + 100_000]
            conn.send(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
        conn.send(b"0\r\nx-checksum: %s\r\n\r\n" % hashlib.sha256(data).hexdigest().encode())
        response = conn.read_response("POST")
    assert response.status == 200
    assert response.body.decode() == f"{hashlib.sha256(data).hexdigest()} {size}"


def test_upload_chunked_with_curl(gateway: Gateway, tmp_path: Path) -> None:
    size = 8 * MiB + 1
    path = tmp_path / "upload.bin"
    with path.open("wb") as f:
        for piece in pattern_chunks(size):
            f.write(piece)
    result = curl(
        "-H",
        "Transfer-Encoding: chunked",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        f"@{path}",
        f"http://127.0.0.1:{gateway.port}/sha256",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == f"{pattern_sha256(size)} {size}"


def test_download_64mib(gateway: Gateway) -> None:
    digest = hashlib.sha256()
    received = 0
    with RssSampler(gateway) as rss:
        proc = subprocess.Popen(
            [
                "curl",
                "-sS",
                "--noproxy",
                "*",
                "--max-time",
                "30",
                f"http://127.0.0.1:{gateway.port}/bytes/{BIG}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        while data := proc.stdout.read(1 << 20):
            digest.update(data)
            received += len(data)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert received == BIG
    assert digest.hexdigest() == pattern_sha256(BIG)
    assert rss.peak < RSS_BOUND, f"gateway RSS peaked at {rss.peak / MiB:.0f} MiB"


@pytest.mark.parametrize("query", ["chunked=1", "close=1"])
def test_download_chunked_and_close_delimited(gateway: Gateway, query: str) -> None:
    size = 5 * MiB + 7
    with RawConnection(gateway.port, timeout=30) as conn:
        reply = conn.request("GET", f"/bytes/{size}?{query}")
        assert reply.status == 200
        assert reply.body == pattern(0, size)
        if query == "close=1":
            # The origin delimited the body by closing; the gateway frames it for an
            # HTTP/1.1 client (chunked) or closes too, and never cuts it short.
            assert reply.header("content-length") is None
            if reply.header("transfer-encoding") != "chunked":
                assert conn.at_eof(5.0)
        else:
            assert reply.header("transfer-encoding") == "chunked"


def test_trailers_pass_through_chunked(gateway: Gateway) -> None:
    size = 300_000
    with RawConnection(gateway.port) as conn:
        reply = conn.request("GET", f"/bytes/{size}?trailers=1")
        grpc = conn.request("GET", "/trailers")
    assert reply.status == 200
    assert reply.header("transfer-encoding") == "chunked"
    assert reply.body == pattern(0, size)
    assert reply.trailer("x-checksum") == pattern_sha256(size)
    assert grpc.trailer("grpc-status") == "0"
    assert grpc.body.startswith(b"hello from origin ")


def test_head_has_no_body(gateway: Gateway) -> None:
    with RawConnection(gateway.port) as conn:
        head = conn.request("HEAD", "/bytes/1000")
        # Had a body followed the head, this response would be parsed out of it.
        after = conn.request("GET", "/echo?after-head")
    assert head.status == 200
    assert head.body == b""
    assert head.header("content-length") == "1000"
    assert after.status == 200
    assert after.body.startswith(b"GET\n/echo?after-head\n")


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_have_no_body(gateway: Gateway, status: int) -> None:
    with RawConnection(gateway.port) as conn:
        reply = conn.request("GET", f"/status/{status}")
        after = conn.request("GET", "/echo?after")
    assert reply.status == status
    assert reply.body == b""
    assert reply.header("transfer-encoding") is None
    if status == 204:
        assert reply.header("content-length") is None
    assert after.status == 200
    assert after.body.startswith(b"GET\n/echo?after\n")


def test_expect_100_continue(gateway: Gateway) -> None:
    body = b"hello, continue"
    with RawConnection(gateway.port) as conn:
        conn.send(
            b"POST /echo HTTP/1.1\r\nHost: origin\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        conn.sock.settimeout(10)
        assert conn.reader.readline() == b"HTTP/1.1 100 Continue\r\n"
        while conn.reader.readline() not in (b"\r\n", b""):
            pass
        conn.send(body)
        reply = conn.read_response("POST")
    assert reply.status == 200
    assert reply.body.endswith(b"\n\n" + body)
    assert "expect" not in {line.split(":")[0].lower() for line in echo_lines(reply.body)}


def test_pipelined_requests_answered_in_order(gateway: Gateway) -> None:
    with RawConnection(gateway.port) as conn:
        conn.send(
            b"GET /echo?first HTTP/1.1\r\nHost: origin\r\n\r\n"
            b"POST /echo?second HTTP/1.1\r\nHost: origin\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /echo?third HTTP/1.1\r\nHost: origin\r\n\r\n"
        )
        first = conn.read_response()
        second = conn.read_response("POST")
        third = conn.read_response()
    assert first.body.startswith(b"GET\n/echo?first\n")
    assert second.body.startswith(b"POST\n/echo?second\n")
    assert second.body.endswith(b"\n\nabc")
    assert third.body.startswith(b"GET\n/echo?third\n")


@pytest.mark.parametrize("query", ["", "?chunked=1"])
def test_http10_request_gets_delimited_response_and_close(gateway: Gateway, query: str) -> None:
    size = 100_000
    with connect(gateway.port) as sock:
        sock.sendall(f"GET /bytes/{size}{query} HTTP/1.0\r\n\r\n".encode())
        data, closed = read_until_close(sock)
    assert closed
    reply = parse_response(data)
    assert reply.status == 200
    assert reply.header("transfer-encoding") is None
    length = reply.header("content-length")
    assert length is None or int(length) == size
    assert reply.body == pattern(0, size)


# -- flow control and connection reuse under stress --------------------------------------------


def test_stalled_reader_is_backpressured_not_buffered(gateway: Gateway) -> None:
    size = 32 * MiB
    with RssSampler(gateway) as rss, RawConnection(gateway.port, timeout=30) as conn:
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        conn.send(f"GET /bytes/{size} HTTP/1.1\r\nHost: origin\r\n\r\n".encode())
        # Read nothing for a while: the gateway must stop reading the origin rather than
        # buffer (its send cap, buffer_limit, would abort the connection).
        time.sleep(1.5)
        reply = conn.read_response()
    assert reply.status == 200
    assert len(reply.body) == size
    assert hashlib.sha256(reply.body).hexdigest() == pattern_sha256(size)
    assert rss.peak < RSS_BOUND, f"gateway RSS peaked at {rss.peak / MiB:.0f} MiB"


def test_slow_reading_origin_backpressures_the_upload(gateway: Gateway) -> None:
    size = 6 * MiB
    rate = 4 * MiB  # bytes per second the origin reads
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    try:
        conn.request(
            "POST",
            f"/upload-slow-read?rate={rate}",
            body=pattern_chunks(size),
            headers={"Content-Length": str(size)},
        )
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 200
    assert body == str(size).encode()


def test_client_gone_before_response_does_not_poison_the_pool(gateway: Gateway) -> None:
    for n in range(6):
        with connect(gateway.port) as sock:
            sock.sendall(f"GET /slow?delay=0.3&size={n} HTTP/1.1\r\nHost: origin\r\n\r\n".encode())
        with connect(gateway.port) as sock:
            sock.sendall(f"GET /bytes/{4 * MiB} HTTP/1.1\r\nHost: origin\r\n\r\n".encode())
            sock.recv(1000)
    time.sleep(0.5)
    # Every later response must be the one for its own request.
    for n in range(20):
        with RawConnection(gateway.port) as conn:
            reply = conn.request("GET", f"/echo?check={n}")
        assert reply.status == 200
        assert reply.body.startswith(f"GET\n/echo?check={n}\n".encode()), reply.body[:100]


def test_request_arriving_one_byte_at_a_time(gateway: Gateway) -> None:
    data = (
        b"POST /echo?first HTTP/1.1\r\nHost: origin\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nx-trailer: 1\r\n\r\n"
        b"POST /echo?second HTTP/1.1\r\nHost: origin\r\nContent-Length: 3\r\n\r\nxyz"
    )
    with RawConnection(gateway.port) as conn:
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in data:
            conn.send(bytes([byte]))
            time.sleep(0.001)
        first = conn.read_response("POST")
        second = conn.read_response("POST")
    assert first.body.startswith(b"POST\n/echo?first\n")
    assert first.body.endswith(b"\n\nabcde")
    assert second.body.startswith(b"POST\n/echo?second\n")
    assert second.body.endswith(b"\n\nxyz")


def test_connection_close_request_closes_after_response(gateway: Gateway) -> None:
    with RawConnection(gateway.port) as conn:
        reply = conn.request("GET", "/echo", [("Connection", "close")])
        assert reply.status == 200
        assert reply.header("connection") == "close"
        assert conn.at_eof(5.0)


def test_absolute_form_target(gateway: Gateway) -> None:
    with RawConnection(gateway.port) as conn:
        conn.send(b"GET http://absolute.test/echo?abs HTTP/1.1\r\nHost: other.test\r\n\r\n")
        reply = conn.read_response()
    assert reply.status == 200
    assert reply.body.startswith(b"GET\n/echo?abs\n")
    assert "host: absolute.test" in echo_lines(reply.body)


@pytest.mark.parametrize(("count", "size", "status"), [(10, 1000, 200), (100, 1000, 502)])
def test_large_response_heads(gateway: Gateway, count: int, size: int, status: int) -> None:
    reply = http_get(gateway.port, f"/headers-size?n={count}&size={size}")
    assert reply.status == status
    if status == 200:
        assert reply.header(f"x-h-{count - 1}") == ("abcdefghijklmnopqrstuvwxyz" * 40)[:size]


def test_many_concurrent_clients(gateway: Gateway) -> None:
    def one(n: int) -> bytes:
        with RawConnection(gateway.port, timeout=30) as conn:
            out = b""
            for k in range(3):
                reply = conn.request("POST", f"/echo?c={n}&k={k}", body=b"%d" % n)
                assert reply.status == 200
                out += reply.body
            return out

    with concurrent.futures.ThreadPoolExecutor(max_workers=64) as pool:
        results = list(pool.map(one, range(200)))
    for n, body in enumerate(results):
        for k in range(3):
            assert f"/echo?c={n}&k={k}\n".encode() in body
