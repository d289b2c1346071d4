"""eg's layer over qh3's QUIC and HTTP/3 connections: fast paths, SETTINGS, request streams.

qh3 2.1 keeps QUIC in a native core behind a Python facade, and HTTP/3 in pure Python.
Both do per-packet and per-frame work that eg pays for on every request and does not
need: the facade re-parses packet headers for a logger eg never sets, and
``H3Connection`` validates request heads (which eg validates again in one pass, and
answers as stream errors where qh3 closes the connection) and keeps a stream object per
request. So:

- ``EgQuicConnection`` hands datagrams to the core in one call per batch and takes
  transmits straight from it once the handshake is over.
- ``EgH3Connection`` keeps qh3 for the connection's own streams (control, QPACK encoder
  and decoder, SETTINGS, GOAWAY, unknown unidirectional streams) and frames request
  streams itself (RFC 9114 §4.1, §7): HEADERS are QPACK-decoded by qh3's native decoder,
  DATA payloads pass through as they arrive, unknown frame types are skipped (§9),
  frames that may not appear on a request stream are H3_FRAME_UNEXPECTED, a frame cut
  by the end of the stream is H3_FRAME_ERROR. It emits qh3's event types, so the codecs
  do not care which path framed a stream.

Request-stream receive state, one ``_RequestStream`` per stream until its FIN or reset:

    ┌────────┐ HEADERS (final) ┌──────┐ HEADERS (trailers) ┌───────┐ FIN ┌──────┐
    │  HEAD  │────────────────▶│ BODY │───────────────────▶│ TRAIL │────▶│ gone │
    └────────┘                 └──────┘                    └───────┘     └──────┘
     1xx HEADERS keep HEAD      DATA*                       only unknown frames

Trailers are reported once the FIN is in (with ``stream_ended``), so a peer that sends
its FIN in a packet of its own is not mistaken for one whose trailers do not end the
message. A stream that ends before its head is H3_REQUEST_INCOMPLETE (§4.1.2).

The own path needs a QPACK decoder that never blocks: it is used when eg allows no
blocked streams (``qpack_blocked_streams = 0``, the default); with blocked streams
allowed, qh3's ``H3Connection`` frames request streams as well.
"""

from __future__ import annotations

import contextlib
from typing import Any

from qh3 import tls
from qh3._hazmat import (
    DecoderStreamError,
    DecompressionFailed,
    EncoderStreamError,
    HeaderTooLarge,
    QpackDecoder,
    StreamBlocked,
    encode_uint_var,
)
from qh3.h3.connection import (
    ErrorCode,
    FieldSectionTooLarge,
    FrameError,
    FrameType,
    FrameUnexpected,
    H3Connection,
    ProtocolError,
    QpackDecompressionFailed,
    QpackEncoderStreamError,
    encode_frame,
)
from qh3.h3.events import (
    DataReceived,
    H3Event,
    Headers,
    HeadersReceived,
    InformationalHeadersReceived,
    StopSending,
    StreamReset,
)
from qh3.quic.connection import QuicConnection, QuicConnectionError
from qh3.quic.events import QuicEvent, StopSendingReceived, StreamDataReceived
from qh3.quic.events import StreamReset as QuicStreamReset
from qh3.quic.tls_bridge import QuicTlsBridge
from qh3.tls import pull_client_hello

from eg.core.codec.h3._context import H3Context, QuicCertificates

_DATA = int(FrameType.DATA)
_HEADERS = int(FrameType.HEADERS)
_PUSH_PROMISE = int(FrameType.PUSH_PROMISE)
#: Frame types that may not appear on a request stream (RFC 9114 §7.2, §11.2.1: the
#: control-stream frames and the reserved HTTP/2 types).
_UNEXPECTED = frozenset({0x2, 0x3, 0x4, 0x6, 0x7, 0x8, 0x9, 0xD})
_VARINT_MASK = (0x3F, 0x3FFF, 0x3FFFFFFF, 0x3FFFFFFFFFFFFFFF)
_H3_REQUEST_INCOMPLETE = int(ErrorCode.H3_REQUEST_INCOMPLETE)

_HEAD, _BODY, _TRAIL = 0, 1, 2


class IdError(ProtocolError):
    """A push the client never allowed (no MAX_PUSH_ID sent: RFC 9114 §7.2.5)."""

    error_code = ErrorCode.H3_ID_ERROR


class EgQuicConnection(QuicConnection):
    """qh3's ``QuicConnection`` without its per-datagram Python work on the hot path.

    The facade parses the header of every packet it sends and receives again in
    Python, for a logger eg never sets. Once the handshake is over, datagrams go
    straight to the core in one call per batch (qh3's own ``receive_many_datagrams``
    path), and transmits are taken from the core directly.
    """

    #: A server's certificates by server name (set before its first datagram); None:
    #: the configuration's one certificate.
    certificates: QuicCertificates | None = None

    def _create_tls(self, remote_source_cid: bytes | None) -> QuicTlsBridge:
        bridge = super()._create_tls(remote_source_cid)
        if self.certificates is not None and not self._is_client:
            _select_by_server_name(bridge.tls, self.certificates)
        return bridge

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        core = self._core
        if core is None:
            return []
        out: list[tuple[bytes, Any]] = []
        poll = core.poll_transmit
        while True:
            try:
                transmit = poll(now)
            except RuntimeError as exc:
                raise QuicConnectionError(0x1, None, str(exc)) from exc
            if transmit is None:
                return out
            out.append((transmit[0], transmit[1]))

    def receive_batch(self, datagrams: list[bytes], addr: Any, now: float) -> None:
        """Datagrams from one address: one native call once the handshake is done."""
        if self._handshake_complete and self._core is not None:
            self.receive_many_datagrams(datagrams, addr, now)
        else:
            for data in datagrams:
                self.receive_datagram(data, addr, now)


def _select_by_server_name(context: tls.Context, certificates: QuicCertificates) -> None:
    """Have ``context`` sign with the certificate the ClientHello's server name selects.

    qh3 picks the signature algorithm from the key as soon as it has parsed the
    ClientHello, so the choice is made just before: the hello is read once more here
    (then rewound) and the certificate, chain and key set. The hook removes itself
    after the hello, so the context does not keep a reference to itself.
    """
    original = context._server_handle_hello

    def handle_hello(input_buf: Any, *bufs: Any) -> None:
        start = input_buf.tell()
        try:
            server_name = pull_client_hello(input_buf).server_name
        except (ValueError, tls.Alert):  # qh3's own parse answers it with an alert
            server_name = None
        input_buf.seek(start)
        (context.certificate, context.certificate_chain,
         context.certificate_private_key) = certificates.for_server_name(server_name)
        del context._server_handle_hello
        original(input_buf, *bufs)

    context._server_handle_hello = handle_hello  # type: ignore[method-assign,assignment]


def frame_head(frame_type: int, length: int) -> bytes:
    """The type and length varints that start a frame (RFC 9114 §7.1)."""
    if frame_type < 0x40 and length < 0x40:
        return bytes((frame_type, length))
    return encode_uint_var(frame_type) + encode_uint_var(length)


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int] | None:
    """The QUIC varint at ``pos`` and the position after it, or None if cut (RFC 9000 §16)."""
    if pos >= end:
        return None
    first = data[pos]
    kind = first >> 6
    if not kind:
        return first, pos + 1
    size = 1 << kind
    if pos + size > end:
        return None
    return int.from_bytes(data[pos:pos + size]) & _VARINT_MASK[kind], pos + size


class _RequestStream:
    """Receive state of one request stream (module docstring)."""

    __slots__ = ("buf", "frame", "need", "remaining", "state", "trailers")

    def __init__(self) -> None:
        self.state = _HEAD
        #: Bytes of an incomplete frame head or HEADERS frame, appended to in place (a
        #: block trickling in a byte at a time costs linear time, not quadratic).
        self.buf: bytearray | None = None
        #: Bytes ``buf`` must hold before it is parsed again (0: try on every piece).
        self.need = 0
        #: Type of the frame whose payload is being passed (DATA) or skipped, or -1.
        self.frame = -1
        self.remaining = 0
        #: Trailers waiting for the FIN.
        self.trailers: Headers | None = None


class EgH3Connection(H3Connection):
    """qh3's ``H3Connection`` with eg's SETTINGS, a GOAWAY sender and own request streams.

    qh3 advertises a 64 KiB QPACK dynamic table, 100 blocked streams and a 256 KiB field
    section on servers; eg advertises (and its decoder enforces) the configured values:
    MISSION.md's QPACK caps are 1 MiB decoded, no dynamic table, no blocked streams. A
    client advertises no MAX_PUSH_ID: eg takes no pushes.
    """

    def __init__(self, quic: QuicConnection, ctx: H3Context) -> None:
        self._eg_ctx = ctx
        self._own_requests = ctx.qpack_blocked_streams == 0
        self._requests: dict[int, _RequestStream] = {}
        self._highest_request = -1
        #: Bytes of incomplete frames buffered over all request streams. qh3 grants flow
        #: credit as data arrives, so QUIC does not bound them: this does, at one
        #: encoded field section's allowance per connection (H3_EXCESSIVE_LOAD past it).
        self._partial = 0
        super().__init__(quic)

    def _init_connection(self) -> None:
        ctx = self._eg_ctx
        self._max_table_capacity = ctx.qpack_max_table_capacity
        self._blocked_streams = ctx.qpack_blocked_streams
        self._max_field_section_size = ctx.max_field_section_size
        # Huffman may take 30 bits per octet: qh3's own allowance for encoded bytes.
        self._max_encoded_field_section_size = ctx.max_field_section_size * 4 + 32
        self._decoder = QpackDecoder(self._max_table_capacity, self._blocked_streams,
                                     max_field_section_size=ctx.max_field_section_size)
        self._max_push_id = None
        super()._init_connection()

    # -- QPACK --------------------------------------------------------------------------------

    def _encode_headers(self, stream_id: int, headers: Headers) -> bytes:
        """qh3's, minus the empty write to the QPACK encoder stream that every header
        block makes when there is no dynamic table (one native call saved per block)."""
        try:
            encoder, frame_data = self._encoder.encode(stream_id, headers)
        except EncoderStreamError as exc:
            raise QpackEncoderStreamError() from exc
        if encoder:
            self._encoder_bytes_sent += len(encoder)
            control = self._local_encoder_stream_id
            assert control is not None
            self._quic.send_stream_data(control, encoder)
        return frame_data

    def _decode_headers(self, stream_id: int, frame_data: bytes | None, *, offset: int = 0,
                        length: int | None = None) -> Headers:
        """qh3's, minus the empty write to the QPACK decoder stream after each block."""
        try:
            if frame_data is None:
                pending = self._blocked_stream_map[stream_id]._pending  # type: ignore[attr-defined]
                del self._blocked_stream_map[stream_id]._pending  # type: ignore[attr-defined]
                decoder, headers = pending
            else:
                if not frame_data or length == 0:
                    raise DecompressionFailed()
                decoder, headers = self._decoder.feed_header(
                    stream_id, frame_data, offset=offset, length=length)
            if decoder:
                self._decoder_bytes_sent += len(decoder)
                control = self._local_decoder_stream_id
                assert control is not None
                self._quic.send_stream_data(control, decoder)
        except (DecompressionFailed, DecoderStreamError) as exc:
            raise QpackDecompressionFailed() from exc
        except HeaderTooLarge as exc:
            raise FieldSectionTooLarge(str(exc)) from exc
        return headers  # type: ignore[no-any-return]

    # -- sending ------------------------------------------------------------------------------

    def send_goaway(self, stream_id: int) -> None:
        """GOAWAY on our control stream (RFC 9114 §5.2); qh3 has no sender for it."""
        control = self._local_control_stream_id
        assert control is not None
        self._quic.send_stream_data(
            control, encode_frame(FrameType.GOAWAY, encode_uint_var(stream_id)))

    def open_request(self, stream_id: int) -> None:
        """A client's new request stream: its response will be framed here."""
        if self._own_requests:
            self._requests[stream_id] = _RequestStream()

    def send_headers(self, stream_id: int, headers: Headers, end_stream: bool = False) -> None:
        """A HEADERS frame on a request stream (the codec keeps the order of frames)."""
        if not self._own_requests:
            super().send_headers(stream_id, headers, end_stream)
            return
        block = self._encode_headers(stream_id, headers)
        self._quic.send_stream_data(stream_id, frame_head(_HEADERS, len(block)) + block,
                                    end_stream)

    def send_data(self, stream_id: int, data: Any, end_stream: bool) -> None:
        """A DATA frame (none for an empty end: the FIN alone ends the stream)."""
        if not self._own_requests:
            super().send_data(stream_id, data, end_stream)
            return
        if data:
            self._quic.send_stream_data(stream_id, frame_head(_DATA, len(data)) + data,
                                        end_stream)
        elif end_stream:
            self._quic.send_stream_data(stream_id, b"", True)

    # -- receiving ----------------------------------------------------------------------------

    def handle_event(self, event: QuicEvent) -> list[H3Event]:
        """Request-stream events are framed here; the rest go to qh3."""
        if self._own_requests and not self._is_done:
            if isinstance(event, StreamDataReceived):
                if not event.stream_id & 2:
                    try:
                        return self._receive_request(event.stream_id, event.data,
                                                     event.end_stream)
                    except ProtocolError as exc:
                        self._is_done = True
                        self._quic.close(error_code=exc.error_code,
                                         reason_phrase=exc.reason_phrase)
                        return []
            elif isinstance(event, QuicStreamReset):
                if not event.stream_id & 2:
                    self._drop(event.stream_id)
                    return [StreamReset(stream_id=event.stream_id, error_code=event.error_code)]
            elif isinstance(event, StopSendingReceived) and not event.stream_id & 2:
                return [StopSending(stream_id=event.stream_id, error_code=event.error_code)]
        return super().handle_event(event)

    def forget_request(self, stream_id: int) -> None:
        """We stopped reading the stream (STOP_SENDING): its receive state can go."""
        self._drop(stream_id)

    def _drop(self, stream_id: int) -> _RequestStream | None:
        rs = self._requests.pop(stream_id, None)
        if rs is not None and rs.buf is not None:
            self._partial -= len(rs.buf)
        return rs

    def _keep(self, rs: _RequestStream, rest: bytes, need: int) -> None:
        """Buffer an incomplete frame until ``need`` bytes are in."""
        self._count_partial(len(rest))
        rs.buf = bytearray(rest)
        rs.need = need

    def _count_partial(self, size: int) -> None:
        """``size`` more bytes of incomplete frames buffered (the shared allowance)."""
        self._partial += size
        if self._partial > self._max_encoded_field_section_size:
            raise FieldSectionTooLarge("incomplete HEADERS frames over the allowance")

    def _receive_request(self, sid: int, data: bytes, fin: bool) -> list[H3Event]:
        rs = self._requests.get(sid)
        if rs is None:
            if self._is_client or sid <= self._highest_request:
                return []  # a stream already done with (or never ours)
            self._highest_request = sid
            rs = self._requests[sid] = _RequestStream()
        buf = rs.buf
        if buf is not None:
            buf += data
            self._count_partial(len(data))
            if len(buf) < rs.need and not fin:
                return []
            self._partial -= len(buf)
            data = bytes(buf)
            rs.buf = None
        events: list[H3Event] = []
        pos = 0
        end = len(data)
        while pos < end:
            if rs.remaining:  # inside a DATA payload (passed on) or an unknown frame (skipped)
                take = min(rs.remaining, end - pos)
                rs.remaining -= take
                if rs.frame == _DATA:
                    chunk = data if take == end else data[pos:pos + take]
                    pos += take
                    events.append(DataReceived(data=chunk, stream_id=sid,
                                               stream_ended=fin and pos == end))
                else:
                    pos += take
                continue
            head = _varint(data, pos, end)
            length = None if head is None else _varint(data, head[1], end)
            if head is None or length is None:
                self._keep(rs, data[pos:], 0)  # a frame head: under 16 bytes
                break
            frame, size, start = head[0], length[0], length[1]
            if frame == _DATA:
                if rs.state != _BODY:
                    raise FrameUnexpected("DATA frame is not allowed in this state")
                rs.frame, rs.remaining, pos = frame, size, start
                continue
            if frame == _HEADERS:
                if size > self._max_encoded_field_section_size:
                    raise FieldSectionTooLarge("Encoded field section exceeds the limit")
                if rs.state == _TRAIL:
                    raise FrameUnexpected("HEADERS frame after trailers")
                if start + size > end:
                    self._keep(rs, data[pos:], start - pos + size)
                    break
                pos = start + size
                self._on_headers_frame(rs, sid, self._decode_block(sid, data, start, size),
                                       fin and pos == end, events)
                continue
            if frame in _UNEXPECTED:
                raise FrameUnexpected("Invalid frame type on request stream")
            if frame == _PUSH_PROMISE:
                if not self._is_client:
                    raise FrameUnexpected("Clients must not send PUSH_PROMISE")
                raise IdError("PUSH_PROMISE without MAX_PUSH_ID")
            rs.frame, rs.remaining, pos = frame, size, start  # unknown: skipped (§9)
        if fin:
            self._receive_fin(rs, sid, events)
        return events

    def _decode_block(self, sid: int, data: bytes, start: int, size: int) -> Headers:
        try:
            return self._decode_headers(sid, data, offset=start, length=size)
        except StreamBlocked as exc:  # no blocked streams allowed (RFC 9204 §2.1.2)
            raise QpackDecompressionFailed() from exc

    def _on_headers_frame(self, rs: _RequestStream, sid: int, headers: Headers, ended: bool,
                          events: list[H3Event]) -> None:
        if rs.state == _BODY:
            rs.state = _TRAIL
            rs.trailers = headers  # reported with the FIN
            return
        if self._is_client and not ended and _informational(headers):
            events.append(InformationalHeadersReceived(headers=headers, stream_id=sid))
            return
        rs.state = _BODY
        events.append(HeadersReceived(headers=headers, stream_id=sid, stream_ended=ended))

    def _receive_fin(self, rs: _RequestStream, sid: int, events: list[H3Event]) -> None:
        self._drop(sid)
        if rs.buf is not None or rs.remaining:
            raise FrameError("frame truncated by the end of the stream")
        if rs.state == _HEAD:
            # Ended before its head: incomplete (RFC 9114 §4.1.2). A server answers
            # it; a client's exchange learns it as a reset.
            if not self._is_client:
                # qh3 raises if the stream's sending side is already final: nothing to do.
                with contextlib.suppress(QuicConnectionError, AssertionError, ValueError):
                    self._quic.reset_stream(sid, _H3_REQUEST_INCOMPLETE)
            else:
                events.append(StreamReset(stream_id=sid, error_code=_H3_REQUEST_INCOMPLETE))
            return
        if rs.trailers is not None:
            events.append(HeadersReceived(headers=rs.trailers, stream_id=sid,
                                          stream_ended=True))
        elif not events or not getattr(events[-1], "stream_ended", False):
            events.append(DataReceived(data=b"", stream_id=sid, stream_ended=True))


def _informational(headers: Headers) -> bool:
    """A 1xx head (RFC 9114 §4.1): the final one follows."""
    for name, value in headers:
        if name == b":status":
            return len(value) == 3 and value[:1] == b"1"
    return False
