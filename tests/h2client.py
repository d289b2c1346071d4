"""A blocking HTTP/2 client on the h2 library, for tests that need what curl hides.

curl shows neither RST_STREAM codes nor HTTP/2 trailers reliably, and cannot misbehave
on purpose. :class:`H2Client` is one connection (h2c prior knowledge, or TLS with ALPN
h2) driven synchronously: :meth:`H2Client.request` sends one request and reads until
that stream ends or is reset; :meth:`H2Client.raw` exposes the ``H2Connection`` so
attack tests can send frames of their own. Nothing here depends on pytest.
"""

from __future__ import annotations

import dataclasses
import socket
import ssl
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Self

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

Header = tuple[bytes, bytes]


@dataclasses.dataclass
class H2Response:
    """What came back on one stream."""

    status: int = 0
    headers: list[Header] = dataclasses.field(default_factory=list)
    body: bytearray = dataclasses.field(default_factory=bytearray)
    trailers: list[Header] = dataclasses.field(default_factory=list)
    #: RST_STREAM error code, if the stream was reset instead of ending.
    reset: int | None = None
    #: The connection ended (GOAWAY error code, or -1 for EOF) before the stream did.
    closed: int | None = None

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class H2Client:
    """One HTTP/2 connection to ``127.0.0.1:port`` (see the module docstring).

    Args:
        port: the gateway (or origin) port.
        tls: a client context offering ALPN h2; None for h2c prior knowledge.
        server_name: SNI and certificate name when ``tls`` is given.
        settings: extra local SETTINGS (e.g. a zero initial window).
    """

    def __init__(
        self,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        server_name: str = "localhost",
        settings: dict[int, int] | None = None,
        timeout: float = 30.0,
    ) -> None:
        sock: socket.socket = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=server_name)
            assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()  # type: ignore[attr-defined]
        self.sock = sock
        self.timeout = timeout
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.responses: dict[int, H2Response] = {}
        self.ended: set[int] = set()
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.pings_acked = 0
        self.eof = False
        self.flush()

    @staticmethod
    def tls_context(cafile: str) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=cafile)
        ctx.set_alpn_protocols(["h2"])
        return ctx

    # -- raw access ---------------------------------------------------------------------------

    @property
    def raw(self) -> h2.connection.H2Connection:
        return self.conn

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def send_bytes(self, data: bytes) -> None:
        """Bytes of our own making, bypassing h2 (malformed frames)."""
        self.sock.sendall(data)

    def pump(self, timeout: float = 0.5) -> list[h2.events.Event]:
        """Read whatever arrives within ``timeout``; process it; return the events."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except (TimeoutError, BlockingIOError):
            return []
        except (ConnectionResetError, ssl.SSLError, OSError):
            data = b""
        finally:
            self.sock.settimeout(self.timeout)
        if not data:
            self.eof = True
            return []
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.eof = True
            return []
        for event in events:
            self._on(event)
        self.flush()
        return events

    def _on(self, event: h2.events.Event) -> None:
        sid = getattr(event, "stream_id", None)
        resp = self.responses.setdefault(sid, H2Response()) if sid else None
        if isinstance(event, h2.events.ResponseReceived):
            assert resp is not None
            for name, value in event.headers:
                if name == b":status":
                    resp.status = int(value)
                else:
                    resp.headers.append((name, value))
        elif isinstance(event, h2.events.DataReceived):
            assert resp is not None
            resp.body += event.data
            if event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.TrailersReceived):
            assert resp is not None
            resp.trailers = list(event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            self.ended.add(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            assert resp is not None
            resp.reset = event.error_code
            self.ended.add(event.stream_id)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event
        elif isinstance(event, h2.events.PingAckReceived):
            self.pings_acked += 1

    # -- requests -----------------------------------------------------------------------------

    def start(
        self,
        path: str,
        *,
        method: str = "GET",
        authority: str = "localhost",
        headers: Sequence[Header] = (),
        body: bytes | None = None,
        end: bool = True,
        scheme: str = "http",
    ) -> int:
        """Open a stream; send the head (and ``body`` if given); return the stream id."""
        sid = self.conn.get_next_available_stream_id()
        fields = [
            (b":method", method.encode()), (b":scheme", scheme.encode()),
            (b":authority", authority.encode()), (b":path", path.encode()), *headers,
        ]
        self.conn.send_headers(sid, fields, end_stream=end and body is None)
        self.responses[sid] = H2Response()
        self.flush()
        if body is not None:
            self.send_body(sid, body, end=end)
        return sid

    def send_body(self, sid: int, body: bytes, *, end: bool = True) -> None:
        """Send ``body`` under flow control (waits for window), then maybe end the stream."""
        view = memoryview(body)
        while view:
            window = min(self.conn.local_flow_control_window(sid),
                         self.conn.max_outbound_frame_size)
            if window <= 0:
                self._wait_for(lambda: self.conn.local_flow_control_window(sid) > 0
                               or sid in self.ended)
                if sid in self.ended:
                    return
                continue
            chunk = view[:window]
            view = view[window:]
            self.conn.send_data(sid, chunk.tobytes(), end_stream=end and not view)
            self.flush()
        if end and not body:
            self.conn.end_stream(sid)
            self.flush()

    def wait(self, sid: int, timeout: float | None = None) -> H2Response:
        """Read until stream ``sid`` ends, is reset, or the connection ends."""
        self._wait_for(lambda: sid in self.ended, timeout)
        resp = self.responses[sid]
        if sid not in self.ended:
            resp.closed = self.goaway.error_code if self.goaway is not None else -1
        return resp

    def _wait_for(self, done: object, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.timeout)
        while not done() and not self.eof and time.monotonic() < deadline:  # type: ignore[operator]
            self.pump(min(0.5, max(0.01, deadline - time.monotonic())))

    def request(self, path: str, **kwargs: object) -> H2Response:
        """One request: open, send, wait for the whole response."""
        sid = self.start(path, **kwargs)  # type: ignore[arg-type]
        return self.wait(sid)

    def close(self) -> None:
        try:
            self.conn.close_connection()
            self.flush()
        except (OSError, h2.exceptions.ProtocolError):
            pass
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
