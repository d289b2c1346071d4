"""What the HTTP/2 server and client adapters share: feeding h2, flow control, budgets.

Theory of operation. ``feed`` hands the bytes to h2 and maps its events to messages
through a per-codec dispatch dict; ``send`` maps messages to h2 calls; ``output`` takes
h2's queued bytes without copying. The adapter keeps one ``_Stream`` per stream the
exchange knows about, from its head until both directions have ended or it was reset.

Inbound flow control (STYLE.md §4, the h2 lever). Received DATA is handed out at once
and its connection credit returned at once. Its stream credit is returned as it is
handed out too, unless the stream is paused: then it is counted and returned by the
``resume`` that ends the pause. A paused stream therefore gets no WINDOW_UPDATE and
its sender stops after one window; other streams carry on.

Outbound flow control. A body slice larger than the peer's window (stream and
connection) is sent up to the window, in frames of at most the peer's frame size; the
rest waits in the stream's send buffer, in order, and is sent as WINDOW_UPDATEs (or a
larger SETTINGS_INITIAL_WINDOW_SIZE) arrive. Trailers and the end of stream wait behind
buffered bytes. Each buffer has the watermarks of ``H2Context`` (high, low = high / 2):
crossings are collected for ``take_watermarks()`` so the caller can pause the other side
of the exchange; past ``buffer_limit`` the caller ignored backpressure and the stream is
reset (``LimitExceeded``).

Stream life in the adapter:

    ┌────────┐ head in/out ┌──────┐ end both ways ┌──────┐
    │ (none) │────────────▶│ OPEN │──────────────▶│ gone │
    └────────┘             └──────┘  reset, EOF,   └──────┘
                                      GOAWAY ─────────▲

Budgets (MISSION.md DoS rows, ``H2Context``): SETTINGS and PING frames, streams the peer
resets before their response started (server only: Rapid Reset), and streams we reset or
answered ourselves. Each counts per window of ``flood_window`` seconds of ``now``; past
it the connection ends with GOAWAY ENHANCE_YOUR_CALM and ``LimitExceeded``. The glitch
budget is the same mechanism over ``glitch_window`` seconds, weighted: every peer oddity
in ``_context``'s weight table (the local errors above among them) adds its weight, and
past ``max_glitches`` the connection ends the same way (kind ``h2_glitches``).

Zero-window stall (MISSION.md DoS row). A peer that stops opening its flow-control
window while we hold bytes for it would pin those bytes, the stream and the exchange
behind it forever. The stall clock runs while body bytes wait for window and none has
been sent: any DATA byte sent (a WINDOW_UPDATE or SETTINGS that lets bytes flow, on any
stream) restarts it, and it stops once nothing waits (streams ended or reset). Progress
is connection-wide: a peer that starves one stream while reading others is making
progress; that stream is bounded by its buffer watermarks and the exchange's timeouts.
Half-way through ``zero_window_timeout`` one PING goes out; at the full timeout the
connection ends with GOAWAY ENHANCE_YOUR_CALM and ``LimitExceeded(kind="h2_zero_window")``
whether or not the PING was answered. The PING decides nothing: while the window is
zero we send nothing, so TCP cannot notice a peer that vanished; the PING makes it send
a segment, so a dead peer surfaces as a socket error before the timeout, and the error
message says whether the peer answered (alive but not reading) or not. ENHANCE_YOUR_CALM
rather than FLOW_CONTROL_ERROR (the peer broke no flow-control rule: RFC 9113 §6.9 lets
it keep its window shut) or NO_ERROR (which reads as a routine drain): the peer is
holding our buffers, which is the load that code names.

Time is the ``now`` of ``feed`` and ``on_timer``; ``send`` has none, so a stall that
starts there is stamped by the next of them: ``deadline()`` is then the last ``now``
seen, already due, and the caller's ``on_timer(now)`` starts the clock.

    state     input                                    next
    ───────── ──────────────────────────────────────── ─────────────────────────────
    FLOWING   bytes left waiting by feed(now)          STALLED(since=now)
    FLOWING   bytes left waiting by send()             UNSTAMPED (deadline: due)
    UNSTAMPED feed(now) or on_timer(now)               STALLED(since=now)
    STALLED   on_timer(now ≥ since + timeout / 2)      PINGED (PING queued)
    PINGED    on_timer(now ≥ since + timeout)          closed: GOAWAY, LimitExceeded
    any       a DATA byte sent                         FLOWING, re-checked at once
    any       nothing waits any more                   FLOWING
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from h2.connection import ConnectionState
from h2.errors import ErrorCodes
from h2.events import (
    DataReceived,
    Event,
    PingAckReceived,
    PingReceived,
    RemoteSettingsChanged,
    StreamReset,
    TrailersReceived,
    UnknownFrameReceived,
    WindowUpdated,
)
from h2.exceptions import DenialOfServiceError, H2Error
from hpack.exceptions import HPACKError
from hyperframe.exceptions import HyperframeError

from eg.core.codec.h2._connection import H2Wire, IdlePriority, StreamRejected
from eg.core.codec.h2._context import (
    GLITCH_EMPTY_DATA,
    GLITCH_IDLE_PRIORITY,
    GLITCH_MALFORMED,
    GLITCH_REFUSED,
    GLITCH_STREAM_ERROR,
    GLITCH_TINY_FRAGMENT,
    GLITCH_UNKNOWN_FRAME,
    GLITCH_UNSOLICITED_ACK,
    H2Context,
)
from eg.core.codec.h2._convert import trailer_block, trailer_fields
from eg.core.errors import EgError, LimitExceeded, ProtocolError
from eg.core.message import Body, Message, Reset, ResetCode, Side, Trailers

#: An event handler: an unbound method, so the dispatch dict holds no reference back to
#: its codec (a cycle would keep a closed connection's buffers until a GC pass).
type Handler = Callable[[Any, Any, list[Message], float], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class H2Statistics:
    """A snapshot of one connection's state (STYLE.md §4 ``statistics()``)."""

    #: Streams the exchange layer knows and that have not ended.
    streams: int
    #: Body bytes waiting in send buffers for the peer's flow-control window.
    buffered_bytes: int
    #: Streams whose inbound credit is being held back.
    paused_streams: int
    #: Bytes queued for the socket and not yet taken by ``output()``.
    pending_output: int
    #: We sent GOAWAY (drain or error).
    goaway_sent: bool
    #: The peer sent GOAWAY.
    goaway_received: bool


class _Stream:
    """One stream's adapter state (the h2 ``H2Stream`` keeps the protocol state)."""

    __slots__ = (
        "buf",
        "buffered",
        "congested",
        "content_length",
        "end_pending",
        "head_request",
        "in_done",
        "out_done",
        "paused",
        "received",
        "response_started",
        "sid",
        "trailers",
        "unacked",
    )

    def __init__(self, sid: int) -> None:
        self.sid = sid
        #: Body slices waiting for window, in order.
        self.buf: deque[bytes | memoryview] = deque()
        self.buffered = 0
        self.congested = False
        #: Declared inbound length (checked when trailers end the stream).
        self.content_length: int | None = None
        self.received = 0
        #: The end of stream (and maybe trailers) waits behind ``buf``.
        self.end_pending = False
        self.trailers: list[Any] | None = None
        self.in_done = False
        self.out_done = False
        self.paused = 0
        #: Stream credit consumed while paused, returned on resume.
        self.unacked = 0
        self.response_started = False
        #: Client side: the request was HEAD (a response content-length is not a promise).
        self.head_request = False


class _Budget:
    """At most ``limit`` (weighted) events per ``span`` seconds (a fixed window restarted
    lazily)."""

    __slots__ = ("count", "limit", "span", "start")

    def __init__(self, limit: int, span: float) -> None:
        self.limit = limit
        self.span = span
        self.count = 0
        self.start = float("-inf")

    def spend(self, now: float, weight: int = 1) -> bool:
        """Count one event of ``weight``; True when the budget is exhausted."""
        if now - self.start >= self.span:
            self.start = now
            self.count = 0
        self.count += weight
        return self.count > self.limit


def reset_code(code: int) -> ResetCode:
    """An HTTP/2 error code as a ResetCode (codes it lacks become the nearest one)."""
    try:
        return ResetCode(code)
    except ValueError:
        if code in (ErrorCodes.FRAME_SIZE_ERROR, ErrorCodes.COMPRESSION_ERROR):
            return ResetCode.PROTOCOL_ERROR
        return ResetCode.INTERNAL_ERROR


class H2Codec:
    """The shared half of ``H2ServerCodec`` and ``H2ClientCodec`` (see module docstring).

    Args:
        ctx: the worker's limits and h2 configuration.
        client_side: the h2 role.
        side: the proxy side the peer is on (DOWNSTREAM for the server adapter).
    """

    def __init__(self, ctx: H2Context, *, client_side: bool, side: Side) -> None:
        self._ctx = ctx
        self._conn = H2Wire(ctx, client_side=client_side)
        self._side = side
        self._hint = 400 if side is Side.DOWNSTREAM else 502
        self._streams: dict[int, _Stream] = {}
        #: Streams with bytes waiting for window, in the order they started waiting.
        self._blocked: dict[int, _Stream] = {}
        self._buffered = 0
        self._watermarks: dict[int, bool] = {}
        #: Nothing more is read: connection error, EOF, or the peer's error GOAWAY.
        self._closed = False
        #: A connection error of ours or h2's: nothing more is sent either.
        self._dead = False
        self._goaway_sent = False
        self._goaway_received: int | None = None
        #: The peer's first SETTINGS arrived: its stream limit and windows are known.
        self.settings_received = False
        self._peer_resets = _Budget(ctx.max_peer_resets, ctx.flood_window)
        self._local_errors = _Budget(ctx.max_local_errors, ctx.flood_window)
        self._settings = _Budget(ctx.max_settings, ctx.flood_window)
        self._pings = _Budget(ctx.max_pings, ctx.flood_window)
        self._glitches = _Budget(ctx.max_glitches, ctx.glitch_window)
        #: The last ``now`` of ``feed`` or ``on_timer`` (``send`` has none).
        self._now = float("-inf")
        #: Zero-window stall (module docstring): since when bytes have waited with none
        #: sent; None when nothing waits or the stall began in ``send`` and is unstamped.
        self._stalled_since: float | None = None
        #: The opaque data of this stall's PING, once sent.
        self._stall_ping: bytes | None = None
        #: This stall's PING was answered.
        self._stall_acked = False
        #: PINGs of ours not yet acknowledged, and the last PING number used.
        self._pings_out = 0
        self._ping_seq = 0
        #: Kinds of streams refused or answered here, not yet taken.
        self._refusals: list[str] = []
        cls = type(self)
        self._handlers: dict[type[Event], Handler] = {
            DataReceived: cls._on_data,
            StreamReset: cls._on_reset,
            StreamRejected: cls._on_rejected,
            WindowUpdated: cls._on_window,
            RemoteSettingsChanged: cls._on_settings,
            PingReceived: cls._on_ping,
            PingAckReceived: cls._on_ping_ack,
            TrailersReceived: cls._on_trailers,
            UnknownFrameReceived: cls._on_unknown,
            IdlePriority: cls._on_idle_priority,
        }

    # -- input ---------------------------------------------------------------------------

    def feed(self, data: bytes, now: float) -> list[Message]:
        """Consume received bytes and return the messages they complete.

        Raises:
            ProtocolError: the peer broke HTTP/2 (``reset_code`` is the GOAWAY code).
            LimitExceeded: a header, HPACK, flood or glitch limit (GOAWAY
                ENHANCE_YOUR_CALM).
            In both cases the GOAWAY is already in ``output()`` and every stream on the
            connection is gone.
        """
        if self._closed:
            return []
        self._now = now
        msgs: list[Message] = []
        try:
            conn = self._conn
            events = conn.receive_data(data)
            handlers = self._handlers
            for event in events:
                handler = handlers.get(type(event))
                if handler is not None:
                    handler(self, event, msgs, now)
            tiny = conn.take_tiny_fragments()
            if tiny:
                self._glitch(now, tiny * GLITCH_TINY_FRAGMENT)
        except (H2Error, HPACKError, HyperframeError) as exc:
            err = self._translate(exc)
            if self._conn.state_machine.state is not ConnectionState.CLOSED:
                # h2 queues GOAWAY itself for errors inside frame processing, not for a
                # bad preface or an error in one of our handlers.
                self._conn.close_connection(int(err.reset_code))
            self._fail()
            try:
                raise err from exc
            finally:
                del err  # the traceback holds this frame: no cycle through it
        except EgError:
            self._fail()
            raise
        if self._blocked:
            if self._stalled_since is None:
                self._stalled_since = now  # FLOWING or UNSTAMPED → STALLED
        elif self._stalled_since is not None:
            self._unstall()
        return msgs

    def feed_eof(self, now: float) -> list[Message]:
        """The peer closed the connection: every stream still open is reset (CANCEL)."""
        self._closed = True
        msgs: list[Message] = [
            Reset(stream_id=sid, code=ResetCode.CANCEL, side=self._side) for sid in self._streams
        ]
        self._forget_all()
        return msgs

    def _fail(self) -> None:
        self._closed = True
        self._dead = True
        self._goaway_sent = True
        self._forget_all()

    def release(self) -> None:
        """The connection is gone: drop every buffer now (a partial header block, queued
        frames, send buffers) rather than whenever the codec object is collected."""
        self._closed = True
        self._dead = True
        self._forget_all()
        self._conn.discard_buffers()

    def take_refusals(self) -> list[str]:
        """Kinds of the streams refused or answered here since the last call (metrics)."""
        refusals = self._refusals
        if not refusals:
            return refusals
        self._refusals = []
        return refusals

    def _translate(self, exc: Exception) -> EgError:
        side = self._side
        if isinstance(exc, DenialOfServiceError):
            return LimitExceeded(
                f"h2: {exc}", side=side, status_hint=431 if side is Side.DOWNSTREAM else 502,
                kind="h2_limit",
            )
        err = ProtocolError(f"h2: {exc}", side=side, status_hint=self._hint, kind="h2_protocol")
        err.reset_code = reset_code(getattr(exc, "error_code", ErrorCodes.PROTOCOL_ERROR))
        return err

    def _calm_down(self, kind: str, reason: str | None = None) -> None:
        """Over a budget: GOAWAY ENHANCE_YOUR_CALM and raise."""
        self._conn.close_connection(ErrorCodes.ENHANCE_YOUR_CALM)
        raise LimitExceeded(
            reason or f"h2 peer over its {kind} budget", side=self._side,
            status_hint=429 if self._side is Side.DOWNSTREAM else 502, kind=f"h2_{kind}",
        )

    def _local_error(self, now: float, weight: int, kind: str) -> None:
        """We reset or answered a stream because of the peer's message: a local error of
        ``kind`` (for ``take_refusals``), and a glitch of ``weight`` (checked second, so a
        burst reports local errors)."""
        self._refusals.append(kind)
        if self._local_errors.spend(now):
            self._calm_down("local_errors")
        self._glitch(now, weight)

    def _glitch(self, now: float, weight: int) -> None:
        """The peer committed a glitch of ``weight`` (``_context``'s weight table)."""
        if self._glitches.spend(now, weight):
            self._calm_down("glitches")

    # -- event handlers shared by both roles ------------------------------------------

    def _on_data(self, event: DataReceived, msgs: list[Message], now: float) -> None:
        conn = self._conn
        sid = event.stream_id
        size = event.flow_controlled_length
        end = event.stream_ended is not None
        if size:
            conn.ack_connection(size)
        st = self._streams.get(sid)
        if st is None:
            if size and not end:
                conn.ack_stream(size, sid)
            if not event.data and not end:
                self._glitch(now, GLITCH_EMPTY_DATA)
            return
        data = event.data
        st.received += len(data)
        if end:
            st.in_done = True
            st.unacked = 0  # the peer is done sending: no stream credit to return
        elif size:
            if st.paused:
                st.unacked += size
            else:
                conn.ack_stream(size, sid)
        if data or end:
            msgs.append(Body(stream_id=sid, data=data, end_stream=end))
        else:
            self._glitch(now, GLITCH_EMPTY_DATA)
        if end:
            self._maybe_done(st)

    def _on_reset(self, event: StreamReset, msgs: list[Message], now: float) -> None:
        st = self._streams.pop(event.stream_id, None)
        if event.remote_reset:
            if self._count_peer_resets and (st is None or not st.response_started) and \
                    self._peer_resets.spend(now):
                self._calm_down("peer_resets")
        else:
            self._local_error(now, GLITCH_STREAM_ERROR, "h2_stream_error")
        if st is not None:
            self._drop(st)
            msgs.append(
                Reset(stream_id=st.sid, code=reset_code(event.error_code), side=self._side)
            )

    def _on_rejected(self, event: StreamRejected, msgs: list[Message], now: float) -> None:
        refused = event.error_code == ErrorCodes.REFUSED_STREAM
        self._local_error(now, GLITCH_REFUSED if refused else GLITCH_MALFORMED,
                          "h2_refused" if refused else "h2_malformed")
        st = self._streams.pop(event.stream_id, None)
        if st is not None:
            self._drop(st)
            msgs.append(
                Reset(stream_id=st.sid, code=reset_code(event.error_code), side=self._side)
            )

    def _on_window(self, event: WindowUpdated, msgs: list[Message], now: float) -> None:
        if event.stream_id:
            st = self._blocked.get(event.stream_id)
            if st is not None:
                self._flush(st)
        else:
            self._flush_all()

    def _on_settings(self, event: RemoteSettingsChanged, msgs: list[Message], now: float) -> None:
        self.settings_received = True
        if self._settings.spend(now):
            self._calm_down("settings")
        # A larger SETTINGS_INITIAL_WINDOW_SIZE or frame size may unblock streams.
        self._flush_all()

    def _on_ping(self, event: PingReceived, msgs: list[Message], now: float) -> None:
        if self._pings.spend(now):
            self._calm_down("pings")

    def _on_ping_ack(self, event: PingAckReceived, msgs: list[Message], now: float) -> None:
        if not self._pings_out:
            self._glitch(now, GLITCH_UNSOLICITED_ACK)
            return
        self._pings_out -= 1
        if event.ping_data == self._stall_ping:
            self._stall_acked = True

    def _on_unknown(self, event: UnknownFrameReceived, msgs: list[Message], now: float) -> None:
        self._glitch(now, GLITCH_UNKNOWN_FRAME)

    def _on_idle_priority(self, event: IdlePriority, msgs: list[Message], now: float) -> None:
        self._glitch(now, GLITCH_IDLE_PRIORITY)

    def _on_trailers(self, event: TrailersReceived, msgs: list[Message], now: float) -> None:
        """Trailers ended the stream: check the declared length, then pass them on."""
        st = self._streams.get(event.stream_id)
        if st is None:
            return
        fields = trailer_fields(self._ctx, event.headers)
        length = st.content_length
        if fields is None or (length is not None and st.received != length):
            self._reject_stream(st, msgs, now)
            return
        st.in_done = True
        msgs.append(Trailers(stream_id=st.sid, headers=fields))
        self._maybe_done(st)

    def _reject_stream(self, st: _Stream, msgs: list[Message], now: float) -> None:
        """A malformed message on a stream the exchange knows: reset it both ways."""
        self._local_error(now, GLITCH_MALFORMED, "h2_malformed")
        del self._streams[st.sid]
        self._drop(st)
        self._conn.reset_if_open(st.sid, ErrorCodes.PROTOCOL_ERROR)
        msgs.append(Reset(stream_id=st.sid, code=ResetCode.PROTOCOL_ERROR, side=self._side))

    #: Server adapters count peer resets of unanswered streams (Rapid Reset).
    _count_peer_resets = False

    # -- output --------------------------------------------------------------------------

    def send(self, msg: Message) -> None:
        """Encode one message for the peer; the bytes appear in ``output()``.

        Messages for streams that are gone (reset, ended) are dropped.

        Raises:
            LimitExceeded: a stream's send buffer passed ``buffer_limit`` (backpressure
                was ignored); the stream has been reset.
            ProtocolError: h2 refused the message (side INTERNAL: a caller bug).
        """
        if self._dead:
            return
        try:
            if isinstance(msg, Body):
                self._send_body(msg)
            elif isinstance(msg, Trailers):
                self._send_trailers(msg)
            elif isinstance(msg, Reset):
                self._send_reset(msg)
            else:
                self._send_head(msg)
        except H2Error as exc:
            raise ProtocolError(
                f"h2 refused {type(msg).__name__}: {exc}", side=Side.INTERNAL,
                status_hint=502, kind="h2_send",
            ) from exc
        finally:
            if self._stalled_since is not None and not self._blocked:
                self._unstall()

    def _send_head(self, msg: Message) -> None:
        raise NotImplementedError  # pragma: no cover - each role implements it

    def _send_body(self, msg: Body) -> None:
        st = self._streams.get(msg.stream_id)
        if st is None or st.out_done or st.end_pending:
            return
        data = msg.data
        end = msg.end_stream
        conn = self._conn
        size = len(data)
        if not st.buf:
            sid = st.sid
            if size <= conn.max_outbound_frame_size and (
                not size or size <= conn.local_flow_control_window(sid)
            ):
                # Fast path: it fits the window and one frame.
                if size or end:
                    conn.send_data(sid, data, end_stream=end)
                if size and self._stalled_since is not None:
                    self._unstall()  # bytes flow
                if end:
                    st.out_done = True
                    self._maybe_done(st)
                return
        if size:
            st.buf.append(data)
            st.buffered += size
            self._buffered += size
        if end:
            st.end_pending = True
        self._flush(st)
        if st.buffered > self._ctx.buffer_limit:
            self._overflow(st)

    def _send_trailers(self, msg: Trailers) -> None:
        st = self._streams.get(msg.stream_id)
        if st is None or st.out_done or st.end_pending:
            return
        block = trailer_block(self._ctx, msg.headers)
        if st.buf:
            st.trailers = block
            st.end_pending = True
            return
        if block:
            self._conn.send_headers(st.sid, block, end_stream=True)
        else:
            self._conn.send_data(st.sid, b"", end_stream=True)
        st.out_done = True
        self._maybe_done(st)

    def _send_reset(self, msg: Reset) -> None:
        st = self._streams.pop(msg.stream_id, None)
        if st is None:
            return
        self._drop(st)
        self._conn.reset_if_open(msg.stream_id, int(msg.code))

    def _overflow(self, st: _Stream) -> None:
        del self._streams[st.sid]
        self._drop(st)
        self._conn.reset_if_open(st.sid, ErrorCodes.INTERNAL_ERROR)
        raise LimitExceeded(
            f"stream {st.sid} send buffer over {self._ctx.buffer_limit} bytes",
            side=Side.INTERNAL, status_hint=502, kind="h2_send_buffer",
        )

    def _flush(self, st: _Stream) -> None:
        """Send what the windows allow from ``st``'s buffer, then its end if due."""
        conn = self._conn
        sid = st.sid
        buf = st.buf
        sent = 0
        while buf:
            window = conn.local_flow_control_window(sid)
            if window <= 0:
                break
            chunk = buf[0]
            size = len(chunk)
            n = min(size, window, conn.max_outbound_frame_size)
            if n < size:
                view = memoryview(chunk)
                buf[0] = view[n:]
                chunk = view[:n]
            else:
                buf.popleft()
            sent += n
            end = not buf and st.end_pending and st.trailers is None
            conn.send_data(sid, chunk, end_stream=end)
            if end:
                st.end_pending = False
                st.out_done = True
        st.buffered -= sent
        self._buffered -= sent
        if sent and self._stalled_since is not None:
            self._unstall()  # bytes flow: the clock restarts if bytes still wait
        if buf:
            self._blocked[sid] = st
        else:
            self._blocked.pop(sid, None)
            if st.end_pending:
                st.end_pending = False
                st.out_done = True
                if st.trailers:
                    conn.send_headers(sid, st.trailers, end_stream=True)
                else:
                    conn.send_data(sid, b"", end_stream=True)
                st.trailers = None
        self._watermark(st)
        if st.out_done:
            self._maybe_done(st)

    def _flush_all(self) -> None:
        for st in list(self._blocked.values()):
            if self._conn.outbound_flow_control_window <= 0:
                break
            self._flush(st)

    def _watermark(self, st: _Stream) -> None:
        if st.congested:
            if st.buffered <= self._ctx.buffer_low:
                st.congested = False
                self._watermarks[st.sid] = False
        elif st.buffered > self._ctx.buffer_high:
            st.congested = True
            self._watermarks[st.sid] = True

    def _maybe_done(self, st: _Stream) -> None:
        if st.out_done and (st.in_done or self._end_early(st)):
            self._streams.pop(st.sid, None)

    def _end_early(self, st: _Stream) -> bool:
        """Our side ended before the peer's did: whether to stop tracking the stream."""
        return False

    def _drop(self, st: _Stream) -> None:
        """Discard a gone stream's buffered bytes and report its buffer as drained."""
        if st.buffered:
            self._buffered -= st.buffered
            st.buffered = 0
            st.buf.clear()
        self._blocked.pop(st.sid, None)
        if st.congested:
            st.congested = False
            self._watermarks[st.sid] = False

    def _forget_all(self) -> None:
        for st in self._streams.values():
            self._drop(st)
        self._streams.clear()

    def output(self) -> list[bytes | memoryview]:
        """Take the bytes queued for the peer (one zero-copy slice, or none)."""
        conn = self._conn
        if conn.pending_output:
            return [memoryview(conn.take_output())]
        return []

    # -- zero-window stall (module docstring) ---------------------------------------------

    def deadline(self) -> float | None:
        """When ``on_timer`` is next due (monotonic seconds), or None if nothing is pending.

        Ask after every ``feed``, ``send`` and ``on_timer``, and fold the answer into the
        connection's timer. It may already be past (a stall that began in ``send``, which
        has no ``now``): then call ``on_timer`` at once.
        """
        if not self._blocked:
            return None
        since = self._stalled_since
        if since is None:
            return self._now
        if self._stall_ping is None:
            return since + self._ctx.zero_window_ping
        return since + self._ctx.zero_window_timeout

    def on_timer(self, now: float) -> None:
        """Advance the stall clock to ``now``; harmless when nothing is due.

        May queue a PING: write ``output()`` afterwards.

        Raises:
            LimitExceeded: bytes have waited ``zero_window_timeout`` seconds for window
                with none sent (kind ``h2_zero_window``). As with ``feed``'s errors, the
                GOAWAY (ENHANCE_YOUR_CALM) is already in ``output()``, every stream is
                gone and ``wants_close()`` is true.
        """
        self._now = now
        if not self._blocked:
            return
        since = self._stalled_since
        if since is None:
            self._stalled_since = now  # UNSTAMPED → STALLED
            return
        ctx = self._ctx
        if now >= since + ctx.zero_window_timeout:
            answer = "answered: alive, not reading" if self._stall_acked else "unanswered"
            reason = (
                f"h2 peer kept its window shut for {now - since:.1f} s with "
                f"{self._buffered} bytes waiting (PING {answer})"
            )
            try:
                self._calm_down("zero_window", reason)
            except EgError:
                self._fail()
                raise
        if self._stall_ping is None and now >= since + ctx.zero_window_ping:
            self._ping_seq += 1
            ping = self._ping_seq.to_bytes(8)
            self._conn.ping(ping)
            self._pings_out += 1
            self._stall_ping = ping

    def _unstall(self) -> None:
        """Back to FLOWING: bytes flowed, or none waits any more."""
        self._stalled_since = None
        self._stall_ping = None
        self._stall_acked = False

    # -- backpressure --------------------------------------------------------------------

    def pause(self, stream_id: int) -> None:
        """Hold back ``stream_id``'s WINDOW_UPDATEs until the matching ``resume``."""
        st = self._streams.get(stream_id)
        if st is not None:
            st.paused += 1

    def resume(self, stream_id: int) -> None:
        """Undo one ``pause``; the last one returns the credit consumed meanwhile."""
        st = self._streams.get(stream_id)
        if st is None or not st.paused:
            return
        st.paused -= 1
        if not st.paused and st.unacked:
            size = st.unacked
            st.unacked = 0
            self._conn.ack_stream(size, stream_id)

    def wants_read(self) -> bool:
        """Read unless closed or too many bytes wait to be taken by ``output()``.

        Bytes waiting for the peer's window do not count: reading is how the
        WINDOW_UPDATE that releases them arrives.
        """
        return not self._closed and self._conn.pending_output <= self._ctx.buffer_limit

    def wants_close(self) -> bool:
        """Close once ``output()`` is written: after an error or EOF, or after a GOAWAY
        either way once no stream is left."""
        if self._closed:
            return True
        return (self._goaway_sent or self._goaway_received is not None) and not self._streams

    def take_watermarks(self) -> list[tuple[int, bool]]:
        """Send-buffer watermark crossings since the last call: (stream id, congested)."""
        if not self._watermarks:
            return []
        changes = list(self._watermarks.items())
        self._watermarks.clear()
        return changes

    def buffered(self, stream_id: int) -> int:
        """Body bytes of ``stream_id`` waiting for the peer's window."""
        st = self._streams.get(stream_id)
        return st.buffered if st is not None else 0

    @property
    def buffered_bytes(self) -> int:
        """Body bytes waiting for the peer's window, all streams together."""
        return self._buffered

    @property
    def active_streams(self) -> int:
        """Streams that have not ended or been reset."""
        return len(self._streams)

    def statistics(self) -> H2Statistics:
        """A snapshot for the ``eg_*_buffered_bytes`` gauges and friends."""
        return H2Statistics(
            streams=len(self._streams),
            buffered_bytes=self._buffered,
            paused_streams=sum(1 for st in self._streams.values() if st.paused),
            pending_output=self._conn.pending_output,
            goaway_sent=self._goaway_sent,
            goaway_received=self._goaway_received is not None,
        )
