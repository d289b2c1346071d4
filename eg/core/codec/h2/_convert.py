"""Header mapping between HTTP/2 header blocks and the message vocabulary.

Ingress (blocks h2 has already validated and normalised): pseudo-headers become the
head's named fields, ``:authority`` falls back to ``host``, ``content-length`` becomes
``content_length``, ``expect: 100-continue`` becomes ``expect_continue``, cookie crumbs are
already joined with ``"; "`` by h2 (RFC 9113 §8.2.3). Header tuples are passed on as they
are (h2's ``HeaderTuple`` is a tuple), never rebuilt.

Egress: pseudo-headers first (RFC 9113 §8.3), then the fields minus the connection-specific
ones, ``host``, ``content-length`` and ``te`` (RFC 9113 §8.2.2), then ``content-length``
from the head when known. ``te: trailers`` survives on requests only (gRPC needs it).
"""

from __future__ import annotations

from collections.abc import Iterable

from hpack.struct import Header

from eg.core.codec.h2._context import H2Context
from eg.core.message import HeaderList, RequestHead, ResponseHead

#: ``request_head`` result: reset the stream with PROTOCOL_ERROR (malformed, RFC 9113 §8.1.1).
MALFORMED = 0


def request_head(
    ctx: H2Context,
    headers: Iterable[Header],
    stream_id: int,
    end_stream: bool,
    scheme: bytes,
) -> RequestHead | int:
    """Map a validated request header block to a RequestHead.

    ``scheme`` is the listener's (what the connection really is); the client's ``:scheme``
    was only checked present by h2, so X-Forwarded-Proto cannot be spoofed through it.

    Beyond h2's validation, the method must be a token, the path visible ASCII starting
    with ``/`` (or ``*`` for OPTIONS) and the authority a plain host[:port]: an HTTP/1
    upstream will see them in its request line and Host field.

    Returns:
        The head, or ``MALFORMED`` (reset the stream), or an HTTP status to answer with
        instead of forwarding: 400 (``_`` in a name), 405 (CONNECT), 431 (too many fields),
        501 (extended CONNECT's ``:protocol``).
    """
    method = path = authority = b""
    host: bytes | None = None
    length: int | None = None
    expect = False
    special = ctx.request_special
    underscore = ctx.reject_underscore
    fields: HeaderList = []
    for field in headers:
        name = field[0]
        if name[0] == 0x3A:  # ":" (h2 guarantees pseudo-headers come first)
            if name == b":method":
                method = field[1]
            elif name == b":path":
                path = field[1]
            elif name == b":authority":
                authority = field[1]
            elif name == b":protocol":
                return 501
        elif name in special:
            if name == b"content-length":
                length = int(field[1])  # digits only and consistent: h2 checked
            elif name == b"host":
                host = field[1]
            elif field[1].lower() == b"100-continue":
                expect = True
            else:
                fields.append(field)
        else:
            if underscore and b"_" in name:
                return 400
            fields.append(field)
    if len(fields) > ctx.max_headers:
        return 431
    if method == b"CONNECT":
        return 405
    if end_stream and length:
        return MALFORMED  # declares a body it does not have
    if not authority and host is not None:
        authority = host
    # h2 has checked presence and CR/LF/NUL; an HTTP/1 upstream also needs a request line
    # nothing can split: a token method, a visible-ASCII origin-form path, a plain host.
    if (
        not method
        or method.translate(None, ctx.method_chars)
        or not authority
        or authority.translate(None, ctx.host_chars)
        or path.translate(None, ctx.path_chars)
        or (path[:1] != b"/" and not (path == b"*" and method == b"OPTIONS"))
    ):
        return MALFORMED
    return RequestHead(
        stream_id=stream_id,
        method=method,
        scheme=scheme,
        authority=authority,
        path=path,
        headers=fields,
        end_stream=end_stream,
        content_length=length,
        expect_continue=expect and not end_stream,
    )


def response_head(
    ctx: H2Context, headers: Iterable[Header], stream_id: int, end_stream: bool
) -> ResponseHead | None:
    """Map a validated response header block to a ResponseHead.

    Returns:
        The head, or None when it is malformed: a ``:status`` that is not three digits,
        101 (not allowed in HTTP/2, RFC 9113 §8.6), a content-length that is not digits,
        or too many fields.
    """
    status = 0
    length: int | None = None
    special = ctx.response_special
    fields: HeaderList = []
    for field in headers:
        name = field[0]
        if name[0] == 0x3A:
            value = field[1]
            if name == b":status" and len(value) == 3 and value.isdigit():
                status = int(value)
        elif name in special:
            value = field[1]
            if not value.isdigit():  # h2 skips this check for responses to HEAD
                return None
            length = int(value)
        else:
            fields.append(field)
    if status < 100 or status == 101 or len(fields) > ctx.max_headers:
        return None
    return ResponseHead(
        stream_id=stream_id,
        status=status,
        headers=fields,
        end_stream=end_stream and status >= 200,
        content_length=length if status >= 200 else None,
    )


def trailer_fields(ctx: H2Context, headers: Iterable[Header]) -> HeaderList | None:
    """Received trailers as a HeaderList (h2 has rejected pseudo-headers in them)."""
    fields: HeaderList = list(headers)
    return None if len(fields) > ctx.max_headers else fields


def request_fields(ctx: H2Context, head: RequestHead) -> list[Header]:
    """The header block for a request: pseudo-headers, fields, content-length."""
    strip = ctx.egress_strip
    out: list[Header] = [
        (b":method", head.method),
        (b":scheme", head.scheme),
        (b":authority", head.authority),
        (b":path", head.path),
    ]
    headers = head.headers
    out += [field for field in headers if field[0] not in strip]
    if len(out) - 4 != len(headers):
        for name, value in headers:
            if name == b"te" and value.lower() == b"trailers":
                out.append((b"te", b"trailers"))
                break
    if head.content_length is not None:
        out.append((b"content-length", b"%d" % head.content_length))
    return out


def response_fields(ctx: H2Context, head: ResponseHead) -> list[Header]:
    """The header block for a response: ``:status``, fields, content-length."""
    strip = ctx.egress_strip
    status = head.status
    out: list[Header] = [(b":status", b"%d" % status)]
    out += [field for field in head.headers if field[0] not in strip]
    if head.content_length is not None and status >= 200 and status != 204:
        out.append((b"content-length", b"%d" % head.content_length))
    return out


def trailer_block(ctx: H2Context, headers: HeaderList) -> list[Header]:
    """The header block for trailers: the fields minus connection-specific ones."""
    strip = ctx.egress_strip
    return [field for field in headers if field[0] not in strip]
