"""gRPC awareness: recognise calls, honour ``grpc-timeout``, fail them in gRPC terms.

A gRPC client reads the outcome of a call from the ``grpc-status`` trailer, not from
the HTTP status: an HTML 502 from a proxy surfaces as a confusing UNKNOWN or INTERNAL.
So when eg itself ends a gRPC call (no route, no backend, a timeout, a limit) it answers
the way a gRPC server would: HTTP 200 with a trailers-only response carrying
``grpc-status`` and ``grpc-message`` (gRPC over HTTP/2 protocol spec, "Responses").

``grpc-timeout`` is the client's deadline for the whole call: ``TimeoutValue
TimeoutUnit``, at most 8 digits, unit one of H M S m u n. eg enforces it (clamped to a
configured maximum, so a client cannot pin a stream for days) and forwards it unchanged.
"""

from __future__ import annotations

from eg.core.errors import EgError, LimitExceeded, NoRoute, Timeout
from eg.core.message import HeaderList

#: grpc-status codes (grpc/doc/statuscodes.md).
OK = 0
CANCELLED = 1
UNKNOWN = 2
DEADLINE_EXCEEDED = 4
RESOURCE_EXHAUSTED = 8
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14

#: TimeoutUnit letters and their seconds, position by position.
_UNITS = b"HMSmun"
_UNIT_SECONDS = (3600.0, 60.0, 1.0, 1e-3, 1e-6, 1e-9)
#: "TimeoutValue → 1*8DIGIT" (gRPC over HTTP/2).
_MAX_DIGITS = 8


def is_grpc(headers: HeaderList) -> bool:
    """Whether a request's content-type names gRPC (``application/grpc`` or ``+proto``...)."""
    for name, value in headers:
        if name == b"content-type":
            return value.startswith(b"application/grpc")
    return False


def parse_timeout(value: bytes) -> float | None:
    """Seconds of a ``grpc-timeout`` value, or None when it is malformed."""
    if len(value) < 2 or len(value) > _MAX_DIGITS + 1 or not value[:-1].isdigit():
        return None
    index = _UNITS.find(value[-1:])
    if index < 0:
        return None
    return int(value[:-1]) * _UNIT_SECONDS[index]


def call_timeout(headers: HeaderList, maximum: float) -> float:
    """The call's deadline in seconds from now, clamped to ``maximum`` (0 = none)."""
    for name, value in headers:
        if name == b"grpc-timeout":
            seconds = parse_timeout(value)
            if seconds is not None:
                return min(seconds, maximum)
            break
    return maximum


def status_for(err: EgError) -> int:
    """The grpc-status that tells a client what eg's own failure means."""
    if isinstance(err, Timeout):
        return DEADLINE_EXCEEDED if err.phase in ("deadline", "response", "body") else \
            UNAVAILABLE
    if isinstance(err, LimitExceeded):
        return RESOURCE_EXHAUSTED
    if isinstance(err, NoRoute):
        return UNIMPLEMENTED
    if err.status_hint in (400, 421):
        return INTERNAL
    return UNAVAILABLE


def error_headers(status: int, message: str) -> HeaderList:
    """A trailers-only response's fields (its ``:status`` is 200)."""
    text = message.encode("ascii", "replace")
    # grpc-message is percent-encoded (gRPC over HTTP/2): keep printable ASCII except '%'.
    encoded = b"".join(
        bytes([c]) if 0x20 <= c <= 0x7E and c != 0x25 else b"%%%02X" % c for c in text
    )
    return [
        (b"content-type", b"application/grpc"),
        (b"grpc-status", b"%d" % status),
        (b"grpc-message", encoded),
    ]
