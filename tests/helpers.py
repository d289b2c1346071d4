"""Helpers for integration tests on loopback: origins in child processes, raw HTTP/1.1.

Nothing here depends on pytest, so benchmarks and scripts can use it too.

- :class:`OriginProcess` runs ``python -m eg.demo.origin`` in a child process, so a busy
  origin never competes with the test process for its CPU (and can be killed to play a
  failed backend). :func:`start_origins` starts several at once.
- :func:`raw_request` sends arbitrary bytes and returns whatever comes back;
  :class:`RawConnection` speaks HTTP/1.1 request by request on one connection, and
  :func:`read_response` / :func:`parse_response` decode responses exactly (Content-Length,
  chunked with trailers, or close-delimited).
- :func:`http_get` / :func:`http_request` are one-shot http.client requests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import io
import os
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

REPO = Path(__file__).resolve().parent.parent

# How long a child origin may take to print its "listening" lines (a cold free-threaded
# interpreter start is well under a second; this is slack for loaded CI machines).
ORIGIN_START_TIMEOUT = 30.0
# Longest status, header or chunk-size line read_response() accepts.
MAX_LINE = 1 << 20


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago (bind to port 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    """Wait until something accepts TCP connections on ``host:port``.

    Raises:
        TimeoutError: nothing accepted within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"nothing listening on {host}:{port}") from None
            time.sleep(0.02)


class OriginProcess:
    """``python -m eg.demo.origin`` in a child process, serving one or more ports.

    The constructor returns once every port listens. Use as a context manager, or call
    :meth:`stop`.

    Attributes:
        ports: the bound ports, in ``--port`` order (port 0 becomes the kernel's choice).
        names: the origin names, as in their ``x-origin`` header.
        proc: the child process.
    """

    def __init__(
        self,
        ports: Sequence[int] = (0,),
        names: Sequence[str] | None = None,
        *,
        host: str = "127.0.0.1",
        python: str = sys.executable,
        wait: bool = True,
    ) -> None:
        """Start the child.

        Args:
            ports: ports to serve; 0 picks a free one.
            names: origin names, paired with ``ports`` (default: the port numbers).
            host: address to bind.
            python: interpreter to run the origin with.
            wait: wait until it listens (else call :meth:`wait_ready`).
        """
        names = list(names or [])
        if len(names) > len(ports):
            raise ValueError("more names than ports")
        command = [python, "-m", "eg.demo.origin", "--host", host]
        for index, port in enumerate(ports):
            command += ["--port", str(port)]
            if index < len(names):
                command += ["--name", names[index]]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self.host = host
        self.ports: list[int] = []
        self.names = names
        self._expected = len(ports)
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, cwd=REPO, env=env)
        if wait:
            self.wait_ready()

    @property
    def port(self) -> int:
        """The first (often the only) port."""
        return self.ports[0]

    @property
    def name(self) -> str:
        """The first origin's name."""
        return self.names[0] if self.names else str(self.port)

    def wait_ready(self, timeout: float = ORIGIN_START_TIMEOUT) -> None:
        """Read the child's ``origin listening on HOST:PORT`` lines into :attr:`ports`.

        Raises:
            RuntimeError: the child exited or stayed silent for ``timeout`` seconds.
        """
        stdout = self.proc.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        pending = b""
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            while len(self.ports) < self._expected:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    self.stop()
                    raise RuntimeError(f"origin did not start within {timeout} s")
                data = os.read(stdout.fileno(), 4096)
                if not data:
                    code = self.proc.wait()
                    raise RuntimeError(f"origin exited with status {code} before listening")
                pending += data
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.startswith(b"origin listening on "):
                        self.ports.append(int(line.rsplit(b":", 1)[1]))
        self.names += [str(port) for port in self.ports[len(self.names) :]]

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the child (SIGKILL if it lingers) and reap it. Idempotent."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def kill(self) -> None:
        """SIGKILL the child at once: a backend that dies without a goodbye."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_origins(n: int, names: Sequence[str] | None = None) -> list[OriginProcess]:
    """Start ``n`` single-port origin processes in parallel; return once all listen.

    Each is a separate process, so one can be killed to play a failed backend.

    Args:
        n: how many.
        names: their names (default: their port numbers).
    """
    names = list(names or [])
    origins = [OriginProcess([0], names[i : i + 1], wait=False) for i in range(n)]
    try:
        for origin in origins:
            origin.wait_ready()
    except BaseException:
        for origin in origins:
            origin.stop()
        raise
    return origins


@contextlib.contextmanager
def running_origins(n: int, names: Sequence[str] | None = None) -> Iterator[list[OriginProcess]]:
    """Context manager around :func:`start_origins` that stops them all on exit."""
    origins = start_origins(n, names)
    try:
        yield origins
    finally:
        for origin in origins:
            origin.stop()


def raw_request(port: int, data: bytes, timeout: float = 5.0, host: str = "127.0.0.1") -> bytes:
    """Send ``data`` on a new connection; return what comes back until close or timeout.

    A reset by the peer also ends the read; what arrived before it is returned.
    """
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


@dataclasses.dataclass
class Reply:
    """A decoded HTTP response.

    Attributes:
        status: the status code.
        reason: the reason phrase.
        headers: (name, value) pairs as received, in order.
        body: the body with its framing removed.
        trailers: trailer fields of a chunked body, as received.
        interim: status codes of the 1xx responses that came first.
    """

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    trailers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    interim: list[int] = dataclasses.field(default_factory=list)

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), in order."""
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]

    def trailer(self, name: str) -> str | None:
        """The first value of trailer ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        return next((value for key, value in self.trailers if key.lower() == wanted), None)


class ShortRead(Exception):
    """The response ended (EOF or reset) before its framing said it would.

    Attributes:
        partial: the body bytes received before the end.
        reset: the connection was reset rather than closed.
    """

    def __init__(self, partial: bytes, *, reset: bool) -> None:
        super().__init__(f"response ended after {len(partial)} body bytes (reset={reset})")
        self.partial = partial
        self.reset = reset


class Stream(Protocol):
    """What read_response() reads from: ``io.BytesIO``, :class:`SocketReader`, ..."""

    def readline(self, size: int = -1, /) -> bytes: ...

    def read(self, size: int = -1, /) -> bytes: ...


class SocketReader:
    """A buffered reader over a socket that stays usable after a timeout.

    (A ``socket.makefile()`` object refuses every read once one has timed out.)
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def readline(self, size: int = -1, /) -> bytes:
        """Up to and including the next ``\\n`` (at most ``size`` bytes); shorter at EOF."""
        limit = size if size >= 0 else sys.maxsize
        searched = 0
        while (end := self.buffer.find(b"\n", searched)) < 0 and len(self.buffer) < limit:
            searched = len(self.buffer)
            data = self.sock.recv(65536)
            if not data:
                break
            self.buffer += data
        cut = min(limit, len(self.buffer) if end < 0 else end + 1)
        line = bytes(self.buffer[:cut])
        del self.buffer[:cut]
        return line

    def read(self, size: int = -1, /) -> bytes:
        """Between 1 and ``size`` bytes (everything to EOF if negative); b"" at EOF."""
        if size < 0:
            while data := self.sock.recv(65536):
                self.buffer += data
            size = len(self.buffer)
        if not self.buffer and size:
            return self.sock.recv(size)
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data


def _line(stream: Stream, partial: bytearray) -> bytes:
    line = stream.readline(MAX_LINE)
    if not line.endswith(b"\n"):
        raise ShortRead(bytes(partial), reset=False)
    return line.rstrip(b"\r\n")


def _fields(stream: Stream, partial: bytearray) -> list[tuple[str, str]]:
    fields: list[tuple[str, str]] = []
    while line := _line(stream, partial):
        name, _, value = line.partition(b":")
        fields.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
    return fields


def _read_exactly(stream: Stream, size: int, body: bytearray) -> None:
    while size:
        data = stream.read(min(size, 65536))
        if not data:
            raise ShortRead(bytes(body), reset=False)
        body += data
        size -= len(data)


def read_response(stream: Stream, method: str = "GET") -> Reply:
    """Read one response, honouring its framing exactly.

    1xx responses before the final one are collected into ``Reply.interim``.

    Args:
        stream: e.g. a :class:`SocketReader` or ``io.BytesIO(data)``.
        method: the request's method (a HEAD response has no body).

    Raises:
        ShortRead: the stream ended (or was reset) before the response did.
    """
    body = bytearray()
    interim: list[int] = []
    try:
        while True:
            status_line = _line(stream, body).decode("latin-1")
            _version, _, rest = status_line.partition(" ")
            status_text, _, reason = rest.partition(" ")
            reply = Reply(int(status_text), reason, _fields(stream, body), interim=interim)
            if not 100 <= reply.status < 200:
                break
            interim.append(reply.status)
        codings = [
            coding.strip().lower()
            for value in reply.header_values("transfer-encoding")
            for coding in value.split(",")
        ]
        length = reply.header("content-length")
        if method == "HEAD" or reply.status in (204, 304):
            pass
        elif codings and codings[-1] == "chunked":
            while size := int(_line(stream, body).split(b";")[0], 16):
                _read_exactly(stream, size, body)
                _line(stream, body)
            reply.trailers = _fields(stream, body)
        elif length is not None:
            _read_exactly(stream, int(length), body)
        else:
            while data := stream.read(65536):
                body += data
    except ConnectionResetError:
        raise ShortRead(bytes(body), reset=True) from None
    reply.body = bytes(body)
    return reply


def parse_response(data: bytes, method: str = "GET") -> Reply:
    """Decode one response from bytes (e.g. what :func:`raw_request` returned)."""
    return read_response(io.BytesIO(data), method)


class RawConnection:
    """One client connection for hand-written requests and exactly decoded responses."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.reader = SocketReader(self.sock)
        self.timeout = timeout

    def send(self, data: bytes) -> None:
        """Send raw bytes."""
        self.sock.sendall(data)

    def request(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
    ) -> Reply:
        """Send a request (Host added, Content-Length added for a body) and read the reply."""
        lines = [f"{method} {path} HTTP/1.1", "Host: origin"]
        lines += [f"{name}: {value}" for name, value in headers]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        return self.read_response(method)

    def read_response(self, method: str = "GET") -> Reply:
        """Read the next response on this connection."""
        self.sock.settimeout(self.timeout)
        return read_response(self.reader, method)

    def at_eof(self, timeout: float = 2.0) -> bool:
        """Whether the peer closed (EOF or reset) within ``timeout``, sending nothing more."""
        if self.reader.buffer:
            return False
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def http_request(
    port: int,
    method: str,
    path: str,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    *,
    host: str = "127.0.0.1",
    timeout: float = 10.0,
) -> Reply:
    """Make one request with http.client on a fresh connection, then close it."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        response = conn.getresponse()
        data = response.read()
        return Reply(
            status=response.status,
            reason=response.reason,
            headers=response.getheaders(),
            body=data,
        )
    finally:
        conn.close()


def http_get(
    port: int,
    path: str = "/",
    headers: Mapping[str, str] | None = None,
    *,
    host: str = "127.0.0.1",
    timeout: float = 10.0,
) -> Reply:
    """GET ``path`` with http.client on a fresh connection."""
    return http_request(port, "GET", path, headers, host=host, timeout=timeout)
