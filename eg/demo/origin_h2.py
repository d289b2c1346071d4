"""A small HTTP/2 origin server: the HTTP/2 twin of :mod:`eg.demo.origin`.

It speaks cleartext HTTP/2 with prior knowledge (h2c) or, given a certificate and key, TLS
with ALPN ``h2``. The protocol work is the ``h2`` library's; sockets, TLS (over memory
BIOs) and threads are the standard library's. It reuses :mod:`eg.demo.origin`'s server
and handle classes (listener, counters, ``stop()``), its :func:`~eg.demo.origin.pattern`
and its limits.

Endpoints (``?`` marks query parameters; every response carries ``x-origin: NAME``):

=============================  ===========================================================
``/`` and anything unknown     200 ``hello from origin NAME\\n``
``/echo``                      ``METHOD\\n PATH\\n``, each received header ``name: value``
                               as received (pseudo-headers included, order kept), a blank
                               line, then the body
``/headers``                   the received header lines only
``/sha256``                    streams the body through SHA-256: ``<hex> <length>``
``/bytes/N``                   N bytes of :func:`~eg.demo.origin.pattern`, as the flow
                               control windows allow; ``?trailers=1`` adds trailer
                               ``x-checksum: <sha256 hex of the body>``, ``?nolength=1``
                               omits content-length
``/status/N``                  status N; 204 and 304 without body or content-length
``/slow?delay=S&size=N``       waits S seconds before the head
``/drip?size=N&interval=S``    the body in ``piece``-byte pieces, S seconds apart
``/reset-mid-body?size=N``     content-length N, N//2 bytes, then RST_STREAM INTERNAL_ERROR
``/headers-size?n=N&size=S``   N extra headers ``x-h-0`` ... of S bytes each
``/upload-slow-read?rate=B``   reads the body at B bytes/s, answers ``<length>``; the
                               unread body holds back WINDOW_UPDATEs, so the client stalls
``/trailers``                  a body, then trailers ``grpc-status: 0``, ``grpc-message: ok``
``/_stats``                    ``requests=N connections=M streams_max_concurrent=X``
                               (this request included)
=============================  ===========================================================

Endpoints that do not use the request body read (and discard) it before answering, as in
:mod:`eg.demo.origin`. A response sent before the request body has ended is followed by
RST_STREAM NO_ERROR (RFC 9113 §8.1).

**One thread per connection, one event loop per thread.** ``H2Connection`` is not
thread-safe, so every call on it happens on the connection's own thread. That thread
polls the socket and runs each stream's endpoint as a generator: an endpoint yields what
it waits for, and the loop resumes it when that is there:

=====================  ====================================================================
the endpoint yields    it is resumed when
=====================  ====================================================================
``_Need.BODY``         request body bytes are buffered, or the body has ended
``_Need.WINDOW``       a DATA frame may go out: stream and connection windows are open and
                       the send buffer is below ``SEND_BUFFER_HIGH``
a float                ``time.monotonic()`` has reached it (``/slow``, ``/drip``, ...)
=====================  ====================================================================

A stream sends at most one DATA frame per turn, so concurrent streams share the
connection fairly. There are no locks on the connection: the only state shared between
threads is the server's counters, behind the server's lock. (The alternative, a thread
per stream with every ``H2Connection`` call under a lock and a condition for window
updates, needs a lock-ordered flush path so that a blocked ``sendall`` cannot stall the
reader; the single loop has no such path.)

Flow control: received DATA is acknowledged (``acknowledge_received_data``) only as the
endpoint consumes it, so each stream buffers at most its window (``initial_window_size``,
enforced by h2 as FLOW_CONTROL_ERROR) and a slow reader holds the client back. DATA goes
out in frames of at most the peer's window and frame size, waiting for WINDOW_UPDATE when
a window is exhausted. Our settings go in a second SETTINGS frame, which h2 applies when
the client acknowledges it. A connection with no bytes moving for ``idle_timeout`` is
closed, unless a stream is sleeping on purpose.

With ``max_streams_per_connection=K``, the K-th request on a connection is answered with
GOAWAY(NO_ERROR, last_stream_id = that stream), the requests in flight are finished, and
the connection then closes; streams the client opened after it get RST_STREAM
REFUSED_STREAM. (h2 refuses to send anything after its own ``close_connection()``, so the
GOAWAY frame is built with hyperframe and sent behind h2's back.) Opening more than
``max_concurrent_streams`` at once is a connection error in h2 (GOAWAY PROTOCOL_ERROR).

Theory of operation, per connection::

    (TLS handshake) ──► SETTINGS ──► poll: read ──► h2 events ──► run ready streams ──► send
                                        ▲                                                │
                                        └────────────────────────────────────────────────┘
    EOF, idle timeout, client GOAWAY, protocol error, or GOAWAY sent and no stream left
        ──► flush, shutdown(SHUT_WR), discard input briefly, close

A broken client (bad preface, bad frames, a TLS failure, a reset) ends only its own
connection or stream; :meth:`OriginHandle.stop` ends every connection and joins its
thread.

Run ``python -m eg.demo.origin_h2 --port P [--name N] [--cert C --key K]``; with port 0
the kernel picks one, and each ``origin listening on HOST:PORT`` line on stdout names the
real port. Tests use :func:`start_h2_origin` for an in-process server.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import select
import socket
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable
from urllib.parse import parse_qsl, urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame

from eg.demo.origin import (
    CHUNK,
    IDLE_TIMEOUT,
    LINGER_TIME,
    MAX_ECHO_BODY,
    MAX_EXTRA_HEADER_SIZE,
    MAX_EXTRA_HEADERS,
    MAX_HEAD,
    MAX_SIZE,
    PATTERN_MODULUS,
    RECV_SIZE,
    OriginHandle,
    OriginServer,
    QueryParams,
    _HttpError,
    cli_parser,
    serve_cli,
)

# SETTINGS_MAX_CONCURRENT_STREAMS we advertise unless told otherwise (h2's own default).
MAX_CONCURRENT_STREAMS = 100
# Per-stream receive window we advertise (SETTINGS_INITIAL_WINDOW_SIZE). It is also the
# most request body one stream can have buffered here. 1 MiB keeps a 64 MiB upload at
# loopback speed; RFC 9113's default is 65,535 (§6.9.2).
INITIAL_WINDOW_SIZE = 1 << 20
# The connection-level receive window: room for several streams' windows at once.
CONNECTION_WINDOW = 16 << 20
# The window every HTTP/2 connection starts with, before any WINDOW_UPDATE (RFC 9113
# §6.9.2).
DEFAULT_CONNECTION_WINDOW = 65_535
# Stop producing DATA frames while this many bytes wait for the socket.
SEND_BUFFER_HIGH = 256 * 1024
# recv() calls per wake-up before other work gets a turn (64 KiB each).
RECV_BURST = 16


class _Need(enum.Enum):
    """What a suspended endpoint waits for (see the module docstring)."""

    BODY = "body"
    WINDOW = "window"


# What an endpoint generator yields: a _Need, or a monotonic deadline to sleep until.
type _Wait = _Need | float
type _Steps[T] = Generator[_Wait, None, T]


class _Stream(QueryParams):
    """One request and its response: what an endpoint reads, and how it answers.

    The request body arrives as (data, flow-controlled length) pairs; bytes are
    acknowledged to h2 as :meth:`read` hands them out, never before.
    """

    def __init__(self, conn: _Connection, stream_id: int, headers: list[tuple[str, str]]):
        self.conn = conn
        self.stream_id = stream_id
        self.headers = headers
        pseudo = {key: value for key, value in headers if key.startswith(":")}
        self.method = pseudo.get(":method", "")
        self.target = pseudo.get(":path", "/")
        url = urlsplit(self.target)
        self.path = url.path
        self.query = dict(parse_qsl(url.query, keep_blank_values=True))
        self.name = conn.server.name
        self.head_only = self.method == "HEAD"
        self.chunks: deque[tuple[bytes, int]] = deque()
        self.received = 0
        self.ended = False  # the request body has ended (END_STREAM received)
        self.started = False  # the response head has been sent
        self.finished = False  # the response has ended (END_STREAM or RST_STREAM sent)
        self.wait: _Wait = 0.0
        self.runner: _Steps[None] | None = None

    # -- the request body -----------------------------------------------------------------

    def read(self, size: int = RECV_SIZE) -> _Steps[bytes]:
        """Return the next 1 to ``size`` bytes of the body, or b"" at its end."""
        while not self.chunks:
            if self.ended:
                return b""
            yield _Need.BODY
        data, flow = self.chunks[0]
        if len(data) <= size:
            self.chunks.popleft()
            acked = flow  # the rest of the frame, padding included
        else:
            self.chunks[0] = (data[size:], flow - size)
            data = data[:size]
            acked = size
        self.conn.acknowledge(self.stream_id, acked)
        self.received += len(data)
        return data

    def drain(self) -> _Steps[None]:
        """Read and discard the rest of the body."""
        while (yield from self.read()):
            pass

    def release(self) -> None:
        """Acknowledge whatever is buffered and unread (the stream is going away)."""
        while self.chunks:
            self.conn.acknowledge(self.stream_id, self.chunks.popleft()[1])

    # -- the response ---------------------------------------------------------------------

    def respond(
        self, status: int, headers: Iterable[tuple[str, str]] = (), *, length: int | None = None
    ) -> None:
        """Send the response head; 204 and 304 end the stream with it.

        Args:
            status: 200-999.
            headers: extra header fields; ``x-origin`` and content-length are added here.
            length: the body's content-length, or None to send none.
        """
        assert not self.started, "one response per request"
        self.started = True
        fields = [(":status", str(status)), *headers, ("x-origin", self.name)]
        empty = status in (204, 304)
        if length is not None and not empty:
            fields.append(("content-length", str(length)))
        self.conn.h2.send_headers(self.stream_id, fields, end_stream=empty)
        self.finished = empty

    def write(self, data: bytes | memoryview) -> _Steps[None]:
        """Send body bytes, one DATA frame per turn, as the windows allow (not for HEAD)."""
        assert self.started
        if self.head_only or self.finished:
            return
        view = memoryview(data)
        while view:
            yield _Need.WINDOW
            size = min(self.conn.send_room(self.stream_id), len(view))
            if size > 0:
                self.conn.h2.send_data(self.stream_id, view[:size])
                view = view[size:]

    def write_pattern(
        self, start: int, length: int, digest: Callable[[memoryview], object] | None = None
    ) -> _Steps[None]:
        """Send pattern bytes ``start .. start+length``; ``digest`` is called on each piece."""
        view = memoryview(self.conn.server.pattern_block)
        end = start + length
        while start < end:
            size = min(CHUNK, end - start)
            first = start % PATTERN_MODULUS
            piece = view[first : first + size]
            if digest is not None:
                digest(piece)
            yield from self.write(piece)
            start += size

    def finish(self, trailers: Iterable[tuple[str, str]] = ()) -> None:
        """End the response, with trailers if any (none for HEAD)."""
        assert self.started
        if self.finished:
            return
        self.finished = True
        fields = list(trailers)
        if fields and not self.head_only:
            self.conn.h2.send_headers(self.stream_id, fields, end_stream=True)
        else:
            self.conn.h2.end_stream(self.stream_id)

    def send(
        self, status: int, body: bytes, headers: Iterable[tuple[str, str]] = ()
    ) -> _Steps[None]:
        """Send a whole text response with a content-length."""
        self.respond(status, [("content-type", "text/plain"), *headers], length=len(body))
        yield from self.write(body)
        self.finish()

    def reset(self, code: h2.errors.ErrorCodes) -> None:
        """End the stream with RST_STREAM ``code``."""
        if not self.finished or not self.ended:
            self.conn.h2.reset_stream(self.stream_id, code)
        self.finished = True
        self.ended = True


# -- endpoints: generators over one _Stream ------------------------------------------------


def _ep_hello(st: _Stream) -> _Steps[None]:
    yield from st.send(200, f"hello from origin {st.name}\n".encode())


def _ep_echo(st: _Stream) -> _Steps[None]:
    out = bytearray(f"{st.method}\n{st.target}\n".encode("latin-1"))
    for name, value in st.headers:
        out += f"{name}: {value}\n".encode("latin-1")
    out += b"\n"
    while data := (yield from st.read()):
        out += data
        if st.received > MAX_ECHO_BODY:
            yield from st.drain()
            yield from st.send(413, b"body too large for /echo\n")
            return
    yield from st.send(200, bytes(out))


def _ep_headers(st: _Stream) -> _Steps[None]:
    lines = "".join(f"{name}: {value}\n" for name, value in st.headers)
    yield from st.send(200, lines.encode("latin-1"))


def _ep_sha256(st: _Stream) -> _Steps[None]:
    digest = hashlib.sha256()
    while data := (yield from st.read()):
        digest.update(data)
    yield from st.send(200, f"{digest.hexdigest()} {st.received}".encode())


def _ep_bytes(st: _Stream, arg: str) -> _Steps[None]:
    if not arg.isdigit() or int(arg) > MAX_SIZE:
        raise _HttpError(400, "usage: /bytes/N")
    size = int(arg)
    digest = hashlib.sha256() if st.flag("trailers") else None
    headers = [("content-type", "application/octet-stream")]
    if digest is not None:
        headers.append(("trailer", "x-checksum"))
    st.respond(200, headers, length=None if st.flag("nolength") else size)
    yield from st.write_pattern(0, size, digest.update if digest is not None else None)
    st.finish([("x-checksum", digest.hexdigest())] if digest is not None else [])


def _ep_status(st: _Stream, arg: str) -> _Steps[None]:
    if not arg.isdigit() or not 200 <= int(arg) <= 999:
        raise _HttpError(400, "usage: /status/N with N from 200 to 999")
    status = int(arg)
    yield from st.send(status, f"status {status}\n".encode())


def _ep_slow(st: _Stream) -> _Steps[None]:
    yield time.monotonic() + st.float_param("delay", 1.0)
    if "size" not in st.query:
        yield from _ep_hello(st)
        return
    size = st.int_param("size", 0)
    st.respond(200, [("content-type", "application/octet-stream")], length=size)
    yield from st.write_pattern(0, size)
    st.finish()


def _ep_drip(st: _Stream) -> _Steps[None]:
    size = st.int_param("size", 1024)
    interval = st.float_param("interval", 0.1)
    piece = st.int_param("piece", max(1, size // 10)) or 1
    st.respond(200, [("content-type", "application/octet-stream")], length=size)
    for start in range(0, size, piece):
        yield time.monotonic() + interval
        yield from st.write_pattern(start, min(piece, size - start))
    st.finish()


def _ep_reset_mid_body(st: _Stream) -> _Steps[None]:
    size = st.int_param("size", 1024)
    st.respond(200, [("content-type", "application/octet-stream")], length=size)
    yield from st.write_pattern(0, size // 2)
    st.reset(h2.errors.ErrorCodes.INTERNAL_ERROR)


def _ep_headers_size(st: _Stream) -> _Steps[None]:
    count = st.int_param("n", 1, MAX_EXTRA_HEADERS)
    size = st.int_param("size", 1024, MAX_EXTRA_HEADER_SIZE)
    value = ("abcdefghijklmnopqrstuvwxyz" * (size // 26 + 1))[:size]
    yield from st.send(200, b"ok\n", [(f"x-h-{i}", value) for i in range(count)])


def _ep_upload_slow_read(st: _Stream) -> _Steps[None]:
    rate = st.int_param("rate", 65536) or 1
    step = max(1, min(RECV_SIZE, rate // 10))
    began = time.monotonic()
    while (yield from st.read(step)):
        ahead = st.received / rate - (time.monotonic() - began)
        if ahead > 0:
            yield time.monotonic() + ahead
    yield from st.send(200, str(st.received).encode())


def _ep_trailers(st: _Stream) -> _Steps[None]:
    st.respond(200, [("content-type", "text/plain"), ("trailer", "grpc-status, grpc-message")])
    yield from st.write(f"hello from origin {st.name}\n".encode())
    st.finish([("grpc-status", "0"), ("grpc-message", "ok")])


def _ep_stats(st: _Stream) -> _Steps[None]:
    server = st.conn.server
    requests, connections = server.stats()
    text = (
        f"requests={requests} connections={connections} "
        f"streams_max_concurrent={server.streams_max_concurrent()}"
    )
    yield from st.send(200, text.encode())


type _Endpoint = Callable[[_Stream], _Steps[None]]
type _ArgEndpoint = Callable[[_Stream, str], _Steps[None]]


# -- transport -----------------------------------------------------------------------------


class _Tls:
    """Server-side TLS over memory BIOs; the connection loop moves the ciphertext.

    Plaintext written before the handshake completes (h2's SETTINGS) waits here.
    """

    def __init__(self, context: ssl.SSLContext) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._ready = False
        self._early = bytearray()
        self.closed = False  # the client sent close_notify

    def receive(self, data: bytes) -> bytes:
        """Take ciphertext from the client; return the plaintext it completes.

        Raises:
            ssl.SSLError: handshake failure or a bad record.
        """
        self._incoming.write(data)
        if not self._ready:
            try:
                self._obj.do_handshake()
            except ssl.SSLWantReadError:
                return b""
            self._ready = True
            if self._early:
                self._obj.write(self._early)
                self._early.clear()
        out = bytearray()
        while True:
            try:
                piece = self._obj.read(RECV_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.closed = True
                break
            if not piece:
                self.closed = True
                break
            out += piece
        return bytes(out)

    def send(self, data: bytes) -> None:
        """Encrypt plaintext for the client (held back until the handshake completes)."""
        if self._ready:
            self._obj.write(data)
        else:
            self._early += data

    def output(self) -> bytes:
        """Return the ciphertext waiting to go out."""
        return self._outgoing.read()

    def close(self) -> None:
        """Queue a close_notify alert."""
        if self._ready:
            with contextlib.suppress(ssl.SSLError):
                self._obj.unwrap()


class _Done(Exception):
    """Stop serving this connection (the client left or broke it)."""


# -- the connection ------------------------------------------------------------------------


class _Connection:
    """Serves every stream of one accepted connection from its own thread (see above)."""

    def __init__(self, sock: socket.socket, server: H2OriginServer) -> None:
        self.sock = sock
        self.server = server
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.decoder.max_header_list_size = MAX_HEAD
        self.tls = _Tls(server.tls) if server.tls is not None else None
        self.streams: dict[int, _Stream] = {}
        self.outbuf = bytearray()
        self.opened = 0  # streams accepted on this connection
        self.last_stream_id: int | None = None  # set once our GOAWAY is out
        self.closing = False  # end once no stream is left
        self.eof = False
        self._exact: dict[str, tuple[_Endpoint, bool]] = {
            "/echo": (_ep_echo, True),
            "/headers": (_ep_headers, False),
            "/sha256": (_ep_sha256, True),
            "/slow": (_ep_slow, False),
            "/drip": (_ep_drip, False),
            "/reset-mid-body": (_ep_reset_mid_body, False),
            "/headers-size": (_ep_headers_size, False),
            "/upload-slow-read": (_ep_upload_slow_read, True),
            "/trailers": (_ep_trailers, False),
            "/_stats": (_ep_stats, False),
        }
        self._prefix: dict[str, _ArgEndpoint] = {"/bytes/": _ep_bytes, "/status/": _ep_status}

    def run(self) -> None:
        """Serve until the client leaves, breaks the protocol, idles, or is sent away."""
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.setblocking(False)
            self.h2.initiate_connection()
            # Our settings, in a second SETTINGS frame: h2 applies them once the client
            # acknowledges it, so a client that sends before it has seen them (a smaller
            # window, fewer streams) is not punished for it.
            codes = h2.settings.SettingCodes
            self.h2.update_settings(
                {
                    codes.MAX_CONCURRENT_STREAMS: self.server.max_concurrent_streams,
                    codes.INITIAL_WINDOW_SIZE: self.server.initial_window_size,
                    codes.MAX_HEADER_LIST_SIZE: MAX_HEAD,
                }
            )
            self.h2.increment_flow_control_window(CONNECTION_WINDOW - DEFAULT_CONNECTION_WINDOW)
            try:
                self._loop()
            except h2.exceptions.ProtocolError:
                # h2 queues a GOAWAY for most errors, but not for a bad preface.
                if self.h2.state_machine.state is not h2.connection.ConnectionState.CLOSED:
                    self.h2.close_connection(h2.errors.ErrorCodes.PROTOCOL_ERROR)
            except _Done:
                pass
            self._lingering_close()
        except OSError:
            pass
        finally:
            for stream in self.streams.values():
                if stream.runner is not None:
                    stream.runner.close()
            self.streams.clear()

    # -- the loop ----------------------------------------------------------------------

    def _loop(self) -> None:
        poller = select.poll()
        fd = self.sock.fileno()
        poller.register(fd, select.POLLIN)
        last_io = time.monotonic()
        while True:
            self._run_streams()
            self._send_some()
            if self.eof or (self.closing and not self.streams and not self.outbuf):
                return
            if any(self._ready(stream) for stream in self.streams.values()):
                continue  # sending made room, or a deadline passed meanwhile
            now = time.monotonic()
            sleeps = [s.wait for s in self.streams.values() if isinstance(s.wait, float)]
            if sleeps:
                timeout = min(sleeps) - now
            else:
                timeout = last_io + self.server.idle_timeout - now
                if timeout <= 0:
                    return
            poller.modify(fd, select.POLLIN | (select.POLLOUT if self.outbuf else 0))
            ready = poller.poll(max(0.0, timeout) * 1000)
            for _fd, mask in ready:
                last_io = time.monotonic()
                if mask & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    self._receive()
                if mask & select.POLLOUT:
                    self._send_some()

    def _receive(self) -> None:
        for _ in range(RECV_BURST):
            try:
                data = self.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                self.eof = True
                return
            if self.tls is not None:
                data = self.tls.receive(data)
                self.eof = self.tls.closed
            if data:
                for event in self.h2.receive_data(data):
                    self._handle(event)
            if self.eof:
                return

    def _handle(self, event: h2.events.Event) -> None:
        match event:
            case h2.events.RequestReceived():
                self._on_request(event)
            case h2.events.DataReceived():
                stream = self.streams.get(event.stream_id)
                if stream is not None and event.data:
                    stream.chunks.append((event.data, event.flow_controlled_length))
                elif event.flow_controlled_length:
                    self.acknowledge(event.stream_id, event.flow_controlled_length)
            case h2.events.StreamEnded():
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.ended = True
            case h2.events.StreamReset():
                stream = self.streams.pop(event.stream_id, None)
                if stream is not None:
                    stream.finished = stream.ended = True
                    if stream.runner is not None:
                        stream.runner.close()
                    stream.release()
            case h2.events.ConnectionTerminated():
                # h2 sends nothing more after a GOAWAY from the client; neither can we.
                raise _Done("client sent GOAWAY")
            case _:
                pass  # settings, pings (answered by h2), window updates, priorities

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        if self.last_stream_id is not None and stream_id > self.last_stream_id:
            self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        headers = [
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in event.headers
        ]
        stream = _Stream(self, stream_id, headers)
        stream.ended = event.stream_ended is not None
        stream.runner = self._serve(stream)
        self.streams[stream_id] = stream
        self.server.count_request()
        self.server.note_streams(len(self.streams))
        self.opened += 1
        limit = self.server.max_streams_per_connection
        if limit and self.opened >= limit and self.last_stream_id is None:
            self.last_stream_id = stream_id
            self.closing = True
            self._pull()
            goaway = GoAwayFrame(stream_id=0, last_stream_id=stream_id, error_code=0)
            self._emit(goaway.serialize())

    def _serve(self, stream: _Stream) -> _Steps[None]:
        """Run the endpoint for ``stream``: dispatch, and answer errors."""
        try:
            entry = self._exact.get(stream.path)
            if entry is not None:
                endpoint, reads_body = entry
                if not reads_body:
                    yield from stream.drain()
                yield from endpoint(stream)
                return
            yield from stream.drain()
            for prefix, arg_endpoint in self._prefix.items():
                if stream.path.startswith(prefix):
                    yield from arg_endpoint(stream, stream.path[len(prefix) :])
                    return
            yield from _ep_hello(stream)
        except _HttpError as exc:
            if stream.started:
                stream.reset(h2.errors.ErrorCodes.INTERNAL_ERROR)
            else:
                yield from stream.send(exc.status, f"{exc.reason}\n".encode())

    def _run_streams(self) -> None:
        """Resume every stream whose wait is over, until none is."""
        progress = True
        while progress:
            progress = False
            for stream in list(self.streams.values()):
                if self._ready(stream):
                    self._step(stream)
                    progress = True

    def _ready(self, stream: _Stream) -> bool:
        wait = stream.wait
        if wait is _Need.BODY:
            return bool(stream.chunks) or stream.ended
        if wait is _Need.WINDOW:
            return self.send_room(stream.stream_id) > 0
        assert isinstance(wait, float)
        return time.monotonic() >= wait

    def _step(self, stream: _Stream) -> None:
        assert stream.runner is not None
        try:
            stream.wait = next(stream.runner)
            return
        except StopIteration:
            pass
        # The endpoint has returned: its response is complete (or reset).
        del self.streams[stream.stream_id]
        if not stream.finished:
            stream.reset(h2.errors.ErrorCodes.INTERNAL_ERROR)
        elif not stream.ended:
            stream.reset(h2.errors.ErrorCodes.NO_ERROR)  # RFC 9113 §8.1
        stream.release()

    # -- output ------------------------------------------------------------------------

    def acknowledge(self, stream_id: int, size: int) -> None:
        """Hand ``size`` received bytes of ``stream_id`` back to the client's window."""
        if size:
            self.h2.acknowledge_received_data(size, stream_id)

    def send_room(self, stream_id: int) -> int:
        """How many body bytes ``stream_id`` may send in its next DATA frame."""
        self._pull()
        if len(self.outbuf) >= SEND_BUFFER_HIGH:
            return 0
        window = self.h2.local_flow_control_window(stream_id)
        return min(window, self.h2.max_outbound_frame_size)

    def _pull(self) -> None:
        """Move h2's output (encrypted, under TLS) into the send buffer."""
        data = self.h2.data_to_send()
        if data:
            self._emit(data)
        elif self.tls is not None:
            self.outbuf += self.tls.output()

    def _emit(self, data: bytes) -> None:
        if self.tls is not None:
            self.tls.send(data)
            self.outbuf += self.tls.output()
        else:
            self.outbuf += data

    def _send_some(self) -> None:
        """Send what the socket takes without blocking."""
        self._pull()
        while self.outbuf:
            try:
                sent = self.sock.send(self.outbuf)
            except (BlockingIOError, InterruptedError):
                return
            del self.outbuf[:sent]

    def _lingering_close(self) -> None:
        """Flush, send FIN, then discard input for a while so our close is not a RST."""
        if self.eof:
            return
        if self.tls is not None:
            self._pull()
            self.tls.close()
        self._pull()
        sock = self.sock
        sock.settimeout(self.server.idle_timeout)
        sock.sendall(self.outbuf)
        self.outbuf.clear()
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_TIME
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(RECV_SIZE):
                break


# -- the server ----------------------------------------------------------------------------


class H2OriginServer(OriginServer):
    """A listening HTTP/2 origin: one thread per connection, joined by ``server_close()``.

    Attributes:
        tls: the server TLS context (ALPN ``h2``), or None for cleartext h2c.
        max_concurrent_streams: SETTINGS_MAX_CONCURRENT_STREAMS advertised.
        max_streams_per_connection: send GOAWAY after this many streams; 0 for never.
        initial_window_size: SETTINGS_INITIAL_WINDOW_SIZE advertised.
    """

    def __init__(
        self,
        address: tuple[str, int],
        *,
        name: str | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
        tls: ssl.SSLContext | None = None,
        max_concurrent_streams: int = MAX_CONCURRENT_STREAMS,
        max_streams_per_connection: int = 0,
        initial_window_size: int = INITIAL_WINDOW_SIZE,
    ) -> None:
        """Bind and listen.

        Args:
            address: (host, port); port 0 lets the kernel choose.
            name: the origin's name; None means its port number.
            idle_timeout: seconds a connection may stall before it is closed.
            tls: a server TLS context, or None for cleartext h2c.
            max_concurrent_streams: SETTINGS_MAX_CONCURRENT_STREAMS, at least 1.
            max_streams_per_connection: GOAWAY after this many streams; 0 for never.
            initial_window_size: SETTINGS_INITIAL_WINDOW_SIZE, 1 to 2**31-1.

        Raises:
            ValueError: a setting is out of range.
            OSError: the address cannot be bound.
        """
        if max_concurrent_streams < 1:
            raise ValueError("max_concurrent_streams must be at least 1")
        if max_streams_per_connection < 0:
            raise ValueError("max_streams_per_connection must not be negative")
        if not 1 <= initial_window_size < 1 << 31:
            raise ValueError("initial_window_size must be from 1 to 2**31-1")
        super().__init__(address, name=name, idle_timeout=idle_timeout)
        self.tls = tls
        self.max_concurrent_streams = max_concurrent_streams
        self.max_streams_per_connection = max_streams_per_connection
        self.initial_window_size = initial_window_size
        self._h2_lock = threading.Lock()
        self._streams_max = 0
        self._workers: set[threading.Thread] = set()

    def note_streams(self, active: int) -> None:
        """Record ``active`` streams open at once on one connection."""
        with self._h2_lock:
            self._streams_max = max(self._streams_max, active)

    def streams_max_concurrent(self) -> int:
        """The most streams seen open at once on one connection."""
        with self._h2_lock:
            return self._streams_max

    def process_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: object
    ) -> None:
        """Serve the new connection from a thread of its own, remembered for joining."""
        assert isinstance(request, socket.socket)
        self.connection_opened(request)
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request,),
            name=f"origin-h2-{self.port}-conn",
            daemon=True,
        )
        with self._h2_lock:
            self._workers.add(thread)
        thread.start()

    def _serve_connection(self, sock: socket.socket) -> None:
        try:
            _Connection(sock, self).run()
        finally:
            self.connection_closed(sock)
            sock.close()
            with self._h2_lock:
                self._workers.discard(threading.current_thread())

    def server_close(self) -> None:
        """Close the listener, end every connection and join its thread.

        Call it after ``shutdown()``, as :meth:`OriginHandle.stop` does, so that no
        connection is accepted meanwhile.
        """
        super().server_close()
        self.close_connections()
        with self._h2_lock:
            workers = list(self._workers)
        for worker in workers:
            worker.join()


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """Return a server TLS context for ``cert`` and ``key`` that offers ALPN ``h2`` only.

    Raises:
        OSError, ssl.SSLError: the files cannot be read or do not match.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 9113 §9.2
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    return context


def start_h2_origin(
    host: str = "127.0.0.1",
    port: int = 0,
    name: str | None = None,
    *,
    cert: str | None = None,
    key: str | None = None,
    max_concurrent_streams: int = MAX_CONCURRENT_STREAMS,
    max_streams_per_connection: int = 0,
    initial_window_size: int = INITIAL_WINDOW_SIZE,
    idle_timeout: float = IDLE_TIMEOUT,
) -> OriginHandle:
    """Start an HTTP/2 origin in background threads of this process.

    Args:
        host: address to bind.
        port: port to bind; 0 lets the kernel choose (see ``handle.port``).
        name: the origin's name; None means its port number.
        cert: PEM certificate chain; with ``key``, serve TLS with ALPN ``h2``.
        key: PEM private key for ``cert``.
        max_concurrent_streams: SETTINGS_MAX_CONCURRENT_STREAMS advertised.
        max_streams_per_connection: GOAWAY after this many streams; 0 for never.
        initial_window_size: SETTINGS_INITIAL_WINDOW_SIZE advertised.
        idle_timeout: seconds a connection may stall before it is closed.

    Returns:
        A handle with ``.port``, ``.name``, ``.requests``, ``.connections`` and ``.stop()``
        (which also joins every connection thread); also a context manager.

    Raises:
        ValueError: only one of ``cert`` and ``key``, or a setting out of range.
        OSError, ssl.SSLError: the address cannot be bound, or the certificate not loaded.
    """
    if (cert is None) != (key is None):
        raise ValueError("cert and key go together")
    tls = server_context(cert, key) if cert is not None and key is not None else None
    server = H2OriginServer(
        (host, port),
        name=name,
        idle_timeout=idle_timeout,
        tls=tls,
        max_concurrent_streams=max_concurrent_streams,
        max_streams_per_connection=max_streams_per_connection,
        initial_window_size=initial_window_size,
    )
    return OriginHandle(server)


def main(argv: list[str] | None = None) -> int:
    """Serve one origin per ``--port`` until SIGTERM or SIGINT; the exit status."""
    parser = cli_parser(
        "python -m eg.demo.origin_h2",
        "A small HTTP/2 origin server (h2c, or TLS with ALPN h2) for demos and tests.",
    )
    parser.add_argument("--cert", help="PEM certificate chain: serve TLS with ALPN h2")
    parser.add_argument("--key", help="PEM private key for --cert")
    parser.add_argument(
        "--max-concurrent-streams",
        type=int,
        default=MAX_CONCURRENT_STREAMS,
        help=f"SETTINGS_MAX_CONCURRENT_STREAMS (default {MAX_CONCURRENT_STREAMS})",
    )
    parser.add_argument(
        "--max-streams-per-connection",
        type=int,
        default=0,
        help="send GOAWAY after this many streams on a connection (default 0: never)",
    )
    args = parser.parse_args(argv)
    if (args.cert is None) != (args.key is None):
        parser.error("--cert and --key go together")
    return serve_cli(parser, args, lambda host, port, name: start_h2_origin(
        host, port, name, cert=args.cert, key=args.key,
        max_concurrent_streams=args.max_concurrent_streams,
        max_streams_per_connection=args.max_streams_per_connection,
        idle_timeout=args.idle_timeout,
    ))


if __name__ == "__main__":
    sys.exit(main())
