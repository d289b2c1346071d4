"""The benchmark harness runs end to end in its tiny mode (bench/run --smoke).

One subject pair (no proxy, eg with 1 worker), wrk c=4 for 1 s and, when h2load is
installed, h2load c=2 m=4 for 1 s over h2c; no installs. Checks that results.json parses
and that eg served requests over both protocols; makes no timing assertions.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent

pytestmark = pytest.mark.skipif(
    shutil.which("nginx") is None or shutil.which("wrk") is None,
    reason="the benchmark needs nginx and wrk (Debian packages)",
)


def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "driver.py"), "--smoke", "--out", str(out)],
        capture_output=True, text=True, timeout=90, check=False, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == "smoke"
    assert results["subjects"]["eg-1"]["status"] == "ok"
    summary = results["cells"]["small-c4"]["eg-1"]["summary"]
    assert summary["rps"] > 0
    assert summary["requests"] > 0
    assert summary["proxy_cpu_us_per_req"] is not None
    assert results["cells"]["small-c4"]["none"]["summary"]["rps"] > 0
    md = (out / "results.md").read_text()
    assert md.startswith("# eg benchmark")
    if shutil.which("h2load") is None:
        assert "h2-small-c2m4" in results["not_run"]
        return
    h2 = results["cells"]["h2-small-c2m4"]
    for subject in ("none", "eg-1"):
        s = h2[subject]["summary"]
        assert s["requests"] > 0, h2[subject]
        assert not s["flagged"], h2[subject]["runs"][0]["client"]["stdout"]
        assert s["latency_us"]["p50"] is not None
    assert h2["eg-1"]["summary"]["proxy_cpu_us_per_req"] is not None
    assert "## Ratios, HTTP/2" in md
