"""HTTP/1.1 parsing shared by the server and client codecs.

Why not h11 on the hot path: on free-threaded 3.13 h11 costs ~94 µs per GET parse and
serialize and does not scale across threads (its module-level regexes get contended
reference counts). This parser uses ``bytes.find``/``split``/``translate`` and keeps all
of its tables on a per-worker ``H1Context``, so nothing mutable or hot is shared.

Strictness (request smuggling defences, RFC 9112): CRLF only (a bare CR or LF is an
error), no obs-fold, no whitespace before the colon, token-only names, no control
characters in values, ``_`` in names rejected on requests, Content-Length digits only and
never disagreeing, Transfer-Encoding exactly ``chunked`` and never with Content-Length,
chunk sizes 1-16 hex digits.
"""

from __future__ import annotations

import re

from eg.core.errors import LimitExceeded, ProtocolError
from eg.core.message import Body, HeaderList, Message, Side, Trailers

# RFC 9110 §5.6.2 tchar.
_TCHAR = b"!#$%&'*+-.^`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_"
# Field values: VCHAR, SP, HTAB and obs-text (RFC 9110 §5.5); everything else is a CTL.
_FIELD_VALUE = bytes([9, *range(0x20, 0x7F), *range(0x80, 0x100)])
# Request targets: VCHAR only (RFC 9112 §3.2).
_TARGET = bytes(range(0x21, 0x7F))
_HEX = b"0123456789abcdefABCDEF"

#: Longest chunk-size line (size + extensions) we read before calling it an attack.
MAX_CHUNK_LINE = 4096
#: Hex digits in a chunk size: 16 covers 2**64-1, anything longer is hostile.
MAX_CHUNK_SIZE_DIGITS = 16
#: Digits in a Content-Length: 19 covers 2**63-1.
MAX_CONTENT_LENGTH_DIGITS = 19

#: Connection-specific headers never forwarded (RFC 9110 §7.6.1), plus framing headers
#: that each codec regenerates itself.
HOP_BY_HOP = (
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"transfer-encoding",
    b"upgrade",
    b"content-length",
    b"host",
    b"expect",
)


class H1Context:
    """Per-worker parsing tables and limits; build one per worker thread, never share it.

    Args:
        max_head_size: bytes of request/status line plus headers (431 past it).
        max_headers: header fields in one head (431 past it).
        reject_underscore: reject ``_`` in header names (request side).
    """

    __slots__ = (
        "any_field",
        "field_value",
        "hex",
        "hop_by_hop",
        "max_chunk_line",
        "max_head_size",
        "max_headers",
        "reasons",
        "reject_underscore",
        "request_field",
        "target",
        "tchar",
        "tchar_no_underscore",
    )

    def __init__(
        self, *, max_head_size: int, max_headers: int, reject_underscore: bool = True
    ) -> None:
        # bytes(...) makes fresh objects owned by this context, not the module constants.
        self.tchar = bytes(bytearray(_TCHAR))
        self.tchar_no_underscore = self.tchar.replace(b"_", b"")
        self.field_value = bytes(bytearray(_FIELD_VALUE))
        self.target = bytes(bytearray(_TARGET))
        self.hex = bytes(bytearray(_HEX))
        self.hop_by_hop = frozenset(bytes(bytearray(h)) for h in HOP_BY_HOP)
        self.max_head_size = max_head_size
        self.max_headers = max_headers
        self.max_chunk_line = MAX_CHUNK_LINE
        self.reject_underscore = reject_underscore
        self.reasons = _reason_phrases()
        # One field line, anchored at a line start: token name, colon, optional
        # whitespace, a value of VCHAR/obs-text with inner SP/HTAB, optional whitespace,
        # CRLF. The comment makes the pattern text unique to this context, so the re
        # module's cache cannot hand the same pattern object to two workers.
        nonce = b"(?#%d)" % id(self)
        value = rb"((?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?)"
        tail = rb":[ \t]*" + value + rb"[ \t]*\r\n" + nonce
        self.any_field = re.compile(rb"(?m)^([!#$%&'*+\-.^`|~0-9A-Za-z_]+)" + tail)
        self.request_field = re.compile(rb"(?m)^([!#$%&'*+\-.^`|~0-9A-Za-z]+)" + tail)


def _reason_phrases() -> dict[int, bytes]:
    """Status → reason phrase, built per context (a module-level dict would be shared)."""
    # Kept in code rather than importing http.HTTPStatus: that would be a shared enum.
    pairs = (
        (100, "Continue"), (101, "Switching Protocols"), (103, "Early Hints"),
        (200, "OK"), (201, "Created"), (202, "Accepted"), (204, "No Content"),
        (206, "Partial Content"), (301, "Moved Permanently"), (302, "Found"),
        (303, "See Other"), (304, "Not Modified"), (307, "Temporary Redirect"),
        (308, "Permanent Redirect"), (400, "Bad Request"), (401, "Unauthorized"),
        (403, "Forbidden"), (404, "Not Found"), (405, "Method Not Allowed"),
        (408, "Request Timeout"), (411, "Length Required"), (413, "Content Too Large"),
        (414, "URI Too Long"), (417, "Expectation Failed"), (421, "Misdirected Request"),
        (429, "Too Many Requests"), (431, "Request Header Fields Too Large"),
        (500, "Internal Server Error"), (501, "Not Implemented"), (502, "Bad Gateway"),
        (503, "Service Unavailable"), (504, "Gateway Timeout"),
        (505, "HTTP Version Not Supported"),
    )
    return {code: text.encode() for code, text in pairs}


def check_line_endings(head: bytes, side: Side) -> None:
    """Reject a bare CR or bare LF anywhere in a head (RFC 9112 §2.2)."""
    crlf = head.count(b"\r\n")
    if head.count(b"\n") != crlf or head.count(b"\r") != crlf:
        raise ProtocolError("bare CR or LF in message head", side=side, kind="bare_lf")


def parse_fields(
    lines: list[bytes], start: int, ctx: H1Context, side: Side, *, request: bool
) -> HeaderList:
    """Parse ``name: value`` lines into lowercase (name, value) pairs.

    The lines are matched in one pass by the context's anchored field regex (C speed,
    per-worker pattern object); a line that does not match whole is an error, so the
    count of matches must equal the count of lines.

    Raises:
        ProtocolError: malformed field line (400 / 502).
        LimitExceeded: more than ``max_headers`` fields (431).
    """
    count = len(lines) - start
    if count > ctx.max_headers:
        raise LimitExceeded(
            "too many header fields", side=side, status_hint=431, kind="header_count"
        )
    if not count:
        return []
    block = b"\r\n".join(lines[start:] if start else lines) + b"\r\n"
    regex = ctx.request_field if (request and ctx.reject_underscore) else ctx.any_field
    found = regex.findall(block)
    if len(found) != count:
        raise ProtocolError("malformed header line", side=side, kind="header_line")
    return [(name.lower(), value) for name, value in found]


def format_fields(headers: HeaderList) -> bytes:
    """Serialize fields as ``name: value\\r\\n`` lines (the inverse of ``parse_fields``)."""
    return b"".join([b"%s: %s\r\n" % pair for pair in headers])


def parse_content_length(value: bytes, previous: int | None, side: Side) -> int:
    """Validate one Content-Length value; duplicates must agree exactly.

    Raises:
        ProtocolError: not 1-19 ASCII digits, a leading zero, or disagreeing with
            ``previous``.
    """
    if (
        not value.isdigit()
        or len(value) > MAX_CONTENT_LENGTH_DIGITS
        or (value[0] == 0x30 and len(value) > 1)
    ):
        # Leading zeros are refused so that equal lengths are equal text: "5" and "05"
        # must not pass as agreeing duplicates (h11 compares the text, too).
        raise ProtocolError("invalid Content-Length", side=side, kind="content_length")
    length = int(value)
    if previous is not None and previous != length:
        raise ProtocolError("conflicting Content-Length", side=side, kind="content_length")
    return length


def split_fields(
    fields: HeaderList, ctx: H1Context, side: Side, *, http10: bool, status_hint: int
) -> tuple[HeaderList, HeaderList, int | None, bool, bool]:
    """Separate end-to-end fields from hop-by-hop ones and read the framing from them.

    Content-Length must be digits and agree with itself; Transfer-Encoding must be
    exactly one ``chunked`` and never appear with Content-Length; Connection decides
    keep-alive and names more hop-by-hop fields, which are dropped too (RFC 9110 §7.6.1).

    Returns:
        (end-to-end fields, other hop-by-hop fields such as Host and Expect for the caller,
        Content-Length or None, chunked, close after this message).

    Raises:
        ProtocolError: a framing field is invalid (``status_hint`` for transfer codings
            and CL+TE: 501/400 from a client, 502 from an upstream).
    """
    hop = ctx.hop_by_hop
    # Two comprehensions beat one loop with appends: most fields are end-to-end.
    headers: HeaderList = [f for f in fields if f[0] not in hop]
    if len(headers) == len(fields):
        return headers, [], None, False, http10
    length: int | None = None
    chunked = False
    close = http10
    other: HeaderList = []
    for name, value in fields:
        if name not in hop:
            continue
        if name == b"content-length":
            length = parse_content_length(value, length, side)
        elif name == b"transfer-encoding":
            if chunked or value.lower() != b"chunked":
                raise ProtocolError("unsupported transfer-encoding", side=side,
                                    status_hint=status_hint, kind="transfer_encoding")
            chunked = True
        elif name == b"connection":
            tokens = connection_tokens(value)
            if b"close" in tokens:
                close = True
            elif b"keep-alive" in tokens and http10:
                close = False
            hop = hop | frozenset(t for t in tokens if t != b"close")
        else:
            other.append((name, value))
    if len(hop) != len(ctx.hop_by_hop):
        headers = [(n, v) for n, v in headers if n not in hop]
    if chunked and length is not None:
        raise ProtocolError("Content-Length with Transfer-Encoding", side=side,
                            status_hint=400 if side is Side.DOWNSTREAM else status_hint,
                            kind="cl_te")
    return headers, other, length, chunked, close


def connection_tokens(value: bytes) -> list[bytes]:
    """Lowercased tokens of a Connection header."""
    return [t.strip().lower() for t in value.split(b",") if t.strip()]


def length_body(data: bytes, remaining: int, sid: int, msgs: list[Message]) -> tuple[bytes, int]:
    """Emit the next slice of a Content-Length body (zero-copy when it is all of ``data``).

    Returns:
        (the bytes after the body, if it ended inside ``data``; the body bytes still due).
    """
    if len(data) <= remaining:
        remaining -= len(data)
        msgs.append(Body(stream_id=sid, data=data, end_stream=not remaining))
        return b"", remaining
    msgs.append(Body(stream_id=sid, data=memoryview(data)[:remaining], end_stream=True))
    return data[remaining:], 0


class ChunkedDecoder:
    """Incremental chunked transfer-coding decoder (RFC 9112 §7.1).

    States: SIZE (reading a chunk-size line) → DATA (``remaining`` bytes) → DATA_CRLF →
    SIZE ... → after the zero chunk, TRAILER (field lines until an empty line) → DONE.

    ``feed`` returns body slices (zero-copy memoryviews of the input) and, at the end,
    the trailer fields; it never buffers more than one partial size/trailer line.
    """

    SIZE, DATA, DATA_CRLF, TRAILER, DONE = range(5)

    __slots__ = ("_ctx", "_line", "_side", "_trailer_bytes", "_trailers", "remaining", "state")

    def __init__(self, ctx: H1Context, side: Side) -> None:
        self._ctx = ctx
        self._side = side
        self.state = self.SIZE
        self.remaining = 0
        self._line = b""
        self._trailers: list[bytes] = []
        self._trailer_bytes = 0

    def feed(self, data: bytes) -> tuple[list[memoryview | bytes], HeaderList | None, int]:
        """Decode as much of ``data`` as possible.

        Returns:
            (body slices, trailers when the body ended else None, bytes consumed). Bytes
            after the end of the body are left unconsumed for the next message.

        Raises:
            ProtocolError: a bad chunk size, a missing CRLF, or malformed trailers.
            LimitExceeded: an overlong size line or trailer section.
        """
        out: list[memoryview | bytes] = []
        view = memoryview(data)
        pos = 0
        end = len(data)
        side = self._side
        while pos < end:
            state = self.state
            if state == self.DATA:
                take = min(self.remaining, end - pos)
                out.append(view[pos : pos + take])
                pos += take
                self.remaining -= take
                if not self.remaining:
                    self.state = self.DATA_CRLF
                    self._line = b""
            elif state == self.DATA_CRLF:
                need = 2 - len(self._line)
                self._line += data[pos : pos + need]
                pos += min(need, end - pos)
                if len(self._line) == 2:
                    if self._line != b"\r\n":
                        raise ProtocolError("missing CRLF after chunk", side=side, kind="chunk")
                    self._line = b""
                    self.state = self.SIZE
            else:
                line, pos = self._take_line(data, pos, end)
                if line is None:
                    break
                if state == self.SIZE:
                    self._size_line(line)
                elif line:
                    self._trailers.append(line)
                else:
                    self.state = self.DONE
                    trailers = parse_fields(
                        self._trailers, 0, self._ctx, side, request=side is Side.DOWNSTREAM
                    )
                    for name, _ in trailers:
                        # Framing fields are not allowed in trailers (RFC 9110 §6.5.1).
                        if name in {b"content-length", b"transfer-encoding"}:
                            raise ProtocolError("framing field in trailers", side=side,
                                                kind="trailer")
                    return out, trailers, pos
            if self.state == self.DONE:
                break
        return out, None, pos

    def messages(self, data: bytes, sid: int, msgs: list[Message]) -> bytes | None:
        """Decode ``data`` into Body / Trailers messages for stream ``sid``.

        Returns:
            None while the body goes on (all of ``data`` was consumed), else the bytes
            after its end; the last message then carries the end of the stream.
        """
        slices, trailers, used = self.feed(data)
        for piece in slices:
            msgs.append(Body(stream_id=sid, data=piece, end_stream=False))
        if trailers is None:
            return None
        if trailers:
            msgs.append(Trailers(stream_id=sid, headers=trailers))
        else:
            msgs.append(Body(stream_id=sid, data=b"", end_stream=True))
        return data[used:]

    def _take_line(self, data: bytes, pos: int, end: int) -> tuple[bytes | None, int]:
        """Take one CRLF-terminated line, buffering a partial one; enforce the line cap."""
        nl = data.find(b"\n", pos)
        if nl < 0:
            self._line += data[pos:end]
            self._check_line_size(len(self._line))
            return None, end
        line = self._line + data[pos : nl + 1]
        self._line = b""
        self._check_line_size(len(line))
        if len(line) < 2 or line[-2] != 0x0D or b"\r" in line[:-2]:
            raise ProtocolError("bare LF in chunked body", side=self._side, kind="chunk")
        if self.state == self.TRAILER:
            self._trailer_bytes += len(line)
            if self._trailer_bytes > self._ctx.max_head_size:
                raise LimitExceeded("trailers too large", side=self._side, kind="head_size")
        return line[:-2], nl + 1

    def _check_line_size(self, size: int) -> None:
        limit = self._ctx.max_chunk_line if self.state == self.SIZE else self._ctx.max_head_size
        if size > limit:
            raise LimitExceeded("chunk line too long", side=self._side, kind="chunk_line")

    def _size_line(self, line: bytes) -> None:
        semi = line.find(b";")
        size = line if semi < 0 else line[:semi]
        # chunk-ext: only token/quoted-string characters, no CTLs. Whitespace before the
        # ';' stays in ``size`` and is refused with it (h11 refuses it too).
        if semi >= 0 and line[semi:].translate(None, self._ctx.field_value):
            raise ProtocolError("invalid chunk extension", side=self._side, kind="chunk")
        if not size or len(size) > MAX_CHUNK_SIZE_DIGITS or size.translate(None, self._ctx.hex):
            raise ProtocolError("invalid chunk size", side=self._side, kind="chunk_size")
        self.remaining = int(size, 16)
        self.state = self.DATA if self.remaining else self.TRAILER
