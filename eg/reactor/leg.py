"""③ An exchange's way upstream: route, endpoint, connection, one retry, its timeouts.

A ``Leg`` is what both downstream drivers hand an exchange to (HTTP/1.1: one leg at a
time per connection; HTTP/2: one per stream) and what both upstream drivers report to
(HTTP/1.1: the one leg the connection is lent to; HTTP/2: one leg per stream). So the
route lookup, the endpoint choice, the single retry of a request that never reached an
upstream, and the mapping of upstream failures onto the exchange exist once, whatever
the protocols on either side.

Timeouts a multiplexed side cannot keep per connection are kept here, per leg: silence
of the request body on an HTTP/2 stream (``body_idle``, 408 or a reset), silence of an
HTTP/2 upstream stream (``response``, 504 or a reset), and a gRPC call's
``grpc-timeout`` (clamped to ``timeouts.grpc_max``; DEADLINE_EXCEEDED).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from eg.core.errors import (
    ConnectError,
    EgError,
    NoHealthyUpstream,
    NoRoute,
    Retry,
    Timeout,
)
from eg.core.message import Body, Message, RequestHead, Reset, ResetCode, Side
from eg.core.proxy import grpc
from eg.core.proxy.balance import ClusterState, Endpoint
from eg.core.proxy.exchange import Exchange
from eg.reactor.loop import Timer

if TYPE_CHECKING:
    from eg.core.codec.base import ClientCodec, ServerCodec
    from eg.reactor.worker import ListenerRuntime, WorkerRuntime

log = logging.getLogger("eg.upstream")

#: Attempts per request: the first and one retry (of a request that never reached an
#: upstream, see ``Leg.upstream_failed``).
ATTEMPTS = 2
#: Attempts when the last one was a stream the upstream refused (REFUSED_STREAM).
REFUSED_ATTEMPTS = 5

_DOWN = Side.DOWNSTREAM
_UP = Side.UPSTREAM


class Downstream(Protocol):
    """What a leg needs from the downstream connection that owns it."""

    rt: WorkerRuntime
    lrt: ListenerRuntime
    #: Streams carry their own body-idle timeouts on the leg (HTTP/2).
    multiplexed: bool

    def pump(self, leg: Leg | None = None) -> None:
        """Move queued bytes both ways and settle finished exchanges (``leg``'s first)."""
        ...

    def on_crash(self, exc: BaseException) -> None: ...


class Upstream(Protocol):
    """What a leg needs from the upstream connection (or stream) it is lent."""

    @property
    def codec(self) -> ClientCodec: ...
    @property
    def cluster(self) -> ClusterState: ...
    @property
    def endpoint(self) -> Endpoint: ...
    @property
    def multiplexed(self) -> bool:
        """Each stream keeps its own response timeout on the leg (HTTP/2)."""
        ...

    def bind(self, leg: Leg) -> None:
        """``leg``'s request went out on this upstream (its stream id is known now)."""
        ...

    def release_leg(self, leg: Leg) -> None:
        """The leg is done with this upstream (pool it, end the stream...)."""
        ...

    def flush(self) -> None:
        """Write what the codec queued and sync read interest."""
        ...

    def abort(self) -> None:
        """Drop the connection at once (after a crash)."""
        ...


class Leg:
    """One exchange and its upstream attempts (see the module docstring)."""

    __slots__ = (
        "attempts",
        "deadline",
        "down",
        "exchange",
        "last_in",
        "last_out",
        "timer",
        "upstream",
    )

    def __init__(self, down: Downstream, exchange: Exchange, *, deadline: float = 0.0) -> None:
        self.down = down
        self.exchange = exchange
        self.upstream: Upstream | None = None
        self.attempts = 0
        now = down.rt.loop.now
        self.last_in = now
        self.last_out = now
        #: Absolute deadline of the whole exchange (gRPC), or 0.
        self.deadline = deadline
        self.timer: Timer | None = None
        if deadline or down.multiplexed:
            self.timer = down.rt.loop.timer(self._on_timer, down)
            self.arm()

    # -- routing and connecting ------------------------------------------------------------

    def route(self) -> None:
        """Pick the cluster for the request and start the first attempt."""
        rt = self.down.rt
        head = self.exchange.head
        name = rt.routes.match(head.authority, head.path)
        if name is None:
            self.exchange.fail(NoRoute("no route", side=_DOWN))
            return
        self.connect(rt.clusters[name])

    def connect(self, cluster: ClusterState) -> None:
        """Lease a connection (or stream) to an endpoint of ``cluster``."""
        rt = self.down.rt
        ex = self.exchange
        now = rt.loop.now
        endpoint = cluster.pick(now)
        if endpoint is None:
            rt.shard.backend_error(cluster.name, "no_healthy_upstream")
            ex.fail(NoHealthyUpstream(f"cluster {cluster.name} has no healthy endpoint"))
            return
        self.attempts += 1
        try:
            up, ready = rt.pool.lease(self, cluster, endpoint, fresh=self.attempts > 1)
        except OSError as exc:
            cluster.report_failure(endpoint, now)
            rt.shard.backend_error(cluster.name, "connect")
            ex.fail(ConnectError(f"connect to {endpoint.key} failed: {exc}"))
            return
        self.upstream = up
        if ready:
            self._attach(up)

    def _attach(self, up: Upstream) -> bool:
        try:
            self.exchange.attach(up.codec)
        except EgError as err:  # the stream could not be opened after all
            self.upstream_failed(up, err, stale=True, pump=False)
            return False
        up.bind(self)
        self.last_out = self.down.rt.loop.now
        self.arm()
        return True

    # -- called by the upstream side --------------------------------------------------------

    def upstream_ready(self, up: Upstream) -> None:
        """The connection ``up`` leased to us is established: send the request."""
        if up is self.upstream and not self.exchange.finished and self._attach(up):
            up.flush()
        self.down.pump(self)

    def deliver(self, msg: Message) -> None:
        """One response message; the caller pumps the downstream afterwards."""
        self.last_out = self.down.rt.loop.now
        try:
            self.exchange.response_message(msg)
        except EgError as err:  # the downstream codec refused it (e.g. a send buffer cap)
            self.exchange.fail(err)

    def upstream_messages(self, msgs: list[Message]) -> None:
        for msg in msgs:
            self.deliver(msg)
        self.down.pump(self)

    def request(self, msg: Message) -> None:
        """One request message from the downstream codec."""
        if isinstance(msg, Body):
            self.last_in = self.down.rt.loop.now
        try:
            self.exchange.request_message(msg)
        except EgError as err:  # the upstream codec refused it (e.g. a send buffer cap)
            self.exchange.fail(err)
        if isinstance(msg, Reset | Body) and self.timer is not None:
            self.arm()

    def upstream_failed(
        self, up: Upstream, err: EgError, *, stale: bool, pump: bool = True
    ) -> None:
        """``up`` failed this leg's request. ``stale``: nothing of the response arrived
        and the connection had served earlier requests (or refused the stream), so
        the request may not have reached the upstream at all."""
        ex = self.exchange
        if up is not self.upstream or ex.finished:
            return
        self.upstream = None
        rt = self.down.rt
        rt.shard.backend_error(up.cluster.name, err.kind)
        log.warning("upstream failed", extra={
            "cluster": up.cluster.name, "endpoint": up.endpoint.key, "kind": err.kind,
            "error": str(err)})
        if isinstance(err, ConnectError | Timeout) and err.kind in ("connect", "timeout_connect",
                                                                     "tls_verify", "tls"):
            up.cluster.report_failure(up.endpoint, rt.loop.now)
        retryable = (
            (err.retry is Retry.YES and isinstance(err, ConnectError))
            or (err.retry is Retry.YES and stale)
            or (err.retry is Retry.IF_REUSED and stale)
        )
        # A stream the upstream refused was never processed (RFC 9113 §8.7): it may be
        # retried more often, since every stream of a burst that meets one upstream's
        # GOAWAY or stream limit is refused together and then meets the next one.
        limit = REFUSED_ATTEMPTS if err.kind == "h2_refused" else ATTEMPTS
        if retryable and self.attempts < limit and ex.head.end_stream and \
                not ex.response_started:
            # Safe to replay: the request had no body and nothing reached the client.
            ex.detach()
            self.connect(up.cluster)
        else:
            ex.fail(err)
        if pump:
            self.down.pump(self)

    # -- end ------------------------------------------------------------------------------

    def finish(self) -> str:
        """The exchange ended: give the upstream back; returns its endpoint key."""
        if self.timer is not None:
            self.timer.release()
            self.timer = None
        up = self.upstream
        self.upstream = None
        if up is None:
            return ""
        up.release_leg(self)
        return up.endpoint.key

    def abort(self) -> None:
        """The downstream connection is gone or crashed: abandon the upstream side."""
        ex = self.exchange
        if not ex.finished:
            ex.request_message(Reset(stream_id=ex.sid, code=ResetCode.CANCEL, side=_DOWN))
        self.finish()

    # -- timeouts ---------------------------------------------------------------------------

    def arm(self) -> None:
        timer = self.timer
        if timer is None:
            return
        ex = self.exchange
        if ex.finished:
            timer.cancel()
            return
        t = self.down.rt.config.timeouts
        deadline = self.deadline or float("inf")
        if self.down.multiplexed and not ex.request_done:
            deadline = min(deadline, self.last_in + t.body_idle)
        up = self.upstream
        if up is not None and up.multiplexed and not ex.response_done:
            deadline = min(deadline, self.last_out + t.response)
        if deadline == float("inf"):
            timer.cancel()
        else:
            timer.arm(deadline)

    def _on_timer(self, now: float) -> None:
        ex = self.exchange
        if ex.finished:
            return
        t = self.down.rt.config.timeouts
        shard = self.down.rt.shard
        err: EgError | None = None
        if self.deadline and now >= self.deadline:
            shard.limit_hit("grpc_deadline")
            err = Timeout("gRPC deadline exceeded", phase="deadline", side=_DOWN,
                          status_hint=504)
        elif self.down.multiplexed and not ex.request_done and now - self.last_in >= t.body_idle:
            shard.limit_hit("body_idle")
            err = Timeout("request body idle", phase="body", side=_DOWN, status_hint=408)
        else:
            up = self.upstream
            if up is not None and up.multiplexed and not ex.response_done and \
                    now - self.last_out >= t.response:
                shard.backend_error(up.cluster.name, "timeout_response")
                err = Timeout(f"upstream {up.endpoint.key} silent", phase="response",
                              side=_UP, status_hint=504)
        if err is None:
            self.arm()
            return
        ex.fail(err)
        up = self.upstream
        if up is not None:
            up.flush()
        self.down.pump(self)



def start_exchange(
    down: Downstream, head: RequestHead, codec: ServerCodec, client: bytes, sni: str | None
) -> Leg:
    """Open the exchange for a request head that arrived on ``down`` and route it."""
    rt = down.rt
    now = rt.loop.now
    deadline = 0.0
    is_grpc = down.multiplexed and grpc.is_grpc(head.headers)
    if is_grpc:
        deadline = now + grpc.call_timeout(head.headers, rt.config.timeouts.grpc_max)
    ex = Exchange(head=head, downstream=codec, ctx=down.lrt.ctx, client=client, now=now,
                  grpc=is_grpc)
    leg = Leg(down, ex, deadline=deadline)
    if ex.finished:
        return leg
    if sni is not None and _host_of(head.authority) != sni:
        # RFC 9110 §15.5.20: this connection is not authoritative for that host.
        ex.fail(EgError("SNI does not match Host", side=_DOWN, status_hint=421,
                        kind="misdirected"))
        return leg
    leg.route()
    return leg


def record_exchange(down: Downstream, leg: Leg, peer: str, protocol: str) -> None:
    """Count a finished exchange and write its access-log line; release its upstream."""
    upstream_name = leg.finish()
    ex = leg.exchange
    rt = down.rt
    if ex.limit_kind:
        rt.shard.limit_hit(ex.limit_kind)
    head = ex.head
    duration = rt.loop.now - ex.started
    name = down.lrt.name
    rt.shard.request_done(name, protocol, ex.status, duration, ex.bytes_in, ex.bytes_out)
    rt.access_log.record(
        listener=name, client=peer, method=head.method, authority=head.authority,
        path=head.path, status=ex.status, duration=duration, bytes_in=ex.bytes_in,
        bytes_out=ex.bytes_out, upstream=upstream_name,
    )


def _host_of(authority: bytes) -> str:
    """The lowercase host of an authority, without port or IPv6 brackets."""
    host = authority.decode("latin-1").lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rpartition(":")[0] if ":" in host else host
