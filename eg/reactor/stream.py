"""Non-blocking TCP transport: recv, scatter-gather sendmsg, interest mask, watermarks.

The send buffer is bounded: above ``high`` the owner is told (``on_write_high``) so it
can pause the other side of the exchange, below ``high // 2`` it is told again
(``on_write_low``); past ``limit`` the connection is aborted rather than buffering
without bound. Closing can be graceful (flush, then close) or an abort (RST via
SO_LINGER 0), which a peer can never mistake for a clean end of a message.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
from collections import deque
from typing import Protocol

from eg.reactor.loop import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, EPOLLRDHUP, Loop

#: Bytes asked of recv() at once. 64 KiB, not more: recv() allocates this much and then
#: shrinks it, and with 256 KiB the allocator kept the slack (measured: 16 clients
#: downloading 1 MiB bodies peaked at 127 MB RSS with 256 KiB, 68 MB with 64 KiB, at the
#: same 600 MB/s).
RECV_SIZE = 64 * 1024
#: sendmsg() takes at most IOV_MAX (1024 on Linux) buffers per call.
IOV_MAX = 1024
_LINGER_ABORT = struct.pack("ii", 1, 0)
_RETRY = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


class StreamProtocol(Protocol):
    """What a transport reports to its owner."""

    def data_received(self, data: bytes) -> None: ...
    def eof_received(self) -> None: ...
    def connection_lost(self, exc: BaseException | None) -> None: ...
    def on_write_high(self) -> None: ...
    def on_write_low(self) -> None: ...
    def on_crash(self, exc: BaseException) -> None: ...


class _Gone:
    """The owner of a closed transport: late events are ignored."""

    def data_received(self, data: bytes) -> None:
        """Nothing reads any more."""

    def eof_received(self) -> None:
        """Nothing reads any more."""

    def connection_lost(self, exc: BaseException | None) -> None:
        """Already reported."""

    def on_write_high(self) -> None:
        """Nothing writes any more."""

    def on_write_low(self) -> None:
        """Nothing writes any more."""

    def on_crash(self, exc: BaseException) -> None:
        """Nothing left to close."""


_GONE = _Gone()


class Transport:
    """One connected, non-blocking stream socket registered with a worker's loop.

    Args:
        high: send-buffer high watermark (low is half of it).
        limit: send-buffer hard cap; exceeding it aborts the connection.
    """

    __slots__ = (
        "_closing",
        "_high",
        "_limit",
        "_linger",
        "_linger_left",
        "_mask",
        "_pending",
        "_reading",
        "_registered",
        "buffered",
        "closed",
        "connecting",
        "fd",
        "handshaking",
        "lingering",
        "loop",
        "over_high",
        "protocol",
        "sock",
    )

    def __init__(
        self,
        loop: Loop,
        sock: socket.socket,
        protocol: StreamProtocol,
        *,
        high: int,
        limit: int,
        connecting: bool = False,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.protocol = protocol
        self._high = high
        self._limit = limit
        self._pending: deque[memoryview] = deque()
        self.buffered = 0
        self.over_high = False
        self._reading = True
        self._closing = False
        self._linger = False
        self._linger_left = 0
        #: A TLS handshake is in progress (always False for plain TCP).
        self.handshaking = False
        #: Our side is shut (FIN sent) and what the peer still sends is read and dropped.
        self.lingering = False
        self.closed = False
        self.connecting = connecting
        self._mask = EPOLLOUT if connecting else EPOLLIN | EPOLLRDHUP
        self._registered = True
        loop.register(self.fd, self._mask, self)

    # -- events ---------------------------------------------------------------------------

    def on_events(self, mask: int) -> None:
        if self.connecting:
            self._finish_connect()
            return
        if mask & EPOLLOUT:
            self._flush()
        if mask & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR) and not self.closed:
            if not self._reading and not mask & (EPOLLHUP | EPOLLERR):
                return
            self._read()

    def on_crash(self, exc: BaseException) -> None:
        self.protocol.on_crash(exc)

    def _finish_connect(self) -> None:
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self.connecting = False
        if err:
            self._teardown(ConnectionRefusedError(err, errno.errorcode.get(err, str(err))))
            return
        self._update_mask()
        connected = getattr(self.protocol, "connection_made", None)
        if connected is not None:
            connected()
        if self._pending and not self.closed:
            self._flush()

    def _read(self) -> None:
        if self.lingering:
            self._discard()
            return
        try:
            data = self.sock.recv(RECV_SIZE)
        except OSError as exc:
            if exc.errno in _RETRY:
                return
            self._teardown(exc)
            return
        if data:
            self.protocol.data_received(data)
        else:
            self._reading = False
            self._update_mask()
            self.protocol.eof_received()

    # -- writing --------------------------------------------------------------------------

    def write(self, chunks: list[bytes | memoryview]) -> None:
        """Send now as much as the socket takes; buffer the rest (bounded)."""
        if self.closed or not chunks:
            return
        if self._pending or self.connecting or self.handshaking:
            for chunk in chunks:
                if len(chunk):
                    self._pending.append(memoryview(chunk))
                    self.buffered += len(chunk)
            self._after_buffering()
            return
        total = sum(map(len, chunks))
        if not total:
            return
        try:
            sent = self._send(chunks)
        except OSError as exc:
            self._teardown(exc)
            return
        if sent == total:
            return
        for chunk in chunks:
            n = len(chunk)
            if sent >= n:
                sent -= n
                continue
            view = memoryview(chunk)
            if sent:
                view = view[sent:]
                sent = 0
            self._pending.append(view)
            self.buffered += len(view)
        self._after_buffering()

    def _send(self, chunks: list[bytes | memoryview] | list[memoryview]) -> int:
        """Write what the socket takes now: bytes sent, 0 if it would block.

        Raises:
            OSError: the connection failed.
        """
        try:
            return self.sock.sendmsg(chunks if len(chunks) <= IOV_MAX else chunks[:IOV_MAX])
        except OSError as exc:
            if exc.errno in _RETRY:
                return 0
            raise

    def _after_buffering(self) -> None:
        if self.buffered > self._limit:
            self.abort()
            return
        if not self.over_high and self.buffered > self._high:
            self.over_high = True
            self.protocol.on_write_high()
        self._update_mask()

    def _flush(self) -> None:
        pending = self._pending
        while pending:
            batch = (
                list(pending) if len(pending) <= IOV_MAX
                else [pending[i] for i in range(IOV_MAX)]
            )
            try:
                sent = self._send(batch)
            except OSError as exc:
                self._teardown(exc)
                return
            if not sent:
                break
            self.buffered -= sent
            while sent:
                head = pending[0]
                if sent >= len(head):
                    sent -= len(head)
                    pending.popleft()
                else:
                    pending[0] = head[sent:]
                    sent = 0
            if self.buffered:
                break  # the socket took less than offered: wait for EPOLLOUT
        if self.over_high and self.buffered <= self._high // 2:
            self.over_high = False
            self.protocol.on_write_low()
        if not pending and self._closing:
            self._finish_close()
            return
        self._update_mask()

    # -- interest and closing ---------------------------------------------------------------

    def set_reading(self, reading: bool) -> None:
        if reading != self._reading and not self.closed:
            self._reading = reading
            self._update_mask()

    def _update_mask(self) -> None:
        if self.closed or self.connecting:
            return
        mask = EPOLLIN | EPOLLRDHUP if self._reading else 0
        if self._pending:
            mask |= EPOLLOUT
        if mask != self._mask:
            self._mask = mask
            self.loop.modify(self.fd, mask)

    def close(self, *, linger: int = 0) -> None:
        """Close once everything buffered has been written.

        Args:
            linger: when the peer may still be sending (a request body we will not
                read), shut our side and drop up to this many more bytes before
                closing, so its kernel does not answer our last response with a RST
                that destroys it before the client reads it (nginx's lingering close).
                The owner bounds the time; 0 closes at once.
        """
        if self.closed or self._closing or self.lingering:
            return  # already closing: the first close decides how
        self._linger = linger > 0
        self._linger_left = linger
        if self._pending and not self.connecting:
            self._closing = True
            self._reading = False
            self._update_mask()
            return
        self._finish_close()

    def _finish_close(self) -> None:
        if not self._linger or self.lingering:
            self._teardown(None)
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._teardown(None)
            return
        self.lingering = True
        self._closing = False
        self._reading = True
        self._update_mask()

    def _discard(self) -> None:
        """Lingering: drop what the peer still sends; close at its EOF or past the budget."""
        try:
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._teardown(None)
            return
        self._linger_left -= len(data)
        if not data:
            self._teardown(None)
        elif self._linger_left < 0:
            self.abort()

    def abort(self) -> None:
        """Close at once with a TCP RST: the peer sees an error, never a clean end."""
        if self.closed:
            return
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
        self._pending.clear()
        self.buffered = 0
        self._teardown(None)

    def _teardown(self, exc: BaseException | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.unregister(self.fd)
        with contextlib.suppress(OSError):
            self.sock.close()
        protocol = self.protocol
        # Owner and transport point at each other: break the cycle, so a closed
        # connection's buffers go at once instead of at the next GC pass.
        self.protocol = _GONE
        protocol.connection_lost(exc)
