"""Configuration: frozen dataclasses loaded from one TOML file.

The whole file is validated before anything binds. Workers receive the same frozen
``Config`` snapshot and each builds its own runtime tables from it (shared-nothing on
free-threaded CPython: nothing mutable, and nothing hot, is shared between threads).

``load(data, source)`` turns TOML bytes into a ``Config`` or raises one ``ConfigError``
whose message names the file, the line, the dotted key path, what was expected and
what was found::

    config/bad.toml:7: listeners[0].protocol: expected one of h1, h1s, h2c, https, quic, got 'h9'

Validation is strict: unknown keys are errors (a typo must not silently fall back to a
default), booleans are not integers, sizes and timeouts are positive, addresses are
``host:port`` with ``host`` an IPv4 address, a DNS name or a bracketed IPv6 address.
Line numbers of semantic errors come from a best-effort scan of the source text
(``_LineIndex``); syntax errors carry the line reported by ``tomllib``.
"""

from __future__ import annotations

import bisect
import difflib
import ipaddress
import math
import os
import re
import tomllib
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Final, NoReturn

from eg.core.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable

    from _typeshed import DataclassInstance

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
    """debug | info | warning | error."""
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
    """Response body cap: the downstream stream is aborted (never cleanly ended) past it."""
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
    drain_settle: float = 0.0
    """Graceful shutdown: seconds between /readyz turning 503 and the listeners closing,
    so load balancers and Kubernetes stop sending new connections first (0 = none)."""
    grpc_max: float = 300.0
    """Longest gRPC call: a client's ``grpc-timeout`` is clamped to it, and a call without
    one gets it (DEADLINE_EXCEEDED past it)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Http2Config:
    max_concurrent_streams: int = 256
    """SETTINGS_MAX_CONCURRENT_STREAMS we advertise; also the most streams eg opens on one
    upstream connection (REFUSED_STREAM past it)."""
    max_header_list_size: int = 64 * 1024
    """SETTINGS_MAX_HEADER_LIST_SIZE: decoded header bytes per block (HPACK-bomb cap)."""
    initial_window_size: int = 64 * 1024
    """Stream receive window we advertise; what a paused stream may still be sent."""
    zero_window_timeout: float = 30.0
    """Bytes waiting this long for a peer that never opens its window close the
    connection (GOAWAY ENHANCE_YOUR_CALM); a PING goes out half-way."""
    max_glitches: int = 200
    """Weighted protocol oddities per 60 s before GOAWAY ENHANCE_YOUR_CALM."""


@dataclass(frozen=True, slots=True, kw_only=True)
class QuicConfig:
    idle_timeout: float = 30.0
    """A QUIC connection with no packet for this long ends (max_idle_timeout, RFC 9000
    §10.1); also the idle timeout of upstream HTTP/3 connections."""
    max_udp_payload: int = 1350
    """Largest UDP payload sent: fits a 1500-byte path with IPv6 and tunnel headers."""
    max_requests_per_connection: int = 1000
    """Requests per HTTP/3 connection before GOAWAY; it closes once they are done."""
    max_field_section_size: int = 1024 * 1024
    """SETTINGS_MAX_FIELD_SECTION_SIZE we advertise and enforce (decoded bytes)."""
    qpack_max_table_capacity: int = 0
    """QPACK dynamic table we let peers use (0: static table and literals only)."""
    qpack_blocked_streams: int = 0
    """Streams a peer may leave blocked on QPACK table updates."""
    max_stream_data: int = 256 * 1024
    """Receive window per stream we advertise."""
    stream_hold_limit: int = 4 * 1024 * 1024
    """Body bytes one stream may deliver while the other side of its exchange is paused:
    qh3 grants stream credit as data arrives rather than as it is consumed, so eg holds
    what keeps coming, up to this, then resets the stream (H3_EXCESSIVE_LOAD)."""
    max_data: int = 4 * 1024 * 1024
    """Receive window per connection."""
    max_connections: int = 10000
    """QUIC connections per worker per listener; new ones are refused past it."""
    retry: str = "auto"
    """Stateless Retry (address validation): auto (when a worker has more than
    ``retry_threshold`` handshakes in progress), always, or never."""
    retry_threshold: int = 64
    """Handshakes in progress per worker above which ``retry = "auto"`` sends Retry."""
    retry_token_lifetime: float = 10.0
    """A Retry token is accepted this long after it was issued, from the same address."""
    steering: str = "auto"
    """How packets reach the worker owning their connection: auto (ebpf, else cbpf),
    ebpf, cbpf (first CID byte only) or userspace (hand-off between workers)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyConfig:
    x_forwarded_for: bool = True
    x_forwarded_proto: bool = True
    via: str = "1.1 eg"
    """Value appended as a Via header; empty disables it."""
    server_header: str = ""
    """Replace the upstream's Server header; empty keeps it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateConfig:
    cert: str
    """PEM certificate chain (leaf first); relative paths are relative to the config file."""
    key: str
    """PEM private key of that certificate."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    certificates: tuple[CertificateConfig, ...]
    """The first is the default; the others are chosen by SNI (their subjectAltNames)."""
    tls13_only: bool = False
    """Refuse TLS 1.2 (by default TLS 1.2 with ECDHE + AEAD suites and TLS 1.3)."""
    handshake_timeout: float = 5.0
    """A client that has not completed its handshake by then is disconnected."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerConfig:
    name: str
    """Unique among listeners; letters, digits, ``_``, ``-`` and ``.`` (metrics label)."""
    address: str
    """host:port ([v6]:port); port 0 picks a free port (tests)."""
    protocol: str = "h1"
    """h1 (cleartext HTTP/1.1), h2c (cleartext HTTP/2 with prior knowledge), https
    (TLS; ALPN picks h2 or http/1.1) or h1s (TLS; HTTP/1.1 only). TLS ones need ``tls``."""
    tls: TlsConfig | None = None
    """Certificates and TLS settings; required by https and h1s, refused otherwise."""
    alt_svc: str = ""
    """Alt-Svc header value (RFC 7838) sent on every response of this listener, replacing
    the upstream's; empty sends none and lets the upstream's through."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointConfig:
    address: str
    """host:port of one backend."""
    weight: int = 1
    """Relative share of requests (>= 1)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolConfig:
    max_idle: int = 1024
    """Idle upstream connections kept per endpoint per worker. Set it at or above the
    requests a worker has in flight to one endpoint at peak: below that, completions
    that arrive together overflow the pool and the next requests open new connections
    (measured with 160 in flight and 64 kept: one new connection per 9 requests). Idle
    ones are closed after ``idle_timeout``, so the pool only holds what a recent peak
    used."""
    idle_timeout: float = 60.0
    """An idle pooled connection is closed after this many seconds."""
    max_age: float = 300.0
    """A pooled connection older than this is not reused."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthConfig:
    max_failures: int = 5
    """Consecutive connect failures that eject an endpoint (passive health)."""
    eject_seconds: float = 10.0
    """How long an ejected endpoint is skipped before it is tried again."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamTlsConfig:
    verify: bool = True
    """Check the endpoint's certificate chain and name; false turns every check off."""
    ca_file: str = ""
    """PEM bundle of trusted CAs; empty uses the system trust store."""
    server_name: str = ""
    """SNI sent and name checked; empty uses each endpoint's host."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterConfig:
    name: str
    """Unique among clusters; letters, digits, ``_``, ``-`` and ``.``."""
    endpoints: tuple[EndpointConfig, ...]
    """At least one; TOML accepts ``"host:port"`` or ``{address = ..., weight = ...}``."""
    lb: str = "round_robin"
    """Load-balancing policy over the endpoints."""
    protocol: str = "h1"
    """How eg speaks to the endpoints: h1 (cleartext HTTP/1.1), h1s (HTTP/1.1 over TLS),
    h2 (HTTP/2 over TLS, ALPN h2) or h2c (cleartext HTTP/2 with prior knowledge)."""
    tls: UpstreamTlsConfig | None = None
    """How the endpoints' certificates are checked (h1s and h2; defaults verify against
    the system trust store and the endpoint host)."""
    pool: PoolConfig = field(default_factory=PoolConfig)
    health: HealthConfig = field(default_factory=HealthConfig)


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteConfig:
    cluster: str
    """Name of the cluster that serves matching requests."""
    host: str = "*"
    """Exact host, ``*.suffix`` wildcard, or ``*`` for any (port is ignored); ``load``
    lowercases it."""
    path_prefix: str = "/"
    """Matches a request path that starts with it (plain string prefix)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    listeners: tuple[ListenerConfig, ...]
    """At least one."""
    clusters: tuple[ClusterConfig, ...]
    routes: tuple[RouteConfig, ...]
    """Exact hosts beat ``*.suffix`` beats ``*``; then the longest path prefix wins."""
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    http2: Http2Config = field(default_factory=Http2Config)
    quic: QuicConfig = field(default_factory=QuicConfig)
    source: str = "<memory>"
    """Where the config was read from (for messages)."""


# --- validation ---------------------------------------------------------------------------

# Accepted enumerations; each grows as the matching feature lands.
LISTENER_PROTOCOLS: Final = ("h1", "h1s", "h2c", "https", "quic")
#: Listener protocols that run over TLS (QUIC's is TLS 1.3 inside QUIC).
TLS_PROTOCOLS: Final = ("h1s", "https", "quic")
CLUSTER_PROTOCOLS: Final = ("h1", "h1s", "h2", "h2c", "h3")
#: Cluster protocols that run over TLS.
UPSTREAM_TLS_PROTOCOLS: Final = ("h1s", "h2", "h3")
RETRY_MODES: Final = ("auto", "always", "never")
STEERING_MODES: Final = ("auto", "ebpf", "cbpf", "userspace")
#: QUIC's smallest allowed max_udp_payload_size (RFC 9000 §18.2).
MIN_UDP_PAYLOAD: Final = 1200
LB_POLICIES: Final = ("round_robin",)
LOG_FORMATS: Final = ("json", "text", "plain")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")

MIN_HEAD_SIZE: Final = 1024
"""Smallest accepted ``limits.max_head_size``: a request line, Host and a few headers."""
MAX_PORT: Final = 65535
MAX_H2_WINDOW: Final = 2**31 - 1
"""RFC 9113 section 6.9.1: the largest flow-control window."""
MAX_DNS_LABEL: Final = 63
"""RFC 1035 section 2.3.4: a label is at most 63 octets."""
MAX_DNS_NAME: Final = 253
"""RFC 1035 section 2.3.4: 255 octets on the wire, 253 characters in text form."""
TOKEN_HASH_LENGTH: Final = 64
"""Hex digits of a SHA-256 digest."""

_HEX_DIGITS: Final = "0123456789abcdef"
_NAME_CHARS: Final = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-."
_DNS_CHARS: Final = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"


def load(data: bytes, source: str = "<memory>") -> Config:
    """Parse and validate one TOML document.

    Pure: nothing is opened, bound or started, so a bad file never leaves a half-up
    gateway behind.

    Args:
        data: the raw file contents (UTF-8; a leading byte-order mark is ignored).
        source: where ``data`` came from; it starts every error message and is kept in
            ``Config.source``.

    Returns:
        The frozen, fully validated ``Config``.

    Raises:
        ConfigError: the first problem found, as ``source:line: key.path: expected X,
            got Y`` (the line is left out when no line holds the key).
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{source}:{line}: expected UTF-8 text, got the byte {data[exc.start]:#04x}"
        ) from exc
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_syntax_message(source, text, str(exc))) from exc
    return _Checker(source, text).build(document)


def split_address(address: str) -> tuple[str, int]:
    """Split ``host:port`` into its host and its port.

    Args:
        address: ``ipv4:port``, ``dns-name:port`` or ``[ipv6]:port``.

    Returns:
        ``(host, port)``; an IPv6 host comes back without its brackets.

    Raises:
        ValueError: the syntax is wrong; the message is what was expected instead.
    """
    host, colon, port_text = address.rpartition(":")
    if not colon:
        raise ValueError('"host:port"')
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= len("65535")):
        raise ValueError("a port number 0-65535 after the last ':'")
    port = int(port_text)
    if port > MAX_PORT:
        raise ValueError("a port number 0-65535 after the last ':'")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("an IPv6 address inside [...]") from None
        return host, port
    if ":" in host:
        raise ValueError('an IPv6 address in brackets, as "[::1]:port"')
    if not host:
        raise ValueError("a host before the port (0.0.0.0 or [::] for every interface)")
    if not (_is_ipv4(host) or _is_dns_name(host)):
        raise ValueError("an IPv4 address, a DNS name or [IPv6] before the port")
    return host, port


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (as returned by ``split_address``) is local to this machine.

    ``localhost``, 127.0.0.0/8 and ::1 count; every other name or address does not.
    """
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _is_dns_name(name: str) -> bool:
    """RFC 1123 host name syntax; an all-numeric last label is a mistyped IPv4 address."""
    name = name.removesuffix(".")
    if not name or len(name) > MAX_DNS_NAME:
        return False
    labels = name.split(".")
    for label in labels:
        if not 0 < len(label) <= MAX_DNS_LABEL or label[0] == "-" or label[-1] == "-":
            return False
        if any(char not in _DNS_CHARS for char in label):
            return False
    return not labels[-1].isdigit()


def _is_field_value(value: str) -> bool:
    """A header value we can emit verbatim: visible ASCII, spaces and tabs only."""
    return all(char == "\t" or " " <= char <= "~" for char in value)


def _syntax_message(source: str, text: str, detail: str) -> str:
    """Put tomllib's ``(at line N, column M)`` suffix where our messages keep the line."""
    match = re.search(r" \(at line (\d+), column (\d+)\)$", detail)
    if match is not None:
        detail = detail[: match.start()]
        return f"{source}:{match[1]}: TOML syntax error at column {match[2]}: {detail}"
    detail = detail.removesuffix(" (at end of document)")
    line = text.count("\n") + 1
    return f"{source}:{line}: TOML syntax error at end of document: {detail}"


def _show(value: object) -> str:
    """A found value, as TOML would spell it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return str(value)


def _typed(value: object) -> str:
    """A found value with its TOML type, for type mismatches."""
    if isinstance(value, bool):
        kind = "a boolean"
    elif isinstance(value, int):
        kind = "an integer"
    elif isinstance(value, float):
        kind = "a float"
    elif isinstance(value, str | list | dict):
        return _show(value)
    else:
        kind = "a date/time"
    return f"{_show(value)} ({kind})"


class _Checker:
    """Validates a parsed document and builds the ``Config``; the first problem raises."""

    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self._text = text

    def fail(self, path: str, problem: str) -> NoReturn:
        """Raise the ConfigError for ``path``, locating its line in the source text."""
        line = _LineIndex(self._text).line_of(path)
        where = self.source if line is None else f"{self.source}:{line}"
        raise ConfigError(f"{where}: {path}: {problem}")

    def build(self, document: dict[str, object]) -> Config:
        top = _Table(self, document, "", Config)
        runtime = self._runtime(top.table("runtime", RuntimeConfig))
        admin = self._admin(top.table("admin", AdminConfig))
        observability = self._observability(top.table("observability", ObservabilityConfig), admin)
        limits = self._limits(top.table("limits", LimitsConfig))
        timeouts = self._timeouts(top.table("timeouts", TimeoutsConfig))
        proxy = self._proxy(top.table("proxy", ProxyConfig))
        http2 = self._http2(top.table("http2", Http2Config))
        quic = self._quic(top.table("quic", QuicConfig))
        listeners = self._listeners(top.tables("listeners", ListenerConfig, required=True))
        clusters = self._clusters(top.tables("clusters", ClusterConfig, required=False))
        routes = self._routes(top.tables("routes", RouteConfig, required=False), clusters)
        return Config(
            listeners=listeners,
            clusters=clusters,
            routes=routes,
            runtime=runtime,
            observability=observability,
            admin=admin,
            limits=limits,
            timeouts=timeouts,
            proxy=proxy,
            http2=http2,
            quic=quic,
            source=self.source,
        )

    def _runtime(self, table: _Table) -> RuntimeConfig:
        return RuntimeConfig(
            workers=table.integer("workers", minimum=0),
            pin=table.flag("pin"),
            allow_gil=table.flag("allow_gil"),
        )

    def _admin(self, table: _Table) -> AdminConfig:
        token_hash = table.text("api_token_hash")
        if token_hash and (
            len(token_hash) != TOKEN_HASH_LENGTH or any(c not in _HEX_DIGITS for c in token_hash)
        ):
            # Never echo the value: it may be the token itself pasted by mistake.
            self.fail(
                table.path_of("api_token_hash"),
                f"expected {TOKEN_HASH_LENGTH} lowercase hex digits (the SHA-256 of the "
                f"token, not the token), got a {len(token_hash)}-character value",
            )
        return AdminConfig(api_token_hash=token_hash)

    def _observability(self, table: _Table, admin: AdminConfig) -> ObservabilityConfig:
        metrics_bind = table.text("metrics_bind")
        if metrics_bind:
            host, _ = table.address("metrics_bind", allow_port_zero=True)
            if not admin.api_token_hash and not is_loopback_host(host):
                self.fail(
                    table.path_of("metrics_bind"),
                    "expected a loopback address (127.0.0.0/8, [::1] or localhost) unless "
                    f"admin.api_token_hash is set, got {metrics_bind!r}",
                )
        return ObservabilityConfig(
            metrics_bind=metrics_bind,
            log_format=table.choice("log_format", LOG_FORMATS),
            log_level=table.choice("log_level", LOG_LEVELS),
            access_log=table.flag("access_log"),
        )

    def _limits(self, table: _Table) -> LimitsConfig:
        limits = LimitsConfig(
            max_request_body=table.integer("max_request_body", minimum=1),
            max_response_body=table.integer("max_response_body", minimum=1),
            max_head_size=table.integer("max_head_size", minimum=MIN_HEAD_SIZE),
            max_headers=table.integer("max_headers", minimum=1),
            max_requests_per_connection=table.integer("max_requests_per_connection", minimum=1),
            buffer_high=table.integer("buffer_high", minimum=1),
            buffer_limit=table.integer("buffer_limit", minimum=1),
            max_connections=table.integer("max_connections", minimum=1),
        )
        if limits.buffer_high > limits.buffer_limit:
            key = "buffer_high" if table.has("buffer_high") else "buffer_limit"
            self.fail(
                table.path_of(key),
                f"expected buffer_high <= buffer_limit, got buffer_high = "
                f"{limits.buffer_high} and buffer_limit = {limits.buffer_limit}",
            )
        return limits

    def _timeouts(self, table: _Table) -> TimeoutsConfig:
        return TimeoutsConfig(
            header=table.seconds("header"),
            keepalive=table.seconds("keepalive"),
            body_idle=table.seconds("body_idle"),
            connect=table.seconds("connect"),
            response=table.seconds("response"),
            drain=table.seconds("drain"),
            drain_settle=table.seconds("drain_settle", allow_zero=True),
            grpc_max=table.seconds("grpc_max"),
        )

    def _http2(self, table: _Table) -> Http2Config:
        window = table.integer("initial_window_size", minimum=1)
        if window > MAX_H2_WINDOW:
            self.fail(table.path_of("initial_window_size"),
                      f"expected an integer <= {MAX_H2_WINDOW}, got {window}")
        return Http2Config(
            max_concurrent_streams=table.integer("max_concurrent_streams", minimum=1),
            max_header_list_size=table.integer("max_header_list_size", minimum=MIN_HEAD_SIZE),
            initial_window_size=window,
            zero_window_timeout=table.seconds("zero_window_timeout"),
            max_glitches=table.integer("max_glitches", minimum=1),
        )

    def _quic(self, table: _Table) -> QuicConfig:
        payload = table.integer("max_udp_payload", minimum=MIN_UDP_PAYLOAD)
        if payload > 65527:
            self.fail(table.path_of("max_udp_payload"),
                      f"expected an integer <= 65527, got {payload}")
        return QuicConfig(
            idle_timeout=table.seconds("idle_timeout"),
            max_udp_payload=payload,
            max_requests_per_connection=table.integer("max_requests_per_connection",
                                                      minimum=1),
            max_field_section_size=table.integer("max_field_section_size",
                                                 minimum=MIN_HEAD_SIZE),
            qpack_max_table_capacity=table.integer("qpack_max_table_capacity", minimum=0),
            qpack_blocked_streams=table.integer("qpack_blocked_streams", minimum=0),
            max_stream_data=table.integer("max_stream_data", minimum=1024),
            stream_hold_limit=table.integer("stream_hold_limit", minimum=1024),
            max_data=table.integer("max_data", minimum=1024),
            max_connections=table.integer("max_connections", minimum=1),
            retry=table.choice("retry", RETRY_MODES),
            retry_threshold=table.integer("retry_threshold", minimum=0),
            retry_token_lifetime=table.seconds("retry_token_lifetime"),
            steering=table.choice("steering", STEERING_MODES),
        )

    def _proxy(self, table: _Table) -> ProxyConfig:
        return ProxyConfig(
            x_forwarded_for=table.flag("x_forwarded_for"),
            x_forwarded_proto=table.flag("x_forwarded_proto"),
            via=table.field_value("via"),
            server_header=table.field_value("server_header"),
        )

    def _listeners(self, tables: list[_Table]) -> tuple[ListenerConfig, ...]:
        listeners: list[ListenerConfig] = []
        seen: dict[str, str] = {}
        for table in tables:
            name = table.name("name", "listener", seen)
            _, address = table.address("address", allow_port_zero=True)
            protocol = table.choice("protocol", LISTENER_PROTOCOLS)
            listeners.append(
                ListenerConfig(
                    name=name,
                    address=address,
                    protocol=protocol,
                    tls=self._tls(table, protocol),
                    alt_svc=table.field_value("alt_svc"),
                )
            )
        return tuple(listeners)

    def _tls(self, listener: _Table, protocol: str) -> TlsConfig | None:
        if protocol not in TLS_PROTOCOLS:
            if listener.has("tls"):
                self.fail(listener.path_of("tls"),
                          f"expected no [tls] table for protocol {protocol!r} "
                          f"(use one of {', '.join(TLS_PROTOCOLS)} for TLS)")
            return None
        if not listener.has("tls"):
            self.fail(listener.path_of("tls"),
                      f"expected a [tls] table with certificates for protocol {protocol!r}, "
                      "got nothing")
        table = listener.table("tls", TlsConfig)
        certs = table.tables("certificates", CertificateConfig, required=True)
        base = os.path.dirname(self.source) if self.source != "<memory>" else ""
        return TlsConfig(
            certificates=tuple(
                CertificateConfig(
                    cert=os.path.join(base, c.text("cert", expected="a PEM file path")),
                    key=os.path.join(base, c.text("key", expected="a PEM file path")),
                )
                for c in certs
            ),
            tls13_only=table.flag("tls13_only"),
            handshake_timeout=table.seconds("handshake_timeout"),
        )

    def _upstream_tls(self, cluster: _Table, protocol: str) -> UpstreamTlsConfig | None:
        if protocol not in UPSTREAM_TLS_PROTOCOLS:
            if cluster.has("tls"):
                self.fail(cluster.path_of("tls"),
                          f"expected no [tls] table for protocol {protocol!r} "
                          f"(use one of {', '.join(UPSTREAM_TLS_PROTOCOLS)} for TLS)")
            return None
        table = cluster.table("tls", UpstreamTlsConfig)
        ca_file = table.text("ca_file", expected="a PEM file path")
        if ca_file:
            base = os.path.dirname(self.source) if self.source != "<memory>" else ""
            ca_file = os.path.join(base, ca_file)
        return UpstreamTlsConfig(
            verify=table.flag("verify"),
            ca_file=ca_file,
            server_name=table.text("server_name", expected="a DNS name"),
        )

    def _clusters(self, tables: list[_Table]) -> tuple[ClusterConfig, ...]:
        clusters: list[ClusterConfig] = []
        seen: dict[str, str] = {}
        for table in tables:
            name = table.name("name", "cluster", seen)
            endpoints = self._endpoints(table)
            pool = table.table("pool", PoolConfig)
            health = table.table("health", HealthConfig)
            protocol = table.choice("protocol", CLUSTER_PROTOCOLS)
            clusters.append(
                ClusterConfig(
                    name=name,
                    endpoints=endpoints,
                    lb=table.choice("lb", LB_POLICIES),
                    protocol=protocol,
                    tls=self._upstream_tls(table, protocol),
                    pool=PoolConfig(
                        max_idle=pool.integer("max_idle", minimum=0),
                        idle_timeout=pool.seconds("idle_timeout"),
                        max_age=pool.seconds("max_age"),
                    ),
                    health=HealthConfig(
                        max_failures=health.integer("max_failures", minimum=1),
                        eject_seconds=health.seconds("eject_seconds"),
                    ),
                )
            )
        return tuple(clusters)

    def _endpoints(self, cluster: _Table) -> tuple[EndpointConfig, ...]:
        expected = 'an array of "host:port" strings or {address = "host:port", weight = N}'
        path = cluster.path_of("endpoints")
        raw = cluster.value("endpoints", expected)
        if not isinstance(raw, list):
            self.fail(path, f"expected {expected}, got {_typed(raw)}")
        if not raw:
            self.fail(path, "expected at least one endpoint, got an empty array")
        endpoints: list[EndpointConfig] = []
        for index, item in enumerate(raw):
            item_path = f"{path}[{index}]"
            if isinstance(item, str):
                self.check_address(item_path, item, allow_port_zero=False)
                endpoints.append(EndpointConfig(address=item))
            elif isinstance(item, dict):
                table = _Table(self, item, item_path, EndpointConfig)
                _, address = table.address("address", allow_port_zero=False)
                endpoints.append(
                    EndpointConfig(
                        address=address,
                        weight=table.integer("weight", minimum=1),
                    )
                )
            else:
                self.fail(
                    item_path,
                    'expected "host:port" or {address = "host:port", weight = N}, '
                    f"got {_typed(item)}",
                )
        return tuple(endpoints)

    def _routes(
        self, tables: list[_Table], clusters: tuple[ClusterConfig, ...]
    ) -> tuple[RouteConfig, ...]:
        names = [cluster.name for cluster in clusters]
        routes: list[RouteConfig] = []
        for table in tables:
            cluster = table.text("cluster", expected="the name of a cluster")
            if cluster not in names:
                known = ", ".join(names) if names else "none are defined"
                self.fail(
                    table.path_of("cluster"),
                    f"expected the name of a [[clusters]] entry ({known}), got {cluster!r}",
                )
            routes.append(
                RouteConfig(
                    cluster=cluster,
                    host=self._route_host(table),
                    path_prefix=self._path_prefix(table),
                )
            )
        return tuple(routes)

    def _route_host(self, table: _Table) -> str:
        expected = '"*", an exact host name or "*.suffix"'
        host = table.text("host", expected=expected)
        exact = host.removeprefix("*.")
        if host != "*" and not (_is_dns_name(exact) or (exact == host and _is_ip_literal(host))):
            self.fail(table.path_of("host"), f"expected {expected}, got {host!r}")
        return host.lower()

    def _path_prefix(self, table: _Table) -> str:
        expected = "a path starting with '/' (no spaces or control characters)"
        prefix = table.text("path_prefix", expected=expected)
        if not prefix.startswith("/") or any(not "!" <= char <= "~" for char in prefix):
            self.fail(table.path_of("path_prefix"), f"expected {expected}, got {prefix!r}")
        return prefix

    def check_address(self, path: str, address: str, *, allow_port_zero: bool) -> str:
        """Validate ``host:port`` at ``path`` and return the host."""
        try:
            host, port = split_address(address)
        except ValueError as exc:
            self.fail(path, f"expected {exc}, got {address!r}")
        if port == 0 and not allow_port_zero:
            self.fail(path, f"expected a port number 1-65535, got {address!r}")
        return host


def _is_ip_literal(host: str) -> bool:
    """An IPv4 address or a bracketed IPv6 address, as a Host header carries them."""
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    return _is_ipv4(host)


class _Table:
    """One TOML table being read against one dataclass schema.

    Unknown keys are rejected on construction; each accessor returns the value or the
    schema default, checked for type and range.
    """

    def __init__(
        self,
        checker: _Checker,
        raw: dict[str, object],
        path: str,
        schema: type[DataclassInstance],
    ) -> None:
        self._checker = checker
        self._raw = raw
        self._path = path
        self._defaults = {item.name: item.default for item in fields(schema)}
        self._defaults.pop("source", None)
        for key in raw:
            if key not in self._defaults:
                known = list(self._defaults)
                problem = f"unknown key {key!r}; expected one of {', '.join(known)}"
                close = difflib.get_close_matches(key, known, n=1)
                if close:
                    problem += f" (did you mean {close[0]!r}?)"
                checker.fail(self.path_of(key), problem)

    def path_of(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def has(self, key: str) -> bool:
        return key in self._raw

    def value(self, key: str, expected: str) -> object:
        """The raw value, else the schema default; fail if a required key is absent."""
        if key in self._raw:
            return self._raw[key]
        default = self._defaults[key]
        if default is MISSING:
            self._checker.fail(
                self.path_of(key), f"expected {expected}, got nothing (the key is required)"
            )
        return default

    def _fail(self, key: str, expected: str, found: str) -> NoReturn:
        self._checker.fail(self.path_of(key), f"expected {expected}, got {found}")

    def integer(self, key: str, *, minimum: int) -> int:
        expected = f"an integer >= {minimum}"
        value = self.value(key, expected)
        if isinstance(value, bool) or not isinstance(value, int):
            self._fail(key, expected, _typed(value))
        if value < minimum:
            self._fail(key, expected, _show(value))
        return value

    def seconds(self, key: str, *, allow_zero: bool = False) -> float:
        expected = "0 or more seconds" if allow_zero else "a positive number of seconds"
        value = self.value(key, expected)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self._fail(key, expected, _typed(value))
        if not ((value > 0 or (allow_zero and value == 0)) and math.isfinite(value)):
            self._fail(key, expected, _show(value))
        return float(value)

    def flag(self, key: str) -> bool:
        value = self.value(key, "true or false")
        if not isinstance(value, bool):
            self._fail(key, "true or false", _typed(value))
        return value

    def text(self, key: str, *, expected: str = "a string") -> str:
        value = self.value(key, expected)
        if not isinstance(value, str):
            self._fail(key, expected, _typed(value))
        return value

    def choice(self, key: str, options: tuple[str, ...]) -> str:
        expected = f"one of {', '.join(options)}"
        value = self.text(key, expected=expected)
        if value not in options:
            self._fail(key, expected, _show(value))
        return value

    def field_value(self, key: str) -> str:
        expected = "a header value (printable ASCII, no line breaks)"
        value = self.text(key, expected=expected)
        if not _is_field_value(value):
            self._fail(key, expected, _show(value))
        return value

    def address(self, key: str, *, allow_port_zero: bool) -> tuple[str, str]:
        """Check a ``host:port`` string; returns ``(host, address)``."""
        address = self.text(key, expected='a "host:port" string')
        host = self._checker.check_address(
            self.path_of(key), address, allow_port_zero=allow_port_zero
        )
        return host, address

    def name(self, key: str, kind: str, seen: dict[str, str]) -> str:
        """A unique name made of letters, digits, '_', '-' and '.'; ``seen`` maps name to path."""
        expected = f"a {kind} name of letters, digits, '_', '-' or '.'"
        value = self.text(key, expected=expected)
        if not value or any(char not in _NAME_CHARS for char in value):
            self._fail(key, expected, _show(value))
        if value in seen:
            self._fail(key, f"a unique {kind} name", f"{value!r} (also used by {seen[value]})")
        seen[value] = self._path
        return value

    def table(self, key: str, schema: type[DataclassInstance]) -> _Table:
        """A sub-table (absent means all defaults)."""
        raw = self._raw.get(key, {})
        if not isinstance(raw, dict):
            self._fail(key, f"a table [{self.path_of(key)}]", _typed(raw))
        return _Table(self._checker, raw, self.path_of(key), schema)

    def tables(self, key: str, schema: type[DataclassInstance], *, required: bool) -> list[_Table]:
        """An array of tables ``[[key]]``; ``required`` means at least one entry."""
        expected = f"at least one [[{key}]] table" if required else f"an array of [[{key}]] tables"
        raw = self._raw.get(key, [])
        if not isinstance(raw, list):
            self._fail(key, expected, _typed(raw))
        if required and not raw:
            self._fail(key, expected, "none" if key not in self._raw else "an empty array")
        result: list[_Table] = []
        for index, item in enumerate(raw):
            path = f"{self.path_of(key)}[{index}]"
            if not isinstance(item, dict):
                self._checker.fail(path, f"expected a table, got {_typed(item)}")
            result.append(_Table(self._checker, item, path, schema))
        return result


# --- locating keys in the source text -----------------------------------------------------

_BARE_KEY_CHARS: Final = _DNS_CHARS + "_"
_SCALAR_END: Final = ",]}\n#"


class _LineIndex:
    """Best-effort map from dotted key paths (``clusters[1].endpoints[0]``) to lines.

    The text has already parsed as TOML, so a forgiving scanner is enough: it follows
    ``[table]`` and ``[[array]]`` headers, bare, quoted and dotted keys, arrays and inline
    tables, and skips strings and comments. ``line_of`` falls back to the nearest
    ancestor it placed (a missing key is reported at its table's header).
    """

    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0
        self._newlines = [i for i, char in enumerate(text) if char == "\n"]
        self._lines: dict[str, int] = {}
        self._array_counts: dict[str, int] = {}
        self._scan()

    def line_of(self, path: str) -> int | None:
        """The line defining ``path`` or its nearest placed ancestor, if any."""
        while path not in self._lines:
            cut = max(path.rfind("."), path.rfind("["))
            if cut <= 0:
                return None
            path = path[:cut]
        return self._lines[path]

    def _record(self, path: list[str | int], pos: int) -> None:
        line = bisect.bisect_left(self._newlines, pos) + 1
        self._lines.setdefault(_format_path(path), line)

    def _skip(self, *, newlines: bool) -> None:
        """Skip blanks and comments (and line breaks when ``newlines``)."""
        text = self._text
        blanks = " \t\r\n" if newlines else " \t"
        while self._pos < len(text):
            char = text[self._pos]
            if char in blanks:
                self._pos += 1
            elif char == "#":
                end = text.find("\n", self._pos)
                self._pos = len(text) if end < 0 else end
            else:
                return

    def _scan(self) -> None:
        prefix: list[str | int] = []
        while True:
            self._skip(newlines=True)
            start = self._pos
            if start >= len(self._text):
                return
            if self._text[start] == "[":
                prefix = self._header()
            else:
                self._key_value(prefix)
            if self._pos == start:  # never loop on text the scanner does not follow
                self._pos += 1

    def _header(self) -> list[str | int]:
        start = self._pos
        is_array = self._text.startswith("[[", start)
        self._pos += 2 if is_array else 1
        keys = self._key()
        end = self._text.find("\n", self._pos)
        self._pos = len(self._text) if end < 0 else end
        path: list[str | int] = []
        for i, key in enumerate(keys):
            path.append(key)
            self._record(path, start)
            name = _format_path(path)
            if is_array and i == len(keys) - 1:
                count = self._array_counts.get(name, 0)
                self._array_counts[name] = count + 1
                path.append(count)
            elif name in self._array_counts:
                path.append(self._array_counts[name] - 1)
        self._record(path, start)
        return path

    def _key(self) -> list[str]:
        """A dotted key: bare and quoted parts separated by dots."""
        text = self._text
        parts: list[str] = []
        while True:
            self._skip(newlines=False)
            start = self._pos
            if start < len(text) and text[start] in "\"'":
                parts.append(self._string())
            else:
                while self._pos < len(text) and text[self._pos] in _BARE_KEY_CHARS:
                    self._pos += 1
                parts.append(text[start : self._pos])
            self._skip(newlines=False)
            if not text.startswith(".", self._pos):
                return parts
            self._pos += 1

    def _string(self) -> str:
        """Skip a string of any of the four kinds; return its raw contents."""
        text = self._text
        quote = text[self._pos]
        delimiter = quote * 3 if text.startswith(quote * 3, self._pos) else quote
        self._pos += len(delimiter)
        start = self._pos
        while self._pos < len(text) and not text.startswith(delimiter, self._pos):
            self._pos += 2 if quote == '"' and text[self._pos] == "\\" else 1
        end = self._pos
        self._pos += len(delimiter)
        if len(delimiter) == 3:  # up to two quotes may end the contents: """a""""
            while text.startswith(quote, self._pos) and self._pos - end < 5:
                self._pos += 1
        return text[start:end]

    def _key_value(self, prefix: list[str | int]) -> None:
        start = self._pos
        path = prefix + list(self._key())
        for depth in range(len(prefix) + 1, len(path) + 1):
            self._record(path[:depth], start)  # a.b.c = 1 also places a and a.b
        self._skip(newlines=False)
        if self._text.startswith("=", self._pos):
            self._pos += 1
            self._value(path)

    def _value(self, path: list[str | int]) -> None:
        self._skip(newlines=False)
        text = self._text
        if self._pos >= len(text):
            return
        char = text[self._pos]
        if char == "[":
            self._pos += 1
            self._items(path, "]", self._array_item)
        elif char == "{":
            self._pos += 1
            self._items(path, "}", self._inline_item)
        elif char in "\"'":
            self._string()
        else:
            while self._pos < len(text) and text[self._pos] not in _SCALAR_END:
                self._pos += 1

    def _items(
        self, path: list[str | int], close: str, item: Callable[[list[str | int], int], None]
    ) -> None:
        """The comma-separated items of an array or inline table, up to ``close``."""
        index = 0
        while True:
            self._skip(newlines=True)
            start = self._pos
            if start >= len(self._text):
                return
            if self._text[start] == close:
                self._pos += 1
                return
            item(path, index)
            index += 1
            self._skip(newlines=True)
            # Step over the comma; on text we do not follow, step anyway so the scan ends.
            if self._text.startswith(",", self._pos) or self._pos == start:
                self._pos += 1

    def _array_item(self, path: list[str | int], index: int) -> None:
        self._record([*path, index], self._pos)
        self._value([*path, index])

    def _inline_item(self, path: list[str | int], index: int) -> None:
        self._key_value(path)


def _format_path(path: list[str | int]) -> str:
    """``["clusters", 1, "endpoints", 0]`` -> ``clusters[1].endpoints[0]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


# --- reading a file (the one place this module touches the file system) -------------------


def load_file(path: str | os.PathLike[str]) -> Config:
    """Read and validate the config file at ``path``.

    Args:
        path: the TOML file; as given, it names the file in every error message.

    Returns:
        The validated ``Config`` with ``source`` set to ``path``.

    Raises:
        ConfigError: the file cannot be read, or ``load`` rejected its contents.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the config file: {exc.strerror}") from exc
    return load(data, source)
