"""PNG charts for a benchmark run; needs matplotlib (bench/run keeps it in its own venv).

    python bench/charts.py bench/results/<run>/

Writes, next to results.json:
- throughput.png: requests/s against concurrency (keep-alive 6-byte GETs), one line per
  subject;
- latency_c64.png: p50 / p99 / p99.9 per subject at c=64;
- cpu_c64.png: proxy CPU µs per request per subject at c=64.
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
