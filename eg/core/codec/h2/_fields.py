"""One-pass validation of a received header block (RFC 9113 §8.2, §8.3).

h2 validates a block through a chain of eight generators, one Python frame per field per
check, plus a normalising chain; on free-threaded 3.13 that was a third of the cost of
receiving a request. This module does the same checks in one loop over the fields, with
the character and name tables of the worker's ``H2Context``, and joins cookie crumbs
(RFC 9113 §8.2.3) on the way. ``H2Wire`` runs it on every block h2 decoded, with h2's
own inbound validation and normalisation turned off; h2 still checks content-length
framing, trailers' END_STREAM, and everything about frames and stream states.

A failure raises h2's ``ProtocolError``, which ``H2Wire`` turns into a reset of that one
stream (malformed message, RFC 9113 §8.1.1). The checks, all as h2 4.4.1 makes them:

- names: not empty; pseudo-headers (``:``) only first, only known ones, none twice;
  other names only lowercase visible ASCII without ``:``; no connection-specific field
  (``connection``, ``keep-alive``, ``proxy-connection``, ``transfer-encoding``,
  ``upgrade``); ``te`` only ``trailers``;
- values: no NUL, CR or LF; no leading or trailing space or tab;
- requests: ``:method``; ``:scheme`` and ``:path`` unless plain CONNECT (which must not
  have them); a non-empty ``:path``; no ``:status``; ``:protocol`` only with CONNECT;
  ``:authority`` or ``host``, equal when both, and one ``host`` at most;
- responses (1xx included): ``:status``, and no request pseudo-header;
- trailers: no pseudo-header at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from h2.exceptions import ProtocolError

if TYPE_CHECKING:
    from eg.core.codec.h2._context import H2Context
    from eg.core.message import HeaderList

#: Which kind of block is being checked.
REQUEST = 0
RESPONSE = 1
TRAILERS = 2

# Bits of the pseudo-header set (see H2Context.pseudo_bits).
METHOD, SCHEME, AUTHORITY, PATH, STATUS, PROTOCOL = 1, 2, 4, 8, 16, 32
_REQUEST_ONLY = METHOD | SCHEME | AUTHORITY | PATH | PROTOCOL


def check_block(ctx: H2Context, headers: list[tuple[bytes, bytes]], kind: int) -> HeaderList:
    """Validate ``headers`` (see the module docstring); returns them, cookies joined.

    Raises:
        ProtocolError: the block is malformed.
    """
    bits = ctx.pseudo_bits
    name_chars = ctx.name_chars
    banned = ctx.connection_fields
    seen = 0
    regular = False
    method = path = authority = host = None
    cookies = 0
    for field in headers:
        name, value = field[0], field[1]
        if not name:
            raise ProtocolError("empty header name")
        if name[0] == 0x3A:
            bit = bits.get(name)
            if bit is None:
                raise ProtocolError(f"unknown pseudo-header {name!r}")
            if regular:
                raise ProtocolError(f"pseudo-header {name!r} after a regular field")
            if seen & bit:
                raise ProtocolError(f"duplicate pseudo-header {name!r}")
            seen |= bit
            if bit == METHOD:
                method = value
            elif bit == PATH:
                path = value
            elif bit == AUTHORITY:
                authority = value
        else:
            regular = True
            if name.translate(None, name_chars):
                raise ProtocolError(f"invalid header name {name!r}")
            if name in banned:
                raise ProtocolError(f"connection-specific field {name!r}")
            if name == b"te":
                if value.lower() != b"trailers":
                    raise ProtocolError(f"te: {value!r}")
            elif name == b"host" and kind == REQUEST:
                if host is not None:
                    raise ProtocolError("two host fields")
                host = value
            elif name == b"cookie":
                cookies += 1
        if value and (
            value[0] in (0x20, 0x09) or value[-1] in (0x20, 0x09)
            or b"\n" in value or b"\r" in value or b"\x00" in value
        ):
            raise ProtocolError(f"invalid value of {name!r}")
    if kind == TRAILERS:
        if seen:
            raise ProtocolError("pseudo-header in trailers")
    elif kind == RESPONSE:
        if not seen & STATUS or seen & _REQUEST_ONLY:
            raise ProtocolError("bad response pseudo-headers")
    else:
        _check_request(seen, method, path, authority, host)
    if cookies > 1:
        return _join_cookies(headers)
    return headers


def _check_request(seen: int, method: bytes | None, path: bytes | None,
                   authority: bytes | None, host: bytes | None) -> None:
    if method is None or seen & STATUS:
        raise ProtocolError("bad request pseudo-headers")
    if method == b"CONNECT" and not seen & PROTOCOL:
        if seen & (SCHEME | PATH):
            raise ProtocolError("CONNECT with :scheme or :path")
    elif not seen & SCHEME or not seen & PATH:
        raise ProtocolError("request without :scheme or :path")
    elif seen & PROTOCOL and method != b"CONNECT":
        raise ProtocolError(":protocol without CONNECT")
    if path is not None and not path:
        raise ProtocolError("empty :path")
    if authority is None:
        if host is None:
            raise ProtocolError("neither :authority nor host")
    elif host is not None and host != authority:
        raise ProtocolError(":authority and host differ")


def _join_cookies(headers: list[tuple[bytes, bytes]]) -> HeaderList:
    """RFC 9113 §8.2.3: cookie crumbs become one field, joined with "; " (kept last)."""
    crumbs = [value for name, value in headers if name == b"cookie"]
    joined = b"; ".join(crumbs)
    if joined[:1] in (b" ", b"\t") or joined[-1:] in (b" ", b"\t"):
        # An empty crumb leaves "; " at an end: h2 (which joins before it validates)
        # rejects that value, and so does eg.
        raise ProtocolError("empty cookie crumb")
    out: HeaderList = [field for field in headers if field[0] != b"cookie"]
    out.append((b"cookie", joined))
    return out
