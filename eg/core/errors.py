"""One exception tree for the whole gateway.

Every error records which side caused it (``side``), whether the request may be retried
on another connection (``retry``) and the HTTP status a proxy should answer with if no
response has started yet (``status_hint``). Subclasses are named by what the caller does
next. Library exceptions are translated inside the codec that owns the library and
re-raised ``from`` the original.
"""

from __future__ import annotations

import enum

from eg.core.message import ResetCode, Side


class Retry(enum.Enum):
    """Whether a failed upstream attempt may be replayed elsewhere."""

    NO = "no"
    YES = "yes"
    #: Only if the failure happened on a reused (pooled) connection, which the peer may
    #: have closed just as we wrote: the request never reached the application.
    IF_REUSED = "if_reused"


class EgError(Exception):
    """Base of every error eg raises on purpose."""

    side: Side = Side.INTERNAL
    retry: Retry = Retry.NO
    status_hint: int = 500
    reset_code: ResetCode = ResetCode.INTERNAL_ERROR
    #: Short label used for metrics (``kind="..."``).
    kind: str = "internal"

    def __init__(
        self,
        message: str,
        *,
        side: Side | None = None,
        status_hint: int | None = None,
        kind: str | None = None,
        retry: Retry | None = None,
    ) -> None:
        super().__init__(message)
        if side is not None:
            self.side = side
        if status_hint is not None:
            self.status_hint = status_hint
        if kind is not None:
            self.kind = kind
        if retry is not None:
            self.retry = retry


class ProtocolError(EgError):
    """The peer broke the protocol; answer 400 (downstream) or 502 (upstream)."""

    status_hint = 400
    reset_code = ResetCode.PROTOCOL_ERROR
    kind = "protocol"


class LimitExceeded(EgError):
    """A configured bound was hit (body 413, head 431, ...)."""

    status_hint = 431
    reset_code = ResetCode.ENHANCE_YOUR_CALM
    kind = "limit"


class ConnectError(EgError):
    """No connection to an upstream could be made (refused, unreachable)."""

    side = Side.UPSTREAM
    status_hint = 502
    retry = Retry.YES
    reset_code = ResetCode.CONNECT_ERROR
    kind = "connect"


class NoHealthyUpstream(EgError):
    """Every endpoint of the cluster is ejected, or the cluster is empty."""

    side = Side.UPSTREAM
    status_hint = 503
    reset_code = ResetCode.REFUSED_STREAM
    kind = "no_healthy_upstream"


class Timeout(EgError):
    """A phase ran out of time; ``phase`` names it (header, body, connect, response...)."""

    status_hint = 504
    reset_code = ResetCode.CANCEL
    kind = "timeout"

    def __init__(self, message: str, *, phase: str, side: Side, status_hint: int) -> None:
        super().__init__(message, side=side, status_hint=status_hint, kind=f"timeout_{phase}")
        self.phase = phase


class Closed(EgError):
    """We closed the connection or stream ourselves (drain, limit, error elsewhere)."""

    reset_code = ResetCode.CANCEL
    kind = "closed"


class Broken(EgError):
    """The peer broke the connection (reset, EOF in the middle of a message)."""

    status_hint = 502
    retry = Retry.IF_REUSED
    reset_code = ResetCode.CANCEL
    kind = "broken"


class ConfigError(EgError):
    """The configuration is invalid; the message names file, key, line and expectation."""

    kind = "config"


class NoRoute(EgError):
    """No route matches the request's host and path."""

    side = Side.DOWNSTREAM
    status_hint = 404
    reset_code = ResetCode.REFUSED_STREAM
    kind = "no_route"
