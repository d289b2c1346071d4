"""Where a running eg spends its CPU: qh3's native core, qh3's Python, eg's own code, kernel.

    python3.13t -X perf -m eg config.toml &         # Python frames via /tmp/perf-PID.map
    perf record -F 499 -k 1 --call-graph dwarf,32768 -p PID -o perf.data -- sleep 6
    python bench/perfsplit.py perf.data

(``-X perf_jit`` with ``perf inject --jit`` gives deeper Python stacks where perf supports
it; Debian 12's perf 6.1 skips the jitdump records, so ``-X perf`` is the one that works
there. Either way each sample's innermost Python frame is named.)

Why perf and not cProfile: on 3.13t, cProfile on a worker thread made eg spin for minutes
in ``profiler_disable`` and distorts C calls (it times wall clock), and reading another
thread's frames with ``sys._current_frames`` from a sampler thread crashed eg (general
protection fault). perf samples CPU time with no help from the process; ``-X perf``
(CPython 3.12+) names each Python function in a perf map.

Each sample is classified by walking its stack from the leaf: kernel if the leaf is in the
kernel; *qh3 native* if a frame of qh3's ``_hazmat`` extension comes before the first
Python frame; otherwise Python execution (interpreter, allocator, libc), attributed to the
innermost Python function and its module. Prints shares of all samples.
"""

from __future__ import annotations

import collections
import re
import subprocess
import sys

PY_FRAME = re.compile(r"py::(\S+?):(\S+?\.py)")


def module_group(path: str) -> str:
    """A report line for the file of a Python frame."""
    if "/qh3/h3/" in path:
        return "qh3 Python: H3Connection (h3/connection.py)"
    if "/qh3/quic/connection.py" in path:
        return "qh3 Python: QuicConnection facade (quic/connection.py)"
    if "/qh3/" in path:
        return "qh3 Python: " + path.split("/qh3/", 1)[1]
    if "/eg/" in path:
        return "eg: " + path.rsplit("/eg/", 1)[1]
    return "stdlib: " + path.rsplit("/", 1)[-1]


def classify(text: str) -> dict[str, collections.Counter[str]]:
    """Counters of ``perf script`` output (one block per sample, stack leaf first)."""
    out: dict[str, collections.Counter[str]] = {
        k: collections.Counter() for k in ("kind", "module", "function", "native", "kernel")}
    for block in text.split("\n\n"):
        lines = [ln.strip() for ln in block.strip().splitlines()]
        frames = lines[1:]
        if not frames:
            continue
        native = False
        py: tuple[str, str] | None = None
        for frame in frames:
            m = PY_FRAME.search(frame)
            if m:
                py = (m.group(1), m.group(2))
                break
            if "_hazmat" in frame:
                native = True
        fn = f"{py[0]} [{py[1].rsplit('/', 1)[-1]}]" if py else "(no Python frame)"
        if "[kernel.kallsyms]" in frames[0]:
            out["kind"]["kernel"] += 1
            out["kernel"][fn] += 1
        elif native:
            out["kind"]["qh3 native (Rust: packets, crypto, QPACK)"] += 1
            out["native"][fn] += 1
        else:
            out["kind"]["Python execution (interpreter, allocator, libc)"] += 1
            out["module"][module_group(py[1]) if py else "(no Python frame)"] += 1
            out["function"][fn] += 1
    return out


def main() -> int:
    data = sys.argv[1] if len(sys.argv) > 1 else "perf.jit.data"
    text = subprocess.run(["perf", "script", "-i", data, "-F", "comm,tid,ip,sym,dso"],
                          capture_output=True, text=True, check=True).stdout
    counts = classify(text)
    total = sum(counts["kind"].values())
    if not total:
        print("no samples")
        return 1
    titles = {"kind": "where the CPU goes",
              "module": "Python execution, by module (innermost Python frame)",
              "function": "Python execution, top functions",
              "native": "qh3 native, by calling Python function",
              "kernel": "kernel, by calling Python function"}
    print(f"{total} samples")
    for key, title in titles.items():
        print(f"\n== {title} ==")
        for name, n in counts[key].most_common(25):
            print(f"{n / total * 100:6.1f}%  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
