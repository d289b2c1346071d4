"""Lingering close: an early final response survives a client that is still uploading."""

from __future__ import annotations

import socket
import time

from tests.helpers import OriginProcess
from tests.integration.conftest import StartGateway, gateway_config

CAP = 1024 * 1024


def test_413_reaches_a_client_still_sending_its_body(start_gateway: StartGateway) -> None:
    with OriginProcess([0], ["a"]) as origin:
        gw = start_gateway(gateway_config([origin.port], limits={"max_request_body": CAP}))
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            sock.sendall(b"POST /sha256 HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n"
                         % (8 * CAP))
            piece = b"x" * 65536
            sent = 0
            # Keep uploading after eg has answered 413: a plain close() would make the
            # kernel reset the connection and destroy the unread 413 in our receive buffer.
            for _ in range(8):
                try:
                    sock.sendall(piece)
                    sent += len(piece)
                except OSError:
                    break
                time.sleep(0.02)
            reply = b""
            while b"\r\n\r\n" not in reply:
                data = sock.recv(65536)
                assert data, f"connection ended before the response; sent {sent} bytes"
                reply += data
        assert reply.startswith(b"HTTP/1.1 413 "), reply[:200]
        # eg kept reading (and dropping) the rest instead of resetting the connection.
        assert sent == 8 * len(piece)
        assert b"connection: close" in reply.lower()
