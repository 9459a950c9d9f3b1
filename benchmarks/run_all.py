"""Run every benchmark and print one table: figure, ours, peer, ratio, target.

Each `benchmarks/bench_*.py` exposes `rows() -> list[dict]`. A benchmark that fails is reported
in the table, not hidden. `python benchmarks/run_all.py startup export` runs a subset.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def main(selected: list[str]) -> int:
    sys.path.insert(0, str(HERE.parent))
    table: list[tuple[str, dict]] = []
    for path in sorted(HERE.glob("bench_*.py")):
        name = path.stem.removeprefix("bench_")
        if selected and name not in selected:
            continue
        t0 = time.perf_counter()
        print(f"running {path.name} …", file=sys.stderr, flush=True)
        try:
            rows = load(path).rows()
        except Exception as exc:  # a broken benchmark shows up as a row, not a crash
            traceback.print_exc()
            rows = [{"figure": f"FAILED: {type(exc).__name__}: {exc}", "ours": None, "peer": None,
                     "ratio": None, "target": None}]
        print(f"  {path.name} took {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        table += [(name, r) for r in rows]
    widths = (10, 52, 12, 12, 8)
    header = ("bench", "figure", "ours", "peer", "ratio")
    print(" ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " target")
    for name, r in table:
        cells = (name, str(r["figure"]), fmt(r.get("ours")), fmt(r.get("peer")), fmt(r.get("ratio")))
        print(" ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + f" {r.get('target') or ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
