"""A small HTTP/1.1 origin server: the real backend behind the demo and the integration tests.

It works on raw sockets (one daemon thread per connection, ``socketserver``) so that every
byte of framing is under its control: keep-alive with any number of requests per
connection, Content-Length and chunked request bodies (chunk extensions and trailers
included), ``Expect: 100-continue``, HEAD, and responses framed by Content-Length, by
chunked encoding (with trailers) or by closing the connection. Standard library only.

Endpoints (``?`` marks query parameters; every response carries ``x-origin: NAME``):

=============================  ===========================================================
``/`` and anything unknown     200 ``hello from origin NAME\\n``
``/echo``                      ``METHOD\\n TARGET\\n``, each received header ``name: value``
                               as received (order kept), a blank line, then the body
``/headers``                   the received header lines only
``/sha256``                    streams the body through SHA-256: ``<hex> <length>``
``/bytes/N``                   N bytes of :func:`pattern`; ``?chunked=1`` (64 KiB chunks),
                               ``?close=1`` (close-delimited), ``?trailers=1`` (chunked,
                               with trailer ``x-checksum: <sha256 hex of the body>``)
``/status/N``                  status N; 204 and 304 without body or Content-Length
``/slow?delay=S&size=N``       waits S seconds before the head
``/drip?size=N&interval=S``    the body in ``piece``-byte pieces, S seconds apart
``/reset-mid-body?size=N``     Content-Length N, N//2 bytes, then RST (SO_LINGER 0)
``/close-no-response``         reads the request, closes without answering
``/headers-size?n=N&size=S``   N extra headers ``x-h-0`` ... of S bytes each
``/upload-slow-read?rate=B``   reads the body at B bytes/s, answers ``<length>``
``/trailers``                  chunked, with trailer ``grpc-status: 0``
``/_stats``                    ``requests=N connections=M`` (this request included)
=============================  ===========================================================

``/bytes``, ``/slow`` and ``/drip`` all accept ``chunked=1`` and ``close=1``. An HTTP/1.0
client never gets chunked encoding: it gets a close-delimited body without trailers.

Theory of operation, per connection::

    read head ──► count ──► dispatch ──► answer ──► keep-alive? ──yes──► read head
        │ EOF / idle timeout                            │ no
        ▼                                               ▼
      close                        shutdown(SHUT_WR), discard input briefly, close

A request body is always consumed before the next head is read: endpoints that do not
use the body drain it before answering (sending ``100 Continue`` first when asked), and
the others read it to its end. Malformed input gets a 400 (431 for oversized heads) and
``Connection: close``.

Run ``python -m eg.demo.origin --port P [--name N] [--port P2 --name N2 ...]``; with port 0
the kernel picks one, and each ``origin listening on HOST:PORT`` line on stdout names the
real port. Tests use :func:`start_origin` for an in-process server.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import http
import signal
import socket
import socketserver
import struct
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterable
from types import FrameType, TracebackType
from typing import Self
from urllib.parse import parse_qsl, urlsplit

# A connection with no complete read or write for this long is closed. It also bounds how
# long a stalled peer can hold a thread. Seconds; overridable with --idle-timeout.
IDLE_TIMEOUT = 60.0
# Longest request line or header line. Generous on purpose: the gateway's own header caps
# (64 KiB H2 header list, 1 MiB QPACK section) must trip before the origin's.
MAX_LINE = 1 << 20
# Total bytes in one request head, and the number of header fields in it (the gateway
# allows 256).
MAX_HEAD = 4 << 20
MAX_HEADERS = 10_000
# /echo must know its body's length before answering, so it holds the body in memory.
MAX_ECHO_BODY = 16 << 20
# Streamed bodies go out in pieces of this size; chunked /bytes uses it as the chunk size.
CHUNK = 64 * 1024
# Bytes asked of one recv().
RECV_SIZE = 64 * 1024
# After the last response on a closing connection, keep reading (and discarding) this
# long, so that unread request bytes do not turn our close into a RST that could destroy
# the response still in flight (the "lingering close" of Apache and nginx).
LINGER_TIME = 1.0
# How long /reset-mid-body waits for its half body to leave the send queue before the RST
# (a RST discards whatever the kernel has not sent yet).
RESET_DRAIN_TIME = 2.0
# The body pattern repeats with this period; prime, so it never lines up with chunk sizes.
PATTERN_MODULUS = 251
# Upper bounds of query parameters, to keep a typo from tying up the origin.
MAX_DELAY = 3600.0
MAX_SIZE = 1 << 50
MAX_EXTRA_HEADERS = 100_000
MAX_EXTRA_HEADER_SIZE = 16 << 20

_TOKEN_CHARS = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_HEX_CHARS = b"0123456789abcdefABCDEF"


def pattern(start: int, length: int) -> bytes:
    """Return bytes ``start .. start+length`` of the endless sequence 0, 1, ..., 250, 0, ....

    Byte ``i`` of every pattern body is ``i % 251``; tests use this to check bodies.

    Args:
        start: offset of the first byte.
        length: number of bytes.

    Returns:
        ``bytes(i % 251 for i in range(start, start + length))``, built without a loop.
    """
    first = start % PATTERN_MODULUS
    periods = (first + length) // PATTERN_MODULUS + 1
    return (bytes(range(PATTERN_MODULUS)) * periods)[first : first + length]


class _HttpError(Exception):
    """The request cannot be served; answer ``status`` and close the connection."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Truncated(ConnectionError):
    """The peer closed the connection in the middle of a request."""


class _Hangup(Exception):
    """Stop serving this connection now, without a (further) response.

    ``rst`` selects an abortive close (RST) over an orderly one (FIN).
    """

    def __init__(self, *, rst: bool) -> None:
        super().__init__("rst" if rst else "fin")
        self.rst = rst


class _Reader:
    """A receive buffer over a blocking socket, with line and bounded reads."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()

    def readline(self, limit: int) -> bytes | None:
        """Return the next line including its ``\\n``, or None on EOF before any byte.

        Raises:
            _HttpError: the line is longer than ``limit``.
            _Truncated: EOF in the middle of a line.
        """
        searched = 0
        while True:
            end = self._buf.find(b"\n", searched)
            if end >= 0:
                if end >= limit:
                    raise _HttpError(431, "line too long")
                line = bytes(self._buf[: end + 1])
                del self._buf[: end + 1]
                return line
            if len(self._buf) > limit:
                raise _HttpError(431, "line too long")
            searched = len(self._buf)
            data = self._sock.recv(RECV_SIZE)
            if not data:
                if self._buf:
                    raise _Truncated("EOF inside a line")
                return None
            self._buf += data

    def read(self, size: int) -> bytes:
        """Return between 1 and ``size`` bytes, or b"" at EOF; at most one recv()."""
        if self._buf:
            data = bytes(self._buf[:size])
            del self._buf[:size]
            return data
        return self._sock.recv(size)


class _Request:
    """A parsed request head. Header names and values are latin-1 text, as received."""

    __slots__ = ("headers", "method", "target", "version")

    def __init__(
        self, *, method: str, target: str, version: str, headers: list[tuple[str, str]]
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers

    def values(self, name: str) -> list[str]:
        """Return every value of header ``name`` (case-insensitive), in order."""
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]

    def tokens(self, name: str) -> list[str]:
        """Return the comma-separated, lowercased tokens of every ``name`` header."""
        return [
            token.strip().lower()
            for value in self.values(name)
            for token in value.split(",")
            if token.strip()
        ]


def _read_head(reader: _Reader) -> _Request | None:
    """Read one request head; None if the peer closed cleanly before sending one.

    Raises:
        _HttpError: malformed or oversized head.
        _Truncated: EOF inside the head.
    """
    line = reader.readline(MAX_LINE)
    for _ in range(8):  # RFC 9112 §2.2: ignore empty lines before the request line
        if line not in (b"\r\n", b"\n"):
            break
        line = reader.readline(MAX_LINE)
    if line is None:
        return None
    total = len(line)
    parts = line.rstrip(b"\r\n").split(b" ")
    if len(parts) != 3 or not _is_token(parts[0]) or not parts[1]:
        raise _HttpError(400, "malformed request line")
    method, target, version = parts
    if not version.startswith(b"HTTP/1.") or version not in (b"HTTP/1.0", b"HTTP/1.1"):
        if version.startswith(b"HTTP/") and len(version) == 8:
            raise _HttpError(505, "HTTP version not supported")
        raise _HttpError(400, "malformed request line")
    if any(c <= 0x20 or c == 0x7F for c in target):
        raise _HttpError(400, "malformed request target")
    headers: list[tuple[str, str]] = []
    while True:
        line = reader.readline(MAX_LINE)
        if line is None:
            raise _Truncated("EOF inside the head")
        total += len(line)
        if total > MAX_HEAD:
            raise _HttpError(431, "request head too large")
        line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        if not line:
            break
        if b"\r" in line or b"\x00" in line:
            raise _HttpError(400, "invalid character in header")
        if line[:1] in (b" ", b"\t"):  # obs-fold (RFC 9112 §5.2): replace with one space
            if not headers:
                raise _HttpError(400, "continuation line before the first header")
            name, value = headers[-1]
            folded = line.strip(b" \t").decode("latin-1")
            headers[-1] = (name, f"{value} {folded}")
            continue
        name_b, colon, value_b = line.partition(b":")
        if not colon or not _is_token(name_b):
            raise _HttpError(400, "malformed header line")
        headers.append((name_b.decode("latin-1"), value_b.strip(b" \t").decode("latin-1")))
        if len(headers) > MAX_HEADERS:
            raise _HttpError(431, "too many header fields")
    return _Request(
        method=method.decode("latin-1"),
        target=target.decode("latin-1"),
        version=version.decode("latin-1"),
        headers=headers,
    )


def _is_token(data: bytes) -> bool:
    """Whether ``data`` is a non-empty RFC 9110 token."""
    return bool(data) and not data.translate(None, _TOKEN_CHARS)


class _Body:
    """The request body, decoded from its framing and read on demand.

    Reading sends ``100 Continue`` first if the client asked for it. ``done`` turns true
    once the body (and, when chunked, its trailers) has been read to the end.
    """

    def __init__(
        self,
        sock: socket.socket,
        reader: _Reader,
        *,
        length: int | None,
        expect_continue: bool,
    ) -> None:
        """Set up the body reader.

        Args:
            sock: the connection, for the interim 100 response.
            reader: the connection's receive buffer.
            length: Content-Length, or None for a chunked body.
            expect_continue: the client waits for ``100 Continue`` before sending.
        """
        self._sock = sock
        self._reader = reader
        self._chunked = length is None
        self._remaining = 0 if length is None else length
        self._need_crlf = False
        self._continue = expect_continue and length != 0
        self.done = length == 0
        self.received = 0
        self.trailers: list[tuple[str, str]] = []

    def read(self, size: int = RECV_SIZE) -> bytes:
        """Return the next 1 to ``size`` bytes of the body, or b"" at its end.

        Raises:
            _HttpError: bad chunked framing.
            _Truncated: the peer closed before the end of the body.
        """
        if self.done:
            return b""
        if self._continue:
            self._continue = False
            self._sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if self._chunked and self._remaining == 0 and not self._next_chunk():
            return b""
        data = self._reader.read(min(size, self._remaining))
        if not data:
            raise _Truncated("EOF inside the request body")
        self._remaining -= len(data)
        self.received += len(data)
        if not self._chunked and self._remaining == 0:
            self.done = True
        return data

    def drain(self) -> None:
        """Read and discard the rest of the body."""
        while self.read():
            pass

    def _next_chunk(self) -> bool:
        """Read the next chunk-size line; False (and trailers read) after the last chunk."""
        if self._need_crlf:
            if self._reader.readline(MAX_LINE) not in (b"\r\n", b"\n"):
                raise _HttpError(400, "chunk data not followed by CRLF")
            self._need_crlf = False
        line = self._reader.readline(MAX_LINE)
        if line is None:
            raise _Truncated("EOF before a chunk size")
        digits = line.rstrip(b"\r\n").split(b";", 1)[0].rstrip(b" \t")
        if not digits or len(digits) > 16 or digits.translate(None, _HEX_CHARS):
            raise _HttpError(400, "bad chunk size")
        size = int(digits, 16)
        if size:
            self._remaining = size
            self._need_crlf = True
            return True
        while True:
            line = self._reader.readline(MAX_LINE)
            if line is None:
                raise _Truncated("EOF inside the trailers")
            line = line.rstrip(b"\r\n")
            if not line:
                break
            name, colon, value = line.partition(b":")
            if not colon or not _is_token(name):
                raise _HttpError(400, "malformed trailer line")
            self.trailers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
            if len(self.trailers) > MAX_HEADERS:
                raise _HttpError(431, "too many trailer fields")
        self.done = True
        return False


class _Response:
    """Writes one response: head, body pieces, end (with trailers when chunked).

    The head is held back until the first body bytes or the end, so a small response
    leaves in one segment. Framing follows from ``start()``'s arguments, the status and
    the client's HTTP version; HEAD requests get the same head and no body.
    """

    LENGTH = "length"
    CHUNKED = "chunked"
    CLOSE = "close"
    EMPTY = "empty"

    def __init__(
        self, sock: socket.socket, *, name: str, head_only: bool, http10: bool, keep_alive: bool
    ) -> None:
        self._sock = sock
        self._name = name
        self._head_only = head_only
        self._http10 = http10
        self.keep_alive = keep_alive
        self.started = False
        self.finished = False
        self._framing = self.EMPTY
        self._pending = b""
        self._length = 0
        self._sent = 0

    def start(
        self,
        status: int,
        headers: Iterable[tuple[str, str]] = (),
        *,
        length: int | None = None,
        chunked: bool = False,
        close: bool = False,
    ) -> None:
        """Prepare the head of a final response.

        Args:
            status: 200-999.
            headers: extra header fields; framing and ``x-origin`` are added here.
            length: the body's Content-Length (ignored when chunked or close is set).
            chunked: use chunked encoding (close-delimited for HTTP/1.0 clients).
            close: delimit the body by closing the connection.
        """
        assert not self.started, "one response per request"
        self.started = True
        lines = [f"HTTP/1.1 {status} {_reason(status)}"]
        lines.extend(f"{key}: {value}" for key, value in headers)
        lines.append(f"x-origin: {self._name}")
        if status in (204, 304):
            self._framing = self.EMPTY
        elif close or (chunked and self._http10) or (length is None and not chunked):
            self._framing = self.CLOSE
            self.keep_alive = False
        elif chunked:
            self._framing = self.CHUNKED
            lines.append("transfer-encoding: chunked")
        else:
            assert length is not None
            self._framing = self.LENGTH
            self._length = length
            lines.append(f"content-length: {length}")
        if not self.keep_alive:
            lines.append("connection: close")
        elif self._http10:
            lines.append("connection: keep-alive")
        self._pending = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    @property
    def chunked(self) -> bool:
        """Whether the body goes out chunked (and so can carry trailers)."""
        return self._framing == self.CHUNKED

    def write(self, data: bytes | memoryview) -> None:
        """Send body bytes (dropped for HEAD, 204 and 304)."""
        assert self.started and not self.finished
        if not data or self._head_only or self._framing == self.EMPTY:
            return
        self._sent += len(data)
        if self._framing == self.CHUNKED:
            parts = [self._pending, b"%x\r\n" % len(data), data, b"\r\n"]
        else:
            assert self._framing != self.LENGTH or self._sent <= self._length
            parts = [self._pending, data]
        self._pending = b""
        self._sock.sendall(b"".join(parts))

    def flush(self) -> None:
        """Send the head now if it is still held back."""
        if self._pending:
            self._sock.sendall(self._pending)
            self._pending = b""

    def finish(self, trailers: Iterable[tuple[str, str]] = ()) -> None:
        """End the body; trailers are sent only when the body is chunked."""
        assert self.started and not self.finished
        self.finished = True
        if self._framing == self.CHUNKED and not self._head_only:
            fields = "".join(f"{key}: {value}\r\n" for key, value in trailers)
            self._sock.sendall(self._pending + b"0\r\n" + fields.encode("latin-1") + b"\r\n")
            self._pending = b""
        else:
            assert self._head_only or self._framing != self.LENGTH or self._sent == self._length
            self.flush()

    def send(self, status: int, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Send a whole response with a Content-Length body."""
        self.start(status, [("content-type", "text/plain"), *headers], length=len(body))
        self.write(body)
        self.finish()


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Status"


class QueryParams:
    """Typed access to a request's query parameters (shared with ``origin_h2``)."""

    query: dict[str, str]

    def int_param(self, key: str, default: int, high: int = MAX_SIZE) -> int:
        """Return the integer query parameter ``key`` (0 to ``high``) or ``default``."""
        raw = self.query.get(key)
        if raw is None:
            return default
        if not raw.isdigit() or int(raw) > high:
            raise _HttpError(400, f"bad integer parameter {key}")
        return int(raw)

    def float_param(self, key: str, default: float, high: float = MAX_DELAY) -> float:
        """Return the non-negative number query parameter ``key`` or ``default``."""
        raw = self.query.get(key)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise _HttpError(400, f"bad number parameter {key}") from None
        if not 0.0 <= value <= high:
            raise _HttpError(400, f"parameter {key} out of range")
        return value

    def flag(self, key: str) -> bool:
        """Whether query parameter ``key`` is set to something other than 0/false/no."""
        return self.query.get(key, "0").lower() not in ("0", "", "false", "no")


class _Exchange(QueryParams):
    """One request and its response, plus what the endpoints need to answer it."""

    def __init__(self, conn: _Connection, request: _Request, body: _Body) -> None:
        http10 = request.version == "HTTP/1.0"
        connection = request.tokens("connection")
        keep_alive = "keep-alive" in connection if http10 else "close" not in connection
        url = urlsplit(request.target)
        self.conn = conn
        self.request = request
        self.body = body
        self.name = conn.server.name
        self.path = url.path
        self.query = dict(parse_qsl(url.query, keep_blank_values=True))
        self.response = _Response(
            conn.sock,
            name=self.name,
            head_only=request.method == "HEAD",
            http10=http10,
            keep_alive=keep_alive,
        )


    def send_pattern(
        self, start: int, length: int, *, digest: Callable[[memoryview], object] | None = None
    ) -> None:
        """Write pattern bytes ``start .. start+length``, at most CHUNK bytes per write.

        Args:
            start: offset of the first byte in the pattern.
            length: number of bytes.
            digest: called with every piece written (``hashlib`` objects' ``update``).
        """
        view = memoryview(self.conn.server.pattern_block)
        end = start + length
        while start < end:
            size = min(CHUNK, end - start)
            first = start % PATTERN_MODULUS
            piece = view[first : first + size]
            if digest is not None:
                digest(piece)
            self.response.write(piece)
            start += size

    def pattern_response(self, size: int, extra: Iterable[tuple[str, str]] = ()) -> None:
        """Start a response for ``size`` pattern bytes, framed by ``?chunked`` / ``?close``."""
        self.response.start(
            200,
            [("content-type", "application/octet-stream"), *extra],
            length=size,
            chunked=self.flag("chunked"),
            close=self.flag("close"),
        )


def _ep_hello(ex: _Exchange) -> None:
    ex.response.send(200, f"hello from origin {ex.name}\n".encode())


def _ep_echo(ex: _Exchange) -> None:
    request = ex.request
    out = bytearray(f"{request.method}\n{request.target}\n".encode("latin-1"))
    for name, value in request.headers:
        out += f"{name}: {value}\n".encode("latin-1")
    out += b"\n"
    while data := ex.body.read():
        out += data
        if ex.body.received > MAX_ECHO_BODY:
            ex.body.drain()
            ex.response.send(413, b"body too large for /echo\n")
            return
    ex.response.send(200, bytes(out))


def _ep_headers(ex: _Exchange) -> None:
    lines = "".join(f"{name}: {value}\n" for name, value in ex.request.headers)
    ex.response.send(200, lines.encode("latin-1"))


def _ep_sha256(ex: _Exchange) -> None:
    digest = hashlib.sha256()
    while data := ex.body.read():
        digest.update(data)
    ex.response.send(200, f"{digest.hexdigest()} {ex.body.received}".encode())


def _ep_bytes(ex: _Exchange, arg: str) -> None:
    if not arg.isdigit() or int(arg) > MAX_SIZE:
        raise _HttpError(400, "usage: /bytes/N")
    size = int(arg)
    trailers = ex.flag("trailers")
    if trailers:
        ex.query["chunked"] = "1"
    ex.pattern_response(size, [("trailer", "x-checksum")] if trailers else [])
    digest = hashlib.sha256()
    ex.send_pattern(0, size, digest=digest.update if trailers else None)
    ex.response.finish([("x-checksum", digest.hexdigest())] if trailers else [])


def _ep_status(ex: _Exchange, arg: str) -> None:
    if not arg.isdigit() or not 200 <= int(arg) <= 999:
        raise _HttpError(400, "usage: /status/N with N from 200 to 999")
    status = int(arg)
    ex.response.send(status, f"status {status}\n".encode())


def _ep_slow(ex: _Exchange) -> None:
    time.sleep(ex.float_param("delay", 1.0))
    if "size" not in ex.query:
        _ep_hello(ex)
        return
    size = ex.int_param("size", 0)
    ex.pattern_response(size)
    ex.send_pattern(0, size)
    ex.response.finish()


def _ep_drip(ex: _Exchange) -> None:
    size = ex.int_param("size", 1024)
    interval = ex.float_param("interval", 0.1)
    piece = ex.int_param("piece", max(1, size // 10)) or 1
    ex.pattern_response(size)
    ex.response.flush()
    for start in range(0, size, piece):
        time.sleep(interval)
        ex.send_pattern(start, min(piece, size - start))
    ex.response.finish()


def _ep_reset_mid_body(ex: _Exchange) -> None:
    size = ex.int_param("size", 1024)
    ex.response.start(200, [("content-type", "application/octet-stream")], length=size)
    ex.send_pattern(0, size // 2)
    ex.response.flush()
    raise _Hangup(rst=True)


def _ep_close_no_response(ex: _Exchange) -> None:
    raise _Hangup(rst=False)


def _ep_headers_size(ex: _Exchange) -> None:
    count = ex.int_param("n", 1, MAX_EXTRA_HEADERS)
    size = ex.int_param("size", 1024, MAX_EXTRA_HEADER_SIZE)
    value = ("abcdefghijklmnopqrstuvwxyz" * (size // 26 + 1))[:size]
    ex.response.send(200, b"ok\n", [(f"x-h-{i}", value) for i in range(count)])


def _ep_upload_slow_read(ex: _Exchange) -> None:
    rate = ex.int_param("rate", 65536) or 1
    step = max(1, min(RECV_SIZE, rate // 10))
    began = time.monotonic()
    while ex.body.read(step):
        ahead = ex.body.received / rate - (time.monotonic() - began)
        if ahead > 0:
            time.sleep(ahead)
    ex.response.send(200, str(ex.body.received).encode())


def _ep_trailers(ex: _Exchange) -> None:
    ex.response.start(
        200, [("content-type", "text/plain"), ("trailer", "grpc-status")], chunked=True
    )
    ex.response.write(f"hello from origin {ex.name}\n".encode())
    ex.response.finish([("grpc-status", "0")])


def _ep_stats(ex: _Exchange) -> None:
    requests, connections = ex.conn.server.stats()
    ex.response.send(200, f"requests={requests} connections={connections}".encode())


_Endpoint = Callable[[_Exchange], None]
_ArgEndpoint = Callable[[_Exchange, str], None]


class _Connection:
    """Serves the requests of one accepted connection, one after another."""

    def __init__(self, sock: socket.socket, server: OriginServer) -> None:
        self.sock = sock
        self.server = server
        self._reader = _Reader(sock)
        # The routing tables, per connection: nothing on the request path is shared
        # between connection threads. Exact paths, then "/prefix/ARG" paths; the flag
        # says whether the endpoint reads the request body itself.
        self._exact: dict[str, tuple[_Endpoint, bool]] = {
            "/echo": (_ep_echo, True),
            "/headers": (_ep_headers, False),
            "/sha256": (_ep_sha256, True),
            "/slow": (_ep_slow, False),
            "/drip": (_ep_drip, False),
            "/reset-mid-body": (_ep_reset_mid_body, False),
            "/close-no-response": (_ep_close_no_response, False),
            "/headers-size": (_ep_headers_size, False),
            "/upload-slow-read": (_ep_upload_slow_read, True),
            "/trailers": (_ep_trailers, False),
            "/_stats": (_ep_stats, False),
        }
        self._prefix: dict[str, _ArgEndpoint] = {"/bytes/": _ep_bytes, "/status/": _ep_status}

    def run(self) -> None:
        """Serve until the peer leaves, an error, or a response that closes."""
        sock = self.sock
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self.server.idle_timeout)
            while self._serve_one():
                pass
            self._lingering_close()
        except _Hangup as hangup:
            if hangup.rst:
                self._reset()
            else:
                self._lingering_close()
        except OSError:
            pass
        finally:
            sock.close()

    def _serve_one(self) -> bool:
        """Serve one request; whether the connection stays open for another."""
        try:
            request = _read_head(self._reader)
        except _HttpError as exc:
            self._send_error(exc)
            return False
        if request is None:
            return False
        self.server.count_request()
        try:
            body = self._body(request)
        except _HttpError as exc:
            self._send_error(exc)
            return False
        exchange = _Exchange(self, request, body)
        try:
            self._dispatch(exchange)
        except _HttpError as exc:
            if not exchange.response.started:
                self._send_error(exc)
            return False
        return exchange.response.keep_alive and body.done

    def _body(self, request: _Request) -> _Body:
        """Work out the body framing (RFC 9112 §6.3) and return its reader."""
        lengths = request.values("content-length")
        codings = request.tokens("transfer-encoding")
        if codings and lengths:
            raise _HttpError(400, "both Content-Length and Transfer-Encoding")
        length: int | None = 0
        if codings:
            if codings[-1] != "chunked":
                raise _HttpError(400, "final transfer coding is not chunked")
            length = None
        elif lengths:
            values = {item.strip() for value in lengths for item in value.split(",")}
            if len(values) != 1:
                raise _HttpError(400, "conflicting Content-Length values")
            value = values.pop()
            if not value.isdigit() or not value.isascii() or len(value) > 18:
                raise _HttpError(400, "bad Content-Length")
            length = int(value)
        expect = "100-continue" in request.tokens("expect") and request.version == "HTTP/1.1"
        return _Body(self.sock, self._reader, length=length, expect_continue=expect)

    def _dispatch(self, exchange: _Exchange) -> None:
        path = exchange.path
        entry = self._exact.get(path)
        if entry is not None:
            endpoint, reads_body = entry
            if not reads_body:
                exchange.body.drain()
            endpoint(exchange)
        else:
            exchange.body.drain()
            for prefix, arg_endpoint in self._prefix.items():
                if path.startswith(prefix):
                    arg_endpoint(exchange, path[len(prefix) :])
                    break
            else:
                _ep_hello(exchange)
        assert exchange.response.finished

    def _send_error(self, exc: _HttpError) -> None:
        body = f"{exc.reason}\n".encode()
        head = (
            f"HTTP/1.1 {exc.status} {_reason(exc.status)}\r\ncontent-type: text/plain\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n"
            f"x-origin: {self.server.name}\r\n\r\n"
        )
        self.sock.sendall(head.encode("latin-1") + body)

    def _lingering_close(self) -> None:
        """Send FIN, then discard input for a while so our close does not become a RST."""
        sock = self.sock
        try:
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_TIME
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                if not sock.recv(RECV_SIZE):
                    break
        except OSError:
            pass

    def _reset(self) -> None:
        """Close with a RST once what was written has left the send queue."""
        sock = self.sock
        deadline = time.monotonic() + RESET_DRAIN_TIME
        try:
            while time.monotonic() < deadline:
                queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
                if struct.unpack("i", queued)[0] == 0:
                    break
                time.sleep(0.005)
        except OSError:
            time.sleep(0.05)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server = self.server
        assert isinstance(server, OriginServer)
        server.connection_opened(self.request)
        try:
            _Connection(self.request, server).run()
        finally:
            server.connection_closed(self.request)


class OriginServer(socketserver.ThreadingTCPServer):
    """A listening origin: one daemon thread per connection.

    Attributes:
        name: what ``x-origin`` and the hello body say; defaults to the bound port.
        idle_timeout: seconds a connection may stall before it is closed.
    """

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    # Listen backlog: load tests open many connections at once.
    request_queue_size = 1024

    def __init__(
        self,
        address: tuple[str, int],
        *,
        name: str | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        """Bind and listen.

        Args:
            address: (host, port); port 0 lets the kernel choose.
            name: the origin's name; None means its port number.
            idle_timeout: seconds a connection may stall before it is closed.

        Raises:
            OSError: the address cannot be bound.
        """
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)
        self.name = name if name is not None else str(self.server_address[1])
        self.idle_timeout = idle_timeout
        self.pattern_block = pattern(0, CHUNK + PATTERN_MODULUS)
        self._lock = threading.Lock()
        self._requests = 0
        self._connections = 0
        self._open: set[socket.socket] = set()

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self.server_address[1])

    def connection_opened(self, sock: socket.socket) -> None:
        """Count a new connection and remember it, so close_connections() can end it."""
        with self._lock:
            self._connections += 1
            self._open.add(sock)

    def connection_closed(self, sock: socket.socket) -> None:
        """Forget a finished connection."""
        with self._lock:
            self._open.discard(sock)

    def count_request(self) -> None:
        """Count one request head read."""
        with self._lock:
            self._requests += 1

    def stats(self) -> tuple[int, int]:
        """Return (requests, connections) served so far."""
        with self._lock:
            return self._requests, self._connections

    def close_connections(self) -> None:
        """Shut down every open connection; their threads then finish on their own."""
        with self._lock:
            socks = list(self._open)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        # The connection has already shut itself down (gracefully, or with a RST that a
        # shutdown(SHUT_WR) here would turn into a FIN); only release the descriptor.
        self.close_request(request)


class OriginHandle:
    """An origin serving from background threads of this process; see start_origin()."""

    def __init__(self, server: OriginServer) -> None:
        self.server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"origin-{server.port}",
            daemon=True,
        )
        self._thread.start()
        self._stopped = False

    @property
    def host(self) -> str:
        """The bound address."""
        return str(self.server.server_address[0])

    @property
    def port(self) -> int:
        """The bound port."""
        return self.server.port

    @property
    def name(self) -> str:
        """The origin's name, as in ``x-origin``."""
        return self.server.name

    @property
    def requests(self) -> int:
        """Requests served so far."""
        return self.server.stats()[0]

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        return self.server.stats()[1]

    def stop(self) -> None:
        """Stop listening and end open connections. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.server.shutdown()
        self.server.server_close()
        self.server.close_connections()
        self._thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_origin(
    host: str = "127.0.0.1",
    port: int = 0,
    name: str | None = None,
    *,
    idle_timeout: float = IDLE_TIMEOUT,
) -> OriginHandle:
    """Start an origin in background threads of this process.

    Args:
        host: address to bind.
        port: port to bind; 0 lets the kernel choose (see ``handle.port``).
        name: the origin's name; None means its port number.
        idle_timeout: seconds a connection may stall before it is closed.

    Returns:
        A handle with ``.port``, ``.name``, ``.requests``, ``.connections`` and ``.stop()``;
        also a context manager.

    Raises:
        OSError: the address cannot be bound.
    """
    return OriginHandle(OriginServer((host, port), name=name, idle_timeout=idle_timeout))


def cli_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The options every origin CLI has: ``--port``/``--name`` pairs, ``--host``,
    ``--idle-timeout`` (``eg.demo.origin_h2`` adds its own)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--port",
        type=int,
        action="append",
        required=True,
        help="port to listen on (repeatable; 0 picks a free port)",
    )
    parser.add_argument(
        "--name",
        action="append",
        default=[],
        help="name of the origin on the matching --port (repeatable; default: the port)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=IDLE_TIMEOUT,
        help="seconds a connection may stall before it is closed",
    )
    return parser


def serve_cli(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    start: Callable[[str, int, str | None], OriginHandle],
) -> int:
    """Start one origin per ``--port`` with ``start(host, port, name)``, print where each
    listens, and serve until SIGTERM or SIGINT; the exit status."""
    ports: list[int] = args.port
    names: list[str] = args.name
    if len(names) > len(ports):
        parser.error("more --name than --port")

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    # A shell starts background jobs with SIGINT ignored, so that Ctrl-C reaches only the
    # foreground; keep it that way (scripts/demo stops the origins last, with SIGTERM).
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, on_signal)
    host: str = args.host
    shown = f"[{host}]" if ":" in host else host
    handles: list[OriginHandle] = []
    try:
        for index, port in enumerate(ports):
            name = names[index] if index < len(names) else None
            try:
                handle = start(host, port, name)
            except (OSError, ValueError) as exc:
                print(f"origin: cannot listen on {shown}:{port}: {exc}", file=sys.stderr)
                return 1
            handles.append(handle)
            print(f"origin listening on {shown}:{handle.port}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        for handle in handles:
            handle.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Serve one origin per ``--port`` until SIGTERM or SIGINT; the exit status."""
    parser = cli_parser("python -m eg.demo.origin",
                        "A small HTTP/1.1 origin server for demos and tests.")
    args = parser.parse_args(argv)
    return serve_cli(parser, args, lambda host, port, name: start_origin(
        host, port, name, idle_timeout=args.idle_timeout))


if __name__ == "__main__":
    sys.exit(main())
