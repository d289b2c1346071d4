"""Upload sink for the benchmarks: reads each request body to the end, then answers 200.

    python bench/sink.py PORT

Why not nginx: nginx answers ``return 200`` before it has read the request body and then
discards the rest in the background. A proxy in front then sees the response while it is
still streaming the upload, so the benchmark would measure early-response handling instead
of upload throughput. This sink answers only once the whole body has arrived, keeps
connections alive, and costs almost nothing per byte: body bytes are dropped inside the
kernel with ``recv(MSG_TRUNC)`` (tcp(7)), never copied to user space. Heads are parsed
with ``bytes.find``. One thread per connection; on free-threaded CPython the threads run in
parallel, elsewhere they spend their time in ``recv`` with the GIL released.

Handles Content-Length and chunked bodies, ``Expect: 100-continue`` and
``Connection: close``. Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import mmap
import socket
import sys
import threading

# Largest request head accepted (same as eg's default max_head_size).
MAX_HEAD = 64 * 1024
# Bytes dropped per recv(MSG_TRUNC) call; the buffer is never written to.
DISCARD_CHUNK = 4 * 1024 * 1024
OK = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\n\r\nok\n"
OK_CLOSE = (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\n"
            b"connection: close\r\n\r\nok\n")
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Conn:
    """One client connection: a small read-ahead buffer plus in-kernel discarding."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        # An anonymous mapping: recv(MSG_TRUNC) never writes to it, so it costs no RSS.
        self.scratch = mmap.mmap(-1, DISCARD_CHUNK)
        self.truncate = True

    def fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def line(self) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            if len(self.buf) > MAX_HEAD or not self.fill():
                raise ConnectionError("line")
        out, self.buf = self.buf[:end], self.buf[end + 2:]
        return out

    def discard(self, n: int) -> None:
        """Drop exactly n bytes: first from the read-ahead, then inside the kernel."""
        take = min(n, len(self.buf))
        self.buf = self.buf[take:]
        n -= take
        while n > 0:
            want = min(n, DISCARD_CHUNK)
            flags = socket.MSG_TRUNC if self.truncate else 0
            got = self.sock.recv_into(self.scratch, want, flags)
            if got == 0:
                raise ConnectionError("eof in body")
            if got > want:  # a kernel that ignores MSG_TRUNC on TCP reports the full size
                self.truncate = False
                got = want
            n -= got

    def serve(self) -> None:
        while True:
            while (end := self.buf.find(b"\r\n\r\n")) < 0:
                if len(self.buf) > MAX_HEAD or not self.fill():
                    return
            head, self.buf = self.buf[:end].lower(), self.buf[end + 4:]
            length, chunked, close = 0, False, head.startswith(b"http/1.0")
            for field in head.split(b"\r\n")[1:]:
                name, _, value = field.partition(b":")
                value = value.strip()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding":
                    chunked = value.endswith(b"chunked")
                elif name == b"connection":
                    close = close or value == b"close"
                elif name == b"expect" and value == b"100-continue":
                    self.sock.sendall(CONTINUE)
            if chunked:
                while (size := int(self.line().split(b";")[0], 16)) > 0:
                    self.discard(size + 2)
                while self.line():  # trailers, then the empty line
                    pass
            else:
                self.discard(length)
            self.sock.sendall(OK_CLOSE if close else OK)
            if close:
                return


def _handle(sock: socket.socket) -> None:
    conn = _Conn(sock)
    with sock, conn.scratch, contextlib.suppress(OSError, ValueError):
        conn.serve()


def main() -> int:
    port = int(sys.argv[1])
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", port))
    lsock.listen(4096)
    while True:
        sock, _ = lsock.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_handle, args=(sock,), daemon=True).start()


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        raise SystemExit(0) from None
