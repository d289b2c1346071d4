"""HTTP/1.1 client codec: requests out to an upstream, responses in.

Theory of operation. One request at a time (no pipelining towards upstreams):

    request:  IDLE ──head sent──▶ BODY ──end_stream──▶ DONE
    response: HEAD ──1xx──▶ HEAD ──final head──▶ BODY ──body ended──▶ DONE

The request is framed with Content-Length when its length is known and chunked
otherwise (pingora's ``proxy_1to1`` does the same). Response framing follows RFC 9112
§6.3: no body for HEAD, 1xx, 204 and 304; chunked; Content-Length; else the body runs
until the upstream closes. The connection is reusable only when both halves are DONE,
the upstream did not ask to close, and no unexpected bytes followed the response.
"""

from __future__ import annotations

from eg.core.codec.h1._parse import (
    ChunkedDecoder,
    H1Context,
    check_line_endings,
    format_fields,
    length_body,
    parse_fields,
    split_fields,
)
from eg.core.errors import Broken, EgError, LimitExceeded, ProtocolError
from eg.core.message import (
    Body,
    Message,
    RequestHead,
    Reset,
    ResponseHead,
    Side,
    Trailers,
)

_IDLE, _BODY, _DONE = range(3)
_HEAD, _LENGTH, _CHUNKED, _UNTIL_CLOSE, _RDONE = range(5)
_UP = Side.UPSTREAM
# Methods whose empty body is still announced with Content-Length: 0.
_BODY_METHODS = (b"POST", b"PUT", b"PATCH")


class H1ClientCodec:
    """Upstream HTTP/1.1 codec (see the module docstring for the state machine).

    Args:
        ctx: the worker's parsing tables and limits (``reject_underscore`` is ignored:
            upstream response headers may contain ``_``).
    """

    def __init__(self, ctx: H1Context) -> None:
        self._ctx = ctx
        self._out: list[bytes | memoryview] = []
        self._buf = b""
        self._stream_id = 0
        self._req = _DONE
        self._resp = _RDONE
        self._chunked_req = False
        self._remaining = 0
        self._chunked: ChunkedDecoder | None = None
        self._head_method = False
        self._keep_alive = True
        self._paused = 0
        self._broken = False
        #: Requests sent on this connection (the pool uses it to tell reused from fresh).
        self.requests = 0

    def open_stream(self) -> int:
        """Start a new request; only valid when ``reusable()`` or fresh."""
        self._stream_id += 1
        self._req = _IDLE
        self._resp = _HEAD
        self.requests += 1
        return self._stream_id

    # -- output ---------------------------------------------------------------------------

    def send(self, msg: Message) -> None:
        """Encode a request message for the upstream (other streams' messages are dropped)."""
        if msg.stream_id != self._stream_id:
            return
        if isinstance(msg, Body):
            self._send_body(msg.data, msg.end_stream)
        elif isinstance(msg, RequestHead):
            self._send_head(msg)
        elif isinstance(msg, Trailers):
            if self._chunked_req:
                self._out.append(b"0\r\n%s\r\n" % format_fields(msg.headers))
            self._req = _DONE
        elif isinstance(msg, Reset):
            self._broken = True
            self._keep_alive = False
        else:  # pragma: no cover - a client never sends a ResponseHead
            raise TypeError(f"client codec cannot send {type(msg).__name__}")

    def _send_head(self, head: RequestHead) -> None:
        self._head_method = head.method == b"HEAD"
        lines = [
            b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (head.method, head.path, head.authority),
            format_fields(head.headers),
        ]
        if head.end_stream:
            if head.method in _BODY_METHODS:
                lines.append(b"content-length: 0\r\n")
            self._req = _DONE
        elif head.content_length is not None:
            lines.append(b"content-length: %d\r\n" % head.content_length)
            self._chunked_req = False
            self._req = _BODY
        else:
            lines.append(b"transfer-encoding: chunked\r\n")
            self._chunked_req = True
            self._req = _BODY
        lines.append(b"\r\n")
        self._out.append(b"".join(lines))

    def _send_body(self, data: bytes | memoryview, end: bool) -> None:
        if self._req != _BODY:
            return
        n = len(data)
        if self._chunked_req:
            if n:
                self._out += (b"%x\r\n" % n, data, b"\r\n")
            if end:
                self._out.append(b"0\r\n\r\n")
        elif n:
            self._out.append(data)
        if end:
            self._req = _DONE

    # -- input ----------------------------------------------------------------------------

    def feed(self, data: bytes, now: float) -> list[Message]:
        """Parse response bytes into messages.

        Raises:
            ProtocolError / LimitExceeded: the upstream's response is malformed (502).
        """
        if self._buf:
            data = self._buf + data
            self._buf = b""
        msgs: list[Message] = []
        try:
            while data:
                state = self._resp
                if state == _HEAD:
                    end = data.find(b"\r\n\r\n")
                    if end < 0:
                        if len(data) > self._ctx.max_head_size:
                            raise LimitExceeded("response head too large", side=_UP,
                                                status_hint=502, kind="head_size")
                        self._buf = data
                        return msgs
                    if end + 4 > self._ctx.max_head_size:
                        raise LimitExceeded("response head too large", side=_UP,
                                            status_hint=502, kind="head_size")
                    msgs.append(self._parse_head(data[:end]))
                    data = data[end + 4 :]
                elif state == _LENGTH:
                    data, self._remaining = length_body(
                        data, self._remaining, self._stream_id, msgs)
                    if not self._remaining:
                        self._resp = _RDONE
                elif state == _CHUNKED:
                    decoder = self._chunked
                    assert decoder is not None
                    rest = decoder.messages(data, self._stream_id, msgs)
                    if rest is None:
                        data = b""
                    else:
                        data = rest
                        self._resp = _RDONE
                        self._chunked = None
                elif state == _UNTIL_CLOSE:
                    msgs.append(Body(stream_id=self._stream_id, data=data, end_stream=False))
                    data = b""
                else:
                    # Bytes nobody asked for: this connection is out of sync.
                    self._keep_alive = False
                    data = b""
        except EgError as exc:
            self._broken = True
            # The shared parser leaves downstream hints (400, 431) on its errors; a bad
            # upstream response is answered with 502 Bad Gateway.
            exc.status_hint = 502
            raise
        return msgs

    def _parse_head(self, head: bytes) -> ResponseHead:
        ctx = self._ctx
        check_line_endings(head, _UP)
        lines = head.split(b"\r\n")
        status_line = lines[0]
        version = status_line[:9]
        code = status_line[9:12]
        if (
            version not in (b"HTTP/1.1 ", b"HTTP/1.0 ")
            or len(code) != 3
            or not code.isdigit()
            or (len(status_line) > 12 and status_line[12] != 0x20)
        ):
            raise ProtocolError("malformed status line", side=_UP, status_hint=502,
                                kind="status_line")
        status = int(code)
        if status < 100:
            raise ProtocolError("invalid status code", side=_UP, status_hint=502,
                                kind="status_line")
        fields = parse_fields(lines, 1, ctx, _UP, request=False)
        headers, _, length, chunked, close = split_fields(
            fields, ctx, _UP, http10=version == b"HTTP/1.0 ", status_hint=502)
        sid = self._stream_id
        if status < 200:
            # Informational: the final head follows. 101 (upgrade) is not proxied here.
            if status == 101:
                raise ProtocolError("unexpected 101 Switching Protocols", side=_UP,
                                    status_hint=502, kind="status_line")
            return ResponseHead(stream_id=sid, status=status, headers=headers, end_stream=False)
        if close:
            self._keep_alive = False
        if self._head_method or status in (204, 304):
            self._resp = _RDONE
            return ResponseHead(stream_id=sid, status=status, headers=headers, end_stream=True,
                                content_length=length if status != 204 else None)
        if chunked:
            self._resp = _CHUNKED
            self._chunked = ChunkedDecoder(ctx, _UP)
        elif length is not None:
            if not length:
                self._resp = _RDONE
                return ResponseHead(stream_id=sid, status=status, headers=headers,
                                    end_stream=True, content_length=0)
            self._resp = _LENGTH
            self._remaining = length
        else:
            self._resp = _UNTIL_CLOSE
            self._keep_alive = False
        return ResponseHead(stream_id=sid, status=status, headers=headers, end_stream=False,
                            content_length=length)

    def feed_eof(self, now: float) -> list[Message]:
        """The upstream closed: end a close-delimited body, else it broke mid-response.

        Raises:
            Broken: the response was incomplete.
        """
        self._keep_alive = False
        state = self._resp
        if state == _UNTIL_CLOSE:
            self._resp = _RDONE
            return [Body(stream_id=self._stream_id, data=b"", end_stream=True)]
        if state == _RDONE:
            return []
        self._broken = True
        raise Broken(
            "upstream closed before the response was complete" if state != _HEAD
            or self._buf else "upstream closed without a response",
            side=_UP,
            status_hint=502,
            kind="broken",
        )

    # -- flow control ---------------------------------------------------------------------

    def pause(self, stream_id: int) -> None:
        self._paused += 1

    def resume(self, stream_id: int) -> None:
        if self._paused:
            self._paused -= 1

    def wants_read(self) -> bool:
        return not self._paused

    def response_started(self) -> bool:
        """Whether any response byte has arrived for the current request."""
        return self._resp != _HEAD or bool(self._buf)

    def reusable(self) -> bool:
        return (
            self._keep_alive
            and not self._broken
            and self._req == _DONE
            and self._resp == _RDONE
            and not self._buf
        )

    def output(self) -> list[bytes | memoryview]:
        out = self._out
        self._out = []
        return out

