"""gRPC helpers: grpc-timeout parsing and clamping, status mapping, trailers-only fields."""

from __future__ import annotations

import pytest

from eg.core.errors import Broken, ConnectError, EgError, LimitExceeded, NoRoute, Timeout
from eg.core.message import Side
from eg.core.proxy import grpc


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(b"1S", 1.0), (b"250m", 0.25), (b"2M", 120.0), (b"1H", 3600.0), (b"5u", 5e-6),
     (b"99999999n", 0.099999999)],
)
def test_parse_timeout(value: bytes, seconds: float) -> None:
    assert grpc.parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [b"", b"S", b"1", b"1s", b"-1S", b"123456789S", b"1.5S",
                                   b"1 S"])
def test_malformed_timeout_is_none(value: bytes) -> None:
    assert grpc.parse_timeout(value) is None


def test_call_timeout_clamps_and_defaults() -> None:
    assert grpc.call_timeout([(b"grpc-timeout", b"10S")], 300.0) == 10.0
    assert grpc.call_timeout([(b"grpc-timeout", b"1H")], 300.0) == 300.0
    assert grpc.call_timeout([(b"grpc-timeout", b"junk")], 300.0) == 300.0
    assert grpc.call_timeout([], 300.0) == 300.0


def test_is_grpc() -> None:
    assert grpc.is_grpc([(b"content-type", b"application/grpc")])
    assert grpc.is_grpc([(b"content-type", b"application/grpc+proto")])
    assert not grpc.is_grpc([(b"content-type", b"application/json")])
    assert not grpc.is_grpc([])


@pytest.mark.parametrize(
    ("err", "status"),
    [
        (Timeout("t", phase="deadline", side=Side.DOWNSTREAM, status_hint=504),
         grpc.DEADLINE_EXCEEDED),
        (Timeout("t", phase="response", side=Side.UPSTREAM, status_hint=504),
         grpc.DEADLINE_EXCEEDED),
        (Timeout("t", phase="connect", side=Side.UPSTREAM, status_hint=504), grpc.UNAVAILABLE),
        (LimitExceeded("big", status_hint=413, kind="body_size"), grpc.RESOURCE_EXHAUSTED),
        (NoRoute("none", side=Side.DOWNSTREAM), grpc.UNIMPLEMENTED),
        (ConnectError("refused"), grpc.UNAVAILABLE),
        (Broken("gone"), grpc.UNAVAILABLE),
        (EgError("sni", status_hint=421, kind="misdirected"), grpc.INTERNAL),
    ],
)
def test_status_for(err: EgError, status: int) -> None:
    assert grpc.status_for(err) == status


def test_error_headers_percent_encode_the_message() -> None:
    fields = dict(grpc.error_headers(grpc.UNAVAILABLE, "100% down\n"))
    assert fields[b"grpc-status"] == b"14"
    assert fields[b"grpc-message"] == b"100%25 down%0A"
    assert fields[b"content-type"] == b"application/grpc"
