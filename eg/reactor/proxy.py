"""Connection drivers: wire transports, codecs and exchanges together on one worker.

No protocol logic lives here: codecs parse and frame, the exchange decides. A driver
moves bytes and messages between them, keeps one lazy timer per connection for the
phase-dependent timeouts, and reports to metrics and the access log.

Downstream timeouts by codec phase: ``idle`` keep-alive wait (close quietly), ``head``
header read (408, slowloris), ``body`` silence between body bytes (408 or abort, slow
POST). Upstream: connect (504) and silence while a response is awaited or streamed
(504 or abort).
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from eg.core.codec.h1.client import H1ClientCodec
from eg.core.codec.h1.server import H1ServerCodec
from eg.core.errors import (
    Broken,
    ConnectError,
    EgError,
    NoHealthyUpstream,
    NoRoute,
    Retry,
    Timeout,
)
from eg.core.message import Message, RequestHead, Reset, ResetCode, Side
from eg.core.proxy.balance import ClusterState, Endpoint
from eg.core.proxy.exchange import Exchange
from eg.reactor.stream import Transport
from eg.reactor.tls import TlsTransport

if TYPE_CHECKING:
    from eg.reactor.worker import ListenerRuntime, WorkerRuntime

_DOWN = Side.DOWNSTREAM
_UP = Side.UPSTREAM


class DownstreamConnection:
    """One accepted client connection speaking HTTP/1.x."""

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
        self.exchange: Exchange | None = None
        self.upstream: UpstreamConnection | None = None
        self._attempts = 0
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

    # -- transport events -----------------------------------------------------------------

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
        self._pump()

    def eof_received(self) -> None:
        msgs = self.codec.feed_eof(self.rt.loop.now)
        self._dispatch(msgs)
        if self.exchange is None:
            self.close()
            return
        self._pump()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.timer.release()
        if exc is not None and self.transport.handshaking:
            self.rt.shard.protocol_error("downstream", "tls_handshake")
        ex = self.exchange
        if ex is not None and not ex.finished:
            ex.request_message(Reset(stream_id=ex.sid, code=ResetCode.CANCEL, side=_DOWN))
            self._finish_exchange()
        elif ex is not None:
            self._finish_exchange()
        self.rt.connections.discard(self)
        self.lrt.open -= 1
        self.rt.shard.conn_closed(self.lrt.name)

    def on_write_high(self) -> None:
        self.rt.shard.paused("downstream_send")
        if self.exchange is not None:
            self.exchange.downstream_congested(True)
            self._sync_upstream_reading()

    def on_write_low(self) -> None:
        if self.exchange is not None:
            self.exchange.downstream_congested(False)
            self._sync_upstream_reading()

    def on_crash(self, exc: BaseException) -> None:
        """After an unexpected exception: abort this connection and its upstream."""
        if self.upstream is not None:
            self.upstream.abort()
            self.upstream = None
        self.transport.abort()

    # -- messages -------------------------------------------------------------------------

    def _dispatch(self, msgs: list[Message]) -> None:
        for msg in msgs:
            if isinstance(msg, RequestHead):
                self._start(msg)
            elif self.exchange is not None:
                self.exchange.request_message(msg)

    def _start(self, head: RequestHead) -> None:
        rt = self.rt
        now = rt.loop.now
        ex = Exchange(head=head, downstream=self.codec, ctx=self.lrt.ctx, client=self.client,
                      now=now)
        self.exchange = ex
        self._attempts = 0
        self._since = now
        if ex.finished:
            return
        if isinstance(self.transport, TlsTransport):
            sni = self.transport.server_name
            if sni is not None and _host_of(head.authority) != sni:
                # RFC 9110 §15.5.20: this connection is not authoritative for that host.
                ex.fail(EgError("SNI does not match Host", side=_DOWN, status_hint=421,
                                kind="misdirected"))
                return
        cluster_name = rt.routes.match(head.authority, head.path)
        if cluster_name is None:
            ex.fail(NoRoute("no route", side=_DOWN))
            return
        self._connect(rt.clusters[cluster_name])

    def _connect(self, cluster: ClusterState) -> None:
        rt = self.rt
        ex = self.exchange
        assert ex is not None
        now = rt.loop.now
        endpoint = cluster.pick(now)
        if endpoint is None:
            rt.shard.backend_error(cluster.name, "no_healthy_upstream")
            ex.fail(NoHealthyUpstream(f"cluster {cluster.name} has no healthy endpoint"))
            return
        self._attempts += 1
        pool_cfg = cluster.config.pool
        up = rt.pool.take(endpoint, now, pool_cfg.max_age) if self._attempts == 1 else None
        if up is not None:
            rt.shard.upstream_reused(cluster.name)
            up.adopt(self)
            self.upstream = up
            ex.attach(up.codec)
            return
        try:
            sock = rt.pool.connect(endpoint)
        except OSError as exc:
            cluster.report_failure(endpoint, now)
            rt.shard.backend_error(cluster.name, "connect")
            ex.fail(ConnectError(f"connect to {endpoint.key} failed: {exc}"))
            return
        self.upstream = UpstreamConnection(rt, cluster, endpoint, sock, owner=self)

    # -- called by the upstream side --------------------------------------------------------

    def upstream_ready(self, up: UpstreamConnection) -> None:
        if self.exchange is not None and up is self.upstream:
            self.exchange.attach(up.codec)
            self._pump()

    def upstream_messages(self, msgs: list[Message]) -> None:
        ex = self.exchange
        if ex is None:
            return
        for msg in msgs:
            ex.response_message(msg)
        self._pump()

    def upstream_failed(self, up: UpstreamConnection, err: EgError) -> None:
        ex = self.exchange
        if ex is None or up is not self.upstream:
            return
        self.upstream = None
        rt = self.rt
        rt.shard.backend_error(up.cluster.name, err.kind)
        if isinstance(err, ConnectError | Timeout) and err.kind in ("connect", "timeout_connect"):
            up.cluster.report_failure(up.endpoint, rt.loop.now)
        retryable = (
            (err.retry is Retry.YES and isinstance(err, ConnectError))
            or (err.retry is Retry.IF_REUSED and up.reused and not up.response_seen)
        )
        if retryable and self._attempts < 2 and ex.head.end_stream and not ex.response_started:
            # Safe to replay: the request had no body and nothing reached the client.
            ex.detach()
            self._connect(up.cluster)
        else:
            ex.fail(err)
        self._pump()

    # -- the pump: move bytes, finish exchanges, keep timers and interest in sync ----------

    def _pump(self) -> None:
        codec = self.codec
        while True:
            out = codec.output()
            if out:
                self.transport.write(out)
            up = self.upstream
            if up is not None:
                upout = up.codec.output()
                if upout:
                    up.transport.write(upout)
            ex = self.exchange
            if ex is not None and ex.finished:
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
        if codec.wants_close() and self.exchange is None:
            if codec.aborted:
                self.transport.abort()
            else:
                self._close_after_response()
            return
        if codec.aborted:
            self.transport.abort()
            return
        self.transport.set_reading(codec.wants_read())
        up = self.upstream
        if up is not None:
            up.transport.set_reading(up.codec.wants_read())
        self._arm()

    def _close_after_response(self) -> None:
        """Close once the response is out; linger if the client may still be sending."""
        if self.codec.request_unfinished:
            self.transport.close(linger=LINGER_BYTES)
            self.timer.arm(self.rt.loop.now + LINGER_SECONDS)
        else:
            self.transport.close()

    def _sync_upstream_reading(self) -> None:
        up = self.upstream
        if up is not None:
            up.transport.set_reading(up.codec.wants_read())

    def _finish_exchange(self) -> None:
        ex = self.exchange
        if ex is None:
            return
        self.exchange = None
        ex.release_pauses()
        rt = self.rt
        now = rt.loop.now
        up = self.upstream
        self.upstream = None
        upstream_name = ""
        if up is not None:
            upstream_name = up.endpoint.key
            up.release()
        if ex.limit_kind:
            rt.shard.limit_hit(ex.limit_kind)
        head = ex.head
        duration = now - ex.started
        rt.shard.request_done(self.lrt.name, "h1", ex.status, duration, ex.bytes_in,
                              ex.bytes_out)
        rt.access_log.record(
            listener=self.lrt.name, client=self.peer, method=head.method,
            authority=head.authority, path=head.path, status=ex.status, duration=duration,
            bytes_in=ex.bytes_in, bytes_out=ex.bytes_out, upstream=upstream_name,
        )
        self._since = now

    def _codec_error(self, err: EgError) -> None:
        """The client broke HTTP/1.1 or a limit: reply if possible, then close."""
        rt = self.rt
        if err.kind in _LIMIT_KINDS:
            rt.shard.limit_hit(err.kind)
        else:
            rt.shard.protocol_error("downstream", err.kind)
        ex = self.exchange
        if ex is not None and not ex.finished:
            ex.fail(err)
            self._pump()
            self.transport.close() if not self.codec.aborted else self.transport.abort()
            return
        self.codec.error_response(err.status_hint)
        out = self.codec.output()
        self.transport.write(out)
        self._close_after_response()

    # -- timers -----------------------------------------------------------------------------

    def _arm(self) -> None:
        t = self.rt.config.timeouts
        ex = self.exchange
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
        ex = self.exchange
        phase = self.codec.phase
        shard = self.rt.shard
        if self.transport.handshaking:
            shard.limit_hit("tls_handshake_timeout")
            self.transport.abort()
            return
        if ex is None:
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
            ex.fail(Timeout("request body idle", phase="body", side=_DOWN, status_hint=408))
            self._pump()
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
        if self.exchange is None and self.codec.phase == "idle":
            self.close()


class UpstreamConnection:
    """One connection to an endpoint, lent to one downstream exchange at a time."""

    def __init__(
        self,
        rt: WorkerRuntime,
        cluster: ClusterState,
        endpoint: Endpoint,
        sock: socket.socket,
        *,
        owner: DownstreamConnection,
    ) -> None:
        self.rt = rt
        self.cluster = cluster
        self.endpoint = endpoint
        self.codec = H1ClientCodec(rt.h1)
        self.owner: DownstreamConnection | None = owner
        now = rt.loop.now
        self.created = now
        self._last = now
        self.reused = False
        self.response_seen = False
        self.in_pool = False
        self.timer = rt.loop.timer(self._on_timer, self)
        limits = rt.config.limits
        self.transport = Transport(rt.loop, sock, self, high=limits.buffer_high,
                                   limit=limits.buffer_limit, connecting=True)
        rt.shard.upstream_conn_opened(cluster.name)
        self.timer.arm(now + rt.config.timeouts.connect)

    def adopt(self, owner: DownstreamConnection) -> None:
        """Lend this idle pooled connection to a new exchange."""
        self.owner = owner
        self.in_pool = False
        self.reused = True
        self.response_seen = False
        self._last = self.rt.loop.now
        self.timer.arm(self._last + self.rt.config.timeouts.response)

    def release(self) -> None:
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
            owner.upstream_failed(self, err)
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
            owner.upstream_failed(self, err)
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
        if isinstance(exc, ConnectionRefusedError):
            err: EgError = ConnectError(f"connect to {self.endpoint.key} failed: {exc}")
        elif self.codec.response_started() or exc is not None:
            err = Broken(f"upstream {self.endpoint.key} connection lost: {exc}", side=_UP,
                         status_hint=502)
        else:
            err = Broken(f"upstream {self.endpoint.key} closed", side=_UP, status_hint=502)
        owner.upstream_failed(self, err)

    def on_write_high(self) -> None:
        self.rt.shard.paused("upstream_send")
        owner = self.owner
        if owner is not None and owner.exchange is not None:
            owner.exchange.upstream_congested(True)
            owner.transport.set_reading(owner.codec.wants_read())

    def on_write_low(self) -> None:
        owner = self.owner
        if owner is not None and owner.exchange is not None:
            owner.exchange.upstream_congested(False)
            owner.transport.set_reading(owner.codec.wants_read())

    def on_crash(self, exc: BaseException) -> None:
        owner = self.owner
        self.owner = None
        self.abort()
        if owner is not None:
            owner.on_crash(exc)

    def _on_timer(self, now: float) -> None:
        t = self.rt.config.timeouts
        if self.in_pool:
            self.close()
            return
        owner = self.owner
        if owner is None or self.transport.closed:
            return
        if self.transport.connecting:
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
        owner.upstream_failed(self, err)

    def close(self) -> None:
        self.transport.close()

    def abort(self) -> None:
        self.transport.abort()


#: Lingering close: at most this many request bytes are read and dropped, for at most
#: this long, after the final response (nginx: lingering_time 30 s, lingering_timeout 5 s).
LINGER_BYTES = 1024 * 1024
LINGER_SECONDS = 5.0

_LIMIT_KINDS = frozenset({"head_size", "header_count", "body_size", "chunk_line"})


def _host_of(authority: bytes) -> str:
    """The lowercase host of an authority, without port or IPv6 brackets."""
    host = authority.decode("latin-1").lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rpartition(":")[0] if ":" in host else host
