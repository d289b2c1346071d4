"""Endpoint selection with passive health, per worker.

Round robin over the endpoints that are not ejected, honouring weights by repetition
in the rotation. An endpoint is ejected for ``eject_seconds`` after ``max_failures``
consecutive connect failures; when every endpoint is ejected the cluster has no healthy
upstream (503). Each worker keeps its own ``ClusterState``: there is no shared counter
to contend on, and each worker learns an endpoint's health from its own traffic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from eg.core.config import ClusterConfig


@dataclass(slots=True)
class Endpoint:
    """One backend as seen by one worker."""

    host: str
    port: int
    weight: int
    failures: int = 0
    ejected_until: float = 0.0
    #: ``host:port`` (``[v6]:port``): the pool key and the name in logs, computed once.
    key: str = field(init=False)

    def __post_init__(self) -> None:
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.key = f"{host}:{self.port}"


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port)."""
    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class ClusterState:
    """Round-robin picker with passive ejection for one cluster on one worker."""

    __slots__ = ("_cursor", "_eject_seconds", "_max_failures", "_ring", "config", "endpoints",
                 "name")

    def __init__(self, config: ClusterConfig, *, offset: int = 0) -> None:
        self.config = config
        self.name = config.name
        self.endpoints = [
            Endpoint(*split_address(ep.address), weight=ep.weight) for ep in config.endpoints
        ]
        self._ring = [ep for ep in self.endpoints for _ in range(ep.weight)]
        # Workers start at different offsets so they do not all hit endpoint 0 first.
        self._cursor = offset % len(self._ring) if self._ring else 0
        self._max_failures = config.health.max_failures
        self._eject_seconds = config.health.eject_seconds

    def pick(self, now: float) -> Endpoint | None:
        """Next healthy endpoint in rotation, or None when none is healthy."""
        ring = self._ring
        n = len(ring)
        for _ in range(n):
            ep = ring[self._cursor]
            self._cursor = (self._cursor + 1) % n
            if ep.ejected_until <= now:
                return ep
        return None

    def report_failure(self, ep: Endpoint, now: float) -> None:
        ep.failures += 1
        if ep.failures >= self._max_failures:
            ep.ejected_until = now + self._eject_seconds
            ep.failures = 0

    def report_success(self, ep: Endpoint) -> None:
        if ep.failures:
            ep.failures = 0
