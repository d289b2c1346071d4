"""bench/driver.py reads h2load's summary and log strictly: failures are flagged, never counted."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent.parent / "bench"


@pytest.fixture(scope="module")
def driver() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_driver", BENCH / "driver.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_driver", mod)
    spec.loader.exec_module(mod)
    return mod


SUMMARY = """starting benchmark...
Application protocol: h2c
finished in {fin}, 1840.67 req/s, 54.92KB/s
requests: 5522 total, 5682 started, 5522 done, 5500 succeeded, 22 failed, 12 errored, 3 timeout
status codes: 5500 2xx, 0 3xx, 0 4xx, 10 5xx
traffic: 161.72KB (165600) total, 107.86KB (110448) headers, 32.35KB (33132) data
"""


@pytest.mark.parametrize(("fin", "seconds"), [("3.00s", 3.0), ("420us", 420e-6),
                                              ("12.5ms", 0.0125), ("1.5m", 90.0)])
def test_summary(driver: ModuleType, fin: str, seconds: float) -> None:
    res = driver.parse_h2load(SUMMARY.format(fin=fin))
    assert res["seconds"] == pytest.approx(seconds)
    assert res["requests"]["done"] == 5522
    assert res["requests"]["errored"] == 12
    assert res["status"] == {"2xx": 5500, "3xx": 0, "4xx": 0, "5xx": 10}


@pytest.mark.parametrize("drop", ["finished in", "requests:", "status codes:"])
def test_missing_line_is_an_error(driver: ModuleType, drop: str) -> None:
    text = "\n".join(ln for ln in SUMMARY.format(fin="3.00s").splitlines()
                     if not ln.startswith(drop))
    with pytest.raises(ValueError, match="no"):
        driver.parse_h2load(text)


def test_truncated_line_is_an_error(driver: ModuleType) -> None:
    text = SUMMARY.format(fin="3.00s").replace(", 10 5xx", "")
    with pytest.raises(ValueError, match="5xx"):
        driver.parse_h2load(text)


def test_log_percentiles(driver: ModuleType, tmp_path: Path) -> None:
    log = tmp_path / "h2load.log"
    # 1000 completed requests of 1..1000 µs, plus lines h2load could write for failures.
    lines = [f"1795314633448813\t200\t{us}" for us in range(1000, 0, -1)]
    log.write_text("\n".join([*lines, "1795314633448813\t-1\t", "garbage"]) + "\n")
    lat = driver.h2load_latency(log)
    assert (lat["p50"], lat["p99"], lat["p99.9"], lat["p99.99"]) == (500, 990, 999, 1000)
    assert (lat["lat_min"], lat["lat_max"]) == (1, 1000)
    assert driver.h2load_latency(tmp_path / "absent.log")["p50"] is None
