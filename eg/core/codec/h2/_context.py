"""Per-worker HTTP/2 settings: the limits both adapters enforce and the h2 configurations.

Build one ``H2Context`` per worker thread and hand it to every H2 codec that worker
creates. It holds only immutable values and objects confined to that worker (the two
``H2Configuration`` objects and the no-op logger), so nothing here is shared between
threads. HPACK state is not here: every codec owns an ``H2Connection`` and with it its own
encoder and decoder tables, as RFC 7541 requires (the tables are per connection).
"""

from __future__ import annotations

from h2.config import DummyLogger, H2Configuration
from h2.events import (
    Event,
    InformationalResponseReceived,
    RequestReceived,
    ResponseReceived,
    TrailersReceived,
)
from h2.settings import SettingCodes

from eg.core.codec.h2._fields import REQUEST, RESPONSE, TRAILERS
from eg.core.codec.h2.hpack import HpackTables

#: SETTINGS_MAX_CONCURRENT_STREAMS we advertise (MISSION.md, DoS row "max_concurrent_streams
#: 256"; RFC 9113 §6.5.2). Also the most streams the client adapter opens on one upstream.
DEFAULT_MAX_CONCURRENT_STREAMS = 256
#: SETTINGS_MAX_HEADER_LIST_SIZE (MISSION.md, header caps row "H2 max_header_list_size
#: 64 KiB"; RFC 9113 §6.5.2: name + value + 32 octets per field). The HPACK decoder stops
#: decoding past it, which is also the HPACK-bomb cap (MISSION.md, DoS row).
DEFAULT_MAX_HEADER_LIST_SIZE = 64 * 1024
#: Header fields in one head (MISSION.md, header caps row "≤256 headers"); 431 past it.
DEFAULT_MAX_HEADERS = 256
#: SETTINGS_INITIAL_WINDOW_SIZE: the stream receive window (MISSION.md, DoS row "send buffer
#: 64 KiB"; RFC 9113 §6.9.2 default is 65,535). It bounds what a paused stream can be sent.
DEFAULT_INITIAL_WINDOW_SIZE = 64 * 1024
#: The connection receive window, raised from RFC 9113's 65,535 (§6.9.2) with a
#: WINDOW_UPDATE at start. Received bytes are handed out at once and acknowledged on the
#: connection immediately (only stream credit is held back while paused), so this only
#: lets several streams fill their windows together: 16 x the stream window.
DEFAULT_CONNECTION_WINDOW = 16 * DEFAULT_INITIAL_WINDOW_SIZE
#: High watermark of one stream's send buffer (config ``limits.buffer_high``); the low
#: watermark is half of it (STYLE.md §4).
DEFAULT_BUFFER_HIGH = 64 * 1024
#: Hard cap of one stream's send buffer (config ``limits.buffer_limit``). Past it the
#: caller has ignored backpressure: the stream is reset. Past it for all streams together,
#: no new stream is taken (server: REFUSED_STREAM; client: ``can_open()`` is false); past
#: it for bytes not yet taken by ``output()``, ``wants_read()`` is false.
DEFAULT_BUFFER_LIMIT = 1024 * 1024
#: HEADERS + CONTINUATION bytes of one encoded header block (MISSION.md, DoS row
#: "CONTINUATION flood: bounded count and bytes per header block"). h2 already bounds the
#: count (64 frames, ``h2.frame_buffer.CONTINUATION_BACKLOG``); the byte bound is the list
#: cap times 4, because Huffman coding can expand an octet to at most 30 bits (RFC 7541
#: Appendix B), so no honest encoding of an acceptable list is longer.
HEADER_BLOCK_FACTOR = 4
#: Streams the peer resets before their response started, per ``FLOOD_WINDOW`` (MISSION.md,
#: DoS row "Rapid-Reset: 100 pending-accept resets") → GOAWAY ENHANCE_YOUR_CALM.
DEFAULT_MAX_PEER_RESETS = 100
#: Streams we reset or answered ourselves because the peer broke the rules, per
#: ``FLOOD_WINDOW`` (MISSION.md, DoS row "100 local-error resets") → GOAWAY.
DEFAULT_MAX_LOCAL_ERRORS = 100
#: SETTINGS frames per ``FLOOD_WINDOW`` (MISSION.md, DoS row "100 SETTINGS per 10 s").
DEFAULT_MAX_SETTINGS = 100
#: PING frames per ``FLOOD_WINDOW`` (MISSION.md, DoS row "50 PINGs per 10 s").
DEFAULT_MAX_PINGS = 50
#: The counting window of the four budgets above, in seconds (MISSION.md gives 10 s for the
#: SETTINGS and PING rows; the reset budgets use the same window).
FLOOD_WINDOW = 10.0
#: Seconds body bytes may wait for the peer's flow-control window (stream or connection)
#: with not one byte sent before the connection is closed with GOAWAY ENHANCE_YOUR_CALM
#: (MISSION.md, DoS row "zero-window stall: close after 30 s without progress").
DEFAULT_ZERO_WINDOW_TIMEOUT = 30.0
#: Weighted glitches per ``GLITCH_WINDOW`` (MISSION.md, DoS row "H2 glitch budget 200 per
#: 60 s"; HAProxy's ``tune.h2.fe.glitches-threshold``) → GOAWAY ENHANCE_YOUR_CALM.
DEFAULT_MAX_GLITCHES = 200
#: The counting window of the glitch budget, in seconds (MISSION.md, same row).
GLITCH_WINDOW = 60.0
#: A header-block fragment that does not end the block (HEADERS or CONTINUATION without
#: END_HEADERS) shorter than this is "tiny". Encoders split a block only where it no
#: longer fits a frame, and a frame holds at least 16,384 octets (RFC 9113 §4.2), so an
#: honest peer never sends one; a CONTINUATION flood sends many.
TINY_FRAGMENT = 1024

# Glitch weights. A glitch is something a conforming peer does not do, or does rarely,
# that HTTP/2 lets us survive but that costs us work; each adds its weight to the glitch
# budget above. Weight 1 is one frame handled for nothing, 2 a whole message decoded
# (a header block: HPACK, up to max_header_list_size) and thrown away.
#
# | glitch                                         | weight | why                            |
# |------------------------------------------------|--------|--------------------------------|
# | malformed message, stream reset PROTOCOL_ERROR | 2      | decoded, maybe forwarded, for  |
# |   (RFC 9113 §8.1.1; bad response head)         |        |   nothing; never conforming    |
# | request answered here: 400 "_", 405 CONNECT,   | 1      | well-formed, refused by our    |
# |   431 too many fields, 501 extended CONNECT    |        |   policy the client can't know |
# | REFUSED_STREAM over MAX_CONCURRENT_STREAMS     | 1      | races our SETTINGS (HAProxy 1) |
# | stream error h2 raised (frame after END_STREAM,| 1      | one frame broke stream rules   |
# |   stream window overflow)                      |        |                                |
# | DATA without payload (padding only counts)     | 1      | CVE-2019-9518 empty frames     |
# |   and without END_STREAM                       |        |                                |
# | PRIORITY for a stream not open (idle, closed)  | 1      | h2 keeps no priority tree; a   |
# |                                                |        |   few are normal (Firefox)     |
# | frame of an unknown type (RFC 9113 §5.5)       | 1      | parsed and dropped             |
# | PING ACK for no PING of ours                   | 1      | we never asked for it          |
# | header-block fragment under ``TINY_FRAGMENT``  | 1      | CONTINUATION flood in pieces   |
#
# Not glitches: a peer's RST_STREAM (cancelling is ordinary HTTP/2, e.g. a browser leaving a
# page; Rapid Reset has its own budget, ``DEFAULT_MAX_PEER_RESETS``), SETTINGS and PING
# (their own budgets; gRPC keepalive and BDP pings are legitimate), frames racing our own
# RST_STREAM and WINDOW_UPDATEs for closed streams (legitimate races). A zero-increment
# WINDOW_UPDATE is not tolerated at all: h2 makes it a connection error.
#: Malformed message (see the table).
GLITCH_MALFORMED = 2
#: Request answered here by policy (see the table).
GLITCH_ANSWERED = 1
#: Stream refused above SETTINGS_MAX_CONCURRENT_STREAMS (see the table).
GLITCH_REFUSED = 1
#: Stream error raised by h2 (see the table).
GLITCH_STREAM_ERROR = 1
#: DATA without payload or END_STREAM (see the table).
GLITCH_EMPTY_DATA = 1
#: PRIORITY for a stream that is not open (see the table).
GLITCH_IDLE_PRIORITY = 1
#: Unknown frame type (see the table).
GLITCH_UNKNOWN_FRAME = 1
#: PING ACK for no PING of ours (see the table).
GLITCH_UNSOLICITED_ACK = 1
#: Tiny header-block fragment (see the table).
GLITCH_TINY_FRAGMENT = 1


# RFC 9110 §5.6.2 tchar.
_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Characters of a host: reg-name / IP-literal / port (RFC 3986 §3.2.2), no "@".
_HOST_CHARS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:[]%"


class NullLogger(DummyLogger):
    """h2's logger (it logs at nearly every step): both levels do nothing.

    hpack logs on its own, through ``logging`` at module level; see
    ``bench/codec/h2_cost.py --quiet-hpack``.
    """

    def debug(self, *args: object, **kwargs: object) -> None:
        """Drop the message."""

    def trace(self, *args: object, **kwargs: object) -> None:
        """Drop the message."""


class PlainConfig(H2Configuration):
    """``H2Configuration`` with plain attributes.

    h2 reads its options through descriptors that call ``getattr`` (and a property for
    ``header_encoding``), dozens of times per request; here they are instance attributes,
    fixed at construction (the adapters never change them).
    """

    client_side = False
    header_encoding = None
    validate_outbound_headers = False
    normalize_outbound_headers = False
    split_outbound_cookies = False
    validate_inbound_headers = False
    normalize_inbound_headers = False

    def __init__(self, *, client_side: bool, logger: DummyLogger) -> None:
        # Not calling super().__init__: its setters are exactly what this class avoids.
        self.client_side = client_side
        self.header_encoding = None
        # ``_fields.check_block`` does h2's inbound checks in one pass; what we send is
        # built clean by ``_convert``.
        self.validate_outbound_headers = False
        self.normalize_outbound_headers = False
        self.split_outbound_cookies = False
        self.validate_inbound_headers = False
        self.normalize_inbound_headers = False
        self.logger = logger


class H2Context:
    """Limits and pre-built h2 configuration for one worker's HTTP/2 codecs.

    Args:
        max_concurrent_streams: streams the peer may open; streams we open upstream.
        max_header_list_size: decoded header list bytes (RFC 9113 §6.5.2).
        max_headers: header fields in one request or response head.
        initial_window_size: stream receive window we advertise.
        connection_window: connection receive window we open at start.
        buffer_high: one stream's send-buffer high watermark (low = high / 2).
        buffer_limit: one stream's send-buffer cap, and the connection's (see
            ``DEFAULT_BUFFER_LIMIT``).
        reject_underscore: reject request header names containing ``_`` (400).
        zero_window_timeout: seconds buffered bytes may wait for the peer's window with
            none sent; the stall PING goes out at half of it (see ``_codec``).
        max_glitches: weighted glitches allowed per ``glitch_window`` seconds.
        glitch_window: the glitch budget's counting window, in seconds.
    """

    __slots__ = (
        "buffer_high",
        "buffer_limit",
        "buffer_low",
        "client_config",
        "client_settings",
        "connection_fields",
        "connection_window",
        "egress_strip",
        "flood_window",
        "glitch_window",
        "header_block_limit",
        "header_kinds",
        "host_chars",
        "hpack_tables",
        "initial_window_size",
        "max_concurrent_streams",
        "max_glitches",
        "max_header_list_size",
        "max_headers",
        "max_local_errors",
        "max_peer_resets",
        "max_pings",
        "max_settings",
        "method_chars",
        "name_chars",
        "path_chars",
        "pseudo_bits",
        "reject_underscore",
        "request_special",
        "response_special",
        "server_config",
        "server_settings",
        "zero_window_ping",
        "zero_window_timeout",
    )

    def __init__(
        self,
        *,
        max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS,
        max_header_list_size: int = DEFAULT_MAX_HEADER_LIST_SIZE,
        max_headers: int = DEFAULT_MAX_HEADERS,
        initial_window_size: int = DEFAULT_INITIAL_WINDOW_SIZE,
        connection_window: int = DEFAULT_CONNECTION_WINDOW,
        buffer_high: int = DEFAULT_BUFFER_HIGH,
        buffer_limit: int = DEFAULT_BUFFER_LIMIT,
        reject_underscore: bool = True,
        zero_window_timeout: float = DEFAULT_ZERO_WINDOW_TIMEOUT,
        max_glitches: int = DEFAULT_MAX_GLITCHES,
        glitch_window: float = GLITCH_WINDOW,
    ) -> None:
        self.max_concurrent_streams = max_concurrent_streams
        self.max_header_list_size = max_header_list_size
        self.max_headers = max_headers
        self.initial_window_size = initial_window_size
        self.connection_window = max(connection_window, 65535)
        self.buffer_high = buffer_high
        self.buffer_low = buffer_high // 2
        self.buffer_limit = buffer_limit
        self.reject_underscore = reject_underscore
        self.header_block_limit = HEADER_BLOCK_FACTOR * max_header_list_size
        self.max_peer_resets = DEFAULT_MAX_PEER_RESETS
        self.max_local_errors = DEFAULT_MAX_LOCAL_ERRORS
        self.max_settings = DEFAULT_MAX_SETTINGS
        self.max_pings = DEFAULT_MAX_PINGS
        self.flood_window = FLOOD_WINDOW
        self.zero_window_timeout = zero_window_timeout
        #: When a stall gets its PING: half-way, so the peer has the other half to answer.
        self.zero_window_ping = zero_window_timeout / 2
        self.max_glitches = max_glitches
        self.glitch_window = glitch_window
        # Character tables for the request line an HTTP/1 upstream will see (h2 only
        # rejects NUL, CR and LF in values), built here so each worker owns its copies.
        #: ``:method``: a token (RFC 9110 §9.1, §5.6.2).
        self.method_chars = bytes(bytearray(_TCHAR))
        #: ``:path``: visible ASCII only (RFC 9112 §3.2): no space can split a request line.
        self.path_chars = bytes(range(0x21, 0x7F))
        #: ``:authority`` / ``host``: reg-name, IP literal and port, no userinfo
        #: (RFC 3986 §3.2, RFC 9113 §8.3.1).
        self.host_chars = bytes(bytearray(_HOST_CHARS))
        # Header-name sets, built here so each worker owns its copies (STYLE.md §6).
        #: Request fields the server adapter consumes into RequestHead fields.
        self.request_special = frozenset(
            bytes(bytearray(n)) for n in (b"content-length", b"host", b"expect")
        )
        #: Response fields the client adapter consumes into ResponseHead fields.
        self.response_special = frozenset([bytes(bytearray(b"content-length"))])
        #: Fields never sent on HTTP/2: connection-specific ones (RFC 9113 §8.2.2), the
        #: ones each head carries as its own fields, and ``te`` (re-added as ``te:
        #: trailers`` on requests that asked for it).
        self.egress_strip = frozenset(
            bytes(bytearray(n))
            for n in (
                b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                b"upgrade", b"host", b"content-length", b"te",
            )
        )
        logger = NullLogger()
        self.server_config = PlainConfig(client_side=False, logger=logger)
        self.client_config = PlainConfig(client_side=True, logger=logger)
        #: This worker's HPACK static and Huffman tables (``hpack.py``).
        self.hpack_tables = HpackTables()
        #: The ``_fields`` kind of each event h2 reports a header block with.
        self.header_kinds: dict[type[Event], int] = {
            RequestReceived: REQUEST, TrailersReceived: TRAILERS, ResponseReceived: RESPONSE,
            InformationalResponseReceived: RESPONSE,
        }
        #: Pseudo-header names and their bits (``_fields``).
        self.pseudo_bits = {
            bytes(bytearray(name)): bit
            for name, bit in ((b":method", 1), (b":scheme", 2), (b":authority", 4),
                              (b":path", 8), (b":status", 16), (b":protocol", 32))
        }
        #: Characters of a regular field name: visible ASCII, no uppercase, no ":"
        #: (RFC 9113 §8.2.1).
        self.name_chars = bytes(
            c for c in range(0x21, 0x7F) if not 0x41 <= c <= 0x5A and c != 0x3A
        )
        #: Connection-specific fields, malformed in HTTP/2 (RFC 9113 §8.2.2).
        self.connection_fields = frozenset(
            bytes(bytearray(n)) for n in (b"connection", b"keep-alive", b"proxy-connection",
                                          b"transfer-encoding", b"upgrade")
        )
        #: SETTINGS the server adapter sends in its preface.
        self.server_settings: dict[SettingCodes, int] = {
            SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list_size,
            SettingCodes.INITIAL_WINDOW_SIZE: initial_window_size,
        }
        #: SETTINGS the client adapter sends: no server push (RFC 9113 §8.4).
        self.client_settings: dict[SettingCodes, int] = {
            SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list_size,
            SettingCodes.INITIAL_WINDOW_SIZE: initial_window_size,
            SettingCodes.ENABLE_PUSH: 0,
        }
