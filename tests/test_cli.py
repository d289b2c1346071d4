"""eg.cli: ``python -m eg check`` and ``python -m eg CONFIG`` as a user runs them."""

from __future__ import annotations

import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest

import eg
from eg import cli
from eg.core.config import Config

ROOT = Path(__file__).resolve().parents[1]
GOOD = """\
[[listeners]]
name = "http"
address = "127.0.0.1:0"

[[clusters]]
name = "demo"
endpoints = ["127.0.0.1:9001", "127.0.0.1:9002"]

[[routes]]
cluster = "demo"
"""
BAD = GOOD.replace('name = "demo"', 'name = "demo"\nlb = "fastest"')


def run_eg(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eg", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- as a subprocess -----------------------------------------------------------------------


def test_check_good_file(tmp_path: Path) -> None:
    path = write(tmp_path, "good.toml", GOOD)
    result = run_eg("check", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{path}: ok (1 listeners, 1 clusters, 1 routes)\n"
    assert result.stderr == ""


def test_check_default_config() -> None:
    result = run_eg("check", "config/default.toml")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "config/default.toml: ok (1 listeners, 1 clusters, 1 routes)\n"


def test_check_bad_file(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.toml", BAD)
    result = run_eg("check", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"eg: {path}:7: clusters[0].lb: expected one of round_robin, got 'fastest'\n"
    )


def test_check_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.toml", GOOD + "[runtime\n")
    result = run_eg("check", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"eg: {path}:11: TOML syntax error")


def test_check_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    result = run_eg("check", str(path))
    assert result.returncode == 2
    assert result.stderr == f"eg: {path}: cannot read the config file: No such file or directory\n"


def test_check_several_files_reports_each(tmp_path: Path) -> None:
    good = write(tmp_path, "good.toml", GOOD)
    bad = write(tmp_path, "bad.toml", BAD)
    result = run_eg("check", str(good), str(bad))
    assert result.returncode == 2
    assert result.stdout == f"{good}: ok (1 listeners, 1 clusters, 1 routes)\n"
    assert result.stderr.startswith(f"eg: {bad}:7: clusters[0].lb: ")


def test_check_needs_a_file() -> None:
    result = run_eg("check")
    assert result.returncode == 2
    assert "CONFIG" in result.stderr


def test_version() -> None:
    result = run_eg("--version")
    assert result.returncode == 0
    assert result.stdout == f"eg {eg.__version__}\n"


def test_run_with_bad_config_exits_before_binding(tmp_path: Path) -> None:
    """The listener's port is taken, yet the config error is what stops eg: nothing binds."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = BAD.replace("127.0.0.1:0", f"127.0.0.1:{port}")
        path = write(tmp_path, "bad.toml", text)
        result = run_eg(str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"eg: {path}:7: clusters[0].lb: expected one of round_robin, got 'fastest'\n"
    )


def test_run_without_argument_loads_config_default_toml(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    write(tmp_path / "config", "default.toml", BAD)
    result = run_eg(cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("eg: config/default.toml:7: clusters[0].lb: ")


# --- in process ----------------------------------------------------------------------------


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> list[Config]:
    """Stand in for eg.reactor.server so running needs no sockets."""
    started: list[Config] = []

    def run(config: Config) -> int:
        started.append(config)
        return 7

    module = types.ModuleType("eg.reactor.server")
    module.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "eg.reactor.server", module)
    return started


def test_main_runs_the_server_with_the_loaded_config(
    tmp_path: Path, fake_server: list[Config]
) -> None:
    path = write(tmp_path, "good.toml", GOOD)
    assert cli.main([str(path)]) == 7
    (config,) = fake_server
    assert config.source == str(path)
    assert config.listeners[0].address == "127.0.0.1:0"


def test_main_bad_config_never_starts_the_server(
    tmp_path: Path, fake_server: list[Config], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "bad.toml", BAD)
    assert cli.main([str(path)]) == 2
    assert fake_server == []
    assert capsys.readouterr().err.startswith(f"eg: {path}:7: clusters[0].lb: ")


def test_main_ctrl_c_exits_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_server: list[Config]
) -> None:
    def interrupted(config: Config) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(sys.modules["eg.reactor.server"], "run", interrupted)
    assert cli.main([str(write(tmp_path, "good.toml", GOOD))]) == 130


def test_main_reads_sys_argv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "good.toml", GOOD)
    monkeypatch.setattr(sys, "argv", ["eg", "check", str(path)])
    assert cli.main() == 0
    assert capsys.readouterr().out == f"{path}: ok (1 listeners, 1 clusters, 1 routes)\n"
