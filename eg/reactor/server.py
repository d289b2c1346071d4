"""The process supervisor: GIL check, bind, start workers, admin, signals, drain.

Order matters for "never half-up": the config is already valid when ``run`` is called;
every listening socket and the admin socket are bound here, in the main thread, before
any worker starts, so a bind error exits with nothing serving.

Signals: SIGTERM/SIGINT drain (``/readyz`` turns 503, ``timeouts.drain_settle`` seconds
pass, listeners close, connections
finish their current exchange, at most ``timeouts.drain`` seconds, then the rest are
aborted and counted); SIGHUP reloads the file (routes, clusters, limits, timeouts;
listener changes need a restart and are logged as such).
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import socket
import sys
import threading
import time

import eg
from eg import log as eglog
from eg.core.config import Config, load_file
from eg.core.errors import ConfigError
from eg.core.metrics import Shard, render
from eg.reactor.admin import AdminServer, AdminState
from eg.reactor.listener import bind_listeners
from eg.reactor.mailbox import Drain, Mailbox, Reload, Stop
from eg.reactor.quic import bind_datagram
from eg.reactor.steer import Steering
from eg.reactor.tls import check_tls
from eg.reactor.worker import QuicShared, Worker

log = logging.getLogger("eg")

#: Every module the serving process imports for its protocols; checked for the GIL.
PROTOCOL_MODULES = ("h11", "h2.connection", "hpack", "qh3", "qh3.h3.connection",
                    "prometheus_client", "pyroute2")


#: Signals the main thread handles; blocked in every other thread.
CONTROL_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def gil_enabled() -> bool:
    return bool(getattr(sys, "_is_gil_enabled", lambda: True)())


def import_protocol_modules() -> str | None:
    """Import every protocol module; return the first one that re-enabled the GIL."""
    for name in PROTOCOL_MODULES:
        before = gil_enabled()
        importlib.import_module(name)
        if gil_enabled() and not before:
            return name
    return None


def worker_cpus(config: Config) -> list[int | None]:
    cpus = sorted(os.sched_getaffinity(0))
    count = config.runtime.workers or len(cpus)
    if not config.runtime.pin:
        return [None] * count
    return [cpus[i % len(cpus)] for i in range(count)]


def run(config: Config, *, config_path: str | None = None) -> int:
    """Serve until SIGTERM/SIGINT; return the exit status."""
    obs = config.observability
    eglog.configure(obs.log_format, obs.log_level)
    culprit = import_protocol_modules()
    gil = gil_enabled()
    if gil:
        where = f"importing {culprit} re-enabled it" if culprit else "the interpreter has it"
        if not config.runtime.allow_gil:
            log.error(f"the GIL is enabled ({where}); refusing to start "
                      "(set runtime.allow_gil = true to start anyway)")
            return 3
        log.warning(f"the GIL is enabled ({where}); starting because runtime.allow_gil is set")

    # Threads inherit the signal mask: block the control signals while the admin and
    # worker threads start, so the kernel delivers them to the main thread only (a
    # signal taken by a worker in epoll_wait would leave the main thread asleep).
    signal.pthread_sigmask(signal.SIG_BLOCK, CONTROL_SIGNALS)
    try:
        return _serve(config, config_path, gil)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, CONTROL_SIGNALS)


def _serve(config: Config, config_path: str | None, gil: bool) -> int:
    obs = config.observability
    cpus = worker_cpus(config)
    count = len(cpus)
    problem = check_tls(config)
    if problem is not None:
        log.error(problem)
        return 1
    try:
        bound = {lc.name: (bind_datagram if lc.protocol == "quic" else bind_listeners)(
            lc.address, count) for lc in config.listeners}
        steering = _attach_steering(config, bound)
    except OSError as exc:
        log.error(f"cannot bind a listener: {exc}")
        return 1
    shards = [Shard() for _ in range(count)]
    shared = QuicShared(retry_key=os.urandom(32), steering=steering,
                        mailboxes=[Mailbox() for _ in range(count)])
    workers = [
        Worker(index=i, cpu=cpu, config=config, shard=shards[i],
               sockets={name: socks[i] for name, socks in bound.items()}, quic=shared)
        for i, cpu in enumerate(cpus)
    ]
    state = AdminState(workers_alive=lambda: all(w.is_alive() for w in workers))
    admin: AdminServer | None = None
    if obs.metrics_bind:
        admin = AdminServer(
            bind=obs.metrics_bind, token_hash=config.admin.api_token_hash, state=state,
            render_metrics=lambda: render(shards, gil_enabled=gil_enabled(),
                                          workers=len(workers),
                                          info={"version": eg.__version__}),
        )
        try:
            admin.start()
        except OSError as exc:
            log.error(f"cannot bind the admin listener {obs.metrics_bind}: {exc}")
            return 1

    for w in workers:
        w.start()
    for w in workers:
        w.ready.wait()
    failed = [w for w in workers if w.error is not None]
    if failed:
        log.error(f"worker failed to start: {failed[0].error!r}")
        for w in workers:
            if w.error is None:
                w.post(Stop())
        return 1

    wake = threading.Event()
    requests: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        requests.append(signum)
        wake.set()

    for sig in CONTROL_SIGNALS:
        signal.signal(sig, on_signal)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, CONTROL_SIGNALS)
    state.started = True
    listening = {lc.name: _address(socks[0]) for lc, socks in
                 ((lc, bound[lc.name]) for lc in config.listeners)}
    log.info("eg started", extra={
        "gil_enabled": gil, "workers": count, "cpus": [c for c in cpus if c is not None],
        "listeners": listening,
        "quic_steering": {name: s.mode if s else "userspace" for name, s in steering.items()},
        "admin": f"127.0.0.1:{admin.port}" if admin else "",
        "config": config.source, "python": sys.version.split()[0]})

    while True:
        wake.wait(1.0)  # the timeout is a backstop; signals wake it at once
        wake.clear()
        while requests:
            signum = requests.pop(0)
            if signum == signal.SIGHUP:
                _reload(config_path or config.source, config, workers)
                continue
            status = _drain(config, workers, state, admin)
            for program in steering.values():
                if program is not None:
                    program.close()  # the workers, and their sockets, are gone
            return status


def _attach_steering(config: Config, bound: dict[str, list[socket.socket]],
                     ) -> dict[str, Steering | None]:
    """Attach each QUIC listener's steering program (None: userspace hand-off).

    Raises:
        OSError: a mode named explicitly in the config cannot be attached.
    """
    out: dict[str, Steering | None] = {}
    prefer = config.quic.steering
    for lc in config.listeners:
        if lc.protocol != "quic":
            continue
        if prefer == "userspace" or len(bound[lc.name]) == 1:
            out[lc.name] = None
            continue
        steering = Steering.attach(bound[lc.name], prefer=prefer)
        out[lc.name] = steering if steering.mode != "none" else None
    return out


def _reload(path: str, current: Config, workers: list[Worker]) -> None:
    try:
        new = load_file(path)
    except ConfigError as exc:
        log.error(f"reload rejected, keeping the running config: {exc}")
        return
    problem = check_tls(new)
    if problem is not None:
        log.error(f"reload rejected, keeping the running config: {problem}")
        return
    if new.listeners != current.listeners or new.runtime != current.runtime \
            or new.observability != current.observability:
        log.warning("reload: listener, runtime and observability changes need a restart; "
                    "they are not applied")
    for w in workers:
        w.post(Reload(new))
    log.info("config reloaded", extra={"config": path})


def _drain(config: Config, workers: list[Worker], state: AdminState,
           admin: AdminServer | None) -> int:
    state.draining = True
    settle = config.timeouts.drain_settle
    log.info("draining", extra={"timeout": config.timeouts.drain, "settle": settle})
    if settle:
        # /readyz already answers 503; keep accepting while load balancers notice.
        time.sleep(settle)
    for w in workers:
        w.post(Drain())
    deadline = time.monotonic() + config.timeouts.drain
    for w in workers:
        w.join(max(0.0, deadline - time.monotonic()))
    for w in workers:
        if w.is_alive():
            w.post(Stop())
    for w in workers:
        w.join(5.0)
        if not w.is_alive():
            w.mailbox.close()
    aborted = sum(w.aborted_on_stop for w in workers)
    log.info("stopped", extra={"aborted_exchanges": aborted})
    if admin is not None:
        admin.stop()
    return 0


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
