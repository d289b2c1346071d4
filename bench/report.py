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


def _flagged(s: dict[str, Any] | None) -> bool:
    """A cell with errors, non-2xx responses or nothing completed (older runs: recomputed)."""
    if not s:
        return False
    return bool(s.get("flagged", s["errors"] or s["non2xx"] or not s["requests"]))


def ratios(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per scenario: eg against nginx, HAProxy, the best Python peer, no proxy, itself at 1
    worker, (HTTP/2) itself with an h2c upstream, and (HTTP/3) Caddy and Traefik.
    ``flagged`` lists the subjects of the scenario whose cell had errors or non-2xx
    responses: ratios involving them are suspect."""
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
            "protocol": sc.get("protocol", "h1"),
            "eg1_over_nginx1": _ratio(rps("eg-1"), rps("nginx-1")),
            "egall_over_nginxauto": _ratio(rps("eg-all"), rps("nginx-auto")),
            "eg1_over_haproxy1": _ratio(rps("eg-1"), rps("haproxy-1")),
            "egall_over_haproxyall": _ratio(rps("eg-all"), rps("haproxy-all")),
            "egall_over_best_python": _ratio(rps("eg-all"), best_py[0]),
            "best_python": best_py[1] if best_py[0] else None,
            "eg1_over_noproxy": _ratio(rps("eg-1"), rps("none")),
            "egall_over_noproxy": _ratio(rps("eg-all"), rps("none")),
            "egall_over_eg1": _ratio(rps("eg-all"), rps("eg-1")),
            "nginxauto_over_nginx1": _ratio(rps("nginx-auto"), rps("nginx-1")),
            "haproxyall_over_haproxy1": _ratio(rps("haproxy-all"), rps("haproxy-1")),
            "eg1_cpu_over_nginx1_cpu": _ratio(cpu("eg-1"), cpu("nginx-1")),
            "eg1_cpu_over_haproxy1_cpu": _ratio(cpu("eg-1"), cpu("haproxy-1")),
            "eg1h2up_over_eg1": _ratio(rps("eg-1-h2up"), rps("eg-1")),
            "egallh2up_over_egall": _ratio(rps("eg-all-h2up"), rps("eg-all")),
            "eg1_over_caddy1": _ratio(rps("eg-1"), rps("caddy-1")),
            "egall_over_caddyall": _ratio(rps("eg-all"), rps("caddy-all")),
            "eg1_over_traefik1": _ratio(rps("eg-1"), rps("traefik-1")),
            "egall_over_traefikall": _ratio(rps("eg-all"), rps("traefik-all")),
            "caddyall_over_caddy1": _ratio(rps("caddy-all"), rps("caddy-1")),
            "traefikall_over_traefik1": _ratio(rps("traefik-all"), rps("traefik-1")),
            "eg1_cpu_over_caddy1_cpu": _ratio(cpu("eg-1"), cpu("caddy-1")),
            "eg1_cpu_over_traefik1_cpu": _ratio(cpu("eg-1"), cpu("traefik-1")),
            "egall_cpu_over_caddyall_cpu": _ratio(cpu("eg-all"), cpu("caddy-all")),
            "eg1_cpu_us": cpu("eg-1"),
            "flagged": sorted(k for k in results["cells"].get(key, {})
                              if _flagged(_summary(results, key, k))),
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


FLAG = "⚠"

# Ratio columns: (header, ratios key, subjects it involves).
H1_RATIOS = (
    ("eg 1w / nginx 1w", "eg1_over_nginx1", ("eg-1", "nginx-1")),
    ("eg all / nginx auto", "egall_over_nginxauto", ("eg-all", "nginx-auto")),
    ("eg 1w / HAProxy 1t", "eg1_over_haproxy1", ("eg-1", "haproxy-1")),
    ("eg all / best Python peer", "egall_over_best_python", ("eg-all",)),
    ("eg 1w / no proxy", "eg1_over_noproxy", ("eg-1", "none")),
    ("eg all / no proxy", "egall_over_noproxy", ("eg-all", "none")),
    ("eg all / eg 1w", "egall_over_eg1", ("eg-all", "eg-1")),
    ("CPU per req: eg 1w / nginx 1w", "eg1_cpu_over_nginx1_cpu", ("eg-1", "nginx-1")),
)
H2_RATIOS = (
    ("eg 1w / nginx 1w", "eg1_over_nginx1", ("eg-1", "nginx-1")),
    ("eg all / nginx auto", "egall_over_nginxauto", ("eg-all", "nginx-auto")),
    ("eg 1w / HAProxy 1t", "eg1_over_haproxy1", ("eg-1", "haproxy-1")),
    ("eg all / HAProxy all", "egall_over_haproxyall", ("eg-all", "haproxy-all")),
    ("eg 1w / no proxy", "eg1_over_noproxy", ("eg-1", "none")),
    ("eg all / eg 1w", "egall_over_eg1", ("eg-all", "eg-1")),
    ("nginx auto / 1w", "nginxauto_over_nginx1", ("nginx-auto", "nginx-1")),
    ("HAProxy all / 1t", "haproxyall_over_haproxy1", ("haproxy-all", "haproxy-1")),
    ("CPU per req: eg 1w / nginx 1w", "eg1_cpu_over_nginx1_cpu", ("eg-1", "nginx-1")),
    ("CPU per req: eg 1w / HAProxy 1t", "eg1_cpu_over_haproxy1_cpu", ("eg-1", "haproxy-1")),
    ("eg 1w h2c upstream / eg 1w", "eg1h2up_over_eg1", ("eg-1-h2up", "eg-1")),
    ("eg all h2c upstream / eg all", "egallh2up_over_egall", ("eg-all-h2up", "eg-all")),
)


H3_RATIOS = (
    ("eg 1w / Caddy 1", "eg1_over_caddy1", ("eg-1", "caddy-1")),
    ("eg all / Caddy all", "egall_over_caddyall", ("eg-all", "caddy-all")),
    ("eg 1w / Traefik 1", "eg1_over_traefik1", ("eg-1", "traefik-1")),
    ("eg all / Traefik all", "egall_over_traefikall", ("eg-all", "traefik-all")),
    ("eg all / eg 1w", "egall_over_eg1", ("eg-all", "eg-1")),
    ("Caddy all / 1", "caddyall_over_caddy1", ("caddy-all", "caddy-1")),
    ("Traefik all / 1", "traefikall_over_traefik1", ("traefik-all", "traefik-1")),
    ("CPU per req: eg 1w / Caddy 1", "eg1_cpu_over_caddy1_cpu", ("eg-1", "caddy-1")),
    ("CPU per req: eg 1w / Traefik 1", "eg1_cpu_over_traefik1_cpu", ("eg-1", "traefik-1")),
    ("CPU per req: eg all / Caddy all", "egall_cpu_over_caddyall_cpu", ("eg-all", "caddy-all")),
)


def _ratio_table(rat: dict[str, dict[str, Any]], titles: dict[str, str], protocol: str,
                 cols: tuple[tuple[str, str, tuple[str, ...]], ...]) -> list[str]:
    rows = {k: r for k, r in rat.items() if r.get("protocol", "h1") == protocol}
    if not rows:
        return []
    lines = ["| scenario | " + " | ".join(c[0] for c in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for key, r in rows.items():
        cells = []
        for _, name, who in cols:
            cell = _x(r.get(name))
            involved = set(who)
            if name == "egall_over_best_python" and r.get("best_python"):
                cell += f" ({r['best_python']})"
                involved.add(r["best_python"])
            if r.get(name) is not None and involved & set(r.get("flagged", ())):
                cell += f" {FLAG}"
            cells.append(cell)
        lines.append(f"| {titles.get(key, key)} | " + " | ".join(cells) + " |")
    return lines


def _client_line(sc: dict[str, Any]) -> str:
    if sc.get("client", "wrk") == "h3load":
        n = sc["connections"] * sc.get("streams", 1)
        return (f"`{sc['method']} {sc['path']}`, bench/h3load.py -c{sc['connections']} "
                f"-m{sc.get('streams', 1)} -D{sc['duration']} -p{sc.get('processes', 1)} "
                f"(HTTP/3 over QUIC, certificate verified: {n} stream{'s' if n > 1 else ''} "
                "in flight)")
    if sc.get("client", "wrk") == "h2load":
        n = sc["connections"] * sc.get("streams", 1)
        return (f"`{sc['method']} {sc['path']}`, h2load -t1 -c{sc['connections']} "
                f"-m{sc.get('streams', 1)} -D{sc['duration']} (h2c prior knowledge: "
                f"{n} stream{'s' if n > 1 else ''} in flight)")
    return (f"`{sc['method']} {sc['path']}`, wrk -t1 -c{sc['connections']} "
            f"-d{sc['duration']}s" + (" with `Connection: close`" if sc["close"] else ""))


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
        f"- Client: {meth['client']}"
        + (f"; HTTP/2: {meth['client_h2']}" if meth.get("client_h2") else "")
        + (f"; HTTP/3: {meth['client_h3']}" if meth.get("client_h3") else "")
        + f"; {meth['reps']} repetition(s) per cell, "
        f"{meth['warmup_s']} s warm-up before a subject's first measured run (per protocol); "
        f"{meth['order']}.",
        "- Origin: nginx, 1 worker: `/small` is a 6-byte `return 200`, `/1m` and `/64m` are "
        "static files sent with sendfile. Uploads go to `bench/sink.py`, which reads each "
        "body to its end (dropping it in the kernel with MSG_TRUNC) before answering 200.",
        f"- Proxy CPU: {meth['cpu']}, divided by completed requests. Peak RSS: "
        f"{meth['rss']}.",
        "- Errors: wrk socket errors (connect, read, write, timeout) + 4xx/5xx responses; "
        "h2load and h3load: errored streams (reset, refused, abandoned, connection lost; "
        "timeouts included) + responses outside 2xx. A cell with any, or with no completed "
        f"request, is flagged {FLAG} (its req/s and every ratio involving it).",
        "- HTTP/2 cells: every h2 front speaks h2c (prior knowledge) and proxies over "
        "HTTP/1.1 to the same origin, except eg's \"h2c upstream\" subjects (an h2c cluster "
        "to the origin's h2c port); \"no proxy\" is h2load straight to that port.",
        "- HTTP/3 cells: eg's quic listener, Caddy and Traefik terminate QUIC (ALPN h3, a "
        "certificate made for the run) and proxy over HTTP/1.1 to the same origin; Go "
        "peers' \"1\" is GOMAXPROCS=1. No \"no proxy\" row: the origin has no HTTP/3.",
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
        lines += [f"## {sc['title']}", "", _client_line(sc), ""]
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
            if s["non2xx"]:
                errs = f"{errs} ({s['non2xx']} non-2xx)"
            if not s["requests"]:
                errs = f"{errs}, none completed"
            flag = f" {FLAG}" if _flagged(s) else ""

            lines.append(
                f"| {subj['label']} | {_num(s['rps'])}{flag} |"
                + (f" {_num(s['mib_s'])} |" if bulk else "")
                + f" {_us(lat['p50'])} | {_us(lat['p99'])} | {_us(lat['p99.9'])} |"
                f" {errs if errs else 0} | {_num(s['proxy_cpu_us_per_req'], '{:,.1f}')} |"
                f" {_mib(s['proxy_rss_peak_kib'])} |")
        if not cells:
            lines.append("| (no cell ran) | - | " + "- | " * (6 if bulk else 5))
        not_run = results.get("not_run", {}).get(sc["key"], {})
        if not_run:
            lines += ["", "Not run: " + "; ".join(
                f"`{k}` ({why})" if k != "*" else why for k, why in not_run.items()) + "."]
        lines.append("")

    rat = results.get("ratios", {})
    if rat:
        titles = {sc["key"]: sc["title"] for sc in results["scenarios"]}
        h1 = _ratio_table(rat, titles, "h1", H1_RATIOS)
        if h1:
            lines += ["## Ratios, HTTP/1.1 (req/s unless noted; >1 means eg is ahead)", "",
                      *h1, "", "For CPU per request, <1 means eg spends less CPU than nginx.",
                      ""]
        h2 = _ratio_table(rat, titles, "h2", H2_RATIOS)
        if h2:
            lines += ["## Ratios, HTTP/2 (req/s unless noted; >1 means eg is ahead)", "",
                      *h2, "", "For CPU per request, <1 means eg spends less CPU than the peer. "
                      "\"all / 1w\" columns are each proxy's own 1 → all-worker scaling.", ""]
        h3 = _ratio_table(rat, titles, "h3", H3_RATIOS)
        if h3:
            lines += ["## Ratios, HTTP/3 (req/s unless noted; >1 means eg is ahead)", "",
                      *h3, "", "For CPU per request, <1 means eg spends less CPU than the peer. "
                      "\"all / 1\" columns are each proxy's own 1 → all-worker scaling.", ""]
            target = results.get("h3_target_us")
            for key, r in rat.items():
                if r.get("protocol") == "h3" and r.get("eg1_cpu_us") and target:
                    lines.append(f"- {titles.get(key, key)}: eg 1 worker spends "
                                 f"{r['eg1_cpu_us']:.0f} µs of CPU per HTTP/3 request; the "
                                 f"issue's target is ≤ {target:.0f} µs "
                                 f"({r['eg1_cpu_us'] / target:.2f}x the target).")
            lines.append("")
        if any(r.get("flagged") for r in rat.values()):
            lines += [f"{FLAG}: a subject in that ratio had errors or non-2xx responses in "
                      "that scenario (see its table); the ratio is suspect.", ""]

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
