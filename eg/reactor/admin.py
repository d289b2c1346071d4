"""The admin listener: ``/metrics`` and the Kubernetes-style probes.

This is not the data path. It runs the stdlib ``ThreadingHTTPServer`` in one daemon
thread of its own (plus one short-lived thread per admin connection), never in a worker,
so a slow scrape cannot stall proxying. The scrape itself merges the workers' metric
shards without locking them (see ``eg.core.metrics``).

Routes (GET or HEAD; any other method gets 405):

    /metrics   200 Prometheus text format 0.0.4. When a token hash is configured it needs
               ``Authorization: Bearer <token>``: a missing or malformed header gets 401
               with ``WWW-Authenticate: Bearer``, a wrong token 403.
    /livez     200 while the process can answer at all.
    /healthz   200 if every worker thread is alive, else 503.
    /readyz    200 once started and not draining, else 503 (load balancers stop sending).
    /startupz  200 once started, else 503.

The probes never need the token. Anything else is 404.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import socket
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["METRICS_CONTENT_TYPE", "AdminServer", "AdminState"]

log = logging.getLogger("eg.admin")

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text exposition format that ``eg.core.metrics.render`` produces."""

REQUEST_TIMEOUT = 10.0
"""Seconds an admin connection may idle mid-request (the data path's header read limit)."""

MAX_CONNECTIONS = 32
"""Concurrent admin connections; more are closed at once. A scraper and a few probers need
a handful, and each one costs a thread."""

POLL_INTERVAL = 0.2
"""Seconds between shutdown checks in ``serve_forever``; bounds how long ``stop`` waits."""


def _always_alive() -> bool:
    return True


@dataclass(slots=True, kw_only=True)
class AdminState:
    """What the probes report. Written by the supervisor, read by the admin thread.

    Each field is a single reference, so a probe sees either the old or the new value.
    """

    started: bool = False
    """Set once every worker is accepting; flips /startupz and (with draining) /readyz."""
    draining: bool = False
    """Set at SIGTERM, before listeners close, so /readyz fails first."""
    workers_alive: Callable[[], bool] = _always_alive
    """Returns whether every worker thread is still running; backs /healthz."""


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer carrying the admin context and the resolved address family."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 64  # listen backlog; socketserver's default of 5 drops SYN bursts

    def __init__(
        self,
        address: tuple[Any, ...],
        *,
        family: socket.AddressFamily,
        token_hash: str,
        render_metrics: Callable[[], bytes],
        state: AdminState,
    ) -> None:
        self.address_family = family
        self.token_hash = token_hash
        self.render_metrics = render_metrics
        self.state = state
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would also do a reverse DNS lookup (getfqdn) of the bind
        # address, which can stall start-up; the name is only used for CGI variables.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("admin connection from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT
    server_version = "eg-admin"
    sys_version = ""

    def do_GET(self) -> None:
        self._route(head=False)

    def do_HEAD(self) -> None:
        self._route(head=True)

    def __getattr__(self, name: str) -> Callable[[], None]:
        # BaseHTTPRequestHandler dispatches on ``do_<METHOD>`` and answers 501 when there is
        # none; every method other than GET and HEAD is a 405 here instead.
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the stdlib's per-request line on stderr."""

    def _not_allowed(self) -> None:
        self.close_connection = True  # an unread request body must not become a request
        self._reply(HTTPStatus.METHOD_NOT_ALLOWED, b"method not allowed\n", {"Allow": "GET, HEAD"})

    def _route(self, *, head: bool) -> None:
        path = self.path.split("?", 1)[0]
        state = self.server.state
        if path == "/metrics":
            self._metrics(head=head)
        elif path == "/livez":
            self._probe(True, head=head)
        elif path == "/healthz":
            self._probe(state.workers_alive(), head=head)
        elif path == "/readyz":
            self._probe(state.started and not state.draining, head=head)
        elif path == "/startupz":
            self._probe(state.started, head=head)
        else:
            self._reply(HTTPStatus.NOT_FOUND, b"not found\n", head=head)

    def _probe(self, ok: bool, *, head: bool) -> None:
        if ok:
            self._reply(HTTPStatus.OK, b"ok\n", head=head)
        else:
            self._reply(HTTPStatus.SERVICE_UNAVAILABLE, b"unavailable\n", head=head)

    def _metrics(self, *, head: bool) -> None:
        token_hash = self.server.token_hash
        if token_hash:
            scheme, _, token = (self.headers.get("Authorization") or "").strip().partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                self._reply(
                    HTTPStatus.UNAUTHORIZED,
                    b"bearer token required\n",
                    {"WWW-Authenticate": "Bearer"},
                    head=head,
                )
                return
            # Header values arrive decoded as latin-1, so this restores the original bytes.
            digest = hashlib.sha256(token.encode("latin-1", "replace")).hexdigest()
            if not hmac.compare_digest(digest, token_hash):
                self._reply(HTTPStatus.FORBIDDEN, b"forbidden\n", head=head)
                return
        try:
            body = self.server.render_metrics()
        except Exception:  # the scrape fails, the admin server and the workers carry on
            log.exception("rendering /metrics failed")
            self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, b"metrics unavailable\n", head=head)
            return
        self._reply(HTTPStatus.OK, body, {"Content-Type": METRICS_CONTENT_TYPE}, head=head)

    def _reply(
        self,
        status: HTTPStatus,
        body: bytes,
        headers: dict[str, str] | None = None,
        *,
        head: bool = False,
    ) -> None:
        self.send_response(status)
        if headers is None or "Content-Type" not in headers:
            self.send_header("Content-Type", "text/plain; charset=utf-8")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)


def _resolve(bind: str) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    """Turn ``host:port`` / ``[v6]:port`` into a family and a sockaddr for ``bind()``.

    Raises:
        ValueError: ``bind`` is not ``host:port`` or the host does not resolve.
    """
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"admin bind {bind!r}: expected host:port")
    host = host.removeprefix("[").removesuffix("]")
    try:
        infos = socket.getaddrinfo(
            host or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError, OverflowError) as exc:
        raise ValueError(f"admin bind {bind!r}: {exc}") from exc
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def _is_loopback(sockaddr: tuple[Any, ...]) -> bool:
    return ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]).is_loopback


class AdminServer:
    """Serves /metrics and the probes from a daemon thread of its own.

    Args:
        bind: ``host:port`` (``[v6]:port`` for IPv6); port 0 picks a free port, see
            :attr:`port`.
        token_hash: hex SHA-256 of the bearer token required for /metrics; empty means
            no token, which is only allowed on a loopback address.
        render_metrics: produces the /metrics body, called on the admin thread per scrape.
        state: read by the probes on every request.

    Raises:
        ValueError: ``token_hash`` is neither empty nor 64 hex digits.
    """

    def __init__(
        self,
        *,
        bind: str,
        token_hash: str,
        render_metrics: Callable[[], bytes],
        state: AdminState,
    ) -> None:
        token_hash = token_hash.strip().lower()
        if token_hash and (len(token_hash) != 64 or token_hash.strip("0123456789abcdef")):
            raise ValueError("admin token hash must be 64 hex digits (a SHA-256)")
        self._bind = bind
        self._token_hash = token_hash
        self._render_metrics = render_metrics
        self._state = state
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and listen now, then serve in a daemon thread.

        Raises:
            ValueError: ``bind`` is malformed, or is not loopback while no token is set.
            OSError: the address cannot be bound (in use, not local, ...).
            RuntimeError: already started.
        """
        if self._server is not None:
            raise RuntimeError("admin server already started")
        family, sockaddr = _resolve(self._bind)
        if not self._token_hash and not _is_loopback(sockaddr):
            raise ValueError(f"admin bind {self._bind!r} is not loopback: set admin.api_token_hash")
        server = _Server(
            sockaddr,
            family=family,
            token_hash=self._token_hash,
            render_metrics=self._render_metrics,
            state=self._state,
        )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": POLL_INTERVAL},
            name="eg-admin",
            daemon=True,
        )
        self._thread.start()
        log.info("admin listening", extra={"bind": f"{self.host}:{self.port}"})

    @property
    def host(self) -> str:
        """The bound address (IPv6 without brackets). Only valid after :meth:`start`."""
        if self._server is None:
            raise RuntimeError("admin server not started")
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        """The bound port, useful after binding port 0. Only valid after :meth:`start`."""
        if self._server is None:
            raise RuntimeError("admin server not started")
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop serving and close the listening socket. Idempotent."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()
