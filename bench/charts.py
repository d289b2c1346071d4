"""PNG charts for a benchmark run; needs matplotlib (bench/run keeps it in its own venv).

    python bench/charts.py bench/results/<run>/

Writes, next to results.json:
- throughput.png: requests/s against concurrency (keep-alive 6-byte GETs), one line per
  subject;
- latency_c64.png: p50 / p99 / p99.9 per subject at c=64;
- cpu_c64.png: proxy CPU µs per request per subject at c=64;
- <h2/h3 scenario key>.png (h2-small-c16m10.png, h3-small-c16m10.png, ...): for each
  HTTP/2 and HTTP/3 scenario, requests/s and proxy CPU µs per request per subject, side by
  side (⚠ marks a flagged cell).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main() -> int:
    out = Path(sys.argv[1])
    res = json.loads((out / "results.json").read_text())
    subjects = res["subjects"]
    cells = res["cells"]
    small = sorted((sc for sc in res["scenarios"] if sc["group"] == "small"),
                   key=lambda sc: sc["connections"])

    if small:
        fig, ax = plt.subplots(figsize=(8, 5))
        for key, subj in subjects.items():
            xs, ys = [], []
            for sc in small:
                s = cells.get(sc["key"], {}).get(key, {}).get("summary")
                if s and s["rps"]:
                    xs.append(sc["connections"])
                    ys.append(s["rps"])
            if xs:
                ax.plot(xs, ys, marker="o", label=subj["label"])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks([sc["connections"] for sc in small])
        ax.set_xticklabels([str(sc["connections"]) for sc in small])
        ax.set_xlabel("concurrent connections (keep-alive)")
        ax.set_ylabel("requests/s (log)")
        ax.set_title("HTTP/1.1 GET 6 B: throughput against concurrency")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "throughput.png", dpi=110)
        plt.close(fig)

    c64 = next((sc for sc in small if sc["connections"] == 64), None)
    if c64:
        rows = [(subj["label"], cells[c64["key"]][key]["summary"])
                for key, subj in subjects.items()
                if cells.get(c64["key"], {}).get(key, {}).get("summary")]
        labels = [r[0] for r in rows]
        fig, ax = plt.subplots(figsize=(9, 5))
        width = 0.27
        for i, pct in enumerate(("p50", "p99", "p99.9")):
            vals = [r[1]["latency_us"][pct] / 1000 for r in rows]
            ax.bar([j + (i - 1) * width for j in range(len(rows))], vals, width, label=pct)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("latency, ms (log)")
        ax.set_title("HTTP/1.1 GET 6 B, keep-alive, c=64: latency percentiles")
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "latency_c64.png", dpi=110)
        plt.close(fig)

        cpu_rows = [(label, s["proxy_cpu_us_per_req"]) for label, s in rows
                    if s.get("proxy_cpu_us_per_req")]
        if cpu_rows:
            fig, ax = plt.subplots(figsize=(9, 5))
            ax.bar(range(len(cpu_rows)), [r[1] for r in cpu_rows])
            ax.set_xticks(range(len(cpu_rows)))
            ax.set_xticklabels([r[0] for r in cpu_rows], rotation=30, ha="right", fontsize=8)
            ax.set_yscale("log")
            ax.set_ylabel("proxy CPU µs per request (log)")
            ax.set_title("HTTP/1.1 GET 6 B, keep-alive, c=64: proxy CPU cost")
            ax.grid(True, axis="y", which="both", alpha=0.3)
            fig.tight_layout()
            fig.savefig(out / "cpu_c64.png", dpi=110)
            plt.close(fig)

    for sc in res["scenarios"]:
        if sc.get("protocol") in ("h2", "h3"):
            h2_chart(out, sc, subjects, cells.get(sc["key"], {}))
    return 0


def h2_chart(out: Path, sc: dict, subjects: dict, cells: dict) -> None:
    """Two panels for one HTTP/2 or HTTP/3 scenario: req/s, and proxy CPU µs per request."""
    rows = [(subj["label"], cells[key]["summary"]) for key, subj in subjects.items()
            if cells.get(key, {}).get("summary")]
    if not rows:
        return
    labels = [label + (" ⚠" if s.get("flagged") else "") for label, s in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    left.barh(range(len(rows)), [s["rps"] or 0 for _, s in rows])
    left.set_yticks(range(len(rows)))
    left.set_yticklabels(labels, fontsize=8)
    left.invert_yaxis()
    left.set_xscale("log")
    left.set_xlabel("requests/s (log)")
    left.grid(True, axis="x", which="both", alpha=0.3)
    cpu = [(i, s["proxy_cpu_us_per_req"]) for i, (_, s) in enumerate(rows)
           if s.get("proxy_cpu_us_per_req")]
    right.barh([i for i, _ in cpu], [v for _, v in cpu], color="tab:orange")
    right.set_yticks(range(len(rows)))
    right.set_yticklabels(labels, fontsize=8)
    right.set_ylim(left.get_ylim())
    right.set_xscale("log")
    right.set_xlabel("proxy CPU µs per request (log; no bar: no proxy)")
    right.grid(True, axis="x", which="both", alpha=0.3)
    fig.suptitle(sc["title"] + (" (h3load, HTTP/3)" if sc.get("protocol") == "h3"
                                else " (h2load, h2c)"))
    fig.tight_layout()
    fig.savefig(out / f"{sc['key']}.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
