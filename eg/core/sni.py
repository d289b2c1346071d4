"""Which certificate a TLS server name (SNI) selects: one rule for TCP and QUIC listeners.

A listener's certificates are tabled by their subjectAltName DNS names, the first
certificate winning a name two carry. A name picks the certificate listing it exactly,
else one with a wildcard for its parent (``*.example.com`` covers ``a.example.com``, not
``a.b.example.com``: RFC 6125 §6.4.3); no match leaves the listener's first certificate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def name_table[T](named: Iterable[tuple[T, Iterable[str]]]) -> dict[str, T]:
    """Name (lowercase) → certificate, from (certificate, its DNS names) in listener order."""
    table: dict[str, T] = {}
    for cert, names in named:
        for name in names:
            table.setdefault(name.lower(), cert)
    return table


def pick[T](table: Mapping[str, T], server_name: str) -> T | None:
    """The certificate ``server_name`` selects, or None for the listener's first."""
    name = server_name.lower()
    chosen = table.get(name)
    if chosen is None and "." in name:
        chosen = table.get("*." + name.split(".", 1)[1])
    return chosen
