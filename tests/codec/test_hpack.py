"""HPACK (``eg.core.codec.h2.hpack``) against RFC 7541 and the ``hpack`` library.

- RFC 7541 Appendix C.2-C.6 decode exactly, and the dynamic table (probed with indexed
  references) holds what the RFC lists after each block; our encoder reproduces C.3 and
  C.4 octet for octet (its policy differs from the RFC's encoder for C.5/C.6 responses).
- Our encoder's blocks decode with ``hpack`` to the same lists across sequences of blocks
  (table sync), raw and Huffman, with table size changes.
- Differential (hypothesis): sequences ``hpack.Encoder`` makes decode identically; and on
  random bytes and mutations of valid blocks, ``hpack.Decoder`` with the same limits
  accepts exactly the blocks we accept, with the same lists, and fails the same way
  (decoding error or list too large) on the others.
- Every ``HpackError`` condition, ``HeaderListTooLarge`` at the exact limit, and the HPACK
  bomb stopping at the field that crosses the limit (octet reads counted).
- The encoder's indexing policy, table size updates and Huffman choice.

Deliberate difference from ``hpack`` (none shows in the differential, whose table size
limit stays at 4096): after our SETTINGS_HEADER_TABLE_SIZE is lowered below the table's
size, ``hpack`` notices a block without the size update only after decoding it; we
refuse it before its first field, since RFC 7541 §4.2 puts the update at the beginning.
Both reject the block; ``hpack`` may call it an oversized list first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hpack import Decoder as LibDecoder
from hpack import Encoder as LibEncoder
from hpack import NeverIndexedHeaderTuple
from hpack.exceptions import HPACKDecodingError, OversizedHeaderListError
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import decode_huffman
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eg.core.codec.h2.hpack import (
    HUFFMAN_CODES,
    MAX_INTEGER_CONTINUATIONS,
    STATIC_TABLE,
    Decoder,
    Encoder,
    HeaderListTooLarge,
    HpackError,
    HpackTables,
)

TABLES = HpackTables()
BIG = 1 << 30
Fields = list[tuple[bytes, bytes]]
LIB_HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)


def decoder(*, max_header_list_size: int = BIG, max_table_size: int = 4096) -> Decoder:
    return Decoder(TABLES, max_header_list_size=max_header_list_size,
                   max_table_size=max_table_size)


def lib_decoder(*, max_header_list_size: int = BIG, max_table_size: int = 4096) -> LibDecoder:
    lib = LibDecoder(max_header_list_size=max_header_list_size)
    lib.max_allowed_table_size = max_table_size
    return lib


def lib_decode(lib: LibDecoder, block: bytes) -> Fields:
    return [(bytes(n), bytes(v)) for n, v in lib.decode(block, raw=True)]


def dynamic_table(dec: Decoder) -> Fields:
    """The decoder's dynamic table, newest first, read through indexed references."""
    entries: Fields = []
    for index in range(62, 127):
        try:
            entries += dec.decode(bytes((0x80 | index,)))
        except HpackError:
            break
    return entries


# -- RFC 7541 Appendix C ------------------------------------------------------------------

REQUESTS = [
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
     (b":authority", b"www.example.com")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
     (b":authority", b"www.example.com"), (b"cache-control", b"no-cache")],
    [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/index.html"),
     (b":authority", b"www.example.com"), (b"custom-key", b"custom-value")],
]
REQUEST_TABLES = [
    [(b":authority", b"www.example.com")],
    [(b"cache-control", b"no-cache"), (b":authority", b"www.example.com")],
    [(b"custom-key", b"custom-value"), (b"cache-control", b"no-cache"),
     (b":authority", b"www.example.com")],
]
C3 = [
    "828684410f7777772e6578616d706c652e636f6d",
    "828684be58086e6f2d6361636865",
    "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
]
C4 = [
    "828684418cf1e3c2e5f23a6ba0ab90f4ff",
    "828684be5886a8eb10649cbf",
    "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
]
DATE1 = b"Mon, 21 Oct 2013 20:13:21 GMT"
DATE2 = b"Mon, 21 Oct 2013 20:13:22 GMT"
LOCATION = b"https://www.example.com"
COOKIE = b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
RESPONSES = [
    [(b":status", b"302"), (b"cache-control", b"private"), (b"date", DATE1),
     (b"location", LOCATION)],
    [(b":status", b"307"), (b"cache-control", b"private"), (b"date", DATE1),
     (b"location", LOCATION)],
    [(b":status", b"200"), (b"cache-control", b"private"), (b"date", DATE2),
     (b"location", LOCATION), (b"content-encoding", b"gzip"), (b"set-cookie", COOKIE)],
]
RESPONSE_TABLES = [
    [(b"location", LOCATION), (b"date", DATE1), (b"cache-control", b"private"),
     (b":status", b"302")],
    [(b":status", b"307"), (b"location", LOCATION), (b"date", DATE1),
     (b"cache-control", b"private")],
    [(b"set-cookie", COOKIE), (b"content-encoding", b"gzip"), (b"date", DATE2)],
]
C5 = [
    "4803333032580770726976617465611d4d6f6e2c203231204f637420323031332032303a31333a3231"
    "20474d546e1768747470733a2f2f7777772e6578616d706c652e636f6d",
    "4803333037c1c0bf",
    "88c1611d4d6f6e2c203231204f637420323031332032303a31333a323220474d54c05a04677a6970"
    "7738666f6f3d4153444a4b48514b425a584f5157454f50495541585157454f49553b206d61782d61"
    "67653d333630303b2076657273696f6e3d31",
]
C6 = [
    "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad"
    "171863c78f0b97c8e9ae82ae43d3",
    "4883640effc1c0bf",
    "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2"
    "e6c7b335dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
]
#: C.5 and C.6 run with a 256-octet table; the RFC leaves out the size update that
#: says so (RFC 7541 §4.2), which a decoder told SETTINGS_HEADER_TABLE_SIZE = 256 needs.
RESIZE_256 = bytes.fromhex("3fe101")


@pytest.mark.parametrize(
    ("name", "block", "expected"),
    [
        ("C.2.1", "400a637573746f6d2d6b65790d637573746f6d2d686561646572",
         [(b"custom-key", b"custom-header")]),
        ("C.2.2", "040c2f73616d706c652f70617468", [(b":path", b"/sample/path")]),
        ("C.2.3", "100870617373776f726406736563726574", [(b"password", b"secret")]),
        ("C.2.4", "82", [(b":method", b"GET")]),
    ],
)
def test_rfc_c2_single_fields(name: str, block: str, expected: Fields) -> None:
    dec = decoder()
    assert dec.decode(bytes.fromhex(block)) == expected, name
    # Only C.2.1 is indexed (§6.2.1); C.2.2-C.2.4 leave the table empty.
    assert dynamic_table(dec) == (expected if name == "C.2.1" else [])


@pytest.mark.parametrize("vectors", [C3, C4], ids=["C.3", "C.4-huffman"])
def test_rfc_requests_decode(vectors: list[str]) -> None:
    dec = decoder()
    for block, expected, table in zip(vectors, REQUESTS, REQUEST_TABLES, strict=True):
        assert dec.decode(bytes.fromhex(block)) == expected
        assert dynamic_table(dec) == table


@pytest.mark.parametrize("vectors", [C5, C6], ids=["C.5", "C.6-huffman"])
def test_rfc_responses_decode_with_eviction(vectors: list[str]) -> None:
    dec = decoder(max_table_size=256)
    blocks = [bytes.fromhex(v) for v in vectors]
    blocks[0] = RESIZE_256 + blocks[0]
    for block, expected, table in zip(blocks, RESPONSES, RESPONSE_TABLES, strict=True):
        assert dec.decode(block) == expected
        assert dynamic_table(dec) == table


@pytest.mark.parametrize(("huffman", "vectors"), [(False, C3), (True, C4)],
                         ids=["C.3", "C.4-huffman"])
def test_rfc_requests_encode_octet_for_octet(huffman: bool, vectors: list[str]) -> None:
    enc = Encoder(TABLES, huffman=huffman)
    assert [enc.encode(fields).hex() for fields in REQUESTS] == vectors


@pytest.mark.parametrize("huffman", [False, True])
def test_rfc_responses_encode_in_sync_with_hpack(huffman: bool) -> None:
    enc = Encoder(TABLES, max_table_size=256, huffman=huffman)
    lib = lib_decoder()
    for fields in RESPONSES * 3:
        assert lib_decode(lib, enc.encode(fields)) == fields
    assert lib.header_table_size == 256


# -- our encoder, hpack's decoder ---------------------------------------------------------


def _sequence() -> list[Fields]:
    """Requests and responses with repeats, sensitive fields, big values, odd names."""
    blocks: list[Fields] = []
    for i in range(40):
        blocks.append([
            (b":method", b"GET" if i % 3 else b"POST"), (b":scheme", b"https"),
            (b":authority", b"example.com"), (b":path", b"/item/%d" % (i % 7)),
            (b"user-agent", b"curl/8.5.0"), (b"accept", b"*/*"),
            (b"cookie", b"a=%d" % (i % 2)), (b"cookie", b"session=" + b"s" * 30),
            (b"authorization", b"Bearer t%d" % i), (b"x-trace", b"%d" % i),
            (b"x-big", b"v" * (i * 97)), (b"X-Odd Name", b""), (b"", b"empty name"),
        ])
        blocks.append([
            (b":status", b"200" if i % 4 else b"404"), (b"content-type", b"text/plain"),
            (b"content-length", b"%d" % (i * 11)), (b"date", b"Mon, %d" % i),
            (b"set-cookie", b"id=%d" % i), (b"set-cookie", b"long=" + b"c" * 40),
            (b"server", b"eg"), (b"etag", b'"%d"' % i), (b"vary", b"accept-encoding"),
        ])
    return blocks


@pytest.mark.parametrize("huffman", [False, True])
@pytest.mark.parametrize("max_table_size", [0, 256, 4096, 65536])
def test_encoder_in_sync_with_hpack(huffman: bool, max_table_size: int) -> None:
    enc = Encoder(TABLES, max_table_size=max_table_size, huffman=huffman)
    lib = lib_decoder(max_table_size=65536)
    ours = decoder(max_table_size=65536)
    resizes = {20: 100, 21: 8192, 40: 0, 41: 4096, 60: 512, 61: 300}
    for n, fields in enumerate(_sequence()):
        if n in resizes:
            enc.set_max_table_size(resizes[n])
        block = enc.encode(fields)
        assert lib_decode(lib, block) == fields, n
        assert ours.decode(block) == fields, n
    assert lib.header_table_size == min(300, max_table_size)


# -- hypothesis: strategies ---------------------------------------------------------------

STATIC_NAMES = sorted({n for n, _ in STATIC_TABLE})
STATIC_VALUES = sorted({v for _, v in STATIC_TABLE})
NAMES = st.one_of(
    st.sampled_from([*STATIC_NAMES, b"x-custom", b"authorization", b"cookie"]),
    st.binary(max_size=12),
)
VALUES = st.one_of(
    st.sampled_from(STATIC_VALUES),
    st.binary(max_size=30),
    st.binary(min_size=100, max_size=3000),
)
FIELD = st.tuples(NAMES, VALUES)


@st.composite
def field_sequences(draw: st.DrawFn) -> list[Fields]:
    """Several header lists drawn from a small pool of fields (repeats) and fresh ones."""
    pool = draw(st.lists(FIELD, min_size=1, max_size=8))
    field = st.one_of(st.sampled_from(pool), FIELD)
    return draw(st.lists(st.lists(field, max_size=12), min_size=1, max_size=6))


TABLE_SIZES = st.sampled_from([0, 1, 40, 64, 256, 1000, 4096])
STEPS = st.tuples(st.booleans(), st.none() | TABLE_SIZES)  # (huffman, table size change)


def lib_encoded(sequence: list[Fields], steps: list[tuple[bool, int | None]]) -> list[bytes]:
    lib = LibEncoder()
    blocks = []
    for fields, (huffman, size) in zip(sequence, steps, strict=False):
        if size is not None:
            lib.header_table_size = size
        blocks.append(lib.encode(fields, huffman=huffman))
    return blocks


# -- hypothesis: hpack encodes, we decode ---------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(sequence=field_sequences(), steps=st.lists(STEPS, min_size=6, max_size=6))
def test_hpack_encoded_sequences_decode_identically(
    sequence: list[Fields], steps: list[tuple[bool, int | None]],
) -> None:
    ours = decoder()
    for fields, block in zip(sequence, lib_encoded(sequence, steps), strict=True):
        assert ours.decode(block) == fields


# -- hypothesis: we encode, hpack decodes ---------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    sequence=field_sequences(),
    huffman=st.booleans(),
    most=st.sampled_from([0, 100, 4096, 10000]),
    sizes=st.lists(st.none() | TABLE_SIZES | st.just(20000), min_size=6, max_size=6),
)
def test_our_encoded_sequences_decode_identically_with_hpack(
    sequence: list[Fields], huffman: bool, most: int, sizes: list[int | None],
) -> None:
    enc = Encoder(TABLES, max_table_size=most, huffman=huffman)
    lib = lib_decoder(max_table_size=20000)
    ours = decoder(max_table_size=20000)
    for fields, size in zip(sequence, sizes, strict=False):
        if size is not None:
            enc.set_max_table_size(size)
        block = enc.encode(fields)
        assert lib_decode(lib, block) == fields
        assert ours.decode(block) == fields


# -- hypothesis: random and mutated blocks, both decoders ---------------------------------


def _outcome(decode: Callable[[], Fields], large: type[Exception],
             error: type[Exception]) -> tuple[str, Fields | None]:
    try:
        return "ok", decode()
    except large:
        return "too large", None
    except error:
        return "error", None


def assert_same_verdicts(blocks: Sequence[bytes], list_size: int) -> None:
    """Both decoders, same limits, one block after another until one is refused."""
    ours = decoder(max_header_list_size=list_size)
    lib = lib_decoder(max_header_list_size=list_size)
    for block in blocks:
        mine = _outcome(lambda b=block: ours.decode(b), HeaderListTooLarge, HpackError)
        theirs = _outcome(lambda b=block: lib_decode(lib, b), OversizedHeaderListError,
                          HPACKDecodingError)
        assert mine == theirs, block.hex()
        if mine[0] != "ok":
            return


LIST_SIZES = st.sampled_from([50, 300, 5000, BIG])


@settings(max_examples=1000, deadline=None)
@given(blocks=st.lists(st.binary(max_size=48), min_size=1, max_size=4), list_size=LIST_SIZES)
def test_random_bytes_same_verdict_as_hpack(blocks: list[bytes], list_size: int) -> None:
    assert_same_verdicts(blocks, list_size)


#: Octets that start each representation, and the interesting integer/length octets.
INTERESTING = st.sampled_from([
    0x00, 0x0F, 0x10, 0x1F, 0x20, 0x3F, 0x40, 0x7F, 0x80, 0x81, 0xBE, 0xFF, 0x01, 0x7E,
])


@st.composite
def mutated(draw: st.DrawFn) -> list[bytes]:
    """A valid hpack-encoded sequence with one block truncated, spliced or flipped."""
    sequence = draw(field_sequences())
    steps = draw(st.lists(STEPS, min_size=6, max_size=6))
    blocks = lib_encoded(sequence, steps)
    which = draw(st.integers(0, len(blocks) - 1))
    block = bytearray(blocks[which])
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["truncate", "insert", "replace", "delete", "flip"]))
        at = draw(st.integers(0, len(block)))
        octet = draw(INTERESTING | st.integers(0, 255))
        if kind == "truncate":
            del block[at:]
        elif kind == "insert":
            block[at:at] = bytes((octet,))
        elif at < len(block):
            if kind == "replace":
                block[at] = octet
            elif kind == "delete":
                del block[at]
            else:
                block[at] ^= 1 << draw(st.integers(0, 7))
    blocks[which] = bytes(block)
    return blocks


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=mutated(), list_size=LIST_SIZES)
def test_mutated_blocks_same_verdict_as_hpack(blocks: list[bytes], list_size: int) -> None:
    assert_same_verdicts(blocks, list_size)


# -- errors -------------------------------------------------------------------------------

#: A literal field without indexing, new name "a", whose value is the given string literal.
def _value(literal: bytes) -> bytes:
    return b"\x00\x01a" + literal


ERRORS = [
    ("index 0", b"\x80"),
    ("index 62, empty dynamic table", b"\xbe"),
    ("index past the dynamic table", b"\x40\x01x\x01y\xbf"),
    ("name index past the tables, incremental", b"\x7f\x00\x00"),
    ("name index past the tables, without indexing", b"\x0f\x30\x00"),
    ("name index past the tables, never indexed", b"\x1f\x30\x00"),
    ("integer: 6 continuation octets", b"\xff\x80\x80\x80\x80\x80\x00"),
    ("string length: 6 continuation octets",
     _value(b"\x7f\x80\x80\x80\x80\x80\x00" + b"v" * 127)),
    ("integer: truncated after the prefix", b"\xff"),
    ("integer: truncated in continuation", b"\xff\x80"),
    ("string length: truncated", _value(b"\x7f\x80")),
    ("no name length", b"\x00"),
    ("name shorter than its length", b"\x00\x05abc"),
    ("no value", b"\x00\x01a"),
    ("value shorter than its length", _value(b"\x05ab")),
    ("huge string length", _value(b"\x7f\xff\xff\xff\xff\x0f")),
    ("Huffman: EOS", _value(b"\x84\xff\xff\xff\xff")),
    ("Huffman: EOS after a symbol", _value(b"\x85\x1f\xff\xff\xff\xff")),
    ("Huffman: 8 bits of padding", _value(b"\x81\xff")),
    ("Huffman: 11 bits of padding", _value(b"\x82\x1f\xff")),
    ("Huffman: padding not all ones", _value(b"\x81\x18")),
    ("Huffman: padding with a zero", _value(b"\x81\x1d")),
    ("size update over max_table_size (4097)", b"\x3f\xe2\x1f"),
    ("size update after a field", b"\x82\x20"),
    ("size update between fields", b"\x20\x82\x3f\x01\x82"),
    ("size update, truncated", b"\x3f"),
]


@pytest.mark.parametrize(("case", "block"), ERRORS, ids=[c for c, _ in ERRORS])
def test_malformed_blocks_are_hpack_errors(case: str, block: bytes) -> None:
    with pytest.raises(HpackError) as info:
        decoder().decode(block)
    assert not isinstance(info.value, HeaderListTooLarge), case
    with pytest.raises(HPACKDecodingError):  # the oracle agrees it is malformed
        lib_decode(lib_decoder(), block)


@pytest.mark.parametrize(("case", "block", "expected"), [
    ("integer: 5 continuation octets (the most)",
     _value(b"\x7f\x80\x80\x80\x80\x00" + b"v" * 127), [(b"a", b"v" * 127)]),
    ("several size updates at the start", b"\x20\x3f\xe1\x01\x3f\xe1\x1f\x82",
     [(b":method", b"GET")]),
    ("Huffman: 'a' and 3 bits of padding", _value(b"\x81\x1f"), [(b"a", b"a")]),
    ("Huffman: empty", _value(b"\x80"), [(b"a", b"")]),
    ("empty block", b"", []),
    ("long literal name", b"\x40\x7f\x49" + b"n" * 200 + b"\x00", [(b"n" * 200, b"")]),
    ("empty name and value", b"\x00\x00\x00", [(b"", b"")]),
    ("names and values as coded (no folding, no checks)", b"\x00\x03A\r:\x02\x00\xff",
     [(b"A\r:", b"\x00\xff")]),
])
def test_edge_blocks_accepted(case: str, block: bytes, expected: Fields) -> None:
    assert decoder().decode(block) == expected, case
    assert lib_decode(lib_decoder(), block) == expected, case


def test_lowered_table_size_needs_an_update_first() -> None:
    dec = decoder()
    dec.decode(b"\x40\x01x\x01y")
    dec.max_table_size = 100
    assert dec.max_table_size == 100
    with pytest.raises(HpackError, match="not shrunk"):
        dec.decode(b"\x82")
    dec = decoder()
    dec.decode(b"\x40\x01x\x01y")
    dec.max_table_size = 100
    assert dec.decode(b"\x3f\x45\xbe") == [(b"x", b"y")]  # update to 100, entry kept
    with pytest.raises(HpackError, match="over 100"):
        dec.decode(b"\x3f\x46")  # 101


def test_size_update_to_zero_empties_the_table() -> None:
    dec = decoder()
    dec.decode(b"\x40\x01x\x01y\x40\x01z\x01w")
    assert dynamic_table(dec) == [(b"z", b"w"), (b"x", b"y")]
    assert dec.decode(b"\x20\x3f\xe1\x1f") == []
    assert dynamic_table(dec) == []


def test_entry_larger_than_the_table_empties_it() -> None:
    dec = decoder(max_table_size=100)
    dec.decode(b"\x3f\x45\x40\x01x\x01y")  # 100-octet table, entry of 34
    assert dynamic_table(dec) == [(b"x", b"y")]
    fits = b"v" * 67  # 1 + 67 + 32 = 100: evicts x, fills the table
    assert dec.decode(b"\x40\x01b\x43" + fits) == [(b"b", fits)]
    assert dynamic_table(dec) == [(b"b", fits)]
    over = b"v" * 68  # 101 > 100
    assert dec.decode(b"\x40\x01c\x44" + over) == [(b"c", over)]
    assert dynamic_table(dec) == []


def test_memoryview_and_bytearray_blocks() -> None:
    block = bytes.fromhex(C4[0])
    assert decoder().decode(memoryview(block)) == REQUESTS[0]
    assert decoder().decode(bytearray(block)) == REQUESTS[0]


def test_table_stays_in_sync_whatever_the_fields_hold() -> None:
    """The decoder does not judge fields; the engine may reject the message later, but
    the table has taken every indexed field (RFC 9113 §4.3)."""
    weird = [(b"Upper", b"x"), (b":bogus", b"\r\n"), (b"", b"")]
    enc = Encoder(TABLES)
    dec = decoder()
    assert dec.decode(enc.encode(weird)) == weird
    assert dec.decode(enc.encode(weird + REQUESTS[0])) == weird + REQUESTS[0]
    assert dynamic_table(dec)[-3:] == weird[::-1]


# -- the header list limit and the HPACK bomb ----------------------------------------------


def test_limit_is_inclusive() -> None:
    assert decoder(max_header_list_size=42).decode(b"\x82") == [(b":method", b"GET")]
    with pytest.raises(HeaderListTooLarge):
        decoder(max_header_list_size=41).decode(b"\x82")  # 7 + 3 + 32 = 42
    with pytest.raises(HeaderListTooLarge):
        decoder(max_header_list_size=100).decode(_value(b"\x04abcd") * 3)  # 3 x 37
    assert decoder(max_header_list_size=111).decode(_value(b"\x04abcd") * 3)
    dec = decoder(max_header_list_size=1000)
    dec.max_header_list_size = 10
    assert dec.max_header_list_size == 10
    with pytest.raises(HeaderListTooLarge):
        dec.decode(b"\x82")


class CountingBytes(bytes):
    """A block that counts the octets the decoder reads (one subscript, or one slice)."""

    reads = 0

    def __getitem__(self, key: Any) -> Any:
        type(self).reads += 1
        return super().__getitem__(key)


ENTRY = b"\x40\x01x\x7f\xa1\x1e" + b"v" * 4000  # x: 4000 octets, 4033 in the list
LIMIT = 64 * 1024
CROSSING = LIMIT // 4033  # references after the entry; one more crosses the limit


def test_hpack_bomb_stops_at_the_crossing_field() -> None:
    # Index 0 right after the field that crosses the limit: reading it would be an
    # HpackError, so HeaderListTooLarge proves decoding stopped at the crossing.
    poison = b"\x80"
    with pytest.raises(HeaderListTooLarge):
        decoder(max_header_list_size=LIMIT).decode(ENTRY + b"\xbe" * CROSSING + poison)
    # The control: one reference fewer, and the poison is reached.
    with pytest.raises(HpackError, match="index 0"):
        decoder(max_header_list_size=LIMIT).decode(ENTRY + b"\xbe" * (CROSSING - 1) + poison)


def test_hpack_bomb_work_is_bounded_by_the_limit_not_the_block() -> None:
    bomb = CountingBytes(ENTRY + b"\xbe" * 100_000)
    CountingBytes.reads = 0
    with pytest.raises(HeaderListTooLarge):
        decoder(max_header_list_size=LIMIT).decode(bomb)
    # The entry (a handful of reads) and CROSSING references, one read each.
    assert CountingBytes.reads < CROSSING + 20
    # The same references under a limit they fit: every octet is read.
    CountingBytes.reads = 0
    assert len(decoder().decode(bomb)) == 100_001
    assert CountingBytes.reads > 100_000


# -- encoder policy -----------------------------------------------------------------------


def test_exact_matches_are_indexed() -> None:
    enc = Encoder(TABLES)
    assert enc.encode([(b":method", b"GET"), (b":status", b"200")]) == b"\x82\x88"
    assert enc.encode([(b"x-a", b"1")]) == b"\x40\x03x-a\x011"
    assert enc.encode([(b"x-a", b"1"), (b"x-a", b"2")]) == b"\xbe\x7e\x012"  # name: 62
    assert enc.encode([(b"x-a", b"1"), (b"x-a", b"2")]) == b"\xbf\xbe"


@pytest.mark.parametrize(("fields", "first", "second"), [
    # :path by static name 4, without indexing (§6.2.2), never added to the table.
    ([(b":path", b"/x")], b"\x04\x02/x", b"\x04\x02/x"),
    ([(b"content-length", b"12")], b"\x0f\x0d\x0212", b"\x0f\x0d\x0212"),
    ([(b"date", b"today")], b"\x0f\x12\x05today", b"\x0f\x12\x05today"),
    # Never indexed (§6.2.3): authorization at any length, short cookies.
    ([(b"authorization", b"Basic " + b"a" * 40)], b"\x1f\x08\x2eBasic " + b"a" * 40, None),
    ([(b"proxy-authorization", b"x")], b"\x1f\x22\x01x", None),
    ([(b"cookie", b"sid=1")], b"\x1f\x11\x05sid=1", None),
    ([(b"set-cookie", b"sid=1")], b"\x1f\x28\x05sid=1", None),
    # Long cookies are indexed; long set-cookies go without indexing.
    ([(b"cookie", b"c" * 20)], b"\x60\x14" + b"c" * 20, b"\xbe"),
    ([(b"set-cookie", b"c" * 20)], b"\x0f\x28\x14" + b"c" * 20, b"\x0f\x28\x14" + b"c" * 20),
    # A new name, literal (§6.2.1 with index 0).
    ([(b"x-new", b"v")], b"\x40\x05x-new\x01v", b"\xbe"),
])
def test_indexing_policy(fields: Fields, first: bytes, second: bytes | None) -> None:
    enc = Encoder(TABLES)
    lib = lib_decoder()
    assert enc.encode(fields) == first
    assert enc.encode(fields) == (second or first)
    assert lib_decode(lib, first) == fields
    never = isinstance(lib.decode(first, raw=True)[0], NeverIndexedHeaderTuple)
    assert never == (first[0] & 0xF0 == 0x10)


def test_eviction_keeps_what_fits_exactly() -> None:
    enc = Encoder(TABLES, max_table_size=200)
    enc.encode([])
    first, second = (b"a", b"v" * 67), (b"b", b"v" * 66)  # 100 + 99 octets
    enc.encode([first, second])
    third = (b"c", b"")  # 33: evicts only the first (200 - 99 - 33 = 68 < 100)
    assert enc.encode([third, second]) == b"\x40\x01c\x00\xbf"
    enc = Encoder(TABLES, max_table_size=200)
    enc.encode([])
    enc.encode([first, (b"b", b"v" * 67)])  # 200 octets exactly: both stay
    assert enc.encode([first]) == b"\xbf"
    enc = Encoder(TABLES, max_table_size=200)
    lib = lib_decoder()
    lib_decode(lib, enc.encode([]))
    lib_decode(lib, enc.encode([first, (b"b", b"v" * 68)]))  # 201 octets: first goes
    block = enc.encode([first])
    assert block == b"\x40\x01a\x43" + b"v" * 67
    assert lib_decode(lib, block) == [first]


def test_static_names_are_preferred_to_dynamic_ones() -> None:
    enc = Encoder(TABLES)
    enc.encode([(b"cache-control", b"x")])  # a dynamic entry named cache-control
    assert enc.encode([(b"cache-control", b"y")]) == b"\x58\x01y"  # static index 24


def test_entries_over_three_quarters_of_the_table_are_not_indexed() -> None:
    enc = Encoder(TABLES, max_table_size=1000)
    enc.encode([])
    fits = (b"x", b"v" * (750 - 33))  # 750 = 3/4 of 1000
    over = (b"y", b"v" * (751 - 33))
    assert enc.encode([fits])[0] == 0x40
    assert enc.encode([fits]) == b"\xbe"
    assert enc.encode([over])[0] == 0x00
    assert enc.encode([over])[0] == 0x00


def test_table_size_updates() -> None:
    enc = Encoder(TABLES)
    assert enc.encode([]) == b""  # 4096: the protocol's initial size, nothing to say
    enc.set_max_table_size(0)
    enc.set_max_table_size(1000)
    enc.set_max_table_size(2000)
    # The smallest since the last block, then the final size (RFC 7541 §4.2).
    assert enc.encode([]) == b"\x20\x3f\xb1\x0f"
    enc.set_max_table_size(3000)
    enc.set_max_table_size(4000)
    assert enc.encode([]) == b"\x3f\x81\x1f"
    enc.set_max_table_size(4000)
    assert enc.encode([]) == b""
    # Our own cap bounds what the peer may grant.
    capped = Encoder(TABLES, max_table_size=100)
    capped.set_max_table_size(65536)
    assert capped.encode([]) == b"\x3f\x45"
    capped.set_max_table_size(65536)
    assert capped.encode([]) == b""


def test_zero_table_indexes_nothing() -> None:
    enc = Encoder(TABLES, max_table_size=0)
    assert enc.encode([(b"x-a", b"1")]) == b"\x20\x00\x03x-a\x011"
    assert enc.encode([(b"x-a", b"1")]) == b"\x00\x03x-a\x011"


def test_shrinking_evicts_and_indices_follow() -> None:
    enc = Encoder(TABLES)
    lib = lib_decoder()
    fields = [(b"x-%d" % i, b"v" * 30) for i in range(10)]  # 65 octets each
    lib_decode(lib, enc.encode(fields))
    enc.set_max_table_size(200)  # keeps the newest three
    block = enc.encode(fields[::-1])
    assert lib_decode(lib, block) == fields[::-1]
    assert block.startswith(b"\x3f\xa9\x01\xbe\xbf\xc0")  # size 200, then x-9, x-8, x-7
    assert block.count(b"v" * 30) == 10 - 3


def test_huffman_only_when_shorter() -> None:
    enc = Encoder(TABLES, huffman=True)
    assert enc.encode([(b"x", b"www.example.com")]).endswith(
        bytes.fromhex("8cf1e3c2e5f23a6ba0ab90f4ff"))
    raw = bytes(range(0xF0, 0x100))  # 26-28 bit codes: raw is shorter
    assert enc.encode([(b"y", raw)]).endswith(b"\x10" + raw)


# -- Huffman ------------------------------------------------------------------------------


def test_huffman_table_is_rfc_7541_appendix_b() -> None:
    assert list(HUFFMAN_CODES) == list(zip(REQUEST_CODES, REQUEST_CODES_LENGTH, strict=True))


def test_huffman_every_symbol() -> None:
    for octet in range(256):
        coded = LIB_HUFFMAN.encode(bytes((octet,)) * 3)
        assert TABLES.huffman_decode(coded) == bytes((octet,)) * 3


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_huffman_round_trip_matches_hpack(data: bytes) -> None:
    coded = LIB_HUFFMAN.encode(data)
    assert TABLES.huffman_decode(coded) == data
    ours = TABLES.huffman_encode(data)
    assert ours == (coded if len(coded) < len(data) else None)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=12))
def test_huffman_garbage_same_verdict_as_hpack(data: bytes) -> None:
    try:
        expected: bytes | None = decode_huffman(data)
    except HPACKDecodingError:
        expected = None
    try:
        got: bytes | None = TABLES.huffman_decode(data)
    except HpackError:
        got = None
    assert got == expected


# -- per-worker tables --------------------------------------------------------------------


def test_tables_are_per_worker_copies() -> None:
    other = HpackTables()
    assert TABLES.static == other.static == STATIC_TABLE
    for mine, theirs, constant in zip(TABLES.static, other.static, STATIC_TABLE,
                                      strict=True):
        assert mine[0] is not theirs[0] and mine[0] is not constant[0]
    assert TABLES.policy is not other.policy
    assert TABLES.huffman_decode is not other.huffman_decode
    assert MAX_INTEGER_CONTINUATIONS == 5
