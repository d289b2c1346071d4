"""CPU cost per request of the HTTP/2 adapters, one side at a time, in one thread.

    python bench/codec/h2_cost.py [--requests 20000] [--rounds 5]

Four measurements, each a fresh connection carrying ``--requests`` sequential streams of a
small GET (8 request fields; 200 with 3 fields and a 6-byte body), timed over only the
side named, while an in-memory peer plays the other side:

- ``h2 server``: a bare ``H2Connection(client_side=False)``, configured as the adapters
  configure it (``header_encoding=None``, inbound validation and normalisation on, a
  no-op logger): ``receive_data`` (HEADERS in) → ``send_headers`` + ``send_data`` →
  ``data_to_send``. This is the round RECIPES.md measured at ~217 µs.
- ``eg server``: ``H2ServerCodec``: ``feed`` → ``RequestHead``; ``send(ResponseHead)``,
  ``send(Body)``, ``output()``.
- ``h2 client``: the bare client round (``send_headers`` → ``data_to_send``;
  ``receive_data`` of HEADERS + DATA), RECIPES.md's ~224 µs.
- ``eg client``: ``H2ClientCodec``: ``open_stream``, ``send(RequestHead)``, ``output()``,
  ``feed`` → ``ResponseHead`` + ``Body``.

The adapter rows include the adapters' own work (header mapping, flow-control
bookkeeping, acknowledgements) on top of h2's. HPACK dynamic tables are per connection
(each codec's ``H2Connection`` owns its encoder and decoder), so codecs, and therefore
workers, share no HPACK state. What they do share are hpack's module-level static and
Huffman tables and its module logger: read-only, but on 3.13t still reference-counted
from every thread.

``--quiet-hpack`` also disables the ``hpack`` logger (process-wide): hpack calls
``logging.debug`` a dozen or more times per header block on its module-level logger,
even with h2's no-op logger configured, which is where RECIPES.md's "~18 logging.debug
calls per request" come from. The adapters leave that alone (logging configuration is
the process's to decide).

Times are thread CPU time (``time.thread_time``), so other load on the machine does not
inflate them. Prints µs per request (best of ``--rounds`` for each row) and the GIL state.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import RequestReceived, ResponseReceived

from eg.core.codec.h2._context import H2Context, NullLogger
from eg.core.codec.h2.client import H2ClientCodec
from eg.core.codec.h2.server import H2ServerCodec
from eg.core.message import Body, RequestHead, ResponseHead

REQUEST = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"bench.example"),
    (b":path", b"/small"),
    (b"user-agent", b"h2load nghttp2/1.52.0"),
    (b"accept", b"*/*"),
    (b"accept-encoding", b"gzip, deflate, br"),
    (b"accept-language", b"en-US,en;q=0.9"),
]
RESPONSE = [
    (b":status", b"200"),
    (b"content-type", b"text/plain"),
    (b"content-length", b"6"),
    (b"server", b"origin"),
]
BODY = b"hello\n"


def h2_conn(client_side: bool) -> H2Connection:
    """A bare h2 connection configured like the adapters' (and its preface consumed)."""
    conn = H2Connection(
        H2Configuration(
            client_side=client_side,
            header_encoding=None,
            validate_inbound_headers=True,
            normalize_inbound_headers=True,
            logger=NullLogger(),
        )
    )
    conn.initiate_connection()
    return conn


def peer(client_side: bool) -> H2Connection:
    """The untimed other side: a default h2 connection."""
    conn = H2Connection(H2Configuration(client_side=client_side, header_encoding=None))
    conn.initiate_connection()
    return conn


def handshake(a: H2Connection, b: H2Connection) -> None:
    for _ in range(2):
        b.receive_data(a.data_to_send())
        a.receive_data(b.data_to_send())


def bare_server(n: int) -> float:
    srv, cli = h2_conn(False), peer(True)
    handshake(cli, srv)
    spent = 0.0
    clock = time.thread_time
    for i in range(n):
        sid = 2 * i + 1
        cli.send_headers(sid, REQUEST, end_stream=True)
        wire = cli.data_to_send()
        t0 = clock()
        events = srv.receive_data(wire)
        assert isinstance(events[0], RequestReceived)
        srv.send_headers(sid, RESPONSE)
        srv.send_data(sid, BODY, end_stream=True)
        out = srv.data_to_send()
        spent += clock() - t0
        cli.receive_data(out)
    return spent / n


def eg_server(n: int) -> float:
    ctx = H2Context()
    srv, cli = H2ServerCodec(ctx, scheme=b"https"), peer(True)
    cli.receive_data(b"".join(srv.output()))
    srv.feed(cli.data_to_send(), 0.0)
    cli.receive_data(b"".join(srv.output()))
    headers = [(b"content-type", b"text/plain"), (b"server", b"origin")]
    spent = 0.0
    clock = time.thread_time
    for i in range(n):
        sid = 2 * i + 1
        cli.send_headers(sid, REQUEST, end_stream=True)
        wire = cli.data_to_send()
        t0 = clock()
        msgs = srv.feed(wire, 0.0)
        head = msgs[0]
        assert isinstance(head, RequestHead)
        srv.send(ResponseHead(stream_id=sid, status=200, headers=headers, end_stream=False,
                              content_length=6))
        srv.send(Body(stream_id=sid, data=BODY, end_stream=True))
        out = srv.output()
        spent += clock() - t0
        cli.receive_data(b"".join(out))
    return spent / n


def bare_client(n: int) -> float:
    cli, srv = h2_conn(True), peer(False)
    handshake(cli, srv)
    spent = 0.0
    clock = time.thread_time
    for i in range(n):
        sid = 2 * i + 1
        t0 = clock()
        cli.send_headers(sid, REQUEST, end_stream=True)
        wire = cli.data_to_send()
        spent += clock() - t0
        srv.receive_data(wire)
        srv.send_headers(sid, RESPONSE)
        srv.send_data(sid, BODY, end_stream=True)
        back = srv.data_to_send()
        t0 = clock()
        events = cli.receive_data(back)
        spent += clock() - t0
        assert isinstance(events[0], ResponseReceived)
    return spent / n


def eg_client(n: int) -> float:
    ctx = H2Context()
    cli, srv = H2ClientCodec(ctx), peer(False)
    srv.receive_data(b"".join(cli.output()))
    cli.feed(srv.data_to_send(), 0.0)
    srv.receive_data(b"".join(cli.output()))
    headers = REQUEST[4:]
    spent = 0.0
    clock = time.thread_time
    for _ in range(n):
        t0 = clock()
        sid = cli.open_stream()
        cli.send(RequestHead(stream_id=sid, method=b"GET", scheme=b"https",
                             authority=b"bench.example", path=b"/small", headers=headers,
                             end_stream=True))
        wire = b"".join(cli.output())
        spent += clock() - t0
        srv.receive_data(wire)
        srv.send_headers(sid, RESPONSE)
        srv.send_data(sid, BODY, end_stream=True)
        back = srv.data_to_send()
        t0 = clock()
        msgs = cli.feed(back, 0.0)
        out = cli.output()  # WINDOW_UPDATEs, if any, are part of the round
        spent += clock() - t0
        assert isinstance(msgs[0], ResponseHead) and isinstance(msgs[1], Body)
        if out:
            srv.receive_data(b"".join(out))
    return spent / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quiet-hpack", action="store_true",
                        help="disable the hpack logger (process-wide) before measuring")
    args = parser.parse_args()
    if args.quiet_hpack:
        logging.getLogger("hpack").disabled = True
    rows: list[tuple[str, Callable[[int], float]]] = [
        ("h2 server (bare)", bare_server),
        ("eg H2ServerCodec", eg_server),
        ("h2 client (bare)", bare_client),
        ("eg H2ClientCodec", eg_client),
    ]
    gil = sys._is_gil_enabled() if hasattr(sys, "_is_gil_enabled") else True
    print(f"python {sys.version.split()[0]}, GIL {'on' if gil else 'off'}, "
          f"{args.requests} requests x {args.rounds} rounds (best), "
          f"hpack logger {'disabled' if args.quiet_hpack else 'enabled'}")
    print(f"{'side':<20} {'µs/request':>10}")
    for name, fn in rows:
        best = min(fn(args.requests) for _ in range(args.rounds))
        print(f"{name:<20} {best * 1e6:>10.1f}")


if __name__ == "__main__":
    main()
