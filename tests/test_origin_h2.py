"""The HTTP/2 demo origin on loopback, seen by curl and by an h2 client.

curl (``--http2-prior-knowledge``, or TLS with ALPN) checks the endpoints as a real client
sees them; the h2-library :class:`Client` checks flow control, resets, GOAWAY and stream
concurrency frame by frame.
"""

from __future__ import annotations

import dataclasses
import hashlib
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from eg.demo.origin import OriginHandle, pattern
from eg.demo.origin_h2 import start_h2_origin
from tests.helpers import REPO

MIB = 1 << 20
# What an h2 client may send and receive before any WINDOW_UPDATE (RFC 9113 §6.9.2).
DEFAULT_WINDOW = 65_535
GOAWAY = 0x7  # frame type (RFC 9113 §6.8)
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
REFUSED_STREAM = 0x7
MAX_CONCURRENT_STREAMS = h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS
INITIAL_WINDOW_SIZE = h2.settings.SettingCodes.INITIAL_WINDOW_SIZE


@pytest.fixture
def origin() -> Iterator[OriginHandle]:
    with start_h2_origin(name="t") as handle:
        yield handle


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA and a localhost leaf from scripts/dev-certs."""
    folder = tmp_path_factory.mktemp("certs")
    script = REPO / "scripts" / "dev-certs"
    subprocess.run([str(script), str(folder)], check=True, capture_output=True)
    return {name: str(folder / f"{name}.pem") for name in ("ca", "cert", "key")}


def curl(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[bytes]:
    """Run curl speaking HTTP/2 (h2c with prior knowledge unless the URL is https)."""
    return subprocess.run(
        ["curl", "-sS", "--http2-prior-knowledge", *args],
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def curl_head_and_body(result: subprocess.CompletedProcess[bytes]) -> tuple[str, bytes]:
    """Split the output of ``curl -D -`` into the head (text) and the body."""
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    return head.decode("latin-1"), body


@dataclasses.dataclass
class Reply:
    """What came back on one stream."""

    status: int = 0
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    body: bytearray = dataclasses.field(default_factory=bytearray)
    trailers: dict[str, str] = dataclasses.field(default_factory=dict)
    ended: bool = False
    reset: int | None = None

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None


class Client:
    """A blocking h2 client on one connection, for frame-level checks.

    GOAWAY frames are taken out of the byte stream before h2 sees them (h2 would refuse
    the rest of a gracefully closing connection) and recorded in ``goaways``.
    """

    def __init__(
        self, port: int, *, context: ssl.SSLContext | None = None, ack: bool = True
    ) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
        self.sock = context.wrap_socket(sock, server_hostname="localhost") if context else sock
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.initiate_connection()
        self.ack = ack
        self.replies: dict[int, Reply] = {}
        self.goaways: list[tuple[int, int]] = []
        self.settings: dict[int, int] = {}
        self.eof = False
        self._buf = bytearray()
        self.flush()

    def close(self) -> None:
        self.sock.close()

    def flush(self) -> None:
        self.sock.sendall(self.h2.data_to_send())

    def request(
        self,
        path: str,
        *,
        method: str = "GET",
        body: bytes | None = None,
        headers: tuple[tuple[str, str], ...] = (),
        on_blocked: Callable[[], None] = lambda: None,
    ) -> int:
        """Send a request (its body as the windows allow); return its stream id."""
        stream_id = self.h2.get_next_available_stream_id()
        fields = [(":method", method), (":path", path), (":scheme", "http")]
        fields += [(":authority", "localhost"), *headers]
        self.h2.send_headers(stream_id, fields, end_stream=body is None)
        self.replies[stream_id] = Reply()
        self.flush()
        if body is not None:
            self.send_body(stream_id, body, on_blocked)
        return stream_id

    def send_body(self, stream_id: int, body: bytes, on_blocked: Callable[[], None]) -> None:
        view = memoryview(body)
        while view:
            room = min(self.h2.local_flow_control_window(stream_id), len(view))
            room = min(room, self.h2.max_outbound_frame_size)
            if room <= 0:
                on_blocked()
                assert self.pump(5.0), "no WINDOW_UPDATE"
                continue
            self.h2.send_data(stream_id, view[:room])
            view = view[room:]
            self.flush()
        self.h2.end_stream(stream_id)
        self.flush()

    def pump(self, timeout: float) -> bool:
        """Read once and handle what came; False on timeout or EOF."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(256 * 1024)
        except TimeoutError:
            return False
        if not data:
            self.eof = True
            return False
        self._buf += data
        while len(self._buf) >= 9:
            end = 9 + int.from_bytes(self._buf[:3])
            if len(self._buf) < end:
                break
            frame = bytes(self._buf[:end])
            del self._buf[:end]
            if frame[3] == GOAWAY:
                last = int.from_bytes(frame[9:13]) & 0x7FFF_FFFF
                self.goaways.append((last, int.from_bytes(frame[13:17])))
                continue
            for event in self.h2.receive_data(frame):
                self._handle(event)
        self.flush()
        return True

    def _handle(self, event: h2.events.Event) -> None:
        match event:
            case h2.events.ResponseReceived():
                reply = self.replies[event.stream_id]
                for name, value in event.headers:
                    reply.headers[name.decode()] = value.decode()
                reply.status = int(reply.headers[":status"])
            case h2.events.DataReceived():
                self.replies[event.stream_id].body += event.data
                if self.ack:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            case h2.events.TrailersReceived():
                trailers = self.replies[event.stream_id].trailers
                trailers.update((name.decode(), value.decode()) for name, value in event.headers)
            case h2.events.StreamEnded():
                self.replies[event.stream_id].ended = True
            case h2.events.StreamReset():
                self.replies[event.stream_id].reset = int(event.error_code)
            case h2.events.RemoteSettingsChanged():
                for code, change in event.changed_settings.items():
                    self.settings[int(code)] = change.new_value
            case _:
                pass

    def wait(self, done: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            assert left > 0, "timed out"
            if not self.pump(left) and self.eof:
                assert done(), "connection closed"
                return

    def get(self, path: str, *, method: str = "GET", body: bytes | None = None) -> Reply:
        """Send a request and wait for the whole reply."""
        stream_id = self.request(path, method=method, body=body)
        reply = self.replies[stream_id]
        self.wait(lambda: reply.done)
        return reply

    def drain_until_quiet(self, quiet: float) -> None:
        while self.pump(quiet):
            pass


def split_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(type, payload) of each whole frame in ``data``."""
    frames = []
    while len(data) >= 9:
        end = 9 + int.from_bytes(data[:3])
        frames.append((data[3], data[9:end]))
        data = data[end:]
    return frames


def eventually(done: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def origin_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("origin-h2-")]


# -- curl, cleartext with prior knowledge ------------------------------------------------


def test_hello(origin: OriginHandle) -> None:
    result = curl("-D", "-", "-w", "%{http_version}", f"http://127.0.0.1:{origin.port}/x?y=1")
    assert result.returncode == 0, result.stderr
    head, body = curl_head_and_body(result)
    assert head.startswith("HTTP/2 200")
    assert "x-origin: t" in head.splitlines()
    assert body == b"hello from origin t\n2"  # the body, then curl's %{http_version}


def test_echo_lists_pseudo_headers_then_body(origin: OriginHandle) -> None:
    url = f"http://127.0.0.1:{origin.port}/echo?a=1"
    result = curl("-d", "some body", "-H", "x-test: yes", url)
    assert result.returncode == 0, result.stderr
    head, _, body = result.stdout.partition(b"\n\n")
    lines = head.decode().splitlines()
    assert lines[:4] == ["POST", "/echo?a=1", ":method: POST", ":path: /echo?a=1"]
    assert ":scheme: http" in lines
    assert f":authority: 127.0.0.1:{origin.port}" in lines
    assert "x-test: yes" in lines
    assert "content-length: 9" in lines
    assert body == b"some body"


def test_status_and_drip(origin: OriginHandle) -> None:
    base = f"http://127.0.0.1:{origin.port}"
    head, body = curl_head_and_body(curl("-D", "-", f"{base}/status/204"))
    assert head.startswith("HTTP/2 204")
    assert "content-length" not in head
    assert body == b""
    head, body = curl_head_and_body(curl("-D", "-", f"{base}/status/404"))
    assert head.startswith("HTTP/2 404")
    assert body == b"status 404\n"
    head, _ = curl_head_and_body(curl("-D", "-", f"{base}/status/42"))
    assert head.startswith("HTTP/2 400")
    began = time.monotonic()
    result = curl(f"{base}/drip?size=1000&interval=0.05&piece=250")
    assert result.stdout == pattern(0, 1000)
    assert time.monotonic() - began >= 0.2


def test_reset_mid_body_is_a_stream_error_for_curl(origin: OriginHandle) -> None:
    result = curl(f"http://127.0.0.1:{origin.port}/reset-mid-body?size=100000")
    assert result.returncode == 92  # CURLE_HTTP2_STREAM
    assert b"INTERNAL_ERROR" in result.stderr
    assert pattern(0, 50_000).startswith(result.stdout)  # curl may drop what it buffered


# -- the h2 client: bodies and flow control ----------------------------------------------


def test_sha256_of_a_16_mib_upload(origin: OriginHandle) -> None:
    body = pattern(7, 16 * MIB)
    client = Client(origin.port)
    reply = client.get("/sha256", method="POST", body=body)
    assert reply.status == 200
    assert reply.body.decode() == f"{hashlib.sha256(body).hexdigest()} {len(body)}"
    client.close()


def test_8_mib_with_trailers(origin: OriginHandle) -> None:
    client = Client(origin.port)
    reply = client.get("/bytes/8388608?trailers=1")
    assert reply.status == 200
    assert reply.headers["content-length"] == "8388608"
    assert reply.headers["x-origin"] == "t"
    assert reply.body == pattern(0, 8 * MIB)
    assert reply.trailers == {"x-checksum": hashlib.sha256(reply.body).hexdigest()}
    unframed = client.get("/bytes/1000?nolength=1")
    assert "content-length" not in unframed.headers
    assert unframed.body == pattern(0, 1000)
    client.close()


def test_sending_waits_for_window_updates(origin: OriginHandle) -> None:
    client = Client(origin.port, ack=False)
    stream_id = client.request("/bytes/300000")
    reply = client.replies[stream_id]
    client.drain_until_quiet(0.3)
    assert len(reply.body) == DEFAULT_WINDOW  # the client's windows are full
    assert not reply.done
    client.ack = True
    client.h2.acknowledge_received_data(DEFAULT_WINDOW, stream_id)
    client.flush()
    client.wait(lambda: reply.done)
    assert reply.body == pattern(0, 300_000)
    client.close()


def test_upload_slow_read_holds_back_window_updates() -> None:
    with start_h2_origin(initial_window_size=16384) as handle:
        client = Client(handle.port)
        client.wait(lambda: client.settings.get(INITIAL_WINDOW_SIZE) == 16384)
        blocked: list[float] = []
        began = time.monotonic()
        stream_id = client.request(
            "/upload-slow-read?rate=65536",
            method="POST",
            body=pattern(0, 65536),
            on_blocked=lambda: blocked.append(time.monotonic()),
        )
        reply = client.replies[stream_id]
        client.wait(lambda: reply.done)
        assert reply.body == b"65536"
        # 64 KiB at 64 KiB/s, the first 16 KiB without waiting; the client waited for the
        # server's WINDOW_UPDATEs again and again.
        assert time.monotonic() - began >= 0.7
        assert len(blocked) >= 3
        client.close()


def test_reset_mid_body_and_trailers(origin: OriginHandle) -> None:
    client = Client(origin.port)
    reply = client.get("/reset-mid-body?size=100000")
    assert reply.status == 200
    assert reply.headers["content-length"] == "100000"
    assert reply.body == pattern(0, 50_000)
    assert reply.reset == INTERNAL_ERROR
    assert not reply.ended
    reply = client.get("/trailers")  # the connection is still fine
    assert reply.body == b"hello from origin t\n"
    assert reply.trailers == {"grpc-status": "0", "grpc-message": "ok"}
    client.close()


# -- TLS -----------------------------------------------------------------------------------


def test_tls_with_alpn_h2(certs: dict[str, str]) -> None:
    with start_h2_origin(name="s", cert=certs["cert"], key=certs["key"]) as handle:
        url = f"https://localhost:{handle.port}/"
        result = curl("--cacert", certs["ca"], "-w", " %{http_version}", url)
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"hello from origin s\n 2"

        context = ssl.create_default_context(cafile=certs["ca"])
        context.set_alpn_protocols(["h2"])
        client = Client(handle.port, context=context)
        assert isinstance(client.sock, ssl.SSLSocket)
        assert client.sock.selected_alpn_protocol() == "h2"
        body = pattern(3, 3 * MIB)
        reply = client.get("/sha256", method="POST", body=body)
        assert reply.body.decode() == f"{hashlib.sha256(body).hexdigest()} {len(body)}"
        reply = client.get("/bytes/2097152?trailers=1")
        assert reply.body == pattern(0, 2 * MIB)
        assert reply.trailers["x-checksum"] == hashlib.sha256(reply.body).hexdigest()
        client.close()

        # A cleartext client on the TLS port only ends its own connection.
        with socket.create_connection(("127.0.0.1", handle.port), timeout=5.0) as raw:
            raw.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            while raw.recv(4096):
                pass
        assert curl("--cacert", certs["ca"], url).returncode == 0


# -- GOAWAY and concurrency ----------------------------------------------------------------


def test_curl_follows_goaway_to_new_connections(certs: dict[str, str]) -> None:
    # Over TLS: curl 7.88 cannot reuse an h2c prior-knowledge connection (curl#10634).
    cert, key = certs["cert"], certs["key"]
    with start_h2_origin(name="g", cert=cert, key=key, max_streams_per_connection=2) as handle:
        url = f"https://localhost:{handle.port}/"
        result = curl("--cacert", certs["ca"], *[url] * 5)
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"hello from origin g\n" * 5
        assert (handle.requests, handle.connections) == (5, 3)


def test_goaway_after_k_streams_finishes_those_in_flight() -> None:
    with start_h2_origin(max_streams_per_connection=2) as handle:
        client = Client(handle.port)
        first = client.request("/slow?delay=0.2")
        second = client.request("/slow?delay=0.2&size=200000")
        third = client.request("/")
        client.wait(lambda: client.eof, timeout=5.0)
        assert client.goaways == [(second, 0)]
        assert client.replies[first].ended
        assert client.replies[first].body.startswith(b"hello from origin")
        assert client.replies[second].ended
        assert client.replies[second].body == pattern(0, 200_000)
        assert client.replies[third].reset == REFUSED_STREAM
        assert handle.requests == 2
        client.close()


def test_many_concurrent_streams_on_one_connection(origin: OriginHandle) -> None:
    client = Client(origin.port)
    client.wait(lambda: INITIAL_WINDOW_SIZE in client.settings)
    assert client.settings[MAX_CONCURRENT_STREAMS] == 100
    began = time.monotonic()
    ids = [client.request(f"/slow?delay=0.3&size={1000 * i}") for i in range(100)]
    client.wait(lambda: all(client.replies[i].done for i in ids))
    assert time.monotonic() - began < 3.0  # served side by side, not one after another
    for index, stream_id in enumerate(ids):
        assert client.replies[stream_id].ended
        assert client.replies[stream_id].body == pattern(0, 1000 * index)
    stats = client.get("/_stats").body.decode()
    assert stats == "requests=101 connections=1 streams_max_concurrent=100"
    client.close()


def test_max_concurrent_streams_is_advertised() -> None:
    with start_h2_origin(max_concurrent_streams=7) as handle:
        client = Client(handle.port)
        client.wait(lambda: client.settings.get(MAX_CONCURRENT_STREAMS) == 7)
        client.close()


# -- robustness ----------------------------------------------------------------------------


def test_broken_clients_end_only_their_connection() -> None:
    with start_h2_origin(name="r") as handle:
        # Not HTTP/2 at all: GOAWAY(PROTOCOL_ERROR), then close.
        with socket.create_connection(("127.0.0.1", handle.port), timeout=5.0) as raw:
            raw.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            received = b""
            while data := raw.recv(4096):
                received += data
        frames = split_frames(received)
        assert frames[-1][0] == GOAWAY
        assert int.from_bytes(frames[-1][1][4:8]) == PROTOCOL_ERROR
        # Gone in the middle of a big response.
        client = Client(handle.port)
        stream_id = client.request("/bytes/67108864")
        client.wait(lambda: len(client.replies[stream_id].body) > 0)
        client.close()
        # The origin still serves.
        assert Client(handle.port).get("/").body == b"hello from origin r\n"
    assert origin_threads() == []


def test_stop_ends_busy_connections_and_joins_their_threads() -> None:
    handle = start_h2_origin()
    client = Client(handle.port)
    client.request("/slow?delay=30")
    idle = Client(handle.port)
    eventually(lambda: handle.requests == 1 and handle.connections == 2)
    assert len(origin_threads()) == 2
    began = time.monotonic()
    handle.stop()
    assert time.monotonic() - began < 2.0
    assert origin_threads() == []
    client.close()
    idle.close()


def test_cli_prints_its_port_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "eg.demo.origin_h2", "--port", "0", "--name", "cli"],
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("origin listening on 127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        assert curl(f"http://127.0.0.1:{port}/").stdout == b"hello from origin cli\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
