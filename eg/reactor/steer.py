"""Steer QUIC datagrams to the worker that owns their connection, inside the kernel.

Theory of operation
-------------------
Each worker has its own UDP socket; together they form one ``SO_REUSEPORT`` group,
bound by the main thread in worker order before the workers start. For every datagram
the kernel picks one socket of the group; by default it hashes the 4-tuple, which sends
a connection elsewhere when the client's port changes (NAT rebinding) or its address
does (migration). A program attached to the group can choose instead. The choice is
made by Destination Connection ID (DCID), which the client keeps across such changes.

eg's own CIDs carry their worker in the first byte (``eg.core.quic_steer``: the
*default rule* ``worker = DCID[0] % N``). qh3, though, also issues CIDs itself
(NEW_CONNECTION_ID frames, RFC 9000 §5.1.1), random bytes eg cannot choose; a client
that migrates switches to one of those (§9.5), and then only a table of issued CIDs
knows the owner. That table must be read by the kernel, per datagram, so it is a BPF
hash map, and reading a map takes an eBPF program: classic BPF has no maps.

=======  ==================================================  ==========================
mode     steers                                              needs
=======  ==================================================  ==========================
ebpf     8-byte DCIDs found in the CID map (short headers,   CAP_BPF (root), and the
         long headers with DCID length 8) to the mapped      SK_REUSEPORT program type
         worker; every other DCID by the default rule        (Linux 4.19)
cbpf     every DCID by the default rule, so not qh3's own    nothing (Linux 4.5): what
         CIDs                                                Envoy does for QUIC
none     nothing: the kernel's 4-tuple hash; the receiving   nothing
         worker must hand datagrams to their owner
=======  ==================================================  ==========================

In every mode a datagram whose DCID is empty or cut short is left to the kernel's hash,
like ``worker_of`` returning None.

The eBPF program (``ebpf_program``) is assembled here, instruction by instruction, and
loaded with the raw ``bpf(2)`` syscall through ctypes: no clang, libbpf or bcc is needed
at run time. It selects a socket with ``bpf_sk_select_reuseport`` from a
REUSEPORT_SOCKARRAY whose index i holds worker i's socket, so bind order does not
matter. The classic program (``cbpf_program``) returns the socket's index in the
kernel's group array instead, which is bind order: that holds while no socket of the
group is closed (closing one moves the last socket into its slot).

Workers fill the CID map as qh3 issues CIDs (``register``) and empty it as they are
retired (``unregister``). A CID the default rule already steers right is not stored.
The map is per process: it dies with its last file descriptor.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import platform
import socket
import struct
from collections.abc import Sequence

from eg.core.quic_steer import (
    CID_LENGTH,
    HEADER_FORM_LONG,
    LONG_DCID_AT,
    LONG_DCID_LENGTH_AT,
    MAX_WORKERS,
    SHORT_DCID_AT,
)

log = logging.getLogger("eg.steer")

#: The values of ``prefer`` (and of ``Steering.mode``, except "auto").
MODES = ("auto", "ebpf", "cbpf", "none")
#: Default capacity of the CID → worker map. Each worker's connections hold a few CIDs
#: (qh3 issues up to the peer's active_connection_id_limit, RFC 9000 §18.2: default 2,
#: typically 8); 65536 covers thousands of connections. Memory is allocated per entry.
DEFAULT_MAX_CIDS = 65536

# -- kernel constants (uapi headers) -----------------------------------------------------

#: ``bpf(2)`` syscall numbers per machine (arch/x86/entry/syscalls/syscall_64.tbl: 321;
#: include/uapi/asm-generic/unistd.h ``__NR_bpf``: 280, used by arm64 and riscv).
BPF_SYSCALL_NUMBERS = (("x86_64", 321), ("aarch64", 280), ("arm64", 280), ("riscv64", 280))

# asm-generic/socket.h
SO_ATTACH_REUSEPORT_CBPF = 51
SO_ATTACH_REUSEPORT_EBPF = 52

# linux/bpf.h, enum bpf_cmd
BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_PROG_LOAD = 5
# linux/bpf.h, enum bpf_map_type
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_REUSEPORT_SOCKARRAY = 20
# linux/bpf.h, enum bpf_prog_type
BPF_PROG_TYPE_SK_REUSEPORT = 21
# linux/bpf.h, enum bpf_attach_type
BPF_SK_REUSEPORT_SELECT = 39
# linux/bpf.h: map_flags (allocate entries on update, not all at creation)
BPF_F_NO_PREALLOC = 1
# linux/bpf.h: BPF_MAP_UPDATE_ELEM flags
BPF_ANY = 0
# linux/bpf.h: src_reg of a BPF_LD_IMM64 whose imm is a map fd
BPF_PSEUDO_MAP_FD = 1
# linux/bpf.h, enum sk_action
SK_PASS = 1
# linux/bpf.h, __BPF_FUNC_MAPPER (helper ids)
BPF_FUNC_MAP_LOOKUP_ELEM = 1
BPF_FUNC_SKB_LOAD_BYTES = 26
BPF_FUNC_SK_SELECT_REUSEPORT = 82
# linux/bpf.h, struct sk_reuseport_md: ``__u32 len`` (bytes from the UDP header on)
SK_REUSEPORT_MD_LEN = 16

# union bpf_attr: how many bytes each command reads (offsetofend of its last field used).
#: map_type, key_size, value_size, max_entries, map_flags, inner_map_fd, numa_node,
#: map_name[16] ends at 44.
ATTR_MAP_CREATE_SIZE = 44
#: map_fd, (pad), key, value, flags ends at 32.
ATTR_MAP_ELEM_SIZE = 32
#: prog_type, insn_cnt, insns, license, log_level, log_size, log_buf, kern_version,
#: prog_flags, prog_name[16], prog_ifindex, expected_attach_type ends at 72.
ATTR_PROG_LOAD_SIZE = 72
#: ``BPF_OBJ_NAME_LEN`` in linux/bpf.h, including the terminating NUL.
BPF_OBJ_NAME_LEN = 16
#: Size of the verifier log buffer fetched when a load fails (the kernel fails with
#: ENOSPC if the log does not fit; ours is a few KiB).
VERIFIER_LOG_SIZE = 1 << 18
#: The program's license. None of its helpers is GPL-only, but a GPL-compatible
#: string (kernel/module/main.c ``license_is_gpl_compatible``) keeps it loadable if
#: that changes.
LICENSE = b"Dual MIT/GPL"

# linux/bpf_common.h and linux/bpf.h: instruction classes, sizes, modes, operations.
BPF_LD = 0x00
BPF_LDX = 0x01
BPF_STX = 0x03
BPF_ALU = 0x04
BPF_JMP = 0x05
BPF_RET = 0x06
BPF_MISC = 0x07
BPF_ALU64 = 0x07
BPF_W = 0x00
BPF_B = 0x10
BPF_DW = 0x18
BPF_IMM = 0x00
BPF_ABS = 0x20
BPF_MEM = 0x60
BPF_LEN = 0x80
BPF_ADD = 0x00
BPF_SUB = 0x10
BPF_MOD = 0x90
BPF_MOV = 0xB0
BPF_JA = 0x00
BPF_JEQ = 0x10
BPF_JGT = 0x20
BPF_JGE = 0x30
BPF_JSET = 0x40
BPF_JNE = 0x50
BPF_JLT = 0xA0
BPF_CALL = 0x80
BPF_EXIT = 0x90
BPF_K = 0x00
BPF_X = 0x08
BPF_A = 0x10
BPF_TAX = 0x00

# eBPF registers: R0 return value, R1-R5 arguments (clobbered by calls), R6-R9 kept
# across calls, R10 the read-only frame pointer.
R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)

#: A UDP header (RFC 768) is 8 bytes. An SK_REUSEPORT program sees the packet from the
#: UDP header on (struct sk_reuseport_md: "It begins from the tcp/udp header"); a
#: classic reuseport program sees it from the UDP payload on (net/core/sock_reuseport.c
#: ``run_bpf_filter`` pulls the header first).
UDP_HEADER_SIZE = 8
#: A classic program's return value at or past the group size means "no choice": the
#: kernel falls back to its hash (``run_bpf_filter`` returns NULL).
CBPF_NO_CHOICE = 0xFFFFFFFF


# -- assemblers ----------------------------------------------------------------------------


class EbpfAssembler:
    """A tiny eBPF assembler: append instructions, jump to named labels, ``assemble()``.

    Each instruction is ``struct bpf_insn`` (linux/bpf.h): u8 code, u8 dst:4 | src:4,
    s16 off, s32 imm, little-endian. Jump offsets count instructions from the next one.
    """

    __slots__ = ("_insns", "_labels")

    def __init__(self) -> None:
        self._insns: list[tuple[int, int, int, int | str, int]] = []
        self._labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        """Name the next instruction."""
        if name in self._labels:
            raise ValueError(f"label {name!r} defined twice")
        self._labels[name] = len(self._insns)

    def op(self, code: int, dst: int = 0, src: int = 0, off: int | str = 0, imm: int = 0,
           ) -> None:
        """Append one raw instruction; ``off`` may be a label (for jumps)."""
        self._insns.append((code, dst, src, off, imm))

    def mov(self, dst: int, src: int) -> None:
        """dst = src (64-bit)."""
        self.op(BPF_ALU64 | BPF_MOV | BPF_X, dst, src)

    def mov_imm(self, dst: int, imm: int) -> None:
        """dst = imm (64-bit, sign-extended)."""
        self.op(BPF_ALU64 | BPF_MOV | BPF_K, dst, imm=imm)

    def alu_imm(self, operation: int, dst: int, imm: int) -> None:
        """dst = dst <operation> imm (64-bit)."""
        self.op(BPF_ALU64 | operation | BPF_K, dst, imm=imm)

    def load(self, size: int, dst: int, src: int, off: int) -> None:
        """dst = *(size *)(src + off)."""
        self.op(BPF_LDX | BPF_MEM | size, dst, src, off)

    def store(self, size: int, dst: int, off: int, src: int) -> None:
        """*(size *)(dst + off) = src."""
        self.op(BPF_STX | BPF_MEM | size, dst, src, off)

    def jump_imm(self, operation: int, dst: int, imm: int, target: str) -> None:
        """if dst <operation> imm goto target (unsigned comparisons)."""
        self.op(BPF_JMP | operation | BPF_K, dst, 0, target, imm)

    def jump_reg(self, operation: int, dst: int, src: int, target: str) -> None:
        """if dst <operation> src goto target."""
        self.op(BPF_JMP | operation | BPF_X, dst, src, target)

    def goto(self, target: str) -> None:
        self.op(BPF_JMP | BPF_JA, off=target)

    def call(self, helper: int) -> None:
        """r0 = helper(r1, ..., r5); clobbers r1-r5."""
        self.op(BPF_JMP | BPF_CALL, imm=helper)

    def exit(self) -> None:
        """Return r0."""
        self.op(BPF_JMP | BPF_EXIT)

    def load_map_fd(self, dst: int, fd: int) -> None:
        """dst = the map behind ``fd`` (a two-slot BPF_LD_IMM64 the kernel rewrites)."""
        self.op(BPF_LD | BPF_DW | BPF_IMM, dst, BPF_PSEUDO_MAP_FD, 0, fd)
        self.op(0, 0, 0, 0, 0)

    def assemble(self) -> bytes:
        """The program as an array of ``struct bpf_insn``.

        Raises:
            ValueError: a jump names an unknown label.
        """
        out = bytearray()
        for pc, (code, dst, src, off, imm) in enumerate(self._insns):
            if isinstance(off, str):
                if off not in self._labels:
                    raise ValueError(f"unknown label {off!r}")
                rel = self._labels[off] - (pc + 1)
            else:
                rel = off
            out += struct.pack("<BBhi", code, (src << 4) | dst, rel, imm)
        return bytes(out)


class CbpfAssembler:
    """A tiny classic BPF assembler (``struct sock_filter`` in linux/filter.h).

    Each instruction is u16 code, u8 jt, u8 jf, u32 k. Conditional jumps go forward
    only, by at most 255 instructions; ``None`` as a target means "the next one".
    """

    __slots__ = ("_insns", "_labels")

    def __init__(self) -> None:
        self._insns: list[tuple[int, str | None, str | None, int]] = []
        self._labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        """Name the next instruction."""
        if name in self._labels:
            raise ValueError(f"label {name!r} defined twice")
        self._labels[name] = len(self._insns)

    def stmt(self, code: int, k: int = 0) -> None:
        """Append a non-jump instruction."""
        self._insns.append((code, None, None, k))

    def jump(self, code: int, k: int, jt: str | None, jf: str | None) -> None:
        """Append a conditional jump: to ``jt`` if true, else to ``jf``."""
        self._insns.append((code, jt, jf, k))

    def goto(self, target: str) -> None:
        """Append an unconditional jump (its offset is in k)."""
        self._insns.append((BPF_JMP | BPF_JA, target, None, 0))

    def __len__(self) -> int:
        return len(self._insns)

    def _offset(self, pc: int, target: str | None) -> int:
        if target is None:
            return 0
        if target not in self._labels:
            raise ValueError(f"unknown label {target!r}")
        off = self._labels[target] - (pc + 1)
        if off < 0:
            raise ValueError(f"classic BPF jumps go forward only ({target!r})")
        return off

    def assemble(self) -> bytes:
        """The program as an array of ``struct sock_filter``.

        Raises:
            ValueError: a jump names an unknown label, goes backwards or too far.
        """
        out = bytearray()
        for pc, (code, jt, jf, k) in enumerate(self._insns):
            if code == BPF_JMP | BPF_JA:  # the offset goes in k
                k_out, jt_off, jf_off = self._offset(pc, jt), 0, 0
            else:
                k_out, jt_off, jf_off = k, self._offset(pc, jt), self._offset(pc, jf)
                if max(jt_off, jf_off) > 0xFF:
                    raise ValueError("classic BPF conditional jump too far")
            out += struct.pack("<HBBI", code, jt_off, jf_off, k_out)
        return bytes(out)


# -- the programs --------------------------------------------------------------------------


def ebpf_program(workers: int, cids_fd: int, socks_fd: int) -> bytes:
    """The SK_REUSEPORT program: the CID map first, then the default rule.

    Stack: fp-8 holds one header byte at a time, fp-16 the 8-byte DCID (the map key;
    only its first byte when the DCID has another length), fp-24 the chosen index (u32
    key of the socket array). Packet offsets count from the UDP header.

    Args:
        workers: the group size (the divisor of the default rule).
        cids_fd: the CID → worker hash map (key 8 bytes, value u32).
        socks_fd: the REUSEPORT_SOCKARRAY, index = worker.

    Returns:
        The instructions, for ``BPF_PROG_LOAD``.
    """
    quic = UDP_HEADER_SIZE
    a = EbpfAssembler()

    def load_bytes(offset: int, stack: int, length: int) -> None:
        """fp[stack:stack+length] = packet[offset:offset+length], or give up (pass)."""
        a.mov(R1, R6)
        a.mov_imm(R2, offset)
        a.mov(R3, R10)
        a.alu_imm(BPF_ADD, R3, stack)
        a.mov_imm(R4, length)
        a.call(BPF_FUNC_SKB_LOAD_BYTES)  # 0, or a negative errno past the end
        a.jump_imm(BPF_JNE, R0, 0, "pass")

    a.mov(R6, R1)  # the context survives helper calls in r6
    load_bytes(quic, -8, 1)
    a.load(BPF_B, R7, R10, -8)
    a.jump_imm(BPF_JSET, R7, HEADER_FORM_LONG, "long")
    # Short header: the DCID is ours, CID_LENGTH bytes.
    load_bytes(quic + SHORT_DCID_AT, -16, CID_LENGTH)
    a.goto("lookup")

    a.label("long")
    load_bytes(quic + LONG_DCID_LENGTH_AT, -8, 1)
    a.load(BPF_B, R7, R10, -8)  # r7 = DCID length
    a.jump_imm(BPF_JEQ, R7, 0, "pass")
    a.jump_imm(BPF_JNE, R7, CID_LENGTH, "other_length")
    load_bytes(quic + LONG_DCID_AT, -16, CID_LENGTH)
    a.goto("lookup")

    a.label("other_length")  # not a key of the map; the whole DCID must be there
    a.alu_imm(BPF_ADD, R7, quic + LONG_DCID_AT)  # r7 = where the DCID ends
    a.load(BPF_W, R8, R6, SK_REUSEPORT_MD_LEN)
    a.jump_reg(BPF_JLT, R8, R7, "pass")
    load_bytes(quic + LONG_DCID_AT, -16, 1)
    a.goto("default")

    a.label("lookup")
    a.load_map_fd(R1, cids_fd)
    a.mov(R2, R10)
    a.alu_imm(BPF_ADD, R2, -16)
    a.call(BPF_FUNC_MAP_LOOKUP_ELEM)
    a.jump_imm(BPF_JEQ, R0, 0, "default")
    a.load(BPF_W, R7, R0, 0)  # r7 = the registered worker
    a.goto("select")

    a.label("default")
    a.load(BPF_B, R7, R10, -16)
    a.alu_imm(BPF_MOD, R7, workers)  # r7 = DCID[0] % workers

    a.label("select")
    a.store(BPF_W, R10, -24, R7)
    a.mov(R1, R6)
    a.load_map_fd(R2, socks_fd)
    a.mov(R3, R10)
    a.alu_imm(BPF_ADD, R3, -24)
    a.mov_imm(R4, 0)
    # Fails (no such worker socket, say) without a choice: then the kernel hashes.
    a.call(BPF_FUNC_SK_SELECT_REUSEPORT)

    a.label("pass")
    a.mov_imm(R0, SK_PASS)
    a.exit()
    return a.assemble()


def cbpf_program(workers: int) -> bytes:
    """The classic reuseport program: the default rule, returning the socket's index.

    The accumulator A holds loaded values; X the DCID length. Offsets count from the
    UDP payload, and ``len`` is the payload's length. Loading past the end would end
    the program with 0 (socket 0), so every load is checked against ``len`` first.

    Args:
        workers: the group size (the divisor of the default rule).

    Returns:
        The instructions, for a ``struct sock_fprog``.
    """
    c = CbpfAssembler()
    c.stmt(BPF_LD | BPF_W | BPF_LEN)
    c.jump(BPF_JMP | BPF_JEQ | BPF_K, 0, "hash", None)
    c.stmt(BPF_LD | BPF_B | BPF_ABS, 0)
    c.jump(BPF_JMP | BPF_JSET | BPF_K, HEADER_FORM_LONG, "long", None)
    # Short header
    c.stmt(BPF_LD | BPF_W | BPF_LEN)
    c.jump(BPF_JMP | BPF_JGE | BPF_K, SHORT_DCID_AT + CID_LENGTH, None, "hash")
    c.stmt(BPF_LD | BPF_B | BPF_ABS, SHORT_DCID_AT)
    c.goto("default")
    c.label("long")
    c.stmt(BPF_LD | BPF_W | BPF_LEN)
    c.jump(BPF_JMP | BPF_JGT | BPF_K, LONG_DCID_LENGTH_AT, None, "hash")
    c.stmt(BPF_LD | BPF_B | BPF_ABS, LONG_DCID_LENGTH_AT)
    c.jump(BPF_JMP | BPF_JEQ | BPF_K, 0, "hash", None)
    c.stmt(BPF_MISC | BPF_TAX)  # X = DCID length
    c.stmt(BPF_LD | BPF_W | BPF_LEN)
    c.stmt(BPF_ALU | BPF_SUB | BPF_K, LONG_DCID_AT)  # len > LONG_DCID_LENGTH_AT: no wrap
    c.jump(BPF_JMP | BPF_JGE | BPF_X, 0, None, "hash")
    c.stmt(BPF_LD | BPF_B | BPF_ABS, LONG_DCID_AT)
    c.label("default")
    c.stmt(BPF_ALU | BPF_MOD | BPF_K, workers)
    c.stmt(BPF_RET | BPF_A)
    c.label("hash")
    c.stmt(BPF_RET | BPF_K, CBPF_NO_CHOICE)
    return c.assemble()


# -- the bpf(2) syscall --------------------------------------------------------------------


def _syscall_number(machine: str) -> int:
    for name, number in BPF_SYSCALL_NUMBERS:
        if name == machine:
            return number
    raise OSError(errno.ENOSYS, f"bpf(2): syscall number unknown on {machine!r}")


def _name(name: str) -> bytes:
    raw = name.encode("ascii")[: BPF_OBJ_NAME_LEN - 1]
    return raw + b"\0" * (BPF_OBJ_NAME_LEN - len(raw))


class Bpf:
    """The few ``bpf(2)`` commands eg needs, through ctypes.

    Every call builds its own ``union bpf_attr``, so one instance may be used by several
    threads at once (the kernel serialises map updates itself).
    """

    __slots__ = ("_nr", "_syscall")

    def __init__(self) -> None:
        """Raises OSError(ENOSYS) on a machine whose syscall number is not known."""
        self._nr = _syscall_number(platform.machine())
        fn = ctypes.CDLL(None, use_errno=True).syscall
        fn.restype = ctypes.c_long
        fn.argtypes = (ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint)
        self._syscall = fn

    def call(self, cmd: int, attr: ctypes.Array[ctypes.c_char], what: str) -> int:
        """Run one command.

        Returns:
            The syscall's result (a new fd for the create and load commands).

        Raises:
            OSError: with the errno and ``what`` in the message.
        """
        ret = int(self._syscall(self._nr, cmd, ctypes.addressof(attr), len(attr)))
        if ret < 0:
            err = ctypes.get_errno()
            hint = " (needs CAP_BPF, or root)" if err in (errno.EPERM, errno.EACCES) else ""
            raise OSError(err, f"bpf({what}): {os.strerror(err)}{hint}")
        return ret

    def map_create(self, *, map_type: int, key_size: int, value_size: int,
                   max_entries: int, flags: int = 0, name: str) -> int:
        """Create a map; returns its fd."""
        attr = ctypes.create_string_buffer(ATTR_MAP_CREATE_SIZE)
        struct.pack_into("<IIIII8x16s", attr, 0, map_type, key_size, value_size,
                         max_entries, flags, _name(name))
        return self.call(BPF_MAP_CREATE, attr, f"BPF_MAP_CREATE {name}")

    def _elem(self, cmd: int, fd: int, key: bytes, *, value: bytes | None, flags: int,
              what: str) -> ctypes.Array[ctypes.c_char] | None:
        key_buf = ctypes.create_string_buffer(key, len(key))
        value_buf = None if value is None else ctypes.create_string_buffer(value, len(value))
        attr = ctypes.create_string_buffer(ATTR_MAP_ELEM_SIZE)
        struct.pack_into("<I4xQQQ", attr, 0, fd, ctypes.addressof(key_buf),
                         0 if value_buf is None else ctypes.addressof(value_buf), flags)
        self.call(cmd, attr, what)
        return value_buf

    def map_update(self, fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        self._elem(BPF_MAP_UPDATE_ELEM, fd, key, value=value, flags=flags,
                   what="BPF_MAP_UPDATE_ELEM")

    def map_delete(self, fd: int, key: bytes) -> None:
        self._elem(BPF_MAP_DELETE_ELEM, fd, key, value=None, flags=0,
                   what="BPF_MAP_DELETE_ELEM")

    def map_lookup(self, fd: int, key: bytes, value_size: int) -> bytes | None:
        """The value stored under ``key``, or None."""
        try:
            out = self._elem(BPF_MAP_LOOKUP_ELEM, fd, key, value=bytes(value_size), flags=0,
                             what="BPF_MAP_LOOKUP_ELEM")
        except FileNotFoundError:
            return None
        assert out is not None
        return out.raw

    def prog_load(self, *, prog_type: int, insns: bytes, expected_attach_type: int,
                  name: str) -> int:
        """Load a program; returns its fd.

        A failed load is retried with the verifier log on (as libbpf does), and the log
        goes into the error.

        Raises:
            OSError: the kernel refused the program; the message ends with its log.
        """
        code = ctypes.create_string_buffer(insns, len(insns))
        license_ = ctypes.create_string_buffer(LICENSE)

        def attempt(log_buf: ctypes.Array[ctypes.c_char] | None) -> int:
            attr = ctypes.create_string_buffer(ATTR_PROG_LOAD_SIZE)
            struct.pack_into(
                "<IIQQIIQII16sII", attr, 0, prog_type, len(insns) // 8,
                ctypes.addressof(code), ctypes.addressof(license_),
                0 if log_buf is None else 1, 0 if log_buf is None else len(log_buf),
                0 if log_buf is None else ctypes.addressof(log_buf), 0, 0, _name(name), 0,
                expected_attach_type)
            return self.call(BPF_PROG_LOAD, attr, f"BPF_PROG_LOAD {name}")

        try:
            return attempt(None)
        except OSError as first:
            if first.errno in (errno.EPERM, errno.ENOSYS):
                raise
            log_buf = ctypes.create_string_buffer(VERIFIER_LOG_SIZE)
            try:
                fd = attempt(log_buf)
            except OSError as exc:
                text = log_buf.value.decode("utf-8", "replace").strip()
                raise OSError(exc.errno, f"{exc.strerror}; verifier log:\n{text}") from None
            return fd  # refused once, accepted with the log on (a transient failure)


# -- attaching -------------------------------------------------------------------------------


class Steering:
    """The steering program attached to one reuseport group, and its CID map.

    ``register``/``unregister`` may be called from any worker thread.
    """

    __slots__ = ("_bpf", "_cids_fd", "_fds", "mode", "workers")

    def __init__(self, *, mode: str, workers: int, bpf: Bpf | None = None,
                 cids_fd: int = -1, fds: tuple[int, ...] = ()) -> None:
        #: "ebpf", "cbpf" or "none": what the kernel steers (module docstring).
        self.mode = mode
        #: The group size: worker i owns socket i.
        self.workers = workers
        self._bpf = bpf
        self._cids_fd = cids_fd
        self._fds = fds

    @classmethod
    def attach(cls, socks: Sequence[socket.socket], *, prefer: str = "auto",
               max_cids: int = DEFAULT_MAX_CIDS) -> Steering:
        """Attach a steering program to the reuseport group ``socks``.

        Args:
            socks: the group's UDP sockets in worker order, bound, not connected.
            prefer: "auto" (ebpf if it loads, else cbpf, else none), or one mode.
            max_cids: capacity of the CID map (ebpf).

        Returns:
            The attached steering; with "auto", ``mode`` says which one it is.

        Raises:
            OSError: the mode named by ``prefer`` cannot be attached ("auto" never).
            ValueError: ``prefer`` is not a mode, or the group size is not 1..256.
        """
        if prefer not in MODES:
            raise ValueError(f"prefer must be one of {MODES}, got {prefer!r}")
        if not 1 <= len(socks) <= MAX_WORKERS:
            raise ValueError(f"a group has 1..{MAX_WORKERS} sockets, got {len(socks)}")
        workers = len(socks)
        if prefer in ("auto", "ebpf"):
            try:
                return cls._attach_ebpf(socks, max_cids)
            except OSError as exc:
                if prefer == "ebpf":
                    raise
                log.info(f"QUIC steering: no eBPF ({exc}); trying classic BPF")
        if prefer in ("auto", "cbpf"):
            try:
                _attach_cbpf(socks)
            except OSError as exc:
                if prefer == "cbpf":
                    raise
                log.warning(f"QUIC steering: no classic BPF either ({exc})")
            else:
                return cls(mode="cbpf", workers=workers)
        return cls(mode="none", workers=workers)

    @classmethod
    def _attach_ebpf(cls, socks: Sequence[socket.socket], max_cids: int) -> Steering:
        bpf = Bpf()
        workers = len(socks)
        fds: list[int] = []
        try:
            cids_fd = bpf.map_create(
                map_type=BPF_MAP_TYPE_HASH, key_size=CID_LENGTH, value_size=4,
                max_entries=max_cids, flags=BPF_F_NO_PREALLOC, name="eg_quic_cids")
            fds.append(cids_fd)
            socks_fd = bpf.map_create(
                map_type=BPF_MAP_TYPE_REUSEPORT_SOCKARRAY, key_size=4, value_size=8,
                max_entries=workers, name="eg_quic_socks")
            fds.append(socks_fd)
            for index, sock in enumerate(socks):
                bpf.map_update(socks_fd, struct.pack("<I", index),
                               struct.pack("<Q", sock.fileno()))
            prog_fd = bpf.prog_load(
                prog_type=BPF_PROG_TYPE_SK_REUSEPORT,
                insns=ebpf_program(workers, cids_fd, socks_fd),
                expected_attach_type=BPF_SK_REUSEPORT_SELECT, name="eg_quic_steer")
            fds.append(prog_fd)
            socks[0].setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, prog_fd)
        except OSError:
            for fd in fds:
                os.close(fd)
            raise
        return cls(mode="ebpf", workers=workers, bpf=bpf, cids_fd=cids_fd, fds=tuple(fds))

    def register(self, cid: bytes, worker: int) -> bool:
        """``worker`` owns ``cid`` now: steer datagrams addressed to it there.

        Only the ebpf mode can follow CIDs eg did not choose; the others only say
        whether the default rule happens to agree. CIDs that are not ``CID_LENGTH``
        long (a client's own first DCID, say) cannot be map keys and are skipped.

        Returns:
            True if the kernel will deliver datagrams for ``cid`` to ``worker``; False
            if not (another mode, another length, the map is full, or closed).

        Raises:
            ValueError: ``worker`` is not in this group.
            OSError: the map update failed for a reason other than being full.
        """
        if not 0 <= worker < self.workers:
            raise ValueError(f"worker must be in 0..{self.workers - 1}, got {worker}")
        if len(cid) != CID_LENGTH or self.mode == "none":
            return False
        if cid[0] % self.workers == worker:
            return True  # the default rule steers it; keep the map for the others
        if self._bpf is None or self._cids_fd < 0:
            return False
        try:
            self._bpf.map_update(self._cids_fd, cid, struct.pack("<I", worker))
        except OSError as exc:
            if exc.errno in (errno.E2BIG, errno.ENOMEM):  # full: the default rule applies
                return False
            raise
        return True

    def unregister(self, cid: bytes) -> None:
        """``cid`` is retired: forget it (a CID never registered is ignored)."""
        if self._bpf is None or self._cids_fd < 0 or len(cid) != CID_LENGTH:
            return
        with contextlib.suppress(FileNotFoundError):  # never stored (the rule agreed)
            self._bpf.map_delete(self._cids_fd, cid)

    def lookup(self, cid: bytes) -> int | None:
        """The worker stored for ``cid`` in the CID map, or None (diagnostics, tests)."""
        if self._bpf is None or self._cids_fd < 0 or len(cid) != CID_LENGTH:
            return None
        value = self._bpf.map_lookup(self._cids_fd, cid, 4)
        return None if value is None else int(struct.unpack("<I", value)[0])

    def close(self) -> None:
        """Close the program and map fds (idempotent).

        The program stays attached to the group (which holds its own reference) until
        the sockets close, steering by the map's last contents. Call this after the
        workers have stopped.
        """
        fds, self._fds, self._cids_fd = self._fds, (), -1
        for fd in fds:
            os.close(fd)


def _attach_cbpf(socks: Sequence[socket.socket]) -> None:
    """Attach the classic program to the group of ``socks`` (needs no privilege)."""
    code = cbpf_program(len(socks))
    insns = ctypes.create_string_buffer(code, len(code))
    # struct sock_fprog (linux/filter.h): unsigned short len; struct sock_filter *filter.
    fprog = struct.pack("@H6xQ", len(code) // 8, ctypes.addressof(insns))
    try:
        socks[0].setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError as exc:
        raise OSError(exc.errno, f"SO_ATTACH_REUSEPORT_CBPF: {exc.strerror}") from None
