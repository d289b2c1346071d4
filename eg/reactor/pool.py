"""Per-worker upstream connections, keyed by endpoint.

``lease`` gives a leg somewhere to send its request, by cluster protocol:

* HTTP/1.1 (h1, h1s): an idle pooled connection, else a new one. An idle connection is
  reused only if its codec says it is in sync (previous response fully read,
  keep-alive), it is younger than ``max_age`` and the upstream has not closed it (idle
  connections stay registered for reading: an EOF removes them). The most recently used
  idle connection is taken first (it is the least likely to have been closed by the
  upstream's own keep-alive timeout).
* HTTP/2 (h2, h2c): a stream on a live connection to the endpoint that can open one
  (below both sides' SETTINGS_MAX_CONCURRENT_STREAMS, no GOAWAY, younger than
  ``max_age``), else a new connection. Streams from any downstream connection of the
  worker share these connections; one still connecting takes legs up to its limit.
* HTTP/3 (h3): the same, over QUIC connections (``h3.H3UpstreamConnection``), whose
  stream limit is the upstream's MAX_STREAMS.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import replace
from typing import TYPE_CHECKING

from eg.core.proxy.balance import ClusterState, Endpoint
from eg.reactor.h1 import H1UpstreamConnection
from eg.reactor.h2 import H2UpstreamConnection
from eg.reactor.h3 import H3UpstreamConnection
from eg.reactor.tls import ALPN_H1, ALPN_H2, client_tls

if TYPE_CHECKING:
    import ssl

    from eg.core.codec.h3._context import QuicConfiguration
    from eg.core.config import ClusterConfig, UpstreamTlsConfig
    from eg.reactor.leg import Leg, Upstream
    from eg.reactor.worker import WorkerRuntime

def pool_key(cluster: str, endpoint: str) -> str:
    """Connections are pooled per cluster and endpoint: two clusters may reach the same
    address with different TLS settings (CA, server name, verification), and a
    connection verified for one must never serve the other."""
    return f"{cluster}|{endpoint}"


class Pool:
    """Upstream connections of one worker (see the module docstring)."""

    def __init__(self) -> None:
        #: Idle HTTP/1.1 connections per ``pool_key``, oldest first: a dict as an ordered
        #: set, so ``take`` pops the newest (LIFO: surplus ones age out by idle_timeout)
        #: and ``forget`` is O(1) with a thousand idle.
        self._idle: dict[str, dict[H1UpstreamConnection, None]] = {}
        self._h2: dict[str, list[H2UpstreamConnection]] = {}
        self._h3: dict[str, list[H3UpstreamConnection]] = {}
        #: QUIC client configurations of this worker, by cluster name.
        self._quic: dict[str, QuicConfiguration] = {}
        self._addresses: dict[str, tuple[int, tuple[str, int]]] = {}
        #: Upstream TLS contexts of this worker, by cluster name.
        self._tls: dict[str, ssl.SSLContext] = {}
        self.rt: WorkerRuntime | None = None
        #: (protocol, TLS settings) by cluster name, as the pooled connections use them.
        self._settings: dict[str, tuple[str, UpstreamTlsConfig | None]] = {}

    def set_clusters(self, clusters: tuple[ClusterConfig, ...]) -> None:
        """Build this worker's upstream TLS contexts (validated by the main thread).

        On a reload, pooled connections of a cluster whose protocol or TLS settings
        changed (or that is gone) are closed, or retired once their streams end: they
        were opened, and verified, under the old settings.
        """
        settings = {c.name: (c.protocol, c.tls) for c in clusters}
        for name, old in self._settings.items():
            if settings.get(name) != old:
                self._drop_cluster(name)
        self._settings = settings
        self._tls = {
            c.name: client_tls(c.tls, alpn=ALPN_H2 if c.protocol == "h2" else ALPN_H1)
            for c in clusters if c.tls is not None and c.protocol != "h3"
        }
        self._quic = {}
        rt = self.rt
        assert rt is not None
        for c in clusters:
            if c.protocol == "h3":
                tls = c.tls
                self._quic[c.name] = rt.h3.client_configuration(
                    server_name=tls.server_name if tls else "",
                    verify=tls.verify if tls else True, ca_file=tls.ca_file if tls else "")

    def lease(
        self, leg: Leg, cluster: ClusterState, endpoint: Endpoint, *, fresh: bool
    ) -> tuple[Upstream, bool]:
        """Somewhere for ``leg``'s request: (upstream, ready now).

        When not ready, the upstream calls ``leg.upstream_ready`` once connected.
        ``fresh`` skips pooled HTTP/1.1 connections (a retry after a stale one).

        Raises:
            OSError: a new connection could not even be started.
        """
        rt = self.rt
        assert rt is not None
        cfg = cluster.config
        now = rt.loop.now
        tls = self._tls.get(cfg.name)
        server_name = ""
        if tls is not None:
            assert cfg.tls is not None
            server_name = cfg.tls.server_name or endpoint.host
        if cfg.protocol == "h3":
            key = pool_key(cfg.name, endpoint.key)
            for h3 in self._h3.get(key, ()):
                if h3.can_take(now):
                    rt.shard.upstream_reused(cluster.name)
                    return h3, h3.add(leg)
            quic = self._quic[cfg.name]
            if not quic.server_name:
                # One configuration per cluster; the SNI/verified name per endpoint.
                quic = replace(quic, server_name=endpoint.host)
            h3conn = H3UpstreamConnection(rt, cluster, endpoint, self._resolve(endpoint), quic)
            self._h3.setdefault(key, []).append(h3conn)
            return h3conn, h3conn.add(leg)
        if cfg.protocol in ("h2", "h2c"):
            key = pool_key(cfg.name, endpoint.key)
            for conn in self._h2.get(key, ()):
                if conn.can_take(now):
                    rt.shard.upstream_reused(cluster.name)
                    return conn, conn.add(leg)
            sock = self.connect(endpoint)
            h2 = H2UpstreamConnection(rt, cluster, endpoint, sock, tls=tls,
                                      server_name=server_name)
            self._h2.setdefault(key, []).append(h2)
            return h2, h2.add(leg)
        if not fresh:
            up = self.take(pool_key(cfg.name, endpoint.key), now, cfg.pool.max_age)
            if up is not None:
                rt.shard.upstream_reused(cluster.name)
                up.adopt(leg)
                return up, True
        sock = self.connect(endpoint)
        return H1UpstreamConnection(rt, cluster, endpoint, sock, owner=leg, tls=tls,
                                    server_name=server_name), False

    def forget_h2(self, conn: H2UpstreamConnection) -> None:
        conns = self._h2.get(pool_key(conn.cluster.name, conn.endpoint.key))
        if conns and conn in conns:
            conns.remove(conn)

    def forget_h3(self, conn: H3UpstreamConnection) -> None:
        conns = self._h3.get(pool_key(conn.cluster.name, conn.endpoint.key))
        if conns and conn in conns:
            conns.remove(conn)

    def take(self, key: str, now: float, max_age: float) -> H1UpstreamConnection | None:
        """An idle, reusable connection for ``key`` (``pool_key``), or None."""
        idle = self._idle.get(key)
        while idle:
            conn = idle.popitem()[0]
            if conn.transport.closed or now - conn.created > max_age:
                conn.close()
                continue
            return conn
        return None

    def put(self, conn: H1UpstreamConnection, max_idle: int) -> bool:
        """Keep ``conn`` for reuse; False when the per-endpoint idle limit is reached."""
        idle = self._idle.setdefault(pool_key(conn.cluster.name, conn.endpoint.key), {})
        if len(idle) >= max_idle:
            return False
        idle[conn] = None
        return True

    def forget(self, conn: H1UpstreamConnection) -> None:
        idle = self._idle.get(pool_key(conn.cluster.name, conn.endpoint.key))
        if idle:
            idle.pop(conn, None)

    def idle_count(self) -> int:
        return sum(len(v) for v in self._idle.values())

    def _drop_cluster(self, name: str) -> None:
        prefix = pool_key(name, "")
        for key in [k for k in self._idle if k.startswith(prefix)]:
            for conn in self._idle.pop(key):
                conn.close()
        for key in [k for k in self._h2 if k.startswith(prefix)]:
            for h2 in list(self._h2[key]):
                h2.retire()
        for key in [k for k in self._h3 if k.startswith(prefix)]:
            for h3 in list(self._h3[key]):
                h3.retire()

    def close_all(self) -> None:
        """Close idle connections now; HTTP/2 ones after their streams (GOAWAY)."""
        for idle in list(self._idle.values()):
            for conn in list(idle):
                conn.close()
        self._idle.clear()
        for conns in list(self._h2.values()):
            for h2 in list(conns):
                h2.retire()
        for h3s in list(self._h3.values()):
            for h3 in list(h3s):
                h3.retire()

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
