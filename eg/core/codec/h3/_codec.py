"""What the HTTP/3 server and client adapters share: driving qh3, flow control, limits.

Theory of operation. A codec owns one ``EgQuicConnection`` and, once QUIC is up, one
``EgH3Connection`` on it (``_connection.py``: qh3's, with eg's fast paths and request-stream
framing). The reactor hands it datagrams (``feed``), timer expiries
(``on_timer``) and messages (``send``), and after each of them takes the datagrams to
transmit (``output``) and re-arms one timer at ``deadline()`` (aioquic's
``transmit()`` pattern: drain and re-arm after every input). QUIC events go to the
H3 layer; its events become messages through a per-codec dispatch dict. Time is always
the caller's ``now``.

Stream life in the adapter (one ``_Stream`` per request stream the exchange knows):

    ┌────────┐ head in/out ┌──────┐ both directions ended ┌──────┐
    │ (none) │────────────▶│ OPEN │──────────────────────▶│ gone │
    └────────┘             └──────┘ reset either way,      └──────┘
                                     connection closed ─────────▲

Inbound flow control. qh3 (2.1.0, native core) grants stream credit as data arrives,
not as it is consumed, and has no call to hold it back: measured, a peer sent 25 MiB on
a stream with a 256 KiB window to a receiver that consumed nothing. So the HTTP/2 lever
(withhold WINDOW_UPDATE) does not exist. Instead, while a stream is paused, what it
delivers is held here instead of being passed on (so the congested side's buffer stays
at its watermark). Once a ``resume`` ends the pause the caller takes it back one message
at a time (``next_released``), passing each on as if it had just arrived, so a stream
paused again half-way keeps the rest; while anything is held, new data queues behind
it, so order is kept. Past ``H3Context.hold_limit`` held bytes the stream is stopped
and reset with H3_EXCESSIVE_LOAD (STYLE.md §4) and the exchange sees a Reset: memory
per stream is bounded by that limit, not by the peer's good will. Holding alone does
not slow the sender, so while the connection holds more than ``hold_high`` bytes its
datagrams wait unprocessed (``BACKLOG`` of them, then dropped) until the held bytes are
back under ``hold_low``: the sender gets no ACKs, runs out of congestion window and
stops, as a TCP sender facing a closed window would. That stalls the whole connection,
not one stream: the price of a QUIC stack without receive-credit control.

Outbound flow control. Body bytes are queued into qh3, which sends them as the peer's
credit and the congestion window allow. After each ``output`` the bytes still queued
per stream (``get_send_buffer_size``) are checked against the watermarks (high,
low = high / 2): crossings are collected for ``take_watermarks()`` so the caller pauses
the other side of the exchange; past ``buffer_limit`` the caller ignored backpressure
and the stream is reset (``LimitExceeded``).

Connection end. A ``ConnectionTerminated`` (idle timeout, peer close, protocol error)
turns every open stream into a Reset and sets ``closed``. Errors in the peer's HTTP/3
framing are closed by ``EgH3Connection`` (CONNECTION_CLOSE with the RFC 9114 code).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from typing import Any

from h2.exceptions import ProtocolError as FieldError
from qh3.h3.connection import ProtocolError as H3ProtocolError
from qh3.h3.events import (
    DataReceived,
    GoawayReceived,
    HeadersReceived,
    InformationalHeadersReceived,
)
from qh3.h3.events import StopSending as H3StopSending
from qh3.h3.events import StreamReset as H3StreamReset
from qh3.quic.connection import QuicConnectionError
from qh3.quic.events import (
    ConnectionIdIssued,
    ConnectionIdRetired,
    ConnectionTerminated,
    HandshakeCompleted,
)

from eg.core.codec.h2._convert import trailer_block, trailer_fields
from eg.core.codec.h2._fields import TRAILERS, check_block
from eg.core.codec.h3._connection import EgH3Connection, EgQuicConnection
from eg.core.codec.h3._context import (
    H3_EXCESSIVE_LOAD,
    H3_INTERNAL_ERROR,
    H3_MESSAGE_ERROR,
    H3_NO_ERROR,
    H3Context,
    h3_code,
    reset_code,
)
from eg.core.errors import LimitExceeded
from eg.core.message import Body, Message, Reset, ResetCode, Side, Trailers

#: Datagrams a throttled connection keeps unprocessed (about 1.4 MiB at 1350 bytes);
#: past it they are dropped, which QUIC's loss recovery answers by slowing down.
BACKLOG = 1024

#: An event handler: an unbound method, so the dispatch dict holds no reference back to
#: its codec (a cycle would keep a closed connection's buffers until a GC pass).
type Handler = Callable[[Any, Any, list[Message]], None]


class _Stream:
    """One request stream's adapter state (qh3 keeps the protocol state)."""

    __slots__ = (
        "congested",
        "content_length",
        "head_seen",
        "held",
        "held_bytes",
        "in_done",
        "out_done",
        "paused",
        "received",
        "response_started",
        "sid",
    )

    def __init__(self, sid: int) -> None:
        self.sid = sid
        self.head_seen = False
        self.in_done = False
        self.out_done = False
        self.response_started = False
        self.content_length: int | None = None
        self.received = 0
        self.paused = 0
        self.held: deque[Message] = deque()
        self.held_bytes = 0
        self.congested = False


class H3Codec:
    """The shared half of the HTTP/3 adapters (see the module docstring)."""

    def __init__(self, ctx: H3Context, quic: EgQuicConnection, *, side: Side) -> None:
        self._ctx = ctx
        self._quic = quic
        self._side = side
        self._h3: EgH3Connection | None = None
        self._streams: dict[int, _Stream] = {}
        #: Streams with bytes still queued in qh3 (watched after each output).
        self._sending: set[int] = set()
        self._watermarks: list[tuple[int, bool]] = []
        self._refusals: list[str] = []
        #: Body bytes held for paused streams, all streams together.
        self._held_total = 0
        #: Datagrams not yet processed because too much is held (module docstring).
        self._backlog: deque[tuple[bytes, tuple[str, int]]] = deque()
        #: Datagrams dropped because the backlog was full.
        self.dropped = 0
        #: Streams resumed while holding messages (``next_released`` drains them).
        self._resumed: list[int] = []
        self._issued: list[bytes] = []
        self._retired: list[bytes] = []
        self._goaway_sent = False
        self.goaway_received: int | None = None
        #: The QUIC connection has ended (terminated, drained or failed).
        self.closed = False
        #: Why it ended: (error code, reason), once closed.
        self.close_reason: tuple[int, str] | None = None
        self.handshake_done = False
        cls = type(self)
        self._handlers: dict[type, Handler] = {
            HeadersReceived: cls._on_headers,
            DataReceived: cls._on_data,
            H3StreamReset: cls._on_reset,
            H3StopSending: cls._on_stop_sending,
            GoawayReceived: cls._on_goaway,
            InformationalHeadersReceived: cls._on_informational,
        }

    # -- input ------------------------------------------------------------------------------

    def feed(self, data: bytes, addr: tuple[str, int], now: float) -> list[Message]:
        """One datagram from ``addr``; returns the messages it completes.

        While the connection holds more than ``hold_high`` bytes for paused streams, the
        datagram waits unprocessed in the backlog (dropped past ``BACKLOG``): see the
        module docstring.
        """
        msgs: list[Message] = []
        if self.closed:
            return msgs
        return self.feed_batch([data], addr, now)

    def feed_batch(self, datagrams: list[bytes], addr: tuple[str, int], now: float,
                   ) -> list[Message]:
        """Datagrams from one address, in order (one receive batch of the reactor)."""
        msgs: list[Message] = []
        if self.closed:
            return msgs
        backlog = self._backlog
        if backlog or self._held_total > self._ctx.hold_high:
            for data in datagrams:
                if len(backlog) < BACKLOG:
                    backlog.append((data, addr))
                else:
                    self.dropped += 1  # the peer sees a loss, retransmits, slows down
            return msgs
        self._receive(datagrams, addr, now)
        self._drain(msgs)
        return msgs

    def _receive(self, datagrams: list[bytes], addr: tuple[str, int], now: float) -> None:
        try:
            self._quic.receive_batch(datagrams, addr, now)
        except QuicConnectionError as exc:
            self._quic.close(error_code=exc.error_code, reason_phrase=exc.reason_phrase)

    def has_backlog(self) -> bool:
        """Datagrams wait and the held bytes are back under ``hold_low``."""
        return bool(self._backlog) and self._held_total <= self._ctx.hold_low

    def take_backlog(self, now: float) -> list[Message]:
        """Process waiting datagrams while the held bytes stay under ``hold_low``."""
        msgs: list[Message] = []
        backlog = self._backlog
        low = self._ctx.hold_low
        while backlog and self._held_total <= low and not self.closed:
            data, addr = backlog.popleft()
            self._receive([data], addr, now)
            self._drain(msgs)
        return msgs

    def on_timer(self, now: float) -> list[Message]:
        """The QUIC timer fired (loss detection, ACK delay, idle timeout)."""
        msgs: list[Message] = []
        if not self.closed:
            self._quic.handle_timer(now)
            self._drain(msgs)
        return msgs

    def _drain(self, msgs: list[Message]) -> None:
        quic = self._quic
        handlers = self._handlers
        while True:
            event = quic.next_event()
            if event is None:
                break
            if isinstance(event, ConnectionIdIssued):
                self._issued.append(event.connection_id)
            elif isinstance(event, ConnectionIdRetired):
                self._retired.append(event.connection_id)
            elif isinstance(event, ConnectionTerminated):
                self._terminated(event, msgs)
                return
            elif isinstance(event, HandshakeCompleted):
                self.handshake_done = True
                if self._h3 is None:
                    self._h3 = EgH3Connection(quic, self._ctx)
            else:
                h3 = self._h3
                if h3 is None:
                    continue
                for h3_event in h3.handle_event(event):
                    handler = handlers.get(type(h3_event))
                    if handler is not None:
                        handler(self, h3_event, msgs)

    def _terminated(self, event: ConnectionTerminated, msgs: list[Message]) -> None:
        self.closed = True
        self.close_reason = (event.error_code, event.reason_phrase)
        # Streams still open did not finish: a clean close (idle, drain) cancels them,
        # anything else is an error of the connection.
        code = ResetCode.CANCEL if event.error_code in (0, H3_NO_ERROR) else \
            ResetCode.INTERNAL_ERROR
        msgs.extend(Reset(stream_id=sid, code=code, side=self._side) for sid in self._streams)
        self._streams.clear()
        self._held_total = 0
        self._backlog.clear()
        self._sending.clear()

    def _on_headers(self, event: HeadersReceived, msgs: list[Message]) -> None:
        raise NotImplementedError

    def _on_informational(self, event: InformationalHeadersReceived,
                          msgs: list[Message]) -> None:
        """Only a client receives 1xx heads (``H3ClientCodec`` overrides this)."""

    def _on_goaway(self, event: GoawayReceived, msgs: list[Message]) -> None:
        self.goaway_received = event.stream_id

    def _trailers(self, st: _Stream, event: HeadersReceived, msgs: list[Message]) -> None:
        """A second HEADERS: trailers (RFC 9114 §4.1), which must end the stream."""
        ctx = self._ctx.fields
        try:
            fields = trailer_fields(ctx, check_block(ctx, event.headers, TRAILERS))
        except FieldError:
            fields = None
        if fields is None or not event.stream_ended or not self._length_ok(st):
            self._malformed(st, msgs)
            return
        st.in_done = True
        trailers = Trailers(stream_id=st.sid, headers=fields)
        if st.held:
            st.held.append(trailers)  # after the body bytes held before them
            return
        msgs.append(trailers)
        self._maybe_done(st)

    def _on_data(self, event: DataReceived, msgs: list[Message]) -> None:
        st = self._streams.get(event.stream_id)
        if st is None or st.in_done:
            return
        data = event.data
        size = len(data)
        st.received += size
        end = event.stream_ended
        if (st.content_length is not None and st.received > st.content_length) or \
                (end and not self._length_ok(st)):
            self._malformed(st, msgs)
            return
        if not size and not end:
            return
        if end:
            st.in_done = True
        body = Body(stream_id=st.sid, data=data, end_stream=end)
        if st.paused or st.held:
            st.held.append(body)
            st.held_bytes += size
            self._held_total += size
            if st.held_bytes > self._ctx.hold_limit:
                self._excessive(st, msgs)
            return
        msgs.append(body)
        if end:
            self._maybe_done(st)

    def _length_ok(self, st: _Stream) -> bool:
        return st.content_length is None or st.received == st.content_length

    def _forget(self, sid: int) -> _Stream | None:
        """Drop a stream's state (and what it held)."""
        st = self._streams.pop(sid, None)
        if st is not None and st.held_bytes:
            self._held_total -= st.held_bytes
            st.held_bytes = 0
            st.held.clear()
        return st

    def _on_reset(self, event: H3StreamReset, msgs: list[Message]) -> None:
        st = self._forget(event.stream_id)
        if st is None:
            return
        self._sending.discard(st.sid)
        if not st.out_done:
            # The peer abandoned its side: stop ours too (RFC 9000 §3.5).
            self._reset_sending(st.sid, H3_NO_ERROR if st.in_done else event.error_code)
        msgs.append(Reset(stream_id=st.sid, code=reset_code(event.error_code), side=self._side))

    def _on_stop_sending(self, event: H3StopSending, msgs: list[Message]) -> None:
        """The peer does not want what we send on this stream: reset it (RFC 9000 §3.5)."""
        st = self._forget(event.stream_id)
        if st is None:
            return
        self._sending.discard(st.sid)
        self._reset_sending(st.sid, event.error_code)
        if not st.in_done:
            self._stop_receiving(st.sid, event.error_code)
        msgs.append(Reset(stream_id=st.sid, code=reset_code(event.error_code), side=self._side))

    def _malformed(self, st: _Stream, msgs: list[Message]) -> None:
        """RFC 9114 §4.1.2: a malformed message is a stream error H3_MESSAGE_ERROR."""
        self._refusals.append("h3_malformed")
        self._abort_stream(st, H3_MESSAGE_ERROR)
        msgs.append(Reset(stream_id=st.sid, code=ResetCode.PROTOCOL_ERROR, side=self._side))

    def _excessive(self, st: _Stream, msgs: list[Message]) -> None:
        """A paused stream kept sending past ``hold_limit`` (module docstring)."""
        self._refusals.append("h3_stream_buffer")
        self._abort_stream(st, H3_EXCESSIVE_LOAD)
        msgs.append(Reset(stream_id=st.sid, code=ResetCode.ENHANCE_YOUR_CALM,
                          side=self._side))

    def _abort_stream(self, st: _Stream, code: int) -> None:
        self._forget(st.sid)
        self._sending.discard(st.sid)
        if not st.in_done:
            self._stop_receiving(st.sid, code)
        if not st.out_done:
            self._reset_sending(st.sid, code)

    def _reset_sending(self, sid: int, code: int) -> None:
        # qh3 raises when the stream's sending side is already final: nothing to do then.
        with contextlib.suppress(QuicConnectionError, AssertionError, ValueError):
            self._quic.reset_stream(sid, code)

    def _stop_receiving(self, sid: int, code: int) -> None:
        with contextlib.suppress(QuicConnectionError, AssertionError, ValueError):
            self._quic.stop_stream(sid, code)
        if self._h3 is not None:
            self._h3.forget_request(sid)

    # -- output -----------------------------------------------------------------------------

    def send(self, msg: Message) -> None:
        """Encode one message for the peer (datagrams appear in ``output``).

        A connection qh3 has already closed (the peer's CONNECTION_CLOSE, reported as an
        event a moment later) takes nothing: the message is dropped, and the event then
        resets every open stream. A stream that can take no more frames is dropped.

        Raises:
            LimitExceeded: the stream's send buffer passed ``buffer_limit`` (reset).
        """
        if self.closed:
            return
        st = self._streams.get(msg.stream_id)
        if st is None or self._h3 is None:
            return
        if isinstance(msg, Reset):  # also once our side has ended: it stops theirs
            self._abort_stream(st, h3_code(msg.code))
            return
        if st.out_done:
            return
        try:
            self._send(st, msg, self._h3)
        except QuicConnectionError:
            return  # the connection is already closed
        except H3ProtocolError:
            # The stream cannot take this frame any more (its HEADERS never went out
            # because the connection was closing): it is over.
            self._abort_stream(st, H3_INTERNAL_ERROR)

    def _send(self, st: _Stream, msg: Message, h3: EgH3Connection) -> None:
        if isinstance(msg, Body):
            end = msg.end_stream
            if msg.data or end:
                h3.send_data(st.sid, msg.data, end)
                self._sending.add(st.sid)
            if end:
                st.out_done = True
                self._maybe_done(st)
            else:
                size = self._quic.get_send_buffer_size(st.sid)
                if size > self._ctx.buffer_limit:
                    self._abort_stream(st, H3_EXCESSIVE_LOAD)
                    raise LimitExceeded("HTTP/3 send buffer over its limit", side=self._side,
                                        kind="send_buffer")
                if not st.congested and size >= self._ctx.buffer_high:
                    # Reported at once: the caller may go on sending before any output.
                    st.congested = True
                    self._watermarks.append((st.sid, True))
        elif isinstance(msg, Trailers):
            h3.send_headers(st.sid, trailer_block(self._ctx.fields, msg.headers),
                            end_stream=True)
            st.out_done = True
            self._maybe_done(st)
        else:
            self._send_head(st, msg)

    def _send_head(self, st: _Stream, msg: Message) -> None:
        raise NotImplementedError

    def _maybe_done(self, st: _Stream) -> None:
        if st.in_done and st.out_done and not st.held:
            self._streams.pop(st.sid, None)

    def output(self, now: float) -> list[tuple[bytes, Any]]:
        """Datagrams to send now, each with its destination address."""
        out = self._quic.datagrams_to_send(now)
        if self._sending:
            self._check_watermarks()
        return out

    def _check_watermarks(self) -> None:
        quic = self._quic
        ctx = self._ctx
        done: list[int] = []
        for sid in self._sending:
            size = quic.get_send_buffer_size(sid)
            st = self._streams.get(sid)
            if st is None:
                if not size:
                    done.append(sid)
                continue
            if not st.congested and size >= ctx.buffer_high:
                st.congested = True
                self._watermarks.append((sid, True))
            elif st.congested and size <= ctx.buffer_low:
                st.congested = False
                self._watermarks.append((sid, False))
            if not size and not st.congested:
                done.append(sid)
        for sid in done:
            self._sending.discard(sid)

    def deadline(self) -> float | None:
        """When ``on_timer`` must run next (qh3's single timer), or None."""
        return None if self.closed else self._quic.get_timer()

    def take_watermarks(self) -> list[tuple[int, bool]]:
        """(stream id, congested) crossings since the last call."""
        out = self._watermarks
        self._watermarks = []
        return out

    def take_refusals(self) -> list[str]:
        """Metric kinds of streams refused or answered here since the last call."""
        out = self._refusals
        self._refusals = []
        return out

    def take_cids(self) -> tuple[list[bytes], list[bytes]]:
        """Connection IDs issued and retired by qh3 since the last call."""
        issued, retired = self._issued, self._retired
        self._issued = []
        self._retired = []
        return issued, retired

    # -- backpressure ---------------------------------------------------------------------------

    def pause(self, stream_id: int) -> None:
        st = self._streams.get(stream_id)
        if st is not None:
            st.paused += 1

    def resume(self, stream_id: int) -> None:
        st = self._streams.get(stream_id)
        if st is not None and st.paused:
            st.paused -= 1
            if not st.paused and st.held:
                self._resumed.append(stream_id)

    def has_released(self) -> bool:
        """Whether a resumed stream still holds messages for ``next_released``."""
        return bool(self._resumed)

    def next_released(self) -> Message | None:
        """The next message held by a resumed stream that is not paused again, or None.

        The caller passes it on as if it had just arrived, then asks again: one at a
        time, so the backpressure it causes can pause the stream before the next one.
        """
        resumed = self._resumed
        while resumed:
            st = self._streams.get(resumed[0])
            if st is None or st.paused or not st.held:
                resumed.pop(0)
                continue
            msg = st.held.popleft()
            if isinstance(msg, Body):
                st.held_bytes -= len(msg.data)
                self._held_total -= len(msg.data)
            if not st.held:
                resumed.pop(0)
                self._maybe_done(st)
            return msg
        return None

    def wants_read(self) -> bool:
        """Datagrams are always read (QUIC needs its ACKs); see ``pause``."""
        return True

    def close(self, code: int = H3_NO_ERROR, reason: str = "") -> None:
        """CONNECTION_CLOSE now (its datagram appears in ``output``)."""
        self._quic.close(error_code=code, reason_phrase=reason)

    def active_streams(self) -> int:
        return len(self._streams)

    def release(self) -> None:
        """Drop buffers and the QUIC state once the connection is gone."""
        self._streams.clear()
        self._backlog.clear()
        self._held_total = 0
        self._sending.clear()
        self._h3 = None
