"""The codec roles every protocol adapter implements.

A codec is a sans-I/O object confined to one worker thread. It has two faces:

- the **message side**, the same for every protocol: the exchange talks to it only in
  messages (``eg.core.message``) and the pause lever (``ServerCodec``/``ClientCodec``);
- the **wire side**, which follows the transport. Over TCP (HTTP/1.1, HTTP/2) the
  reactor feeds it the bytes it reads and writes out whatever ``output()`` returns, a
  scatter list for ``sendmsg`` (``StreamCodec``). Over QUIC (HTTP/3) it takes one
  datagram at a time with its source address and returns addressed datagrams (the
  ``H3Codec`` methods; there is one implementation, so no protocol class).

Backpressure uses each protocol's own lever behind ``pause``/``resume``: HTTP/1 stops
reading the socket (the reactor consults ``wants_read()``), HTTP/2 withholds
WINDOW_UPDATE, HTTP/3 bounds what a paused stream may still deliver.
"""

from __future__ import annotations

from typing import Protocol

from eg.core.message import Message


class MessageCodec(Protocol):
    """What the exchange needs from either side's codec."""

    def send(self, msg: Message) -> None:
        """Encode one message for the peer; its bytes appear in the wire side's output."""
        ...

    def pause(self, stream_id: int) -> None:
        """Stop accepting more data for ``stream_id`` (the other side is congested)."""
        ...

    def resume(self, stream_id: int) -> None:
        """Undo one ``pause``."""
        ...


class ServerCodec(MessageCodec, Protocol):
    """Downstream role: requests in, responses out."""


class ClientCodec(MessageCodec, Protocol):
    """Upstream role: requests out, responses in."""

    def open_stream(self) -> int:
        """Reserve a stream for a new request and return its id."""
        ...

    def reusable(self) -> bool:
        """Whether the connection may carry another request (idle and in sync)."""
        ...


class StreamCodec(Protocol):
    """The wire side over a byte stream (TCP or TLS): HTTP/1.1 and HTTP/2."""

    def feed(self, data: bytes, now: float) -> list[Message]:
        """Consume received bytes and return the messages they complete.

        Raises:
            EgError: the peer broke the protocol or a limit; reply bytes (a 4xx, a GOAWAY)
                are already queued in ``output()`` when the protocol has one.
        """
        ...

    def feed_eof(self, now: float) -> list[Message]:
        """The peer closed its sending side: end a close-delimited body or raise Broken."""
        ...

    def wants_read(self) -> bool:
        """Whether the reactor should keep the socket readable."""
        ...

    def output(self) -> list[bytes | memoryview]:
        """Take the bytes queued for the peer, as a scatter list."""
        ...
