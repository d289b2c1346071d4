"""HTTP/2 attacks on a live gateway: the DoS rows of MISSION.md, each over a real socket.

Every test runs one attack against an h2c listener in front of the HTTP/1.1 origin and
checks:

(a) the exact protocol reaction (GOAWAY and its code and last stream id, RST_STREAM code,
    or status), at the exact threshold where one is documented: one event under the
    budget is tolerated on that very connection, the next one is not;
(b) the counter the reaction is recorded under, moved by exactly one per attack connection;
(c) that eg keeps serving a well-behaved client meanwhile: ``under_attack`` repeats the
    attack on fresh connections in a background thread while the test thread keeps
    making ordinary requests, each of which must get its 200 within ``GOOD_WITHIN``;
(d) for attacks on memory, that the gateway's RSS grows far less than an implementation
    without the bound would need (each bound is derived where it is asserted).

The gateways have one worker, so attacker and well-behaved client share one event loop: a
worker stuck in an attack would starve the other client, which two workers could hide.
Budgets count per connection, so every round opens its own connections.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import h2.events
import pytest
from h2.settings import SettingCodes
from hyperframe.frame import ContinuationFrame, Frame, HeadersFrame, SettingsFrame

from tests.h2client import H2Client, H2Response
from tests.helpers import OriginProcess
from tests.integration.conftest import (
    Doc,
    Gateway,
    MiB,
    OriginTally,
    RssSampler,
    StartGateway,
    check_stopped_cleanly,
    gateway_config,
)

pytestmark = pytest.mark.timeout(120)

# HTTP/2 error codes (RFC 9113 §7).
PROTOCOL_ERROR = 0x1
REFUSED_STREAM = 0x7
CANCEL = 0x8
ENHANCE_YOUR_CALM = 0xB

# The codec's budgets (eg/core/codec/h2/_context.py; not configurable), per 10 s.
MAX_PEER_RESETS = 100
MAX_SETTINGS = 100
MAX_PINGS = 50
# Defaults of the [http2] and [limits] tables (eg/core/config.py).
MAX_HEADER_LIST_SIZE = 64 * 1024
MAX_HEADERS = 256
# h2's CONTINUATION backlog (h2.frame_buffer.CONTINUATION_BACKLOG) and eg's byte cap on
# one header block: 4 x max_header_list_size (_context.HEADER_BLOCK_FACTOR).
CONTINUATION_BACKLOG = 64
HEADER_BLOCK_LIMIT = 4 * MAX_HEADER_LIST_SIZE
# The default frame size (SETTINGS_MAX_FRAME_SIZE is never raised by eg).
MAX_FRAME = 16384

# http2.zero_window_timeout of the zero-window test's gateway (default 30 s).
ZERO_WINDOW_TIMEOUT = 2.0
# The tight gateway's [http2] settings, small so their attacks are quick.
TIGHT_MAX_GLITCHES = 20
TIGHT_MAX_STREAMS = 10

# A well-behaved request made while an attack runs must be answered within this. An idle
# gateway answers in a few ms; this is slack for a loaded 2-core machine.
GOOD_WITHIN = 5.0
# How long each attack is repeated (at least): long enough for many ordinary requests and
# RSS samples to fall inside it.
ATTACK_SECONDS = 1.0
# Longest one attacker thread may run before the test gives up on it.
ATTACK_TIMEOUT = 60.0
# Pseudo-headers of every request, as H2Client sends them.
PSEUDO = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"localhost"),
          (b":path", b"/")]


# -- gateways -----------------------------------------------------------------------------


def h2c_config(origins: OriginProcess, **http2: float) -> Doc:
    """One worker, one h2c listener named ``http``, the ``[http2]`` overrides given."""
    doc = gateway_config(origins.ports, workers=1)
    doc["listeners"] = [{"name": "http", "address": "127.0.0.1:0", "protocol": "h2c"}]
    if http2:
        doc["http2"] = dict(http2)
    return doc


@pytest.fixture(scope="module")
def h2gw(origins: OriginProcess, gateway_factory: StartGateway) -> Iterator[Gateway]:
    """Default HTTP/2 settings: the budgets exactly as MISSION.md states them. After all
    the attacks it must still stop cleanly, with no error logged."""
    gw = gateway_factory(h2c_config(origins))
    yield gw
    check_stopped_cleanly(gw)


@pytest.fixture(scope="module")
def tight(origins: OriginProcess, gateway_factory: StartGateway) -> Iterator[Gateway]:
    """A small glitch budget and stream limit; must stop cleanly too."""
    gw = gateway_factory(h2c_config(
        origins, max_glitches=TIGHT_MAX_GLITCHES, max_concurrent_streams=TIGHT_MAX_STREAMS,
    ))
    yield gw
    check_stopped_cleanly(gw)


@pytest.fixture
def fresh(origins: OriginProcess, start_gateway: StartGateway) -> Gateway:
    """A new gateway with default settings, for RSS measurements no earlier test skews."""
    return start_gateway(h2c_config(origins))


# -- helpers ------------------------------------------------------------------------------


class Counter:
    """A counter's value now, to compare with later: ``delta()``."""

    def __init__(self, gw: Gateway, name: str, **labels: str) -> None:
        self.gw = gw
        self.name = name
        self.labels = labels
        self.start = gw.metric(name, **labels)

    def delta(self) -> float:
        return self.gw.metric(self.name, **self.labels) - self.start


def limit_hits(gw: Gateway, kind: str) -> Counter:
    return Counter(gw, "eg_limit_hits_total", kind=kind)


def good_request(port: int) -> float:
    """One ordinary GET on a new connection: it must get its 200 within GOOD_WITHIN.

    Returns:
        The latency, connect included.
    """
    start = time.monotonic()
    with H2Client(port, timeout=GOOD_WITHIN) as client:
        resp = client.request("/")
    latency = time.monotonic() - start
    assert resp.status == 200, f"well-behaved request during the attack: {resp}"
    assert resp.body.startswith(b"hello from origin"), resp.body[:200]
    assert latency < GOOD_WITHIN, f"well-behaved request took {latency:.2f} s"
    return latency


def under_attack[T](
    gw: Gateway, attack: Callable[[], T], *, rounds: int = 3, seconds: float = ATTACK_SECONDS
) -> tuple[list[T], int]:
    """Run ``attack`` back to back on a background thread, at least ``rounds`` times and
    for at least ``seconds``, while this thread makes ordinary requests
    (``good_request``) until the attacker is done.

    Returns:
        Each round's result, in order, and the number of ordinary requests made.

    Raises:
        The first exception of a round (its assertions failed), else AssertionError when
        no ordinary request started while the attack was running.
    """
    results: list[T] = []
    errors: list[BaseException] = []
    finished = threading.Event()
    end = [float("inf")]

    def attacker() -> None:
        start = time.monotonic()
        try:
            while len(results) < rounds or time.monotonic() - start < seconds:
                results.append(attack())
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)
        finally:
            end[0] = time.monotonic()
            finished.set()

    thread = threading.Thread(target=attacker, name="attacker", daemon=True)
    thread.start()
    starts: list[float] = []
    try:
        while not finished.is_set():
            starts.append(time.monotonic())
            good_request(gw.port)
            finished.wait(0.02)
    finally:
        thread.join(ATTACK_TIMEOUT)
    if errors:
        raise errors[0]
    assert not thread.is_alive(), "the attacker did not finish"
    overlapping = [t for t in starts if t < end[0]]
    assert overlapping, "no well-behaved request was made while the attack ran"
    assert gw.metric("eg_unhandled_exceptions_total") == 0
    return results, len(starts)


def pump_until(client: H2Client, done: Callable[[], bool], timeout: float) -> None:
    """Read and process until ``done()``, EOF or ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not done() and not client.eof and time.monotonic() < deadline:
        client.pump(min(0.05, max(0.001, deadline - time.monotonic())))


def expect_goaway(client: H2Client, code: int, last_stream_id: int, timeout: float = 10.0) -> None:
    """The gateway sent GOAWAY(``code``, ``last_stream_id``) and then closed."""
    pump_until(client, lambda: client.goaway is not None, timeout)
    goaway = client.goaway
    assert goaway is not None, f"no GOAWAY (connection closed: {client.eof})"
    assert (goaway.error_code, goaway.last_stream_id) == (code, last_stream_id), goaway
    pump_until(client, lambda: False, timeout)
    assert client.eof, "the connection stayed open after an error GOAWAY"


def handshake(client: H2Client) -> None:
    """Exchange SETTINGS and their ACKs; afterwards h2 sends nothing unprompted."""
    seen: set[type] = set()
    wanted = {h2.events.RemoteSettingsChanged, h2.events.SettingsAcknowledged}
    deadline = time.monotonic() + GOOD_WITHIN
    while not wanted <= seen and not client.eof and time.monotonic() < deadline:
        seen.update(type(event) for event in client.pump(0.05))
    assert wanted <= seen, f"no SETTINGS exchange: {seen}"


def expect_alive(client: H2Client) -> None:
    """The connection still serves requests, and has had no GOAWAY."""
    resp = client.request("/")
    assert client.goaway is None, client.goaway
    assert resp.status == 200, resp


def send(client: H2Client) -> None:
    """Flush h2's queued frames; the gateway may already have closed (it tripped early)."""
    with contextlib.suppress(OSError):
        client.flush()


def frames_of(data: bytes) -> Iterator[Frame]:
    view = memoryview(data)
    while view:
        frame, length = Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9 : 9 + length])
        yield frame
        view = view[9 + length :]


def header_block_frames(stream_id: int, block: bytes, *, end_stream: bool) -> bytes:
    """``block`` as HEADERS + CONTINUATION frames of at most MAX_FRAME bytes each."""
    pieces = [block[i : i + MAX_FRAME] for i in range(0, len(block), MAX_FRAME)]
    first = HeadersFrame(stream_id, data=pieces[0], flags=["END_STREAM"] if end_stream else [])
    frames: list[Frame] = [first]
    frames += [ContinuationFrame(stream_id, data=piece) for piece in pieces[1:]]
    frames[-1].flags.add("END_HEADERS")
    return b"".join(frame.serialize() for frame in frames)


def fields_of_list_size(size: int, count: int = 4) -> list[tuple[bytes, bytes]]:
    """``count`` fields ``x-big-N`` that make a request of exactly ``size`` bytes as
    SETTINGS_MAX_HEADER_LIST_SIZE counts (name + value + 32 per field, RFC 9113 §6.5.2),
    pseudo-headers included."""
    left = size - sum(len(n) + len(v) + 32 for n, v in PSEUDO)
    names = [b"x-big-%d" % i for i in range(count)]
    left -= sum(len(name) + 32 for name in names)
    values = [left // count + (i < left % count) for i in range(count)]
    return [(name, b"v" * n) for name, n in zip(names, values, strict=True)]


def list_size(fields: list[tuple[bytes, bytes]]) -> int:
    return sum(len(n) + len(v) + 32 for n, v in [*PSEUDO, *fields])


# -- 1. Rapid Reset (CVE-2023-44487) -------------------------------------------------------


def rapid_reset(port: int) -> None:
    """Open a stream and cancel it at once, MAX_PEER_RESETS times: the connection still
    serves; one more and it is over (GOAWAY naming that last stream)."""
    with H2Client(port) as client:
        for _ in range(MAX_PEER_RESETS):
            open_and_cancel(client)
        expect_alive(client)  # its own stream completed: not a reset, not counted
        sid = open_and_cancel(client)
        expect_goaway(client, ENHANCE_YOUR_CALM, last_stream_id=sid)


def open_and_cancel(client: H2Client) -> int:
    """HEADERS and RST_STREAM(CANCEL) in one write, as the attack does: the gateway reads
    them together, so the reset always comes before any response."""
    conn = client.raw
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, PSEUDO, end_stream=True)
    conn.reset_stream(sid, CANCEL)
    client.responses[sid] = H2Response()
    send(client)
    return sid


def test_rapid_reset(h2gw: Gateway) -> None:
    hits = limit_hits(h2gw, "h2_peer_resets")
    rounds, _ = under_attack(h2gw, lambda: rapid_reset(h2gw.port))
    assert hits.delta() == len(rounds)


# -- 2. CONTINUATION flood -----------------------------------------------------------------

# The attacker stops sending here if the gateway never ends the connection: an
# implementation that kept the whole block would hold this much for it.
FLOOD_CAP = 64 * MiB
# Bytes a flooder may get into the socket before it learns the connection is gone: what
# the gateway reads before it trips (at most HEADER_BLOCK_LIMIT + one frame, or 64
# frames), plus the two kernels' socket buffers (loopback autotuning: a few MiB) and one
# batch in flight. 8 MiB is far below FLOOD_CAP.
FLOOD_SENT_BOUND = 8 * MiB


def continuation_flood(port: int, fragment: int, code: int) -> int:
    """HEADERS without END_HEADERS, then CONTINUATION frames of ``fragment`` bytes until
    the connection ends (or FLOOD_CAP): it must end with GOAWAY(``code``).

    Returns:
        The bytes sent.
    """
    piece = b"\x00" * fragment  # never decoded: the block never ends
    with H2Client(port) as client:
        handshake(client)  # so that nothing of h2's own lands inside the header block
        client.send_bytes(HeadersFrame(1, data=piece).serialize())
        batch = ContinuationFrame(1, data=piece).serialize() * max(1, 65536 // fragment)
        sent = 0
        while sent < FLOOD_CAP and client.goaway is None and not client.eof:
            try:
                client.send_bytes(batch)
            except OSError:
                break
            sent += len(batch)
            client.pump(0.001)
        assert sent < FLOOD_SENT_BOUND, f"flooded {sent} bytes without a connection error"
        # Stream 1 was never accepted: its block never ended.
        expect_goaway(client, code, last_stream_id=0)
        return sent


@pytest.mark.parametrize(
    ("fragment", "code", "metric", "labels"),
    [
        # Full frames: the 17th passes eg's 256 KiB byte cap (_connection fix 4), an h2
        # DenialOfServiceError: ENHANCE_YOUR_CALM, counted as kind h2_limit.
        (MAX_FRAME, ENHANCE_YOUR_CALM, "eg_limit_hits_total", {"kind": "h2_limit"}),
        # 1-byte fragments: h2's 64-frame backlog trips long before the byte cap, a plain
        # h2 ProtocolError: PROTOCOL_ERROR, counted as a downstream h2_protocol error.
        (1, PROTOCOL_ERROR, "eg_protocol_errors_total",
         {"side": "downstream", "kind": "h2_protocol"}),
    ],
    ids=["full-frames", "tiny-frames"],
)
def test_continuation_flood(h2gw: Gateway, fragment: int, code: int, metric: str,
                            labels: dict[str, str]) -> None:
    counter = Counter(h2gw, metric, **labels)
    rounds, _ = under_attack(h2gw, lambda: continuation_flood(h2gw.port, fragment, code))
    assert counter.delta() == len(rounds)
    # Memory per connection: each flooder got at most FLOOD_SENT_BOUND (8 MiB) into the
    # socket before the connection failed, where an implementation without the byte and
    # count caps would have taken all of FLOOD_CAP (64 MiB); the gateway's share of it is
    # one header block (HEADER_BLOCK_LIMIT + a frame, or 64 frames).
    assert max(rounds) < FLOOD_SENT_BOUND


def test_closed_flood_connections_free_their_header_blocks(fresh: Gateway) -> None:
    before = fresh.rss()
    start = time.monotonic()
    with RssSampler(fresh) as rss:
        while time.monotonic() - start < 2.0:
            continuation_flood(fresh.port, MAX_FRAME, ENHANCE_YOUR_CALM)
    # One flood connection at a time, each closed before the next opens: a gateway that
    # frees a connection when it closes needs one header block (256 KiB) and one read
    # (64 KiB) at a time. 16 MiB is that plus allocator slack (50+ MiB when closed
    # connections were left for the cycle collector).
    growth = rss.peak - before
    assert growth < 16 * MiB, f"RSS grew {growth / MiB:.1f} MiB in 2 s of CONTINUATION flood"


# -- 3. HPACK bomb --------------------------------------------------------------------------

# One field that nearly fills the default 4 KiB HPACK table (name + value + 32 = 4038).
BOMB_VALUE = b"b" * 4000
BOMB_ENTRY = len(b"x-bomb") + len(BOMB_VALUE) + 32
# References to it in one block: one byte each, so the block is ~200 KB, under the 256 KiB
# block cap and h2's 64-frame backlog (13 frames): only the decoded size can stop it.
BOMB_REFS = 200_000


def hpack_bomb(port: int) -> None:
    """Insert BOMB_VALUE into the gateway's HPACK table with an ordinary request, then send
    a request referencing it BOMB_REFS times: ~800 MB decoded from ~200 KB."""
    with H2Client(port) as client:
        first = client.request("/", headers=[(b"x-bomb", BOMB_VALUE)])
        assert first.status == 200, first  # one copy is an ordinary 4 KB header
        conn = client.raw
        found = conn.encoder.header_table.search(b"x-bomb", BOMB_VALUE)
        assert found is not None
        index = found[0]
        assert 62 <= index < 127, index  # in the dynamic table: a 1-byte reference
        ref = bytes([0x80 | index])  # RFC 7541 §6.1 indexed field
        # Let h2 open the stream (so it tracks the answer) with one reference, then
        # repeat that reference in the block before it goes out.
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [*PSEUDO, (b"x-bomb", BOMB_VALUE)], end_stream=True)
        (headers,) = frames_of(conn.data_to_send())
        assert isinstance(headers, HeadersFrame) and headers.data.endswith(ref)
        block = bytes(headers.data) + ref * (BOMB_REFS - 1)
        assert len(block) < HEADER_BLOCK_LIMIT
        client.responses[sid] = H2Response()
        client.send_bytes(header_block_frames(sid, block, end_stream=True))
        resp = client.wait(sid, 10.0)
        # A connection error: the decoder stopped past the cap, so the HPACK state can't be
        # trusted any more (RFC 9113 §4.3); the bombed stream was never accepted.
        assert resp.status == 0 and resp.closed == ENHANCE_YOUR_CALM, resp
        expect_goaway(client, ENHANCE_YOUR_CALM, last_stream_id=1)


def test_hpack_bomb(fresh: Gateway) -> None:
    hits = limit_hits(fresh, "h2_limit")
    before = fresh.rss()
    with RssSampler(fresh) as rss:
        rounds, _ = under_attack(fresh, lambda: hpack_bomb(fresh.port))
    assert hits.delta() == len(rounds)
    # Decoded, one bomb is BOMB_REFS x BOMB_ENTRY = 808 MB, which an HTTP/1 upstream would
    # be sent in full; even a decoder keeping only references (a 2-tuple and a list slot,
    # ~64 bytes per field) would need 12.8 MB per bomb. eg stops decoding after 64 KiB (17
    # fields). 64 MiB is a twelfth of one materialised bomb and below five
    # reference-keeping ones; it is not tighter because dead connections wait for the
    # cycle collector (see test_closed_flood_connections_free_their_header_blocks).
    bound = 64 * MiB
    assert bound < BOMB_REFS * BOMB_ENTRY / 12
    growth = rss.peak - before
    assert growth < bound, f"RSS grew {growth / MiB:.1f} MiB during the HPACK bombs"


# -- 4. SETTINGS flood ---------------------------------------------------------------------


def settings_flood(port: int) -> None:
    """MAX_SETTINGS SETTINGS frames (the preface's one included) are tolerated; one more
    ends the connection."""
    with H2Client(port) as client:
        client.send_bytes(SettingsFrame(0).serialize() * (MAX_SETTINGS - 1))
        expect_alive(client)  # stream 1
        with contextlib.suppress(OSError):
            client.send_bytes(SettingsFrame(0).serialize())
        expect_goaway(client, ENHANCE_YOUR_CALM, last_stream_id=1)


def test_settings_flood(h2gw: Gateway) -> None:
    hits = limit_hits(h2gw, "h2_settings")
    rounds, _ = under_attack(h2gw, lambda: settings_flood(h2gw.port))
    assert hits.delta() == len(rounds)


# -- 5. PING flood -------------------------------------------------------------------------


def ping_flood(port: int) -> None:
    """MAX_PINGS PINGs are answered and tolerated; one more ends the connection."""
    with H2Client(port) as client:
        for n in range(MAX_PINGS):
            client.raw.ping(n.to_bytes(8))
        client.flush()
        pump_until(client, lambda: client.pings_acked == MAX_PINGS, 10.0)
        assert client.pings_acked == MAX_PINGS
        expect_alive(client)  # stream 1
        client.raw.ping(MAX_PINGS.to_bytes(8))
        send(client)
        expect_goaway(client, ENHANCE_YOUR_CALM, last_stream_id=1)


def test_ping_flood(h2gw: Gateway) -> None:
    hits = limit_hits(h2gw, "h2_pings")
    rounds, _ = under_attack(h2gw, lambda: ping_flood(h2gw.port))
    assert hits.delta() == len(rounds)


# -- 6. Zero-window stall ------------------------------------------------------------------

# Stalled connections per round, each asking for STALL_BODY bytes it will never take.
STALLERS = 4
STALL_BODY = 64 * MiB
# Measurement slack around the gateway's timer (loop wake-up, our own polling of
# STALLERS sockets in 10 ms steps, a loaded machine).
TIMER_SLACK = 1.0


def zero_window_stall(port: int) -> list[tuple[float, float]]:
    """STALLERS connections advertise SETTINGS_INITIAL_WINDOW_SIZE 0, ask for STALL_BODY
    bytes and never open a window. Returns (PING, GOAWAY) times after the response head."""
    clients = [H2Client(port, settings={SettingCodes.INITIAL_WINDOW_SIZE: 0})
               for _ in range(STALLERS)]
    try:
        for client in clients:
            client.start(f"/bytes/{STALL_BODY}")
        head: dict[int, float] = {}
        ping: dict[int, float] = {}
        goaway: dict[int, float] = {}
        deadline = time.monotonic() + ZERO_WINDOW_TIMEOUT + 10.0
        while len(goaway) < STALLERS and time.monotonic() < deadline:
            for n, client in enumerate(clients):
                if n in goaway or client.eof:
                    continue
                for event in client.pump(0.01):
                    now = time.monotonic()
                    if isinstance(event, h2.events.ResponseReceived):
                        head.setdefault(n, now)
                    elif isinstance(event, h2.events.PingReceived):
                        ping.setdefault(n, now)
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        goaway[n] = now
                        assert event.error_code == ENHANCE_YOUR_CALM, event
        times = []
        for n, client in enumerate(clients):
            assert client.responses[1].status == 200, client.responses[1]
            assert client.responses[1].body == b""  # not one byte: the window is 0
            assert n in head and n in ping and n in goaway, (head, ping, goaway)
            times.append((ping[n] - head[n], goaway[n] - head[n]))
            pump_until(client, lambda: False, 5.0)
            assert client.eof, "the connection stayed open after GOAWAY"
        return times
    finally:
        for client in clients:
            client.close()


def test_zero_window_stall(origins: OriginProcess, start_gateway: StartGateway) -> None:
    gw = start_gateway(h2c_config(origins, zero_window_timeout=ZERO_WINDOW_TIMEOUT))
    hits = limit_hits(gw, "h2_zero_window")
    before = gw.rss()
    with RssSampler(gw) as rss:
        (times,), _ = under_attack(gw, lambda: zero_window_stall(gw.port), rounds=1, seconds=0)
    full = ZERO_WINDOW_TIMEOUT
    half = full / 2
    for ping, goaway in times:
        # The stall clock starts when the first body bytes wait, just after the head.
        assert half - 0.1 <= ping <= half + TIMER_SLACK, times
        assert full - 0.1 <= goaway <= full + TIMER_SLACK, times
    assert hits.delta() == STALLERS
    # Without backpressure the gateway would read each 64 MiB body from the loopback origin
    # within the 2 s (STALLERS x 64 MiB = 256 MiB). With it, a stalled stream holds about
    # one buffer_high (64 KiB) of send buffer plus one 64 KiB read, and the upstream socket
    # is no longer read. 32 MiB is an eighth of the unbounded figure.
    growth = rss.peak - before
    assert growth < 32 * MiB, f"RSS grew {growth / MiB:.1f} MiB with {STALLERS} stalled streams"


# -- 7. Glitch budget ----------------------------------------------------------------------


def malformed_glitches(port: int) -> None:
    """Requests with an uppercase field name (RFC 9113 §8.2.1: malformed): each is reset
    PROTOCOL_ERROR and weighs 2, so TIGHT_MAX_GLITCHES / 2 are tolerated; one more is not."""
    with H2Client(port) as client:
        client.raw.config.validate_outbound_headers = False
        client.raw.config.normalize_outbound_headers = False
        for _ in range(TIGHT_MAX_GLITCHES // 2):
            resp = client.request("/", headers=[(b"X-Upper", b"1")])
            assert (resp.status, resp.reset) == (0, PROTOCOL_ERROR), resp
        assert client.goaway is None, client.goaway
        sid = client.start("/", headers=[(b"X-Upper", b"1")])
        send(client)
        expect_goaway(client, ENHANCE_YOUR_CALM, last_stream_id=sid)


def empty_data_glitches(port: int) -> None:
    """DATA frames without payload or END_STREAM (CVE-2019-9518) on an upload: each weighs
    1, so TIGHT_MAX_GLITCHES are tolerated; one more is not."""
    with H2Client(port) as client:
        upload = client.start("/sha256", method="POST", end=False)
        for _ in range(TIGHT_MAX_GLITCHES):
            client.raw.send_data(upload, b"")
        client.flush()
        expect_alive(client)  # stream 3
        client.raw.send_data(upload, b"")
        send(client)
        expect_goaway(client, ENHANCE_YOUR_CALM, last_stream_id=3)


@pytest.mark.parametrize("attack", [malformed_glitches, empty_data_glitches],
                         ids=["malformed", "empty-data"])
def test_glitch_budget(tight: Gateway, attack: Callable[[int], None]) -> None:
    hits = limit_hits(tight, "h2_glitches")
    rounds, _ = under_attack(tight, lambda: attack(tight.port))
    assert hits.delta() == len(rounds)


# -- 8. max_concurrent_streams -------------------------------------------------------------

EXCESS_STREAMS = 5


def too_many_streams(port: int) -> None:
    """Open TIGHT_MAX_STREAMS + EXCESS_STREAMS slow streams at once: the excess is refused
    (REFUSED_STREAM: not processed, safe to retry), the others complete."""
    with H2Client(port) as client:
        # Sent before the gateway's SETTINGS are read, so h2 does not hold them back.
        sids = [client.start("/slow?delay=1") for _ in range(TIGHT_MAX_STREAMS + EXCESS_STREAMS)]
        resps = [client.wait(sid, 10.0) for sid in sids]
        accepted, excess = resps[:TIGHT_MAX_STREAMS], resps[TIGHT_MAX_STREAMS:]
        assert all((r.status, r.reset) == (200, None) for r in accepted), accepted
        assert all((r.status, r.reset) == (0, REFUSED_STREAM) for r in excess), excess
        assert client.goaway is None, client.goaway  # 5 glitches of weight 1: within budget


def test_max_concurrent_streams(tight: Gateway, origins: OriginProcess) -> None:
    tally = OriginTally(origins.ports)
    before = tally.requests()
    hits = Counter(tight, "eg_limit_hits_total")
    rounds, good = under_attack(tight, lambda: too_many_streams(tight.port), rounds=2)
    # Refused streams never reached the origin: it saw the accepted ones and the ordinary
    # requests made meanwhile, nothing else.
    assert tally.requests() - before == len(rounds) * TIGHT_MAX_STREAMS + good
    assert hits.delta() == 0  # refusals are within every budget


# -- 9. Oversized header lists -------------------------------------------------------------


def oversized_header_list(port: int) -> None:
    """A list of exactly MAX_HEADER_LIST_SIZE bytes is served; one byte more is a
    connection error (the HPACK decoder stops there, so the connection can't go on)."""
    at_cap = fields_of_list_size(MAX_HEADER_LIST_SIZE)
    over = fields_of_list_size(MAX_HEADER_LIST_SIZE + 1)
    assert (list_size(at_cap), list_size(over)) == (MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST_SIZE + 1)
    with H2Client(port) as client:
        resp = client.request("/", headers=at_cap)
        assert resp.status == 200, resp
        sid = client.start("/", headers=over)
        resp = client.wait(sid, 10.0)
        assert resp.status == 0 and resp.closed == ENHANCE_YOUR_CALM, resp
        expect_goaway(client, ENHANCE_YOUR_CALM, last_stream_id=1)


def test_oversized_header_list(h2gw: Gateway) -> None:
    hits = limit_hits(h2gw, "h2_limit")
    rounds, _ = under_attack(h2gw, lambda: oversized_header_list(h2gw.port))
    assert hits.delta() == len(rounds)


def too_many_fields(port: int) -> None:
    """MAX_HEADERS fields are served, one more gets 431 on that stream only; the
    connection serves the next request."""
    fields = [(b"x-h-%d" % i, b"v") for i in range(MAX_HEADERS + 1)]
    with H2Client(port) as client:
        resp = client.request("/", headers=fields[:MAX_HEADERS])
        assert resp.status == 200, resp
        resp = client.request("/", headers=fields)
        assert (resp.status, resp.reset, bytes(resp.body)) == (431, None, b""), resp
        assert resp.header(b"content-length") == b"0"
        expect_alive(client)


def test_too_many_header_fields(h2gw: Gateway) -> None:
    under_attack(h2gw, lambda: too_many_fields(h2gw.port))


def test_too_many_header_fields_is_counted(h2gw: Gateway) -> None:
    hits = limit_hits(h2gw, "header_count")
    fields = [(b"x-h-%d" % i, b"v") for i in range(MAX_HEADERS + 1)]
    with H2Client(h2gw.port) as client:
        assert client.request("/", headers=fields).status == 431
    assert hits.delta() == 1
