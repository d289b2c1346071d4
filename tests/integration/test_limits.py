"""Limits, timeouts and upstream failures, end to end against the real gateway process.

The module's gateway runs with small limits and short timeouts (see ``limited``) in front
of real origins, plus two clusters whose endpoints misbehave at the TCP level:
``refused`` (a bound socket that never listens: connection refused) and ``blackhole`` (a
listener with a full accept queue: the SYN goes unanswered, so connecting times out).
Every test also checks that the matching counter in ``/metrics`` moved.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    OriginProcess,
    RawConnection,
    ShortRead,
    http_get,
    parse_response,
    raw_request,
    running_origins,
)
from tests.integration.conftest import (
    Gateway,
    MiB,
    OriginTally,
    StartGateway,
    check_stopped_cleanly,
    connect,
    curl,
    gateway_config,
    read_until_close,
)

MAX_BODY = 1 * MiB
MAX_HEAD = 8192
MAX_HEADERS = 32
# Timeouts of the limited gateway, seconds.
HEADER_TIMEOUT = 1.0
BODY_IDLE = 1.0
CONNECT_TIMEOUT = 1.0
RESPONSE_TIMEOUT = 2.0
# How long a test waits for a timeout to fire: the timeout plus generous slack.
TIMEOUT_SLACK = 6.0

# Paths served by the origin cluster; anything else has no route.
ORIGIN_PATHS = (
    "/bytes/", "/echo", "/sha256", "/reset-mid-body", "/close-no-response", "/slow", "/drip",
)  # fmt: skip

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def refused_port() -> Iterator[int]:
    """A loopback port bound by a socket that never listens: connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def blackhole_port() -> Iterator[int]:
    """A listener whose accept queue is full: new SYNs are dropped, connects stall."""
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(8):
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            _, writable, _ = select.select([], [filler], [], 0.3)
            if not writable:
                break  # this one stalled: the queue is full
        else:
            pytest.skip("could not fill a listen queue on this kernel")
        yield port


@pytest.fixture(scope="module")
def limited(
    origins: OriginProcess, refused_port: int, blackhole_port: int, gateway_factory: StartGateway
) -> Iterator[Gateway]:
    """The module's gateway; it must still stop cleanly after all this abuse."""
    # Many failures on purpose: these endpoints must keep failing, never get ejected.
    patient = {"max_failures": 1_000_000, "eject_seconds": 1.0}
    routes = [{"path_prefix": path, "cluster": "origin"} for path in ORIGIN_PATHS]
    routes += [
        {"path_prefix": "/x-refused", "cluster": "refused"},
        {"path_prefix": "/x-blackhole", "cluster": "blackhole"},
    ]
    gw = gateway_factory(
        gateway_config(
            origins.ports,
            clusters=[
                {
                    "name": "refused",
                    "endpoints": [f"127.0.0.1:{refused_port}"],
                    "health": patient,
                },
                {
                    "name": "blackhole",
                    "endpoints": [f"127.0.0.1:{blackhole_port}"],
                    "health": patient,
                },
            ],
            routes=routes,
            limits={
                "max_request_body": MAX_BODY,
                "max_response_body": MAX_BODY,
                "max_head_size": MAX_HEAD,
                "max_headers": MAX_HEADERS,
            },
            timeouts={
                "header": HEADER_TIMEOUT,
                "body_idle": BODY_IDLE,
                "connect": CONNECT_TIMEOUT,
                "response": RESPONSE_TIMEOUT,
            },
        )
    )
    yield gw
    check_stopped_cleanly(gw)


class Counter:
    """A counter's value now, to compare with later: ``delta()``."""

    def __init__(self, gw: Gateway, name: str, **labels: str) -> None:
        self.gw = gw
        self.name = name
        self.labels = labels
        self.start = gw.metric(name, **labels)

    def delta(self) -> float:
        return self.gw.metric(self.name, **self.labels) - self.start


def limit_hits(gw: Gateway, kind: str) -> Counter:
    return Counter(gw, "eg_limit_hits_total", kind=kind)


def backend_errors(gw: Gateway, cluster: str, kind: str) -> Counter:
    return Counter(gw, "eg_backend_errors_total", cluster=cluster, kind=kind)


# -- request limits ---------------------------------------------------------------------------


def test_declared_body_too_large_gets_413_and_never_reaches_origin(
    limited: Gateway, origins: OriginProcess
) -> None:
    tally = OriginTally(origins.ports)
    before = tally.requests()
    hits = limit_hits(limited, "body_size")
    with RawConnection(limited.port) as conn:
        # Only the head: the gateway must answer from the declared length alone.
        conn.send(
            b"POST /echo HTTP/1.1\r\nHost: origin\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1)
        )
        reply = conn.read_response("POST")
    assert reply.status == 413
    assert reply.header("x-eg-error") == "body_size"
    assert tally.requests() == before
    assert hits.delta() == 1


def test_declared_body_too_large_with_curl(limited: Gateway, tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * (2 * MAX_BODY))
    result = curl(
        "-o", "/dev/null", "-w", "%{http_code}", "--data-binary", f"@{path}",
        f"http://127.0.0.1:{limited.port}/sha256",
    )  # fmt: skip
    assert result.stdout == b"413", result.stderr


def send_chunked_over_limit(port: int) -> tuple[bytes, bool]:
    """POST a chunked body twice max_request_body long; what came back and whether closed."""
    piece = b"y" * 65536
    with connect(port) as sock:
        sock.sendall(b"POST /sha256 HTTP/1.1\r\nHost: origin\r\nTransfer-Encoding: chunked\r\n\r\n")
        sent = 0
        try:
            while sent <= 2 * MAX_BODY:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # aborted while sending: acceptable
        return read_until_close(sock)


def test_chunked_body_over_limit_mid_stream_never_completes(limited: Gateway) -> None:
    data, closed = send_chunked_over_limit(limited.port)
    assert closed
    if data:
        # A response may have started only as a 413; never as a completed 200.
        assert parse_response(data, "POST").status == 413


def test_chunked_body_over_limit_mid_stream_is_counted(limited: Gateway) -> None:
    hits = limit_hits(limited, "body_size")
    send_chunked_over_limit(limited.port)
    assert hits.delta() == 1


# -- response limit ---------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["", "?chunked=1"])
def test_response_over_max_response_body_is_aborted(limited: Gateway, query: str) -> None:
    size = 2 * MAX_BODY
    result = curl(
        "-o", "/dev/null", "-w", "%{size_download}", f"http://127.0.0.1:{limited.port}/bytes/{size}{query}"
    )  # fmt: skip
    assert result.returncode in (18, 56), (result.returncode, result.stderr)
    assert int(result.stdout) < size


def test_response_over_max_response_body_is_counted(limited: Gateway) -> None:
    before = limited.metric("eg_limit_hits_total", kind="response_body_size")
    curl("-o", "/dev/null", f"http://127.0.0.1:{limited.port}/bytes/{2 * MAX_BODY}")
    after = limited.metric("eg_limit_hits_total", kind="response_body_size")
    assert after == before + 1


# -- head limits ------------------------------------------------------------------------------


@pytest.mark.parametrize("complete", [True, False], ids=["complete", "unterminated"])
def test_head_over_max_head_size_gets_431(limited: Gateway, complete: bool) -> None:
    hits = limit_hits(limited, "head_size")
    head = b"GET /echo HTTP/1.1\r\nHost: origin\r\nX-Big: " + b"z" * (2 * MAX_HEAD) + b"\r\n"
    reply = parse_response(raw_request(limited.port, head + (b"\r\n" if complete else b"")))
    assert reply.status == 431
    assert hits.delta() == 1


def test_too_many_headers_gets_431(limited: Gateway) -> None:
    hits = limit_hits(limited, "header_count")
    fields = b"".join(b"X-H-%d: v\r\n" % i for i in range(MAX_HEADERS + 5))
    data = b"GET /echo HTTP/1.1\r\nHost: origin\r\n" + fields + b"\r\n"
    assert parse_response(raw_request(limited.port, data)).status == 431
    assert hits.delta() == 1


# -- slow clients -----------------------------------------------------------------------------


def test_slowloris_gets_408_and_close(limited: Gateway) -> None:
    hits = limit_hits(limited, "header_timeout")
    with connect(limited.port) as sock:
        began = time.monotonic()
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: origin\r\nX-Slow: ")
        data, closed = read_until_close(sock, timeout=HEADER_TIMEOUT + TIMEOUT_SLACK)
        elapsed = time.monotonic() - began
    assert closed
    assert parse_response(data).status == 408
    assert elapsed >= HEADER_TIMEOUT * 0.9
    assert hits.delta() == 1


def test_slow_post_times_out(limited: Gateway) -> None:
    hits = limit_hits(limited, "body_idle")
    with connect(limited.port) as sock:
        began = time.monotonic()
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: origin\r\nContent-Length: 100\r\n\r\n")
        sock.sendall(b"0123456789")
        data, closed = read_until_close(sock, timeout=BODY_IDLE + TIMEOUT_SLACK)
        elapsed = time.monotonic() - began
    assert closed
    assert elapsed >= BODY_IDLE * 0.9
    if data:
        assert parse_response(data, "POST").status == 408
    assert hits.delta() == 1


# -- upstream failures ------------------------------------------------------------------------


def test_connect_timeout_gets_504(limited: Gateway) -> None:
    errors = backend_errors(limited, "blackhole", "timeout_connect")
    began = time.monotonic()
    reply = http_get(limited.port, "/x-blackhole", timeout=CONNECT_TIMEOUT + TIMEOUT_SLACK)
    elapsed = time.monotonic() - began
    assert reply.status == 504
    assert reply.header("x-eg-error") == "timeout_connect"
    assert CONNECT_TIMEOUT * 0.9 <= elapsed < CONNECT_TIMEOUT + TIMEOUT_SLACK
    assert errors.delta() == 1


def test_refused_backend_gets_502(limited: Gateway) -> None:
    errors = backend_errors(limited, "refused", "connect")
    reply = http_get(limited.port, "/x-refused")
    assert reply.status == 502
    assert reply.header("x-eg-error") == "connect"
    # One count per connect attempt: a refused connect is retried once.
    assert 1 <= errors.delta() <= 2


def test_backend_reset_mid_response_aborts_client(limited: Gateway) -> None:
    errors = backend_errors(limited, "origin", "broken")
    size = 400_000
    result = curl(
        "-o", "/dev/null", "-w", "%{size_download}",
        f"http://127.0.0.1:{limited.port}/reset-mid-body?size={size}",
    )  # fmt: skip
    assert result.returncode in (18, 56), (result.returncode, result.stderr)
    assert int(result.stdout) < size
    # A raw client sees the same: the body ends early, never cleanly.
    with RawConnection(limited.port) as conn, pytest.raises(ShortRead):
        conn.request("GET", f"/reset-mid-body?size={size}")
    assert errors.delta() >= 2


def test_backend_closing_without_response_gets_502(limited: Gateway) -> None:
    errors = backend_errors(limited, "origin", "broken")
    reply = http_get(limited.port, "/close-no-response")
    assert reply.status == 502
    assert errors.delta() >= 1


def test_no_route_gets_404(limited: Gateway) -> None:
    reply = http_get(limited.port, "/nowhere")
    assert reply.status == 404
    assert reply.header("x-eg-error") == "no_route"


def test_all_endpoints_down_gives_503_after_max_failures(start_gateway: StartGateway) -> None:
    max_failures = 2
    with running_origins(2) as pair:
        gw = start_gateway(
            gateway_config(
                [o.port for o in pair],
                workers=1,  # health is tracked per worker
                health={"max_failures": max_failures, "eject_seconds": 60.0},
                timeouts={"connect": 1.0},
            )
        )
        assert http_get(gw.port, "/").status == 200
        for origin in pair:
            origin.kill()
    statuses = []
    reply = None
    for _ in range(4 * max_failures):
        reply = http_get(gw.port, "/")
        statuses.append(reply.status)
        if reply.status == 503:
            break
    assert reply is not None and reply.status == 503, statuses
    assert set(statuses[:-1]) <= {502}, statuses
    assert reply.header("x-eg-error") == "no_healthy_upstream"
    # Still ejected: answered at once, without trying to connect.
    assert http_get(gw.port, "/").status == 503
    assert gw.metric("eg_backend_errors_total", kind="no_healthy_upstream") >= 2
    assert gw.metric("eg_backend_errors_total", kind="connect") >= 2 * max_failures


def test_limit_counters_are_exported(limited: Gateway) -> None:
    text = limited.metrics()
    assert "# TYPE eg_limit_hits_total counter" in text
    assert "# TYPE eg_backend_errors_total counter" in text


def test_silent_origin_gets_504(limited: Gateway) -> None:
    errors = backend_errors(limited, "origin", "timeout_response")
    began = time.monotonic()
    reply = http_get(limited.port, "/slow?delay=4", timeout=10.0)
    elapsed = time.monotonic() - began
    assert reply.status == 504
    assert reply.header("x-eg-error") == "timeout_response"
    assert RESPONSE_TIMEOUT * 0.9 <= elapsed < 4.0
    assert errors.delta() == 1


def test_origin_stalling_mid_body_aborts_client(limited: Gateway) -> None:
    result = curl(
        "-o", "/dev/null", "-w", "%{size_download}",
        f"http://127.0.0.1:{limited.port}/drip?size=1000&piece=100&interval=3",
    )  # fmt: skip
    assert result.returncode in (18, 56), (result.returncode, result.stderr)
    assert int(result.stdout) < 1000


def test_idle_keepalive_connection_is_closed(
    origins: OriginProcess, start_gateway: StartGateway
) -> None:
    gw = start_gateway(gateway_config(origins.ports, timeouts={"keepalive": 1.0}))
    with RawConnection(gw.port) as conn:
        assert conn.request("GET", "/").status == 200
        began = time.monotonic()
        assert conn.at_eof(1.0 + TIMEOUT_SLACK)
        assert time.monotonic() - began >= 0.9


def test_max_connections_per_worker(origins: OriginProcess, start_gateway: StartGateway) -> None:
    gw = start_gateway(gateway_config(origins.ports, workers=1, limits={"max_connections": 3}))
    hits = limit_hits(gw, "connections")
    socks = [connect(gw.port) for _ in range(6)]
    try:
        answered = 0
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.sendall(b"GET / HTTP/1.1\r\nHost: origin\r\n\r\n")
                sock.settimeout(5.0)
                answered += sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        assert answered == 3
    finally:
        for sock in socks:
            sock.close()
    assert hits.delta() == 3
    # Once they are gone, new connections are served again.
    deadline = time.monotonic() + 5.0
    while gw.metric("eg_connections_open") > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert http_get(gw.port, "/").status == 200
