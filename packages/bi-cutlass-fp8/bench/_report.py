"""Benchmark plumbing of bi-cutlass-fp8: source paths, environment, timing, table, JSON, PNG.

Every JSON file has top-level ``device``, ``versions``, ``date`` and ``results``; each result row
holds the measured median, every repetition and its ratios to the baselines.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parent
PACKAGES = PACKAGE.parent


def add_src_paths() -> None:
    """Put this package, ir-dispatch and bi-triton-ascend (the dequant baseline) on sys.path."""
    for name in ("bi-triton-ascend", "ir-dispatch", "bi-cutlass-fp8"):
        src = PACKAGES / name / "src"
        if src.is_dir() and str(src) not in sys.path:
            sys.path.insert(0, str(src))


def out_dir() -> Path:
    """``$OUT`` on the device machine, else ``bench/results``."""
    path = Path(os.environ.get("OUT") or HERE / "results")
    path.mkdir(parents=True, exist_ok=True)
    return path


def environment() -> dict[str, Any]:
    """Device, versions and date for the JSON header."""
    import torch

    versions: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    for module in ("triton", "bi_cutlass_fp8", "ir_dispatch"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:  # missing or broken optional module: record it as absent
            versions[module] = None
    try:
        from bi_cutlass_fp8 import _jit

        versions["nvidia_cutlass"] = _jit.cutlass_version()
    except Exception:
        versions["nvidia_cutlass"] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        device = f"{p.name} ({p.multi_processor_count} SMs, sm{p.major}{p.minor})"
    else:
        device = f"cpu ({platform.machine()})"
    return {
        "device": device,
        "versions": versions,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def time_ms(fn: Callable[[], Any], warmup_ms: int = 10, rep_ms: int = 40) -> list[float]:
    """Every repetition in ms: CUDA events around each call, L2 flushed before each."""
    from triton.testing import do_bench

    return [float(t) for t in do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="all")]


def median(xs: Iterable[float]) -> float:
    return float(statistics.median(list(xs)))


def geomean(xs: Iterable[float]) -> float:
    vals = [x for x in xs if x > 0 and math.isfinite(x)]
    return math.exp(sum(math.log(x) for x in vals) / len(vals)) if vals else float("nan")


def print_table(rows: list[dict[str, Any]], columns: list[str], title: str = "") -> None:
    """Fixed-width table of ``rows`` restricted to ``columns``."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "-" if not math.isfinite(v) else (f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}")
        return "-" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    if title:
        print(f"\n== {title}")
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def write_json(path: Path, results: Any, **extra: Any) -> Path:
    path.write_text(
        json.dumps({**environment(), **extra, "results": results}, indent=1, default=str)
    )
    print(f"wrote {path}")
    return path


def plot_panels(
    path: Path, panels: dict[str, dict[str, list[tuple[float, float]]]], ylabel: str
) -> Path | None:
    """One subplot per panel (x = M, log2), one line per series; skipped without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return None
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.4 * rows), squeeze=False)
    for ax, (title, series) in zip(axes.flat, panels.items(), strict=False):
        for name, pts in series.items():
            pts = sorted(p for p in pts if math.isfinite(p[1]))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=name)
        ax.set_title(title, fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("M (tokens)", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
    return path
