"""The server-name rule shared by TCP and QUIC listeners (eg/core/sni.py)."""

from __future__ import annotations

from eg.core.sni import name_table, pick

TABLE = name_table([
    ("first", ["example.com", "www.example.com"]),
    ("wild", ["*.example.com", "Example.COM"]),
    ("other", ["other.test"]),
])


def test_exact_name_first_certificate_wins() -> None:
    assert pick(TABLE, "example.com") == "first"
    assert pick(TABLE, "www.example.com") == "first"
    assert pick(TABLE, "OTHER.test") == "other"


def test_wildcard_covers_one_level() -> None:
    assert pick(TABLE, "api.example.com") == "wild"
    assert pick(TABLE, "a.b.example.com") is None


def test_no_match() -> None:
    assert pick(TABLE, "example.org") is None
    assert pick(TABLE, "localhost") is None
