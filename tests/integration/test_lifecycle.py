"""The gateway process as an operator sees it: start-up, probes, abuse, load, shutdown."""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, OriginProcess, free_port, http_get
from tests.integration.conftest import (
    CLIENT_TIMEOUT,
    Gateway,
    StartGateway,
    check_stopped_cleanly,
    connect,
    gateway_config,
    to_toml,
)

pytestmark = pytest.mark.timeout(60)


def test_serving_process_runs_without_the_gil(gateway: Gateway) -> None:
    assert gateway.started["gil_enabled"] is False
    assert gateway.started["workers"] == 2
    assert gateway.metric("eg_gil_enabled") == 0
    assert gateway.metric("eg_workers") == 2


def _abuse(stack: contextlib.ExitStack, port: int, rng: random.Random) -> None:
    """Garbage, half-open, truncated and reset connections; ``stack`` keeps some open."""
    # Random bytes on 50 connections (from ``rng``, so a run can be repeated). Every other
    # one ends its garbage with a blank line: that completes a head, which must be refused
    # as malformed; without a line ending the parser may wait for more, and whether any of
    # 50 random runs held a CRLF was chance.
    for n in range(50):
        sock = stack.enter_context(connect(port))
        garbage = rng.randbytes(rng.randrange(1, 8192)) + (b"\r\n\r\n" if n % 2 else b"")
        with contextlib.suppress(OSError):
            sock.sendall(garbage)
    # Half-open: the client's write side closes before anything was sent, or right after
    # a partial head.
    for n in range(10):
        sock = stack.enter_context(connect(port))
        if n % 2:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: origin\r\n")
        sock.shutdown(socket.SHUT_WR)
    # Idle connections that never send a byte.
    for _ in range(10):
        stack.enter_context(connect(port))
    # Closed mid-head and mid-body (Content-Length and chunked).
    for n in range(10):
        with connect(port) as sock:
            sock.sendall(b"GET /echo HTTP/1.1\r\nHost: origin\r\nX-Half: "[: 10 + 3 * n])
        with connect(port) as sock:
            sock.sendall(
                b"POST /sha256 HTTP/1.1\r\nHost: origin\r\nContent-Length: 100000\r\n\r\n"
                + b"b" * 1000
            )
        with connect(port) as sock:
            sock.sendall(
                b"POST /sha256 HTTP/1.1\r\nHost: origin\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"10\r\n0123456789abcdef\r\n4"
            )
    # Resets (SO_LINGER 0) mid-response and mid-upload.
    linger = struct.pack("ii", 1, 0)
    for _ in range(10):
        with connect(port) as sock:
            sock.sendall(b"GET /bytes/10000000 HTTP/1.1\r\nHost: origin\r\n\r\n")
            sock.recv(65536)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        with connect(port) as sock:
            sock.sendall(
                b"POST /sha256 HTTP/1.1\r\nHost: origin\r\nContent-Length: 10000000\r\n\r\n"
                + b"c" * 200_000
            )
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)


@pytest.mark.timeout(90)
def test_garbage_never_takes_a_worker_down(
    origins: OriginProcess, start_gateway: StartGateway
) -> None:
    gw = start_gateway(gateway_config(origins.ports, timeouts={"header": 5.0}))
    with contextlib.ExitStack() as stack:
        _abuse(stack, gw.port, random.Random(1234))
        # Twenty fresh connections, while the half-open and idle ones are still there:
        # SO_REUSEPORT spreads them over both workers.
        for n in range(20):
            reply = http_get(gw.port, f"/echo?after-garbage={n}")
            assert reply.status == 200
            assert reply.body.startswith(f"GET\n/echo?after-garbage={n}\n".encode())
    assert gw.proc.poll() is None
    assert gw.admin("/livez")[0] == 200
    text = gw.metrics()
    assert "# TYPE eg_unhandled_exceptions_total counter" in text
    assert gw.metric("eg_unhandled_exceptions_total") == 0, gw.stderr[-5000:]
    assert gw.metric("eg_protocol_errors_total", side="downstream") > 0
    check_stopped_cleanly(gw)


def test_probes_while_serving_and_sigterm_exits_zero_within_drain(
    origins: OriginProcess, start_gateway: StartGateway
) -> None:
    drain = 3.0
    gw = start_gateway(gateway_config(origins.ports, timeouts={"drain": drain}))
    for path in ("/livez", "/readyz", "/startupz", "/healthz"):
        assert gw.admin(path)[0] == 200, path
    # An idle keep-alive client must not hold up the shutdown.
    with connect(gw.port) as idle:
        idle.sendall(b"GET / HTTP/1.1\r\nHost: origin\r\n\r\n")
        assert idle.recv(65536).startswith(b"HTTP/1.1 200 ")
        began = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        code = gw.proc.wait(drain + 5.0)
        elapsed = time.monotonic() - began
    assert code == 0, gw.stderr[-3000:]
    assert elapsed < drain + 1.0
    messages = [r.get("msg") for r in gw.records()]
    assert "draining" in messages
    assert "stopped" in messages
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", gw.port), timeout=1.0).close()


def test_eg_check_rejects_a_bad_config_and_binds_nothing(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    doc = gateway_config([free_port()])
    doc["listeners"][0]["address"] = f"127.0.0.1:{port}"
    doc["observability"]["metrics_bind"] = f"127.0.0.1:{admin}"
    doc["limits"]["max_body_typo"] = 1
    path = tmp_path / "bad.toml"
    path.write_text(to_toml(doc))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    check = subprocess.run(
        [sys.executable, "-m", "eg", "check", str(path)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=CLIENT_TIMEOUT, check=False,
    )  # fmt: skip
    assert check.returncode == 2, check
    assert "max_body_typo" in check.stderr
    # Running it fails the same way, before anything is bound.
    with subprocess.Popen(
        [sys.executable, "-m", "eg", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=env,
    ) as proc:  # fmt: skip
        refused = []
        while proc.poll() is None:
            for p in (port, admin):
                try:
                    socket.create_connection(("127.0.0.1", p), timeout=0.2).close()
                    refused.append(False)
                except OSError:
                    refused.append(True)
        _, err = proc.communicate(timeout=CLIENT_TIMEOUT)
    assert proc.returncode == 2, err
    assert all(refused)
    for p in (port, admin):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", p))  # still free


@pytest.mark.timeout(30)
def test_wrk_smoke_no_errors(gateway: Gateway) -> None:
    result = subprocess.run(
        ["wrk", "-t1", "-c16", "-d2s", f"http://127.0.0.1:{gateway.port}/"],
        capture_output=True, text=True, timeout=CLIENT_TIMEOUT, check=False,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, result
    assert "Socket errors" not in out, out
    assert "Non-2xx or 3xx responses" not in out, out
    match = re.search(r"(\d+) requests in", out)
    assert match is not None, out
    assert int(match.group(1)) > 100, out
    # The gateway is still healthy afterwards.
    assert http_get(gateway.port, "/").status == 200
