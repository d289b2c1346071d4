"""Developer sessions, one check each: ``nox -s lint``, ``nox -s layers``, ...

Every session runs in the environment ``scripts/bootstrap`` provides (the free-threaded
interpreter with the pinned requirements and eg installed editable); nox creates no
virtualenvs of its own. nox itself is not part of that environment: run it from the
system Python, e.g. ``pipx run nox -s layers`` or ``python3 -m pip install --user nox``.

``scripts/test`` (what CI runs) does not use nox; ``nox`` with no arguments runs the same
checks split into sessions: lint, types, layers, gil, tests.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "types", "layers", "gil", "tests"]


@functools.cache
def _python() -> str:
    """The venv interpreter from scripts/bootstrap (builds it on first use)."""
    out = subprocess.run(
        [str(ROOT / "scripts" / "bootstrap")],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        check=True,
    ).stdout
    return out.strip().splitlines()[-1]


def _pytest(session: nox.Session, *args: str) -> None:
    session.run(_python(), "-m", "pytest", "-q", "-p", "no:cacheprovider", *args,
                *session.posargs, external=True)


@nox.session(python=False)
def lint(session: nox.Session) -> None:
    """ruff over eg/ and tests/."""
    session.run(_python(), "-m", "ruff", "check", "eg", "tests", *session.posargs,
                external=True)


@nox.session(python=False)
def types(session: nox.Session) -> None:
    """mypy --strict over eg/ (configured in pyproject.toml)."""
    session.run(_python(), "-m", "mypy", "eg", *session.posargs, external=True)


@nox.session(python=False)
def layers(session: nox.Session) -> None:
    """Import layering and hot-path module state (tests/test_layers.py)."""
    _pytest(session, "tests/test_layers.py")


@nox.session(python=False)
def gil(session: nox.Session) -> None:
    """Free-threaded build, and no dependency re-enables the GIL (tests/test_gil.py)."""
    _pytest(session, "tests/test_gil.py")


@nox.session(python=False)
def tests(session: nox.Session) -> None:
    """The whole pytest suite; extra arguments go to pytest (nox -s tests -- -x -k h1)."""
    _pytest(session)


@nox.session(python=False)
def bench(session: nox.Session) -> None:
    """Benchmarks: runs bench/run (arguments after -- are passed on)."""
    runner = ROOT / "bench" / "run"
    if not (runner.is_file() and os.access(runner, os.X_OK)):
        session.skip("no benchmark runner yet: bench/run (executable) is where it will live")
    session.run(str(runner), *session.posargs, external=True)
