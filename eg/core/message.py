"""The protocol-neutral vocabulary every codec speaks.

Server codecs turn wire bytes into these messages and client codecs turn them back into
wire bytes, so the 3x3 front x back matrix is a composition of six adapters rather than
nine translators. End of stream is a flag on the last message (h2 END_STREAM, QUIC FIN),
never a separate event.

Inside the core, header names are lowercase bytes; there are no pseudo-headers (they are
the named fields of the heads) and no hop-by-hop headers (codecs strip them on ingress).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

#: Header block: (lowercase name, value) pairs in wire order; repeated names stay repeated.
HeaderList = list[tuple[bytes, bytes]]


class Side(enum.Enum):
    """Which side of the proxy something belongs to or was caused by."""

    DOWNSTREAM = "downstream"
    UPSTREAM = "upstream"
    INTERNAL = "internal"


class ResetCode(enum.IntEnum):
    """Why a stream was abandoned; values are the HTTP/2 error codes (RFC 9113 §7)."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    STREAM_CLOSED = 0x5
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestHead:
    """A request's head: everything before the body."""

    stream_id: int
    method: bytes
    scheme: bytes
    authority: bytes
    path: bytes
    headers: HeaderList
    end_stream: bool
    #: Declared body length, or None when unknown (chunked / streamed until end).
    content_length: int | None = None
    #: The client asked for ``Expect: 100-continue`` (the header itself is consumed).
    expect_continue: bool = False
    #: Minor version for HTTP/1.x requests (0 or 1); None for H2/H3.
    http_minor: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseHead:
    """A response's head; ``status`` may be informational (1xx), then more heads follow."""

    stream_id: int
    status: int
    headers: HeaderList
    end_stream: bool
    content_length: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Body:
    """A slice of body bytes; slices are forwarded as they come, never joined."""

    stream_id: int
    data: bytes | memoryview
    end_stream: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Trailers:
    """Trailing header fields; always the end of the stream."""

    stream_id: int
    headers: HeaderList


@dataclass(frozen=True, slots=True, kw_only=True)
class Reset:
    """The stream was abandoned by ``side``; it ends without a clean end of stream."""

    stream_id: int
    code: ResetCode
    side: Side


Message = RequestHead | ResponseHead | Body | Trailers | Reset
