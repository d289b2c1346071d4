"""One request/response between a downstream stream and an upstream stream.

Phases (pingora's named phases, in the order a request meets them):

    ┌──────────┐ head ok  ┌────────────┐ attach() ┌────────────┐ response end ┌──────┐
    │ RECEIVED │────────▶│ CONNECTING │────────▶│ FORWARDING │─────────────▶│ DONE │
    └──────────┘          └────────────┘          └────────────┘               └──────┘
         │ 413 / route miss      │ connect error        │ limit, reset, broken
         └───────────────────────┴──────────────────────┴──────▶ FAILED (reply or reset)

The exchange is symmetric and sans-I/O. It rewrites the request head for the upstream
(X-Forwarded-For/-Proto, Via), forwards body slices as they come (never joining them),
enforces the body caps in both directions, and turns any ``EgError`` into either an
error response (nothing sent downstream yet) or a ``Reset`` (a response has started, so
the client must see an abort, never a clean end). Backpressure: while the upstream is
not attached at most ``buffer_high`` request bytes are queued, then the downstream is
paused; afterwards the reactor reports each transport's watermarks and the exchange
pauses/resumes the codec on the other side (Envoy's readDisable chain, once per cause).
"""

from __future__ import annotations

from dataclasses import dataclass

from eg.core.codec.base import ClientCodec, ServerCodec
from eg.core.config import LimitsConfig, ProxyConfig
from eg.core.errors import EgError, LimitExceeded
from eg.core.message import (
    Body,
    HeaderList,
    Message,
    RequestHead,
    Reset,
    ResetCode,
    ResponseHead,
    Side,
    Trailers,
)
from eg.core.proxy import grpc

RECEIVED, CONNECTING, FORWARDING, DONE, FAILED = "received", "connecting", "forwarding", \
    "done", "failed"


@dataclass(slots=True, kw_only=True)
class ExchangeContext:
    """Per-worker, per-listener settings an exchange needs (built once, reused)."""

    limits: LimitsConfig
    proxy: ProxyConfig
    via: bytes
    server_header: bytes
    #: The listener's Alt-Svc value (RFC 7838), or empty: when set it replaces any the
    #: upstream sent (that one names the upstream's alternatives, not this listener's).
    alt_svc: bytes = b""
    scheme: bytes


class Exchange:
    """See the module docstring.

    Args:
        head: the request head from the downstream codec.
        downstream: the server codec it arrived on.
        ctx: limits and forwarding settings.
        client: the downstream peer's address (for X-Forwarded-For).
        now: monotonic time of arrival.
    """

    __slots__ = (
        "_paused_down_queue",
        "_paused_down_up",
        "_paused_up",
        "_pending",
        "_pending_bytes",
        "bytes_in",
        "bytes_out",
        "ctx",
        "downstream",
        "finished",
        "grpc",
        "head",
        "limit_kind",
        "phase",
        "request_done",
        "response_done",
        "response_started",
        "sid",
        "started",
        "status",
        "up_sid",
        "upstream",
        "upstream_headers",
    )

    def __init__(
        self,
        *,
        head: RequestHead,
        downstream: ServerCodec,
        ctx: ExchangeContext,
        client: bytes,
        now: float,
        grpc: bool = False,
    ) -> None:
        self.head = head
        #: A gRPC call: eg's own failures are answered with grpc-status (``grpc.py``).
        self.grpc = grpc
        self.sid = head.stream_id
        self.downstream = downstream
        self.ctx = ctx
        self.started = now
        self.phase = RECEIVED
        #: DONE or FAILED: nothing more is forwarded either way.
        self.finished = False
        self.upstream: ClientCodec | None = None
        self.up_sid = 0
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.request_done = head.end_stream
        self.response_started = False
        self.response_done = False
        self._pending: list[Message] = []
        self._pending_bytes = 0
        self._paused_down_queue = False
        self._paused_down_up = False
        self._paused_up = False
        #: The body cap this exchange enforced itself, if any (for the limit metric).
        self.limit_kind = ""
        limit = ctx.limits.max_request_body
        if head.content_length is not None and head.content_length > limit:
            # Declared too large: answer before forwarding anything (no 100-continue).
            self.fail(LimitExceeded("request body too large", side=Side.DOWNSTREAM,
                                    status_hint=413, kind="body_size"))
            self.upstream_headers = head.headers
            return
        self.upstream_headers = self._rewrite(head, client)
        self.phase = CONNECTING

    def _rewrite(self, head: RequestHead, client: bytes) -> HeaderList:
        """The request's header fields as the upstream sees them (forwarding headers)."""
        proxy = self.ctx.proxy
        headers: HeaderList = head.headers
        if proxy.x_forwarded_for or proxy.x_forwarded_proto or self.ctx.via:
            headers = list(headers)
            if proxy.x_forwarded_for:
                # Extend the last field line, so the client stays the rightmost entry of
                # the combined list however many lines the client sent.
                for i in range(len(headers) - 1, -1, -1):
                    name, value = headers[i]
                    if name == b"x-forwarded-for":
                        headers[i] = (name, value + b", " + client)
                        break
                else:
                    headers.append((b"x-forwarded-for", client))
            if proxy.x_forwarded_proto:
                # Ours replaces any the client sent: it is not a list, and the client's is
                # unverified.
                headers = [h for h in headers if h[0] != b"x-forwarded-proto"]
                headers.append((b"x-forwarded-proto", head.scheme))
            if self.ctx.via:
                headers.append((b"via", self.ctx.via))
        return headers

    # -- downstream → upstream ---------------------------------------------------------------

    def request_message(self, msg: Message) -> None:
        """A Body, Trailers or Reset from the downstream codec."""
        if self.finished and not isinstance(msg, Reset):
            return
        if isinstance(msg, Body):
            self.bytes_in += len(msg.data)
            if self.bytes_in > self.ctx.limits.max_request_body:
                self.fail(LimitExceeded("request body too large", side=Side.DOWNSTREAM,
                                        status_hint=413, kind="body_size"))
                return
            if msg.end_stream:
                self.request_done = True
        elif isinstance(msg, Trailers):
            self.request_done = True
        elif isinstance(msg, Reset):
            self.request_done = True
            self._abort_upstream()
            self.phase = FAILED
            self.finished = True
            return
        if self.upstream is None:
            self._pending.append(msg)
            if isinstance(msg, Body):
                self._pending_bytes += len(msg.data)
                if self._pending_bytes > self.ctx.limits.buffer_high and \
                        not self._paused_down_queue:
                    self._paused_down_queue = True
                    self.downstream.pause(self.sid)
            return
        self.upstream.send(_restream(msg, self.up_sid))

    def detach(self) -> None:
        """Forget a failed upstream attempt (nothing reached the client) to try another."""
        assert not self.response_started and not self.finished
        self.upstream = None
        self.phase = CONNECTING

    def attach(self, upstream: ClientCodec) -> None:
        """The upstream connection is ready: send the head and anything queued."""
        if self.finished:
            return
        self.upstream = upstream
        self.up_sid = sid = upstream.open_stream()
        self.phase = FORWARDING
        head = self.head
        # Built here, once, with the upstream's stream id.
        upstream.send(RequestHead(
            stream_id=sid, method=head.method, scheme=head.scheme, authority=head.authority,
            path=head.path, headers=self.upstream_headers, end_stream=head.end_stream,
            content_length=head.content_length, http_minor=head.http_minor,
        ))
        for msg in self._pending:
            upstream.send(_restream(msg, sid))
        self._pending = []
        self._pending_bytes = 0
        if self._paused_down_queue:
            self._paused_down_queue = False
            self.downstream.resume(self.sid)
        if self.head.expect_continue and not self.request_done:
            self.downstream.send(ResponseHead(stream_id=self.sid, status=100, headers=[],
                                              end_stream=False))

    # -- upstream → downstream ---------------------------------------------------------------

    def response_message(self, msg: Message) -> None:
        """A ResponseHead, Body, Trailers or Reset from the upstream codec."""
        if self.finished:
            return
        down = self.downstream
        if isinstance(msg, Body):
            self.bytes_out += len(msg.data)
            if self.bytes_out > self.ctx.limits.max_response_body:
                self.fail(LimitExceeded("response body too large", side=Side.UPSTREAM,
                                        status_hint=502, kind="response_body_size"))
                return
            down.send(_restream(msg, self.sid))
            if msg.end_stream:
                self._response_end()
        elif isinstance(msg, ResponseHead):
            if msg.status < 200:
                if msg.status != 100:  # our own 100-continue already answered the client
                    down.send(ResponseHead(stream_id=self.sid, status=msg.status,
                                           headers=msg.headers, end_stream=False))
                return
            self.status = msg.status
            self.response_started = True
            headers = msg.headers
            ctx = self.ctx
            if ctx.server_header or ctx.via or ctx.alt_svc:
                headers = self._response_headers(headers)
            down.send(ResponseHead(stream_id=self.sid, status=msg.status, headers=headers,
                                   end_stream=msg.end_stream, content_length=msg.content_length))
            if msg.end_stream:
                self._response_end()
        elif isinstance(msg, Trailers):
            down.send(_restream(msg, self.sid))
            self._response_end()
        elif isinstance(msg, Reset):
            self.fail_reset(msg.code)

    def _response_headers(self, headers: HeaderList) -> HeaderList:
        ctx = self.ctx
        out = [h for h in headers if h[0] != b"server"] if ctx.server_header else \
            list(headers)
        if ctx.server_header:
            out.append((b"server", ctx.server_header))
        if ctx.via:
            out.append((b"via", ctx.via))
        if ctx.alt_svc:
            out = [h for h in out if h[0] != b"alt-svc"]
            out.append((b"alt-svc", ctx.alt_svc))
        return out

    def _response_end(self) -> None:
        self.response_done = True
        self.phase = DONE
        self.finished = True
        if not self.request_done:
            # The upstream answered before the request body ended (e.g. an early 4xx):
            # the rest of the request is not forwarded.
            self._abort_upstream()

    # -- failures ----------------------------------------------------------------------------

    def fail(self, err: EgError) -> None:
        """Answer ``err`` downstream: an error response if none started, else a reset."""
        if self.finished:
            return
        if isinstance(err, LimitExceeded) and err.kind in ("body_size", "response_body_size"):
            self.limit_kind = err.kind
        self.phase = FAILED
        self.finished = True
        self._abort_upstream()
        if self.response_started:
            self.downstream.send(Reset(stream_id=self.sid, code=err.reset_code, side=err.side))
            return
        if self.grpc:
            self._grpc_error(grpc.status_for(err), str(err) or err.kind)
            return
        status = err.status_hint
        self.status = status
        self.response_started = True
        body = b"%d %s\n" % (status, err.kind.encode())
        self.downstream.send(ResponseHead(
            stream_id=self.sid, status=status,
            headers=self._error_headers(err.kind), end_stream=False,
            content_length=len(body)))
        # If the request body is still coming, the server codec closes the connection
        # after this response (the next request's boundary is unknown).
        self.downstream.send(Body(stream_id=self.sid, data=body, end_stream=True))

    def fail_reset(self, code: ResetCode) -> None:
        """The upstream abandoned the stream: abandon the downstream one too."""
        if self.finished:
            return
        self.phase = FAILED
        self.finished = True
        if self.response_started:
            self.downstream.send(Reset(stream_id=self.sid, code=code, side=Side.UPSTREAM))
        elif self.grpc:
            self._grpc_error(grpc.UNAVAILABLE, "upstream reset the stream")
        else:
            self.status = 502
            self.response_started = True
            body = b"502 upstream reset\n"
            self.downstream.send(ResponseHead(
                stream_id=self.sid, status=502, headers=[(b"content-type", b"text/plain")],
                end_stream=False, content_length=len(body)))
            self.downstream.send(Body(stream_id=self.sid, data=body, end_stream=True))

    def _error_headers(self, kind: str) -> HeaderList:
        headers: HeaderList = [(b"content-type", b"text/plain"), (b"x-eg-error", kind.encode())]
        if self.ctx.alt_svc:
            headers.append((b"alt-svc", self.ctx.alt_svc))
        return headers

    def _grpc_error(self, status: int, message: str) -> None:
        """Fail a gRPC call the way a gRPC server would: 200 + trailers-only status."""
        self.status = 200
        self.response_started = True
        self.downstream.send(ResponseHead(
            stream_id=self.sid, status=200, headers=grpc.error_headers(status, message),
            end_stream=True, content_length=None))

    def _abort_upstream(self) -> None:
        if self.upstream is not None and not self.response_done:
            self.upstream.send(Reset(stream_id=self.up_sid, code=ResetCode.CANCEL,
                                     side=Side.DOWNSTREAM))

    # -- backpressure (reported by the reactor from transport watermarks) ---------------------

    def upstream_congested(self, congested: bool) -> None:
        """The upstream send buffer crossed a watermark: gate downstream reading."""
        if congested != self._paused_down_up:
            self._paused_down_up = congested
            (self.downstream.pause if congested else self.downstream.resume)(self.sid)

    def downstream_congested(self, congested: bool) -> None:
        """The downstream send buffer crossed a watermark: gate upstream reading."""
        if self.upstream is None or congested == self._paused_up:
            return
        self._paused_up = congested
        (self.upstream.pause if congested else self.upstream.resume)(self.up_sid)

    def release_pauses(self) -> None:
        """Undo every pause this exchange holds (it is ending)."""
        if self._paused_down_queue:
            self._paused_down_queue = False
            self.downstream.resume(self.sid)
        self.upstream_congested(False)
        self.downstream_congested(False)


def _restream(msg: Message, sid: int) -> Message:
    """The same message addressed to the other side's stream id (free when equal)."""
    if msg.stream_id == sid:
        return msg
    if isinstance(msg, Body):
        return Body(stream_id=sid, data=msg.data, end_stream=msg.end_stream)
    if isinstance(msg, Trailers):
        return Trailers(stream_id=sid, headers=msg.headers)
    return msg
