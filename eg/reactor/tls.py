"""TLS for listeners and upstreams: contexts built from config, non-blocking transports.

Contexts are built in the main thread before any worker starts (a bad certificate or key
stops start-up with a clear message, never half-up). Defaults: TLS 1.2 and 1.3, ECDHE
key exchange with AEAD ciphers only for TLS 1.2 (TLS 1.3 suites are all AEAD), no
compression or renegotiation; ``tls13_only`` raises the floor to 1.3. With several
certificates the first is the default and the others are chosen by SNI, matched
against each certificate's subjectAltName DNS names (``*.`` wildcards included).

The transport drives ``ssl.SSLSocket`` in non-blocking mode from the worker's epoll
loop: the handshake advances on readiness, ``recv``/``send`` raise SSLWant* instead of
blocking, and records the TLS layer has already decrypted are drained (``pending()``)
before waiting on epoll again.

Upstream contexts verify the endpoint's chain (the configured CA file, else the system
store) and its name (the configured ``server_name``, else the endpoint host) unless the
cluster sets ``verify = false``. A failed check ends the connect with the
``ssl.SSLCertVerificationError`` that says why; the upstream driver reports it as the
``tls_verify`` backend error.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from eg.core.codec.h3._context import check_quic_certificate
from eg.core.config import Config, TlsConfig, UpstreamTlsConfig
from eg.core.sni import name_table, pick
from eg.reactor.loop import EPOLLIN, EPOLLOUT, EPOLLRDHUP, Loop
from eg.reactor.stream import RECV_SIZE, StreamProtocol, Transport

#: TLS 1.2 suites allowed: forward secret (ECDHE) and authenticated encryption only.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
#: ALPN offered by HTTP/1.1-over-TLS listeners (and h1s upstreams).
ALPN_H1 = ("http/1.1",)
#: ALPN of ``https`` listeners: HTTP/2 preferred, HTTP/1.1 for the clients without it.
ALPN_HTTPS = ("h2", "http/1.1")
#: ALPN offered to h2 upstreams (anything else negotiated fails the connect).
ALPN_H2 = ("h2",)
#: Plaintext bytes handed to SSL_write at once (a few TLS records).
SEND_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True)
class ServerTls:
    """A listener's TLS setup: the default context and the SNI name table."""

    context: ssl.SSLContext
    names: tuple[tuple[str, ssl.SSLContext], ...]


def _context(cert: str, key: str, *, tls13_only: bool, alpn: Sequence[str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if tls13_only else ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(list(alpn))
    return ctx


def dns_names(cert: str) -> list[str]:
    """subjectAltName DNS names of a PEM certificate (lowercase)."""
    decoded = ssl._ssl._test_decode_cert(cert)  # type: ignore[attr-defined]
    return [v.lower() for k, v in decoded.get("subjectAltName", ()) if k == "DNS"]


def server_tls(config: TlsConfig, *, alpn: Sequence[str]) -> ServerTls:
    """Build a listener's contexts.

    Raises:
        OSError / ssl.SSLError: a certificate or key cannot be loaded.
    """
    contexts = [
        (_context(c.cert, c.key, tls13_only=config.tls13_only, alpn=alpn), c.cert)
        for c in config.certificates
    ]
    named = [(ctx, dns_names(cert)) for ctx, cert in contexts]
    names = tuple((name, ctx) for ctx, ctx_names in named for name in ctx_names)
    default = contexts[0][0]
    table = name_table(named)

    def on_sni(sock: ssl.SSLObject | ssl.SSLSocket, name: str | None,
               _ctx: ssl.SSLContext) -> None:
        if not name:
            return
        sock.eg_sni = name.lower()  # type: ignore[union-attr]  # read back by server_name()
        chosen = pick(table, name)
        if chosen is not None and chosen is not default:
            sock.context = chosen

    for ctx, _ in contexts:
        ctx.sni_callback = on_sni
    return ServerTls(context=default, names=names)


def client_tls(config: UpstreamTlsConfig, *, alpn: Sequence[str]) -> ssl.SSLContext:
    """An upstream context (see the module docstring).

    Raises:
        OSError / ssl.SSLError: the CA file cannot be loaded.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if config.verify:
        if config.ca_file:
            ctx.load_verify_locations(cafile=config.ca_file)
        else:
            ctx.load_default_certs()
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(list(alpn))
    return ctx


def upstream_transport(
    loop: Loop, sock: socket.socket, owner: StreamProtocol, *, high: int, limit: int,
    tls: ssl.SSLContext | None, server_name: str,
) -> Transport:
    """The transport of a new upstream connection: plain TCP, or TCP then TLS."""
    if tls is None:
        return Transport(loop, sock, owner, high=high, limit=limit, connecting=True)
    return ClientTlsTransport(loop, sock, owner, high=high, limit=limit, context=tls,
                              server_name=server_name)


def listener_alpn(protocol: str) -> tuple[str, ...]:
    """ALPN a TLS listener of ``protocol`` offers."""
    return ALPN_HTTPS if protocol == "https" else ALPN_H1


def check_tls(config: Config) -> str | None:
    """Build every TLS context of ``config`` once; the first failure, or None.

    Run in the main thread before start-up and before a reload is accepted, so a bad
    certificate, key or CA file is reported at once instead of by every worker.
    """
    for lc in config.listeners:
        if lc.tls is not None:
            try:
                server_tls(lc.tls, alpn=listener_alpn(lc.protocol))
                if lc.protocol == "quic":
                    for cert in lc.tls.certificates:
                        check_quic_certificate(cert.cert, cert.key)
            except (OSError, ssl.SSLError, ValueError) as exc:
                return f"listener {lc.name}: cannot load its certificates: {exc}"
    for cc in config.clusters:
        if cc.tls is not None:
            try:
                client_tls(cc.tls, alpn=ALPN_H1)
            except (OSError, ssl.SSLError) as exc:
                return f"cluster {cc.name}: cannot load its CA file: {exc}"
    return None


class TlsTransport(Transport):
    """A server-side TLS connection on the worker's loop (see the module docstring)."""

    __slots__ = ()

    sock: ssl.SSLSocket

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.handshaking = True

    def on_events(self, mask: int) -> None:
        if self.handshaking:
            self._handshake()
            return
        super().on_events(mask)

    def _handshake(self) -> None:
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._set_mask(EPOLLIN | EPOLLRDHUP)
            return
        except ssl.SSLWantWriteError:
            self._set_mask(EPOLLOUT)
            return
        except (ssl.SSLError, OSError) as exc:
            self._teardown(exc)
            return
        self.handshaking = False
        self._mask = -1  # force the next update to apply
        self._update_mask()
        made = getattr(self.protocol, "connection_made", None)
        if made is not None:
            made()
        if not self.closed:
            self._read()  # the client's first request may have come with its Finished

    def _set_mask(self, mask: int) -> None:
        if mask != self._mask and not self.closed:
            self._mask = mask
            self.loop.modify(self.fd, mask)

    def _update_mask(self) -> None:
        if not self.handshaking:
            super()._update_mask()

    def _read(self) -> None:
        if self.lingering:
            # shutdown() dropped the TLS layer: what arrives now is discarded unread.
            self._discard()
            return
        sock = self.sock
        while not self.closed and self._reading:
            try:
                data = sock.recv(RECV_SIZE)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except ssl.SSLZeroReturnError:
                data = b""
            except OSError as exc:
                self._teardown(exc)
                return
            if not data:
                self._reading = False
                self._update_mask()
                self.protocol.eof_received()
                return
            self.protocol.data_received(data)
            if not sock.pending():
                return

    def _send(self, chunks: list[bytes | memoryview] | list[memoryview]) -> int:
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if len(data) > SEND_SIZE:
            data = memoryview(data)[:SEND_SIZE]
        try:
            return self.sock.send(data)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return 0

    def _teardown(self, exc: BaseException | None) -> None:
        if not self.closed and exc is None and not self.handshaking:
            # Best effort close_notify; the peer may already be gone.
            with contextlib.suppress(OSError, ValueError):
                self.sock.unwrap()
        super()._teardown(exc)

    def abort(self) -> None:
        self.handshaking = True  # an abort sends no close_notify: the peer must see an error
        super().abort()

    @property
    def server_name(self) -> str | None:
        """The SNI name the client sent (lowercase), if any."""
        name = getattr(self.sock, "eg_sni", None)
        return name if isinstance(name, str) else None

    @property
    def alpn(self) -> str | None:
        """The application protocol ALPN settled on, if any."""
        return self.sock.selected_alpn_protocol()


class ClientTlsTransport(TlsTransport):
    """An upstream TLS connection: TCP connect, then the client handshake.

    The socket is wrapped once the TCP connect has completed (an ``SSLSocket`` made on
    a socket still connecting has no TLS state to handshake with).
    """

    __slots__ = ("_context", "_server_name")

    def __init__(
        self,
        loop: Loop,
        sock: socket.socket,
        protocol: StreamProtocol,
        *,
        high: int,
        limit: int,
        context: ssl.SSLContext,
        server_name: str,
    ) -> None:
        super().__init__(loop, sock, protocol, high=high, limit=limit, connecting=True)
        self._context = context
        self._server_name = server_name

    def on_events(self, mask: int) -> None:
        if self.connecting:
            self._finish_connect()
            return
        super().on_events(mask)

    def _finish_connect(self) -> None:
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self.connecting = False
        if err:
            self._teardown(ConnectionRefusedError(err, errno.errorcode.get(err, str(err))))
            return
        try:
            self.sock = self._context.wrap_socket(
                self.sock, server_side=False, server_hostname=self._server_name,
                do_handshake_on_connect=False,
            )
        except (ssl.SSLError, OSError, ValueError) as exc:
            self._teardown(exc)
            return
        self._handshake()
