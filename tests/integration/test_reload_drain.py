"""SIGHUP reload and SIGTERM drain against a live gateway and real origins."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from eg.core.config import load
from eg.core.errors import ConfigError
from tests.helpers import OriginProcess, http_get
from tests.integration.conftest import (
    Gateway,
    check_stopped_cleanly,
    gateway_config,
    launch,
    to_toml,
)


def _wait_for(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _readyz(gw: Gateway) -> int:
    try:
        return gw.admin("/readyz")[0]
    except OSError:
        return -1


def test_sighup_swaps_endpoints_and_rejects_bad_files(tmp_path: Path) -> None:
    with OriginProcess([0, 0], ["a", "b"]) as origin:
        a, b = origin.ports
        gw = launch(tmp_path, gateway_config([a]))
        try:
            assert {http_get(gw.port, "/").header("x-origin") for _ in range(4)} == {"a"}

            gw.config_path.write_text(to_toml(gateway_config([b])))
            gw.proc.send_signal(signal.SIGHUP)
            assert _wait_for(lambda: any(r.get("msg") == "config reloaded" for r in gw.records()))
            # Every worker applies the new snapshot from its mailbox.
            assert _wait_for(
                lambda: {http_get(gw.port, "/").header("x-origin") for _ in range(6)} == {"b"}
            )

            gw.config_path.write_text("this is = not [valid toml")
            gw.proc.send_signal(signal.SIGHUP)
            assert _wait_for(
                lambda: any("reload rejected" in str(r.get("msg")) for r in gw.records())
            )
            assert http_get(gw.port, "/").header("x-origin") == "b"
            assert gw.proc.poll() is None
        finally:
            gw.stop()


def test_sigterm_drains_in_flight_exchange_then_exits_zero(tmp_path: Path) -> None:
    with OriginProcess([0], ["a"]) as origin:
        gw = launch(tmp_path, gateway_config([origin.port], timeouts={"drain": 5.0}))
        result: dict[str, object] = {}

        def slow_request() -> None:
            reply = http_get(gw.port, "/slow?delay=2&size=1000", timeout=10.0)
            result["status"] = reply.status
            result["body"] = len(reply.body)
            result["connection"] = reply.header("connection")

        thread = threading.Thread(target=slow_request)
        thread.start()
        # Wait until the request is in flight: an upstream connection is open for it.
        assert _wait_for(lambda: gw.metric("eg_upstream_connections_open") >= 1)
        gw.proc.send_signal(signal.SIGTERM)
        assert _wait_for(lambda: _readyz(gw) == 503, timeout=5.0)
        thread.join(10)
        assert result == {"status": 200, "body": 1000, "connection": "close"}
        assert gw.proc.wait(10) == 0
        check_stopped_cleanly(gw)


def test_drain_settle_keeps_serving_while_readyz_fails(tmp_path: Path) -> None:
    with OriginProcess([0], ["a"]) as origin, launch(tmp_path, gateway_config(
            [origin.port], timeouts={"drain": 5.0, "drain_settle": 2.0})) as gw:
        assert _readyz(gw) == 200
        gw.proc.send_signal(signal.SIGTERM)
        assert _wait_for(lambda: _readyz(gw) == 503, timeout=5.0), gw.stderr
        # Settling: not ready, but new connections are still accepted and served.
        assert http_get(gw.port, "/").status == 200
        assert gw.proc.wait(10) == 0


def test_drain_settle_config_bounds() -> None:
    base = '[[listeners]]\nname = "h"\naddress = "127.0.0.1:0"\n[timeouts]\n'
    assert load((base + "drain_settle = 0\n").encode()).timeouts.drain_settle == 0.0
    assert load((base + "drain_settle = 2.5\n").encode()).timeouts.drain_settle == 2.5
    try:
        load((base + "drain_settle = -1\n").encode())
    except ConfigError as exc:
        assert "timeouts.drain_settle" in str(exc) and "0 or more seconds" in str(exc)
    else:
        raise AssertionError("a negative drain_settle was accepted")


def test_sigterm_drains_http2_streams_with_goaway(tmp_path: Path) -> None:
    """An HTTP/2 client mid-stream (nghttp): GOAWAY(NO_ERROR) naming its stream, the
    stream finishes with its whole body, and the process exits 0. (Streams opened after
    the GOAWAY get REFUSED_STREAM: tests/codec/test_h2_server.py.)"""
    nghttp = shutil.which("nghttp")
    if nghttp is None:
        pytest.skip("nghttp (nghttp2-client) is not installed")
    with OriginProcess([0], ["a"]) as origin:
        doc = gateway_config([origin.port], timeouts={"drain": 5.0}, workers=1)
        doc["listeners"] = [{"name": "http", "address": "127.0.0.1:0", "protocol": "h2c"}]
        gw = launch(tmp_path, doc)
        client = subprocess.Popen(
            [nghttp, "-v", "-n", f"http://127.0.0.1:{gw.port}/slow?delay=1.5&size=1000"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert _wait_for(lambda: gw.metric("eg_upstream_connections_open") >= 1)
        gw.proc.send_signal(signal.SIGTERM)
        out, _ = client.communicate(timeout=15)
        assert client.returncode == 0, out
        assert "recv GOAWAY frame" in out, out
        assert "(last_stream_id=13, error_code=NO_ERROR(0x00)" in out, out
        # The response comes after the GOAWAY, whole: 200, then 1000 bytes ending the stream.
        after = out.split("recv GOAWAY frame", 1)[1]
        assert ":status: 200" in after, out
        assert sum(int(n) for n in re.findall(r"recv DATA frame <length=(\d+)", after)) == 1000
        assert "; END_STREAM" in after, out
        assert gw.proc.wait(10) == 0
        check_stopped_cleanly(gw)
