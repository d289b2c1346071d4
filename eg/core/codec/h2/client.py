"""HTTP/2 client codec: requests out to an upstream, responses in, many streams at once.

Theory of operation. ``open_stream()`` reserves the next odd stream id; the
``RequestHead`` for it must be the next head sent (HTTP/2 stream ids only increase on
the wire). The head becomes HEADERS with ``:method``, ``:scheme``, ``:authority`` and
``:path`` first; bodies and trailers follow under the upstream's flow control (see
``_codec``). Responses come back as ``ResponseHead`` (1xx first when the upstream sends
them), ``Body``, ``Trailers`` or ``Reset`` (side UPSTREAM).

Per stream:

    ┌──────────┐ open_stream ┌──────┐ request and response ┌──────┐
    │ (none)   │────────────▶│ OPEN │ both ended ─────────▶│ gone │
    └──────────┘             └──────┘                      └──────┘
                      RST_STREAM, EOF, GOAWAY above its id ──▲

GOAWAY from the upstream: no stream is opened any more (``can_open()`` and
``reusable()`` turn false); streams above its last stream id were never processed and
end with ``Reset(REFUSED_STREAM)``, so the caller may retry them on another connection.
Streams up to it carry on unless the GOAWAY carries an error code, which resets them too.
The connection may carry as many streams at once as the upstream's
SETTINGS_MAX_CONCURRENT_STREAMS and our own ``max_concurrent_streams`` both allow.
"""

from __future__ import annotations

from h2.events import (
    ConnectionTerminated,
    InformationalResponseReceived,
    ResponseReceived,
)

from eg.core.codec.h2._codec import H2Codec, _Stream, reset_code
from eg.core.codec.h2._context import H2Context
from eg.core.codec.h2._convert import request_fields, response_head
from eg.core.errors import Closed, Retry
from eg.core.message import Message, RequestHead, Reset, ResetCode, Side

#: The largest stream id (RFC 9113 §5.1.1: 31 bits).
MAX_STREAM_ID = 2**31 - 1


class H2ClientCodec(H2Codec):
    """Upstream HTTP/2 codec (see the module docstring).

    Args:
        ctx: the worker's limits and h2 configuration.
    """

    def __init__(self, ctx: H2Context) -> None:
        super().__init__(ctx, client_side=True, side=Side.UPSTREAM)
        self._next_id = 1
        #: Streams opened on this connection (the pool tells reused from fresh by it).
        self.requests = 0
        handlers = self._handlers
        handlers[ResponseReceived] = H2ClientCodec._on_response
        handlers[InformationalResponseReceived] = H2ClientCodec._on_response
        handlers[ConnectionTerminated] = H2ClientCodec._on_goaway

    # -- streams -------------------------------------------------------------------------

    def can_open(self) -> bool:
        """Whether another stream may start now: no GOAWAY either way, below both
        concurrency limits, stream ids left, and the send buffers together under
        ``buffer_limit`` (a connection the upstream is not reading from takes no more)."""
        if self._closed or self._goaway_sent or self._goaway_received is not None:
            return False
        if self._buffered > self._ctx.buffer_limit:
            return False
        limit = min(
            self._ctx.max_concurrent_streams,
            self._conn.remote_settings.max_concurrent_streams,
        )
        return len(self._streams) < limit and self._next_id <= MAX_STREAM_ID

    def reusable(self) -> bool:
        """Whether the connection may carry another request (``can_open()``)."""
        return self.can_open()

    def open_stream(self) -> int:
        """Reserve the next stream id; send its RequestHead before any other head.

        Raises:
            Closed: ``can_open()`` is false (GOAWAY, limit or closed); retry elsewhere.
        """
        if not self.can_open():
            raise Closed(
                "upstream HTTP/2 connection cannot open a stream", side=Side.UPSTREAM,
                status_hint=502, retry=Retry.YES, kind="h2_no_stream",
            )
        sid = self._next_id
        self._next_id += 2
        self._streams[sid] = _Stream(sid)
        self.requests += 1
        return sid

    @property
    def goaway_received(self) -> int | None:
        """The last stream id of the upstream's GOAWAY, or None if it sent none."""
        return self._goaway_received

    def goaway(self) -> None:
        """Tell the upstream we are done (GOAWAY NO_ERROR); open streams finish first."""
        if not self._goaway_sent and not self._dead:
            self._conn.send_goaway(0)
            self._goaway_sent = True

    def response_started(self, stream_id: int) -> bool:
        """Whether a final response head arrived on ``stream_id`` (False once gone)."""
        st = self._streams.get(stream_id)
        return st is not None and st.response_started

    # -- output --------------------------------------------------------------------------

    def _send_head(self, msg: Message) -> None:
        if not isinstance(msg, RequestHead):
            raise TypeError(f"client codec cannot send {type(msg).__name__}")
        sid = msg.stream_id
        st = self._streams.get(sid)
        if st is None:
            return  # reset or refused before the head went out
        st.head_request = msg.method == b"HEAD"
        self._conn.send_headers(sid, request_fields(self._ctx, msg), end_stream=msg.end_stream)
        if msg.end_stream:
            st.out_done = True

    # -- input ---------------------------------------------------------------------------

    def _on_response(
        self,
        event: ResponseReceived | InformationalResponseReceived,
        msgs: list[Message],
        now: float,
    ) -> None:
        sid = event.stream_id
        st = self._streams.get(sid)
        if st is None:
            return
        end = isinstance(event, ResponseReceived) and event.stream_ended is not None
        head = response_head(self._ctx, event.headers, sid, end)
        if head is None:
            self._reject_stream(st, msgs, now)
            return
        if head.status >= 200:
            st.response_started = True
            if not st.head_request:
                st.content_length = head.content_length
        if end:
            st.in_done = True
        msgs.append(head)
        if end:
            self._maybe_done(st)

    def _on_goaway(self, event: ConnectionTerminated, msgs: list[Message], now: float) -> None:
        last = event.last_stream_id or 0
        self._goaway_received = last
        error = reset_code(event.error_code) if event.error_code else None
        for sid in list(self._streams):
            if sid > last:
                code = ResetCode.REFUSED_STREAM  # never processed: safe to retry
            elif error is not None:
                code = error
            else:
                continue
            st = self._streams.pop(sid)
            self._drop(st)
            msgs.append(Reset(stream_id=sid, code=code, side=Side.UPSTREAM))
        if error is not None:
            self._closed = True
