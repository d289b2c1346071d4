"""H2ServerCodec against a real h2 client: mapping, flow control, errors, limits, drain.

Every accepted request is fed whole and byte by byte and must give the same messages.
Malformed requests must cost only their own stream; limits end the connection with
GOAWAY, already queued in ``output()`` when the error is raised.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    InformationalResponseReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from hyperframe.frame import ContinuationFrame, HeadersFrame, PingFrame, WindowUpdateFrame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eg.core.codec.h2._connection import H2Wire
from eg.core.codec.h2.server import H2ServerCodec
from eg.core.errors import EgError, LimitExceeded, ProtocolError
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
    GET,
    NOW,
    ServerHarness,
    body_of,
    context,
    data_of,
    feed,
    merged,
    of_type,
    post,
    wire,
)

# -- requests in ----------------------------------------------------------------------------


@pytest.mark.parametrize("bytewise", [False, True])
def test_get_maps_pseudo_headers(bytewise: bool) -> None:
    h = ServerHarness()
    sid = h.request(GET)
    msgs = h.to_server(bytewise=bytewise)
    assert msgs == [RequestHead(
        stream_id=sid, method=b"GET", scheme=b"https", authority=b"example.com",
        path=b"/index.html", headers=[(b"user-agent", b"test"), (b"accept", b"*/*")],
        end_stream=True,
    )]


def test_reported_scheme_is_the_listeners() -> None:
    h = ServerHarness()
    h.server = H2ServerCodec(h.ctx, scheme=b"http")
    h.peer = H2Connection(h.peer.config)
    h.peer.initiate_connection()
    h.to_peer()
    h.to_server()
    h.request(GET)  # claims :scheme https
    [head] = h.to_server()
    assert isinstance(head, RequestHead)
    assert head.scheme == b"http"


def test_host_stands_in_for_authority_and_is_stripped() -> None:
    h = ServerHarness()
    h.request([(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"),
               (b"host", b"h.example")])
    [head] = h.to_server()
    assert isinstance(head, RequestHead)
    assert head.authority == b"h.example"
    assert head.headers == []


def test_cookie_crumbs_are_joined() -> None:
    h = ServerHarness()
    h.request([*GET[:4], (b"cookie", b"a=1"), (b"x", b"y"), (b"cookie", b"b=2")])
    [head] = h.to_server()
    assert isinstance(head, RequestHead)
    assert (b"cookie", b"a=1; b=2") in head.headers
    assert (b"x", b"y") in head.headers


def test_te_trailers_is_kept() -> None:
    h = ServerHarness()
    h.request([*GET[:4], (b"te", b"trailers")])
    [head] = h.to_server()
    assert isinstance(head, RequestHead)
    assert head.headers == [(b"te", b"trailers")]


@pytest.mark.parametrize("bytewise", [False, True])
def test_post_body_and_content_length(bytewise: bool) -> None:
    h = ServerHarness()
    sid = h.request(post(11), b"hello world")
    msgs = h.to_server(bytewise=bytewise)
    head = msgs[0]
    assert isinstance(head, RequestHead)
    assert head.content_length == 11
    assert not head.end_stream
    assert all(n != b"content-length" for n, _ in head.headers)
    assert body_of(msgs) == b"hello world"
    assert msgs[-1] == Body(stream_id=sid, data=msgs[-1].data, end_stream=True)  # type: ignore[union-attr]


def test_expect_continue_becomes_a_flag() -> None:
    h = ServerHarness()
    h.request(post(3, (b"expect", b"100-continue")), end=False)
    [head] = h.to_server()
    assert isinstance(head, RequestHead)
    assert head.expect_continue
    assert head.headers == []


@pytest.mark.parametrize("bytewise", [False, True])
def test_request_trailers(bytewise: bool) -> None:
    h = ServerHarness()
    sid = h.request(post(None, (b"te", b"trailers")), b"data", end=False)
    h.peer.send_headers(sid, [(b"grpc-timeout", b"1S")], end_stream=True)
    msgs = merged(h.to_server(bytewise=bytewise))
    assert msgs[1:] == [("body", sid, b"data", False),
                        Trailers(stream_id=sid, headers=[(b"grpc-timeout", b"1S")])]


def test_interleaved_streams() -> None:
    h = ServerHarness()
    a = h.request(post(None), end=False)
    b = h.request(post(None), end=False)
    h.peer.send_data(b, b"bb")
    h.peer.send_data(a, b"aa", end_stream=True)
    h.peer.send_data(b, b"", end_stream=True)
    msgs = h.to_server()
    assert [type(m).__name__ for m in msgs] == ["RequestHead", "RequestHead", "Body", "Body",
                                                "Body"]
    assert body_of(msgs, a) == b"aa"
    assert body_of(msgs, b) == b"bb"
    assert h.server.active_streams == 2


# -- responses out --------------------------------------------------------------------------


def test_response_with_body() -> None:
    h = ServerHarness()
    sid = h.request(GET)
    h.to_server()
    h.server.send(ResponseHead(stream_id=sid, status=200, headers=[(b"server", b"o")],
                               end_stream=False, content_length=5))
    h.server.send(Body(stream_id=sid, data=b"hello", end_stream=True))
    events = h.to_peer()
    [resp] = of_type(events, ResponseReceived)
    assert resp.headers == [(b":status", b"200"), (b"server", b"o"), (b"content-length", b"5")]
    assert data_of(events, sid) == b"hello"
    assert of_type(events, StreamEnded)
    assert h.server.active_streams == 0
    assert not h.server.wants_close()


def test_response_strips_connection_specific_fields() -> None:
    h = ServerHarness()
    sid = h.request(GET)
    h.to_server()
    h.server.send(ResponseHead(stream_id=sid, status=204, end_stream=True, headers=[
        (b"connection", b"close"), (b"keep-alive", b"5"), (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"x"), (b"te", b"trailers"), (b"host", b"h"), (b"x-ok", b"1"),
    ], content_length=0))
    [resp] = of_type(h.to_peer(), ResponseReceived)
    assert resp.headers == [(b":status", b"204"), (b"x-ok", b"1")]


def test_informational_responses() -> None:
    h = ServerHarness()
    sid = h.request(post(2, (b"expect", b"100-continue")), end=False)
    h.to_server()
    h.server.send(ResponseHead(stream_id=sid, status=100, headers=[], end_stream=False))
    h.server.send(ResponseHead(stream_id=sid, status=101, headers=[], end_stream=False))
    h.server.send(ResponseHead(stream_id=sid, status=103, headers=[(b"link", b"</a>")],
                               end_stream=False))
    events = h.to_peer()
    assert [e.headers for e in of_type(events, InformationalResponseReceived)] == [
        [(b":status", b"100")], [(b":status", b"103"), (b"link", b"</a>")]]
    h.peer.send_data(sid, b"ok", end_stream=True)
    h.to_server()
    h.server.send(ResponseHead(stream_id=sid, status=200, headers=[], end_stream=True))
    assert of_type(h.to_peer(), ResponseReceived)


def test_response_trailers() -> None:
    h = ServerHarness()
    sid = h.request(GET)
    h.to_server()
    h.server.send(ResponseHead(stream_id=sid, status=200, headers=[], end_stream=False))
    h.server.send(Body(stream_id=sid, data=b"x", end_stream=False))
    h.server.send(Trailers(stream_id=sid, headers=[(b"grpc-status", b"0")]))
    events = h.to_peer()
    [trailers] = of_type(events, TrailersReceived)
    assert trailers.headers == [(b"grpc-status", b"0")]
    assert trailers.stream_ended is not None


def test_empty_trailers_end_the_stream() -> None:
    h = ServerHarness()
    sid = h.request(GET)
    h.to_server()
    h.server.send(ResponseHead(stream_id=sid, status=200, headers=[], end_stream=False))
    h.server.send(Trailers(stream_id=sid, headers=[]))
    events = h.to_peer()
    assert of_type(events, StreamEnded)
    assert not of_type(events, TrailersReceived)


def test_response_before_request_body_ends_resets_with_no_error() -> None:
    h = ServerHarness()
    sid = h.request(post(100), b"partial", end=False)
    h.to_server()
    h.server.send(ResponseHead(stream_id=sid, status=413, headers=[], end_stream=True))
    assert h.server.active_streams == 0
    h.peer.send_data(sid, b"more")  # in flight as the response leaves: ignored
    assert h.to_server() == []
    events = h.to_peer()
    assert of_type(events, ResponseReceived)
    [reset] = of_type(events, StreamReset)
    assert reset.error_code == ErrorCodes.NO_ERROR


def test_messages_for_gone_streams_are_dropped() -> None:
    h = ServerHarness()
    h.server.send(ResponseHead(stream_id=99, status=200, headers=[], end_stream=False))
    h.server.send(Body(stream_id=99, data=b"x", end_stream=True))
    h.server.send(Trailers(stream_id=99, headers=[]))
    h.server.send(Reset(stream_id=99, code=ResetCode.CANCEL, side=Side.UPSTREAM))
    assert wire(h.server) == b""


def test_sending_a_request_head_is_a_type_error() -> None:
    h = ServerHarness()
    with pytest.raises(TypeError):
        h.server.send(RequestHead(stream_id=1, method=b"GET", scheme=b"https", authority=b"a",
                                  path=b"/", headers=[], end_stream=True))


# -- resets ---------------------------------------------------------------------------------


def test_peer_reset_becomes_reset_message() -> None:
    h = ServerHarness()
    sid = h.request(post(None), end=False)
    h.to_server()
    h.peer.reset_stream(sid, ErrorCodes.CANCEL)
    assert h.to_server() == [Reset(stream_id=sid, code=ResetCode.CANCEL, side=Side.DOWNSTREAM)]
    assert h.server.active_streams == 0


def test_unknown_reset_code_maps_to_internal_error() -> None:
    h = ServerHarness()
    sid = h.request(post(None), end=False)
    h.to_server()
    h.peer.reset_stream(sid, 0x4242)
    [reset] = h.to_server()
    assert isinstance(reset, Reset)
    assert reset.code is ResetCode.INTERNAL_ERROR


def test_sent_reset_reaches_the_peer() -> None:
    h = ServerHarness()
    sid = h.request(GET)
    h.to_server()
    h.server.send(ResponseHead(stream_id=sid, status=200, headers=[], end_stream=False))
    h.server.send(Reset(stream_id=sid, code=ResetCode.INTERNAL_ERROR, side=Side.UPSTREAM))
    [reset] = of_type(h.to_peer(), StreamReset)
    assert reset.error_code == ErrorCodes.INTERNAL_ERROR
    h.server.send(Body(stream_id=sid, data=b"late", end_stream=True))
    assert wire(h.server) == b""


# -- malformed requests: only their stream ---------------------------------------------------


def assert_stream_refused(h: ServerHarness, sid: int, code: ErrorCodes) -> None:
    [reset] = of_type(h.to_peer(), StreamReset)
    assert reset.stream_id == sid
    assert reset.error_code == code
    # The connection carries on.
    h.request(GET)
    [head] = h.to_server()
    assert isinstance(head, RequestHead)


@pytest.mark.parametrize("field", [
    (b"connection", b"keep-alive"),
    (b"keep-alive", b"300"),
    (b"proxy-connection", b"keep-alive"),
    (b"transfer-encoding", b"chunked"),
    (b"upgrade", b"websocket"),
    (b"te", b"gzip"),
    (b"X-Upper", b"1"),
    (b"bad name", b"1"),
    (b"x", b" padded"),
])
@pytest.mark.parametrize("bytewise", [False, True])
def test_malformed_fields_reset_the_stream(field: tuple[bytes, bytes], bytewise: bool) -> None:
    h = ServerHarness(lax=True)
    sid = h.request([*GET, field])
    assert h.to_server(bytewise=bytewise) == []
    assert_stream_refused(h, sid, ErrorCodes.PROTOCOL_ERROR)


def request_with(**pseudo: bytes) -> list[tuple[bytes, bytes]]:
    fields = {b":method": b"GET", b":scheme": b"https", b":authority": b"example.com",
              b":path": b"/"}
    for name, value in pseudo.items():
        fields[b":" + name.encode()] = value
    return list(fields.items())


@pytest.mark.parametrize("headers", [
    request_with(path=b"/a b"),  # would split an HTTP/1 request line
    request_with(path=b"/a\tb"),
    request_with(path=b"relative"),
    request_with(path=b"*"),  # only for OPTIONS
    request_with(path=b"/\x7f"),
    request_with(method=b"GE T"),
    request_with(method=b"GET\x01"),
    request_with(authority=b"user@example.com"),
    request_with(authority=b"exa mple.com"),
    request_with(authority=b""),
    request_with(authority=b"example.com/x"),
    [*request_with(), (b"host", b"other.example")],  # RFC 9113 §8.3.1 (h2 checks it)
    [*request_with(), (b"host", b"example.com:8443")],
])
def test_request_line_hazards_reset_the_stream(headers: list[tuple[bytes, bytes]]) -> None:
    h = ServerHarness(lax=True)
    sid = h.request(headers)
    assert h.to_server() == []
    assert_stream_refused(h, sid, ErrorCodes.PROTOCOL_ERROR)


def test_host_equal_to_authority_passes() -> None:
    h = ServerHarness()
    h.request([*request_with(), (b"host", b"example.com")])
    [head] = h.to_server()
    assert isinstance(head, RequestHead)
    assert head.authority == b"example.com"
    assert all(name != b"host" for name, _ in head.headers)


def test_options_asterisk_and_absolute_ports_pass() -> None:
    h = ServerHarness()
    h.request(request_with(method=b"OPTIONS", path=b"*", authority=b"[::1]:8443"))
    [head] = h.to_server()
    assert isinstance(head, RequestHead)
    assert (head.method, head.path, head.authority) == (b"OPTIONS", b"*", b"[::1]:8443")


@pytest.mark.parametrize("headers", [
    [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a")],  # no :path
    [(b":method", b"GET"), (b":path", b"/"), (b":authority", b"a")],  # no :scheme
    [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/")],  # no authority
    [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b""), (b":authority", b"a")],
    [*GET, (b":method", b"GET")],  # pseudo-header after fields, duplicated
    [*GET[:4], (b":status", b"200")],
    [*GET[:4], (b"host", b"other.example")],  # disagrees with :authority
])
def test_bad_pseudo_headers_reset_the_stream(headers: list[tuple[bytes, bytes]]) -> None:
    h = ServerHarness(lax=True)
    sid = h.request(headers)
    assert h.to_server() == []
    assert_stream_refused(h, sid, ErrorCodes.PROTOCOL_ERROR)


@pytest.mark.parametrize(("declared", "sent"), [(5, b"toolong"), (5, b"abc"), (5, b"")])
@pytest.mark.parametrize("bytewise", [False, True])
def test_content_length_mismatch_resets(declared: int, sent: bytes, bytewise: bool) -> None:
    h = ServerHarness(lax=True)
    sid = h.request(post(declared), end=False)
    h.peer.send_data(sid, sent, end_stream=True)
    msgs = h.to_server(bytewise=bytewise)
    assert isinstance(msgs[0], RequestHead)
    assert msgs[-1] == Reset(stream_id=sid, code=ResetCode.PROTOCOL_ERROR, side=Side.DOWNSTREAM)
    assert_stream_refused(h, sid, ErrorCodes.PROTOCOL_ERROR)


def test_content_length_on_a_bodiless_request_resets() -> None:
    h = ServerHarness(lax=True)
    sid = h.request(post(5))  # HEADERS with END_STREAM
    assert h.to_server() == []
    assert_stream_refused(h, sid, ErrorCodes.PROTOCOL_ERROR)


def test_content_length_checked_when_trailers_end_the_body() -> None:
    h = ServerHarness(lax=True)
    sid = h.request(post(10), b"short", end=False)
    h.peer.send_headers(sid, [(b"x-t", b"1")], end_stream=True)
    msgs = h.to_server()
    assert msgs[-1] == Reset(stream_id=sid, code=ResetCode.PROTOCOL_ERROR, side=Side.DOWNSTREAM)
    assert_stream_refused(h, sid, ErrorCodes.PROTOCOL_ERROR)


@pytest.mark.parametrize("value", [b"abc", b"-1", b"1,1"])
def test_invalid_content_length_resets(value: bytes) -> None:
    h = ServerHarness(lax=True)
    sid = h.request([*post(None), (b"content-length", value)], b"x")
    assert h.to_server() == []
    assert_stream_refused(h, sid, ErrorCodes.PROTOCOL_ERROR)


# -- requests answered here -------------------------------------------------------------------


def answered(h: ServerHarness, sid: int, status: bytes) -> None:
    events = h.to_peer()
    [resp] = of_type(events, ResponseReceived)
    assert resp.stream_id == sid
    assert resp.headers[0] == (b":status", status)


def test_underscore_in_a_name_is_400() -> None:
    h = ServerHarness()
    sid = h.request([*GET, (b"x_forwarded", b"1")])
    assert h.to_server() == []
    answered(h, sid, b"400")


def test_underscore_allowed_when_configured() -> None:
    h = ServerHarness(context(reject_underscore=False))
    h.request([*GET, (b"x_forwarded", b"1")])
    [head] = h.to_server()
    assert isinstance(head, RequestHead)


def test_connect_is_405() -> None:
    h = ServerHarness()
    sid = h.request([(b":method", b"CONNECT"), (b":authority", b"a:443")], end=False)
    assert h.to_server() == []
    events = h.to_peer()
    [resp] = of_type(events, ResponseReceived)
    assert resp.headers[0] == (b":status", b"405")
    # The unread request body is cut off with RST_STREAM(NO_ERROR).
    assert of_type(events, StreamReset)[0].error_code == ErrorCodes.NO_ERROR
    assert sid == resp.stream_id


def test_extended_connect_is_501() -> None:
    h = ServerHarness(lax=True)
    sid = h.request([(b":method", b"CONNECT"), (b":protocol", b"websocket"),
                     (b":scheme", b"https"), (b":path", b"/ws"), (b":authority", b"a")])
    assert h.to_server() == []
    answered(h, sid, b"501")


def test_too_many_fields_is_431() -> None:
    h = ServerHarness(context(max_headers=10))
    sid = h.request([*GET[:4], *[(b"x-%d" % i, b"v") for i in range(11)]])
    assert h.to_server() == []
    answered(h, sid, b"431")
    h.request([*GET[:4], *[(b"x-%d" % i, b"v") for i in range(10)]])
    assert isinstance(h.to_server()[0], RequestHead)


# -- connection-level limits: GOAWAY first, then the error ------------------------------------


def goaway_code(h: ServerHarness) -> int:
    [term] = of_type(h.to_peer(), ConnectionTerminated)
    return int(term.error_code)


@pytest.mark.parametrize("bytewise", [False, True])
def test_header_list_size_is_enforced(bytewise: bool) -> None:
    h = ServerHarness(context(max_header_list_size=4096))
    h.request([*GET, (b"x-big", b"v" * 4096)])
    with pytest.raises(LimitExceeded) as info:
        h.to_server(bytewise=bytewise)
    assert info.value.side is Side.DOWNSTREAM
    assert info.value.status_hint == 431
    assert goaway_code(h) == ErrorCodes.ENHANCE_YOUR_CALM
    assert h.server.wants_close()
    assert not h.server.wants_read()
    assert h.server.feed(b"anything", NOW) == []


def test_header_list_just_under_the_limit_passes() -> None:
    h = ServerHarness(context(max_header_list_size=4096))
    used = sum(len(n) + len(v) + 32 for n, v in GET) + len(b"x-big") + 32
    h.request([*GET, (b"x-big", b"v" * (4096 - used))])
    assert isinstance(h.to_server()[0], RequestHead)


def test_default_header_list_size_is_64k() -> None:
    h = ServerHarness()
    h.request([*GET, (b"x-big", b"v" * 65536)])
    with pytest.raises(LimitExceeded):
        h.to_server()


def continuation_flood(h: ServerHarness, frames: int, size: int) -> bytes:
    h.peer.send_headers(1, GET, end_stream=True)
    h.peer.data_to_send()  # the real block is discarded: we hand-build the flood instead
    first = HeadersFrame(3, data=b"\x82", flags=["END_STREAM"])
    out = [first.serialize()]
    for _ in range(frames):
        out.append(ContinuationFrame(3, data=b"\x00" * size).serialize())
    return b"".join(out)


def test_continuation_flood_bounded_in_bytes() -> None:
    h = ServerHarness(context(max_header_list_size=4096))  # block cap 16 KiB
    flood = continuation_flood(h, 3, 8000)
    with pytest.raises(LimitExceeded):
        h.server.feed(flood, NOW)
    assert goaway_code(h) == ErrorCodes.ENHANCE_YOUR_CALM


def test_continuation_flood_bounded_in_count() -> None:
    h = ServerHarness()
    flood = continuation_flood(h, 70, 1)
    with pytest.raises(ProtocolError):
        h.server.feed(flood, NOW)
    assert goaway_code(h) == ErrorCodes.PROTOCOL_ERROR


def test_excess_streams_are_refused() -> None:
    h = ServerHarness(context(max_concurrent_streams=2), handshake=False)
    # Before our SETTINGS reach it, the client may open more streams than we allow.
    for _ in range(3):
        h.request(post(None), end=False)
    msgs = h.to_server()
    assert [m.stream_id for m in msgs] == [1, 3]
    [reset] = of_type(h.to_peer(), StreamReset)
    assert (reset.stream_id, reset.error_code) == (5, ErrorCodes.REFUSED_STREAM)


def test_garbage_instead_of_the_preface() -> None:
    h = ServerHarness(handshake=False)
    with pytest.raises(ProtocolError) as info:
        h.server.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", NOW)
    assert info.value.status_hint == 400
    assert info.value.side is Side.DOWNSTREAM
    assert b"".join(bytes(p) for p in h.server.output())  # SETTINGS + GOAWAY
    assert h.server.wants_close()


def test_frame_error_maps_the_goaway_code() -> None:
    h = ServerHarness()
    # A WINDOW_UPDATE overflowing the window: FLOW_CONTROL_ERROR.
    overflow = WindowUpdateFrame(0, window_increment=2**31 - 1).serialize()
    with pytest.raises(ProtocolError) as info:
        h.server.feed(overflow, NOW)
    assert info.value.reset_code is ResetCode.FLOW_CONTROL_ERROR
    assert goaway_code(h) == ErrorCodes.FLOW_CONTROL_ERROR


# -- flood budgets ----------------------------------------------------------------------------


def test_rapid_reset_budget() -> None:
    h = ServerHarness()
    for _ in range(100):
        sid = h.request(GET)
        h.peer.reset_stream(sid, ErrorCodes.CANCEL)
    h.to_server(now=1.0)
    sid = h.request(GET)
    h.peer.reset_stream(sid, ErrorCodes.CANCEL)
    with pytest.raises(LimitExceeded) as info:
        h.to_server(now=2.0)
    assert info.value.kind == "h2_peer_resets"
    assert goaway_code(h) == ErrorCodes.ENHANCE_YOUR_CALM


def test_rapid_reset_budget_refills_each_window() -> None:
    h = ServerHarness()
    for i in range(5):
        for _ in range(60):
            sid = h.request(GET)
            h.peer.reset_stream(sid, ErrorCodes.CANCEL)
        h.to_server(now=10.0 * i)
        h.to_peer()
    assert not h.server.wants_close()


def test_resets_after_the_response_started_are_free() -> None:
    h = ServerHarness()
    for _ in range(120):
        sid = h.request(GET)
        h.to_server()
        h.server.send(ResponseHead(stream_id=sid, status=200, headers=[], end_stream=False))
        h.to_peer()
        h.peer.reset_stream(sid, ErrorCodes.CANCEL)
        h.to_server()
    assert not h.server.wants_close()


def test_local_error_budget() -> None:
    h = ServerHarness(lax=True)
    with pytest.raises(LimitExceeded) as info:
        for _ in range(101):
            h.request([*GET, (b"connection", b"close")])
            h.to_server()
            h.to_peer()
    assert info.value.kind == "h2_local_errors"


def test_ping_flood() -> None:
    h = ServerHarness()
    for i in range(50):
        h.peer.ping(b"%08d" % i)
    h.to_server()
    h.peer.ping(b"pingpong")
    with pytest.raises(LimitExceeded) as info:
        h.to_server()
    assert info.value.kind == "h2_pings"


def test_settings_flood() -> None:
    h = ServerHarness()
    with pytest.raises(LimitExceeded) as info:
        for _ in range(101):
            h.peer.update_settings({})
            h.to_server()
    assert info.value.kind == "h2_settings"


# -- flow control -----------------------------------------------------------------------------


def test_large_response_waits_for_the_window() -> None:
    h = ServerHarness()
    sid = h.request(GET)
    h.to_server()
    body = bytes(range(256)) * 800  # 204,800 bytes, the client's window is 65,535
    h.server.send(ResponseHead(stream_id=sid, status=200, headers=[], end_stream=False,
                               content_length=len(body)))
    h.server.send(Body(stream_id=sid, data=body, end_stream=True))
    assert h.server.buffered(sid) == len(body) - 65535
    assert h.server.buffered_bytes == h.server.buffered(sid)
    assert h.server.take_watermarks() == [(sid, True)]
    assert h.server.take_watermarks() == []
    received = b""
    for _ in range(20):
        events = h.to_peer()
        chunk = data_of(events, sid)
        received += chunk
        if of_type(events, StreamEnded):
            break
        h.peer.acknowledge_received_data(len(chunk), sid)
        assert h.to_server() == []
    assert received == body
    assert h.server.buffered_bytes == 0
    assert h.server.take_watermarks() == [(sid, False)]
    assert h.server.active_streams == 0


def test_trailers_wait_behind_buffered_body() -> None:
    h = ServerHarness()
    sid = h.request(GET)
    h.to_server()
    h.server.send(ResponseHead(stream_id=sid, status=200, headers=[], end_stream=False))
    h.server.send(Body(stream_id=sid, data=b"x" * 70000, end_stream=False))
    h.server.send(Trailers(stream_id=sid, headers=[(b"grpc-status", b"0")]))
    h.server.send(Body(stream_id=sid, data=b"ignored", end_stream=True))
    events = h.to_peer()
    assert not of_type(events, TrailersReceived)
    h.peer.acknowledge_received_data(65535, sid)
    h.to_server()
    events = h.to_peer()
    assert len(data_of(events, sid)) == 70000 - 65535
    assert of_type(events, TrailersReceived)[0].headers == [(b"grpc-status", b"0")]


def test_respects_a_smaller_peer_frame_size_and_larger_window() -> None:
    h = ServerHarness()
    h.peer.update_settings({4: 1_000_000})  # INITIAL_WINDOW_SIZE
    h.peer.increment_flow_control_window(1_000_000)
    h.to_server()
    h.to_peer()
    sid = h.request(GET)
    h.to_server()
    h.server.send(ResponseHead(stream_id=sid, status=200, headers=[], end_stream=False))
    h.server.send(Body(stream_id=sid, data=b"z" * 100_000, end_stream=True))
    assert h.server.buffered_bytes == 0
    events = h.to_peer()
    frames = of_type(events, DataReceived)
    assert max(len(e.data) for e in frames) == 16384
    assert data_of(events, sid) == b"z" * 100_000


def test_window_growing_by_settings_releases_buffered_data() -> None:
    h = ServerHarness()
    sid = h.request(GET)
    h.to_server()
    h.server.send(ResponseHead(stream_id=sid, status=200, headers=[], end_stream=False))
    h.server.send(Body(stream_id=sid, data=b"q" * 70000, end_stream=True))
    h.to_peer()
    h.peer.increment_flow_control_window(100_000)  # connection
    h.peer.update_settings({4: 200_000})  # every stream's window
    h.to_server()
    events = h.to_peer()
    assert len(data_of(events, sid)) == 70000 - 65535
    assert of_type(events, StreamEnded)


def test_send_buffer_limit_resets_the_stream() -> None:
    h = ServerHarness(context(buffer_limit=100_000))
    sid = h.request(GET)
    h.to_server()
    h.server.send(ResponseHead(stream_id=sid, status=200, headers=[], end_stream=False))
    h.server.send(Body(stream_id=sid, data=b"a" * 150_000, end_stream=False))  # 84,465 wait
    with pytest.raises(LimitExceeded) as info:
        h.server.send(Body(stream_id=sid, data=b"a" * 20_000, end_stream=False))
    assert info.value.kind == "h2_send_buffer"
    assert h.server.buffered_bytes == 0
    assert (sid, False) in h.server.take_watermarks()
    resets = of_type(h.to_peer(), StreamReset)
    assert resets[0].error_code == ErrorCodes.INTERNAL_ERROR


def send_data(h: ServerHarness, sid: int, data: bytes) -> None:
    for i in range(0, len(data), 16384):
        h.peer.send_data(sid, data[i : i + 16384])


def stream_window_updates(events: Iterable[Event], sid: int) -> int:
    return sum(e.delta for e in of_type(events, WindowUpdated) if e.stream_id == sid)


def test_received_data_is_acknowledged_as_handed_out() -> None:
    h = ServerHarness()
    sid = h.request(post(None), end=False)
    h.to_server()
    send_data(h, sid, b"u" * 40000)
    assert body_of(h.to_server()) == b"u" * 40000
    # h2 returns credit in batches of at least half the window (32 KiB of 64 KiB).
    assert stream_window_updates(h.to_peer(), sid) == 32768


def test_paused_stream_gets_no_window_update_until_resumed() -> None:
    h = ServerHarness()
    sid = h.request(post(None), end=False)
    h.to_server()
    h.server.pause(sid)
    h.server.pause(sid)  # two parties paused it
    send_data(h, sid, b"p" * 65536)  # our whole stream window
    assert body_of(h.to_server()) == b"p" * 65536
    assert stream_window_updates(h.to_peer(), sid) == 0
    assert h.peer.local_flow_control_window(sid) == 0  # the sender is stopped
    assert h.server.statistics().paused_streams == 1
    h.server.resume(sid)
    assert stream_window_updates(h.to_peer(), sid) == 0  # one pause still held
    h.server.resume(sid)
    assert stream_window_updates(h.to_peer(), sid) == 65536
    assert h.peer.local_flow_control_window(sid) == 65536
    send_data(h, sid, b"q" * 1000)  # and it sends again
    assert body_of(h.to_server()) == b"q" * 1000
    h.server.resume(sid)  # unbalanced resume: ignored
    h.server.pause(12345)
    h.server.resume(12345)


def test_paused_stream_does_not_hold_the_connection_window() -> None:
    # Connection window = stream window: a paused stream could stall every other one if
    # its bytes held connection credit too.
    h = ServerHarness(context(connection_window=65535))
    sid = h.request(post(None), end=False)
    other = h.request(post(None), end=False)
    h.to_server()
    h.server.pause(sid)
    send_data(h, sid, b"p" * 65535)
    h.to_server()
    events = h.to_peer()
    assert stream_window_updates(events, sid) == 0
    assert stream_window_updates(events, 0) >= 32768  # returned, in h2's batches
    send_data(h, other, b"o" * 40000)
    assert body_of(h.to_server()) == b"o" * 40000


def test_pausing_before_any_data() -> None:
    h = ServerHarness()
    sid = h.request(post(None), end=False)
    h.to_server()
    h.server.pause(sid)
    h.server.resume(sid)
    send_data(h, sid, b"k" * 40000)
    h.to_server()
    assert stream_window_updates(h.to_peer(), sid) == 32768


# -- GOAWAY and closing ----------------------------------------------------------------------


def test_client_goaway_lets_streams_finish() -> None:
    h = ServerHarness()
    sid = h.request(GET)
    h.to_server()
    h.peer.close_connection()
    assert h.to_server() == []
    assert not h.server.wants_close()
    h.server.send(ResponseHead(stream_id=sid, status=200, headers=[], end_stream=True))
    assert wire(h.server)
    # The client said it will close the connection: wait for that, answering meanwhile.
    assert not h.server.wants_close()
    h.server.feed_eof(NOW)
    assert h.server.wants_close()


def test_client_goaway_with_unknown_error_code_is_no_error_and_pings_are_answered() -> None:
    """h2spec 7/1: GOAWAY with an undefined error code, then a PING (which may arrive in a
    read of its own): no special behavior (RFC 9113 §7), and the PING is acknowledged."""
    h = ServerHarness()
    sid = h.request(GET)
    h.to_server()
    h.peer.close_connection(0xFF)
    assert h.to_server() == []  # the stream in flight is not reset
    assert not h.server.wants_close()
    ping = PingFrame(0, opaque_data=b"h2spec\0\0")
    assert feed(h.server, ping.serialize()) == []
    ack = PingFrame(0, flags=["ACK"], opaque_data=b"h2spec\0\0").serialize()
    assert ack in wire(h.server)
    h.server.send(ResponseHead(stream_id=sid, status=200, headers=[], end_stream=True))
    assert wire(h.server)
    assert not h.server.wants_close()


def test_client_goaway_with_error_resets_streams() -> None:
    h = ServerHarness()
    sid = h.request(post(None), end=False)
    h.to_server()
    h.peer.close_connection(ErrorCodes.INTERNAL_ERROR)
    assert h.to_server() == [
        Reset(stream_id=sid, code=ResetCode.INTERNAL_ERROR, side=Side.DOWNSTREAM)]
    assert h.server.wants_close()
    assert not h.server.wants_read()


def graceful_peer(h: ServerHarness) -> None:
    """Swap in a client that keeps streams going after GOAWAY (plain h2 cannot)."""
    h.server = H2ServerCodec(h.ctx, scheme=b"https")
    h.peer = H2Wire(context(), client_side=True)
    h.to_peer()
    h.to_server()
    h.to_peer()


def test_goaway_drains_then_closes() -> None:
    h = ServerHarness()
    graceful_peer(h)
    first = h.request(post(None), end=False)
    h.to_server()
    h.server.goaway()
    h.server.goaway()  # once only
    [term] = of_type(h.to_peer(), ConnectionTerminated)
    assert (term.error_code, term.last_stream_id) == (0, first)
    assert h.server.statistics().goaway_sent
    # A stream the client opened before it saw the GOAWAY is refused...
    late = h.request(GET)
    # ...while the one in flight completes.
    h.peer.send_data(first, b"end", end_stream=True)
    msgs = h.to_server()
    assert body_of(msgs) == b"end"
    assert all(m.stream_id == first for m in msgs)
    [reset] = of_type(h.to_peer(), StreamReset)
    assert (reset.stream_id, reset.error_code) == (late, ErrorCodes.REFUSED_STREAM)
    assert not h.server.wants_close()
    h.server.send(ResponseHead(stream_id=first, status=200, headers=[], end_stream=True))
    assert of_type(h.to_peer(), ResponseReceived)
    assert h.server.wants_close()


def test_goaway_on_an_idle_connection_closes_at_once() -> None:
    h = ServerHarness()
    h.server.goaway()
    assert h.server.wants_close()


def test_eof_resets_open_streams() -> None:
    h = ServerHarness()
    a = h.request(post(None), end=False)
    b = h.request(GET)
    h.to_server()
    assert h.server.feed_eof(NOW) == [
        Reset(stream_id=a, code=ResetCode.CANCEL, side=Side.DOWNSTREAM),
        Reset(stream_id=b, code=ResetCode.CANCEL, side=Side.DOWNSTREAM),
    ]
    assert h.server.wants_close()
    assert h.server.feed(b"more", NOW) == []
    assert h.server.feed_eof(NOW) == []


def test_statistics_and_response_started() -> None:
    h = ServerHarness()
    sid = h.request(GET)
    h.to_server()
    assert not h.server.response_started(sid)
    h.server.send(ResponseHead(stream_id=sid, status=200, headers=[], end_stream=False))
    assert h.server.response_started(sid)
    h.server.send(ResponseHead(stream_id=sid, status=500, headers=[], end_stream=True))
    stats = h.server.statistics()
    assert stats.streams == 1 and stats.pending_output > 0
    assert h.server.requests == 1


# -- fuzz: bytes in, messages or EgError out ---------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=40))
def test_arbitrary_bytes_give_messages_or_eg_error(junk: bytes, step: int) -> None:
    h = ServerHarness()
    h.request(GET)
    data = h.peer.data_to_send() + junk
    try:
        for i in range(0, len(data), step):
            for msg in h.server.feed(data[i : i + step], NOW):
                assert isinstance(msg, RequestHead | Body | Trailers | Reset)
    except EgError:
        assert h.server.wants_close()


def trailered_request() -> tuple[ServerHarness, bytes]:
    h = ServerHarness()
    sid = h.request(post(None, (b"te", b"trailers")), b"body bytes " * 20, end=False)
    h.peer.send_headers(sid, [(b"x-trailer", b"t")], end_stream=True)
    return h, h.peer.data_to_send()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=30))
def test_any_split_gives_the_same_messages(cuts: list[int]) -> None:
    whole_h, data = trailered_request()
    whole = merged(whole_h.server.feed(data, NOW))
    h, again = trailered_request()
    assert again == data  # h2 is deterministic: both harnesses are in the same state
    msgs = []
    pos = 0
    for cut in [*cuts, len(data)]:
        msgs += h.server.feed(data[pos : pos + cut], NOW)
        pos += cut
    assert merged(msgs) == whole
    assert isinstance(whole[-1], Trailers)


def test_oversized_frame_refused_on_its_header() -> None:
    h = ServerHarness()
    h.request(post(None), end=False)
    h.to_server()
    # A DATA frame header announcing 1 MiB: refused before any of it is buffered.
    header = (1 << 20).to_bytes(3) + b"\x00\x00" + (1).to_bytes(4)
    with pytest.raises(ProtocolError):
        h.server.feed(header, NOW)
    assert goaway_code(h) == ErrorCodes.FRAME_SIZE_ERROR


# -- corners ----------------------------------------------------------------------------------


def test_headers_on_a_half_closed_stream_reset_it() -> None:
    h = ServerHarness()
    sid = h.request(post(None), end=False)
    h.to_server()
    h.peer.send_data(sid, b"x", end_stream=True)
    h.to_server()
    again = HeadersFrame(sid, data=h.peer.encoder.encode(GET), flags=["END_HEADERS"])
    assert h.server.feed(again.serialize(), NOW) == [
        Reset(stream_id=sid, code=ResetCode.STREAM_CLOSED, side=Side.DOWNSTREAM)]
    [reset] = of_type(h.to_peer(), StreamReset)
    assert reset.error_code == ErrorCodes.STREAM_CLOSED


def test_priority_on_headers_is_accepted() -> None:
    h = ServerHarness()
    sid = h.peer.get_next_available_stream_id()
    h.peer.send_headers(sid, GET, end_stream=True, priority_weight=32)
    [head] = h.to_server()
    assert isinstance(head, RequestHead)


def test_body_length_error_returns_connection_credit() -> None:
    h = ServerHarness(context(connection_window=65535))
    sid = h.request(post(20001), end=False)
    h.to_server()
    send_data(h, sid, b"a" * 20000)
    h.to_server()  # 20,000 bytes of connection credit consumed, under half: no update yet
    h.peer.send_data(sid, b"b" * 16384)  # 16,383 too many
    msgs = h.to_server()
    assert msgs[-1] == Reset(stream_id=sid, code=ResetCode.PROTOCOL_ERROR, side=Side.DOWNSTREAM)
    events = h.to_peer()
    assert stream_window_updates(events, 0) == 36384  # all of it, the rejected frame too


def test_other_expectations_pass_through() -> None:
    h = ServerHarness()
    h.request([*GET, (b"expect", b"something-else")])
    [head] = h.to_server()
    assert isinstance(head, RequestHead)
    assert not head.expect_continue
    assert (b"expect", b"something-else") in head.headers


def test_empty_data_frames_are_not_messages() -> None:
    h = ServerHarness()
    sid = h.request(post(None), end=False)
    h.to_server()
    h.peer.send_data(sid, b"")
    assert h.to_server() == []
    h.peer.send_data(sid, b"", end_stream=True)
    assert h.to_server() == [Body(stream_id=sid, data=b"", end_stream=True)]


def test_sends_after_a_connection_error_are_dropped() -> None:
    h = ServerHarness()
    sid = h.request(GET)
    h.to_server()
    with pytest.raises(ProtocolError):
        h.server.feed(b"\x00\x00\x01\x04\x00\x00\x00\x00\x00\x00", NOW)  # bad SETTINGS
    wire(h.server)
    h.server.send(ResponseHead(stream_id=sid, status=200, headers=[], end_stream=True))
    assert wire(h.server) == b""


def test_empty_bodies() -> None:
    h = ServerHarness()
    sid = h.request(GET)
    h.to_server()
    h.server.send(ResponseHead(stream_id=sid, status=200, headers=[], end_stream=False))
    h.to_peer()
    h.server.send(Body(stream_id=sid, data=b"", end_stream=False))
    assert wire(h.server) == b""
    h.server.send(Body(stream_id=sid, data=b"w" * 70000, end_stream=False))
    h.server.send(Body(stream_id=sid, data=b"", end_stream=True))  # waits behind the rest
    events = h.to_peer()
    assert not of_type(events, StreamEnded)
    h.peer.acknowledge_received_data(65535, sid)
    h.to_server()
    events = h.to_peer()
    assert len(data_of(events, sid)) == 70000 - 65535
    assert of_type(events, StreamEnded)


def test_connection_window_shared_by_blocked_streams() -> None:
    h = ServerHarness()
    a, b, c = h.request(GET), h.request(GET), h.request(GET)
    h.to_server()
    for sid in (a, b, c):
        h.server.send(ResponseHead(stream_id=sid, status=200, headers=[], end_stream=False))
        h.server.send(Body(stream_id=sid, data=b"c" * 40000, end_stream=True))
    # The client's connection window (65,535) is spent: a got 40,000, b 25,535, c none.
    assert h.server.buffered(a) == 0
    assert h.server.buffered(b) == 40000 - 25535
    assert h.server.buffered(c) == 40000
    h.to_peer()
    h.peer.increment_flow_control_window(1000)
    h.to_server()
    assert h.server.buffered(b) == 40000 - 26535
    assert h.server.buffered(c) == 40000
    h.peer.increment_flow_control_window(60000)
    h.to_server()
    assert h.server.buffered_bytes == 0


def test_empty_trailers_behind_buffered_body() -> None:
    h = ServerHarness()
    sid = h.request(GET)
    h.to_server()
    h.server.send(ResponseHead(stream_id=sid, status=200, headers=[], end_stream=False))
    h.server.send(Body(stream_id=sid, data=b"v" * 70000, end_stream=False))
    h.server.send(Trailers(stream_id=sid, headers=[]))
    h.to_peer()
    h.peer.acknowledge_received_data(65535, sid)
    h.to_server()
    events = h.to_peer()
    assert of_type(events, StreamEnded)
    assert not of_type(events, TrailersReceived)


def test_priority_on_trailers_is_accepted() -> None:
    h = ServerHarness()
    sid = h.request(post(None), b"x", end=False)
    h.peer.send_headers(sid, [(b"x-t", b"1")], end_stream=True, priority_weight=8)
    msgs = h.to_server()
    assert msgs[-1] == Trailers(stream_id=sid, headers=[(b"x-t", b"1")])


def test_new_streams_refused_while_the_client_is_not_reading() -> None:
    h = ServerHarness(context(buffer_limit=100_000))
    sids = [h.request(GET) for _ in range(3)]
    h.to_server()
    for sid in sids:
        h.server.send(ResponseHead(stream_id=sid, status=200, headers=[], end_stream=False))
        h.server.send(Body(stream_id=sid, data=b"s" * 60_000, end_stream=True))
    assert h.server.buffered_bytes > 100_000  # each stream under the cap, all over it
    h.to_peer()
    late = h.request(GET)
    assert h.to_server() == []
    [reset] = of_type(h.to_peer(), StreamReset)
    assert (reset.stream_id, reset.error_code) == (late, ErrorCodes.REFUSED_STREAM)
    assert h.server.wants_read()  # the WINDOW_UPDATEs must still get in
