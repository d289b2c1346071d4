"""HTTP/3 upstream connections: one QUIC connection to an endpoint, many legs.

``H3UpstreamConnection`` is the HTTP/3 twin of ``h2.H2UpstreamConnection``: the pool
leases streams on it to legs of any downstream connection of the worker. Its UDP socket
is connected to the endpoint (so the kernel drops datagrams from anyone else) and
registered in the worker's loop; its codec's single timer (loss detection, ACK delay,
the QUIC idle timeout) is folded into the worker's timer heap.

Legs that arrive before the handshake has completed wait; then they open streams up
to the upstream's stream limit and the rest are retried elsewhere as refused (never
sent). A GOAWAY from the upstream retires the connection: streams it did not process
come back as refused and are retried, the others finish. A connection idle for the
cluster's ``pool.idle_timeout`` (or QUIC's own idle timeout) closes; the next request
opens a new one. Certificate verification failures end it with ``kind="tls_verify"``.
"""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING

from eg.core.codec.h3._context import H3_NO_ERROR
from eg.core.codec.h3.client import H3ClientCodec
from eg.core.errors import Closed, ConnectError, EgError, Retry, Timeout
from eg.core.message import Message, Side
from eg.core.proxy.balance import ClusterState, Endpoint
from eg.reactor.loop import EPOLLIN
from eg.reactor.multiplex import MultiplexedUpstream
from eg.reactor.quic import RECV_BATCH, RECV_SIZE

if TYPE_CHECKING:
    from eg.core.codec.h3._context import QuicConfiguration
    from eg.reactor.leg import Leg
    from eg.reactor.worker import WorkerRuntime


class H3UpstreamConnection(MultiplexedUpstream):
    """One HTTP/3 connection to an endpoint, shared by many legs (module docstring)."""

    def __init__(
        self,
        rt: WorkerRuntime,
        cluster: ClusterState,
        endpoint: Endpoint,
        address: tuple[int, tuple[str, int]],
        configuration: QuicConfiguration,
    ) -> None:
        self.rt = rt
        self.cluster = cluster
        self.endpoint = endpoint
        family, self.addr = address
        self.legs: dict[int, Leg] = {}
        self.waiting: list[Leg] = []
        self.connected = False
        self.retired = False
        self.closed = False
        self._congested: set[int] = set()
        self._error: EgError | None = None
        self._releasing = False
        self._transmit_due = False
        now = rt.loop.now
        self.created = now
        self._idle_since = now
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.sock.setblocking(False)
            self.sock.connect(self.addr)
        except OSError:
            self.sock.close()
            raise
        self.fd = self.sock.fileno()
        self.codec = H3ClientCodec(rt.h3, configuration, self.addr, now)
        self.timer = rt.loop.timer(self._on_timer, self)
        self._connect_deadline = now + rt.config.timeouts.connect
        rt.loop.register(self.fd, EPOLLIN, self)
        rt.shard.upstream_conn_opened(cluster.name)
        self.flush()

    # -- what MultiplexedUpstream needs ------------------------------------------------------

    @property
    def gone(self) -> bool:
        return self.closed

    def _stream_limit(self) -> H3ClientCodec:
        return self.codec

    def _forget(self) -> None:
        self.rt.pool.forget_h3(self)

    def _wants_close(self) -> bool:
        return self.codec.wants_close()

    # -- input ------------------------------------------------------------------------------

    def on_events(self, mask: int) -> None:
        codec = self.codec
        now = self.rt.loop.now
        msgs = []
        for _ in range(RECV_BATCH):
            try:
                data = self.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # ICMP port unreachable: nobody listens there
                if exc.errno == errno.ECONNREFUSED and not self.connected:
                    self._error = ConnectError(f"connect to {self.endpoint.key} failed: "
                                               "port unreachable")
                    self._teardown()
                    return
                continue
            msgs.extend(codec.feed(data, self.addr, now))
        self._handle(msgs)

    def _handle(self, msgs: list[Message]) -> None:
        codec = self.codec
        for kind in codec.take_refusals():
            self.rt.shard.protocol_error("upstream", kind)
        if not self.connected and codec.handshake_done and not codec.closed:
            self.cluster.report_success(self.endpoint)
            self._open_waiting()  # QUIC and TLS are up: the upstream's limit is known
        touched = self._deliver(msgs)
        if codec.goaway_received is not None and not self.retired:
            self.retire()
        self.flush()
        for leg in dict.fromkeys(touched):
            leg.down.pump(leg)
        if codec.closed:
            self._teardown()

    # -- output and backpressure ------------------------------------------------------------

    def flush(self) -> None:
        """Report send-buffer watermarks now; have the codec's datagrams sent at the end
        of this loop turn (once, however many legs wrote to it meanwhile)."""
        if self.closed:
            return
        self._take_watermarks()
        if not self._transmit_due:
            self._transmit_due = True
            self.rt.loop.call_soon(self._transmit)

    def _transmit(self) -> None:
        """Send the codec's datagrams, report watermarks, re-arm the timer."""
        self._transmit_due = False
        if self.closed:
            return
        codec = self.codec
        if (codec.has_released() or codec.has_backlog()) and not self._releasing:
            # Response bytes held while the downstream was congested: delivered after
            # the current handler (flush runs inside the downstream's own pump).
            self._releasing = True
            self.rt.loop.call_soon(self._release)
        sock = self.sock
        for data, _addr in codec.output(self.rt.loop.now):
            try:
                sock.send(data)
            except (BlockingIOError, InterruptedError):
                self.rt.shard.limit_hit("quic_send_dropped")
            except OSError:
                pass  # ECONNREFUSED from an earlier datagram: the next recv reports it
        self._take_watermarks()
        self._arm()

    def _take_watermarks(self) -> None:
        for sid, congested in self.codec.take_watermarks():
            if congested:
                self._congested.add(sid)
            else:
                self._congested.discard(sid)
            leg = self.legs.get(sid)
            if leg is not None:
                leg.exchange.upstream_congested(congested)
                self.rt.loop.call_soon(leg.down.pump)

    def _release(self) -> None:
        """Deliver held response messages one by one until their stream pauses again,
        then the datagrams left unprocessed meanwhile (``H3Codec``)."""
        self._releasing = False
        codec = self.codec
        while not self.closed:
            msg = codec.next_released() if codec.has_released() else None
            if msg is not None:
                self._handle([msg])
            elif codec.has_backlog():
                self._handle(codec.take_backlog(self.rt.loop.now))
            else:
                return

    def _arm(self) -> None:
        due = self.codec.deadline()
        deadline = float("inf") if due is None else due
        if not self.connected:
            deadline = min(deadline, self._connect_deadline)
        elif not self.legs and not self.waiting:
            deadline = min(deadline, self._idle_since + self.cluster.config.pool.idle_timeout)
        if deadline == float("inf"):
            self.timer.cancel()
        else:
            self.timer.arm(deadline)

    def _on_timer(self, now: float) -> None:
        if self.closed:
            return
        if not self.connected and now >= self._connect_deadline:
            self._error = Timeout(f"connect to {self.endpoint.key} timed out", phase="connect",
                                  side=Side.UPSTREAM, status_hint=504)
            self._teardown()
            return
        if self.connected and not self.legs and not self.waiting and \
                now - self._idle_since >= self.cluster.config.pool.idle_timeout:
            self.close()
            return
        due = self.codec.deadline()
        if due is not None and now >= due:
            self._handle(self.codec.on_timer(now))
            return
        self._arm()

    # -- end --------------------------------------------------------------------------------

    def close(self) -> None:
        """CONNECTION_CLOSE(H3_NO_ERROR) and forget it (nothing is in flight)."""
        if self.closed:
            return
        self.retired = True
        self.codec.close(H3_NO_ERROR)
        self._transmit()  # the CONNECTION_CLOSE, before the socket goes
        self._teardown()

    def abort(self) -> None:
        self.close()

    def on_crash(self, exc: BaseException) -> None:
        """After an unexpected exception: every stream on it fails (502 or reset)."""
        self.close()

    def _teardown(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.retired = True
        rt = self.rt
        self.timer.release()
        rt.loop.unregister(self.fd)
        self.sock.close()
        rt.shard.upstream_conn_closed(self.cluster.name)
        rt.pool.forget_h3(self)
        err = self._error or self._close_error()
        self.codec.release()
        self._fail_legs(err)

    def _close_error(self) -> EgError:
        codec = self.codec
        reason = codec.close_reason
        text = f"{reason[1]} (code {reason[0]:#x})" if reason else "closed"
        if codec.verify_failed():
            return ConnectError(f"QUIC to {self.endpoint.key}: certificate verification "
                                f"failed: {text}", kind="tls_verify", retry=Retry.NO)
        if not self.connected:
            return ConnectError(f"QUIC handshake with {self.endpoint.key} failed: {text}",
                                kind="tls", retry=Retry.NO)
        return Closed(f"upstream {self.endpoint.key} closed the QUIC connection: {text}",
                      side=Side.UPSTREAM, status_hint=502, retry=Retry.IF_REUSED,
                      kind="upstream_closed")
