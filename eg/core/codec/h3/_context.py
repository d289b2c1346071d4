"""Per-worker HTTP/3 limits and the qh3 configurations built from them.

One ``H3Context`` per worker (STYLE.md §6: nothing hot is shared between threads). It
carries the worker's ``H2Context`` too: HTTP/3 header fields follow the same rules as
HTTP/2's (RFC 9114 §4.2 and §4.3 defer to the same field grammar, pseudo-headers and
connection-specific fields), so the one-pass validator and the head mapping of the HTTP/2
adapters serve both, with the same character tables and limits.
"""

from __future__ import annotations

from typing import Any

from qh3.quic.configuration import QuicConfiguration

from eg.core.codec.h2._context import H2Context
from eg.core.message import ResetCode
from eg.core.quic_steer import CID_LENGTH
from eg.core.sni import name_table, pick

__all__ = ["H3Context", "QuicCertificates", "QuicConfiguration", "check_quic_certificate",
           "h3_code", "reset_code"]

#: ALPN of HTTP/3 (RFC 9114 §3.1).
ALPN_H3 = "h3"
#: Largest DATAGRAM frame we accept: qh3 turns on H3 datagrams (RFC 9297) and a peer
#: closes with H3_SETTINGS_ERROR unless the transport parameter is present as well.
MAX_DATAGRAM_FRAME = 65536
#: ``ssl.CERT_NONE`` / ``ssl.CERT_REQUIRED`` (qh3 takes the ssl module's values; core
#: code does not import ssl).
CERT_NONE = 0
CERT_REQUIRED = 2

# HTTP/3 error codes (RFC 9114 §8.1).
H3_NO_ERROR = 0x100
H3_GENERAL_PROTOCOL_ERROR = 0x101
H3_INTERNAL_ERROR = 0x102
H3_EXCESSIVE_LOAD = 0x107
H3_REQUEST_REJECTED = 0x10B
H3_REQUEST_CANCELLED = 0x10C
H3_REQUEST_INCOMPLETE = 0x10D
H3_MESSAGE_ERROR = 0x10E
H3_CONNECT_ERROR = 0x10F
#: QUIC CRYPTO_ERROR range (RFC 9001 §4.8): 0x100 + TLS alert; 42..49 are certificate
#: alerts (bad_certificate ... access_denied), 0x12a..0x131 on the wire.
CRYPTO_CERT_ALERTS = range(0x12A, 0x132)


class H3Context:
    """The worker's HTTP/3 and QUIC settings (see the module docstring).

    Args:
        fields: the worker's HTTP/2 context (field tables, ``max_headers``, buffers).
        idle_timeout: QUIC max_idle_timeout, seconds.
        max_udp_payload: the largest UDP payload we send.
        max_requests: requests per connection before GOAWAY.
        max_field_section_size: SETTINGS_MAX_FIELD_SECTION_SIZE (decoded bytes).
        qpack_max_table_capacity: QPACK dynamic table we allow the peer.
        qpack_blocked_streams: QPACK blocked streams we allow the peer.
        max_stream_data: per-stream receive window.
        max_data: per-connection receive window.
        hold_limit: body bytes a paused stream may deliver before H3_EXCESSIVE_LOAD.
    """

    def __init__(
        self,
        *,
        fields: H2Context,
        idle_timeout: float,
        max_udp_payload: int,
        max_requests: int,
        max_field_section_size: int,
        qpack_max_table_capacity: int,
        qpack_blocked_streams: int,
        max_stream_data: int,
        max_data: int,
        hold_limit: int,
    ) -> None:
        self.fields = fields
        self.idle_timeout = idle_timeout
        self.max_udp_payload = max_udp_payload
        self.max_requests = max_requests
        self.max_field_section_size = max_field_section_size
        self.qpack_max_table_capacity = qpack_max_table_capacity
        self.qpack_blocked_streams = qpack_blocked_streams
        self.max_stream_data = max_stream_data
        self.max_data = max_data
        self.buffer_high = fields.buffer_high
        self.buffer_low = fields.buffer_high // 2
        self.buffer_limit = fields.buffer_limit
        #: Body bytes a paused stream may deliver (held in the codec): qh3 grants stream
        #: credit as data arrives, not as it is consumed, so this is where a fast sender
        #: meets a slow receiver on the other side (H3_EXCESSIVE_LOAD past it).
        self.hold_limit = hold_limit
        #: Held bytes (all streams of a connection) past which its datagrams wait
        #: unprocessed, and below which they are processed again (``_codec``).
        self.hold_high = max(hold_limit // 4, 64 * 1024)
        self.hold_low = self.hold_high // 2

    def server_configuration(self, cert: str, key: str) -> QuicConfiguration:
        """The QuicConfiguration of one QUIC listener (certificates loaded here).

        No session tickets are issued or accepted, so there is no resumption and no
        0-RTT: early data (replayable, RFC 9001 §9.2) is never accepted or forwarded;
        a client that tries it falls back to 1-RTT (RFC 9001 §4.6.2).
        """
        config = self._base(is_client=False)
        config.load_cert_chain(cert, key)
        return config

    def client_configuration(
        self, *, server_name: str, verify: bool, ca_file: str
    ) -> QuicConfiguration:
        """The QuicConfiguration for connections to one upstream cluster."""
        config = self._base(is_client=True)
        config.server_name = server_name
        config.verify_mode = CERT_REQUIRED if verify else CERT_NONE
        config.verify_hostname = verify
        if ca_file:
            config.load_verify_locations(cafile=ca_file)
        return config

    def _base(self, *, is_client: bool) -> QuicConfiguration:
        return QuicConfiguration(
            is_client=is_client,
            alpn_protocols=[ALPN_H3],
            connection_id_length=CID_LENGTH,
            idle_timeout=self.idle_timeout,
            max_datagram_size=self.max_udp_payload,
            max_datagram_frame_size=MAX_DATAGRAM_FRAME,
            max_stream_data=self.max_stream_data,
            max_data=self.max_data,
        )


#: What a QUIC server signs with: qh3's certificate, chain and private key objects.
type CertificateSet = tuple[Any, list[Any], Any]


class QuicCertificates:
    """A QUIC listener's certificates, chosen by the ClientHello's server name (SNI) as a
    TCP listener's are (``eg/core/sni.py``); the first one otherwise.

    Args:
        certificates: (certificate file, key file, its DNS names) in listener order.

    Raises:
        OSError, ValueError: qh3 cannot load a certificate or key.
    """

    def __init__(self, certificates: list[tuple[str, str, list[str]]]) -> None:
        loaded: list[tuple[CertificateSet, list[str]]] = []
        for cert, key, names in certificates:
            config = QuicConfiguration(is_client=False)
            config.load_cert_chain(cert, key)
            loaded.append(((config.certificate, config.certificate_chain,
                            config.private_key), names))
        self.default = loaded[0][0]
        self._table = name_table(loaded)

    def for_server_name(self, server_name: str | None) -> CertificateSet:
        if not server_name:
            return self.default
        return pick(self._table, server_name) or self.default


def check_quic_certificate(cert: str, key: str) -> None:
    """Load ``cert`` and ``key`` the way a QUIC listener will (qh3 parses PEM itself).

    Raises:
        OSError: a file cannot be read.
        ValueError: qh3 cannot parse the certificate or key.
    """
    QuicConfiguration(is_client=False).load_cert_chain(cert, key)


def reset_code(code: int) -> ResetCode:
    """An HTTP/3 stream error code as the message vocabulary's (RFC 9114 §A.4.1)."""
    if code == H3_NO_ERROR:
        return ResetCode.NO_ERROR
    if code == H3_REQUEST_CANCELLED:
        return ResetCode.CANCEL
    if code == H3_REQUEST_REJECTED:
        return ResetCode.REFUSED_STREAM
    if code == H3_EXCESSIVE_LOAD:
        return ResetCode.ENHANCE_YOUR_CALM
    if code == H3_CONNECT_ERROR:
        return ResetCode.CONNECT_ERROR
    if code in (H3_GENERAL_PROTOCOL_ERROR, H3_MESSAGE_ERROR, H3_REQUEST_INCOMPLETE):
        return ResetCode.PROTOCOL_ERROR
    return ResetCode.INTERNAL_ERROR


def h3_code(code: ResetCode) -> int:
    """The HTTP/3 error code that carries ``code`` (RFC 9114 §A.4.1)."""
    if code == ResetCode.NO_ERROR:
        return H3_NO_ERROR
    if code == ResetCode.CANCEL:
        return H3_REQUEST_CANCELLED
    if code == ResetCode.REFUSED_STREAM:
        return H3_REQUEST_REJECTED
    if code == ResetCode.ENHANCE_YOUR_CALM:
        return H3_EXCESSIVE_LOAD
    if code == ResetCode.CONNECT_ERROR:
        return H3_CONNECT_ERROR
    if code == ResetCode.PROTOCOL_ERROR:
        return H3_MESSAGE_ERROR
    return H3_INTERNAL_ERROR
