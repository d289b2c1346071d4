"""The upstream HTTP/2 pool and end-to-end flow control, against a live HTTP/2 origin.

- Streams from many downstream connections share upstream connections, within the
  upstream's SETTINGS_MAX_CONCURRENT_STREAMS; more connections open when it is reached.
- An upstream GOAWAY retires its connection without failing a request.
- A client that does not read holds back the origin (eg's memory stays flat), and an
  origin that does not read holds back the client's upload: WINDOW_UPDATEs move only as
  the other side consumes.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from eg.demo.origin import OriginHandle, pattern
from eg.demo.origin_h2 import start_h2_origin
from tests.h2client import H2Client
from tests.integration.conftest import Gateway, StartGateway, curl, gateway_config, pattern_sha256
from tests.integration.test_tls import make_certs

MiB = 1024 * 1024

Origin = Callable[..., OriginHandle]


@pytest.fixture
def h2_origin() -> Iterator[Origin]:
    started: list[OriginHandle] = []

    def start(**kwargs: int) -> OriginHandle:
        handle = start_h2_origin("127.0.0.1", 0, "h2", **kwargs)
        started.append(handle)
        return handle

    try:
        yield start
    finally:
        for handle in started:
            handle.stop()


def h2_gateway(start_gateway: StartGateway, origin: OriginHandle, *, front: str = "h1",
               **extra: object) -> Gateway:
    doc = gateway_config([origin.port], workers=1, **extra)  # type: ignore[arg-type]
    doc["clusters"][0]["protocol"] = "h2c"
    doc["listeners"] = [{"name": "http", "address": "127.0.0.1:0", "protocol": front}]
    return start_gateway(doc)


def stats(gw: Gateway) -> dict[str, int]:
    result = curl(f"http://127.0.0.1:{gw.port}/_stats")
    return {k: int(v) for k, v in (item.split("=") for item in result.stdout.decode().split())}


def concurrently(count: int, call: Callable[[], bytes]) -> list[bytes]:
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: call(), range(count)))


def test_streams_from_many_clients_share_one_upstream_connection(
        start_gateway: StartGateway, h2_origin: Origin) -> None:
    origin = h2_origin()
    gw = h2_gateway(start_gateway, origin)
    codes = concurrently(20, lambda: curl("-o", "/dev/null", "-w", "%{http_code}",
                                          f"http://127.0.0.1:{gw.port}/slow?delay=0.5").stdout)
    assert codes == [b"200"] * 20
    seen = stats(gw)
    assert seen["connections"] == 1, seen
    assert seen["streams_max_concurrent"] >= 10, seen


def test_upstream_stream_limit_opens_more_connections(start_gateway: StartGateway,
                                                      h2_origin: Origin) -> None:
    origin = h2_origin(max_concurrent_streams=4)
    gw = h2_gateway(start_gateway, origin)
    curl(f"http://127.0.0.1:{gw.port}/")  # the first connection learns the limit
    codes = concurrently(16, lambda: curl("-o", "/dev/null", "-w", "%{http_code}",
                                          f"http://127.0.0.1:{gw.port}/slow?delay=0.5").stdout)
    assert codes == [b"200"] * 16
    seen = stats(gw)
    assert seen["streams_max_concurrent"] <= 4, seen
    assert seen["connections"] >= 4, seen


def test_upstream_goaway_fails_no_request(start_gateway: StartGateway,
                                          h2_origin: Origin) -> None:
    origin = h2_origin(max_streams_per_connection=3)
    gw = h2_gateway(start_gateway, origin)
    sequential = [curl("-o", "/dev/null", "-w", "%{http_code}",
                       f"http://127.0.0.1:{gw.port}/").stdout for _ in range(12)]
    parallel = concurrently(12, lambda: curl("-o", "/dev/null", "-w", "%{http_code}",
                                             f"http://127.0.0.1:{gw.port}/slow?delay=0.2").stdout)
    failures = [(r.get("kind"), r.get("error")) for r in gw.records()
                if r.get("msg") == "upstream failed"]
    assert sequential == [b"200"] * 12, failures
    assert parallel == [b"200"] * 12, failures
    assert origin.connections >= 8
    # Streams that raced a GOAWAY come back REFUSED_STREAM and are retried (counted as
    # h2_refused); nothing else may fail.
    assert gw.metric("eg_backend_errors_total") == \
        gw.metric("eg_backend_errors_total", kind="h2_refused")


def test_client_that_does_not_read_holds_back_the_origin(start_gateway: StartGateway,
                                                         h2_origin: Origin) -> None:
    """64 MiB requested by a client that stops reading: eg's RSS must not take it in."""
    origin = h2_origin()
    gw = h2_gateway(start_gateway, origin, front="h2c")
    size = 64 * MiB
    with H2Client(gw.port) as client:
        before = gw.rss()
        # Stop acknowledging: the client's window (64 KiB) fills and stays full.
        sid = client.start(f"/bytes/{size}")
        client.raw.acknowledge_received_data = lambda *a, **k: None  # type: ignore[method-assign]
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            client.pump(0.1)
        stalled = gw.rss()
        got = len(client.responses[sid].body)
        del client.raw.acknowledge_received_data
        # Resume: everything arrives, intact.
        client.raw.increment_flow_control_window(size)
        client.raw.increment_flow_control_window(size, sid)
        client.flush()
        resp = client.wait(sid, timeout=60)
    assert got < MiB, got
    # Per stream eg holds at most a window plus its send-buffer watermark on each side;
    # taking the body in would be 64 MiB.
    assert stalled - before < 16 * MiB, (before, stalled)
    assert hashlib.sha256(resp.body).hexdigest() == pattern_sha256(size)


def test_origin_that_reads_slowly_holds_back_the_upload(start_gateway: StartGateway,
                                                        h2_origin: Origin) -> None:
    """An 8 MiB upload to an origin reading 2 MiB/s: eg passes the pace back to the client."""
    origin = h2_origin(initial_window_size=65535)
    gw = h2_gateway(start_gateway, origin, front="h2c")
    size = 8 * MiB
    before = gw.rss()
    started = time.monotonic()
    with H2Client(gw.port) as client:
        resp = client.request(f"/upload-slow-read?rate={2 * MiB}", method="POST",
                              body=pattern(0, size))
    took = time.monotonic() - started
    assert resp.status == 200
    assert resp.body.strip() == str(size).encode()
    # Had eg buffered the upload, the client would have finished almost at once; it can
    # only finish as the origin reads (8 MiB at 2 MiB/s), minus what the windows and
    # eg's per-stream buffer (well under 1 MiB) hold.
    assert took > 2.5, took
    assert gw.rss() - before < 16 * MiB


def test_clusters_with_other_tls_settings_never_share_a_connection(
        tmp_path: Path, start_gateway: StartGateway) -> None:
    """Two clusters reach one TLS origin; only one trusts its CA. The other must fail
    verification every time, also once the first has a pooled connection open (the
    pools are per cluster; HTTP/3 has the same test with Caddy in test_h3_peers.py)."""
    good = make_certs(tmp_path / "good")
    other = make_certs(tmp_path / "other")
    origin = start_h2_origin("127.0.0.1", 0, "tls", cert=str(good / "cert.pem"),
                             key=str(good / "key.pem"))
    try:
        endpoint = f"127.0.0.1:{origin.port}"
        proto = "h2"
        doc = gateway_config([], workers=1, clusters=[
            {"name": "trusted", "protocol": proto, "endpoints": [endpoint],
             "tls": {"ca_file": str(good / "ca.pem"), "server_name": "localhost"}},
            {"name": "wrong_ca", "protocol": proto, "endpoints": [endpoint],
             "tls": {"ca_file": str(other / "ca.pem"), "server_name": "localhost"}},
        ], routes=[{"host": "wrong.test", "cluster": "wrong_ca"},
                   {"host": "*", "cluster": "trusted"}])
        doc["clusters"] = [c for c in doc["clusters"] if c["name"] != "origin"]
        gw = start_gateway(doc)
        url = f"http://127.0.0.1:{gw.port}/"
        for _ in range(2):
            ok = curl("-o", "/dev/null", "-w", "%{http_code}", url)
            refused = curl("-sD", "-", "-o", "/dev/null", "-H", "Host: wrong.test", url)
            assert ok.stdout == b"200"
            assert refused.stdout.startswith(b"HTTP/1.1 502"), refused.stdout
            assert b"x-eg-error: tls_verify" in refused.stdout.lower()
    finally:
        origin.stop()
