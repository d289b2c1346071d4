"""Route table: (authority, path) → cluster name.

Built per worker from the config snapshot (shared-nothing): exact hosts in a dict,
``*.suffix`` wildcards by suffix, then catch-all routes; within a host, the longest
matching path prefix wins, and among equal prefixes the first in the file.
"""

from __future__ import annotations

from eg.core.config import RouteConfig

_Entry = tuple[bytes, str]  # (path prefix, cluster name)


class RouteTable:
    """Match requests to clusters; build one per worker thread."""

    __slots__ = ("_any", "_exact", "_wild")

    def __init__(self, routes: tuple[RouteConfig, ...]) -> None:
        self._exact: dict[bytes, list[_Entry]] = {}
        self._wild: list[tuple[bytes, list[_Entry]]] = []
        self._any: list[_Entry] = []
        wild: dict[bytes, list[_Entry]] = {}
        for route in routes:
            entry = (route.path_prefix.encode(), route.cluster)
            host = route.host.lower().encode()
            if host == b"*":
                self._any.append(entry)
            elif host.startswith(b"*."):
                wild.setdefault(host[1:], []).append(entry)
            else:
                self._exact.setdefault(host, []).append(entry)
        for entries in (*self._exact.values(), *wild.values(), self._any):
            entries.sort(key=lambda e: -len(e[0]))  # stable: file order among equals
        # Longest suffix first so "*.a.example.com" beats "*.example.com".
        self._wild = sorted(wild.items(), key=lambda kv: -len(kv[0]))

    def match(self, authority: bytes, path: bytes) -> str | None:
        """Return the cluster for a request, or None (→ 404)."""
        host = authority
        if host[:1] == b"[":
            end = host.find(b"]")
            host = host[: end + 1] if end > 0 else host
        else:
            colon = host.rfind(b":")
            if colon >= 0:
                host = host[:colon]
        host = host.lower()
        if self._exact:
            entries = self._exact.get(host)
            if entries is not None:
                hit = _first(entries, path)
                if hit is not None:
                    return hit
        for suffix, entries in self._wild:
            if host.endswith(suffix) and len(host) > len(suffix):
                hit = _first(entries, path)
                if hit is not None:
                    return hit
        return _first(self._any, path)


def _first(entries: list[_Entry], path: bytes) -> str | None:
    for prefix, cluster in entries:
        if path.startswith(prefix):
            return cluster
    return None
