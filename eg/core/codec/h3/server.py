"""HTTP/3 server codec: downstream requests in, responses out, one QUIC connection.

Theory of operation. The reactor creates the codec for a client's first Initial packet
(``odcid``: the Destination Connection ID the client chose, or the one from a Retry
token) with the host Connection ID eg chose for this worker (``host_cid``, so packets
are steered back here, ``eg.core.quic_steer``). Every request stream becomes a
``RequestHead`` whose ``stream_id`` is the QUIC stream id; ``Body``, ``Trailers`` and
``Reset`` follow. Responses go back on the same id as HEADERS (1xx any number of times,
then the final one), DATA, and trailing HEADERS; a Reset becomes RESET_STREAM plus
STOP_SENDING with the HTTP/3 code of RFC 9114 §A.4.1.

Per request stream:

    ┌──────┐ HEADERS  ┌──────────┐ response ends and ┌──────┐
    │ idle │─────────▶│ FORWARD  │ request ended ───▶│ gone │
    └──────┘          └──────────┘                   └──────┘
       │ malformed        │ RESET_STREAM / STOP_SENDING    ▲
       │ → H3_MESSAGE_ERROR, or answered 400/405/431/501 ──┘
       ▼ after GOAWAY → H3_REQUEST_REJECTED

Malformed requests (RFC 9114 §4.1.2: the HTTP/2 field rules, content-length disagreeing
with the DATA received) reset their stream with H3_MESSAGE_ERROR. Requests the proxy
will not forward get a short answer, as on HTTP/2: ``_`` in a field name 400, CONNECT
405, more than ``max_headers`` fields 431, extended CONNECT 501.

Recycling and drain: after ``max_requests`` requests, or on ``goaway()``, a GOAWAY names
the first stream id that will not be processed; later streams are rejected
(H3_REQUEST_REJECTED: not processed, the client may retry them elsewhere) and
``wants_close()`` turns true once the accepted streams have finished.
"""

from __future__ import annotations

import contextlib

from h2.exceptions import ProtocolError as FieldError
from qh3.h3.events import HeadersReceived
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnectionError

from eg.core.codec.h2._convert import MALFORMED, request_head, response_fields
from eg.core.codec.h2._fields import REQUEST, check_block
from eg.core.codec.h3._codec import H3Codec, _Stream
from eg.core.codec.h3._connection import EgQuicConnection
from eg.core.codec.h3._context import (
    H3_MESSAGE_ERROR,
    H3_NO_ERROR,
    H3_REQUEST_REJECTED,
    H3Context,
    QuicCertificates,
)
from eg.core.message import Message, ResponseHead, Side

#: Longest wait, after GOAWAY and the last response, for the client to acknowledge it
#: before CONNECTION_CLOSE (which would discard a retransmission still needed).
CLOSE_GRACE = 2.0


def _answered_kind(status: int) -> str:
    """The metric kind of a request answered here instead of forwarded."""
    if status == 431:
        return "header_count"
    if status == 405:
        return "connect_method"
    if status == 501:
        return "extended_connect"
    return "underscore_in_name"


class H3ServerCodec(H3Codec):
    """Downstream HTTP/3 codec (see the module docstring).

    Args:
        ctx: the worker's limits.
        configuration: the listener's server QuicConfiguration (certificates).
        scheme: reported on every RequestHead (``b"https"``).
        odcid: the original Destination Connection ID of the client.
        host_cid: our first Connection ID (steerable to this worker).
        retry_cid: the Source Connection ID of the Retry we sent, if any.
        certificates: the listener's certificates when it has several (chosen by SNI).
    """

    def __init__(
        self,
        ctx: H3Context,
        configuration: QuicConfiguration,
        *,
        scheme: bytes,
        odcid: bytes,
        host_cid: bytes,
        retry_cid: bytes | None = None,
        certificates: QuicCertificates | None = None,
    ) -> None:
        quic = EgQuicConnection(configuration=configuration,
                              original_destination_connection_id=odcid,
                              retry_source_connection_id=retry_cid)
        quic.host_cid = host_cid
        quic.certificates = certificates
        super().__init__(ctx, quic, side=Side.DOWNSTREAM)
        self._scheme = scheme
        #: Request streams surfaced on this connection.
        self.requests = 0
        #: Streams from this id on are rejected (set by our GOAWAY).
        self._reject_from: int | None = None
        self._highest = -1
        #: When the last stream ended after our GOAWAY (``wants_close``).
        self._drained_at: float | None = None

    def _on_headers(self, event: HeadersReceived, msgs: list[Message]) -> None:
        sid = event.stream_id
        st = self._streams.get(sid)
        if st is not None:
            self._trailers(st, event, msgs)
            return
        if sid & 3 or sid <= self._highest:
            return  # trailers of a stream already answered, or not a new request stream
        self._highest = sid
        reject = self._reject_from
        if reject is not None and sid >= reject:
            self._reset_sending(sid, H3_REQUEST_REJECTED)
            self._stop_receiving(sid, H3_REQUEST_REJECTED)
            return
        end = event.stream_ended
        ctx = self._ctx.fields
        try:
            fields = check_block(ctx, event.headers, REQUEST)
        except FieldError:
            self._answer(sid, MALFORMED, end)
            return
        head = request_head(ctx, fields, sid, end, self._scheme)
        if isinstance(head, int):
            self._answer(sid, head, end)
            return
        st = _Stream(sid)
        st.head_seen = True
        st.in_done = end
        st.content_length = head.content_length
        self._streams[sid] = st
        self.requests += 1
        msgs.append(head)
        if self.requests >= self._ctx.max_requests:
            self.goaway()

    def _answer(self, sid: int, status: int, end: bool) -> None:
        """A request not forwarded: reset (malformed) or a short answer from here."""
        if status == MALFORMED:
            self._refusals.append("h3_malformed")
            self._reset_sending(sid, H3_MESSAGE_ERROR)
            if not end:
                self._stop_receiving(sid, H3_MESSAGE_ERROR)
            return
        self._refusals.append(_answered_kind(status))
        h3 = self._h3
        assert h3 is not None
        h3.send_headers(sid, [(b":status", b"%d" % status), (b"content-length", b"0")],
                        end_stream=True)
        if not end:  # the rest of the request is not wanted (RFC 9114 §4.1)
            self._stop_receiving(sid, H3_NO_ERROR)

    def _send_head(self, st: _Stream, msg: Message) -> None:
        if not isinstance(msg, ResponseHead):
            raise TypeError(f"server codec cannot send {type(msg).__name__}")
        h3 = self._h3
        assert h3 is not None
        status = msg.status
        if status < 200:
            if status != 101 and not st.response_started:  # no 101 in HTTP/3
                h3.send_headers(st.sid, response_fields(self._ctx.fields, msg))
            return
        if st.response_started:
            return
        st.response_started = True
        h3.send_headers(st.sid, response_fields(self._ctx.fields, msg),
                        end_stream=msg.end_stream)
        if msg.end_stream:
            st.out_done = True
            self._maybe_done(st)

    def _maybe_done(self, st: _Stream) -> None:
        if st.out_done and not st.in_done:
            # A complete answer before the request body ended: ask the client to stop
            # sending the rest, without error (RFC 9114 §4.1), and forget the stream.
            self._forget(st.sid)
            self._stop_receiving(st.sid, H3_NO_ERROR)
            return
        super()._maybe_done(st)

    def goaway(self) -> None:
        """Accept no new requests: GOAWAY with the next stream id (RFC 9114 §5.2)."""
        if self._goaway_sent or self._h3 is None or self.closed:
            return
        self._goaway_sent = True
        first_rejected = self._highest + 4 if self._highest >= 0 else 0
        self._reject_from = first_rejected
        # The peer may have closed the connection already (qh3 reports it a moment
        # later): then there is nobody to tell.
        with contextlib.suppress(QuicConnectionError):
            self._h3.send_goaway(first_rejected)

    def wants_close(self, now: float) -> bool:
        """GOAWAY was sent, every accepted stream has finished, and the client has
        acknowledged everything we sent (CONNECTION_CLOSE discards what is still
        unacknowledged) or ``CLOSE_GRACE`` has passed since the last stream ended."""
        if not self._goaway_sent or self._streams:
            self._drained_at = None
            return False
        if self._drained_at is None:
            self._drained_at = now
        quic = self._quic
        core = quic._core  # qh3's native core: the only place bytes in flight are known
        acknowledged = core is None or (not quic.get_send_buffer_size()
                                        and not core.bytes_in_flight)
        return acknowledged or now - self._drained_at >= CLOSE_GRACE

    def deadline(self) -> float | None:
        due = super().deadline()
        if self._drained_at is not None and not self.closed:
            grace = self._drained_at + CLOSE_GRACE
            return grace if due is None else min(due, grace)
        return due

    def response_started(self, stream_id: int) -> bool:
        st = self._streams.get(stream_id)
        return st is not None and st.response_started
