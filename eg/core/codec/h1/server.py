"""HTTP/1.1 server codec: downstream requests in, responses out.

Theory of operation. A connection carries one exchange at a time; pipelined requests
are parsed only once the previous response is complete, so responses leave in order
(h11's PAUSED). Two half-machines advance independently:

    request:  HEAD ──head parsed──▶ BODY ──body ended──▶ DONE
              HEAD ──no body──────────────────────────▶ DONE
    response: IDLE ──head sent──▶ BODY ──end_stream──▶ DONE

When both halves are DONE and the connection is keep-alive, both return to their start
and any buffered bytes are parsed as the next request. A response that ends before its
request body was read, ``Connection: close``, HTTP/1.0 without keep-alive, a
close-delimited response or the per-connection request cap make the connection close
once its output is written. ``Reset`` aborts the connection (the reactor closes it with
RST), so a client never mistakes a truncated body for a complete one.
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

# Request-half states.
_HEAD, _BODY_LENGTH, _BODY_CHUNKED, _DONE = range(4)
# Response-half states and framings.
_IDLE, _SENDING, _FINISHED = range(3)
_NONE, _LENGTH, _CHUNKED, _CLOSE = range(4)

_DOWN = Side.DOWNSTREAM
# Characters allowed in a Host value: reg-name / IP-literal / port (RFC 3986).
_HOST_CHARS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:[]%"


class H1ServerCodec:
    """Downstream HTTP/1.x codec (see the module docstring for the state machine).

    Args:
        ctx: the worker's parsing tables and limits.
        scheme: ``b"http"`` or ``b"https"``, reported on every RequestHead.
        max_requests: keep-alive requests before the connection is closed.
    """

    def __init__(self, ctx: H1Context, *, scheme: bytes, max_requests: int) -> None:
        self._ctx = ctx
        self._scheme = scheme
        self._host_chars = bytes(bytearray(_HOST_CHARS))
        self._max_requests = max_requests
        self._buf = b""
        self._out: list[bytes | memoryview] = []
        self._stream_id = 0
        self._req = _HEAD
        self._resp = _IDLE
        self._remaining = 0
        self._chunked: ChunkedDecoder | None = None
        self._framing = _NONE
        self._resp_remaining = 0
        self._keep_alive = True
        self._head_method = False
        self._http_minor = 1
        self._paused = 0
        self._closing = False
        #: The connection must be torn down with RST (a Reset was sent).
        self.aborted = False
        #: Requests started on this connection.
        self.requests = 0
        #: Set by the reactor when draining: the next response closes the connection.
        self.draining = False

    # -- introspection used by the reactor for timeouts ---------------------------------

    @property
    def phase(self) -> str:
        """``idle`` (between requests), ``head``, ``body``, ``waiting`` or ``closed``."""
        if self._closing:
            return "closed"
        if self._req == _HEAD:
            return "head" if self._buf else "idle"
        if self._req == _DONE:
            return "waiting"
        return "body"

    @property
    def request_unfinished(self) -> bool:
        """A request body is still (partly) unread: the client may still be sending it."""
        return self._req in (_BODY_LENGTH, _BODY_CHUNKED)

    @property
    def response_started(self) -> bool:
        return self._resp != _IDLE

    # -- input ---------------------------------------------------------------------------

    def feed(self, data: bytes, now: float) -> list[Message]:
        """Parse received bytes into messages.

        Raises:
            ProtocolError / LimitExceeded: nothing more is parsed on this connection. The
                caller answers: ``error_response(err.status_hint)`` when no exchange is
                under way, else the exchange's own failure path (a 4xx if no response has
                started, an abort otherwise); then the connection closes.
        """
        if self._closing:
            return []
        if self._buf:
            data = self._buf + data
            self._buf = b""
        msgs: list[Message] = []
        try:
            while data:
                req = self._req
                if req == _HEAD:
                    if self._resp != _IDLE:
                        break  # previous response still going: hold pipelined bytes
                    end = data.find(b"\r\n\r\n")
                    if end < 0:
                        self._incomplete_head(data)
                        break
                    if end + 4 > self._ctx.max_head_size:
                        raise LimitExceeded(
                            "request head too large", side=_DOWN, status_hint=431,
                            kind="head_size",
                        )
                    msgs.append(self._parse_head(data[:end]))
                    data = data[end + 4 :]
                elif req == _BODY_LENGTH:
                    data, self._remaining = length_body(
                        data, self._remaining, self._stream_id, msgs)
                    if not self._remaining:
                        self._req = _DONE
                elif req == _BODY_CHUNKED:
                    decoder = self._chunked
                    assert decoder is not None
                    rest = decoder.messages(data, self._stream_id, msgs)
                    if rest is None:
                        data = b""
                    else:
                        data = rest
                        self._req = _DONE
                        self._chunked = None
                else:
                    break
        except EgError:
            self._fail_input()
            raise
        if data:
            # Pipelined bytes wait here; past one head's worth wants_read() stops reading.
            self._buf = bytes(data)
        return msgs

    def _incomplete_head(self, data: bytes) -> None:
        if len(data) > self._ctx.max_head_size:
            raise LimitExceeded(
                "request head too large", side=_DOWN, status_hint=431, kind="head_size"
            )
        if b"\n\n" in data or b"\r\n\n" in data or b"\n\r\n" in data:
            raise ProtocolError("bare LF in request head", side=_DOWN, kind="bare_lf")
        self._buf = data

    def _parse_head(self, head: bytes) -> RequestHead:
        ctx = self._ctx
        check_line_endings(head, _DOWN)
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3:
            raise ProtocolError("malformed request line", side=_DOWN, kind="request_line")
        method, target, version = parts
        if not method or method.translate(None, ctx.tchar):
            raise ProtocolError("invalid method", side=_DOWN, kind="method")
        if version == b"HTTP/1.1":
            minor = 1
        elif version == b"HTTP/1.0":
            minor = 0
        elif version[:5] == b"HTTP/" and len(version) == 8 and version[6] == 0x2E:
            raise ProtocolError("unsupported HTTP version", side=_DOWN, status_hint=505,
                                kind="version")
        else:
            raise ProtocolError("malformed request line", side=_DOWN, kind="request_line")
        if method == b"CONNECT":
            # A reverse proxy does not tunnel (its authority-form target would fail below).
            raise ProtocolError("CONNECT is not supported", side=_DOWN, status_hint=405,
                                kind="method")
        if not target or target.translate(None, ctx.target):
            raise ProtocolError("invalid request target", side=_DOWN, kind="target")
        fields = parse_fields(lines, 1, ctx, _DOWN, request=True)

        headers, other, length, chunked, close = split_fields(
            fields, ctx, _DOWN, http10=minor == 0, status_hint=501)
        host: bytes | None = None
        hosts = 0
        expect = False
        for name, value in other:
            if name == b"host":
                host = value
                hosts += 1
            elif name == b"expect":
                if value.lower() != b"100-continue":
                    raise ProtocolError("unsupported expectation", side=_DOWN,
                                        status_hint=417, kind="expect")
                expect = minor == 1
        if hosts > 1 or (minor == 1 and hosts == 0):
            raise ProtocolError("missing or repeated Host", side=_DOWN, kind="host")
        if host is not None and host.translate(None, self._host_chars):
            raise ProtocolError("invalid Host", side=_DOWN, kind="host")

        if target[0] == 0x2F or (target == b"*" and method == b"OPTIONS"):
            # origin-form "/..." or asterisk-form
            path = target
            authority = host or b""
        elif target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
            rest = target.split(b"://", 1)[1]
            # The authority ends at the first "/" or "?" (RFC 3986 §3.2); an empty path
            # is "/" (RFC 9112 §3.2.1). Userinfo and fragments fail the Host character check.
            slash = rest.find(b"/")
            query = rest.find(b"?")
            if query >= 0 and (slash < 0 or query < slash):
                authority, path = rest[:query], b"/" + rest[query:]
            elif slash >= 0:
                authority, path = rest[:slash], rest[slash:]
            else:
                authority, path = rest, b"/"
            if not authority or authority.translate(None, self._host_chars):
                raise ProtocolError("invalid request target", side=_DOWN, kind="target")
        else:
            raise ProtocolError("invalid request target", side=_DOWN, kind="target")

        self._stream_id += 1
        self.requests += 1
        self._http_minor = minor
        self._head_method = method == b"HEAD"
        self._keep_alive = not close and self.requests < self._max_requests
        if chunked:
            self._req = _BODY_CHUNKED
            self._chunked = ChunkedDecoder(ctx, _DOWN)
            end = False
        elif length:
            self._req = _BODY_LENGTH
            self._remaining = length
            end = False
        else:
            self._req = _DONE
            end = True
        return RequestHead(
            stream_id=self._stream_id,
            method=method,
            scheme=self._scheme,
            authority=authority,
            path=path,
            headers=headers,
            end_stream=end,
            content_length=length,
            expect_continue=expect and not end,
            http_minor=minor,
        )

    def feed_eof(self, now: float) -> list[Message]:
        """The client half-closed: a request in progress is abandoned."""
        if self._req in (_BODY_LENGTH, _BODY_CHUNKED):
            self._closing = True
            return [Reset(stream_id=self._stream_id, code=ResetCode.CANCEL, side=_DOWN)]
        if self._req == _HEAD:
            self._closing = True
        # _DONE: the request is complete; the response may still be sent before closing.
        self._keep_alive = False
        return []

    def _fail_input(self) -> None:
        """Stop parsing after a protocol error; nothing more is read on this connection."""
        self._closing = True
        self._keep_alive = False

    # -- output ---------------------------------------------------------------------------

    def send(self, msg: Message) -> None:
        """Encode a response message for the client.

        A message for any stream but the current one (a late one, after the exchange it
        belonged to ended) is dropped: it must never leak into the next response.
        """
        if msg.stream_id != self._stream_id:
            return
        if isinstance(msg, Body):
            self._send_body(msg.data, msg.end_stream)
        elif isinstance(msg, ResponseHead):
            self._send_head(msg)
        elif isinstance(msg, Trailers):
            self._send_trailers(msg.headers)
        elif isinstance(msg, Reset):
            self.aborted = True
            self._closing = True
            self._keep_alive = False
        else:  # pragma: no cover - RequestHead is never sent by a server
            raise TypeError(f"server codec cannot send {type(msg).__name__}")

    def _send_head(self, msg: ResponseHead) -> None:
        status = msg.status
        reason = self._ctx.reasons.get(status, b"")
        if status < 200:
            if self._http_minor == 1 and status != 101:
                self._out.append(
                    b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, reason, format_fields(msg.headers))
                )
            return
        no_body = self._head_method or status in (204, 304)
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason), format_fields(msg.headers)]
        if no_body:
            self._framing = _NONE
            if msg.content_length is not None and status != 204:
                lines.append(b"content-length: %d\r\n" % msg.content_length)
        elif msg.end_stream:
            self._framing = _NONE
            lines.append(b"content-length: 0\r\n")
        elif msg.content_length is not None:
            self._framing = _LENGTH
            self._resp_remaining = msg.content_length
            lines.append(b"content-length: %d\r\n" % msg.content_length)
        elif self._http_minor == 1:
            self._framing = _CHUNKED
            lines.append(b"transfer-encoding: chunked\r\n")
        else:
            self._framing = _CLOSE
            self._keep_alive = False
        if self.draining or self._req != _DONE:
            # Request body not fully read yet: the next request's boundary is unknown.
            self._keep_alive = False
        if not self._keep_alive:
            lines.append(b"connection: close\r\n")
        elif self._http_minor == 0:
            lines.append(b"connection: keep-alive\r\n")
        lines.append(b"\r\n")
        self._out.append(b"".join(lines))
        self._resp = _SENDING
        if msg.end_stream or no_body:
            self._finish_response()

    def _send_body(self, data: bytes | memoryview, end: bool) -> None:
        if self._resp != _SENDING:
            return  # body of a HEAD/204/304 response, or after an abort
        framing = self._framing
        n = len(data)
        if framing == _CHUNKED:
            if n:
                self._out += (b"%x\r\n" % n, data, b"\r\n")
            if end:
                self._out.append(b"0\r\n\r\n")
        elif n:
            if framing == _LENGTH:
                if n > self._resp_remaining:
                    raise ProtocolError("response body longer than Content-Length",
                                        side=Side.UPSTREAM, status_hint=502, kind="body_length")
                self._resp_remaining -= n
            if framing != _NONE:
                self._out.append(data)
        if end:
            self._finish_response()

    def _send_trailers(self, headers: HeaderList) -> None:
        if self._resp != _SENDING:
            return
        if self._framing == _CHUNKED:
            self._out.append(b"0\r\n%s\r\n" % format_fields(headers))
        # Content-Length or close-delimited framing cannot carry trailers: they are dropped.
        self._finish_response()

    def _finish_response(self) -> None:
        self._resp = _FINISHED
        if self._framing == _LENGTH and self._resp_remaining:
            # The upstream promised more than it sent; never end cleanly.
            self.aborted = True
            self._keep_alive = False
        if self._keep_alive and self._req == _DONE:
            self._req = _HEAD
            self._resp = _IDLE
            self._framing = _NONE
        else:
            self._closing = True

    def error_response(self, status: int, detail: str = "") -> None:
        """Queue a short error response (no exchange involved) and close afterwards."""
        if self._resp != _IDLE:
            self.aborted = True
            self._closing = True
            return
        reason = self._ctx.reasons.get(status, b"")
        body = b"%d %s\n" % (status, reason)
        self._out.append(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, reason, len(body), body)
        )
        self._resp = _FINISHED
        self._keep_alive = False
        self._closing = True

    # -- flow control ---------------------------------------------------------------------

    def pause(self, stream_id: int) -> None:
        self._paused += 1

    def resume(self, stream_id: int) -> None:
        if self._paused:
            self._paused -= 1

    def wants_read(self) -> bool:
        """Read unless paused, closing, or holding a full head of pipelined bytes."""
        if self._paused or self._closing:
            return False
        return len(self._buf) <= self._ctx.max_head_size

    def wants_close(self) -> bool:
        return self._closing

    def has_buffered_input(self) -> bool:
        """Pipelined bytes wait for ``feed(b"")`` once the current response is done."""
        return bool(self._buf) and self._req == _HEAD and self._resp == _IDLE

    def output(self) -> list[bytes | memoryview]:
        out = self._out
        self._out = []
        return out

