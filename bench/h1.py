"""H1 keep-alive benchmark: eg with 1 and N workers against a direct baseline.

Starts nginx as the origin (a fixed 6-byte body, never the bottleneck), then for each
subject runs wrk against it and reads the subject's CPU time from /proc/PID/stat over
the measured window. Prints a Markdown table and writes bench/results/h1.json.

    python bench/h1.py [--duration 8] [--connections 64]

Needs nginx and wrk (Debian packages). Everything binds to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def start_nginx(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx.err;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "hello\\n"; }} }}
}}
""")
    proc = subprocess.Popen(["nginx", "-c", str(conf)])
    wait_port(port)
    return proc


def start_eg(tmp: Path, origin: int, workers: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cfg = tmp / f"eg-{workers}.toml"
    cfg.write_text(f"""
[runtime]
workers = {workers}
[observability]
metrics_bind = ""
access_log = false
[[listeners]]
name = "bench"
address = "127.0.0.1:{port}"
[[clusters]]
name = "origin"
endpoints = ["127.0.0.1:{origin}"]
[[routes]]
cluster = "origin"
""")
    proc = subprocess.Popen([sys.executable, "-m", "eg", str(cfg)], stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def run_wrk(port: int, duration: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
         f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True,
    ).stdout
    reqs = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = dict(re.findall(r"\s+(50|99)%\s+([\d.]+\w+)", out))
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests": reqs, "rps": rps, "p50": lat.get("50", "?"), "p99": lat.get("99", "?"),
            "errors": (errors.group(1) if errors else "0"),
            "non2xx": int(non2xx.group(1)) if non2xx else 0}  # type: ignore[dict-item]


def measure(pid: int | None, port: int, duration: int, connections: int) -> dict[str, object]:
    run_wrk(port, 1, connections)  # warm-up
    before = cpu_seconds(pid) if pid else 0.0
    result: dict[str, object] = dict(run_wrk(port, duration, connections))
    if pid:
        used = cpu_seconds(pid) - before
        result["cpu_us_per_req"] = round(used / int(result["requests"]) * 1e6, 1)  # type: ignore[call-overload]
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is not installed (apt-get install {tool})", file=sys.stderr)
            return 2
    ncpu = len(os.sched_getaffinity(0))
    rows: list[tuple[str, dict[str, object]]] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        origin_port = free_port()
        nginx = start_nginx(tmp, origin_port)
        try:
            rows.append(("no proxy (wrk → nginx)",
                         measure(None, origin_port, args.duration, args.connections)))
            for workers in sorted({1, ncpu}):
                proc, port = start_eg(tmp, origin_port, workers)
                try:
                    rows.append((f"eg, {workers} worker(s)",
                                 measure(proc.pid, port, args.duration, args.connections)))
                finally:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(20)
        finally:
            nginx.terminate()
            nginx.wait(10)
    print(f"\nH1 keep-alive GET, 6-byte body, wrk -t1 -c{args.connections} -d{args.duration}s, "
          f"{ncpu} CPUs shared by client, proxy and origin\n")
    print("| subject | req/s | p50 | p99 | proxy CPU µs/req | errors |")
    print("|---|---:|---:|---:|---:|---|")
    for name, r in rows:
        print(f"| {name} | {r['rps']:.0f} | {r['p50']} | {r['p99']} | "
              f"{r.get('cpu_us_per_req', '-')} | {r['errors']}, non-2xx {r['non2xx']} |")
    one = [r for n, r in rows if n.startswith("eg, 1 ")]
    many = [r for n, r in rows if n.startswith("eg, ") and not n.startswith("eg, 1 ")]
    if one and many:
        print(f"\nscaling eg {ncpu} workers / 1 worker: "
              f"{float(many[0]['rps']) / float(one[0]['rps']):.2f}x req/s")  # type: ignore[arg-type]
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "h1.json").write_text(json.dumps(dict(rows), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
