"""H1ClientCodec edge cases: request framing out, response parsing in, connection reuse.

Requests the codec writes are read back by h11 as a server. Every response case is fed
whole, byte by byte and with trailing bytes; the messages must be the same each way, and
trailing bytes must make the connection unusable for another request.
"""

from __future__ import annotations

import h11
import pytest

from eg.core.codec.h1._parse import H1Context
from eg.core.codec.h1.client import H1ClientCodec
from eg.core.errors import Broken, EgError, LimitExceeded, ProtocolError, Retry
from eg.core.message import (
    Body,
    HeaderList,
    Message,
    RequestHead,
    Reset,
    ResetCode,
    ResponseHead,
    Side,
    Trailers,
)

from .pairs import (
    NOW,
    H1Pair,
    body_of,
    feed_bytewise,
    feed_whole,
    h1_client,
    h1_context,
    normalize,
    wire,
)


def request(
    sid: int = 1,
    method: bytes = b"GET",
    *,
    path: bytes = b"/p?q=1",
    end: bool = True,
    length: int | None = None,
    headers: HeaderList | None = None,
) -> RequestHead:
    return RequestHead(
        stream_id=sid,
        method=method,
        scheme=b"http",
        authority=b"up.example:8080",
        path=path,
        headers=headers if headers is not None else [(b"x-a", b"1")],
        end_stream=end,
        content_length=length,
    )


def started(method: bytes = b"GET", ctx: H1Context | None = None) -> H1ClientCodec:
    """A client that has sent a complete body-less request and awaits the response."""
    codec = h1_client(ctx)
    sid = codec.open_stream()
    codec.send(request(sid, method))
    codec.output()
    return codec


# -- requests read back by h11 ---------------------------------------------------------------


class Received:
    def __init__(self) -> None:
        self.request: h11.Request | None = None
        self.body = b""
        self.trailers: list[tuple[bytes, bytes]] = []
        self.complete = False

    def header(self, name: bytes) -> bytes | None:
        assert self.request is not None
        values = [v for n, v in self.request.headers if n == name]
        assert len(values) <= 1
        return values[0] if values else None


def receive(raw: bytes) -> Received:
    """What an h11 server makes of the bytes our client wrote."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    out = Received()
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA or ev is h11.PAUSED:
            return out
        if isinstance(ev, h11.Request):
            out.request = ev
        elif isinstance(ev, h11.Data):
            out.body += bytes(ev.data)
        elif isinstance(ev, h11.EndOfMessage):
            out.trailers = list(ev.headers)
            out.complete = True
            return out


def test_get_has_no_framing_headers() -> None:
    codec = h1_client()
    codec.open_stream()
    codec.send(request())
    raw = wire(codec)
    assert raw.startswith(b"GET /p?q=1 HTTP/1.1\r\nhost: up.example:8080\r\nx-a: 1\r\n")
    assert b"content-length" not in raw and b"transfer-encoding" not in raw
    got = receive(raw)
    assert got.request is not None and got.complete
    assert (got.request.method, got.request.target) == (b"GET", b"/p?q=1")
    assert got.header(b"host") == b"up.example:8080"


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"PATCH"])
def test_empty_body_method_gets_content_length_zero(method: bytes) -> None:
    codec = h1_client()
    codec.open_stream()
    codec.send(request(method=method))
    got = receive(wire(codec))
    assert got.header(b"content-length") == b"0"
    assert got.complete and got.body == b""


def test_known_length_uses_content_length() -> None:
    codec = h1_client()
    codec.open_stream()
    codec.send(request(method=b"POST", end=False, length=11))
    codec.send(Body(stream_id=1, data=b"hello ", end_stream=False))
    codec.send(Body(stream_id=1, data=memoryview(b"world"), end_stream=True))
    raw = wire(codec)
    assert raw.endswith(b"\r\n\r\nhello world")
    got = receive(raw)
    assert got.header(b"content-length") == b"11"
    assert got.header(b"transfer-encoding") is None
    assert (got.body, got.complete) == (b"hello world", True)


def test_unknown_length_uses_chunked() -> None:
    codec = h1_client()
    codec.open_stream()
    codec.send(request(method=b"POST", end=False))
    codec.send(Body(stream_id=1, data=b"hello", end_stream=False))
    codec.send(Body(stream_id=1, data=b"", end_stream=False))
    codec.send(Body(stream_id=1, data=b"!", end_stream=True))
    raw = wire(codec)
    assert raw.endswith(b"\r\n\r\n5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n")
    got = receive(raw)
    assert got.header(b"transfer-encoding") == b"chunked"
    assert got.header(b"content-length") is None
    assert (got.body, got.complete) == (b"hello!", True)


def test_chunked_request_with_trailers() -> None:
    codec = h1_client()
    codec.open_stream()
    codec.send(request(method=b"POST", end=False))
    codec.send(Body(stream_id=1, data=b"abc", end_stream=False))
    codec.send(Trailers(stream_id=1, headers=[(b"x-sum", b"7")]))
    got = receive(wire(codec))
    assert (got.body, got.trailers, got.complete) == (b"abc", [(b"x-sum", b"7")], True)


def test_trailers_on_a_content_length_request_are_dropped() -> None:
    codec = h1_client()
    codec.open_stream()
    codec.send(request(method=b"POST", end=False, length=3))
    codec.send(Body(stream_id=1, data=b"abc", end_stream=False))
    codec.send(Trailers(stream_id=1, headers=[(b"x-sum", b"7")]))
    raw = wire(codec)
    assert raw.endswith(b"\r\n\r\nabc")
    got = receive(raw)
    assert (got.body, got.trailers, got.complete) == (b"abc", [], True)


def test_body_after_the_request_ended_is_ignored() -> None:
    codec = h1_client()
    codec.open_stream()
    codec.send(request())
    wire(codec)
    codec.send(Body(stream_id=1, data=b"late", end_stream=True))
    assert wire(codec) == b""


# -- responses -------------------------------------------------------------------------------


def respond(raw: bytes, method: bytes = b"GET") -> tuple[list[Message], H1ClientCodec]:
    """Feed a complete response three ways; returns the messages and the whole-fed codec."""
    codec = started(method)
    whole = feed_whole(codec, raw)
    other = started(method)
    bytewise = feed_bytewise(other, raw)
    assert normalize(bytewise) == normalize(whole)
    assert other.reusable() == codec.reusable()
    trailing = started(method)
    msgs = trailing.feed(raw + b"HTTP/1.1 200 OK\r\n\r\n", NOW)
    assert normalize(msgs) == normalize(whole)
    assert not trailing.reusable(), "unrequested bytes must make the connection unusable"
    return whole, codec


def head_of(msgs: list[Message]) -> ResponseHead:
    head = msgs[0]
    assert isinstance(head, ResponseHead)
    return head


def test_content_length_response() -> None:
    msgs, codec = respond(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-B: 2\r\n\r\nhello")
    head = head_of(msgs)
    assert (head.status, head.headers, head.end_stream, head.content_length) == (
        200,
        [(b"x-b", b"2")],
        False,
        5,
    )
    assert normalize(msgs[1:]) == [("body", b"hello", True)]
    assert codec.reusable()


def test_content_length_zero_response() -> None:
    msgs, codec = respond(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    head = head_of(msgs)
    assert (head.status, head.end_stream, head.content_length) == (404, True, 0)
    assert len(msgs) == 1
    assert codec.reusable()


def test_chunked_response_with_trailers() -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 42\r\nx_upstream: ok\r\n\r\n"
    )
    msgs, codec = respond(raw)
    head = head_of(msgs)
    assert (head.end_stream, head.content_length, head.headers) == (False, None, [])
    assert normalize(msgs[1:]) == [
        ("body", b"hello world", False),
        # `_` is allowed in names from upstreams.
        Trailers(stream_id=1, headers=[(b"x-sum", b"42"), (b"x_upstream", b"ok")]),
    ]
    assert codec.reusable()


def test_chunked_response_without_trailers() -> None:
    msgs, codec = respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert msgs[1:] == [Body(stream_id=1, data=b"", end_stream=True)]
    assert codec.reusable()


def test_close_delimited_response_ends_at_eof() -> None:
    raw = b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nsome bytes"
    for feed in (feed_whole, feed_bytewise):
        codec = started()
        msgs = feed(codec, raw)
        assert head_of(msgs).end_stream is False
        assert body_of(msgs) == b"some bytes"
        assert not any(isinstance(m, Body) and m.end_stream for m in msgs)
        assert not codec.reusable()
        assert codec.feed_eof(NOW) == [Body(stream_id=1, data=b"", end_stream=True)]
        assert not codec.reusable()


@pytest.mark.parametrize(
    ("method", "status_line", "length"),
    [
        (b"HEAD", b"HTTP/1.1 200 OK", 1000),
        (b"HEAD", b"HTTP/1.1 200 OK", None),
        (b"GET", b"HTTP/1.1 204 No Content", None),
        (b"GET", b"HTTP/1.1 304 Not Modified", 1000),
    ],
)
def test_responses_without_a_body(method: bytes, status_line: bytes, length: int | None) -> None:
    cl = b"" if length is None else b"Content-Length: %d\r\n" % length
    msgs, codec = respond(status_line + b"\r\n" + cl + b"\r\n", method)
    head = head_of(msgs)
    assert head.end_stream
    assert head.content_length == length
    assert len(msgs) == 1
    assert codec.reusable()


def test_informational_responses_before_the_final_one() -> None:
    raw = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    msgs, codec = respond(raw)
    heads = [m for m in msgs if isinstance(m, ResponseHead)]
    assert [(h.status, h.end_stream) for h in heads] == [(100, False), (103, False), (200, False)]
    assert heads[1].headers == [(b"link", b"</s.css>")]
    assert body_of(msgs) == b"ok"
    assert codec.reusable()


def test_switching_protocols_is_refused() -> None:
    codec = started()
    with pytest.raises(ProtocolError) as info:
        codec.feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", NOW)
    assert info.value.status_hint == 502
    assert not codec.reusable()


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nConnection: x-a, Close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["close", "close-token", "http/1.0"],
)
def test_connection_close_is_not_reusable(raw: bytes) -> None:
    msgs, codec = respond(raw)
    assert body_of(msgs) == b"ok"
    assert not codec.reusable()


def test_http10_keep_alive_is_reusable() -> None:
    msgs, codec = respond(
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
    )
    assert head_of(msgs).headers == []
    assert codec.reusable()


def test_hop_by_hop_response_headers_are_stripped() -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nConnection: x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n"
        b"Upgrade: h2c\r\nServer: up\r\nContent-Length: 0\r\n\r\n"
    )
    msgs, _ = respond(raw)
    assert head_of(msgs).headers == [(b"server", b"up")]


def test_extra_bytes_make_the_connection_unusable() -> None:
    codec = started()
    codec.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", NOW)
    assert not codec.reusable()
    codec = started()
    codec.feed(b"HTTP/1.1 204 No Content\r\n\r\n", NOW)
    assert codec.reusable()
    codec.feed(b"x", NOW)
    assert not codec.reusable()


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
        b"HTTP/1.1 200 OK\r\nContent-",
        b"",
    ],
    ids=["length", "chunked", "trailers", "head", "nothing"],
)
def test_eof_mid_response_is_broken(raw: bytes) -> None:
    codec = started()
    codec.feed(raw, NOW)
    assert codec.response_started() == bool(raw)
    with pytest.raises(Broken) as info:
        codec.feed_eof(NOW)
    exc = info.value
    assert (exc.side, exc.status_hint, exc.retry, exc.kind) == (
        Side.UPSTREAM,
        502,
        Retry.IF_REUSED,
        "broken",
    )
    assert not codec.reusable()


def test_eof_after_a_complete_response() -> None:
    codec = started()
    codec.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", NOW)
    assert codec.feed_eof(NOW) == []
    assert not codec.reusable()


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200OK\r\n\r\n",
        b"HTTP/1.1  200 OK\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 099 Low\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/2.0 200 OK\r\n\r\n",
        b"http/1.1 200 OK\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1\r\n\r\n",
        b"\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nBad Name: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: 1\r\n folded\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX\r\n",
    ],
    ids=repr,
)
def test_malformed_response(raw: bytes) -> None:
    for feed in (feed_whole, feed_bytewise):
        codec = started()
        with pytest.raises(ProtocolError) as info:
            feed(codec, raw)
        exc = info.value
        assert type(exc) is ProtocolError
        assert (exc.status_hint, exc.side) == (502, Side.UPSTREAM)
        assert not codec.reusable()


def test_response_head_too_large() -> None:
    ctx = h1_context(max_head_size=128)
    big = b"HTTP/1.1 200 OK\r\nX-Big: " + b"x" * 200 + b"\r\n\r\n"
    for data in (big, big[:-4]):
        codec = started(ctx=ctx)
        with pytest.raises(LimitExceeded) as info:
            codec.feed(data, NOW)
        assert (info.value.status_hint, info.value.kind) == (502, "head_size")
        assert not codec.reusable()


def test_response_status_line_without_reason() -> None:
    msgs, codec = respond(b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n")
    assert head_of(msgs).status == 200
    assert codec.reusable()


# -- reuse -------------------------------------------------------------------------------------


def test_reusable_only_after_both_halves_are_done() -> None:
    codec = h1_client()
    sid = codec.open_stream()
    assert not codec.reusable()
    codec.send(request(sid, b"POST", end=False, length=4))
    codec.send(Body(stream_id=sid, data=b"ab", end_stream=False))
    # An early response (e.g. 413) completes before the request body does.
    msgs = codec.feed(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n", NOW)
    assert head_of(msgs).end_stream
    assert not codec.reusable()
    codec.send(Body(stream_id=sid, data=b"cd", end_stream=True))
    assert codec.reusable()


def test_reusable_needs_the_response_to_end() -> None:
    codec = started()
    assert not codec.reusable()
    assert not codec.response_started()
    codec.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab", NOW)
    assert codec.response_started()
    assert not codec.reusable()
    codec.feed(b"cd", NOW)
    assert codec.reusable()


def test_reset_makes_the_connection_unusable() -> None:
    codec = h1_client()
    codec.open_stream()
    codec.send(request(method=b"POST", end=False))
    codec.send(Reset(stream_id=1, code=ResetCode.CANCEL, side=Side.DOWNSTREAM))
    codec.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", NOW)
    assert not codec.reusable()


def test_two_exchanges_on_one_connection() -> None:
    codec = h1_client()
    for n in (1, 2):
        sid = codec.open_stream()
        assert sid == n
        codec.send(request(sid, path=b"/%d" % n))
        assert receive(wire(codec)).request is not None
        msgs = codec.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%d" % n, NOW)
        assert [m.stream_id for m in msgs] == [sid, sid]
        assert body_of(msgs) == b"%d" % n
        assert codec.reusable()
    assert codec.requests == 2


def test_pause_is_reference_counted() -> None:
    codec = h1_client()
    codec.pause(1)
    codec.pause(1)
    codec.resume(1)
    assert not codec.wants_read()
    codec.resume(1)
    codec.resume(1)
    assert codec.wants_read()


# -- client and server codecs back to back -----------------------------------------------------


def test_pair_round_trip_with_chunked_bodies_both_ways() -> None:
    pair = H1Pair()
    sid = pair.client.open_stream()
    pair.client.send(request(sid, b"POST", end=False))
    pair.client.send(Body(stream_id=sid, data=b"up", end_stream=False))
    pair.client.send(Trailers(stream_id=sid, headers=[(b"x-t", b"1")]))
    got = pair.to_server()
    head = got[0]
    assert isinstance(head, RequestHead)
    assert (head.method, head.authority, head.path) == (b"POST", b"up.example:8080", b"/p?q=1")
    assert head.headers == [(b"x-a", b"1")]
    assert normalize(got[1:]) == [
        ("body", b"up", False),
        Trailers(stream_id=head.stream_id, headers=[(b"x-t", b"1")]),
    ]

    rid = head.stream_id
    pair.server.send(ResponseHead(stream_id=rid, status=201, headers=[], end_stream=False))
    pair.server.send(Body(stream_id=rid, data=b"down", end_stream=False))
    pair.server.send(Trailers(stream_id=rid, headers=[(b"x-r", b"2")]))
    back = pair.to_client()
    assert head_of(back).status == 201
    assert normalize(back[1:]) == [
        ("body", b"down", False),
        Trailers(stream_id=sid, headers=[(b"x-r", b"2")]),
    ]
    assert pair.client.reusable()
    assert not pair.server.wants_close()


def test_errors_are_eg_errors() -> None:
    codec = started()
    with pytest.raises(EgError):
        codec.feed(b"garbage\r\n\r\n", NOW)
