"""Stateless Retry (RFC 9000 §8.1.2): address-bound tokens and the packets around them.

A server under load answers a client's first Initial with a Retry packet carrying a
token instead of creating any state; the client repeats its Initial with the token, to
the new Connection ID the Retry named, and only then is a connection created. The token
proves the client can receive at its claimed address, so a spoofed flood of Initials
costs one small Retry packet each, and no connection state.

Token layout (all ours, opaque to the client):

    issued (8 bytes, big-endian float: the issuing ``now``)
    len(odcid) (1) odcid             the client's original Destination Connection ID
    len(retry_cid) (1) retry_cid     the Source Connection ID of our Retry
    tag (16)                         HMAC-SHA256(key, client IP ‖ everything above)

It is valid for ``lifetime`` seconds from ``issued`` (the process's monotonic clock: a
token is only ever checked by the process that issued it), only from the client IP it
was issued to (not the port: a NAT may rebind it between the two Initials), and only on
an Initial addressed to ``retry_cid``. The key is random per process and shared by the
workers, so any worker can check a token another issued.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from qh3._hazmat import pull_quic_header
from qh3.quic.packet import QuicPacketType, encode_quic_retry, encode_quic_version_negotiation

from eg.core.quic_steer import CID_LENGTH

#: Bytes of HMAC-SHA256 kept in a token: 128 bits, as QUIC's own integrity tags.
TAG_SIZE = 16
#: QUIC versions eg speaks: 1 (RFC 9000) and 2 (RFC 9369).
SUPPORTED_VERSIONS = (0x00000001, 0x6B3343CF)
#: The smallest datagram carrying a client Initial (RFC 9000 §14.1).
MIN_INITIAL_SIZE = 1200
_ISSUED = struct.Struct(">d")


class RetryTokens:
    """Issue and check Retry tokens (see the module docstring).

    Args:
        key: the process's HMAC key (32 random bytes).
        lifetime: seconds a token stays valid.
    """

    def __init__(self, key: bytes, lifetime: float) -> None:
        self._key = key
        self._lifetime = lifetime

    def issue(self, ip: bytes, odcid: bytes, retry_cid: bytes, now: float) -> bytes:
        """A token for a client at ``ip`` (packed address bytes)."""
        body = b"".join((_ISSUED.pack(now), bytes((len(odcid),)), odcid,
                         bytes((len(retry_cid),)), retry_cid))
        return body + self._tag(ip, body)

    def check(self, token: bytes, ip: bytes, dcid: bytes, now: float) -> bytes | None:
        """The original DCID the token was issued for, or None when it is not valid
        (forged, expired, another address, or not addressed to its Retry's CID)."""
        if len(token) < _ISSUED.size + 2 + TAG_SIZE:
            return None
        body, tag = token[:-TAG_SIZE], token[-TAG_SIZE:]
        if not hmac.compare_digest(tag, self._tag(ip, body)):
            return None
        (issued,) = _ISSUED.unpack_from(body)
        if not 0 <= now - issued <= self._lifetime:
            return None
        pos = _ISSUED.size
        size = body[pos]
        odcid = body[pos + 1 : pos + 1 + size]
        pos += 1 + size
        if pos >= len(body) or body[pos + 1 : pos + 1 + body[pos]] != dcid:
            return None
        return odcid

    def _tag(self, ip: bytes, body: bytes) -> bytes:
        return hmac.digest(self._key, ip + body, hashlib.sha256)[:TAG_SIZE]


class InitialInfo:
    """What the listener needs from a long-header packet before any connection exists."""

    __slots__ = ("dcid", "is_initial", "scid", "token", "version")

    def __init__(self, version: int, is_initial: bool, dcid: bytes, scid: bytes,
                 token: bytes) -> None:
        self.version = version
        self.is_initial = is_initial
        self.dcid = dcid
        self.scid = scid
        self.token = token


def parse_long_header(data: bytes) -> InitialInfo | None:
    """The first packet's header, or None when it is not a parsable long header."""
    try:
        header = pull_quic_header(data, 0, CID_LENGTH)
    except ValueError:
        return None
    version = header[0]
    if version is None:
        return None
    return InitialInfo(version, header[1] == int(QuicPacketType.INITIAL), header[3],
                       header[4], header[5] or b"")


def retry_packet(info: InitialInfo, retry_cid: bytes, token: bytes) -> bytes:
    """The Retry answering ``info``'s Initial."""
    return encode_quic_retry(version=info.version, source_cid=retry_cid,
                             destination_cid=info.scid, original_destination_cid=info.dcid,
                             retry_token=token)


def version_negotiation(info: InitialInfo) -> bytes:
    """A Version Negotiation packet listing ``SUPPORTED_VERSIONS`` (RFC 9000 §6)."""
    return encode_quic_version_negotiation(source_cid=info.dcid, destination_cid=info.scid,
                                           supported_versions=list(SUPPORTED_VERSIONS))
