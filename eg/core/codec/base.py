"""The two codec roles every protocol adapter implements.

A codec is a sans-I/O object confined to one worker thread. The reactor feeds it the
bytes it reads and writes out whatever ``output()`` returns (a scatter list for
``sendmsg``); the exchange talks to it only in messages (``eg.core.message``).

Backpressure uses each protocol's own lever behind ``pause``/``resume``: HTTP/1 stops
reading the socket (the reactor consults ``wants_read()``), HTTP/2 withholds
WINDOW_UPDATE, HTTP/3 withholds or bounds stream credit.
"""

from __future__ import annotations

from typing import Protocol

from eg.core.message import Message


class Codec(Protocol):
    """What server and client codecs have in common."""

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

    def send(self, msg: Message) -> None:
        """Encode one message for the peer; the bytes appear in ``output()``."""
        ...

    def pause(self, stream_id: int) -> None:
        """Stop accepting more data for ``stream_id`` (the other side is congested)."""
        ...

    def resume(self, stream_id: int) -> None:
        """Undo one ``pause``."""
        ...

    def wants_read(self) -> bool:
        """Whether the reactor should keep the socket readable."""
        ...

    def output(self) -> list[bytes | memoryview]:
        """Take the bytes queued for the peer, as a scatter list."""
        ...


class ServerCodec(Codec, Protocol):
    """Downstream role: requests in, responses out."""

    def wants_close(self) -> bool:
        """Whether the connection must close once ``output()`` is written."""
        ...


class ClientCodec(Codec, Protocol):
    """Upstream role: requests out, responses in."""

    def open_stream(self) -> int:
        """Reserve a stream for a new request and return its id."""
        ...

    def reusable(self) -> bool:
        """Whether the connection may carry another request (idle and in sync)."""
        ...
