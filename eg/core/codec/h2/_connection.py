"""``H2Connection`` with the RFC 9113 behaviours h2 4.4.1 lacks, for both adapters.

h2 gets framing, HPACK, stream states and header validation right, and these adapters
keep all of that (header validation moved to ``_fields``, one pass instead of eight). It
differs from RFC 9113 (and from what a proxy needs) in six places, and costs far more
than it needs in one, each fixed here by overriding one h2 method. The overrides touch
h2 internals, so ``pyproject.toml`` pins h2 and ``tests/codec/test_h2_*.py`` pin every
behaviour below.

1. **Malformed messages are stream errors** (RFC 9113 §8.1.1). h2 turns a header block
   that fails validation (uppercase or connection-specific names, ``te`` other than
   ``trailers``, bad pseudo-headers, bad content-length) and a body whose length
   disagrees with content-length into a connection error: GOAWAY for every stream on the
   connection. Here the block is still decoded (the HPACK tables stay in sync), then
   only that stream is reset with PROTOCOL_ERROR, and a ``StreamRejected`` event says so.
2. **Too many streams is a stream error** (RFC 9113 §5.1.2): REFUSED_STREAM, so the client
   may retry, instead of h2's connection error.
3. **GOAWAY is graceful** (RFC 9113 §6.8; h2 issue #1181). h2 closes its state machine on
   sending or receiving GOAWAY, so no stream could finish. Received GOAWAYs only report
   the event here, and ``send_goaway`` queues the frame without closing anything; the
   adapters refuse new streams themselves.
4. **Header blocks are bounded in bytes** as well as h2's 64-frame count (CONTINUATION
   flood, MISSION.md DoS row).
5. **Connection and stream credit are returned separately**, so a paused stream holds
   back only its own window, never the connection's (which would stall every other
   stream on the connection).
6. **Frame lengths are checked on the frame header.** h2 checks SETTINGS_MAX_FRAME_SIZE
   only once the whole frame has arrived, so a peer announcing a 16 MiB frame made it
   buffer up to 16 MiB first; here the 9-byte header is enough to refuse it.
8. **HPACK is eg's** (``hpack.py``): the hpack library costs about as much as the rest
   of h2 together, with a dozen logging calls per block. The shims below give it the
   interface h2 drives (``decode(data, raw)``, ``encode(headers)``, the table-size and
   list-size attributes its SETTINGS handling sets) and translate its errors into
   hpack's, which h2 turns into GOAWAY (COMPRESSION_ERROR, or ENHANCE_YOUR_CALM for an
   oversized list).
7. **No hex dump per frame.** h2 formats ``repr(frame)`` for a trace line on every
   frame it receives, even with a no-op logger: a hex dump of each DATA payload, about a
   sixth of the CPU of relaying a body from an HTTP/2 upstream.

Two things h2 swallows are made visible for the glitch budget (``_context``): a
PRIORITY frame for a stream that is not open becomes an ``IdlePriority`` event, and tiny
header-block fragments are counted (``take_tiny_fragments``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

from h2.connection import (
    AllowedStreamIDs,
    ConnectionInputs,
    H2Connection,
    _decode_headers,
)
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    Event,
    InformationalResponseReceived,
    PriorityUpdated,
    RequestReceived,
    ResponseReceived,
    StreamReset,
    TrailersReceived,
)
from h2.exceptions import (
    DenialOfServiceError,
    FrameTooLargeError,
    InvalidBodyLengthError,
    ProtocolError,
    StreamClosedError,
    StreamIDTooLowError,
)
from h2.frame_buffer import FrameBuffer
from h2.settings import Settings
from h2.stream import H2Stream, StreamClosedBy, StreamState
from hpack.exceptions import HPACKDecodingError, OversizedHeaderListError
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PriorityFrame,
    PushPromiseFrame,
    RstStreamFrame,
    WindowUpdateFrame,
)

from eg.core.codec.h2._context import TINY_FRAGMENT
from eg.core.codec.h2._fields import check_block
from eg.core.codec.h2.hpack import Decoder, Encoder, HeaderListTooLarge, HpackError

if TYPE_CHECKING:
    from eg.core.codec.h2._context import H2Context

# Stream-level failures h2 raises while processing one stream's headers or data. Its
# subclasses that mean something else (closed streams, flow control, ids) are re-raised.
_MALFORMED = (ProtocolError, InvalidBodyLengthError)
_HEADERS_EVENTS = (
    RequestReceived, ResponseReceived, TrailersReceived, InformationalResponseReceived
)
type _HeadersEvent = (
    RequestReceived | ResponseReceived | TrailersReceived | InformationalResponseReceived
)



class StreamRejected(StreamReset):
    """We reset the stream because the peer's message on it was malformed or refused."""


class IdlePriority(PriorityUpdated):
    """A PRIORITY frame for a stream that is not open (idle or closed): it changed nothing."""


class H2Wire(H2Connection):
    """One HTTP/2 connection: h2 plus the six fixes in the module docstring.

    Args:
        ctx: the worker's limits (SETTINGS values, header block cap, windows).
        client_side: the role, as ``H2Configuration(client_side=...)``.
    """

    def __init__(self, ctx: H2Context, *, client_side: bool) -> None:
        super().__init__(config=ctx.client_config if client_side else ctx.server_config)
        self._ctx = ctx
        #: The ``_fields`` kind of each headers event.
        self._kinds: dict[type[Event], int] = ctx.header_kinds
        self.local_settings = Settings(
            client=client_side,
            initial_values=ctx.client_settings if client_side else ctx.server_settings,
        )
        # eg's HPACK in place of the hpack library's (fix 8); h2 only duck-types them.
        self.decoder = _DecoderShim(  # type: ignore[assignment]
            Decoder(ctx.hpack_tables, max_header_list_size=ctx.max_header_list_size)
        )
        self.encoder = _EncoderShim(Encoder(ctx.hpack_tables))  # type: ignore[assignment]
        self._frames = _BoundedFrameBuffer(server=not client_side, limit=ctx.header_block_limit)
        self.incoming_buffer = self._frames
        self.initiate_connection()
        extra = ctx.connection_window - 65535
        if extra > 0:
            self.increment_flow_control_window(extra)

    # -- output --------------------------------------------------------------------------

    @property
    def pending_output(self) -> int:
        """Bytes queued for the peer and not yet taken."""
        return len(self._data_to_send)

    def take_output(self) -> bytearray:
        """Take every queued byte without copying (``data_to_send`` copies)."""
        data = self._data_to_send
        self._data_to_send = bytearray()
        return data

    def reset_if_open(self, stream_id: int, error_code: int) -> None:
        """RST_STREAM, unless h2 already considers the stream closed (nothing to reset)."""
        stream = self.streams.get(stream_id)
        if stream is not None and not stream.closed:
            self.reset_stream(stream_id, error_code)

    def send_goaway(self, last_stream_id: int, error_code: int = 0) -> None:
        """Queue a GOAWAY but keep the connection open for streams up to ``last_stream_id``."""
        frame = GoAwayFrame(0, last_stream_id=last_stream_id, error_code=error_code)
        self._data_to_send += frame.serialize()

    # -- flow control, split in two halves (fix 5) --------------------------------------

    def ack_connection(self, size: int) -> None:
        """Return ``size`` consumed bytes of connection credit (WINDOW_UPDATE on 0)."""
        increment = self._inbound_flow_control_window_manager.process_bytes(size)
        if increment:
            frame = WindowUpdateFrame(0)
            frame.window_increment = increment
            self._data_to_send += frame.serialize()

    def ack_stream(self, size: int, stream_id: int) -> None:
        """Return ``size`` consumed bytes of one stream's credit, if it is still open."""
        stream = self.streams.get(stream_id)
        if stream is not None and stream.open:
            for frame in stream.acknowledge_received_data(size):
                self._data_to_send += frame.serialize()

    # -- receiving (fixes 1-3) -------------------------------------------------------------

    def _receive_headers_frame(self, frame: HeadersFrame) -> tuple[list[Frame], list[Event]]:
        stream_id = frame.stream_id
        refuse = (
            stream_id not in self.streams
            # Counting open streams walks them all (h2): only when it could matter.
            and len(self.streams) >= (limit := self.local_settings.max_concurrent_streams)
            and self.open_inbound_streams >= limit
        )
        # Decode first, always: the HPACK tables are shared by every stream, so a block is
        # never skipped, even for a stream about to be refused. Failures here are
        # connection errors (GOAWAY), as h2 raises them.
        headers = _decode_headers(self.decoder, frame.data)
        events = self.state_machine.process_input(ConnectionInputs.RECV_HEADERS)
        stream = self._get_or_create_stream(
            stream_id, AllowedStreamIDs(not self.config.client_side)
        )
        if refuse:
            return self._reject(stream, ErrorCodes.REFUSED_STREAM)
        try:
            frames, stream_events = stream.receive_headers(
                headers, "END_STREAM" in frame.flags, self.config.header_encoding
            )
            first = cast("_HeadersEvent", stream_events[0])
            first.headers = check_block(self._ctx, first.headers, self._kinds[type(first)])
        except _MALFORMED as exc:
            if not _is_malformed(exc):
                raise
            return self._reject(stream, ErrorCodes.PROTOCOL_ERROR)
        if "PRIORITY" in frame.flags:
            p_frames, p_events = self._receive_priority_frame(frame)
            update = p_events[0]
            # h2's own invariants (it asserts the same in _receive_headers_frame).
            assert isinstance(first, _HEADERS_EVENTS)
            assert isinstance(update, PriorityUpdated)
            first.priority_updated = update
            stream_events.extend(p_events)
            frames.extend(p_frames)
        return frames, events + stream_events

    def _receive_priority_frame(
        self, frame: HeadersFrame | PriorityFrame
    ) -> tuple[list[Frame], list[Event]]:
        """h2's handling; a PRIORITY frame (not the priority part of HEADERS) for a stream
        that is not open reports an ``IdlePriority`` instead of h2's event."""
        frames, events = super()._receive_priority_frame(frame)
        if isinstance(frame, PriorityFrame):
            stream = self.streams.get(frame.stream_id)
            if stream is None or stream.closed:
                idle = IdlePriority()
                idle.stream_id = frame.stream_id
                idle.depends_on = frame.depends_on
                idle.exclusive = frame.exclusive
                idle.weight = frame.stream_weight + 1
                events[-1] = idle  # h2 appends its PriorityUpdated last
        return frames, events

    def discard_buffers(self) -> None:
        """Drop unparsed input (a partial header block too) and unsent output."""
        frames = self._frames
        frames._data = bytearray()
        frames._headers_buffer = []
        self._data_to_send = bytearray()

    def take_tiny_fragments(self) -> int:
        """Tiny header-block fragments received since the last call (``TINY_FRAGMENT``)."""
        frames = self._frames
        count = frames.tiny
        if count:
            frames.tiny = 0
        return count

    def _receive_frame(self, frame: Frame) -> list[Event]:
        """h2's frame dispatch without its trace line, whose ``repr(frame)`` is built
        even for a no-op logger: a hex dump of every DATA payload (fix 7)."""
        frames: list[Frame]
        events: list[Event]
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except StreamClosedError as e:
            # Closed by our RST_STREAM: a stream error (RST again); else a connection error.
            if not self._stream_is_closed_by_reset(e.stream_id):
                raise
            rst = RstStreamFrame(e.stream_id)
            rst.error_code = e.error_code
            self._prepare_for_sending([rst])
            closed: list[Event] = e._events
            return closed
        except StreamIDTooLowError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                rst = RstStreamFrame(e.stream_id)
                rst.error_code = ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([rst])
                return []
            if self._stream_is_closed_by_end(e.stream_id):
                raise StreamClosedError(e.stream_id) from e
            raise
        self._prepare_for_sending(frames)
        return events

    def _receive_data_frame(self, frame: DataFrame) -> tuple[list[Frame], list[Event]]:
        try:
            return super()._receive_data_frame(frame)
        except InvalidBodyLengthError:
            # The connection window was charged before the stream raised: give it back,
            # since the stream's bytes will never be handed out.
            stream = self.streams[frame.stream_id]
            frames, events = self._reject(stream, ErrorCodes.PROTOCOL_ERROR)
            increment = self._inbound_flow_control_window_manager.process_bytes(
                frame.flow_controlled_length
            )
            if increment:
                update = WindowUpdateFrame(0)
                update.window_increment = increment
                frames.insert(0, update)
            return frames, events

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[Event]]:
        # Neither close the state machine nor drop queued output: streams up to
        # last_stream_id may still complete (RFC 9113 §6.8).
        event = ConnectionTerminated()
        event.error_code = frame.error_code
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]

    def _reject(self, stream: H2Stream, code: ErrorCodes) -> tuple[list[Frame], list[Event]]:
        """Close ``stream`` with RST_STREAM(code) whatever state h2 left it in."""
        machine = stream.state_machine
        machine.state = StreamState.CLOSED
        machine.stream_closed_by = StreamClosedBy.SEND_RST_STREAM
        rst = RstStreamFrame(stream.stream_id)
        rst.error_code = code
        event = StreamRejected(stream_id=stream.stream_id, error_code=code, remote_reset=False)
        return [rst], [event]


class _DecoderShim:
    """``hpack.Decoder``'s interface for h2, on eg's decoder (fix 8)."""

    __slots__ = ("_decode", "_decoder")

    def __init__(self, decoder: Decoder) -> None:
        self._decoder = decoder
        self._decode = decoder.decode

    def decode(self, data: bytes | memoryview, raw: bool = False) -> list[tuple[bytes, bytes]]:
        try:
            return self._decode(data)
        except HeaderListTooLarge as exc:
            raise OversizedHeaderListError(str(exc)) from None
        except HpackError as exc:
            raise HPACKDecodingError(str(exc)) from None

    @property
    def max_header_list_size(self) -> int:
        return self._decoder.max_header_list_size

    @max_header_list_size.setter
    def max_header_list_size(self, size: int) -> None:
        self._decoder.max_header_list_size = size

    @property
    def max_allowed_table_size(self) -> int:
        return self._decoder.max_table_size

    @max_allowed_table_size.setter
    def max_allowed_table_size(self, size: int) -> None:
        self._decoder.max_table_size = size


class _EncoderShim:
    """``hpack.Encoder``'s interface for h2, on eg's encoder (fix 8)."""

    __slots__ = ("_encode", "_resize", "_size")

    def __init__(self, encoder: Encoder) -> None:
        self._encode = encoder.encode
        self._resize = encoder.set_max_table_size
        self._size = 4096

    def encode(self, headers: Iterable[tuple[bytes, bytes]], huffman: bool = True) -> bytes:
        return self._encode(headers)

    @property
    def header_table_size(self) -> int:
        return self._size

    @header_table_size.setter
    def header_table_size(self, size: int) -> None:
        self._size = size
        self._resize(size)


def _is_malformed(exc: Exception) -> bool:
    """A plain ProtocolError (h2's validation) or a body length mismatch; not a subclass
    with its own meaning (StreamClosedError, FlowControlError, TooManyStreamsError...)."""
    return type(exc) in _MALFORMED


class _BoundedFrameBuffer(FrameBuffer):
    """h2's frame buffer with a byte cap on HEADERS + CONTINUATION (fix 4), and the frame
    length checked as soon as the 9-byte frame header is in (fix 6). It also counts tiny
    header-block fragments for the glitch budget."""

    def __init__(self, *, server: bool, limit: int) -> None:
        super().__init__(server=server)
        self._limit = limit
        #: Fragments shorter than ``TINY_FRAGMENT`` that did not end their block.
        self.tiny = 0

    def __next__(self) -> Frame:
        data = self._data
        if len(data) >= 9 and int.from_bytes(data[:3]) > self.max_frame_size:
            msg = f"frame length {int.from_bytes(data[:3])} over {self.max_frame_size}"
            raise FrameTooLargeError(msg)
        return super().__next__()

    def _update_header_buffer(self, f: Frame | None) -> Frame | None:
        if (
            isinstance(f, HeadersFrame | PushPromiseFrame | ContinuationFrame)
            and "END_HEADERS" not in f.flags
            and len(f.data) < TINY_FRAGMENT
        ):
            self.tiny += 1
        out = super()._update_header_buffer(f)
        pending = self._headers_buffer
        if pending:
            size = sum(len(part.data) for part in pending)
        elif isinstance(out, HeadersFrame | PushPromiseFrame | ContinuationFrame):
            size = len(out.data)
        else:
            return out
        if size > self._limit:
            msg = f"header block of {size} bytes exceeds {self._limit}"
            raise DenialOfServiceError(msg)
        return out
