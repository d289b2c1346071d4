"""bench/codec/h3_cost.py runs: three rows of CPU per request, GIL off (no timing asserted)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "codec" / "h3_cost.py"


def test_h3_cost_prints_each_row() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--requests", "50", "--rounds", "1"],
                            capture_output=True, text=True, timeout=120, check=True)
    rows = dict(re.findall(r"^(qh3 pair|qh3 server|eg server)\s+([\d.]+) µs/request$",
                           result.stdout, re.MULTILINE))
    assert sorted(rows) == ["eg server", "qh3 pair", "qh3 server"], result.stdout
    assert all(float(v) > 0 for v in rows.values())
    assert "GIL enabled: False" in result.stdout
