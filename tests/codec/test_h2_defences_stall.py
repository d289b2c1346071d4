"""HTTP/2 defences: the zero-window stall timer and the weighted glitch budget.

A real h2 peer and explicit ``now`` values drive the codecs. Stall: a peer that never
opens its window while we hold bytes for it gets one PING half-way through
``zero_window_timeout`` and, at the full timeout, GOAWAY ENHANCE_YOUR_CALM and
``LimitExceeded(kind="h2_zero_window")``; any byte sent restarts the clock. Glitches:
each oddity in ``_context``'s weight table adds its weight; past ``max_glitches`` within
``glitch_window`` seconds the connection ends with ``kind="h2_glitches"``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from h2.errors import ErrorCodes
from h2.events import DataReceived, PingReceived
from h2.settings import SettingCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
)

from eg.core.codec.h2._context import (
    DEFAULT_MAX_GLITCHES,
    DEFAULT_ZERO_WINDOW_TIMEOUT,
    GLITCH_ANSWERED,
    GLITCH_EMPTY_DATA,
    GLITCH_IDLE_PRIORITY,
    GLITCH_MALFORMED,
    GLITCH_REFUSED,
    GLITCH_STREAM_ERROR,
    GLITCH_TINY_FRAGMENT,
    GLITCH_UNKNOWN_FRAME,
    GLITCH_UNSOLICITED_ACK,
    GLITCH_WINDOW,
    TINY_FRAGMENT,
    H2Context,
)
from eg.core.codec.h2.client import H2ClientCodec
from eg.core.errors import LimitExceeded
from eg.core.message import Body, RequestHead, Reset, ResetCode, ResponseHead, Side

from .test_h2_server import goaway_code
from .test_h2_support import (
    GET,
    ClientHarness,
    ServerHarness,
    context,
    of_type,
    post,
    wire,
)

T0 = 1000.0  # a monotonic clock well away from zero
TIMEOUT = DEFAULT_ZERO_WINDOW_TIMEOUT
PING_AT = TIMEOUT / 2
BIG = 200_000  # far more than the h2 peer's 65,535-byte windows


def test_defaults_match_the_mission() -> None:
    ctx = context()
    assert (ctx.zero_window_timeout, ctx.zero_window_ping) == (30.0, 15.0)
    assert (ctx.max_glitches, ctx.glitch_window) == (200, 60.0)
    assert (DEFAULT_MAX_GLITCHES, GLITCH_WINDOW) == (200, 60.0)


# -- zero-window stall: server (the client never opens its window) ----------------------------


def stalled_server(*, at: float = T0, ctx: H2Context | None = None) -> tuple[ServerHarness, int]:
    """A response bigger than the client's window, sent at ``at``; the stall clock is
    stamped there (``on_timer`` at once, as the reactor does for a past deadline)."""
    h = ServerHarness(ctx)
    sid = h.request(GET)
    h.to_server(now=at)
    h.server.send(ResponseHead(stream_id=sid, status=200, headers=[], end_stream=False))
    h.server.send(Body(stream_id=sid, data=b"z" * BIG, end_stream=True))
    # The stall began in send(), which has no now: the deadline is the last now seen.
    assert h.server.deadline() == at
    h.server.on_timer(at)
    assert h.server.deadline() == at + PING_AT
    h.to_peer()
    assert h.server.buffered_bytes == BIG - 65535
    return h, sid


def pings(h: ServerHarness | ClientHarness) -> list[PingReceived]:
    return of_type(h.to_peer(), PingReceived)


def test_stall_pings_half_way_then_closes_at_the_timeout() -> None:
    h, _ = stalled_server()
    h.server.on_timer(T0 + PING_AT - 0.1)
    assert pings(h) == []
    assert h.server.deadline() == T0 + PING_AT
    h.server.on_timer(T0 + PING_AT)
    assert len(pings(h)) == 1
    assert h.server.deadline() == T0 + TIMEOUT
    h.server.on_timer(T0 + TIMEOUT - 0.1)  # nothing due: no second PING, no close
    assert pings(h) == []
    assert not h.server.wants_close()
    with pytest.raises(LimitExceeded) as info:
        h.server.on_timer(T0 + TIMEOUT)
    err = info.value
    assert err.kind == "h2_zero_window"
    assert err.side is Side.DOWNSTREAM
    assert "PING unanswered" in str(err)
    assert goaway_code(h) == ErrorCodes.ENHANCE_YOUR_CALM
    assert h.server.wants_close()
    assert h.server.active_streams == 0
    assert h.server.buffered_bytes == 0
    assert h.server.deadline() is None


def test_an_answered_ping_does_not_save_a_shut_window() -> None:
    h, _ = stalled_server()
    h.server.on_timer(T0 + PING_AT)
    h.to_peer()  # the peer acknowledges the PING...
    h.to_server(now=T0 + PING_AT + 0.05)
    assert h.server.deadline() == T0 + TIMEOUT  # ...but opens no window
    with pytest.raises(LimitExceeded) as info:
        h.server.on_timer(T0 + TIMEOUT)
    assert "PING answered" in str(info.value)


def test_a_late_timer_closes_without_pinging_first() -> None:
    h, _ = stalled_server()
    with pytest.raises(LimitExceeded):
        h.server.on_timer(T0 + TIMEOUT + 5)
    assert pings(h) == []


def test_window_opened_in_time_ends_the_stall() -> None:
    h, sid = stalled_server()
    h.server.on_timer(T0 + PING_AT)
    got = 65535  # taken by stalled_server(), never acknowledged until now
    h.peer.acknowledge_received_data(got, sid)
    for _ in range(10):  # the peer reads and returns credit as it goes
        h.to_server(now=T0 + 20)
        size = sum(len(e.data) for e in of_type(h.to_peer(), DataReceived))
        got += size
        if size:
            h.peer.acknowledge_received_data(size, sid)
    assert got == BIG
    assert h.server.buffered_bytes == 0
    assert h.server.deadline() is None
    h.server.on_timer(T0 + 1000)  # nothing pending: a no-op
    assert not h.server.wants_close()
    assert wire(h.server) == b""


def test_progress_restarts_the_clock() -> None:
    h, sid = stalled_server()
    h.server.on_timer(T0 + PING_AT)
    h.to_peer()
    h.peer.acknowledge_received_data(65535, sid)  # one window's worth, not enough
    h.to_server(now=T0 + 20)
    assert h.server.buffered_bytes > 0
    # Restarted at the feed that let bytes flow; its PING is owed afresh.
    assert h.server.deadline() == T0 + 20 + PING_AT
    h.server.on_timer(T0 + TIMEOUT)  # the old deadline passes harmlessly
    assert not h.server.wants_close()
    h.server.on_timer(T0 + 20 + PING_AT)
    assert h.server.deadline() == T0 + 20 + TIMEOUT
    with pytest.raises(LimitExceeded):
        h.server.on_timer(T0 + 20 + TIMEOUT)


def test_a_late_ack_of_our_ping_is_no_glitch() -> None:
    h, sid = stalled_server(ctx=context(max_glitches=0))  # any glitch would end it
    h.server.on_timer(T0 + PING_AT)
    ping = wire(h.server)  # held back: the window opens before the PING arrives
    h.peer.acknowledge_received_data(65535, sid)
    h.to_server(now=T0 + 16)  # progress: this stall (and its PING) is over
    assert h.server.deadline() == T0 + 16 + PING_AT
    h.peer.receive_data(ping)
    h.to_peer()
    h.to_server(now=T0 + 17)  # the ACK of the old stall's PING
    assert not h.server.wants_close()
    assert h.server.deadline() == T0 + 16 + PING_AT
    # It does not answer this stall's PING either.
    h.server.on_timer(T0 + 16 + PING_AT)
    with pytest.raises(LimitExceeded) as info:
        h.server.on_timer(T0 + 16 + TIMEOUT)
    assert info.value.kind == "h2_zero_window"
    assert "PING unanswered" in str(info.value)


def test_stall_started_in_send_is_stamped_by_the_next_feed() -> None:
    h = ServerHarness()
    sid = h.request(GET)
    h.to_server(now=T0)
    h.server.send(ResponseHead(stream_id=sid, status=200, headers=[], end_stream=False))
    h.server.send(Body(stream_id=sid, data=b"z" * BIG, end_stream=False))
    assert h.server.deadline() == T0  # due: the clock needs a now
    h.to_peer()
    h.server.feed(b"", T0 + 7)
    assert h.server.deadline() == T0 + 7 + PING_AT


def test_connection_window_stall_ignores_stream_credit() -> None:
    # A client with a huge stream window but the default 65,535-byte connection window.
    h = ServerHarness()
    h.peer.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 1_000_000})
    sid = h.request(GET)
    h.to_server(now=T0)
    h.to_peer()
    h.server.send(ResponseHead(stream_id=sid, status=200, headers=[], end_stream=False))
    h.server.send(Body(stream_id=sid, data=b"z" * BIG, end_stream=True))
    h.server.on_timer(T0)
    h.to_peer()
    assert h.server.buffered_bytes == BIG - 65535
    # Stream-level credit alone lets nothing flow: the stall goes on.
    h.peer.increment_flow_control_window(100_000, stream_id=sid)
    h.to_server(now=T0 + 10)
    assert h.server.deadline() == T0 + PING_AT
    # Connection credit does.
    h.peer.increment_flow_control_window(BIG)
    h.to_server(now=T0 + 11)
    assert h.server.buffered_bytes == 0
    assert h.server.deadline() is None


def test_settings_initial_window_zero_stalls_everything() -> None:
    h = ServerHarness()
    h.peer.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 0})
    sid = h.request(GET)
    h.to_server(now=T0)
    h.to_peer()
    h.server.send(ResponseHead(stream_id=sid, status=200, headers=[], end_stream=False))
    h.server.send(Body(stream_id=sid, data=b"x" * 10, end_stream=True))
    assert h.server.buffered_bytes == 10
    h.server.on_timer(T0 + 1)
    assert h.server.deadline() == T0 + 1 + PING_AT
    with pytest.raises(LimitExceeded):
        h.server.on_timer(T0 + 1 + TIMEOUT)


def test_a_larger_initial_window_ends_the_stall() -> None:
    h = ServerHarness()
    h.peer.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 0})
    sid = h.request(GET)
    h.to_server(now=T0)
    h.to_peer()
    h.server.send(ResponseHead(stream_id=sid, status=200, headers=[], end_stream=False))
    h.server.send(Body(stream_id=sid, data=b"x" * 10, end_stream=True))
    h.server.on_timer(T0)
    h.peer.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 65535})
    h.to_server(now=T0 + 29)
    assert h.server.deadline() is None


def test_bytes_on_another_stream_count_as_progress() -> None:
    # Progress is connection-wide (see _codec): a stream starved on its own window
    # restarts its clock whenever another stream's bytes flow.
    h = ServerHarness()
    h.peer.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    starved = h.request(GET)
    other = h.request(GET)
    h.to_server(now=T0)
    h.to_peer()
    for sid in (starved, other):
        h.server.send(ResponseHead(stream_id=sid, status=200, headers=[], end_stream=False))
    h.server.send(Body(stream_id=starved, data=b"s" * 5000, end_stream=False))
    h.server.on_timer(T0 + 1)
    h.server.on_timer(T0 + 1 + PING_AT)
    assert h.server.deadline() == T0 + 1 + TIMEOUT
    h.server.send(Body(stream_id=other, data=b"o" * 500, end_stream=False))  # fast path
    assert h.server.deadline() == T0 + 1 + PING_AT  # restarted: due at the last now
    h.server.on_timer(T0 + 20)
    assert h.server.deadline() == T0 + 20 + PING_AT


@pytest.mark.parametrize("how", ["our reset", "peer reset", "eof"])
def test_no_stall_once_nothing_waits(how: str) -> None:
    h = ServerHarness()
    stalled, other = h.request(GET), h.request(GET)
    h.to_server(now=T0)
    for sid in (stalled, other):
        h.server.send(ResponseHead(stream_id=sid, status=200, headers=[], end_stream=False))
    h.server.send(Body(stream_id=stalled, data=b"z" * BIG, end_stream=True))
    h.to_peer()
    h.server.on_timer(T0)
    h.server.on_timer(T0 + PING_AT)
    assert h.server.deadline() == T0 + TIMEOUT
    last = T0 + PING_AT
    if how == "our reset":
        h.server.send(Reset(stream_id=stalled, code=ResetCode.CANCEL, side=Side.UPSTREAM))
    elif how == "peer reset":
        last = T0 + 20
        h.peer.reset_stream(stalled, ErrorCodes.CANCEL)
        assert h.to_server(now=last) == [
            Reset(stream_id=stalled, code=ResetCode.CANCEL, side=Side.DOWNSTREAM)
        ]
    else:
        h.server.feed_eof(T0 + 20)
    assert h.server.buffered_bytes == 0
    assert h.server.deadline() is None
    if how == "eof":
        h.server.on_timer(T0 + 100)  # a timer left armed: harmless
        assert h.server.wants_close()
        return
    assert not h.server.wants_close()
    # The next bytes to wait (the connection window is still shut) start a new stall:
    # due at once to be stamped, not the old stall's deadline.
    h.server.send(Body(stream_id=other, data=b"again", end_stream=True))
    assert h.server.buffered_bytes == 5
    assert h.server.deadline() == last
    h.server.on_timer(T0 + 21)
    assert h.server.deadline() == T0 + 21 + PING_AT


def test_no_deadline_without_waiting_bytes() -> None:
    h = ServerHarness()
    sid = h.request(GET)
    h.to_server(now=T0)
    assert h.server.deadline() is None
    h.server.send(ResponseHead(stream_id=sid, status=200, headers=[], end_stream=False))
    h.server.send(Body(stream_id=sid, data=b"fits", end_stream=True))
    assert h.server.deadline() is None


# -- zero-window stall: client (the upstream never opens its window) --------------------------


def test_client_stall_closes_the_upstream_connection() -> None:
    h = ClientHarness()
    sid = h.get(method=b"POST", end=False)
    h.client.send(Body(stream_id=sid, data=b"u" * BIG, end_stream=True))
    h.to_peer()
    h.client.on_timer(T0)
    assert h.client.deadline() == T0 + PING_AT
    h.client.on_timer(T0 + PING_AT)
    assert len(pings(h)) == 1
    with pytest.raises(LimitExceeded) as info:
        h.client.on_timer(T0 + TIMEOUT)
    assert info.value.kind == "h2_zero_window"
    assert info.value.side is Side.UPSTREAM
    assert h.client.wants_close()
    assert not h.client.can_open()


def test_client_stall_before_any_feed_is_due_at_once() -> None:
    client = H2ClientCodec(context())
    sid = client.open_stream()
    client.send(RequestHead(stream_id=sid, method=b"POST", scheme=b"https",
                            authority=b"up.example", path=b"/", headers=[], end_stream=False))
    client.send(Body(stream_id=sid, data=b"u" * BIG, end_stream=True))
    assert client.deadline() == float("-inf")  # no now seen yet: due at once
    client.on_timer(5.0)
    assert client.deadline() == 5.0 + PING_AT


# -- glitch budget ---------------------------------------------------------------------------

UNKNOWN_FRAME = b"\x00\x00\x00\xfa\x00\x00\x00\x00\x00"  # type 0xfa, empty, stream 0


def test_201_glitches_within_the_window_trip_the_budget() -> None:
    h = ServerHarness()
    for i in range(200):
        h.server.feed(UNKNOWN_FRAME, T0 + i * 0.29)  # 200 within 58 s
    assert not h.server.wants_close()
    with pytest.raises(LimitExceeded) as info:
        h.server.feed(UNKNOWN_FRAME, T0 + 59.9)
    assert info.value.kind == "h2_glitches"
    assert info.value.status_hint == 429
    assert goaway_code(h) == ErrorCodes.ENHANCE_YOUR_CALM
    assert h.server.wants_close()


def test_the_same_glitches_spread_over_more_than_the_window_pass() -> None:
    h = ServerHarness()
    for i in range(200):
        h.server.feed(UNKNOWN_FRAME, T0 + i * 0.29)
    for i in range(200):  # the next 200 from 60 s after the first
        h.server.feed(UNKNOWN_FRAME, T0 + GLITCH_WINDOW + i * 0.29)
    assert not h.server.wants_close()
    h.request(GET)
    assert len(h.to_server(now=T0 + 200)) == 1  # still serving


def test_weights_add_up_and_local_errors_keep_their_own_budget() -> None:
    # 20 malformed requests per 10 s stay under the local-error budget (100 per 10 s) but
    # weigh 2 each: 100 of them are the whole glitch budget, the 101st trips it.
    h = ServerHarness(lax=True)
    for window in range(5):
        for _ in range(20):
            h.request([*GET, (b"connection", b"close")])
        h.to_server(now=T0 + 10 * window)
        h.to_peer()
    assert not h.server.wants_close()
    h.request([*GET, (b"connection", b"close")])
    with pytest.raises(LimitExceeded) as info:
        h.to_server(now=T0 + 55)
    assert info.value.kind == "h2_glitches"


# One glitch of each kind in the weight table, committed by a real (or hand-built) peer.


def _unknown(h: ServerHarness) -> None:
    h.server.feed(UNKNOWN_FRAME, T0)


def _empty_data(h: ServerHarness) -> None:
    sid = h.request(post(None), end=False)
    h.to_server(now=T0)
    h.peer.send_data(sid, b"", end_stream=False)
    h.to_server(now=T0)


def _padding_only_data(h: ServerHarness) -> None:
    sid = h.request(post(None), end=False)
    h.to_server(now=T0)
    h.peer.send_data(sid, b"", end_stream=False, pad_length=20)
    h.to_server(now=T0)


def _idle_priority(h: ServerHarness) -> None:
    h.server.feed(PriorityFrame(101, depends_on=0, stream_weight=15).serialize(), T0)


def _closed_priority(h: ServerHarness) -> None:
    sid = h.request(GET)
    h.to_server(now=T0)
    h.server.send(ResponseHead(stream_id=sid, status=204, headers=[], end_stream=True))
    h.server.feed(PriorityFrame(sid, depends_on=0, stream_weight=15).serialize(), T0)


def _unsolicited_ack(h: ServerHarness) -> None:
    h.server.feed(PingFrame(0, opaque_data=b"12345678", flags=["ACK"]).serialize(), T0)


def _tiny_fragment(h: ServerHarness) -> None:
    block = h.peer.encoder.encode(GET)
    first = HeadersFrame(1, data=block[:5], flags=["END_STREAM"])
    rest = ContinuationFrame(1, data=block[5:], flags=["END_HEADERS"])
    [head] = h.server.feed(first.serialize() + rest.serialize(), T0)
    assert isinstance(head, RequestHead)


def _refused(h: ServerHarness) -> None:
    # Hand-built: the h2 peer itself keeps to our SETTINGS_MAX_CONCURRENT_STREAMS (2).
    frames = b"".join(
        HeadersFrame(sid, data=h.peer.encoder.encode(post(None)), flags=["END_HEADERS"])
        .serialize()
        for sid in (1, 3, 5)
    )
    assert [m.stream_id for m in h.server.feed(frames, T0)] == [1, 3]


def _answered(h: ServerHarness) -> None:
    h.request([*GET, (b"x_y", b"1")])  # "_" in a name: 400 from here
    assert h.to_server(now=T0) == []


def _malformed(h: ServerHarness) -> None:
    h.request([*GET, (b"connection", b"close")])
    assert h.to_server(now=T0) == []


def _length_mismatch(h: ServerHarness) -> None:
    sid = h.request(post(10), end=False)
    h.peer.send_data(sid, b"short", end_stream=True)
    h.to_server(now=T0)


def _data_after_end_stream(h: ServerHarness) -> None:
    sid = h.request(GET)
    h.to_server(now=T0)
    h.server.feed(DataFrame(sid, b"late").serialize(), T0)


GLITCHES: list[tuple[Callable[[ServerHarness], None], int]] = [
    (_unknown, GLITCH_UNKNOWN_FRAME),
    (_empty_data, GLITCH_EMPTY_DATA),
    (_padding_only_data, GLITCH_EMPTY_DATA),
    (_idle_priority, GLITCH_IDLE_PRIORITY),
    (_closed_priority, GLITCH_IDLE_PRIORITY),
    (_unsolicited_ack, GLITCH_UNSOLICITED_ACK),
    (_tiny_fragment, GLITCH_TINY_FRAGMENT),
    (_refused, GLITCH_REFUSED),
    (_answered, GLITCH_ANSWERED),
    (_malformed, GLITCH_MALFORMED),
    (_length_mismatch, GLITCH_MALFORMED),
    (_data_after_end_stream, GLITCH_STREAM_ERROR),
]


@pytest.mark.parametrize(("commit", "weight"), GLITCHES, ids=[g.__name__ for g, _ in GLITCHES])
def test_each_glitch_weighs_its_table_weight(
    commit: Callable[[ServerHarness], None], weight: int
) -> None:
    # A budget of weight - 1 is exceeded by one such glitch; a budget of weight is not.
    roomy = ServerHarness(context(max_glitches=weight, max_concurrent_streams=2), lax=True)
    commit(roomy)
    assert not roomy.server.wants_close()
    tight = ServerHarness(context(max_glitches=weight - 1, max_concurrent_streams=2), lax=True)
    with pytest.raises(LimitExceeded) as info:
        commit(tight)
    assert info.value.kind == "h2_glitches"


def test_ordinary_traffic_is_no_glitch() -> None:
    h = ServerHarness(context(max_glitches=0))  # any glitch would end the connection
    sid = h.request(post(None), end=False)
    h.to_server(now=T0)
    # PRIORITY for an open stream, and priority carried in HEADERS.
    h.server.feed(PriorityFrame(sid, depends_on=0, stream_weight=200).serialize(), T0)
    h.peer.send_headers(h.peer.get_next_available_stream_id(), GET, end_stream=True,
                        priority_weight=16)
    # A header block split where it no longer fits a frame.
    big = [*GET, (b"x-big", b"v" * 40_000)]
    h.peer.send_headers(h.peer.get_next_available_stream_id(), big, end_stream=True)
    # An empty DATA that ends the stream, a PING, a SETTINGS, a peer reset.
    h.peer.send_data(sid, b"", end_stream=True)
    h.peer.ping(b"pingpong")
    h.peer.update_settings({})
    h.peer.reset_stream(sid, ErrorCodes.CANCEL)
    msgs = h.to_server(now=T0)
    assert sum(isinstance(m, RequestHead) for m in msgs) == 2
    assert not h.server.wants_close()


def test_big_header_fragments_are_not_tiny() -> None:
    h = ServerHarness(context(max_glitches=0))
    block = h.peer.encoder.encode([*GET, (b"x-big", b"v" * 4000)])
    first = HeadersFrame(1, data=block[:TINY_FRAGMENT], flags=["END_STREAM"])
    rest = ContinuationFrame(1, data=block[TINY_FRAGMENT:], flags=["END_HEADERS"])
    [head] = h.server.feed(first.serialize() + rest.serialize(), T0)
    assert isinstance(head, RequestHead)


def test_client_counts_upstream_glitches() -> None:
    h = ClientHarness(context(max_glitches=1))
    h.client.feed(UNKNOWN_FRAME, T0)
    with pytest.raises(LimitExceeded) as info:
        h.client.feed(UNKNOWN_FRAME, T0)
    assert info.value.kind == "h2_glitches"
    assert info.value.side is Side.UPSTREAM
    assert info.value.status_hint == 502
    assert h.client.wants_close()


def test_empty_data_on_a_dropped_upstream_stream_is_a_glitch() -> None:
    h = ClientHarness(context(max_glitches=0))
    sid = h.get()
    h.to_peer()
    h.peer.send_headers(sid, [(b":status", b"200")])
    h.to_client(now=T0)
    # GOAWAY naming no stream: ours is dropped as never processed, but h2 keeps it open.
    goaway = GoAwayFrame(0, last_stream_id=0, error_code=0).serialize()
    [reset] = h.client.feed(goaway, T0)
    assert reset == Reset(stream_id=sid, code=ResetCode.REFUSED_STREAM, side=Side.UPSTREAM)
    h.client.feed(DataFrame(sid, b"x").serialize(), T0)  # data for it: dropped, no glitch
    with pytest.raises(LimitExceeded) as info:
        h.client.feed(DataFrame(sid, b"").serialize(), T0)
    assert info.value.kind == "h2_glitches"
