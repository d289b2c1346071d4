"""HTTP/3 client codec: requests out to an upstream, responses in, many streams.

Theory of operation. The codec starts the QUIC handshake at construction
(``connect``); streams may be opened once it has completed (``can_open``), which the
reactor waits for, like the HTTP/2 client waits for the upstream's SETTINGS. Each
request goes out on a new client bidirectional stream; the response comes back as
``ResponseHead`` (1xx heads first, if any), ``Body`` and ``Trailers`` or a ``Reset``.

The peer's GOAWAY names the first stream it will not process: requests on that id or
later are surfaced as ``Reset(REFUSED_STREAM)`` so the exchange may retry them on
another connection (RFC 9114 §5.2), and the connection takes no new streams.

Certificate and hostname verification are qh3's, with the cluster's CA file and
server name (``H3Context.client_configuration``); a failure ends the connection with a
CRYPTO_ERROR whose code names the TLS alert (``verify_failed``).
"""

from __future__ import annotations

from h2.exceptions import ProtocolError as FieldError
from qh3.h3.events import GoawayReceived, HeadersReceived, InformationalHeadersReceived
from qh3.quic.configuration import QuicConfiguration

from eg.core.codec.h2._convert import request_fields, response_head
from eg.core.codec.h2._fields import RESPONSE, check_block
from eg.core.codec.h3._codec import H3Codec, _Stream
from eg.core.codec.h3._connection import EgQuicConnection
from eg.core.codec.h3._context import CRYPTO_CERT_ALERTS, H3_REQUEST_CANCELLED, H3Context
from eg.core.message import Message, RequestHead, Reset, ResetCode, Side


class H3ClientCodec(H3Codec):
    """Upstream HTTP/3 codec (see the module docstring).

    Args:
        ctx: the worker's limits.
        configuration: the cluster's client QuicConfiguration (verification settings).
        addr: the upstream's address (host, port).
        now: the current time (the handshake starts now).
    """

    def __init__(
        self, ctx: H3Context, configuration: QuicConfiguration, addr: tuple[str, int],
        now: float,
    ) -> None:
        quic = EgQuicConnection(configuration=configuration)
        super().__init__(ctx, quic, side=Side.UPSTREAM)
        quic.connect(addr, now)
        self.requests = 0
        #: Streams whose request was HEAD: their response has no body whatever its
        #: content-length says.
        self._head_requests: set[int] = set()

    # -- streams ------------------------------------------------------------------------------

    def can_open(self) -> bool:
        """Whether a new request stream may be opened now."""
        if self.closed or not self.handshake_done or self.goaway_received is not None \
                or self._goaway_sent:
            return False
        quic = self._quic
        return quic.open_outbound_streams < min(quic.max_concurrent_bidi_streams,
                                                self._ctx.fields.max_concurrent_streams)

    def reusable(self) -> bool:
        return not self.closed and self.goaway_received is None and not self._goaway_sent

    def open_stream(self) -> int:
        """Reserve the next request stream (its HEADERS go out with the RequestHead)."""
        sid = self._quic.get_next_available_stream_id()
        self._streams[sid] = _Stream(sid)
        self.requests += 1
        return sid

    def response_started(self, stream_id: int) -> bool:
        st = self._streams.get(stream_id)
        return st is not None and st.head_seen

    def verify_failed(self) -> bool:
        """The connection ended on a certificate alert (verification failed)."""
        reason = self.close_reason
        return reason is not None and reason[0] in CRYPTO_CERT_ALERTS

    def goaway(self) -> None:
        """Open no more streams (a client has no GOAWAY of its own to send here)."""
        self._goaway_sent = True

    def wants_close(self) -> bool:
        return (self._goaway_sent or self.goaway_received is not None) and not self._streams

    # -- output -------------------------------------------------------------------------------

    def _send_head(self, st: _Stream, msg: Message) -> None:
        if not isinstance(msg, RequestHead):
            raise TypeError(f"client codec cannot send {type(msg).__name__}")
        h3 = self._h3
        assert h3 is not None
        if msg.method == b"HEAD":
            self._head_requests.add(st.sid)
        h3.open_request(st.sid)
        h3.send_headers(st.sid, request_fields(self._ctx.fields, msg), end_stream=msg.end_stream)
        if msg.end_stream:
            st.out_done = True

    def _maybe_done(self, st: _Stream) -> None:
        super()._maybe_done(st)
        if st.sid not in self._streams:
            self._head_requests.discard(st.sid)

    # -- input --------------------------------------------------------------------------------

    def _on_headers(self, event: HeadersReceived, msgs: list[Message]) -> None:
        st = self._streams.get(event.stream_id)
        if st is None:
            return
        if st.head_seen:
            self._trailers(st, event, msgs)
            return
        ctx = self._ctx.fields
        end = event.stream_ended
        try:
            head = response_head(ctx, check_block(ctx, event.headers, RESPONSE), st.sid, end)
        except FieldError:
            head = None
        if head is None or head.status < 200:
            self._malformed(st, msgs)
            return
        st.head_seen = True
        if st.sid not in self._head_requests and head.status not in (204, 304):
            st.content_length = head.content_length
        if end:
            st.in_done = True
            if not self._length_ok(st):
                self._malformed(st, msgs)
                return
        msgs.append(head)
        if end:
            self._maybe_done(st)

    def _on_informational(self, event: InformationalHeadersReceived,
                          msgs: list[Message]) -> None:
        st = self._streams.get(event.stream_id)
        if st is None or st.head_seen:
            return
        ctx = self._ctx.fields
        try:
            head = response_head(ctx, check_block(ctx, event.headers, RESPONSE), st.sid, False)
        except FieldError:
            head = None
        if head is None:
            self._malformed(st, msgs)
            return
        msgs.append(head)

    def _on_goaway(self, event: GoawayReceived, msgs: list[Message]) -> None:
        """Streams from the GOAWAY's id on were not processed: refused, retry elsewhere."""
        super()._on_goaway(event, msgs)
        refused = [st for sid, st in self._streams.items() if sid >= event.stream_id]
        for st in refused:
            self._abort_stream(st, H3_REQUEST_CANCELLED)
            msgs.append(Reset(stream_id=st.sid, code=ResetCode.REFUSED_STREAM, side=Side.UPSTREAM))
