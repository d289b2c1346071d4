"""Fixtures for end-to-end tests: the real gateway process in front of real origins.

:class:`Gateway` runs ``python -m eg CONFIG`` (``sys.executable``, so the free-threaded
interpreter the tests run on) with its stderr in a file, and returns once the
``eg started`` log line names the listener and admin ports (both configured as port 0, so
no port is ever guessed). Stopping it sends SIGTERM and waits, as an operator would.

Fixtures:

- ``origins``: one origin process serving two ports, named ``a`` and ``b`` (module scope).
- ``gateway``: a gateway with the default limits in front of ``origins`` (module scope).
- ``start_gateway``: a factory for a gateway with its own config (function scope).
- ``gateway_factory``: the same factory, module scope, for a module's shared gateway.

Configs are plain dicts (see :func:`gateway_config`) rendered to TOML by :func:`to_toml`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pytest
from prometheus_client.parser import text_string_to_metric_families

from eg.demo.origin import CHUNK, PATTERN_MODULUS, pattern
from tests.helpers import REPO, OriginProcess, http_get

# A cold free-threaded interpreter imports eg and binds in well under a second; the rest
# is slack for a loaded 2-core machine.
GATEWAY_START_TIMEOUT = 30.0
# SIGTERM drains for at most timeouts.drain (set small in these configs) before exiting.
GATEWAY_STOP_TIMEOUT = 15.0
# Generous bound for one subprocess client (curl, wrk) in these tests.
CLIENT_TIMEOUT = 30.0
MiB = 1 << 20

Doc = dict[str, Any]


# -- config ------------------------------------------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):  # inside an array: an inline table
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot render {value!r} as TOML")


def _toml_table(header: str, table: Mapping[str, object], out: list[str]) -> None:
    out.append(header)
    nested = []
    for key, value in table.items():
        if isinstance(value, Mapping):
            nested.append((key, value))
        else:
            out.append(f"{key} = {_toml_value(value)}")
    out.append("")
    name = header.strip("[]")
    for key, value in nested:
        _toml_table(f"[{name}.{key}]", value, out)


def to_toml(doc: Mapping[str, object]) -> str:
    """Render a config dict: dicts become tables, lists of dicts arrays of tables."""
    out: list[str] = []
    for key, value in doc.items():
        if isinstance(value, Mapping):
            _toml_table(f"[{key}]", value, out)
        elif isinstance(value, list) and all(isinstance(item, Mapping) for item in value):
            for item in value:
                _toml_table(f"[[{key}]]", item, out)
        else:
            raise TypeError(f"top-level key {key} must be a table or an array of tables")
    return "\n".join(out)


def gateway_config(
    endpoints: Sequence[int],
    *,
    workers: int = 2,
    clusters: Sequence[Doc] = (),
    routes: Sequence[Doc] | None = None,
    limits: Doc | None = None,
    timeouts: Doc | None = None,
    proxy: Doc | None = None,
    observability: Doc | None = None,
    health: Doc | None = None,
) -> Doc:
    """A config with one h1 listener and one cluster ``origin`` over loopback ``endpoints``.

    Args:
        endpoints: origin ports of cluster ``origin``.
        workers: worker threads (not pinned, so tests never depend on CPU numbering).
        clusters: extra clusters.
        routes: the routes; default: everything to ``origin``.
        limits, timeouts, proxy, observability: overrides of those sections.
        health: ``[clusters.health]`` of cluster ``origin``.
    """
    origin: Doc = {
        "name": "origin",
        "endpoints": [f"127.0.0.1:{port}" for port in endpoints],
        "lb": "round_robin",
    }
    if health:
        origin["health"] = health
    return {
        "listeners": [{"name": "http", "address": "127.0.0.1:0", "protocol": "h1"}],
        "clusters": [origin, *clusters],
        "routes": list(routes)
        if routes is not None
        else [{"path_prefix": "/", "cluster": "origin"}],
        "runtime": {"workers": workers, "pin": False},
        "observability": {
            "metrics_bind": "127.0.0.1:0",
            "log_format": "json",
            "log_level": "info",
            **(observability or {}),
        },
        # Short drain, so stopping a gateway never stalls a test.
        "timeouts": {"drain": 3.0, **(timeouts or {})},
        "limits": dict(limits or {}),
        "proxy": dict(proxy or {}),
    }


# -- the gateway process -----------------------------------------------------------------------


class Gateway:
    """``python -m eg CONFIG`` in a child process.

    Attributes:
        proc: the child.
        port: the ``http`` listener's port.
        admin_port: the admin listener's port.
        started: the ``eg started`` log record.
        config_path: the TOML file it runs.
    """

    def __init__(self, config_path: Path, *, wait: bool = True) -> None:
        self.config_path = config_path
        self.stderr_path = config_path.with_suffix(".stderr")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env.pop("LB_LOG_FORMAT", None)
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "eg", str(config_path)],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        self.port = 0
        self.admin_port = 0
        self.started: Doc = {}
        if wait:
            self.wait_started()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stderr(self) -> str:
        """Everything the gateway logged so far."""
        return self.stderr_path.read_text(errors="replace")

    def records(self) -> list[Doc]:
        """The JSON log records logged so far (complete lines only)."""
        out = []
        for line in self.stderr.splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    out.append(record)
        return out

    def wait_started(self, timeout: float = GATEWAY_START_TIMEOUT) -> None:
        """Wait for the ``eg started`` record and read the ports from it.

        Raises:
            RuntimeError: the process exited or did not start within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            for record in self.records():
                if record.get("msg") == "eg started":
                    self.started = record
                    #: Port of each listener, by name; ``port`` is the one named "http"
                    #: (else the first).
                    self.ports = {name: int(address.rsplit(":", 1)[1])
                                  for name, address in record["listeners"].items()}
                    self.port = self.ports.get("http") or next(iter(self.ports.values()))
                    self.admin_port = int(record["admin"].rsplit(":", 1)[1])
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"gateway exited with status {self.proc.returncode}:\n{self.stderr}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"gateway did not start within {timeout} s:\n{self.stderr}")
            time.sleep(0.02)

    # -- admin --------------------------------------------------------------------------------

    def admin(self, path: str) -> tuple[int, str]:
        """GET ``path`` on the admin listener: (status, body)."""
        reply = http_get(self.admin_port, path, timeout=10.0)
        return reply.status, reply.body.decode()

    def metrics(self) -> str:
        status, body = self.admin("/metrics")
        assert status == 200, body
        return body

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels`` (0 if none)."""
        total = 0.0
        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return total

    def rss(self) -> int:
        """Resident set size in bytes (VmRSS)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    # -- stopping -----------------------------------------------------------------------------

    def stop(self, timeout: float = GATEWAY_STOP_TIMEOUT) -> int:
        """SIGTERM (SIGKILL if it outlives ``timeout``) and reap; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
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


def launch(directory: Path, doc: Mapping[str, object], name: str = "eg") -> Gateway:
    """Write ``doc`` as ``directory/NAME.toml`` and start a gateway on it."""
    path = directory / f"{name}.toml"
    for n in range(1, 1000):
        if not path.exists():
            break
        path = directory / f"{name}-{n}.toml"
    path.write_text(to_toml(doc))
    return Gateway(path)


def check_stopped_cleanly(gw: Gateway) -> None:
    """Stop ``gw``; it must exit 0 without any unhandled error in its log."""
    code = gw.stop()
    errors = [r for r in gw.records() if r.get("level") in ("error", "critical")]
    assert code == 0, f"gateway exited with {code}:\n{gw.stderr[-5000:]}"
    assert not errors, f"gateway logged errors: {errors[:3]}"


StartGateway = Callable[[Mapping[str, object]], Gateway]


@contextlib.contextmanager
def _gateway_factory(directory: Path) -> Iterator[StartGateway]:
    started: list[Gateway] = []

    def start(doc: Mapping[str, object]) -> Gateway:
        gw = launch(directory, doc)
        started.append(gw)
        return gw

    try:
        yield start
    finally:
        for gw in started:
            gw.stop()


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def origins() -> Iterator[OriginProcess]:
    """One origin process on two ports, named ``a`` and ``b``."""
    with OriginProcess([0, 0], ["a", "b"]) as origin:
        yield origin


@pytest.fixture(scope="module")
def gateway_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartGateway]:
    with _gateway_factory(tmp_path_factory.mktemp("eg")) as start:
        yield start


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[StartGateway]:
    with _gateway_factory(tmp_path) as start:
        yield start


@pytest.fixture(scope="module")
def gateway(origins: OriginProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The gateway with default limits in front of ``origins``; must stop cleanly."""
    gw = launch(tmp_path_factory.mktemp("eg"), gateway_config(origins.ports))
    try:
        yield gw
    finally:
        check_stopped_cleanly(gw)


# -- helpers shared by the test modules --------------------------------------------------------


class OriginTally:
    """Request and connection counts of origin ports, net of its own ``/_stats`` queries."""

    def __init__(self, ports: Sequence[int]) -> None:
        self.ports = list(ports)
        self._own = dict.fromkeys(self.ports, 0)

    def per_port(self) -> dict[int, tuple[int, int]]:
        """port → (requests, connections) so far."""
        out = {}
        for port in self.ports:
            body = http_get(port, "/_stats").body.decode()
            self._own[port] += 1
            fields = dict(item.split("=") for item in body.split())
            own = self._own[port]
            out[port] = (int(fields["requests"]) - own, int(fields["connections"]) - own)
        return out

    def requests(self) -> int:
        return sum(r for r, _ in self.per_port().values())

    def connections(self) -> int:
        return sum(c for _, c in self.per_port().values())


def pattern_sha256(size: int) -> str:
    """SHA-256 of the first ``size`` bytes of the origin's body pattern."""
    digest = hashlib.sha256()
    block = memoryview(pattern(0, CHUNK + PATTERN_MODULUS))
    start = 0
    while start < size:
        n = min(CHUNK, size - start)
        first = start % PATTERN_MODULUS
        digest.update(block[first : first + n])
        start += n
    return digest.hexdigest()


def pattern_chunks(size: int, piece: int = 256 * 1024) -> Iterator[bytes]:
    """The origin's body pattern, ``size`` bytes, in pieces (for streamed uploads)."""
    block = pattern(0, piece + PATTERN_MODULUS)
    start = 0
    while start < size:
        n = min(piece, size - start)
        first = start % PATTERN_MODULUS
        yield block[first : first + n]
        start += n


class RssSampler:
    """Samples a process's VmRSS in a background thread; ``peak`` is the maximum seen."""

    def __init__(self, gw: Gateway, interval: float = 0.02) -> None:
        self.gw = gw
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, RuntimeError):
                self.peak = max(self.peak, self.gw.rss())
                self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def curl(*args: str, timeout: float = CLIENT_TIMEOUT) -> subprocess.CompletedProcess[bytes]:
    """Run ``curl -sS ARGS`` (no proxy from the environment); never raises on failure."""
    return subprocess.run(
        ["curl", "-sS", "--noproxy", "*", "--max-time", str(int(timeout)), *args],
        capture_output=True,
        timeout=timeout + 10,
        check=False,
    )


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    """A new client connection to loopback ``port``."""
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_until_close(sock: socket.socket, timeout: float = 10.0) -> tuple[bytes, bool]:
    """Read until EOF, reset or ``timeout``: (data, closed) where closed means EOF/reset."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return b"".join(chunks), False
        except (ConnectionResetError, BrokenPipeError):
            return b"".join(chunks), True
        if not data:
            return b"".join(chunks), True
        chunks.append(data)
    return b"".join(chunks), False
