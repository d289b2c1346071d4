"""H2ClientCodec against a real h2 server: requests out, responses in, GOAWAY, limits.

Responses are fed whole and byte by byte and must give the same messages. A malformed
response costs only its stream; GOAWAY turns streams the upstream never processed into
REFUSED_STREAM resets the caller may retry.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from h2.errors import ErrorCodes
from h2.events import (
    DataReceived,
    Event,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.settings import SettingCodes
from hyperframe.frame import PushPromiseFrame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eg.core.codec.h2._connection import H2Wire
from eg.core.errors import Closed, EgError, LimitExceeded, ProtocolError, Retry
from eg.core.message import (
    Body,
    RequestHead,
    Reset,
    ResetCode,
    ResponseHead,
    Side,
    Trailers,
)

from .test_h2_support import (
    NOW,
    ClientHarness,
    body_of,
    context,
    data_of,
    merged,
    of_type,
    wire,
)

OK = [(b":status", b"200"), (b"content-type", b"text/plain")]


def respond(h: ClientHarness, sid: int, body: bytes = b"", *, status: bytes = b"200",
            headers: list[tuple[bytes, bytes]] | None = None) -> None:
    h.peer.send_headers(sid, [(b":status", status), *(headers or [])], end_stream=not body)
    if body:
        h.peer.send_data(sid, body, end_stream=True)


# -- requests out ---------------------------------------------------------------------------


def test_get_puts_pseudo_headers_first() -> None:
    h = ClientHarness()
    sid = h.get(b"/a?b=c", headers=[(b"accept", b"*/*"), (b"x-forwarded-for", b"10.0.0.1")])
    assert sid == 1
    [req] = of_type(h.to_peer(), RequestReceived)
    assert req.headers == [
        (b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"up.example"),
        (b":path", b"/a?b=c"), (b"accept", b"*/*"), (b"x-forwarded-for", b"10.0.0.1"),
    ]
    assert req.stream_ended is not None
    assert h.client.open_stream() == 3


def test_request_fields_are_filtered_for_http2() -> None:
    h = ClientHarness()
    h.get(headers=[
        (b"connection", b"close"), (b"keep-alive", b"1"), (b"proxy-connection", b"x"),
        (b"transfer-encoding", b"chunked"), (b"upgrade", b"h2c"), (b"host", b"h"),
        (b"content-length", b"9"), (b"te", b"gzip"), (b"x-ok", b"1"),
    ])
    [req] = of_type(h.to_peer(), RequestReceived)
    assert req.headers[4:] == [(b"x-ok", b"1")]


def test_te_trailers_is_forwarded() -> None:
    h = ClientHarness()
    h.get(headers=[(b"te", b"Trailers"), (b"content-type", b"application/grpc")])
    [req] = of_type(h.to_peer(), RequestReceived)
    assert req.headers[4:] == [(b"content-type", b"application/grpc"), (b"te", b"trailers")]


def test_post_with_body_and_trailers() -> None:
    h = ClientHarness()
    sid = h.get(method=b"POST", end=False, content_length=4)
    h.client.send(Body(stream_id=sid, data=b"ab", end_stream=False))
    h.client.send(Body(stream_id=sid, data=b"cd", end_stream=True))
    events = h.to_peer()
    [req] = of_type(events, RequestReceived)
    assert (b"content-length", b"4") in req.headers
    assert data_of(events, sid) == b"abcd"
    assert of_type(events, StreamEnded)

    sid = h.get(method=b"POST", end=False)
    h.client.send(Body(stream_id=sid, data=b"x", end_stream=False))
    h.client.send(Trailers(stream_id=sid, headers=[(b"x-checksum", b"1")]))
    [trailers] = of_type(h.to_peer(), TrailersReceived)
    assert trailers.headers == [(b"x-checksum", b"1")]


def test_large_request_body_waits_for_the_window() -> None:
    h = ClientHarness()
    sid = h.get(method=b"POST", end=False)
    body = b"r" * 200_000
    h.client.send(Body(stream_id=sid, data=body, end_stream=True))
    assert h.client.buffered(sid) == 200_000 - 65535
    received = b""
    for _ in range(20):
        events = h.to_peer()
        chunk = data_of(events, sid)
        received += chunk
        if of_type(events, StreamEnded):
            break
        h.peer.acknowledge_received_data(len(chunk), sid)
        assert h.to_client() == []
    assert received == body
    assert h.client.buffered_bytes == 0


def test_head_must_follow_open_stream() -> None:
    h = ClientHarness()
    with pytest.raises(TypeError):
        h.client.send(ResponseHead(stream_id=1, status=200, headers=[], end_stream=True))
    # A head for a stream that is gone is dropped.
    h.client.send(RequestHead(stream_id=7, method=b"GET", scheme=b"https", authority=b"a",
                              path=b"/", headers=[], end_stream=True))
    assert wire(h.client) == b""


def test_out_of_order_heads_are_a_caller_error() -> None:
    h = ClientHarness()
    first = h.client.open_stream()
    second = h.client.open_stream()
    h.client.send(RequestHead(stream_id=second, method=b"GET", scheme=b"https",
                              authority=b"a", path=b"/", headers=[], end_stream=True))
    with pytest.raises(ProtocolError) as info:
        h.client.send(RequestHead(stream_id=first, method=b"GET", scheme=b"https",
                                  authority=b"a", path=b"/", headers=[], end_stream=True))
    assert info.value.side is Side.INTERNAL


# -- responses in ---------------------------------------------------------------------------


@pytest.mark.parametrize("bytewise", [False, True])
def test_response_head_and_body(bytewise: bool) -> None:
    h = ClientHarness()
    sid = h.get()
    h.to_peer()
    respond(h, sid, b"hello", headers=[(b"content-length", b"5"), (b"server", b"up")])
    msgs = merged(h.to_client(bytewise=bytewise))
    assert msgs == [
        ResponseHead(stream_id=sid, status=200, headers=[(b"server", b"up")], end_stream=False,
                     content_length=5),
        ("body", sid, b"hello", True),
    ]
    assert h.client.active_streams == 0
    assert h.client.reusable()


def test_bodiless_response_ends_on_the_head() -> None:
    h = ClientHarness()
    sid = h.get()
    h.to_peer()
    respond(h, sid, status=b"204")
    [head] = h.to_client()
    assert isinstance(head, ResponseHead)
    assert head.end_stream and head.status == 204


def test_head_response_keeps_its_content_length() -> None:
    h = ClientHarness()
    sid = h.get(method=b"HEAD")
    h.to_peer()
    respond(h, sid, headers=[(b"content-length", b"1234")])
    [head] = h.to_client()
    assert isinstance(head, ResponseHead)
    assert head.content_length == 1234 and head.end_stream


@pytest.mark.parametrize("bytewise", [False, True])
def test_informational_then_final(bytewise: bool) -> None:
    h = ClientHarness()
    sid = h.get(method=b"POST", end=False)
    h.to_peer()
    h.peer.send_headers(sid, [(b":status", b"100")])
    h.peer.send_headers(sid, [(b":status", b"103"), (b"link", b"</s.css>")])
    h.peer.send_headers(sid, OK, end_stream=True)
    msgs = h.to_client(bytewise=bytewise)
    assert [(m.status, m.end_stream) for m in msgs if isinstance(m, ResponseHead)] == [
        (100, False), (103, False), (200, True)]
    assert msgs[1].headers == [(b"link", b"</s.css>")]  # type: ignore[union-attr]
    assert h.client.response_started(sid)  # the request body is still open


@pytest.mark.parametrize("bytewise", [False, True])
def test_response_trailers(bytewise: bool) -> None:
    h = ClientHarness()
    sid = h.get(headers=[(b"te", b"trailers")])
    h.to_peer()
    h.peer.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    h.peer.send_data(sid, b"\x00\x00\x00\x00\x00")
    h.peer.send_headers(sid, [(b"grpc-status", b"0"), (b"grpc-message", b"")],
                        end_stream=True)
    msgs = merged(h.to_client(bytewise=bytewise))
    assert msgs[1:] == [
        ("body", sid, b"\x00" * 5, False),
        Trailers(stream_id=sid, headers=[(b"grpc-status", b"0"), (b"grpc-message", b"")]),
    ]


def test_response_started_tracks_the_final_head() -> None:
    h = ClientHarness()
    sid = h.get()
    h.to_peer()
    assert not h.client.response_started(sid)
    h.peer.send_headers(sid, [(b":status", b"100")])
    h.to_client()
    assert not h.client.response_started(sid)
    h.peer.send_headers(sid, OK)
    h.to_client()
    assert h.client.response_started(sid)


def window_updates(events: Iterable[Event], sid: int) -> int:
    return sum(e.delta for e in of_type(events, WindowUpdated) if e.stream_id == sid)


def test_paused_response_stream_stops_window_updates() -> None:
    h = ClientHarness()
    sid = h.get()
    h.to_peer()
    h.peer.send_headers(sid, OK)
    h.client.pause(sid)
    for _ in range(4):
        h.peer.send_data(sid, b"d" * 16384)
    assert len(body_of(h.to_client())) == 65536
    assert window_updates(h.to_peer(), sid) == 0
    assert h.peer.local_flow_control_window(sid) == 0
    h.client.resume(sid)
    assert window_updates(h.to_peer(), sid) == 65536
    h.peer.send_data(sid, b"e" * 1000, end_stream=True)
    msgs = h.to_client()
    assert msgs[-1] == Body(stream_id=sid, data=b"e" * 1000, end_stream=True)


def test_unpaused_response_returns_credit() -> None:
    h = ClientHarness()
    sid = h.get()
    h.to_peer()
    h.peer.send_headers(sid, OK)
    for _ in range(3):
        h.peer.send_data(sid, b"d" * 16384)
    h.to_client()
    assert window_updates(h.to_peer(), sid) == 32768  # h2's half-window batches


# -- resets ---------------------------------------------------------------------------------


def test_upstream_reset_becomes_reset() -> None:
    h = ClientHarness()
    sid = h.get()
    h.to_peer()
    h.peer.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
    assert h.to_client() == [
        Reset(stream_id=sid, code=ResetCode.REFUSED_STREAM, side=Side.UPSTREAM)]


def test_sent_reset_reaches_the_upstream() -> None:
    h = ClientHarness()
    sid = h.get(method=b"POST", end=False)
    h.client.send(Body(stream_id=sid, data=b"x" * 70000, end_stream=False))
    h.client.send(Reset(stream_id=sid, code=ResetCode.CANCEL, side=Side.DOWNSTREAM))
    assert h.client.buffered_bytes == 0
    [reset] = of_type(h.to_peer(), StreamReset)
    assert reset.error_code == ErrorCodes.CANCEL
    # A reset before the head went out sends nothing.
    other = h.client.open_stream()
    h.client.send(Reset(stream_id=other, code=ResetCode.CANCEL, side=Side.DOWNSTREAM))
    assert wire(h.client) == b""


@pytest.mark.parametrize("headers", [
    [(b":status", b"200"), (b"Upper", b"1")],
    [(b":status", b"200"), (b"connection", b"close")],
    [(b":status", b"200"), (b"transfer-encoding", b"chunked")],
    [(b":status", b"2000")],
    [(b":status", b"abc")],
    [(b":status", b"101")],
    [(b":status", b"099")],
    [(b"x", b"1")],  # no :status
])
def test_malformed_response_resets_only_its_stream(headers: list[tuple[bytes, bytes]]) -> None:
    h = ClientHarness(lax=True)
    sid = h.get()
    other = h.get()
    h.to_peer()
    h.peer.send_headers(sid, headers)
    h.peer.send_headers(other, OK, end_stream=True)
    msgs = h.to_client()
    assert msgs[0] == Reset(stream_id=sid, code=ResetCode.PROTOCOL_ERROR, side=Side.UPSTREAM)
    assert isinstance(msgs[1], ResponseHead) and msgs[1].stream_id == other
    [reset] = of_type(h.to_peer(), StreamReset)
    assert (reset.stream_id, reset.error_code) == (sid, ErrorCodes.PROTOCOL_ERROR)


@pytest.mark.parametrize(("declared", "body"), [(b"3", b"toolong"), (b"9", b"short")])
def test_response_content_length_mismatch_resets(declared: bytes, body: bytes) -> None:
    h = ClientHarness(lax=True)
    sid = h.get()
    h.to_peer()
    respond(h, sid, body, headers=[(b"content-length", declared)])
    msgs = h.to_client()
    assert msgs[-1] == Reset(stream_id=sid, code=ResetCode.PROTOCOL_ERROR, side=Side.UPSTREAM)


def test_response_content_length_checked_at_trailers() -> None:
    h = ClientHarness(lax=True)
    sid = h.get()
    h.to_peer()
    h.peer.send_headers(sid, [*OK, (b"content-length", b"10")])
    h.peer.send_data(sid, b"abc")
    h.peer.send_headers(sid, [(b"x", b"y")], end_stream=True)
    msgs = h.to_client()
    assert msgs[-1] == Reset(stream_id=sid, code=ResetCode.PROTOCOL_ERROR, side=Side.UPSTREAM)


def test_bad_content_length_on_a_head_response() -> None:
    h = ClientHarness(lax=True)
    sid = h.get(method=b"HEAD")
    h.to_peer()
    respond(h, sid, headers=[(b"content-length", b"x1")])
    assert h.to_client() == [
        Reset(stream_id=sid, code=ResetCode.PROTOCOL_ERROR, side=Side.UPSTREAM)]


def test_too_many_response_fields_or_trailers() -> None:
    h = ClientHarness(context(max_headers=3))
    sid = h.get()
    h.to_peer()
    respond(h, sid, headers=[(b"x-%d" % i, b"v") for i in range(4)])
    assert h.to_client() == [
        Reset(stream_id=sid, code=ResetCode.PROTOCOL_ERROR, side=Side.UPSTREAM)]
    sid = h.get()
    h.to_peer()
    h.peer.send_headers(sid, OK)
    h.peer.send_headers(sid, [(b"t-%d" % i, b"v") for i in range(4)], end_stream=True)
    assert h.to_client()[-1] == Reset(stream_id=sid, code=ResetCode.PROTOCOL_ERROR,
                                      side=Side.UPSTREAM)


def test_response_header_list_limit_ends_the_connection() -> None:
    h = ClientHarness(context(max_header_list_size=2048))
    sid = h.get()
    h.to_peer()
    respond(h, sid, headers=[(b"x-big", b"v" * 3000)])
    with pytest.raises(LimitExceeded) as info:
        h.to_client()
    assert info.value.side is Side.UPSTREAM
    assert info.value.status_hint == 502
    assert h.client.wants_close()
    assert not h.client.reusable()
    assert h.client.feed_eof(NOW) == []


def test_push_promise_is_a_connection_error() -> None:
    h = ClientHarness()
    sid = h.get()
    h.to_peer()
    block = h.peer.encoder.encode([(b":method", b"GET"), (b":scheme", b"https"),
                                   (b":authority", b"a"), (b":path", b"/p")])
    push = PushPromiseFrame(sid, promised_stream_id=2, data=block, flags=["END_HEADERS"])
    with pytest.raises(ProtocolError) as info:
        h.client.feed(push.serialize(), NOW)
    assert info.value.status_hint == 502


# -- concurrency and GOAWAY -------------------------------------------------------------------


def test_can_open_respects_the_upstreams_limit() -> None:
    h = ClientHarness(peer=_limited_server(2))
    a = h.get()
    h.get()
    assert not h.client.can_open()
    assert not h.client.reusable()
    with pytest.raises(Closed) as info:
        h.client.open_stream()
    assert info.value.retry is Retry.YES
    h.to_peer()
    respond(h, a, b"done")
    h.to_client()
    assert h.client.can_open()


def test_can_open_respects_our_own_limit() -> None:
    h = ClientHarness(context(max_concurrent_streams=1))
    h.get()
    assert not h.client.can_open()


def _limited_server(limit: int) -> H2Wire:
    ctx = context(max_concurrent_streams=limit)
    return H2Wire(ctx, client_side=False)


def graceful_server() -> H2Wire:
    """A server that keeps streams going after its GOAWAY (plain h2 cannot)."""
    return H2Wire(context(), client_side=False)


def test_goaway_refuses_streams_above_last_and_lets_others_finish() -> None:
    peer = graceful_server()
    h = ClientHarness(peer=peer)
    first = h.get()
    second = h.get()
    h.to_peer()
    peer.send_goaway(first)
    msgs = h.to_client()
    assert msgs == [Reset(stream_id=second, code=ResetCode.REFUSED_STREAM, side=Side.UPSTREAM)]
    assert h.client.goaway_received == first
    assert not h.client.can_open()
    assert not h.client.reusable()
    assert not h.client.wants_close()
    assert h.client.statistics().goaway_received
    respond(h, first, b"still here")
    msgs = h.to_client()
    assert body_of(msgs) == b"still here"
    assert h.client.wants_close()


def test_goaway_with_error_resets_everything() -> None:
    h = ClientHarness()
    first = h.get()
    second = h.get()
    h.to_peer()
    h.peer.close_connection(ErrorCodes.ENHANCE_YOUR_CALM, last_stream_id=first)
    assert h.to_client() == [
        Reset(stream_id=first, code=ResetCode.ENHANCE_YOUR_CALM, side=Side.UPSTREAM),
        Reset(stream_id=second, code=ResetCode.REFUSED_STREAM, side=Side.UPSTREAM),
    ]
    assert h.client.wants_close()


def test_our_goaway_stops_new_streams() -> None:
    peer = graceful_server()
    h = ClientHarness(peer=peer)
    sid = h.get()
    h.client.goaway()
    h.client.goaway()
    assert not h.client.can_open()
    h.to_peer()
    assert not h.client.wants_close()
    respond(h, sid, b"bye")
    h.to_client()
    assert h.client.wants_close()


def test_eof_resets_open_streams() -> None:
    h = ClientHarness()
    sid = h.get()
    h.to_peer()
    assert h.client.feed_eof(NOW) == [
        Reset(stream_id=sid, code=ResetCode.CANCEL, side=Side.UPSTREAM)]
    assert not h.client.reusable()
    assert h.client.wants_close()


def test_garbage_from_the_upstream() -> None:
    h = ClientHarness()
    with pytest.raises(ProtocolError) as info:
        h.client.feed(b"HTTP/1.1 200 OK\r\n\r\n", NOW)
    assert info.value.side is Side.UPSTREAM
    assert info.value.status_hint == 502
    assert wire(h.client)  # GOAWAY
    assert not h.client.reusable()


def test_settings_raise_the_frame_size() -> None:
    h = ClientHarness()
    h.peer.update_settings({SettingCodes.MAX_FRAME_SIZE: 65536})
    h.to_client()
    h.to_peer()  # our SETTINGS ACK: the peer now accepts the larger frames
    sid = h.get(method=b"POST", end=False)
    h.client.send(Body(stream_id=sid, data=b"f" * 60000, end_stream=True))
    events = h.to_peer()
    assert max(len(e.data) for e in of_type(events, DataReceived)) == 60000


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=50))
def test_arbitrary_bytes_give_messages_or_eg_error(junk: bytes, step: int) -> None:
    h = ClientHarness()
    sid = h.get()
    h.to_peer()
    h.peer.send_headers(sid, OK)
    data = h.peer.data_to_send() + junk
    try:
        for i in range(0, len(data), step):
            for msg in h.client.feed(data[i : i + step], NOW):
                assert isinstance(msg, ResponseHead | Body | Trailers | Reset)
    except EgError:
        assert not h.client.reusable()


def test_frames_for_refused_streams_are_ignored() -> None:
    peer = graceful_server()
    h = ClientHarness(peer=peer)
    first, second, third = h.get(), h.get(), h.get()
    h.to_peer()
    peer.send_goaway(first)
    assert len(h.to_client()) == 2
    # A server that answers the refused streams anyway is not heard.
    peer.send_headers(second, OK)
    peer.send_data(second, b"z" * 100)
    peer.send_headers(second, [(b"x", b"1")], end_stream=True)
    peer.send_headers(third, OK)
    peer.send_data(third, b"", end_stream=True)
    assert h.to_client() == []


def test_no_new_stream_while_the_upstream_is_not_reading() -> None:
    h = ClientHarness(context(buffer_limit=100_000))
    for _ in range(3):
        sid = h.get(method=b"POST", end=False)
        h.client.send(Body(stream_id=sid, data=b"u" * 60_000, end_stream=True))
    assert h.client.buffered_bytes > 100_000
    assert not h.client.can_open()
    assert h.client.wants_read()
