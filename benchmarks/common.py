"""Shared helpers of the benchmark scripts: timing, a printed table, a JSON file."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def best_time(fn: Callable[[], object], repeat: int = 3) -> float:
    """Best wall time of ``repeat`` calls in seconds (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def report(name: str, rows: list[dict], meta: dict) -> Path:
    """Print ``rows`` as a table and write them with ``meta`` to benchmarks/results/NAME.json."""
    columns = list(rows[0])
    widths = [max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in rows:
        print("  ".join(_fmt(row[c]).ljust(w) for c, w in zip(columns, widths)))
    meta = {**meta, "machine": platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads()}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\nwritten {path}")
    return path


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
