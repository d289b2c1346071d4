"""eg.core.config: every example loads, defaults hold, and each bad input gets one message
naming the file, the line, the key path, what was expected and what was found."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import tomllib
from pathlib import Path

import pytest

from eg.core import config as cfg
from eg.core.config import (
    ClusterConfig,
    Config,
    EndpointConfig,
    HealthConfig,
    ListenerConfig,
    PoolConfig,
    RouteConfig,
    is_loopback_host,
    load,
    load_file,
    split_address,
)
from eg.core.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
TOKEN_HASH = hashlib.sha256(b"s3cret-token").hexdigest()

LISTENER = '[[listeners]]\nname = "http"\naddress = "127.0.0.1:8080"\n'
CLUSTER = '[[clusters]]\nname = "demo"\nendpoints = ["127.0.0.1:9001"]\n'
ROUTE = '[[routes]]\ncluster = "demo"\n'
MINIMAL = LISTENER + CLUSTER + ROUTE
MARK = "# <-"
"""Marks the line a case's error must point at."""


def error_of(text: str, source: str = "bad.toml") -> str:
    with pytest.raises(ConfigError) as info:
        load(text.encode(), source)
    return str(info.value)


def marked_line(text: str) -> int | None:
    for number, line in enumerate(text.splitlines(), start=1):
        if MARK in line:
            return number
    return None


# --- valid files ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    sorted(CONFIG_DIR.glob("**/*.toml")),
    ids=lambda path: str(path.relative_to(CONFIG_DIR)),
)
def test_every_example_loads(path: Path) -> None:
    config = load_file(path)
    assert config.source == str(path)
    assert config.listeners
    assert {route.cluster for route in config.routes} <= {c.name for c in config.clusters}


def test_default_toml_is_the_newcomer_setup() -> None:
    config = load_file(CONFIG_DIR / "default.toml")
    assert config.listeners == (
        ListenerConfig(name="http", address="127.0.0.1:8080", protocol="h1"),
    )
    assert config.clusters == (
        ClusterConfig(
            name="demo",
            endpoints=(
                EndpointConfig(address="127.0.0.1:9001"),
                EndpointConfig(address="127.0.0.1:9002"),
            ),
            lb="round_robin",
        ),
    )
    assert config.routes == (RouteConfig(cluster="demo", host="*", path_prefix="/"),)
    assert config.observability.metrics_bind == "127.0.0.1:9090"


def test_defaults_equal_the_dataclass_defaults() -> None:
    config = load(MINIMAL.encode())
    expected = Config(
        listeners=(ListenerConfig(name="http", address="127.0.0.1:8080"),),
        clusters=(
            ClusterConfig(name="demo", endpoints=(EndpointConfig(address="127.0.0.1:9001"),)),
        ),
        routes=(RouteConfig(cluster="demo"),),
    )
    assert config == expected
    assert config.source == "<memory>"
    assert config.clusters[0].pool == PoolConfig()
    assert config.clusters[0].health == HealthConfig()


def test_commented_defaults_in_default_toml_match_the_schema() -> None:
    """Uncommenting every ``# key = value`` line of default.toml changes nothing."""
    setting = re.compile(r"# ([a-z_]+ = |\[clusters\.)")
    original = (CONFIG_DIR / "default.toml").read_text().splitlines()
    lines = [line.removeprefix("# ") if setting.match(line) else line for line in original]
    assert sum(a != b for a, b in zip(original, lines, strict=True)) > 30
    uncommented = load("\n".join(lines).encode())
    plain = load_file(CONFIG_DIR / "default.toml")
    assert dataclasses.replace(uncommented, source=plain.source) == plain


def test_everything_set_explicitly() -> None:
    text = f"""
[runtime]
workers = 4
pin = false
allow_gil = true

[observability]
metrics_bind = "0.0.0.0:0"
log_format = "plain"
log_level = "debug"
access_log = false

[admin]
api_token_hash = "{TOKEN_HASH}"

[limits]
max_request_body = 1
max_response_body = 2
max_head_size = 1024
max_headers = 3
max_requests_per_connection = 4
buffer_high = 5
buffer_limit = 5
max_connections = 6

[timeouts]
header = 1
keepalive = 2.5
body_idle = 3
connect = 0.25
response = 5
drain = 6

[proxy]
x_forwarded_for = false
x_forwarded_proto = false
via = "1.1 edge"
server_header = "eg"

[[listeners]]
name = "v6"
address = "[::]:0"
protocol = "h1"
alt_svc = 'h3=":443"; ma=3600'

[[clusters]]
name = "api.v1"
lb = "round_robin"
protocol = "h1"
endpoints = [
  "backend.internal.:80",
  {{ address = "[2001:db8::1]:8443", weight = 5 }},
  {{ address = "10.1.2.3:65535" }},
]
pool = {{ max_idle = 0, idle_timeout = 1, max_age = 2 }}
health.max_failures = 1
health.eject_seconds = 0.5

[[routes]]
host = "API.Example.COM"
path_prefix = "/v1/"
cluster = "api.v1"

[[routes]]
host = "*.example.com"
cluster = "api.v1"

[[routes]]
host = "192.0.2.7"
cluster = "api.v1"

[[routes]]
host = "[2001:db8::7]"
cluster = "api.v1"
"""
    config = load(text.encode(), "full.toml")
    assert config.runtime == cfg.RuntimeConfig(workers=4, pin=False, allow_gil=True)
    assert config.observability == cfg.ObservabilityConfig(
        metrics_bind="0.0.0.0:0", log_format="plain", log_level="debug", access_log=False
    )
    assert config.admin.api_token_hash == TOKEN_HASH
    assert config.limits == cfg.LimitsConfig(
        max_request_body=1,
        max_response_body=2,
        max_head_size=1024,
        max_headers=3,
        max_requests_per_connection=4,
        buffer_high=5,
        buffer_limit=5,
        max_connections=6,
    )
    assert config.timeouts == cfg.TimeoutsConfig(
        header=1.0, keepalive=2.5, body_idle=3.0, connect=0.25, response=5.0, drain=6.0
    )
    assert all(
        type(getattr(config.timeouts, f.name)) is float for f in dataclasses.fields(config.timeouts)
    )
    assert config.proxy == cfg.ProxyConfig(
        x_forwarded_for=False, x_forwarded_proto=False, via="1.1 edge", server_header="eg"
    )
    assert config.listeners[0].alt_svc == 'h3=":443"; ma=3600'
    (cluster,) = config.clusters
    assert cluster.endpoints == (
        EndpointConfig(address="backend.internal.:80"),
        EndpointConfig(address="[2001:db8::1]:8443", weight=5),
        EndpointConfig(address="10.1.2.3:65535"),
    )
    assert cluster.pool == PoolConfig(max_idle=0, idle_timeout=1.0, max_age=2.0)
    assert cluster.health == HealthConfig(max_failures=1, eject_seconds=0.5)
    assert [route.host for route in config.routes] == [
        "api.example.com",
        "*.example.com",
        "192.0.2.7",
        "[2001:db8::7]",
    ]
    assert config.source == "full.toml"


def test_clusters_and_routes_may_be_absent() -> None:
    config = load(LISTENER.encode())
    assert config.clusters == ()
    assert config.routes == ()


@pytest.mark.parametrize(
    "bind", ["", "127.0.0.1:9090", "127.3.2.1:1", "[::1]:9090", "localhost:0", "LOCALHOST.:80"]
)
def test_loopback_admin_binds_need_no_token(bind: str) -> None:
    text = f'[observability]\nmetrics_bind = "{bind}"\n' + LISTENER
    assert load(text.encode()).observability.metrics_bind == bind


@pytest.mark.parametrize("bind", ["0.0.0.0:9090", "[::]:9090", "10.0.0.1:9090", "admin:9090"])
def test_non_loopback_admin_bind_requires_a_token(bind: str) -> None:
    text = f'[observability]\nmetrics_bind = "{bind}"  {MARK}\n' + LISTENER
    message = error_of(text)
    assert message == (
        "bad.toml:2: observability.metrics_bind: expected a loopback address "
        "(127.0.0.0/8, [::1] or localhost) unless admin.api_token_hash is set, "
        f"got {bind!r}"
    )
    with_token = text + f'[admin]\napi_token_hash = "{TOKEN_HASH}"\n'
    assert load(with_token.encode()).observability.metrics_bind == bind


def test_byte_order_mark_is_ignored() -> None:
    assert load(b"\xef\xbb\xbf" + MINIMAL.encode()).listeners[0].name == "http"


# --- invalid files: one exact message each -------------------------------------------------

# (document, key path, expectation); the line is the one marked with MARK, or none.
INVALID: list[tuple[str, str, str]] = [
    # [runtime]
    (
        f"[runtime]\nworkers = -1 {MARK}\n" + LISTENER,
        "runtime.workers",
        "expected an integer >= 0, got -1",
    ),
    (
        f"[runtime]\nworkers = true {MARK}\n" + LISTENER,
        "runtime.workers",
        "expected an integer >= 0, got true (a boolean)",
    ),
    (
        f"[runtime]\nworkers = 1.5 {MARK}\n" + LISTENER,
        "runtime.workers",
        "expected an integer >= 0, got 1.5 (a float)",
    ),
    (
        f"[runtime]\nworkers = 1979-05-27 {MARK}\n" + LISTENER,
        "runtime.workers",
        "expected an integer >= 0, got 1979-05-27 (a date/time)",
    ),
    (
        f"[runtime]\npin = 1 {MARK}\n" + LISTENER,
        "runtime.pin",
        "expected true or false, got 1 (an integer)",
    ),
    (
        f"[runtime]\nallow_gil = 'no' {MARK}\n" + LISTENER,
        "runtime.allow_gil",
        "expected true or false, got 'no'",
    ),
    (
        f"runtime = 5 {MARK}\n" + LISTENER,
        "runtime",
        "expected a table [runtime], got 5 (an integer)",
    ),
    (
        f"[[runtime]] {MARK}\nworkers = 1\n" + LISTENER,
        "runtime",
        "expected a table [runtime], got an array",
    ),
    (
        f"[runtime]\nwrokers = 2 {MARK}\n" + LISTENER,
        "runtime.wrokers",
        "unknown key 'wrokers'; expected one of workers, pin, allow_gil (did you mean 'workers'?)",
    ),
    (
        f"[runtime]\nstarted = 1979-05-27T07:32:00Z {MARK}\n" + LISTENER,
        "runtime.started",
        "unknown key 'started'; expected one of workers, pin, allow_gil",
    ),
    # [observability]
    (
        f"[observability]\nlog_format = 'xml' {MARK}\n" + LISTENER,
        "observability.log_format",
        "expected one of json, text, plain, got 'xml'",
    ),
    (
        f"[observability]\nlog_level = 'trace' {MARK}\n" + LISTENER,
        "observability.log_level",
        "expected one of debug, info, warning, error, got 'trace'",
    ),
    (
        f"[observability]\nlog_level = 3 {MARK}\n" + LISTENER,
        "observability.log_level",
        "expected one of debug, info, warning, error, got 3 (an integer)",
    ),
    (
        f"[observability]\naccess_log = 'yes' {MARK}\n" + LISTENER,
        "observability.access_log",
        "expected true or false, got 'yes'",
    ),
    (
        f"[observability]\nmetrics_bind = 'localhost' {MARK}\n" + LISTENER,
        "observability.metrics_bind",
        "expected \"host:port\", got 'localhost'",
    ),
    (
        f"[observability]\nmetrics_bind = 9090 {MARK}\n" + LISTENER,
        "observability.metrics_bind",
        "expected a string, got 9090 (an integer)",
    ),
    # [admin]
    (
        f"[admin]\napi_token_hash = 's3cret-token' {MARK}\n" + LISTENER,
        "admin.api_token_hash",
        "expected 64 lowercase hex digits (the SHA-256 of the token, not the token), "
        "got a 12-character value",
    ),
    (
        f"[admin]\napi_token_hash = '{TOKEN_HASH.upper()}' {MARK}\n" + LISTENER,
        "admin.api_token_hash",
        "expected 64 lowercase hex digits",
    ),
    (
        f"[admin]\ntoken = 'x' {MARK}\n" + LISTENER,
        "admin.token",
        "unknown key 'token'; expected one of api_token_hash",
    ),
    # [limits]
    (
        f"[limits]\nmax_request_body = 0 {MARK}\n" + LISTENER,
        "limits.max_request_body",
        "expected an integer >= 1, got 0",
    ),
    (
        f"[limits]\nmax_response_body = -5 {MARK}\n" + LISTENER,
        "limits.max_response_body",
        "expected an integer >= 1, got -5",
    ),
    (
        f"[limits]\nmax_head_size = 512 {MARK}\n" + LISTENER,
        "limits.max_head_size",
        "expected an integer >= 1024, got 512",
    ),
    (
        f"[limits]\nmax_headers = 'many' {MARK}\n" + LISTENER,
        "limits.max_headers",
        "expected an integer >= 1, got 'many'",
    ),
    (
        f"[limits]\nmax_requests_per_connection = 0 {MARK}\n" + LISTENER,
        "limits.max_requests_per_connection",
        "expected an integer >= 1, got 0",
    ),
    (
        f"[limits]\nmax_connections = false {MARK}\n" + LISTENER,
        "limits.max_connections",
        "expected an integer >= 1, got false (a boolean)",
    ),
    (
        f"[limits]\nbuffer_high = 2097152 {MARK}\n" + LISTENER,
        "limits.buffer_high",
        "expected buffer_high <= buffer_limit, got buffer_high = 2097152 and "
        "buffer_limit = 1048576",
    ),
    (
        f"[limits]\nbuffer_limit = 1000 {MARK}\n" + LISTENER,
        "limits.buffer_limit",
        "expected buffer_high <= buffer_limit, got buffer_high = 65536 and buffer_limit = 1000",
    ),
    (
        f"[limits]\nbuffer_high = 0 {MARK}\n" + LISTENER,
        "limits.buffer_high",
        "expected an integer >= 1, got 0",
    ),
    # [timeouts]
    (
        f"[timeouts]\nheader = 0 {MARK}\n" + LISTENER,
        "timeouts.header",
        "expected a positive number of seconds, got 0",
    ),
    (
        f"[timeouts]\nconnect = -1.5 {MARK}\n" + LISTENER,
        "timeouts.connect",
        "expected a positive number of seconds, got -1.5",
    ),
    (
        f"[timeouts]\ndrain = inf {MARK}\n" + LISTENER,
        "timeouts.drain",
        "expected a positive number of seconds, got inf",
    ),
    (
        f"[timeouts]\nkeepalive = nan {MARK}\n" + LISTENER,
        "timeouts.keepalive",
        "expected a positive number of seconds, got nan",
    ),
    (
        f"[timeouts]\nresponse = '60s' {MARK}\n" + LISTENER,
        "timeouts.response",
        "expected a positive number of seconds, got '60s'",
    ),
    (
        f"[timeouts]\nbody_idle = true {MARK}\n" + LISTENER,
        "timeouts.body_idle",
        "expected a positive number of seconds, got true (a boolean)",
    ),
    # [proxy]
    (
        f'[proxy]\nvia = "1.1 eg\\r\\nX-Evil: 1" {MARK}\n' + LISTENER,
        "proxy.via",
        "expected a header value (printable ASCII, no line breaks), got '1.1 eg\\r\\nX-Evil: 1'",
    ),
    (
        f"[proxy]\nserver_header = 'caf\u00e9' {MARK}\n" + LISTENER,
        "proxy.server_header",
        "expected a header value (printable ASCII, no line breaks), got 'caf\u00e9'",
    ),
    (
        f"[proxy]\nx_forwarded_for = 'yes' {MARK}\n" + LISTENER,
        "proxy.x_forwarded_for",
        "expected true or false, got 'yes'",
    ),
    # top level
    (
        f"listener = 1 {MARK}\n" + MINIMAL,
        "listener",
        "unknown key 'listener'; expected one of listeners, clusters, routes, runtime, "
        "observability, admin, limits, timeouts, proxy, http2, quic (did you mean 'listeners'?)",
    ),
    (f"source = 'x' {MARK}\n" + MINIMAL, "source", "unknown key 'source'"),
    (f"[tls] {MARK}\ncert = 'x'\n" + LISTENER, "tls", "unknown key 'tls'"),
    # [[listeners]]
    (
        "[runtime]\nworkers = 1\n",
        "listeners",
        "expected at least one [[listeners]] table, got none",
    ),
    (
        f"listeners = [] {MARK}\n",
        "listeners",
        "expected at least one [[listeners]] table, got an empty array",
    ),
    (
        f"listeners = 'http' {MARK}\n",
        "listeners",
        "expected at least one [[listeners]] table, got 'http'",
    ),
    (f"listeners = [1] {MARK}\n", "listeners[0]", "expected a table, got 1 (an integer)"),
    (
        f"[listeners] {MARK}\nname = 'x'\n",
        "listeners",
        "expected at least one [[listeners]] table, got a table",
    ),
    (
        f"[[listeners]] {MARK}\naddress = '127.0.0.1:80'\n",
        "listeners[0].name",
        "expected a listener name of letters, digits, '_', '-' or '.', got nothing "
        "(the key is required)",
    ),
    (
        f"[[listeners]] {MARK}\nname = 'http'\n",
        "listeners[0].address",
        'expected a "host:port" string, got nothing (the key is required)',
    ),
    (
        f"[[listeners]]\nname = '' {MARK}\naddress = '127.0.0.1:80'\n",
        "listeners[0].name",
        "expected a listener name of letters, digits, '_', '-' or '.', got ''",
    ),
    (
        f"[[listeners]]\nname = 'my http' {MARK}\naddress = '127.0.0.1:80'\n",
        "listeners[0].name",
        "expected a listener name of letters, digits, '_', '-' or '.', got 'my http'",
    ),
    (
        LISTENER + f"[[listeners]]\nname = 'http' {MARK}\naddress = '127.0.0.1:81'\n",
        "listeners[1].name",
        "expected a unique listener name, got 'http' (also used by listeners[0])",
    ),
    (
        f"[[listeners]]\nname = 'x'\naddress = '127.0.0.1' {MARK}\n",
        "listeners[0].address",
        "expected \"host:port\", got '127.0.0.1'",
    ),
    (
        f"[[listeners]]\nname = 'x'\naddress = '127.0.0.1:70000' {MARK}\n",
        "listeners[0].address",
        "expected a port number 0-65535 after the last ':', got '127.0.0.1:70000'",
    ),
    (
        f"[[listeners]]\nname = 'x'\naddress = '127.0.0.1:http' {MARK}\n",
        "listeners[0].address",
        "expected a port number 0-65535 after the last ':', got '127.0.0.1:http'",
    ),
    (
        f"[[listeners]]\nname = 'x'\naddress = '127.0.0.1:000008080' {MARK}\n",
        "listeners[0].address",
        "expected a port number 0-65535",
    ),
    (
        f"[[listeners]]\nname = 'x'\naddress = ':8080' {MARK}\n",
        "listeners[0].address",
        "expected a host before the port (0.0.0.0 or [::] for every interface), got ':8080'",
    ),
    (
        f"[[listeners]]\nname = 'x'\naddress = '::1:8080' {MARK}\n",
        "listeners[0].address",
        "expected an IPv6 address in brackets, as \"[::1]:port\", got '::1:8080'",
    ),
    (
        f"[[listeners]]\nname = 'x'\naddress = '[::g]:8080' {MARK}\n",
        "listeners[0].address",
        "expected an IPv6 address inside [...], got '[::g]:8080'",
    ),
    (
        f"[[listeners]]\nname = 'x'\naddress = 'bad_host:80' {MARK}\n",
        "listeners[0].address",
        "expected an IPv4 address, a DNS name or [IPv6] before the port, got 'bad_host:80'",
    ),
    (
        f"[[listeners]]\nname = 'x'\naddress = '256.1.1.1:80' {MARK}\n",
        "listeners[0].address",
        "expected an IPv4 address, a DNS name or [IPv6] before the port, got '256.1.1.1:80'",
    ),
    (
        f"[[listeners]]\nname = 'x'\naddress = '-a.example:80' {MARK}\n",
        "listeners[0].address",
        "expected an IPv4 address, a DNS name or [IPv6] before the port",
    ),
    (
        f"[[listeners]]\nname = 'x'\naddress = 'a..b:80' {MARK}\n",
        "listeners[0].address",
        "expected an IPv4 address, a DNS name or [IPv6] before the port",
    ),
    (
        f"[[listeners]]\nname = 'x'\naddress = '{'a' * 64}.example:80' {MARK}\n",
        "listeners[0].address",
        "expected an IPv4 address, a DNS name or [IPv6] before the port",
    ),
    (
        f"[[listeners]]\nname = 'x'\naddress = '{'a.' * 127}a:80' {MARK}\n",
        "listeners[0].address",
        "expected an IPv4 address, a DNS name or [IPv6] before the port",
    ),
    (
        f"[[listeners]]\nname = 'x'\naddress = 8080 {MARK}\n",
        "listeners[0].address",
        'expected a "host:port" string, got 8080 (an integer)',
    ),
    (
        f"[[listeners]]\nname = 'x'\naddress = '127.0.0.1:80'\nprotocol = 'h9' {MARK}\n",
        "listeners[0].protocol",
        "expected one of h1, h1s, h2c, https, quic, got 'h9'",
    ),
    (
        f"[[listeners]]\nname = 'x'\naddress = '127.0.0.1:80'\nalt_svc = \"a\\tb\\u0001\" {MARK}\n",
        "listeners[0].alt_svc",
        "expected a header value (printable ASCII, no line breaks)",
    ),
    (
        f"[[listeners]]\nname = 'x'\naddress = '127.0.0.1:80'\nport = 80 {MARK}\n",
        "listeners[0].port",
        "unknown key 'port'; expected one of name, address, protocol, tls, alt_svc",
    ),
    # [[clusters]]
    (
        LISTENER + f"[[clusters]] {MARK}\nname = 'demo'\n",
        "clusters[0].endpoints",
        'expected an array of "host:port" strings or {address = "host:port", weight = N}, '
        "got nothing (the key is required)",
    ),
    (
        LISTENER + f"[[clusters]]\nname = 'demo'\nendpoints = [] {MARK}\n",
        "clusters[0].endpoints",
        "expected at least one endpoint, got an empty array",
    ),
    (
        LISTENER + f"[[clusters]]\nname = 'demo'\nendpoints = '127.0.0.1:1' {MARK}\n",
        "clusters[0].endpoints",
        'expected an array of "host:port" strings or {address = "host:port", weight = N}, '
        "got '127.0.0.1:1'",
    ),
    (
        LISTENER + f"[[clusters]]\nname = 'demo'\nendpoints = [8080] {MARK}\n",
        "clusters[0].endpoints[0]",
        'expected "host:port" or {address = "host:port", weight = N}, got 8080 (an integer)',
    ),
    (
        LISTENER + f"[[clusters]]\nname = 'demo'\nendpoints = ['127.0.0.1:0'] {MARK}\n",
        "clusters[0].endpoints[0]",
        "expected a port number 1-65535, got '127.0.0.1:0'",
    ),
    (
        LISTENER + CLUSTER + f"[[clusters]]\nname = 'b'\nendpoints = [\n  '127.0.0.1:1',\n"
        f"  {{ address = '127.0.0.1:2', weight = 0 }},  {MARK}\n]\n",
        "clusters[1].endpoints[1].weight",
        "expected an integer >= 1, got 0",
    ),
    (
        LISTENER + f"[[clusters]]\nname = 'b'\nendpoints = [{{ address = '127.0.0.1:2', "
        f"weight = true }}] {MARK}\n",
        "clusters[0].endpoints[0].weight",
        "expected an integer >= 1, got true (a boolean)",
    ),
    (
        LISTENER + f"[[clusters]]\nname = 'b'\nendpoints = [{{ address = '127.0.0.1:2', "
        f"wieght = 2 }}] {MARK}\n",
        "clusters[0].endpoints[0].wieght",
        "unknown key 'wieght'; expected one of address, weight (did you mean 'weight'?)",
    ),
    (
        LISTENER + f"[[clusters]]\nname = 'b'\nendpoints = [{{ weight = 2 }}] {MARK}\n",
        "clusters[0].endpoints[0].address",
        'expected a "host:port" string, got nothing (the key is required)',
    ),
    (
        LISTENER + f"[[clusters]]\nname = 'b'\nendpoints = [{{ address = 'x' }}] {MARK}\n",
        "clusters[0].endpoints[0].address",
        "expected \"host:port\", got 'x'",
    ),
    (
        LISTENER + CLUSTER + f"lb = 'random' {MARK}\n",
        "clusters[0].lb",
        "expected one of round_robin, got 'random'",
    ),
    (
        LISTENER + CLUSTER + f"protocol = 'h4' {MARK}\n",
        "clusters[0].protocol",
        "expected one of h1, h1s, h2, h2c, h3, got 'h4'",
    ),
    (
        LISTENER + CLUSTER + f"[[clusters]]\nname = 'demo' {MARK}\nendpoints = ['a:1']\n",
        "clusters[1].name",
        "expected a unique cluster name, got 'demo' (also used by clusters[0])",
    ),
    (
        LISTENER + f"[[clusters]] {MARK}\nendpoints = ['a:1']\n",
        "clusters[0].name",
        "expected a cluster name of letters, digits, '_', '-' or '.', got nothing",
    ),
    (
        LISTENER + CLUSTER + f"[clusters.pool]\nmax_idle = -1 {MARK}\n",
        "clusters[0].pool.max_idle",
        "expected an integer >= 0, got -1",
    ),
    (
        LISTENER + CLUSTER + f"[clusters.pool]\nidle_timeout = 0 {MARK}\n",
        "clusters[0].pool.idle_timeout",
        "expected a positive number of seconds, got 0",
    ),
    (
        LISTENER + CLUSTER + f"[clusters.pool]\nmax_age = -3 {MARK}\n",
        "clusters[0].pool.max_age",
        "expected a positive number of seconds, got -3",
    ),
    (
        LISTENER + CLUSTER + f"[clusters.pool]\nmax_idel = 3 {MARK}\n",
        "clusters[0].pool.max_idel",
        "unknown key 'max_idel'; expected one of max_idle, idle_timeout, max_age",
    ),
    (
        LISTENER + CLUSTER + f"pool = {{ max_idle = 1, max_idel = 3 }} {MARK}\n",
        "clusters[0].pool.max_idel",
        "unknown key 'max_idel'",
    ),
    (
        LISTENER + CLUSTER + f"pool = 3 {MARK}\n",
        "clusters[0].pool",
        "expected a table [clusters[0].pool], got 3 (an integer)",
    ),
    (
        LISTENER + CLUSTER + f"[clusters.health]\nmax_failures = 0 {MARK}\n",
        "clusters[0].health.max_failures",
        "expected an integer >= 1, got 0",
    ),
    (
        LISTENER + CLUSTER + f"health.eject_seconds = -1 {MARK}\n",
        "clusters[0].health.eject_seconds",
        "expected a positive number of seconds, got -1",
    ),
    (
        LISTENER + CLUSTER + f"weight = 2 {MARK}\n",
        "clusters[0].weight",
        "unknown key 'weight'; expected one of name, endpoints, lb, protocol, tls, pool, health",
    ),
    (
        f"clusters = {{ name = 'x' }} {MARK}\n" + LISTENER,
        "clusters",
        "expected an array of [[clusters]] tables, got a table",
    ),
    # [[routes]]
    (
        LISTENER + CLUSTER + f"[[routes]]\ncluster = 'nope' {MARK}\n",
        "routes[0].cluster",
        "expected the name of a [[clusters]] entry (demo), got 'nope'",
    ),
    (
        LISTENER + f"[[routes]]\ncluster = 'demo' {MARK}\n",
        "routes[0].cluster",
        "expected the name of a [[clusters]] entry (none are defined), got 'demo'",
    ),
    (
        LISTENER + CLUSTER + f"[[routes]] {MARK}\nhost = '*'\n",
        "routes[0].cluster",
        "expected the name of a cluster, got nothing (the key is required)",
    ),
    (
        LISTENER + CLUSTER + f"[[routes]]\ncluster = 7 {MARK}\n",
        "routes[0].cluster",
        "expected the name of a cluster, got 7 (an integer)",
    ),
    (
        MINIMAL + f"host = 'exa mple.com' {MARK}\n",
        "routes[0].host",
        'expected "*", an exact host name or "*.suffix", got \'exa mple.com\'',
    ),
    (
        MINIMAL + f"host = '*.' {MARK}\n",
        "routes[0].host",
        'expected "*", an exact host name or "*.suffix", got \'*.\'',
    ),
    (MINIMAL + f"host = '**' {MARK}\n", "routes[0].host", "got '**'"),
    (MINIMAL + f"host = 'a.*.com' {MARK}\n", "routes[0].host", "got 'a.*.com'"),
    (MINIMAL + f"host = 'example.com:80' {MARK}\n", "routes[0].host", "got 'example.com:80'"),
    (MINIMAL + f"host = '*.192.0.2.1' {MARK}\n", "routes[0].host", "got '*.192.0.2.1'"),
    (MINIMAL + f"host = '*.[::1]' {MARK}\n", "routes[0].host", "got '*.[::1]'"),
    (MINIMAL + f"host = '[::1' {MARK}\n", "routes[0].host", "got '[::1'"),
    (MINIMAL + f"host = '[nope]' {MARK}\n", "routes[0].host", "got '[nope]'"),
    (MINIMAL + f"host = '' {MARK}\n", "routes[0].host", "got ''"),
    (
        MINIMAL + f"path_prefix = 'api' {MARK}\n",
        "routes[0].path_prefix",
        "expected a path starting with '/' (no spaces or control characters), got 'api'",
    ),
    (MINIMAL + f"path_prefix = '/a b' {MARK}\n", "routes[0].path_prefix", "got '/a b'"),
    (MINIMAL + f"path_prefix = ['/'] {MARK}\n", "routes[0].path_prefix", "got an array"),
    (
        MINIMAL + f"methods = ['GET'] {MARK}\n",
        "routes[0].methods",
        "unknown key 'methods'; expected one of cluster, host, path_prefix",
    ),
    (MINIMAL + f"[[routes]] {MARK}\n", "routes[1].cluster", "the key is required"),
]


@pytest.mark.parametrize(("text", "path", "expectation"), INVALID)
def test_invalid_config_names_file_line_key_and_expectation(
    text: str, path: str, expectation: str
) -> None:
    message = error_of(text)
    line = marked_line(text)
    where = "bad.toml" if line is None else f"bad.toml:{line}"
    assert message.startswith(f"{where}: {path}: "), message
    assert expectation in message
    assert "\n" not in message


def test_rejected_token_is_never_echoed() -> None:
    message = error_of(f"[admin]\napi_token_hash = 'hunter2-is-my-token'\n{LISTENER}")
    assert "hunter2" not in message


def test_first_error_wins() -> None:
    text = f"[runtime]\nworkers = -1\n[limits]\nmax_headers = 0\n{LISTENER}"
    assert error_of(text).startswith("bad.toml:2: runtime.workers: ")


def test_error_line_follows_the_right_array_element() -> None:
    text = (
        LISTENER
        + '[[listeners]]\nname = "b"\naddress = "127.0.0.1:81"\n'
        + '[[listeners]]\nname = "c"\naddress = "127.0.0.1:82"\nprotocol = "h3"\n'
    )
    assert error_of(text).startswith("bad.toml:10: listeners[2].protocol: ")


def test_error_line_for_sub_table_of_a_later_cluster() -> None:
    text = (
        LISTENER
        + CLUSTER
        + "[clusters.pool]\nmax_idle = 1\n"
        + '[[clusters]]\nname = "b"\nendpoints = ["127.0.0.1:2"]\n'
        + "[clusters.pool]\nmax_idle = -1\n"
    )
    assert error_of(text).startswith("bad.toml:13: clusters[1].pool.max_idle: ")


# --- syntax and encoding -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (LISTENER + "[runtime]\nworkers = \n", "bad.toml:5: TOML syntax error at column 11: "),
        (LISTENER + "[runtime]\nworkers =", "bad.toml:5: TOML syntax error at end of document: "),
        (LISTENER + 'name = "again"\n', "bad.toml:4: TOML syntax error at column"),
        ("[[listeners]\n", "bad.toml:1: TOML syntax error at column"),
        (MINIMAL + "[runtime]\nworkers = 1\n[runtime]\n", "bad.toml:11: TOML syntax error"),
    ],
)
def test_syntax_error_reports_the_line(text: str, expected: str) -> None:
    message = error_of(text)
    assert message.startswith(expected), message


def test_not_utf8_reports_the_line() -> None:
    with pytest.raises(ConfigError) as info:
        load(MINIMAL.encode() + b"# caf\xe9\n", "latin1.toml")
    assert str(info.value) == "latin1.toml:9: expected UTF-8 text, got the byte 0xe9"


def test_load_file_reports_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load_file(path)
    assert str(info.value) == f"{path}: cannot read the config file: No such file or directory"


def test_load_file_names_the_file_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f"[runtime]\nworkers = -2\n{LISTENER}")
    with pytest.raises(ConfigError) as info:
        load_file(str(path))
    assert str(info.value).startswith(f"{path}:2: runtime.workers: expected an integer >= 0")


def test_config_error_is_an_eg_error() -> None:
    with pytest.raises(ConfigError) as info:
        load(b"")
    assert info.value.kind == "config"


# --- helpers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        ("[::1]:443", ("::1", 443)),
        ("[fe80::1%eth0]:443", ("fe80::1%eth0", 443)),
        ("example.com:0", ("example.com", 0)),
        ("example.com.:65535", ("example.com.", 65535)),
        ("localhost:8080", ("localhost", 8080)),
    ],
)
def test_split_address(address: str, expected: tuple[str, int]) -> None:
    assert split_address(address) == expected


@pytest.mark.parametrize(
    "address", ["", "80", "host:", "host:-1", "host:65536", "host:\u0661", "1.2.3:80", "[]:80"]
)
def test_split_address_rejects(address: str) -> None:
    with pytest.raises(ValueError, match=r"host|port|IPv|DNS"):
        split_address(address)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.255.0.9", True),
        ("::1", True),
        ("localhost", True),
        ("LocalHost.", True),
        ("0.0.0.0", False),
        ("::", False),
        ("128.0.0.1", False),
        ("example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


# --- locating keys in the text -------------------------------------------------------------

TRICKY = '''\
# a comment with [brackets] and key = "value"
"quoted.key" = 1
'literal' = 2
dotted . key = 3       # comment after a value
multi = """
[not_a_header]
x = 1 \\""" still inside """
tail = """ends with quotes"""""
raw = \'\'\'
[also_not]\'\'\'
nested = [[1, 2], [3, [4]], { a = [5] }]
after = 4
[table]
inline = { a = 1, b = { c = "}" }, d = [ "]" ] }
[[arr]]
[arr.sub]
x = 1
[[arr]]
[[arr.inner]]
[[arr.inner]]
y = 2
[ "quoted header" . part ]
z = 3
[a.b]
c = 1
'''


@pytest.mark.parametrize(
    ("path", "line"),
    [
        ('"quoted.key"', None),
        ("quoted.key", 2),
        ("literal", 3),
        ("dotted", 4),
        ("dotted.key", 4),
        ("multi", 5),
        ("tail", 8),
        ("raw", 9),
        ("nested", 11),
        ("nested[0]", 11),
        ("nested[1][1][0]", 11),
        ("nested[2].a[0]", 11),
        ("after", 12),
        ("not_a_header", None),
        ("also_not", None),
        ("table", 13),
        ("table.inline.b.c", 14),
        ("table.inline.d[0]", 14),
        ("table.missing", 13),
        ("arr[0]", 15),
        ("arr[0].sub", 16),
        ("arr[0].sub.x", 17),
        ("arr[1]", 18),
        ("arr[1].inner[0]", 19),
        ("arr[1].inner[1].y", 21),
        ("arr[2]", 15),  # no third element: the first [[arr]] header
        ("quoted header.part.z", 23),
        ("a.b.c", 25),
        ("a", 24),
        ("unknown", None),
    ],
)
def test_line_index(path: str, line: int | None) -> None:
    tomllib.loads(TRICKY)  # the scanner only ever sees valid TOML
    assert cfg._LineIndex(TRICKY).line_of(path) == line


@pytest.mark.parametrize(
    "text",
    [
        "}\nx = 1",
        "x = [,]\n",
        "x = {",
        "x = [1",
        "x = [1 2]",
        "[a",
        "= 1",
        "x =",
        "x",
        "x = 'a",
        '"',
    ],
)
def test_line_index_terminates_on_text_it_does_not_follow(text: str) -> None:
    cfg._LineIndex(text).line_of("x")


def test_line_index_crlf() -> None:
    index = cfg._LineIndex("a = 1\r\n\r\n[t]\r\nb = 2\r\n")
    assert (index.line_of("a"), index.line_of("t"), index.line_of("t.b")) == (1, 3, 4)


def test_every_schema_field_is_read() -> None:
    """A field added to a dataclass must also be validated by load (or it never loads)."""
    for schema in (
        cfg.RuntimeConfig,
        cfg.ObservabilityConfig,
        cfg.AdminConfig,
        cfg.LimitsConfig,
        cfg.TimeoutsConfig,
        cfg.ProxyConfig,
    ):
        section = {
            cfg.RuntimeConfig: "runtime",
            cfg.ObservabilityConfig: "observability",
            cfg.AdminConfig: "admin",
            cfg.LimitsConfig: "limits",
            cfg.TimeoutsConfig: "timeouts",
            cfg.ProxyConfig: "proxy",
        }[schema]
        for item in dataclasses.fields(schema):
            text = f"[{section}]\n{item.name} = [[]]\n{LISTENER}"
            assert f"{section}.{item.name}: expected" in error_of(text)


def test_tls_listener_needs_certificates_and_resolves_paths() -> None:
    base = '[[listeners]]\nname = "s"\naddress = "127.0.0.1:0"\nprotocol = "h1s"\n'
    with pytest.raises(ConfigError, match=r"listeners\[0\]\.tls: expected a \[tls\] table"):
        load(base.encode())
    cfg = load((base + '[listeners.tls]\ncertificates = [{cert = "c.pem", key = "k.pem"}]\n'
                'tls13_only = true\n').encode(), source="/etc/eg/eg.toml")
    tls = cfg.listeners[0].tls
    assert tls is not None and tls.tls13_only and tls.handshake_timeout == 5.0
    assert (tls.certificates[0].cert, tls.certificates[0].key) == ("/etc/eg/c.pem",
                                                                   "/etc/eg/k.pem")
    with pytest.raises(ConfigError, match=r"listeners\[0\]\.tls: expected no \[tls\] table"):
        load(base.replace('"h1s"', '"h1"').encode()
             + b'[listeners.tls]\ncertificates = [{cert = "c", key = "k"}]\n')
    with pytest.raises(ConfigError, match=r"tls\.certificates"):
        load((base + "[listeners.tls]\ncertificates = []\n").encode())
