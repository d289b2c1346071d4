"""QUIC connection IDs that name their worker, and the rule that reads them back.

Theory of operation
-------------------
Every worker thread has its own UDP socket in one ``SO_REUSEPORT`` group. A QUIC
connection lives on one worker (its ``QuicConnection`` is thread-confined), so every
datagram of that connection must reach that worker's socket. The kernel's default
choice hashes the 4-tuple, which breaks as soon as the client's address changes (NAT
rebinding, migration). The one thing that stays with the connection is the
*Destination Connection ID* the client puts in every packet: a CID that eg itself
issued. So eg makes its CIDs carry the worker:

    worker = DCID[0] % workers                                   (the default rule)

``make_cid`` builds such CIDs, ``dcid_of`` finds the DCID in a datagram and ``worker_of``
applies the rule. The same rule is run by the kernel (``eg.reactor.steer``: a classic or
extended BPF reuseport program) and, where no program could be attached, by the worker
that received a datagram, which then hands it to the owner.

Where the DCID is (RFC 9000 §17):

=============  ===================  ================================================
header form    first byte           DCID
=============  ===================  ================================================
long           ``& 0x80`` set       byte 5 is its length L (0..20 in v1, up to 255
                                    in other versions), the DCID is bytes [6, 6 + L)
short          ``& 0x80`` clear     bytes [1, 9): its length is not on the wire, the
                                    receiver knows it (eg's CIDs: ``CID_LENGTH``)
=============  ===================  ================================================

A client's first Initial carries a DCID the client chose at random: the rule then picks
a worker at random, and that worker becomes the owner and answers with a CID from
``make_cid``; from then on (Handshake, Retry'd Initial, 1-RTT) the client uses eg's CID.
A datagram too short to hold its DCID, or one with an empty DCID, has no answer
(``None``): the kernel's 4-tuple hash decides.

Only the first byte names the worker, so the rest of the CID stays random, as RFC 9000
§5.1 asks (CIDs must not be linkable); a few bits that say "which thread" are the same
trade QUIC-LB's plaintext algorithm makes. qh3 also issues CIDs of its own
(NEW_CONNECTION_ID) whose bytes eg cannot choose; those are steered by a kernel map
instead (see ``eg.reactor.steer``).
"""

from __future__ import annotations

#: Length in bytes of the CIDs eg issues. RFC 9000 §17.2 allows 0..20; 8 is qh3's
#: ``host_cid_length`` default and the key size of the kernel's CID → worker map.
CID_LENGTH = 8
#: The default rule reads one byte of the DCID, so it can tell apart at most 256 workers.
MAX_WORKERS = 256
#: RFC 9000 §17.2: Header Form, the most significant bit of the first byte (1 = long).
HEADER_FORM_LONG = 0x80
#: RFC 9000 §17.2: a long header is flags (1 byte) + Version (4), then the DCID length.
LONG_DCID_LENGTH_AT = 5
#: RFC 9000 §17.2: the DCID follows its one-byte length.
LONG_DCID_AT = LONG_DCID_LENGTH_AT + 1
#: RFC 9000 §17.3: in a short header the DCID follows the first byte.
SHORT_DCID_AT = 1

#: What the parsers accept: a received datagram, possibly a view into a receive buffer.
Datagram = bytes | bytearray | memoryview


def make_cid(worker: int, workers: int, random: bytes) -> bytes:
    """Make a connection ID that the default rule steers to ``worker``.

    The first byte becomes the ``random[0] % k``-th of the ``k`` byte values whose
    remainder modulo ``workers`` is ``worker``; the other bytes are ``random[1:]``
    unchanged. So about ``8 - log2(workers)`` bits of the first byte and all of the
    others stay random.

    Args:
        worker: the owning worker's index, ``0 <= worker < workers``.
        workers: how many workers share the socket group, ``1..MAX_WORKERS``.
        random: ``CID_LENGTH`` random bytes supplied by the caller (``os.urandom``),
            so this module needs no entropy source and tests can pass fixed bytes.

    Returns:
        ``CID_LENGTH`` bytes ``cid`` with ``cid[0] % workers == worker``.

    Raises:
        ValueError: when an argument is out of range.
    """
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"workers must be in 1..{MAX_WORKERS}, got {workers}")
    if not 0 <= worker < workers:
        raise ValueError(f"worker must be in 0..{workers - 1}, got {worker}")
    if len(random) != CID_LENGTH:
        raise ValueError(f"random must be {CID_LENGTH} bytes, got {len(random)}")
    # How many byte values b in 0..255 have b % workers == worker.
    choices = (256 - worker + workers - 1) // workers
    first = worker + (random[0] % choices) * workers
    return bytes((first,)) + bytes(random[1:])


def _dcid_span(datagram: Datagram) -> tuple[int, int] | None:
    """Where the DCID lies in ``datagram``, or None when the datagram cannot hold it."""
    if not datagram:
        return None
    if datagram[0] & HEADER_FORM_LONG:
        if len(datagram) <= LONG_DCID_LENGTH_AT:
            return None
        start = LONG_DCID_AT
        end = start + datagram[LONG_DCID_LENGTH_AT]
    else:
        start = SHORT_DCID_AT
        end = start + CID_LENGTH
    if len(datagram) < end:
        return None
    return start, end


def dcid_of(datagram: Datagram) -> bytes | None:
    """Find the Destination Connection ID of the first QUIC packet in a datagram.

    Nothing past the DCID is checked (not the version, not the fixed bit): steering
    needs only the DCID, and the owning connection validates the rest. Coalesced
    packets share their DCID (RFC 9000 §12.2), so the first one decides.

    Args:
        datagram: a UDP payload.

    Returns:
        The DCID (empty for a long header with length 0), or None when the datagram is
        too short to hold it.
    """
    span = _dcid_span(datagram)
    if span is None:
        return None
    return bytes(datagram[span[0] : span[1]])


def worker_of(datagram: Datagram, workers: int) -> int | None:
    """Apply the default rule: the worker that owns the connection of ``datagram``.

    This is what the kernel programs in ``eg.reactor.steer`` compute; a worker that
    receives a datagram without a program attached runs it to find the owner. CIDs that
    qh3 issued itself are not covered (they are random): their owner is known only from
    the registry of issued CIDs.

    Args:
        datagram: a UDP payload.
        workers: how many workers share the socket group (at least 1).

    Returns:
        ``DCID[0] % workers``, or None when the DCID is empty or missing (then any
        worker may take the datagram; the kernel's 4-tuple hash decides).

    Raises:
        ValueError: when ``workers`` is less than 1.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    span = _dcid_span(datagram)
    if span is None or span[0] == span[1]:
        return None
    return datagram[span[0]] % workers
