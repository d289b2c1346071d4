"""The GIL stays off: a free-threaded interpreter, and no dependency turns the GIL back on.

A C extension that is not built for free-threading re-enables the GIL when it is
imported, with only a RuntimeWarning. These checks run in a fresh interpreter (this
pytest process has already imported its own plugins) and without ``PYTHON_GIL`` in the
environment, since ``PYTHON_GIL=0`` would hide exactly what is being looked for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig

#: Imported one at a time, in this order, after ``import_protocol_modules()``: the reactor
#: modules the serving process loads, then every protocol dependency by name.
MODULES = (
    "eg.reactor.server",
    "eg.reactor.worker",
    "eg.reactor.h1",
    "eg.reactor.h2",
    "eg.reactor.leg",
    "eg.core.codec.h1.server",
    "h11",
    "h2.connection",
    "hpack",
    "qh3",
    "qh3.h3.connection",
    "prometheus_client",
    "pyroute2",
)

_PROBE = """
import importlib, json, sys

report = {"start": sys._is_gil_enabled(), "reenabled_by": []}
from eg.reactor.server import import_protocol_modules

report["import_protocol_modules"] = import_protocol_modules()
for name in sys.argv[1:]:
    before = sys._is_gil_enabled()
    importlib.import_module(name)
    if sys._is_gil_enabled() and not before:
        report["reenabled_by"].append(name)
report["end"] = sys._is_gil_enabled()
print(json.dumps(report))
"""


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHON_GIL"}


def test_interpreter_is_free_threaded() -> None:
    assert sysconfig.get_config_var("Py_GIL_DISABLED") == 1, (
        f"{sys.executable} is not a free-threaded build (Py_GIL_DISABLED unset); "
        "use the interpreter from scripts/bootstrap"
    )
    assert sys.version_info[:2] == (3, 13)


def test_protocol_imports_keep_the_gil_disabled() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *MODULES],
        capture_output=True,
        text=True,
        timeout=60,
        env=_clean_env(),
        check=False,
    )
    assert proc.returncode == 0, f"import failed:\n{proc.stderr}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["start"] is False, "the GIL is enabled before anything was imported"
    assert report["import_protocol_modules"] is None, (
        f"importing {report['import_protocol_modules']} re-enabled the GIL:\n{proc.stderr}"
    )
    assert report["reenabled_by"] == [], (
        f"importing {report['reenabled_by']} re-enabled the GIL:\n{proc.stderr}"
    )
    assert report["end"] is False, f"sys._is_gil_enabled() is True:\n{proc.stderr}"
