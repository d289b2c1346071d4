"""HTTP/2 adapters on the h2 library: a server codec and a client codec, sans-I/O.

- ``server.H2ServerCodec``: downstream; many request streams per connection.
- ``client.H2ClientCodec``: upstream; ``open_stream()`` / ``can_open()`` / ``reusable()``.
- ``_codec``: what both share: feeding h2, inbound flow control held back per stream
  (``pause``/``resume`` withhold WINDOW_UPDATE), bounded per-stream send buffers with
  watermarks, flood budgets, error translation.
- ``_connection.H2Wire``: ``H2Connection`` plus the RFC 9113 behaviours h2 4.4.1 lacks
  (malformed messages and excess streams as stream errors, graceful GOAWAY both ways,
  header blocks bounded in bytes, connection and stream credit returned separately,
  frame lengths refused on the frame header).
- ``_convert``: header blocks to and from RequestHead / ResponseHead / Trailers.
- ``_context.H2Context``: per-worker limits (each documented with its source) and the
  pre-built h2 configurations.

Each codec owns one ``H2Connection`` and so its own HPACK encoder and decoder: nothing
in HPACK state is shared between connections or workers.
"""
