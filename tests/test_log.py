"""eg.log: process log formats, LB_LOG_FORMAT, and the batched per-worker access log."""

from __future__ import annotations

import json
import logging
import os
import re
import timeit
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from eg.log import ENV_FORMAT, MAX_PENDING_LINES, AccessLog, configure

RFC3339_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")

FIELDS: dict[str, Any] = {
    "listener": "web",
    "client": "192.0.2.7:50123",
    "method": b"GET",
    "authority": b"example.com:8443",
    "path": b"/a/b?c=d",
    "status": 200,
    "duration": 0.0125,
    "bytes_in": 12,
    "bytes_out": 3456,
    "upstream": "10.0.0.2:80",
}

# Quotes, backslashes, every control character, DEL and high latin-1 bytes.
NASTY_PATH = b'/q"uo\\te\r\n\t' + bytes(range(32)) + b"\x7f\x80\xe9\xff end"


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_FORMAT, raising=False)


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    os.set_blocking(r, False)
    yield r, w
    os.close(r)
    os.close(w)


@pytest.fixture
def file_fd(tmp_path: Any) -> Iterator[tuple[int, int]]:
    """(reader, writer) on a regular file, for batches bigger than a pipe holds."""
    path = tmp_path / "access.log"
    w = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    r = os.open(path, os.O_RDONLY)
    yield r, w
    os.close(r)
    os.close(w)


def read_all(fd: int) -> bytes:
    out = b""
    while True:
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def lines_of(fd: int) -> list[str]:
    data = read_all(fd).decode("utf-8")
    assert data.endswith("\n")
    return data.splitlines()


# -- access log ------------------------------------------------------------------------------


def test_json_access_line(pipe: tuple[int, int]) -> None:
    r, w = pipe
    log = AccessLog("json", fd=w)
    log.record(**FIELDS)
    assert read_all(r) == b""  # nothing is written before flush
    log.flush()
    (line,) = lines_of(r)
    obj = json.loads(line)
    assert RFC3339_MS.fullmatch(obj.pop("ts"))
    assert obj == {
        "level": "info",
        "logger": "eg.access",
        "msg": "access",
        "type": "access",
        "listener": "web",
        "client": "192.0.2.7:50123",
        "method": "GET",
        "authority": "example.com:8443",
        "path": "/a/b?c=d",
        "status": 200,
        "duration": 0.0125,
        "bytes_in": 12,
        "bytes_out": 3456,
        "upstream": "10.0.0.2:80",
    }


def test_json_escaping_round_trips(pipe: tuple[int, int]) -> None:
    r, w = pipe
    log = AccessLog("json", fd=w)
    log.record(
        **{
            **FIELDS,
            "path": NASTY_PATH,
            "method": b'G"\\',
            "authority": b"\n",
            "listener": 'l"\n',
            "client": "",
            "upstream": "\\",
        }
    )
    log.flush()
    (line,) = lines_of(r)  # a newline in a field never splits the record
    obj = json.loads(line)
    assert obj["path"] == NASTY_PATH.decode("latin-1")
    assert obj["method"] == 'G"\\'
    assert obj["authority"] == "\n"
    assert obj["listener"] == 'l"\n'
    assert obj["client"] == ""
    assert obj["upstream"] == "\\"


def test_json_timestamp_is_utc(pipe: tuple[int, int]) -> None:
    r, w = pipe
    log = AccessLog("json", fd=w)
    log.record(**FIELDS)
    log.flush()
    stamp = json.loads(lines_of(r)[0])["ts"]
    parsed = datetime.fromisoformat(stamp)
    assert parsed.utcoffset() is not None
    assert parsed.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert abs(parsed.timestamp() - datetime.now().timestamp()) < 60


def parse_logfmt(line: str) -> tuple[list[str], dict[str, str]]:
    """Split ``ts level logger msg k=v ...``; quoted values are JSON strings."""
    token = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')
    head = line.split(" ", 4)[:4]
    rest = line.split(" ", 4)[4]
    fields: dict[str, str] = {}
    for m in token.finditer(rest):
        raw = m.group(2)
        fields[m.group(1)] = json.loads(raw) if raw.startswith('"') else raw
    return head, fields


def test_text_access_line(pipe: tuple[int, int]) -> None:
    r, w = pipe
    log = AccessLog("text", fd=w)
    log.record(**FIELDS)
    log.flush()
    (line,) = lines_of(r)
    head, fields = parse_logfmt(line)
    assert RFC3339_MS.fullmatch(head[0])
    assert head[1:] == ["info", "eg.access", "access"]
    assert fields == {
        "listener": "web",
        "client": "192.0.2.7:50123",
        "method": "GET",
        "authority": "example.com:8443",
        "path": "/a/b?c=d",
        "status": "200",
        "duration": "0.012500",
        "bytes_in": "12",
        "bytes_out": "3456",
        "upstream": "10.0.0.2:80",
    }


def test_text_quotes_awkward_values(pipe: tuple[int, int]) -> None:
    r, w = pipe
    log = AccessLog("text", fd=w)
    log.record(
        **{**FIELDS, "path": NASTY_PATH, "authority": b"a b", "upstream": "", "listener": "k=v"}
    )
    log.flush()
    (line,) = lines_of(r)
    _, fields = parse_logfmt(line)
    assert fields["path"] == NASTY_PATH.decode("latin-1")
    assert fields["authority"] == "a b"
    assert fields["upstream"] == ""
    assert fields["listener"] == "k=v"
    assert ' upstream=""' in line


def test_plain_access_line(pipe: tuple[int, int]) -> None:
    r, w = pipe
    log = AccessLog("plain", fd=w)
    log.record(**FIELDS)
    log.record(**{**FIELDS, "path": b'/x"\n', "upstream": "", "client": ""})
    log.flush()
    first, second = lines_of(r)
    assert first == (
        '192.0.2.7:50123 web "GET example.com:8443/a/b?c=d" 200 12 3456 0.012500 10.0.0.2:80'
    )
    assert second == '- web "GET example.com:8443/x\\"\\n" 200 12 3456 0.012500 -'


def test_flush_writes_everything_once(pipe: tuple[int, int]) -> None:
    r, w = pipe
    log = AccessLog("json", fd=w)
    for i in range(100):
        log.record(**{**FIELDS, "status": i})
    assert log.pending == 100
    log.flush()
    assert log.pending == 0
    assert [json.loads(line)["status"] for line in lines_of(r)] == list(range(100))
    log.flush()  # nothing pending: no write
    assert read_all(r) == b""


def test_bounded_by_line_count(file_fd: tuple[int, int]) -> None:
    r, w = file_fd
    log = AccessLog("plain", fd=w)
    for _ in range(MAX_PENDING_LINES):
        log.record(**FIELDS)
    assert log.pending == MAX_PENDING_LINES
    assert read_all(r) == b""
    log.record(**FIELDS)  # one over the limit flushes by itself
    assert log.pending == 0
    assert len(lines_of(r)) == MAX_PENDING_LINES + 1


def test_bounded_by_bytes(file_fd: tuple[int, int]) -> None:
    r, w = file_fd
    log = AccessLog("json", fd=w)
    big = {**FIELDS, "path": b"/" + b"x" * 300_000}
    for _ in range(3):
        log.record(**big)
    assert log.pending == 3
    assert read_all(r) == b""
    log.record(**big)  # 4 x 300 kB > 1 MiB
    assert log.pending == 0
    assert [len(json.loads(line)["path"]) for line in lines_of(r)] == [300_001] * 4


def test_pipe_writes_keep_lines_whole(pipe: tuple[int, int]) -> None:
    """Batches bigger than PIPE_BUF are cut at line boundaries, never mid-line."""
    r, w = pipe
    log = AccessLog("json", fd=w)
    for i in range(100):  # about 30 kB: more than PIPE_BUF, less than the pipe holds
        log.record(**{**FIELDS, "path": f"/{i}".encode() * 10})
    log.flush()
    assert [json.loads(line)["path"] for line in lines_of(r)] == [f"/{i}" * 10 for i in range(100)]


def test_pipe_write_sizes(pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    r, w = pipe
    sizes: list[int] = []
    real_write = os.write

    def spy(fd: int, data: Any) -> int:
        sizes.append(len(data))
        return real_write(fd, data)

    log = AccessLog("plain", fd=w)
    monkeypatch.setattr(os, "write", spy)
    for _ in range(50):
        log.record(**FIELDS)
    log.record(**{**FIELDS, "path": b"/" + b"y" * 6000})  # one line longer than PIPE_BUF
    for _ in range(50):
        log.record(**FIELDS)
    log.flush()
    monkeypatch.undo()
    lines = lines_of(r)
    assert len(lines) == 101
    assert len(lines[50]) > 6000
    assert sum(sizes) == sum(len(line) + 1 for line in lines)
    # every write fits PIPE_BUF except the one long line, which goes out whole and alone
    assert [s for s in sizes if s > 4096] == [len(lines[50]) + 1]


def test_regular_file_is_one_write(
    file_fd: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    r, w = file_fd
    sizes: list[int] = []
    real_write = os.write

    def spy(fd: int, data: Any) -> int:
        sizes.append(len(data))
        return real_write(fd, data)

    log = AccessLog("json", fd=w)
    monkeypatch.setattr(os, "write", spy)
    for _ in range(500):
        log.record(**FIELDS)
    log.flush()
    monkeypatch.undo()
    assert len(sizes) == 1
    assert len(lines_of(r)) == 500


def test_disabled_writes_nothing(pipe: tuple[int, int]) -> None:
    r, w = pipe
    log = AccessLog("json", fd=w, enabled=False)
    log.record(**FIELDS)
    log.flush()
    assert log.pending == 0
    assert read_all(r) == b""


def test_write_error_drops_and_counts() -> None:
    r, w = os.pipe()
    os.close(r)
    log = AccessLog("json", fd=w)
    log.record(**FIELDS)
    log.record(**FIELDS)
    log.flush()  # EPIPE: must not raise
    os.close(w)
    assert log.dropped == 2
    assert log.pending == 0


def test_env_overrides_access_format(
    pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    r, w = pipe
    monkeypatch.setenv(ENV_FORMAT, "plain")
    log = AccessLog("json", fd=w)
    log.record(**FIELDS)
    log.flush()
    assert lines_of(r)[0].startswith("192.0.2.7:50123 web ")


def test_unknown_format_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="expected one of"):
        AccessLog("xml")
    monkeypatch.setenv(ENV_FORMAT, "yaml")
    with pytest.raises(ValueError, match=ENV_FORMAT):
        AccessLog("json")


def test_record_cost_report(capsys: pytest.CaptureFixture[str]) -> None:
    """Not an assertion on speed; prints the per-call cost for the record (pytest -s)."""
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        for fmt in ("json", "text", "plain"):
            log = AccessLog(fmt, fd=fd)
            n = 20_000
            t = min(
                timeit.repeat(
                    lambda log=log: log.record(  # type: ignore[misc]
                        listener="web",
                        client="192.0.2.7:50123",
                        method=b"GET",
                        authority=b"example.com",
                        path=b"/api/v1/users/12345?x=1",
                        status=200,
                        duration=0.0125,
                        bytes_in=0,
                        bytes_out=3456,
                        upstream="10.0.0.2:80",
                    ),
                    number=n,
                    repeat=3,
                )
            )
            log.flush()
            with capsys.disabled():
                print(f"\nAccessLog.record[{fmt}]: {t / n * 1e6:.2f} us/call")
    finally:
        os.close(fd)


# -- process logs ----------------------------------------------------------------------------


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    logging.captureWarnings(False)


def emit(capsys: pytest.CaptureFixture[str], *args: Any, **kwargs: Any) -> str:
    logging.getLogger("eg.test").warning(*args, **kwargs)
    return capsys.readouterr().err


@pytest.mark.usefixtures("restore_root")
def test_configure_json(capsys: pytest.CaptureFixture[str]) -> None:
    configure("json", "info")
    err = emit(capsys, "hello %s", "world", extra={"listener": "web", "n": 3, "obj": object()})
    (line,) = err.splitlines()
    obj = json.loads(line)
    assert RFC3339_MS.fullmatch(obj["ts"])
    assert obj["level"] == "warning"
    assert obj["logger"] == "eg.test"
    assert obj["msg"] == "hello world"
    assert obj["listener"] == "web"
    assert obj["n"] == 3
    assert obj["obj"].startswith("<object")
    assert list(obj)[:4] == ["ts", "level", "logger", "msg"]


@pytest.mark.usefixtures("restore_root")
def test_configure_json_exception_stays_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure("json", "info")
    try:
        raise RuntimeError("bad\nthing")
    except RuntimeError:
        logging.getLogger("eg.test").exception("failed")
    (line,) = capsys.readouterr().err.splitlines()
    obj = json.loads(line)
    assert obj["level"] == "error"
    assert "RuntimeError: bad" in obj["exc"]


@pytest.mark.usefixtures("restore_root")
def test_configure_text(capsys: pytest.CaptureFixture[str]) -> None:
    configure("text", "debug")
    err = emit(capsys, "hello", extra={"listener": "web", "why": "a b"})
    ts, level, logger, rest = err.rstrip("\n").split(" ", 3)
    assert RFC3339_MS.fullmatch(ts)
    assert (level, logger) == ("warning", "eg.test")
    assert rest == 'hello listener=web why="a b"'


@pytest.mark.usefixtures("restore_root")
def test_configure_plain(capsys: pytest.CaptureFixture[str]) -> None:
    configure("plain", "info")
    assert emit(capsys, "just %d", 1, extra={"x": 1}) == "just 1\n"


@pytest.mark.usefixtures("restore_root")
def test_configure_level(capsys: pytest.CaptureFixture[str]) -> None:
    configure("plain", "error")
    assert emit(capsys, "dropped") == ""
    logging.getLogger("eg.test").error("kept")
    assert capsys.readouterr().err == "kept\n"
    configure("plain", "WARN")
    assert emit(capsys, "kept too") == "kept too\n"


@pytest.mark.usefixtures("restore_root")
@pytest.mark.parametrize("env", ["json", "text", "plain", "JSON "])
def test_env_overrides_configured_format(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: str
) -> None:
    monkeypatch.setenv(ENV_FORMAT, env)
    configure("plain" if env.strip().lower() != "plain" else "json", "info")
    err = emit(capsys, "msg")
    kind = env.strip().lower()
    if kind == "json":
        assert json.loads(err)["msg"] == "msg"
    elif kind == "text":
        assert err.split(" ", 3)[1:] == ["warning", "eg.test", "msg\n"]
    else:
        assert err == "msg\n"


@pytest.mark.usefixtures("restore_root")
def test_empty_env_does_not_override(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(ENV_FORMAT, "")
    configure("plain", "info")
    assert emit(capsys, "msg") == "msg\n"


@pytest.mark.usefixtures("restore_root")
def test_configure_twice_replaces_the_handler(capsys: pytest.CaptureFixture[str]) -> None:
    configure("json", "info")
    configure("plain", "info")
    assert emit(capsys, "once") == "once\n"


@pytest.mark.usefixtures("restore_root")
def test_configure_rejects_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="log level"):
        configure("json", "loud")
    with pytest.raises(ValueError, match="expected one of"):
        configure("xml", "info")
    monkeypatch.setenv(ENV_FORMAT, "xml")
    with pytest.raises(ValueError, match=ENV_FORMAT):
        configure("json", "info")
