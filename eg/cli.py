"""Command line: ``eg [CONFIG]`` runs the gateway, ``eg check CONFIG...`` validates.

The whole config is loaded and validated before the reactor is even imported, so a bad
file exits with status 2 and one message, with nothing bound (never half-up).

Exit status:

    0  the gateway stopped cleanly, or every checked file is valid
    2  bad usage, or a config file is missing or invalid
    *  whatever ``eg.reactor.server.run`` returns
"""

from __future__ import annotations

import argparse
import sys

import eg
from eg.core.config import Config, load_file
from eg.core.errors import ConfigError

DEFAULT_CONFIG = "config/default.toml"
"""Loaded when no path is given, relative to the current directory."""
EXIT_CONFIG = 2
"""Same status argparse uses for bad usage."""
EXIT_INTERRUPTED = 130
"""128 + SIGINT, as a shell reports Ctrl-C."""


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eg",
        description="An L4 + L7 load balancer and reverse proxy.",
        epilog="To validate a config without starting anything: eg check CONFIG",
    )
    parser.add_argument(
        "config",
        nargs="?",
        default=DEFAULT_CONFIG,
        metavar="CONFIG",
        help=f"TOML config file (default: {DEFAULT_CONFIG})",
    )
    parser.add_argument("--version", action="version", version=f"eg {eg.__version__}")
    return parser


def _check_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eg check", description="Validate config files; bind and start nothing."
    )
    parser.add_argument("configs", nargs="+", metavar="CONFIG", help="TOML config file")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``eg`` console script and of ``python -m eg``.

    Args:
        argv: the arguments after the program name; ``sys.argv[1:]`` when None.

    Returns:
        The process exit status (see the module docstring).
    """
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["check"]:
        return _check(_check_parser().parse_args(args[1:]).configs)
    path: str = _run_parser().parse_args(args).config
    try:
        config = load_file(path)
    except ConfigError as exc:
        return _report(exc)
    return _serve(config)


def _check(paths: list[str]) -> int:
    status = 0
    for path in paths:
        try:
            config = load_file(path)
        except ConfigError as exc:
            status = _report(exc)
            continue
        print(
            f"{path}: ok ({len(config.listeners)} listeners, {len(config.clusters)} clusters, "
            f"{len(config.routes)} routes)"
        )
    return status


def _serve(config: Config) -> int:
    # Imported here: checking a config must not pull in sockets, epoll or threads.
    from eg.reactor.server import run  # noqa: PLC0415

    try:
        return run(config)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _report(exc: ConfigError) -> int:
    print(f"eg: {exc}", file=sys.stderr)
    return EXIT_CONFIG
