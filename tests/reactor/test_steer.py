"""QUIC steering in the kernel (eg.reactor.steer), with real sockets on loopback.

Each test binds a reuseport group of N UDP sockets on 127.0.0.1 (worker i = socket i,
bound in order), attaches one mode, then sends every crafted datagram from many client
sockets (so many source ports: a 4-tuple hash would spread them) and checks which
socket received each copy. The eBPF tests skip when bpf() is not permitted.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from collections.abc import Callable, Iterator

import pytest

from eg.core.quic_steer import CID_LENGTH, make_cid, worker_of
from eg.reactor.steer import (
    BPF_PROG_TYPE_SK_REUSEPORT,
    BPF_SK_REUSEPORT_SELECT,
    Bpf,
    CbpfAssembler,
    EbpfAssembler,
    Steering,
    cbpf_program,
    ebpf_program,
)

#: Client sockets (source ports) each datagram is sent from.
CLIENTS = 24
#: How long to wait for datagrams on loopback before giving up.
RECEIVE_TIMEOUT = 3.0

Group = Callable[[int], list[socket.socket]]


@pytest.fixture
def group() -> Iterator[Group]:
    """Bind reuseport groups of N sockets; all closed at the end of the test."""
    made: list[socket.socket] = []

    def bind(n: int) -> list[socket.socket]:
        socks: list[socket.socket] = []
        port = 0
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            made.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("127.0.0.1", port))
            port = s.getsockname()[1]
            s.setblocking(False)
            socks.append(s)
        return socks

    yield bind
    for s in made:
        s.close()


def ebpf_or_skip(socks: list[socket.socket], **kwargs: int) -> Steering:
    """Attach the eBPF mode, or skip the test when this process may not use bpf()."""
    try:
        return Steering.attach(socks, prefer="ebpf", **kwargs)
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EACCES, errno.ENOSYS):
            pytest.skip(f"bpf() not permitted here (euid {os.geteuid()}): {exc}")
        raise


def deliveries(socks: list[socket.socket], packets: list[bytes],
               clients: int = CLIENTS) -> dict[bytes, list[int]]:
    """Send each packet from ``clients`` source ports; which socket got each copy.

    Returns:
        For each packet, the indices of the sockets that received its copies.
    """
    port = socks[0].getsockname()[1]
    senders = []
    try:
        for _ in range(clients):
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            senders.append(c)
            c.bind(("127.0.0.1", 0))
        for packet in packets:
            for c in senders:
                c.sendto(packet, ("127.0.0.1", port))
        got: dict[bytes, list[int]] = {packet: [] for packet in packets}
        expected = len(packets) * clients
        received = 0
        deadline = time.monotonic() + RECEIVE_TIMEOUT
        index = {s.fileno(): i for i, s in enumerate(socks)}
        while received < expected:
            left = deadline - time.monotonic()
            assert left > 0, f"only {received} of {expected} datagrams arrived"
            ready, _, _ = select.select(socks, [], [], left)
            for s in ready:
                while True:
                    try:
                        data = s.recv(2048)
                    except BlockingIOError:
                        break
                    got[data].append(index[s.fileno()])
                    received += 1
        return got
    finally:
        for c in senders:
            c.close()


def short(dcid: bytes) -> bytes:
    """A 1-RTT packet with this DCID and some protected payload."""
    return b"\x43" + dcid + b"\x5a" * 24


def long_(dcid: bytes) -> bytes:
    """An Initial packet header with this DCID (any length) and some payload."""
    return b"\xc3\x00\x00\x00\x01" + bytes((len(dcid),)) + dcid + b"\x08srcid000\x00" + b"\x5a" * 24


def steered_packets(workers: int) -> list[tuple[bytes, int]]:
    """Packets whose DCID names a worker by the default rule, with that worker."""
    out = []
    for worker in range(workers):
        for _ in range(3):
            cid = make_cid(worker, workers, os.urandom(CID_LENGTH))
            out += [(short(cid), worker), (long_(cid), worker)]
        for length in (1, 4, 20):
            first = make_cid(worker, workers, os.urandom(CID_LENGTH))[:1]
            out.append((long_(first + os.urandom(length - 1)), worker))
    return out


def unsteerable_packets() -> list[bytes]:
    """Datagrams with no DCID to read: the kernel's hash must decide."""
    return [
        b"",
        b"\x43\x01\x02\x03",  # a short header cut inside its DCID
        long_(b""),  # an empty DCID
        b"\xc3\x00\x00\x00\x01\x14\x01\x02",  # DCID length 20, 2 bytes present
        b"\xc3\x00\x00",  # cut before the DCID length
    ]


def assert_steered(socks: list[socket.socket], packets: list[tuple[bytes, int]]) -> None:
    got = deliveries(socks, [p for p, _ in packets])
    for packet, worker in packets:
        assert got[packet] == [worker] * CLIENTS, (packet.hex(), worker, got[packet])


def assert_hashed(socks: list[socket.socket]) -> None:
    """Unsteerable datagrams all arrive, spread by source port (not all to socket 0)."""
    got = deliveries(socks, unsteerable_packets())
    for packet, where in got.items():
        assert len(where) == CLIENTS
        assert len(set(where)) > 1, (packet.hex(), where)


# -- no program: the control -------------------------------------------------------------------


def test_without_a_program_the_source_port_decides(group: Group) -> None:
    socks = group(2)
    steering = Steering.attach(socks, prefer="none")
    assert steering.mode == "none"
    cid = make_cid(0, 2, os.urandom(CID_LENGTH))
    got = deliveries(socks, [short(cid)])
    assert sorted(set(got[short(cid)])) == [0, 1], "the hash should spread source ports"
    assert steering.register(cid, 0) is False
    steering.unregister(cid)
    assert steering.lookup(cid) is None
    steering.close()


# -- classic BPF: the default rule, no privilege needed ------------------------------------------


@pytest.mark.parametrize("workers", [2, 3])
def test_cbpf_steers_by_the_first_dcid_byte(group: Group, workers: int) -> None:
    socks = group(workers)
    steering = Steering.attach(socks, prefer="cbpf")
    assert steering.mode == "cbpf"
    assert_steered(socks, steered_packets(workers))
    assert_hashed(socks)
    steering.close()


def test_cbpf_cannot_follow_cids_it_did_not_choose(group: Group) -> None:
    socks = group(2)
    steering = Steering.attach(socks, prefer="cbpf")
    stranger = b"\x01" + os.urandom(CID_LENGTH - 1)  # the rule says worker 1
    assert steering.register(stranger, 0) is False
    assert steering.register(stranger, 1) is True
    assert_steered(socks, [(short(stranger), 1)])
    steering.unregister(stranger)
    steering.close()


def test_cbpf_refuses_a_socket_outside_a_reuseport_group(group: Group) -> None:
    alone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        alone.bind(("127.0.0.1", 0))
        with pytest.raises(OSError, match="SO_ATTACH_REUSEPORT_CBPF") as info:
            Steering.attach([alone], prefer="cbpf")
        assert info.value.errno == errno.EINVAL
        # "auto" never raises: nothing attaches, the hash decides.
        assert Steering.attach([alone], prefer="auto").mode == "none"
    finally:
        alone.close()


def test_attach_rejects_bad_arguments(group: Group) -> None:
    socks = group(2)
    with pytest.raises(ValueError, match="prefer"):
        Steering.attach(socks, prefer="userspace")
    with pytest.raises(ValueError, match=r"1\.\.256"):
        Steering.attach([], prefer="cbpf")


def test_auto_prefers_ebpf_and_falls_back_to_cbpf(group: Group) -> None:
    socks = group(2)
    steering = Steering.attach(socks)
    try:
        Bpf().map_create(map_type=1, key_size=4, value_size=4, max_entries=1, name="probe")
    except OSError:
        assert steering.mode == "cbpf"
    else:
        assert steering.mode == "ebpf"
    assert_steered(socks, steered_packets(2))
    steering.close()


# -- eBPF: the CID map, then the default rule ---------------------------------------------------


@pytest.mark.needs_root
@pytest.mark.parametrize("workers", [2, 3])
def test_ebpf_steers_by_the_first_dcid_byte(group: Group, workers: int) -> None:
    socks = group(workers)
    steering = ebpf_or_skip(socks)
    assert steering.mode == "ebpf"
    assert_steered(socks, steered_packets(workers))
    assert_hashed(socks)
    steering.close()


@pytest.mark.needs_root
@pytest.mark.parametrize("workers", [2, 3])
def test_ebpf_follows_registered_cids_until_unregistered(group: Group, workers: int) -> None:
    socks = group(workers)
    steering = ebpf_or_skip(socks)
    # qh3-issued CIDs: random, each owned by a worker the default rule does not name.
    issued = []
    for worker in range(workers):
        while True:
            cid = os.urandom(CID_LENGTH)
            if cid[0] % workers != worker:
                break
        assert steering.register(cid, worker) is True
        assert steering.lookup(cid) == worker
        issued.append((cid, worker))
    assert_steered(socks, [(p(cid), w) for cid, w in issued for p in (short, long_)])
    # Retired: the default rule applies again.
    for cid, _ in issued:
        steering.unregister(cid)
        assert steering.lookup(cid) is None
        steering.unregister(cid)  # twice is harmless
    assert_steered(socks, [(p(cid), cid[0] % workers) for cid, _ in issued
                           for p in (short, long_)])
    steering.close()


@pytest.mark.needs_root
def test_ebpf_steers_by_worker_order_not_bind_order(group: Group) -> None:
    bound = group(3)
    workers = [bound[2], bound[0], bound[1]]  # worker i is not the i-th bound socket
    steering = ebpf_or_skip(workers)
    packets = steered_packets(3)
    got = deliveries(bound, [p for p, _ in packets])
    for packet, worker in packets:
        assert got[packet] == [bound.index(workers[worker])] * CLIENTS
    steering.close()


@pytest.mark.needs_root
def test_ebpf_leaves_a_closed_workers_datagrams_to_the_hash(group: Group) -> None:
    socks = group(3)
    steering = ebpf_or_skip(socks)
    cid = b"\x00" + os.urandom(CID_LENGTH - 1)
    assert steering.register(cid, 2) is True
    socks[2].close()  # the kernel drops it from the socket array: selection fails
    live = socks[:2]
    orphans = [short(make_cid(2, 3, os.urandom(CID_LENGTH))) for _ in range(3)] + [short(cid)]
    got = deliveries(live, orphans)
    for packet in orphans:
        assert sorted(set(got[packet])) == [0, 1], "should be spread by the hash"
    assert_steered(live, [(p, w) for p, w in steered_packets(3) if w < 2])
    steering.close()


@pytest.mark.needs_root
def test_ebpf_only_stores_what_the_default_rule_gets_wrong(group: Group) -> None:
    socks = group(2)
    steering = ebpf_or_skip(socks)
    agrees = make_cid(1, 2, os.urandom(CID_LENGTH))
    assert steering.register(agrees, 1) is True
    assert steering.lookup(agrees) is None
    # A CID of another length (a client's own first DCID) is not a map key.
    assert steering.register(b"\x00" * 12, 1) is False
    steering.unregister(b"\x00" * 12)
    assert steering.lookup(b"\x00" * 12) is None
    with pytest.raises(ValueError, match="worker must be in"):
        steering.register(agrees, 2)
    steering.close()


@pytest.mark.needs_root
def test_ebpf_full_map_falls_back_to_the_default_rule(group: Group) -> None:
    socks = group(2)
    steering = ebpf_or_skip(socks, max_cids=2)
    first, second, third = (b"\x01" + os.urandom(CID_LENGTH - 1) for _ in range(3))
    assert steering.register(first, 0) is True
    assert steering.register(second, 0) is True
    assert steering.register(third, 0) is False
    assert_steered(socks, [(short(first), 0), (short(second), 0), (short(third), 1)])
    steering.unregister(first)
    assert steering.register(third, 0) is True
    assert_steered(socks, [(short(first), 1), (short(third), 0)])
    steering.close()


@pytest.mark.needs_root
def test_ebpf_keeps_steering_after_close_and_forgets_nothing_new(group: Group) -> None:
    socks = group(2)
    steering = ebpf_or_skip(socks)
    cid = b"\x00" + os.urandom(CID_LENGTH - 1)
    assert steering.register(cid, 1) is True
    steering.close()
    steering.close()
    # The group holds the program and its maps: the registered CID still steers.
    assert_steered(socks, [(short(cid), 1)])
    assert steering.register(b"\x00" + os.urandom(CID_LENGTH - 1), 1) is False
    steering.unregister(cid)
    assert steering.lookup(cid) is None


@pytest.mark.needs_root
def test_ebpf_a_socket_outside_a_reuseport_group_is_refused(group: Group) -> None:
    alone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        alone.bind(("127.0.0.1", 0))
        with pytest.raises(OSError) as info:
            ebpf_or_skip([alone])
        assert info.value.errno == errno.EINVAL
    finally:
        alone.close()


@pytest.mark.needs_root
def test_a_refused_program_brings_the_verifier_log() -> None:
    bpf = Bpf()
    try:
        os.close(bpf.map_create(map_type=1, key_size=4, value_size=4, max_entries=1,
                                name="probe"))
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EACCES):
            pytest.skip(f"bpf() not permitted here (euid {os.geteuid()}): {exc}")
        raise
    a = EbpfAssembler()
    a.exit()  # r0 was never written
    with pytest.raises(OSError, match="verifier log") as info:
        bpf.prog_load(prog_type=BPF_PROG_TYPE_SK_REUSEPORT, insns=a.assemble(),
                      expected_attach_type=BPF_SK_REUSEPORT_SELECT, name="bad")
    assert "R0 !read_ok" in str(info.value)
    assert info.value.errno == errno.EACCES


# -- the assemblers -------------------------------------------------------------------------------


def test_ebpf_assembler_encodes_jumps_relative_to_the_next_instruction() -> None:
    a = EbpfAssembler()
    a.goto("end")
    a.mov_imm(0, 7)
    a.label("end")
    a.exit()
    code = a.assemble()
    assert len(code) == 3 * 8
    assert struct.unpack_from("<BBhi", code, 0) == (0x05, 0, 1, 0)
    with pytest.raises(ValueError, match="defined twice"):
        a.label("end")
    a.goto("nowhere")
    with pytest.raises(ValueError, match="unknown label"):
        a.assemble()


def test_cbpf_assembler_checks_its_jumps() -> None:
    c = CbpfAssembler()
    c.label("top")
    with pytest.raises(ValueError, match="defined twice"):
        c.label("top")
    c.goto("top")
    with pytest.raises(ValueError, match="forward only"):
        c.assemble()
    c = CbpfAssembler()
    c.jump(0x15, 0, "far", None)
    for _ in range(300):
        c.stmt(0x06)
    c.label("far")
    c.stmt(0x06)
    with pytest.raises(ValueError, match="too far"):
        c.assemble()
    c = CbpfAssembler()
    c.goto("nowhere")
    with pytest.raises(ValueError, match="unknown label"):
        c.assemble()
    assert len(c) == 1


def test_programs_have_the_expected_size() -> None:
    # One 8-byte instruction each; the classic one stays far below BPF_MAXINSNS.
    assert len(cbpf_program(2)) % 8 == 0
    assert len(cbpf_program(2)) // 8 == 20
    assert len(ebpf_program(2, 3, 4)) % 8 == 0


def test_the_programs_and_worker_of_agree(group: Group) -> None:
    """The userspace rule and the classic program on the same datagrams."""
    socks = group(3)
    Steering.attach(socks, prefer="cbpf")
    packets = [p for p, _ in steered_packets(3)]
    got = deliveries(socks, packets, clients=4)
    for packet in packets:
        assert got[packet] == [worker_of(packet, 3)] * 4
