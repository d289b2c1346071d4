"""Cross-thread hand-off: a SimpleQueue plus an eventfd the receiving loop polls.

Only frozen values travel through it (control messages, config snapshots, and QUIC
datagrams handed to the worker that owns their connection).
"""

from __future__ import annotations

import contextlib
import os
import queue
from dataclasses import dataclass

from eg.core.config import Config


@dataclass(frozen=True, slots=True)
class Drain:
    """Stop accepting; close connections as their current exchange ends."""


@dataclass(frozen=True, slots=True)
class Stop:
    """Abort what is left and leave the loop."""


@dataclass(frozen=True, slots=True)
class Reload:
    """Rebuild routes, clusters and timeouts from a new validated snapshot."""

    config: Config


@dataclass(frozen=True, slots=True)
class QuicDatagram:
    """A datagram for a QUIC connection another worker owns (userspace steering)."""

    listener: str
    data: bytes
    addr: tuple[str, int]


Control = Drain | Stop | Reload | QuicDatagram


class Mailbox:
    """Many writers, one reader (the worker that owns it)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Control] = queue.SimpleQueue()
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def post(self, msg: Control) -> None:
        self._queue.put(msg)
        os.eventfd_write(self.fd, 1)

    def take(self) -> list[Control]:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.fd)
        out: list[Control] = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        os.close(self.fd)
