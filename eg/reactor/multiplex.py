"""What the HTTP/2 and HTTP/3 upstream connections share: many legs, one per stream.

An upstream connection that multiplexes (``h2.H2UpstreamConnection`` over TCP/TLS,
``h3.H3UpstreamConnection`` over QUIC) is leased by the pool to legs of any downstream
connection of the worker. The rules are the same whatever the transport:

- before it is ready (the upstream's SETTINGS, or the QUIC handshake) legs wait on it,
  up to ``http2.max_concurrent_streams``; once ready they open streams up to the
  upstream's own limit and the rest go elsewhere as refused (never sent);
- a stream the upstream refused (REFUSED_STREAM, H3_REQUEST_REJECTED, or past its
  GOAWAY) before any response is retried on another connection;
- a retired connection (GOAWAY, ``max_age``, a reload) takes no more legs and closes
  once its streams are done;
- when the connection fails, every leg on it or waiting for it fails with the same
  error, marked stale (retryable) when nothing of its response had arrived.

Subclasses provide the transport and the codec: ``gone``, ``close()``, ``flush()``,
``_arm()``, ``_forget()`` (leave the pool's table), ``_stream_limit()`` and
``_wants_close()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, cast

from eg.core.errors import Closed, EgError, Retry, Timeout
from eg.core.message import Message, Reset, ResetCode, Side

if TYPE_CHECKING:
    from eg.core.proxy.balance import ClusterState, Endpoint
    from eg.reactor.leg import Leg, Upstream
    from eg.reactor.worker import WorkerRuntime


class StreamLimit(Protocol):
    """The codec's side of leasing: may a stream be opened now, and is it finished."""

    def can_open(self) -> bool: ...


class MultiplexedUpstream:
    """Leasing, refused-stream retries and failure of the legs (module docstring)."""

    multiplexed = True
    rt: WorkerRuntime
    cluster: ClusterState
    endpoint: Endpoint
    legs: dict[int, Leg]
    waiting: list[Leg]
    connected: bool
    retired: bool
    created: float
    _idle_since: float
    _congested: set[int]

    @property
    def _upstream(self) -> Upstream:
        """This connection as legs see it (the subclass adds ``codec``)."""
        return cast("Upstream", self)

    @property
    def gone(self) -> bool:
        """The transport is closed."""
        raise NotImplementedError

    def _stream_limit(self) -> StreamLimit:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError

    def _forget(self) -> None:
        """Leave the pool's table of connections that take new legs."""
        raise NotImplementedError

    def _arm(self) -> None:
        """Re-arm the connection's timer (the idle timeout starts with no legs)."""
        raise NotImplementedError

    def _wants_close(self) -> bool:
        """The codec is done (a GOAWAY either way, nothing in flight)."""
        raise NotImplementedError

    # -- leasing ----------------------------------------------------------------------------

    def can_take(self, now: float) -> bool:
        """Whether another leg may use this connection now."""
        if self.retired or self.gone:
            return False
        if now - self.created > self.cluster.config.pool.max_age:
            self.retire()
            return False
        if not self.connected:
            return len(self.waiting) < self.rt.h2.max_concurrent_streams
        return self._stream_limit().can_open()

    def add(self, leg: Leg) -> bool:
        """Take ``leg``: True when it can open its stream now, else it waits."""
        if self.connected:
            return True
        self.waiting.append(leg)
        return False

    def bind(self, leg: Leg) -> None:
        """``leg`` opened its stream (``Exchange.attach``)."""
        self.legs[leg.exchange.up_sid] = leg

    def release_leg(self, leg: Leg) -> None:
        sid = leg.exchange.up_sid
        if self.legs.get(sid) is leg:
            del self.legs[sid]
            self._congested.discard(sid)
        elif leg in self.waiting:
            self.waiting.remove(leg)
        if self.gone:
            return
        self.flush()
        if not self.legs and not self.waiting:
            self._idle_since = self.rt.loop.now
            if self.retired or self._wants_close():
                self.close()
                return
        self._arm()

    def retire(self) -> None:
        """Take no more legs; close once the streams in flight are done."""
        self.retired = True
        self._forget()
        if not self.legs and not self.waiting and not self.gone:
            self.close()

    def _open_waiting(self) -> None:
        """The connection is ready: the legs that waited open streams up to the
        upstream's limit (unknown until now, so opening them all could exceed it); the
        rest go elsewhere, as if refused (never sent)."""
        self.connected = True
        me = self._upstream
        waiting = self.waiting
        self.waiting = []
        for leg in waiting:
            if leg.upstream is not me:
                continue
            if self._stream_limit().can_open():
                leg.upstream_ready(me)
            else:
                leg.upstream_failed(me, Closed(
                    f"upstream {self.endpoint.key} stream limit reached", side=Side.UPSTREAM,
                    status_hint=502, retry=Retry.YES, kind="h2_refused"), stale=True)

    # -- responses and failures -------------------------------------------------------------

    def _deliver(self, msgs: list[Message]) -> list[Leg]:
        """Hand response messages to their legs; returns the legs touched, in order.

        A stream refused before any response was never processed (RFC 9113 §8.7,
        RFC 9114 §4.1.1): its leg is retried elsewhere instead.
        """
        legs = self.legs
        touched: list[Leg] = []
        for msg in msgs:
            leg = legs.get(msg.stream_id)
            if leg is None:
                continue
            touched.append(leg)
            if isinstance(msg, Reset) and msg.code == ResetCode.REFUSED_STREAM and \
                    not leg.exchange.response_started:
                del legs[msg.stream_id]
                leg.upstream_failed(self._upstream, Closed(
                    f"upstream {self.endpoint.key} refused the stream", side=Side.UPSTREAM,
                    status_hint=502, retry=Retry.YES, kind="h2_refused"), stale=True,
                    pump=False)
                continue
            leg.deliver(msg)
        return touched

    def _fail_legs(self, err: EgError) -> None:
        """The connection is gone: every leg on it, or waiting for it, fails with
        ``err``; stale (retryable) when nothing of its response had arrived and the
        failure is not one a retry would meet again (timeouts, TLS, ALPN)."""
        legs = list(self.legs.values()) + self.waiting
        self.legs = {}
        self.waiting = []
        for leg in legs:
            stale = not leg.exchange.response_started and not isinstance(err, Timeout) and \
                err.kind not in ("tls_verify", "tls", "alpn")
            leg.upstream_failed(self._upstream, err, stale=stale)
