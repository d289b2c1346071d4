"""In-memory drivers for the HTTP/1.1 codecs: no sockets, a fake clock.

``feed_whole``, ``feed_bytewise`` and ``feed_trailing`` are the three ways every parser case
is fed (the ``tr()`` habit of h11's ``tests/test_io.py``). ``H1Pair`` wires a client codec
to a server codec, so a request written by one is parsed by the other.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from eg.core.codec.h1._parse import H1Context
from eg.core.codec.h1.client import H1ClientCodec
from eg.core.codec.h1.server import H1ServerCodec
from eg.core.message import Body, Message, RequestHead, ResponseHead, Trailers

#: The fake monotonic clock every test passes as ``now``.
NOW = 0.0
#: Limits the differential tests use (also what h11 gets as max_incomplete_event_size).
MAX_HEAD_SIZE = 65536
MAX_HEADERS = 256
#: A complete request appended after a case to check that trailing bytes stay unconsumed.
TRAILING_REQUEST = b"GET /trailing HTTP/1.1\r\nHost: trailing.example\r\n\r\n"


class Codec(Protocol):
    def feed(self, data: bytes, now: float) -> list[Message]: ...
    def send(self, msg: Message) -> None: ...
    def output(self) -> list[bytes | memoryview]: ...


def h1_context(*, max_head_size: int = MAX_HEAD_SIZE, max_headers: int = MAX_HEADERS) -> H1Context:
    return H1Context(max_head_size=max_head_size, max_headers=max_headers)


def h1_server(
    ctx: H1Context | None = None, *, scheme: bytes = b"http", max_requests: int = 100
) -> H1ServerCodec:
    return H1ServerCodec(ctx or h1_context(), scheme=scheme, max_requests=max_requests)


def h1_client(ctx: H1Context | None = None) -> H1ClientCodec:
    return H1ClientCodec(ctx or h1_context())


def wire(codec: Codec) -> bytes:
    """Drain a codec's output into one byte string."""
    return b"".join(bytes(piece) for piece in codec.output())


def feed_chunks(codec: Codec, chunks: Iterable[bytes]) -> list[Message]:
    msgs: list[Message] = []
    for chunk in chunks:
        msgs += codec.feed(chunk, NOW)
    return msgs


def feed_whole(codec: Codec, data: bytes) -> list[Message]:
    return codec.feed(data, NOW)


def feed_bytewise(codec: Codec, data: bytes) -> list[Message]:
    return feed_chunks(codec, [data[i : i + 1] for i in range(len(data))])


def body_of(msgs: Iterable[Message]) -> bytes:
    """All body bytes in ``msgs``, joined (tests only; the codecs never join)."""
    return b"".join(bytes(m.data) for m in msgs if isinstance(m, Body))


def normalize(msgs: Iterable[Message]) -> list[Message | tuple[str, bytes, bool]]:
    """Messages with body slices merged, so differently split feeds compare equal."""
    out: list[Message | tuple[str, bytes, bool]] = []
    pending = b""
    ended = False
    for msg in msgs:
        if isinstance(msg, Body):
            pending += bytes(msg.data)
            ended = msg.end_stream
            if ended:
                out.append(("body", pending, True))
                pending = b""
            continue
        if pending:
            out.append(("body", pending, False))
            pending = b""
        out.append(msg)
    if pending:
        out.append(("body", pending, ended))
    return out


def ended(msgs: Iterable[Message]) -> bool:
    """Whether the last message of ``msgs`` ends its stream."""
    last: Message | None = None
    for msg in msgs:
        last = msg
    if isinstance(last, Trailers):
        return True
    if isinstance(last, (Body, RequestHead, ResponseHead)):
        return last.end_stream
    return False


class H1Pair:
    """A client codec whose output is the server codec's input, and the reverse."""

    def __init__(self, ctx: H1Context | None = None) -> None:
        self.ctx = ctx or h1_context()
        self.client = h1_client(self.ctx)
        self.server = h1_server(self.ctx)

    def to_server(self) -> list[Message]:
        """Move the client's pending output to the server; returns the server's messages."""
        return self.server.feed(wire(self.client), NOW)

    def to_client(self) -> list[Message]:
        """Move the server's pending output to the client; returns the client's messages."""
        return self.client.feed(wire(self.server), NOW)
