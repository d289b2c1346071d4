"""H2ClientCodec talking to H2ServerCodec in memory: both adapters end to end.

Everything one side sends must come out of the other as the same messages, whatever
way the bytes are split, with flow control moving large bodies both ways through
64 KiB windows and pauses holding senders back.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eg.core.codec.h2.client import H2ClientCodec
from eg.core.codec.h2.server import H2ServerCodec
from eg.core.message import (
    Body,
    Message,
    RequestHead,
    Reset,
    ResetCode,
    ResponseHead,
    Side,
    Trailers,
)

from .test_h2_support import H2Pair, body_of, context, merged, wire


@pytest.mark.parametrize("bytewise", [False, True])
def test_get_round_trip(bytewise: bool) -> None:
    pair = H2Pair()
    sid = pair.request(path=b"/p?q=1", headers=[(b"accept", b"*/*"), (b"cookie", b"a=1")])
    [head] = pair.to_server(bytewise=bytewise)
    assert head == RequestHead(
        stream_id=sid, method=b"GET", scheme=b"https", authority=b"pair.example",
        path=b"/p?q=1", headers=[(b"accept", b"*/*"), (b"cookie", b"a=1")], end_stream=True,
    )
    pair.respond(sid, headers=[(b"content-type", b"text/plain")], body=b"hi")
    msgs = merged(pair.to_client(bytewise=bytewise))
    assert msgs == [
        ResponseHead(stream_id=sid, status=200, headers=[(b"content-type", b"text/plain")],
                     end_stream=False, content_length=2),
        ("body", sid, b"hi", True),
    ]
    assert pair.client.reusable()
    assert pair.client.active_streams == pair.server.active_streams == 0


@pytest.mark.parametrize("bytewise", [False, True])
def test_post_with_bodies_both_ways(bytewise: bool) -> None:
    pair = H2Pair()
    sid = pair.request(method=b"POST", body=b"request body")
    msgs = pair.to_server(bytewise=bytewise)
    assert isinstance(msgs[0], RequestHead) and msgs[0].content_length == 12
    assert body_of(msgs) == b"request body"
    pair.respond(sid, status=201, body=b"response body")
    msgs = pair.to_client(bytewise=bytewise)
    assert isinstance(msgs[0], ResponseHead) and msgs[0].status == 201
    assert body_of(msgs) == b"response body"


@pytest.mark.parametrize("bytewise", [False, True])
def test_trailers_both_ways(bytewise: bool) -> None:
    pair = H2Pair()
    sid = pair.request(method=b"POST", headers=[(b"te", b"trailers")], body=b"\x00\x01",
                       trailers=[(b"grpc-timeout", b"5S")])
    msgs = merged(pair.to_server(bytewise=bytewise))
    assert isinstance(msgs[0], RequestHead) and (b"te", b"trailers") in msgs[0].headers
    assert msgs[1:] == [("body", sid, b"\x00\x01", False),
                        Trailers(stream_id=sid, headers=[(b"grpc-timeout", b"5S")])]
    pair.respond(sid, body=b"\x02", trailers=[(b"grpc-status", b"0")])
    msgs = merged(pair.to_client(bytewise=bytewise))
    assert msgs[1:] == [("body", sid, b"\x02", False),
                        Trailers(stream_id=sid, headers=[(b"grpc-status", b"0")])]


def test_informational_responses() -> None:
    pair = H2Pair()
    sid = pair.request(method=b"POST", body=b"x")
    pair.to_server()
    pair.server.send(ResponseHead(stream_id=sid, status=100, headers=[], end_stream=False))
    pair.server.send(ResponseHead(stream_id=sid, status=103, headers=[(b"link", b"</a>")],
                                  end_stream=False))
    pair.respond(sid, status=204)
    msgs = pair.to_client()
    assert [(m.status, m.end_stream) for m in msgs if isinstance(m, ResponseHead)] == [
        (100, False), (103, False), (204, True)]


def test_large_bodies_both_ways_through_flow_control() -> None:
    pair = H2Pair()
    upload = bytes(range(251)) * 2000  # 502,000 bytes: several 64 KiB windows
    download = bytes(range(241)) * 3000
    sid = pair.request(method=b"POST", body=upload)
    assert pair.client.buffered(sid) > 0
    at_server, _ = pair.pump()
    assert body_of(at_server) == upload
    assert at_server[-1].end_stream  # type: ignore[union-attr]
    pair.respond(sid, body=download)
    assert pair.server.buffered(sid) > 0
    _, at_client = pair.pump()
    assert body_of(at_client) == download
    assert pair.client.buffered_bytes == pair.server.buffered_bytes == 0
    assert pair.client.active_streams == pair.server.active_streams == 0


def test_paused_server_stream_holds_the_upload_back() -> None:
    pair = H2Pair()
    sid = pair.client.open_stream()
    pair.client.send(RequestHead(stream_id=sid, method=b"PUT", scheme=b"https",
                                 authority=b"a", path=b"/", headers=[], end_stream=False))
    pair.pump()
    pair.server.pause(sid)
    pair.client.send(Body(stream_id=sid, data=b"u" * 300_000, end_stream=True))
    at_server, _ = pair.pump()
    assert len(body_of(at_server)) == 65536  # one stream window, then nothing
    assert pair.client.buffered(sid) == 300_000 - 65536
    assert pair.client.take_watermarks() == [(sid, True)]
    pair.server.resume(sid)
    at_server, _ = pair.pump()
    assert len(body_of(at_server)) == 300_000 - 65536
    assert pair.client.take_watermarks() == [(sid, False)]


def test_paused_client_stream_holds_the_download_back() -> None:
    pair = H2Pair()
    sid = pair.request()
    pair.pump()
    pair.client.pause(sid)
    pair.respond(sid, body=b"d" * 200_000)
    _, at_client = pair.pump()
    assert len(body_of(at_client)) == 65536
    pair.client.resume(sid)
    _, at_client = pair.pump()
    assert len(body_of(at_client)) == 200_000 - 65536


def test_many_concurrent_streams_interleave() -> None:
    pair = H2Pair()
    sids = [pair.request(method=b"POST", body=b"%d" % i * 5000) for i in range(40)]
    at_server, _ = pair.pump()
    assert [m.stream_id for m in at_server if isinstance(m, RequestHead)] == sids
    for i, sid in enumerate(sids):
        assert body_of(at_server, sid) == b"%d" % i * 5000
    for sid in reversed(sids):
        pair.respond(sid, body=b"r%d" % sid)
    _, at_client = pair.pump()
    for sid in sids:
        assert body_of(at_client, sid) == b"r%d" % sid
    assert pair.client.active_streams == pair.server.active_streams == 0


def test_concurrency_limit_of_the_server_reaches_the_client() -> None:
    pair = H2Pair(context(max_concurrent_streams=3))
    for _ in range(3):
        pair.request(method=b"POST", body=b"x")  # body ends: streams stay open until answered
    assert not pair.client.can_open()
    at_server, _ = pair.pump()
    first = at_server[0].stream_id
    pair.respond(first, body=b"ok")
    pair.pump()
    assert pair.client.can_open()


def test_resets_both_ways() -> None:
    pair = H2Pair()
    a = pair.request(method=b"POST", body=b"a", trailers=[(b"t", b"1")])
    b = pair.request()
    pair.pump()
    pair.client.send(Reset(stream_id=a, code=ResetCode.CANCEL, side=Side.DOWNSTREAM))
    assert pair.to_server() == [Reset(stream_id=a, code=ResetCode.CANCEL, side=Side.DOWNSTREAM)]
    pair.server.send(Reset(stream_id=b, code=ResetCode.INTERNAL_ERROR, side=Side.UPSTREAM))
    assert pair.to_client() == [
        Reset(stream_id=b, code=ResetCode.INTERNAL_ERROR, side=Side.UPSTREAM)]
    assert pair.client.active_streams == pair.server.active_streams == 0


def test_server_drain_with_goaway() -> None:
    pair = H2Pair()
    first = pair.request(method=b"POST", body=b"x")
    pair.pump()
    pair.server.goaway()
    late = pair.request()  # opened before the GOAWAY arrives
    _, at_client = pair.pump()
    assert at_client == [Reset(stream_id=late, code=ResetCode.REFUSED_STREAM, side=Side.UPSTREAM)]
    assert pair.client.goaway_received == first
    assert not pair.client.reusable()
    pair.respond(first, body=b"last response")
    _, at_client = pair.pump()
    assert body_of(at_client) == b"last response"
    assert pair.server.wants_close()
    assert pair.client.wants_close()


def test_client_goaway() -> None:
    pair = H2Pair()
    sid = pair.request()
    pair.pump()
    pair.client.goaway()
    pair.pump()
    assert not pair.server.wants_close()  # the stream in flight goes on
    pair.respond(sid, body=b"fin")
    _, at_client = pair.pump()
    assert body_of(at_client) == b"fin"
    assert pair.client.wants_close()
    # The server waits for the client, which said it will close, to do so.
    assert not pair.server.wants_close()
    pair.server.feed_eof(0.0)
    assert pair.server.wants_close()


def test_eof_either_way() -> None:
    pair = H2Pair()
    sid = pair.request(method=b"POST", body=b"x" * 10)
    pair.pump()
    assert pair.server.feed_eof(0.0) == [
        Reset(stream_id=sid, code=ResetCode.CANCEL, side=Side.DOWNSTREAM)]
    assert pair.client.feed_eof(0.0) == [
        Reset(stream_id=sid, code=ResetCode.CANCEL, side=Side.UPSTREAM)]
    assert wire(pair.server) == b""


Merged = list[Message | tuple[str, int, bytes, bool]]


def exchange(bytewise: bool, cuts: list[int] | None = None) -> tuple[Merged, Merged]:
    """One POST with trailers answered with trailers, the bytes split as asked."""
    pair = H2Pair()
    sid = pair.request(method=b"POST", headers=[(b"x-a", b"1")], body=b"B" * 70_000,
                       trailers=[(b"x-t", b"2")])
    pair.respond(sid, body=b"R" * 3000, trailers=[(b"x-s", b"3")])
    at_server: list[Message] = []
    at_client: list[Message] = []
    for _ in range(100):
        a, b = wire(pair.client), wire(pair.server)
        if not a and not b:
            break
        at_server += split_feed(pair.server, a, bytewise, cuts)
        at_client += split_feed(pair.client, b, bytewise, cuts)
    return merged(at_server), merged(at_client)


def split_feed(codec: H2ServerCodec | H2ClientCodec, data: bytes, bytewise: bool,
               cuts: list[int] | None) -> list[Message]:
    if bytewise:
        cuts = [1] * len(data)
    msgs: list[Message] = []
    pos = 0
    for cut in [*(cuts or []), len(data)]:
        if pos < len(data):
            msgs += codec.feed(data[pos : pos + cut], 0.0)
        pos += cut
    return msgs


def test_bytewise_gives_the_same_messages() -> None:
    assert exchange(True) == exchange(False)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=20))
def test_any_split_gives_the_same_messages(cuts: list[int]) -> None:
    assert exchange(False, cuts) == exchange(False)
