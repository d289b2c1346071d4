"""H1ServerCodec edge cases: smuggling defences, limits, keep-alive, pipelining, framing.

Every accepted request is fed whole, byte by byte and with trailing bytes, and must give
the same messages each way. Every rejected one must raise the same error each way, and
``error_response`` must then queue the 4xx reply. Responses are checked by parsing them
back with h11 as a client.
"""

from __future__ import annotations

from collections.abc import Callable

import h11
import pytest

from eg.core.codec.h1._parse import H1Context
from eg.core.codec.h1.server import H1ServerCodec
from eg.core.errors import EgError, LimitExceeded, ProtocolError
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
    TRAILING_REQUEST,
    body_of,
    feed_bytewise,
    feed_whole,
    h1_context,
    h1_server,
    normalize,
    wire,
)

GET = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"


def post(body: bytes, *headers: bytes, target: bytes = b"/") -> bytes:
    """A POST with a Content-Length body and extra raw header lines."""
    extra = b"".join(h + b"\r\n" for h in headers)
    return b"POST %s HTTP/1.1\r\nHost: example.com\r\nContent-Length: %d\r\n%s\r\n%s" % (
        target,
        len(body),
        extra,
        body,
    )


def chunked(*lines: bytes) -> bytes:
    """A chunked POST head followed by ``lines`` joined with CRLF (the body, verbatim)."""
    return (
        b"POST /up HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"\r\n".join(lines)
    )


def response(
    sid: int = 1,
    status: int = 200,
    *,
    end: bool = True,
    length: int | None = None,
    headers: HeaderList | None = None,
) -> ResponseHead:
    return ResponseHead(
        stream_id=sid, status=status, headers=headers or [], end_stream=end, content_length=length
    )


def accept(data: bytes, ctx: H1Context | None = None) -> list[Message | tuple[str, bytes, bool]]:
    """Parse a complete request three ways; returns the (body-merged) messages."""
    results = []
    for feed in (feed_whole, feed_bytewise):
        results.append(normalize(feed(h1_server(ctx), data)))
    codec = h1_server(ctx)
    results.append(normalize(codec.feed(data + TRAILING_REQUEST, NOW)))
    assert results[0] == results[1] == results[2]
    assert not codec.has_buffered_input(), "the trailing request must wait for a response"
    return results[0]


def reject(
    data: bytes,
    error: type[EgError] = ProtocolError,
    status: int = 400,
    kind: str | tuple[str, ...] | None = None,
    ctx: H1Context | None = None,
) -> EgError:
    """Feed a bad request three ways: the same error each time, then the 4xx reply."""
    caught: list[EgError] = []
    for feed, payload in ((feed_whole, data), (feed_bytewise, data), (feed_whole, data + b"x")):
        codec = h1_server(ctx)
        with pytest.raises(error) as info:
            feed(codec, payload)
        exc = info.value
        assert type(exc) is error
        assert (exc.status_hint, exc.side) == (status, Side.DOWNSTREAM)
        if kind is not None:
            assert exc.kind in ((kind,) if isinstance(kind, str) else kind)
        assert codec.wants_close()
        assert not codec.wants_read()
        assert codec.feed(b"more", NOW) == []
        codec.error_response(exc.status_hint)
        reply = parse_response(wire(codec))
        assert reply.status == status
        assert (b"connection", b"close") in reply.headers
        caught.append(exc)
    assert len({(type(e), e.kind) for e in caught}) == 1
    return caught[0]


# -- responses read back by h11 ---------------------------------------------------------------


class Parsed:
    def __init__(self) -> None:
        self.status = 0
        self.informational: list[int] = []
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.trailers: list[tuple[bytes, bytes]] = []
        self.complete = False


def parse_response(raw: bytes, *, method: bytes = b"GET", eof: bool = False) -> Parsed:
    """What an h11 client makes of ``raw`` as the response to one request."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "a")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(raw)
    if eof:
        conn.receive_data(b"")
    out = Parsed()
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA or ev is h11.PAUSED or isinstance(ev, h11.ConnectionClosed):
            return out
        if isinstance(ev, h11.InformationalResponse):
            out.informational.append(ev.status_code)
        elif isinstance(ev, h11.Response):
            out.status = ev.status_code
            out.headers = list(ev.headers)
        elif isinstance(ev, h11.Data):
            out.body += bytes(ev.data)
        elif isinstance(ev, h11.EndOfMessage):
            out.trailers = list(ev.headers)
            out.complete = True
            return out


def header(parsed: Parsed, name: bytes) -> bytes | None:
    values = [v for n, v in parsed.headers if n == name]
    assert len(values) <= 1
    return values[0] if values else None


# -- request smuggling -----------------------------------------------------------------------


def test_content_length_with_transfer_encoding() -> None:
    data = chunked(b"0", b"", b"").replace(b"\r\n\r\n", b"\r\nContent-Length: 5\r\n\r\n", 1)
    reject(data, kind="cl_te")


@pytest.mark.parametrize(
    "value", [b"gzip", b"gzip, chunked", b"chunked, gzip", b"identity", b"chunked;q=1", b""]
)
def test_transfer_encoding_other_than_chunked(value: bytes) -> None:
    data = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: %s\r\n\r\n0\r\n\r\n" % value
    reject(data, status=501, kind="transfer_encoding")


def test_transfer_encoding_twice() -> None:
    data = (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    reject(data, status=501, kind="transfer_encoding")


@pytest.mark.parametrize("value", [b"Chunked", b"CHUNKED", b"chunked "])
def test_transfer_encoding_is_case_insensitive(value: bytes) -> None:
    data = chunked(b"2", b"hi", b"0", b"", b"").replace(b"chunked", value, 1)
    msgs = accept(data)
    assert msgs[1] == ("body", b"hi", True)


def test_differing_duplicate_content_length() -> None:
    reject(post(b"hello", b"Content-Length: 4"), kind="content_length")


def test_identical_duplicate_content_length_is_accepted() -> None:
    msgs = accept(post(b"hello", b"content-length: 5"))
    head = msgs[0]
    assert isinstance(head, RequestHead)
    assert head.content_length == 5
    assert msgs[1:] == [("body", b"hello", True)]


@pytest.mark.parametrize(
    "value", [b"5, 5", b"5,6", b"+5", b"-1", b"0x5", b"05", b"5 5", b"", b"abc", b"9" * 20]
)
def test_invalid_content_length(value: bytes) -> None:
    data = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %s\r\n\r\nhello" % value
    reject(data, kind="content_length")


@pytest.mark.parametrize(
    "size",
    [b"g", b"", b" 5", b"5 ", b"5 ;x", b"5\t;x", b"0x5", b"-5", b"+5", b"1" * 17],
    ids=repr,
)
def test_invalid_chunk_size(size: bytes) -> None:
    reject(chunked(size, b"hello", b"0", b"", b""), kind="chunk_size")


@pytest.mark.parametrize(
    "body",
    [
        b"5\r\nhelloXX0\r\n\r\n",  # data not followed by CRLF
        b"5\r\nhello\n0\r\n\r\n",  # bare LF after data
        b"5\nhello\r\n0\r\n\r\n",  # bare LF after the size
        b"5;a\x00\r\nhello\r\n0\r\n\r\n",  # CTL in an extension
        b"0\r\nx_y: 1\r\n\r\n",  # `_` in a trailer name
        b"0\r\nContent-Length: 5\r\n\r\n",  # framing field in trailers
        b"0\r\n folded\r\n\r\n",  # obs-fold in trailers
    ],
    ids=repr,
)
def test_invalid_chunked_framing(body: bytes) -> None:
    reject(chunked(body))


def test_chunk_size_line_too_long() -> None:
    size_line = b"5;" + b"x" * 5000
    reject(chunked(size_line, b"hello", b"0", b"", b""), LimitExceeded, 431, "chunk_line")


FIELD_ERRORS = ("header_line", "header_name", "header_value")


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n folded\r\n\r\n",  # obs-fold
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\tfolded: x\r\n\r\n",  # obs-fold, colon
        b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",  # whitespace before the first field
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A : 1\r\n\r\n",  # space before the colon
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A\t: 1\r\n\r\n",  # tab before the colon
        b"GET / HTTP/1.1\r\nHost: a\r\nX_A: 1\r\n\r\n",  # `_` in a name
        b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n",  # no colon
        b"GET / HTTP/1.1\r\nHost: a\r\n: empty\r\n\r\n",  # empty name
        b"GET / HTTP/1.1\r\nHost: a\r\nX\x00: 1\r\n\r\n",  # NUL in a name
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n",  # NUL in a value
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x01b\r\n\r\n",  # CTL in a value
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: \x7f\r\n\r\n",  # DEL in a value
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x0bb\r\n\r\n",  # VT in a value
    ],
    ids=repr,
)
def test_malformed_field_lines(data: bytes) -> None:
    reject(data, kind=FIELD_ERRORS)


def test_obs_text_in_a_value_is_accepted() -> None:
    head = accept(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: caf\xe9\r\n\r\n")[0]
    assert isinstance(head, RequestHead)
    assert head.headers == [(b"x-a", b"caf\xe9")]


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\n",
        b"GET / HTTP/1.1\n\n",
        b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\r\n\r\n",
    ],
    ids=repr,
)
def test_bare_lf_or_cr(data: bytes) -> None:
    reject(data, kind="bare_lf")


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (b"G@T / HTTP/1.1", "method"),
        (b"GE\x00T / HTTP/1.1", "method"),
        (b"(GET) / HTTP/1.1", "method"),
        (b"GET /a\x01 HTTP/1.1", "target"),
        (b"GET /\x7f HTTP/1.1", "target"),
        (b"GET /\x80 HTTP/1.1", "target"),
        (b"GET foo HTTP/1.1", "target"),
        (b"GET * HTTP/1.1", "target"),
        (b"GET //x HTTP/1.1", None),
        (b"GET ftp://h/ HTTP/1.1", "target"),
        (b"GET http:// HTTP/1.1", "target"),
        (b"GET http://u@h/ HTTP/1.1", "target"),
        (b"GET http://h#f HTTP/1.1", "target"),
        (b"GET  / HTTP/1.1", "request_line"),
        (b"GET /\tHTTP/1.1", "request_line"),
        (b"GET / HTTP/1.1 ", "request_line"),
        (b"GET /", "request_line"),
        (b"GET / http/1.1", "request_line"),
        (b"GET / HTTP/1", "request_line"),
        (b"GET / HTTPS/1.1", "request_line"),
    ],
    ids=repr,
)
def test_invalid_request_line(line: bytes, kind: str | None) -> None:
    data = line + b"\r\nHost: a\r\n\r\n"
    if kind is None:
        # "//x" is a valid origin-form path.
        head = accept(data)[0]
        assert isinstance(head, RequestHead)
        assert head.path == b"//x"
        return
    reject(data, kind=kind)


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/1.2", b"HTTP/0.9", b"HTTP/3.0"])
def test_unsupported_version(version: bytes) -> None:
    reject(b"GET / %s\r\nHost: a\r\n\r\n" % version, status=505, kind="version")


def test_connect_is_refused() -> None:
    # Whatever the target form, CONNECT is answered 405: a reverse proxy does not tunnel.
    reject(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", status=405, kind="method")
    reject(b"CONNECT / HTTP/1.1\r\nHost: a:443\r\n\r\n", status=405, kind="method")


@pytest.mark.parametrize("value", [b"foo", b"100-continue, foo", b""])
def test_unknown_expectation(value: bytes) -> None:
    reject(post(b"x", b"Expect: " + value), status=417, kind="expect")


@pytest.mark.parametrize(
    "hosts",
    [b"", b"Host: a\r\nHost: a\r\n", b"Host: a b\r\n", b"Host: a/b\r\n", b"Host: a@b\r\n"],
    ids=repr,
)
def test_bad_host(hosts: bytes) -> None:
    reject(b"GET / HTTP/1.1\r\n%s\r\n" % hosts, kind="host")


def test_http10_without_host_is_accepted() -> None:
    head = accept(b"GET / HTTP/1.0\r\n\r\n")[0]
    assert isinstance(head, RequestHead)
    assert (head.authority, head.http_minor) == (b"", 0)


# -- limits ----------------------------------------------------------------------------------


def test_head_larger_than_max_head_size() -> None:
    ctx = h1_context(max_head_size=1024)
    big = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * 1024 + b"\r\n\r\n"
    reject(big, LimitExceeded, 431, "head_size", ctx)
    # Never completed: the limit applies to the bytes buffered so far.
    reject(big[:-4], LimitExceeded, 431, "head_size", ctx)


def test_head_exactly_max_head_size_is_accepted() -> None:
    base = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: \r\n\r\n"
    data = base.replace(b"X-Pad: ", b"X-Pad: " + b"p" * (256 - len(base)))
    assert len(data) == 256
    accept(data, h1_context(max_head_size=256))
    reject(
        data.replace(b"X-Pad: ", b"X-Pad: p"),
        LimitExceeded,
        431,
        "head_size",
        h1_context(max_head_size=256),
    )


def test_too_many_header_fields() -> None:
    ctx = h1_context(max_headers=8)
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(7))
    accept(b"GET / HTTP/1.1\r\nHost: a\r\n%s\r\n" % fields, ctx)
    fields += b"X-7: v\r\n"
    reject(b"GET / HTTP/1.1\r\nHost: a\r\n%s\r\n" % fields, LimitExceeded, 431, "header_count", ctx)


# -- keep-alive, pipelining ------------------------------------------------------------------


def exchange(codec: H1ServerCodec, data: bytes, *, length: int = 2) -> tuple[RequestHead, bytes]:
    """One request in, a ``length``-byte response out; returns the head and the wire bytes."""
    msgs = codec.feed(data, NOW)
    head = msgs[0]
    assert isinstance(head, RequestHead)
    codec.send(response(head.stream_id, end=False, length=length))
    codec.send(Body(stream_id=head.stream_id, data=b"o" * length, end_stream=True))
    return head, wire(codec)


def test_three_requests_on_one_connection() -> None:
    codec = h1_server()
    for sid in (1, 2, 3):
        assert codec.phase == "idle"
        head, out = exchange(codec, b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % sid)
        assert (head.stream_id, head.path) == (sid, b"/%d" % sid)
        parsed = parse_response(out)
        assert parsed.complete and parsed.body == b"oo"
        assert header(parsed, b"connection") is None
        assert not codec.wants_close()
    assert codec.requests == 3


def test_request_cap_closes_the_last_response() -> None:
    codec = h1_server(max_requests=100)
    for n in range(1, 101):
        _, out = exchange(codec, GET)
        closing = b"connection: close\r\n" in out
        assert closing == (n == 100), n
    assert codec.wants_close()
    assert codec.feed(GET, NOW) == []


def test_draining_closes_the_next_response() -> None:
    codec = h1_server()
    codec.draining = True
    _, out = exchange(codec, GET)
    assert b"connection: close\r\n" in out
    assert codec.wants_close()


def test_connection_close_from_the_client() -> None:
    codec = h1_server()
    _, out = exchange(codec, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert header(parse_response(out), b"connection") == b"close"
    assert codec.wants_close()


@pytest.mark.parametrize("split", [False, True])
def test_pipelined_requests_wait_for_the_response(split: bool) -> None:
    first = post(b"abc", target=b"/one")
    second = b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n"
    codec = h1_server()
    feed = feed_bytewise if split else feed_whole
    msgs = feed(codec, first + second)
    heads = [m for m in msgs if isinstance(m, RequestHead)]
    assert [h.path for h in heads] == [b"/one"]
    assert body_of(msgs) == b"abc"
    assert codec.phase == "waiting"
    assert not codec.has_buffered_input()

    codec.send(response(1, end=False, length=3))
    assert codec.feed(b"", NOW) == []  # response not finished: still held
    assert not codec.has_buffered_input()
    codec.send(Body(stream_id=1, data=b"one", end_stream=True))
    assert codec.has_buffered_input()
    out1 = wire(codec)

    msgs = codec.feed(b"", NOW)
    assert len(msgs) == 1
    head = msgs[0]
    assert isinstance(head, RequestHead)
    assert (head.stream_id, head.path, head.end_stream) == (2, b"/two", True)
    assert not codec.has_buffered_input()
    codec.send(response(2, end=False, length=3))
    codec.send(Body(stream_id=2, data=b"two", end_stream=True))
    out2 = wire(codec)

    # Both responses, in order, read back from one byte stream.
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(out1 + out2)
    bodies = []
    for path in ("/one", "/two"):
        conn.send(h11.Request(method="GET", target=path, headers=[("Host", "a")]))
        conn.send(h11.EndOfMessage())
        assert isinstance(conn.next_event(), h11.Response)
        data = conn.next_event()
        assert isinstance(data, h11.Data)
        bodies.append(bytes(data.data))
        assert isinstance(conn.next_event(), h11.EndOfMessage)
        conn.start_next_cycle()
    assert bodies == [b"one", b"two"]


def test_pipelined_bytes_beyond_one_head_stop_reading() -> None:
    ctx = h1_context(max_head_size=256)
    codec = h1_server(ctx)
    codec.feed(GET + b"GET / HTTP/1.1\r\nX: " + b"x" * 300, NOW)
    assert not codec.wants_read()
    codec.send(response())
    with pytest.raises(LimitExceeded):
        codec.feed(b"", NOW)


# -- HTTP/1.0 ---------------------------------------------------------------------------------


def test_http10_close_delimited_response() -> None:
    codec = h1_server()
    head = codec.feed(b"GET / HTTP/1.0\r\n\r\n", NOW)[0]
    assert isinstance(head, RequestHead)
    assert head.http_minor == 0
    codec.send(response(end=False, headers=[(b"x-a", b"1")]))
    codec.send(Body(stream_id=1, data=b"hello ", end_stream=False))
    codec.send(Body(stream_id=1, data=b"world", end_stream=True))
    out = wire(codec)
    assert b"content-length" not in out and b"transfer-encoding" not in out
    parsed = parse_response(out, eof=True)
    assert (parsed.status, parsed.body, parsed.complete) == (200, b"hello world", True)
    assert header(parsed, b"connection") == b"close"
    assert codec.wants_close()


def test_http10_keep_alive_when_asked() -> None:
    codec = h1_server()
    _, out = exchange(codec, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    parsed = parse_response(out)
    assert header(parsed, b"connection") == b"keep-alive"
    assert parsed.body == b"oo"
    assert not codec.wants_close()
    head, _ = exchange(codec, b"GET /2 HTTP/1.0\r\n\r\n")
    assert head.stream_id == 2
    assert codec.wants_close()


def test_http10_keep_alive_with_unknown_length_still_closes() -> None:
    codec = h1_server()
    codec.feed(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", NOW)
    codec.send(response(end=False))
    codec.send(Body(stream_id=1, data=b"x", end_stream=True))
    assert b"connection: close\r\n" in wire(codec)
    assert codec.wants_close()


def test_http10_drops_informational_responses() -> None:
    codec = h1_server()
    codec.feed(b"POST / HTTP/1.0\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n", NOW)
    codec.send(response(status=100, end=False))
    assert wire(codec) == b""


# -- response framing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "status", "length"),
    [(b"HEAD", 200, 10), (b"HEAD", 200, None), (b"GET", 204, None), (b"GET", 304, 10)],
)
def test_responses_without_body_bytes(method: bytes, status: int, length: int | None) -> None:
    codec = h1_server()
    codec.feed(b"%s / HTTP/1.1\r\nHost: a\r\n\r\n" % method, NOW)
    codec.send(response(status=status, end=False, length=length))
    codec.send(Body(stream_id=1, data=b"0123456789", end_stream=True))
    out = wire(codec)
    assert out.endswith(b"\r\n\r\n")
    assert b"0123456789" not in out and b"transfer-encoding" not in out
    assert (b"content-length: 10\r\n" in out) == (length is not None)
    parsed = parse_response(out, method=method)
    assert (parsed.status, parsed.body, parsed.complete) == (status, b"", True)
    # The connection is ready for the next request.
    assert not codec.wants_close()
    assert isinstance(codec.feed(GET, NOW)[0], RequestHead)


def test_chunked_response_with_trailers() -> None:
    codec = h1_server()
    codec.feed(GET, NOW)
    codec.send(response(end=False, headers=[(b"trailer", b"x-sum")]))
    codec.send(Body(stream_id=1, data=b"hello", end_stream=False))
    codec.send(Body(stream_id=1, data=b"", end_stream=False))
    codec.send(Body(stream_id=1, data=memoryview(b" world"), end_stream=False))
    codec.send(Trailers(stream_id=1, headers=[(b"x-sum", b"42")]))
    out = wire(codec)
    assert out.endswith(b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 42\r\n\r\n")
    parsed = parse_response(out)
    assert header(parsed, b"transfer-encoding") == b"chunked"
    assert (parsed.body, parsed.trailers, parsed.complete) == (
        b"hello world",
        [(b"x-sum", b"42")],
        True,
    )
    assert not codec.wants_close()


def test_chunked_response_ended_by_an_empty_body() -> None:
    codec = h1_server()
    codec.feed(GET, NOW)
    codec.send(response(end=False))
    codec.send(Body(stream_id=1, data=b"abc", end_stream=True))
    out = wire(codec)
    assert out.endswith(b"3\r\nabc\r\n0\r\n\r\n")
    assert parse_response(out).body == b"abc"


def test_content_length_response() -> None:
    codec = h1_server()
    codec.feed(GET, NOW)
    codec.send(response(end=False, length=5, headers=[(b"content-type", b"text/plain")]))
    codec.send(Body(stream_id=1, data=b"he", end_stream=False))
    codec.send(Body(stream_id=1, data=b"llo", end_stream=True))
    out = wire(codec)
    parsed = parse_response(out)
    assert header(parsed, b"content-length") == b"5"
    assert header(parsed, b"content-type") == b"text/plain"
    assert (parsed.body, parsed.complete) == (b"hello", True)
    assert not codec.aborted and not codec.wants_close()


def test_empty_response_gets_content_length_zero() -> None:
    codec = h1_server()
    codec.feed(GET, NOW)
    codec.send(response(end=True))
    out = wire(codec)
    assert b"content-length: 0\r\n" in out
    assert parse_response(out).complete


def test_response_longer_than_its_content_length() -> None:
    codec = h1_server()
    codec.feed(GET, NOW)
    codec.send(response(end=False, length=2))
    with pytest.raises(ProtocolError) as info:
        codec.send(Body(stream_id=1, data=b"abc", end_stream=True))
    assert (info.value.status_hint, info.value.side, info.value.kind) == (
        502,
        Side.UPSTREAM,
        "body_length",
    )


def test_response_shorter_than_its_content_length_aborts() -> None:
    codec = h1_server()
    codec.feed(GET, NOW)
    codec.send(response(end=False, length=5))
    codec.send(Body(stream_id=1, data=b"abc", end_stream=True))
    assert codec.aborted and codec.wants_close()


def test_response_before_the_request_body_was_read_closes() -> None:
    codec = h1_server()
    msgs = codec.feed(post(b"0123456789")[:-7], NOW)
    assert body_of(msgs) == b"012"
    assert codec.phase == "body"
    codec.send(response(status=413, end=True))
    out = wire(codec)
    assert b"connection: close\r\n" in out
    assert parse_response(out).status == 413
    assert codec.wants_close()
    assert codec.feed(b"3456789", NOW) == []


def test_reset_aborts() -> None:
    codec = h1_server()
    codec.feed(GET, NOW)
    codec.send(response(end=False))
    codec.send(Body(stream_id=1, data=b"partial", end_stream=False))
    codec.send(Reset(stream_id=1, code=ResetCode.INTERNAL_ERROR, side=Side.UPSTREAM))
    assert codec.aborted and codec.wants_close()
    assert codec.phase == "closed"


def test_error_response_after_the_response_started_aborts() -> None:
    codec = h1_server()
    codec.feed(GET, NOW)
    codec.send(response(end=False))
    wire(codec)
    codec.error_response(502)
    assert wire(codec) == b""
    assert codec.aborted and codec.wants_close()


def test_error_response_reply() -> None:
    codec = h1_server()
    codec.error_response(408)
    parsed = parse_response(wire(codec))
    assert (parsed.status, parsed.body, parsed.complete) == (408, b"408 Request Timeout\n", True)
    assert header(parsed, b"connection") == b"close"
    assert codec.wants_close()


# -- end of input ------------------------------------------------------------------------------


def test_feed_eof_mid_body_resets() -> None:
    codec = h1_server()
    codec.feed(post(b"hello")[:-2], NOW)
    assert codec.feed_eof(NOW) == [Reset(stream_id=1, code=ResetCode.CANCEL, side=Side.DOWNSTREAM)]
    assert codec.wants_close()


def test_feed_eof_mid_chunked_body_resets() -> None:
    codec = h1_server()
    codec.feed(chunked(b"5", b"hel"), NOW)
    (reset,) = codec.feed_eof(NOW)
    assert isinstance(reset, Reset)
    assert reset.side is Side.DOWNSTREAM


def test_feed_eof_between_requests() -> None:
    codec = h1_server()
    assert codec.feed_eof(NOW) == []
    assert codec.wants_close()


def test_feed_eof_after_a_complete_request_still_answers() -> None:
    codec = h1_server()
    codec.feed(GET, NOW)
    assert codec.feed_eof(NOW) == []
    assert not codec.wants_close()
    codec.send(response(end=False, length=1))
    codec.send(Body(stream_id=1, data=b"x", end_stream=True))
    assert b"connection: close\r\n" in wire(codec)
    assert codec.wants_close()


# -- request semantics -------------------------------------------------------------------------


def test_expect_continue() -> None:
    head = accept(post(b"hi", b"Expect: 100-continue"))[0]
    assert isinstance(head, RequestHead)
    assert head.expect_continue
    assert all(name != b"expect" for name, _ in head.headers)

    codec = h1_server()
    codec.feed(post(b"hi", b"Expect: 100-Continue")[:-2], NOW)
    codec.send(response(status=100, end=False))
    assert wire(codec) == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert codec.feed(b"hi", NOW) == [Body(stream_id=1, data=b"hi", end_stream=True)]


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
        b"POST / HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nhi",
        post(b"", b"Expect: 100-continue"),
    ],
    ids=["no-body", "http/1.0", "empty-body"],
)
def test_expect_continue_only_with_a_body_on_http11(data: bytes) -> None:
    head = accept(data)[0]
    assert isinstance(head, RequestHead)
    assert not head.expect_continue


@pytest.mark.parametrize(
    ("target", "authority", "path"),
    [
        (b"http://example.com:8080/a?b=c", b"example.com:8080", b"/a?b=c"),
        (b"https://h", b"h", b"/"),
        (b"HTTP://H/x", b"H", b"/x"),
        (b"http://a?x=1", b"a", b"/?x=1"),
        (b"http://a?x=/y", b"a", b"/?x=/y"),
        (b"http://[::1]:80/p", b"[::1]:80", b"/p"),
        (b"/p?q", b"host.example", b"/p?q"),
    ],
)
def test_request_target_forms(target: bytes, authority: bytes, path: bytes) -> None:
    head = accept(b"GET %s HTTP/1.1\r\nHost: host.example\r\n\r\n" % target)[0]
    assert isinstance(head, RequestHead)
    assert (head.scheme, head.authority, head.path) == (b"http", authority, path)


def test_asterisk_form() -> None:
    head = accept(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")[0]
    assert isinstance(head, RequestHead)
    assert (head.method, head.authority, head.path) == (b"OPTIONS", b"a", b"*")


def test_scheme_is_reported() -> None:
    head = h1_server(scheme=b"https").feed(GET, NOW)[0]
    assert isinstance(head, RequestHead)
    assert head.scheme == b"https"


def test_hop_by_hop_headers_are_stripped() -> None:
    data = (
        b"POST /p HTTP/1.1\r\nHOST: a\r\nX-First: 1\r\nConnection: keep-alive, X-Foo, Te\r\n"
        b"Keep-Alive: timeout=5\r\nProxy-Connection: x\r\nTE: trailers\r\nUpgrade: h2c\r\n"
        b"X-Foo: dropped\r\nx-foo: dropped too\r\nContent-Length: 2\r\nExpect: 100-continue\r\n"
        b"Accept: */*\r\nX-First: 2\r\n\r\nhi"
    )
    head = accept(data)[0]
    assert isinstance(head, RequestHead)
    assert head.headers == [(b"x-first", b"1"), (b"accept", b"*/*"), (b"x-first", b"2")]


def test_connection_close_token_does_not_strip_a_close_header() -> None:
    head = accept(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nClose: x\r\n\r\n")[0]
    assert isinstance(head, RequestHead)
    assert head.headers == [(b"close", b"x")]


def test_header_names_lowercased_values_trimmed() -> None:
    head = accept(b"GET / HTTP/1.1\r\nHost: a\r\nX-Mixed-CASE:\t v a l \t\r\n\r\n")[0]
    assert isinstance(head, RequestHead)
    assert head.headers == [(b"x-mixed-case", b"v a l")]


# -- bodies, byte by byte -----------------------------------------------------------------------


def test_content_length_body_byte_by_byte() -> None:
    codec = h1_server()
    msgs = feed_bytewise(codec, post(b"hello"))
    bodies = [m for m in msgs if isinstance(m, Body)]
    assert [bytes(b.data) for b in bodies] == [b"h", b"e", b"l", b"l", b"o"]
    assert [b.end_stream for b in bodies] == [False] * 4 + [True]
    assert codec.phase == "waiting"


def test_chunked_body_with_trailers() -> None:
    data = chunked(b"5;name=v", b"hello", b"6", b" world", b"0", b"X-Sum: 42", b"", b"")
    msgs = accept(data)
    assert msgs[1:] == [
        ("body", b"hello world", False),
        Trailers(stream_id=1, headers=[(b"x-sum", b"42")]),
    ]


def test_chunked_body_without_trailers_ends_with_empty_body() -> None:
    msgs = feed_whole(h1_server(), chunked(b"3", b"abc", b"0", b"", b""))
    assert msgs[-1] == Body(stream_id=1, data=b"", end_stream=True)
    assert body_of(msgs) == b"abc"


def test_chunked_body_slices_are_zero_copy() -> None:
    data = chunked(b"3", b"abc", b"0", b"", b"")
    msgs = h1_server().feed(data, NOW)
    piece = next(m for m in msgs if isinstance(m, Body) and m.data)
    assert isinstance(piece.data, memoryview)


def test_zero_length_body() -> None:
    msgs = accept(post(b""))
    head = msgs[0]
    assert isinstance(head, RequestHead)
    assert head.end_stream and head.content_length == 0
    assert len(msgs) == 1


BODY_CASES: list[tuple[str, Callable[[], bytes]]] = [
    ("length", lambda: post(b"0123456789")),
    ("chunked", lambda: chunked(b"a", b"0123456789", b"0", b"", b"")),
    ("chunked-many", lambda: chunked(*[b"1\r\n%d" % i for i in range(10)], b"0", b"", b"")),
]


@pytest.mark.parametrize("make", [c[1] for c in BODY_CASES], ids=[c[0] for c in BODY_CASES])
def test_bodies_whole_bytewise_trailing(make: Callable[[], bytes]) -> None:
    msgs = accept(make())
    assert msgs[1] == ("body", b"0123456789", True)


# -- flow control and phases ---------------------------------------------------------------


def test_pause_is_reference_counted() -> None:
    codec = h1_server()
    assert codec.wants_read()
    codec.pause(1)
    codec.pause(1)
    codec.resume(1)
    assert not codec.wants_read()
    codec.resume(1)
    codec.resume(1)
    assert codec.wants_read()


def test_phases() -> None:
    codec = h1_server()
    assert codec.phase == "idle"
    codec.feed(b"POST / HTTP/1.1\r\n", NOW)
    assert codec.phase == "head"
    codec.feed(b"Host: a\r\nContent-Length: 1\r\n\r\n", NOW)
    assert codec.phase == "body"
    codec.feed(b"x", NOW)
    assert codec.phase == "waiting"
    assert not codec.response_started
    codec.send(response(end=False, length=1))
    assert codec.response_started
    codec.send(Body(stream_id=1, data=b"y", end_stream=True))
    assert codec.phase == "idle"


def test_messages_for_another_stream_are_dropped() -> None:
    codec = h1_server()
    (head,) = codec.feed(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n", 0.0)
    assert isinstance(head, RequestHead)
    codec.send(ResponseHead(stream_id=head.stream_id, status=200, headers=[], end_stream=False,
                            content_length=2))
    codec.send(Body(stream_id=head.stream_id, data=b"ok", end_stream=True))
    (second,) = codec.feed(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n", 0.0)
    wire(codec)
    # A late body of the first exchange must not leak into the second response.
    codec.send(Body(stream_id=head.stream_id, data=b"late", end_stream=True))
    assert wire(codec) == b""
    codec.send(ResponseHead(stream_id=second.stream_id, status=204, headers=[], end_stream=True))
    assert wire(codec).startswith(b"HTTP/1.1 204 ")
