"""eg.core.metrics: per-worker shards, merged and rendered at scrape time."""

from __future__ import annotations

import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from eg import __version__
from eg.core.metrics import DURATION_BUCKETS, Shard, render


def samples(data: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Parse an exposition into {(sample name, labels): value}."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(data.decode("utf-8")):
        for s in family.samples:
            assert isinstance(s, Sample)
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(data: bytes, name: str, **labels: str) -> float:
    return samples(data)[(name, frozenset(labels.items()))]


def families(data: bytes) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(data.decode("utf-8"))}


def two_shards() -> tuple[Shard, Shard]:
    a, b = Shard(), Shard()
    a.request_done("web", "h1", 200, 0.003, 10, 100)
    a.request_done("web", "h1", 204, 0.0004, 0, 0)
    a.request_done("web", "h2", 503, 0.2, 5, 50)
    b.request_done("web", "h1", 201, 7.0, 1, 2)
    b.request_done("web", "h1", 404, 30.0, 0, 9)
    b.request_done("api", "h3", 101, 0.001, 3, 4)
    for shard in (a, b):
        shard.conn_opened("web")
        shard.conn_opened("web")
        shard.conn_closed("web")
        shard.upstream_conn_opened("pool")
        shard.upstream_reused("pool")
        shard.upstream_reused("pool")
        shard.backend_error("pool", "connect")
        shard.limit_hit("body_size")
        shard.protocol_error("downstream", "bad_header")
        shard.unhandled_exception("worker")
        shard.paused("upstream")
    a.upstream_conn_closed("pool")
    a.backend_error("pool", "timeout_connect")
    b.limit_hit("connections")
    a.set_buffered("upstream", 100)
    b.set_buffered("upstream", 23)
    b.set_buffered("downstream", 7)
    return a, b


def test_render_parses_and_declares_every_family() -> None:
    data = render(two_shards(), gil_enabled=False, workers=2)
    assert families(data) == {
        "eg_requests": "counter",
        "eg_request_duration_seconds": "histogram",
        "eg_downstream_bytes_received": "counter",
        "eg_downstream_bytes_sent": "counter",
        "eg_connections_open": "gauge",
        "eg_connections": "counter",
        "eg_upstream_connections_open": "gauge",
        "eg_upstream_connections": "counter",
        "eg_upstream_reused": "counter",
        "eg_backend_errors": "counter",
        "eg_limit_hits": "counter",
        "eg_protocol_errors": "counter",
        "eg_unhandled_exceptions": "counter",
        "eg_paused": "counter",
        "eg_buffered_bytes": "gauge",
        "eg_gil_enabled": "gauge",
        "eg_workers": "gauge",
        "eg_build_info": "gauge",
    }


def test_merge_sums_across_shards() -> None:
    data = render(two_shards(), gil_enabled=False, workers=2)
    req = "eg_requests_total"
    assert value(data, req, listener="web", protocol="h1", code_class="2xx") == 3
    assert value(data, req, listener="web", protocol="h1", code_class="4xx") == 1
    assert value(data, req, listener="web", protocol="h2", code_class="5xx") == 1
    assert value(data, req, listener="api", protocol="h3", code_class="1xx") == 1
    assert (
        "eg_requests_total",
        frozenset({"listener": "web", "protocol": "h1", "code_class": "5xx"}.items()),
    ) not in samples(data)
    assert value(data, "eg_downstream_bytes_received_total", listener="web") == 16
    assert value(data, "eg_downstream_bytes_sent_total", listener="web") == 161
    assert value(data, "eg_downstream_bytes_sent_total", listener="api") == 4
    assert value(data, "eg_connections_open", listener="web") == 2
    assert value(data, "eg_connections_total", listener="web") == 4
    assert value(data, "eg_upstream_connections_open", cluster="pool") == 1
    assert value(data, "eg_upstream_connections_total", cluster="pool") == 2
    assert value(data, "eg_upstream_reused_total", cluster="pool") == 4
    assert value(data, "eg_backend_errors_total", cluster="pool", kind="connect") == 2
    assert value(data, "eg_backend_errors_total", cluster="pool", kind="timeout_connect") == 1
    assert value(data, "eg_limit_hits_total", kind="body_size") == 2
    assert value(data, "eg_limit_hits_total", kind="connections") == 1
    assert value(data, "eg_protocol_errors_total", side="downstream", kind="bad_header") == 2
    assert value(data, "eg_unhandled_exceptions_total", where="worker") == 2
    assert value(data, "eg_paused_total", direction="upstream") == 2
    assert value(data, "eg_buffered_bytes", direction="upstream") == 123
    assert value(data, "eg_buffered_bytes", direction="downstream") == 7
    assert value(data, "eg_workers") == 2
    assert value(data, "eg_gil_enabled") == 0


def test_histogram_merges_and_is_cumulative() -> None:
    data = render(two_shards(), gil_enabled=False, workers=2)
    name = "eg_request_duration_seconds"
    web_h1 = {"listener": "web", "protocol": "h1"}
    # web/h1 observations: 0.0004, 0.003 (shard a), 7.0, 30.0 (shard b)
    expected = {
        "0.0005": 1,
        "0.001": 1,
        "0.0025": 1,
        "0.005": 2,
        "2.5": 2,
        "5.0": 2,
        "10.0": 3,
        "+Inf": 4,
    }
    for le, count in expected.items():
        assert value(data, f"{name}_bucket", le=le, **web_h1) == count
    assert value(data, f"{name}_count", **web_h1) == 4
    assert value(data, f"{name}_sum", **web_h1) == pytest.approx(37.0034)
    les = [
        k
        for (n, lbls), _ in samples(data).items()
        if n == f"{name}_bucket"
        for k, v in lbls
        if k == "le"
    ]
    assert len(les) == 3 * (len(DURATION_BUCKETS) + 1)  # three (listener, protocol) pairs


@pytest.mark.parametrize(
    ("duration", "le"),
    [
        (0.0, "0.0005"),
        (0.0005, "0.0005"),  # bounds are inclusive (le)
        (0.00050001, "0.001"),
        (0.01, "0.01"),
        (0.3, "0.5"),
        (1.0, "1.0"),
        (10.0, "10.0"),
        (10.000001, "+Inf"),
        (1e9, "+Inf"),
    ],
)
def test_histogram_bucket_placement(duration: float, le: str) -> None:
    shard = Shard()
    shard.request_done("l", "h1", 200, duration, 0, 0)
    data = render([shard], gil_enabled=False, workers=1)
    buckets = {
        dict(lbls)["le"]: v
        for (n, lbls), v in samples(data).items()
        if n == "eg_request_duration_seconds_bucket"
    }
    ordered = [repr(b) for b in DURATION_BUCKETS] + ["+Inf"]
    first = ordered.index(le)
    assert [buckets[k] for k in ordered] == [0] * first + [1] * (len(ordered) - first)


@pytest.mark.parametrize(
    ("status", "code_class"),
    [
        (100, "1xx"),
        (200, "2xx"),
        (308, "3xx"),
        (499, "4xx"),
        (599, "5xx"),
        (0, "other"),
        (600, "other"),
        (-1, "other"),
    ],
)
def test_code_class(status: int, code_class: str) -> None:
    shard = Shard()
    shard.request_done("l", "h2", status, 0.1, 0, 0)
    data = render([shard], gil_enabled=True, workers=1)
    assert value(data, "eg_requests_total", listener="l", protocol="h2", code_class=code_class)
    assert value(data, "eg_gil_enabled") == 1


def test_empty_render_and_build_info() -> None:
    data = render([], gil_enabled=False, workers=4, info={"commit": "abc123", "python": "x"})
    assert value(data, "eg_workers") == 4
    assert value(data, "eg_build_info", version=__version__, commit="abc123", python="x") == 1
    assert b"eg_requests_total{" not in data
    assert data.decode("utf-8").endswith("\n")


def test_label_values_are_escaped() -> None:
    shard = Shard()
    shard.backend_error('we"ird\\clu\nster', "connect")
    data = render([shard], gil_enabled=False, workers=1)
    assert value(data, "eg_backend_errors_total", cluster='we"ird\\clu\nster', kind="connect") == 1


def test_shards_do_not_share_tables() -> None:
    a, b = Shard(), Shard()
    assert a.bounds == b.bounds
    assert a.bounds is not b.bounds
    a.limit_hit("x")
    data = render([b], gil_enabled=False, workers=1)
    assert b"eg_limit_hits_total{" not in data


def test_scrape_while_workers_write() -> None:
    """Rendering concurrently with writers never raises and never goes backwards."""
    shards = [Shard(), Shard()]
    stop = threading.Event()

    def work(shard: Shard, n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            # new label values resize the dicts the scraper is copying (early on)
            shard.request_done(f"l{i % 8}", "h1", 200, 0.001, 1, 1)
            shard.backend_error(f"c{i % 12}", "connect")
            shard.conn_opened(f"l{n}")

    threads = [threading.Thread(target=work, args=(s, n)) for n, s in enumerate(shards)]
    for t in threads:
        t.start()
    try:
        last = -1.0
        for _ in range(10):
            data = render(shards, gil_enabled=False, workers=2)
            total = sum(v for (n, _), v in samples(data).items() if n == "eg_requests_total")
            assert total >= last
            last = total
    finally:
        stop.set()
        for t in threads:
            t.join()
    final = render(shards, gil_enabled=False, workers=2)
    conns = value(final, "eg_connections_total", listener="l0") + value(
        final, "eg_connections_total", listener="l1"
    )
    total = sum(v for (n, _), v in samples(final).items() if n == "eg_requests_total")
    assert conns == total
