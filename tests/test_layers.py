"""Layering, checked on the source (STYLE.md §1 and §6).

Every ``import`` and ``from ... import`` statement under ``eg/`` counts, wherever it
appears: at module level, inside a function, under ``if TYPE_CHECKING:``. Relative
imports are resolved. Module names in strings (``importlib.import_module("h11")``, as
the GIL check in ``eg.reactor.server`` does) are not import statements and do not count.

Rules:

(a) ``eg/core`` is sans-I/O: no sockets, polling, TLS, threads, clocks or event loops,
    and no ``eg.reactor``.
(b) Only ``eg/core/codec`` talks to the protocol libraries.
(c) Only ``eg/xdp/attach.py`` talks to the kernel through pyroute2.
(d) ``eg/core/codec`` and ``eg/core/proxy`` run on every worker's hot path, so they hold
    no module-level mutable containers or compiled regexes (each would be shared by all
    workers, contending on its reference count on free-threaded CPython). Constants,
    tuples and frozensets of constants are fine; tables are built per worker.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EG = ROOT / "eg"

#: Rule (a): what ``eg/core`` must never import.
CORE_FORBIDDEN = (
    "socket",
    "select",
    "selectors",
    "ssl",
    "threading",
    "_thread",
    "time",
    "asyncio",
    "eg.reactor",
)
#: Rule (b): protocol libraries, and the only place allowed to import them.
PROTOCOL_LIBS = ("h11", "h2", "hpack", "hyperframe", "qh3")
CODEC_DIR = "eg/core/codec/"
#: Demo and test peers (origins) are not part of the serving process; they may use
#: protocol libraries directly.
PEER_DIR = "eg/demo/"
#: Rule (c).
XDP_LIBS = ("pyroute2",)
XDP_ATTACH = "eg/xdp/attach.py"
#: Rule (d): hot-path packages.
HOT_DIRS = ("eg/core/codec/", "eg/core/proxy/")

#: Calls whose result is mutable (or a regex shared by every worker).
MUTABLE_CALLS = frozenset({
    "dict", "list", "set", "bytearray", "deque", "defaultdict", "OrderedDict", "Counter",
    "ChainMap", "compile", "re.compile", "collections.deque", "collections.defaultdict",
    "collections.OrderedDict", "collections.Counter", "collections.ChainMap",
    "array", "array.array",
})
#: Calls that freeze whatever they are given: their arguments are not module state.
FREEZING_CALLS = frozenset({"frozenset", "tuple", "bytes", "str", "int", "float"})
#: Module-level names that are conventionally lists and never touched at run time.
DUNDER_OK = frozenset({"__all__"})


@dataclass(frozen=True, slots=True)
class Import:
    module: str  # dotted name as imported (for ``from m import n``: ``m`` and ``m.n``)
    line: int


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> list[Path]:
    return sorted(p for p in EG.rglob("*.py") if "__pycache__" not in p.parts)


def imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[Import]:
    """Every module an import statement anywhere in ``tree`` may load.

    Args:
        tree: the parsed source.
        module: its dotted module name (for resolving relative imports).
        is_package: whether the source is a package's ``__init__.py``.
    """
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target == "__future__":
                continue
            yield Import(target, node.lineno)
            for alias in node.names:
                if alias.name != "*":
                    yield Import(f"{target}.{alias.name}", node.lineno)


def _matches(name: str, prefixes: tuple[str, ...]) -> str | None:
    for prefix in prefixes:
        if name == prefix or name.startswith(prefix + "."):
            return prefix
    return None


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def import_violations(paths: list[Path], root: Path = ROOT) -> list[str]:
    """Rules (a), (b) and (c) over ``paths``; one ``file:line: message`` per violation."""
    out: list[str] = []
    for path in paths:
        rel = _rel(path, root)
        seen: set[tuple[int, str]] = set()
        module = _module_name(path, root)
        for imp in imports(_parse(path), module, path.name == "__init__.py"):
            found: list[str] = []
            if rel.startswith("eg/core/") and (hit := _matches(imp.module, CORE_FORBIDDEN)):
                found.append(f"eg/core is sans-I/O but imports {hit}")
            if not rel.startswith((CODEC_DIR, PEER_DIR)) and \
                    (hit := _matches(imp.module, PROTOCOL_LIBS)):
                found.append(f"imports {hit}; only {CODEC_DIR}** may")
            if rel != XDP_ATTACH and (hit := _matches(imp.module, XDP_LIBS)):
                found.append(f"imports {hit}; only {XDP_ATTACH} may")
            for message in found:
                if (imp.line, message) not in seen:
                    seen.add((imp.line, message))
                    out.append(f"{rel}:{imp.line}: {message}")
    return out


def _call_name(node: ast.Call) -> str:
    func = node.func
    parts: list[str] = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _mutable(node: ast.AST) -> Iterator[tuple[int, str]]:
    """Mutable objects (or regexes) the expression ``node`` builds once, at import."""
    if isinstance(node, ast.Lambda):
        return  # built per call
    if isinstance(node, ast.Dict | ast.DictComp):
        yield node.lineno, "dict"
        return
    if isinstance(node, ast.List | ast.ListComp):
        yield node.lineno, "list"
        return
    if isinstance(node, ast.Set | ast.SetComp):
        yield node.lineno, "set"
        return
    if isinstance(node, ast.GeneratorExp):
        yield node.lineno, "generator"
        return
    if isinstance(node, ast.Call):
        name = _call_name(node)
        if name in FREEZING_CALLS:
            return
        if name in MUTABLE_CALLS:
            kind = "compiled regex" if name.endswith("compile") else f"{name}()"
            yield node.lineno, kind
            return
    for child in ast.iter_child_nodes(node):
        yield from _mutable(child)


def _module_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements that run at import: the module body, including if/try/with blocks."""
    for stmt in body:
        yield stmt
        if isinstance(stmt, ast.If | ast.For | ast.While | ast.With):
            yield from _module_statements(stmt.body)
            yield from _module_statements(getattr(stmt, "orelse", []))
        elif isinstance(stmt, ast.Try | ast.TryStar):
            yield from _module_statements(stmt.body)
            for handler in stmt.handlers:
                yield from _module_statements(handler.body)
            yield from _module_statements(stmt.orelse)
            yield from _module_statements(stmt.finalbody)


def _targets(stmt: ast.Assign | ast.AnnAssign | ast.AugAssign) -> list[str]:
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
    return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]


def state_violations(paths: list[Path], root: Path = ROOT) -> list[str]:
    """Rule (d) over ``paths``; one ``file:line: message`` per violation."""
    out: list[str] = []
    for path in paths:
        rel = _rel(path, root)
        for stmt in _module_statements(_parse(path).body):
            if not isinstance(stmt, ast.Assign | ast.AnnAssign | ast.AugAssign):
                continue
            if stmt.value is None:
                continue
            names = _targets(stmt)
            if names and all(n in DUNDER_OK for n in names):
                continue
            for line, kind in _mutable(stmt.value):
                out.append(f"{rel}:{line}: module-level {kind} assigned to {', '.join(names)}")
    return out


# -- the rules, over eg/ ------------------------------------------------------------------


def test_sources_found() -> None:
    rels = {_rel(p, ROOT) for p in _sources()}
    assert "eg/core/proxy/exchange.py" in rels
    assert "eg/reactor/server.py" in rels


def test_import_layering() -> None:
    """Rules (a) eg/core sans-I/O, (b) protocol libraries in codecs, (c) pyroute2 in xdp."""
    violations = import_violations(_sources())
    assert not violations, "layering violations:\n" + "\n".join(violations)


def test_no_module_level_mutable_state_on_the_hot_path() -> None:
    """Rule (d): eg/core/codec and eg/core/proxy."""
    paths = [p for p in _sources() if _rel(p, ROOT).startswith(HOT_DIRS)]
    assert paths, "no sources under " + ", ".join(HOT_DIRS)
    violations = state_violations(paths)
    assert not violations, "module-level mutable state:\n" + "\n".join(violations)


# -- the checker itself, on synthetic sources ---------------------------------------------


def _write(tmp: Path, rel: str, source: str) -> Path:
    path = tmp / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source, encoding="utf-8")
    return path


def test_checker_sees_every_form_of_import(tmp_path: Path) -> None:
    path = _write(tmp_path, "eg/core/proxy/thing.py", (
        "from __future__ import annotations\n"
        "import socket\n"
        "from time import monotonic\n"
        "from eg import reactor\n"
        "from ...reactor.loop import Loop\n"
        "def f():\n"
        "    import h2.connection\n"
        "if TYPE_CHECKING:\n"
        "    import pyroute2\n"
        "import importlib\n"
        "importlib.import_module('h11')\n"
    ))
    lines = sorted(v.split(": ", 1)[0] for v in import_violations([path], tmp_path))
    rel = "eg/core/proxy/thing.py"
    assert lines == [f"{rel}:{n}" for n in (2, 3, 4, 5, 7, 9)]


def test_checker_allows_protocol_libraries_in_codecs(tmp_path: Path) -> None:
    ok = _write(tmp_path, "eg/core/codec/h2/server.py", "import h2.connection\nimport hpack\n")
    xdp = _write(tmp_path, "eg/xdp/attach.py", "from pyroute2 import IPRoute\n")
    bad = _write(tmp_path, "eg/reactor/stream.py", "import h11\n")
    assert import_violations([ok, xdp], tmp_path) == []
    assert import_violations([bad], tmp_path) == [
        "eg/reactor/stream.py:1: imports h11; only eg/core/codec/** may"
    ]


def test_checker_flags_mutable_module_state(tmp_path: Path) -> None:
    path = _write(tmp_path, "eg/core/codec/x.py", (
        "import re\n"
        "__all__ = ['A']\n"
        "A = (b'a', 'b')\n"
        "B = frozenset({b'a', b'b'})\n"
        "C = bytes([9, *range(32, 127)])\n"
        "D = {b'a': 1}\n"
        "E = [1]\n"
        "F = {1}\n"
        "G = re.compile(b'x')\n"
        "H = {k: 1 for k in 'ab'}\n"
        "I = (1, [2])\n"
        "J = lambda: []\n"
        "try:\n"
        "    K = dict()\n"
        "except ImportError:\n"
        "    pass\n"
        "def f():\n"
        "    L = []\n"
        "class M:\n"
        "    N = []\n"
    ))
    lines = [int(v.split(":")[1]) for v in state_violations([path], tmp_path)]
    assert lines == [6, 7, 8, 9, 10, 11, 14]
