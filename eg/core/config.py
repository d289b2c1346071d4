"""Configuration: frozen dataclasses loaded from one TOML file.

The whole file is validated before anything binds. Workers receive the same frozen
``Config`` snapshot and each builds its own runtime tables from it (shared-nothing on
free-threaded CPython: nothing mutable, and nothing hot, is shared between threads).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Defaults below follow the reference gateway's published defaults (MISSION.md).
MiB = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeConfig:
    workers: int = 0
    """Worker threads; 0 means one per CPU in ``os.sched_getaffinity(0)``."""
    pin: bool = True
    """Pin each worker to one CPU of the affinity set."""
    allow_gil: bool = False
    """Start even if an imported extension re-enabled the GIL (never on by default)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ObservabilityConfig:
    metrics_bind: str = "127.0.0.1:9090"
    """Admin listener (/metrics and probes); empty string disables it."""
    log_format: str = "json"
    """json | text | plain; the LB_LOG_FORMAT environment variable overrides it."""
    log_level: str = "info"
    access_log: bool = True
    """One line per completed request."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminConfig:
    api_token_hash: str = ""
    """SHA-256 (hex) of the bearer token; required for a non-loopback admin bind."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    max_request_body: int = 64 * MiB
    """Request body cap: 413 if declared larger, stream abort if exceeded mid-body."""
    max_response_body: int = 64 * MiB
    max_head_size: int = 64 * 1024
    """Request/response head bytes (request line + headers): 431 past it."""
    max_headers: int = 256
    """Header fields per head: 431 past it."""
    max_requests_per_connection: int = 100
    """Keep-alive requests on one downstream HTTP/1.1 connection."""
    buffer_high: int = 64 * 1024
    """High watermark of each per-direction buffer; reading pauses above it."""
    buffer_limit: int = 1 * MiB
    """Hard cap of any one connection's send buffer."""
    max_connections: int = 65536
    """Open downstream connections per listener per worker."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutsConfig:
    header: float = 10.0
    """From first byte (or keep-alive reuse) to the complete request head (slowloris)."""
    keepalive: float = 60.0
    """Idle downstream keep-alive connection between requests."""
    body_idle: float = 30.0
    """Longest silence while a request body is being received (slow POST)."""
    connect: float = 5.0
    """Upstream TCP connect: 504 past it."""
    response: float = 60.0
    """Upstream silence while a response is awaited or streamed: 504 past it."""
    drain: float = 10.0
    """Graceful shutdown: longest wait for open exchanges."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyConfig:
    x_forwarded_for: bool = True
    x_forwarded_proto: bool = True
    via: str = "1.1 eg"
    """Value appended as a Via header; empty disables it."""
    server_header: str = ""
    """Replace the upstream's Server header; empty keeps it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerConfig:
    name: str
    address: str
    """host:port ([v6]:port); port 0 picks a free port (tests)."""
    protocol: str = "h1"
    """h1 (more arrive with the H2/H3 work)."""
    alt_svc: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointConfig:
    address: str
    """host:port of one backend."""
    weight: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolConfig:
    max_idle: int = 64
    """Idle upstream connections kept per endpoint per worker."""
    idle_timeout: float = 60.0
    max_age: float = 300.0
    """A pooled connection older than this is not reused."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthConfig:
    max_failures: int = 5
    """Consecutive connect failures that eject an endpoint (passive health)."""
    eject_seconds: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterConfig:
    name: str
    endpoints: tuple[EndpointConfig, ...]
    lb: str = "round_robin"
    protocol: str = "h1"
    pool: PoolConfig = field(default_factory=PoolConfig)
    health: HealthConfig = field(default_factory=HealthConfig)


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteConfig:
    cluster: str
    host: str = "*"
    """Exact host, ``*.suffix`` wildcard, or ``*`` for any (port is ignored)."""
    path_prefix: str = "/"


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    listeners: tuple[ListenerConfig, ...]
    clusters: tuple[ClusterConfig, ...]
    routes: tuple[RouteConfig, ...]
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    source: str = "<memory>"
    """Where the config was read from (for messages)."""
