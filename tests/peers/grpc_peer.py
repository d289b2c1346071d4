"""A real gRPC server and client (grpcio), to test eg against an independent HTTP/2 stack.

This script runs on a *regular* (GIL) CPython from the venv that ``scripts/peers`` builds,
never on eg's free-threaded interpreter: grpcio has no free-threaded wheel. So it imports
nothing from eg or the tests, and it must stay valid Python 3.11.

There is no protoc step. The service is registered with ``grpc.method_handlers_generic_handler``
and every (de)serializer is the identity, so messages are raw bytes on the wire (inside the
usual 5-byte gRPC framing). That keeps the peer free of generated code while still
exercising what a proxy must get right: HTTP/2 streams both ways, flow control, large
messages, trailers (``grpc-status``, ``grpc-message`` and custom ones) and deadlines.

Service ``eg.test.Echo``:

- ``Unary``: echoes the request and sets the trailer ``x-eg-trailer: done``. A request
  ``b"status:N"`` instead fails with status code N and the message ``"asked for N"``
  (INVALID_ARGUMENT if N is 0 or no status code).
- ``ServerStream``: the request is ASCII ``"N:SIZE"``; sends N messages of SIZE bytes,
  message i being :func:`payload` (i, SIZE).
- ``ClientStream``: answers ASCII ``"count:totalbytes:sha256hex"`` over all messages
  received, concatenated.
- ``Bidi``: echoes each message as it arrives. The client sends the next message only once
  the previous echo is back, so a proxy that buffers a whole stream deadlocks and fails
  with DEADLINE_EXCEEDED rather than passing.

Usage::

    grpc_peer.py serve --port 0 [--host H] [--tls CERT KEY]     prints "ready PORT"
    grpc_peer.py call --target HOST:PORT [--tls-ca CA] [--authority NAME] [--timeout S]
                      [--metadata K=V ...] KIND ARGS...
    grpc_peer.py all --target HOST:PORT [same options]

``call`` kinds: ``unary TEXT`` (``size:N`` sends N pattern bytes; ``status:N`` asks for an
error), ``server_stream N SIZE``, ``client_stream N SIZE``, ``bidi N SIZE``. It prints one
JSON object: ``code`` (status name), ``details``, ``messages`` (a summary per response
message), ``initial`` and ``trailers`` (metadata), and ``match``: whether the answer is
exactly what this service must give for that request. ``all`` runs a fixed set of small,
large (1 MiB messages) and long (100 messages) calls and prints one object per line. Both
exit 0 whatever the gRPC status is; only usage errors exit non-zero (2).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any, Protocol

import grpc

SERVICE = "eg.test.Echo"
TRAILER = ("x-eg-trailer", "done")
# gRPC's default receive limit is 4 MiB; the large cases send 1 MiB messages, and a proxy
# test may want more, so both sides accept up to this.
MAX_MESSAGE = 64 << 20
# Worker threads of the server: each open streaming call holds one for its whole life.
SERVER_THREADS = 32
# The pattern repeats with this period (a prime, so the rotation differs for each index
# below it and a misplaced or shifted chunk does not line up by accident).
PATTERN_PERIOD = 251
# Printable ASCII responses up to this many bytes are shown as text in a summary, too
# (enough for any ClientStream answer: two integers and 64 hex digits).
SHOW_TEXT = 128
MiB = 1 << 20

Summary = dict[str, Any]
Result = dict[str, Any]


def _identity(data: bytes) -> bytes:
    """(De)serialize raw bytes: the service has no protobuf schema, on purpose."""
    return data


def payload(index: int, size: int) -> bytes:
    """Return message ``index`` of ``size`` bytes: 0..250 rotated by ``index``.

    Deterministic, so the receiving side can check every byte without the sender telling
    it what was sent, and different per index, so reordered messages are caught.
    """
    start = index % PATTERN_PERIOD
    block = bytes(range(start, PATTERN_PERIOD)) + bytes(range(start))
    return (block * (size // PATTERN_PERIOD + 1))[:size]


def _status_codes() -> dict[int, grpc.StatusCode]:
    """Map wire status numbers to grpc.StatusCode (its value is a (number, name) pair)."""
    return {code.value[0]: code for code in grpc.StatusCode}


def _digest(messages: Iterable[bytes]) -> bytes:
    """The ClientStream answer for these messages: ``count:totalbytes:sha256hex``."""
    count = total = 0
    sha = hashlib.sha256()
    for message in messages:
        count += 1
        total += len(message)
        sha.update(message)
    return f"{count}:{total}:{sha.hexdigest()}".encode()


# -- server --------------------------------------------------------------------------------


def _unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    """Echo the request, or fail with the status it asks for (``status:N``)."""
    context.set_trailing_metadata((TRAILER,))
    if request.startswith(b"status:"):
        text = request[len(b"status:") :].decode("ascii", "replace")
        number = int(text) if text.isdigit() else -1
        code = _status_codes().get(number)
        if code is None or code is grpc.StatusCode.OK:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"no error status {text!r}")
        else:
            context.abort(code, f"asked for {number}")
    return request


def _server_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    """Send ``N`` pattern messages of ``SIZE`` bytes for the request ``N:SIZE``."""
    try:
        count, size = (int(part) for part in request.decode("ascii").split(":"))
    except ValueError:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "expected N:SIZE")
    for index in range(count):
        yield payload(index, size)


def _client_stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
    """Summarize everything received, so the client can check nothing was lost."""
    return _digest(requests)


def _bidi(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
    """Echo each message as soon as it arrives (no buffering of the stream)."""
    yield from requests


def _handler() -> grpc.GenericRpcHandler:
    """The Echo service as a generic handler: no generated code, raw bytes both ways."""
    codec: dict[str, Callable[[bytes], bytes]] = {
        "request_deserializer": _identity,
        "response_serializer": _identity,
    }
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary, **codec),
            "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream, **codec),
            "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream, **codec),
            "Bidi": grpc.stream_stream_rpc_method_handler(_bidi, **codec),
        },
    )


def serve(host: str, port: int, tls: Sequence[str] | None) -> None:
    """Serve until SIGTERM/SIGINT; print ``ready PORT`` once listening (port 0 allowed)."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=SERVER_THREADS),
        handlers=[_handler()],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            # Without this a second server could silently share an explicit port.
            ("grpc.so_reuseport", 0),
        ],
    )
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if tls:
        cert, key = (Path(path).read_bytes() for path in tls)
        bound = server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
    else:
        bound = server.add_insecure_port(address)
    if not bound:
        sys.exit(f"grpc_peer: could not listen on {address}")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    print(f"ready {bound}", flush=True)
    while not stop.wait(0.5):
        pass
    server.stop(grace=0.5).wait()


# -- client --------------------------------------------------------------------------------


def _text(data: bytes | str) -> str:
    """Metadata and short messages as JSON-safe text (binary metadata is bytes)."""
    return data if isinstance(data, str) else data.decode("latin-1")


def _summary(message: bytes) -> Summary:
    """Describe one response message: length, hash prefix, and the text when short."""
    out: Summary = {"len": len(message), "sha256": hashlib.sha256(message).hexdigest()[:16]}
    if len(message) <= SHOW_TEXT and message.isascii() and message.decode().isprintable():
        out["data"] = message.decode()
    return out


def _metadata(pairs: Iterable[tuple[str, bytes | str]] | None) -> dict[str, str]:
    """Metadata pairs as a dict (repeated keys keep the last value)."""
    return {key: _text(value) for key, value in pairs or ()}


class CallStatus(Protocol):
    """How a finished call reports: ``grpc.Call``, and the ``grpc.RpcError`` raised for a
    failed call (at run time that error is a Call too, though grpc does not declare it)."""

    def code(self) -> grpc.StatusCode | None: ...
    def details(self) -> str | None: ...
    def initial_metadata(self) -> Any: ...
    def trailing_metadata(self) -> Any: ...


class Client:
    """One channel to the target; each method performs one call and returns its result.

    Results are plain dicts that become the JSON output, so a test driving this script
    through a proxy sees exactly what a direct call sees.
    """

    def __init__(
        self,
        *,
        target: str,
        tls_ca: str | None = None,
        authority: str | None = None,
        timeout: float = 10.0,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            # Loopback tests must never go through an http_proxy from the environment.
            ("grpc.enable_http_proxy", 0),
        ]
        if authority:
            options.append(("grpc.default_authority", authority))
        if tls_ca is not None:
            with open(tls_ca, "rb") as file:
                credentials = grpc.ssl_channel_credentials(root_certificates=file.read())
            if authority:
                options.append(("grpc.ssl_target_name_override", authority))
            self.channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.timeout = timeout
        self.metadata = tuple(metadata)

    def close(self) -> None:
        """Close the channel (its connection and threads)."""
        self.channel.close()

    def _method(self, name: str) -> str:
        return f"/{SERVICE}/{name}"

    def _result(
        self, kind: str, call: CallStatus, responses: list[bytes], match: bool, started: float
    ) -> Result:
        code = call.code()
        return {
            "kind": kind,
            "code": code.name if code is not None else "UNKNOWN",
            "details": call.details() or "",
            "messages": [_summary(message) for message in responses],
            "initial": _metadata(call.initial_metadata()),
            "trailers": _metadata(call.trailing_metadata()),
            "match": match,
            "elapsed_ms": round((time.monotonic() - started) * 1000, 1),
        }

    def unary(self, request: bytes) -> Result:
        """Call Unary; ``match`` means the echo came back, or the asked-for error did."""
        started = time.monotonic()
        stub = self.channel.unary_unary(
            self._method("Unary"), request_serializer=_identity, response_deserializer=_identity
        )
        asked: grpc.StatusCode | None = None
        if request.startswith(b"status:") and request[7:].isdigit():
            asked = _status_codes().get(int(request[7:]))
        try:
            response, call = stub.with_call(request, timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as error:
            failed: Any = error  # a grpc.Call at run time (see CallStatus)
            match = (
                asked is not None
                and failed.code() is asked
                and failed.details() == f"asked for {int(request[7:])}"
            )
            return self._result("unary", failed, [], match, started)
        match = asked is None and response == request
        return self._result("unary", call, [response], match, started)

    def server_stream(self, count: int, size: int) -> Result:
        """Call ServerStream for ``count`` messages of ``size`` bytes; check every byte."""
        started = time.monotonic()
        stub = self.channel.unary_stream(
            self._method("ServerStream"),
            request_serializer=_identity,
            response_deserializer=_identity,
        )
        call = stub(f"{count}:{size}".encode(), timeout=self.timeout, metadata=self.metadata)
        responses: list[bytes] = []
        # On failure the status and trailers are read from the call below.
        with contextlib.suppress(grpc.RpcError):
            for response in call:
                responses.append(response)
        expected = [payload(index, size) for index in range(count)]
        match = call.code() is grpc.StatusCode.OK and responses == expected
        return self._result("server_stream", call, responses, match, started)

    def client_stream(self, count: int, size: int) -> Result:
        """Send ``count`` messages of ``size`` bytes; check the server saw them all."""
        started = time.monotonic()
        stub = self.channel.stream_unary(
            self._method("ClientStream"),
            request_serializer=_identity,
            response_deserializer=_identity,
        )
        requests = [payload(index, size) for index in range(count)]
        try:
            response, call = stub.with_call(
                iter(requests), timeout=self.timeout, metadata=self.metadata
            )
        except grpc.RpcError as error:
            failed: Any = error  # a grpc.Call at run time (see CallStatus)
            return self._result("client_stream", failed, [], False, started)
        return self._result(
            "client_stream", call, [response], response == _digest(requests), started
        )

    def bidi(self, count: int, size: int) -> Result:
        """Ping-pong ``count`` messages: send one, wait for its echo, then the next."""
        started = time.monotonic()
        stub = self.channel.stream_stream(
            self._method("Bidi"), request_serializer=_identity, response_deserializer=_identity
        )
        # Holds at most one message: the next one is queued only after an echo arrives.
        outbox: queue.Queue[bytes | None] = queue.Queue(maxsize=2)

        def requests() -> Iterator[bytes]:
            while (message := outbox.get()) is not None:
                yield message

        sent = [payload(index, size) for index in range(count)]
        responses: list[bytes] = []
        outbox.put(sent[0] if sent else None)
        call = stub(requests(), timeout=self.timeout, metadata=self.metadata)
        try:
            for response in call:
                responses.append(response)
                outbox.put(sent[len(responses)] if len(responses) < count else None)
        except grpc.RpcError:
            pass  # the status and trailers are read from the call below
        finally:
            # Unblock the request thread whatever happened (it may be gone already).
            with contextlib.suppress(queue.Full):
                outbox.put_nowait(None)
        match = call.code() is grpc.StatusCode.OK and responses == sent
        return self._result("bidi", call, responses, match, started)

    def run(self, kind: str, args: Sequence[str]) -> Result:
        """Perform one call described on the command line (see :func:`parse_call`)."""
        if kind == "unary":
            return self.unary(_unary_request(args[0]))
        count, size = int(args[0]), int(args[1])
        method: Callable[[int, int], Result] = getattr(self, kind)
        return method(count, size)


def _unary_request(arg: str) -> bytes:
    """``size:N`` means N pattern bytes; anything else is sent as it is (UTF-8)."""
    if arg.startswith("size:") and arg[5:].isdigit():
        return payload(0, int(arg[5:]))
    return arg.encode()


# The ``all`` suite: (name, kind, args). Small, large (1 MiB messages) and long (100
# messages) for each kind, plus one requested error status.
ALL_CASES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("unary_small", "unary", ("hello",)),
    ("unary_large", "unary", (f"size:{MiB}",)),
    ("unary_status", "unary", ("status:7",)),
    ("server_stream_small", "server_stream", ("3", "16")),
    ("server_stream_long", "server_stream", ("100", "1024")),
    ("server_stream_large", "server_stream", ("2", str(MiB))),
    ("client_stream_small", "client_stream", ("3", "16")),
    ("client_stream_long", "client_stream", ("100", "1024")),
    ("client_stream_large", "client_stream", ("2", str(MiB))),
    ("bidi_small", "bidi", ("3", "16")),
    ("bidi_long", "bidi", ("100", "1024")),
    ("bidi_large", "bidi", ("2", str(MiB))),
)

# Positional arguments each call kind takes (after the kind itself).
KIND_ARGS = {
    "unary": ("TEXT",),
    "server_stream": ("N", "SIZE"),
    "client_stream": ("N", "SIZE"),
    "bidi": ("N", "SIZE"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grpc_peer.py", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve_p = sub.add_parser("serve", help="serve eg.test.Echo until killed")
    serve_p.add_argument("--port", type=int, required=True, help="0 picks a free port")
    serve_p.add_argument("--host", default="127.0.0.1")
    serve_p.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    for name in ("call", "all"):
        client_p = sub.add_parser(name, help=f"{name}: see the module docstring")
        client_p.add_argument("--target", required=True, help="HOST:PORT")
        client_p.add_argument("--tls-ca", help="CA file: use TLS and trust this CA")
        client_p.add_argument("--authority", help=":authority (and TLS name to check)")
        client_p.add_argument("--timeout", type=float, default=10.0, help="deadline, seconds")
        client_p.add_argument(
            "--metadata", action="append", default=[], metavar="KEY=VALUE", help="repeatable"
        )
        if name == "call":
            client_p.add_argument("kind", choices=sorted(KIND_ARGS))
            client_p.add_argument("args", nargs="*")
    return parser


def _check_call_args(parser: argparse.ArgumentParser, kind: str, args: Sequence[str]) -> None:
    """Reject a wrong argument count or non-numeric N/SIZE as a usage error (exit 2)."""
    wanted = KIND_ARGS[kind]
    if len(args) != len(wanted):
        parser.error(f"{kind} takes {' '.join(wanted)}")
    if kind != "unary" and not all(arg.isdigit() for arg in args):
        parser.error(f"{kind}: N and SIZE must be non-negative integers")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0, or 2 for usage errors via argparse)."""
    parser = _parser()
    ns = parser.parse_args(argv)
    if ns.command == "serve":
        serve(ns.host, ns.port, ns.tls)
        return 0
    metadata: list[tuple[str, str]] = []
    for item in ns.metadata:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--metadata wants KEY=VALUE, not {item!r}")
        metadata.append((key.lower(), value))
    if ns.command == "call":
        _check_call_args(parser, ns.kind, ns.args)
    client = Client(
        target=ns.target,
        tls_ca=ns.tls_ca,
        authority=ns.authority,
        timeout=ns.timeout,
        metadata=metadata,
    )
    try:
        if ns.command == "call":
            print(json.dumps(client.run(ns.kind, ns.args)), flush=True)
        else:
            for name, kind, args in ALL_CASES:
                result = {"name": name, **client.run(kind, args)}
                print(json.dumps(result), flush=True)
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
