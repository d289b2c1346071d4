"""bench/h3load.py: its response framing, and a few real requests through a short-lived eg.

The live tests start eg with a QUIC listener (certificate from scripts/dev-certs) in front
of bench/sink.py (which answers 200 to any request), with a small
``max_requests_per_connection`` so that h3load's GOAWAY handling runs too. They count
requests and statuses only: no timing assertions.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
BENCH = REPO / "bench"
# eg answers GOAWAY after this many requests on one connection (h3load reconnects).
RECYCLE = 10


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(f"bench_{name}", mod)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def h3load() -> ModuleType:
    return _load("h3load")


# -- framing (no network) ----------------------------------------------------------------------


def test_varint(h3load: ModuleType) -> None:
    assert h3load._varint(b"\x25", 0) == (0x25, 1)
    assert h3load._varint(b"\x7b\xbd", 0) == (15293, 2)
    assert h3load._varint(b"\x9d\x7f\x3e\x7d", 0) == (494878333, 4)
    assert h3load._varint(b"\x7b", 0) == (-1, 0)  # cut short
    assert h3load._varint(b"", 0) == (-1, 0)


@pytest.mark.parametrize(("text", "seconds"), [("3", 3.0), ("3s", 3.0), ("500ms", 0.5),
                                               ("2m", 120.0)])
def test_duration(h3load: ModuleType, text: str, seconds: float) -> None:
    assert h3load._duration(text) == pytest.approx(seconds)


def _client(h3load: ModuleType) -> Any:
    opts, _, _ = h3load.parse_args(["-n", "1", "--insecure", "https://127.0.0.1:9/"])
    return h3load.Client(opts, 1, 1)


def _headers_frame(block: bytes) -> bytes:
    return bytes([1, len(block)]) + block


def test_small_response_whole(h3load: ModuleType) -> None:
    """HEADERS (static :status 200) + DATA in one piece: the fast path."""
    client = _client(h3load)
    conn = client.conns[0]
    conn.streams[0] = h3load._Stream(time.perf_counter_ns())
    conn.response_data(0, conn.streams[0], _headers_frame(b"\x00\x00\xd9") + b"\x00\x06hello\n",
                       True)
    assert not conn.streams
    assert (client.stats.done, client.stats.s2xx, client.stats.bytes_data) == (1, 1, 6)


def test_response_byte_by_byte(h3load: ModuleType) -> None:
    """A literal :status (not in the static table's 6-bit range) and a DATA frame, fed one
    byte at a time: decoded by QPACK, body counted, nothing lost between pieces."""
    client = _client(h3load)
    _, block = h3load.QpackEncoder().encode(0, [(b":status", b"418"), (b"server", b"x")])
    wire = _headers_frame(block) + b"\x00\x03abc" + b"\x21\x00"  # + an unknown frame type
    conn = client.conns[0]
    st = conn.streams[4] = h3load._Stream(time.perf_counter_ns())
    for i in range(len(wire)):
        conn.response_data(4, st, wire[i:i + 1], i == len(wire) - 1)
    assert (client.stats.done, client.stats.s4xx, client.stats.succeeded) == (1, 1, 0)
    assert client.stats.bytes_data == 3


def test_interim_then_final(h3load: ModuleType) -> None:
    client = _client(h3load)
    conn = client.conns[0]
    st = conn.streams[8] = h3load._Stream(time.perf_counter_ns())
    early = _headers_frame(b"\x00\x00\xd8")  # 103
    final = _headers_frame(b"\x00\x00\xd9")  # 200
    conn.response_data(8, st, early, False)
    conn.response_data(8, st, final + b"\x00\x00", True)
    assert (client.stats.done, client.stats.s2xx) == (1, 1)


def test_no_final_response_is_an_error(h3load: ModuleType) -> None:
    client = _client(h3load)
    conn = client.conns[0]
    st = conn.streams[0] = h3load._Stream(time.perf_counter_ns())
    conn.response_data(0, st, b"", True)
    assert (client.stats.done, client.stats.errored) == (0, 1)


# -- live: h3load against eg on loopback ---------------------------------------------------------


def _wait_tcp(port: int, proc: subprocess.Popen[bytes], timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"eg exited with status {proc.returncode}")
            if time.monotonic() > deadline:
                pytest.fail("eg did not start listening")
            time.sleep(0.05)


@pytest.fixture(scope="module")
def eg_h3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """(UDP port of eg's quic listener, CA file); eg and the sink stop afterwards."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed for scripts/dev-certs")
    peers = _load("peers")
    tmp = tmp_path_factory.mktemp("h3load")
    certs = tmp / "certs"
    res = subprocess.run([str(REPO / "scripts" / "dev-certs"), str(certs), "localhost"],
                         capture_output=True, text=True, timeout=60, check=False)
    if res.returncode != 0:
        pytest.skip(f"scripts/dev-certs failed: {res.stderr[-300:]}")
    sink_port = peers.free_port()
    h1_port = peers.free_port()
    h3_port = peers.free_udp_port()
    cfg = tmp / "eg.toml"
    cfg.write_text(f"""[runtime]
workers = 1

[observability]
metrics_bind = ""
access_log = false

[quic]
max_requests_per_connection = {RECYCLE}

[[listeners]]
name = "h1"
address = "127.0.0.1:{h1_port}"

[[listeners]]
name = "h3"
address = "127.0.0.1:{h3_port}"
protocol = "quic"
[listeners.tls]
certificates = [{{cert = "{certs / 'cert.pem'}", key = "{certs / 'key.pem'}"}}]

[[clusters]]
name = "sink"
endpoints = ["127.0.0.1:{sink_port}"]

[[routes]]
cluster = "sink"
""")
    log = open(tmp / "eg.log", "wb")  # noqa: SIM115 (closed in the finally below)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sink = subprocess.Popen([sys.executable, str(BENCH / "sink.py"), str(sink_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(sink)
        eg = subprocess.Popen([sys.executable, "-m", "eg", str(cfg)], stdout=log, stderr=log,
                              cwd=REPO)
        procs.append(eg)
        _wait_tcp(sink_port, sink)
        _wait_tcp(h1_port, eg)
        yield h3_port, certs / "ca.pem"
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def _h3load(args: list[str]) -> tuple[dict[str, Any], str]:
    proc = subprocess.run([sys.executable, str(BENCH / "h3load.py"), *args],
                          capture_output=True, text=True, timeout=90, check=False, cwd=REPO)
    out = proc.stdout + proc.stderr
    for line in proc.stdout.splitlines():
        if line.startswith("H3LOADJSON "):
            rec: dict[str, Any] = json.loads(line[11:])
            return rec, out
    pytest.fail(f"h3load printed no H3LOADJSON line (status {proc.returncode}):\n{out}")


def test_requests_through_eg(eg_h3: tuple[int, Path]) -> None:
    """-n 30 over 2 connections x 4 streams: every request answered 200, across GOAWAYs."""
    port, ca = eg_h3
    rec, out = _h3load(["-n", "30", "-c", "2", "-m", "4", "--host", "127.0.0.1", "--ca",
                        str(ca), f"https://localhost:{port}/small"])
    assert rec["done"] == 30, out
    assert rec["status"]["2xx"] == 30, out
    assert rec["errored"] == 0 and rec["failed"] == 0, out
    # eg recycles a connection after RECYCLE requests: h3load opened new ones.
    assert rec["goaways"] >= 1 and rec["connects"] > 2, out
    assert rec["latency_us"]["p50"] is not None
    assert "finished in" in out and "requests: 30 total" in out


def test_duration_two_processes(eg_h3: tuple[int, Path]) -> None:
    port, ca = eg_h3
    rec, out = _h3load(["-D", "1", "-c", "2", "-m", "2", "-p", "2", "--host", "127.0.0.1",
                        "--ca", str(ca), f"https://localhost:{port}/small"])
    assert rec["processes"] == 2
    assert rec["done"] > 0 and rec["errored"] == 0, out
    assert rec["status"]["2xx"] == rec["done"], out


def test_wrong_ca_fails_cleanly(eg_h3: tuple[int, Path], tmp_path: Path) -> None:
    """A certificate that does not verify: no request done, the error reported, status 1."""
    port, _ = eg_h3
    other = tmp_path / "other"
    subprocess.run([str(REPO / "scripts" / "dev-certs"), str(other)], capture_output=True,
                   timeout=60, check=True)
    proc = subprocess.run([sys.executable, str(BENCH / "h3load.py"), "-n", "2", "-N", "3",
                           "--host", "127.0.0.1", "--ca", str(other / "ca.pem"),
                           f"https://localhost:{port}/small"],
                          capture_output=True, text=True, timeout=90, check=False, cwd=REPO)
    assert proc.returncode == 1
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("H3LOADJSON "))
    rec = json.loads(line[11:])
    assert rec["done"] == 0 and rec["connect_failures"] >= 1
    assert rec["errors"]
