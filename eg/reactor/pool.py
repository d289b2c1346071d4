"""Per-worker upstream connections, keyed by endpoint.

An idle connection is reused only if its codec says it is in sync (previous response
fully read, keep-alive), it is younger than ``max_age`` and the upstream has not closed
it (idle connections stay registered for reading: an EOF removes them). The most
recently used idle connection is taken first (it is the least likely to have been
closed by the upstream's own keep-alive timeout).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import TYPE_CHECKING

from eg.core.proxy.balance import Endpoint

if TYPE_CHECKING:
    from eg.reactor.proxy import UpstreamConnection


class Pool:
    """Idle upstream connections of one worker."""

    def __init__(self) -> None:
        self._idle: dict[str, list[UpstreamConnection]] = {}
        self._addresses: dict[str, tuple[int, tuple[str, int]]] = {}

    def take(self, endpoint: Endpoint, now: float, max_age: float) -> UpstreamConnection | None:
        """An idle, reusable connection to ``endpoint``, or None."""
        idle = self._idle.get(endpoint.key)
        while idle:
            conn = idle.pop()
            if conn.transport.closed or now - conn.created > max_age:
                conn.close()
                continue
            return conn
        return None

    def put(self, conn: UpstreamConnection, max_idle: int) -> bool:
        """Keep ``conn`` for reuse; False when the per-endpoint idle limit is reached."""
        idle = self._idle.setdefault(conn.endpoint.key, [])
        if len(idle) >= max_idle:
            return False
        idle.append(conn)
        return True

    def forget(self, conn: UpstreamConnection) -> None:
        idle = self._idle.get(conn.endpoint.key)
        if idle and conn in idle:
            idle.remove(conn)

    def idle_count(self) -> int:
        return sum(len(v) for v in self._idle.values())

    def close_all(self) -> None:
        for idle in list(self._idle.values()):
            for conn in list(idle):
                conn.close()
        self._idle.clear()

    def connect(self, endpoint: Endpoint) -> socket.socket:
        """Start a non-blocking connect; the socket becomes writable when it completes.

        Raises:
            OSError: the connect failed at once (e.g. no route, bad address).
        """
        family, address = self._resolve(endpoint)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex(address)
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, errno.errorcode.get(err, str(err)))
        except OSError:
            sock.close()
            raise
        return sock

    def _resolve(self, endpoint: Endpoint) -> tuple[int, tuple[str, int]]:
        cached = self._addresses.get(endpoint.key)
        if cached is not None:
            return cached
        try:
            ip = ipaddress.ip_address(endpoint.host)
            result = (socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                      (endpoint.host, endpoint.port))
        except ValueError:
            # A hostname: resolved once per worker (blocking, but only the first time).
            info = socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
            fam, _, _, _, sockaddr = info[0]
            result = (fam, (str(sockaddr[0]), int(sockaddr[1])))
        self._addresses[endpoint.key] = result
        return result
