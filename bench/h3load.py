"""h3load: an HTTP/3 load generator in the manner of h2load, on qh3.

    python bench/h3load.py [-c N] [-m N] (-D SECONDS | -n REQUESTS) [-p PROCESSES]
                           [--ca FILE | --insecure] URL

Debian's h2load has no HTTP/3 (its help text mentions it; the build lacks ngtcp2), so the
HTTP/3 benchmark cells need their own client. This one opens ``-c`` QUIC connections
(ALPN h3), keeps ``-m`` GET requests in flight on each, and prints h2load's summary
(``finished in``, ``requests:``, ``status codes:``, ``traffic:``, ``time for request``)
followed by one machine-readable line, ``H3LOADJSON {...}``, with every count and the
latency percentiles in microseconds.

Made to cost the client as little CPU as possible, since on a small box it shares the cores
with the proxy under test:

- no asyncio: one epoll loop per process, one *connected* UDP socket per connection (the
  kernel demultiplexes; no address per datagram), datagrams read in batches and handed to
  qh3 in one ``receive_many_datagrams`` call;
- qh3's ``H3Connection`` only sets the connection up (control stream, SETTINGS, QPACK
  streams, GOAWAY): request streams bypass it. The request's HEADERS frame is QPACK-encoded
  once (no dynamic table: we grant none and use none) and written as is on every new
  stream with FIN; responses are framed by a small incremental parser here that decodes
  only the first HEADERS block (a static-table ``:status`` without even calling the
  decoder) and counts DATA bytes without copying them;
- ``-p`` forks client processes (connections and ``-n`` split between them) so that the
  client is not the bottleneck; each reports to the parent over a pipe.

Counting follows h2load: ``done`` are requests whose stream ended with a response
(``succeeded`` if 2xx/3xx); ``errored`` got no complete response (stream reset, connection
closed, timed out; ``timeout`` is a subset); ``failed`` = done without success + errored.
In ``-D`` mode requests still in flight when the time is up are ``started`` but not done,
and are not failures. A GOAWAY (eg recycles connections after
``max_requests_per_connection``) is honoured: no new streams on that connection, and a new
connection replaces it once its last stream ends; streams the server rejected as
unprocessed (at or past the GOAWAY id, or reset with H3_REQUEST_REJECTED) are sent again
and are not errors.

Runs on any CPython >= 3.11 with qh3 (eg's free-threaded interpreter included).
"""

from __future__ import annotations

import argparse
import array
import contextlib
import dataclasses
import gc
import json
import math
import os
import select
import signal
import socket
import ssl
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from qh3._hazmat import (
    DecoderStreamError,
    DecompressionFailed,
    HeaderTooLarge,
    QpackDecoder,
    QpackEncoder,
    StreamBlocked,
)
from qh3.h3.connection import FrameType, H3Connection, encode_frame
from qh3.h3.events import GoawayReceived
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection
from qh3.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    StreamDataReceived,
    StreamReset,
)

#: max_datagram_frame_size transport parameter: qh3's H3 layer announces H3 datagrams and
#: a peer closes the connection (H3_SETTINGS_ERROR) unless this is set (RECIPES.md).
MAX_DATAGRAM_FRAME_SIZE = 65536
#: Largest UDP payload read.
RECV_SIZE = 65535
#: Datagrams read from one socket before they are handed to qh3 (and replies sent).
RECV_BATCH = 64
#: Socket buffers asked for: a burst of responses must not overflow the kernel's default.
SOCKET_BUFFER = 4 << 20
#: H3_REQUEST_REJECTED (RFC 9114 §8.1): the server did not process the stream; retry it.
H3_REQUEST_REJECTED = 0x10B
#: H3_NO_ERROR, for our own CONNECTION_CLOSE at the end.
H3_NO_ERROR = 0x100
#: Consecutive failed connection attempts on one slot before that slot gives up.
MAX_CONNECT_FAILURES = 5
#: Static-table indexes of ``:status`` (RFC 9204 Appendix A) that fit a 6-bit index.
STATIC_STATUS = {24: 103, 25: 200, 26: 304, 27: 404, 28: 503}

# States of one connection slot.
CONNECTING, READY, DRAINING, CLOSED = range(4)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """What every client process needs to know."""

    host: str
    port: int
    server_name: str
    authority: str
    path: str
    connections: int
    streams: int
    duration: float
    """Seconds to run (``-D``); 0 when ``requests`` is given instead."""
    requests: int
    """Requests to complete (``-n``); 0 in duration mode."""
    timeout: float
    """A connection without any datagram for this long is abandoned (its streams time out)."""
    cafile: str | None
    insecure: bool
    method: str = "GET"
    extra_headers: tuple[tuple[bytes, bytes], ...] = ()


class _Control(H3Connection):
    """qh3's H3Connection for the control plane only: no QPACK dynamic table granted."""

    def _init_connection(self) -> None:
        self._max_table_capacity = 0
        self._blocked_streams = 0
        self._decoder = QpackDecoder(0, 0)
        super()._init_connection()


class _Stream:
    """One request in flight and its response parser's state."""

    __slots__ = ("body", "headers", "pending", "skip", "start", "status")

    def __init__(self, start: int) -> None:
        self.start = start
        self.status = 0
        self.pending = b""
        self.skip = 0
        self.body = 0
        self.headers = 0


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """A QUIC variable-length integer at ``pos``: (value, end), or (-1, pos) if cut short."""
    if pos >= len(data):
        return -1, pos
    first = data[pos]
    size = 1 << (first >> 6)
    end = pos + size
    if end > len(data):
        return -1, pos
    value = first & 0x3F
    for i in range(pos + 1, end):
        value = (value << 8) | data[i]
    return value, end


@dataclasses.dataclass(slots=True)
class Stats:
    """One process's counts (summed over processes by the parent)."""

    started: int = 0
    done: int = 0
    succeeded: int = 0
    errored: int = 0
    timeout: int = 0
    retried: int = 0
    s1xx: int = 0
    s2xx: int = 0
    s3xx: int = 0
    s4xx: int = 0
    s5xx: int = 0
    bytes_total: int = 0
    bytes_headers: int = 0
    bytes_data: int = 0
    datagrams_rx: int = 0
    datagrams_tx: int = 0
    connects: int = 0
    connect_failures: int = 0
    goaways: int = 0
    elapsed: float = 0.0
    cpu: float = 0.0


class Conn:
    """One QUIC connection slot: reconnects after a GOAWAY (or a broken connection)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.state = CLOSED
        self.quic: QuicConnection | None = None
        self.h3: _Control | None = None
        self.sock: socket.socket | None = None
        self.streams: dict[int, _Stream] = {}
        self.goaway_id: int | None = None
        self.timer: float | None = None
        self.last_rx = 0.0
        self.connect_start = 0
        self.failures = 0
        self.dead = False

    # -- connection life ----------------------------------------------------------------------

    def open(self, now: float) -> None:
        cl = self.client
        sock = socket.socket(socket.AF_INET6 if ":" in cl.addr[0] else socket.AF_INET,
                             socket.SOCK_DGRAM)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        sock.connect(cl.addr)
        sock.setblocking(False)
        self.sock = sock
        quic = QuicConnection(configuration=cl.configuration)
        quic.connect(cl.addr, now)
        self.quic = quic
        # Control stream, SETTINGS and QPACK streams go out with the handshake's
        # first 1-RTT packets (qh3 holds writes made before the handshake).
        self.h3 = _Control(quic)
        self.state = CONNECTING
        self.goaway_id = None
        self.last_rx = now
        self.connect_start = time.perf_counter_ns()
        cl.fds[sock.fileno()] = self
        cl.epoll.register(sock.fileno(), select.EPOLLIN)
        self.flush(now)

    def teardown(self, *, errored: bool) -> None:
        """Forget the connection; its streams still in flight become errors or retries."""
        cl = self.client
        for st in self.streams.values():
            if errored:
                cl.stats.errored += 1
            else:
                cl.requeue(st)
        self.streams.clear()
        if self.sock is not None:
            fd = self.sock.fileno()
            with contextlib.suppress(OSError, ValueError):
                cl.epoll.unregister(fd)
            cl.fds.pop(fd, None)
            self.sock.close()
        self.sock = None
        self.quic = None
        self.h3 = None
        self.timer = None
        self.state = CLOSED

    def close(self, now: float) -> None:
        """Our CONNECTION_CLOSE (end of run, or after a GOAWAY once idle)."""
        if self.quic is not None and self.state != CLOSED:
            self.quic.close(error_code=H3_NO_ERROR)
            self.flush(now)
        self.teardown(errored=False)

    # -- input ----------------------------------------------------------------------------------

    def read(self, now: float) -> None:
        sock = self.sock
        quic = self.quic
        if sock is None or quic is None:
            return
        recv = sock.recv
        batch: list[bytes] = []
        nbytes = 0
        for _ in range(RECV_BATCH):
            try:
                data = recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # ICMP port unreachable: nothing listens there
                continue
            batch.append(data)
            nbytes += len(data)
        if not batch:
            return
        stats = self.client.stats
        stats.bytes_total += nbytes
        stats.datagrams_rx += len(batch)
        self.last_rx = now
        quic.receive_many_datagrams(batch, self.client.addr, now)
        self.events(now)

    def on_timer(self, now: float) -> None:
        quic = self.quic
        if quic is None:
            return
        if now - self.last_rx > self.client.opts.timeout:
            self.client.stats.timeout += len(self.streams)
            self.client.stats.errored += len(self.streams)
            self.streams.clear()
            self.close(now)
            self.failures += 1
            return
        quic.handle_timer(now)
        self.events(now)

    def events(self, now: float) -> None:
        quic = self.quic
        h3 = self.h3
        assert quic is not None and h3 is not None
        cl = self.client
        streams = self.streams
        while True:
            ev = quic.next_event()
            if ev is None:
                break
            if type(ev) is StreamDataReceived:
                sid = ev.stream_id
                if sid & 2:  # unidirectional: the server's control and QPACK streams
                    for h3ev in h3.handle_event(ev):
                        if isinstance(h3ev, GoawayReceived):
                            self.goaway(h3ev.stream_id)
                    continue
                st = streams.get(sid)
                if st is not None:
                    self.response_data(sid, st, ev.data, ev.end_stream)
            elif isinstance(ev, StreamReset):
                sid = ev.stream_id
                if sid & 2:
                    h3.handle_event(ev)
                    continue
                st = streams.pop(sid, None)
                if st is None:
                    continue
                gid = self.goaway_id
                if ev.error_code == H3_REQUEST_REJECTED or (gid is not None and sid >= gid):
                    cl.requeue(st)
                else:
                    cl.stats.errored += 1
            elif isinstance(ev, HandshakeCompleted):
                self.state = READY
                self.failures = 0
                cl.stats.connects += 1
                cl.connect_ns.append(time.perf_counter_ns() - self.connect_start)
            elif isinstance(ev, ConnectionTerminated):
                if self.state == CONNECTING:
                    cl.stats.connect_failures += 1
                    self.failures += 1
                    if cl.first_error is None:
                        cl.first_error = f"connection failed: {ev.reason_phrase or ev}"
                # Streams at or past a GOAWAY id were not processed: sent again elsewhere.
                gid = self.goaway_id
                for sid, st in list(streams.items()):
                    if gid is not None and sid >= gid:
                        cl.requeue(st)
                        del streams[sid]
                self.teardown(errored=True)
                return

    def goaway(self, stream_id: int) -> None:
        self.client.stats.goaways += 1
        self.goaway_id = stream_id
        if self.state != CLOSED:
            self.state = DRAINING

    def response_data(self, sid: int, st: _Stream, data: bytes, end: bool) -> None:
        """Frame the response incrementally: skip DATA payloads, decode the first HEADERS."""
        # Fast path, a small response whole in one piece: HEADERS (static :status) + DATA,
        # both with 1-byte lengths, nothing else.
        n = len(data)
        if end and not st.status and not st.pending and n >= 5 and data[0] == 1 \
                and data[1] < 64 and data[2] == 0 and data[3] == 0:
            hlen = data[1]
            first = data[4]
            tail = 2 + hlen
            if first & 0xC0 == 0xC0 and first & 0x3F in STATIC_STATUS and (
                    tail == n or (tail + 2 <= n and data[tail] == 0
                                  and data[tail + 1] < 64 and tail + 2 + data[tail + 1] == n)):
                st.status = STATIC_STATUS[first & 0x3F]
                st.headers = tail
                st.body = n - tail - 2 if tail < n else 0
                self.finish(sid, st)
                return
        if st.pending:
            data = st.pending + data
            st.pending = b""
        n = len(data)
        pos = 0
        while pos < n:
            if st.skip:
                take = min(st.skip, n - pos)
                st.skip -= take
                st.body += take
                pos += take
                continue
            ftype, p = _varint(data, pos)
            flen, p = _varint(data, p) if ftype >= 0 else (-1, p)
            if flen < 0:
                st.pending = data[pos:]
                break
            if ftype == 0:  # DATA: payload skipped, only counted
                st.skip = flen
                pos = p
                continue
            if p + flen > n:
                st.pending = data[pos:]
                break
            if ftype == 1:  # HEADERS
                st.headers += p + flen - pos
                if st.status < 200:
                    st.status = self.status_of(sid, data, p, flen)
            pos = p + flen
        if end:
            self.finish(sid, st)

    def status_of(self, sid: int, data: bytes, pos: int, length: int) -> int:
        """The ``:status`` of a header block (static-table fast path, else QPACK decode)."""
        if length >= 3 and data[pos] == 0 and data[pos + 1] == 0:
            first = data[pos + 2]
            if first & 0xC0 == 0xC0 and first & 0x3F in STATIC_STATUS:
                return STATIC_STATUS[first & 0x3F]
        try:
            _, headers = self.client.decoder.feed_header(sid, data[pos:pos + length])
        except (DecompressionFailed, DecoderStreamError, HeaderTooLarge, StreamBlocked):
            return -1  # a QPACK error in the response: no status
        for name, value in headers:
            if name == b":status":
                with contextlib.suppress(ValueError):
                    return int(value)
                break
        return -1

    def finish(self, sid: int, st: _Stream) -> None:
        cl = self.client
        del self.streams[sid]
        stats = cl.stats
        status = st.status
        if status < 200:  # no final response on a stream that ended
            stats.errored += 1
            return
        cl.latency.append(time.perf_counter_ns() - st.start)
        stats.done += 1
        stats.bytes_headers += st.headers
        stats.bytes_data += st.body
        if status < 300:
            stats.s2xx += 1
            stats.succeeded += 1
        elif status < 400:
            stats.s3xx += 1
            stats.succeeded += 1
        elif status < 500:
            stats.s4xx += 1
        else:
            stats.s5xx += 1

    # -- output ---------------------------------------------------------------------------------

    def fill(self) -> None:
        """Open request streams up to ``-m`` in flight (while the budget lasts)."""
        if self.state != READY:
            return
        cl = self.client
        quic = self.quic
        assert quic is not None
        want = cl.opts.streams - len(self.streams)
        if want <= 0:
            return
        frame = cl.request_frame
        streams = self.streams
        send = quic.send_stream_data
        next_id = quic.get_next_available_stream_id
        now_ns = time.perf_counter_ns()
        for _ in range(want):
            if not cl.take():
                return
            sid = next_id()
            streams[sid] = _Stream(now_ns)
            send(sid, frame, True)
            cl.stats.started += 1

    def flush(self, now: float) -> None:
        quic = self.quic
        sock = self.sock
        if quic is None or sock is None:
            return
        send = sock.send
        out = quic.datagrams_to_send(now)
        self.client.stats.datagrams_tx += len(out)
        for data, _addr in out:
            try:
                send(data)
            except (BlockingIOError, InterruptedError):
                pass  # dropped: QUIC's loss recovery resends it
            except OSError:
                break  # e.g. ECONNREFUSED from an earlier ICMP error
        self.timer = quic.get_timer()


class Client:
    """One process's connections, its epoll loop and its counts."""

    def __init__(self, opts: Options, connections: int, budget: int) -> None:
        self.opts = opts
        info = socket.getaddrinfo(opts.host, opts.port, type=socket.SOCK_DGRAM)
        self.addr: tuple[str, int] = info[0][4][:2]  # type: ignore[assignment]
        cfg = QuicConfiguration(is_client=True, alpn_protocols=["h3"],
                                server_name=opts.server_name,
                                max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE,
                                idle_timeout=max(opts.timeout, 5.0))
        if opts.insecure:
            cfg.verify_mode = ssl.CERT_NONE
        elif opts.cafile:
            cfg.load_verify_locations(cafile=opts.cafile)
        self.configuration = cfg
        headers = [(b":method", opts.method.encode()), (b":scheme", b"https"),
                   (b":authority", opts.authority.encode()), (b":path", opts.path.encode()),
                   (b"user-agent", b"h3load"), *opts.extra_headers]
        _, block = QpackEncoder().encode(0, headers)
        self.request_frame = encode_frame(FrameType.HEADERS, block)
        self.decoder = QpackDecoder(0, 0)
        self.epoll = select.epoll()
        self.fds: dict[int, Conn] = {}
        self.conns = [Conn(self) for _ in range(connections)]
        self.stats = Stats()
        self.latency = array.array("q")
        self.connect_ns = array.array("q")
        #: Requests not yet started (``-n``); -1 for unlimited (``-D``).
        self.budget = budget
        self.running = True
        self.first_error: str | None = None

    def take(self) -> bool:
        if not self.running:
            return False
        if self.budget < 0:
            return True
        if self.budget == 0:
            return False
        self.budget -= 1
        return True

    def requeue(self, st: _Stream) -> None:
        """A request the server did not process: it is started again later."""
        self.stats.started -= 1
        self.stats.retried += 1
        if self.budget >= 0:
            self.budget += 1

    def finished(self) -> bool:
        if self.budget < 0:
            return False
        return self.budget == 0 and not any(c.streams for c in self.conns)

    def run(self) -> Stats:
        opts = self.opts
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        now = time.monotonic()
        end = now + opts.duration if opts.duration else math.inf
        for conn in self.conns:
            conn.open(now)
        poll = self.epoll.poll
        fds = self.fds
        conns = self.conns
        while True:
            now = time.monotonic()
            if now >= end:
                break
            if self.finished():
                break
            # Slots to (re)open: a GOAWAY'd connection once idle, a broken one.
            for conn in conns:
                if conn.state == DRAINING and not conn.streams:
                    conn.close(now)
                if conn.state == CLOSED and not conn.dead and self.budget != 0:
                    if conn.failures >= MAX_CONNECT_FAILURES:
                        conn.dead = True
                    else:
                        conn.open(now)
            if all(c.dead for c in conns):
                break
            deadline = end
            for conn in conns:
                t = conn.timer
                if t is not None and t < deadline:
                    deadline = t
            wait = max(0.0, deadline - now) if deadline != math.inf else 1.0
            ready = poll(min(wait, 1.0))
            now = time.monotonic()
            touched: dict[Conn, None] = {}
            for fd, _mask in ready:
                found = fds.get(fd)
                if found is not None:
                    found.read(now)
                    touched[found] = None
            for conn in conns:
                t = conn.timer
                if t is not None and t <= now:
                    conn.on_timer(now)
                    touched[conn] = None
            for conn in touched:
                conn.fill()
                conn.flush(now)
        self.running = False
        elapsed = time.perf_counter() - t0
        now = time.monotonic()
        for conn in conns:
            conn.streams.clear()  # in flight at the end: started, not done, not failed
            conn.close(now)
        self.epoll.close()
        self.stats.elapsed = elapsed
        self.stats.cpu = time.process_time() - cpu0
        return self.stats


# -- processes ---------------------------------------------------------------------------------


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _child(opts: Options, connections: int, budget: int, wfd: int) -> None:
    """Run one client process and write its result to ``wfd`` (JSON line, then latencies)."""
    gc.collect()
    gc.freeze()
    client = Client(opts, connections, budget)
    error = None
    try:
        stats = client.run()
    except Exception as exc:  # reported to the parent, which prints it
        stats = client.stats
        error = f"{type(exc).__name__}: {exc}"
    head = {"stats": dataclasses.asdict(stats), "error": error or client.first_error,
            "latency_n": len(client.latency), "connect_n": len(client.connect_ns)}
    payload = (json.dumps(head).encode() + b"\n" + client.latency.tobytes()
               + client.connect_ns.tobytes())
    with os.fdopen(wfd, "wb") as out:
        out.write(payload)


def _read_child(data: bytes) -> tuple[dict[str, Any], array.array[int], array.array[int]]:
    line, _, rest = data.partition(b"\n")
    head: dict[str, Any] = json.loads(line)
    lat = array.array("q")
    con = array.array("q")
    n = head["latency_n"] * lat.itemsize
    lat.frombytes(rest[:n])
    con.frombytes(rest[n:n + head["connect_n"] * con.itemsize])
    return head, lat, con


def run(opts: Options, processes: int) -> dict[str, Any]:
    """Run the load in ``processes`` forked client processes (a single one too: the
    parent only collects, so its own start-up never shares the measured window)."""
    conns = _split(opts.connections, processes)
    budgets = _split(opts.requests, processes) if opts.requests else [-1] * processes
    heads: list[dict[str, Any]] = []
    lats: list[array.array[int]] = []
    cons: list[array.array[int]] = []
    t0 = time.perf_counter()
    children: list[tuple[int, int]] = []
    for i in range(processes):
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover (child): never returns into the parent's code
            status = 0
            try:
                os.close(rfd)
                for _, other in children:
                    os.close(other)
                _child(opts, conns[i], budgets[i], wfd)
            except BaseException:
                traceback.print_exc()
                status = 1
            finally:
                sys.stderr.flush()
                os._exit(status)
        os.close(wfd)
        children.append((pid, rfd))
    try:
        for pid, rfd in children:
            with os.fdopen(rfd, "rb") as f:
                data = f.read()
            os.waitpid(pid, 0)
            if not data:
                heads.append({"stats": dataclasses.asdict(Stats()), "error":
                              "client process died without a result"})
                continue
            head, lat, con = _read_child(data)
            heads.append(head)
            lats.append(lat)
            cons.append(con)
    except BaseException:
        for pid, _ in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        raise
    wall = time.perf_counter() - t0
    total = Stats()
    for head in heads:
        for key, value in head["stats"].items():
            if key == "elapsed":
                total.elapsed = max(total.elapsed, value)
            else:
                setattr(total, key, getattr(total, key) + value)
    latency = sorted(v for a in lats for v in a)
    connect = sorted(v for a in cons for v in a)
    errors = [h["error"] for h in heads if h.get("error")]
    return {"stats": total, "latency_ns": latency, "connect_ns": connect, "errors": errors,
            "wall": wall, "processes": processes}


# -- report ------------------------------------------------------------------------------------

PERCENTILES = ("p50", "p75", "p90", "p99", "p99.9", "p99.99")


def _rank(pct: str, n: int) -> int:
    """Nearest-rank index of percentile ``pct`` ("p99.9") among ``n`` sorted samples."""
    hundredths = round(float(pct[1:]) * 100)
    return min(n - 1, max(0, -(-hundredths * n // 10000) - 1))


def _spread(values: Sequence[int]) -> dict[str, float]:
    """min, max, mean, sd and h2load's "+/- sd" (share within one sd of the mean), in µs."""
    n = len(values)
    if not n:
        return {}
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / n
    sd = math.sqrt(var)
    within = sum(1 for v in values if abs(v - mean) <= sd) / n * 100
    return {"min": values[0] / 1e3, "max": values[-1] / 1e3, "mean": mean / 1e3,
            "sd": sd / 1e3, "within_sd": within}


def _fmt_us(us: float) -> str:
    """h2load's time format: 350us, 1.20ms, 3.00s."""
    if us >= 1e6:
        return f"{us / 1e6:.2f}s"
    if us >= 1e3:
        return f"{us / 1e3:.2f}ms"
    return f"{us:.0f}us"


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.2f}{unit}" if unit != "B" else f"{n:.0f}B"
        n /= 1024
    return f"{n:.2f}GB"


def summarize(result: dict[str, Any], opts: Options) -> tuple[str, dict[str, Any]]:
    """h2load-style text and the JSON record of one run."""
    st: Stats = result["stats"]
    secs = st.elapsed or result["wall"] or 1e-9
    lat: list[int] = result["latency_ns"]
    rps = st.done / secs
    failed = (st.done - st.succeeded) + st.errored
    total = opts.requests if opts.requests else st.done
    pct: dict[str, float | None] = {
        p: (lat[_rank(p, len(lat))] / 1e3 if lat else None) for p in PERCENTILES}
    req = _spread(lat)
    con = _spread(result["connect_ns"])
    lines = [
        f"finished in {_fmt_us(secs * 1e6)}, {rps:.2f} req/s, "
        f"{_fmt_bytes(st.bytes_total / secs)}/s",
        f"requests: {total} total, {st.started} started, {st.done} done, {st.succeeded} "
        f"succeeded, {failed} failed, {st.errored} errored, {st.timeout} timeout",
        f"status codes: {st.s2xx} 2xx, {st.s3xx} 3xx, {st.s4xx} 4xx, {st.s5xx} 5xx",
        f"traffic: {_fmt_bytes(st.bytes_total)} ({st.bytes_total}) total, "
        f"{_fmt_bytes(st.bytes_headers)} ({st.bytes_headers}) headers, "
        f"{_fmt_bytes(st.bytes_data)} ({st.bytes_data}) data",
        "                     min         max         mean         sd        +/- sd",
    ]
    for name, s in (("time for request:", req), ("time for connect:", con)):
        if s:
            lines.append(f"{name:<18}{_fmt_us(s['min']):>10}  {_fmt_us(s['max']):>10}  "
                         f"{_fmt_us(s['mean']):>10}  {_fmt_us(s['sd']):>10}  "
                         f"{s['within_sd']:>8.2f}%")
    if lat:
        lines.append("latency percentiles: " + ", ".join(
            f"{p} {_fmt_us(v)}" for p, v in pct.items() if v is not None))
    if st.done:
        lines.append(f"datagrams: {st.datagrams_rx} received, {st.datagrams_tx} sent "
                     f"({st.datagrams_rx / st.done:.2f} and {st.datagrams_tx / st.done:.2f} "
                     "per request)")
    lines.append(f"connections: {st.connects} established, {st.connect_failures} failed, "
                 f"{st.goaways} GOAWAY, {st.retried} requests retried; client CPU "
                 f"{st.cpu:.2f}s over {result['processes']} process"
                 + ("es" if result["processes"] > 1 else "")
                 + (f" ({st.cpu / st.done * 1e6:.1f} us/request)" if st.done else ""))
    for err in result["errors"]:
        lines.append(f"error: {err}")
    record = {
        "seconds": secs, "rps": rps, "total": total, "started": st.started, "done": st.done,
        "succeeded": st.succeeded, "failed": failed, "errored": st.errored,
        "timeout": st.timeout, "retried": st.retried,
        "status": {"1xx": st.s1xx, "2xx": st.s2xx, "3xx": st.s3xx, "4xx": st.s4xx,
                   "5xx": st.s5xx},
        "bytes": {"total": st.bytes_total, "headers": st.bytes_headers, "data": st.bytes_data},
        "latency_us": {**pct, **({"lat_min": req["min"], "lat_max": req["max"],
                                  "lat_mean": req["mean"], "lat_stdev": req["sd"]} if req
                                 else dict.fromkeys(("lat_min", "lat_max", "lat_mean",
                                                     "lat_stdev")))},
        "connect_us": con, "connects": st.connects, "connect_failures": st.connect_failures,
        "goaways": st.goaways, "client_cpu_s": st.cpu, "processes": result["processes"],
        "datagrams": {"rx": st.datagrams_rx, "tx": st.datagrams_tx},
        "connections": opts.connections, "streams": opts.streams,
        "errors": result["errors"],
    }
    return "\n".join(lines), record


# -- command line ------------------------------------------------------------------------------


def _duration(text: str) -> float:
    """h2load's duration syntax: 10, 10s, 500ms, 2m."""
    for suffix, scale in (("ms", 1e-3), ("us", 1e-6), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    return float(text)


def parse_args(argv: Sequence[str] | None) -> tuple[Options, int, bool]:
    p = argparse.ArgumentParser(prog="h3load", description=__doc__.split("\n\n")[0])
    p.add_argument("url", nargs="?", help="https://HOST:PORT/PATH (or give --host/--port)")
    p.add_argument("--host", help="server address (default: the URL's host)")
    p.add_argument("--port", type=int, help="server UDP port (default: the URL's, or 443)")
    p.add_argument("--path", help="request path (default: the URL's, or /)")
    p.add_argument("--sni", help="TLS server name and :authority host (default: the host)")
    p.add_argument("-c", "--clients", type=int, default=1, help="QUIC connections (default 1)")
    p.add_argument("-m", "--max-concurrent-streams", type=int, default=1,
                   help="requests in flight per connection (default 1)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-n", "--requests", type=int, help="requests to complete")
    g.add_argument("-D", "--duration", type=_duration,
                   help="run this long (seconds, or 500ms, 2m)")
    p.add_argument("-p", "--processes", type=int, default=1,
                   help="client processes (connections are split between them; default 1)")
    p.add_argument("-N", "--timeout", type=_duration, default=10.0,
                   help="abandon a connection silent this long (default 10s)")
    p.add_argument("-H", "--header", action="append", default=[],
                   help="extra request header 'name: value' (repeatable)")
    p.add_argument("--ca", help="CA bundle (PEM) to verify the server with")
    p.add_argument("-k", "--insecure", action="store_true", help="do not verify the server")
    p.add_argument("--json-only", action="store_true", help="print only the JSON line")
    a = p.parse_args(argv)
    parts = urlsplit(a.url) if a.url else None
    if parts is not None and parts.scheme not in ("https", ""):
        p.error("HTTP/3 URLs are https://")
    host = a.host or (parts.hostname if parts else None)
    if not host:
        p.error("give a URL or --host")
    port = a.port or (parts.port if parts and parts.port else 443)
    path = a.path or ((parts.path or "/") + (f"?{parts.query}" if parts and parts.query else "")
                      if parts else "/")
    sni = a.sni or (parts.hostname if parts and parts.hostname else host)
    if a.clients < 1 or a.max_concurrent_streams < 1 or a.processes < 1:
        p.error("-c, -m and -p must be at least 1")
    if a.processes > a.clients:
        p.error("-p cannot exceed -c (each process needs a connection)")
    if a.requests is None and a.duration is None:
        a.requests = 1
    extra = []
    for h in a.header:
        name, sep, value = h.partition(":")
        if not sep:
            p.error(f"bad header {h!r}: want 'name: value'")
        extra.append((name.strip().lower().encode(), value.strip().encode()))
    authority = sni if port == 443 else f"{sni}:{port}"
    opts = Options(host=host, port=port, server_name=sni, authority=authority, path=path,
                   connections=a.clients, streams=a.max_concurrent_streams,
                   duration=a.duration or 0.0, requests=a.requests or 0, timeout=a.timeout,
                   cafile=a.ca, insecure=a.insecure, extra_headers=tuple(extra))
    return opts, a.processes, a.json_only


def main(argv: Sequence[str] | None = None) -> int:
    opts, processes, json_only = parse_args(argv)
    if not json_only:
        what = (f"{opts.requests} requests" if opts.requests else f"{opts.duration:g} s")
        print(f"starting benchmark...\nApplication protocol: h3 (qh3), {opts.connections} "
              f"connection(s), {opts.streams} stream(s) each, {processes} process(es), "
              f"{what}", flush=True)
    result = run(opts, processes)
    text, record = summarize(result, opts)
    if not json_only:
        print(text)
    print("H3LOADJSON " + json.dumps(record), flush=True)
    st: Stats = result["stats"]
    return 0 if st.done and not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
