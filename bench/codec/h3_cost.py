"""CPU cost per HTTP/3 request of qh3 and of eg's server adapter, in one thread.

    python bench/codec/h3_cost.py [--requests 5000] [--rounds 5]

A QUIC client and server exchange datagrams in memory over one connection carrying
``--requests`` sequential small GETs (4 request fields; 200 with 2 fields and a 6-byte
body). Three rows:

- ``qh3 pair``: qh3's client and server (``QuicConnection`` + ``H3Connection`` each), both
  sides timed together: the reference the HTTP/3 budget was set against (a complete qh3
  request/response, client and server in one process).
- ``qh3 server``: the same, timing only the server's calls (receive, events, response,
  transmit).
- ``eg server``: eg's ``H3ServerCodec`` as the server (what a QUIC listener drives:
  ``feed_batch`` → ``RequestHead``; ``send(ResponseHead)``, ``send(Body)``, ``output``),
  timing only its calls, against the same qh3 client.

A gateway request costs more than ``eg server``: the upstream side (an HTTP/1.1 client
codec and its socket), the exchange, routing, metrics and the kernel's UDP and TCP work.
This isolates the HTTP/3 termination, and gives the machine's speed as a reference:
compare a gateway's CPU per request with ``qh3 pair`` measured on the same box.

Times are thread CPU time (``time.thread_time``); best of ``--rounds`` per row.
``--threads N`` runs each row in N threads at once as well, each with its own
connection: on free-threaded CPython the per-thread cost stays the single-thread cost
only if the threads share nothing hot (STYLE.md §6); the ratio shows how close it is.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from qh3.h3.connection import H3_ALPN, H3Connection
from qh3.h3.events import DataReceived, H3Event, HeadersReceived
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection
from qh3.quic.events import HandshakeCompleted

from eg.core.codec.h2._context import H2Context
from eg.core.codec.h3._context import H3Context
from eg.core.codec.h3.retry import parse_long_header
from eg.core.codec.h3.server import H3ServerCodec
from eg.core.message import Body, RequestHead, ResponseHead

ADDR = ("127.0.0.1", 4433)
REQUEST = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"bench.example"),
           (b":path", b"/small")]
RESPONSE = [(b":status", b"200"), (b"content-length", b"6")]
BODY = b"hello\n"


class Clock:
    """Time that moves on a little at every hop (qh3 paces its sends by it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def tick(self) -> float:
        self.now += 0.0001
        return self.now


class Qh3End:
    """One end on qh3's own classes; ``on_event`` sees its HTTP/3 events."""

    quic: QuicConnection

    def __init__(self, clock: Clock) -> None:
        self.h3: H3Connection | None = None
        self.clock = clock

    def receive(self, datagrams: list[bytes]) -> None:
        now = self.clock.tick()
        for data in datagrams:
            self.quic.receive_datagram(data, ADDR, now)
        while (event := self.quic.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                self.h3 = H3Connection(self.quic)
            elif self.h3 is not None:
                for h3_event in self.h3.handle_event(event):
                    self.on_event(self.h3, h3_event)

    def on_event(self, h3: H3Connection, event: H3Event) -> None:
        raise NotImplementedError

    def transmit(self) -> list[bytes]:
        return [d for d, _ in self.quic.datagrams_to_send(self.clock.tick())]


class Qh3Client(Qh3End):
    def __init__(self, ca: str, clock: Clock) -> None:
        super().__init__(clock)
        config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN,
                                   server_name="localhost")
        config.load_verify_locations(cafile=ca)
        self.quic = QuicConnection(configuration=config)
        self.quic.connect(ADDR, clock.now)
        self.done = False

    def request(self) -> None:
        assert self.h3 is not None
        self.done = False
        sid = self.quic.get_next_available_stream_id()
        self.h3.send_headers(sid, REQUEST, end_stream=True)

    def on_event(self, h3: H3Connection, event: H3Event) -> None:
        if isinstance(event, DataReceived | HeadersReceived) and event.stream_ended:
            self.done = True


class Qh3Server(Qh3End):
    """qh3's own server: answers every request head at once."""

    def __init__(self, config: QuicConfiguration, first: bytes, clock: Clock) -> None:
        super().__init__(clock)
        info = parse_long_header(first)
        assert info is not None
        self.quic = QuicConnection(configuration=config,
                                   original_destination_connection_id=info.dcid)

    def on_event(self, h3: H3Connection, event: H3Event) -> None:
        if isinstance(event, HeadersReceived):
            h3.send_headers(event.stream_id, RESPONSE)
            h3.send_data(event.stream_id, BODY, end_stream=True)


class EgServer:
    """eg's server codec, answering every RequestHead at once, as an exchange would."""

    def __init__(self, ctx: H3Context, config: QuicConfiguration, first: bytes,
                 clock: Clock) -> None:
        info = parse_long_header(first)
        assert info is not None
        self.codec = H3ServerCodec(ctx, config, scheme=b"https", odcid=info.dcid,
                                   host_cid=b"\x00" * 8)
        self.clock = clock

    def receive(self, datagrams: list[bytes]) -> None:
        codec = self.codec
        for msg in codec.feed_batch(datagrams, ADDR, self.clock.tick()):
            if isinstance(msg, RequestHead):
                codec.send(ResponseHead(stream_id=msg.stream_id, status=200,
                                        headers=RESPONSE[1:], end_stream=False,
                                        content_length=len(BODY)))
                codec.send(Body(stream_id=msg.stream_id, data=BODY, end_stream=True))

    def transmit(self) -> list[bytes]:
        return [d for d, _ in self.codec.output(self.clock.tick())]


def run(kind: str, requests: int, certs: Path) -> float:
    """µs of thread CPU per request for ``kind``'s timed side(s)."""
    clock = Clock()
    ctx = H3Context(fields=H2Context(), idle_timeout=30.0, max_udp_payload=1350,
                    max_requests=10**9, max_field_section_size=1 << 20,
                    qpack_max_table_capacity=0, qpack_blocked_streams=0,
                    max_stream_data=1 << 20, max_data=4 << 20, hold_limit=4 << 20)
    config = ctx.server_configuration(str(certs / "cert.pem"), str(certs / "key.pem"))
    client = Qh3Client(str(certs / "ca.pem"), clock)
    first = client.transmit()
    server: Qh3Server | EgServer = (EgServer(ctx, config, first[0], clock) if kind == "eg server"
                                    else Qh3Server(config, first[0], clock))
    spent = {"client": 0.0, "server": 0.0}

    def timed[T](side: str, call: Callable[..., T], *args: object) -> T:
        start = time.thread_time()
        out = call(*args)
        spent[side] += time.thread_time() - start
        return out

    def hop(to_server: list[bytes]) -> tuple[list[bytes], list[bytes]]:
        """Datagrams to the server, its answer to the client, the client's reply."""
        timed("server", server.receive, to_server)
        to_client = timed("server", server.transmit)
        timed("client", client.receive, to_client)
        return to_client, timed("client", client.transmit)

    to_server = first
    for _ in range(100):  # the handshake
        to_client, to_server = hop(to_server)
        if not to_server and not to_client:
            break
    assert client.h3 is not None, "no handshake"
    spent["client"] = spent["server"] = 0.0
    for _ in range(requests):
        timed("client", client.request)
        to_server = timed("client", client.transmit)
        while True:
            to_client, to_server = hop(to_server)
            if client.done and not to_server:
                break
    total = spent["server"] + (spent["client"] if kind == "qh3 pair" else 0.0)
    return total / requests * 1e6


def concurrent(kind: str, requests: int, certs: Path, threads: int) -> list[float]:
    """``run`` in ``threads`` threads at once, each on its own connection."""
    results: list[float] = []
    workers = [threading.Thread(target=lambda: results.append(run(kind, requests, certs)))
               for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="also run each row in this many threads at once (shared-nothing "
                             "check: each thread's cost should stay its single-thread cost)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        certs = Path(tmp)
        script = Path(__file__).resolve().parents[2] / "scripts" / "dev-certs"
        subprocess.run([str(script), str(certs)], check=True, capture_output=True)
        for kind in ("qh3 pair", "qh3 server", "eg server"):
            best = min(run(kind, args.requests, certs) for _ in range(args.rounds))
            line = f"{kind:12} {best:8.1f} µs/request"
            if args.threads > 1:
                each = min(max(concurrent(kind, args.requests, certs, args.threads))
                            for _ in range(args.rounds))
                line += (f"   {args.threads} threads at once: {each:8.1f} µs/request each "
                         f"({each / best:.2f}x)")
            print(line)
    print(f"GIL enabled: {sys._is_gil_enabled()}")


if __name__ == "__main__":
    main()
