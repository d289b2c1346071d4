"""eg.reactor.admin over a real loopback socket."""

from __future__ import annotations

import hashlib
import http.client
import socket
import time
from collections.abc import Iterator

import pytest

from eg.reactor.admin import MAX_CONNECTIONS, METRICS_CONTENT_TYPE, AdminServer, AdminState

TOKEN = "s3cret-token"
TOKEN_HASH = hashlib.sha256(TOKEN.encode()).hexdigest()
METRICS = b"# HELP eg_workers Worker threads.\n# TYPE eg_workers gauge\neg_workers 2.0\n"


class Alive:
    def __init__(self) -> None:
        self.value = True

    def __call__(self) -> bool:
        return self.value


def request(
    server: AdminServer, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def serve(token_hash: str, state: AdminState, bind: str = "127.0.0.1:0") -> AdminServer:
    server = AdminServer(
        bind=bind, token_hash=token_hash, render_metrics=lambda: METRICS, state=state
    )
    server.start()
    return server


@pytest.fixture
def alive() -> Alive:
    return Alive()


@pytest.fixture
def state(alive: Alive) -> AdminState:
    return AdminState(started=True, workers_alive=alive)


@pytest.fixture
def open_server(state: AdminState) -> Iterator[AdminServer]:
    server = serve("", state)
    yield server
    server.stop()


@pytest.fixture
def token_server(state: AdminState) -> Iterator[AdminServer]:
    server = serve(TOKEN_HASH, state)
    yield server
    server.stop()


def test_metrics_without_token(open_server: AdminServer) -> None:
    status, headers, body = request(open_server, "GET", "/metrics")
    assert status == 200
    assert headers["content-type"] == METRICS_CONTENT_TYPE
    assert "version=0.0.4" in headers["content-type"]
    assert body == METRICS
    assert headers["content-length"] == str(len(METRICS))


def test_head_has_headers_but_no_body(open_server: AdminServer) -> None:
    status, headers, body = request(open_server, "HEAD", "/metrics")
    assert (status, body) == (200, b"")
    assert headers["content-length"] == str(len(METRICS))


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer ", "Basic dXNlcjpw", TOKEN])
def test_token_missing_or_malformed_is_401(
    token_server: AdminServer, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    status, got, body = request(token_server, "GET", "/metrics", headers)
    assert status == 401
    assert got["www-authenticate"] == "Bearer"
    assert METRICS not in body


@pytest.mark.parametrize("token", ["wrong", TOKEN + "x", TOKEN_HASH, TOKEN.upper()])
def test_wrong_token_is_403(token_server: AdminServer, token: str) -> None:
    status, _, body = request(token_server, "GET", "/metrics", {"Authorization": f"Bearer {token}"})
    assert status == 403
    assert METRICS not in body


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_right_token_is_200(token_server: AdminServer, scheme: str) -> None:
    status, _, body = request(
        token_server, "GET", "/metrics", {"Authorization": f"{scheme} {TOKEN}"}
    )
    assert (status, body) == (200, METRICS)


@pytest.mark.parametrize("path", ["/livez", "/healthz", "/readyz", "/startupz"])
def test_probes_never_need_the_token(token_server: AdminServer, path: str) -> None:
    status, headers, body = request(token_server, "GET", path)
    assert (status, body) == (200, b"ok\n")
    assert headers["content-type"].startswith("text/plain")


def test_readyz_flips_when_draining(open_server: AdminServer, state: AdminState) -> None:
    assert request(open_server, "GET", "/readyz")[0] == 200
    state.draining = True
    assert request(open_server, "GET", "/readyz")[0] == 503
    # draining does not make the process unhealthy or un-started
    assert request(open_server, "GET", "/livez")[0] == 200
    assert request(open_server, "GET", "/healthz")[0] == 200
    assert request(open_server, "GET", "/startupz")[0] == 200


def test_before_start(alive: Alive) -> None:
    state = AdminState(workers_alive=alive)
    server = serve("", state)
    try:
        assert request(server, "GET", "/startupz")[0] == 503
        assert request(server, "GET", "/readyz")[0] == 503
        assert request(server, "GET", "/livez")[0] == 200
        state.started = True
        assert request(server, "GET", "/startupz")[0] == 200
        assert request(server, "GET", "/readyz")[0] == 200
    finally:
        server.stop()


def test_healthz_follows_workers(open_server: AdminServer, alive: Alive) -> None:
    assert request(open_server, "GET", "/healthz")[0] == 200
    alive.value = False
    assert request(open_server, "GET", "/healthz")[0] == 503
    assert request(open_server, "GET", "/livez")[0] == 200


@pytest.mark.parametrize("path", ["/", "/metric", "/metrics/x", "/readyz/", "/nope"])
def test_unknown_path_is_404(open_server: AdminServer, path: str) -> None:
    assert request(open_server, "GET", path)[0] == 404


def test_query_string_is_ignored(open_server: AdminServer) -> None:
    assert request(open_server, "GET", "/readyz?verbose=1")[0] == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"])
def test_other_methods_are_405(token_server: AdminServer, method: str) -> None:
    status, headers, _ = request(token_server, method, "/metrics")
    assert status == 405
    assert headers["allow"] == "GET, HEAD"


def test_render_failure_is_500_and_server_survives(state: AdminState) -> None:
    def broken() -> bytes:
        raise RuntimeError("boom")

    server = AdminServer(bind="127.0.0.1:0", token_hash="", render_metrics=broken, state=state)
    server.start()
    try:
        assert request(server, "GET", "/metrics")[0] == 500
        assert request(server, "GET", "/livez")[0] == 200
    finally:
        server.stop()


def test_bind_errors_raise_synchronously(open_server: AdminServer, state: AdminState) -> None:
    with pytest.raises(OSError):
        serve("", state, bind=f"127.0.0.1:{open_server.port}")
    with pytest.raises(ValueError, match="host:port"):
        serve("", state, bind="127.0.0.1")
    with pytest.raises(ValueError, match="not loopback"):
        serve("", state, bind="0.0.0.0:0")
    with pytest.raises(ValueError, match="64 hex"):
        serve("abc", state)


def test_ipv6_loopback(state: AdminState) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = serve("", state, bind="[::1]:0")
    except OSError:
        pytest.skip("::1 not available")
    try:
        assert server.host == "::1"
        assert request(server, "GET", "/livez")[0] == 200
    finally:
        server.stop()


def test_stop_closes_the_port_and_is_idempotent(state: AdminState) -> None:
    server = serve("", state)
    port = server.port
    server.stop()
    server.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with pytest.raises(RuntimeError):
        _ = server.port


def test_no_stderr_noise(open_server: AdminServer, capfd: pytest.CaptureFixture[str]) -> None:
    request(open_server, "GET", "/metrics")
    request(open_server, "GET", "/nope")
    request(open_server, "POST", "/metrics")
    assert capfd.readouterr().err == ""


def test_connection_cap_sheds_and_recovers(open_server: AdminServer) -> None:
    idle = [
        socket.create_connection((open_server.host, open_server.port), timeout=5)
        for _ in range(MAX_CONNECTIONS)
    ]
    try:
        time.sleep(0.5)  # let the server accept all of them
        with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
            request(open_server, "GET", "/livez")
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 5
    while True:
        try:
            assert request(open_server, "GET", "/livez")[0] == 200
            break
        except (http.client.RemoteDisconnected, ConnectionResetError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
