"""Side-by-side HTTP benchmark of eg against nginx, HAProxy and Python proxies.

    bench/run [--quick] [--out DIR]          (bench/run calls this on the eg interpreter)

What one run does:

1. Installs what is missing: Debian nginx, haproxy, wrk, nghttp2-client; mitmproxy,
   proxy.py and matplotlib from PyPI, each in its own venv under ~/.cache/eg/bench-peers on
   the system CPython 3.11. A failed install skips that subject with a note; the run goes on.
2. Starts the origin (nginx: a 6-byte /small, static /1m and /64m), the upload sink
   (bench/sink.py) and every subject, all on 127.0.0.1 ports of their own.
3. For each scenario, repetition by repetition, runs wrk against every subject in turn
   (the order rotates each repetition), so that drift on the box hits every subject alike.
   A 1-second warm-up precedes each subject's first measured run (pools fill, caches
   warm). Reported values are medians over the repetitions.
4. Reads, over each measured window: the subject's CPU time (utime + stime of its whole
   process tree from /proc), its resident set (sampled every 50 ms), the origin's and the
   client's CPU time, and the whole machine's busy time (to show foreign load).
5. Memory boundedness: 100 concurrent 64 MiB uploads, then 100 concurrent 64 MiB
   downloads, through a fresh eg (and nginx for context), sampling RSS before, during and
   after.
6. Writes results.json (every raw number), results.md (tables) and PNG charts to --out
   (default bench/results/<timestamp>/), then stops everything it started, also on Ctrl-C.

Scenarios carry a protocol ("h1" today) and a client ("wrk"); subjects list the protocols
they carry. HTTP/2 and HTTP/3 cells are new Scenario rows plus a client runner in CLIENTS
(h2load for H2), and Caddy/Traefik hook in at peers.H3_HOOK.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
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
    """small | close | download | upload: how the report labels and charts it."""
    path: str = "/small"
    method: str = "GET"
    body: int = 0
    """Request body bytes (uploads)."""
    payload: int = len(peers.SMALL_BODY)
    """Body bytes moved per request, either direction, for the MiB/s column."""
    connections: int = 64
    duration: int = 2
    """Seconds per measured run (wrk takes whole seconds)."""
    timeout: int = 10
    """wrk's per-request timeout in seconds (a request slower than this is an error)."""
    close: bool = False
    """Send ``Connection: close``: one new TCP connection per request."""
    protocol: str = "h1"
    client: str = "wrk"


def _small(c: int, duration: int = 2) -> Scenario:
    return Scenario(key=f"small-c{c}", title=f"GET 6 B, keep-alive, c={c}", group="small",
                    connections=c, duration=duration)


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
]
QUICK = [
    _small(64, duration=3),
    Scenario(key="down-1m-c16", title="GET 1 MiB, keep-alive, c=16", group="download",
             path="/1m", payload=MiB, connections=16, duration=3),
]
SMOKE = [_small(4, duration=1)]

MODES: dict[str, dict[str, Any]] = {
    "full": {"scenarios": FULL, "reps": 3, "warmup": 1, "memory": True, "install": True,
             "subjects": None},
    "quick": {"scenarios": QUICK, "reps": 1, "warmup": 1, "memory": False, "install": True,
              "subjects": ["none", "eg-1", "eg-all", "nginx-1", "nginx-auto"]},
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


def run_wrk(procs: Procs, *, wrk: str, script: Path, sc: Scenario, url: str,
            duration: int) -> dict[str, Any]:
    """One wrk run; returns its done() numbers plus its raw output."""
    # One wrk thread: on a 2-core box a second client thread only takes CPU from the proxy.
    argv = [wrk, "-t1", f"-c{sc.connections}", f"-d{duration}s", "--timeout",
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
            data["argv"] = argv
            data["stdout"] = text
            return data
    raise RuntimeError(f"wrk printed no result (status {proc.returncode}): {text[-500:]!r}")


CLIENTS: dict[str, Callable[..., dict[str, Any]]] = {
    "wrk": run_wrk,
    # "h2load": run_h2load  (HTTP/2 cells, to come)
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


def measure(env: Env, running: Running, *, sc: Scenario, script: Path, wrk: str,
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
        res = CLIENTS[sc.client](env.procs, wrk=wrk, script=script, sc=sc,
                                 url=running.url(sc.path), duration=duration)
    wall = time.monotonic() - t0
    cpu = peers.cpu_seconds(pids) - cpu0
    ocpu = peers.cpu_seconds(origin_pids) - ocpu0
    sys1 = peers.system_cpu()
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    client = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
    harness = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
    busy = sys1["busy"] - sys0["busy"]
    reqs = int(res["requests"])
    secs = res["duration_us"] / 1e6 or 1.0
    errors = int(res["connect"] + res["read"] + res["write"] + res["timeout"])
    return {
        "requests": reqs,
        "rps": reqs / secs,
        "mib_s": reqs * sc.payload / secs / MiB,
        "latency_us": {k: res[k] for k in ("p50", "p75", "p90", "p99", "p99.9", "p99.99",
                                           "lat_min", "lat_max", "lat_mean", "lat_stdev")},
        "socket_errors": {k: int(res[k]) for k in ("connect", "read", "write", "timeout")},
        "errors": errors,
        "non2xx": int(res["status"]),
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
        "wrk_duration_s": secs,
        "loadavg": os.getloadavg(),
        "wrk": {"argv": res["argv"], "stdout": res["stdout"]},
    }


def median_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the repetitions of one cell (errors summed, RSS peak maxed)."""
    def med(key: str) -> float | None:
        vals = [r[key] for r in runs if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    lat = {k: statistics.median(r["latency_us"][k] for r in runs)
           for k in ("p50", "p75", "p90", "p99", "p99.9", "p99.99")}
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


def run_matrix(env: Env, runnings: list[Running], *, scenarios: Sequence[Scenario],
               reps: int, warmup: int, wrk: str, results: dict[str, Any]) -> None:
    """Every scenario, subject and repetition, subjects alternating within each repetition."""
    cells = results["cells"]
    warmed: set[str] = set()
    total = sum(len([r for r in runnings if sc.protocol in r.subject.protocols])
                for sc in scenarios) * reps
    done = 0
    for sc in scenarios:
        script = wrk_script(env.tmp, sc)
        subjects = [r for r in runnings if sc.protocol in r.subject.protocols]
        for rep in range(reps):
            for running in rotate(subjects, rep):
                key = running.subject.key
                cell = cells.setdefault(sc.key, {}).setdefault(key, {"runs": [], "failures": []})
                done += 1
                try:
                    if warmup and key not in warmed:
                        CLIENTS[sc.client](env.procs, wrk=wrk, script=script, sc=sc,
                                           url=running.url(sc.path), duration=warmup)
                        time.sleep(SETTLE)
                    warmed.add(key)
                    run = measure(env, running, sc=sc, script=script, wrk=wrk,
                                  duration=sc.duration)
                except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
                    cell["failures"].append(f"rep {rep}: {exc}")
                    say(f"[{done}/{total}] {sc.key} {key} rep {rep}: FAILED {exc}")
                    continue
                run["rep"] = rep
                cell["runs"].append(run)
                cpu = run["proxy_cpu_us_per_req"]
                say(f"[{done}/{total}] {sc.key:<12} {key:<12} rep {rep}: "
                    f"{run['rps']:>9.0f} req/s  p99 {run['latency_us']['p99'] / 1e3:8.2f} ms  "
                    + (f"cpu {cpu:8.1f} µs/req  " if cpu is not None else "")
                    + (f"err {run['errors']} non2xx {run['non2xx']}"
                       if run["errors"] or run["non2xx"] else ""))
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
                   help="c=64 keep-alive and 1 MiB download, one run each, 5 subjects")
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
                   "order": "subjects rotate each repetition; medians over repetitions",
                   "rss": f"sum of VmRSS over the process tree, sampled every "
                          f"{SAMPLE_EVERY * 1000:.0f} ms",
                   "cpu": "utime+stime of the subject's process tree over the window"},
        "scenarios": [dataclasses.asdict(s) for s in scenarios],
        "subjects": {}, "cells": {}, "memory": [], "skipped": dict(peers.H3_HOOK),
    }
    notes: list[str] = results["notes"]
    procs = Procs()
    status = 0
    try:
        with tempfile.TemporaryDirectory(prefix="eg-bench-") as tmpdir:
            env = Env(tmp=Path(tmpdir), logs=logs, procs=procs, ncpu=ncpu,
                      eg_python=sys.executable)
            needs = ["wrk", "nginx"] + [n for s in subjects for n in s.needs]
            if memory:
                needs += [n for s in subjects if s.key in MEMORY_SUBJECTS for n in s.needs]
            if mode == "full":
                needs.append("h2load")
            if charts:
                needs.append("charts")
            needs = list(dict.fromkeys(needs))
            if cfg["install"] and not args.no_install:
                missing = peers.ensure(needs, log=logs / "install.log", say=say)
            else:
                missing = {k: f"{peers.REQUIREMENTS[k].exe} not installed" for k in needs
                           if not peers.REQUIREMENTS[k].path()}
            for key, why in missing.items():
                notes.append(f"{key}: {why}")
                say(f"missing {key}: {why}")
            results["versions"].update({k: peers.version_of(k) for k in needs
                                        if k not in missing})
            if "wrk" in missing or "nginx" in missing:
                raise RuntimeError("wrk and nginx are required (client and origin)")
            wrk = peers.REQUIREMENTS["wrk"].path()
            nginx = peers.REQUIREMENTS["nginx"].path()
            assert wrk and nginx

            files = sorted(({sc.path.strip("/") for sc in scenarios}
                            | ({"64m"} if memory else set())) & set(peers.FILES))
            peers.start_origin(env, nginx, files)
            peers.start_sink(env)
            say(f"origin nginx on :{env.origin_port}, sink on :{env.sink_port}")

            runnings: list[Running] = []
            for s in subjects:
                info: dict[str, Any] = {"label": s.label, "family": s.family,
                                        "workers": s.workers, "config": s.config,
                                        "protocols": sorted(s.protocols)}
                results["subjects"][s.key] = info
                lacking = [n for n in s.needs if n in missing]
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
                runnings.append(running)
                say(f"{s.key} up on :{running.port}")

            run_matrix(env, runnings, scenarios=scenarios, reps=reps, warmup=cfg["warmup"],
                       wrk=wrk, results=results)
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
