"""① Accept: per-worker SO_REUSEPORT listening sockets.

The main thread binds every socket (one per listener per worker) before any worker
starts, so a bind error stops start-up cleanly and a port 0 in the config resolves to
one port shared by all workers; each worker then accepts only on its own sockets and
the kernel spreads new connections across them.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from eg.core.proxy.balance import split_address
from eg.reactor.h1 import H1DownstreamConnection
from eg.reactor.h2 import H2DownstreamConnection
from eg.reactor.loop import EPOLLIN

if TYPE_CHECKING:
    from eg.reactor.worker import ListenerRuntime, WorkerRuntime

#: Pending connections the kernel queues per socket.
BACKLOG = 4096
#: Connections accepted per readiness event before other work gets a turn.
ACCEPT_BATCH = 64


def bind_listeners(address: str, count: int) -> list[socket.socket]:
    """Bind ``count`` SO_REUSEPORT sockets to ``address`` (port 0 → one shared port).

    Raises:
        OSError: the address cannot be bound.
    """
    host, port = split_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


class Listener:
    """A worker's accept handler for one listening socket."""

    def __init__(self, rt: WorkerRuntime, lrt: ListenerRuntime, sock: socket.socket) -> None:
        self.rt = rt
        self.lrt = lrt
        self.sock = sock
        self.fd = sock.fileno()
        rt.loop.register(self.fd, EPOLLIN, self)

    def on_events(self, mask: int) -> None:
        rt = self.rt
        lrt = self.lrt
        limit = rt.config.limits.max_connections
        for _ in range(ACCEPT_BATCH):
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                rt.shard.limit_hit("accept_error")  # EMFILE and friends: try again later
                return
            if lrt.open >= limit:
                rt.shard.limit_hit("connections")
                conn.close()
                continue
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if lrt.tls is not None:
                conn = lrt.tls.context.wrap_socket(conn, server_side=True,
                                                   do_handshake_on_connect=False)
            peer = f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"
            if lrt.protocol == "h2c":
                H2DownstreamConnection(rt, lrt, conn, peer)
            else:
                H1DownstreamConnection(rt, lrt, conn, peer)

    def on_crash(self, exc: BaseException) -> None:
        """Accepting never crashes for one connection's sake; nothing to close."""

    def close(self) -> None:
        self.rt.loop.unregister(self.fd)
        self.sock.close()
