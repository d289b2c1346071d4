"""Independent HTTP/3 peers for eg's tests: two clients and an origin, none of them ours.

- :func:`ngtcp2_request`: ngtcp2's example client ``gtlsclient`` (Debian ``ngtcp2-client``
  0.12.1, GnuTLS, nghttp3), one request per run.
- :func:`curl_h3`: libcurl 8.x with ngtcp2 (pycurl's wheel), one request per run of
  ``curl_h3_peer.py`` on the regular-CPython venv, HTTP/3 only.
- :class:`CaddyH3Origin`: Caddy (Debian ``caddy`` 2.6) serving HTTPS and HTTP/3 on
  127.0.0.1 with a given certificate: static files, any status, and a body echo.

Both clients return a :class:`PeerResponse`. They raise :class:`H3RequestFailed` when no
response head arrived (no connection, handshake or certificate failure, stream reset before
the head), and every helper skips the calling test (or raises
:class:`~tests.peers.paths.PeerUnavailable` outside pytest) when ``scripts/peers`` could not
install its peer here.

What the two clients can and cannot do differs; a test that runs both should know it:

======================  ===============================  ================================
                        ``ngtcp2_request``               ``curl_h3``
======================  ===============================  ================================
certificate checked     **never** (``ca_file`` unused)   chain and name, ``ca_file`` or
                                                         the system store
extra request headers   impossible (no such option):     yes
                        ``ValueError``
empty request body      impossible (``ValueError``);     yes (``content-length: 0``)
                        ``body=None`` sends none
request headers sent    ``:method :scheme :authority     the same, user-agent being
                        :path user-agent``, plus         ``PycURL/7.49.0 libcurl/...``,
                        ``content-length`` with a body   plus ``accept: */*``
SNI                     the URL's host; ``localhost``    the URL's host; none for an IP
                        when that is an IP address
======================  ===============================  ================================
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self
from urllib.parse import urlsplit

from tests.peers.paths import require_peer

CURL_H3_PEER = Path(__file__).resolve().parent / "curl_h3_peer.py"
# H3_NO_ERROR (RFC 9114 section 8.1): the code a stream closes with when all went well.
H3_NO_ERROR = 0x100
# Slack on top of a request's own timeout for process start-up (a Python start for curl)
# and teardown, before the child is killed.
CLIENT_SLACK = 15.0
# gtlsclient's own default QUIC handshake timeout; shorter when the caller's timeout is.
NGTCP2_HANDSHAKE_TIMEOUT = 10.0
# Caddy 2.6 starts in well under a second; slack for a loaded 2-core machine.
CADDY_START_TIMEOUT = 30.0
# SIGTERM lets Caddy finish requests for at most the configured grace period (1 s).
CADDY_STOP_TIMEOUT = 10.0
# Caddy may lose the race for a port picked free a moment before; then it is tried again.
CADDY_START_ATTEMPTS = 3
# /echo reads at most this much of a request body (Caddy's request_body max_size). Past it,
# Caddy does NOT fail the request: it echoes the first ECHO_MAX_BODY bytes with status 200
# and then resets the stream (H3_REQUEST_CANCELLED). Keep echoed bodies below it.
ECHO_MAX_BODY = 64 << 20
# Log lines of Caddy's JSON log (stderr) that mean the UDP socket is bound and every server
# is running; the first is only logged for a server with HTTP/3 on.
_CADDY_H3_MARK = '"msg":"enabling HTTP/3 listener"'
_CADDY_READY_MARK = '"msg":"serving initial configuration"'
# How gtlsclient (when not -q) prints the response heads and the end of a stream.
_NGTCP2_FIELD = re.compile(r"^http: stream 0x[0-9a-f]+ \[(.*)\]$")
_NGTCP2_CLOSED = re.compile(r"^HTTP stream \d+ closed with error code (\d+)$")


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerResponse:
    """One response as an independent HTTP/3 client received it."""

    status: int
    """The final status (1xx interim heads are not reported)."""
    headers: tuple[tuple[str, str], ...]
    """The final response's fields in received order; names are lowercase."""
    body: bytes = field(repr=False)
    """The body bytes exactly as received (a partial body when ``error`` is set)."""
    http_version: str
    """The HTTP version the client used: always ``"3"`` (anything else raises)."""
    error: str | None
    """None when the exchange ended cleanly; otherwise why it did not, after the head
    arrived (e.g. the stream was reset, or the client timed out)."""
    stderr: str = field(repr=False)
    """The client's raw diagnostic output, for debugging (gtlsclient's is large: it logs
    every QUIC packet)."""

    def header(self, name: str) -> str | None:
        """The first value of field ``name`` (any case), or None."""
        name = name.lower()
        return next((value for key, value in self.headers if key == name), None)


class H3Client(Protocol):
    """The shape of :func:`ngtcp2_request` and :func:`curl_h3`, to run a test with either."""

    def __call__(
        self,
        url: str,
        *,
        ca_file: str | None,
        method: str = ...,
        body: bytes | None = ...,
        headers: Sequence[str] = ...,
        timeout: float = ...,
        connect: str | None = ...,
    ) -> PeerResponse: ...


class H3RequestFailed(RuntimeError):
    """No response head arrived; ``stderr`` has the client's diagnostics."""

    def __init__(self, message: str, *, stderr: str) -> None:
        super().__init__(message)
        self.stderr = stderr


def _split_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"an HTTP/3 URL must be https://HOST[:PORT]/...: {url!r}")
    return parts.hostname, parts.port or 443


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def _duration(seconds: float) -> str:
    """A gtlsclient <DURATION>: an integer with a unit."""
    return f"{max(1, round(seconds * 1000))}ms"


def _tail(text: str, lines: int = 20) -> str:
    """The last lines of gtlsclient's stderr without its per-packet QUIC log."""
    kept = [line for line in text.splitlines() if not line.startswith(("I0", "Sent ", "Recei"))]
    return "\n".join(kept[-lines:])


def _parse_ngtcp2(stderr: str) -> tuple[int, list[tuple[str, str]], int | None]:
    """Status, final head and stream close code from gtlsclient's (non-quiet) stderr.

    It prints each received head as ``http: stream 0x0 response headers started``, one
    ``http: stream 0x0 [name: value]`` line per field, then ``... headers ended`` (and the
    same with ``trailers`` for trailers, which are ignored here). Request fields are printed
    without the ``http: stream`` prefix, so they cannot be mistaken for response ones.
    """
    status = 0
    headers: list[tuple[str, str]] = []
    block: list[tuple[str, str]] | None = None
    closed: int | None = None
    for line in stderr.splitlines():
        if line.endswith(" response headers started"):
            block = []
        elif line.endswith(" headers ended"):
            code = dict(block or ()).get(":status", "")
            if code.isdigit() and int(code) >= 200:
                status = int(code)
                headers = [(name, value) for name, value in block or () if name != ":status"]
            block = None
        elif block is not None and (match := _NGTCP2_FIELD.match(line)):
            name, _, value = match.group(1).partition(": ")
            block.append((name.lower(), value))
        elif match := _NGTCP2_CLOSED.match(line):
            closed = int(match.group(1))
    return status, headers, closed


def ngtcp2_request(
    url: str,
    *,
    ca_file: str | None,
    method: str = "GET",
    body: bytes | None = None,
    headers: Sequence[str] = (),
    timeout: float = 20.0,
    connect: str | None = None,
) -> PeerResponse:
    """Make one HTTP/3 request with ngtcp2's example client (``gtlsclient``).

    The client saves the body with ``--download`` into a fresh directory and prints the
    response head on stderr, which is parsed. Its exit status means nothing (it exits 0
    even when the handshake times out), so success is "a final status was printed".

    Args:
        url: ``https://HOST[:PORT]/path?query``; HOST is the ``:authority`` and the SNI.
        ca_file: accepted for symmetry with :func:`curl_h3` and **not used**: gtlsclient
            0.12.1 loads the system trust store but never verifies the server certificate,
            and has no option to.
        method: the request method (``-m``).
        body: sent as the request body (``--data``, with a ``content-length``); None sends
            no body (the head ends the stream). It cannot be empty: gtlsclient mmaps the
            file and fails on an empty one.
        headers: must be empty: the example client cannot add request fields.
        timeout: seconds; the QUIC idle timeout, and the handshake's when shorter than 10.
        connect: ``HOST:PORT`` to connect to instead of the URL's; by default the URL's,
            with ``localhost`` as 127.0.0.1 (the client uses only the first address).

    Returns:
        The response; ``error`` says how the stream closed if not with H3_NO_ERROR.

    Raises:
        H3RequestFailed: no final response head arrived.
        ValueError: ``headers`` or ``body`` is empty, or the URL is not https.
    """
    if headers:
        raise ValueError("gtlsclient cannot send extra request headers; use curl_h3")
    if body == b"":
        raise ValueError("gtlsclient cannot send an empty body (body=None sends none)")
    client = require_peer("ngtcp2_client")
    host, port = _split_url(url)
    if connect is not None:
        address, port = _split_host_port(connect)
    else:
        address = "127.0.0.1" if host == "localhost" else host
    argv = [
        str(client),
        "--exit-on-all-streams-close",
        "--no-quic-dump",
        "--no-http-dump",
        f"--timeout={_duration(timeout)}",
        f"--handshake-timeout={_duration(min(timeout, NGTCP2_HANDSHAKE_TIMEOUT))}",
        f"--http-method={method}",
    ]
    if not _is_ip(host):
        argv.append(f"--sni={host}")
    with tempfile.TemporaryDirectory(prefix="eg-ngtcp2-") as tmp:
        download = Path(tmp, "download")
        download.mkdir()
        argv.append(f"--download={download}")
        if body is not None:
            data = Path(tmp, "request-body")
            data.write_bytes(body)
            argv.append(f"--data={data}")
        argv += [address, str(port), url]
        log = Path(tmp, "stderr")
        with log.open("wb") as err:
            try:
                subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    timeout=timeout + CLIENT_SLACK,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                stderr = log.read_text(errors="replace")
                raise H3RequestFailed(
                    f"gtlsclient {url}: no exit after {timeout + CLIENT_SLACK:.0f} s:\n"
                    f"{_tail(stderr)}",
                    stderr=stderr,
                ) from None
        stderr = log.read_text(errors="replace")
        # The file is named after the path's last segment (query included), or index.html.
        saved = sorted(download.iterdir())
        received = saved[0].read_bytes() if saved else b""
    status, fields, closed = _parse_ngtcp2(stderr)
    if not status:
        raise H3RequestFailed(f"gtlsclient {url}: no response:\n{_tail(stderr)}", stderr=stderr)
    error = None
    if closed is None:
        error = "the stream did not close (idle timeout?)"
    elif closed != H3_NO_ERROR:
        error = f"the stream closed with HTTP/3 error code {closed:#x}"
    return PeerResponse(
        status=status,
        headers=tuple(fields),
        body=received,
        http_version="3",
        error=error,
        stderr=stderr,
    )


def curl_h3(
    url: str,
    *,
    ca_file: str | None,
    method: str = "GET",
    body: bytes | None = None,
    headers: Sequence[str] = (),
    timeout: float = 20.0,
    connect: str | None = None,
) -> PeerResponse:
    """Make one HTTP/3-only request with libcurl (``curl_h3_peer.py`` on the pycurl venv).

    Args:
        url: ``https://HOST[:PORT]/path?query``.
        ca_file: the CA to verify the server with (chain and name); None: the system store.
        method: the request method (``HEAD`` is sent without waiting for a body).
        body: sent as the request body with a ``content-length``, and without curl's own
            ``content-type``/``expect`` (unless ``headers`` sets them); None: no body.
        headers: extra request fields, each ``"Name: value"``.
        timeout: seconds for the whole transfer.
        connect: ``HOST:PORT`` to connect to instead of the URL's (curl's ``--connect-to``).

    Returns:
        The response; ``error`` is libcurl's error when the transfer failed after the head.

    Raises:
        H3RequestFailed: no response head arrived (including a certificate that does not
            verify, or a server that does not speak HTTP/3), or one arrived over another
            HTTP version.
    """
    python = require_peer("curl_h3_python")
    argv = [str(python), str(CURL_H3_PEER), url, "--method", method, "--timeout", str(timeout)]
    if ca_file is not None:
        argv += ["--ca", ca_file]
    if connect is not None:
        argv += ["--connect-to", connect]
    if body is not None:
        argv.append("--body-stdin")
    for line in headers:
        argv += ["--header", line]
    try:
        proc = subprocess.run(
            argv,
            input=body or b"",
            capture_output=True,
            timeout=timeout + CLIENT_SLACK,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = (exc.stderr or b"").decode(errors="replace")
        raise H3RequestFailed(f"curl_h3 {url}: no exit in time", stderr=stderr) from None
    stderr = proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"curl_h3_peer.py exited {proc.returncode}: {stderr.strip()}")
    result: dict[str, Any] = json.loads(proc.stdout)
    if not result["status"]:
        raise H3RequestFailed(f"curl_h3 {url}: {result['error']}", stderr=stderr)
    if result["http_version"] != "3":
        raise H3RequestFailed(
            f"curl_h3 {url}: answered over HTTP/{result['http_version']}, not HTTP/3",
            stderr=stderr,
        )
    return PeerResponse(
        status=result["status"],
        headers=tuple((name, value) for name, value in result["headers"]),
        body=base64.b64decode(result["body_b64"]),
        http_version=result["http_version"],
        error=result["error"],
        stderr=stderr,
    )


def _free_port(host: str) -> int:
    """A port free for both TCP and UDP on ``host`` a moment ago (Caddy needs both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
        return port
    raise RuntimeError(f"no port free for both TCP and UDP on {host}")


def caddy_config(
    *, host: str, port: int, cert: str, key: str, root: Path, storage: Path, max_echo_body: int
) -> dict[str, Any]:
    """The JSON config of :class:`CaddyH3Origin` (its docstring describes the routes).

    JSON rather than a Caddyfile, so nothing is implied: no admin endpoint, no saved copy of
    the config, no automatic HTTPS (no ACME, no redirect listener on :80), one server
    listening on ``host:port`` only (TCP for h1/h2, UDP for h3), our certificate for any SNI
    and none, and no compression (bodies arrive byte for byte).
    """
    set_proto = {
        "handler": "headers",
        "response": {"set": {"X-Eg-Proto": ["{http.request.proto}"]}},
    }
    static = [
        {"handler": "rewrite", "strip_path_prefix": "/static"},
        {"handler": "file_server", "root": str(root)},
    ]
    status = {
        "handler": "static_response",
        "status_code": "{http.request.uri.path.1}",
        "body": "status {http.request.uri.path.1}\n",
    }
    echo = [
        {
            "handler": "headers",
            "response": {
                "set": {
                    "X-Eg-Method": ["{http.request.method}"],
                    "X-Eg-Echo": ["{http.request.header.X-Eg-Echo}"],
                }
            },
        },
        {"handler": "request_body", "max_size": max_echo_body},
        # The placeholder reads the whole body; its bytes are not expanded again.
        {"handler": "static_response", "status_code": 200, "body": "{http.request.body}"},
    ]
    not_found = {"handler": "static_response", "status_code": 404, "body": "not found\n"}
    return {
        "admin": {"disabled": True, "config": {"persist": False}},
        "logging": {
            "logs": {
                "default": {
                    "writer": {"output": "stderr"},
                    "encoder": {"format": "json"},
                    "level": "INFO",
                }
            }
        },
        "storage": {"module": "file_system", "root": str(storage)},
        "apps": {
            "tls": {
                "certificates": {
                    "load_files": [{"certificate": cert, "key": key, "tags": ["eg-test"]}]
                }
            },
            "http": {
                "grace_period": "1s",
                "servers": {
                    "eg-test": {
                        "listen": [f"{host}:{port}"],
                        "protocols": ["h1", "h2", "h3"],
                        "automatic_https": {"disable": True},
                        "tls_connection_policies": [
                            {"certificate_selection": {"any_tag": ["eg-test"]}}
                        ],
                        "routes": [
                            {"handle": [set_proto]},
                            {"match": [{"path": ["/static/*"]}], "handle": static},
                            {"match": [{"path": ["/status/*"]}], "handle": [status]},
                            {"match": [{"path": ["/echo"]}], "handle": echo},
                            {"handle": [not_found]},
                        ],
                    }
                },
            },
        },
    }


class CaddyH3Origin:
    """Caddy serving HTTP/3 (and HTTPS over TCP) on 127.0.0.1, one free port for both.

    The constructor returns once Caddy has bound the UDP socket and runs its server; use it
    as a context manager, or call :meth:`stop`. Routes (all methods, any host name):

    - ``/static/NAME``: the file ``root/NAME`` (Caddy's file_server: ``content-length``,
      ``etag``, ``last-modified``, ranges, HEAD). Put files there with ``files=`` or
      :meth:`add_file`, before or while it runs; a missing file is a 404.
    - ``/status/CODE``: status CODE with the body ``status CODE\\n`` (``text/plain``); no
      body for codes that forbid one (204, 304).
    - ``/echo``: status 200, the request body echoed exactly (up to ``max_echo_body``
      bytes, see ECHO_MAX_BODY: a longer one comes back truncated, then reset),
      ``x-eg-method``: the request method, ``x-eg-echo``: the request's ``x-eg-echo``
      field (empty when absent). No ``content-length`` is derived from the request:
      Caddy's placeholders cannot see it.
    - anything else: 404, ``not found\\n``.

    Every response carries ``x-eg-proto``: the protocol Caddy received the request over
    (``HTTP/3.0``, ``HTTP/2.0`` or ``HTTP/1.1``), so a test can tell how eg reached it.

    Caddy's files (config, log, its storage and $HOME) all stay in ``directory``; the admin
    endpoint is off, and the process is SIGTERMed and reaped on exit.

    Attributes:
        host: ``127.0.0.1``, the only address it listens on.
        port: the TCP and UDP port.
        root: the directory ``/static/`` serves.
        proc: the caddy process.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        cert: str | os.PathLike[str],
        key: str | os.PathLike[str],
        *,
        directory: Path,
        files: Mapping[str, bytes] | None = None,
        max_echo_body: int = ECHO_MAX_BODY,
    ) -> None:
        """Start Caddy and wait until it serves.

        Args:
            cert: the certificate chain (PEM) to serve, e.g. ``cert.pem`` of dev-certs.
            key: its private key (PEM).
            directory: where Caddy's config, log, storage and the ``www`` root go.
            files: name -> content to put under ``/static/`` first.
            max_echo_body: the most bytes ``/echo`` reads.

        Raises:
            RuntimeError: Caddy exited or did not get ready in time (its log is included).
        """
        caddy = require_peer("caddy")
        self.directory = directory
        self.root = directory / "www"
        self.root.mkdir(parents=True, exist_ok=True)
        for name, content in (files or {}).items():
            self.add_file(name, content)
        self._log_path = directory / "caddy.log"
        home = directory / "caddy-home"
        # Caddy (and the certmagic/smallstep code in it) writes under $HOME and the XDG
        # directories even with this config; keep all of that in the test's directory.
        self._env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "XDG_DATA_HOME": str(home / "data"),
            "XDG_CONFIG_HOME": str(home / "config"),
        }
        for attempt in range(1, CADDY_START_ATTEMPTS + 1):
            self.port = _free_port(self.host)
            config = caddy_config(
                host=self.host,
                port=self.port,
                cert=os.fspath(cert),
                key=os.fspath(key),
                root=self.root,
                storage=home / "storage",
                max_echo_body=max_echo_body,
            )
            config_path = directory / "caddy.json"
            config_path.write_text(json.dumps(config, indent=1))
            with self._log_path.open("wb") as log:
                self.proc = subprocess.Popen(
                    [str(caddy), "run", "--config", str(config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    env=self._env,
                )
            if self._wait_ready():
                return
            self.stop()
            lost_race = "address already in use" in self.log_text()
            if not lost_race or attempt == CADDY_START_ATTEMPTS:
                break
        raise RuntimeError(f"caddy did not start:\n{self.log_text()}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + CADDY_START_TIMEOUT
        while time.monotonic() < deadline:
            text = self.log_text()
            if _CADDY_H3_MARK in text and _CADDY_READY_MARK in text:
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.02)
        return False

    def url(self, path: str, *, host: str = "localhost") -> str:
        """``https://HOST:PORT/PATH`` for this origin (``localhost`` is in dev-certs)."""
        return f"https://{host}:{self.port}{path}"

    def add_file(self, name: str, content: bytes) -> Path:
        """Write ``content`` to ``root/name``, served as ``/static/name``; return its path."""
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return path

    def log_text(self) -> str:
        """Caddy's log so far (JSON lines), for failure messages."""
        try:
            return self._log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """SIGTERM Caddy and reap it (SIGKILL if it hangs); idempotent."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=CADDY_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
