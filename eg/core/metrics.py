"""Every metric eg exports, declared once: per-worker shards, merged when scraped.

Theory of operation
-------------------
Each worker thread owns one :class:`Shard` and is the only thread that ever mutates it.
The hot-path methods (:meth:`Shard.request_done`, :meth:`Shard.conn_opened`, ...) are a
dict lookup and a few integer additions each; there are no locks and no shared objects,
because on free-threaded CPython even a shared *read* contends on the reference count
(STYLE.md §6). Every table, including the histogram bucket bounds, is built per shard.

At scrape time the admin thread calls :func:`render` with every worker's shard. It copies
each table with ``dict(d)`` (a single atomic copy on 3.13t) and sums counters, gauges and
histogram buckets across shards. A scrape may therefore be a moment stale for a shard that
is being written at the same time; it is never torn across the copy, and no worker ever
waits for a scrape. Only :func:`render` touches prometheus-client, so the data path never
does.

Label tuples
------------
Tables are keyed by tuples of label values in the order the metric declares its labels,
e.g. ``(cluster, kind)`` for ``eg_backend_errors_total``.
"""

from __future__ import annotations

import sys
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from eg import __version__

__all__ = ["DURATION_BUCKETS", "Shard", "render"]

DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Upper bounds (seconds) of ``eg_request_duration_seconds``; ``+Inf`` is implied.

Prometheus' default buckets extended down to 500 µs, since a proxy hop is often sub-ms.
Read only when a shard is built and when rendering, never on the hot path.
"""

_CODE_CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")
"""``eg_requests_total`` code_class label by ``status // 100``; index 0 is anything else."""


# Layout of the per-(listener, protocol) request row: one flat list, because on 3.13t (no
# specialising interpreter) list indexing with literal offsets is measurably cheaper than
# slot attributes. Buckets go last so the row follows DURATION_BUCKETS if it changes.
_SUM = 0  # sum of durations (float)
_BYTES_IN = 1
_BYTES_OUT = 2
_CODES = 3  # len(_CODE_CLASSES) counters, indexed by code class
_BUCKETS = _CODES + len(_CODE_CLASSES)  # len(DURATION_BUCKETS) + 1, not cumulative, +Inf last
assert (_SUM, _BYTES_IN, _BYTES_OUT, _CODES, _BUCKETS) == (0, 1, 2, 3, 9), "update request_done"


class Shard:
    """One worker's metrics. Mutated only by its owning thread; read by :func:`render`.

    Every method is safe to call on the hot path: one dict lookup plus a few list updates.
    """

    __slots__ = (
        "_backend_errors",
        "_bucket_of",
        "_buffered",
        "_conns",
        "_limit_hits",
        "_paused",
        "_protocol_errors",
        "_requests",
        "_row_len",
        "_unhandled",
        "_upstreams",
        "bounds",
    )

    def __init__(self) -> None:
        self.bounds: list[float] = list(DURATION_BUCKETS)
        """This shard's own copy of the histogram bounds (never shared between threads)."""
        self._row_len = _BUCKETS + len(self.bounds) + 1  # the last bucket is +Inf
        # A per-shard callable, so the hot path touches no object shared with other workers.
        self._bucket_of: Callable[[float], int] = partial(bisect_left, self.bounds)
        self._requests: dict[tuple[str, str], list[float]] = {}
        self._conns: dict[str, list[int]] = {}  # listener -> [open, total]
        self._upstreams: dict[str, list[int]] = {}  # cluster -> [open, total, reused]
        self._backend_errors: dict[tuple[str, str], int] = {}
        self._limit_hits: dict[str, int] = {}
        self._protocol_errors: dict[tuple[str, str], int] = {}
        self._unhandled: dict[str, int] = {}
        self._paused: dict[str, int] = {}
        self._buffered: dict[str, int] = {}

    # -- downstream requests --------------------------------------------------------------

    def request_done(  # noqa: PLR0917 - positional on purpose: hot path, called per exchange
        self,
        listener: str,
        protocol: str,
        status: int,
        duration: float,
        bytes_in: int,
        bytes_out: int,
    ) -> None:
        """Count one finished exchange.

        Args:
            listener: listener name from the config.
            protocol: downstream protocol, e.g. ``"h1"``, ``"h2"``, ``"h3"``.
            status: final response status; anything outside 100-599 (e.g. 0 for an
                exchange that ended before a response) counts as code_class ``other``.
            duration: seconds from request head to the end of the response.
            bytes_in: bytes received from downstream for this exchange.
            bytes_out: bytes sent to downstream for this exchange.
        """
        # Offsets are literals (see _SUM, _BYTES_IN, _BYTES_OUT, _CODES, _BUCKETS): a global
        # name lookup per field would cost more than the update itself.
        try:
            r = self._requests[(listener, protocol)]
        except KeyError:
            r = self._requests[(listener, protocol)] = [0.0] + [0] * (self._row_len - 1)
        cls = status // 100
        r[3 + cls if 0 < cls < 6 else 3] += 1
        r[9 + self._bucket_of(duration)] += 1
        r[0] += duration
        r[1] += bytes_in
        r[2] += bytes_out

    # -- downstream connections -----------------------------------------------------------

    def conn_opened(self, listener: str) -> None:
        """A downstream connection was accepted on ``listener``."""
        c = self._conns.get(listener)
        if c is None:
            c = self._conns[listener] = [0, 0]
        c[0] += 1
        c[1] += 1

    def conn_closed(self, listener: str) -> None:
        """A downstream connection on ``listener`` was closed."""
        c = self._conns.get(listener)
        if c is None:
            c = self._conns[listener] = [0, 0]
        c[0] -= 1

    # -- upstream connections -------------------------------------------------------------

    def upstream_conn_opened(self, cluster: str) -> None:
        """A new upstream connection to an endpoint of ``cluster`` was established."""
        u = self._upstreams.get(cluster)
        if u is None:
            u = self._upstreams[cluster] = [0, 0, 0]
        u[0] += 1
        u[1] += 1

    def upstream_conn_closed(self, cluster: str) -> None:
        """An upstream connection to ``cluster`` was closed."""
        u = self._upstreams.get(cluster)
        if u is None:
            u = self._upstreams[cluster] = [0, 0, 0]
        u[0] -= 1

    def upstream_reused(self, cluster: str) -> None:
        """An exchange was sent on a pooled (already open) connection to ``cluster``."""
        u = self._upstreams.get(cluster)
        if u is None:
            u = self._upstreams[cluster] = [0, 0, 0]
        u[2] += 1

    # -- errors and limits ----------------------------------------------------------------

    def backend_error(self, cluster: str, kind: str) -> None:
        """Count an upstream failure.

        Args:
            cluster: cluster name.
            kind: ``connect``, ``timeout_connect``, ``broken``, ``no_healthy_upstream``,
                ``protocol``, ...
        """
        d = self._backend_errors
        key = (cluster, kind)
        d[key] = d.get(key, 0) + 1

    def limit_hit(self, kind: str) -> None:
        """Count a limit enforcement (``body_size``, ``head_size``, ``connections``, ...)."""
        d = self._limit_hits
        d[kind] = d.get(kind, 0) + 1

    def protocol_error(self, side: str, kind: str) -> None:
        """Count a protocol violation by the peer on ``side`` (downstream / upstream)."""
        d = self._protocol_errors
        key = (side, kind)
        d[key] = d.get(key, 0) + 1

    def unhandled_exception(self, where: str) -> None:
        """Count an exception that reached a per-connection guard."""
        d = self._unhandled
        d[where] = d.get(where, 0) + 1

    # -- flow control ---------------------------------------------------------------------

    def paused(self, direction: str) -> None:
        """Count one pause of a source (a buffer crossed its high watermark)."""
        d = self._paused
        d[direction] = d.get(direction, 0) + 1

    def set_buffered(self, direction: str, nbytes: int) -> None:
        """Set this worker's total buffered bytes for ``direction`` (a gauge)."""
        self._buffered[direction] = nbytes


# -- scrape-time merging --------------------------------------------------------------------


def _snapshot[K, V](d: dict[K, V]) -> dict[K, V]:
    """Copy a table another thread may be writing, retrying once if it changed mid-copy."""
    try:
        return dict(d)
    except RuntimeError:  # pragma: no cover - needs a concurrent resize mid-copy
        return dict(d)


def _sum_ints[K](tables: Iterator[dict[K, int]]) -> dict[K, int]:
    out: dict[K, int] = {}
    for table in tables:
        for key, value in _snapshot(table).items():
            out[key] = out.get(key, 0) + value
    return out


def _sum_lists[K](tables: Iterator[dict[K, list[int]]], width: int) -> dict[K, list[int]]:
    out: dict[K, list[int]] = {}
    for table in tables:
        for key, values in _snapshot(table).items():
            acc = out.get(key)
            if acc is None:
                acc = out[key] = [0] * width
            for i, v in enumerate(values[:width]):
                acc[i] += v
    return out


def _counter[T: tuple[str, ...]](
    name: str, doc: str, labels: Sequence[str], values: Mapping[T, int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=list(labels))
    for key in sorted(values):
        family.add_metric(list(key), values[key])
    return family


def _gauge[T: tuple[str, ...]](
    name: str, doc: str, labels: Sequence[str], values: Mapping[T, int]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    for key in sorted(values):
        family.add_metric(list(key), values[key])
    return family


def _families(
    shards: Sequence[Shard], *, gil_enabled: bool, workers: int, info: Mapping[str, str] | None
) -> list[Metric]:
    """Merge ``shards`` into metric families, in a stable order."""
    bounds = list(DURATION_BUCKETS)
    width = len(bounds) + 1
    les = [repr(float(b)) for b in bounds] + ["+Inf"]  # the client's own le spelling

    # Requests: codes, histogram and bytes per (listener, protocol).
    codes: dict[tuple[str, str, str], int] = {}
    hist: dict[tuple[str, str], list[int]] = {}
    hsum: dict[tuple[str, str], float] = {}
    b_in: dict[tuple[str], int] = {}
    b_out: dict[tuple[str], int] = {}
    for shard in shards:
        for (listener, protocol), row in _snapshot(shard._requests).items():
            r = list(row)
            for i, n in enumerate(r[_CODES:_BUCKETS]):
                if n:
                    ck = (listener, protocol, _CODE_CLASSES[i])
                    codes[ck] = codes.get(ck, 0) + int(n)
            acc = hist.get((listener, protocol))
            if acc is None:
                acc = hist[(listener, protocol)] = [0] * width
            for i, n in enumerate(r[_BUCKETS : _BUCKETS + width]):
                acc[i] += int(n)
            hsum[(listener, protocol)] = hsum.get((listener, protocol), 0.0) + r[_SUM]
            b_in[(listener,)] = b_in.get((listener,), 0) + int(r[_BYTES_IN])
            b_out[(listener,)] = b_out.get((listener,), 0) + int(r[_BYTES_OUT])

    duration = HistogramMetricFamily(
        "eg_request_duration_seconds",
        "Time from downstream request head to the end of the response.",
        labels=["listener", "protocol"],
    )
    for key in sorted(hist):
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for le, n in zip(les, hist[key], strict=True):
            cumulative += n
            buckets.append((le, cumulative))
        duration.add_metric(list(key), buckets, hsum[key])

    conns = _sum_lists((s._conns for s in shards), 2)
    upstreams = _sum_lists((s._upstreams for s in shards), 3)

    def one(values: Mapping[str, int]) -> dict[tuple[str, ...], int]:
        return {(k,): v for k, v in values.items()}

    def col(values: Mapping[str, list[int]], i: int) -> dict[tuple[str, ...], int]:
        return {(k,): v[i] for k, v in values.items()}

    labels = {"version": __version__, "python": sys.version.split()[0]}
    if info:
        labels.update(info)
    names = sorted(labels)
    build = GaugeMetricFamily("eg_build_info", "Build information; always 1.", labels=names)
    build.add_metric([labels[n] for n in names], 1)

    return [
        _counter(
            "eg_requests",
            "Finished downstream exchanges.",
            ["listener", "protocol", "code_class"],
            codes,
        ),
        duration,
        _counter(
            "eg_downstream_bytes_received",
            "Bytes received from downstream.",
            ["listener"],
            b_in,
        ),
        _counter("eg_downstream_bytes_sent", "Bytes sent to downstream.", ["listener"], b_out),
        _gauge("eg_connections_open", "Open downstream connections.", ["listener"], col(conns, 0)),
        _counter("eg_connections", "Accepted downstream connections.", ["listener"], col(conns, 1)),
        _gauge(
            "eg_upstream_connections_open",
            "Open upstream connections.",
            ["cluster"],
            col(upstreams, 0),
        ),
        _counter(
            "eg_upstream_connections",
            "Established upstream connections.",
            ["cluster"],
            col(upstreams, 1),
        ),
        _counter(
            "eg_upstream_reused",
            "Exchanges sent on a pooled upstream connection.",
            ["cluster"],
            col(upstreams, 2),
        ),
        _counter(
            "eg_backend_errors",
            "Upstream failures by kind.",
            ["cluster", "kind"],
            _sum_ints(s._backend_errors for s in shards),
        ),
        _counter(
            "eg_limit_hits",
            "Limit enforcements by kind.",
            ["kind"],
            one(_sum_ints(s._limit_hits for s in shards)),
        ),
        _counter(
            "eg_protocol_errors",
            "Protocol violations by peer side and kind.",
            ["side", "kind"],
            _sum_ints(s._protocol_errors for s in shards),
        ),
        _counter(
            "eg_unhandled_exceptions",
            "Exceptions caught by a per-connection guard.",
            ["where"],
            one(_sum_ints(s._unhandled for s in shards)),
        ),
        _counter(
            "eg_paused",
            "Sources paused by a buffer crossing its high watermark.",
            ["direction"],
            one(_sum_ints(s._paused for s in shards)),
        ),
        _gauge(
            "eg_buffered_bytes",
            "Bytes held in flow-control buffers.",
            ["direction"],
            one(_sum_ints(s._buffered for s in shards)),
        ),
        GaugeMetricFamily(
            "eg_gil_enabled",
            "1 if the GIL is enabled (it should be 0).",
            value=1 if gil_enabled else 0,
        ),
        GaugeMetricFamily("eg_workers", "Worker threads.", value=workers),
        build,
    ]


class _Families(Collector):
    """A prometheus-client collector that yields families computed up front."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def render(
    shards: Sequence[Shard],
    *,
    gil_enabled: bool,
    workers: int,
    info: Mapping[str, str] | None = None,
) -> bytes:
    """Merge every worker's shard and render the Prometheus text exposition format.

    Args:
        shards: one shard per worker; they may be mutated by their owners concurrently.
        gil_enabled: the value of ``sys._is_gil_enabled()``, exported as ``eg_gil_enabled``.
        workers: the number of worker threads, exported as ``eg_workers``.
        info: extra ``eg_build_info`` labels; they override the defaults ``version`` and
            ``python``.

    Returns:
        The exposition, text format version 0.0.4, UTF-8.
    """
    families = _families(shards, gil_enabled=gil_enabled, workers=workers, info=info)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    out: bytes = generate_latest(registry)
    return out
