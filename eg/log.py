"""Process logging and the per-worker access log.

Two paths, because they have different costs:

* **Process logs** (start-up, reload, errors) go through the stdlib :mod:`logging` tree.
  :func:`configure` installs one stderr handler on the root logger with one of three
  formats. Nothing here is hot, so the stdlib handler lock is fine.
* **Access logs** are written once per exchange by every worker at once. A
  ``logging.Handler`` would serialise all workers on its lock, so each worker owns an
  :class:`AccessLog` instead: :meth:`AccessLog.record` formats a line with an f-string into
  a worker-local list, and the worker calls :meth:`AccessLog.flush` once per event-loop
  iteration, which writes every pending line with one ``os.write``.

Formats, chosen by ``LB_LOG_FORMAT`` when it is set, else by the config:

    json   (default) one JSON object per line: ts (RFC 3339, UTC), level, logger, msg, then
           any ``extra`` fields; access lines add ``"type":"access"`` and their fields.
    text   ``ts level logger msg key=value ...``; a value is JSON-quoted when it is empty or
           contains a space, ``=``, a quote or a control character.
    plain  just the message (access: ``client listener "METHOD authority+path" status
           bytes_in bytes_out duration upstream``).

Request bytes (method, authority, path) are decoded as latin-1, so every byte survives.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from json.encoder import encode_basestring
from typing import Any, TextIO

__all__ = ["ENV_FORMAT", "FORMATS", "AccessLog", "configure"]

ENV_FORMAT = "LB_LOG_FORMAT"
"""Environment variable that overrides the configured log format."""

FORMATS = frozenset({"json", "text", "plain"})
"""Accepted format names."""

MAX_PENDING_LINES = 4096
"""Access lines held before :meth:`AccessLog.record` flushes by itself."""

MAX_PENDING_BYTES = 1024 * 1024
"""Access-log bytes (counted as characters) held before a forced flush: 1 MiB."""

PIPE_BUF = 4096
"""Largest write a pipe keeps atomic on Linux (pipe(7)). Workers share stderr, so when it
is a pipe or socket, a flush is cut at line boundaries into writes no larger than this and
lines from different workers never interleave mid-line."""


def _select_format(fmt: str) -> str:
    chosen = (os.environ.get(ENV_FORMAT) or fmt or "json").strip().lower()
    if chosen not in FORMATS:
        source = ENV_FORMAT if os.environ.get(ENV_FORMAT) else "log format"
        raise ValueError(f"{source} {chosen!r}: expected one of json, text, plain")
    return chosen


def _logfmt(value: str, quote: Callable[[str], str]) -> str:
    """A ``key=value`` value: bare when safe, else JSON-quoted."""
    quoted = quote(value)
    if len(quoted) == len(value) + 2 and value and " " not in value and "=" not in value:
        return value
    return quoted


# -- process logs ------------------------------------------------------------------------------


def _rfc3339(created: float) -> str:
    stamp = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


class _Formatter(logging.Formatter):
    """Base: knows which record attributes came from ``extra``."""

    def __init__(self) -> None:
        super().__init__()
        blank = logging.LogRecord("", 0, "", 0, "", None, None)
        self._standard = frozenset(vars(blank)) | {"message", "asctime", "taskName"}

    def extras(self, record: logging.LogRecord) -> dict[str, Any]:
        return {k: v for k, v in vars(record).items() if k not in self._standard}

    def trace(self, record: logging.LogRecord) -> str:
        """The exception and stack text of ``record``, or ``""``."""
        parts = []
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
            parts.append(record.exc_text)
        elif record.exc_text:
            parts.append(record.exc_text)
        if record.stack_info:
            parts.append(self.formatStack(record.stack_info))
        return "\n".join(parts)


class _JsonFormatter(_Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in self.extras(record).items():
            out.setdefault(key, value)
        trace = self.trace(record)
        if trace:
            out.setdefault("exc", trace)
        return json.dumps(out, ensure_ascii=False, default=str)


class _TextFormatter(_Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{_rfc3339(record.created)} {record.levelname.lower()} {record.name} "
            f"{record.getMessage()}"
        )
        pairs = [
            f"{k}={_logfmt(str(v), encode_basestring)}" for k, v in self.extras(record).items()
        ]
        if pairs:
            line = f"{line} {' '.join(pairs)}"
        trace = self.trace(record)
        return f"{line}\n{trace}" if trace else line


class _PlainFormatter(_Formatter):
    def format(self, record: logging.LogRecord) -> str:
        trace = self.trace(record)
        message = record.getMessage()
        return f"{message}\n{trace}" if trace else message


class _Handler(logging.StreamHandler[TextIO]):
    """The handler :func:`configure` installs; marked so a second call replaces it."""


def _level(level: str) -> int:
    name = level.strip().upper()
    name = {"WARN": "WARNING", "FATAL": "CRITICAL"}.get(name, name)
    value = logging.getLevelNamesMapping().get(name)
    if value is None:
        raise ValueError(f"log level {level!r}: expected debug, info, warning, error or critical")
    return value


def configure(fmt: str, level: str) -> None:
    """Send the whole process's logging to stderr in one format.

    Safe to call again (on reload); the previous handler is replaced.

    Args:
        fmt: ``json``, ``text`` or ``plain``; the ``LB_LOG_FORMAT`` environment
            variable, when set and non-empty, takes precedence.
        level: ``debug``, ``info``, ``warning``, ``error`` or ``critical``.

    Raises:
        ValueError: unknown format (from either source) or level.
    """
    chosen = _select_format(fmt)
    numeric = _level(level)
    formatter: logging.Formatter
    if chosen == "json":
        formatter = _JsonFormatter()
    elif chosen == "text":
        formatter = _TextFormatter()
    else:
        formatter = _PlainFormatter()
    handler = _Handler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    logging.captureWarnings(True)  # e.g. a C extension re-enabling the GIL at import


# -- access log --------------------------------------------------------------------------------


class AccessLog:
    """One worker's access log: format now, write in batches.

    Not thread-safe by design: each worker owns one and is the only thread calling it.

    Args:
        fmt: ``json``, ``text`` or ``plain``; ``LB_LOG_FORMAT`` takes precedence.
        fd: where :meth:`flush` writes (stderr by default); never closed here.
        enabled: when False, :meth:`record` returns at once and nothing is written.

    Raises:
        ValueError: unknown format.
    """

    __slots__ = (
        "_fd",
        "_json",
        "_lines",
        "_max_bytes",
        "_max_lines",
        "_millis",
        "_ms",
        "_pending",
        "_quote",
        "_sec",
        "_sec_text",
        "_split",
        "_text",
        "_ts",
        "dropped",
        "enabled",
    )

    def __init__(self, fmt: str, fd: int = 2, enabled: bool = True) -> None:
        chosen = _select_format(fmt)
        self.enabled = enabled
        """Whether :meth:`record` does anything."""
        self.dropped = 0
        """Lines lost because the file descriptor refused a write."""
        self._json = chosen == "json"
        self._text = chosen == "text"
        self._fd = fd
        self._lines: list[str] = []
        self._pending = 0
        self._max_lines = MAX_PENDING_LINES
        self._max_bytes = MAX_PENDING_BYTES
        # This worker's own callable, so no function object is shared with other workers.
        self._quote: Callable[[str], str] = partial(encode_basestring)
        self._millis = [f".{i:03d}Z" for i in range(1000)]
        self._ms = -1
        self._sec = -1
        self._sec_text = ""
        self._ts = ""
        self._split = 0
        if enabled:
            try:
                mode = os.fstat(fd).st_mode
            except OSError:
                mode = 0
            if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
                self._split = PIPE_BUF

    def _timestamp(self) -> str:
        """RFC 3339 UTC with milliseconds, reformatted at most once per millisecond."""
        ms = int(time.time() * 1000)
        if ms != self._ms:
            self._ms = ms
            sec, frac = divmod(ms, 1000)
            if sec != self._sec:
                self._sec = sec
                self._sec_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
            self._ts = self._sec_text + self._millis[frac]
        return self._ts

    def record(
        self,
        *,
        listener: str,
        client: str,
        method: bytes,
        authority: bytes,
        path: bytes,
        status: int,
        duration: float,
        bytes_in: int,
        bytes_out: int,
        upstream: str,
    ) -> None:
        """Format one access line and queue it for :meth:`flush`.

        Flushes by itself when more than :data:`MAX_PENDING_LINES` lines or
        :data:`MAX_PENDING_BYTES` are pending.

        Args:
            listener: listener name.
            client: downstream peer, ``ip:port``.
            method: request method as received.
            authority: request authority (Host / ``:authority``).
            path: request target as received.
            status: response status sent downstream (0 if none was).
            duration: seconds from request head to end of response.
            bytes_in: bytes received from downstream.
            bytes_out: bytes sent downstream.
            upstream: endpoint that served it, ``""`` if none.
        """
        if not self.enabled:
            return
        q = self._quote
        if self._json:
            line = (
                f'{{"ts":"{self._timestamp()}","level":"info","logger":"eg.access",'
                f'"msg":"access","type":"access","listener":{q(listener)},'
                f'"client":{q(client)},"method":{q(method.decode("latin-1"))},'
                f'"authority":{q(authority.decode("latin-1"))},'
                f'"path":{q(path.decode("latin-1"))},"status":{status},'
                f'"duration":{duration:.6f},"bytes_in":{bytes_in},"bytes_out":{bytes_out},'
                f'"upstream":{q(upstream)}}}\n'
            )
        elif self._text:
            line = (
                f"{self._timestamp()} info eg.access access"
                f" listener={_logfmt(listener, q)} client={_logfmt(client, q)}"
                f" method={_logfmt(method.decode('latin-1'), q)}"
                f" authority={_logfmt(authority.decode('latin-1'), q)}"
                f" path={_logfmt(path.decode('latin-1'), q)} status={status}"
                f" duration={duration:.6f} bytes_in={bytes_in} bytes_out={bytes_out}"
                f" upstream={_logfmt(upstream, q)}\n"
            )
        else:
            request = f"{method.decode('latin-1')} {authority.decode('latin-1')}"
            line = (
                f"{_logfmt(client, q) if client else '-'} {_logfmt(listener, q)}"
                f" {q(request + path.decode('latin-1'))} {status} {bytes_in} {bytes_out}"
                f" {duration:.6f} {_logfmt(upstream, q) if upstream else '-'}\n"
            )
        lines = self._lines
        lines.append(line)
        self._pending += len(line)
        if self._pending > self._max_bytes or len(lines) > self._max_lines:
            self.flush()

    @property
    def pending(self) -> int:
        """Lines waiting for :meth:`flush`."""
        return len(self._lines)

    def flush(self) -> None:
        """Write every pending line, normally with one ``os.write``.

        A write error (e.g. EPIPE, or EAGAIN on a non-blocking fd) drops the rest of the
        batch and counts it in :attr:`dropped`; logging never takes a worker down.
        """
        if not self._lines:
            return
        data = "".join(self._lines).encode("utf-8", "backslashreplace")
        self._lines = []
        self._pending = 0
        view = memoryview(data)
        split = self._split
        start = 0
        total = len(data)
        while start < total:
            end = total
            if split and total - start > split:
                cut = data.rfind(b"\n", start, start + split)
                end = cut + 1 if cut >= start else (data.find(b"\n", start + split) + 1 or total)
            try:
                while start < end:
                    start += os.write(self._fd, view[start:end])
            except OSError:
                self.dropped += data.count(b"\n", start)
                return
