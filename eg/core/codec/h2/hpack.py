"""HPACK (RFC 7541): the header compression of eg's own HTTP/2 engine.

Purpose-built for CPU per header block on free-threaded CPython: no logging, no per-field
objects beyond the ``(name, value)`` tuples handed out, no per-bit or per-nibble Python
loops. Names and values are bytes, passed through exactly as they were coded (no case
folding, no validation: the engine validates).

Theory of operation
-------------------

*Tables.* ``HpackTables`` is built once per worker and never shared between threads
(STYLE.md §6): its own copy of the static table (RFC 7541 Appendix A), the lookup dicts
the encoder starts from, the byte-at-a-time Huffman decoding machine and the Huffman
encoding strings. Every ``Decoder`` and ``Encoder`` (one of each per connection) takes
the tables of the worker that owns the connection.

*Decoder.* One list holds the whole index space: slot 0 unused, slots 1-61 the static
table, slots 62.. the dynamic table newest first (RFC 7541 §2.3.3), so an index is one
subscript and an index past the end an ``IndexError``. A parallel list holds each entry's
size (RFC 7541 §4.1: name + value + 32), which is also the field's share of the header
list size (RFC 9113 §6.5.2). Insertion is ``list.insert(62, …)`` and eviction
``list.pop()`` (RFC 7541 §4.4; an entry larger than the table empties it). The decoded
size is checked after every field, so a block that expands past ``max_header_list_size``
stops at the field that crossed it (an HPACK bomb of one-octet references to a big entry
decodes no further than the limit).

*Closures, not methods.* ``Decoder.decode``, ``Encoder.encode`` and the Huffman coders
are closures over their state, stored on the instance. CPython 3.13t has no specialising
interpreter: an attribute load costs several times a local or cell load, and a whole
block decodes in a few microseconds, so the state lives in cells (STYLE.md §6 is also
served: nothing but the worker's own objects is reached).

*Huffman decoding* (RFC 7541 §5.2, Appendix B) takes a whole octet per step, the way
nghttp2 does (with nibbles): the code tree's 256 internal nodes become 256 rows, each a
list holding, for every input octet, the row reached and the bytes emitted on the way
(none, one or two symbols). A step is two subscripts and an append; ``bytes.join``
concatenates. A transition that completes EOS emits None, and so does the end of input
on a node not reachable from the root through at most seven 1 bits (padding longer than
7 bits, or not all ones): ``join`` then fails, and that failure is the ``HpackError``.
Nothing is tested per octet. (C-level pipelines, ``itertools.accumulate`` over the rows
or a regular expression over the bit string, measured slower on 3.13t: each C call
costs more than the bytecodes it saves.)

*Encoder.* One dict per connection maps ``(name, value)`` to an index and one maps names
to an index; both start as copies of the worker's static dicts, where static entries
are stored as ``-index``. Dynamic entries are stored as their insertion number ``n``: the
entry's index is ``inserted + 61 - n`` (RFC 7541 §2.3.3), so insertions never rewrite
the dicts. Eviction drops a key only if it still points at the evicted entry (a newer
copy of the same field may have replaced it). Names are referenced through the static
table in preference to the dynamic one (smaller indices).

Encoding policy (RFC 7541 §7.1.3 leaves it to the encoder):

| field                                                | representation                 |
|------------------------------------------------------|--------------------------------|
| exact match in the static or dynamic table           | indexed (§6.1)                 |
| ``authorization``, ``proxy-authorization``           | never indexed (§6.2.3)         |
| ``cookie``, ``set-cookie`` shorter than 20 octets    | never indexed: low entropy,    |
|                                                      | guessable through compression  |
|                                                      | (§7.1.3)                       |
| ``:path``, ``age``, ``content-length``, ``date``,    | without indexing (§6.2.2):     |
| ``etag``, ``expires``, ``if-modified-since``,        | they change from message to    |
| ``if-none-match``, ``last-modified``, ``location``,  | message and would only evict   |
| longer ``set-cookie``                                | entries that are reused        |
| an entry larger than 3/4 of the table                | without indexing: it would     |
|                                                      | flush nearly the whole table   |
| anything else (longer ``cookie`` too: its crumbs     | incremental indexing (§6.2.1), |
| repeat on every request, RFC 9113 §8.2.3)            | the name by index when known   |

String literals are sent raw unless the encoder was made with ``huffman=True``, in which
case each one is Huffman coded when that is shorter. Raw costs no CPU and the engine's
connections are mostly loopback or a LAN.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final

#: The dynamic table size both ends start with: the initial value of
#: SETTINGS_HEADER_TABLE_SIZE (RFC 9113 §6.5.2).
DEFAULT_TABLE_SIZE: Final = 4096
#: What an entry costs beyond its name and value (RFC 7541 §4.1); RFC 9113 §6.5.2 counts
#: header list sizes the same way.
ENTRY_OVERHEAD: Final = 32
#: Continuation octets an integer may use after its prefix (RFC 7541 §5.1 leaves the limit
#: to the implementation). Five carry 35 bits, more than any length, index or table size
#: can need; the ``hpack`` library allows the same number, so the two agree on what is an
#: error.
MAX_INTEGER_CONTINUATIONS: Final = 5
#: ``cookie`` and ``set-cookie`` values shorter than this are never indexed (RFC 7541
#: §7.1.3: short secrets are the ones an attacker can recover by probing compression).
SHORT_SECRET: Final = 20

#: Never indexed, whatever the value (RFC 7541 §7.1.3 names Authorization).
NEVER_INDEXED: Final = frozenset({b"authorization", b"proxy-authorization"})
#: Sent without indexing: values that differ from one message to the next.
NOT_INDEXED: Final = frozenset({
    b":path", b"age", b"content-length", b"date", b"etag", b"expires",
    b"if-modified-since", b"if-none-match", b"last-modified", b"location",
})

# Encoding modes, per name (``HpackTables.policy``).
_INDEX: Final = 0
_NO_INDEX: Final = 1
_NEVER: Final = 2
_COOKIE: Final = 3  # never indexed when short, else indexed
_SET_COOKIE: Final = 4  # never indexed when short, else not indexed

#: RFC 7541 Appendix A, index 1 first.
STATIC_TABLE: Final = (
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
)
#: Highest static index (RFC 7541 Appendix A); dynamic indices start right after it.
STATIC_COUNT: Final = 61

#: RFC 7541 Appendix B: (code, length in bits) of symbols 0-255 and EOS (256).
HUFFMAN_CODES: Final = (
    (0x1ff8, 13), (0x7fffd8, 23), (0xfffffe2, 28), (0xfffffe3, 28), (0xfffffe4, 28),  # 0
    (0xfffffe5, 28), (0xfffffe6, 28), (0xfffffe7, 28), (0xfffffe8, 28), (0xffffea, 24),  # 5
    (0x3ffffffc, 30), (0xfffffe9, 28), (0xfffffea, 28), (0x3ffffffd, 30), (0xfffffeb, 28),  # 10
    (0xfffffec, 28), (0xfffffed, 28), (0xfffffee, 28), (0xfffffef, 28), (0xffffff0, 28),  # 15
    (0xffffff1, 28), (0xffffff2, 28), (0x3ffffffe, 30), (0xffffff3, 28), (0xffffff4, 28),  # 20
    (0xffffff5, 28), (0xffffff6, 28), (0xffffff7, 28), (0xffffff8, 28), (0xffffff9, 28),  # 25
    (0xffffffa, 28), (0xffffffb, 28), (0x14, 6), (0x3f8, 10), (0x3f9, 10),  # 30
    (0xffa, 12), (0x1ff9, 13), (0x15, 6), (0xf8, 8), (0x7fa, 11),  # 35
    (0x3fa, 10), (0x3fb, 10), (0xf9, 8), (0x7fb, 11), (0xfa, 8),  # 40
    (0x16, 6), (0x17, 6), (0x18, 6), (0x0, 5), (0x1, 5),  # 45
    (0x2, 5), (0x19, 6), (0x1a, 6), (0x1b, 6), (0x1c, 6),  # 50
    (0x1d, 6), (0x1e, 6), (0x1f, 6), (0x5c, 7), (0xfb, 8),  # 55
    (0x7ffc, 15), (0x20, 6), (0xffb, 12), (0x3fc, 10), (0x1ffa, 13),  # 60
    (0x21, 6), (0x5d, 7), (0x5e, 7), (0x5f, 7), (0x60, 7),  # 65
    (0x61, 7), (0x62, 7), (0x63, 7), (0x64, 7), (0x65, 7),  # 70
    (0x66, 7), (0x67, 7), (0x68, 7), (0x69, 7), (0x6a, 7),  # 75
    (0x6b, 7), (0x6c, 7), (0x6d, 7), (0x6e, 7), (0x6f, 7),  # 80
    (0x70, 7), (0x71, 7), (0x72, 7), (0xfc, 8), (0x73, 7),  # 85
    (0xfd, 8), (0x1ffb, 13), (0x7fff0, 19), (0x1ffc, 13), (0x3ffc, 14),  # 90
    (0x22, 6), (0x7ffd, 15), (0x3, 5), (0x23, 6), (0x4, 5),  # 95
    (0x24, 6), (0x5, 5), (0x25, 6), (0x26, 6), (0x27, 6),  # 100
    (0x6, 5), (0x74, 7), (0x75, 7), (0x28, 6), (0x29, 6),  # 105
    (0x2a, 6), (0x7, 5), (0x2b, 6), (0x76, 7), (0x2c, 6),  # 110
    (0x8, 5), (0x9, 5), (0x2d, 6), (0x77, 7), (0x78, 7),  # 115
    (0x79, 7), (0x7a, 7), (0x7b, 7), (0x7ffe, 15), (0x7fc, 11),  # 120
    (0x3ffd, 14), (0x1ffd, 13), (0xffffffc, 28), (0xfffe6, 20), (0x3fffd2, 22),  # 125
    (0xfffe7, 20), (0xfffe8, 20), (0x3fffd3, 22), (0x3fffd4, 22), (0x3fffd5, 22),  # 130
    (0x7fffd9, 23), (0x3fffd6, 22), (0x7fffda, 23), (0x7fffdb, 23), (0x7fffdc, 23),  # 135
    (0x7fffdd, 23), (0x7fffde, 23), (0xffffeb, 24), (0x7fffdf, 23), (0xffffec, 24),  # 140
    (0xffffed, 24), (0x3fffd7, 22), (0x7fffe0, 23), (0xffffee, 24), (0x7fffe1, 23),  # 145
    (0x7fffe2, 23), (0x7fffe3, 23), (0x7fffe4, 23), (0x1fffdc, 21), (0x3fffd8, 22),  # 150
    (0x7fffe5, 23), (0x3fffd9, 22), (0x7fffe6, 23), (0x7fffe7, 23), (0xffffef, 24),  # 155
    (0x3fffda, 22), (0x1fffdd, 21), (0xfffe9, 20), (0x3fffdb, 22), (0x3fffdc, 22),  # 160
    (0x7fffe8, 23), (0x7fffe9, 23), (0x1fffde, 21), (0x7fffea, 23), (0x3fffdd, 22),  # 165
    (0x3fffde, 22), (0xfffff0, 24), (0x1fffdf, 21), (0x3fffdf, 22), (0x7fffeb, 23),  # 170
    (0x7fffec, 23), (0x1fffe0, 21), (0x1fffe1, 21), (0x3fffe0, 22), (0x1fffe2, 21),  # 175
    (0x7fffed, 23), (0x3fffe1, 22), (0x7fffee, 23), (0x7fffef, 23), (0xfffea, 20),  # 180
    (0x3fffe2, 22), (0x3fffe3, 22), (0x3fffe4, 22), (0x7ffff0, 23), (0x3fffe5, 22),  # 185
    (0x3fffe6, 22), (0x7ffff1, 23), (0x3ffffe0, 26), (0x3ffffe1, 26), (0xfffeb, 20),  # 190
    (0x7fff1, 19), (0x3fffe7, 22), (0x7ffff2, 23), (0x3fffe8, 22), (0x1ffffec, 25),  # 195
    (0x3ffffe2, 26), (0x3ffffe3, 26), (0x3ffffe4, 26), (0x7ffffde, 27), (0x7ffffdf, 27),  # 200
    (0x3ffffe5, 26), (0xfffff1, 24), (0x1ffffed, 25), (0x7fff2, 19), (0x1fffe3, 21),  # 205
    (0x3ffffe6, 26), (0x7ffffe0, 27), (0x7ffffe1, 27), (0x3ffffe7, 26), (0x7ffffe2, 27),  # 210
    (0xfffff2, 24), (0x1fffe4, 21), (0x1fffe5, 21), (0x3ffffe8, 26), (0x3ffffe9, 26),  # 215
    (0xffffffd, 28), (0x7ffffe3, 27), (0x7ffffe4, 27), (0x7ffffe5, 27), (0xfffec, 20),  # 220
    (0xfffff3, 24), (0xfffed, 20), (0x1fffe6, 21), (0x3fffe9, 22), (0x1fffe7, 21),  # 225
    (0x1fffe8, 21), (0x7ffff3, 23), (0x3fffea, 22), (0x3fffeb, 22), (0x1ffffee, 25),  # 230
    (0x1ffffef, 25), (0xfffff4, 24), (0xfffff5, 24), (0x3ffffea, 26), (0x7ffff4, 23),  # 235
    (0x3ffffeb, 26), (0x7ffffe6, 27), (0x3ffffec, 26), (0x3ffffed, 26), (0x7ffffe7, 27),  # 240
    (0x7ffffe8, 27), (0x7ffffe9, 27), (0x7ffffea, 27), (0x7ffffeb, 27), (0xffffffe, 28),  # 245
    (0x7ffffec, 27), (0x7ffffed, 27), (0x7ffffee, 27), (0x7ffffef, 27), (0x7fffff0, 27),  # 250
    (0x3ffffee, 26), (0x3fffffff, 30),  # 255
)
#: The EOS symbol (RFC 7541 §5.2): never valid inside a string.
_EOS: Final = 256


class HpackError(Exception):
    """A malformed header block (RFC 7541 §§4-6).

    The decoding context is lost: the connection must end with GOAWAY
    COMPRESSION_ERROR (RFC 9113 §4.3).
    """


class HeaderListTooLarge(HpackError):
    """The decoded header list grew past ``max_header_list_size`` (RFC 9113 §6.5.2).

    Decoding stopped at the field that crossed the limit, so the dynamic table is no longer
    in step with the peer's: a limit, answered as one (431 or ENHANCE_YOUR_CALM), but the
    connection cannot carry another header block.
    """


class HpackTables:
    """Per-worker static table and Huffman tables (built once per worker, never shared).

    Building takes a few tens of milliseconds (the Huffman decoding machine is 256 x 256
    transitions), so build one per worker and give it to every Decoder and Encoder that
    worker makes. Nothing in it changes after ``__init__``.
    """

    __slots__ = (
        "huffman_decode", "huffman_encode", "indexed", "lengths", "never_indexed", "policy",
        "static", "static_exact", "static_names", "static_sizes", "with_indexing",
        "without_indexing",
    )

    #: Decode a Huffman-coded string literal (RFC 7541 §5.2); ``HpackError`` if it holds
    #: EOS or its padding is longer than 7 bits or not all ones.
    huffman_decode: Callable[[bytes], bytes]
    #: The Huffman coding of a string (RFC 7541 §5.2), or None if it is not shorter.
    huffman_encode: Callable[[bytes], bytes | None]

    def __init__(self) -> None:
        # Fresh objects, not the module's constants: a constant is shared by every
        # worker and so would have its reference count contended (STYLE.md §6).
        static = tuple((bytes(bytearray(n)), bytes(bytearray(v))) for n, v in STATIC_TABLE)
        #: The static entries, index 1 first.
        self.static: tuple[tuple[bytes, bytes], ...] = static
        #: Their sizes (RFC 7541 §4.1).
        self.static_sizes = tuple(len(n) + len(v) + ENTRY_OVERHEAD for n, v in static)
        exact: dict[tuple[bytes, bytes], int] = {}
        names: dict[bytes, int] = {}
        for index, field in enumerate(static, 1):
            exact.setdefault(field, -index)
            names.setdefault(field[0], -index)
        #: ``(name, value)`` → ``-index`` (the encoder's starting point).
        self.static_exact = exact
        #: name → ``-index`` of its first static entry.
        self.static_names = names
        policy = dict.fromkeys(NEVER_INDEXED, _NEVER)
        policy.update(dict.fromkeys(NOT_INDEXED, _NO_INDEX))
        policy[b"cookie"] = _COOKIE
        policy[b"set-cookie"] = _SET_COOKIE
        #: name → encoding mode (see the module docstring); absent means indexed.
        self.policy = policy
        # One-octet representations, by the value of their prefix.
        #: Indexed field (RFC 7541 §6.1), indices 0-126.
        self.indexed = tuple(bytes((0x80 | i,)) for i in range(0x7F))
        #: Raw string length (§5.2, H = 0), 0-126.
        self.lengths = tuple(bytes((i,)) for i in range(0x7F))
        #: Literal with incremental indexing, name index 0-62 (§6.2.1).
        self.with_indexing = tuple(bytes((0x40 | i,)) for i in range(0x3F))
        #: Literal without indexing, name index 0-14 (§6.2.2).
        self.without_indexing = tuple(bytes((i,)) for i in range(0x0F))
        #: Literal never indexed, name index 0-14 (§6.2.3).
        self.never_indexed = tuple(bytes((0x10 | i,)) for i in range(0x0F))
        self.huffman_decode = _huffman_decoder(_huffman_machine())
        self.huffman_encode = _huffman_encoder(
            [format(code, f"0{bits}b") for code, bits in HUFFMAN_CODES[:256]]
        )


def _huffman_machine() -> list[Any]:
    """Build the octet-at-a-time Huffman decoding machine (see the module docstring).

    Returns:
        The root row. The row of internal node ``k`` of the code tree holds at
        ``octet`` (0-255) the row reached on that octet, at 256 ``b""`` if a string may
        end on node ``k`` (it is reached from the root by at most seven 1 bits) and None
        if not, and at ``~octet`` (-1 to -256) the bytes emitted on that octet (no, one
        or two symbols), None if it completes EOS.
    """
    # The code tree: children of internal node k at 2k and 2k+1; a child >= 1 is an
    # internal node, ~symbol (< 0) a leaf; 0 (the root, never a child) marks "not yet".
    tree = [0, 0]
    for symbol, (code, bits) in enumerate(HUFFMAN_CODES):
        node = 0
        for shift in range(bits - 1, 0, -1):
            slot = 2 * node + ((code >> shift) & 1)
            if not tree[slot]:
                tree[slot] = len(tree) >> 1
                tree += (0, 0)
            node = tree[slot]
        tree[2 * node + (code & 1)] = ~symbol
    count = len(tree) >> 1

    # Nibble steps first: (node, nibble) → (node, emitted), or None on EOS.
    def nibble(node: int, value: int) -> tuple[int, bytes] | None:
        emitted = b""
        for shift in (3, 2, 1, 0):
            node = tree[2 * node + ((value >> shift) & 1)]
            if node < 0:
                if ~node == _EOS:
                    return None
                emitted += bytes((~node,))
                node = 0
        return node, emitted

    nibbles = [[nibble(node, value) for value in range(16)] for node in range(count)]
    accepting = {0}
    node = 0
    for _ in range(7):
        node = tree[2 * node + 1]
        accepting.add(node)

    # Then octets, as two nibbles.
    rows: list[list[Any]] = [[] for _ in range(count)]
    interned: dict[bytes, bytes] = {}
    for node in range(count):
        nexts: list[Any] = []
        emits: list[bytes | None] = []
        for high in nibbles[node]:
            for low in range(16):
                second = None if high is None else nibbles[high[0]][low]
                if high is None or second is None:
                    nexts.append(rows[0])
                    emits.append(None)
                else:
                    nexts.append(rows[second[0]])
                    out = high[1] + second[1]
                    emits.append(interned.setdefault(out, out))
        nexts.append(b"" if node in accepting else None)
        nexts += reversed(emits)
        rows[node][:] = nexts
    return rows[0]


def _huffman_decoder(root: list[Any]) -> Callable[[bytes], bytes]:
    """``HpackTables.huffman_decode``: a closure over the worker's machine."""

    def huffman_decode(data: bytes) -> bytes:
        row = root
        out: list[bytes | None] = []
        append = out.append
        for octet in data:
            append(row[~octet])
            row = row[octet]
        append(row[256])
        try:
            return b"".join(out)  # type: ignore[arg-type]  # None: the error below
        except TypeError:
            raise HpackError("invalid Huffman code (EOS, or bad padding)") from None

    return huffman_decode


def _huffman_encoder(codes: list[str]) -> Callable[[bytes], bytes | None]:
    """``HpackTables.huffman_encode``: a closure over the worker's code strings.

    Each octet becomes its code as "0"/"1" characters (``str.translate``), the string is
    padded with 1s to a whole octet (RFC 7541 §5.2) and read as a base-2 integer.
    """

    def huffman_encode(data: bytes) -> bytes | None:
        bits = data.decode("latin-1").translate(codes)
        size = (len(bits) + 7) >> 3
        if size >= len(data):
            return None
        return int(bits + "1" * (-len(bits) & 7), 2).to_bytes(size)

    return huffman_encode


def _integer(data: bytes, pos: int, value: int) -> tuple[int, int]:
    """Decode the continuation octets of an integer whose prefix was full (RFC 7541 §5.1).

    Args:
        data: the header block.
        pos: where the continuation octets start.
        value: the prefix's value (2^N - 1).

    Returns:
        The integer and the position after it.

    Raises:
        IndexError: the block ends inside the integer.
        HpackError: more than ``MAX_INTEGER_CONTINUATIONS`` continuation octets.
    """
    shift = 0
    end = pos + MAX_INTEGER_CONTINUATIONS
    while pos < end:
        octet = data[pos]
        pos += 1
        value += (octet & 0x7F) << shift
        if octet < 0x80:
            return value, pos
        shift += 7
    raise HpackError(f"integer with more than {MAX_INTEGER_CONTINUATIONS} continuation octets")


def _integer_bytes(flags: int, prefix: int, value: int) -> bytes:
    """Encode ``value`` with an N-bit prefix (RFC 7541 §5.1).

    Args:
        flags: the bits above the prefix, already in place.
        prefix: 2^N - 1.
        value: the integer (>= 0).
    """
    if value < prefix:
        return bytes((flags | value,))
    out = [flags | prefix]
    value -= prefix
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class Decoder:
    """Decodes the header blocks of one direction of one connection (RFC 7541 §3).

    ``decode`` is a closure over the decoder's state (see the module docstring);
    ``max_table_size`` and ``max_header_list_size`` are properties that reach into it.

    Args:
        tables: the worker's tables.
        max_header_list_size: the most a decoded list may add up to (RFC 9113 §6.5.2:
            name + value + 32 per field); past it, ``HeaderListTooLarge``.
        max_table_size: our SETTINGS_HEADER_TABLE_SIZE in effect: the largest dynamic
            table size the peer may set. The table starts at 4096, the protocol's initial
            value; whenever this is below the table's size, the peer's next block must
            start by shrinking it (RFC 7541 §4.2). So construct with the value in effect
            (4096 until our SETTINGS is acknowledged: a client may send its first
            HEADERS before it has seen them) and set the attribute on the SETTINGS ACK.
    """

    __slots__ = ("_limits", "decode")

    #: Decode one complete header block (the concatenated HEADERS/PUSH_PROMISE and
    #: CONTINUATION fragments) into ``(name, value)`` bytes, in order.
    #: Raises ``HeaderListTooLarge`` as soon as the list adds up to more than
    #: ``max_header_list_size`` (decoding stops at the field that crossed it), ``HpackError`` on
    #: anything malformed: index 0 or past the tables, an integer with more than
    #: ``MAX_INTEGER_CONTINUATIONS`` continuation octets, a truncated integer or string,
    #: invalid Huffman code (EOS, padding over 7 bits or not all ones), a dynamic table
    #: size update over ``max_table_size`` or after the first field, or a table left
    #: larger than a lowered ``max_table_size`` (RFC 7541 §4.2).
    decode: Callable[[bytes | memoryview], list[tuple[bytes, bytes]]]

    def __init__(
        self, tables: HpackTables, *, max_header_list_size: int,
        max_table_size: int = DEFAULT_TABLE_SIZE,
    ) -> None:
        self.decode, self._limits = _decoder(tables, max_header_list_size, max_table_size)

    @property
    def max_table_size(self) -> int:
        """Our SETTINGS_HEADER_TABLE_SIZE: the cap on the peer's size updates."""
        return self._limits(None, None)[1]

    @max_table_size.setter
    def max_table_size(self, size: int) -> None:
        self._limits(None, size)

    @property
    def max_header_list_size(self) -> int:
        """Our SETTINGS_MAX_HEADER_LIST_SIZE (RFC 9113 §6.5.2)."""
        return self._limits(None, None)[0]

    @max_header_list_size.setter
    def max_header_list_size(self, size: int) -> None:
        self._limits(size, None)


def _decoder(
    tables: HpackTables, list_size: int, table_size: int,
) -> tuple[
    Callable[[bytes | memoryview], list[tuple[bytes, bytes]]],
    Callable[[int | None, int | None], tuple[int, int]],
]:
    """Build a Decoder's ``decode`` and its limits accessor over one state (a closure).

    The state: one list for the whole index space (slot 0 unused, 1-61 static, 62.. the
    dynamic table newest first, RFC 7541 §2.3.3) and a parallel list of entry sizes
    (RFC 7541 §4.1), which are also each field's share of the header list size (RFC 9113
    §6.5.2); the table's capacity and use; the two limits.
    """
    table: list[tuple[bytes, bytes]] = [(b"", b""), *tables.static]
    sizes: list[int] = [0, *tables.static_sizes]
    huffman = tables.huffman_decode
    limit = list_size
    allowed = table_size
    capacity = DEFAULT_TABLE_SIZE
    used = 0

    def decode(block: bytes | memoryview) -> list[tuple[bytes, bytes]]:
        nonlocal capacity, used
        data = block if isinstance(block, bytes) else bytes(block)
        n = len(data)
        pos = 0
        if n and data[0] & 0xE0 == 0x20:
            pos = _size_updates(data)
        if capacity > allowed:
            raise HpackError("dynamic table not shrunk to the new SETTINGS_HEADER_TABLE_SIZE")
        headers: list[tuple[bytes, bytes]] = []
        total = 0
        append = headers.append
        try:
            while pos < n:
                first = data[pos]
                if first & 0x80:  # indexed field (§6.1)
                    pos += 1
                    index = first & 0x7F
                    if index == 0x7F:
                        index, pos = _integer(data, pos, 0x7F)
                    elif not index:
                        raise HpackError("index 0 (§6.1)")
                    append(table[index])
                    total += sizes[index]
                else:
                    pos += 1
                    if first & 0x40:  # literal with incremental indexing (§6.2.1)
                        index = first & 0x3F
                        if index == 0x3F:
                            index, pos = _integer(data, pos, 0x3F)
                    elif first & 0x20:
                        raise HpackError("dynamic table size update after a field (§4.2)")
                    else:  # literal without indexing / never indexed (§6.2.2, §6.2.3)
                        index = first & 0x0F
                        if index == 0x0F:
                            index, pos = _integer(data, pos, 0x0F)
                    if index:
                        name = table[index][0]
                    else:
                        octet = data[pos]
                        length = octet & 0x7F
                        pos += 1
                        if length == 0x7F:
                            length, pos = _integer(data, pos, 0x7F)
                        end = pos + length
                        if end > n:
                            raise HpackError("string literal runs past the block")
                        name = data[pos:end]
                        if octet & 0x80:
                            name = huffman(name)
                        pos = end
                    octet = data[pos]
                    length = octet & 0x7F
                    pos += 1
                    if length == 0x7F:
                        length, pos = _integer(data, pos, 0x7F)
                    end = pos + length
                    if end > n:
                        raise HpackError("string literal runs past the block")
                    value = data[pos:end]
                    if octet & 0x80:
                        value = huffman(value)
                    pos = end
                    field = (name, value)
                    append(field)
                    size = len(name) + len(value) + 32  # ENTRY_OVERHEAD
                    total += size
                    if first & 0x40:  # evict, then add (§4.4)
                        if size > capacity:
                            del table[62:], sizes[62:]
                            used = 0
                        else:
                            used += size
                            while used > capacity:
                                used -= sizes.pop()
                                table.pop()
                            table.insert(62, field)
                            sizes.insert(62, size)
                if total > limit:
                    raise HeaderListTooLarge(
                        f"header list larger than {limit} octets (RFC 9113 §6.5.2)"
                    )
        except IndexError:
            raise HpackError("header block truncated, or an index past the tables") from None
        return headers

    def _size_updates(data: bytes) -> int:
        """Apply the dynamic table size updates that start a block (RFC 7541 §4.2).

        Returns:
            The position after them.
        """
        nonlocal capacity, used
        pos = 0
        n = len(data)
        try:
            while pos < n and data[pos] & 0xE0 == 0x20:
                size = data[pos] & 0x1F
                pos += 1
                if size == 0x1F:
                    size, pos = _integer(data, pos, 0x1F)
                if size > allowed:
                    raise HpackError(f"dynamic table size update to {size} over {allowed}")
                capacity = size
                while used > size:
                    used -= sizes.pop()
                    table.pop()
        except IndexError:
            raise HpackError("header block truncated") from None
        return pos

    def limits(list_size: int | None, table_size: int | None) -> tuple[int, int]:
        """Set whichever limits are given; return (max_header_list_size, max_table_size)."""
        nonlocal limit, allowed
        if list_size is not None:
            limit = list_size
        if table_size is not None:
            allowed = table_size
        return limit, allowed

    return decode, limits


class Encoder:
    """Encodes the header blocks of one direction of one connection (RFC 7541 §3).

    Like ``Decoder.decode``, ``encode`` and ``set_max_table_size`` are closures over the
    encoder's state (see there for why).

    Args:
        tables: the worker's tables.
        max_table_size: the largest dynamic table this encoder will use, whatever the
            peer allows (it bounds the memory per connection). The table in use is the
            smaller of this and the peer's SETTINGS_HEADER_TABLE_SIZE (4096 until the
            peer says otherwise); if that differs from 4096 the first block says so.
        huffman: Huffman-code string literals when that makes them shorter.
    """

    __slots__ = ("encode", "set_max_table_size")

    #: Encode one header block from ``(name, value)`` bytes tuples, in order (names as
    #: they should go on the wire; nothing is checked). Returns the block, to be cut into
    #: HEADERS and CONTINUATION frames.
    encode: Callable[[Iterable[tuple[bytes, bytes]]], bytes]
    #: The peer's SETTINGS_HEADER_TABLE_SIZE is now ``size`` (RFC 7541 §4.2, §6.3): the
    #: table shrinks at once (evicting) or grows, and the next block starts with the size
    #: update(s): the smallest size since the last block if it evicted more than the final
    #: size would, then the final one.
    set_max_table_size: Callable[[int], None]

    def __init__(
        self, tables: HpackTables, *, max_table_size: int = DEFAULT_TABLE_SIZE,
        huffman: bool = False,
    ) -> None:
        self.encode, self.set_max_table_size = _encoder(tables, max_table_size, huffman)


def _encoder(
    tables: HpackTables, most: int, huffman: bool,
) -> tuple[Callable[[Iterable[tuple[bytes, bytes]]], bytes], Callable[[int], None]]:
    """Build an Encoder's ``encode`` and ``set_max_table_size`` over one state (a closure).

    The state: ``exact`` maps ``(name, value)`` and ``names`` maps names to ``-index`` for
    static entries and to the insertion number ``k`` for dynamic ones, whose index is
    ``inserted + 61 - k`` (RFC 7541 §2.3.3); ``entries`` holds the dynamic entries oldest
    first, for eviction.
    """
    exact = dict(tables.static_exact)
    names = dict(tables.static_names)
    exact_get = exact.get
    names_get = names.get
    policy_get = tables.policy.get
    indexed = tables.indexed
    lengths = tables.lengths
    with_indexing = tables.with_indexing
    without_indexing = tables.without_indexing
    never_indexed = tables.never_indexed
    huffman_encode = tables.huffman_encode
    #: (field, insertion number, size), oldest first.
    entries: deque[tuple[tuple[bytes, bytes], int, int]] = deque()
    inserted = 0
    used = 0
    capacity = DEFAULT_TABLE_SIZE
    #: The size the decoder knows (the last one signalled).
    signalled = DEFAULT_TABLE_SIZE
    #: Smallest size set since the last block, or None if unchanged.
    pending: int | None = None

    def encode(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
        nonlocal pending, signalled
        parts: list[bytes] = []
        if pending is not None:
            if pending < capacity and pending < signalled:  # we evicted down to it
                parts.append(_integer_bytes(0x20, 0x1F, pending))
            parts.append(_integer_bytes(0x20, 0x1F, capacity))
            signalled = capacity
            pending = None
        big = capacity * 3  # entries over 3/4 of the table are not indexed
        base = inserted + STATIC_COUNT  # dynamic index = base - insertion number
        for field in headers:
            found = exact_get(field)
            if found is not None:
                index = -found if found < 0 else base - found
                parts.append(indexed[index] if index < 0x7F else
                             _integer_bytes(0x80, 0x7F, index))
                continue
            name, value = field
            mode = policy_get(name, 0)
            if mode > _NEVER:
                if len(value) < SHORT_SECRET:
                    mode = _NEVER
                else:
                    mode = _INDEX if mode == _COOKIE else _NO_INDEX
            size = len(name) + len(value) + 32  # ENTRY_OVERHEAD
            if not mode and size * 4 > big:
                mode = _NO_INDEX
            found = names_get(name)
            if not mode:  # literal with incremental indexing (§6.2.1)
                if found is None:
                    head = b"\x40" + _string(name)
                else:
                    index = -found if found < 0 else base - found
                    head = (with_indexing[index] if index < 0x3F else
                            _integer_bytes(0x40, 0x3F, index))
                _insert(field, name, size)
                base += 1
            else:  # without indexing (§6.2.2) or never indexed (§6.2.3)
                flags = 0x10 if mode == _NEVER else 0
                if found is None:
                    head = (b"\x10" if flags else b"\x00") + _string(name)
                else:
                    index = -found if found < 0 else base - found
                    if index < 0x0F:
                        head = never_indexed[index] if flags else without_indexing[index]
                    else:
                        head = _integer_bytes(flags, 0x0F, index)
            if huffman:
                parts += (head, _string(value))
            else:
                length = len(value)
                parts += (head, lengths[length] if length < 0x7F else
                          _integer_bytes(0, 0x7F, length), value)
        return b"".join(parts)

    def _string(data: bytes) -> bytes:
        """A string literal (RFC 7541 §5.2): length prefix and octets."""
        if huffman:
            coded = huffman_encode(data)
            if coded is not None:
                return _integer_bytes(0x80, 0x7F, len(coded)) + coded
        return _integer_bytes(0, 0x7F, len(data)) + data

    def _insert(field: tuple[bytes, bytes], name: bytes, size: int) -> None:
        """Add an entry (the caller made sure it fits the table), evicting first (§4.4)."""
        nonlocal inserted, used
        _evict(capacity - size)
        exact[field] = inserted
        if names_get(name, 0) >= 0:  # a static name keeps its (smaller) index
            names[name] = inserted
        entries.append((field, inserted, size))
        inserted += 1
        used += size

    def _evict(room: int) -> None:
        """Evict the oldest entries until the table holds at most ``room`` octets."""
        nonlocal used
        while used > room:
            field, number, size = entries.popleft()
            used -= size
            del exact[field]  # never a second copy: an exact match is never re-added
            if names_get(field[0]) == number:
                del names[field[0]]

    def set_max_table_size(size: int) -> None:
        nonlocal capacity, pending
        size = min(size, most)
        if size != capacity:
            capacity = size
            pending = size if pending is None else min(pending, size)
            _evict(size)

    set_max_table_size(DEFAULT_TABLE_SIZE)
    return encode, set_max_table_size
