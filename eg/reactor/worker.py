"""One worker thread per core: its own loop, listeners, routes, pools and metric shard.

A worker builds all of its runtime tables from the frozen ``Config`` snapshot itself,
so nothing mutable or hot is shared with other workers (on free-threaded CPython even
read-only sharing contends on reference counts). It talks to the rest of the process
only through its ``Mailbox``.

The per-connection guard lives here: the only ``except Exception`` that handles
connection errors. It counts and logs the error and closes that one connection; the
worker keeps serving.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass, field

from eg.core.codec.h1._parse import H1Context
from eg.core.codec.h2._context import H2Context
from eg.core.codec.h3._context import H3Context, QuicCertificates
from eg.core.codec.h3.retry import RetryTokens
from eg.core.config import Config, TlsConfig
from eg.core.metrics import Shard
from eg.core.proxy.balance import ClusterState
from eg.core.proxy.exchange import ExchangeContext
from eg.core.proxy.route import RouteTable
from eg.log import AccessLog
from eg.reactor.listener import Listener
from eg.reactor.loop import EPOLLIN, Guarded, Loop
from eg.reactor.mailbox import Drain, Mailbox, QuicDatagram, Reload, Stop
from eg.reactor.pool import Pool
from eg.reactor.quic import QuicListener
from eg.reactor.steer import Steering
from eg.reactor.tls import ServerTls, dns_names, listener_alpn, server_tls

log = logging.getLogger("eg.worker")


@dataclass(slots=True)
class ListenerRuntime:
    """Per-worker state of one listener."""

    name: str
    protocol: str
    scheme: bytes
    ctx: ExchangeContext
    #: Alt-Svc value advertised on this listener's responses ("" for none).
    alt_svc: str = ""
    tls: ServerTls | None = None
    handshake_timeout: float = 0.0
    open: int = 0


@dataclass(slots=True)
class WorkerRuntime:
    """Everything one worker owns; built in the worker thread from a config snapshot."""

    index: int
    config: Config
    loop: Loop
    shard: Shard
    access_log: AccessLog
    h1: H1Context
    h2: H2Context
    h3: H3Context
    routes: RouteTable
    clusters: dict[str, ClusterState]
    pool: Pool = field(default_factory=Pool)
    connections: set[object] = field(default_factory=set)
    draining: bool = False

    def apply(self, config: Config) -> None:
        """Adopt a reloaded snapshot: routes, clusters, limits and timeouts."""
        self.config = config
        self.routes = RouteTable(config.routes)
        self.clusters = _clusters(config, self.index)
        self.h1 = _h1_context(config)
        self.h2 = _h2_context(config)
        self.h3 = _h3_context(config, self.h2)
        self.pool.set_clusters(config.clusters)


def _clusters(config: Config, index: int) -> dict[str, ClusterState]:
    return {c.name: ClusterState(c, offset=index) for c in config.clusters}


def _h1_context(config: Config) -> H1Context:
    return H1Context(max_head_size=config.limits.max_head_size,
                     max_headers=config.limits.max_headers)


def _h2_context(config: Config) -> H2Context:
    limits = config.limits
    h2 = config.http2
    return H2Context(
        max_concurrent_streams=h2.max_concurrent_streams,
        max_header_list_size=h2.max_header_list_size, max_headers=limits.max_headers,
        initial_window_size=h2.initial_window_size, buffer_high=limits.buffer_high,
        buffer_limit=limits.buffer_limit, zero_window_timeout=h2.zero_window_timeout,
        max_glitches=h2.max_glitches,
    )


def _h3_context(config: Config, fields: H2Context) -> H3Context:
    q = config.quic
    return H3Context(
        fields=fields, idle_timeout=q.idle_timeout, max_udp_payload=q.max_udp_payload,
        max_requests=q.max_requests_per_connection,
        max_field_section_size=q.max_field_section_size,
        qpack_max_table_capacity=q.qpack_max_table_capacity,
        qpack_blocked_streams=q.qpack_blocked_streams, max_stream_data=q.max_stream_data,
        max_data=q.max_data, hold_limit=q.stream_hold_limit,
    )


@dataclass(frozen=True, slots=True)
class QuicShared:
    """What the workers' QUIC listeners share, built by the main thread: the Retry key
    (any worker checks tokens another issued), the steering program of each listener
    (None: userspace hand-off) and the workers' mailboxes (for that hand-off)."""

    retry_key: bytes
    steering: dict[str, Steering | None]
    mailboxes: list[Mailbox]


def exchange_context(config: Config, scheme: bytes, alt_svc: str = "") -> ExchangeContext:
    proxy = config.proxy
    return ExchangeContext(limits=config.limits, proxy=proxy, via=proxy.via.encode(),
                           server_header=proxy.server_header.encode(), scheme=scheme,
                           alt_svc=alt_svc.encode())


class _MailboxHandler:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def on_events(self, mask: int) -> None:
        self.worker.handle_mail()

    def on_crash(self, exc: BaseException) -> None:
        """Mail handling never fails for one connection's sake."""


class Worker(threading.Thread):
    """A reactor thread. ``sockets`` maps listener name → this worker's bound socket."""

    def __init__(
        self,
        *,
        index: int,
        cpu: int | None,
        config: Config,
        shard: Shard,
        sockets: dict[str, socket.socket],
        quic: QuicShared | None = None,
    ) -> None:
        super().__init__(name=f"eg-worker-{index}", daemon=True)
        self.index = index
        self.cpu = cpu
        self.config = config
        self.shard = shard
        self.sockets = sockets
        self.quic = quic
        self.mailbox = quic.mailboxes[index] if quic is not None else Mailbox()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.aborted_on_stop = 0
        self._listeners: list[Listener | QuicListener] = []
        self._rt: WorkerRuntime | None = None
        self._stopping = False

    # -- thread body --------------------------------------------------------------------------

    def run(self) -> None:
        try:
            rt = self._build()
        except BaseException as exc:  # start-up failure is reported to the main thread
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        loop = rt.loop
        try:
            while loop.running:
                loop.run_once()
                if rt.draining and not rt.connections:
                    break
        finally:
            self._shutdown(rt)

    def _build(self) -> WorkerRuntime:
        if self.cpu is not None and self.config.runtime.pin:
            os.sched_setaffinity(0, {self.cpu})
        config = self.config
        loop = Loop(self._guard)
        obs = config.observability
        access = AccessLog(obs.log_format, enabled=obs.access_log)
        h2 = _h2_context(config)
        rt = WorkerRuntime(
            index=self.index, config=config, loop=loop, shard=self.shard, access_log=access,
            h1=_h1_context(config), h2=h2, h3=_h3_context(config, h2),
            routes=RouteTable(config.routes), clusters=_clusters(config, self.index),
        )
        rt.pool.rt = rt
        rt.pool.set_clusters(config.clusters)
        loop.after.append(access.flush)
        for lc in config.listeners:
            scheme = b"https" if lc.tls is not None else b"http"
            lrt = ListenerRuntime(name=lc.name, protocol=lc.protocol, scheme=scheme,
                                  alt_svc=lc.alt_svc,
                                  ctx=exchange_context(config, scheme, lc.alt_svc))
            if lc.protocol == "quic":
                self._listeners.append(self._quic_listener(rt, lrt, lc.tls))
                continue
            if lc.tls is not None:
                # This worker's own contexts (validated once by the main thread already).
                lrt.tls = server_tls(lc.tls, alpn=listener_alpn(lc.protocol))
                lrt.handshake_timeout = lc.tls.handshake_timeout
            self._listeners.append(Listener(rt, lrt, self.sockets[lc.name]))
        loop.register(self.mailbox.fd, EPOLLIN, _MailboxHandler(self))
        self._rt = rt
        return rt

    def _quic_listener(self, rt: WorkerRuntime, lrt: ListenerRuntime,
                       tls: TlsConfig | None) -> QuicListener:
        shared = self.quic
        assert shared is not None and tls is not None
        cert = tls.certificates[0]
        certificates = None
        if len(tls.certificates) > 1:
            certificates = QuicCertificates(
                [(c.cert, c.key, dns_names(c.cert)) for c in tls.certificates])
        return QuicListener(
            rt, lrt, self.sockets[lrt.name],
            configuration=rt.h3.server_configuration(cert.cert, cert.key),
            certificates=certificates,
            tokens=RetryTokens(bytes(bytearray(shared.retry_key)),
                               rt.config.quic.retry_token_lifetime),
            steering=shared.steering.get(lrt.name), workers=len(shared.mailboxes),
            handoff=self._handoff,
        )

    def _handoff(self, worker: int, listener: str, data: bytes, addr: tuple[str, int]) -> None:
        """Userspace steering: the datagram belongs to ``worker``'s connection."""
        shared = self.quic
        assert shared is not None
        shared.mailboxes[worker].post(QuicDatagram(listener, data, addr))

    def _guard(self, handler: Guarded, exc: BaseException) -> None:
        """The per-connection guard: count, log, close that connection only."""
        self.shard.unhandled_exception(type(handler).__name__)
        log.error("unhandled error, connection closed", exc_info=exc,
                  extra={"worker": self.index, "handler": type(handler).__name__})
        try:
            handler.on_crash(exc)
        except Exception:  # a second failure while closing: give up on this one
            log.exception("error while closing a failed connection")

    # -- control --------------------------------------------------------------------------------

    def handle_mail(self) -> None:
        rt = self._rt
        assert rt is not None
        for msg in self.mailbox.take():
            if isinstance(msg, Drain):
                self._drain(rt)
            elif isinstance(msg, Stop):
                rt.loop.running = False
            elif isinstance(msg, QuicDatagram):
                self._quic_datagram(msg)
            elif isinstance(msg, Reload):
                rt.apply(msg.config)
                for listener in self._listeners:
                    listener.lrt.ctx = exchange_context(msg.config, listener.lrt.scheme,
                                                        listener.lrt.alt_svc)

    def _quic_datagram(self, msg: QuicDatagram) -> None:
        for listener in self._listeners:
            if isinstance(listener, QuicListener) and listener.lrt.name == msg.listener:
                if not listener.closed:
                    conn = listener.datagram(msg.data, msg.addr, handed=True)
                    if conn is not None:
                        conn.pump()
                return

    def _drain(self, rt: WorkerRuntime) -> None:
        rt.draining = True
        for listener in self._listeners:
            listener.close()
        # A QUIC listener's socket stays open while its connections drain over it.
        self._listeners = [q for q in self._listeners
                           if isinstance(q, QuicListener) and not q.closed]
        rt.pool.close_all()
        for conn in list(rt.connections):
            conn.drain()  # type: ignore[attr-defined]

    def _shutdown(self, rt: WorkerRuntime) -> None:
        for listener in self._listeners:
            listener.close()
        aborted = 0
        for conn in list(rt.connections):
            if getattr(conn, "busy", False):
                aborted += 1
            conn.on_crash(RuntimeError("shutdown"))  # type: ignore[attr-defined]
        for listener in self._listeners:
            if isinstance(listener, QuicListener):
                listener.close()  # the second close: its connections are gone now
        self.aborted_on_stop = aborted
        rt.pool.close_all()
        rt.access_log.flush()
        rt.loop.close()
        # The mailbox stays open: the main thread may still post to a worker that is
        # exiting; it closes every mailbox after joining the workers.

    def post(self, msg: Drain | Stop | Reload) -> None:
        self.mailbox.post(msg)
