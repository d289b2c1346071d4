"""HTTP/2 server codec: downstream requests in, responses out, many streams at once.

Theory of operation. Each request stream the client opens becomes a ``RequestHead``
whose ``stream_id`` is the HTTP/2 stream id; ``Body``, ``Trailers`` and ``Reset`` for it
follow as frames arrive. Responses go back on the same id: any number of 1xx heads, one
final head, body slices (held in the stream's send buffer while the client's window is
closed, see ``_codec``), optional trailers. The connection preface (SETTINGS, then the
connection WINDOW_UPDATE) is queued at construction.

Per request stream:

    ┌──────┐ HEADERS  ┌──────────┐ response ends and ┌──────┐
    │ idle │─────────▶│ FORWARD  │ request ended ───▶│ gone │
    └──────┘          └──────────┘                   └──────┘
       │ malformed        │ RST_STREAM either way,       ▲
       │ → RST            │ response ends first → RST(NO_ERROR) (RFC 9113 §8.1)
       │ 400/405/431/501 ─┴──────────────────────────────┘
       ▼ answered here, never surfaced

Malformed requests (RFC 9113 §8.1.1: connection-specific fields, ``te`` other than
``trailers``, uppercase names, bad pseudo-headers, content-length disagreeing with the
DATA received) reset only their stream with PROTOCOL_ERROR. Requests the proxy will not
forward get a short answer from here: ``_`` in a field name 400, CONNECT 405, more than
``max_headers`` fields 431, extended CONNECT 501.

Drain: ``goaway()`` sends GOAWAY(NO_ERROR) naming the last stream seen; later streams
are refused (REFUSED_STREAM, so clients retry elsewhere) and ``wants_close()`` turns true
once the streams in flight have finished. New streams are also refused while the
connection's send buffers together hold more than ``buffer_limit`` bytes the client has
not made window for: the socket keeps being read (the WINDOW_UPDATEs that release those
bytes arrive on it) but the client cannot make us buffer more by opening streams.
"""

from __future__ import annotations

from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated, RequestReceived

from eg.core.codec.h2._codec import H2Codec, _Stream, reset_code
from eg.core.codec.h2._context import GLITCH_ANSWERED, GLITCH_MALFORMED, H2Context
from eg.core.codec.h2._convert import (
    MALFORMED,
    request_head,
    response_fields,
)
from eg.core.message import Message, Reset, ResponseHead, Side


def _answered_kind(status: int) -> str:
    """The metric kind of a request answered here instead of forwarded."""
    if status == 431:
        return "header_count"
    if status == 405:
        return "connect_method"
    if status == 501:
        return "extended_connect"
    return "underscore_in_name" if status == 400 else "h2_malformed"


class H2ServerCodec(H2Codec):
    """Downstream HTTP/2 codec (see the module docstring).

    Args:
        ctx: the worker's limits and h2 configuration.
        scheme: ``b"http"`` or ``b"https"``: the listener's, reported on every
            RequestHead (the client's ``:scheme`` is validated, not trusted).
    """

    _count_peer_resets = True

    def __init__(self, ctx: H2Context, *, scheme: bytes) -> None:
        super().__init__(ctx, client_side=False, side=Side.DOWNSTREAM)
        self._scheme = scheme
        #: Last stream id named by our drain GOAWAY; later streams are refused.
        self._last_accepted: int | None = None
        #: Request streams surfaced on this connection.
        self.requests = 0
        handlers = self._handlers
        handlers[RequestReceived] = H2ServerCodec._on_request
        handlers[ConnectionTerminated] = H2ServerCodec._on_goaway

    def wants_close(self) -> bool:
        """Close once ``output()`` is written: after an error or EOF, or after our own
        GOAWAY once no stream is left.

        A client's GOAWAY (without an error) does not close the connection from here: the
        client said it will close it, and frames it sends meanwhile (a PING) still get
        their answer; were we to close first, bytes arriving after our close would make
        the kernel reset the connection. The keep-alive timeout bounds a client that
        does not close.
        """
        return self._closed or (self._goaway_sent and not self._streams)

    # -- input ---------------------------------------------------------------------------

    def _on_request(self, event: RequestReceived, msgs: list[Message], now: float) -> None:
        sid = event.stream_id
        conn = self._conn
        last = self._last_accepted
        if (last is not None and sid > last) or self._buffered > self._ctx.buffer_limit:
            # Draining, or the client is not reading what we already have for it: refuse
            # (REFUSED_STREAM: it was not processed, the client may retry).
            conn.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            return
        end = event.stream_ended is not None
        head = request_head(self._ctx, event.headers, sid, end, self._scheme)
        if isinstance(head, int):
            self._local_error(now, GLITCH_MALFORMED if head == MALFORMED else GLITCH_ANSWERED,
                              _answered_kind(head))
            if head == MALFORMED:
                conn.reset_stream(sid, ErrorCodes.PROTOCOL_ERROR)
            else:
                conn.send_headers(
                    sid, [(b":status", b"%d" % head), (b"content-length", b"0")],
                    end_stream=True,
                )
                if not end:  # ask the client to stop sending the body (RFC 9113 §8.1)
                    conn.reset_stream(sid, ErrorCodes.NO_ERROR)
            return
        st = _Stream(sid)
        st.in_done = end
        st.content_length = head.content_length
        self._streams[sid] = st
        self.requests += 1
        msgs.append(head)

    def _on_goaway(self, event: ConnectionTerminated, msgs: list[Message], now: float) -> None:
        """The client will open no more streams; with an error code it is going away.

        An error code HTTP/2 does not define is no error (RFC 9113 §7: unknown codes
        MUST NOT trigger special behavior)."""
        self._goaway_received = event.last_stream_id or 0
        error = event.error_code or 0
        if 0 < error <= ErrorCodes.HTTP_1_1_REQUIRED:  # the last code defined
            code = reset_code(error)
            msgs.extend(
                Reset(stream_id=sid, code=code, side=Side.DOWNSTREAM) for sid in self._streams
            )
            self._forget_all()
            self._closed = True

    # -- output --------------------------------------------------------------------------

    def _send_head(self, msg: Message) -> None:
        if not isinstance(msg, ResponseHead):
            raise TypeError(f"server codec cannot send {type(msg).__name__}")
        st = self._streams.get(msg.stream_id)
        if st is None or st.response_started:
            return
        status = msg.status
        if status < 200:
            if status != 101:  # no 101 in HTTP/2 (RFC 9113 §8.6)
                self._conn.send_headers(st.sid, response_fields(self._ctx, msg))
            return
        st.response_started = True
        self._conn.send_headers(st.sid, response_fields(self._ctx, msg), end_stream=msg.end_stream)
        if msg.end_stream:
            st.out_done = True
            self._maybe_done(st)

    def _end_early(self, st: _Stream) -> bool:
        # The response is complete but the request body is still coming: tell the client
        # to stop (RST_STREAM NO_ERROR, RFC 9113 §8.1) and forget the stream.
        self._conn.reset_if_open(st.sid, ErrorCodes.NO_ERROR)
        return True

    # -- drain ---------------------------------------------------------------------------

    def goaway(self) -> None:
        """Graceful drain: GOAWAY(NO_ERROR, last stream seen); refuse newer streams."""
        if self._goaway_sent:
            return
        last = self._conn.highest_inbound_stream_id
        self._conn.send_goaway(last)
        self._last_accepted = last
        self._goaway_sent = True

    def response_started(self, stream_id: int) -> bool:
        """Whether a final response head was sent on ``stream_id`` (False once gone)."""
        st = self._streams.get(stream_id)
        return st is not None and st.response_started
