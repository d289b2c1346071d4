"""Exchange with real HTTP/1.1 codecs on both sides, in memory, fake time."""

from __future__ import annotations

from dataclasses import replace

from eg.core.codec.h1.client import H1ClientCodec
from eg.core.codec.h1.server import H1ServerCodec
from eg.core.config import LimitsConfig, ProxyConfig
from eg.core.errors import Broken, Timeout
from eg.core.message import Body, RequestHead, Reset, ResetCode, ResponseHead, Side, Trailers
from eg.core.proxy.exchange import Exchange, ExchangeContext
from tests.codec.pairs import NOW, h1_client, h1_server, wire

CLIENT = b"10.0.0.7"


def context(**limits: int) -> ExchangeContext:
    return ExchangeContext(
        limits=replace(LimitsConfig(), **limits), proxy=ProxyConfig(), via=b"1.1 eg",
        server_header=b"", scheme=b"http",
    )


def start(request: bytes, ctx: ExchangeContext | None = None
          ) -> tuple[Exchange, H1ServerCodec, list[object]]:
    down = h1_server()
    msgs = down.feed(request, NOW)
    head = msgs[0]
    assert isinstance(head, RequestHead)
    ex = Exchange(head=head, downstream=down, ctx=ctx or context(), client=CLIENT, now=NOW)
    return ex, down, list(msgs[1:])


def upstream_for(ex: Exchange, rest: list[object]) -> H1ClientCodec:
    up = h1_client()
    ex.attach(up)
    for msg in rest:
        ex.request_message(msg)  # type: ignore[arg-type]
    return up


def respond(ex: Exchange, up: H1ClientCodec, response: bytes) -> None:
    for msg in up.feed(response, NOW):
        ex.response_message(msg)


def test_get_is_forwarded_with_forwarding_headers_and_answered() -> None:
    ex, down, rest = start(
        b"GET /p?q=1 HTTP/1.1\r\nHost: site\r\nX-Forwarded-For: 1.1.1.1\r\n"
        b"X-Forwarded-For: 2.2.2.2\r\nX-Forwarded-Proto: https\r\n\r\n")
    up = upstream_for(ex, rest)
    sent = wire(up)
    assert sent.startswith(b"GET /p?q=1 HTTP/1.1\r\nhost: site\r\n")
    assert b"x-forwarded-for: 1.1.1.1\r\nx-forwarded-for: 2.2.2.2, 10.0.0.7\r\n" in sent
    assert sent.count(b"x-forwarded-proto") == 1
    assert b"x-forwarded-proto: http\r\n" in sent and b"via: 1.1 eg\r\n" in sent
    respond(ex, up, b"HTTP/1.1 200 OK\r\nServer: origin\r\nContent-Length: 2\r\n\r\nok")
    out = wire(down)
    assert out.startswith(b"HTTP/1.1 200 OK\r\nserver: origin\r\nvia: 1.1 eg\r\n")
    assert out.endswith(b"\r\n\r\nok")
    assert ex.finished and ex.status == 200 and ex.bytes_out == 2
    assert up.reusable()


def test_server_header_replaced_when_configured() -> None:
    ctx = replace(context(), server_header=b"eg", via=b"")
    ex, down, rest = start(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", ctx)
    up = upstream_for(ex, rest)
    respond(ex, up, b"HTTP/1.1 204 No Content\r\nServer: origin\r\n\r\n")
    out = wire(down)
    assert b"server: eg\r\n" in out and b"origin" not in out and b"via" not in out


ALT_SVC = b'h3=":8443"; ma=3600'


def test_listener_alt_svc_replaces_the_upstreams() -> None:
    ctx = replace(context(), alt_svc=ALT_SVC, via=b"")
    ex, down, rest = start(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", ctx)
    up = upstream_for(ex, rest)
    respond(ex, up, b'HTTP/1.1 200 OK\r\nAlt-Svc: h2=":9001"\r\nContent-Length: 0\r\n\r\n')
    out = wire(down)
    assert out.count(b"alt-svc") == 1 and b"alt-svc: " + ALT_SVC + b"\r\n" in out


def test_upstream_alt_svc_passes_without_a_listener_value() -> None:
    ex, down, rest = start(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    up = upstream_for(ex, rest)
    respond(ex, up, b'HTTP/1.1 200 OK\r\nAlt-Svc: h2=":9001"\r\nContent-Length: 0\r\n\r\n')
    assert b'alt-svc: h2=":9001"\r\n' in wire(down)


def test_error_responses_carry_the_listener_alt_svc() -> None:
    ex, down, _rest = start(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
                            replace(context(), alt_svc=ALT_SVC))
    ex.fail(Broken("gone"))
    assert b"alt-svc: " + ALT_SVC + b"\r\n" in wire(down)


def test_declared_body_over_cap_is_413_before_forwarding() -> None:
    ex, down, _ = start(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n",
                        context(max_request_body=10))
    assert ex.finished and ex.status == 413 and ex.limit_kind == "body_size"
    assert wire(down).startswith(b"HTTP/1.1 413 ")
    assert down.wants_close()


def test_chunked_body_over_cap_mid_stream_is_413_and_upstream_reset() -> None:
    ex, down, rest = start(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n",
        context(max_request_body=10))
    up = upstream_for(ex, rest)
    for msg in down.feed(b"8\r\n12345678\r\n", NOW):
        ex.request_message(msg)
    assert ex.finished and ex.status == 413 and ex.limit_kind == "body_size"
    assert not up.reusable()
    assert wire(down).startswith(b"HTTP/1.1 413 ")


def test_body_queued_while_connecting_pauses_downstream_then_flushes() -> None:
    ex, down, rest = start(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 8\r\n\r\n",
                           context(buffer_high=4))
    for msg in down.feed(b"12345678", NOW):
        ex.request_message(msg)
    assert not down.wants_read()  # more than buffer_high queued: stop reading
    up = upstream_for(ex, rest)
    assert down.wants_read()
    assert wire(up).endswith(b"\r\n\r\n12345678")


def test_expect_continue_answered_when_upstream_attaches() -> None:
    ex, down, rest = start(
        b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    assert wire(down) == b""
    up = upstream_for(ex, rest)
    assert wire(down) == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert b"expect" not in wire(up).lower()


def test_informational_responses() -> None:
    ex, down, rest = start(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    up = upstream_for(ex, rest)
    respond(ex, up, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n"
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    out = wire(down)
    assert b"100 Continue" not in out
    assert out.startswith(b"HTTP/1.1 103 Early Hints\r\nlink: </s>\r\n\r\nHTTP/1.1 200 OK")


def test_response_over_cap_resets_downstream() -> None:
    ex, down, rest = start(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", context(max_response_body=4))
    up = upstream_for(ex, rest)
    respond(ex, up, b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n12345678")
    assert ex.finished and ex.limit_kind == "response_body_size"
    assert down.aborted
    assert not up.reusable()


def test_trailers_pass_through() -> None:
    ex, down, rest = start(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    up = upstream_for(ex, rest)
    respond(ex, up, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"2\r\nok\r\n0\r\ngrpc-status: 0\r\n\r\n")
    assert wire(down).endswith(b"2\r\nok\r\n0\r\ngrpc-status: 0\r\n\r\n")
    assert ex.finished and ex.response_done


def test_failure_before_response_answers_with_status_hint() -> None:
    ex, down, _rest = start(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    ex.fail(Timeout("slow", phase="connect", side=Side.UPSTREAM, status_hint=504))
    out = wire(down)
    assert out.startswith(b"HTTP/1.1 504 ") and b"x-eg-error: timeout_connect" in out
    ex.fail(Broken("again"))  # a second failure changes nothing
    assert wire(down) == b""


def test_failure_after_response_started_aborts_downstream() -> None:
    ex, down, rest = start(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    up = upstream_for(ex, rest)
    respond(ex, up, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
    ex.fail(Broken("upstream vanished", side=Side.UPSTREAM))
    assert down.aborted and ex.finished


def test_upstream_reset_before_response_is_502() -> None:
    ex, down, rest = start(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    upstream_for(ex, rest)
    ex.response_message(Reset(stream_id=1, code=ResetCode.CANCEL, side=Side.UPSTREAM))
    assert wire(down).startswith(b"HTTP/1.1 502 ") and ex.status == 502


def test_upstream_reset_after_response_started_aborts() -> None:
    ex, down, rest = start(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    up = upstream_for(ex, rest)
    respond(ex, up, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
    ex.response_message(Reset(stream_id=1, code=ResetCode.CANCEL, side=Side.UPSTREAM))
    assert down.aborted


def test_early_response_abandons_the_rest_of_the_request() -> None:
    ex, down, rest = start(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
    up = upstream_for(ex, rest)
    respond(ex, up, b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    assert ex.finished and not ex.request_done
    assert not up.reusable()  # the request body was cut short: never reuse
    out = wire(down)
    assert out.startswith(b"HTTP/1.1 403 ") and b"connection: close" in out


def test_downstream_reset_cancels_upstream() -> None:
    ex, down, rest = start(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
    up = upstream_for(ex, rest)
    ex.request_message(Reset(stream_id=1, code=ResetCode.CANCEL, side=Side.DOWNSTREAM))
    assert ex.finished and not up.reusable()
    ex.request_message(Body(stream_id=1, data=b"late", end_stream=True))  # ignored
    ex.response_message(ResponseHead(stream_id=1, status=200, headers=[], end_stream=True))
    assert wire(down) == b""


def test_congestion_gates_the_other_side_once_per_cause() -> None:
    ex, down, rest = start(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
    up = upstream_for(ex, rest)
    ex.upstream_congested(True)
    ex.upstream_congested(True)
    assert not down.wants_read()
    ex.upstream_congested(False)
    assert down.wants_read()
    ex.downstream_congested(True)
    assert not up.wants_read()
    ex.release_pauses()
    assert up.wants_read() and down.wants_read()


def test_trailers_from_downstream_end_the_request() -> None:
    ex, _down, rest = start(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    up = upstream_for(ex, rest)
    ex.request_message(Trailers(stream_id=1, headers=[(b"x-sum", b"1")]))
    assert ex.request_done
    assert wire(up).endswith(b"0\r\nx-sum: 1\r\n\r\n")
