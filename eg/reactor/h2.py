"""HTTP/2 connection drivers: many legs per connection, both ways.

Downstream (``H2DownstreamConnection``): every request stream the client opens becomes
an exchange on its own leg, routed independently; a slow stream never holds up the
others. It serves ``h2c`` listeners (prior knowledge) and TLS connections whose ALPN
chose h2 (handed over by the HTTP/1.1 driver right after the handshake).

Upstream (``H2UpstreamConnection``): one connection to an endpoint carries streams for
legs of any downstream connection of the worker (``pool.py`` leases them). Before it
is connected, legs wait on it; once the upstream's SETTINGS arrive the codec holds it
to the upstream's SETTINGS_MAX_CONCURRENT_STREAMS. A GOAWAY retires it: streams the
upstream never processed come back REFUSED_STREAM and are retried elsewhere (their
request had no body), the others finish.

Backpressure: each side's codec reports per-stream send-buffer watermarks (bytes
waiting for the peer's window) and the transport its socket watermarks; either one
pauses the other side of that exchange (``Exchange.*_congested``), which for an HTTP/2
peer means withholding its stream's WINDOW_UPDATEs.

Timers: one per connection, for the codec's own deadline (zero-window stall), the idle
timeout (no stream for ``keepalive``, or ``header`` before the first request; measured
from when the last stream ended, so trickled frames do not keep it open) and, upstream,
the connect timeout. Per-stream timeouts live on the legs (``leg.py``).
"""

from __future__ import annotations

import socket
import ssl
from typing import TYPE_CHECKING

from eg.core.codec.h2.client import H2ClientCodec
from eg.core.codec.h2.server import H2ServerCodec
from eg.core.errors import ConnectError, EgError, LimitExceeded, Retry, Timeout
from eg.core.message import RequestHead, Side
from eg.core.proxy.balance import ClusterState, Endpoint
from eg.reactor.h1 import connection_error
from eg.reactor.leg import Leg, record_exchange, start_exchange
from eg.reactor.multiplex import MultiplexedUpstream
from eg.reactor.stream import Transport
from eg.reactor.tls import TlsTransport, upstream_transport

if TYPE_CHECKING:
    from eg.reactor.worker import ListenerRuntime, WorkerRuntime

_INF = float("inf")


class H2DownstreamConnection:
    """One client connection speaking HTTP/2 (see the module docstring).

    Args:
        transport: a socket (h2c listener) or the TLS transport handed over after ALPN.
        counted: the connection was already counted as open (a handover).
    """

    multiplexed = True

    def __init__(
        self,
        rt: WorkerRuntime,
        lrt: ListenerRuntime,
        transport: Transport | socket.socket,
        peer: str,
        *,
        counted: bool = False,
    ) -> None:
        self.rt = rt
        self.lrt = lrt
        self.peer = peer
        self.client = peer.rpartition(":")[0].strip("[]").encode()
        self.codec = H2ServerCodec(rt.h2, scheme=lrt.scheme)
        self.legs: dict[int, Leg] = {}
        #: Streams whose response bytes wait for the client's window past the watermark.
        self._congested: set[int] = set()
        self.closed = False
        now = rt.loop.now
        self._idle_since = now
        self.timer = rt.loop.timer(self._on_timer, self)
        self.sni: str | None = None
        if isinstance(transport, Transport):
            self.transport = transport
            transport.protocol = self
            if isinstance(transport, TlsTransport):
                self.sni = transport.server_name
        else:
            limits = rt.config.limits
            self.transport = Transport(rt.loop, transport, self, high=limits.buffer_high,
                                       limit=limits.buffer_limit)
        rt.connections.add(self)
        if not counted:
            lrt.open += 1
            rt.shard.conn_opened(lrt.name)
        if rt.draining:
            self.codec.goaway()
        self.pump()

    @property
    def busy(self) -> bool:
        """Exchanges are in progress (counted when a shutdown aborts them)."""
        return bool(self.legs)

    # -- transport events -----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        now = self.rt.loop.now
        codec = self.codec
        try:
            msgs = codec.feed(data, now)
        except EgError as err:
            self._count_refusals()
            self._connection_error(err)
            return
        self._count_refusals()
        legs = self.legs
        touched: list[Leg] = []
        for msg in msgs:
            if isinstance(msg, RequestHead):
                leg = start_exchange(self, msg, self.codec, self.client, self.sni)
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
        self.pump()

    def _count_refusals(self) -> None:
        """Streams the codec refused or answered itself: one counter each."""
        refusals = self.codec.take_refusals()
        if refusals:
            shard = self.rt.shard
            for kind in refusals:
                if kind == "header_count":
                    shard.limit_hit(kind)
                else:
                    shard.protocol_error("downstream", kind)

    def eof_received(self) -> None:
        for msg in self.codec.feed_eof(self.rt.loop.now):
            leg = self.legs.get(msg.stream_id)
            if leg is not None:
                leg.request(msg)
                self._settle(leg)
        self.pump()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.timer.release()
        self._abandon_legs()
        self.codec.release()
        rt = self.rt
        rt.connections.discard(self)
        self.lrt.open -= 1
        rt.shard.conn_closed(self.lrt.name)

    def on_write_high(self) -> None:
        self.rt.shard.paused("downstream_send")
        self._sync_congestion()

    def on_write_low(self) -> None:
        self._sync_congestion()

    def on_crash(self, exc: BaseException) -> None:
        """After an unexpected exception: abandon every stream, drop the connection."""
        self.transport.abort()

    # -- the pump ---------------------------------------------------------------------------

    def pump(self, leg: Leg | None = None) -> None:
        """Settle ``leg`` (if given), then write output and sync interest and timer."""
        if self.closed:
            return
        if leg is not None:
            self._settle(leg)
        codec = self.codec
        for sid, congested in codec.take_watermarks():
            if congested:
                self._congested.add(sid)
            else:
                self._congested.discard(sid)
            found = self.legs.get(sid)
            if found is not None:
                self._congest(found)
        out = codec.output()
        if out:
            self.transport.write(out)
        if self.transport.closed:
            return
        if codec.wants_close():
            self._abandon_legs()
            self.transport.close()
            return
        self.transport.set_reading(codec.wants_read())
        self._arm()

    def _settle(self, leg: Leg) -> None:
        """Finish ``leg`` if its exchange ended, else push its request bytes upstream."""
        ex = leg.exchange
        if ex.finished:
            if self.legs.get(ex.sid) is leg:
                del self.legs[ex.sid]
                self._record(leg)
                if not self.legs:
                    self._idle_since = self.rt.loop.now
            return
        up = leg.upstream
        if up is not None:
            up.flush()

    def _abandon_legs(self) -> None:
        """The connection is ending: cancel every exchange still open upstream."""
        for leg in list(self.legs.values()):
            leg.abort()
            self._record(leg)
        self.legs.clear()

    def _record(self, leg: Leg) -> None:
        leg.exchange.release_pauses()
        record_exchange(self, leg, self.peer, "h2")

    def _congest(self, leg: Leg) -> None:
        congested = self.transport.over_high or leg.exchange.sid in self._congested
        leg.exchange.downstream_congested(congested)
        up = leg.upstream
        if up is not None:
            up.flush()

    def _sync_congestion(self) -> None:
        for leg in list(self.legs.values()):
            self._congest(leg)

    def _connection_error(self, err: EgError) -> None:
        """The client broke HTTP/2 or a connection budget: GOAWAY is queued; close."""
        shard = self.rt.shard
        if isinstance(err, LimitExceeded):
            shard.limit_hit(err.kind)
        else:
            shard.protocol_error("downstream", err.kind)
        self._abandon_legs()
        out = self.codec.output()
        if out:
            self.transport.write(out)
        self.transport.close()

    # -- timers -------------------------------------------------------------------------------

    def _arm(self) -> None:
        due = self.codec.deadline()
        deadline = _INF if due is None else due
        if not self.legs:
            t = self.rt.config.timeouts
            idle = t.keepalive if self.codec.requests else t.header
            deadline = min(deadline, self._idle_since + idle)
        if deadline == _INF:
            self.timer.cancel()
        else:
            self.timer.arm(deadline)

    def _on_timer(self, now: float) -> None:
        if self.closed:
            return
        if self.transport.lingering or self.transport.closed:
            return
        codec = self.codec
        due = codec.deadline()
        if due is not None and now >= due:
            try:
                codec.on_timer(now)
            except EgError as err:
                self._connection_error(err)
                return
        if not self.legs:
            t = self.rt.config.timeouts
            idle = t.keepalive if codec.requests else t.header
            if now - self._idle_since >= idle:
                if not codec.requests:
                    self.rt.shard.limit_hit("header_timeout")
                codec.goaway()
        self.pump()

    def drain(self) -> None:
        """Graceful shutdown: GOAWAY now; close once the streams in flight are done."""
        self.codec.goaway()
        self.pump()


class H2UpstreamConnection(MultiplexedUpstream):
    """One HTTP/2 connection to an endpoint, shared by many legs (module docstring)."""

    def __init__(
        self,
        rt: WorkerRuntime,
        cluster: ClusterState,
        endpoint: Endpoint,
        sock: socket.socket,
        *,
        tls: ssl.SSLContext | None,
        server_name: str,
    ) -> None:
        self.rt = rt
        self.cluster = cluster
        self.endpoint = endpoint
        self.codec = H2ClientCodec(rt.h2)
        self.legs: dict[int, Leg] = {}
        self.waiting: list[Leg] = []
        self.connected = False
        self.retired = False
        self._congested: set[int] = set()
        self._error: EgError | None = None
        now = rt.loop.now
        self.created = now
        self._idle_since = now
        self.timer = rt.loop.timer(self._on_timer, self)
        limits = rt.config.limits
        self._tls = tls is not None
        self.transport = upstream_transport(
            rt.loop, sock, self, high=limits.buffer_high, limit=limits.buffer_limit, tls=tls,
            server_name=server_name)
        rt.shard.upstream_conn_opened(cluster.name)
        self.timer.arm(now + rt.config.timeouts.connect)

    # -- what MultiplexedUpstream needs ------------------------------------------------------

    @property
    def gone(self) -> bool:
        return self.transport.closed

    def _stream_limit(self) -> H2ClientCodec:
        return self.codec

    def _forget(self) -> None:
        self.rt.pool.forget_h2(self)

    def _wants_close(self) -> bool:
        return self.codec.wants_close()

    # -- transport events -------------------------------------------------------------------

    def connection_made(self) -> None:
        transport = self.transport
        if self._tls and isinstance(transport, TlsTransport) and transport.alpn != "h2":
            self._error = ConnectError(
                f"TLS to {self.endpoint.key}: ALPN did not select h2 "
                f"(got {transport.alpn!r})", kind="alpn", retry=Retry.NO)
            transport.abort()
            return
        self.cluster.report_success(self.endpoint)
        self.flush()  # the connection preface; legs wait for the upstream's SETTINGS

    def data_received(self, data: bytes) -> None:
        codec = self.codec
        try:
            msgs = codec.feed(data, self.rt.loop.now)
        except EgError as err:
            self._count_refusals()
            self.rt.shard.protocol_error("upstream", err.kind)
            self._error = err
            out = codec.output()
            if out:
                self.transport.write(out)
            self.transport.close()
            return
        self._count_refusals()
        if not self.connected and codec.settings_received:
            self._open_waiting()  # the upstream's stream limit is known now
        touched = self._deliver(msgs)
        if codec.goaway_received is not None:
            self.retire()
        self._take_watermarks()
        self.flush()
        for leg in dict.fromkeys(touched):  # once per leg, however many frames it got
            leg.down.pump(leg)
        if not self.transport.closed and not self.legs and codec.wants_close():
            self.close()
            return
        self._arm()

    def _count_refusals(self) -> None:
        for kind in self.codec.take_refusals():
            self.rt.shard.protocol_error("upstream", kind)

    def eof_received(self) -> None:
        self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.timer.release()
        rt = self.rt
        rt.shard.upstream_conn_closed(self.cluster.name)
        rt.pool.forget_h2(self)
        self.retired = True
        err = self._error or connection_error(self.endpoint, exc, False)
        self.codec.release()
        self._fail_legs(err)

    def on_write_high(self) -> None:
        self.rt.shard.paused("upstream_send")
        self.rt.loop.call_soon(self._sync_congestion)

    def on_write_low(self) -> None:
        self.rt.loop.call_soon(self._sync_congestion)

    def on_crash(self, exc: BaseException) -> None:
        """After an unexpected exception: every stream on it fails (502 or reset)."""
        self.transport.abort()

    # -- output and backpressure ----------------------------------------------------------

    def flush(self) -> None:
        """Write what the codec queued (after our own or a leg's sends)."""
        transport = self.transport
        if transport.closed:
            return
        out = self.codec.output()
        if out:
            transport.write(out)
        self._take_watermarks()
        transport.set_reading(self.codec.wants_read())

    def _take_watermarks(self) -> None:
        for sid, congested in self.codec.take_watermarks():
            if congested:
                self._congested.add(sid)
            else:
                self._congested.discard(sid)
            leg = self.legs.get(sid)
            if leg is not None:
                leg.exchange.upstream_congested(congested or self.transport.over_high)
                self.rt.loop.call_soon(leg.down.pump)

    def _sync_congestion(self) -> None:
        over = self.transport.over_high
        for sid, leg in list(self.legs.items()):
            leg.exchange.upstream_congested(over or sid in self._congested)
            leg.down.pump(leg)

    # -- timers -------------------------------------------------------------------------------

    def _arm(self) -> None:
        if not self.connected:
            return  # the connect deadline stays armed until the upstream's SETTINGS
        due = self.codec.deadline()
        deadline = _INF if due is None else due
        if not self.legs:
            deadline = min(deadline, self._idle_since + self.cluster.config.pool.idle_timeout)
        if deadline == _INF:
            self.timer.cancel()
        else:
            self.timer.arm(deadline)

    def _on_timer(self, now: float) -> None:
        transport = self.transport
        if transport.closed:
            return
        if not self.connected:  # no TCP, TLS or SETTINGS in time
            self._error = Timeout(f"connect to {self.endpoint.key} timed out", phase="connect",
                                  side=Side.UPSTREAM, status_hint=504)
            transport.abort()
            return
        codec = self.codec
        due = codec.deadline()
        if due is not None and now >= due:
            try:
                codec.on_timer(now)
            except EgError as err:
                self.rt.shard.protocol_error("upstream", err.kind)
                self._error = err
                self.flush()
                transport.close()
                return
        if not self.legs and now - self._idle_since >= self.cluster.config.pool.idle_timeout:
            self.close()
            return
        self.flush()
        self._arm()

    def close(self) -> None:
        """Close after a GOAWAY (nothing is in flight, or we give up on it)."""
        self.retired = True
        self.codec.goaway()
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self.transport.abort()
