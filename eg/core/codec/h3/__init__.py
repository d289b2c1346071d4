"""HTTP/3 adapters on qh3 (QUIC + HTTP/3 + QPACK): a server codec and a client codec.

- ``server.H3ServerCodec``: downstream; one QUIC connection, many request streams.
- ``client.H3ClientCodec``: upstream; ``open_stream()`` / ``can_open()`` / ``reusable()``.
- ``_codec``: what both share: driving qh3 (datagrams in and out, one timer), per-stream
  send watermarks, the bound on what a paused stream may still deliver, error mapping.
- ``_context.H3Context``: per-worker limits and qh3 configurations.

HTTP/3 fields follow HTTP/2's rules, so header validation and the head mapping are the
HTTP/2 adapters' (``h2._fields``, ``h2._convert``), with the same per-worker tables.
"""
