"""h2spec (the HTTP/2 conformance suite) in strict mode against the h2c and TLS listeners.

Every one of its 147 strict cases must pass on both; the failure message lists the cases
that did not, from h2spec's JUnit report.
"""

from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import OriginProcess
from tests.integration.conftest import Gateway, StartGateway, gateway_config
from tests.integration.test_tls import make_certs
from tests.peers.paths import peer_paths, peers_report

#: h2spec v2.6.0 --strict: 146 cases, plus the strict-only one (RFC 7540 §8.1.2.2 te).
H2SPEC_CASES = 147
SUMMARY = re.compile(rb"(\d+) tests, (\d+) passed, (\d+) skipped, (\d+) failed")


@pytest.fixture(scope="module")
def h2spec() -> Path:
    path = peer_paths().get("h2spec")
    if path is None:
        pytest.skip(f"h2spec is not available here:\n{peers_report()}")
    return path


@pytest.fixture(scope="module")
def h2_gateway(origins: OriginProcess, gateway_factory: StartGateway,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    certs = make_certs(tmp_path_factory.mktemp("certs"))
    doc = gateway_config(origins.ports, workers=1)
    doc["listeners"] = [
        {"name": "http", "address": "127.0.0.1:0", "protocol": "h2c"},
        {"name": "tls", "address": "127.0.0.1:0", "protocol": "https",
         "tls": {"certificates": [{"cert": str(certs / "cert.pem"),
                                   "key": str(certs / "key.pem")}]}},
    ]
    yield gateway_factory(doc)


def failures(report: Path) -> list[str]:
    """Names of the failed cases in an h2spec JUnit report."""
    if not report.exists():
        return ["(no report written)"]
    # h2spec writes frame dumps into its error texts raw: NUL bytes included, which XML
    # does not allow. Drop the C0 controls other than tab and newlines before parsing.
    text = re.sub(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]", b"", report.read_bytes())
    root = ET.fromstring(text)
    out = []
    for case in root.iter("testcase"):
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        if bad is not None:
            out.append(f"{case.get('package', '')} {case.get('classname', '')}: "
                       f"{(bad.text or '').strip()}")
    return out


@pytest.mark.parametrize("listener", ["http", "tls"])
def test_h2spec_strict_all_pass(h2spec: Path, h2_gateway: Gateway, listener: str,
                                tmp_path: Path) -> None:
    report = tmp_path / "h2spec.xml"
    args = [str(h2spec), "--strict", "-h", "127.0.0.1", "-p", str(h2_gateway.ports[listener]),
            "-o", "5", "-j", str(report)]
    if listener == "tls":
        args += ["-t", "-k"]
    result = subprocess.run(args, capture_output=True, timeout=600, check=False)
    summary = SUMMARY.search(result.stdout)
    assert summary is not None, result.stdout[-3000:] + result.stderr[-3000:]
    total, passed, skipped, failed = (int(n) for n in summary.groups())
    assert (total, passed, skipped, failed) == (H2SPEC_CASES, H2SPEC_CASES, 0, 0), \
        "\n".join(failures(report))
    assert result.returncode == 0
    assert h2_gateway.metric("eg_unhandled_exceptions_total") == 0
