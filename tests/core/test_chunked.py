"""ChunkedDecoder: the chunked transfer-coding reader shared by both HTTP/1.1 codecs.

Each case is fed whole, byte by byte, split at every position and with trailing bytes
(which must be left unconsumed).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eg.core.codec.h1._parse import (
    MAX_CHUNK_LINE,
    MAX_CHUNK_SIZE_DIGITS,
    ChunkedDecoder,
    H1Context,
)
from eg.core.errors import EgError, LimitExceeded, ProtocolError
from eg.core.message import HeaderList, Side

ENCODED = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 42\r\n\r\n"
TRAILING = b"GET /next HTTP/1.1\r\n\r\n"


def context(max_head_size: int = 65536) -> H1Context:
    return H1Context(max_head_size=max_head_size, max_headers=256)


class Result:
    def __init__(self) -> None:
        self.body = b""
        self.trailers: HeaderList | None = None
        self.used = 0


def decode(
    chunks: list[bytes], side: Side = Side.DOWNSTREAM, ctx: H1Context | None = None
) -> Result:
    """Feed ``chunks`` in order, stopping at the end of the body."""
    decoder = ChunkedDecoder(ctx or context(), side)
    out = Result()
    for chunk in chunks:
        slices, trailers, used = decoder.feed(chunk)
        out.body += b"".join(bytes(s) for s in slices)
        out.used += used
        if trailers is not None:
            assert decoder.state == ChunkedDecoder.DONE
            out.trailers = trailers
            break
        assert used == len(chunk), "a partial body is consumed whole"
    return out


def three_ways(data: bytes, side: Side = Side.DOWNSTREAM) -> Result:
    whole = decode([data], side)
    bytewise = decode([data[i : i + 1] for i in range(len(data))], side)
    trailing = decode([data + TRAILING], side)
    for other in (bytewise, trailing):
        assert (other.body, other.trailers, other.used) == (
            whole.body,
            whole.trailers,
            whole.used,
        )
    return whole


def rejected(
    data: bytes,
    error: type[EgError] = ProtocolError,
    kind: str | None = None,
    side: Side = Side.DOWNSTREAM,
    ctx: H1Context | None = None,
) -> None:
    """The same error whole, byte by byte and with trailing bytes."""
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))], [data + TRAILING]):
        with pytest.raises(error) as info:
            decode(chunks, side, ctx)
        assert type(info.value) is error
        assert info.value.side is side
        if kind is not None:
            assert info.value.kind == kind


def test_whole_bytewise_trailing() -> None:
    result = three_ways(ENCODED)
    assert result.body == b"hello world"
    assert result.trailers == [(b"x-sum", b"42")]
    assert result.used == len(ENCODED)


def test_split_at_every_position() -> None:
    for i in range(len(ENCODED) + 1):
        result = decode([ENCODED[:i], ENCODED[i:]])
        assert (result.body, result.trailers) == (b"hello world", [(b"x-sum", b"42")]), i


def test_trailing_bytes_are_left_unconsumed() -> None:
    data = ENCODED + TRAILING
    decoder = ChunkedDecoder(context(), Side.DOWNSTREAM)
    _, trailers, used = decoder.feed(data)
    assert trailers is not None
    assert data[used:] == TRAILING


def test_no_trailers() -> None:
    result = three_ways(b"3\r\nabc\r\n0\r\n\r\n")
    assert (result.body, result.trailers) == (b"abc", [])


def test_empty_body() -> None:
    result = three_ways(b"0\r\n\r\n")
    assert (result.body, result.trailers, result.used) == (b"", [], 5)


def test_slices_are_zero_copy_views() -> None:
    data = b"5\r\nhello\r\n0\r\n\r\n"
    slices, _, _ = ChunkedDecoder(context(), Side.UPSTREAM).feed(data)
    assert len(slices) == 1
    piece = slices[0]
    assert isinstance(piece, memoryview)
    assert piece.obj is data
    assert bytes(piece) == b"hello"


def test_partial_state() -> None:
    decoder = ChunkedDecoder(context(), Side.DOWNSTREAM)
    slices, trailers, used = decoder.feed(b"5\r\nhe")
    assert (b"".join(bytes(s) for s in slices), trailers, used) == (b"he", None, 5)
    assert (decoder.state, decoder.remaining) == (ChunkedDecoder.DATA, 3)
    decoder.feed(b"llo\r")
    assert decoder.state == ChunkedDecoder.DATA_CRLF
    decoder.feed(b"\n0\r\n")
    assert decoder.state == ChunkedDecoder.TRAILER


@pytest.mark.parametrize(
    "size",
    [b"5", b"05", b"0005", b"5;a=b", b"5;a", b'5;a="q s"', b"5;a;b=c", b"5;", b"5;\xe9"],
    ids=repr,
)
def test_valid_size_lines_and_extensions(size: bytes) -> None:
    assert three_ways(size + b"\r\nhello\r\n0\r\n\r\n").body == b"hello"


def test_upper_case_hex() -> None:
    data = b"A\r\n0123456789\r\n0\r\n\r\n"
    assert three_ways(data).body == three_ways(data.lower()).body == b"0123456789"


def test_size_digit_limit() -> None:
    digits = b"0" * (MAX_CHUNK_SIZE_DIGITS - 1) + b"5"
    assert three_ways(digits + b"\r\nhello\r\n0\r\n\r\n").body == b"hello"
    rejected(b"0" + digits + b"\r\nhello\r\n0\r\n\r\n", kind="chunk_size")


def test_huge_chunk_size_waits_for_data() -> None:
    decoder = ChunkedDecoder(context(), Side.DOWNSTREAM)
    decoder.feed(b"f" * MAX_CHUNK_SIZE_DIGITS + b"\r\nabc")
    assert decoder.remaining == 2**64 - 1 - 3


@pytest.mark.parametrize(
    "size",
    [b"", b"g", b" 5", b"5 ", b"5 ;x", b"5\t;x", b"0x5", b"-5", b"+5", b"5\t", b"5_0", b";x"],
    ids=repr,
)
def test_invalid_size(size: bytes) -> None:
    rejected(size + b"\r\nhello\r\n0\r\n\r\n", kind="chunk_size")


@pytest.mark.parametrize("ext", [b";a\x00", b";\x7f", b";a=\x01", b";a\x0b"], ids=repr)
def test_invalid_extension(ext: bytes) -> None:
    rejected(b"5" + ext + b"\r\nhello\r\n0\r\n\r\n", kind="chunk")


def test_size_line_cap() -> None:
    # The cap counts the whole line, CRLF included.
    at_cap = b"5;" + b"x" * (MAX_CHUNK_LINE - 4) + b"\r\n"
    assert len(at_cap) == MAX_CHUNK_LINE
    assert three_ways(at_cap + b"hello\r\n0\r\n\r\n").body == b"hello"
    over = b"5;" + b"x" * (MAX_CHUNK_LINE - 3) + b"\r\n"
    rejected(over + b"hello\r\n0\r\n\r\n", LimitExceeded, "chunk_line")
    # A line that never ends is cut off at the cap, not buffered forever.
    rejected(b"5;" + b"x" * MAX_CHUNK_LINE, LimitExceeded, "chunk_line")


@pytest.mark.parametrize(
    "data",
    [
        b"5\r\nhelloXX0\r\n\r\n",  # data not followed by CRLF
        b"5\r\nhello\n0\r\n\r\n",  # bare LF after data
        b"5\r\nhello\r0\r\n\r\n",  # bare CR after data
        b"5\nhello\r\n0\r\n\r\n",  # bare LF after the size
        b"5\r5\r\nhello\r\n0\r\n\r\n",  # bare CR inside the size line
        b"5\r\nhello\r\n0\n\r\n",  # bare LF after the last chunk
        b"5\r\nhello\r\n0\r\nX: y\n\r\n",  # bare LF after a trailer
        b"5\r\nhello\r\n0\r\n\n",  # bare LF ending the trailers
    ],
    ids=repr,
)
def test_line_endings(data: bytes) -> None:
    rejected(data, kind="chunk")


def test_data_longer_than_the_size() -> None:
    rejected(b"3\r\nhello\r\n0\r\n\r\n", kind="chunk")


@pytest.mark.parametrize(
    "trailer",
    [b"X-A : 1", b" folded", b"NoColon", b": v", b"X-A: a\x00b", b"X-A: \x7f", b"X\x80: v"],
    ids=repr,
)
def test_malformed_trailers(trailer: bytes) -> None:
    for side in (Side.DOWNSTREAM, Side.UPSTREAM):
        rejected(b"0\r\n" + trailer + b"\r\n\r\n", side=side)


@pytest.mark.parametrize(
    "trailer", [b"Content-Length: 5", b"Transfer-Encoding: chunked", b"content-length: x"]
)
def test_framing_fields_in_trailers(trailer: bytes) -> None:
    for side in (Side.DOWNSTREAM, Side.UPSTREAM):
        rejected(b"0\r\nX-Ok: 1\r\n" + trailer + b"\r\n\r\n", kind="trailer", side=side)


def test_underscore_in_trailer_names_only_upstream() -> None:
    data = b"0\r\nX_Sum: 1\r\n\r\n"
    rejected(data, side=Side.DOWNSTREAM)
    assert three_ways(data, Side.UPSTREAM).trailers == [(b"x_sum", b"1")]


def test_trailer_values_are_trimmed_names_lowercased() -> None:
    trailers = three_ways(b"0\r\nX-A:\t 1 2 \r\nX-A: 3\r\n\r\n").trailers
    assert trailers == [(b"x-a", b"1 2"), (b"x-a", b"3")]


def test_trailer_section_size_limit() -> None:
    ctx = context(max_head_size=64)
    line_a = b"X-A: " + b"a" * 20 + b"\r\n"
    line_b = b"X-B: " + b"b" * 20 + b"\r\n"
    # 27 + 27 + 2 bytes of trailer section fit in 64; a third line does not.
    assert decode([b"0\r\n" + line_a + line_b + b"\r\n"], ctx=ctx).trailers is not None
    rejected(b"0\r\n" + line_a + line_b + line_b + b"\r\n", LimitExceeded, "head_size", ctx=ctx)
    # One trailer line longer than the limit is cut off before it ends.
    rejected(b"0\r\nX-A: " + b"a" * 100, LimitExceeded, "chunk_line", ctx=ctx)


@settings(max_examples=200, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=40), max_size=6),
    cuts=st.lists(st.integers(0, 400), max_size=8),
    upper=st.booleans(),
)
def test_round_trip_any_split(chunks: list[bytes], cuts: list[int], upper: bool) -> None:
    """Any chunking of any body, fed in any pieces, decodes to the same body."""
    encoded = b"".join((b"%X" if upper else b"%x") % len(c) + b"\r\n" + c + b"\r\n" for c in chunks)
    encoded += b"0\r\n\r\n"
    points = sorted({min(c, len(encoded)) for c in cuts})
    pieces = [encoded[a:b] for a, b in zip([0, *points], [*points, len(encoded)], strict=True)]
    result = decode(pieces)
    assert (result.body, result.trailers, result.used) == (b"".join(chunks), [], len(encoded))
