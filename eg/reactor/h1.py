"""HTTP/1.1 connection drivers: wire transports, codecs and legs together on one worker.

No protocol logic lives here: codecs parse and frame, the exchange decides, the leg
(``leg.py``) finds the upstream. A driver moves bytes and messages between them, keeps
one lazy timer per connection for the phase-dependent timeouts, and reports to metrics
and the access log. A TLS connection whose ALPN settled on h2 is handed over to the
HTTP/2 driver (``h2.py``) as soon as its handshake completes.

Downstream timeouts by codec phase: ``idle`` keep-alive wait (close quietly), ``head``
header read (408, slowloris), ``body`` silence between body bytes (408 or abort, slow
POST). Upstream: connect (504) and silence while a response is awaited or streamed
(504 or abort).
"""

from __future__ import annotations

import socket
import ssl
from typing import TYPE_CHECKING

from eg.core.codec.h1.client import H1ClientCodec
from eg.core.codec.h1.server import H1ServerCodec
from eg.core.errors import Broken, ConnectError, EgError, Retry, Timeout
from eg.core.message import Message, RequestHead, Side
from eg.core.proxy.balance import ClusterState, Endpoint
from eg.reactor.leg import Leg, record_exchange, start_exchange
from eg.reactor.stream import Transport
from eg.reactor.tls import TlsTransport, upstream_transport

if TYPE_CHECKING:
    from eg.reactor.worker import ListenerRuntime, WorkerRuntime

_DOWN = Side.DOWNSTREAM
_UP = Side.UPSTREAM


class H1DownstreamConnection:
    """One accepted client connection speaking HTTP/1.x (one exchange at a time)."""

    multiplexed = False

    def __init__(
        self, rt: WorkerRuntime, lrt: ListenerRuntime, sock: socket.socket, peer: str
    ) -> None:
        self.rt = rt
        self.lrt = lrt
        self.peer = peer
        self.client = peer.rpartition(":")[0].strip("[]").encode()
        limits = rt.config.limits
        self.codec = H1ServerCodec(rt.h1, scheme=lrt.scheme,
                                   max_requests=limits.max_requests_per_connection)
        if rt.draining:
            self.codec.draining = True
        self.leg: Leg | None = None
        now = rt.loop.now
        self._since = now  # start of the current phase (accept, head, last body byte)
        self._head_started = now
        self.closed = False
        self.timer = rt.loop.timer(self._on_timer, self)
        transport = Transport if lrt.tls is None else TlsTransport
        self.transport = transport(rt.loop, sock, self, high=limits.buffer_high,
                                   limit=limits.buffer_limit)
        rt.connections.add(self)
        lrt.open += 1
        rt.shard.conn_opened(lrt.name)
        self._arm()

    @property
    def busy(self) -> bool:
        """An exchange is in progress (counted when a shutdown aborts it)."""
        return self.leg is not None

    # -- transport events -----------------------------------------------------------------

    def connection_made(self) -> None:
        """TLS handshake done: an h2 ALPN hands the connection to the HTTP/2 driver."""
        transport = self.transport
        if isinstance(transport, TlsTransport) and transport.alpn == "h2":
            from eg.reactor.h2 import H2DownstreamConnection  # noqa: PLC0415 - import cycle

            self.closed = True
            self.timer.release()
            self.rt.connections.discard(self)
            H2DownstreamConnection(self.rt, self.lrt, transport, self.peer, counted=True)
            return
        self._since = self.rt.loop.now
        self._arm()

    def data_received(self, data: bytes) -> None:
        rt = self.rt
        now = rt.loop.now
        codec = self.codec
        if codec.phase == "idle":
            self._head_started = now
        self._since = now
        try:
            msgs = codec.feed(data, now)
        except EgError as err:
            self._codec_error(err)
            return
        self._dispatch(msgs)
        self.pump()

    def eof_received(self) -> None:
        msgs = self.codec.feed_eof(self.rt.loop.now)
        self._dispatch(msgs)
        if self.leg is None:
            self.close()
            return
        self.pump()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.timer.release()
        if exc is not None and self.transport.handshaking:
            self.rt.shard.protocol_error("downstream", "tls_handshake")
        leg = self.leg
        if leg is not None:
            if not leg.exchange.finished:
                leg.abort()
            self._finish_exchange()
        self.rt.connections.discard(self)
        self.lrt.open -= 1
        self.rt.shard.conn_closed(self.lrt.name)

    def on_write_high(self) -> None:
        self.rt.shard.paused("downstream_send")
        leg = self.leg
        if leg is not None:
            leg.exchange.downstream_congested(True)
            self._sync_upstream_reading()

    def on_write_low(self) -> None:
        leg = self.leg
        if leg is not None:
            leg.exchange.downstream_congested(False)
            self._sync_upstream_reading()

    def on_crash(self, exc: BaseException) -> None:
        """After an unexpected exception: abort this connection and its upstream."""
        leg = self.leg
        if leg is not None and leg.upstream is not None:
            up = leg.upstream
            leg.upstream = None
            up.abort()
        self.transport.abort()

    # -- messages -------------------------------------------------------------------------

    def _dispatch(self, msgs: list[Message]) -> None:
        for msg in msgs:
            if isinstance(msg, RequestHead):
                sni = self.transport.server_name if isinstance(self.transport, TlsTransport) \
                    else None
                self.leg = start_exchange(self, msg, self.codec, self.client, sni)
                self._since = self.rt.loop.now
            elif self.leg is not None:
                self.leg.request(msg)

    # -- the pump: move bytes, finish exchanges, keep timers and interest in sync ----------

    def pump(self, leg: Leg | None = None) -> None:
        """Write output both ways, finish the exchange, keep interest and timer in sync."""
        codec = self.codec
        while True:
            out = codec.output()
            if out:
                self.transport.write(out)
            leg = self.leg
            if leg is None:
                break
            up = leg.upstream
            if up is not None:
                up.flush()
            if leg.exchange.finished:
                self._finish_exchange()
                if codec.has_buffered_input() and not self.transport.closed:
                    try:
                        msgs = codec.feed(b"", self.rt.loop.now)
                    except EgError as err:
                        self._codec_error(err)
                        return
                    self._dispatch(msgs)
                    continue
            break
        if self.closed:
            return
        if codec.wants_close() and self.leg is None:
            if codec.aborted:
                self.transport.abort()
            else:
                self._close_after_response()
            return
        if codec.aborted:
            self.transport.abort()
            return
        self.transport.set_reading(codec.wants_read())
        self._arm()

    def _close_after_response(self) -> None:
        """Close once the response is out; linger if the client may still be sending."""
        if self.codec.request_unfinished:
            self.transport.close(linger=LINGER_BYTES)
            self.timer.arm(self.rt.loop.now + LINGER_SECONDS)
        else:
            self.transport.close()

    def _sync_upstream_reading(self) -> None:
        leg = self.leg
        if leg is not None and leg.upstream is not None:
            leg.upstream.flush()

    def _finish_exchange(self) -> None:
        leg = self.leg
        if leg is None:
            return
        self.leg = None
        leg.exchange.release_pauses()
        record_exchange(self, leg, self.peer, "h1")
        self._since = self.rt.loop.now

    def _codec_error(self, err: EgError) -> None:
        """The client broke HTTP/1.1 or a limit: reply if possible, then close."""
        rt = self.rt
        if err.kind in _LIMIT_KINDS:
            rt.shard.limit_hit(err.kind)
        else:
            rt.shard.protocol_error("downstream", err.kind)
        ex = self.leg.exchange if self.leg is not None else None
        if ex is not None and not ex.finished:
            ex.fail(err)
            self.pump()
            self.transport.close() if not self.codec.aborted else self.transport.abort()
            return
        self.codec.error_response(err.status_hint)
        out = self.codec.output()
        self.transport.write(out)
        self._close_after_response()

    # -- timers -----------------------------------------------------------------------------

    def _arm(self) -> None:
        t = self.rt.config.timeouts
        ex = self.leg
        phase = self.codec.phase
        if self.transport.handshaking:
            self.timer.arm(self._since + self.lrt.handshake_timeout)
            return
        if ex is None:
            if phase == "idle":
                deadline = self._since + (t.keepalive if self.codec.requests else t.header)
            elif phase == "head":
                deadline = self._head_started + t.header
            else:
                self.timer.cancel()
                return
        elif phase == "body":
            deadline = self._since + t.body_idle
        else:
            self.timer.cancel()
            return
        self.timer.arm(deadline)

    def _on_timer(self, now: float) -> None:
        if self.closed:
            return
        if self.transport.lingering or self.codec.wants_close():
            # Lingered (or waited for a client that will not read our response) long
            # enough.
            self.transport.abort()
            return
        t = self.rt.config.timeouts
        leg = self.leg
        phase = self.codec.phase
        shard = self.rt.shard
        if self.transport.handshaking:
            shard.limit_hit("tls_handshake_timeout")
            self.transport.abort()
            return
        if leg is None:
            if phase == "idle" and self.codec.requests:
                self.close()
            else:
                shard.limit_hit("header_timeout")
                self.codec.error_response(408)
                self.transport.write(self.codec.output())
                self.transport.close()
            return
        if phase == "body" and now - self._since >= t.body_idle:
            shard.limit_hit("body_idle")
            leg.exchange.fail(Timeout("request body idle", phase="body", side=_DOWN,
                                      status_hint=408))
            self.pump()
            if not self.transport.closed:
                self.transport.close()
            return
        self._arm()

    def close(self) -> None:
        """Close gracefully (after buffered output)."""
        self.transport.close()

    def drain(self) -> None:
        """Graceful shutdown: close now if idle, else after the current response."""
        self.codec.draining = True
        if self.leg is None and self.codec.phase == "idle":
            self.close()


class H1UpstreamConnection:
    """One connection to an endpoint, lent to one leg at a time."""

    multiplexed = False

    def __init__(
        self,
        rt: WorkerRuntime,
        cluster: ClusterState,
        endpoint: Endpoint,
        sock: socket.socket,
        *,
        owner: Leg,
        tls: ssl.SSLContext | None = None,
        server_name: str = "",
    ) -> None:
        self.rt = rt
        self.cluster = cluster
        self.endpoint = endpoint
        self.codec = H1ClientCodec(rt.h1)
        self.owner: Leg | None = owner
        now = rt.loop.now
        self.created = now
        self._last = now
        self.reused = False
        self.response_seen = False
        self.in_pool = False
        self.timer = rt.loop.timer(self._on_timer, self)
        limits = rt.config.limits
        self.transport = upstream_transport(
            rt.loop, sock, self, high=limits.buffer_high, limit=limits.buffer_limit, tls=tls,
            server_name=server_name)
        rt.shard.upstream_conn_opened(cluster.name)
        self.timer.arm(now + rt.config.timeouts.connect)

    def adopt(self, owner: Leg) -> None:
        """Lend this idle pooled connection to a new leg."""
        self.owner = owner
        self.in_pool = False
        self.reused = True
        self.response_seen = False
        self._last = self.rt.loop.now
        self.timer.arm(self._last + self.rt.config.timeouts.response)

    def bind(self, leg: Leg) -> None:
        """One leg at a time: nothing to map."""

    def release_leg(self, leg: Leg) -> None:
        """The exchange ended: pool the connection if it is in sync, else close it."""
        owner_gone = self.owner is None
        self.owner = None
        if owner_gone or self.transport.closed:
            return
        cfg = self.cluster.config.pool
        if self.codec.reusable() and self.rt.pool.put(self, cfg.max_idle):
            self.in_pool = True
            self.transport.set_reading(True)
            self.timer.arm(self.rt.loop.now + cfg.idle_timeout)
        elif self.codec.reusable():
            self.close()
        else:
            self.abort()

    def flush(self) -> None:
        out = self.codec.output()
        if out:
            self.transport.write(out)
        self.transport.set_reading(self.codec.wants_read())

    def connection_made(self) -> None:
        self.cluster.report_success(self.endpoint)
        self._last = self.rt.loop.now
        self.timer.arm(self._last + self.rt.config.timeouts.response)
        if self.owner is not None:
            self.owner.upstream_ready(self)

    def data_received(self, data: bytes) -> None:
        self._last = self.rt.loop.now
        self.response_seen = True
        owner = self.owner
        if owner is None:
            # Bytes on an idle pooled connection: out of sync, never reuse it.
            self.abort()
            return
        try:
            msgs = self.codec.feed(data, self._last)
        except EgError as err:
            owner.upstream_failed(self, err, stale=False)
            self.abort()
            return
        owner.upstream_messages(msgs)

    def eof_received(self) -> None:
        owner = self.owner
        if owner is None:
            self.close()
            return
        try:
            msgs = self.codec.feed_eof(self.rt.loop.now)
        except EgError as err:
            owner.upstream_failed(self, err, stale=self.reused and not self.response_seen)
            self.close()
            return
        owner.upstream_messages(msgs)
        self.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.timer.release()
        self.rt.shard.upstream_conn_closed(self.cluster.name)
        if self.in_pool:
            self.rt.pool.forget(self)
            self.in_pool = False
        owner = self.owner
        self.owner = None
        if owner is None:
            return
        owner.upstream_failed(self, connection_error(self.endpoint, exc,
                                                     self.codec.response_started()),
                              stale=self.reused and not self.response_seen)

    def on_write_high(self) -> None:
        self.rt.shard.paused("upstream_send")
        owner = self.owner
        if owner is not None:
            owner.exchange.upstream_congested(True)
            owner.down.pump()

    def on_write_low(self) -> None:
        owner = self.owner
        if owner is not None:
            owner.exchange.upstream_congested(False)
            owner.down.pump()

    def on_crash(self, exc: BaseException) -> None:
        owner = self.owner
        self.owner = None
        self.abort()
        if owner is not None:
            owner.down.on_crash(exc)

    def _on_timer(self, now: float) -> None:
        t = self.rt.config.timeouts
        if self.in_pool:
            self.close()
            return
        owner = self.owner
        if owner is None or self.transport.closed:
            return
        if self.transport.connecting or self.transport.handshaking:
            err: EgError = Timeout(f"connect to {self.endpoint.key} timed out", phase="connect",
                                   side=_UP, status_hint=504)
        elif now - self._last >= t.response:
            err = Timeout(f"upstream {self.endpoint.key} silent", phase="response", side=_UP,
                          status_hint=504)
        else:
            self.timer.arm(self._last + t.response)
            return
        self.owner = None
        self.abort()
        owner.upstream_failed(self, err, stale=False)

    def close(self) -> None:
        self.transport.close()

    def abort(self) -> None:
        self.transport.abort()


def connection_error(endpoint: Endpoint, exc: BaseException | None,
                     response_started: bool) -> EgError:
    """The error an upstream connection's loss means for a request on it."""
    if isinstance(exc, ConnectionRefusedError):
        return ConnectError(f"connect to {endpoint.key} failed: {exc}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ConnectError(f"TLS to {endpoint.key}: certificate verification failed: "
                            f"{exc.verify_message}", kind="tls_verify", retry=Retry.NO)
    if isinstance(exc, ssl.SSLError):
        return ConnectError(f"TLS to {endpoint.key} failed: {exc}", kind="tls",
                            retry=Retry.NO)
    if response_started or exc is not None:
        return Broken(f"upstream {endpoint.key} connection lost: {exc}", side=_UP,
                      status_hint=502)
    return Broken(f"upstream {endpoint.key} closed", side=_UP, status_hint=502)


#: Lingering close: at most this many request bytes are read and dropped, for at most
#: this long, after the final response (nginx: lingering_time 30 s, lingering_timeout 5 s).
LINGER_BYTES = 1024 * 1024
LINGER_SECONDS = 5.0

_LIMIT_KINDS = frozenset({"head_size", "header_count", "body_size", "chunk_line"})

