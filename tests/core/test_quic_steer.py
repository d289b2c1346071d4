"""CIDs that name their worker, and the default rule that reads them (eg.core.quic_steer).

Parser cases are fed whole, cut short at every length, and with trailing bytes; the
DCID is checked against qh3's own header parser on a real client Initial.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st
from qh3._hazmat import Buffer
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection
from qh3.quic.packet import pull_quic_header

from eg.core.quic_steer import CID_LENGTH, MAX_WORKERS, dcid_of, make_cid, worker_of

CID = bytes(range(0xA0, 0xA8))


def short(dcid: bytes = CID, rest: bytes = b"\x01payload") -> bytes:
    """A 1-RTT packet: flags (form 0, fixed bit), DCID, then whatever follows."""
    return b"\x40" + dcid + rest


def long_(dcid: bytes, rest: bytes = b"\x08sourceid\x00\x41\x00payload") -> bytes:
    """An Initial packet header: flags, version 1, DCID length and DCID, then the rest."""
    return b"\xc0\x00\x00\x00\x01" + bytes((len(dcid),)) + dcid + rest


# -- make_cid ----------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2, 3, 4, 7, 64, 255, MAX_WORKERS])
def test_make_cid_names_every_worker_and_keeps_the_rest_random(workers: int) -> None:
    tail = bytes(range(1, CID_LENGTH))
    for worker in range(workers):
        firsts = set()
        for r0 in range(256):
            cid = make_cid(worker, workers, bytes((r0,)) + tail)
            assert len(cid) == CID_LENGTH
            assert cid[0] % workers == worker
            assert cid[1:] == tail
            assert worker_of(short(cid), workers) == worker
            firsts.add(cid[0])
        # Every first byte that names this worker can come out: no randomness is lost
        # beyond what the rule itself takes.
        assert firsts == {b for b in range(256) if b % workers == worker}


def test_make_cid_with_one_worker_is_the_random_bytes() -> None:
    random = os.urandom(CID_LENGTH)
    assert make_cid(0, 1, random) == random


@pytest.mark.parametrize(
    ("worker", "workers", "random", "message"),
    [
        (0, 0, CID, "workers must be in"),
        (0, MAX_WORKERS + 1, CID, "workers must be in"),
        (-1, 2, CID, "worker must be in"),
        (2, 2, CID, "worker must be in"),
        (0, 2, CID[:-1], "random must be 8 bytes"),
        (0, 2, CID + b"\x00", "random must be 8 bytes"),
    ],
)
def test_make_cid_rejects_out_of_range_arguments(
    worker: int, workers: int, random: bytes, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make_cid(worker, workers, random)


# -- dcid_of ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_dcid_of_short_header_whole_cut_and_with_trailing_bytes(kind: type) -> None:
    packet = short()
    assert dcid_of(kind(packet)) == CID
    assert dcid_of(kind(packet + b"\xff" * 100)) == CID
    assert dcid_of(kind(packet[: 1 + CID_LENGTH])) == CID  # nothing after the DCID needed
    for cut in range(1 + CID_LENGTH):
        assert dcid_of(kind(packet[:cut])) is None, cut


@pytest.mark.parametrize("length", [0, 1, 4, 8, 9, 20, 255])
def test_dcid_of_long_header_any_length_whole_cut_and_trailing(length: int) -> None:
    dcid = bytes((0x11 * (i % 15 + 1)) & 0xFF for i in range(length))
    packet = long_(dcid)
    assert dcid_of(packet) == dcid
    assert dcid_of(packet + b"\x00" * 50) == dcid
    end = 6 + length
    assert dcid_of(packet[:end]) == dcid
    for cut in range(end):
        assert dcid_of(packet[:cut]) is None, cut


def test_dcid_of_reads_the_form_bit_only() -> None:
    # A version negotiation (version 0) or a packet without the fixed bit still has its
    # DCID where the form bit says; validating the rest is the connection's business.
    assert dcid_of(b"\x80\x00\x00\x00\x00\x03abc") == b"abc"
    assert dcid_of(b"\x00" + CID) == CID
    assert dcid_of(b"\x7f" + CID) == CID


def test_dcid_of_agrees_with_qh3_on_a_real_client_initial() -> None:
    client = QuicConnection(configuration=QuicConfiguration(is_client=True,
                                                             server_name="localhost"))
    client.connect(("127.0.0.1", 4433), now=0.0)
    datagrams = client.datagrams_to_send(now=0.0)
    assert datagrams
    for data, _addr in datagrams:
        header = pull_quic_header(Buffer(data=data), host_cid_length=CID_LENGTH)
        assert dcid_of(data) == header.destination_cid
        assert dcid_of(data) == client.original_destination_connection_id
    # A short header, parsed the way a server with 8-byte CIDs parses it.
    packet = short()
    header = pull_quic_header(Buffer(data=packet), host_cid_length=CID_LENGTH)
    assert dcid_of(packet) == header.destination_cid


# -- worker_of ------------------------------------------------------------------------------------


def test_worker_of_is_the_first_dcid_byte_modulo_workers() -> None:
    assert worker_of(short(b"\x05" + CID[1:]), 2) == 1
    assert worker_of(short(b"\x05" + CID[1:]), 3) == 2
    assert worker_of(short(b"\x05" + CID[1:]), 1) == 0
    assert worker_of(long_(b"\x07" + CID[1:]), 4) == 3
    assert worker_of(long_(b"\x07\x00\x00"), 4) == 3  # any DCID length
    assert worker_of(long_(b"\x06" * 20), 4) == 2


def test_worker_of_leaves_empty_and_missing_dcids_to_the_hash() -> None:
    assert worker_of(long_(b""), 2) is None
    assert worker_of(b"", 2) is None
    assert worker_of(short()[:5], 2) is None
    assert worker_of(long_(CID)[:10], 2) is None


def test_worker_of_rejects_no_workers() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        worker_of(short(), 0)


@given(st.binary(max_size=64), st.integers(min_value=1, max_value=MAX_WORKERS))
def test_any_bytes_give_a_dcid_or_none_and_a_consistent_worker(
    data: bytes, workers: int
) -> None:
    dcid = dcid_of(data)
    assert dcid is None or isinstance(dcid, bytes)
    expected = dcid[0] % workers if dcid else None
    assert worker_of(data, workers) == expected
    assert worker_of(memoryview(data), workers) == expected
