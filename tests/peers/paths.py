"""Where the third-party test peers are, and how to run the gRPC one.

``scripts/peers`` installs (cold) or just checks (warm, well under a second) h2load/nghttp,
h2spec, the regular-CPython gRPC venv and the HTTP/3 peers (gtlsclient, caddy, pycurl), then
prints ``name=path`` lines. Tests ask :func:`peer_paths` (which runs it once per process), or
:func:`require_peer` for one peer, instead of guessing paths, so the cache location
(``$EG_CACHE``) and the install logic live in one place; a test skips when the peer it needs
is missing.

:class:`GrpcPeerServer` and :func:`grpc_peer_call` / :func:`grpc_peer_all` run
``grpc_peer.py`` in child processes on the venv's interpreter (grpcio cannot load on eg's
free-threaded one), whether the client talks to the server directly or through eg. The
HTTP/3 peers have their wrappers in :mod:`tests.peers.h3_peers`.
Nothing here depends on pytest or on eg, so benchmarks and scripts can use it too.
"""

from __future__ import annotations

import functools
import json
import re
import selectors
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Self

REPO = Path(__file__).resolve().parent.parent.parent
PEERS_SCRIPT = REPO / "scripts" / "peers"
GRPC_PEER = Path(__file__).resolve().parent / "grpc_peer.py"
# A cold install builds h2spec (about a minute on 2 cores) and may apt-get nghttp2-client,
# Go and python3-venv first on a fresh machine; a warm run takes milliseconds.
PEERS_INSTALL_TIMEOUT = 900.0
# The lines callers parse: ``name=path`` with a lowercase name; an empty path = unavailable.
_PEER_LINE = re.compile(r"^([a-z0-9_]+)=(.*)$")
# A cold CPython 3.11 imports grpcio and binds in well under a second; slack for loaded CI.
GRPC_PEER_START_TIMEOUT = 30.0
# Slack on top of a call's own gRPC deadline for interpreter start-up and teardown.
GRPC_CALL_SLACK = 30.0
# len(grpc_peer.ALL_CASES): that module imports grpc, so it cannot be imported from here.
GRPC_ALL_CASES = 12


@functools.cache
def _run_peers() -> subprocess.CompletedProcess[str]:
    """Run ``scripts/peers`` (inheriting ``$EG_CACHE``); cached for the whole process."""
    try:
        return subprocess.run(
            [str(PEERS_SCRIPT)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=PEERS_INSTALL_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess([str(PEERS_SCRIPT)], -1, "", f"peers: {exc}\n")


def parse_peer_lines(text: str) -> dict[str, Path]:
    """Parse ``name=path`` lines, keeping only peers whose path exists.

    Args:
        text: the stdout of ``scripts/peers``; other lines are ignored.

    Returns:
        name -> path for every available peer (``h2load``, ``nghttp``, ``h2spec``,
        ``grpc_python``, ``grpcurl``, ``ngtcp2_client``, ``caddy``, ``curl_h3_python``).
    """
    found: dict[str, Path] = {}
    for line in text.splitlines():
        match = _PEER_LINE.match(line.strip())
        if match and match.group(2) and Path(match.group(2)).exists():
            found[match.group(1)] = Path(match.group(2))
    return found


def peer_paths() -> Mapping[str, Path]:
    """The available peers, installing them first if needed (once per process).

    Returns:
        name -> path; a name is absent when that peer could not be installed here.
    """
    return parse_peer_lines(_run_peers().stdout)


def peers_report() -> str:
    """What ``scripts/peers`` said, for a skip or failure message."""
    proc = _run_peers()
    lines = [line for line in proc.stdout.splitlines() if line.startswith("peers:")]
    return "\n".join([*lines, *proc.stderr.splitlines()[-10:]])


class PeerUnavailable(RuntimeError):
    """A peer is not installed here (outside pytest; under pytest the test skips instead)."""


def peer_unavailable(reason: str) -> NoReturn:
    """Skip the running test when under pytest, else raise :class:`PeerUnavailable`.

    pytest is only imported when the caller runs under it already, so this module stays
    usable from benchmarks and scripts.

    Raises:
        PeerUnavailable: not running under pytest.
    """
    if "pytest" in sys.modules:
        import pytest  # noqa: PLC0415 (see above)

        pytest.skip(reason)
    raise PeerUnavailable(reason)


def require_peer(name: str) -> Path:
    """The path of peer ``name``, installing the peers first if needed.

    Args:
        name: a name that ``scripts/peers`` prints, e.g. ``caddy`` or ``curl_h3_python``.

    Returns:
        The peer's path.

    Raises:
        PeerUnavailable: the peer is missing and this is not a pytest run (under pytest the
            calling test is skipped, with what ``scripts/peers`` said as the reason).
    """
    path = peer_paths().get(name)
    if path is None:
        peer_unavailable(f"peer {name!r} is unavailable here:\n{peers_report()}")
    return path


class GrpcPeerServer:
    """``grpc_peer.py serve`` in a child process; the constructor returns once it listens.

    Use as a context manager, or call :meth:`stop`.

    Attributes:
        port: the bound port (the kernel's choice).
        proc: the child process.
    """

    def __init__(
        self,
        python: Path,
        *,
        host: str = "127.0.0.1",
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        """Start the server and wait for its ``ready PORT`` line.

        Args:
            python: the gRPC venv's interpreter (``peer_paths()["grpc_python"]``).
            host: address to bind.
            tls: (certificate, key) files to serve TLS instead of h2c.

        Raises:
            RuntimeError: the server exited or stayed silent past the start timeout.
        """
        command = [str(python), str(GRPC_PEER), "serve", "--port", "0", "--host", host]
        if tls is not None:
            command += ["--tls", str(tls[0]), str(tls[1])]
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr
        )
        self.port = self._wait_ready()

    def _wait_ready(self) -> int:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + GRPC_PEER_START_TIMEOUT
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            while (left := deadline - time.monotonic()) > 0:
                if selector.select(left):
                    line = self.proc.stdout.readline().decode().split()
                    if len(line) == 2 and line[0] == "ready":
                        return int(line[1])
                    break  # EOF or an unexpected line: the server is not usable
        self.stop()
        raise RuntimeError(f"grpc_peer serve did not start: {self.stderr_text()!r}")

    def stderr_text(self) -> str:
        """What the server wrote to stderr so far (for failure messages)."""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def stop(self) -> None:
        """SIGTERM the server and wait for it (SIGKILL if it hangs)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self._stderr.close()


def _client_command(
    python: Path,
    command: str,
    target: str,
    *,
    tls_ca: Path | None,
    authority: str | None,
    timeout: float,
    metadata: Mapping[str, str],
) -> list[str]:
    argv = [str(python), str(GRPC_PEER), command, "--target", target, "--timeout", str(timeout)]
    if tls_ca is not None:
        argv += ["--tls-ca", str(tls_ca)]
    if authority is not None:
        argv += ["--authority", authority]
    for key, value in metadata.items():
        argv += ["--metadata", f"{key}={value}"]
    return argv


def _run_client(argv: Sequence[str], timeout: float) -> list[dict[str, Any]]:
    proc = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout + GRPC_CALL_SLACK,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[2:]} exited {proc.returncode}: {proc.stderr.strip()}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def grpc_peer_call(
    python: Path,
    target: str,
    kind: str,
    *args: str,
    tls_ca: Path | None = None,
    authority: str | None = None,
    timeout: float = 10.0,
    metadata: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run one ``grpc_peer.py call`` and return its JSON result.

    Args:
        python: the gRPC venv's interpreter.
        target: ``HOST:PORT`` to connect to (the server, or eg in front of it).
        kind: ``unary``, ``server_stream``, ``client_stream`` or ``bidi``.
        *args: the kind's arguments (``TEXT``, or ``N SIZE``).
        tls_ca: use TLS and trust this CA.
        authority: the ``:authority`` to send (and the TLS name to check).
        timeout: the call's gRPC deadline in seconds.
        metadata: extra request metadata.

    Returns:
        ``{"code", "details", "messages", "initial", "trailers", "match", ...}``.

    Raises:
        RuntimeError: the client exited non-zero (a usage error or a crash); a failed
            gRPC status is a normal result, not an exception.
    """
    argv = _client_command(
        python,
        "call",
        target,
        tls_ca=tls_ca,
        authority=authority,
        timeout=timeout,
        metadata=metadata or {},
    )
    return _run_client([*argv, kind, *args], timeout)[0]


def grpc_peer_all(
    python: Path,
    target: str,
    *,
    tls_ca: Path | None = None,
    authority: str | None = None,
    timeout: float = 10.0,
) -> list[dict[str, Any]]:
    """Run ``grpc_peer.py all``: every kind, small, large and long; one result per case.

    Arguments are as for :func:`grpc_peer_call`; each result also has a ``name``.
    """
    argv = _client_command(
        python, "all", target, tls_ca=tls_ca, authority=authority, timeout=timeout, metadata={}
    )
    return _run_client(argv, timeout * GRPC_ALL_CASES)
