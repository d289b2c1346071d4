"""In-memory harnesses for the HTTP/2 adapters (imported by the other test_h2_* modules).

``ServerHarness`` puts an ``H2ServerCodec`` in front of a real ``h2`` client connection,
``ClientHarness`` an ``H2ClientCodec`` in front of a real ``h2`` server connection, and
``H2Pair`` our client codec in front of our server codec. Each harness has finished the
SETTINGS exchange when constructed. ``feed(..., bytewise=True)`` feeds one byte at a time
(the ``tr()`` habit of h11's tests). The few tests at the bottom check the harnesses.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, Event

from eg.core.codec.h2._context import H2Context
from eg.core.codec.h2.client import H2ClientCodec
from eg.core.codec.h2.server import H2ServerCodec
from eg.core.message import Body, Message, RequestHead, ResponseHead, Trailers

NOW = 0.0

GET = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"example.com"),
    (b":path", b"/index.html"),
    (b"user-agent", b"test"),
    (b"accept", b"*/*"),
]


def post(length: int | None, *extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":authority", b"example.com"),
        (b":path", b"/upload"),
        *extra,
    ]
    if length is not None:
        headers.append((b"content-length", b"%d" % length))
    return headers


def context(**kwargs: Any) -> H2Context:
    return H2Context(**kwargs)


def wire(codec: H2ServerCodec | H2ClientCodec) -> bytes:
    return b"".join(bytes(piece) for piece in codec.output())


def feed(
    codec: H2ServerCodec | H2ClientCodec, data: bytes, *, bytewise: bool = False,
    now: float = NOW,
) -> list[Message]:
    if not bytewise:
        return codec.feed(data, now)
    msgs: list[Message] = []
    for i in range(len(data)):
        msgs += codec.feed(data[i : i + 1], now)
    return msgs


def peer_config(client_side: bool, *, lax: bool = False) -> H2Configuration:
    """A plain h2 peer; ``lax`` lets it send headers h2 would refuse (bad requests)."""
    return H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_outbound_headers=not lax,
        normalize_outbound_headers=not lax,
    )


def merged(msgs: Iterable[Message]) -> list[Message | tuple[str, int, bytes, bool]]:
    """Messages with consecutive body slices of a stream merged (splits compare equal)."""
    out: list[Message | tuple[str, int, bytes, bool]] = []
    for msg in msgs:
        if isinstance(msg, Body):
            last = out[-1] if out else None
            if isinstance(last, tuple) and last[1] == msg.stream_id and not last[3]:
                out[-1] = ("body", msg.stream_id, last[2] + bytes(msg.data), msg.end_stream)
            else:
                out.append(("body", msg.stream_id, bytes(msg.data), msg.end_stream))
        else:
            out.append(msg)
    return out


def body_of(msgs: Iterable[Message], stream_id: int | None = None) -> bytes:
    return b"".join(
        bytes(m.data) for m in msgs
        if isinstance(m, Body) and (stream_id is None or m.stream_id == stream_id)
    )


def data_of(events: Iterable[Event], stream_id: int) -> bytes:
    return b"".join(
        e.data for e in events if isinstance(e, DataReceived) and e.stream_id == stream_id
    )


def of_type(events: Iterable[Any], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


class ServerHarness:
    """``H2ServerCodec`` driven by a real h2 client."""

    def __init__(self, ctx: H2Context | None = None, *, lax: bool = False,
                 handshake: bool = True) -> None:
        self.ctx = ctx or context()
        self.server = H2ServerCodec(self.ctx, scheme=b"https")
        self.peer = H2Connection(peer_config(True, lax=lax))
        self.peer.initiate_connection()
        self.events: list[Event] = []
        if handshake:
            self.to_peer()
            assert self.to_server() == []
            self.to_peer()

    def to_server(self, *, bytewise: bool = False, now: float = NOW) -> list[Message]:
        return feed(self.server, self.peer.data_to_send(), bytewise=bytewise, now=now)

    def to_peer(self) -> list[Event]:
        events = self.peer.receive_data(wire(self.server))
        self.events += events
        return events

    def request(self, headers: list[tuple[bytes, bytes]], body: bytes | None = None,
                *, sid: int | None = None, end: bool = True) -> int:
        sid = sid or self.peer.get_next_available_stream_id()
        self.peer.send_headers(sid, headers, end_stream=end and body is None)
        if body is not None:
            self.peer.send_data(sid, body, end_stream=end)
        return sid


class ClientHarness:
    """``H2ClientCodec`` driven by a real h2 server."""

    def __init__(self, ctx: H2Context | None = None, *, lax: bool = False,
                 peer: H2Connection | None = None) -> None:
        self.ctx = ctx or context()
        self.client = H2ClientCodec(self.ctx)
        if peer is None:
            peer = H2Connection(peer_config(False, lax=lax))
            peer.initiate_connection()
        self.peer = peer
        self.events: list[Event] = []
        self.to_peer()
        assert self.to_client() == []
        self.to_peer()

    def to_client(self, *, bytewise: bool = False, now: float = NOW) -> list[Message]:
        return feed(self.client, self.peer.data_to_send(), bytewise=bytewise, now=now)

    def to_peer(self) -> list[Event]:
        events = self.peer.receive_data(wire(self.client))
        self.events += events
        return events

    def get(self, path: bytes = b"/", *, headers: list[tuple[bytes, bytes]] | None = None,
            method: bytes = b"GET", end: bool = True,
            content_length: int | None = None) -> int:
        sid = self.client.open_stream()
        self.client.send(RequestHead(
            stream_id=sid, method=method, scheme=b"https", authority=b"up.example",
            path=path, headers=headers or [], end_stream=end, content_length=content_length,
        ))
        return sid


class H2Pair:
    """Our client codec talking to our server codec."""

    def __init__(self, ctx: H2Context | None = None) -> None:
        self.ctx = ctx or context()
        self.client = H2ClientCodec(self.ctx)
        self.server = H2ServerCodec(self.ctx, scheme=b"https")
        self.to_server()
        self.to_client()
        self.to_server()

    def to_server(self, *, bytewise: bool = False) -> list[Message]:
        return feed(self.server, wire(self.client), bytewise=bytewise)

    def to_client(self, *, bytewise: bool = False) -> list[Message]:
        return feed(self.client, wire(self.server), bytewise=bytewise)

    def pump(self, *, bytewise: bool = False, limit: int = 1000) -> tuple[list[Message],
                                                                           list[Message]]:
        """Move bytes both ways until both sides are quiet; (server msgs, client msgs)."""
        at_server: list[Message] = []
        at_client: list[Message] = []
        for _ in range(limit):
            a = wire(self.client)
            b = wire(self.server)
            if not a and not b:
                return at_server, at_client
            if a:
                at_server += feed(self.server, a, bytewise=bytewise)
            if b:
                at_client += feed(self.client, b, bytewise=bytewise)
        raise AssertionError("pair did not settle")

    def request(self, *, method: bytes = b"GET", path: bytes = b"/",
                headers: list[tuple[bytes, bytes]] | None = None, body: bytes | None = None,
                trailers: list[tuple[bytes, bytes]] | None = None) -> int:
        sid = self.client.open_stream()
        end = body is None and trailers is None
        self.client.send(RequestHead(
            stream_id=sid, method=method, scheme=b"https", authority=b"pair.example",
            path=path, headers=headers or [], end_stream=end,
            content_length=len(body) if body is not None and trailers is None else None,
        ))
        if body is not None:
            self.client.send(Body(stream_id=sid, data=body, end_stream=trailers is None))
        if trailers is not None:
            self.client.send(Trailers(stream_id=sid, headers=trailers))
        return sid

    def respond(self, sid: int, *, status: int = 200,
                headers: list[tuple[bytes, bytes]] | None = None, body: bytes | None = None,
                trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        end = body is None and trailers is None
        self.server.send(ResponseHead(
            stream_id=sid, status=status, headers=headers or [], end_stream=end,
            content_length=len(body) if body is not None and trailers is None else None,
        ))
        if body is not None:
            self.server.send(Body(stream_id=sid, data=body, end_stream=trailers is None))
        if trailers is not None:
            self.server.send(Trailers(stream_id=sid, headers=trailers))


# -- the harnesses themselves ---------------------------------------------------------------


def test_server_harness_settles_settings() -> None:
    h = ServerHarness()
    assert h.server.wants_read()
    assert not h.server.wants_close()
    assert h.peer.remote_settings.max_concurrent_streams == 256
    assert h.peer.remote_settings.initial_window_size == 65536
    assert h.peer.remote_settings.max_header_list_size == 65536
    # Our preface also opened the connection window to 1 MiB.
    assert h.peer.outbound_flow_control_window == 1024 * 1024


def test_client_harness_settles_settings() -> None:
    h = ClientHarness()
    assert h.peer.remote_settings.enable_push == 0
    assert h.client.can_open()
    assert h.client.reusable()


def test_pair_settles() -> None:
    pair = H2Pair()
    assert pair.pump() == ([], [])
    assert isinstance(pair.server.statistics().streams, int)
