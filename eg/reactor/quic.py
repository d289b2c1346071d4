"""② QUIC listeners: a UDP socket per worker, datagrams demultiplexed by Connection ID.

Each worker owns one SO_REUSEPORT UDP socket per QUIC listener (all bound by the main
thread, in worker order, so the kernel's reuseport group index is the worker index).
A datagram reaches the worker that owns its connection by its Destination Connection
ID: eg's Connection IDs encode the worker (``eg.core.quic_steer``) and a reuseport BPF
program steers by them (``steer.py``); with ``steering = "userspace"`` (or when no
program could be attached) a worker that receives a datagram for another worker's
connection posts it to that worker's mailbox. A client whose address or port changes
(NAT rebinding, migration) keeps its Connection ID, so it keeps its worker.

Per datagram (``QuicListener.datagram``):

    known DCID ────────────────────────────────▶ that connection's codec
    another worker's (userspace steering) ─────▶ that worker's mailbox
    long header, unsupported version ──────────▶ Version Negotiation
    Initial ≥ 1200 bytes, Retry wanted, no token ▶ Retry (no state kept)
    Initial, valid token or none needed ───────▶ new connection (below the cap)
    anything else ─────────────────────────────▶ dropped, counted

Per connection (``H3DownstreamConnection``): after every input (datagrams of one
receive batch, a timer, a leg's message) the codec's datagrams are sent and its one
timer is re-armed at ``deadline()`` (aioquic's transmit pattern). Every request stream
is a leg (``leg.py``), exactly as on HTTP/2.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

from eg.core.codec.h3._context import H3_INTERNAL_ERROR, H3_NO_ERROR
from eg.core.codec.h3.retry import (
    MIN_INITIAL_SIZE,
    SUPPORTED_VERSIONS,
    RetryTokens,
    parse_long_header,
    retry_packet,
    version_negotiation,
)
from eg.core.codec.h3.server import H3ServerCodec
from eg.core.message import Message, RequestHead
from eg.core.proxy.balance import split_address
from eg.core.quic_steer import dcid_of, make_cid, worker_of
from eg.reactor.leg import Leg, record_exchange, start_exchange
from eg.reactor.loop import EPOLLIN

if TYPE_CHECKING:
    from eg.core.codec.h3._context import QuicCertificates, QuicConfiguration
    from eg.reactor.steer import Steering
    from eg.reactor.worker import ListenerRuntime, WorkerRuntime

log = logging.getLogger("eg.quic")

#: Datagrams read per readiness event before other work gets a turn.
RECV_BATCH = 64
#: Largest datagram read (the UDP maximum; QUIC packets are far smaller).
RECV_SIZE = 65535
#: Socket buffers: a burst of 1350-byte datagrams must not overflow the kernel's default
#: (about 200 KiB) while the worker is busy; capped by net.core.[rw]mem_max.
SOCKET_BUFFER = 4 * 1024 * 1024
_INF = float("inf")


def bind_datagram(address: str, count: int) -> list[socket.socket]:
    """Bind ``count`` SO_REUSEPORT UDP sockets to ``address`` (port 0 → one shared port).

    Raises:
        OSError: the address cannot be bound.
    """
    host, port = split_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
            sock.bind((host, port))
            port = sock.getsockname()[1]
            sock.setblocking(False)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


class QuicListener:
    """A worker's UDP socket for one QUIC listener (see the module docstring).

    Args:
        configuration: the listener's server QuicConfiguration (this worker's copy).
        certificates: its certificates by server name, when it has more than one.
        tokens: Retry token issuer/checker (the key is the process's).
        steering: the attached steering program, or None for userspace hand-off.
        handoff: posts a datagram to another worker (userspace steering).
    """

    def __init__(
        self,
        rt: WorkerRuntime,
        lrt: ListenerRuntime,
        sock: socket.socket,
        *,
        configuration: QuicConfiguration,
        certificates: QuicCertificates | None,
        tokens: RetryTokens,
        steering: Steering | None,
        workers: int,
        handoff: Any,
    ) -> None:
        self.rt = rt
        self.lrt = lrt
        self.sock = sock
        self.fd = sock.fileno()
        self.configuration = configuration
        self.certificates = certificates
        self.tokens = tokens
        self.steering = steering
        self.workers = workers
        self.handoff = handoff
        #: Every Connection ID of every connection of this listener on this worker.
        self.conns: dict[bytes, H3DownstreamConnection] = {}
        #: Connections not yet through their handshake (Retry's load signal).
        self.handshaking = 0
        self.draining = False
        self.closed = False
        rt.loop.register(self.fd, EPOLLIN, self)

    # -- receiving ------------------------------------------------------------------------------

    def on_events(self, mask: int) -> None:
        """Read a batch; datagrams of one connection are fed together, then each
        connection touched is pumped once (its transmit happens once per loop turn)."""
        batches: dict[H3DownstreamConnection, list[tuple[bytes, tuple[str, int]]]] = {}
        conns = self.conns
        recv = self.sock.recvfrom
        for _ in range(RECV_BATCH):
            try:
                data, addr = recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # e.g. an ICMP error queued on the socket
                continue
            dcid = dcid_of(data)
            conn = conns.get(dcid) if dcid is not None else None
            if conn is not None:
                batch = batches.get(conn)
                if batch is None:
                    batches[conn] = [(data, addr)]
                else:
                    batch.append((data, addr))
                continue
            conn = self.datagram(data, addr, handed=False)
            if conn is not None and conn not in batches:
                batches[conn] = []
        guarded = self.rt.loop.guarded
        for conn, batch in batches.items():
            if batch:
                guarded(conn, conn.feed_batch, batch)
            guarded(conn, conn.pump)

    def datagram(self, data: bytes, addr: tuple[str, int], *, handed: bool,
                 ) -> H3DownstreamConnection | None:
        """Route one datagram; returns the connection to pump, if any."""
        shard = self.rt.shard
        dcid = dcid_of(data)
        if dcid is None:
            shard.protocol_error("downstream", "quic_unparsable")
            return None
        conn = self.conns.get(dcid)
        if conn is not None:
            self.rt.loop.guarded(conn, conn.feed, data, addr)
            return conn
        if self.workers > 1 and not handed and self._hand_off(data, addr):
            return None
        if not data[0] & 0x80:
            shard.protocol_error("downstream", "quic_unknown_cid")
            return None
        return self._initial(data, addr)

    def _hand_off(self, data: bytes, addr: tuple[str, int]) -> bool:
        """A datagram for no connection of ours: pass it to the worker that may own it.

        Without a steering program, CIDs eg made name their worker (``worker_of``). The
        CIDs qh3 issues itself (NEW_CONNECTION_ID, used by a migrating client) do not,
        and only the eBPF program's map steers them; so unless that program is attached,
        a short-header datagram for an unknown CID goes to every other worker, which
        each look it up and drop it if it is not theirs either.
        """
        me = self.rt.index
        shard = self.rt.shard
        steering = self.steering
        if data[0] & 0x80:
            if steering is not None:
                return False  # long headers carry eg's CIDs: the kernel steered them
            owner = worker_of(data, self.workers)
            if owner is None or owner == me:
                return False
            shard.limit_hit("quic_handoff")
            self.handoff(owner, self.lrt.name, data, addr)
            return True
        if steering is not None and steering.mode == "ebpf":
            return False
        for worker in range(self.workers):
            if worker != me:
                shard.limit_hit("quic_handoff")
                self.handoff(worker, self.lrt.name, data, addr)
        return True

    def _initial(self, data: bytes, addr: tuple[str, int]) -> H3DownstreamConnection | None:
        shard = self.rt.shard
        info = parse_long_header(data)
        if info is None:
            shard.protocol_error("downstream", "quic_unparsable")
            return None
        if info.version not in SUPPORTED_VERSIONS:
            if len(data) >= MIN_INITIAL_SIZE:  # RFC 9000 §6.1: only for full-size Initials
                self.send(version_negotiation(info), addr)
            return None
        if not info.is_initial or len(data) < MIN_INITIAL_SIZE or self.draining:
            return None
        quic = self.rt.config.quic
        now = self.rt.loop.now
        ip = ipaddress.ip_address(addr[0]).packed
        odcid = info.dcid
        retry_cid: bytes | None = None
        if info.token:
            checked = self.tokens.check(info.token, ip, info.dcid, now)
            if checked is None:
                # Not a valid Retry token of ours (expired, other address, forged, or a
                # NEW_TOKEN from another server): treated as no token (RFC 9000 §8.1.3).
                shard.limit_hit("quic_bad_token")
            else:
                odcid, retry_cid = checked, info.dcid
        if retry_cid is None and (quic.retry == "always" or (
                quic.retry == "auto" and self.handshaking >= quic.retry_threshold)):
            cid = make_cid(self.rt.index, self.workers, os.urandom(8))
            token = self.tokens.issue(ip, info.dcid, cid, now)
            shard.limit_hit("quic_retry")
            self.send(retry_packet(info, cid, token), addr)
            return None
        if self.lrt.open >= quic.max_connections:
            shard.limit_hit("quic_connections")
            return None
        host_cid = make_cid(self.rt.index, self.workers, os.urandom(8))
        codec = H3ServerCodec(self.rt.h3, self.configuration, scheme=self.lrt.scheme,
                              odcid=odcid, host_cid=host_cid, retry_cid=retry_cid,
                              certificates=self.certificates)
        conn = H3DownstreamConnection(self.rt, self.lrt, self, codec, addr)
        # The client's own DCID still names this connection until it learns ours
        # (retransmitted Initials, coalesced 0-RTT).
        self._add_cid(info.dcid, conn)
        self._add_cid(host_cid, conn)
        conn.cids.extend((info.dcid, host_cid))
        self.rt.loop.guarded(conn, conn.feed, data, addr)
        return conn

    # -- sending ----------------------------------------------------------------------------------

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self.sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self.rt.shard.limit_hit("quic_send_dropped")  # QUIC recovers lost datagrams
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                raise

    # -- connection IDs -----------------------------------------------------------------------

    def _add_cid(self, cid: bytes, conn: H3DownstreamConnection) -> None:
        self.conns[cid] = conn
        if self.steering is not None:
            self.steering.register(cid, self.rt.index)

    def update_cids(self, conn: H3DownstreamConnection, issued: list[bytes],
                    retired: list[bytes]) -> None:
        for cid in issued:
            self._add_cid(cid, conn)
            conn.cids.append(cid)
        for cid in retired:
            self._drop_cid(cid, conn)

    def _drop_cid(self, cid: bytes, conn: H3DownstreamConnection) -> None:
        if self.conns.get(cid) is conn:
            del self.conns[cid]
            if self.steering is not None:
                self.steering.unregister(cid)

    def forget(self, conn: H3DownstreamConnection) -> None:
        """``conn`` ended: drop its Connection IDs; close a draining socket when empty."""
        for cid in conn.cids:
            self._drop_cid(cid, conn)
        conn.cids.clear()
        if self.draining and not self.conns:
            self.close()

    # -- lifecycle --------------------------------------------------------------------------------

    def on_crash(self, exc: BaseException) -> None:
        """A failure in the demultiplexer is one datagram's: nothing to close."""

    def close(self) -> None:
        """Stop taking connections; the socket stays open for the ones still draining
        (their datagrams arrive on it) and closes once the last has ended."""
        if self.closed:
            return
        if self.conns and not self.draining:
            self.draining = True
            return
        self.closed = True
        self.rt.loop.unregister(self.fd)
        self.sock.close()


class H3DownstreamConnection:
    """One client QUIC connection speaking HTTP/3 (see the module docstring)."""

    multiplexed = True

    def __init__(
        self,
        rt: WorkerRuntime,
        lrt: ListenerRuntime,
        listener: QuicListener,
        codec: H3ServerCodec,
        addr: tuple[str, int],
    ) -> None:
        self.rt = rt
        self.lrt = lrt
        self.listener = listener
        self.codec = codec
        host, port = addr[0], addr[1]
        self.peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.client = host.encode()
        self.legs: dict[int, Leg] = {}
        self._congested: set[int] = set()
        self.cids: list[bytes] = []
        self.closed = False
        #: A transmit is scheduled for the end of this loop turn.
        self._transmit_due = False
        self._handshaking = True
        listener.handshaking += 1
        self.timer = rt.loop.timer(self._on_timer, self)
        rt.connections.add(self)
        lrt.open += 1
        rt.shard.conn_opened(lrt.name)

    @property
    def busy(self) -> bool:
        return bool(self.legs)

    # -- input ----------------------------------------------------------------------------------

    def feed(self, data: bytes, addr: tuple[str, int]) -> None:
        """One datagram; the listener pumps once per receive batch."""
        if not self.closed:
            self._dispatch(self.codec.feed(data, addr, self.rt.loop.now))

    def feed_batch(self, batch: list[tuple[bytes, tuple[str, int]]]) -> None:
        """Datagrams of one receive batch, in order, a run per source address."""
        now = self.rt.loop.now
        codec = self.codec
        start = 0
        while start < len(batch) and not self.closed:
            addr = batch[start][1]
            end = start + 1
            while end < len(batch) and batch[end][1] == addr:
                end += 1
            self._dispatch(codec.feed_batch([d for d, _ in batch[start:end]], addr, now))
            start = end

    def _dispatch(self, msgs: list[Message]) -> None:
        self._count_refusals()
        if not msgs:
            return
        legs = self.legs
        touched: list[Leg] = []
        for msg in msgs:
            if isinstance(msg, RequestHead):
                leg = start_exchange(self, msg, self.codec, self.client, None)
                legs[msg.stream_id] = leg
            else:
                found = legs.get(msg.stream_id)
                if found is None:
                    continue
                leg = found
                leg.request(msg)
            touched.append(leg)
        for leg in dict.fromkeys(touched):
            self._settle(leg)

    def _count_refusals(self) -> None:
        refusals = self.codec.take_refusals()
        if refusals:
            shard = self.rt.shard
            for kind in refusals:
                if kind in ("header_count", "h3_stream_buffer"):
                    shard.limit_hit(kind)
                else:
                    shard.protocol_error("downstream", kind)

    # -- the pump -------------------------------------------------------------------------------

    def pump(self, leg: Leg | None = None) -> None:
        """Settle ``leg`` (if given); the codec's datagrams go out once per loop turn."""
        if self.closed:
            return
        if leg is not None:
            self._settle(leg)
        self._take_watermarks()
        if not self._transmit_due:
            self._transmit_due = True
            self.rt.loop.call_soon(self._transmit)

    def _transmit(self) -> None:
        """Pass on what was held, send the codec's datagrams, re-arm its timer."""
        self._transmit_due = False
        if self.closed:
            return
        self._unhold()
        codec = self.codec
        if self._handshaking and codec.handshake_done:
            self._handshaking = False
            self.listener.handshaking -= 1
        if not codec.closed and codec.wants_close(self.rt.loop.now):
            codec.close(H3_NO_ERROR)
        send = self.listener.send
        for data, addr in codec.output(self.rt.loop.now):
            send(data, addr)
        issued, retired = codec.take_cids()
        if issued or retired:
            self.listener.update_cids(self, issued, retired)
        self._take_watermarks()
        if codec.closed:
            self._finish()
            return
        due = codec.deadline()
        if due is None:
            self.timer.cancel()
        else:
            self.timer.arm(due)

    def _take_watermarks(self) -> None:
        """Response bytes queued for the client crossed a watermark: pause or resume
        the upstream side of that exchange."""
        for sid, congested in self.codec.take_watermarks():
            if congested:
                self._congested.add(sid)
            else:
                self._congested.discard(sid)
            found = self.legs.get(sid)
            if found is not None:
                found.exchange.downstream_congested(congested)
                up = found.upstream
                if up is not None:
                    up.flush()

    def _unhold(self) -> None:
        """Pass on what the codec held while upstreams were congested, then the
        datagrams it left unprocessed meanwhile (``H3Codec``: inbound flow control)."""
        codec = self.codec
        while True:
            msg = codec.next_released() if codec.has_released() else None
            if msg is not None:
                self._dispatch([msg])
            elif codec.has_backlog():
                self._dispatch(codec.take_backlog(self.rt.loop.now))
            else:
                return

    def _settle(self, leg: Leg) -> None:
        ex = leg.exchange
        if ex.finished:
            if self.legs.get(ex.sid) is leg:
                del self.legs[ex.sid]
                self._record(leg)
            return
        up = leg.upstream
        if up is not None:
            up.flush()

    def _record(self, leg: Leg) -> None:
        leg.exchange.release_pauses()
        record_exchange(self, leg, self.peer, "h3")

    def _on_timer(self, now: float) -> None:
        if self.closed:
            return
        self._dispatch(self.codec.on_timer(now))
        self.pump()

    # -- end ------------------------------------------------------------------------------------

    def _finish(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.timer.release()
        if self._handshaking:
            self._handshaking = False
            self.listener.handshaking -= 1
        for leg in list(self.legs.values()):
            leg.abort()
            self._record(leg)
        self.legs.clear()
        self.codec.release()
        rt = self.rt
        rt.connections.discard(self)
        self.lrt.open -= 1
        rt.shard.conn_closed(self.lrt.name)
        self.listener.forget(self)

    def drain(self) -> None:
        """Graceful shutdown: GOAWAY now; close once the requests in flight are done."""
        self.codec.goaway()
        self.pump()

    def on_crash(self, exc: BaseException) -> None:
        """After an unexpected exception (or at shutdown): CONNECTION_CLOSE, forget it."""
        if self.closed:
            return
        self.codec.close(H3_INTERNAL_ERROR, "internal error")
        for data, addr in self.codec.output(self.rt.loop.now):
            self.listener.send(data, addr)
        self._finish()
