"""One HTTP/3 request with libcurl (pycurl), as an independent client for eg's tests.

This script runs on a *regular* (GIL) CPython from the venv that ``scripts/peers`` builds
(its ``curl_h3_python``), never on eg's free-threaded interpreter: pycurl's wheels bundle a
libcurl built with ngtcp2 and nghttp3, which Debian's libcurl 7.88 lacks. So it imports
nothing from eg or the tests, and it must stay valid Python 3.11.

The request is made with ``CURL_HTTP_VERSION_3ONLY``: libcurl never falls back to HTTP/2 or
HTTP/1.1, so a server that does not speak HTTP/3 makes the request fail rather than pass.
TLS is verified (chain and name) against ``--ca`` or, without it, the system store.

Usage::

    curl_h3_peer.py URL [--ca FILE] [--method M] [--body-stdin] [--header "Name: value" ...]
                        [--connect-to HOST:PORT] [--timeout S]

``--body-stdin`` sends standard input, exactly, as the request body (with a
Content-Length); curl's default Content-Type and Expect headers are not sent.
``--connect-to`` connects there instead of the URL's host and port (SNI, certificate name and
``:authority`` still come from the URL). It prints one JSON object::

    {"status": 200, "headers": [["name", "value"], ...], "body_b64": "...",
     "http_version": "3", "error": null, "libcurl": "PycURL/7.49.0 libcurl/8.23.0 ..."}

``status`` is 0 when no response head arrived; ``headers`` are the final response's, in
order, names lowercased (1xx heads are dropped); ``error`` is libcurl's error (code and
message) when the transfer failed, even after the head. It exits 0 whatever happened on the
wire; only usage errors exit non-zero (2).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
from collections.abc import Sequence
from typing import Any

import pycurl  # type: ignore[import-not-found, import-untyped, unused-ignore]

# CURLINFO_HTTP_VERSION values (curl.h): what libcurl reports having used.
_HTTP_VERSIONS = {
    pycurl.CURL_HTTP_VERSION_1_0: "1.0",
    pycurl.CURL_HTTP_VERSION_1_1: "1.1",
    pycurl.CURL_HTTP_VERSION_2_0: "2",
    pycurl.CURL_HTTP_VERSION_3: "3",
}


class _Head:
    """Collects response header lines; a new status line (after a 1xx) starts over."""

    def __init__(self) -> None:
        self.headers: list[list[str]] = []

    def line(self, raw: bytes) -> None:
        text = raw.decode("latin-1").rstrip("\r\n")
        if text.startswith("HTTP/"):
            self.headers = []
        elif ":" in text:
            name, _, value = text.partition(":")
            self.headers.append([name.strip().lower(), value.strip()])


def request(
    url: str,
    *,
    ca: str | None,
    method: str,
    body: bytes | None,
    headers: Sequence[str],
    connect_to: str | None,
    timeout: float,
) -> dict[str, Any]:
    """Perform one HTTP/3-only request and describe what came back (see the module doc)."""
    curl: Any = pycurl.Curl()
    out = io.BytesIO()
    head = _Head()
    error: str | None = None
    try:
        curl.setopt(pycurl.URL, url)
        curl.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_3ONLY)
        curl.setopt(pycurl.WRITEDATA, out)
        curl.setopt(pycurl.HEADERFUNCTION, head.line)
        curl.setopt(pycurl.NOSIGNAL, 1)
        curl.setopt(pycurl.NOPROXY, "*")  # loopback tests never go through a proxy
        curl.setopt(pycurl.TIMEOUT_MS, int(timeout * 1000))
        curl.setopt(pycurl.SSL_VERIFYPEER, 1)
        curl.setopt(pycurl.SSL_VERIFYHOST, 2)
        if ca is not None:
            curl.setopt(pycurl.CAINFO, ca)
        if connect_to is not None:
            curl.setopt(pycurl.CONNECT_TO, [f"::{connect_to}"])
        extra = list(headers)
        if method == "HEAD":
            curl.setopt(pycurl.NOBODY, 1)
        elif body is not None:
            curl.setopt(pycurl.POSTFIELDSIZE_LARGE, len(body))
            curl.setopt(pycurl.POSTFIELDS, body)  # binary-safe with the size set first
            curl.setopt(pycurl.CUSTOMREQUEST, method)
            # A bare "Name:" makes curl drop a header it would add itself.
            given = {line.split(":", 1)[0].strip().lower() for line in extra}
            dropped = ("Content-Type", "Expect")
            extra += [f"{name}:" for name in dropped if name.lower() not in given]
        elif method != "GET":
            curl.setopt(pycurl.CUSTOMREQUEST, method)
        if extra:
            curl.setopt(pycurl.HTTPHEADER, extra)
        try:
            curl.perform()
        except pycurl.error as exc:
            code, message = exc.args
            error = f"curl error {code}: {message}"
        status = int(curl.getinfo(pycurl.RESPONSE_CODE))
        used = curl.getinfo(pycurl.INFO_HTTP_VERSION)
    finally:
        curl.close()
    return {
        "status": status,
        "headers": head.headers if status else [],
        "body_b64": base64.b64encode(out.getvalue()).decode("ascii"),
        "http_version": _HTTP_VERSIONS.get(used, str(used)),
        "error": error,
        "libcurl": pycurl.version,
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line, make the request, print the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--ca", help="CA file to verify the server with (default: system)")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--body-stdin", action="store_true", help="send stdin as the body")
    parser.add_argument("--header", action="append", default=[], help='"Name: value"')
    parser.add_argument("--connect-to", help="HOST:PORT to connect to instead of the URL's")
    parser.add_argument("--timeout", type=float, default=20.0, help="whole transfer, seconds")
    args = parser.parse_args(argv)
    body = sys.stdin.buffer.read() if args.body_stdin else None
    result = request(
        args.url,
        ca=args.ca,
        method=args.method.upper(),
        body=body,
        headers=args.header,
        connect_to=args.connect_to,
        timeout=args.timeout,
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
