"""Turns a benchmark results.json into Markdown tables, ratios and (via bench/charts.py) PNGs.

    python bench/report.py bench/results/<run>/results.json     # re-print the Markdown

Pure functions of the results dict, so a report can be regenerated from a saved run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent


def _summary(results: dict[str, Any], scenario: str, subject: str) -> dict[str, Any] | None:
    cell = results["cells"].get(scenario, {}).get(subject)
    return cell.get("summary") if cell else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def ratios(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per scenario: eg against nginx, the best Python peer, no proxy, and itself at 1 worker."""
    out: dict[str, dict[str, Any]] = {}
    python_peers = [k for k, s in results["subjects"].items() if s["family"] == "python"]
    for sc in results["scenarios"]:
        key = sc["key"]

        def rps(subject: str, _key: str = key) -> float | None:
            s = _summary(results, _key, subject)
            return s["rps"] if s else None

        def cpu(subject: str, _key: str = key) -> float | None:
            s = _summary(results, _key, subject)
            return s["proxy_cpu_us_per_req"] if s else None

        best_py = max(((rps(p) or 0.0, p) for p in python_peers), default=(0.0, None))
        row = {
            "eg1_over_nginx1": _ratio(rps("eg-1"), rps("nginx-1")),
            "egall_over_nginxauto": _ratio(rps("eg-all"), rps("nginx-auto")),
            "eg1_over_haproxy1": _ratio(rps("eg-1"), rps("haproxy-1")),
            "egall_over_best_python": _ratio(rps("eg-all"), best_py[0]),
            "best_python": best_py[1] if best_py[0] else None,
            "eg1_over_noproxy": _ratio(rps("eg-1"), rps("none")),
            "egall_over_noproxy": _ratio(rps("eg-all"), rps("none")),
            "egall_over_eg1": _ratio(rps("eg-all"), rps("eg-1")),
            "eg1_cpu_over_nginx1_cpu": _ratio(cpu("eg-1"), cpu("nginx-1")),
        }
        out[key] = row
    return out


def _us(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 1e6:
        return f"{v / 1e6:.2f} s"
    if v >= 1e3:
        return f"{v / 1e3:.2f} ms"
    return f"{v:.0f} µs"


def _num(v: float | None, fmt: str = "{:,.0f}") -> str:
    return "-" if v is None else fmt.format(v)


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _mib(kib: float | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def markdown(results: dict[str, Any]) -> str:
    """The whole report."""
    m = results["machine"]
    v = results["versions"]
    meth = results["method"]
    lines = [f"# eg benchmark ({results['mode']} run, {results['started']})", ""]
    lines += [
        "## Machine and conditions", "",
        f"- CPU: {m['cpu_model']}; {m['cpus_usable']} usable of {m['cpus_online']} online; "
        f"{m['mem_gib']} GiB RAM",
        f"- Kernel {m['kernel']}; {m['distro']}",
        f"- Load average at start {_load(m.get('loadavg_start'))}, at end "
        f"{_load(m.get('loadavg_end'))}; wall time {results.get('wall_s', 0):.0f} s",
        "- Client, subject, origin and sink all share these CPUs on loopback: absolute "
        "numbers are this box's, the ratios are the point.",
        "", "Versions:", "",
    ]
    lines += [f"- {k}: {val}" for k, val in v.items() if val]
    lines += [
        "", "## Method", "",
        f"- Client: {meth['client']}; {meth['reps']} repetition(s) per cell, "
        f"{meth['warmup_s']} s warm-up before a subject's first measured run; "
        f"{meth['order']}.",
        "- Origin: nginx, 1 worker: `/small` is a 6-byte `return 200`, `/1m` and `/64m` are "
        "static files sent with sendfile. Uploads go to `bench/sink.py`, which reads each "
        "body to its end (dropping it in the kernel with MSG_TRUNC) before answering 200.",
        f"- Proxy CPU: {meth['cpu']}, divided by completed requests. Peak RSS: "
        f"{meth['rss']}.",
        "- Errors: wrk socket errors (connect, read, write, timeout) + non-2xx/3xx responses.",
        "", "Subjects:", "",
    ]
    for key, s in results["subjects"].items():
        state = "" if s.get("status") == "ok" else f" — **{s.get('status')}**: {s.get('note')}"
        lines.append(f"- `{key}` {s['label']}: {s['config']}{state}")
    for key, why in results.get("skipped", {}).items():
        lines.append(f"- `{key}`: {why}")
    lines.append("")

    for sc in results["scenarios"]:
        cells = results["cells"].get(sc["key"], {})
        bulk = sc["payload"] >= 1024 * 1024
        lines += [f"## {sc['title']}", "",
                  f"`{sc['method']} {sc['path']}`, wrk -t1 -c{sc['connections']} "
                  f"-d{sc['duration']}s" + (" with `Connection: close`" if sc["close"] else ""),
                  ""]
        head = "| subject | req/s |" + (" MiB/s |" if bulk else "") + (
            " p50 | p99 | p99.9 | errors | proxy CPU µs/req | proxy peak RSS MiB |")
        lines += [head, "|---|---:|" + ("---:|" if bulk else "") + "---:|---:|---:|---:|---:|---:|"]
        for key, subj in results["subjects"].items():
            cell = cells.get(key)
            if not cell:
                continue
            s = cell.get("summary")
            if not s:
                lines.append(f"| {subj['label']} | failed: {'; '.join(cell['failures'])[:80]} |")
                continue
            lat = s["latency_us"]
            errs: int | str = s["errors"] + s["non2xx"]
            if not s["requests"]:
                errs = f"{errs}, none completed"

            lines.append(
                f"| {subj['label']} | {_num(s['rps'])} |"
                + (f" {_num(s['mib_s'])} |" if bulk else "")
                + f" {_us(lat['p50'])} | {_us(lat['p99'])} | {_us(lat['p99.9'])} |"
                f" {errs if errs else 0} | {_num(s['proxy_cpu_us_per_req'], '{:,.1f}')} |"
                f" {_mib(s['proxy_rss_peak_kib'])} |")
        lines.append("")

    rat = results.get("ratios", {})
    if rat:
        lines += ["## Ratios (req/s unless noted; >1 means eg is ahead)", "",
                  "| scenario | eg 1w / nginx 1w | eg all / nginx auto | eg 1w / HAProxy 1t |"
                  " eg all / best Python peer | eg 1w / no proxy | eg all / no proxy |"
                  " eg all / eg 1w | CPU per req: eg 1w / nginx 1w |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        titles = {sc["key"]: sc["title"] for sc in results["scenarios"]}
        for key, r in rat.items():
            best = f" ({r['best_python']})" if r.get("best_python") else ""
            lines.append(
                f"| {titles.get(key, key)} | {_x(r['eg1_over_nginx1'])} |"
                f" {_x(r['egall_over_nginxauto'])} | {_x(r['eg1_over_haproxy1'])} |"
                f" {_x(r['egall_over_best_python'])}{best} |"
                f" {_x(r['eg1_over_noproxy'])} | {_x(r['egall_over_noproxy'])} |"
                f" {_x(r['egall_over_eg1'])} | {_x(r['eg1_cpu_over_nginx1_cpu'])} |")
        lines += ["", "For CPU per request, <1 means eg spends less CPU than nginx.", ""]

    if results.get("memory"):
        lines += ["## Memory boundedness: 100 concurrent 64 MiB transfers", "",
                  "A fresh subject each time. Uploads: an asyncio client streams every body "
                  "from a generator (1 MiB chunks) and discards the responses. Downloads: "
                  "the same client reads `/64m` on every connection and drops the bytes.",
                  "",
                  "| subject | direction | transfers | 200 OK | seconds | MiB/s |"
                  " RSS before MiB | RSS peak MiB | RSS after MiB |"
                  " (peak - before) per transfer KiB |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for mem in results["memory"]:
            lines.append(
                f"| {mem['label']} | {mem['direction']} | {mem['transfers']} | {mem['ok']} |"
                f" {mem['elapsed_s']:.1f} | {mem['mib_s']:,.0f} |"
                f" {_mib(mem['rss_before_kib'])} | {_mib(mem['rss_peak_kib'])} |"
                f" {_mib(mem['rss_after_kib'])} | {mem['growth_per_transfer_kib']:,.0f} |")
        lines.append("")

    foreign = [c["summary"]["foreign_cpu_share"] for cells in results["cells"].values()
               for c in cells.values() if c.get("summary")]
    if foreign:
        foreign.sort()
        lines += ["## Foreign load", "",
                  "CPU used during the measured windows by processes other than the client, "
                  "the subject, the origin, the sink and this harness, in cores: median "
                  f"{foreign[len(foreign) // 2]:.2f}, max {foreign[-1]:.2f}.", ""]
    if results.get("charts"):
        lines += ["## Charts", ""] + [f"![{c}]({c})" for c in results["charts"]] + [""]
    if results.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    return "\n".join(lines)


def _load(la: Any) -> str:
    return " ".join(f"{x:.2f}" for x in la) if la else "?"


def charts(out: Path, log: Path) -> list[str]:
    """Run bench/charts.py with the matplotlib venv's Python; returns the PNG names made."""
    sys.path.insert(0, str(BENCH))
    import peers  # noqa: PLC0415

    py = peers.REQUIREMENTS["charts"].path()
    if py is None:
        return []
    with open(log, "ab") as f:
        res = subprocess.run([py, str(BENCH / "charts.py"), str(out)], stdout=f, stderr=f,
                             timeout=300, check=False)
    if res.returncode != 0:
        return []
    return sorted(p.name for p in out.glob("*.png"))


if __name__ == "__main__":
    print(markdown(json.loads(Path(sys.argv[1]).read_text())))
