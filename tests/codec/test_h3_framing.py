"""Request-stream framing of ``EgH3Connection`` (RFC 9114 §4.1, §7, §9) over real qh3 QUIC.

Two QUIC connections (qh3's client, eg's ``EgQuicConnection`` server, and the reverse for
responses) exchange datagrams in memory. One side writes raw bytes on a request stream,
cut at chosen places with a pump after each piece so each arrives on its own; the other
side's ``EgH3Connection`` must report the same message whatever the cuts, and answer
framing errors with the connection error RFC 9114 names.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qh3._hazmat import QpackEncoder
from qh3.h3.connection import ErrorCode, ProtocolError
from qh3.h3.events import (
    DataReceived,
    H3Event,
    Headers,
    HeadersReceived,
    InformationalHeadersReceived,
    StreamReset,
)
from qh3.quic.events import ConnectionTerminated, HandshakeCompleted

from eg.core.codec.h2._context import H2Context
from eg.core.codec.h3._connection import EgH3Connection, EgQuicConnection, frame_head
from eg.core.codec.h3._context import H3Context
from eg.core.codec.h3.retry import parse_long_header
from tests.integration.test_tls import make_certs

ADDR = ("127.0.0.1", 4433)
NOW = 1000.0
REQUEST: Headers = [(b":method", b"POST"), (b":scheme", b"https"),
                    (b":authority", b"example.test"), (b":path", b"/up")]
TRAILERS: Headers = [(b"x-checksum", b"abc")]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certs(tmp_path_factory.mktemp("certs"))


def context(**overrides: int) -> H3Context:
    args = {"idle_timeout": 30.0, "max_udp_payload": 1350, "max_requests": 1000,
            "max_field_section_size": 1 << 20, "qpack_max_table_capacity": 0,
            "qpack_blocked_streams": 0, "max_stream_data": 1 << 20, "max_data": 4 << 20,
            "hold_limit": 4 << 20, **overrides}
    return H3Context(fields=H2Context(), **args)  # type: ignore[arg-type]


class Side:
    """One end: its QUIC connection, its HTTP/3 layer once up, what it reported."""

    def __init__(self, quic: EgQuicConnection, ctx: H3Context) -> None:
        self.quic = quic
        self.ctx = ctx
        self.h3: EgH3Connection | None = None
        self.events: list[H3Event] = []
        self.terminated: ConnectionTerminated | None = None

    def drain(self) -> None:
        while (event := self.quic.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                self.h3 = EgH3Connection(self.quic, self.ctx)
            elif isinstance(event, ConnectionTerminated):
                self.terminated = event
            elif self.h3 is not None:
                self.events.extend(self.h3.handle_event(event))


class Pair:
    def __init__(self, certs: Path, ctx: H3Context) -> None:
        self.now = NOW
        self.client = Side(EgQuicConnection(configuration=ctx.client_configuration(
            server_name="localhost", verify=True, ca_file=str(certs / "ca.pem"))), ctx)
        self.client.quic.connect(ADDR, NOW)
        first = self.client.quic.datagrams_to_send(NOW)
        info = parse_long_header(first[0][0])
        assert info is not None
        self.server = Side(EgQuicConnection(
            configuration=ctx.server_configuration(str(certs / "cert.pem"),
                                                   str(certs / "key.pem")),
            original_destination_connection_id=info.dcid), ctx)
        for data, _addr in first:
            self.server.quic.receive_datagram(data, ADDR, self.now)
        self.pump()
        assert self.client.h3 is not None and self.server.h3 is not None

    def pump(self) -> None:
        """Move datagrams until both sides are quiet; the clock advances (qh3 paces)."""
        quiet = 0
        for _ in range(1000):
            self.now += 0.002
            moved = False
            for src, dst in ((self.client, self.server), (self.server, self.client)):
                timer = src.quic.get_timer()
                if timer is not None and timer <= self.now:
                    src.quic.handle_timer(self.now)
                for data, _addr in src.quic.datagrams_to_send(self.now):
                    dst.quic.receive_datagram(data, ADDR, self.now)
                    moved = True
                src.drain()
                dst.drain()
            quiet = 0 if moved else quiet + 1
            if quiet == 3:
                return
        raise AssertionError("the pair does not settle")

    def client_request(self) -> int:
        """The client's EgH3Connection sends a GET; returns its stream id."""
        h3 = self.client.h3
        assert h3 is not None
        sid = self.client.quic.get_next_available_stream_id()
        h3.open_request(sid)
        h3.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"),
                              (b":authority", b"a"), (b":path", b"/")], end_stream=True)
        self.pump()
        return sid

    def write(self, sender: Side, sid: int, data: bytes, cuts: Iterable[int],
              *, fin: bool = True) -> None:
        """``data`` on stream ``sid`` in pieces cut at ``cuts``, one pump per piece."""
        start = 0
        for cut in [*cuts, len(data)]:
            piece = data[start:cut]
            start = cut
            last = cut == len(data)
            if piece or (last and fin):
                sender.quic.send_stream_data(sid, piece, last and fin)
                self.pump()


def block(headers: Headers, sid: int = 0) -> bytes:
    """A HEADERS frame (QPACK without a dynamic table)."""
    _encoder, data = QpackEncoder().encode(sid, headers)
    return frame_head(1, len(data)) + data


def data_frame(payload: bytes) -> bytes:
    return frame_head(0, len(payload)) + payload


def message(events: list[H3Event]) -> tuple[list[Headers], bytes, bool]:
    """Header sections, body and whether the last event ended the stream."""
    sections = [list(e.headers) for e in events if isinstance(e, HeadersReceived)]
    body = b"".join(e.data for e in events if isinstance(e, DataReceived))
    ended = bool(events) and getattr(events[-1], "stream_ended", False)
    return sections, body, ended


UPLOAD = (block(REQUEST) + data_frame(b"hello ") + bytes((0x21, 3)) + b"xyz"  # grease
          + data_frame(b"") + data_frame(b"world" * 300) + block(TRAILERS))


@pytest.mark.parametrize("step", [1, 7, 600])
def test_any_cut_gives_the_same_message(certs: Path, step: int) -> None:
    pair = Pair(certs, context())
    pair.write(pair.client, 0, UPLOAD, range(step, len(UPLOAD), step))
    sections, body, ended = message(pair.server.events)
    assert sections == [REQUEST, TRAILERS]
    assert body == b"hello " + b"world" * 300
    assert ended
    assert pair.server.terminated is None


def test_trailers_wait_for_a_fin_sent_alone(certs: Path) -> None:
    pair = Pair(certs, context())
    pair.write(pair.client, 0, block(REQUEST) + block(TRAILERS), [], fin=False)
    assert message(pair.server.events) == ([REQUEST], b"", False)
    pair.client.quic.send_stream_data(0, b"", True)
    pair.pump()
    last = pair.server.events[-1]
    assert isinstance(last, HeadersReceived) and last.stream_ended
    assert list(last.headers) == TRAILERS


def test_head_with_fin_is_one_event(certs: Path) -> None:
    pair = Pair(certs, context())
    pair.write(pair.client, 0, block(REQUEST), [])
    assert len(pair.server.events) == 1
    assert message(pair.server.events) == ([REQUEST], b"", True)


def connection_error(pair: Pair, side: str = "client") -> int | None:
    """The error code of the CONNECTION_CLOSE ``side`` received (after its draining
    period, when qh3 reports it), or None if the connection stayed up."""
    end = getattr(pair, side)
    for _ in range(200):
        if end.terminated is not None:
            return int(end.terminated.error_code)
        pair.now += 0.05
        pair.pump()
    return None


@pytest.mark.parametrize(("data", "code"), [
    (data_frame(b"x"), ErrorCode.H3_FRAME_UNEXPECTED),                    # DATA before HEADERS
    (block(REQUEST) + bytes((0x4, 0)), ErrorCode.H3_FRAME_UNEXPECTED),    # SETTINGS
    (block(REQUEST) + bytes((0x7, 1, 0)), ErrorCode.H3_FRAME_UNEXPECTED),  # GOAWAY
    (block(REQUEST) + bytes((0x9, 0)), ErrorCode.H3_FRAME_UNEXPECTED),    # HTTP/2 CONTINUATION
    (block(REQUEST) + bytes((0x5, 1, 0)), ErrorCode.H3_FRAME_UNEXPECTED),  # PUSH_PROMISE
    (block(REQUEST) + block(TRAILERS) + data_frame(b"x"), ErrorCode.H3_FRAME_UNEXPECTED),
    (block(REQUEST) + bytes((0x0, 10)) + b"short", ErrorCode.H3_FRAME_ERROR),
    (block(REQUEST)[:-1], ErrorCode.H3_FRAME_ERROR),
    (block(REQUEST) + bytes((0x40,)), ErrorCode.H3_FRAME_ERROR),           # cut varint
    (bytes((0x1, 3, 0xFF, 0xFF, 0xFF)), ErrorCode.QPACK_DECOMPRESSION_FAILED),
], ids=["data-first", "settings", "goaway", "continuation", "push-promise",
        "data-after-trailers", "data-cut", "headers-cut", "frame-head-cut", "bad-qpack"])
def test_framing_errors_close_the_connection(certs: Path, data: bytes, code: int) -> None:
    pair = Pair(certs, context())
    pair.write(pair.client, 0, data, [])
    assert connection_error(pair) == code


def test_encoded_field_section_over_the_cap(certs: Path) -> None:
    ctx = context(max_field_section_size=1000)
    pair = Pair(certs, ctx)
    # The length alone is refused: the frame's bytes never need to arrive.
    pair.write(pair.client, 0, frame_head(1, 4 * 1000 + 33) + b"\x00\x00", [], fin=False)
    assert connection_error(pair) == ErrorCode.H3_EXCESSIVE_LOAD


def test_incomplete_blocks_of_all_streams_share_one_allowance(certs: Path) -> None:
    """Each HEADERS frame is under the cap, but three held incomplete at once are not:
    qh3 grants flow credit as data arrives, so this allowance is what bounds them."""
    pair = Pair(certs, context(max_field_section_size=1000))  # allowance 4 * 1000 + 32
    for sid in (0, 4, 8):
        pair.write(pair.client, sid, frame_head(1, 3000) + b"\x00" * 2000, [], fin=False)
    assert connection_error(pair) == ErrorCode.H3_EXCESSIVE_LOAD


def test_large_block_trickling_in(certs: Path) -> None:
    big = [*REQUEST, *((b"x-field-%d" % i, b"v" * 200) for i in range(200))]
    data = block(big)
    pair = Pair(certs, context())
    pair.write(pair.client, 0, data, range(500, len(data), 500))
    assert message(pair.server.events) == ([big], b"", True)
    assert pair.server.h3 is not None and pair.server.h3._partial == 0


def test_dynamic_table_beyond_the_advertised_zero_is_refused(certs: Path) -> None:
    """The QPACK bomb needs a dynamic table; eg advertises none (RFC 9204 §3.2.3), so a
    capacity instruction on the encoder stream ends the connection."""
    pair = Pair(certs, context())
    client_h3 = pair.client.h3
    assert client_h3 is not None and client_h3._local_encoder_stream_id is not None
    # Set Dynamic Table Capacity 4096: 001 + 5-bit prefix integer (31, then 4065).
    pair.write(pair.client, client_h3._local_encoder_stream_id, bytes((0x3F, 0xE1, 0x1F)),
               [], fin=False)
    assert connection_error(pair) == ErrorCode.QPACK_ENCODER_STREAM_ERROR


def test_stream_ended_before_its_head_is_incomplete(certs: Path) -> None:
    pair = Pair(certs, context())
    pair.write(pair.client, 0, bytes((0x21, 0)), [])  # only a grease frame, then FIN
    assert pair.server.events == []
    assert pair.client.terminated is None
    # The server answered the stream with RESET_STREAM H3_REQUEST_INCOMPLETE.
    assert pair.client.h3 is not None
    assert [(e.stream_id, e.error_code) for e in pair.client.events
            if isinstance(e, StreamReset)] == [(0, ErrorCode.H3_REQUEST_INCOMPLETE)]


def test_client_sees_informational_then_final_head(certs: Path) -> None:
    pair = Pair(certs, context())
    sid = pair.client_request()
    early = [(b":status", b"103"), (b"link", b"</a.css>")]
    final = [(b":status", b"200"), (b"content-length", b"2")]
    response = block(early, sid) + block(final, sid) + data_frame(b"ok")
    pair.write(pair.server, sid, response, range(1, len(response)))
    kinds = [type(e) for e in pair.client.events]
    assert kinds[:2] == [InformationalHeadersReceived, HeadersReceived]
    assert message(pair.client.events) == ([final], b"ok", True)


def test_client_refuses_a_push(certs: Path) -> None:
    pair = Pair(certs, context())
    sid = pair.client_request()
    pair.write(pair.server, sid, bytes((0x5, 1, 0)), [], fin=False)
    assert connection_error(pair, "server") == ErrorCode.H3_ID_ERROR


#: Frames a fuzzed stream is made of: valid ones, grease, forbidden ones, garbage.
FRAMES = st.one_of(
    st.just(block(REQUEST)),
    st.just(block(TRAILERS)),
    st.binary(max_size=40).map(data_frame),
    st.binary(max_size=40).map(lambda b: frame_head(0x21, len(b)) + b),
    st.sampled_from([bytes((0x4, 0)), bytes((0x5, 1, 0)), bytes((0x40, 0x40, 1, 0))]),
    st.binary(min_size=1, max_size=12).map(lambda b: frame_head(1, len(b)) + b),  # bad QPACK
    st.binary(max_size=12),  # anything
)


@pytest.fixture(scope="module")
def fuzz_pair(certs: Path) -> Pair:
    return Pair(certs, context())


@pytest.mark.parametrize("side", ["server", "client"])
@settings(max_examples=300, deadline=None)
@given(frames=st.lists(FRAMES, max_size=6), cuts=st.lists(st.integers(0, 200), max_size=4),
       fin=st.booleans())
def test_any_bytes_give_events_or_a_protocol_error(fuzz_pair: Pair, side: str,
                                                   frames: list[bytes], cuts: list[int],
                                                   fin: bool) -> None:
    """Whatever a peer writes on a request stream, in whatever pieces, the framing of
    either side reports events or raises an HTTP/3 protocol error (a connection error):
    nothing else escapes, and no state is left for a finished stream."""
    h3 = getattr(fuzz_pair, side).h3
    assert h3 is not None
    sid = next(STREAM_IDS)
    if side == "client":
        h3.open_request(sid)  # what a client does as it sends its request
    data = b"".join(frames)
    points = sorted({c for c in cuts if c < len(data)})
    pieces = [data[a:b] for a, b in itertools.pairwise([0, *points, len(data)])]
    try:
        for i, piece in enumerate(pieces):
            h3._receive_request(sid, piece, fin and i == len(pieces) - 1)
    except ProtocolError:
        h3.forget_request(sid)
    if fin:
        assert sid not in h3._requests
    h3.forget_request(sid)
    assert h3._partial == 0


STREAM_IDS = itertools.count(1 << 20, 4)
