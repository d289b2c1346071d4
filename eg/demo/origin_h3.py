"""A small HTTP/3 origin server: the HTTP/3 twin of :mod:`eg.demo.origin_h2`.

QUIC and HTTP/3 are qh3's (``QuicConnection`` and ``H3Connection``, both sans-I/O); the
UDP socket, the clock and the thread are ours. It serves the endpoint table of
:mod:`eg.demo.origin_h2`, and runs the *same* endpoint generators: they only use the
protocol-neutral surface of a stream (read, respond, write, finish, reset, the query
helpers), which :class:`_H3Stream` provides over HTTP/3. Every response carries
``x-origin: NAME``:

=============================  ===========================================================
``/`` and anything unknown     200 ``hello from origin NAME\\n``
``/echo``                      ``METHOD\\n PATH\\n``, each received field ``name: value``
                               (pseudo-headers included, order kept), a blank line, the body
``/headers``                   the received field lines only
``/sha256``                    streams the body through SHA-256: ``<hex> <length>``
``/bytes/N``                   N bytes of :func:`~eg.demo.origin.pattern`; ``?trailers=1``
                               adds trailer ``x-checksum: <sha256 hex>``, ``?nolength=1``
                               omits content-length
``/status/N``                  status N; 204 and 304 without body or content-length
``/slow?delay=S&size=N``       waits S seconds before the head
``/drip?size=N&interval=S``    the body in ``piece``-byte pieces, S seconds apart
``/reset-mid-body?size=N``     content-length N, N//2 bytes, then RESET_STREAM
                               H3_INTERNAL_ERROR (0x102) once those bytes have left
``/headers-size?n=N&size=S``   N extra fields ``x-h-0`` ... of S bytes each
``/upload-slow-read?rate=B``   consumes the body at B bytes/s, answers ``<length>`` (see
                               "Flow control": the client is *not* slowed down)
``/trailers``                  a body, then trailers ``grpc-status: 0``, ``grpc-message: ok``
``/_stats``                    ``requests=N connections=M streams_max_concurrent=X``
=============================  ===========================================================

Error codes of the shared endpoints are HTTP/2's; :func:`_h3_error_code` maps them to
HTTP/3's as RFC 9114 §A.4.1 does (INTERNAL_ERROR → H3_INTERNAL_ERROR, ...).

**One thread, one UDP socket, one loop.** qh3 objects are not thread-safe, so the
serving thread owns every one of them. It polls the socket (and a wake-up socket for
:meth:`H3OriginServer.stop`), routes each datagram to its connection, and services every
connection: QUIC timer, QUIC and HTTP/3 events, ready streams, then
``datagrams_to_send`` — after every input, as aioquic's ``asyncio/protocol.py`` does::

    poll(socket, wake-up; timeout = earliest QUIC timer / stream deadline)
      └─► recvfrom (a burst) ─► DCID ─► routes[dcid] ─► receive_datagram
                                      └─ unknown + Initial ≥ 1200 bytes ─► new connection
      └─► each connection: handle_timer ─► events ─► run streams ─► datagrams_to_send

Streams are generators, as in :mod:`eg.demo.origin_h2`; each yields what it waits for
(``_Need.BODY``, ``_Need.WINDOW`` or a monotonic deadline).

**Routing by connection ID, never by address.** A connection is reachable under every
CID it has: the client's original DCID (Initial and 0-RTT packets), qh3's ``host_cid``,
and each CID announced by ``ConnectionIdIssued`` (forgotten on ``ConnectionIdRetired``
and when the connection ends). A client whose address or port changes (NAT rebinding)
keeps its connection; qh3 validates the new path and answers there.

**Flow control.** Outbound, a stream writes only while qh3 holds fewer than
``STREAM_SEND_HIGH`` unsent bytes of it (``get_send_buffer_size``) and the connection
fewer than ``CONNECTION_SEND_HIGH``; the rest waits in the endpoint, so a 64 MiB body
costs a few hundred KiB here whatever the client's speed. Inbound, qh3 2.1.0 (native
core) grants MAX_STREAM_DATA / MAX_DATA credit as STREAM frames *arrive*, not as the
application consumes them: there is no "consumed" call, and a peer that nobody reads
from can send without limit (measured: 20 MiB through a 1 MiB stream window and a
4 MiB connection window, into a server whose events were never pulled). So unread
request body piles up in this process; ``/upload-slow-read`` sees the whole body arrive
at line rate, and its rate only delays the answer. ``MAX_UNREAD_BODY`` bounds that pile
per stream: past it, the stream is stopped and reset with H3_EXCESSIVE_LOAD.

**Recycling.** With ``max_requests_per_connection=K``, the K-th request on a connection
triggers GOAWAY (naming the next client stream id, RFC 9114 §5.2; qh3 has no GOAWAY
sender, so the frame goes on qh3's control stream directly). Later streams are refused
(RESET_STREAM + STOP_SENDING H3_REQUEST_REJECTED). Once the accepted requests are done
and their bytes acknowledged (or ``LINGER_TIME`` has passed), the connection closes with
H3_NO_ERROR.

**0-RTT** is off unless asked for: ``session_tickets="issue"`` hands out session
tickets that are never honoured (a client's 0-RTT attempt is rejected and its early data
resent in 1-RTT), ``"resume"`` honours each ticket once, and qh3 then accepts the
client's early data. The test client uses both to prove it can tell the two apart.

Run ``python -m eg.demo.origin_h3 --port P --cert C --key K [--name N]``; with port 0
the kernel picks one, and each ``origin listening on HOST:PORT`` line (UDP) on stdout
names the real port. Tests use :func:`start_h3_origin` for an in-process server.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Literal, Self, cast
from urllib.parse import parse_qsl, urlsplit

from qh3._hazmat import Buffer, encode_uint_var
from qh3.h3.connection import ErrorCode, FrameType, H3Connection, encode_frame
from qh3.h3.connection import ProtocolError as H3ProtocolError
from qh3.h3.events import DataReceived, H3Event, HeadersReceived, StopSending, StreamReset
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import NetworkAddress, QuicConnection, QuicConnectionError
from qh3.quic.events import (
    ConnectionIdIssued,
    ConnectionIdRetired,
    ConnectionTerminated,
    ProtocolNegotiated,
)
from qh3.quic.packet import QuicPacketType, pull_quic_header
from qh3.tls import SessionTicket

from eg.demo.origin import (
    CHUNK,
    LINGER_TIME,
    PATTERN_MODULUS,
    RECV_SIZE,
    OriginHandle,
    QueryParams,
    _HttpError,
    cli_parser,
    pattern,
    serve_cli,
)
from eg.demo.origin_h2 import (
    _ep_bytes,
    _ep_drip,
    _ep_echo,
    _ep_headers,
    _ep_headers_size,
    _ep_hello,
    _ep_reset_mid_body,
    _ep_sha256,
    _ep_slow,
    _ep_stats,
    _ep_status,
    _ep_trailers,
    _ep_upload_slow_read,
    _Need,
    _Steps,
)

# The idle timeout qh3 applies unless told otherwise (QuicConfiguration's default), in
# seconds; a connection with no packet received for this long is closed.
IDLE_TIMEOUT = 30.0
# Length of the connection IDs we issue: qh3's default, and what short-header packets
# are parsed with (their DCID length is not on the wire).
CONNECTION_ID_LENGTH = 8
# RFC 9000 §14.1: a server drops an Initial packet in a UDP datagram of fewer bytes.
MIN_INITIAL_DATAGRAM = 1200
# max_datagram_frame_size transport parameter. qh3's H3 layer announces SETTINGS_H3_DATAGRAM,
# and its peer rejects that (H3_SETTINGS_ERROR) unless this parameter is set too.
MAX_DATAGRAM_FRAME_SIZE = 65536
# Stop producing body for one stream while qh3 holds this many of its bytes not yet
# sent, and for the whole connection past CONNECTION_SEND_HIGH (get_send_buffer_size).
# Big enough to keep a loopback congestion window full between two loop turns.
STREAM_SEND_HIGH = 512 * 1024
CONNECTION_SEND_HIGH = 2 << 20
# Unread request body one stream may hold (qh3 grants credit on arrival, so nothing
# else bounds it); past it the stream is stopped and reset with H3_EXCESSIVE_LOAD.
MAX_UNREAD_BODY = 64 << 20
# Datagrams read per wake-up before the connections are serviced.
DATAGRAM_BURST = 256
# Rounds of "run streams, transmit" per connection per turn before input gets a turn.
SERVICE_ROUNDS = 16
# SO_RCVBUF / SO_SNDBUF asked for (the kernel caps them at net.core.[rw]mem_max): a
# burst of a full congestion window must not overflow the socket on loopback.
SOCKET_BUFFER = 4 << 20
# Largest UDP payload read.
MAX_UDP_PAYLOAD = 65_535
# How long /reset-mid-body's RESET_STREAM may wait for the half body to leave qh3 (a
# RESET_STREAM discards whatever was not sent yet); the same as the HTTP/1.1 origin's.
RESET_DRAIN_TIME = 2.0
# Longest poll() sleep: the loop rechecks its stop flag at least this often.
MAX_POLL_SLEEP = 1.0

type TicketMode = Literal["off", "issue", "resume"]
type _Endpoint = Callable[[_H3Stream], _Steps[None]]
type _ArgEndpoint = Callable[[_H3Stream, str], _Steps[None]]


def _h3_error_code(code: int) -> int:
    """Map an HTTP/2 error code (what the shared endpoints pass) to HTTP/3's.

    RFC 9114 §A.4.1; codes that are already HTTP/3's (0x100 and up) pass through.
    """
    match code:
        case 0x0:  # NO_ERROR
            return ErrorCode.H3_NO_ERROR
        case 0x1:  # PROTOCOL_ERROR
            return ErrorCode.H3_GENERAL_PROTOCOL_ERROR
        case 0x7:  # REFUSED_STREAM
            return ErrorCode.H3_REQUEST_REJECTED
        case 0x8:  # CANCEL
            return ErrorCode.H3_REQUEST_CANCELLED
        case 0xB:  # ENHANCE_YOUR_CALM
            return ErrorCode.H3_EXCESSIVE_LOAD
        case 0xA:  # CONNECT_ERROR
            return ErrorCode.H3_CONNECT_ERROR
        case _ if code < 0x100:  # INTERNAL_ERROR and everything else
            return ErrorCode.H3_INTERNAL_ERROR
        case _:
            return code


def _shared(endpoint: Callable[..., _Steps[None]]) -> Callable[..., _Steps[None]]:
    """Adopt an :mod:`eg.demo.origin_h2` endpoint for :class:`_H3Stream`.

    Those generators are annotated with HTTP/2's ``_Stream`` but touch only what both
    stream classes provide; this is the one place where that duck typing is asserted
    (the tests run every endpoint over HTTP/3).
    """
    return endpoint


# -- one request stream ---------------------------------------------------------------------


class _H3Stream(QueryParams):
    """One request and its response over HTTP/3: what the shared endpoints call.

    The request body arrives as DataReceived chunks and is handed out by :meth:`read`;
    the response goes through ``H3Connection`` as qh3's send queue allows.
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
        self.chunks: deque[bytes] = deque()
        self.buffered = 0  # bytes in chunks
        self.received = 0  # bytes handed to the endpoint
        self.ended = False  # no more request body to read (FIN received, or we stopped it)
        self.peer_done = False  # the client's half is over (FIN or RESET_STREAM received)
        self.started = False  # the response head has been sent
        self.finished = False  # the response has ended (FIN sent, or reset)
        self.wait: _Need | float = 0.0
        self.runner: _Steps[None] | None = None

    # -- the request body -----------------------------------------------------------------

    def read(self, size: int = RECV_SIZE) -> _Steps[bytes]:
        """Return the next 1 to ``size`` bytes of the body, or b"" at its end."""
        while not self.chunks:
            if self.ended:
                return b""
            yield _Need.BODY
        data = self.chunks[0]
        if len(data) <= size:
            self.chunks.popleft()
        else:
            self.chunks[0] = data[size:]
            data = data[:size]
        self.buffered -= len(data)
        self.received += len(data)
        return data

    def drain(self) -> _Steps[None]:
        """Read and discard the rest of the body."""
        while (yield from self.read()):
            pass

    # -- the response ---------------------------------------------------------------------

    def respond(
        self, status: int, headers: Iterable[tuple[str, str]] = (), *, length: int | None = None
    ) -> None:
        """Send the response head; 204 and 304 end the stream with it.

        Args:
            status: 200-999.
            headers: extra fields; ``x-origin`` and content-length are added here.
            length: the body's content-length, or None to send none.
        """
        assert not self.started, "one response per request"
        self.started = True
        fields = [(":status", str(status)), *headers, ("x-origin", self.name)]
        empty = status in (204, 304)
        if length is not None and not empty:
            fields.append(("content-length", str(length)))
        self.conn.h3.send_headers(self.stream_id, _encode(fields), end_stream=empty)
        self.finished = empty

    def write(self, data: bytes | memoryview) -> _Steps[None]:
        """Queue body bytes into qh3 as its send queue drains (nothing for HEAD)."""
        assert self.started
        if self.head_only or self.finished:
            return
        view = memoryview(data)
        while view:
            yield _Need.WINDOW
            size = min(self.conn.send_room(self.stream_id), len(view))
            if size > 0:
                self.conn.h3.send_data(self.stream_id, view[:size], end_stream=False)
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
            self.conn.h3.send_headers(self.stream_id, _encode(fields), end_stream=True)
        else:
            # An empty DATA frame carries the FIN: H3Connection has no bare end_stream, and
            # going around it would leave its stream state open.
            self.conn.h3.send_data(self.stream_id, b"", end_stream=True)

    def send(
        self, status: int, body: bytes, headers: Iterable[tuple[str, str]] = ()
    ) -> _Steps[None]:
        """Send a whole text response with a content-length."""
        self.respond(status, [("content-type", "text/plain"), *headers], length=len(body))
        yield from self.write(body)
        self.finish()

    def reset(self, code: int) -> None:
        """Abort: RESET_STREAM (once the bytes already queued have left) and STOP_SENDING.

        Args:
            code: an HTTP/3 error code, or an HTTP/2 one (mapped, RFC 9114 §A.4.1).
        """
        code = _h3_error_code(code)
        if not self.finished:
            self.conn.reset_later(self.stream_id, code)
        if not self.ended:
            self.conn.stop_reading(self.stream_id, code)
        self.finished = True
        self.ended = True
        self.chunks.clear()
        self.buffered = 0


def _encode(fields: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in fields]


def _decode(fields: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in fields]


# -- one QUIC connection --------------------------------------------------------------------


class _Connection:
    """One QUIC connection and its HTTP/3 streams, serviced by the server's thread."""

    def __init__(self, server: H3OriginServer, original_dcid: bytes) -> None:
        self.server = server
        self.quic = QuicConnection(
            configuration=server.configuration,
            original_destination_connection_id=original_dcid,
            session_ticket_fetcher=server.fetch_ticket if server.tickets == "resume" else None,
            session_ticket_handler=server.store_ticket if server.tickets != "off" else None,
        )
        self._h3: H3Connection | None = None
        self.cids: set[bytes] = {original_dcid, self.quic.host_cid}
        self.streams: dict[int, _H3Stream] = {}
        # Streams forgotten before the client's half ended: late frames on them are not
        # new requests. Emptied as those halves end; only early answers and aborts add.
        self.abandoned: set[int] = set()
        # RESET_STREAM waiting for the stream's queued bytes to leave: id → (code, deadline).
        self.pending_resets: dict[int, tuple[int, float]] = {}
        self.opened = 0  # requests accepted
        self.goaway_id: int | None = None  # first refused stream id, once GOAWAY is out
        self.drain_deadline: float | None = None  # close by then, once GOAWAY'd and idle
        self.closing = False  # quic.close() called
        self.done = False  # terminated: forget it

    @property
    def h3(self) -> H3Connection:
        """The HTTP/3 layer (it exists before any request can arrive)."""
        assert self._h3 is not None
        return self._h3

    # -- input ------------------------------------------------------------------------------

    def receive(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        """Feed one datagram to qh3."""
        self.quic.receive_datagram(data, addr, now)

    def service(self, now: float) -> None:
        """Timer, events, streams, output: everything due on this connection now."""
        timer = self.quic.get_timer()
        if timer is not None and timer <= now:
            self.quic.handle_timer(now)
        self._process_events()
        if self.done:
            return
        for _ in range(SERVICE_ROUNDS):
            progress = self._run_streams(now)
            self.transmit(now)
            if not progress:
                break
        self._flush_resets(now)
        self._maybe_close(now)
        self.transmit(now)
        self._process_events()  # a close, or a timer, may have ended the connection

    def _process_events(self) -> None:
        while (event := self.quic.next_event()) is not None:
            match event:
                case ConnectionIdIssued():
                    self.cids.add(event.connection_id)
                    self.server.route(event.connection_id, self)
                case ConnectionIdRetired():
                    self.cids.discard(event.connection_id)
                    self.server.unroute(event.connection_id, self)
                case ProtocolNegotiated():
                    # Created here, as aioquic's examples do, so that requests in 0-RTT
                    # packets (which follow in the same flight) find it.
                    if event.alpn_protocol == "h3" and self._h3 is None:
                        self._h3 = H3Connection(self.quic)
                case ConnectionTerminated():
                    self.done = True
                case _:
                    pass
            if self._h3 is not None:
                for h3_event in self._h3.handle_event(event):
                    self._on_h3(h3_event)

    def _on_h3(self, event: H3Event) -> None:
        stream_id = getattr(event, "stream_id", None)
        if stream_id in self.abandoned:
            # A request we stopped before its end: its last frames may still come.
            if getattr(event, "stream_ended", False) or isinstance(event, StreamReset):
                self.abandoned.discard(stream_id)
            return
        match event:
            case HeadersReceived():
                stream = self.streams.get(event.stream_id)
                if stream is None:
                    self._on_request(event)
                elif event.stream_ended:  # trailers end the request body
                    stream.ended = stream.peer_done = True
            case DataReceived():
                stream = self.streams.get(event.stream_id)
                if stream is None:
                    return
                if event.stream_ended:
                    stream.peer_done = True
                if stream.ended:
                    return  # we stopped reading
                if event.data:
                    stream.chunks.append(event.data)
                    stream.buffered += len(event.data)
                    if stream.buffered > MAX_UNREAD_BODY:
                        stream.reset(ErrorCode.H3_EXCESSIVE_LOAD)
                        self._forget(stream)
                        return
                if event.stream_ended:
                    stream.ended = True
            case StreamReset() | StopSending():
                # The client cancelled: stop the endpoint and both halves of the stream at
                # once. (After STOP_SENDING qh3 has reset our sending half itself.)
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    self.server.count_reset()
                    code = ErrorCode.H3_REQUEST_CANCELLED
                    if isinstance(event, StreamReset):
                        stream.peer_done = True
                        if not stream.finished:
                            with contextlib.suppress(QuicConnectionError):
                                self.quic.reset_stream(stream.stream_id, code)
                    if isinstance(event, StopSending) and not stream.ended:
                        self.stop_reading(stream.stream_id, code)
                    self._forget(stream)
            case _:
                pass  # GOAWAY from a client (push ids), datagrams

    def _on_request(self, event: HeadersReceived) -> None:
        stream_id = event.stream_id
        if self.goaway_id is not None and stream_id >= self.goaway_id:
            self.quic.reset_stream(stream_id, ErrorCode.H3_REQUEST_REJECTED)
            if not event.stream_ended:
                self.quic.stop_stream(stream_id, ErrorCode.H3_REQUEST_REJECTED)
            return
        stream = _H3Stream(self, stream_id, _decode(event.headers))
        stream.ended = stream.peer_done = event.stream_ended
        stream.runner = self._serve(stream)
        self.streams[stream_id] = stream
        self.server.count_request()
        self.server.note_streams(len(self.streams))
        self.opened += 1
        limit = self.server.max_requests_per_connection
        if limit and self.opened >= limit and self.goaway_id is None:
            self._send_goaway(stream_id + 4)

    def _send_goaway(self, first_refused: int) -> None:
        """GOAWAY on our control stream (RFC 9114 §5.2): requests from this id on are
        refused. qh3 parses GOAWAY but has no sender for it."""
        self.goaway_id = first_refused
        control = self.h3._local_control_stream_id
        assert control is not None
        frame = encode_frame(FrameType.GOAWAY, encode_uint_var(first_refused))
        self.quic.send_stream_data(control, frame, end_stream=False)

    # -- streams ----------------------------------------------------------------------------

    def _serve(self, stream: _H3Stream) -> _Steps[None]:
        """Run the endpoint for ``stream``: dispatch, and answer errors."""
        server = self.server
        try:
            entry = server.exact_endpoints.get(stream.path)
            if entry is not None:
                endpoint, reads_body = entry
                if not reads_body:
                    yield from stream.drain()
                yield from endpoint(stream)
                return
            yield from stream.drain()
            for prefix, arg_endpoint in server.prefix_endpoints.items():
                if stream.path.startswith(prefix):
                    yield from arg_endpoint(stream, stream.path[len(prefix) :])
                    return
            yield from _shared(_ep_hello)(stream)
        except _HttpError as exc:
            if stream.started:
                stream.reset(ErrorCode.H3_INTERNAL_ERROR)
            else:
                yield from stream.send(exc.status, f"{exc.reason}\n".encode())

    def _run_streams(self, now: float) -> bool:
        """Resume every stream whose wait is over, until none is; whether any was."""
        any_progress = False
        progress = True
        while progress:
            progress = False
            for stream in list(self.streams.values()):
                if self._ready(stream, now):
                    self._step(stream)
                    progress = any_progress = True
        return any_progress

    def _ready(self, stream: _H3Stream, now: float) -> bool:
        wait = stream.wait
        if wait is _Need.BODY:
            return bool(stream.chunks) or stream.ended
        if wait is _Need.WINDOW:
            return self.send_room(stream.stream_id) > 0
        assert isinstance(wait, float)
        return now >= wait

    def _step(self, stream: _H3Stream) -> None:
        assert stream.runner is not None
        try:
            stream.wait = next(stream.runner)
            return
        except StopIteration:
            pass
        # The endpoint has returned: its response is complete (or reset).
        if not stream.finished:
            stream.reset(ErrorCode.H3_INTERNAL_ERROR)
        elif not stream.ended:
            # Answered before the request body ended: ask the client to stop sending it
            # (RFC 9114 §4.1).
            self.stop_reading(stream.stream_id, ErrorCode.H3_NO_ERROR)
            stream.ended = True
        self._forget(stream)

    def _forget(self, stream: _H3Stream) -> None:
        self.streams.pop(stream.stream_id, None)
        if not stream.peer_done and not self.closing:
            self.abandoned.add(stream.stream_id)
        stream.finished = stream.ended = True
        if stream.runner is not None:
            stream.runner.close()
        stream.chunks.clear()
        stream.buffered = 0

    def has_ready(self, now: float) -> bool:
        """Whether a stream could make progress right now (the loop must not sleep)."""
        return any(self._ready(stream, now) for stream in self.streams.values())

    # -- output -----------------------------------------------------------------------------

    def send_room(self, stream_id: int) -> int:
        """How many body bytes ``stream_id`` may queue into qh3 now (see "Flow control")."""
        if self.server.send_blocked:
            return 0
        stream = STREAM_SEND_HIGH - self.quic.get_send_buffer_size(stream_id)
        connection = CONNECTION_SEND_HIGH - self.quic.get_send_buffer_size()
        return min(stream, connection)

    def reset_later(self, stream_id: int, code: int) -> None:
        """RESET_STREAM ``code`` once the stream's queued bytes have been sent.

        A RESET_STREAM makes qh3 drop whatever it has not sent yet, so sending it at once
        would cut /reset-mid-body's half body short.
        """
        self.pending_resets[stream_id] = (code, time.monotonic() + RESET_DRAIN_TIME)

    def stop_reading(self, stream_id: int, code: int) -> None:
        """STOP_SENDING ``code``: we will not read the rest of the request body."""
        with contextlib.suppress(QuicConnectionError):
            self.quic.stop_stream(stream_id, code)

    def _flush_resets(self, now: float) -> None:
        for stream_id, (code, deadline) in list(self.pending_resets.items()):
            if self.quic.get_send_buffer_size(stream_id) == 0 or now >= deadline:
                del self.pending_resets[stream_id]
                with contextlib.suppress(QuicConnectionError):
                    self.quic.reset_stream(stream_id, code)

    def _maybe_close(self, now: float) -> None:
        """After GOAWAY: close once every accepted request is done and acknowledged."""
        if self.goaway_id is None or self.closing or self.streams or self.pending_resets:
            return
        if self.drain_deadline is None:
            self.drain_deadline = now + LINGER_TIME
        core = self.quic._core
        unacknowledged = core.bytes_in_flight if core is not None else 0
        idle = self.quic.get_send_buffer_size() == 0 and unacknowledged == 0
        if idle or now >= self.drain_deadline:
            self.close(ErrorCode.H3_NO_ERROR, "max requests per connection reached")

    def close(self, code: int, reason: str) -> None:
        """Close the QUIC connection (CONNECTION_CLOSE goes out with the next transmit)
        and stop every endpoint. Harmless once qh3 has terminated the connection."""
        if not self.closing:
            self.closing = True
            self.quic.close(error_code=code, reason_phrase=reason)
        for stream in list(self.streams.values()):
            self._forget(stream)
        self.pending_resets.clear()

    def transmit(self, now: float) -> None:
        """Hand qh3's datagrams to the socket (unless it is backed up)."""
        if self.server.send_blocked:
            return
        for data, addr in self.quic.datagrams_to_send(now):
            self.server.send_datagram(data, addr)

    def deadline(self) -> float | None:
        """The earliest time something is due here without any input."""
        times = [wait for stream in self.streams.values() if isinstance(wait := stream.wait, float)]
        timer = self.quic.get_timer()
        if timer is not None:
            times.append(timer)
        times.extend(deadline for _, deadline in self.pending_resets.values())
        if self.drain_deadline is not None and not self.closing:
            times.append(self.drain_deadline)
        return min(times) if times else None


# -- the server -----------------------------------------------------------------------------


class H3OriginServer:
    """A bound UDP socket and every QUIC connection on it; :meth:`serve_forever` runs it.

    Attributes:
        name: what ``x-origin`` and the hello body say; defaults to the bound port.
        max_requests_per_connection: GOAWAY after this many requests; 0 for never.
        tickets: the session-ticket mode (see the module docstring, "0-RTT").
        configuration: the qh3 server configuration every connection shares.
    """

    def __init__(
        self,
        address: tuple[str, int],
        *,
        cert: str,
        key: str,
        name: str | None = None,
        max_requests_per_connection: int = 0,
        idle_timeout: float = IDLE_TIMEOUT,
        session_tickets: TicketMode = "off",
    ) -> None:
        """Bind the UDP socket and load the certificate.

        Args:
            address: (host, port); port 0 lets the kernel choose.
            cert: PEM certificate chain.
            key: PEM private key for ``cert``.
            name: the origin's name; None means its port number.
            max_requests_per_connection: GOAWAY after this many requests; 0 for never.
            idle_timeout: seconds without a packet from the client before qh3 closes.
            session_tickets: "off", "issue" (never honoured) or "resume" (0-RTT accepted).

        Raises:
            ValueError: a setting is out of range.
            OSError: the address cannot be bound, or the files not read.
        """
        if max_requests_per_connection < 0:
            raise ValueError("max_requests_per_connection must not be negative")
        if session_tickets not in ("off", "issue", "resume"):
            raise ValueError("session_tickets must be off, issue or resume")
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                self.sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
            self.sock.bind(address)
            self.sock.setblocking(False)
            self.configuration = QuicConfiguration(
                is_client=False,
                alpn_protocols=["h3"],
                idle_timeout=idle_timeout,
                max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE,
                connection_id_length=CONNECTION_ID_LENGTH,
            )
            self.configuration.load_cert_chain(cert, key)
        except BaseException:
            self.sock.close()
            raise
        self.server_address: tuple[str, int] = self.sock.getsockname()[:2]
        self.name = name if name is not None else str(self.port)
        self.max_requests_per_connection = max_requests_per_connection
        self.tickets: TicketMode = session_tickets
        self.pattern_block = pattern(0, CHUNK + PATTERN_MODULUS)
        # Endpoint tables: only the serving thread reads them.
        self.exact_endpoints: dict[str, tuple[_Endpoint, bool]] = {
            "/echo": (_shared(_ep_echo), True),
            "/headers": (_shared(_ep_headers), False),
            "/sha256": (_shared(_ep_sha256), True),
            "/slow": (_shared(_ep_slow), False),
            "/drip": (_shared(_ep_drip), False),
            "/reset-mid-body": (_shared(_ep_reset_mid_body), False),
            "/headers-size": (_shared(_ep_headers_size), False),
            "/upload-slow-read": (_shared(_ep_upload_slow_read), True),
            "/trailers": (_shared(_ep_trailers), False),
            "/_stats": (_shared(_ep_stats), False),
        }
        self.prefix_endpoints: dict[str, _ArgEndpoint] = {
            "/bytes/": _shared(_ep_bytes),
            "/status/": _shared(_ep_status),
        }
        # Serving-thread state.
        self._routes: dict[bytes, _Connection] = {}
        self._connections: set[_Connection] = set()
        self._ticket_store: dict[bytes, SessionTicket] = {}
        self._outbox: deque[tuple[bytes, NetworkAddress]] = deque()
        self.send_blocked = False
        # Shared with other threads (the handle's readers, stop()).
        self._lock = threading.Lock()
        self._requests = 0
        self._connection_count = 0
        self._resets = 0
        self._streams_max = 0
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)

    @property
    def port(self) -> int:
        """The bound UDP port."""
        return int(self.server_address[1])

    # -- counters (any thread) --------------------------------------------------------------

    def count_request(self) -> None:
        """Count one request head received."""
        with self._lock:
            self._requests += 1

    def count_reset(self) -> None:
        """Count one request the client cancelled (RESET_STREAM or STOP_SENDING)."""
        with self._lock:
            self._resets += 1

    def note_streams(self, active: int) -> None:
        """Record ``active`` requests open at once on one connection."""
        with self._lock:
            self._streams_max = max(self._streams_max, active)

    def stats(self) -> tuple[int, int]:
        """Return (requests, connections) served so far."""
        with self._lock:
            return self._requests, self._connection_count

    def resets(self) -> int:
        """Requests the client cancelled so far."""
        with self._lock:
            return self._resets

    def streams_max_concurrent(self) -> int:
        """The most requests seen open at once on one connection."""
        with self._lock:
            return self._streams_max

    # -- session tickets (serving thread, called from inside qh3) ---------------------------

    def store_ticket(self, ticket: SessionTicket) -> None:
        """Remember a ticket qh3 issued (``session_ticket_handler``)."""
        self._ticket_store[ticket.ticket] = ticket

    def fetch_ticket(self, label: bytes) -> SessionTicket | None:
        """Find a ticket a client offers, once: a ticket is single-use, so a replayed
        ClientHello gets no 0-RTT (RFC 8446 §8.1)."""
        return self._ticket_store.pop(label, None)

    # -- routing (serving thread) -----------------------------------------------------------

    def route(self, cid: bytes, conn: _Connection) -> None:
        """Deliver datagrams addressed to ``cid`` to ``conn``."""
        self._routes[cid] = conn

    def unroute(self, cid: bytes, conn: _Connection) -> None:
        """Forget ``cid``, if it still belongs to ``conn``."""
        if self._routes.get(cid) is conn:
            del self._routes[cid]

    def _dispatch(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        """Route one datagram by its destination CID; an unknown one may start a connection."""
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=CONNECTION_ID_LENGTH)
        except ValueError:
            return
        conn = self._routes.get(header.destination_cid)
        if conn is None:
            if (
                header.packet_type != QuicPacketType.INITIAL
                or len(data) < MIN_INITIAL_DATAGRAM
                or header.version not in self.configuration.supported_versions
            ):
                return  # stray, late, or a version we do not speak: drop
            conn = _Connection(self, header.destination_cid)
            for cid in conn.cids:
                self.route(cid, conn)
            self._connections.add(conn)
            with self._lock:
                self._connection_count += 1
        self._guarded(conn, lambda at: conn.receive(data, addr, at), now)

    # -- output (serving thread) ------------------------------------------------------------

    def send_datagram(self, data: bytes, addr: NetworkAddress) -> None:
        """Send now, or queue behind earlier datagrams while the socket is full."""
        if not self._outbox:
            try:
                self.sock.sendto(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                if exc.errno not in (errno.ENOBUFS, errno.EAGAIN):
                    return  # unreachable peer and the like: QUIC recovers or times out
        self._outbox.append((data, addr))
        self.send_blocked = True

    def _flush_outbox(self) -> None:
        while self._outbox:
            data, addr = self._outbox[0]
            try:
                self.sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.ENOBUFS, errno.EAGAIN):
                    return
            self._outbox.popleft()
        self.send_blocked = False

    # -- the loop ---------------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Serve until :meth:`stop`; then close every connection and the socket."""
        poller = select.poll()
        poller.register(self._wake_r.fileno(), select.POLLIN)
        sock_fd = self.sock.fileno()
        poller.register(sock_fd, select.POLLIN)
        try:
            while not self._stopping.is_set():
                now = time.monotonic()
                timeout = self._sleep_time(now)
                poller.modify(sock_fd, select.POLLIN | (select.POLLOUT if self._outbox else 0))
                for fd, mask in poller.poll(timeout * 1000):
                    if fd != sock_fd:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(64)
                    elif mask & select.POLLOUT:
                        self._flush_outbox()
                now = time.monotonic()
                self._receive(now)
                self._service_all(time.monotonic())
        finally:
            self._shutdown()

    def _sleep_time(self, now: float) -> float:
        """How long poll() may sleep: until the earliest deadline, or not at all if a
        stream can run (while the socket is backed up, only POLLOUT can help)."""
        deadline = now + MAX_POLL_SLEEP
        for conn in self._connections:
            if not self.send_blocked and conn.has_ready(now):
                return 0.0
            due = conn.deadline()
            if due is not None and due < deadline:
                deadline = due
        return max(0.0, deadline - now)

    def _receive(self, now: float) -> None:
        for _ in range(DATAGRAM_BURST):
            try:
                data, addr = self.sock.recvfrom(MAX_UDP_PAYLOAD)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error for an earlier send: nothing to do
            self._dispatch(data, addr, now)

    def _service_all(self, now: float) -> None:
        for conn in list(self._connections):
            self._guarded(conn, conn.service, now)
            if conn.done:
                conn.close(ErrorCode.H3_NO_ERROR, "")
                self._connections.discard(conn)
                for cid in conn.cids:
                    self.unroute(cid, conn)

    def _guarded(self, conn: _Connection, step: Callable[[float], None], now: float) -> None:
        """Run ``step(now)`` on ``conn``; a failure ends that connection, never the loop.

        qh3 raises QuicConnectionError for a broken connection and H3 ProtocolError for
        a frame sent in the wrong state; anything else is a bug here, shown on stderr.
        """
        try:
            step(now)
        except Exception as exc:
            if not isinstance(exc, QuicConnectionError | H3ProtocolError):
                traceback.print_exc()
            with contextlib.suppress(QuicConnectionError, H3ProtocolError):
                conn.close(ErrorCode.H3_INTERNAL_ERROR, "origin error")
                conn.transmit(now)

    def _shutdown(self) -> None:
        now = time.monotonic()
        for conn in self._connections:
            with contextlib.suppress(QuicConnectionError, H3ProtocolError):
                conn.close(ErrorCode.H3_NO_ERROR, "origin stopping")
                conn.transmit(now)
        self._flush_outbox()
        self._connections.clear()
        self._routes.clear()
        self.sock.close()
        self._wake_r.close()

    def stop(self) -> None:
        """Ask :meth:`serve_forever` to finish (from any thread); it closes the socket."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def release(self) -> None:
        """Close the wake-up socket's other end, once the loop has finished."""
        self._wake_w.close()


class H3OriginHandle:
    """An HTTP/3 origin serving from a background thread; see :func:`start_h3_origin`."""

    def __init__(self, server: H3OriginServer) -> None:
        self.server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name=f"origin-h3-{server.port}", daemon=True
        )
        self._thread.start()
        self._stopped = False

    @property
    def host(self) -> str:
        """The bound address."""
        return str(self.server.server_address[0])

    @property
    def port(self) -> int:
        """The bound UDP port."""
        return self.server.port

    @property
    def name(self) -> str:
        """The origin's name, as in ``x-origin``."""
        return self.server.name

    @property
    def requests(self) -> int:
        """Requests received so far."""
        return self.server.stats()[0]

    @property
    def connections(self) -> int:
        """QUIC connections accepted so far."""
        return self.server.stats()[1]

    @property
    def resets(self) -> int:
        """Requests the client cancelled so far (RESET_STREAM or STOP_SENDING)."""
        return self.server.resets()

    def stop(self) -> None:
        """Close every connection (CONNECTION_CLOSE H3_NO_ERROR) and the socket; join the
        thread. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.server.stop()
        self._thread.join()
        self.server.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_h3_origin(
    host: str = "127.0.0.1",
    port: int = 0,
    name: str | None = None,
    *,
    cert: str,
    key: str,
    max_requests_per_connection: int = 0,
    idle_timeout: float = IDLE_TIMEOUT,
    session_tickets: TicketMode = "off",
) -> H3OriginHandle:
    """Start an HTTP/3 origin in a background thread of this process.

    Args:
        host: address to bind.
        port: UDP port to bind; 0 lets the kernel choose (see ``handle.port``).
        name: the origin's name; None means its port number.
        cert: PEM certificate chain (``scripts/dev-certs`` writes one).
        key: PEM private key for ``cert``.
        max_requests_per_connection: GOAWAY after this many requests; 0 for never.
        idle_timeout: seconds without a packet before a connection is closed.
        session_tickets: "off", "issue" (never honoured) or "resume" (0-RTT accepted).

    Returns:
        A handle with ``.port``, ``.name``, ``.requests``, ``.connections``, ``.resets``
        and ``.stop()``; also a context manager.

    Raises:
        ValueError: a setting is out of range.
        OSError: the address cannot be bound, or the certificate files not read.
    """
    server = H3OriginServer(
        (host, port),
        cert=cert,
        key=key,
        name=name,
        max_requests_per_connection=max_requests_per_connection,
        idle_timeout=idle_timeout,
        session_tickets=session_tickets,
    )
    return H3OriginHandle(server)


def main(argv: list[str] | None = None) -> int:
    """Serve one origin per ``--port`` until SIGTERM or SIGINT; the exit status."""
    parser = cli_parser(
        "python -m eg.demo.origin_h3", "A small HTTP/3 origin server (QUIC, ALPN h3)."
    )
    parser.set_defaults(idle_timeout=IDLE_TIMEOUT)
    parser.add_argument("--cert", required=True, help="PEM certificate chain")
    parser.add_argument("--key", required=True, help="PEM private key for --cert")
    parser.add_argument(
        "--max-requests-per-connection",
        type=int,
        default=0,
        help="send GOAWAY after this many requests on a connection (default 0: never)",
    )
    parser.add_argument(
        "--session-tickets",
        choices=("off", "issue", "resume"),
        default="off",
        help="issue no tickets, issue but never honour them, or resume (accepts 0-RTT)",
    )
    args = parser.parse_args(argv)

    def start(host: str, port: int, name: str | None) -> OriginHandle:
        handle = start_h3_origin(
            host, port, name, cert=args.cert, key=args.key,
            max_requests_per_connection=args.max_requests_per_connection,
            idle_timeout=args.idle_timeout, session_tickets=args.session_tickets,
        )
        # serve_cli uses only .port and .stop(), which both handle classes have.
        return cast(OriginHandle, handle)

    return serve_cli(parser, args, start)


if __name__ == "__main__":
    sys.exit(main())
